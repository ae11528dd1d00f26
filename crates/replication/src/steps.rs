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

/// Output of `enumerate-repositories`: selected repositories of one source page, and the job
/// validated with every default filled in, which the state machine uses from then on (a Choice
/// or `*Path` on a field the input left out fails an execution in AWS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateRepositoriesOutput {
    /// Selected repository names.
    pub repositories: Vec<String>,
    /// Token for the next page, `null` on the last.
    pub next_token: Option<String>,
    /// The job, validated, defaults filled in.
    pub job: Job,
    /// How the job's `maxConcurrency` is shared out over the nested maps.
    pub concurrency: Concurrency,
}

/// `maxConcurrency` shared out: repositories at once times images at once per repository never
/// exceeds it, and each image copies one range at a time, so concurrent copy invocations stay
/// within `maxConcurrency` for the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// Repository child executions at once (ForEachRepository's MaxConcurrency).
    pub repositories: u32,
    /// Image child executions at once per repository (ForEachImage's MaxConcurrency).
    pub images: u32,
}

impl Concurrency {
    /// Up to 5 images at once per repository, the rest of the budget to repositories.
    pub fn share(max_concurrency: u32) -> Self {
        let max = max_concurrency.max(1);
        let images = max.min(5);
        Concurrency {
            repositories: (max / images).max(1),
            images,
        }
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
    /// The destination's tag list named none of `tags` when enumerated: they are put without
    /// asking first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tags_absent: bool,
    /// The destination repository did not exist when enumerated: blobs are uploaded and child
    /// manifests put without asking first (asking could only say "not there").
    #[serde(default, skip_serializing_if = "is_false")]
    pub repository_absent: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Output of `enumerate-images`: one page of the work left (selected images x destinations not
/// yet in the destination). Tasks already present are only counted: they cost no child
/// execution and no invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateImagesOutput {
    /// Tasks of this page, none of them present (at most `TASKS_PER_PAGE` tasks and
    /// `PAGE_TASK_BYTES` of JSON).
    pub images: Vec<ImageTask>,
    /// Tasks this page checked and found present in their destination.
    pub present: usize,
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

/// Input of `plan-image`: a page of tasks (from `enumerate-images`), planned together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanPageInput {
    /// The job.
    pub job: Job,
    /// The tasks.
    pub images: Vec<ImageTask>,
}

/// Output of `plan-image` for a page: the union of its images' blobs per destination
/// repository, each blob once, in ranges (copied before any manifest is put); and each image's
/// plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagePlan {
    /// Copy work: whole blobs under the byte budget, or one large blob in segments.
    pub ranges: Vec<PageRange>,
    /// Each image of the page.
    pub images: Vec<PlannedImage>,
    /// Tasks that did not fit this plan (`PAGE_PLAN_BYTES`): planned next, by the same loop.
    pub deferred: Vec<ImageTask>,
    /// Bytes of the ranges.
    pub bytes: u64,
}

/// One range of a page, with the destination repository it goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageRange {
    /// A task of that source and destination repository (tags and referrers left out): what
    /// `copy-blobs` needs to know where the range comes from and goes.
    pub image: ImageTask,
    /// The blobs.
    pub range: CopyRange,
}

/// One image of a page plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedImage {
    /// The task.
    pub image: ImageTask,
    /// Its blobs' bytes (shared blobs counted for each image).
    pub bytes: u64,
    /// The destination had it by the time it was planned.
    pub present: bool,
    /// Why it could not be planned (it is then reported failed), else `null`.
    pub error: Option<String>,
}

impl PlannedImage {
    /// The image's result when the plan already settles it (planning failed, or the
    /// destination has it); `None` when it needs copying.
    pub fn settled_result(&self) -> Option<ImageResult> {
        match (&self.error, self.present) {
            (Some(error), _) => Some(ImageResult::for_task(
                &self.image,
                ImageStatus::Failed,
                0,
                Some(error.clone()),
            )),
            (None, true) => Some(ImageResult::for_task(
                &self.image,
                ImageStatus::Present,
                0,
                None,
            )),
            (None, false) => None,
        }
    }

    /// The image's result in a dry run: settled, or planned with its bytes.
    pub fn dry_run_result(&self) -> ImageResult {
        self.settled_result().unwrap_or_else(|| {
            ImageResult::for_task(&self.image, ImageStatus::Planned, self.bytes, None)
        })
    }
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
    /// Bytes earlier calls of this range copied (the segment loop carries it, so no byte count
    /// goes through a 32-bit intrinsic).
    #[serde(default)]
    pub bytes_before: u64,
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
    /// Bytes streamed for this range by this call and the earlier ones (`bytesBefore` + this).
    pub range_bytes_copied: u64,
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
    /// What the copy steps returned per range of the image's page (`[{"bytes": N, "error":
    /// null}, ...]`): when every range is complete, the blobs need no presence check before
    /// the manifests. (The page's bytes are counted once, by `summarise`.)
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub copied: JsonValue,
}

impl PutManifestsInput {
    /// Bytes the copy steps moved: the sum of `copied[].bytes`.
    pub fn bytes_copied(&self) -> u64 {
        self.ranges()
            .filter_map(|r| r.get("bytes").and_then(JsonValue::as_u64))
            .sum()
    }

    /// Whether `copied` shows every range of the image's page complete (at least one, none with
    /// an error): its blobs are then known to be in the destination.
    pub fn ranges_complete(&self) -> bool {
        self.ranges().next().is_some()
            && self
                .ranges()
                .all(|r| r.get("error").is_none_or(JsonValue::is_null))
    }

    /// The first error a range of the page reported (the whole message in process; the error
    /// name in the state machine, which keeps state small).
    pub fn first_range_error(&self) -> Option<String> {
        self.ranges()
            .filter_map(|r| r.get("error"))
            .find(|e| !e.is_null())
            .map(|e| match e.as_str() {
                Some(text) => text.to_string(),
                None => e.to_string(),
            })
    }

    fn ranges(&self) -> impl Iterator<Item = &JsonValue> {
        self.copied.as_array().into_iter().flatten()
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
    /// Repositories whose replication failed as a whole (listing, creating, summarising): their
    /// images were not all considered.
    #[serde(default)]
    pub repositories_failed: usize,
    /// The first of them, each with the error.
    #[serde(default)]
    pub repository_failures: Vec<RepositoryFailure>,
    /// Ranges of blobs whose copy failed (each image needing one failed too, named).
    #[serde(default)]
    pub ranges_failed: usize,
}

/// A repository whose replication failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryFailure {
    /// Source repository.
    pub repository: String,
    /// What failed (error type and cause).
    pub error: String,
}

/// Entries each list of a report holds; the rest are only counted. The run report lists this
/// many; a repository's report (one of up to `REPOSITORIES_PER_PAGE` in a Map's result) lists
/// `CHILD_LISTED`, so the aggregated result stays under 256 KiB.
pub const MAX_FAILURES_LISTED: usize = 20;
/// Entries a repository child's report lists.
pub const CHILD_LISTED: usize = 1;
/// Pruned and kept tags an `ensure-repository` output lists (the counts keep the totals).
pub const ENSURE_LISTED: usize = 5;
/// Characters of an error kept in a report.
pub const MAX_ERROR_CHARS: usize = 300;
/// Tags of a failed image named in a report.
pub const MAX_TAGS_LISTED: usize = 3;

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
    /// Tasks `enumerate-images` found present (counted, never run).
    #[serde(default)]
    pub present: usize,
    /// A dry run's page plan: its images are reported planned (or failed, or present).
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub plan: Option<PagePlan>,
    /// What the page's ranges copied (`[{"bytes": N, "error": ...}]`, nested arrays allowed):
    /// bytes added up, failed ranges counted.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub copied: JsonValue,
    /// Entries each list of the report may hold (default `MAX_FAILURES_LISTED`).
    #[serde(default)]
    pub list: Option<usize>,
    /// Fail (naming the failed images) when any image failed: the workflow's last step.
    #[serde(default)]
    pub fail_on_failure: bool,
}

/// The first `max` characters of a text, with an ellipsis when cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

impl ImageResult {
    /// The record as a report lists it: at most `MAX_TAGS_LISTED` tags (the count of the others
    /// added) and `MAX_ERROR_CHARS` of the error.
    pub fn listed(&self) -> Self {
        let mut out = self.clone();
        if out.tags.len() > MAX_TAGS_LISTED {
            let more = out.tags.len() - MAX_TAGS_LISTED;
            out.tags.truncate(MAX_TAGS_LISTED);
            out.tags.push(format!("(+{more} more)"));
        }
        out.error = out.error.map(|e| truncate_chars(&e, MAX_ERROR_CHARS));
        out
    }
}

impl RunReport {
    /// Counts tasks found present without running them.
    pub fn add_present(&mut self, count: usize) {
        self.images += count;
        self.present += count;
    }

    /// Keeps at most `max` entries in each list (the counts keep the rest).
    pub fn limit_lists(&mut self, max: usize) {
        if self.failures.len() > max {
            self.failures_omitted += self.failures.len() - max;
            self.failures.truncate(max);
        }
        self.pruned.truncate(max);
        self.kept.truncate(max);
        self.repository_failures.truncate(max);
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
                    self.failures.push(r.listed());
                } else {
                    self.failures_omitted += 1;
                }
            }
        }
    }

    /// Counts one destination repository's prune results.
    pub fn add_repository(&mut self, o: &EnsureRepositoryOutput) {
        let at = |tag: &String| format!("{}/{}:{tag}", o.registry, o.repository);
        self.tags_pruned += o.pruned_count.max(o.pruned.len());
        self.tags_kept += o.prune_kept_count.max(o.prune_kept.len());
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
                self.failures.push(f.listed());
            } else {
                self.failures_omitted += 1;
            }
        }
        self.repositories_failed += other.repositories_failed;
        self.ranges_failed += other.ranges_failed;
        for f in &other.repository_failures {
            if self.repository_failures.len() < MAX_FAILURES_LISTED {
                self.repository_failures.push(RepositoryFailure {
                    repository: f.repository.clone(),
                    error: truncate_chars(&f.error, MAX_ERROR_CHARS),
                });
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
