//! The seams to registries' listings and repository administration: a `Catalog` lists
//! repositories and images (ECR's API, or any OCI registry's `_catalog` and tag lists); a
//! `RepositoryAdmin` reads and ensures repository settings (ECR only).

use async_trait::async_trait;
use ecr::{EcrAdmin, EnsureReport, Page, RepositorySettings};
use futures::StreamExt;
use oci::{Reference, RegistryClient, Repository};

use crate::error::{Error, Result};
use crate::filter::ImageInfo;

/// Lists what a registry holds, page by page.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// One page of at most `limit` repository names.
    async fn repositories(&self, next: Option<String>, limit: usize) -> Result<Page<String>>;
    /// One page of a repository's images.
    async fn images(&self, repository: &str, next: Option<String>) -> Result<Page<ImageInfo>>;
}

/// Reads and ensures repository settings.
#[async_trait]
pub trait RepositoryAdmin: Send + Sync {
    /// Settings of a repository, `None` if it does not exist.
    async fn read_settings(&self, repository: &str) -> Result<Option<RepositorySettings>>;
    /// Creates the repository if missing; with `update`, makes its settings equal `desired`.
    async fn ensure_repository(
        &self,
        repository: &str,
        desired: &RepositorySettings,
        update: bool,
        dry_run: bool,
    ) -> Result<EnsureReport>;
    /// Removes tags; returns those refused, each with the reason.
    async fn remove_tags(&self, repository: &str, tags: &[String])
        -> Result<Vec<(String, String)>>;
}

fn aws(context: String) -> impl FnOnce(ecr::Error) -> Error {
    move |source| Error::Aws { context, source }
}

#[async_trait]
impl Catalog for EcrAdmin {
    async fn repositories(&self, next: Option<String>, limit: usize) -> Result<Page<String>> {
        self.list_repositories(next, limit)
            .await
            .map_err(aws(format!("listing repositories of {}", self.registry())))
    }

    async fn images(&self, repository: &str, next: Option<String>) -> Result<Page<ImageInfo>> {
        let page = self
            .list_images(repository, next)
            .await
            .map_err(aws(format!(
                "listing images of {}/{repository}",
                self.registry()
            )))?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|i| ImageInfo {
                    digest: i.digest,
                    tags: i.tags,
                    pushed_at: i.pushed_at,
                    size: i.size,
                    media_type: i.media_type,
                })
                .collect(),
            next: page.next,
        })
    }
}

#[async_trait]
impl RepositoryAdmin for EcrAdmin {
    async fn read_settings(&self, repository: &str) -> Result<Option<RepositorySettings>> {
        EcrAdmin::read_settings(self, repository)
            .await
            .map_err(aws(format!(
                "reading settings of {}/{repository}",
                self.registry()
            )))
    }

    async fn ensure_repository(
        &self,
        repository: &str,
        desired: &RepositorySettings,
        update: bool,
        dry_run: bool,
    ) -> Result<EnsureReport> {
        EcrAdmin::ensure_repository(self, repository, desired, update, dry_run)
            .await
            .map_err(aws(format!("ensuring {}/{repository}", self.registry())))
    }

    async fn remove_tags(
        &self,
        repository: &str,
        tags: &[String],
    ) -> Result<Vec<(String, String)>> {
        EcrAdmin::remove_tags(self, repository, tags)
            .await
            .map_err(aws(format!(
                "removing stale tags from {}/{repository}",
                self.registry()
            )))
    }
}

/// Any OCI registry: `/v2/_catalog` and tag lists (both `Link`-paged); each tag is resolved to
/// its digest with a HEAD. Push times are unknown.
pub struct OciCatalog<'a> {
    /// Client for the registry.
    pub client: &'a RegistryClient,
    /// Registry host.
    pub registry: &'a str,
    /// Entries per page asked of the registry.
    pub page_size: usize,
}

#[async_trait]
impl Catalog for OciCatalog<'_> {
    async fn repositories(&self, next: Option<String>, limit: usize) -> Result<Page<String>> {
        let (items, next) = self
            .client
            .catalog_page(self.registry, self.page_size.min(limit), next.as_deref())
            .await
            .map_err(|source| Error::Listing {
                what: format!("repositories of {}", self.registry),
                source,
            })?;
        Ok(Page { items, next })
    }

    async fn images(&self, repository: &str, next: Option<String>) -> Result<Page<ImageInfo>> {
        let repo = Repository {
            registry: self.registry.to_string(),
            name: repository.to_string(),
        };
        let listing = |source| Error::Listing {
            what: format!("tags of {repo}"),
            source,
        };
        let (tags, next) = self
            .client
            .tags_page(&repo, self.page_size, next.as_deref())
            .await
            .map_err(listing)?;
        let heads: Vec<_> = futures::stream::iter(tags)
            .map(|tag| {
                let reference = Reference {
                    repository: repo.clone(),
                    tag: Some(tag.clone()),
                    digest: None,
                };
                // The manifest itself, not a HEAD: the same one request, and the plan then
                // reads it from the client's cache.
                async move {
                    let manifest = match self.client.get_manifest(&reference).await {
                        Ok(m) => Ok(Some((m.digest, m.media_type))),
                        Err(e) if e.is_not_found() => Ok(None),
                        Err(e) => Err(e),
                    };
                    (tag, manifest)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut images: Vec<ImageInfo> = Vec::new();
        for (tag, head) in heads {
            let Some(head) = head.map_err(|source| Error::Listing {
                what: format!("tag {tag} of {repo}"),
                source,
            })?
            else {
                continue; // deleted between the list and the read
            };
            let (digest, media_type) = head;
            match images.iter_mut().find(|i| i.digest == digest.as_str()) {
                Some(image) => image.tags.push(tag),
                None => images.push(ImageInfo {
                    digest: digest.to_string(),
                    tags: vec![tag],
                    pushed_at: None,
                    size: None,
                    media_type: Some(media_type),
                }),
            }
        }
        Ok(Page {
            items: images,
            next,
        })
    }
}
