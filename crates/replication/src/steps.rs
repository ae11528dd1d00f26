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
    /// Bytes the copy steps moved (for the report).
    #[serde(default)]
    pub bytes_copied: u64,
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
    /// Every failure, naming the image and the error.
    pub failures: Vec<ImageResult>,
}

impl RunReport {
    /// Adds up per-image results.
    pub fn from_results(results: &[ImageResult]) -> Self {
        let mut report = RunReport {
            images: results.len(),
            ..RunReport::default()
        };
        for r in results {
            report.bytes_copied += r.bytes_copied;
            match r.status {
                ImageStatus::Copied => report.copied += 1,
                ImageStatus::Present => report.present += 1,
                ImageStatus::Planned => report.planned += 1,
                ImageStatus::Failed => {
                    report.failed += 1;
                    report.failures.push(r.clone());
                }
            }
        }
        report
    }
}
