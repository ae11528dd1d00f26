//! Ensuring a target repository: created with the desired settings when missing, an existing
//! one reconciled as the job says (never, never weaker, or exactly), what is left alone
//! reported as drift.

use std::collections::BTreeMap;

use aws_sdk_ecr::types::{EncryptionConfiguration, ImageScanningConfiguration, Tag};
use serde::{Deserialize, Serialize};

use super::policies::{
    json_equal, parse_refusal, refusal_key, refusal_tag_value, short, REFUSED_POLICY_TAG,
};
use super::{EcrAdmin, RepositorySettings};
use crate::error::{Error, Result};

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

/// The drift note for a repository policy change that is the very put ECR refused last time
/// (`refused`, as remembered on the target, names it), if it is.
fn still_refused(refused: Option<&str>, put: &str, change: &SettingChange) -> Option<String> {
    let (key, message) = parse_refusal(refused?);
    (key == put).then(|| {
        format!(
            "repositoryPolicy: ECR refused it ({message}); remembered, not put again until the source's or the target's policy changes (or the target's tag {REFUSED_POLICY_TAG} is removed); the target keeps {}",
            change.from
        )
    })
}

/// Resource tag keys a tag change names at most.
const TAG_KEYS_NAMED: usize = 5;

impl EcrAdmin {
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
        // The refusal memory is no tag of the repository's own: never copied, compared or
        // removed as one (a source that is itself a target has one too).
        desired.tags.remove(REFUSED_POLICY_TAG);
        desired.refused_policy = None;
        let mut current = match self.read_settings(repository).await? {
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
        let refused = current.refused_policy.take();
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
        let put = refusal_key(&current.repository_policy, &desired.repository_policy);
        let mut applied = Vec::new();
        for change in changes {
            let policy = change.setting == "repositoryPolicy";
            // The very put ECR refused last time is drift, not a change: no retry, no child.
            if let Some(note) = policy
                .then(|| still_refused(refused.as_deref(), &put, &change))
                .flatten()
            {
                report.drift.push(note);
                continue;
            }
            if !how.dry_run {
                match self.apply(repository, &change, &current, &desired).await {
                    Err(Error::Api { code, message, .. })
                        if policy && code.as_deref() == Some("InvalidParameterException") =>
                    {
                        // ECR's own words, without the error's name (the note is listed short).
                        let message = message
                            .strip_prefix("InvalidParameterException: ")
                            .unwrap_or(&message);
                        report.drift.push(format!(
                            "repositoryPolicy: ECR refused it ({message}); the target keeps {}",
                            change.from
                        ));
                        let memory = refusal_tag_value(&put, message);
                        if let Err(e) = self.remember_refusal(repository, &memory).await {
                            tracing::warn!(error = %e, %repository, "could not remember the refused policy: the next run tries it again");
                        }
                        continue;
                    }
                    other => other?,
                }
                if policy && refused.is_some() {
                    self.forget(repository).await;
                }
            }
            applied.push(change);
        }
        // A refusal remembered for a policy no longer wanted (the target has what the source
        // says, or the policy is no longer copied) is forgotten.
        let policy_changes = applied.iter().any(|c| c.setting == "repositoryPolicy");
        if refused.is_some()
            && !how.dry_run
            && !policy_changes
            && !report
                .drift
                .iter()
                .any(|d| d.starts_with("repositoryPolicy: ECR refused"))
        {
            self.forget(repository).await;
        }
        // Settings given at creation are not changes; only report what differed afterwards.
        report.changes = applied;
        Ok(report)
    }

    /// Forgets a remembered refusal; a failure only leaves the tag (logged).
    async fn forget(&self, repository: &str) {
        if let Err(e) = self.forget_refusal(repository).await {
            tracing::warn!(error = %e, %repository, "could not remove the refused policy's tag");
        }
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
            "lifecyclePolicy" => {
                self.set_lifecycle_policy(repository, desired.lifecycle_policy.as_deref())
                    .await
            }
            "repositoryPolicy" => {
                self.set_repository_policy(repository, desired.repository_policy.as_deref())
                    .await
            }
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
    use aws_sdk_ecr::types::ImageTagMutability;

    use super::*;

    fn with(mutability: ImageTagMutability, filters: &[&str]) -> RepositorySettings {
        RepositorySettings {
            tag_mutability: mutability,
            tag_mutability_exclusions: filters.iter().map(|f| f.to_string()).collect(),
            ..RepositorySettings::default()
        }
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
