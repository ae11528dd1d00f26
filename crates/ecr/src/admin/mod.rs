//! The ECR control plane for one registry: list repositories and images, remove tags (here),
//! read a repository's settings (`settings`), ensure a target repository exists with given
//! settings (`reconcile`), and read and write its lifecycle and repository policies
//! (`policies`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::EcrRegistry;

mod policies;
mod reconcile;
mod settings;

pub use policies::REFUSED_POLICY_TAG;
pub use reconcile::{EnsureOptions, EnsureReport, Reconcile, SettingChange};
pub use settings::{tag_mutability_of, wildcard_matches, RepositorySettings};

/// One page of results and the token for the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// Token for the next page; `None` on the last.
    pub next: Option<String>,
}

/// An image as a registry's listing reports it (`DescribeImages`, or an OCI tag list with
/// each tag resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedImage {
    /// Manifest digest.
    pub digest: String,
    /// Its tags (empty: untagged).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Push time, seconds since the epoch, when the registry reports it (ECR does).
    #[serde(default)]
    pub pushed_at: Option<i64>,
    /// Size the registry reports, if any.
    #[serde(default)]
    pub size: Option<u64>,
    /// Manifest media type, if known.
    #[serde(default)]
    pub media_type: Option<String>,
    /// In ECR's archive storage class (`ARCHIVED`, or `ACTIVATING` while a restore runs): listed
    /// and described, but pulls answer 404 until it is restored (ECR user guide, "Archiving an
    /// image").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
}

/// ECR control plane for one registry (account and region).
#[derive(Clone)]
pub struct EcrAdmin {
    client: aws_sdk_ecr::Client,
    registry: EcrRegistry,
}

impl EcrAdmin {
    /// Wraps a client for the registry's account and region.
    pub fn new(client: aws_sdk_ecr::Client, registry: EcrRegistry) -> Self {
        EcrAdmin { client, registry }
    }

    /// The registry this admin works on.
    pub fn registry(&self) -> &EcrRegistry {
        &self.registry
    }

    /// One page of repository names (`DescribeRepositories`), at most 200, so the workflow's
    /// per-page map output stays far below the 256 KiB state payload limit.
    pub async fn list_repositories(
        &self,
        next: Option<String>,
        limit: usize,
    ) -> Result<Page<String>> {
        let out = self
            .client
            .describe_repositories()
            .registry_id(&self.registry.account_id)
            .set_next_token(next)
            .max_results(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| Error::api("ecr:DescribeRepositories", self.registry.host.clone(), &e))?;
        Ok(Page {
            items: out
                .repositories()
                .iter()
                .filter_map(|r| r.repository_name().map(str::to_string))
                .collect(),
            next: out.next_token().map(str::to_string),
        })
    }

    /// One page of a repository's images (`DescribeImages`), archived ones included (marked):
    /// without a filter ECR lists only `ACTIVE` images. Tagged and untagged alike (no
    /// `tagStatus`: "TAGGED | UNTAGGED | ANY", not required; ECR API reference,
    /// `DescribeImagesFilter`), so referrers pushed by digest are listed too (the referrers
    /// lookups `replication` leaves out rely on it: `steps/enumerate_images_held.rs`).
    pub async fn list_images(
        &self,
        repository: &str,
        next: Option<String>,
    ) -> Result<Page<ListedImage>> {
        let out = self
            .client
            .describe_images()
            .registry_id(&self.registry.account_id)
            .repository_name(repository)
            .set_next_token(next)
            .max_results(1000)
            .filter(
                aws_sdk_ecr::types::DescribeImagesFilter::builder()
                    .image_status(aws_sdk_ecr::types::ImageStatusFilter::Any)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::api("ecr:DescribeImages", self.resource(repository), &e))?;
        let items = out
            .image_details()
            .iter()
            .filter_map(|d| {
                Some(ListedImage {
                    digest: d.image_digest()?.to_string(),
                    tags: d.image_tags().to_vec(),
                    pushed_at: d.image_pushed_at().map(|t| t.secs()),
                    size: d.image_size_in_bytes().and_then(|s| u64::try_from(s).ok()),
                    media_type: d.image_manifest_media_type().map(str::to_string),
                    archived: matches!(
                        d.image_status(),
                        Some(
                            aws_sdk_ecr::types::ImageStatus::Archived
                                | aws_sdk_ecr::types::ImageStatus::Activating
                        )
                    ),
                })
            })
            .collect();
        Ok(Page {
            items,
            next: out.next_token().map(str::to_string),
        })
    }

    /// The digests of a repository's images in ECR's archive storage class (`imageStatus`
    /// `ARCHIVED`, or `ACTIVATING` while a restore runs: `DescribeImages` filtered by each, every
    /// page), each with when it was last archived (`lastArchivedAt`, seconds since the epoch)
    /// if ECR says. Such an image is listed and described but answers 404 to a pull, and a push
    /// of it restores it ("The image can be restored as an active image by manually selecting
    /// it to be restored or by re-pushing the image to the repository": ECR user guide,
    /// "Archiving an image", docs.aws.amazon.com/AmazonECR/latest/userguide/archive-image.html).
    /// A repository that does not exist has none.
    pub async fn archived_digests(
        &self,
        repository: &str,
    ) -> Result<std::collections::BTreeMap<String, Option<i64>>> {
        use aws_sdk_ecr::types::{DescribeImagesFilter, ImageStatusFilter};
        let mut archived = std::collections::BTreeMap::new();
        for status in [ImageStatusFilter::Archived, ImageStatusFilter::Activating] {
            let mut next = None;
            loop {
                let out = match self
                    .client
                    .describe_images()
                    .registry_id(&self.registry.account_id)
                    .repository_name(repository)
                    .set_next_token(next)
                    .max_results(1000)
                    .filter(
                        DescribeImagesFilter::builder()
                            .image_status(status.clone())
                            .build(),
                    )
                    .send()
                    .await
                {
                    Ok(out) => out,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_repository_not_found_exception()) =>
                    {
                        return Ok(archived);
                    }
                    Err(e) => {
                        return Err(Error::api(
                            "ecr:DescribeImages",
                            self.resource(repository),
                            &e,
                        ))
                    }
                };
                for detail in out.image_details() {
                    if let Some(digest) = detail.image_digest() {
                        archived.insert(
                            digest.to_string(),
                            detail.last_archived_at().map(|t| t.secs()),
                        );
                    }
                }
                match out.next_token() {
                    Some(token) => next = Some(token.to_string()),
                    None => break,
                }
            }
        }
        Ok(archived)
    }

    /// Removes tags (`BatchDeleteImage` by tag, 100 per call; an image goes when its last tag
    /// does). Returns the tags ECR refused, each with its reason.
    pub async fn remove_tags(
        &self,
        repository: &str,
        tags: &[String],
    ) -> Result<Vec<(String, String)>> {
        let mut refused = Vec::new();
        for chunk in tags.chunks(100) {
            let ids = chunk
                .iter()
                .map(|t| {
                    aws_sdk_ecr::types::ImageIdentifier::builder()
                        .image_tag(t)
                        .build()
                })
                .collect();
            let out = self
                .client
                .batch_delete_image()
                .registry_id(&self.registry.account_id)
                .repository_name(repository)
                .set_image_ids(Some(ids))
                .send()
                .await
                .map_err(|e| Error::api("ecr:BatchDeleteImage", self.resource(repository), &e))?;
            for failure in out.failures() {
                let tag = failure
                    .image_id()
                    .and_then(|i| i.image_tag())
                    .unwrap_or_default()
                    .to_string();
                let reason = format!(
                    "{}: {}",
                    failure
                        .failure_code()
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_default(),
                    failure.failure_reason().unwrap_or_default()
                );
                refused.push((tag, reason));
            }
        }
        Ok(refused)
    }

    fn resource(&self, repository: &str) -> String {
        format!("{}/{repository}", self.registry.host)
    }
}
