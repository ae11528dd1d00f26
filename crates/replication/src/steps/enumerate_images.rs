//! `enumerate-images`: a repository's images the job selects, and one page of the work left
//! (each selected image for each destination that does not have it yet).

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use oci::{Digest, PullMeter, Reference, Repository};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::catalog::too_many_pages;
use crate::connect::{Connection, Connections};
use crate::error::{Error, Result};
use crate::filter::{ListedImage, Refusal, SelectedImage};
use crate::job::{ImageSelector, Job, ValidJob};
use crate::metrics::{self, Metric};
use crate::platforms::Subset;
use crate::referrers;
use crate::signatures::{self, SignatureGate};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateImagesOutput {
    /// Tasks of this page, none of them present (at most `TASKS_PER_PAGE` tasks and
    /// `PAGE_TASK_BYTES` of JSON).
    pub images: Vec<ImageTask>,
    /// Tasks this page checked and found present in their destination.
    pub present: usize,
    /// Selected images this page did not make tasks of because no signature verified (status
    /// `unsigned`, or `failed` with `requireSignature.failUnsigned`), one per destination.
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
    let token = PageToken::parse(input.next_token.as_deref())?;
    let bucket = conns.work_bucket().await;
    if let (Some(id), Some(bucket)) = (&token.selection, bucket) {
        if let Some(chunk) = stored_selection_chunk(
            bucket,
            (&job, &conns.deployment_digest()),
            &input.repository,
            id,
            token.offset,
        )
        .await
        {
            let mut page = page_of_work(
                conns,
                &job,
                &input.repository,
                chunk.as_selection(),
                token.offset,
                PageBounds::STEP,
            )
            .await?;
            page.next_token = page.next_token.map(|next| format!("{id}:{next}"));
            page.emit_present_metrics();
            return Ok(page);
        }
        tracing::warn!(selection = %id, "the run's kept selection is gone: listing the repository again");
    }
    let (selected, _, selection_pulls) = selected_counted(conns, &job, &input.repository).await?;
    let mut page = page_of_work(
        conns,
        &job,
        &input.repository,
        Selection::whole(&selected),
        token.offset,
        PageBounds::STEP,
    )
    .await?;
    page.pulls += selection_pulls;
    if let (Some(next), Some(bucket)) = (&page.next_token, bucket) {
        match keep_selection(
            bucket,
            (&job, &conns.deployment_digest()),
            &input.repository,
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
    page.emit_present_metrics();
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

/// The images of a repository the job selects, in a stable order (by digest): listed and
/// resolved once; `page_of_work` pages through them.
pub async fn selected_images(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
) -> Result<Vec<SelectedImage>> {
    Ok(selected_and_listed(conns, job, repository).await?.0)
}

/// `selected_images`, and the manifest GETs the selection sent to a source that counts pulls
/// (the signature gate's reads): the run counts them in its `sourcePulls`.
pub async fn selected_images_counted(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
) -> Result<(Vec<SelectedImage>, u64)> {
    let (selected, _, pulls) = selected_counted(conns, job, repository).await?;
    Ok((selected, pulls))
}

/// `selected_images`, and the repository's listing when the selection read it (with filters,
/// always): a verification finds the tags only a destination has from it.
pub(crate) async fn selected_and_listed(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
) -> Result<(Vec<SelectedImage>, Option<Vec<ListedImage>>)> {
    let (selected, listed, _) = selected_counted(conns, job, repository).await?;
    Ok((selected, listed))
}

/// `selected_and_listed`, and the manifest GETs it sent where they are pulls. Every read goes
/// through a metered view of the source connection, so the signature gate's manifest reads
/// (and the referrers' and artifacts' checks) are counted whichever module sends them. They
/// are counted, not refused: a gate read refused for the budget would report a signed image
/// unsigned.
pub(crate) async fn selected_counted(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
) -> Result<(Vec<SelectedImage>, Option<Vec<ListedImage>>, u64)> {
    let connection = conns.source(&job.job).await?;
    let meter = Arc::new(PullMeter::counting(&connection.registry));
    let source = connection.metered(meter.clone());
    let counted = |pulls: u64| if source.counts_pulls() { pulls } else { 0 };
    let policies = conns.signature_policies(job)?;
    let gate = match policies.is_empty() {
        false => Some(SignatureGate {
            policies,
            verifier: conns.bundle_verifier().await?,
        }),
        true => None,
    };
    let (mut selected, listed) = select_images(&source, job, gate.as_ref(), repository).await?;
    selected.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok((selected, listed, counted(meter.sent())))
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
    let mut destinations = Vec::new();
    for (index, spec) in job.job.destinations.iter().enumerate() {
        let dest = conns.destination(&job.job, index).await?;
        let target = spec.checked_target_repository(repository)?;
        conns.check_target_scope(&spec.registry, &target)?;
        let (tags, absent) = destination_tags(&dest.client, &spec.registry, &target).await;
        destinations.push((index, spec, dest, target, tags, absent));
    }
    let fail_unsigned = job
        .job
        .require_signature
        .as_ref()
        .is_some_and(|r| r.fail_unsigned);
    // The source is asked only to cut indexes down to the job's platforms; its reads are
    // counted where they are pulls.
    let meter = Arc::new(PullMeter::counting(&job.job.source.registry));
    let source = match &job.platforms {
        Some(_) => Some(conns.source(&job.job).await?.metered(meter.clone())),
        None => None,
    };
    let source = source.as_ref();
    let mut output = EnumerateImagesOutput {
        images: Vec::new(),
        present: 0,
        unsigned: Vec::new(),
        selected: selection.total,
        next_token: None,
        pulls: 0,
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
        .map(|(at, image)| {
            let destinations = &destinations;
            async move {
                // Parsed once here; every later step takes the task's digests as they are.
                let source_digest = |text: &String| {
                    Digest::parse(text).map_err(|source| Error::Listing {
                        what: format!("the digests of {repository}"),
                        source,
                    })
                };
                let not_copied = not_copied(image, fail_unsigned);
                if let Some((status, reason)) = not_copied {
                    // Not copied: one result per destination, no presence check (a refused
                    // name is not even parsed: it may be no digest at all).
                    let unsigned =
                        not_copied_results(destinations, (repository, image), status, reason);
                    return Ok::<_, Error>((at, Checked::Unsigned(unsigned)));
                }
                let digest = source_digest(&image.digest)?;
                let mut referrers = image
                    .referrers
                    .iter()
                    .map(source_digest)
                    .collect::<Result<Vec<_>>>()?;
                // With `platforms`, an index is copied as the part of it the job names (its
                // signatures and referrers name the source's digest: they stay behind).
                let target_digest = match (&job.platforms, source) {
                    (Some(filter), Some(source)) => {
                        match platform_subset(source, repository, &digest, filter).await? {
                            Subset::Unchanged => None,
                            Subset::Index(subset) => {
                                referrers.clear();
                                Some(subset.digest)
                            }
                            Subset::NoneWanted(reason) => {
                                let refused = not_copied_results(
                                    destinations,
                                    (repository, image),
                                    ImageStatus::Refused,
                                    &reason,
                                );
                                return Ok::<_, Error>((at, Checked::Unsigned(refused)));
                            }
                        }
                    }
                    _ => None,
                };
                let mut tasks = Vec::new();
                for (index, spec, dest, target, listed, repository_absent) in destinations {
                    let repo = Repository {
                        registry: spec.registry.clone(),
                        name: target.clone(),
                    };
                    // A tag the destination does not list means missing, without asking.
                    let unlisted = listed
                        .as_ref()
                        .map(|l| image.tags.iter().filter(|t| !l.contains(*t)).count());
                    let tags_absent = !image.tags.is_empty() && unlisted == Some(image.tags.len());
                    let wanted = target_digest.as_ref().unwrap_or(&digest);
                    let present = unlisted.unwrap_or(0) == 0
                        && is_present(&dest.client, &repo, wanted, &image.tags, &referrers).await?;
                    tasks.push(ImageTask {
                        repository: repository.to_string(),
                        digest: digest.clone(),
                        tags: image.tags.clone(),
                        destination: *index,
                        target_registry: spec.registry.clone(),
                        target_repository: target.clone(),
                        present,
                        referrers: referrers.clone(),
                        tags_absent,
                        repository_absent: *repository_absent,
                        pushed_at: image.pushed_at,
                        target_digest: target_digest.clone(),
                        signed_by: image.signed_by.clone(),
                    });
                }
                Ok::<_, Error>((at, Checked::Tasks(tasks)))
            }
        })
        .buffered(PARALLEL_CHECKS);
    let mut next = window_end;
    while let Some(checked) = checks.next().await {
        let (at, checked) = checked?;
        let tasks = match checked {
            Checked::Tasks(tasks) => tasks,
            Checked::Unsigned(results) => {
                // Counted against the page's bounds like tasks: they travel in the same state.
                let bytes = json_bytes(&results);
                let held = output.images.len() + output.unsigned.len();
                if held > 0
                    && (bounds.exceeded(held + results.len(), task_bytes.saturating_add(bytes))
                        || output.unsigned.len() + results.len() > bounds.unsigned)
                {
                    next = offset + at;
                    break;
                }
                task_bytes += bytes;
                output.unsigned.extend(results);
                continue;
            }
        };
        let missing: Vec<ImageTask> = tasks.into_iter().filter(|t| !t.present).collect();
        let bytes = json_bytes(&missing);
        let held = output.images.len() + output.unsigned.len();
        if !missing.is_empty()
            && held > 0
            && bounds.exceeded(held + missing.len(), task_bytes.saturating_add(bytes))
        {
            next = offset + at; // this image starts the next page
            break;
        }
        output.present += job.job.destinations.len() - missing.len();
        for (index, spec) in job.job.destinations.iter().enumerate() {
            if !missing.iter().any(|t| t.destination == index) {
                *output
                    .present_by_destination
                    .entry(spec.registry.clone())
                    .or_default() += 1;
            }
        }
        task_bytes += bytes;
        output.images.extend(missing);
    }
    output.next_token = (next < selection.total).then(|| next.to_string());
    if source.is_some_and(|s| s.counts_pulls()) {
        output.pulls = meter.sent();
    }
    Ok(output)
}

/// Why a selected image is not copied, if it is not, as the status its results get: a refused
/// name first, then a tag that moved on, an archived image, a missing signature.
fn not_copied(image: &SelectedImage, fail_unsigned: bool) -> Option<(ImageStatus, &String)> {
    if let Some(reason) = &image.refused {
        return Some((ImageStatus::Refused, reason));
    }
    if let Some(reason) = &image.superseded {
        return Some((ImageStatus::Superseded, reason));
    }
    if let Some(reason) = &image.archived {
        return Some((ImageStatus::Archived, reason));
    }
    let reason = image.unsigned.as_ref()?;
    Some(if fail_unsigned {
        (ImageStatus::Failed, reason)
    } else {
        (ImageStatus::Unsigned, reason)
    })
}

/// Why an archived image is not copied.
fn archived_reason(registry: &str, repository: &str, name: &str) -> String {
    format!("{registry}/{repository}{name} is archived in the source (ECR archive storage class: pulls answer 404); restore it (UpdateImageStorageClass to STANDARD) to have it copied")
}

/// The images of one repository a job selects: the listed ones, or the filters' choice from
/// the whole catalog; then (with `referrers`) every signature, SBOM and attestation that refers
/// to them.
/// Also returns the repository's listing when it was read (the filters need it).
async fn select_images(
    source: &Connection,
    job: &ValidJob,
    gate: Option<&SignatureGate>,
    repository: &str,
) -> Result<(Vec<SelectedImage>, Option<Vec<ListedImage>>)> {
    let mut catalog_images: Option<Vec<ListedImage>> = None;
    // Names the source listed that are not valid: reported with the selection, never copied.
    let mut refused: Vec<SelectedImage> = Vec::new();
    let mut selected = if job.job.images.is_empty() {
        let (images, invalid) = listed_images(source, repository).await?;
        refused.extend(
            invalid
                .into_iter()
                .filter(|r| job.tags.tag_matches(&r.name))
                .map(Refusal::into_selected),
        );
        let mut selected = job.tags.select(&images, metrics::now_seconds());
        let archived: std::collections::HashSet<&str> = images
            .iter()
            .filter(|i| i.archived)
            .map(|i| i.digest.as_str())
            .collect();
        for image in &mut selected {
            if archived.contains(image.digest.as_str()) {
                let name = format!("@{}", image.digest);
                tracing::warn!(image = %format!("{repository}{name}"), "archived in the source: not copied");
                image.archived = Some(archived_reason(&source.registry, repository, &name));
            }
        }
        catalog_images = Some(images);
        selected
    } else {
        resolve_listed(source, job, repository).await?
    };
    // Archived and superseded images are reported as they are: no signature or referrer lookup.
    let (mut set_aside, kept): (Vec<_>, Vec<_>) = selected
        .into_iter()
        .partition(|s| s.archived.is_some() || s.superseded.is_some());
    selected = kept;
    if !job.job.referrers && gate.is_none() {
        selected.append(&mut refused);
        selected.append(&mut set_aside);
        return Ok((selected, catalog_images));
    }
    let images = match catalog_images {
        Some(images) => images,
        None => all_images(source, repository).await?,
    };
    // Only signed images are copied, and only they bring their referrers along.
    let mut unsigned = Vec::new();
    if let Some(gate) = gate {
        let gated = signatures::gate(source, repository, &images, selected, gate).await?;
        let (not_copied, signed): (Vec<_>, Vec<_>) = gated
            .into_iter()
            .partition(|s| s.unsigned.is_some() || s.refused.is_some());
        selected = signed;
        (refused, unsigned) = not_copied
            .into_iter()
            .chain(refused)
            .partition(|s| s.refused.is_some());
    }
    if job.job.referrers {
        let gated = gate.is_some();
        referrers::add_referrers(
            source,
            repository,
            &images,
            &mut selected,
            &mut refused,
            gated,
        )
        .await?;
    }
    selected.append(&mut unsigned);
    selected.append(&mut refused);
    selected.append(&mut set_aside);
    Ok((selected, Some(images)))
}

/// Every image of a repository (all catalog pages, at most `oci::MAX_LISTING_PAGES`), and
/// the names it listed that are not valid (refused, never used).
pub(crate) async fn listed_images(
    conn: &Connection,
    repository: &str,
) -> Result<(Vec<ListedImage>, Vec<Refusal>)> {
    let catalog = conn.catalog();
    let mut images = Vec::new();
    let mut refused = Vec::new();
    let mut next = None;
    for _ in 0..oci::MAX_LISTING_PAGES {
        let page = catalog.images(repository, next).await?;
        images.extend(page.items);
        refused.extend(page.refused);
        match page.next {
            Some(n) => next = Some(n),
            None => return Ok((images, refused)),
        }
    }
    Err(too_many_pages(
        &conn.registry,
        format!("images of {}/{repository}", conn.registry),
    ))
}

/// Every image of a repository whose names are valid (the refused ones left out).
pub(crate) async fn all_images(conn: &Connection, repository: &str) -> Result<Vec<ListedImage>> {
    Ok(listed_images(conn, repository).await?.0)
}

/// The listed images of one repository, resolved in the source (a tag to its digest), one entry
/// per digest with the listed tags. A listed tag the job's tag filters exclude is left out (a
/// push trigger sends every push; the deployment's exclusions still hold). A tag listed with a
/// digest that it no longer names (pushed again since) is superseded: reported, not copied, and
/// not a failure: the later push's run copies the newer image.
async fn resolve_listed(
    source: &Connection,
    job: &ValidJob,
    repository: &str,
) -> Result<Vec<SelectedImage>> {
    let listed: &[ImageSelector] = &job.job.images;
    let mut selected: Vec<SelectedImage> = Vec::new();
    // The repository's listing, read only when a named image answers 404, and then once.
    let mut listing: Option<Vec<ListedImage>> = None;
    for image in listed.iter().filter(|i| {
        i.repository == repository && i.tag.as_ref().is_none_or(|t| job.tags.tag_matches(t))
    }) {
        // `:tag`, `@digest` or both: how the image is named after its repository.
        let reference = format!(
            "{}{}",
            image
                .tag
                .as_ref()
                .map(|t| format!(":{t}"))
                .unwrap_or_default(),
            image
                .digest
                .as_ref()
                .map(|d| format!("@{d}"))
                .unwrap_or_default(),
        );
        let named = format!("{}/{}{reference}", source.registry, image.repository);
        let lookup = Reference {
            repository: Repository {
                registry: source.registry.clone(),
                name: image.repository.clone(),
            },
            tag: image.tag.clone(),
            digest: match (&image.tag, &image.digest) {
                (None, Some(d)) => Some(Digest::parse(d).map_err(|e| Error::Listing {
                    what: named.clone(),
                    source: e,
                })?),
                _ => None,
            },
        };
        let head = source
            .client
            .head_manifest(&lookup)
            .await
            .map_err(|e| Error::Listing {
                what: named.clone(),
                source: e,
            })?;
        let Some(head) = head else {
            // ECR answers 404 for an archived image too: reported as archived, not failed.
            if let Some(digest) = archived_digest(source, repository, image, &mut listing).await {
                tracing::warn!(image = %named, "archived in the source: not copied");
                selected.push(SelectedImage {
                    digest,
                    tags: image.tag.iter().cloned().collect(),
                    archived: Some(archived_reason(&source.registry, repository, &reference)),
                    ..SelectedImage::default()
                });
                continue;
            }
            return Err(Error::ImageNotFound { image: named });
        };
        let digest = head.digest.to_string();
        if let Some(listed_digest) = &image.digest {
            if *listed_digest != digest {
                tracing::info!(image = %named, now = %digest, "superseded: the tag names a newer image");
                selected.push(SelectedImage {
                    digest: listed_digest.clone(),
                    tags: image.tag.iter().cloned().collect(),
                    superseded: Some(format!(
                        "{named}: the tag has moved on to {digest} since; that image's own run copies it"
                    )),
                    ..SelectedImage::default()
                });
                continue;
            }
        }
        match selected.iter_mut().find(|s| s.digest == digest) {
            Some(existing) => existing.tags.extend(image.tag.clone()),
            None => selected.push(SelectedImage {
                digest,
                tags: image.tag.iter().cloned().collect(),
                ..SelectedImage::default()
            }),
        }
    }
    Ok(selected)
}

/// The digest of `image` (named by tag or digest) when an ECR source lists it as archived: asked
/// only after a pull answered 404 (a registry that is not ECR has no archive). The repository's
/// listing is read into `listing` the first time and reused for the other images of the call.
async fn archived_digest(
    source: &Connection,
    repository: &str,
    image: &ImageSelector,
    listing: &mut Option<Vec<ListedImage>>,
) -> Option<String> {
    source.ecr.as_ref()?;
    if listing.is_none() {
        // A listing that fails too (the repository is gone): not found, as said.
        *listing = Some(listed_images(source, repository).await.ok()?.0);
    }
    listing
        .as_ref()?
        .iter()
        .find(|i| {
            i.archived
                && (image.tag.as_ref().is_some_and(|t| i.tags.contains(t))
                    || image.digest.as_deref() == Some(i.digest.as_str()))
        })
        .map(|i| i.digest.clone())
}

/// The tags a destination repository has now, read once per page so that a first sync costs no
/// presence request per image (`None` when the registry does not list them: each image is then
/// asked about), and whether the repository does not exist at all (its list is then empty).
pub(crate) async fn destination_tags(
    client: &oci::RegistryClient,
    registry: &str,
    repository: &str,
) -> (Option<std::collections::HashSet<String>>, bool) {
    let repo = Repository {
        registry: registry.to_string(),
        name: repository.to_string(),
    };
    match client.list_tags(&repo).await {
        Ok(tags) => (Some(tags.into_iter().collect()), false),
        Err(e) if e.is_not_found() => (Some(Default::default()), true),
        Err(e) => {
            tracing::debug!(error = %e, repository = %repo, "tag list unavailable; checking each image");
            (None, false)
        }
    }
}

/// The destination has the digest, every tag on it, and every referrer travelling with it.
pub(crate) async fn is_present(
    client: &oci::RegistryClient,
    repo: &Repository,
    digest: &Digest,
    tags: &[String],
    referrers: &[Digest],
) -> Result<bool> {
    let listing = |source| Error::Listing {
        what: format!("{repo}@{digest} in the destination"),
        source,
    };
    let by_digest = Reference {
        repository: repo.clone(),
        tag: None,
        digest: Some(digest.clone()),
    };
    // A tag that names the digest proves the manifest is there: the digest itself is asked
    // only when there is no tag.
    if tags.is_empty()
        && client
            .head_manifest(&by_digest)
            .await
            .map_err(listing)?
            .is_none()
    {
        return Ok(false);
    }
    for tag in tags {
        let head = client
            .head_manifest(&by_digest.with_tag(tag))
            .await
            .map_err(listing)?;
        if head.is_none_or(|h| h.digest != *digest) {
            return Ok(false);
        }
    }
    for referrer in referrers {
        if client
            .head_manifest(&by_digest.with_digest(referrer.clone()))
            .await
            .map_err(listing)?
            .is_none()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One result per destination for an image that is not copied, with why.
fn not_copied_results(
    destinations: &[Destination<'_>],
    (repository, image): (&str, &SelectedImage),
    status: ImageStatus,
    reason: &str,
) -> Vec<ImageResult> {
    destinations
        .iter()
        .map(|(_, spec, _, target, _, _)| {
            ImageResult {
                repository: repository.to_string(),
                digest: image.digest.clone(),
                tags: image.tags.clone(),
                target_registry: spec.registry.clone(),
                target_repository: target.clone(),
                status: status.clone(),
                bytes_copied: 0,
                error: Some(reason.to_string()),
                source_pulls: 0,
                target_digest: None,
                signed_by: None,
            }
            .listed()
        })
        .collect()
}

/// A destination as `page_of_work` checks it: its index, its spec, its connection, the
/// repository there, the tags it lists (if it lists them) and whether the repository is absent.
type Destination<'a> = (
    usize,
    &'a crate::job::Destination,
    Arc<Connection>,
    String,
    Option<HashSet<String>>,
    bool,
);

/// What checking one selected image gave: its tasks (present or not), or, for an image no
/// signature verified, its results.
enum Checked {
    Tasks(Vec<ImageTask>),
    Unsigned(Vec<ImageResult>),
}

/// JSON bytes of some values, as they travel in the state.
fn json_bytes<T: Serialize>(values: &[T]) -> usize {
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
        }
    }
}
