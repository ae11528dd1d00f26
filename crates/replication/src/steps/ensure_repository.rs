//! `ensure-repository`: creates a destination repository if missing, makes its settings
//! match the source's (`repositorySettings`), and with `prune` removes its stale tags
//! (`ensure_repository_prune`).

use ecr::{EnsureOptions, EnsureReport, Reconcile, RepositorySettings, SettingChange};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ensure_repository_prune::prune_stale_tags;
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

/// Characters of each side of a setting change an output keeps.
pub const CHANGE_CHARS: usize = 150;
/// Drift notes an output keeps (the last says how many more there were).
pub const DRIFT_LISTED: usize = 6;
/// Characters of each drift note an output keeps.
pub const DRIFT_CHARS: usize = 300;

impl EnsureRepositoryOutput {
    /// The output with at most `ENSURE_LISTED` tags in each list, the counts keeping the
    /// totals, each setting change's sides cut to `CHANGE_CHARS` and at most `DRIFT_LISTED`
    /// drift notes of `DRIFT_CHARS`: what the Lambda returns, as it travels in the state (256
    /// KiB at most, one output per destination).
    pub fn bounded(mut self) -> Self {
        use crate::report::truncate_chars;
        self.pruned_count = self.pruned_count.max(self.pruned.len());
        self.prune_kept_count = self.prune_kept_count.max(self.prune_kept.len());
        self.pruned.truncate(ENSURE_LISTED);
        self.prune_kept.truncate(ENSURE_LISTED);
        for change in &mut self.changes {
            change.from = truncate_chars(&change.from, CHANGE_CHARS);
            change.to = truncate_chars(&change.to, CHANGE_CHARS);
        }
        if self.drift.len() > DRIFT_LISTED {
            let more = self.drift.len() - (DRIFT_LISTED - 1);
            self.drift.truncate(DRIFT_LISTED - 1);
            self.drift.push(format!(
                "and {more} more differences (see the function's log)"
            ));
        }
        for note in &mut self.drift {
            *note = truncate_chars(note, DRIFT_CHARS);
        }
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
/// (keys are regional), and the repository policy as `destination_policy` makes it; with what
/// was left out of the policy.
pub fn target_settings(
    source: &RepositorySettings,
    source_account: &str,
    destination: &Destination,
    destination_account: &str,
) -> (RepositorySettings, Vec<String>) {
    let mut desired = source.clone();
    if desired.uses_kms() {
        desired.kms_key = source
            .kms_key
            .as_ref()
            .and_then(|k| destination.kms_key_mapping.get(k))
            .or_else(|| destination.kms_key_mapping.get("*"))
            .cloned();
    }
    let mut left_out = Vec::new();
    if let Some(policy) = &source.repository_policy {
        let (kept, dropped) = destination_policy(policy, source_account, destination_account);
        desired.repository_policy = kept;
        left_out = dropped;
    }
    (desired, left_out)
}

/// A source repository policy as a destination may have it: only the statements whose every
/// principal is an AWS principal of the source account (its id, root or an IAM role or user in
/// it), those principals rewritten to the destination account; a statement granting anyone else
/// (another account, `*`, a service, a federated user, or with `NotPrincipal`) is left out and
/// named. A grant in the source must not become a way into the destination. `None` when no
/// statement is kept (or the policy is not JSON).
pub fn destination_policy(
    policy: &str,
    source_account: &str,
    destination_account: &str,
) -> (Option<String>, Vec<String>) {
    let Ok(mut parsed) = serde_json::from_str::<serde_json::Value>(policy) else {
        return (
            None,
            vec!["repositoryPolicy: the source's policy is not JSON; not copied".into()],
        );
    };
    let statements = match parsed["Statement"].take() {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Null => Vec::new(),
        single => vec![single],
    };
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for (i, mut statement) in statements.into_iter().enumerate() {
        let name = statement["Sid"]
            .as_str()
            .map(|sid| format!("{sid:?}"))
            .unwrap_or_else(|| format!("#{i}"));
        let rewritten = if statement.get("NotPrincipal").is_some() {
            None
        } else {
            rewrite_principal(&statement["Principal"], source_account, destination_account)
        };
        match rewritten {
            Some(principal) => {
                statement["Principal"] = principal;
                kept.push(statement);
            }
            None => dropped.push(format!(
                "repositoryPolicy: statement {name} grants principals outside the source account {source_account}; not copied",
            )),
        }
    }
    if kept.is_empty() {
        return (None, dropped);
    }
    parsed["Statement"] = serde_json::Value::Array(kept);
    (serde_json::to_string(&parsed).ok(), dropped)
}

/// `{"AWS": ...}` with every entry in `from` rewritten to `to`; `None` when any entry is not
/// an AWS principal of `from`.
fn rewrite_principal(
    principal: &serde_json::Value,
    from: &str,
    to: &str,
) -> Option<serde_json::Value> {
    use serde_json::Value;
    let object = principal.as_object()?;
    if object.len() != 1 {
        return None;
    }
    let rewrite = |entry: &Value| -> Option<Value> {
        let text = entry.as_str()?;
        if text == from {
            return Some(Value::String(to.to_string()));
        }
        // arn:PARTITION:iam::ACCOUNT:root|role/...|user/...
        let parts: Vec<&str> = text.splitn(6, ':').collect();
        (parts.len() == 6
            && parts[0] == "arn"
            && parts[2] == "iam"
            && parts[3].is_empty()
            && parts[4] == from)
            .then(|| Value::String(format!("arn:{}:iam::{to}:{}", parts[1], parts[5])))
    };
    let rewritten = match object.get("AWS")? {
        Value::Array(entries) => Value::Array(
            entries
                .iter()
                .map(rewrite)
                .collect::<Option<Vec<_>>>()
                .filter(|v| !v.is_empty())?,
        ),
        single => rewrite(single)?,
    };
    Some(serde_json::json!({ "AWS": rewritten }))
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
    ensure_validated(conns, &job, &input.repository, input.destination).await
}

/// `ensure_repository` for a job already validated (with `dryRun`, it only says what it would
/// create, change and prune).
pub(crate) async fn ensure_validated(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
    destination: usize,
) -> Result<EnsureRepositoryOutput> {
    let dest_spec = job.job.destination(destination)?.clone();
    let target = dest_spec.checked_target_repository(repository)?;
    conns.check_target_scope(&dest_spec.registry, &target)?;
    let mut output = apply_settings(
        conns,
        &job.job,
        (destination, &dest_spec),
        repository,
        &target,
    )
    .await?;
    for note in &output.drift {
        tracing::warn!(target_repository = %target, drift = %note, "setting left as it is");
    }
    if job.job.prune && !output.created {
        let (pruned, kept) = prune_stale_tags(conns, job, destination, repository, &target).await?;
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
        registry: dest_spec.target_name(),
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
    if dest_spec.layout.is_some() {
        // Nothing to open: a layout names repositories in its index.json, at the seal.
        return Ok(skipped(
            "a layout: its repositories are names in index.json, written when the export is sealed",
        ));
    }
    let dest = conns.destination(job, index).await?;
    let Some(admin) = &dest.ecr else {
        return Ok(skipped(
            "not an ECR registry: repositories are created on push",
        ));
    };
    let source = conns.source(job).await?;
    let destination_account = admin.registry().account_id.as_str();
    let (desired, left_out, reconcile) = match &source.ecr {
        Some(src_admin) => {
            let Some(settings) =
                src_admin
                    .read_settings(repository)
                    .await
                    .map_err(aws(format!(
                        "reading the settings of {}/{repository}",
                        src_admin.registry()
                    )))?
            else {
                // Nothing to copy, and no repository to create for images that are not there.
                return Ok(skipped(&format!(
                    "the source has no repository {repository}: nothing created or changed"
                )));
            };
            let (desired, left_out) = target_settings(
                &settings,
                &src_admin.registry().account_id,
                dest_spec,
                destination_account,
            );
            let reconcile = match job.repository_settings {
                SettingsMode::Mirror => Reconcile::Exactly,
                SettingsMode::Copy => Reconcile::NoWeaker,
                SettingsMode::Create | SettingsMode::None => Reconcile::Never,
            };
            (desired, left_out, reconcile)
        }
        // A registry that is not ECR has no settings to copy: a missing repository is created
        // with ECR's defaults, an existing one is never changed (its settings are not "the
        // defaults" of a source that has none).
        None => {
            // A repository named by an `images` entry may not exist in the source (the catalog
            // never listed it): nothing is created for images that are not there.
            // One tag-list request of one entry says so (the catalog's first page would read
            // every listed manifest too).
            if !job.images.is_empty() {
                let repo = oci::Repository {
                    registry: source.registry.clone(),
                    name: repository.to_string(),
                };
                match source.client.tags_page(&repo, 1, None).await {
                    Err(e) if e.is_not_found() => {
                        return Ok(skipped(&format!(
                            "the source has no repository {repository}: nothing created or changed"
                        )))
                    }
                    Err(source) => {
                        return Err(Error::Listing {
                            what: format!("tags of {repo}"),
                            source,
                        })
                    }
                    Ok(_) => {}
                }
            }
            (RepositorySettings::default(), Vec::new(), Reconcile::Never)
        }
    };
    let how = EnsureOptions {
        reconcile,
        repository_policy: job.copy_repository_policy && source.ecr.is_some(),
        dry_run: job.dry_run,
    };
    let mut report = admin
        .ensure_repository(target, &desired, how)
        .await
        .map_err(aws(format!("ensuring {}/{target}", admin.registry())))?;
    if source.ecr.is_none() {
        // Differences from defaults are no drift: the source simply has no settings.
        report.drift.clear();
    }
    if how.repository_policy {
        report.drift.extend(left_out);
    }
    Ok(EnsureRepositoryOutput::from_report(
        &dest_spec.registry,
        target,
        report,
    ))
}

impl EnsureRepositoryOutput {
    /// Whether ensuring did (or, in a dry run, would do) anything: created the repository,
    /// changed a setting or pruned a tag. A repository with such work gets a child.
    pub fn changes_something(&self) -> bool {
        self.created || !self.changes.is_empty() || !self.pruned.is_empty()
    }
}

/// Reports count what ensuring a repository pruned.
impl RunReport {
    /// Counts one destination repository's prune results and lists its settings drift.
    pub fn add_repository(&mut self, o: &EnsureRepositoryOutput) {
        let at = |tag: &String| format!("{}/{}:{tag}", o.registry, o.repository);
        self.tags_pruned += o.pruned_count.max(o.pruned.len());
        self.tags_kept += o.prune_kept_count.max(o.prune_kept.len());
        crate::report::listed(&mut self.pruned, o.pruned.iter().map(at));
        crate::report::listed(&mut self.kept, o.prune_kept.iter().map(at));
        crate::report::listed_drift(
            &mut self.settings_drift,
            o.drift
                .iter()
                .map(|note| format!("{}/{}: {note}", o.registry, o.repository)),
        );
    }
}
