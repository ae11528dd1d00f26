//! Every workflow step's input and output, shared by the Lambda functions, the CLI and the JSON
//! Schema. All are small: descriptors and names, never blob data.

use ecr::{EnsureReport, SettingChange};
use oci::SegmentState;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::Job;
use crate::plan::CopyRange;

/// Input of `enumerate-repositories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnumerateRepositoriesInput {
    /// The job.
    pub job: Job,
    /// Page token from the previous call.
    #[serde(default)]
    pub next_token: Option<String>,
}

/// Output of `enumerate-repositories`: selected repositories of one source page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateRepositoriesOutput {
    /// Selected repository names.
    pub repositories: Vec<String>,
    /// Token for the next page, `null` on the last.
    pub next_token: Option<String>,
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
}

impl EnsureRepositoryOutput {
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
        }
    }
}

/// Input of `enumerate-images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnumerateImagesInput {
    /// The job.
    pub job: Job,
    /// Source repository name.
    pub repository: String,
    /// Page token from the previous call.
    #[serde(default)]
    pub next_token: Option<String>,
}

/// One image for one destination: the unit the per-image Map works on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageTask {
    /// Source repository.
    pub repository: String,
    /// Manifest digest.
    pub digest: String,
    /// Tags to copy (empty: by digest only).
    pub tags: Vec<String>,
    /// Index into `job.destinations`.
    pub destination: usize,
    /// Destination registry (for reports).
    pub target_registry: String,
    /// Repository in the destination.
    pub target_repository: String,
    /// The destination already has this digest under every tag.
    pub present: bool,
    /// Digests of the referrers the source's API lists for this image (signatures, SBOMs,
    /// attestations, and theirs): copied with it, by digest, and listed in the target's
    /// `sha256-<hex>` fallback index when the target has no referrers API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referrers: Vec<String>,
}

/// Output of `enumerate-images`: one page of tasks (selected images x destinations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateImagesOutput {
    /// Tasks of this page.
    pub images: Vec<ImageTask>,
    /// Images the filters selected in the whole repository.
    pub selected: usize,
    /// Token for the next page, `null` on the last.
    pub next_token: Option<String>,
}

/// Input of `plan-image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanImageInput {
    /// The job.
    pub job: Job,
    /// The image and destination.
    pub image: ImageTask,
}

/// Output of `plan-image`: the ranges to copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePlan {
    /// The image and destination.
    pub image: ImageTask,
    /// Copy work, each range one invocation (or a segment loop).
    pub ranges: Vec<CopyRange>,
    /// Unique blobs of the image (all platforms).
    pub blobs: usize,
    /// Their total size.
    pub bytes: u64,
    /// Manifests (the index and its children, or one).
    pub manifests: usize,
}

/// Input of `copy-blobs`: one range, and for a segment loop the state of the previous call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyBlobsInput {
    /// The job.
    pub job: Job,
    /// The image and destination.
    pub image: ImageTask,
    /// The range to copy.
    pub range: CopyRange,
    /// Upload state after the previous segment.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub state: Option<SegmentState>,
}

/// Output of `copy-blobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyBlobsOutput {
    /// The range (echoed, for the segment loop).
    pub range: CopyRange,
    /// The range is complete in the target.
    pub done: bool,
    /// State for the next segment when not done.
    #[schemars(with = "Option<serde_json::Value>")]
    pub state: Option<SegmentState>,
    /// Bytes streamed by this call.
    pub bytes_copied: u64,
    /// Blobs completed by this call.
    pub blobs_copied: usize,
    /// Blobs the target already had.
    pub blobs_skipped: usize,
}

/// Input of `put-manifests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutManifestsInput {
    /// The job.
    pub job: Job,
    /// The image and destination.
    pub image: ImageTask,
    /// What the copy steps returned per range (`[{"bytes": N}, ...]`), for the report's byte
    /// count.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub copied: JsonValue,
}

impl PutManifestsInput {
    /// Bytes the copy steps moved: the sum of `copied[].bytes`.
    pub fn bytes_copied(&self) -> u64 {
        self.copied
            .as_array()
            .map(|ranges| {
                ranges
                    .iter()
                    .filter_map(|r| r.get("bytes").and_then(JsonValue::as_u64))
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// The outcome for one image in one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ImageStatus {
    /// Copied now.
    Copied,
    /// Already in the destination.
    Present,
    /// Dry run: would be copied.
    Planned,
    /// Failed; see `error`.
    Failed,
}

/// The per-image record of the run report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageResult {
    /// Source repository.
    pub repository: String,
    /// Digest.
    pub digest: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Destination registry.
    pub target_registry: String,
    /// Destination repository.
    pub target_repository: String,
    /// What happened.
    pub status: ImageStatus,
    /// Bytes streamed for it.
    pub bytes_copied: u64,
    /// The error, when failed.
    pub error: Option<String>,
}

impl ImageResult {
    /// A record for a task with a status.
    pub fn for_task(
        task: &ImageTask,
        status: ImageStatus,
        bytes_copied: u64,
        error: Option<String>,
    ) -> Self {
        ImageResult {
            repository: task.repository.clone(),
            digest: task.digest.clone(),
            tags: task.tags.clone(),
            target_registry: task.target_registry.clone(),
            target_repository: task.target_repository.clone(),
            status,
            bytes_copied,
            error,
        }
    }
}

/// JSON values, re-exported for step types that carry free-form JSON.
pub use serde_json::Value as JsonValue;

/// The run report: counts, bytes, failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// Image x destination pairs considered.
    pub images: usize,
    /// Copied now.
    pub copied: usize,
    /// Already present.
    pub present: usize,
    /// Would be copied (dry run).
    pub planned: usize,
    /// Failed.
    pub failed: usize,
    /// Bytes streamed.
    pub bytes_copied: u64,
    /// Failures, naming the image and the error (the first 50).
    pub failures: Vec<ImageResult>,
    /// Failures beyond those listed, so reports stay small.
    #[serde(default)]
    pub failures_omitted: usize,
    /// With `prune`: stale destination tags removed (in a dry run, to remove).
    #[serde(default)]
    pub tags_pruned: usize,
    /// The first 50 of them, as `registry/repository:tag`.
    #[serde(default)]
    pub pruned: Vec<String>,
    /// With `prune`: stale tags kept, each with the reason (the first 50 listed in `kept`).
    #[serde(default)]
    pub tags_kept: usize,
    /// The first 50 kept tags, as `registry/repository:tag: reason`.
    #[serde(default)]
    pub kept: Vec<String>,
}

/// Failures listed in a report; the rest are only counted.
pub const MAX_FAILURES_LISTED: usize = 50;

/// Input of `summarise`: reports and per-image results to add up (arrays may nest, as Map
/// states produce them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummariseInput {
    /// Run reports to merge (nested arrays allowed).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub reports: JsonValue,
    /// Per-image results to add (nested arrays allowed).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub results: JsonValue,
    /// `ensure-repository` outputs whose prune results to add (nested arrays allowed).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub repositories: JsonValue,
    /// Fail (naming the failed images) when any image failed: the workflow's last step.
    #[serde(default)]
    pub fail_on_failure: bool,
}

impl RunReport {
    /// Adds up per-image results.
    pub fn from_results(results: &[ImageResult]) -> Self {
        let mut report = RunReport::default();
        for r in results {
            report.add(r);
        }
        report
    }

    /// Counts one image result.
    pub fn add(&mut self, r: &ImageResult) {
        self.images += 1;
        self.bytes_copied += r.bytes_copied;
        match r.status {
            ImageStatus::Copied => self.copied += 1,
            ImageStatus::Present => self.present += 1,
            ImageStatus::Planned => self.planned += 1,
            ImageStatus::Failed => {
                self.failed += 1;
                if self.failures.len() < MAX_FAILURES_LISTED {
                    self.failures.push(r.clone());
                } else {
                    self.failures_omitted += 1;
                }
            }
        }
    }

    /// Counts one destination repository's prune results.
    pub fn add_repository(&mut self, o: &EnsureRepositoryOutput) {
        let at = |tag: &String| format!("{}/{}:{tag}", o.registry, o.repository);
        self.tags_pruned += o.pruned.len();
        self.tags_kept += o.prune_kept.len();
        listed(&mut self.pruned, o.pruned.iter().map(at));
        listed(&mut self.kept, o.prune_kept.iter().map(at));
    }

    /// Adds another report's counts and failures.
    pub fn merge(&mut self, other: &RunReport) {
        self.tags_pruned += other.tags_pruned;
        self.tags_kept += other.tags_kept;
        listed(&mut self.pruned, other.pruned.iter().cloned());
        listed(&mut self.kept, other.kept.iter().cloned());
        self.images += other.images;
        self.copied += other.copied;
        self.present += other.present;
        self.planned += other.planned;
        self.failed += other.failed;
        self.bytes_copied += other.bytes_copied;
        self.failures_omitted += other.failures_omitted;
        for f in &other.failures {
            if self.failures.len() < MAX_FAILURES_LISTED {
                self.failures.push(f.clone());
            } else {
                self.failures_omitted += 1;
            }
        }
    }
}

/// Appends to a report list up to `MAX_FAILURES_LISTED` entries (the counts say the rest).
fn listed(list: &mut Vec<String>, more: impl Iterator<Item = String>) {
    let room = MAX_FAILURES_LISTED.saturating_sub(list.len());
    list.extend(more.take(room));
}

/// Collects objects of type `T` from arbitrarily nested arrays (`null`s skipped).
pub fn flatten<T: serde::de::DeserializeOwned>(
    value: &JsonValue,
    field: &str,
) -> Result<Vec<T>, crate::Error> {
    let mut out = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            JsonValue::Array(items) => stack.extend(items.iter().rev()),
            JsonValue::Null => {}
            other => out.push(
                T::deserialize(other).map_err(|e| crate::Error::InvalidInput {
                    problems: vec![crate::error::FieldProblem {
                        field: field.to_string(),
                        problem: e.to_string(),
                    }],
                })?,
            ),
        }
    }
    Ok(out)
}
