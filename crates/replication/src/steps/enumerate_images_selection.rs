//! `enumerate-images`, its selection: a repository's images the job selects (listed, or named
//! in the job and resolved), with the tag filters, the signature gate and the referrers that
//! travel with them; read once per run.

use std::sync::Arc;

use oci::{Digest, PullMeter, Reference, Repository};

use super::enumerate_images_archive::{archived_digest, archived_reason, mark_archived};
use super::enumerate_images_held::referrers_held;
use crate::catalog::too_many_pages;
use crate::connect::{Connection, Connections};
use crate::error::{Error, Result};
use crate::filter::{ListedImage, Refusal, SelectedImage};
use crate::gate;
use crate::job::{ImageSelector, Mode, ValidJob};
use crate::metrics;
use crate::referrers;
use crate::signatures::SignatureGate;

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
/// always): a verification finds the tags only a destination has from it. With
/// `requireSignature`, images are only marked for the gate: a verification judges those of the
/// page it compares (`gate::Judge::judge_all`).
pub(crate) async fn selected_and_listed(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
) -> Result<(Vec<SelectedImage>, Option<Vec<ListedImage>>)> {
    let (selected, listed, _) = selected_counted(conns, job, repository).await?;
    Ok((selected, listed))
}

/// `selected_images` with the listing, and the manifest GETs it sent where they are pulls.
/// With `requireSignature`, images are only marked for the gate (`SelectedImage::pending`):
/// a page judges those it would write (`page_of_work`). Every read goes through a metered view
/// of the source connection, so the referrers' and artifacts' checks are counted whichever
/// module sends them. They are counted, not refused: a read refused for the budget would
/// report a signed image unsigned.
pub(crate) async fn selected_counted(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
) -> Result<(Vec<SelectedImage>, Option<Vec<ListedImage>>, u64)> {
    let connection = conns.source(&job.job).await?;
    let meter = Arc::new(PullMeter::counting(&connection.registry));
    let source = connection.metered(meter.clone());
    let counted = |pulls: u64| if source.counts_pulls() { pulls } else { 0 };
    // The trusted root is read here too: one that cannot be read fails the repository.
    let gated = signature_gate(conns, job).await?.is_some();
    let (mut selected, listed) = select_images(conns, &source, job, gated, repository).await?;
    selected.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok((selected, listed, counted(meter.sent())))
}

/// The signature gate the job's and destinations' policies make (`None`: none applies), with
/// the deployment's trusted root (a root that cannot be read fails the repository here).
pub(crate) async fn signature_gate(
    conns: &Connections,
    job: &ValidJob,
) -> Result<Option<SignatureGate>> {
    let policies = conns.signature_policies(job)?;
    if policies.is_empty() {
        return Ok(None);
    }
    Ok(Some(SignatureGate {
        policies,
        verifier: conns.bundle_verifier().await?,
    }))
}

/// The images of one repository a job selects: the listed ones, or the filters' choice from
/// the whole catalog; then (with `referrers`) every signature, SBOM and attestation that refers
/// to them.
/// Also returns the repository's listing when it was read (the filters need it).
async fn select_images(
    conns: &Connections,
    source: &Connection,
    job: &ValidJob,
    gated: bool,
    repository: &str,
) -> Result<(Vec<SelectedImage>, Option<Vec<ListedImage>>)> {
    let mut catalog_images: Option<Vec<ListedImage>> = None;
    // Whether the source's listing held names that are not valid (left out of it).
    let mut listing_refused = false;
    // Names the source listed that are not valid: reported with the selection, never copied.
    let mut refused: Vec<SelectedImage> = Vec::new();
    let mut selected = if job.job.images.is_empty() {
        let (images, invalid) = listed_images(source, repository).await?;
        listing_refused = !invalid.is_empty();
        refused.extend(
            invalid
                .into_iter()
                .filter(|r| job.tags.tag_matches(&r.name))
                .map(Refusal::into_selected),
        );
        let mut selected = job.tags.select(&images, metrics::now_seconds());
        mark_archived(&mut selected, &images, &source.registry, repository);
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
    if !job.job.referrers && !gated {
        selected.append(&mut refused);
        selected.append(&mut set_aside);
        return Ok((selected, catalog_images));
    }
    let images = match catalog_images {
        Some(images) => images,
        None => {
            let (images, invalid) = listed_images(source, repository).await?;
            listing_refused = !invalid.is_empty();
            images
        }
    };
    // Only signed images are copied, and only they bring their referrers along: each is
    // marked for the gate here (no request), and judged where it would be written.
    if gated {
        selected = gate::defer(&images, selected);
    }
    if job.job.referrers {
        // A replication leaves out the lookups of images every destination holds with all
        // that could refer to them; a verification compares every referrer.
        let unasked = match job.job.mode {
            Mode::Replicate => {
                let listing = (images.as_slice(), listing_refused);
                referrers_held(conns, job, (source, repository), listing, &selected).await
            }
            Mode::Verify => Default::default(),
        };
        referrers::add_referrers(
            source,
            (repository, &images),
            &mut selected,
            &mut refused,
            gated,
            &unasked,
        )
        .await?;
        for image in selected.iter_mut() {
            image.referrers_unread = unasked.contains(&image.digest);
        }
    }
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
