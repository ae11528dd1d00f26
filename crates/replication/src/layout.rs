//! Copying one image between a registry and an OCI image layout (issue 35, air-gap transfer):
//! export writes only what the layout lacks, import refuses any blob or manifest whose bytes do
//! not match their digest. The layout is any [`LayoutStore`] (a directory now).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use oci::layout::{self, LayoutEntry, LayoutIndex, LayoutStore};
use oci::{BlobOutcome, BlobRef, Manifest, Reference, RegistryClient};

use crate::copy::{already_in_target, put_manifests_in_order, walk, walk_with, BlobTally, Known};
use crate::error::{Error, Result};
use crate::layout_gate::{artifacts_only, LayoutGate, LayoutReader, SourceReader};
use crate::layout_referrers::{
    export_referrers, import_referrers, layout_referrers, source_referrers, walk_referrers,
    IndexEntries,
};
use crate::transfer_statement::{verify_statement, TrustedTransferKey, VerifiedStatement};
use crate::CopyReport;

fn report(source: String, target: String, top: &Manifest) -> CopyReport {
    CopyReport {
        source,
        target,
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
    }
}

/// A layout transfer's blob outcomes (`Some(bytes)` streamed, `None` already there) added up
/// by the copy's own rule.
fn tally(outcomes: Vec<Option<u64>>) -> BlobTally {
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Some(bytes) => (BlobOutcome::Copied, bytes),
            None => (BlobOutcome::Present, 0),
        })
        .collect()
}

/// Exports the image `from` into `store` under `ref_name`, with its referrers (signatures,
/// bundles, SBOMs, attestations, receipts: `layout_referrers`): blobs the layout lacks
/// (streamed, each checked before it is renamed into place), then manifests byte for byte, then
/// `index.json`. An image the layout already holds under the name reads no blob and writes
/// nothing.
#[tracing::instrument(skip(source, store), fields(from = %from, layout = %store.location()))]
pub async fn export_image(
    source: &RegistryClient,
    from: &Reference,
    store: &dyn LayoutStore,
    ref_name: &str,
    parallel: usize,
) -> Result<CopyReport> {
    Ok(
        export_gated(source, from, (store, ref_name), parallel, None)
            .await?
            .0,
    )
}

/// [`export_image`] under a signature gate: the image is exported only when a signature among
/// its referrers admits it (else [`Error::Unsigned`], nothing written); returns what admitted
/// it (the `signedBy` line) with the report, and what it wrote itself ([`ExportWrote`], for the
/// signed statement). Without a gate the line is `None`.
#[tracing::instrument(skip(source, store, gate), fields(from = %from, layout = %store.location()))]
pub async fn export_gated(
    source: &RegistryClient,
    from: &Reference,
    (store, ref_name): (&dyn LayoutStore, &str),
    parallel: usize,
    gate: Option<&LayoutGate>,
) -> Result<(CopyReport, Option<String>, ExportWrote)> {
    let err = |source: oci::Error| Error::Registry {
        image: from.to_string(),
        source,
    };
    let (mut done, admitted, wrote, entries) =
        export_unindexed(source, from, (store, ref_name), parallel, gate).await?;
    let mut index = LayoutIndex::read(store)
        .await
        .map_err(err)?
        .unwrap_or_else(LayoutIndex::empty);
    if entries.apply(&mut index) {
        index.write(store).await.map_err(err)?;
    } else if done.manifests_put == 0 && done.blobs_copied == 0 {
        done.already_present = true;
    }
    Ok((done, admitted, wrote))
}

/// [`export_gated`] without touching `index.json`: blobs and manifests written, and the
/// entries that name them returned for the caller to add (a run exporting many images at once
/// writes `index.json` once). `already_present` is left to the caller (nothing written and no
/// entry new).
pub async fn export_unindexed(
    source: &RegistryClient,
    from: &Reference,
    (store, ref_name): (&dyn LayoutStore, &str),
    parallel: usize,
    gate: Option<&LayoutGate>,
) -> Result<(CopyReport, Option<String>, ExportWrote, IndexEntries)> {
    let started = Instant::now();
    let image = from.to_string();
    let err = |source: oci::Error| Error::Registry {
        image: image.clone(),
        source,
    };
    layout::split_ref_name(ref_name).map_err(|reason| {
        err(oci::Error::Layout {
            path: store.location(),
            reason: format!("ref name {ref_name:?}: {reason}"),
        })
    })?;
    let top = source.get_manifest(from).await.map_err(err)?;
    let mut referrers = source_referrers(source, from, &top.digest).await?;
    let admitted = match gate {
        None => None,
        Some(gate) => {
            let reader = SourceReader {
                client: source,
                repo: &from.repository,
            };
            let line = gate
                .admit(&reader, &referrers, &top.digest)
                .await
                .map_err(|reason| Error::Unsigned {
                    image: format!("{image}@{}", top.digest),
                    reason,
                })?;
            let (kept, refused) = artifacts_only(&reader, referrers, &top.digest).await;
            for why in refused {
                tracing::warn!(image = %image, "a referrer is refused: {why}");
            }
            referrers = kept;
            Some(line)
        }
    };
    let target = format!("oci:{}:{ref_name}", store.location());
    let mut done = report(image.clone(), target, &top);
    let walked = walk(source, from, top.clone()).await?;
    done.foreign_layers = walked.foreign_layers;
    let outcomes: Vec<(Option<u64>, String)> = futures::stream::iter(walked.blobs.values())
        .map(|blob| async move {
            let outcome = layout::pull_blob(source, &from.repository, store, blob).await?;
            Ok::<_, oci::Error>((outcome, blob.digest.to_string()))
        })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await
        .map_err(err)?;
    let blobs: Vec<String> = outcomes
        .iter()
        .filter(|(outcome, _)| outcome.is_some())
        .map(|(_, digest)| digest.clone())
        .collect();
    let outcomes: Vec<Option<u64>> = outcomes.into_iter().map(|(outcome, _)| outcome).collect();
    for manifest in walked.children.iter().rev().chain([&top]) {
        if layout::write_manifest(store, manifest).await.map_err(err)? {
            done.manifests_put += 1;
        }
    }
    let mut entries = IndexEntries::default();
    let (more, written) =
        export_referrers(source, from, (store, ref_name), &referrers, &mut entries).await?;
    entries.name(ref_name, &top);
    done.manifests_put += written;
    tally(outcomes.into_iter().chain(more).collect()).record(&mut done);
    done.seconds = started.elapsed().as_secs_f64();
    let referrers = referrers
        .iter()
        .map(|r| r.manifest.digest.to_string())
        .collect();
    Ok((done, admitted, ExportWrote { referrers, blobs }, entries))
}

/// What an export wrote itself, for its signed statement.
#[derive(Debug, Clone, Default)]
pub struct ExportWrote {
    /// Digests of the referrers exported with the image.
    pub referrers: Vec<String>,
    /// Digests of the image's blobs it streamed (each checked against its digest as written);
    /// a blob found in place at its size is not among them.
    pub blobs: Vec<String>,
}

/// Imports the image `store` names `ref_name` into `to` (its tag, else the ref name's tag),
/// with the referrers the layout holds for it: every blob is hashed before it is uploaded and a
/// blob or manifest that does not match its digest is refused naming its path, before any
/// manifest is put; blobs, then children by digest, then the tag, as [`crate::copy_image`]
/// does; then the referrers (`layout_referrers::import_referrers`).
#[tracing::instrument(skip(store, target), fields(layout = %store.location(), to = %to))]
pub async fn import_image(
    store: &dyn LayoutStore,
    ref_name: &str,
    target: &RegistryClient,
    to: &Reference,
    parallel: usize,
) -> Result<CopyReport> {
    let (report, _) = import_stated(
        store,
        (ref_name, None),
        (target, to),
        parallel,
        None,
        (None, None),
    )
    .await?;
    Ok(report)
}

/// [`import_image`] of a layout whose transfer statement must verify with `key` first: the
/// statement and its envelope are read and verified before `index.json` or any blob, then
/// `index.json` must name exactly the statement's images and referrers and the imported
/// image's manifests, blobs and referrers must be the statement's, before any blob is uploaded.
#[tracing::instrument(skip(store, target, key), fields(layout = %store.location(), to = %to))]
pub async fn import_image_verified(
    store: &dyn LayoutStore,
    ref_name: &str,
    target: &RegistryClient,
    to: &Reference,
    parallel: usize,
    key: &TrustedTransferKey,
) -> Result<(CopyReport, VerifiedStatement)> {
    let statement = verify_statement(store, key).await?;
    let (report, _) = import_stated(
        store,
        (ref_name, None),
        (target, to),
        parallel,
        Some(&statement),
        (None, None),
    )
    .await?;
    Ok((report, statement))
}

/// [`import_image`] (verified first with `key` when given) under a signature gate: a signature
/// the layout carries for the image must admit it, verified offline, before anything is put
/// (else [`Error::Unsigned`]). Returns what admitted it (the `signedBy` line).
#[tracing::instrument(skip(store, target, key, gate), fields(layout = %store.location(), to = %to))]
pub async fn import_gated(
    store: &dyn LayoutStore,
    ref_name: &str,
    (target, to): (&RegistryClient, &Reference),
    parallel: usize,
    key: Option<&TrustedTransferKey>,
    gate: &LayoutGate,
) -> Result<(CopyReport, Option<VerifiedStatement>, String)> {
    let statement = match key {
        Some(key) => Some(verify_statement(store, key).await?),
        None => None,
    };
    let (report, admitted) = import_stated(
        store,
        (ref_name, None),
        (target, to),
        parallel,
        statement.as_ref(),
        (Some(gate), None),
    )
    .await?;
    Ok((report, statement, admitted.unwrap_or_default()))
}

/// The entry `ref_name` of `index`, or an error listing the names it holds.
fn named_entry(index: &LayoutIndex, ref_name: &str, path: &str) -> oci::Result<LayoutEntry> {
    index.find(ref_name, path)?.ok_or_else(|| {
        let names = index.ref_names();
        let shown: Vec<String> = names.iter().take(10).map(|n| layout::quoted(n)).collect();
        oci::Error::Layout {
            path: path.to_string(),
            reason: match names.len() {
                0 => format!("names no image {ref_name:?}; it names none: export into it first"),
                n => format!(
                    "names no image {ref_name:?}; it names {n} ({}): name one of those",
                    shown.join(", ")
                ),
            },
        }
    })
}

/// Makes a destination ready for an image (an ECR repository created), called once the image
/// is admitted (the gate passed, the statement matched) and before anything is written.
#[async_trait::async_trait]
pub trait PrepareTarget: Send + Sync {
    /// Ready, or why not.
    async fn prepare(&self) -> Result<()>;
}

/// [`import_image`] against a statement verified already (`statement`: the import must match
/// it) and under a gate when given: a run of many images verifies the statement once. Returns
/// the report and, when gated, what admitted the image. `held` is the `index.json` a run read
/// once (checked against its statement already): its images are imported as selected from it,
/// and it is not read again for each; `None` reads (and checks) it now.
pub async fn import_stated(
    store: &dyn LayoutStore,
    (ref_name, held): (&str, Option<&LayoutIndex>),
    (target, to): (&RegistryClient, &Reference),
    parallel: usize,
    statement: Option<&VerifiedStatement>,
    (gate, prepare): (Option<&LayoutGate>, Option<&dyn PrepareTarget>),
) -> Result<(CopyReport, Option<String>)> {
    let started = Instant::now();
    let source = format!("oci:{}:{ref_name}", store.location());
    let err = |e: oci::Error| Error::Registry {
        image: source.clone(),
        source: e,
    };
    let index_path = format!("{}/index.json", store.location());
    let read;
    let index = match held {
        Some(index) => index,
        None => {
            read = LayoutIndex::read(store)
                .await
                .map_err(err)?
                .ok_or_else(|| {
                    err(oci::Error::Layout {
                        path: store.location(),
                        reason: "is not an OCI layout (no oci-layout and index.json)".into(),
                    })
                })?;
            if let Some(statement) = statement {
                statement.check_index(&read, &index_path)?;
            }
            &read
        }
    };
    let entry = named_entry(index, ref_name, &index_path).map_err(err)?;
    let top = layout::read_manifest(store, &entry.blob, Some(&entry.media_type))
        .await
        .map_err(err)?;
    let mut done = report(source.clone(), to.to_string(), &top);
    let fetch = async |digest: oci::Digest| {
        let size = store.blob_size(&digest).await?.unwrap_or(0);
        layout::read_manifest(store, &BlobRef { digest, size }, None).await
    };
    let walked = walk_with(&source, &store.location(), top.clone(), fetch).await?;
    let referrers = layout_referrers(store, index, ref_name, &top.digest).await?;
    if let Some(statement) = statement {
        statement.check_image(ref_name, walked.children.len() + 1, &walked.blobs)?;
        statement.check_referrers(ref_name, &referrers)?;
    }
    let mut referrers = referrers;
    let admitted = match gate {
        None => None,
        Some(gate) => {
            let reader = LayoutReader { store };
            let line = gate
                .admit(&reader, &referrers, &top.digest)
                .await
                .map_err(|reason| Error::Unsigned {
                    image: format!("{source}@{}", top.digest),
                    reason,
                })?;
            let (kept, refused) = artifacts_only(&reader, referrers, &top.digest).await;
            for why in refused {
                tracing::warn!(image = %source, "a referrer is refused: {why}");
            }
            referrers = kept;
            Some(line)
        }
    };
    let referrers_walked = walk_referrers(store, &source, &referrers).await?;
    let referrers: Vec<_> = referrers.into_iter().zip(referrers_walked).collect();
    done.foreign_layers = walked.foreign_layers;
    if let Some(prepare) = prepare {
        prepare.prepare().await?;
    }
    let mut outcomes = Vec::new();
    if already_in_target(target, to, &top.digest)
        .await
        .map_err(err)?
    {
        done.already_present = true;
    } else {
        outcomes = futures::stream::iter(walked.blobs.values())
            .map(|blob| layout::push_blob(store, target, &to.repository, blob))
            .buffer_unordered(parallel.max(1))
            .try_collect()
            .await
            .map_err(err)?;
        // By digest first: the tag goes on last, after every referrer is in, so an import
        // that fails part-way (a referrer's blob that does not match) leaves nothing tagged.
        done.manifests_put = put_manifests_in_order(
            target,
            &to.repository,
            &top,
            &walked.children,
            &[],
            Known::default(),
            &source,
        )
        .await?;
    }
    let (more, written) = import_referrers(store, (target, to), &source, &top, &referrers).await?;
    outcomes.extend(more);
    done.manifests_put += written;
    if !done.already_present {
        let tags: Vec<String> = to.tag.iter().cloned().collect();
        if !tags.is_empty() {
            done.manifests_put += put_manifests_in_order(
                target,
                &to.repository,
                &top,
                &[],
                &tags,
                Known::default(),
                &source,
            )
            .await?;
        }
    }
    tally(outcomes).record(&mut done);
    done.seconds = started.elapsed().as_secs_f64();
    Ok((done, admitted))
}
