//! The workflow's steps. Each Lambda function calls exactly one of these; the CLI's `sync`
//! calls them in the order the state machine does.

use std::collections::{BTreeMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use ecr::RepositorySettings;
use futures::{StreamExt, TryStreamExt};
use oci::{BlobOutcome, BlobRef, Digest, Reference, Repository, SegmentProgress};

use crate::catalog::{Catalog, OciCatalog, RepositoryAdmin};
use crate::connect::{Connection, Connections};
use crate::copy::{put_manifests_in_order, walk, Known, Walked};
use crate::error::{Error, ErrorKind, FieldProblem, Result};
use crate::filter::{ImageInfo, SelectedImage};
use crate::job::{Destination, ImageSelector, Job, SettingsMode, ValidJob};
use crate::plan::{split_into_ranges, CopyRange};
use crate::referrers;
use crate::steps::*;

/// Tasks (image x destination pairs with work) per `enumerate-images` page at most: each is a
/// child execution whose result is part of the Map's aggregated result (256 KiB at most).
pub const TASKS_PER_PAGE: usize = 25;
/// JSON bytes of one page's tasks at most (an image with hundreds of tags fills a page alone).
pub const PAGE_TASK_BYTES: usize = 32 * 1024;
/// Source repositories per `enumerate-repositories` page: each becomes a child execution whose
/// report is part of the Map's aggregated result (256 KiB at most).
pub const REPOSITORIES_PER_PAGE: usize = 20;
/// Selected images `enumerate-images` checks for presence in one call at most; a repository
/// with more continues on the next page (bounded work per invocation).
pub const IMAGES_CHECKED_PER_CALL: usize = 2000;
/// JSON bytes of an image's plan at most (about 280 blobs across its platforms and referrers):
/// a page plan holds at least one image's.
pub const MAX_PLAN_BYTES: usize = 32 * 1024;
/// JSON bytes of a page's plan at most (its tasks and the union of their blobs); tasks past it
/// are deferred to the next plan.
pub const PAGE_PLAN_BYTES: usize = 84 * 1024;
/// Presence checks at once.
const PARALLEL_CHECKS: usize = 16;
/// Blobs of one range copied at once.
const PARALLEL_BLOBS: usize = 8;

impl Connection {
    /// The catalog of this registry: ECR's API, or the OCI catalog.
    pub fn catalog(&self) -> Box<dyn Catalog + '_> {
        match &self.ecr {
            Some(admin) => Box::new(admin.clone()),
            None => Box::new(OciCatalog {
                client: &self.client,
                registry: &self.registry,
                page_size: self.catalog_page_size,
            }),
        }
    }
}

fn validated(job: Job) -> Result<ValidJob> {
    job.validate()
}

fn destination(job: &Job, index: usize) -> Result<&Destination> {
    job.destinations
        .get(index)
        .ok_or_else(|| Error::InvalidInput {
            problems: vec![FieldProblem {
                field: "destination".into(),
                problem: format!(
                    "index {index} is out of range: the job has {} destinations",
                    job.destinations.len()
                ),
            }],
        })
}

/// The repository name in a destination: its prefix, then the source name.
pub fn target_repository(destination: &Destination, repository: &str) -> String {
    format!(
        "{}{repository}",
        destination.repository_prefix.clone().unwrap_or_default()
    )
}

/// The repository name in a destination, checked against the registry naming rules (ECR:
/// at most 256 characters, lowercase path components): a prefix can push a valid source name
/// past them, and that repository then fails alone, named, before any call.
fn checked_target_repository(destination: &Destination, repository: &str) -> Result<String> {
    let target = target_repository(destination, repository);
    oci::reference::validate_repository_name(&target).map_err(|problem| {
        Error::TargetNameInvalid {
            repository: format!("{}/{target}", destination.registry),
            problem,
        }
    })?;
    Ok(target)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One page of the source's repositories, filtered by the job's globs.
pub async fn enumerate_repositories(
    conns: &Connections,
    input: EnumerateRepositoriesInput,
) -> Result<EnumerateRepositoriesOutput> {
    enumerate_repositories_within(conns, input, REPOSITORIES_PER_PAGE).await
}

/// `enumerate_repositories` with pages of at most `page` source repositories (in one process
/// the state's bound does not apply; registries' catalogs are cheaper read in large pages).
#[tracing::instrument(skip_all, fields(next = ?input.next_token))]
pub async fn enumerate_repositories_within(
    conns: &Connections,
    input: EnumerateRepositoriesInput,
    page: usize,
) -> Result<EnumerateRepositoriesOutput> {
    let job = validated(input.job)?;
    let concurrency = Concurrency::share(job.job.max_concurrency);
    if !job.job.images.is_empty() {
        let mut listed: Vec<String> = Vec::new();
        for image in &job.job.images {
            if !listed.contains(&image.repository) {
                listed.push(image.repository.clone());
            }
        }
        return Ok(EnumerateRepositoriesOutput {
            repositories: listed,
            next_token: None,
            job: job.job,
            concurrency,
        });
    }
    let source = conns.source(&job.job).await?;
    let page = source
        .catalog()
        .repositories(input.next_token, page)
        .await?;
    Ok(EnumerateRepositoriesOutput {
        repositories: page
            .items
            .into_iter()
            .filter(|r| job.repositories.matches(r))
            .collect(),
        next_token: page.next,
        job: job.job,
        concurrency,
    })
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
    if desired.encryption_type == "KMS" {
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
    let job = validated(input.job)?;
    let dest_spec = destination(&job.job, input.destination)?.clone();
    let target = checked_target_repository(&dest_spec, &input.repository)?;
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

async fn apply_settings(
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
        Some(src_admin) => RepositoryAdmin::read_settings(src_admin, repository).await?,
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
    let report =
        RepositoryAdmin::ensure_repository(admin, target, &desired, update, job.dry_run).await?;
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
        let immutable = RepositoryAdmin::read_settings(admin, target)
            .await?
            .is_some_and(|s| s.tag_mutability.starts_with("IMMUTABLE"));
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
        let refused = RepositoryAdmin::remove_tags(admin, target, &stale_tags).await?;
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
    let job = validated(input.job)?;
    let token = PageToken::parse(input.next_token.as_deref())?;
    let bucket = conns.work_bucket().await;
    if let (Some(id), Some(bucket)) = (&token.selection, bucket) {
        if let Some(chunk) = stored_selection_chunk(bucket, id, token.offset).await {
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
            return Ok(page);
        }
        tracing::warn!(selection = %id, "the run's kept selection is gone: listing the repository again");
    }
    let selected = selected_images(conns, &job, &input.repository).await?;
    let mut page = page_of_work(
        conns,
        &job,
        &input.repository,
        Selection::whole(&selected),
        token.offset,
        PageBounds::STEP,
    )
    .await?;
    if let (Some(next), Some(bucket)) = (&page.next_token, bucket) {
        match keep_selection(bucket, &input.repository, &selected).await {
            Ok(id) => page.next_token = Some(format!("{id}:{next}")),
            Err(e) => tracing::warn!(
                error = %e,
                "could not keep the selection in the work bucket: later pages list the repository again"
            ),
        }
    }
    Ok(page)
}

/// Selected images a kept selection holds per object (an `enumerate-images` call reads one).
pub const SELECTION_CHUNK: usize = IMAGES_CHECKED_PER_CALL;

/// Where the kept selections live in the work bucket (the deployment expires them).
pub const SELECTIONS_PREFIX: &str = "selections/";

/// Where a page starts: an offset into the repository's selection, and the kept selection
/// (`<id>:<offset>`), if any.
struct PageToken {
    selection: Option<String>,
    offset: usize,
}

impl PageToken {
    fn parse(token: Option<&str>) -> Result<PageToken> {
        let Some(token) = token else {
            return Ok(PageToken {
                selection: None,
                offset: 0,
            });
        };
        let invalid = || Error::InvalidInput {
            problems: vec![FieldProblem {
                field: "nextToken".into(),
                problem: format!("{token:?} is not a token this step returned"),
            }],
        };
        let (selection, offset) = match token.rsplit_once(':') {
            Some((id, offset)) => {
                let valid_id = !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !valid_id {
                    return Err(invalid());
                }
                (Some(id.to_string()), offset)
            }
            None => (None, token),
        };
        Ok(PageToken {
            selection,
            offset: offset.parse().map_err(|_| invalid())?,
        })
    }
}

/// A stretch of a repository's selection: `images` are the selection's from index `first`,
/// of `total` in all.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    /// The images of the stretch.
    pub images: &'a [SelectedImage],
    /// Index of the first of them in the whole selection.
    pub first: usize,
    /// Images in the whole selection.
    pub total: usize,
}

impl<'a> Selection<'a> {
    /// The whole selection.
    pub fn whole(images: &'a [SelectedImage]) -> Self {
        Selection {
            images,
            first: 0,
            total: images.len(),
        }
    }
}

/// One object of a kept selection.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectionChunk {
    total: usize,
    first: usize,
    images: Vec<SelectedImage>,
}

impl SelectionChunk {
    fn as_selection(&self) -> Selection<'_> {
        Selection {
            images: &self.images,
            first: self.first,
            total: self.total,
        }
    }
}

fn selection_key(id: &str, chunk: usize) -> String {
    format!("{SELECTIONS_PREFIX}{id}/{chunk}.json")
}

/// Keeps a repository's selection in the work bucket; returns its id (new for each listing, so
/// a retried first page never reads another's), or why it could not (only ever logged: a
/// selection not kept costs a listing per page, nothing else).
async fn keep_selection(
    bucket: &ecr::WorkBucket,
    repository: &str,
    selected: &[SelectedImage],
) -> std::result::Result<String, String> {
    use std::hash::{BuildHasher, Hasher};
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(repository.as_bytes());
        h.write_u64(salt);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.finish()
    };
    let id = format!("{:016x}{:016x}", random(1), random(2));
    futures::stream::iter(selected.chunks(SELECTION_CHUNK).enumerate())
        .map(|(index, images)| {
            let chunk = SelectionChunk {
                total: selected.len(),
                first: index * SELECTION_CHUNK,
                images: images.to_vec(),
            };
            let key = selection_key(&id, index);
            async move {
                let body = serde_json::to_vec(&chunk).map_err(|e| e.to_string())?;
                bucket.put(&key, body).await.map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(id)
}

/// The object of kept selection `id` holding the image at `offset`; `None` when it is gone or
/// cannot be read (logged: the caller lists the repository again, which is always correct).
async fn stored_selection_chunk(
    bucket: &ecr::WorkBucket,
    id: &str,
    offset: usize,
) -> Option<SelectionChunk> {
    let key = selection_key(id, offset / SELECTION_CHUNK);
    let body = match bucket.get(&key).await {
        Ok(body) => body?,
        Err(e) => {
            tracing::warn!(%key, error = %e, "could not read the kept selection");
            return None;
        }
    };
    let chunk: SelectionChunk = match serde_json::from_slice(&body) {
        Ok(chunk) => chunk,
        Err(e) => {
            tracing::warn!(%key, error = %e, "the kept selection is not one this step wrote");
            return None;
        }
    };
    let holds_offset = offset >= chunk.first && offset < chunk.first + chunk.images.len();
    holds_offset.then_some(chunk)
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
    /// JSON bytes of a page plan at most.
    pub plan_bytes: usize,
}

impl PageBounds {
    /// A workflow step's: its output travels in the state machine (256 KiB per state).
    pub const STEP: PageBounds = PageBounds {
        tasks: TASKS_PER_PAGE,
        task_bytes: PAGE_TASK_BYTES,
        checked: IMAGES_CHECKED_PER_CALL,
        plan_bytes: PAGE_PLAN_BYTES,
    };
    /// In one process (`sync`): larger pages, so more of a repository copies at once and a
    /// shared layer is copied once for more images.
    pub const IN_PROCESS: PageBounds = PageBounds {
        tasks: 1000,
        task_bytes: usize::MAX,
        checked: usize::MAX,
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
    let source = conns.source(&job.job).await?;
    let mut selected = select_images(&source, job, repository).await?;
    selected.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(selected)
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
        let target = checked_target_repository(spec, repository)?;
        let (tags, absent) = destination_tags(&dest.client, &spec.registry, &target).await;
        destinations.push((index, spec, dest, target, tags, absent));
    }
    let mut output = EnumerateImagesOutput {
        images: Vec::new(),
        present: 0,
        selected: selection.total,
        next_token: None,
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
                    let present = unlisted.unwrap_or(0) == 0
                        && is_present(
                            &dest.client,
                            &repo,
                            &image.digest,
                            &image.tags,
                            &image.referrers,
                        )
                        .await?;
                    tasks.push(ImageTask {
                        repository: repository.to_string(),
                        digest: image.digest.clone(),
                        tags: image.tags.clone(),
                        destination: *index,
                        target_registry: spec.registry.clone(),
                        target_repository: target.clone(),
                        present,
                        referrers: image.referrers.clone(),
                        tags_absent,
                        repository_absent: *repository_absent,
                    });
                }
                Ok::<_, Error>((at, tasks))
            }
        })
        .buffered(PARALLEL_CHECKS);
    let mut next = window_end;
    while let Some(checked) = checks.next().await {
        let (at, tasks) = checked?;
        let missing: Vec<ImageTask> = tasks.into_iter().filter(|t| !t.present).collect();
        let bytes: usize = missing
            .iter()
            .map(|t| serde_json::to_vec(t).map(|v| v.len()).unwrap_or(0))
            .sum();
        if !missing.is_empty()
            && !output.images.is_empty()
            && (output.images.len() + missing.len() > bounds.tasks
                || task_bytes.saturating_add(bytes) > bounds.task_bytes)
        {
            next = offset + at; // this image starts the next page
            break;
        }
        output.present += job.job.destinations.len() - missing.len();
        task_bytes += bytes;
        output.images.extend(missing);
    }
    output.next_token = (next < selection.total).then(|| next.to_string());
    Ok(output)
}

/// The images of one repository a job selects: the listed ones, or the filters' choice from
/// the whole catalog; then (with `referrers`) every signature, SBOM and attestation that refers
/// to them.
async fn select_images(
    source: &Connection,
    job: &ValidJob,
    repository: &str,
) -> Result<Vec<SelectedImage>> {
    let mut catalog_images: Option<Vec<ImageInfo>> = None;
    let mut selected = if job.job.images.is_empty() {
        let images = all_images(source, repository).await?;
        let selected = job.tags.select(&images, now());
        catalog_images = Some(images);
        selected
    } else {
        resolve_listed(source, &job.job.images, repository).await?
    };
    if job.job.referrers {
        let images = match catalog_images {
            Some(images) => images,
            None => all_images(source, repository).await?,
        };
        referrers::add_referrers(source, repository, &images, &mut selected).await?;
    }
    Ok(selected)
}

/// Every image of a source repository (all catalog pages).
async fn all_images(source: &Connection, repository: &str) -> Result<Vec<ImageInfo>> {
    let catalog = source.catalog();
    let mut images = Vec::new();
    let mut next = None;
    loop {
        let page = catalog.images(repository, next).await?;
        images.extend(page.items);
        match page.next {
            Some(n) => next = Some(n),
            None => return Ok(images),
        }
    }
}

/// The listed images of one repository, resolved in the source (a tag to its digest), one entry
/// per digest with the listed tags.
async fn resolve_listed(
    source: &Connection,
    listed: &[ImageSelector],
    repository: &str,
) -> Result<Vec<SelectedImage>> {
    let mut selected: Vec<SelectedImage> = Vec::new();
    for image in listed.iter().filter(|i| i.repository == repository) {
        let named = format!(
            "{}/{}{}{}",
            source.registry,
            image.repository,
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
            })?
            .ok_or_else(|| Error::ImageNotFound {
                image: named.clone(),
            })?;
        let digest = head.digest.to_string();
        if let Some(listed_digest) = &image.digest {
            if *listed_digest != digest {
                return Err(Error::TagMoved {
                    image: named,
                    actual: digest,
                });
            }
        }
        match selected.iter_mut().find(|s| s.digest == digest) {
            Some(existing) => existing.tags.extend(image.tag.clone()),
            None => selected.push(SelectedImage {
                digest,
                tags: image.tag.iter().cloned().collect(),
                pushed_at: None,
                referrers: Vec::new(),
            }),
        }
    }
    Ok(selected)
}

/// The tags a destination repository has now, read once per page so that a first sync costs no
/// presence request per image (`None` when the registry does not list them: each image is then
/// asked about), and whether the repository does not exist at all (its list is then empty).
async fn destination_tags(
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
async fn is_present(
    client: &oci::RegistryClient,
    repo: &Repository,
    digest: &str,
    tags: &[String],
    referrers: &[String],
) -> Result<bool> {
    let listing = |source| Error::Listing {
        what: format!("{repo}@{digest} in the destination"),
        source,
    };
    let digest = Digest::parse(digest).map_err(listing)?;
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
        if head.is_none_or(|h| h.digest != digest) {
            return Ok(false);
        }
    }
    for referrer in referrers {
        let referrer = Digest::parse(referrer).map_err(listing)?;
        if client
            .head_manifest(&by_digest.with_digest(referrer))
            .await
            .map_err(listing)?
            .is_none()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn source_reference(conn: &Connection, repository: &str, digest: &str) -> Result<Reference> {
    let digest = Digest::parse(digest).map_err(|source| Error::Registry {
        image: format!("{}/{repository}@{digest}", conn.registry),
        source,
    })?;
    Ok(Reference {
        repository: Repository {
            registry: conn.registry.clone(),
            name: repository.to_string(),
        },
        tag: None,
        digest: Some(digest),
    })
}

/// The source image by digest: its reference, top manifest, and children and blobs.
async fn read_source_image(
    source: &Connection,
    repository: &str,
    digest: &str,
) -> Result<(Reference, oci::Manifest, Walked)> {
    let from = source_reference(source, repository, digest)?;
    let top = source
        .client
        .get_manifest(&from)
        .await
        .map_err(|e| Error::Registry {
            image: from.to_string(),
            source: e,
        })?;
    let walked = walk(&source.client, &from, top.clone()).await?;
    Ok((from, top, walked))
}

/// Reads the image's manifests (every child of an index) and splits its blobs into ranges under
/// the job's byte budget. An image the destination already has (digest and every tag) plans
/// nothing.
#[tracing::instrument(skip_all, fields(repository = %input.image.repository, digest = %input.image.digest))]
pub async fn plan_image(conns: &Connections, input: PlanImageInput) -> Result<ImagePlan> {
    let job = validated(input.job)?.job;
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
        &image.digest,
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
    plan_blobs(&source, image, job.range_bytes).await
}

/// The image's blobs (every platform, every referrer) in ranges, without a presence check:
/// `enumerate-images` just found it missing.
async fn plan_blobs(source: &Connection, image: ImageTask, range_bytes: u64) -> Result<ImagePlan> {
    let (_, _, walked) = read_source_image(source, &image.repository, &image.digest).await?;
    let mut manifests = walked.children.len() + 1;
    let mut blobs = walked.blobs;
    for referrer in &image.referrers {
        let (_, _, walked) = read_source_image(source, &image.repository, referrer).await?;
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
    let job = validated(input.job)?.job;
    let source = conns.source(&job).await?;
    let plans: Vec<(ImageTask, Result<ImagePlan>)> = futures::stream::iter(input.images)
        .map(|task| {
            let source = &source;
            async move {
                let plan = plan_blobs(source, task.clone(), job.range_bytes).await;
                (task, plan)
            }
        })
        .buffered(PARALLEL_CHECKS)
        .collect()
        .await;
    let mut page = PagePlan {
        ranges: Vec::new(),
        images: Vec::new(),
        deferred: Vec::new(),
        bytes: 0,
    };
    let mut ready: Vec<(ImageTask, ImagePlan)> = Vec::new();
    for (task, plan) in plans {
        match plan {
            Err(e) if e.kind() == ErrorKind::InvalidInput => return Err(e),
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

/// Copies one range: its whole blobs in parallel, or the next segment of a large blob
/// (continuing the upload session in `state`).
#[tracing::instrument(skip_all, fields(repository = %input.image.repository, digest = %input.image.digest))]
pub async fn copy_blobs(conns: &Connections, input: CopyBlobsInput) -> Result<CopyBlobsOutput> {
    let job = validated(input.job)?.job;
    let source = conns.source(&job).await?;
    let dest = conns.destination(&job, input.image.destination).await?;
    let from = Repository {
        registry: source.registry.clone(),
        name: input.image.repository.clone(),
    };
    let to = Repository {
        registry: dest.registry.clone(),
        name: input.image.target_repository.clone(),
    };
    let image = format!("{from}@{}", input.image.digest);
    let oci_err = |source: oci::Error| Error::Registry {
        image: image.clone(),
        source,
    };
    let mut output = CopyBlobsOutput {
        range: input.range.clone(),
        done: true,
        state: None,
        bytes_copied: 0,
        range_bytes_copied: 0,
        blobs_copied: 0,
        blobs_skipped: 0,
    };
    match &input.range {
        CopyRange::Blobs { blobs } => {
            let outcomes: Vec<(BlobOutcome, u64)> = futures::stream::iter(blobs)
                .map(|blob| async {
                    let (source, dest) = (&source.client, &dest.client);
                    if input.image.repository_absent {
                        oci::upload_blob(source, &from, dest, &to, blob, None).await
                    } else {
                        oci::copy_blob(source, &from, dest, &to, blob, None).await
                    }
                    .map(|o| (o, blob.size))
                })
                .buffer_unordered(PARALLEL_BLOBS)
                .try_collect()
                .await
                .map_err(oci_err)?;
            for (outcome, size) in outcomes {
                match outcome {
                    BlobOutcome::Copied => {
                        output.blobs_copied += 1;
                        output.bytes_copied += size;
                    }
                    BlobOutcome::Mounted => output.blobs_copied += 1,
                    BlobOutcome::Present => output.blobs_skipped += 1,
                }
            }
        }
        CopyRange::Segments { blob, .. } => {
            let progress = oci::copy_blob_segment(
                &source.client,
                &from,
                &dest.client,
                &to,
                blob,
                input.state,
                job.range_bytes,
            )
            .await
            .map_err(oci_err)?;
            match progress {
                SegmentProgress::InProgress { state, bytes } => {
                    output.done = false;
                    output.state = Some(state);
                    output.bytes_copied = bytes;
                }
                SegmentProgress::Done { bytes, present } => {
                    output.bytes_copied = bytes;
                    if present {
                        output.blobs_skipped = 1;
                    } else {
                        output.blobs_copied = 1;
                    }
                }
            }
        }
    }
    output.range_bytes_copied = input.bytes_before + output.bytes_copied;
    Ok(output)
}

/// Puts the image's manifests in the destination (children by digest, then every tag) once its
/// blobs are there, and checks each tag resolves to the source digest.
#[tracing::instrument(skip_all, fields(repository = %input.image.repository, digest = %input.image.digest))]
pub async fn put_manifests(conns: &Connections, input: PutManifestsInput) -> Result<ImageResult> {
    let ranges_complete = input.ranges_complete();
    let range_error = input.first_range_error();
    let job = validated(input.job)?.job;
    let source = conns.source(&job).await?;
    let dest = conns.destination(&job, input.image.destination).await?;
    let (from, top, walked) =
        read_source_image(&source, &input.image.repository, &input.image.digest).await?;
    let to = Repository {
        registry: dest.registry.clone(),
        name: input.image.target_repository.clone(),
    };
    let mut referred = Vec::new();
    for digest in &input.image.referrers {
        referred.push(read_source_image(&source, &input.image.repository, digest).await?);
    }
    // No manifest before all of its blobs are there (a range of the page may have failed):
    // checked unless every range of the page reported complete.
    let blobs: Vec<&BlobRef> = if ranges_complete {
        Vec::new()
    } else {
        walked
            .blobs
            .values()
            .chain(referred.iter().flat_map(|(_, _, w)| w.blobs.values()))
            .collect()
    };
    let checks: Vec<(&BlobRef, oci::Result<Option<u64>>)> = futures::stream::iter(blobs)
        .map(|blob| {
            let (client, to) = (&dest.client, &to);
            async move { (blob, client.head_blob(to, &blob.digest).await) }
        })
        .buffer_unordered(PARALLEL_CHECKS)
        .collect()
        .await;
    for (blob, present) in checks {
        let present = present.map_err(|e| Error::Registry {
            image: from.to_string(),
            source: e,
        })?;
        if present.is_none() {
            return Err(Error::BlobMissing {
                image: from.to_string(),
                blob: blob.digest.to_string(),
                target: to.to_string(),
                cause: match &range_error {
                    // The range's error names this image too: say it once.
                    Some(e) => {
                        let e = ["ReplicationFailed: ", "ReplicationRetryable: "]
                            .iter()
                            .find_map(|kind| e.strip_prefix(kind))
                            .unwrap_or(e);
                        format!(
                            "a blob copy failed: {}",
                            e.replacen(&format!("copy of {from} failed: "), "", 1)
                                .replacen(&format!("{from}: "), "", 1)
                        )
                    }
                    None => "its copy failed or it was removed since: run again".into(),
                },
            });
        }
    }
    let known = Known {
        tags_absent: input.image.tags_absent,
        repository_absent: input.image.repository_absent,
    };
    put_manifests_in_order(
        &dest.client,
        &to,
        &top,
        &walked.children,
        (&input.image.tags, known),
        &from.to_string(),
    )
    .await?;
    let mut referrers = Vec::new();
    for (from, top, walked) in referred {
        put_manifests_in_order(
            &dest.client,
            &to,
            &top,
            &walked.children,
            (&[], known),
            &from.to_string(),
        )
        .await?;
        referrers.push(top);
    }
    referrers::write_fallback_indexes(&dest.client, &to, &referrers).await?;
    // Bytes are the page's (its ranges', counted once by `summarise`): blobs are shared.
    Ok(ImageResult::for_task(
        &input.image,
        ImageStatus::Copied,
        0,
        None,
    ))
}

/// Adds up reports and per-image results into one run report. With `failOnFailure`, a run
/// with failed images or repositories is an error naming each of them.
pub fn summarise(input: SummariseInput) -> Result<RunReport> {
    let mut report = RunReport::default();
    for r in flatten::<RunReport>(&input.reports, "reports")? {
        report.merge(&r);
    }
    for r in flatten::<ImageResult>(&input.results, "results")? {
        report.add(&r);
    }
    for r in flatten::<EnsureRepositoryOutput>(&input.repositories, "repositories")? {
        report.add_repository(&r);
    }
    report.add_present(input.present);
    if let Some(plan) = &input.plan {
        for planned in &plan.images {
            report.add(&planned.dry_run_result());
        }
    }
    for range in flatten::<JsonValue>(&input.copied, "copied")? {
        report.bytes_copied += range.get("bytes").and_then(JsonValue::as_u64).unwrap_or(0);
        if range.get("error").is_some_and(|e| !e.is_null()) {
            report.ranges_failed += 1;
        }
    }
    if let Some(max) = input.list {
        report.limit_lists(max);
    }
    if input.fail_on_failure && (report.failed > 0 || report.repositories_failed > 0) {
        let repositories = report
            .repository_failures
            .iter()
            .map(|f| format!("repository {}: {}", f.repository, f.error));
        let images = report.failures.iter().map(|f| {
            format!(
                "{}@{} -> {}/{}: {}",
                f.repository,
                f.digest,
                f.target_registry,
                f.target_repository,
                f.error.clone().unwrap_or_default()
            )
        });
        return Err(Error::ImagesFailed {
            failed: report.failed,
            images: report.images,
            repositories_failed: report.repositories_failed,
            names: repositories.chain(images).collect(),
        });
    }
    Ok(report)
}
