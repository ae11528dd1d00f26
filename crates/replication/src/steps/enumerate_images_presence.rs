//! `enumerate-images`, presence: each selected image checked in every destination (the tags
//! the destination lists, read once per page, then the digest, tags and referrers asked
//! about), giving its tasks, or the results of an image that is not copied.

use std::collections::HashSet;
use std::sync::Arc;

use oci::{Digest, Reference, Repository};

use super::enumerate_images_archive::{archived_there_reason, ArchivedThere};
use super::*;
use crate::connect::{Connection, Connections};
use crate::error::{Error, Result};
use crate::filter::SelectedImage;
use crate::gate::{Judge, Verdict};
use crate::job::ValidJob;
use crate::platforms::Subset;

/// A destination as `page_of_work` checks it.
pub(super) struct Destination<'a> {
    /// Its index in the job's destinations.
    index: usize,
    /// Its spec.
    spec: &'a crate::job::Destination,
    /// Its connection.
    dest: Arc<Connection>,
    /// The repository there.
    target: String,
    /// The tags it lists, if it lists them.
    listed: Option<HashSet<String>>,
    /// The repository does not exist there.
    repository_absent: bool,
    /// An ECR destination's archived images (digest, when archived), read the first time an
    /// image of the page is missing there, once per page.
    archived: ArchivedThere,
}

/// What of a selected image is not copied to some destinations: its results there, each with
/// the destination's index.
pub(super) type NotCopiedThere = Vec<(usize, ImageResult)>;

/// What checking one selected image gave: its tasks (present or not) and its results in the
/// destinations that keep it archived, or, for an image that is not copied at all (no
/// signature verified, a refused name, a tag moved on, archived in the source), its results.
pub(super) enum Checked {
    Tasks(Vec<ImageTask>, NotCopiedThere),
    Unsigned(Vec<ImageResult>),
}

/// Every destination of the job as a page checks it: connected, the repository there (named
/// and within the deployment's scope), and the tags it lists now.
pub(super) async fn page_destinations<'a>(
    conns: &Connections,
    job: &'a ValidJob,
    repository: &str,
) -> Result<Vec<Destination<'a>>> {
    let mut destinations = Vec::new();
    for (index, spec) in job.job.destinations.iter().enumerate() {
        let dest = conns.destination(&job.job, index).await?;
        let target = spec.checked_target_repository(repository)?;
        conns.check_target_scope(&spec.registry, &target)?;
        // Asked where the connection goes (a layout's is its served registry on loopback).
        let (listed, repository_absent) =
            destination_tags(&dest.client, &dest.registry, &target).await;
        destinations.push(Destination {
            index,
            spec,
            dest,
            target,
            listed,
            repository_absent,
            archived: Default::default(),
        });
    }
    Ok(destinations)
}

/// Checks selected image `at` of the window in every destination: its tasks (present or not),
/// or, for an image that is not copied, one result per destination. With `platforms`, an
/// index is cut down first (`source` reads it).
pub(super) async fn check_image(
    job: &ValidJob,
    (source, judge): (Option<&Connection>, Option<&Judge<'_>>),
    destinations: &[Destination<'_>],
    repository: &str,
    fail_unsigned: bool,
    (at, image): (usize, &SelectedImage),
) -> Result<(usize, Checked)> {
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
        let unsigned = not_copied_results(destinations, (repository, image), status, reason);
        return Ok((at, Checked::Unsigned(unsigned)));
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
                    return Ok((at, Checked::Unsigned(refused)));
                }
            }
        }
        _ => None,
    };
    let copied = Copied {
        digest,
        referrers,
        target_digest,
    };
    let (again, (mut tasks, mut archived)) = tasks_reading_referrers(
        source,
        judge.is_some(),
        destinations,
        (repository, image),
        copied,
    )
    .await?;
    if image.pending.is_some() && tasks.iter().any(|t| !t.present) {
        // It would be written (the image, a tag or a referrer missing in a destination): the
        // signature gate judges it now. Held everywhere, it is not read again.
        let verdict = match judge {
            Some(judge) => judge.judge(image).await?,
            None => {
                Verdict::Unsigned("unsigned: not judged (no signature gate for this page)".into())
            }
        };
        let (status, reason) = match verdict {
            Verdict::Admitted(signed_by, narrowed) => {
                if let Some(tags) = narrowed {
                    // Under the tags of admitted images only: asked about again with those.
                    let image = SelectedImage {
                        tags,
                        ..image.clone()
                    };
                    (tasks, archived) =
                        image_tasks(destinations, repository, &image, again).await?;
                }
                tasks
                    .iter_mut()
                    .for_each(|t| t.signed_by = signed_by.clone());
                return Ok((at, Checked::Tasks(tasks, archived)));
            }
            Verdict::Dropped => return Ok((at, Checked::Unsigned(Vec::new()))),
            Verdict::Refused(why) => (ImageStatus::Refused, why),
            Verdict::Unsigned(why) if fail_unsigned => (ImageStatus::Failed, why),
            Verdict::Unsigned(why) => (ImageStatus::Unsigned, why),
        };
        let results = not_copied_results(destinations, (repository, image), status, &reason);
        return Ok((at, Checked::Unsigned(results)));
    }
    Ok((at, Checked::Tasks(tasks, archived)))
}

/// What of a selected image is copied: its digest in the source, the referrers travelling
/// with it, and the digest it gets in the destinations when it is cut to the job's platforms.
#[derive(Clone)]
struct Copied {
    digest: Digest,
    referrers: Vec<Digest>,
    target_digest: Option<Digest>,
}

/// `image_tasks`; for an image whose referrers were not asked for when it was selected (every
/// destination held it then: `SelectedImage::referrers_unread`) and that is missing in a
/// destination now, the source's referrers API is asked first (`gated`: as the signature gate
/// takes them), so they travel with it as they would have.
async fn tasks_reading_referrers(
    source: Option<&Connection>,
    gated: bool,
    destinations: &[Destination<'_>],
    (repository, image): (&str, &SelectedImage),
    mut copied: Copied,
) -> Result<(Copied, (Vec<ImageTask>, NotCopiedThere))> {
    let found = image_tasks(destinations, repository, image, copied.clone()).await?;
    let missing = found.0.iter().any(|t| !t.present) || !found.1.is_empty();
    // Cut to the job's platforms, an index travels without its referrers (they name the
    // source's digest).
    if !image.referrers_unread || !missing || copied.target_digest.is_some() {
        return Ok((copied, found));
    }
    let Some(source) = source else {
        // `page_of_work` connects to the source whenever an image's referrers are unread.
        return Err(Error::invalid(
            "referrers",
            format!(
                "{repository}@{}: its referrers are unread and the source is not connected",
                image.digest
            ),
        ));
    };
    for referrer in
        crate::referrers::api_referrers(source, repository, &image.digest, gated).await?
    {
        let digest = Digest::parse(&referrer).map_err(|source| Error::Listing {
            what: format!("the referrers of {repository}@{}", image.digest),
            source,
        })?;
        if !copied.referrers.contains(&digest) {
            copied.referrers.push(digest);
        }
    }
    let found = image_tasks(destinations, repository, image, copied.clone()).await?;
    Ok((copied, found))
}

/// One task per destination for a selected image to copy, each saying whether the destination
/// has it already; or, in an ECR destination that keeps the image archived, its result there:
/// `archived`, not pushed (a push would restore it, undoing the destination's archive rules
/// and paying for its bytes again).
async fn image_tasks(
    destinations: &[Destination<'_>],
    repository: &str,
    image: &SelectedImage,
    copied: Copied,
) -> Result<(Vec<ImageTask>, NotCopiedThere)> {
    let Copied {
        digest,
        referrers,
        target_digest,
    } = copied;
    let mut tasks = Vec::new();
    let mut archived = Vec::new();
    for d in destinations {
        let repo = Repository {
            registry: d.dest.registry.clone(),
            name: d.target.clone(),
        };
        // A tag the destination does not list means missing, without asking.
        let unlisted = d
            .listed
            .as_ref()
            .map(|l| image.tags.iter().filter(|t| !l.contains(*t)).count());
        let tags_absent = !image.tags.is_empty() && unlisted == Some(image.tags.len());
        let wanted = target_digest.as_ref().unwrap_or(&digest);
        let present = unlisted.unwrap_or(0) == 0
            && is_present(&d.dest.client, &repo, wanted, &image.tags, &referrers).await?;
        if !present {
            if let Some(reason) = d.archived_reason(wanted).await {
                tracing::warn!(image = %format!("{repository}@{digest}"), destination = %d.spec.registry, "archived in the destination: not pushed");
                let result = ImageResult {
                    target_digest: target_digest.as_ref().map(Digest::to_string),
                    ..not_copied_result(d, (repository, image), ImageStatus::Archived, &reason)
                };
                archived.push((d.index, result));
                continue;
            }
        }
        tasks.push(ImageTask {
            repository: repository.to_string(),
            digest: digest.clone(),
            tags: image.tags.clone(),
            destination: d.index,
            target_registry: d.spec.target_name(),
            target_repository: d.target.clone(),
            present,
            referrers: referrers.clone(),
            tags_absent,
            repository_absent: d.repository_absent,
            pushed_at: image.pushed_at,
            target_digest: target_digest.clone(),
            signed_by: image.signed_by.clone(),
        });
    }
    Ok((tasks, archived))
}

impl Destination<'_> {
    /// Why `digest`, missing here, is not pushed: the ECR destination keeps it in its archive
    /// storage class (`None`: not archived, the repository does not exist, not ECR, or the
    /// archive could not be read, which is logged: the image is then pushed as before).
    async fn archived_reason(&self, digest: &Digest) -> Option<String> {
        let admin = self.dest.ecr.as_ref()?;
        if self.repository_absent {
            return None;
        }
        let archived = self
            .archived
            .digests(admin, &self.target, "missing images are pushed")
            .await;
        let since = archived.get(digest.as_str())?;
        Some(archived_there_reason(
            &self.spec.registry,
            &self.target,
            digest.as_str(),
            *since,
        ))
    }
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
    image: (&str, &SelectedImage),
    status: ImageStatus,
    reason: &str,
) -> Vec<ImageResult> {
    destinations
        .iter()
        .map(|d| not_copied_result(d, image, status.clone(), reason))
        .collect()
}

/// An image's result in one destination it is not copied to, with why.
fn not_copied_result(
    d: &Destination<'_>,
    (repository, image): (&str, &SelectedImage),
    status: ImageStatus,
    reason: &str,
) -> ImageResult {
    ImageResult {
        repository: repository.to_string(),
        digest: image.digest.clone(),
        tags: image.tags.clone(),
        target_registry: d.spec.target_name(),
        target_repository: d.target.clone(),
        status,
        bytes_copied: 0,
        error: Some(reason.to_string()),
        source_pulls: 0,
        target_digest: None,
        signed_by: None,
        lag_seconds: None,
    }
    .listed()
}
