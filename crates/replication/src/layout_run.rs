//! A job with an OCI image layout on one side, run in process (the CLI's `sync`; issue 35, the
//! air-gap transfer). An export lists the source as a replication does (repository and tag
//! filters, listed images, the signature gate), writes each image into the layout with its
//! referrers, then signs one transfer statement of the whole layout with the receipt key. An
//! import verifies the layout's statement first (with a trusted key), then puts every image the
//! filters select into each destination (a missing ECR repository created with ECR's defaults),
//! under the gate, signing a promotion receipt where a deployment policy admitted it.

use std::collections::BTreeMap;

use futures::StreamExt;
use oci::layout::{split_ref_name, LayoutEntry, LayoutIndex, LayoutStore};
use oci::Reference;

use crate::artifacts::artifact_subject;
use crate::connect::{Connection, Connections};
use crate::error::{Error, Result};
use crate::job::{Job, LayoutSide, SettingsMode, ValidJob};
use crate::layout::{export_unindexed, import_stated, PrepareTarget};
use crate::layout_gate::{sign_import_receipt, LayoutGate};
use crate::layout_referrers::tag_scheme;
use crate::receipts::ReceiptSigner;
use crate::report::{ImageResult, ImageStatus, RepositoryFailure, MAX_FAILURES_LISTED};
use crate::run::{RunObserver, RunOutput};
use crate::transfer_statement::{
    statement_present, verify_statement, write_statement, ExportedImage, TrustedTransferKey,
    VerifiedStatement,
};

/// Blobs of one image streamed at once.
const BLOBS_AT_ONCE: usize = 4;
/// Images a layout run copies at once at most, whatever `maxConcurrency` says: each streams
/// `BLOBS_AT_ONCE` blobs, each an open file or connection (the process's descriptors are few).
const MAX_IMAGES_AT_ONCE: usize = 32;

/// Images copied at once: `maxConcurrency`, at most `MAX_IMAGES_AT_ONCE`.
fn images_at_once(job: &Job) -> usize {
    (job.max_concurrency as usize).clamp(1, MAX_IMAGES_AT_ONCE)
}
/// Repositories listed per catalog page.
const REPOSITORY_PAGE: usize = 1000;

/// What a layout run produced: the run's report and images, and the transfer statement it
/// signed (export) or verified (import), if any.
#[derive(Debug, Default)]
pub struct LayoutRunOutput {
    /// Counts and every image's result, as a replication reports them.
    pub run: RunOutput,
    /// The statement signed or verified.
    pub statement: Option<VerifiedStatement>,
}

/// How an import trusts the layout.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportTrust<'a> {
    /// The exporting deployment's statement key: the statement must verify with it before
    /// anything else is read, and every image imported must be as it says.
    pub key: Option<&'a TrustedTransferKey>,
    /// Import a layout carrying a statement without verifying it (no key): refused otherwise.
    pub allow_unverified: bool,
}

/// Runs a job whose source or destination is `store` (the job's `layout`, opened by the
/// caller). Invalid input, a refused statement or an unreadable layout fail the run; an image
/// that fails is recorded and the others go on.
pub async fn run_layout_job(
    conns: &Connections,
    job: Job,
    store: &dyn LayoutStore,
    trust: ImportTrust<'_>,
    observer: &dyn RunObserver,
) -> Result<LayoutRunOutput> {
    let valid = job.validate()?;
    conns.admit(&valid.job)?;
    match valid.job.layout_side() {
        Some(LayoutSide::Export(_)) => export_job(conns, &valid, store, observer).await,
        Some(LayoutSide::Import(_)) => import_job(conns, &valid, store, trust, observer).await,
        None => Err(Error::invalid(
            "source.layout",
            "the job names no layout: run it as a replication (`sync`)",
        )),
    }
}

/// The gate the job's and the destinations' policies make, if any.
async fn layout_gate(conns: &Connections, valid: &ValidJob) -> Result<Option<LayoutGate>> {
    let policies = conns.signature_policies(valid)?;
    if policies.is_empty() {
        return Ok(None);
    }
    Ok(Some(LayoutGate::new(
        policies,
        conns.bundle_verifier().await?,
    )))
}

/// One image's record: `repository` and `tag` of the source, written to `target`.
fn result(
    (repository, digest, tag): (&str, &str, &str),
    (target_registry, target_repository): (&str, &str),
    outcome: std::result::Result<(ImageStatus, u64, Option<String>), Error>,
) -> ImageResult {
    let (status, bytes_copied, signed_by, error) = match outcome {
        Ok((status, bytes, signed_by)) => (status, bytes, signed_by, None),
        Err(Error::Unsigned { reason, .. }) => (ImageStatus::Unsigned, 0, None, Some(reason)),
        Err(e) => (
            ImageStatus::Failed,
            0,
            None,
            Some(format!("{}: {e}", e.kind().as_str())),
        ),
    };
    ImageResult {
        repository: repository.to_string(),
        digest: digest.to_string(),
        tags: vec![tag.to_string()],
        target_registry: target_registry.to_string(),
        target_repository: target_repository.to_string(),
        status,
        bytes_copied,
        error,
        source_pulls: 0,
        target_digest: None,
        signed_by,
        lag_seconds: None,
    }
}

/// A repository whose images could not be listed: recorded, naming it; the others go on.
fn repository_failed(
    output: &mut RunOutput,
    observer: &dyn RunObserver,
    repository: &str,
    e: &Error,
) {
    let failure = RepositoryFailure {
        repository: repository.to_string(),
        error: format!("{}: {e}", e.kind().as_str()),
    };
    observer.repository_failed(&failure);
    output.report.repositories_failed += 1;
    if output.report.repository_failures.len() < MAX_FAILURES_LISTED {
        output.report.repository_failures.push(failure);
    }
}

fn record(output: &mut RunOutput, observer: &dyn RunObserver, image: ImageResult) {
    observer.image_done(&image);
    output.report.add(&image);
    output.images.push(image);
}

/// A tagged source image an export selected.
struct Selected {
    repository: String,
    digest: String,
    tag: String,
}

/// The source's images the job selects, tag by tag: its listed `images`, else every repository
/// its filters keep (named ones where the source lists no catalog), each repository's images
/// chosen by the tag filters. Names the source listed that are not valid are recorded refused.
async fn export_selection(
    source: &Connection,
    valid: &ValidJob,
    (output, observer): (&mut RunOutput, &dyn RunObserver),
    location: &str,
) -> Result<Vec<Selected>> {
    let job = &valid.job;
    if !job.images.is_empty() {
        return Ok(job
            .images
            .iter()
            .filter(|i| valid.repositories.matches(&i.repository))
            .filter_map(|i| {
                let tag = i.tag.clone()?;
                let image = valid.tags.tag_matches(&tag) && artifact_subject(&tag).is_none();
                image.then(|| Selected {
                    repository: i.repository.clone(),
                    digest: String::new(),
                    tag,
                })
            })
            .collect());
    }
    let catalog = source.catalog();
    let repositories: Vec<String> = match job.named_repositories() {
        Some(named) => named.to_vec(),
        None => {
            let (mut all, mut next) = (Vec::new(), None);
            loop {
                let page = catalog.repositories(next, REPOSITORY_PAGE).await?;
                all.extend(page.items);
                match page.next {
                    Some(token) => next = Some(token),
                    None => break,
                }
            }
            all
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let mut selected = Vec::new();
    for repository in repositories
        .into_iter()
        .filter(|r| valid.repositories.matches(r))
    {
        let (mut listed, mut next) = (Vec::new(), None);
        loop {
            let page = match catalog.images(&repository, next).await {
                Ok(page) => page,
                Err(e) => {
                    repository_failed(output, observer, &repository, &e);
                    listed.clear();
                    break;
                }
            };
            listed.extend(page.items);
            for refusal in page.refused {
                let refused = ImageResult {
                    status: ImageStatus::Refused,
                    error: Some(refusal.reason),
                    ..result(
                        (&repository, "", &refusal.name),
                        (location, &repository),
                        Ok((ImageStatus::Refused, 0, None)),
                    )
                };
                output.report.add(&refused);
                output.images.push(refused);
            }
            match page.next {
                Some(token) => next = Some(token),
                None => break,
            }
        }
        // Signatures, attestations, SBOMs and fallback indexes under the tag scheme
        // (`sha256-<hex>[.sig|.att|.sbom]`) travel as their images' referrers, not as images.
        listed.iter_mut().for_each(|image| {
            image.tags.retain(|tag| artifact_subject(tag).is_none());
        });
        // (An image left without tags is not selected: an export takes no untagged image.)
        for image in valid.tags.select(&listed, now) {
            selected.extend(image.tags.into_iter().map(|tag| Selected {
                repository: repository.clone(),
                digest: image.digest.clone(),
                tag,
            }));
        }
    }
    Ok(selected)
}

/// Exports the selected images into `store`, `maxConcurrency` at once, each adding its entries
/// to one `index.json` written once at the end, then signs the layout's statement when an image
/// was written or the layout's statement no longer matches. A run killed before the end leaves
/// its blobs and manifests, not their names: the next run finds them and writes only the names.
async fn export_job(
    conns: &Connections,
    valid: &ValidJob,
    store: &dyn LayoutStore,
    observer: &dyn RunObserver,
) -> Result<LayoutRunOutput> {
    let job = &valid.job;
    let source = conns.source(job).await?;
    let gate = layout_gate(conns, valid).await?;
    let location = format!("oci:{}", store.location());
    let mut output = LayoutRunOutput::default();
    let mut selected =
        export_selection(&source, valid, (&mut output.run, observer), &location).await?;
    // One export per ref name (a listed image may be named twice).
    let mut seen = std::collections::BTreeSet::new();
    selected.retain(|i| seen.insert((i.repository.clone(), i.tag.clone())));
    // Read before the index: a write in between then fails the conditional replace below.
    let version = store
        .file_version("index.json")
        .await
        .map_err(|e| layout_error(store, e))?;
    let held = LayoutIndex::read(store)
        .await
        .map_err(|e| layout_error(store, e))?;
    let index = tokio::sync::Mutex::new((held.unwrap_or_else(LayoutIndex::empty), false));
    let run = ExportRun {
        source: &source,
        store,
        gate: gate.as_ref(),
        index: &index,
        dry_run: job.dry_run,
    };
    let mut done: Vec<(ImageResult, Option<ExportedImage>)> = futures::stream::iter(&selected)
        .map(|image| run.export_one(image))
        .buffer_unordered(images_at_once(job))
        .collect()
        .await;
    done.sort_by(|a, b| (&a.0.repository, &a.0.tags).cmp(&(&b.0.repository, &b.0.tags)));
    // The names first: no image is reported copied that index.json does not name.
    let (index, changed) = index.into_inner();
    if changed
        && !index
            .write_if(store, &version)
            .await
            .map_err(|e| layout_error(store, e))?
    {
        return Err(layout_error(
            store,
            oci::Error::Layout {
                path: format!("{}/index.json", store.location()),
                reason: "changed while this export ran (another export of this layout wrote \
                         it): nothing named; run the export again (the blobs it wrote are \
                         there and are not sent again)"
                    .into(),
            },
        ));
    }
    let mut exported = Vec::new();
    for (image, stated) in done {
        record(&mut output.run, observer, image);
        exported.extend(stated);
    }
    if job.dry_run || exported.is_empty() {
        return Ok(output);
    }
    if let Some(signer) = conns.receipt_signer().await {
        // Signed again when this run wrote something, or when the layout's statement is not
        // one of this key that names exactly what index.json holds (an earlier signing failed).
        if output.run.report.copied > 0 || !statement_current(store, &index, signer.as_ref()).await
        {
            output.statement = Some(write_statement(store, signer.as_ref(), &exported).await?);
        }
    }
    Ok(output)
}

/// What every image of an export shares.
struct ExportRun<'a> {
    source: &'a Connection,
    store: &'a dyn LayoutStore,
    gate: Option<&'a LayoutGate>,
    /// The layout's `index.json` as the run builds it, and whether it changed.
    index: &'a tokio::sync::Mutex<(LayoutIndex, bool)>,
    dry_run: bool,
}

impl ExportRun<'_> {
    /// One image: its result, and what the statement says of it when exported.
    async fn export_one(&self, image: &Selected) -> (ImageResult, Option<ExportedImage>) {
        let ref_name = format!("{}:{}", image.repository, image.tag);
        let location = format!("oci:{}", self.store.location());
        let from = Reference::parse(&format!(
            "{}/{}:{}",
            self.source.registry, image.repository, image.tag
        ))
        .map_err(|e| Error::Registry {
            image: ref_name.clone(),
            source: e,
        });
        let (outcome, digest, stated) = match from {
            Err(e) => (Err(e), image.digest.clone(), None),
            Ok(from) if self.dry_run => match self.planned(image, &from, &ref_name).await {
                Ok((status, digest)) => (Ok((status, 0, None)), digest, None),
                Err(e) => (Err(e), image.digest.clone(), None),
            },
            Ok(from) => match self.export(&from, &ref_name).await {
                Ok((status, bytes, admitted, stated)) => {
                    let digest = stated.digest.clone();
                    (Ok((status, bytes, admitted)), digest, Some(stated))
                }
                Err(e) => (Err(e), image.digest.clone(), None),
            },
        };
        let result = result(
            (&image.repository, &digest, &image.tag),
            (&location, &image.repository),
            outcome,
        );
        (result, stated)
    }

    /// A dry run: present when `index.json` names the image at the source's digest (a listed
    /// image's digest read with a HEAD: no pull), else planned.
    async fn planned(
        &self,
        image: &Selected,
        from: &Reference,
        ref_name: &str,
    ) -> Result<(ImageStatus, String)> {
        let digest = if image.digest.is_empty() {
            let head =
                self.source
                    .client
                    .head_manifest(from)
                    .await
                    .map_err(|e| Error::Registry {
                        image: from.to_string(),
                        source: e,
                    })?;
            match head {
                Some(head) => head.digest.to_string(),
                None => {
                    return Err(Error::ImageNotFound {
                        image: from.to_string(),
                    })
                }
            }
        } else {
            image.digest.clone()
        };
        let path = format!("{}/index.json", self.store.location());
        let index = self.index.lock().await;
        let there = index
            .0
            .find(ref_name, &path)
            .ok()
            .flatten()
            .is_some_and(|entry| !digest.is_empty() && entry.blob.digest.as_str() == digest);
        let status = if there {
            ImageStatus::Present
        } else {
            ImageStatus::Planned
        };
        Ok((status, digest))
    }

    /// Writes the image's blobs and manifests, then adds its names to the run's index:
    /// present when nothing was written and no name is new.
    async fn export(
        &self,
        from: &Reference,
        ref_name: &str,
    ) -> Result<(ImageStatus, u64, Option<String>, ExportedImage)> {
        let (report, admitted, wrote, entries) = export_unindexed(
            &self.source.client,
            from,
            (self.store, ref_name),
            BLOBS_AT_ONCE,
            self.gate,
        )
        .await?;
        let named = {
            let mut index = self.index.lock().await;
            let named = entries.apply(&mut index.0);
            index.1 |= named;
            named
        };
        let status = if named || report.manifests_put > 0 || report.blobs_copied > 0 {
            ImageStatus::Copied
        } else {
            ImageStatus::Present
        };
        let stated = ExportedImage {
            ref_name: ref_name.to_string(),
            digest: report.digest.clone(),
            source: from.to_string(),
            admitted_by: admitted.iter().cloned().collect(),
            tool: format!("ecr-replicator {}", env!("CARGO_PKG_VERSION")),
            referrers: wrote.referrers,
            written_blobs: wrote.blobs,
        };
        Ok((status, report.bytes_copied, admitted, stated))
    }
}

/// Whether the layout carries a statement `signer`'s key signed that names exactly what its
/// `index.json` (`index`, as the run left it) holds.
async fn statement_current(
    store: &dyn LayoutStore,
    index: &LayoutIndex,
    signer: &dyn ReceiptSigner,
) -> bool {
    let Ok(der) = signer.public_key().await else {
        return false;
    };
    let Ok(key) = TrustedTransferKey::from_der(&der) else {
        return false;
    };
    let Ok(statement) = verify_statement(store, &key).await else {
        return false;
    };
    let path = format!("{}/index.json", store.location());
    statement.check_index(index, &path).is_ok()
}

fn layout_error(store: &dyn LayoutStore, source: oci::Error) -> Error {
    Error::Registry {
        image: format!("oci:{}", store.location()),
        source,
    }
}

/// An image of the layout the import selected.
struct Held {
    entry: LayoutEntry,
    repository: String,
    tag: String,
}

/// The layout's images the job selects: named `REPOSITORY:TAG` (signature tags travel with
/// their images), kept by the repository and tag filters and the listed `images`; and the
/// ref names that name no repository (`v1`, as skopeo may write them), never imported.
fn import_selection(
    valid: &ValidJob,
    index: &LayoutIndex,
    path: &str,
) -> Result<(Vec<Held>, Vec<LayoutEntry>)> {
    let entries = index.entries(path).map_err(|e| Error::Registry {
        image: path.to_string(),
        source: e,
    })?;
    let listed = |repository: &str, tag: &str, digest: &str| {
        valid.job.images.is_empty()
            || valid.job.images.iter().any(|i| {
                i.repository == repository
                    && i.tag.as_deref().is_none_or(|t| t == tag)
                    && i.digest.as_deref().is_none_or(|d| d == digest)
            })
    };
    let (mut held, mut nameless) = (Vec::new(), Vec::new());
    for entry in entries
        .into_iter()
        .filter(|e| tag_scheme(&e.ref_name).is_none())
    {
        let (repository, tag) = match split_ref_name(&entry.ref_name) {
            Ok((Some(repository), tag)) => (repository.to_string(), tag.to_string()),
            _ => {
                nameless.push(entry);
                continue;
            }
        };
        let keep = valid.repositories.matches(&repository)
            && valid.tags.tag_matches(&tag)
            && listed(&repository, &tag, entry.blob.digest.as_str());
        if keep {
            held.push(Held {
                entry,
                repository,
                tag,
            });
        }
    }
    Ok((held, nameless))
}

/// Verifies the statement (or refuses an unverified one), then imports every selected image
/// into every destination, `maxConcurrency` at once.
async fn import_job(
    conns: &Connections,
    valid: &ValidJob,
    store: &dyn LayoutStore,
    trust: ImportTrust<'_>,
    observer: &dyn RunObserver,
) -> Result<LayoutRunOutput> {
    let job = &valid.job;
    let statement = match trust.key {
        Some(key) => Some(verify_statement(store, key).await?),
        None if !trust.allow_unverified && statement_present(store).await => {
            return Err(Error::TransferStatement {
                layout: store.location(),
                reason: "it carries a signed transfer statement: verify it with the exporting \
                         deployment's key (--trust-transfer-key FILE.pem, \
                         ECR_REPLICATOR_TRUST_TRANSFER_KEY) or import it unverified \
                         (--allow-unverified-layout); nothing imported"
                    .into(),
            })
        }
        None => None,
    };
    let path = format!("{}/index.json", store.location());
    let index = LayoutIndex::read(store)
        .await
        .map_err(|e| layout_error(store, e))?
        .ok_or_else(|| Error::TransferStatement {
            layout: store.location(),
            reason: "it has no index.json: nothing to import".into(),
        })?;
    if let Some(statement) = &statement {
        statement.check_index(&index, &path)?;
    }
    let (held, nameless) = import_selection(valid, &index, &path)?;
    let gate = layout_gate(conns, valid).await?;
    let mut output = LayoutRunOutput {
        statement: statement.clone(),
        ..LayoutRunOutput::default()
    };
    for entry in nameless {
        let refused = ImageResult {
            status: ImageStatus::Refused,
            error: Some(format!(
                "{}: names no repository (REPOSITORY:TAG): not imported",
                oci::layout::quoted(&entry.ref_name)
            )),
            ..result(
                ("", entry.blob.digest.as_str(), &entry.ref_name),
                ("", ""),
                Ok((ImageStatus::Refused, 0, None)),
            )
        };
        record(&mut output.run, observer, refused);
    }
    for (i, destination) in job.destinations.iter().enumerate() {
        let conn = conns.destination(job, i).await?;
        // Each source repository's target name once, or why it cannot be written (every image
        // of it then fails with that); each target made ready once, whichever source
        // repositories a mapping sends there.
        let mut names: BTreeMap<&str, std::result::Result<String, String>> = BTreeMap::new();
        let mut readies: BTreeMap<String, RepositoryReady> = BTreeMap::new();
        for image in &held {
            let name = names.entry(&image.repository).or_insert_with(|| {
                checked_target(conns, destination, &image.repository)
                    .map_err(|e| format!("{}: {e}", e.kind().as_str()))
            });
            match name {
                Ok(name) => {
                    readies
                        .entry(name.clone())
                        .or_insert_with(|| RepositoryReady::new(job, &conn, name.clone()));
                }
                Err(why) => {
                    let image = ImageResult {
                        status: ImageStatus::Failed,
                        error: Some(why.clone()),
                        ..result(
                            (
                                &image.repository,
                                image.entry.blob.digest.as_str(),
                                &image.tag,
                            ),
                            (&destination.registry, &image.repository),
                            Ok((ImageStatus::Failed, 0, None)),
                        )
                    };
                    record(&mut output.run, observer, image);
                }
            }
        }
        let work: Vec<(&Held, &RepositoryReady)> = held
            .iter()
            .filter_map(|image| match names.get(image.repository.as_str()) {
                Some(Ok(name)) => readies.get(name).map(|ready| (image, ready)),
                _ => None,
            })
            .collect();
        let (stated, gate, conn) = (statement.as_ref(), gate.as_ref(), conn.as_ref());
        let index = &index;
        let imports = futures::stream::iter(work)
            .map(|(image, target)| async move {
                import_one(
                    conns,
                    (store, index, stated, gate),
                    (conn, target),
                    image,
                    job.dry_run,
                )
                .await
            })
            .buffer_unordered(images_at_once(job));
        let results: Vec<ImageResult> = imports.collect().await;
        for image in results {
            record(&mut output.run, observer, image);
        }
    }
    Ok(output)
}

/// The destination repository of `repository`: checked against the naming rules and the
/// deployment's scope before anything is sent.
fn checked_target(
    conns: &Connections,
    destination: &crate::job::Destination,
    repository: &str,
) -> Result<String> {
    let target = destination.checked_target_repository(repository)?;
    conns.check_target_scope(&destination.registry, &target)?;
    Ok(target)
}

/// A destination repository, made to exist in ECR (unless `repositorySettings` is `none`) when
/// its first image is admitted, with ECR's defaults (a layout carries no settings); an existing
/// one is left as it is. Once per repository, whatever the images racing to it.
struct RepositoryReady {
    name: String,
    admin: Option<ecr::EcrAdmin>,
    done: tokio::sync::OnceCell<std::result::Result<(), String>>,
}

impl RepositoryReady {
    fn new(job: &Job, conn: &Connection, name: String) -> Self {
        let creates = job.repository_settings != SettingsMode::None;
        RepositoryReady {
            name,
            admin: conn.ecr.clone().filter(|_| creates),
            done: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait::async_trait]
impl PrepareTarget for RepositoryReady {
    async fn prepare(&self) -> Result<()> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let outcome = self
            .done
            .get_or_init(|| async {
                let how = ecr::EnsureOptions {
                    reconcile: ecr::Reconcile::Never,
                    repository_policy: false,
                    dry_run: false,
                };
                admin
                    .ensure_repository(&self.name, &ecr::RepositorySettings::default(), how)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await;
        outcome.clone().map_err(|reason| Error::TargetNotReady {
            repository: format!("{}/{}", admin.registry(), self.name),
            reason,
        })
    }
}

/// Imports one image into one destination repository (a dry run only looks), signing the
/// promotion receipt when the gate admitted it under a deployment policy.
async fn import_one(
    conns: &Connections,
    (store, index, statement, gate): (
        &dyn LayoutStore,
        &LayoutIndex,
        Option<&VerifiedStatement>,
        Option<&LayoutGate>,
    ),
    (conn, ready): (&Connection, &RepositoryReady),
    image: &Held,
    dry_run: bool,
) -> ImageResult {
    let target = ready.name.as_str();
    let digest = image.entry.blob.digest.as_str();
    let names = (image.repository.as_str(), digest, image.tag.as_str());
    let to = format!("{}/{target}:{}", conn.registry, image.tag);
    let outcome = async {
        let to = Reference::parse(&to).map_err(|e| Error::Registry {
            image: to.clone(),
            source: e,
        })?;
        if dry_run {
            let there = conn
                .client
                .head_manifest(&to)
                .await
                .ok()
                .flatten()
                .is_some_and(|head| head.digest.as_str() == digest);
            let status = if there {
                ImageStatus::Present
            } else {
                ImageStatus::Planned
            };
            return Ok((status, 0, None));
        }
        let (report, admitted) = import_stated(
            store,
            (&image.entry.ref_name, Some(index)),
            (&conn.client, &to),
            BLOBS_AT_ONCE,
            statement,
            (gate, Some(ready as &dyn PrepareTarget)),
        )
        .await?;
        if let Some(line) = &admitted {
            let layout = format!("oci:{}", store.location());
            let stated = (statement, layout.as_str());
            sign_receipt(conns, (conn, &to), (&report.digest, line), stated, image).await?;
        }
        let status = if report.already_present {
            ImageStatus::Present
        } else {
            ImageStatus::Copied
        };
        Ok((status, report.bytes_copied, admitted))
    }
    .await;
    result(names, (&conn.registry, target), outcome)
}

/// The promotion receipt of an image a gated import put, signed with the receipt key (none
/// configured: none signed); its source is what the verified statement says, else the layout.
async fn sign_receipt(
    conns: &Connections,
    (conn, to): (&Connection, &Reference),
    (digest, admitted): (&str, &str),
    (statement, layout): (Option<&VerifiedStatement>, &str),
    image: &Held,
) -> Result<()> {
    let (Some(signer), Some(allowlist)) = (
        conns.receipt_signer().await,
        conns.settings().allowlist.as_ref(),
    ) else {
        return Ok(());
    };
    let err = |e| Error::Registry {
        image: to.to_string(),
        source: e,
    };
    let digest = oci::Digest::parse(digest).map_err(err)?;
    let top = conn
        .client
        .get_manifest(&to.with_digest(digest))
        .await
        .map_err(err)?;
    let stated = statement
        .and_then(|s| s.images.get(&image.entry.ref_name))
        .and_then(|i| Reference::parse(&i.source).ok());
    let from = match &stated {
        Some(at) => (at.repository.registry.clone(), at.repository.name.clone()),
        None => (layout.to_string(), image.repository.clone()),
    };
    sign_import_receipt(
        (&conn.client, to),
        &top,
        admitted,
        allowlist,
        signer.as_ref(),
        (&from.0, &from.1),
    )
    .await?;
    Ok(())
}
