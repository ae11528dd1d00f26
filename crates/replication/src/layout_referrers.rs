//! Referrers in an OCI layout (issue 35): an export writes an image's signatures, Sigstore
//! bundles, SBOMs, attestations and receipts into the layout byte for byte, and an import puts
//! them beside the image in the destination.
//!
//! In the layout, as the tools that keep referrers there do: an OCI 1.1 referrer (a manifest
//! whose `subject` names the image) is an `index.json` descriptor without a ref name, with its
//! `artifactType` (oras-go's OCI store keeps untagged manifests so and finds them by
//! `subject`); an artifact of the tag scheme (cosign's `sha256-<hex>.sig`, `.att`, `.sbom`) is
//! a ref name `<repository>:sha256-<hex>.sig`, the tag it has in the registry (what
//! `skopeo copy` of that tag into `oci:DIR:REF` writes). The referrers fallback index
//! (`sha256-<hex>`) is not carried: it lists, and is rewritten in the destination from what
//! arrives, as a copy between registries rewrites it.

use std::collections::HashSet;

use oci::layout::{self, LayoutIndex, LayoutStore};
use oci::{BlobRef, Digest, Manifest, ManifestContent, Reference, RegistryClient};
use serde_json::Value;

use crate::copy::{put_manifests_in_order, walk, walk_with, Known, Walked};
use crate::error::{Error, Result};
use crate::tag_scheme::{artifact_subject, artifact_tags, fallback_tag};

/// Levels of referrers followed (a signature of an SBOM of an image is two), as the copy does.
const MAX_LEVELS: usize = 4;
/// Referrers of one image carried at most.
const MAX_REFERRERS: usize = 256;

/// A referrer of an image: its manifest and how it refers.
#[derive(Debug, Clone)]
pub struct LayoutReferrer {
    /// The referrer's manifest, byte for byte.
    pub manifest: Manifest,
    /// The digest it refers to (the image, or another referrer of it).
    pub subject: String,
    /// Its tag under the tag scheme (`sha256-<hex>.sig`); `None` for an OCI 1.1 referrer.
    pub tag: Option<String>,
    /// Its `artifactType`, else its config's media type (the referrers API's rule), else empty.
    pub artifact_type: String,
}

fn parsed(manifest: &Manifest) -> Value {
    serde_json::from_slice(&manifest.bytes).unwrap_or(Value::Null)
}

/// The referrers API's `artifactType` of a manifest.
pub(crate) fn artifact_type_of(manifest: &Manifest) -> String {
    let v = parsed(manifest);
    v["artifactType"]
        .as_str()
        .or(v["config"]["mediaType"].as_str())
        .unwrap_or_default()
        .to_string()
}

pub(crate) fn subject_of(manifest: &Manifest) -> Option<String> {
    parsed(manifest)["subject"]["digest"]
        .as_str()
        .map(str::to_string)
}

/// The referrers of `top` in the source, level by level: artifacts under the tag scheme's
/// `.sig`, `.att` and `.sbom` tags, and referrers the referrers API lists (or, where the
/// registry has none, the `sha256-<hex>` fallback index), each taken only when its own
/// `subject` is the digest it was listed for (the copy's rule for referrers).
pub(crate) async fn source_referrers(
    source: &RegistryClient,
    from: &Reference,
    top: &Digest,
) -> Result<Vec<LayoutReferrer>> {
    let err = |e: oci::Error| Error::Listing {
        what: format!("referrers of {}@{top}", from.repository),
        source: e,
    };
    let mut found: Vec<LayoutReferrer> = Vec::new();
    let mut seen: HashSet<String> = HashSet::from([top.to_string()]);
    let mut level = vec![top.to_string()];
    let mut api = true;
    for _ in 0..MAX_LEVELS {
        let mut next = Vec::new();
        for subject in &level {
            let mut taken = Vec::new();
            for tag in artifact_tags(subject).into_iter().skip(1) {
                match source.get_manifest(&from.with_tag(&tag)).await {
                    Ok(manifest) => taken.push((manifest, Some(tag))),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(err(e)),
                }
            }
            let digest = Digest::parse(subject).map_err(err)?;
            let listed = match api {
                true => source
                    .referrers(&from.repository, &digest)
                    .await
                    .map_err(err)?,
                false => None,
            };
            let digests: Vec<String> = match listed {
                Some(list) => list.into_iter().map(|r| r.digest).collect(),
                None => {
                    api = false;
                    fallback_children(source, from, subject)
                        .await
                        .map_err(err)?
                }
            };
            for listed in digests {
                if seen.contains(&listed) {
                    continue;
                }
                let digest = Digest::parse(&listed).map_err(err)?;
                let manifest = source
                    .get_manifest(&from.with_digest(digest))
                    .await
                    .map_err(err)?;
                if subject_of(&manifest).as_deref() != Some(subject.as_str()) {
                    tracing::warn!(referrer = %listed, %subject, "a listed referrer names another subject: left behind");
                    continue;
                }
                taken.push((manifest, None));
            }
            for (manifest, tag) in taken {
                if !seen.insert(manifest.digest.to_string()) || found.len() >= MAX_REFERRERS {
                    continue;
                }
                next.push(manifest.digest.to_string());
                found.push(LayoutReferrer {
                    artifact_type: artifact_type_of(&manifest),
                    manifest,
                    subject: subject.clone(),
                    tag,
                });
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(found)
}

/// The digests the `sha256-<hex>` fallback index of `subject` lists (none when absent).
async fn fallback_children(
    source: &RegistryClient,
    from: &Reference,
    subject: &str,
) -> oci::Result<Vec<String>> {
    let reference = from.with_tag(&fallback_tag(subject));
    let index = match source.get_manifest(&reference).await {
        Ok(index) => index,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(match index.content(&reference.to_string())? {
        ManifestContent::Index { manifests } => {
            manifests.iter().map(|m| m.digest().to_string()).collect()
        }
        ManifestContent::Image { .. } => Vec::new(),
    })
}

/// The `index.json` entries an export adds, applied by whoever holds the index (one image's
/// export, or a run exporting many at once that writes `index.json` once).
#[derive(Debug, Clone, Default)]
pub struct IndexEntries(Vec<IndexEntry>);

/// One entry of [`IndexEntries`], in the order the export wrote them.
#[derive(Debug, Clone)]
enum IndexEntry {
    /// Named `ref name -> manifest` (the image, a tag-scheme artifact).
    Named(String, Manifest),
    /// Without a ref name: an OCI 1.1 referrer, with its artifact type.
    Unnamed(Manifest, String),
}

impl IndexEntries {
    /// Names `manifest` `ref_name`.
    pub fn name(&mut self, ref_name: &str, manifest: &Manifest) {
        self.0
            .push(IndexEntry::Named(ref_name.to_string(), manifest.clone()));
    }

    /// Adds them to `index`, in order; whether it changed.
    pub fn apply(&self, index: &mut LayoutIndex) -> bool {
        let mut changed = false;
        for entry in &self.0 {
            changed |= match entry {
                IndexEntry::Named(name, manifest) => index.set(name, manifest),
                IndexEntry::Unnamed(manifest, artifact_type) => {
                    index.add_unnamed(manifest, Some(artifact_type))
                }
            };
        }
        changed
    }
}

/// Writes the referrers' blobs and manifests into the layout (blobs it lacks, each checked as
/// written); returns the blob outcomes, the manifests written, and the `index.json` entries
/// that list them (tag-scheme artifacts under their tag, OCI 1.1 referrers unnamed).
pub(crate) async fn export_referrers(
    source: &RegistryClient,
    from: &Reference,
    (store, ref_name): (&dyn LayoutStore, &str),
    referrers: &[LayoutReferrer],
    entries: &mut IndexEntries,
) -> Result<(Vec<Option<u64>>, usize)> {
    let err = |e: oci::Error| Error::Registry {
        image: from.to_string(),
        source: e,
    };
    let repository = layout::split_ref_name(ref_name)
        .map_err(|reason| {
            err(oci::Error::Layout {
                path: store.location(),
                reason,
            })
        })?
        .0;
    let (mut outcomes, mut written) = (Vec::new(), 0);
    for referrer in referrers {
        let at = from.with_digest(referrer.manifest.digest.clone());
        let walked = walk(source, &at, referrer.manifest.clone()).await?;
        for blob in walked.blobs.values() {
            outcomes.push(
                oci::layout::pull_blob(source, &from.repository, store, blob)
                    .await
                    .map_err(err)?,
            );
        }
        for manifest in walked.children.iter().rev().chain([&referrer.manifest]) {
            if layout::write_manifest(store, manifest).await.map_err(err)? {
                written += 1;
            }
        }
        match (&referrer.tag, repository) {
            (Some(tag), Some(repository)) => {
                entries.name(&format!("{repository}:{tag}"), &referrer.manifest)
            }
            (Some(tag), None) => entries.name(tag, &referrer.manifest),
            (None, _) => entries.0.push(IndexEntry::Unnamed(
                referrer.manifest.clone(),
                referrer.artifact_type.clone(),
            )),
        }
    }
    Ok((outcomes, written))
}

/// Whether a ref name is a tag-scheme artifact's (`[<repository>:]sha256-<hex>.sig|.att|.sbom`)
/// rather than an image's: its repository and the digest it belongs to.
pub fn tag_scheme(ref_name: &str) -> Option<(Option<&str>, String)> {
    let (repository, tag) = layout::split_ref_name(ref_name).ok()?;
    let subject = artifact_subject(tag)?;
    (tag != fallback_tag(&subject)).then_some((repository, subject))
}

/// The referrers of the image `ref_name` names (at `top`) in the layout: the tag-scheme
/// entries of its repository and the entries without a ref name whose `subject` is the image
/// or one of its referrers, each manifest read and checked against its digest.
pub async fn layout_referrers(
    store: &dyn LayoutStore,
    index: &LayoutIndex,
    ref_name: &str,
    top: &Digest,
) -> Result<Vec<LayoutReferrer>> {
    let path = format!("{}/index.json", store.location());
    let err = |e: oci::Error| Error::Registry {
        image: format!("oci:{}:{ref_name}", store.location()),
        source: e,
    };
    let repository = layout::split_ref_name(ref_name).ok().and_then(|(r, _)| r);
    let mut candidates: Vec<(LayoutReferrer, bool)> = Vec::new();
    for entry in index.entries(&path).map_err(err)? {
        let Some((repo, subject)) = tag_scheme(&entry.ref_name) else {
            continue;
        };
        if repo != repository {
            continue;
        }
        let manifest = layout::read_manifest(store, &entry.blob, Some(&entry.media_type))
            .await
            .map_err(err)?;
        let tag = layout::split_ref_name(&entry.ref_name)
            .map(|(_, t)| t.to_string())
            .ok();
        candidates.push((
            LayoutReferrer {
                artifact_type: artifact_type_of(&manifest),
                manifest,
                subject,
                tag,
            },
            false,
        ));
    }
    for (entry, _) in index.unnamed(&path).map_err(err)? {
        let manifest = layout::read_manifest(store, &entry.blob, Some(&entry.media_type))
            .await
            .map_err(err)?;
        let Some(subject) = subject_of(&manifest) else {
            continue;
        };
        candidates.push((
            LayoutReferrer {
                artifact_type: artifact_type_of(&manifest),
                manifest,
                subject,
                tag: None,
            },
            false,
        ));
    }
    let mut subjects: HashSet<String> = HashSet::from([top.to_string()]);
    let mut found = Vec::new();
    loop {
        let mut more = false;
        for (candidate, taken) in candidates.iter_mut() {
            if *taken || !subjects.contains(&candidate.subject) || found.len() >= MAX_REFERRERS {
                continue;
            }
            *taken = true;
            more = true;
            subjects.insert(candidate.manifest.digest.to_string());
            found.push(candidate.clone());
        }
        if !more {
            break;
        }
    }
    Ok(found)
}

/// The referrers of an image walked in the layout (children and blobs), before anything is put.
pub(crate) async fn walk_referrers(
    store: &dyn LayoutStore,
    image: &str,
    referrers: &[LayoutReferrer],
) -> Result<Vec<Walked>> {
    let mut walked = Vec::new();
    for referrer in referrers {
        let fetch = async |digest: Digest| {
            let size = store.blob_size(&digest).await?.unwrap_or(0);
            layout::read_manifest(store, &BlobRef { digest, size }, None).await
        };
        walked.push(walk_with(image, &store.location(), referrer.manifest.clone(), fetch).await?);
    }
    Ok(walked)
}

/// Puts the referrers of the image `top` into `to`'s repository after it: their blobs (each
/// hashed before upload), their manifests (a tag-scheme artifact under its tag, an OCI referrer
/// by digest), then, where the destination has no referrers API, the `sha256-<hex>` fallback
/// index of each subject. Returns the blob outcomes and the manifests written.
pub(crate) async fn import_referrers(
    store: &dyn LayoutStore,
    (target, to): (&RegistryClient, &Reference),
    image: &str,
    top: &Manifest,
    referrers: &[(LayoutReferrer, Walked)],
) -> Result<(Vec<Option<u64>>, usize)> {
    let err = |e: oci::Error| Error::Registry {
        image: image.to_string(),
        source: e,
    };
    let (mut outcomes, mut written) = (Vec::new(), 0);
    for (referrer, walked) in referrers {
        for blob in walked.blobs.values() {
            outcomes.push(
                layout::push_blob(store, target, &to.repository, blob)
                    .await
                    .map_err(err)?,
            );
        }
        let tags: Vec<String> = referrer.tag.iter().cloned().collect();
        written += put_manifests_in_order(
            target,
            &to.repository,
            &referrer.manifest,
            &walked.children,
            &tags,
            Known::default(),
            image,
        )
        .await?;
    }
    let by_subject: Vec<Manifest> = referrers
        .iter()
        .filter(|(r, _)| r.tag.is_none())
        .map(|(r, _)| r.manifest.clone())
        .collect();
    let subjects: Vec<&Digest> = std::iter::once(&top.digest)
        .chain(referrers.iter().map(|(r, _)| &r.manifest.digest))
        .collect();
    crate::fallback_index::write_fallback_indexes(target, &to.repository, &by_subject, &subjects)
        .await?;
    Ok((outcomes, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cosign_tags_of_a_digest_are_tag_scheme_referrers() {
        let hex = "ab".repeat(32);
        let subject = format!("sha256:{hex}");
        for suffix in ["sig", "att", "sbom"] {
            assert_eq!(
                tag_scheme(&format!("team/app:sha256-{hex}.{suffix}")),
                Some((Some("team/app"), subject.clone()))
            );
        }
        assert_eq!(
            tag_scheme(&format!("sha256-{hex}.sig")),
            Some((None, subject))
        );
        assert_eq!(tag_scheme(&format!("team/app:sha256-{hex}")), None);
        assert_eq!(tag_scheme("team/app:v1"), None);
        assert_eq!(tag_scheme("team/app:sha256-abc.sig"), None);
    }
}
