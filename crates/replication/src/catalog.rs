//! The seams to registries' listings and repository administration: a `Catalog` lists
//! repositories and images (ECR's API, or any OCI registry's `_catalog` and tag lists).
//! Repository settings are ECR's alone: `ecr::EcrAdmin` reads and ensures them.

use async_trait::async_trait;
use ecr::{EcrAdmin, Page};
use futures::StreamExt;
use oci::{Reference, RegistryClient, Repository};

use crate::connect::Connection;
use crate::error::{Error, Result};
use crate::filter::{refuse_invalid, valid_tags, ListedImage, Refusal};

/// Lists what a registry holds, page by page.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// One page of at most `limit` repository names.
    async fn repositories(&self, next: Option<String>, limit: usize) -> Result<Page<String>>;
    /// One page of a repository's images, every name in it valid; the invalid ones refused.
    async fn images(&self, repository: &str, next: Option<String>) -> Result<ImagesPage>;
}

/// One page of a repository's images.
#[derive(Debug, Default)]
pub struct ImagesPage {
    /// Images whose digest and tags are valid names.
    pub items: Vec<ListedImage>,
    /// The token of the next page.
    pub next: Option<String>,
    /// Names the registry listed that are not valid (never used in a request).
    pub refused: Vec<Refusal>,
}

impl Connection {
    /// The catalog of this registry: ECR's API, or the OCI catalog.
    pub fn catalog(&self) -> Box<dyn Catalog + '_> {
        match &self.ecr {
            Some(admin) => Box::new(admin.clone()),
            None => Box::new(OciCatalog {
                client: &self.client,
                registry: &self.registry,
                page_size: self.catalog_page_size,
                resolve_with_head: self.counts_pulls(),
            }),
        }
    }
}

/// A listing of `what` in `registry` that went on past `oci::MAX_LISTING_PAGES` pages: refused
/// rather than followed.
pub(crate) fn too_many_pages(registry: &str, what: String) -> Error {
    Error::Listing {
        source: oci::Error::ResponseTooLarge {
            what: what.clone(),
            url: registry.to_string(),
            limit: format!("{} pages", oci::MAX_LISTING_PAGES),
        },
        what,
    }
}

/// Wraps an ECR API error with what was being done.
pub(crate) fn aws(context: String) -> impl FnOnce(ecr::Error) -> Error {
    move |source| Error::Aws { context, source }
}

#[async_trait]
impl Catalog for EcrAdmin {
    async fn repositories(&self, next: Option<String>, limit: usize) -> Result<Page<String>> {
        self.list_repositories(next, limit)
            .await
            .map_err(aws(format!("listing repositories of {}", self.registry())))
    }

    async fn images(&self, repository: &str, next: Option<String>) -> Result<ImagesPage> {
        let page = self
            .list_images(repository, next)
            .await
            .map_err(aws(format!(
                "listing images of {}/{repository}",
                self.registry()
            )))?;
        let (items, refused) = refuse_invalid(page.items);
        Ok(ImagesPage {
            items,
            next: page.next,
            refused,
        })
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
    /// Resolve tags with HEADs: the registry counts each manifest GET as a pull (Docker Hub).
    /// Otherwise each tag's manifest is read, and the plan takes it from the client's cache.
    pub resolve_with_head: bool,
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

    async fn images(&self, repository: &str, next: Option<String>) -> Result<ImagesPage> {
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
        // A tag that is not valid never reaches a URL: refused before any request.
        let mut refused = Vec::new();
        let tags = valid_tags(tags, &mut refused);
        let heads: Vec<_> = futures::stream::iter(tags)
            .map(|tag| {
                let reference = Reference {
                    repository: repo.clone(),
                    tag: Some(tag.clone()),
                    digest: None,
                };
                // Where pulls are counted, a HEAD (Docker Hub counts each manifest GET, no
                // HEAD); elsewhere the manifest itself: the same one request, and an in-process
                // plan then reads it from the client's cache.
                async move {
                    let found = if self.resolve_with_head {
                        self.client
                            .head_manifest(&reference)
                            .await
                            .map(|found| found.map(|h| (h.digest, h.media_type)))
                    } else {
                        match self.client.get_manifest(&reference).await {
                            Ok(m) => Ok(Some((m.digest, Some(m.media_type)))),
                            Err(e) if e.is_not_found() => Ok(None),
                            Err(e) => Err(e),
                        }
                    };
                    (tag, found)
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut images: Vec<ListedImage> = Vec::new();
        for (tag, head) in heads {
            // A manifest that is not one unambiguous document is refused alone, named: one
            // hostile tag does not stop the rest of the repository.
            if let Err(oci::Error::InvalidManifest { reason, .. }) = &head {
                refused.push(crate::filter::Refusal::new(
                    &tag,
                    format!("its manifest is refused: {reason}"),
                ));
                continue;
            }
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
                None => images.push(ListedImage {
                    digest: digest.to_string(),
                    tags: vec![tag],
                    pushed_at: None,
                    size: None,
                    media_type,
                    archived: false,
                }),
            }
        }
        Ok(ImagesPage {
            items: images,
            next,
            refused,
        })
    }
}
