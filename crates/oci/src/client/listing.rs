//! Listings: a repository's tags and a registry's catalog, `Link`-paged.

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use crate::error::{redact_url, Error, Result};
use crate::reference::Repository;

use super::*;

impl RegistryClient {
    /// Every tag of a repository, following `Link` pagination.
    #[tracing::instrument(skip(self), fields(repository = %repo))]
    pub async fn list_tags(&self, repo: &Repository) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = self.tags_page(repo, 1000, after.as_deref()).await?;
            tags.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(tags),
            }
        }
    }

    /// One page of a repository's tags, after tag `after`; the second value is the token (the
    /// last tag) for the next page, `None` on the last page.
    pub async fn tags_page(
        &self,
        repo: &Repository,
        page_size: usize,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>)> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(repo, "tags/list")?;
        paging_query(&mut url, page_size, after);
        let (page, next): (TagList, _) = self
            .page(
                &url,
                repo,
                &scope(repo, false),
                &format!("tag list of {repo}"),
            )
            .await?;
        Ok((page.tags.unwrap_or_default(), next))
    }

    /// One page of a registry's repositories (`/v2/_catalog`), after repository `after`.
    pub async fn catalog_page(
        &self,
        registry: &str,
        page_size: usize,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>)> {
        #[derive(Deserialize)]
        struct Catalog {
            repositories: Option<Vec<String>>,
        }
        let repo = Repository {
            registry: registry.to_string(),
            name: String::new(),
        };
        let mut url = self
            .base(&repo)?
            .join("_catalog")
            .map_err(|e| Error::InvalidReference {
                reference: registry.to_string(),
                reason: e.to_string(),
            })?;
        paging_query(&mut url, page_size, after);
        let (page, next): (Catalog, _) = self
            .page(
                &url,
                &repo,
                "registry:catalog:*",
                &format!("catalog of {registry}"),
            )
            .await?;
        Ok((page.repositories.unwrap_or_default(), next))
    }

    /// GETs a JSON page and the `last` value of its `Link: rel="next"` target.
    pub(super) async fn page<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        repo: &Repository,
        scope: &str,
        what: &str,
    ) -> Result<(T, Option<String>)> {
        let resp = self
            .execute(Method::GET, url, repo, scope, HeaderMap::new(), None)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, "GET", what).await);
        }
        let next = next_link(resp.headers(), url).and_then(|n| {
            n.query_pairs()
                .find(|(k, _)| k == "last")
                .map(|(_, v)| v.into_owned())
        });
        let page = resp.json().await.map_err(|source| Error::Transport {
            method: "GET".into(),
            url: redact_url(url),
            source,
        })?;
        Ok((page, next))
    }
}

pub(super) fn paging_query(url: &mut Url, page_size: usize, after: Option<&str>) {
    let mut query = url.query_pairs_mut();
    query.append_pair("n", &page_size.to_string());
    if let Some(last) = after {
        query.append_pair("last", last);
    }
}

/// The `rel="next"` target of a `Link` header, resolved against the current URL.
pub(super) fn next_link(headers: &HeaderMap, current: &Url) -> Option<Url> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        current.join(target).ok()
    })
}
