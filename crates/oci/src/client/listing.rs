//! Listings: a repository's tags and a registry's catalog, `Link`-paged.

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use crate::error::{redact_url, Error, Result};
use crate::reference::Repository;

use super::*;

impl RegistryClient {
    /// Every tag of a repository, following `Link` pagination; at most `MAX_LISTED_TAGS` tags
    /// in `MAX_LISTING_PAGES` pages (a registry that pages on forever is refused, not followed).
    #[tracing::instrument(skip(self), fields(repository = %repo))]
    pub async fn list_tags(&self, repo: &Repository) -> Result<Vec<String>> {
        let too_large = |limit: String| -> Result<Vec<String>> {
            Err(Error::ResponseTooLarge {
                what: format!("tag list of {repo}"),
                url: redact_url(&self.url(repo, Resource::Tags, None)?),
                limit,
            })
        };
        let mut tags = Vec::new();
        let mut after = None;
        for _ in 0..MAX_LISTING_PAGES {
            let (page, next) = self.tags_page(repo, 1000, after.as_deref()).await?;
            tags.extend(page);
            if tags.len() > MAX_LISTED_TAGS {
                return too_large(format!("{MAX_LISTED_TAGS} tags"));
            }
            match next {
                Some(n) => after = Some(n),
                None => return Ok(tags),
            }
        }
        too_large(format!("{MAX_LISTING_PAGES} pages"))
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
        let mut url = self.url(repo, Resource::Tags, None)?;
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

    /// GETs a JSON page (at most `MAX_PAGE_BYTES`) and the `last` value of its `Link:
    /// rel="next"` target. A next page that would start where this one did (`last` equal to
    /// `after`) is refused: following it would loop forever.
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
        let after = url
            .query_pairs()
            .find(|(k, _)| k == "last")
            .map(|(_, v)| v.into_owned());
        let next = next_link(resp.headers(), url).and_then(|n| {
            n.query_pairs()
                .find(|(k, _)| k == "last")
                .map(|(_, v)| v.into_owned())
        });
        let shown = redact_url(url);
        if next.is_some() && next == after {
            return Err(Error::Registry {
                method: "GET".into(),
                url: shown,
                status: resp.status().as_u16(),
                code: None,
                message: format!(
                    "the {what} pages without advancing (its Link names the page just read)"
                ),
            });
        }
        let body = read_bounded(resp, MAX_PAGE_BYTES, &shown, what).await?;
        let page = serde_json::from_slice(&body).map_err(|e| Error::Registry {
            method: "GET".into(),
            url: shown,
            status: 200,
            code: None,
            message: format!("the {what} is not the spec's JSON: {e}"),
        })?;
        Ok((page, next))
    }
}

/// Bytes of one listing page read at most (a page of 1,000 tags of 128 characters is about
/// 130 KB).
pub(super) const MAX_PAGE_BYTES: usize = 4 << 20;
/// Pages of one listing followed at most.
pub const MAX_LISTING_PAGES: usize = 1_000;
/// Tags of one repository listed at most (ECR holds at most 20,000 images per repository).
pub const MAX_LISTED_TAGS: usize = 100_000;

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
