//! The ECR control plane for one registry: list repositories and images, read a repository's
//! settings, and ensure a target repository exists with given settings.

use std::collections::BTreeMap;

use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
    ImageTagMutabilityExclusionFilter, ImageTagMutabilityExclusionFilterType, Tag,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::registry::EcrRegistry;

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
    /// Resource tags.
    pub tags: BTreeMap<String, String>,
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
    fn protected_by(&self, desired: &RepositorySettings) -> bool {
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

    fn exclusion_filters(&self) -> Option<Vec<ImageTagMutabilityExclusionFilter>> {
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
        }
    }
}

/// One setting changed (or, in a dry run, to change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingChange {
    /// Which setting: `tagMutability`, `scanOnPush`, `lifecyclePolicy`, `repositoryPolicy`,
    /// `tags`, `encryption`.
    pub setting: String,
    /// What it was (short).
    pub from: String,
    /// What it becomes (short).
    pub to: String,
}

/// What `ensure_repository` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureReport {
    /// The repository was created.
    pub created: bool,
    /// Settings changed.
    pub changes: Vec<SettingChange>,
    /// Differences that cannot be changed on an existing repository (encryption).
    pub drift: Vec<String>,
}

/// How an existing repository's settings are brought to the desired ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    /// Left as they are (created repositories get the desired settings).
    Never,
    /// Changed toward the desired settings, but never made weaker: immutable tags stay
    /// immutable, scan on push stays on, a lifecycle policy or resource tag is never removed.
    NoWeaker,
    /// Made exactly the desired settings, weaker ones included.
    Exactly,
}

/// What `ensure_repository` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnsureOptions {
    /// How an existing repository is reconciled.
    pub reconcile: Reconcile,
    /// Compare and set the repository policy (otherwise it is never read into a change).
    pub repository_policy: bool,
    /// Report only.
    pub dry_run: bool,
}

/// Turns the desired settings' weakenings of `current` back (immutable to mutable, scan on
/// push off, a lifecycle or repository policy removed, resource tags removed) and says what
/// was kept.
fn keep_protection(current: &RepositorySettings, desired: &mut RepositorySettings) -> Vec<String> {
    let mut kept = Vec::new();
    let note = |setting: &str, is: String, source: String| {
        format!("{setting} stays {is} in the target: the source's {source} would weaken it (repositorySettings \"mirror\" allows that)")
    };
    if !current.protected_by(desired) {
        kept.push(note(
            "tagMutability",
            current.mutability_text(),
            desired.mutability_text(),
        ));
        desired.tag_mutability = current.tag_mutability.clone();
        desired.tag_mutability_exclusions = current.tag_mutability_exclusions.clone();
    }
    if current.scan_on_push && !desired.scan_on_push {
        kept.push(note("scanOnPush", "true".into(), "false".into()));
        desired.scan_on_push = true;
    }
    if current.lifecycle_policy.is_some() && desired.lifecycle_policy.is_none() {
        kept.push(note("lifecyclePolicy", "set".into(), "none".into()));
        desired.lifecycle_policy = current.lifecycle_policy.clone();
    }
    if current.repository_policy.is_some() && desired.repository_policy.is_none() {
        kept.push(note("repositoryPolicy", "set".into(), "none".into()));
        desired.repository_policy = current.repository_policy.clone();
    }
    let removed: Vec<&String> = current
        .tags
        .keys()
        .filter(|k| !desired.tags.contains_key(*k))
        .collect();
    if !removed.is_empty() {
        let named: Vec<String> = removed
            .iter()
            .take(TAG_KEYS_NAMED)
            .map(|k| k.chars().take(64).collect())
            .collect();
        kept.push(note(
            "tags",
            format!("{} keys ({})", removed.len(), named.join(", ")),
            "tags without them".into(),
        ));
        for key in removed {
            desired.tags.insert(key.clone(), current.tags[key].clone());
        }
    }
    kept
}

/// The settings that differ between `current` and `desired` (encryption aside: it cannot
/// change).
fn differences(current: &RepositorySettings, desired: &RepositorySettings) -> Vec<SettingChange> {
    let mut changes = Vec::new();
    let mut change = |setting: &str, from: String, to: String| {
        changes.push(SettingChange {
            setting: setting.into(),
            from,
            to,
        })
    };
    if current.tag_mutability != desired.tag_mutability
        || current.tag_mutability_exclusions != desired.tag_mutability_exclusions
    {
        change(
            "tagMutability",
            current.mutability_text(),
            desired.mutability_text(),
        );
    }
    if current.scan_on_push != desired.scan_on_push {
        change(
            "scanOnPush",
            current.scan_on_push.to_string(),
            desired.scan_on_push.to_string(),
        );
    }
    if !json_equal(&current.lifecycle_policy, &desired.lifecycle_policy) {
        change(
            "lifecyclePolicy",
            short(&current.lifecycle_policy),
            short(&desired.lifecycle_policy),
        );
    }
    if !json_equal(&current.repository_policy, &desired.repository_policy) {
        change(
            "repositoryPolicy",
            short(&current.repository_policy),
            short(&desired.repository_policy),
        );
    }
    if current.tags != desired.tags {
        let (from, to) = tag_change(&current.tags, &desired.tags);
        change("tags", from, to);
    }
    changes
}

/// Resource tags that change, said briefly: `3 tags` to `4 tags: +team, ~env, -old` (keys only,
/// at most `TAG_KEYS_NAMED` of them): a change travels in the report, whose size is bounded.
fn tag_change(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> (String, String) {
    let mut keys: Vec<String> = Vec::new();
    for (k, v) in desired {
        match current.get(k) {
            None => keys.push(format!("+{k}")),
            Some(old) if old != v => keys.push(format!("~{k}")),
            _ => {}
        }
    }
    keys.extend(
        current
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .map(|k| format!("-{k}")),
    );
    let named = keys.len().min(TAG_KEYS_NAMED);
    let more = if keys.len() > named {
        format!(" and {} more", keys.len() - named)
    } else {
        String::new()
    };
    let keys: Vec<String> = keys
        .into_iter()
        .take(named)
        .map(|k| k.chars().take(64).collect())
        .collect();
    (
        format!("{} tags", current.len()),
        format!("{} tags: {}{more}", desired.len(), keys.join(", ")),
    )
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

/// Resource tag keys a tag change names at most.
const TAG_KEYS_NAMED: usize = 5;

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

/// ECR control plane for one registry (account and region).
#[derive(Clone)]
pub struct EcrAdmin {
    client: aws_sdk_ecr::Client,
    registry: EcrRegistry,
}

fn json_equal(a: &Option<String>, b: &Option<String>) -> bool {
    let parse = |s: &Option<String>| {
        s.as_deref().map(|t| {
            serde_json::from_str::<serde_json::Value>(t)
                .unwrap_or(serde_json::Value::String(t.to_string()))
        })
    };
    parse(a) == parse(b)
}

fn short(policy: &Option<String>) -> String {
    match policy {
        None => "none".into(),
        Some(text) => format!("{} bytes of JSON", text.len()),
    }
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
    /// without a filter ECR lists only `ACTIVE` images.
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
        let lifecycle = match self
            .client
            .get_lifecycle_policy()
            .registry_id(&self.registry.account_id)
            .repository_name(repository)
            .send()
            .await
        {
            Ok(out) => out.lifecycle_policy_text().map(str::to_string),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_lifecycle_policy_not_found_exception()) =>
            {
                None
            }
            Err(e) => {
                return Err(Error::api(
                    "ecr:GetLifecyclePolicy",
                    self.resource(repository),
                    &e,
                ))
            }
        };
        let policy = match self
            .client
            .get_repository_policy()
            .registry_id(&self.registry.account_id)
            .repository_name(repository)
            .send()
            .await
        {
            Ok(out) => out.policy_text().map(str::to_string),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_policy_not_found_exception()) =>
            {
                None
            }
            Err(e) => {
                return Err(Error::api(
                    "ecr:GetRepositoryPolicy",
                    self.resource(repository),
                    &e,
                ))
            }
        };
        let arn = repo
            .repository_arn()
            .map(str::to_string)
            .unwrap_or_else(|| self.registry.repository_arn(repository));
        let tags = self
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
        }))
    }

    /// Makes a repository exist with `desired` settings (created with them when missing), then
    /// reconciles an existing one as `how` says: not at all, toward the desired settings but
    /// never weaker than it is, or exactly. Differences left alone are reported as drift. The
    /// repository policy is compared and set only when `how.repository_policy`; ECR refusing
    /// the policy (a principal it does not know) is drift, not a failure. With `dry_run`, the
    /// report says what would change and nothing is written.
    pub async fn ensure_repository(
        &self,
        repository: &str,
        desired: &RepositorySettings,
        how: EnsureOptions,
    ) -> Result<EnsureReport> {
        let mut report = EnsureReport::default();
        let mut desired = desired.clone();
        let current = match self.read_settings(repository).await? {
            Some(current) => current,
            None => {
                report.created = true;
                if !how.repository_policy {
                    desired.repository_policy = None;
                }
                if how.dry_run {
                    return Ok(report);
                }
                self.create(repository, &desired).await?;
                // Policies are not part of CreateRepository: set them below.
                RepositorySettings {
                    lifecycle_policy: None,
                    repository_policy: None,
                    ..desired.clone()
                }
            }
        };
        if !how.repository_policy {
            desired.repository_policy = current.repository_policy.clone();
        }
        if current.encryption_type != desired.encryption_type || current.kms_key != desired.kms_key
        {
            report.drift.push(format!(
                "encryption is {} {} but the source's maps to {} {}; ECR cannot change the encryption of an existing repository: recreate it to match",
                current.encryption_type.as_str(),
                current.kms_key.clone().unwrap_or_default(),
                desired.encryption_type.as_str(),
                desired.kms_key.clone().unwrap_or_default()
            ));
        }
        let reconcile = if report.created {
            Reconcile::Exactly
        } else {
            how.reconcile
        };
        if reconcile == Reconcile::NoWeaker {
            report.drift.extend(keep_protection(&current, &mut desired));
        }
        let changes = differences(&current, &desired);
        if reconcile == Reconcile::Never {
            report.drift.extend(changes.iter().map(|c| {
                format!(
                    "{} is {} in the target, {} in the source (repositorySettings is \"create\": existing repositories are left as they are)",
                    c.setting, c.from, c.to
                )
            }));
            return Ok(report);
        }
        let mut applied = Vec::new();
        for change in changes {
            if !how.dry_run {
                match self.apply(repository, &change, &current, &desired).await {
                    Err(Error::Api { code, message, .. })
                        if change.setting == "repositoryPolicy"
                            && code.as_deref() == Some("InvalidParameterException") =>
                    {
                        report.drift.push(format!(
                            "repositoryPolicy: ECR refused the source's policy ({message}); the target keeps {}",
                            change.from
                        ));
                        continue;
                    }
                    other => other?,
                }
            }
            applied.push(change);
        }
        // Settings given at creation are not changes; only report what differed afterwards.
        report.changes = applied;
        Ok(report)
    }

    async fn create(&self, repository: &str, desired: &RepositorySettings) -> Result<()> {
        let mut encryption =
            EncryptionConfiguration::builder().encryption_type(desired.encryption_type.clone());
        if let Some(key) = &desired.kms_key {
            encryption = encryption.kms_key(key);
        }
        let encryption = encryption.build().map_err(|e| Error::Api {
            code: None,
            operation: "ecr:CreateRepository",
            resource: self.resource(repository),
            message: e.to_string(),
            retryable: false,
        })?;
        let tags: Vec<Tag> = desired
            .tags
            .iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect();
        let created = self
            .client
            .create_repository()
            .registry_id(&self.registry.account_id)
            .repository_name(repository)
            .image_tag_mutability(desired.tag_mutability.clone())
            .set_image_tag_mutability_exclusion_filters(desired.exclusion_filters())
            .image_scanning_configuration(
                ImageScanningConfiguration::builder()
                    .scan_on_push(desired.scan_on_push)
                    .build(),
            )
            .encryption_configuration(encryption)
            .set_tags(if tags.is_empty() { None } else { Some(tags) })
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another execution created it meanwhile: that is success.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::api(
                "ecr:CreateRepository",
                self.resource(repository),
                &e,
            )),
        }
    }

    async fn apply(
        &self,
        repository: &str,
        change: &SettingChange,
        current: &RepositorySettings,
        desired: &RepositorySettings,
    ) -> Result<()> {
        let id = &self.registry.account_id;
        let resource = self.resource(repository);
        match change.setting.as_str() {
            "tagMutability" => self
                .client
                .put_image_tag_mutability()
                .registry_id(id)
                .repository_name(repository)
                .image_tag_mutability(desired.tag_mutability.clone())
                .set_image_tag_mutability_exclusion_filters(desired.exclusion_filters())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api("ecr:PutImageTagMutability", resource, &e)),
            "scanOnPush" => self
                .client
                .put_image_scanning_configuration()
                .registry_id(id)
                .repository_name(repository)
                .image_scanning_configuration(
                    ImageScanningConfiguration::builder()
                        .scan_on_push(desired.scan_on_push)
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api("ecr:PutImageScanningConfiguration", resource, &e)),
            "lifecyclePolicy" => match &desired.lifecycle_policy {
                Some(text) => self
                    .client
                    .put_lifecycle_policy()
                    .registry_id(id)
                    .repository_name(repository)
                    .lifecycle_policy_text(text)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::api("ecr:PutLifecyclePolicy", resource, &e)),
                None => self
                    .client
                    .delete_lifecycle_policy()
                    .registry_id(id)
                    .repository_name(repository)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::api("ecr:DeleteLifecyclePolicy", resource, &e)),
            },
            "repositoryPolicy" => match &desired.repository_policy {
                Some(text) => self
                    .client
                    .set_repository_policy()
                    .registry_id(id)
                    .repository_name(repository)
                    .policy_text(text)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::api("ecr:SetRepositoryPolicy", resource, &e)),
                None => self
                    .client
                    .delete_repository_policy()
                    .registry_id(id)
                    .repository_name(repository)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::api("ecr:DeleteRepositoryPolicy", resource, &e)),
            },
            "tags" => {
                let arn = self.registry.repository_arn(repository);
                let stale: Vec<String> = current
                    .tags
                    .keys()
                    .filter(|k| !desired.tags.contains_key(*k))
                    .cloned()
                    .collect();
                if !stale.is_empty() {
                    self.client
                        .untag_resource()
                        .resource_arn(&arn)
                        .set_tag_keys(Some(stale))
                        .send()
                        .await
                        .map_err(|e| Error::api("ecr:UntagResource", resource.clone(), &e))?;
                }
                let wanted: Vec<Tag> = desired
                    .tags
                    .iter()
                    .filter(|(k, v)| current.tags.get(*k) != Some(*v))
                    .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
                    .collect();
                if !wanted.is_empty() {
                    self.client
                        .tag_resource()
                        .resource_arn(&arn)
                        .set_tags(Some(wanted))
                        .send()
                        .await
                        .map_err(|e| Error::api("ecr:TagResource", resource, &e))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(mutability: ImageTagMutability, filters: &[&str]) -> RepositorySettings {
        RepositorySettings {
            tag_mutability: mutability,
            tag_mutability_exclusions: filters.iter().map(|f| f.to_string()).collect(),
            ..RepositorySettings::default()
        }
    }

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

    #[test]
    fn immutability_with_exclusions_is_per_tag_and_never_weakened() {
        use ImageTagMutability as M;
        let iwe = with(M::ImmutableWithExclusion, &["dev-*"]);
        assert!(iwe.tag_is_immutable("v1") && !iwe.tag_is_immutable("dev-7"));
        let mwe = with(M::MutableWithExclusion, &["v*"]);
        assert!(mwe.tag_is_immutable("v1") && !mwe.tag_is_immutable("latest"));
        // Weaker: fewer tags protected.
        assert!(!with(M::Immutable, &[]).protected_by(&iwe));
        assert!(!iwe.protected_by(&with(M::ImmutableWithExclusion, &["dev-*", "x-*"])));
        assert!(!iwe.protected_by(&with(M::Mutable, &[])));
        assert!(!mwe.protected_by(&with(M::MutableWithExclusion, &[])));
        // As strong or stronger.
        assert!(iwe.protected_by(&with(M::Immutable, &[])));
        assert!(iwe.protected_by(&with(M::ImmutableWithExclusion, &[])));
        assert!(mwe.protected_by(&with(M::MutableWithExclusion, &["v*", "r*"])));
        assert!(with(M::Mutable, &[]).protected_by(&mwe));
        let mut desired = with(M::ImmutableWithExclusion, &["dev-*", "x-*"]);
        let kept = keep_protection(&iwe, &mut desired);
        assert_eq!(
            desired.mutability_text(),
            "IMMUTABLE_WITH_EXCLUSION [dev-*]"
        );
        assert!(
            kept[0].contains("IMMUTABLE_WITH_EXCLUSION [dev-*, x-*]"),
            "{kept:?}"
        );
    }

    #[test]
    fn a_tag_change_names_keys_not_values_and_stays_short() {
        let current: BTreeMap<String, String> = (0..500)
            .map(|i| (format!("k{i:03}"), "v".repeat(200)))
            .collect();
        let mut desired = current.clone();
        desired.insert("team".into(), "ml".into());
        desired.insert("k000".into(), "changed".into());
        desired.remove("k499");
        let (from, to) = tag_change(&current, &desired);
        assert_eq!(from, "500 tags");
        assert_eq!(to, "500 tags: ~k000, +team, -k499");
        let many: BTreeMap<String, String> =
            (0..100).map(|i| (format!("n{i}"), "v".into())).collect();
        let (_, to) = tag_change(&BTreeMap::new(), &many);
        assert!(to.ends_with("and 95 more") && to.len() < 100, "{to}");
    }
}
