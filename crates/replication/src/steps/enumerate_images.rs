//! `enumerate-images`: a repository's images the job selects, and one page of the work left
//! (each selected image for each destination that does not have it yet). The step, its
//! input and output, and the page here; the selection in `enumerate_images_selection`, the
//! presence checks in `enumerate_images_presence`, archived images in
//! `enumerate_images_archive`.

use std::sync::Arc;

use futures::StreamExt;
use oci::{Digest, PullMeter};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::enumerate_images_presence::{check_image, page_destinations, Checked};
pub(crate) use super::enumerate_images_presence::{destination_tags, is_present};
pub(crate) use super::enumerate_images_selection::{
    all_images, selected_and_listed, selected_counted, signature_gate,
};
pub use super::enumerate_images_selection::{selected_images, selected_images_counted};
use super::*;
use crate::connect::Connections;
use crate::error::Result;
use crate::gate::Judge;
use crate::job::{Job, ValidJob};
use crate::metrics::{self, Metric};

/// Tasks (image x destination pairs with work) per `enumerate-images` page at most: each is a
/// child execution whose result is part of the Map's aggregated result (256 KiB at most).
pub const TASKS_PER_PAGE: usize = 25;
/// JSON bytes of one page's tasks at most (an image with hundreds of tags fills a page alone).
pub const PAGE_TASK_BYTES: usize = 32 * 1024;
/// Selected images `enumerate-images` checks for presence in one call at most; a repository
/// with more continues on the next page (bounded work per invocation).
pub const IMAGES_CHECKED_PER_CALL: usize = 2000;
/// Unsigned images' results per `enumerate-images` page at most (one destination's result each
/// counts): they stay in the repository child's state beside the page plan.
pub const UNSIGNED_PER_PAGE: usize = 5;
/// Presence checks at once.
pub(crate) const PARALLEL_CHECKS: usize = 16;

/// The `enumerate-images` step.
pub struct EnumerateImages;

impl Step for EnumerateImages {
    const NAME: &'static str = "enumerate-images";
    type Input = EnumerateImagesInput;
    type Output = EnumerateImagesOutput;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(enumerate_images(conns, input))
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
    /// A pack's repositories, led by `repository` (`enumerate-repositories`' `packs`): each is
    /// ensured in every destination and the page spans them (`enumerate_pack`). Empty: the
    /// repository alone.
    #[serde(default)]
    pub pack: Vec<String>,
}

/// One image for one destination: the unit the per-image Map works on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageTask {
    /// Source repository.
    pub repository: String,
    /// Manifest digest.
    #[schemars(with = "String")]
    pub digest: Digest,
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
    #[schemars(with = "Vec<String>")]
    pub referrers: Vec<Digest>,
    /// The destination's tag list named none of `tags` when enumerated: they are put without
    /// asking first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tags_absent: bool,
    /// The destination repository did not exist when enumerated: blobs are uploaded and child
    /// manifests put without asking first (asking could only say "not there").
    #[serde(default, skip_serializing_if = "is_false")]
    pub repository_absent: bool,
    /// When the image was pushed to the source (seconds since the epoch), if the source says:
    /// the replication lag metric counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<i64>,
    /// With `platforms`: the digest of the index as it is copied (a part of the source's
    /// children), when it differs from the source's. Its referrers are not copied: they name
    /// the source's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub target_digest: Option<Digest>,
    /// With `requireSignature`: the key or identity whose signature admitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

impl ImageTask {
    /// The digest the destination holds once the image is copied.
    pub fn copied_digest(&self) -> &Digest {
        self.target_digest.as_ref().unwrap_or(&self.digest)
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Output of `enumerate-images`: one page of the work left (selected images x destinations not
/// yet in the destination). Tasks already present are only counted: they cost no child
/// execution and no invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateImagesOutput {
    /// Tasks of this page, none of them present (at most `TASKS_PER_PAGE` tasks and
    /// `PAGE_TASK_BYTES` of JSON).
    pub images: Vec<ImageTask>,
    /// Tasks this page checked and found present in their destination.
    pub present: usize,
    /// Selected images this page did not make tasks of because no signature verified (status
    /// `unsigned`, or `failed` with `requireSignature.failUnsigned`), one per destination; and
    /// the other results of images not copied: a refused name, a tag moved on, an image
    /// archived in the source (one per destination) or in an ECR destination (for that one).
    pub unsigned: Vec<ImageResult>,
    /// Images the filters selected in the whole repository.
    pub selected: usize,
    /// Token for the next page, `null` on the last.
    pub next_token: Option<String>,
    /// Manifest GETs this call sent to a source that counts pulls (Docker Hub, or a budgeted
    /// source): the signature gate's reads when it selected the repository's images, and
    /// those cutting indexes to the job's platforms. Counted in the run's `sourcePulls`.
    #[serde(default)]
    pub pulls: u64,
    /// A pack's page (`pack`): what ensuring its repositories did, the packed repositories that
    /// failed (named), and on its first page the child's start; `null` for a repository alone
    /// (always present: the state machine reads it).
    #[serde(default)]
    pub report: Option<RunReport>,
    /// Tasks found present per destination registry: for the metrics, which the caller emits
    /// (not part of the step's output).
    #[serde(skip)]
    #[schemars(skip)]
    pub present_by_destination: std::collections::BTreeMap<String, usize>,
}

impl EnumerateImagesOutput {
    /// Emits the page's `ImagesPresent` metrics (once per page: a page checked and then thrown
    /// away, as a repository's triage does, must not count them).
    pub fn emit_present_metrics(&self) {
        for (destination, present) in &self.present_by_destination {
            metrics::emit(destination, &[(Metric::ImagesPresent, *present as f64)]);
        }
    }
}

/// Selects a repository's images with the tag filters (reading all of the repository's catalog
/// pages, so `latest` sees every image) and returns one page of the work left: each selected
/// image for each destination that does not already have it (digest, every tag, every
/// referrer). Present ones are only counted, so a run with nothing to do costs no child
/// execution. A page ends before `TASKS_PER_PAGE` tasks or `PAGE_TASK_BYTES` of tasks would be
/// exceeded (an image's tasks stay on one page), or after `IMAGES_CHECKED_PER_CALL` images.
///
/// The repository is listed and resolved once per run: when more pages follow and a work bucket
/// is configured, the selection is kept there (`SELECTION_CHUNK` images an object) and the
/// token names it, so later pages read their stretch of it instead of the registry. A selection
/// that cannot be kept or is gone (expired) only costs a new listing.
#[tracing::instrument(skip_all, fields(repository = %input.repository, next = ?input.next_token))]
pub async fn enumerate_images(
    conns: &Connections,
    input: EnumerateImagesInput,
) -> Result<EnumerateImagesOutput> {
    let job = input.job.validate()?;
    if !input.pack.is_empty() {
        let (repository, token) = (&input.repository, input.next_token.as_deref());
        return super::enumerate_pack::enumerate_pack(conns, &job, repository, &input.pack, token)
            .await;
    }
    let page = enumerate_within(
        conns,
        &job,
        &input.repository,
        input.next_token.as_deref(),
        PageBounds::STEP,
    )
    .await?;
    page.emit_present_metrics();
    Ok(page)
}

/// `enumerate_images` for one repository within `bounds` (a pack's page gives each repository
/// the room its page has left); the caller emits the page's present metrics.
pub(crate) async fn enumerate_within(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
    next_token: Option<&str>,
    bounds: PageBounds,
) -> Result<EnumerateImagesOutput> {
    let token = PageToken::parse(next_token)?;
    let bucket = conns.work_bucket().await;
    if let (Some(id), Some(bucket)) = (&token.selection, bucket) {
        if let Some(chunk) = stored_selection_chunk(
            bucket,
            (job, &conns.deployment_digest()),
            repository,
            id,
            token.offset,
        )
        .await
        {
            let mut page = page_of_work(
                conns,
                job,
                repository,
                chunk.as_selection(),
                token.offset,
                bounds,
            )
            .await?;
            page.next_token = page.next_token.map(|next| format!("{id}:{next}"));
            return Ok(page);
        }
        tracing::warn!(selection = %id, "the run's kept selection is gone: listing the repository again");
    }
    let (selected, _, selection_pulls) = selected_counted(conns, job, repository).await?;
    let mut page = page_of_work(
        conns,
        job,
        repository,
        Selection::whole(&selected),
        token.offset,
        bounds,
    )
    .await?;
    page.pulls += selection_pulls;
    if let (Some(next), Some(bucket)) = (&page.next_token, bucket) {
        match keep_selection(
            bucket,
            (job, &conns.deployment_digest()),
            repository,
            &selected,
        )
        .await
        {
            Ok(id) => page.next_token = Some(format!("{id}:{next}")),
            Err(e) => tracing::warn!(
                error = %e,
                "could not keep the selection in the work bucket: later pages list the repository again"
            ),
        }
    }
    Ok(page)
}

/// How large a page of work may be.
#[derive(Debug, Clone, Copy)]
pub struct PageBounds {
    /// Tasks at most.
    pub tasks: usize,
    /// JSON bytes of the tasks at most.
    pub task_bytes: usize,
    /// Selected images checked for presence at most.
    pub checked: usize,
    /// Unsigned results at most (they stay in the repository's state beside the page plan).
    pub unsigned: usize,
    /// JSON bytes of a page plan at most.
    pub plan_bytes: usize,
}

impl PageBounds {
    /// Whether a page of `held` entries (tasks and unsigned results) and `bytes` of their JSON
    /// is past the bounds.
    fn exceeded(&self, held: usize, bytes: usize) -> bool {
        held > self.tasks || bytes > self.task_bytes
    }

    /// A workflow step's: its output travels in the state machine (256 KiB per state).
    pub const STEP: PageBounds = PageBounds {
        tasks: TASKS_PER_PAGE,
        task_bytes: PAGE_TASK_BYTES,
        checked: IMAGES_CHECKED_PER_CALL,
        unsigned: UNSIGNED_PER_PAGE,
        plan_bytes: PAGE_PLAN_BYTES,
    };
    /// In one process (`sync`): larger pages, so more of a repository copies at once and a
    /// shared layer is copied once for more images.
    pub const IN_PROCESS: PageBounds = PageBounds {
        tasks: 1000,
        task_bytes: usize::MAX,
        checked: usize::MAX,
        unsigned: usize::MAX,
        plan_bytes: usize::MAX,
    };
}

/// One page of the work left in `selection` from `offset` (an index into the whole
/// selection; see `enumerate_images`). The page stays within the stretch given.
pub async fn page_of_work(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
    selection: Selection<'_>,
    offset: usize,
    bounds: PageBounds,
) -> Result<EnumerateImagesOutput> {
    let destinations = page_destinations(conns, job, repository).await?;
    let fail_unsigned = job
        .job
        .require_signature
        .as_ref()
        .is_some_and(|r| r.fail_unsigned);
    // The source is asked only to cut indexes down to the job's platforms and, with
    // `requireSignature`, for the signatures of the images the page would write (an image
    // every destination holds is not judged again), or their referrers where the selection
    // left them unread; its reads are counted where they are pulls.
    let meter = Arc::new(PullMeter::counting(&job.job.source.registry));
    let gate = signature_gate(conns, job).await?;
    // An image whose referrers the selection did not ask for (every destination held it) is
    // asked about when the page finds it missing after all.
    let unread = selection.images.iter().any(|s| s.referrers_unread);
    let source = match job.platforms.is_some() || gate.is_some() || unread {
        true => Some(conns.source(&job.job).await?.metered(meter.clone())),
        false => None,
    };
    let source = source.as_ref();
    let judge = source
        .zip(gate)
        .map(|(source, gate)| Judge::new(source, repository, gate));
    let mut output = EnumerateImagesOutput {
        images: Vec::new(),
        present: 0,
        unsigned: Vec::new(),
        selected: selection.total,
        next_token: None,
        pulls: 0,
        report: None,
        present_by_destination: Default::default(),
    };
    let mut task_bytes: usize = 0;
    let stretch_end = selection.first + selection.images.len();
    let window_end = offset.saturating_add(bounds.checked).min(stretch_end);
    let window = selection
        .images
        .get(offset.saturating_sub(selection.first)..window_end - selection.first)
        .unwrap_or_default();
    // Presence of every image of the window in every destination, checked a few at a time, in
    // order, so the page can stop at its bounds.
    let mut checks = futures::stream::iter(window.iter().enumerate())
        .map(|checked| {
            check_image(
                job,
                (source, judge.as_ref()),
                &destinations,
                repository,
                fail_unsigned,
                checked,
            )
        })
        .buffered(PARALLEL_CHECKS);
    let mut next = window_end;
    while let Some(checked) = checks.next().await {
        let (at, checked) = checked?;
        if !add_to_page(
            &mut output,
            &mut task_bytes,
            checked,
            &bounds,
            &job.job.destinations,
        ) {
            next = offset + at; // this image starts the next page
            break;
        }
        // Near the invocation's deadline the rest goes to the next page, never a timeout.
        if time_to_hand_back() {
            next = offset + at + 1;
            break;
        }
    }
    output.next_token = (next < selection.total).then(|| next.to_string());
    if source.is_some_and(|s| s.counts_pulls()) {
        output.pulls = meter.sent();
    }
    Ok(output)
}

/// Adds one checked image to the page (`output`, and the JSON bytes of what it holds), or, when
/// it would take the page past `bounds`, returns `false`: the image starts the next page. A
/// page holds at least one image. Images found present in every destination are only counted;
/// the results of a destination that keeps the image archived travel with the not-copied ones.
fn add_to_page(
    output: &mut EnumerateImagesOutput,
    task_bytes: &mut usize,
    checked: Checked,
    bounds: &PageBounds,
    destinations: &[crate::job::Destination],
) -> bool {
    let (tasks, archived) = match checked {
        Checked::Tasks(tasks, archived) => (tasks, archived),
        Checked::Unsigned(results) => {
            // Results alone (no signature verified, a refused name, archived in the source) are
            // no task: they travel in the same state, so they count against its bytes and the
            // page's results, not its tasks (as a destination's archived ones below).
            let bytes = json_bytes(&results);
            let held = output.images.len() + output.unsigned.len();
            if held > 0 && over_results(output, *task_bytes, bytes, results.len(), bounds) {
                return false;
            }
            *task_bytes += bytes;
            output.unsigned.extend(results);
            return true;
        }
    };
    let missing: Vec<ImageTask> = tasks.into_iter().filter(|t| !t.present).collect();
    let (archived_at, results): (Vec<usize>, Vec<ImageResult>) = archived.into_iter().unzip();
    let bytes = json_bytes(&missing) + json_bytes(&results);
    let held = output.images.len() + output.unsigned.len();
    let adding = missing.len() + results.len();
    // Results alone (archived in a destination, present in the others) are no task: bounded
    // by bytes and the page's results, so a check that stops at the first task (the triage's
    // `tasks: 0`) still settles a repository whose images some destination keeps archived.
    let over_tasks =
        !missing.is_empty() && bounds.exceeded(held + adding, task_bytes.saturating_add(bytes));
    let over_results = over_results(output, *task_bytes, bytes, results.len(), bounds);
    if adding > 0 && held > 0 && (over_tasks || over_results) {
        return false;
    }
    output.present += destinations.len() - adding;
    for (index, spec) in destinations.iter().enumerate() {
        if !missing.iter().any(|t| t.destination == index) && !archived_at.contains(&index) {
            *output
                .present_by_destination
                .entry(spec.registry.clone())
                .or_default() += 1;
        }
    }
    *task_bytes += bytes;
    output.images.extend(missing);
    output.unsigned.extend(results);
    true
}

/// Whether `results` more results (with `bytes` more JSON) would take the page past its bytes or
/// its results.
fn over_results(
    output: &EnumerateImagesOutput,
    task_bytes: usize,
    bytes: usize,
    results: usize,
    bounds: &PageBounds,
) -> bool {
    task_bytes.saturating_add(bytes) > bounds.task_bytes
        || output.unsigned.len() + results > bounds.unsigned
}

/// JSON bytes of some values, as they travel in the state.
pub(crate) fn json_bytes<T: Serialize>(values: &[T]) -> usize {
    values
        .iter()
        .map(|v| serde_json::to_vec(v).map(|json| json.len()).unwrap_or(0))
        .sum()
}

/// Reports name the task an image result is for.
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
            digest: task.digest.to_string(),
            tags: task.tags.clone(),
            target_registry: task.target_registry.clone(),
            target_repository: task.target_repository.clone(),
            status,
            bytes_copied,
            error,
            source_pulls: 0,
            target_digest: task.target_digest.as_ref().map(Digest::to_string),
            signed_by: task.signed_by.clone(),
            lag_seconds: None,
        }
    }
}
