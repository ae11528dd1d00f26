//! The referrers a transfer statement lists (issue 35): each image's signatures, bundles,
//! SBOMs, attestations and receipts in the layout by digest, media type, size, artifact type,
//! subject and tag, so that a verified import refuses a referrer added, changed or removed
//! after the export.

use oci::layout::{self, LayoutIndex};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::layout_referrers::{tag_scheme, LayoutReferrer};
use crate::transfer_statement::{StatementImage, VerifiedStatement};

/// One referrer of an image the statement names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatementReferrer {
    /// Its manifest's digest.
    pub digest: String,
    /// Its manifest's media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its `artifactType` (else its config's media type).
    pub artifact_type: String,
    /// The digest it refers to (the image, or another of its referrers).
    pub subject: String,
    /// Its tag under the tag scheme (`sha256-<hex>.sig`), empty for an OCI 1.1 referrer.
    pub tag: String,
}

impl StatementReferrer {
    /// The statement's line for a referrer found in a layout.
    pub fn of(referrer: &LayoutReferrer) -> Self {
        StatementReferrer {
            digest: referrer.manifest.digest.to_string(),
            media_type: referrer.manifest.media_type.clone(),
            size: referrer.manifest.bytes.len() as u64,
            artifact_type: referrer.artifact_type.clone(),
            subject: referrer.subject.clone(),
            tag: referrer.tag.clone().unwrap_or_default(),
        }
    }
}

impl VerifiedStatement {
    /// Refuses an `index.json` entry of a referrer (a tag-scheme ref name, or no ref name)
    /// that no image of the statement lists at that digest, media type and size.
    pub(crate) fn check_referrer_entries(&self, index: &LayoutIndex, path: &str) -> Result<()> {
        let stated: Vec<&StatementReferrer> =
            self.images.values().flat_map(|i| &i.referrers).collect();
        let named = index
            .entries(path)
            .map_err(|e| self.refused(e.to_string()))?
            .into_iter()
            .filter(|e| tag_scheme(&e.ref_name).is_some());
        let unnamed = index
            .unnamed(path)
            .map_err(|e| self.refused(e.to_string()))?
            .into_iter()
            .map(|(e, _)| e);
        for entry in named.chain(unnamed) {
            let tag = layout::split_ref_name(&entry.ref_name)
                .map(|(_, t)| t.to_string())
                .unwrap_or_default();
            let listed = stated.iter().any(|r| {
                (
                    r.digest.as_str(),
                    r.media_type.as_str(),
                    r.size,
                    r.tag.as_str(),
                ) == (
                    entry.blob.digest.as_str(),
                    entry.media_type.as_str(),
                    entry.blob.size,
                    tag.as_str(),
                )
            });
            if !listed {
                return Err(self.refused(format!(
                    "index.json lists the referrer {} ({}{}), which the signed statement does \
                     not: added or changed after the export, not imported",
                    entry.blob.digest,
                    entry.media_type,
                    match entry.ref_name.as_str() {
                        "" => String::new(),
                        name => format!(", {name:?}"),
                    }
                )));
            }
        }
        Ok(())
    }

    /// Refuses an image whose referrers in the layout are not exactly the statement's.
    pub(crate) fn check_referrers(&self, ref_name: &str, found: &[LayoutReferrer]) -> Result<()> {
        let Some(stated) = self.images.get(ref_name) else {
            return Err(self.refused(format!("the signed statement does not name {ref_name:?}")));
        };
        let mut found: Vec<StatementReferrer> = found.iter().map(StatementReferrer::of).collect();
        found.sort();
        let mut listed = stated.referrers.clone();
        listed.sort();
        if let Some(extra) = found.iter().find(|r| !listed.contains(r)) {
            return Err(self.refused(format!(
                "{ref_name:?} has the referrer {} ({}, subject {}) in the layout, which the \
                 signed statement does not list: added after the export, not imported",
                extra.digest,
                layout::quoted(&extra.artifact_type),
                layout::quoted(&extra.subject)
            )));
        }
        if let Some(missing) = listed.iter().find(|r| !found.contains(r)) {
            return Err(self.refused(format!(
                "the signed statement lists the referrer {} ({}) of {ref_name:?}, which the \
                 layout does not hold: removed after the export, not imported",
                missing.digest, missing.artifact_type
            )));
        }
        Ok(())
    }
}

/// The referrers of `image` (described from the layout) that neither this run wrote
/// (`this_run`, digests) nor an earlier statement of the key listed for it (`before`, the
/// image at the same digest), each named for a refusal.
pub(crate) fn unvouched_referrers(
    image: &StatementImage,
    this_run: &[String],
    before: Option<&StatementImage>,
) -> Vec<String> {
    image
        .referrers
        .iter()
        .filter(|r| !this_run.contains(&r.digest))
        .filter(|r| !before.is_some_and(|b| b.referrers.contains(r)))
        .map(|r| {
            format!(
                "the referrer {} of {}",
                r.digest,
                layout::quoted(&image.ref_name)
            )
        })
        .collect()
}

/// Why the layout cannot be stated: an `index.json` entry of a referrer (a tag-scheme ref
/// name, or no ref name) that refers to none of its images.
pub(crate) fn unstated_referrer(
    index: &LayoutIndex,
    path: &str,
    images: &[StatementImage],
) -> std::result::Result<(), String> {
    let listed: Vec<&str> = images
        .iter()
        .flat_map(|i| i.referrers.iter().map(|r| r.digest.as_str()))
        .collect();
    let named = index
        .entries(path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|e| tag_scheme(&e.ref_name).is_some());
    let unnamed = index
        .unnamed(path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(e, _)| e);
    for entry in named.chain(unnamed) {
        if !listed.contains(&entry.blob.digest.as_str()) {
            return Err(format!(
                "index.json lists {} ({:?}), a referrer of none of the layout's images: not \
                 signed; export into a layout only exports write",
                entry.blob.digest, entry.ref_name
            ));
        }
    }
    Ok(())
}
