//! Copying one image between a registry and an OCI image layout (issue 35, air-gap transfer):
//! export writes only what the layout lacks, import refuses any blob or manifest whose bytes do
//! not match their digest. The layout is any [`LayoutStore`] (a directory now).

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use oci::layout::{self, BlobStream, LayoutIndex, LayoutStore};
use oci::{BlobOutcome, BlobRef, Manifest, Reference, RegistryClient};

use crate::copy::{already_in_target, put_manifests_in_order, walk, walk_with, BlobTally, Known};
use crate::error::{Error, Result};
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

/// Exports the image `from` into `store` under `ref_name`: blobs the layout lacks (streamed,
/// each checked before it is renamed into place), then manifests byte for byte, then
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
    let target = format!("oci:{}:{ref_name}", store.location());
    let mut done = report(image.clone(), target, &top);
    let mut index = LayoutIndex::read(store)
        .await
        .map_err(err)?
        .unwrap_or_else(LayoutIndex::empty);
    let walked = walk(source, from, top.clone()).await?;
    done.foreign_layers = walked.foreign_layers;
    let outcomes: Vec<Option<u64>> = futures::stream::iter(walked.blobs.values())
        .map(|blob| export_blob(source, from, store, blob))
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await
        .map_err(err)?;
    tally(outcomes).record(&mut done);
    for manifest in walked.children.iter().rev().chain([&top]) {
        if layout::write_manifest(store, manifest).await.map_err(err)? {
            done.manifests_put += 1;
        }
    }
    if index.set(ref_name, &top) {
        index.write(store).await.map_err(err)?;
    } else if done.manifests_put == 0 && done.blobs_copied == 0 {
        done.already_present = true;
    }
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

/// One blob into the layout unless it is there at its size: `Some(bytes)` when written.
async fn export_blob(
    source: &RegistryClient,
    from: &Reference,
    store: &dyn LayoutStore,
    blob: &BlobRef,
) -> oci::Result<Option<u64>> {
    if store.blob_size(&blob.digest).await? == Some(blob.size) {
        return Ok(None);
    }
    let response = source.get_blob(&from.repository, &blob.digest, 0).await?;
    let body: BlobStream = response
        .into_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other))
        .boxed();
    store.write_blob(blob, body).await?;
    Ok(Some(blob.size))
}

/// Imports the image `store` names `ref_name` into `to` (its tag, else the ref name's tag):
/// every blob is hashed before it is uploaded and a blob or manifest that does not match its
/// digest is refused naming its path, before any manifest is put; blobs, then children by
/// digest, then the tag, as [`crate::copy_image`] does.
#[tracing::instrument(skip(store, target), fields(layout = %store.location(), to = %to))]
pub async fn import_image(
    store: &dyn LayoutStore,
    ref_name: &str,
    target: &RegistryClient,
    to: &Reference,
    parallel: usize,
) -> Result<CopyReport> {
    import_stated(store, ref_name, target, to, parallel, None).await
}

/// [`import_image`] of a layout whose transfer statement must verify with `key` first: the
/// statement and its envelope are read and verified before `index.json` or any blob, then
/// `index.json` must name exactly the statement's images and the imported image's manifests
/// and blobs must be the statement's count, before any blob is uploaded.
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
    let report = import_stated(store, ref_name, target, to, parallel, Some(&statement)).await?;
    Ok((report, statement))
}

async fn import_stated(
    store: &dyn LayoutStore,
    ref_name: &str,
    target: &RegistryClient,
    to: &Reference,
    parallel: usize,
    statement: Option<&VerifiedStatement>,
) -> Result<CopyReport> {
    let started = Instant::now();
    let source = format!("oci:{}:{ref_name}", store.location());
    let err = |e: oci::Error| Error::Registry {
        image: source.clone(),
        source: e,
    };
    let index_path = format!("{}/index.json", store.location());
    let index = LayoutIndex::read(store)
        .await
        .map_err(err)?
        .ok_or_else(|| {
            err(oci::Error::Layout {
                path: store.location(),
                reason: "is not an OCI layout (no oci-layout and index.json)".into(),
            })
        })?;
    if let Some(statement) = statement {
        statement.check_index(&index, &index_path)?;
    }
    let entry = index
        .find(ref_name, &index_path)
        .map_err(err)?
        .ok_or_else(|| {
            let names = index.ref_names();
            let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
            err(oci::Error::Layout {
                path: index_path.clone(),
                reason: match names.len() {
                    0 => {
                        format!("names no image {ref_name:?}; it names none: export into it first")
                    }
                    n => format!(
                        "names no image {ref_name:?}; it names {n} ({}): name one of those",
                        shown.join(", ")
                    ),
                },
            })
        })?;
    let top = layout::read_manifest(store, &entry.blob, Some(&entry.media_type))
        .await
        .map_err(err)?;
    let mut done = report(source.clone(), to.to_string(), &top);
    if already_in_target(target, to, &top.digest)
        .await
        .map_err(err)?
    {
        done.already_present = true;
        done.seconds = started.elapsed().as_secs_f64();
        return Ok(done);
    }
    let fetch = async |digest: oci::Digest| {
        let size = store.blob_size(&digest).await?.unwrap_or(0);
        layout::read_manifest(store, &BlobRef { digest, size }, None).await
    };
    let walked = walk_with(&source, &store.location(), top.clone(), fetch).await?;
    if let Some(statement) = statement {
        statement.check_image(ref_name, walked.children.len() + 1, &walked.blobs)?;
    }
    done.foreign_layers = walked.foreign_layers;
    let outcomes: Vec<Option<u64>> = futures::stream::iter(walked.blobs.values())
        .map(|blob| import_blob(store, target, to, blob))
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await
        .map_err(err)?;
    tally(outcomes).record(&mut done);
    let tags: Vec<String> = to.tag.iter().cloned().collect();
    done.manifests_put = put_manifests_in_order(
        target,
        &to.repository,
        &top,
        &walked.children,
        &tags,
        Known::default(),
        &source,
    )
    .await?;
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

/// One blob from the layout into the target unless it is there (see [`layout::push_blob`]).
async fn import_blob(
    store: &dyn LayoutStore,
    target: &RegistryClient,
    to: &Reference,
    blob: &BlobRef,
) -> oci::Result<Option<u64>> {
    layout::push_blob(store, target, &to.repository, blob).await
}
