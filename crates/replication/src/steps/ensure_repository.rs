//! `ensure-repository`: creates a destination repository if missing, makes its settings
//! match the source's (`repositorySettings`), and with `prune` removes its stale tags.

use std::collections::HashSet;

use ecr::{EnsureReport, RepositorySettings, SettingChange};
use oci::Repository;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::catalog::aws;
use crate::connect::Connections;
use crate::error::{Error, Result};
use crate::job::{Destination, Job, SettingsMode, ValidJob};

/// The `ensure-repository` step: its output bounded (`EnsureRepositoryOutput::bounded`).
pub struct EnsureRepository;

impl Step for EnsureRepository {
    const NAME: &'static str = "ensure-repository";
    type Input = EnsureRepositoryInput;
    type Output = EnsureRepositoryOutput;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(async move { Ok(ensure_repository(conns, input).await?.bounded()) })
    }
}

/// Input of `ensure-repository`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnsureRepositoryInput {
    /// The job.
    pub job: Job,
    /// Source repository name.
    pub repository: String,
    /// Index into `job.destinations`.
    pub destination: usize,
}

/// Output of `ensure-repository`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnsureRepositoryOutput {
    /// Destination registry.
    pub registry: String,
    /// Repository in the destination.
    pub repository: String,
    /// Created (or, in a dry run, would be).
    pub created: bool,
    /// Settings changed (or, in a dry run, to change).
    #[schemars(with = "Vec<serde_json::Value>")]
    pub changes: Vec<SettingChange>,
    /// Differences left alone, and why.
    pub drift: Vec<String>,
    /// Why nothing was done, when nothing was (not ECR, or settings "none").
    pub skipped: Option<String>,
    /// With `prune`: tags removed (in a dry run, to remove) because the source no longer has them.
    #[serde(default)]
    pub pruned: Vec<String>,
    /// With `prune`: stale tags left in place, each with the reason (immutable tags, a registry
    /// that cannot remove a single tag).
    #[serde(default)]
    pub prune_kept: Vec<String>,
    /// How many tags were pruned when `pruned` lists only the first (Lambda outputs are bounded).
    #[serde(default)]
    pub pruned_count: usize,
    /// How many stale tags were kept when `pruneKept` lists only the first.
    #[serde(default)]
    pub prune_kept_count: usize,
}

impl EnsureRepositoryOutput {
    /// The output with at most `ENSURE_LISTED` tags in each list, the counts keeping the
    /// totals: what the Lambda returns, as it travels in the state (256 KiB at most).
    pub fn bounded(mut self) -> Self {
        self.pruned_count = self.pruned_count.max(self.pruned.len());
        self.prune_kept_count = self.prune_kept_count.max(self.prune_kept.len());
        self.pruned.truncate(ENSURE_LISTED);
        self.prune_kept.truncate(ENSURE_LISTED);
        self
    }

    pub(crate) fn from_report(registry: &str, repository: &str, report: EnsureReport) -> Self {
        EnsureRepositoryOutput {
            registry: registry.to_string(),
            repository: repository.to_string(),
            created: report.created,
            changes: report.changes,
            drift: report.drift,
            skipped: None,
            pruned: Vec::new(),
            prune_kept: Vec::new(),
            pruned_count: 0,
            prune_kept_count: 0,
        }
    }
}

/// The settings a destination repository should have, from the source's: KMS keys mapped
/// (keys are regional), the source account id in the repository policy replaced by the
/// destination's.
pub fn target_settings(
    source: Option<&RepositorySettings>,
    source_account: Option<&str>,
    destination: &Destination,
    destination_account: Option<&str>,
) -> RepositorySettings {
    let Some(source) = source else {
        return RepositorySettings::default();
    };
    let mut desired = source.clone();
    if desired.uses_kms() {
        desired.kms_key = source
            .kms_key
            .as_ref()
            .and_then(|k| destination.kms_key_mapping.get(k))
            .or_else(|| destination.kms_key_mapping.get("*"))
            .cloned();
    }
    if let (Some(policy), Some(from), Some(to)) = (
        &source.repository_policy,
        source_account,
        destination_account,
    ) {
        desired.repository_policy = Some(policy.replace(from, to));
    }
    desired
}

/// Creates the destination repository if missing and, with `repositorySettings: "copy"`, makes
/// its settings match the source's; then, with `prune`, removes the destination's stale tags.
/// Dry run: reports only.
#[tracing::instrument(skip_all, fields(repository = %input.repository, destination = input.destination))]
pub async fn ensure_repository(
    conns: &Connections,
    input: EnsureRepositoryInput,
) -> Result<EnsureRepositoryOutput> {
    let job = input.job.validate()?;
    let dest_spec = job.job.destination(input.destination)?.clone();
    let target = dest_spec.checked_target_repository(&input.repository)?;
    let mut output = apply_settings(
        conns,
        &job.job,
        (input.destination, &dest_spec),
        &input.repository,
        &target,
    )
    .await?;
    if job.job.prune && !output.created {
        let (pruned, kept) =
            prune_stale_tags(conns, &job, input.destination, &input.repository, &target).await?;
        output.pruned = pruned;
        output.prune_kept = kept;
    }
    Ok(output)
}

pub(crate) async fn apply_settings(
    conns: &Connections,
    job: &Job,
    (index, dest_spec): (usize, &Destination),
    repository: &str,
    target: &str,
) -> Result<EnsureRepositoryOutput> {
    let skipped = |why: &str| EnsureRepositoryOutput {
        registry: dest_spec.registry.clone(),
        repository: target.to_string(),
        created: false,
        changes: Vec::new(),
        drift: Vec::new(),
        skipped: Some(why.to_string()),
        pruned: Vec::new(),
        prune_kept: Vec::new(),
        pruned_count: 0,
        prune_kept_count: 0,
    };
    if job.repository_settings == SettingsMode::None {
        return Ok(skipped("repositorySettings is \"none\""));
    }
    let dest = conns.destination(job, index).await?;
    let Some(admin) = &dest.ecr else {
        return Ok(skipped(
            "not an ECR registry: repositories are created on push",
        ));
    };
    let source = conns.source(job).await?;
    let source_settings = match &source.ecr {
        Some(src_admin) => src_admin
            .read_settings(repository)
            .await
            .map_err(aws(format!(
                "reading the settings of {}/{repository}",
                src_admin.registry()
            )))?,
        None => None,
    };
    let desired = target_settings(
        source_settings.as_ref(),
        source
            .ecr
            .as_ref()
            .map(|a| a.registry().account_id.as_str()),
        dest_spec,
        Some(admin.registry().account_id.as_str()),
    );
    let update = job.repository_settings == SettingsMode::Copy;
    let report = admin
        .ensure_repository(target, &desired, update, job.dry_run)
        .await
        .map_err(aws(format!("ensuring {}/{target}", admin.registry())))?;
    Ok(EnsureRepositoryOutput::from_report(
        &dest_spec.registry,
        target,
        report,
    ))
}

/// Removes the destination tags the tag filters select that the source repository no longer
/// has; nothing outside the filters. Returns the tags removed (in a dry run, to remove) and those
/// kept with the reason: an ECR repository with immutable tags keeps them all (reported, the run
/// goes on); a registry that cannot untag (distribution answers 400) loses a tag only by deleting
/// its manifest, done when every tag on that manifest is stale.
async fn prune_stale_tags(
    conns: &Connections,
    job: &ValidJob,
    index: usize,
    repository: &str,
    target: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let source = conns.source(&job.job).await?;
    let dest = conns.destination(&job.job, index).await?;
    let in_source: HashSet<String> = all_images(&source, repository)
        .await?
        .into_iter()
        .flat_map(|i| i.tags)
        .collect();
    let in_target = match all_images(&dest, target).await {
        Ok(images) => images,
        Err(e) if is_missing_repository(&e) => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let mut stale: Vec<(String, String)> = in_target
        .iter()
        .flat_map(|i| i.tags.iter().map(|t| (t.clone(), i.digest.clone())))
        .filter(|(tag, _)| job.tags.tag_matches(tag) && !in_source.contains(tag))
        .collect();
    stale.sort();
    let stale_tags: Vec<String> = stale.iter().map(|(t, _)| t.clone()).collect();
    if let Some(admin) = &dest.ecr {
        let immutable = admin
            .read_settings(target)
            .await
            .map_err(aws(format!(
                "reading the settings of {}/{target}",
                admin.registry()
            )))?
            .is_some_and(|s| s.tags_immutable());
        if immutable {
            let kept = stale_tags
                .iter()
                .map(|t| format!("{t}: the repository's tags are immutable; remove it by hand if that is intended"))
                .collect();
            return Ok((Vec::new(), kept));
        }
        if job.job.dry_run || stale_tags.is_empty() {
            return Ok((stale_tags, Vec::new()));
        }
        let refused = admin
            .remove_tags(target, &stale_tags)
            .await
            .map_err(aws(format!(
                "removing stale tags from {}/{target}",
                admin.registry()
            )))?;
        let removed = stale_tags
            .into_iter()
            .filter(|t| !refused.iter().any(|(r, _)| r == t))
            .collect();
        let kept = refused
            .into_iter()
            .map(|(t, why)| format!("{t}: {why}"))
            .collect();
        return Ok((removed, kept));
    }
    if job.job.dry_run {
        return Ok((stale_tags, Vec::new()));
    }
    let repo = Repository {
        registry: dest.registry.clone(),
        name: target.to_string(),
    };
    let failed = |source| Error::Registry {
        image: repo.to_string(),
        source,
    };
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    let mut deleted_digests: HashSet<String> = HashSet::new();
    for (tag, digest) in &stale {
        if deleted_digests.contains(digest) {
            removed.push(tag.clone());
            continue;
        }
        match dest.client.delete_manifest(&repo, tag).await {
            Ok(_) => removed.push(tag.clone()),
            Err(e) if cannot_untag(&e) => {
                let others: Vec<&String> = in_target
                    .iter()
                    .filter(|i| i.digest == *digest)
                    .flat_map(|i| i.tags.iter())
                    .filter(|t| !stale_tags.contains(t))
                    .collect();
                if others.is_empty() {
                    dest.client
                        .delete_manifest(&repo, digest)
                        .await
                        .map_err(failed)?;
                    deleted_digests.insert(digest.clone());
                    removed.push(tag.clone());
                } else {
                    kept.push(format!(
                        "{tag}: the registry removes manifests, not single tags, and {digest} is also tagged {}",
                        others.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Ok((removed, kept))
}

/// The registry refused to delete by tag (the distribution registry answers 400; others 405 or
/// `UNSUPPORTED`).
fn cannot_untag(e: &oci::Error) -> bool {
    match e {
        oci::Error::Registry { status, code, .. } => {
            matches!(status, 400 | 405) || *code == Some(oci::error::ErrorCode::Unsupported)
        }
        _ => false,
    }
}

fn is_missing_repository(e: &Error) -> bool {
    match e {
        Error::Listing { source, .. } => matches!(source, oci::Error::NotFound { .. }),
        Error::Aws { source, .. } => source.is_repository_not_found(),
        _ => false,
    }
}
