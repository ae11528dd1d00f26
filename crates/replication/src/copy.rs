//! Copying one image (a manifest, or an index with every child) between repositories.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use oci::manifest::is_foreign_layer;
use oci::{BlobOutcome, BlobRef, Digest, Manifest, ManifestContent, Reference, RegistryClient};
use serde::Serialize;

use crate::error::{Error, Result};

/// Index nesting deeper than this is refused (real images use one level).
const MAX_DEPTH: usize = 8;

/// Receives progress of an image copy (for progress bars). Every method has a no-op default.
pub trait CopyProgress: Send + Sync {
    /// The blobs to transfer are known: how many and their total size (present ones included).
    fn planned(&self, _blobs: usize, _bytes: u64) {}
    /// Some bytes were streamed to the target, or a blob was found present (its whole size).
    fn advanced(&self, _bytes: u64) {}
}

/// How an image is copied.
#[derive(Clone)]
pub struct CopyOptions {
    /// Blobs copied at once (default 8).
    pub parallel_blobs: usize,
    /// Progress receiver, if any.
    pub progress: Option<Arc<dyn CopyProgress>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            parallel_blobs: 8,
            progress: None,
        }
    }
}

/// What copying one image did.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CopyReport {
    /// Source reference as given.
    pub source: String,
    /// Target reference as given.
    pub target: String,
    /// Digest of the top-level manifest (the same in source and target).
    pub digest: String,
    /// Media type of the top-level manifest.
    pub media_type: String,
    /// The target already had this digest under this tag: nothing was written.
    pub already_present: bool,
    /// Manifests written (children of an index and the top one).
    pub manifests_put: usize,
    /// Blobs streamed from the source.
    pub blobs_copied: usize,
    /// Blobs linked by a cross-repository mount.
    pub blobs_mounted: usize,
    /// Blobs the target already had.
    pub blobs_skipped: usize,
    /// Foreign (non-distributable) layers left where they are, reference kept.
    pub foreign_layers: usize,
    /// Bytes streamed.
    pub bytes_copied: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Copies the image `from` (tag or digest) to `to` (tag, digest or both). Blobs first (in
/// parallel, streamed), then child manifests by digest, then the top manifest under its tag, so a
/// tag never points at an incomplete image. An image already in the target does nothing.
#[tracing::instrument(skip(source, target, options), fields(from = %from, to = %to))]
pub async fn copy_image(
    source: &RegistryClient,
    from: &Reference,
    target: &RegistryClient,
    to: &Reference,
    options: &CopyOptions,
) -> Result<CopyReport> {
    let started = Instant::now();
    let image = from.to_string();
    let oci_err = |source: oci::Error| Error::Registry {
        image: image.clone(),
        source,
    };
    let top = source.get_manifest(from).await.map_err(oci_err)?;
    if let Some(pinned) = &to.digest {
        if *pinned != top.digest {
            return Err(Error::PinnedDigestDiffers {
                target: to.to_string(),
                pinned: pinned.to_string(),
                source_ref: from.to_string(),
                actual: top.digest.to_string(),
            });
        }
    }
    let mut report = CopyReport {
        source: from.to_string(),
        target: to.to_string(),
        digest: top.digest.to_string(),
        media_type: top.media_type.clone(),
        already_present: false,
        manifests_put: 0,
        blobs_copied: 0,
        blobs_mounted: 0,
        blobs_skipped: 0,
        foreign_layers: 0,
        bytes_copied: 0,
        seconds: 0.0,
    };
    if already_in_target(target, to, &top.digest)
        .await
        .map_err(oci_err)?
    {
        report.already_present = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let walked = walk(source, from, top.clone()).await?;
    report.foreign_layers = walked.foreign_layers;
    if let Some(p) = &options.progress {
        p.planned(
            walked.blobs.len(),
            walked.blobs.values().map(|b| b.size).sum(),
        );
    }

    let progress_fn: Option<oci::ProgressFn> = options.progress.clone().map(|p| {
        let f: oci::ProgressFn = Arc::new(move |n| p.advanced(n));
        f
    });
    let outcomes: Vec<(BlobOutcome, u64)> = futures::stream::iter(walked.blobs.values())
        .map(|blob| {
            let progress_fn = progress_fn.clone();
            async move {
                let outcome = oci::copy_blob(
                    source,
                    &from.repository,
                    target,
                    &to.repository,
                    blob,
                    progress_fn.clone(),
                )
                .await?;
                if outcome != BlobOutcome::Copied {
                    if let Some(p) = &progress_fn {
                        p(blob.size);
                    }
                }
                Ok::<_, oci::Error>((outcome, blob.size))
            }
        })
        .buffer_unordered(options.parallel_blobs.max(1))
        .try_collect()
        .await
        .map_err(oci_err)?;
    let tally: BlobTally = outcomes.into_iter().collect();
    tally.record(&mut report);

    let tags: Vec<String> = to.tag.iter().cloned().collect();
    report.manifests_put = put_manifests_in_order(
        target,
        &to.repository,
        &top,
        &walked.children,
        &tags,
        Known::default(),
        &image,
    )
    .await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Blob outcomes added up: one rule for `copy` and the copy step. Bytes count only blobs
/// streamed (a mount or a present blob moves none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BlobTally {
    /// Streamed from the source.
    pub(crate) copied: usize,
    /// Linked by a cross-repository mount.
    pub(crate) mounted: usize,
    /// Already in the target.
    pub(crate) present: usize,
    /// Bytes streamed.
    pub(crate) bytes: u64,
}

impl FromIterator<(BlobOutcome, u64)> for BlobTally {
    fn from_iter<I: IntoIterator<Item = (BlobOutcome, u64)>>(outcomes: I) -> Self {
        let mut tally = BlobTally::default();
        for (outcome, size) in outcomes {
            match outcome {
                BlobOutcome::Copied => {
                    tally.copied += 1;
                    tally.bytes += size;
                }
                BlobOutcome::Mounted => tally.mounted += 1,
                BlobOutcome::Present => tally.present += 1,
            }
        }
        tally
    }
}

impl BlobTally {
    /// Writes the counts into a copy's report (a present blob is a skipped one).
    pub(crate) fn record(self, report: &mut CopyReport) {
        report.blobs_copied = self.copied;
        report.blobs_mounted = self.mounted;
        report.blobs_skipped = self.present;
        report.bytes_copied = self.bytes;
    }
}

/// What is already known of the target, so puts skip questions with known answers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Known {
    /// None of the tags is in the target.
    pub(crate) tags_absent: bool,
    /// The target repository does not exist (so neither do its manifests).
    pub(crate) repository_absent: bool,
}

/// Puts child manifests by digest (deepest first, skipping those present), then the top
/// manifest under each tag (or by digest when there is none), skipping a tag that already
/// points at it (immutable tags refuse even an identical put); then checks every tag resolves
/// to the top digest (from the PUT's `Docker-Content-Digest`, else by HEAD). What `known` says
/// is absent is not asked about. Returns how many manifests were written.
pub(crate) async fn put_manifests_in_order(
    target: &RegistryClient,
    repo: &oci::Repository,
    top: &Manifest,
    children: &[Manifest],
    tags: &[String],
    known: Known,
    image: &str,
) -> Result<usize> {
    let oci_err = |source: oci::Error| Error::Registry {
        image: image.to_string(),
        source,
    };
    let by_digest = |digest: &Digest| Reference {
        repository: repo.clone(),
        tag: None,
        digest: Some(digest.clone()),
    };
    let by_tag = |tag: &str| Reference {
        repository: repo.clone(),
        tag: Some(tag.to_string()),
        digest: None,
    };
    // By digest: put unless the target has it (asked, unless its repository did not exist).
    let put_by_digest = async |manifest: &Manifest| {
        let absent = known.repository_absent
            || target
                .head_manifest(&by_digest(&manifest.digest))
                .await
                .map_err(oci_err)?
                .is_none();
        if absent {
            target
                .put_manifest(repo, manifest.digest.as_str(), manifest)
                .await
                .map_err(oci_err)?;
        }
        Ok::<usize, Error>(usize::from(absent))
    };
    let mut put = 0;
    for child in children.iter().rev() {
        put += put_by_digest(child).await?;
    }
    if tags.is_empty() {
        return Ok(put + put_by_digest(top).await?);
    }
    let points_at_top = |tag: &str| {
        let tag = by_tag(tag);
        async move {
            let current = target.head_manifest(&tag).await.map_err(oci_err)?;
            Ok::<_, Error>(current.is_some_and(|h| h.digest == top.digest))
        }
    };
    let asked_first = !(known.tags_absent || known.repository_absent);
    for tag in tags {
        if asked_first && points_at_top(tag).await? {
            continue;
        }
        let confirmed = match target.put_manifest(repo, tag, top).await {
            Ok(confirmed) => confirmed,
            // Not asked first, and refused: a retry after this very put went in (an immutable
            // tag refuses even an identical put) is no failure.
            Err(e) if !asked_first && !e.is_throttling() => {
                if points_at_top(tag).await? {
                    continue;
                }
                return Err(oci_err(e));
            }
            Err(e) => return Err(oci_err(e)),
        };
        put += 1;
        // The registry said which digest it stored under the tag: no need to ask again.
        if confirmed.as_ref() == Some(&top.digest) {
            continue;
        }
        let stored = target.head_manifest(&by_tag(tag)).await.map_err(oci_err)?;
        match stored {
            Some(head) if head.digest == top.digest => {}
            other => {
                return Err(Error::VerificationFailed {
                    target: by_tag(tag).to_string(),
                    expected: top.digest.to_string(),
                    actual: other
                        .map(|h| h.digest.to_string())
                        .unwrap_or_else(|| "nothing".into()),
                })
            }
        }
    }
    Ok(put)
}

fn to_digest_ref(to: &Reference, digest: &Digest) -> Reference {
    Reference {
        repository: to.repository.clone(),
        tag: None,
        digest: Some(digest.clone()),
    }
}

/// The target has the digest, and (when a tag is asked for) the tag points at it.
pub(crate) async fn already_in_target(
    target: &RegistryClient,
    to: &Reference,
    digest: &Digest,
) -> oci::Result<bool> {
    if target
        .head_manifest(&to_digest_ref(to, digest))
        .await?
        .is_none()
    {
        return Ok(false);
    }
    match &to.tag {
        None => Ok(true),
        Some(tag) => Ok(target
            .head_manifest(&to.with_tag(tag))
            .await?
            .is_some_and(|h| h.digest == *digest)),
    }
}

/// The child manifests of an image in discovery order (a parent before its children) and its
/// unique blobs.
pub(crate) struct Walked {
    pub(crate) children: Vec<Manifest>,
    pub(crate) blobs: BTreeMap<Digest, BlobRef>,
    pub(crate) foreign_layers: usize,
}

pub(crate) async fn walk(
    source: &RegistryClient,
    from: &Reference,
    top: Manifest,
) -> Result<Walked> {
    let fetch = async |digest: Digest| source.get_manifest(&from.with_digest(digest)).await;
    walk_with(&from.to_string(), &from.repository.to_string(), top, fetch).await
}

/// [`walk`] over any store of manifests: `fetch` reads a child by digest; `image` and `place`
/// name the image and where its manifests are, in errors.
pub(crate) async fn walk_with(
    image: &str,
    place: &str,
    top: Manifest,
    fetch: impl AsyncFn(Digest) -> oci::Result<Manifest>,
) -> Result<Walked> {
    let image = image.to_string();
    let oci_err = |source: oci::Error| Error::Registry {
        image: image.clone(),
        source,
    };
    let mut walked = Walked {
        children: Vec::new(),
        blobs: BTreeMap::new(),
        foreign_layers: 0,
    };
    let mut pending = vec![(top, 0usize)];
    let mut seen = std::collections::HashSet::new();
    while let Some((manifest, depth)) = pending.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                image: image.clone(),
                limit: MAX_DEPTH,
            });
        }
        let url = format!("{place}@{}", manifest.digest);
        match manifest.content(&url).map_err(oci_err)? {
            ManifestContent::Index { manifests } => {
                for child in manifests {
                    let digest = Digest::parse(child.digest().as_ref()).map_err(oci_err)?;
                    if !seen.insert(digest.clone()) {
                        continue;
                    }
                    let fetched = fetch(digest).await.map_err(oci_err)?;
                    pending.push((fetched, depth + 1));
                }
            }
            ManifestContent::Image { config, layers } => {
                for descriptor in std::iter::once(config.as_ref()).chain(layers.iter()) {
                    if is_foreign_layer(descriptor.media_type().as_ref()) {
                        walked.foreign_layers += 1;
                        continue;
                    }
                    let digest = Digest::parse(descriptor.digest().as_ref()).map_err(oci_err)?;
                    walked.blobs.entry(digest.clone()).or_insert(BlobRef {
                        digest,
                        size: descriptor.size(),
                    });
                }
            }
        }
        if depth > 0 {
            walked.children.push(manifest);
        }
    }
    Ok(walked)
}
