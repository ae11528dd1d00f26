//! The run report and the per-image results it adds up, bounded so that reports travel in the
//! state machine's state (256 KiB at most).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cost::{is_zero, Cost, CostModel};

/// JSON values, re-exported for step types that carry free-form JSON.
pub use serde_json::Value as JsonValue;

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
    /// Not copied: the job requires a signature and none verified; see `error` for why.
    Unsigned,
    /// Not copied: the source named it with a name that is not valid (never used in a
    /// request), or it is an artifact the signature gate does not cover; see `error`.
    Refused,
    /// Not copied: the job named the image by tag and digest (a push) and the tag has moved on
    /// to a newer image since; see `error`. The newer push's run copies that one.
    Superseded,
    /// Not copied: the source keeps it in ECR's archive storage class (pulls answer 404);
    /// restore it (`UpdateImageStorageClass` to `STANDARD`) to have it copied.
    Archived,
    /// Not copied yet: the source's pull budget (`source.pullBudget`) or its pull limit stopped
    /// its reads; the next run copies it. Not failed.
    Postponed,
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
    /// Manifest GETs its put sent to the source (the pulls a rate-limited registry counts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub source_pulls: u64,
    /// With `platforms`: the digest of the index as copied (a part of the source's children),
    /// when it differs from `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_digest: Option<String>,
    /// With `requireSignature`: what admitted the image (the key or identity, and the
    /// signature's manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// Replication lag of a copied image, in whole seconds: from the image's push to the
    /// source (ECR's `imagePushedAt`, as `enumerate-images` read it) to the moment
    /// `put-manifests` finished putting it in this destination (its last tag, referrer and
    /// fallback index written; the function's clock), never below 0. Absent when the image was
    /// not copied now (present, failed, not copied) or the source reports no push time (a
    /// registry that is not ECR). The `ReplicationLag` metric carries the same value
    /// (`crate::metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<u64>,
}

/// The run report: counts, bytes, failures, and what the run cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// Images not copied because no signature verified (`requireSignature`).
    #[serde(default)]
    pub unsigned: usize,
    /// The first of them, each with the reason.
    #[serde(default)]
    pub unsigned_images: Vec<ImageResult>,
    /// Names and artifacts refused (an invalid tag or digest from the source, an artifact the
    /// signature gate does not cover): never copied.
    #[serde(default)]
    pub refused: usize,
    /// The first of them, as `repository:name: reason`.
    #[serde(default)]
    pub refusals: Vec<String>,
    /// Images not copied because their tag moved on to a newer image since the job named them
    /// (a push run overtaken by the next push of the same tag): not failed.
    #[serde(default)]
    pub superseded: usize,
    /// Images not copied because the source keeps them archived (ECR's archive storage class):
    /// not failed; restored ones are copied by the next run. The functions' logs name each.
    #[serde(default)]
    pub archived: usize,
    /// Destination repository settings left as they are, the first `SETTINGS_DRIFT_LISTED` of
    /// them (`SETTINGS_DRIFT_CHARS` each), as `registry/repository: what and why` (a setting
    /// that would weaken the destination, a policy statement not copied, encryption that cannot
    /// change, a repository policy ECR refused: remembered, so the same policy is not put again
    /// and the repository settles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings_drift: Vec<String>,
    /// Indexes copied as a platform subset (`platforms`): each a new manifest with its own
    /// digest (`targetDigest` in its result). The source index's signatures and referrers name
    /// the source's digest, so they do not apply to the subset and are not copied
    /// (`requireSignature` is checked against the source index, before it is cut down).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub platform_subsets: usize,
    /// Images left for the next run by the source's pull budget or pull limit: not failed.
    #[serde(default)]
    pub postponed: usize,
    /// Manifest GETs the run sent to the source while planning and putting images: the pulls
    /// Docker Hub counts (listing reads with HEAD, which it does not count). Always present:
    /// the workflow adds it up in its states.
    #[serde(default)]
    pub source_pulls: u64,
    /// A verification's findings (`"mode": "verify"`), absent in a replication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
    /// An export into a layout: the digest of the transfer statement the run signed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_statement: Option<String>,
    /// Repositories whose child handed its work back before its history grew too long, with
    /// where to go on: the next `enumerate-repositories` call gives each a new child. (At most
    /// one page's children; empty when the run ends.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub continuations: Vec<Continuation>,
    /// What the run cost in the workflow (absent from the CLI's runs, which cost nothing).
    #[serde(default, skip_serializing_if = "Cost::is_empty")]
    pub cost: Cost,
    /// A dry run: what replicating what it planned would cost in the workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_cost: Option<Cost>,
}

/// A repository to go on with: its child handed back the token of its next page of images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Continuation {
    /// Source repository.
    pub repository: String,
    /// `enumerate-images` token of the next page.
    pub next_token: String,
}

/// How a destination differs from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DifferenceKind {
    /// Not in the destination: a tag, an untagged image, a child of an index, a referrer, or
    /// the repository itself.
    Missing,
    /// A tag in the destination names another digest than the source's.
    Different,
    /// A tag in the destination that the filters select and the source does not have.
    Extra,
    /// A destination repository's settings differ from the source's.
    Settings,
}

impl DifferenceKind {
    /// The kind as the JSON names it.
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Missing => "missing",
            DifferenceKind::Different => "different",
            DifferenceKind::Extra => "extra",
            DifferenceKind::Settings => "settings",
        }
    }
}

/// One difference between the source and a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    /// What kind.
    pub kind: DifferenceKind,
    /// Source repository.
    pub repository: String,
    /// Where in the destination: `registry/repository`, with `:tag` or `@digest`.
    pub target: String,
    /// What differs, in words.
    pub detail: String,
}

/// What a verification found: counts, and the first differences listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Image x destination pairs compared.
    pub images: usize,
    /// Pairs the destination holds exactly: manifest, every tag, every child, every referrer.
    pub identical: usize,
    /// Differences of kind `missing`.
    pub missing: usize,
    /// Differences of kind `different`.
    pub different: usize,
    /// Differences of kind `extra`.
    pub extra: usize,
    /// Differences of kind `settings`.
    pub settings: usize,
    /// Pairs an ECR destination keeps in its archive storage class: not a difference (a
    /// replication reports them `archived` and leaves them, as a push would restore them).
    #[serde(default)]
    pub archived: usize,
    /// The differences (in a state machine report the first `MAX_FAILURES_LISTED`; a
    /// repository's `VERIFY_LISTED`).
    pub differences: Vec<Difference>,
    /// Differences beyond those listed.
    #[serde(default)]
    pub differences_omitted: usize,
    /// Where the repository's verification goes on when it has more images than one call
    /// compares (`verify-repository` pages; the state machine calls it again with this token
    /// and the report so far); absent when it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// Differences a repository's verification lists (its report is one of a page's).
pub const VERIFY_LISTED: usize = 5;

impl VerifyReport {
    /// Every difference found.
    pub fn total(&self) -> usize {
        self.missing + self.different + self.extra + self.settings
    }

    /// Counts and lists one difference (`limit_lists` bounds the list where it must be).
    pub fn add(&mut self, difference: Difference) {
        match difference.kind {
            DifferenceKind::Missing => self.missing += 1,
            DifferenceKind::Different => self.different += 1,
            DifferenceKind::Extra => self.extra += 1,
            DifferenceKind::Settings => self.settings += 1,
        }
        self.differences.push(Difference {
            detail: truncate_chars(&difference.detail, MAX_ERROR_CHARS),
            ..difference
        });
    }

    /// Adds another report's counts and differences.
    pub fn merge(&mut self, other: &VerifyReport) {
        self.images += other.images;
        self.identical += other.identical;
        self.missing += other.missing;
        self.different += other.different;
        self.extra += other.extra;
        self.settings += other.settings;
        self.archived += other.archived;
        let room = MAX_FAILURES_LISTED.saturating_sub(self.differences.len());
        self.differences
            .extend(other.differences.iter().take(room).cloned());
        self.differences_omitted = self.total() - self.differences.len();
    }

    /// Keeps at most `max` differences listed (the counts keep the rest).
    pub fn limit_lists(&mut self, max: usize) {
        self.differences.truncate(max);
        self.differences_omitted = self.total() - self.differences.len();
    }
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

pub use crate::text::truncate_chars;

impl ImageResult {
    /// The record as a step returns it and a report lists it: at most `MAX_TAGS_LISTED` tags
    /// (the count of the others added) and `MAX_ERROR_CHARS` of the error.
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

impl ImageResult {
    /// The record as the report's lists of failed and unsigned images hold it: listed, and
    /// without what admitted a signed image (that stays in the image's own result: the CLI's
    /// output, the step's, the image's event), so the lists stay within Step Functions' 256 KiB
    /// state.
    fn in_report(&self) -> Self {
        ImageResult {
            signed_by: None,
            ..self.listed()
        }
    }
}

impl RunReport {
    /// Counts tasks found present without running them.
    pub fn add_present(&mut self, count: usize) {
        self.images += count;
        self.present += count;
    }

    /// Adds what a part of the workflow cost, to the planned cost too in a dry run's report.
    pub fn add_cost(&mut self, cost: &Cost) {
        self.cost.add(cost);
        if let Some(planned) = &mut self.planned_cost {
            planned.add(cost);
        }
    }

    /// The report with its costs' dollars at the model's prices.
    pub fn priced(mut self, model: &CostModel) -> Self {
        self.cost = model.priced(std::mem::take(&mut self.cost));
        self.planned_cost = self.planned_cost.map(|c| model.priced(c));
        self
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
        self.unsigned_images.truncate(max);
        self.refusals.truncate(max);
        self.settings_drift.truncate(max);
        if let Some(verify) = &mut self.verify {
            verify.limit_lists(max);
        }
    }

    /// Counts one image result.
    pub fn add(&mut self, r: &ImageResult) {
        self.images += 1;
        self.bytes_copied += r.bytes_copied;
        self.source_pulls += r.source_pulls;
        if r.target_digest.is_some() && r.status == ImageStatus::Copied {
            self.platform_subsets += 1;
        }
        match r.status {
            ImageStatus::Copied => self.copied += 1,
            ImageStatus::Present => self.present += 1,
            ImageStatus::Planned => self.planned += 1,
            ImageStatus::Unsigned => {
                self.unsigned += 1;
                if self.unsigned_images.len() < MAX_FAILURES_LISTED {
                    self.unsigned_images.push(r.in_report());
                }
            }
            ImageStatus::Superseded => self.superseded += 1,
            ImageStatus::Archived => self.archived += 1,
            ImageStatus::Postponed => self.postponed += 1,
            ImageStatus::Refused => {
                self.refused += 1;
                let name = r.tags.first().cloned().unwrap_or_else(|| r.digest.clone());
                let error = r.error.as_deref().unwrap_or_default();
                listed(
                    &mut self.refusals,
                    std::iter::once(truncate_chars(
                        &format!("{}:{name}: {error}", r.repository),
                        MAX_ERROR_CHARS,
                    )),
                );
            }
            ImageStatus::Failed => {
                self.failed += 1;
                if self.failures.len() < MAX_FAILURES_LISTED {
                    self.failures.push(r.in_report());
                } else {
                    self.failures_omitted += 1;
                }
            }
        }
    }

    /// Adds another report's counts and failures.
    pub fn merge(&mut self, other: &RunReport) {
        self.cost.add(&other.cost);
        if let Some(planned) = &other.planned_cost {
            self.planned_cost
                .get_or_insert_with(Cost::default)
                .add(planned);
        }
        self.continuations
            .extend(other.continuations.iter().cloned());
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
                self.failures.push(f.in_report());
            } else {
                self.failures_omitted += 1;
            }
        }
        self.repositories_failed += other.repositories_failed;
        self.ranges_failed += other.ranges_failed;
        self.refused += other.refused;
        self.superseded += other.superseded;
        self.archived += other.archived;
        listed_drift(
            &mut self.settings_drift,
            other.settings_drift.iter().cloned(),
        );
        self.postponed += other.postponed;
        self.platform_subsets += other.platform_subsets;
        self.source_pulls += other.source_pulls;
        listed(&mut self.refusals, other.refusals.iter().cloned());
        self.unsigned += other.unsigned;
        for u in &other.unsigned_images {
            if self.unsigned_images.len() < MAX_FAILURES_LISTED {
                self.unsigned_images.push(u.in_report());
            }
        }
        if let Some(verify) = &other.verify {
            self.verify.get_or_insert_default().merge(verify);
        }
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

/// Settings drift notes a report lists at most (it travels in the parent's state beside every
/// other list: the functions' logs have them all).
pub const SETTINGS_DRIFT_LISTED: usize = 5;
/// Characters of each settings drift note a report keeps.
pub const SETTINGS_DRIFT_CHARS: usize = 200;

/// Appends settings drift notes to a report's list, up to `SETTINGS_DRIFT_LISTED`, each cut to
/// `SETTINGS_DRIFT_CHARS`.
pub(crate) fn listed_drift(list: &mut Vec<String>, more: impl Iterator<Item = String>) {
    let room = SETTINGS_DRIFT_LISTED.saturating_sub(list.len());
    list.extend(
        more.take(room)
            .map(|note| truncate_chars(&note, SETTINGS_DRIFT_CHARS)),
    );
}

/// Appends to a report list up to `MAX_FAILURES_LISTED` entries (the counts say the rest).
pub(crate) fn listed(list: &mut Vec<String>, more: impl Iterator<Item = String>) {
    let room = MAX_FAILURES_LISTED.saturating_sub(list.len());
    list.extend(more.take(room));
}

/// Collects objects of type `T` from the nested arrays a Distributed Map returns, and counts
/// the entries that are not one: a child that failed where no Catch applies (the 256 KiB
/// payload or history limit, an EXPRESS child's 5 minutes, stopped) leaves `null` (moto) or an
/// error object in its place.
/// (A `null` in place of the whole array is no entry.)
pub fn flatten_children<T: serde::de::DeserializeOwned>(value: &JsonValue) -> (Vec<T>, usize) {
    let (mut out, mut missing) = (Vec::new(), 0);
    if value.is_null() {
        return (out, missing);
    }
    for leaf in leaves(value) {
        match T::deserialize(leaf) {
            Ok(t) => out.push(t),
            Err(_) => missing += 1,
        }
    }
    (out, missing)
}

/// Collects objects of type `T` from arbitrarily nested arrays (`null`s skipped).
pub fn flatten<T: serde::de::DeserializeOwned>(
    value: &JsonValue,
    field: &str,
) -> Result<Vec<T>, crate::Error> {
    leaves(value)
        .filter(|leaf| !leaf.is_null())
        .map(|leaf| {
            T::deserialize(leaf).map_err(|e| crate::Error::InvalidInput {
                problems: vec![crate::error::FieldProblem {
                    field: field.to_string(),
                    problem: e.to_string(),
                }],
            })
        })
        .collect()
}

/// The values inside arbitrarily nested arrays, in order (a value that is no array is its own
/// one leaf).
fn leaves(value: &JsonValue) -> impl Iterator<Item = &JsonValue> {
    let mut stack = vec![value];
    std::iter::from_fn(move || loop {
        match stack.pop()? {
            JsonValue::Array(items) => stack.extend(items.iter().rev()),
            leaf => return Some(leaf),
        }
    })
}
