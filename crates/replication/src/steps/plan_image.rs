//! `plan-image`: plans a page of tasks: each image's blobs read from its manifests (every
//! platform, every referrer), and the union of the page's missing blobs per destination
//! repository, each blob once, in ranges under the job's byte budget.

use std::collections::BTreeMap;

use std::sync::Arc;

use futures::StreamExt;
use oci::{BlobRef, Digest, PullMeter, Reference, RegistryClient, Repository};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::connect::{Connection, Connections};
use crate::copy::{walk, Walked};
use crate::cost::is_zero;
use crate::error::{Error, ErrorKind, Result};
use crate::job::Job;
use crate::plan::{split_into_ranges, CopyRange};
use crate::platforms::{PlatformFilter, Subset};

/// JSON bytes of an image's plan at most (about 280 blobs across its platforms and referrers):
/// a page plan holds at least one image's.
pub const MAX_PLAN_BYTES: usize = 32 * 1024;
/// JSON bytes of a page's plan at most (its tasks and the union of their blobs); tasks past it
/// are deferred to the next plan.
pub const PAGE_PLAN_BYTES: usize = 84 * 1024;

/// The `plan-image` step: plans a page of images (`plan_page`).
pub struct PlanImage;

impl Step for PlanImage {
    const NAME: &'static str = "plan-image";
    type Input = PlanPageInput;
    type Output = PagePlan;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(plan_page(conns, input))
    }
}

/// Input of `plan-image` for one image (`plan_image`).
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
    /// Pulls the run spent on the source before this repository's child started (the
    /// parent's count; `source.pullBudget`).
    #[serde(default)]
    pub pulls_before: u64,
    /// Pulls spent since (the child's count, or in process the run's).
    #[serde(default)]
    pub pulls_spent: u64,
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
    /// Whether every range is whole blobs of at most `EXPRESS_RANGE_BYTES`: the page's ranges
    /// are then copied by EXPRESS child executions (cheaper, 5 minutes at most each), else by
    /// STANDARD ones (a segment loop may run for hours).
    #[serde(default)]
    pub express: bool,
    /// Whether the page's ranges together are whole blobs of at most `EXPRESS_RANGE_BYTES` (as
    /// much as one EXPRESS range could carry alone): they then share EXPRESS children,
    /// `RANGES_PER_CHILD` ranges each (`CopyBatchedRanges`), as a pack's single-image
    /// repositories' ranges do; Step Functions bills each child a Distributed Map starts.
    #[serde(default)]
    pub batched: bool,
    /// Manifest GETs the plan sent to the source (the pulls a rate-limited registry counts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pulls: u64,
    /// Tasks left for the next run: the source's pull budget (`source.pullBudget`) or its pull
    /// limit stopped their reads. Reported `postponed`, not failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postponed: Vec<ImageTask>,
}

impl PagePlan {
    /// A `postponed` result for each task the pull budget or limit left for the next run.
    pub fn postponed_results(&self) -> impl Iterator<Item = ImageResult> + '_ {
        self.postponed.iter().map(|task| {
            ImageResult::for_task(
                task,
                ImageStatus::Postponed,
                0,
                Some("left for the next run: the source's pull budget or limit is spent".into()),
            )
        })
    }
}

/// The most bytes a range copied by an EXPRESS child may hold: under a minute at 5 MB/s, well
/// within an EXPRESS execution's 5 minutes.
pub const EXPRESS_RANGE_BYTES: u64 = 256 << 20;

/// Ranges one `CopyBatchedRanges` child copies at most (its `ItemBatcher`'s `MaxItemsPerBatch`:
/// `tests/tests/suite/payload_bounds.rs` checks the definition says so).
pub const RANGES_PER_CHILD: u64 = 25;

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

fn source_reference(registry: &str, repository: &str, digest: &Digest) -> Reference {
    Reference {
        repository: Repository {
            registry: registry.to_string(),
            name: repository.to_string(),
        },
        tag: None,
        digest: Some(digest.clone()),
    }
}

/// The source image by digest as it is copied: its reference, top manifest (with `platforms`,
/// an index cut down to them), and children and blobs. `client` is the source connection's
/// client, or a metered view of it.
pub(crate) async fn read_source_image(
    (client, registry): (&RegistryClient, &str),
    repository: &str,
    digest: &Digest,
    platforms: Option<&PlatformFilter>,
) -> Result<(Reference, oci::Manifest, Walked)> {
    let from = source_reference(registry, repository, digest);
    let image = |source| Error::Registry {
        image: from.to_string(),
        source,
    };
    let mut top = client.get_manifest(&from).await.map_err(image)?;
    if let Some(filter) = platforms {
        match filter.subset(&top, &from.to_string()).map_err(image)? {
            Subset::Unchanged => {}
            Subset::Index(subset) => top = subset,
            Subset::NoneWanted(reason) => {
                return Err(image(oci::Error::InvalidManifest {
                    url: from.to_string(),
                    reason,
                }))
            }
        }
    }
    let walked = walk(client, &from, top.clone()).await?;
    Ok((from, top, walked))
}

/// What the job's platforms make of the source image `digest`. Where pulls are counted its
/// media type is asked with a HEAD first and the manifest read only for an index; elsewhere the
/// manifest is read at once (in process the listing's read of it is in the client's cache).
pub(crate) async fn platform_subset(
    source: &Connection,
    repository: &str,
    digest: &Digest,
    filter: &PlatformFilter,
) -> Result<Subset> {
    let from = source_reference(&source.registry, repository, digest);
    let image = |source| Error::Registry {
        image: from.to_string(),
        source,
    };
    if source.counts_pulls() {
        let head = source.client.head_manifest(&from).await.map_err(image)?;
        let media_type = head.and_then(|h| h.media_type);
        if media_type.is_some_and(|m| !oci::manifest::is_index_type(&m)) {
            return Ok(Subset::Unchanged);
        }
    }
    let top = source.client.get_manifest(&from).await.map_err(image)?;
    filter.subset(&top, &from.to_string()).map_err(image)
}

/// Reads the image's manifests (every child of an index) and splits its blobs into ranges under
/// the job's byte budget. An image the destination already has (digest and every tag) plans
/// nothing.
#[tracing::instrument(skip_all, fields(repository = %input.image.repository, digest = %input.image.digest))]
pub async fn plan_image(conns: &Connections, input: PlanImageInput) -> Result<ImagePlan> {
    let valid = input.job.validate()?;
    let (job, platforms) = (valid.job, valid.platforms);
    let source = conns.source(&job).await?;
    let dest = conns.destination(&job, input.image.destination).await?;
    let mut image = input.image;
    let to = Repository {
        registry: dest.registry.clone(),
        name: image.target_repository.clone(),
    };
    image.present = is_present(
        &dest.client,
        &to,
        image.copied_digest(),
        &image.tags,
        &image.referrers,
    )
    .await?;
    if image.present {
        return Ok(ImagePlan {
            image,
            ranges: Vec::new(),
            blobs: 0,
            bytes: 0,
            manifests: 0,
        });
    }
    plan_blobs(
        (&source.client, &source.registry),
        image,
        (job.range_bytes, platforms.as_ref()),
    )
    .await
}

/// The image's blobs (every platform, every referrer) in ranges, without a presence check:
/// `enumerate-images` just found it missing. `source` is a client and the source registry.
async fn plan_blobs(
    source: (&RegistryClient, &str),
    image: ImageTask,
    (range_bytes, platforms): (u64, Option<&PlatformFilter>),
) -> Result<ImagePlan> {
    let (_, _, walked) =
        read_source_image(source, &image.repository, &image.digest, platforms).await?;
    let mut manifests = walked.children.len() + 1;
    let mut blobs = walked.blobs;
    for referrer in &image.referrers {
        let (_, _, walked) = read_source_image(source, &image.repository, referrer, None).await?;
        manifests += walked.children.len() + 1;
        blobs.extend(walked.blobs);
    }
    let blobs: Vec<_> = blobs.into_values().collect();
    let plan = ImagePlan {
        ranges: split_into_ranges(&blobs, range_bytes),
        bytes: blobs.iter().map(|b| b.size).sum(),
        blobs: blobs.len(),
        manifests,
        image,
    };
    let bytes = serde_json::to_vec(&plan).map(|v| v.len()).unwrap_or(0);
    if bytes > MAX_PLAN_BYTES {
        return Err(Error::PlanTooLarge {
            image: format!("{}@{}", plan.image.repository, plan.image.digest),
            blobs: plan.blobs,
            bytes,
            limit: MAX_PLAN_BYTES,
        });
    }
    Ok(plan)
}

/// Plans a page of tasks: each image as `plan_image` does, then the union of their missing
/// blobs per destination repository, each blob once, split into ranges. Copying the union
/// before any manifest means a base layer shared by the page's images travels once, and no two
/// uploads of one blob race. A plan stays under `PAGE_PLAN_BYTES`; tasks past it are deferred
/// to the next plan. An image that cannot be planned is reported, the others go on.
#[tracing::instrument(skip_all, fields(images = input.images.len()))]
pub async fn plan_page(conns: &Connections, input: PlanPageInput) -> Result<PagePlan> {
    plan_page_within(conns, input, PageBounds::STEP.plan_bytes).await
}

/// `plan_page` with a plan of at most `max_plan_bytes` of JSON.
pub async fn plan_page_within(
    conns: &Connections,
    input: PlanPageInput,
    max_plan_bytes: usize,
) -> Result<PagePlan> {
    let valid = input.job.validate()?;
    let (job, platforms) = (valid.job, valid.platforms);
    let source = conns.source(&job).await?;
    let spent = input.pulls_before.saturating_add(input.pulls_spent);
    let meter = Arc::new(plan_meter(&job, &source.registry, spent));
    let client = source.client.metered(meter.clone());
    // Under a pull budget images are planned one at a time, so the allowance goes to the
    // page's first images whole rather than to parts of many.
    let parallel = match job.source.pull_budget {
        Some(_) => 1,
        None => PARALLEL_CHECKS,
    };
    let plans: Vec<(ImageTask, Result<ImagePlan>)> = futures::stream::iter(input.images)
        .map(|task| {
            let source = (&client, source.registry.as_str());
            let platforms = platforms.as_ref();
            async move {
                let plan = plan_blobs(source, task.clone(), (job.range_bytes, platforms)).await;
                (task, plan)
            }
        })
        .buffered(parallel)
        .collect()
        .await;
    let mut page = PagePlan {
        ranges: Vec::new(),
        images: Vec::new(),
        deferred: Vec::new(),
        bytes: 0,
        express: false,
        batched: false,
        pulls: meter.sent(),
        postponed: Vec::new(),
    };
    let mut ready: Vec<(ImageTask, ImagePlan)> = Vec::new();
    for (task, plan) in plans {
        match plan {
            Err(e) if e.kind() == ErrorKind::InvalidInput => return Err(e),
            Err(e) if e.is_pull_limit() => {
                tracing::info!(repository = %task.repository, digest = %task.digest, error = %e, "left for the next run");
                page.postponed.push(task);
            }
            Err(e) => page.images.push(PlannedImage {
                image: task,
                bytes: 0,
                present: false,
                error: Some(format!("{}: {e}", e.kind().as_str())),
            }),
            Ok(plan) => ready.push((task, plan)),
        }
    }
    // The largest prefix of the page whose plan fits; the rest is deferred.
    let mut take = ready.len();
    loop {
        let (ranges, bytes) = union_ranges(&ready[..take], job.range_bytes);
        let mut candidate = page.clone();
        candidate.express = ranges.iter().all(|r| match &r.range {
            CopyRange::Blobs { blobs } => {
                blobs.iter().map(|b| b.size).sum::<u64>() <= EXPRESS_RANGE_BYTES
            }
            CopyRange::Segments { .. } => false,
        });
        candidate.batched = candidate.express && bytes <= EXPRESS_RANGE_BYTES;
        candidate.ranges = ranges;
        candidate.bytes = bytes;
        candidate
            .images
            .extend(ready[..take].iter().map(|(task, plan)| PlannedImage {
                image: task.clone(),
                bytes: plan.bytes,
                present: plan.image.present,
                error: None,
            }));
        candidate
            .deferred
            .extend(ready[take..].iter().map(|(task, _)| task.clone()));
        let size = serde_json::to_vec(&candidate).map(|v| v.len()).unwrap_or(0);
        if size <= max_plan_bytes || take <= 1 {
            return Ok(candidate);
        }
        take -= 1;
    }
}

/// The meter of a plan's source reads: it counts them, and under the job's pull budget allows
/// half of what is left (each manifest read now is read again when its image is put) and
/// keeps the registry's own count above `keepRemaining`.
fn plan_meter(job: &Job, registry: &str, pulls_spent: u64) -> PullMeter {
    let meter = PullMeter::counting(registry);
    match job.source.pull_budget {
        Some(budget) => meter
            .with_allowance(budget.max_pulls.saturating_sub(pulls_spent) / 2)
            .keeping(budget.keep_remaining, 1),
        None => meter,
    }
}

/// The union of the planned images' blobs per destination repository, each blob once, split
/// into ranges; and their bytes.
fn union_ranges(planned: &[(ImageTask, ImagePlan)], budget: u64) -> (Vec<PageRange>, u64) {
    let mut groups: BTreeMap<(usize, String), (ImageTask, BTreeMap<String, BlobRef>)> =
        BTreeMap::new();
    for (task, plan) in planned.iter().filter(|(_, plan)| !plan.image.present) {
        let group = groups
            .entry((task.destination, task.target_repository.clone()))
            .or_insert_with(|| {
                let mut representative = task.clone();
                representative.tags.clear();
                representative.referrers.clear();
                (representative, BTreeMap::new())
            });
        for blob in plan.ranges.iter().flat_map(CopyRange::blobs) {
            group.1.entry(blob.digest.to_string()).or_insert(blob);
        }
    }
    let mut ranges = Vec::new();
    let mut bytes = 0;
    for (representative, blobs) in groups.into_values() {
        let blobs: Vec<BlobRef> = blobs.into_values().collect();
        bytes += blobs.iter().map(|b| b.size).sum::<u64>();
        ranges.extend(
            split_into_ranges(&blobs, budget)
                .into_iter()
                .map(|range| PageRange {
                    image: representative.clone(),
                    range,
                }),
        );
    }
    (ranges, bytes)
}
