//! The end of a workflow export into a layout (issue 35): the names the steps gave there
//! (`layout_registry::PendingRef` records, kept in the deployment's work bucket, never in the
//! layout) are written into `index.json` at once, then the statement of the whole layout is
//! signed with the deployment's receipt key, as the command line's export ends.
//!
//! Each name is checked before it is written: its manifest read back against its digest (and
//! with it, when the statement is signed, every blob of every image). A tag of the referrers
//! fallback (`sha256-<hex>`) is not carried, as the command line's export does not carry it: it
//! is rewritten wherever the layout is imported. The records are removed once `index.json` and
//! the statement are written; a seal that fails leaves them for the next.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use oci::layout::{self, LayoutIndex, LayoutStore};
use oci::{BlobRef, Digest};

use crate::error::{Error, Result};
use crate::layout_referrers::{artifact_type_of, layout_referrers};
use crate::layout_registry::{ExportNames, PendingRef};
use crate::receipts::ReceiptSigner;
use crate::tag_scheme::{artifact_subject, fallback_tag};
use crate::transfer_statement::{
    verify_statement, write_statement_of, ExportedImage, TrustedTransferKey, VerifiedStatement,
};

/// What a seal did.
#[derive(Debug, Default)]
pub struct Sealed {
    /// Names written into `index.json` (or found there already).
    pub named: usize,
    /// The statement signed, when there was a signer and an image to state.
    pub statement: Option<VerifiedStatement>,
}

/// Seals the export the steps wrote into `store`, whose names and each image's provenance
/// (where it came from, what admitted it) are in `names`: `source` names where an image
/// recorded without provenance came from (`registry`).
pub async fn seal_export(
    (store, names): (&dyn LayoutStore, &ExportNames),
    signer: Option<&dyn ReceiptSigner>,
    source: &str,
) -> Result<Sealed> {
    let (refused, oci_err) = (|r| refused(store, r), |e| oci_err(store, e));
    let files = names.list().await.map_err(oci_err)?;
    let mut records = Vec::new();
    for file in &files {
        let record = names
            .get(file)
            .await
            .map_err(oci_err)?
            .ok_or_else(|| refused(format!("{file} went away while the export was sealed")))?;
        if record.file() != *file {
            return Err(refused(format!(
                "{file} names {}:{} (its place would be {}): not written by this export",
                record.repository,
                record.tag.as_deref().unwrap_or(&record.digest),
                record.file()
            )));
        }
        records.push(record);
    }
    let path = format!("{}/index.json", store.location());
    let mut attempts = 0;
    let statement = loop {
        attempts += 1;
        match seal_records((store, names), signer, source, &records).await? {
            Some(sealed) => break sealed,
            None if attempts < SEAL_ATTEMPTS => {
                tracing::warn!(layout = %path, attempts, "index.json changed while sealing: sealing again");
            }
            None => {
                return Err(refused(format!(
                    "index.json changed under each of {SEAL_ATTEMPTS} seals (other exports of \
                     this layout are writing it): run again when they are done; the names wait \
                     in the work bucket"
                )))
            }
        }
    };
    // Removed last: a seal that failed leaves them for the next.
    for file in &files {
        names.remove(file).await.map_err(oci_err)?;
    }
    // And the provenance of every manifest they named (an image's, or that of a signature's
    // tag, which put-manifests copied as an image and the statement lists as a referrer).
    for record in &records {
        names
            .forget_provenance(&record.repository, &record.digest)
            .await
            .map_err(oci_err)?;
    }
    tracing::info!(layout = %path, named = records.len(), signed = statement.is_some(), "export sealed");
    Ok(Sealed {
        named: records.len(),
        statement,
    })
}

/// Seals tried at most when `index.json` changes under each (another export of the layout
/// wrote it between the seal's read and its write).
const SEAL_ATTEMPTS: usize = 3;

/// One seal of `records`: the new `index.json` written only if it is still the one read
/// (`LayoutStore::replace_file_if`), then the statement signed. `None` when it changed
/// meanwhile (nothing written, nothing signed); else the statement.
async fn seal_records(
    (store, names): (&dyn LayoutStore, &ExportNames),
    signer: Option<&dyn ReceiptSigner>,
    source: &str,
    records: &[PendingRef],
) -> Result<Option<Option<VerifiedStatement>>> {
    let (refused, oci_err) = (|r| refused(store, r), |e| oci_err(store, e));
    let path = format!("{}/index.json", store.location());
    // Read before the index: a write in between then fails the conditional replace.
    let version = store.file_version("index.json").await.map_err(oci_err)?;
    let mut index = LayoutIndex::read(store)
        .await
        .map_err(oci_err)?
        .unwrap_or_else(LayoutIndex::empty);
    // The new index is built in memory; it is written only once the statement of it passed
    // every check (or, unsigned, at once).
    let mut changed = false;
    let mut images = Vec::new();
    // Images stated again for a new referrer: their source and admissions, as stated before.
    let mut restated = std::collections::HashMap::new();
    // What this run recorded besides images: its referrers and tag-scheme artifacts, by digest.
    let mut recorded = HashSet::new();
    let mut subjects: Vec<(String, String)> = Vec::new();
    for record in records {
        let digest = Digest::parse(&record.digest)
            .map_err(|e| refused(format!("{} names {:?}: {e}", record.file(), record.digest)))?;
        let blob = BlobRef {
            digest,
            size: record.size,
        };
        let manifest = layout::read_manifest(store, &blob, Some(&record.media_type))
            .await
            .map_err(oci_err)?;
        match &record.tag {
            // The referrers fallback index: not carried.
            Some(tag) if artifact_subject(tag).is_some_and(|s| *tag == fallback_tag(&s)) => {}
            Some(tag) => {
                let ref_name = format!("{}:{tag}", record.repository);
                layout::split_ref_name(&ref_name)
                    .map_err(|e| refused(format!("{}: {e}", record.file())))?;
                changed |= index.set(&ref_name, &manifest);
                match artifact_subject(tag) {
                    Some(subject) => {
                        recorded.insert(blob.digest.to_string());
                        subjects.push((record.repository.clone(), subject));
                    }
                    None => images.push((ref_name, blob.digest)),
                }
            }
            None => {
                // The artifact type is the manifest's own, as the referrers API and the
                // statement read it (not the record's word).
                let artifact_type = artifact_type_of(&manifest);
                changed |= index.add_unnamed(&manifest, Some(&artifact_type));
                recorded.insert(blob.digest.to_string());
                if let Some(subject) = &record.subject {
                    subjects.push((record.repository.clone(), subject.clone()));
                }
            }
        }
    }
    // An image given a new referrer by this run is stated again, as this run's, when an earlier
    // statement of the key names it at that digest: an entry someone else put in index.json
    // (another name for an image this run exported) is not restated, and the statement below
    // refuses it as unvouched.
    let earlier = match signer {
        Some(signer) => earlier_statement(store, signer).await?,
        None => None,
    };
    for entry in index.entries(&path).map_err(oci_err)? {
        let vouched = earlier.as_ref().is_some_and(|statement| {
            statement
                .images
                .get(&entry.ref_name)
                .is_some_and(|image| image.digest == entry.blob.digest.as_str())
        });
        if !vouched {
            continue;
        }
        let stated = images.iter().any(|(name, _)| *name == entry.ref_name);
        let referred = subjects.iter().any(|(repository, subject)| {
            *subject == entry.blob.digest.as_str()
                && layout::split_ref_name(&entry.ref_name).is_ok_and(|(r, tag)| {
                    r == Some(repository.as_str()) && artifact_subject(tag).is_none()
                })
        });
        if referred && !stated {
            images.push((entry.ref_name.clone(), entry.blob.digest.clone()));
            // Where it came from and what admitted it, as that statement says.
            if let Some(image) = earlier.as_ref().and_then(|e| e.images.get(&entry.ref_name)) {
                restated.insert(
                    entry.ref_name.clone(),
                    (image.source.clone(), image.admitted_by.clone()),
                );
            }
        }
    }
    let mut exported = Vec::new();
    for (ref_name, digest) in &images {
        // Only the referrers this run recorded: one already in the layout is vouched for by
        // the earlier statement, or refused.
        let referrers = layout_referrers(store, &index, ref_name, digest)
            .await?
            .iter()
            .map(|r| r.manifest.digest.to_string())
            .filter(|d| recorded.contains(d))
            .collect();
        let (repository, tag) = ref_name.rsplit_once(':').unwrap_or(("", ref_name));
        let (from, admitted_by) = match restated.remove(ref_name) {
            Some(earlier) => earlier,
            // As put-manifests recorded it; a name recorded without one (by an older version)
            // is stated as coming from this run's source, admitted by nothing.
            None => match names
                .provenance(repository, digest.as_str())
                .await
                .map_err(oci_err)?
            {
                Some(recorded) => (format!("{}:{tag}", recorded.source), recorded.admitted_by),
                None => (format!("{source}/{repository}:{tag}"), Vec::new()),
            },
        };
        exported.push(ExportedImage {
            ref_name: ref_name.clone(),
            digest: digest.to_string(),
            source: from,
            admitted_by,
            tool: format!("ecr-replicator {}", env!("CARGO_PKG_VERSION")),
            referrers,
            written_blobs: Vec::new(),
        });
    }
    let changed_under = AtomicBool::new(false);
    let write_index = async {
        if changed && !index.write_if(store, &version).await.map_err(oci_err)? {
            changed_under.store(true, Ordering::SeqCst);
            return Err(refused(
                "index.json changed while the export was sealed".into(),
            ));
        }
        Ok(())
    };
    let statement = match signer {
        Some(signer) if changed || !exported.is_empty() => {
            let written = write_statement_of(
                store,
                signer,
                &exported,
                &index,
                Some(Box::pin(write_index)),
            )
            .await;
            match written {
                Err(_) if changed_under.load(Ordering::SeqCst) => return Ok(None),
                written => Some(written?),
            }
        }
        _ => match write_index.await {
            Err(_) if changed_under.load(Ordering::SeqCst) => return Ok(None),
            written => written.map(|()| None)?,
        },
    };
    Ok(Some(statement))
}

/// The layout's statement, if one verifies with `signer`'s key (none, or one of another key:
/// nothing earlier is vouched for).
async fn earlier_statement(
    store: &dyn LayoutStore,
    signer: &dyn ReceiptSigner,
) -> Result<Option<VerifiedStatement>> {
    let der = signer.public_key().await?;
    let Ok(key) = TrustedTransferKey::from_der(&der) else {
        return Ok(None);
    };
    Ok(verify_statement(store, &key).await.ok())
}

/// A layout refused for `reason`, named as the steps name it (`oci:LOCATION`).
fn refused(store: &dyn LayoutStore, reason: String) -> Error {
    Error::Registry {
        image: format!("oci:{}", store.location()),
        source: oci::Error::Layout {
            path: store.location(),
            reason,
        },
    }
}

/// A layout error, named as the steps name the layout.
fn oci_err(store: &dyn LayoutStore, e: oci::Error) -> Error {
    Error::Registry {
        image: format!("oci:{}", store.location()),
        source: e,
    }
}
