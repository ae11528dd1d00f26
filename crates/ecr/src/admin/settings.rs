//! A repository's settings as replication copies them: what they are, how strong a tag
//! mutability is, and reading them from ECR.

use std::collections::BTreeMap;

use aws_sdk_ecr::types::{
    EncryptionType, ImageTagMutability, ImageTagMutabilityExclusionFilter,
    ImageTagMutabilityExclusionFilterType,
};

use super::EcrAdmin;
use crate::error::{Error, Result};

/// Repository settings that replication copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySettings {
    /// `MUTABLE` or `IMMUTABLE` (or the `*_WITH_EXCLUSION` variants).
    pub tag_mutability: ImageTagMutability,
    /// With a `*_WITH_EXCLUSION` mutability, the wildcard filters of the tags that are the
    /// exception (mutable in `IMMUTABLE_WITH_EXCLUSION`, immutable in `MUTABLE_WITH_EXCLUSION`);
    /// ECR refuses those modes without filters. Sorted.
    pub tag_mutability_exclusions: Vec<String>,
    /// Basic scan on push.
    pub scan_on_push: bool,
    /// `AES256`, `KMS` (or `KMS_DSSE`).
    pub encryption_type: EncryptionType,
    /// KMS key ARN when `KMS` with a customer key.
    pub kms_key: Option<String>,
    /// Lifecycle policy JSON text.
    pub lifecycle_policy: Option<String>,
    /// Repository policy JSON text.
    pub repository_policy: Option<String>,
    /// Resource tags (the replicator's own `REFUSED_POLICY_TAG` aside).
    pub tags: BTreeMap<String, String>,
    /// The repository policy put ECR last refused here, as remembered on the repository
    /// (`REFUSED_POLICY_TAG`'s value: the put's key and ECR's message); read, never copied.
    pub refused_policy: Option<String>,
}

impl RepositorySettings {
    /// Whether `tag` cannot be moved or removed here: every tag under `IMMUTABLE`; under
    /// `IMMUTABLE_WITH_EXCLUSION` those no exclusion filter matches; under
    /// `MUTABLE_WITH_EXCLUSION` those a filter matches (ECR user guide, "Preventing image tags
    /// from being overwritten": exclusion filters, `*` the only wildcard).
    pub fn tag_is_immutable(&self, tag: &str) -> bool {
        let excluded = || {
            self.tag_mutability_exclusions
                .iter()
                .any(|f| wildcard_matches(f, tag))
        };
        match self.tag_mutability {
            ImageTagMutability::Immutable => true,
            ImageTagMutability::ImmutableWithExclusion => !excluded(),
            ImageTagMutability::MutableWithExclusion => excluded(),
            _ => false,
        }
    }

    /// The mutability as ECR states it, with its filters: `IMMUTABLE_WITH_EXCLUSION [dev-*]`.
    pub fn mutability_text(&self) -> String {
        if self.tag_mutability_exclusions.is_empty() {
            self.tag_mutability.as_str().to_string()
        } else {
            format!(
                "{} [{}]",
                self.tag_mutability.as_str(),
                self.tag_mutability_exclusions.join(", ")
            )
        }
    }

    /// Whether `desired` protects at least every tag this protects (never weaker): immutable
    /// stays immutable; an exclusion list may only shrink under `IMMUTABLE_WITH_EXCLUSION` and
    /// only grow under `MUTABLE_WITH_EXCLUSION`. Filters are compared as text, so anything not
    /// provably as strong counts as weaker.
    pub(super) fn protected_by(&self, desired: &RepositorySettings) -> bool {
        use ImageTagMutability as M;
        let subset = |a: &[String], b: &[String]| a.iter().all(|f| b.contains(f));
        match (&self.tag_mutability, &desired.tag_mutability) {
            (_, M::Immutable) => true,
            (M::Immutable, _) => false,
            (M::ImmutableWithExclusion, M::ImmutableWithExclusion) => subset(
                &desired.tag_mutability_exclusions,
                &self.tag_mutability_exclusions,
            ),
            (M::ImmutableWithExclusion, _) => false,
            (M::MutableWithExclusion, M::MutableWithExclusion) => subset(
                &self.tag_mutability_exclusions,
                &desired.tag_mutability_exclusions,
            ),
            (M::MutableWithExclusion, _) => false,
            _ => true,
        }
    }

    pub(super) fn exclusion_filters(&self) -> Option<Vec<ImageTagMutabilityExclusionFilter>> {
        if self.tag_mutability_exclusions.is_empty() {
            return None;
        }
        Some(
            self.tag_mutability_exclusions
                .iter()
                .filter_map(|f| {
                    ImageTagMutabilityExclusionFilter::builder()
                        .filter_type(ImageTagMutabilityExclusionFilterType::Wildcard)
                        .filter(f)
                        .build()
                        .ok()
                })
                .collect(),
        )
    }

    /// Encrypted with a KMS key (`KMS` or `KMS_DSSE`): the key is regional and must be mapped.
    pub fn uses_kms(&self) -> bool {
        matches!(
            self.encryption_type,
            EncryptionType::Kms | EncryptionType::KmsDsse
        )
    }
}

impl Default for RepositorySettings {
    fn default() -> Self {
        RepositorySettings {
            tag_mutability: ImageTagMutability::Mutable,
            tag_mutability_exclusions: Vec::new(),
            scan_on_push: false,
            encryption_type: EncryptionType::Aes256,
            kms_key: None,
            lifecycle_policy: None,
            repository_policy: None,
            tags: BTreeMap::new(),
            refused_policy: None,
        }
    }
}

/// A repository's tag mutability as `DescribeRepositories` describes it, with its exclusion
/// filters, sorted (`MUTABLE` when it says nothing).
pub fn tag_mutability_of(
    repo: &aws_sdk_ecr::types::Repository,
) -> (ImageTagMutability, Vec<String>) {
    let mut filters: Vec<String> = repo
        .image_tag_mutability_exclusion_filters()
        .iter()
        .map(|f| f.filter().to_string())
        .collect();
    filters.sort();
    let mutability = repo
        .image_tag_mutability()
        .cloned()
        .unwrap_or(ImageTagMutability::Mutable);
    (mutability, filters)
}

/// ECR's tag wildcard filters: `*` matches any run of characters (none included), everything
/// else itself.
pub fn wildcard_matches(filter: &str, tag: &str) -> bool {
    let parts: Vec<&str> = filter.split('*').collect();
    if parts.len() == 1 {
        return filter == tag;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !tag.starts_with(first) || tag.len() < first.len() + last.len() || !tag.ends_with(last) {
        return false;
    }
    let mut rest = &tag[first.len()..tag.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

impl EcrAdmin {
    /// A repository's settings, `None` if it does not exist.
    pub async fn read_settings(&self, repository: &str) -> Result<Option<RepositorySettings>> {
        let described = self
            .client
            .describe_repositories()
            .registry_id(&self.registry.account_id)
            .repository_names(repository)
            .send()
            .await;
        let out = match described {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(Error::api(
                    "ecr:DescribeRepositories",
                    self.resource(repository),
                    &e,
                ))
            }
        };
        let Some(repo) = out.repositories().first() else {
            return Ok(None);
        };
        let encryption = repo.encryption_configuration();
        let lifecycle = self.lifecycle_policy(repository).await?;
        let policy = self.repository_policy(repository).await?;
        let arn = repo
            .repository_arn()
            .map(str::to_string)
            .unwrap_or_else(|| self.registry.repository_arn(repository));
        let mut tags: BTreeMap<String, String> = self
            .client
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .map_err(|e| Error::api("ecr:ListTagsForResource", self.resource(repository), &e))?
            .tags()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        let refused_policy = tags.remove(super::policies::REFUSED_POLICY_TAG);
        let (tag_mutability, tag_mutability_exclusions) = tag_mutability_of(repo);
        Ok(Some(RepositorySettings {
            tag_mutability,
            tag_mutability_exclusions,
            scan_on_push: repo
                .image_scanning_configuration()
                .is_some_and(|s| s.scan_on_push()),
            encryption_type: encryption
                .map(|e| e.encryption_type().clone())
                .unwrap_or(EncryptionType::Aes256),
            kms_key: encryption.and_then(|e| e.kms_key().map(str::to_string)),
            lifecycle_policy: lifecycle,
            repository_policy: policy,
            tags,
            refused_policy,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_ecr_filters_do() {
        assert!(wildcard_matches("dev-*", "dev-1"));
        assert!(wildcard_matches("dev-*", "dev-"));
        assert!(!wildcard_matches("dev-*", "prod-dev-1"));
        assert!(wildcard_matches("*-rc*", "v1.2-rc3"));
        assert!(wildcard_matches("*", "anything"));
        assert!(wildcard_matches("a*b*c", "abc"));
        assert!(!wildcard_matches("a*b*c", "acb"));
        assert!(!wildcard_matches("latest", "latest2"));
    }
}
