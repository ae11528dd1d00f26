//! The referrers fallback index (OCI 1.1 distribution spec): in a registry without the
//! referrers API, a subject's referrers are listed in an image index tagged `sha256-<hex>`.
//! Writes only, on a registry client: below the referrer walks that use it (`referrers`,
//! `layout_referrers`).

use std::collections::BTreeMap;

use oci::manifest::OCI_INDEX;
use oci::{Digest, Manifest, Reference, RegistryClient, Repository};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::tag_scheme::fallback_tag;

/// In a target without the referrers API, lists `referrers` (already put there) in the
/// `sha256-<hex>` fallback index of each one's subject, as OCI 1.1 clients do: the existing
/// index is read and extended; descriptors already in it stay. A target with the API indexes
/// manifests with a `subject` itself. One task per subject writes its index, so parallel tasks
/// do not race on it.
///
/// Only subjects in `subjects` (the task's image and the referrers travelling with it) get an
/// index: a referrer naming any other image is never written into that image's index.
pub(crate) async fn write_fallback_indexes(
    target: &RegistryClient,
    to: &Repository,
    referrers: &[Manifest],
    subjects: &[&Digest],
) -> Result<()> {
    let mut by_subject: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for manifest in referrers {
        let parsed: Value = serde_json::from_slice(&manifest.bytes).unwrap_or(Value::Null);
        let Some(subject) = parsed["subject"]["digest"].as_str() else {
            continue;
        };
        if !subjects.iter().any(|s| s.as_str() == subject) {
            tracing::warn!(referrer = %manifest.digest, subject, "a referrer names an image it does not travel with; left out of the fallback indexes");
            continue;
        }
        let mut descriptor = json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest.as_str(),
            "size": manifest.bytes.len(),
        });
        // The spec's artifactType of a referrer: its own, else its config's media type.
        if let Some(kind) = parsed["artifactType"]
            .as_str()
            .or(parsed["config"]["mediaType"].as_str())
        {
            descriptor["artifactType"] = json!(kind);
        }
        if parsed["annotations"].is_object() {
            descriptor["annotations"] = parsed["annotations"].clone();
        }
        by_subject
            .entry(subject.to_string())
            .or_default()
            .push(descriptor);
    }
    for (subject, descriptors) in by_subject {
        let failed = |source| Error::Registry {
            image: format!("{to}@{subject} (referrers fallback index)"),
            source,
        };
        let digest = Digest::parse(&subject).map_err(failed)?;
        if target
            .referrers(to, &digest)
            .await
            .map_err(failed)?
            .is_some()
        {
            continue;
        }
        let tag = fallback_tag(&subject);
        let reference = Reference {
            repository: to.clone(),
            tag: Some(tag.clone()),
            digest: None,
        };
        let mut index = match target.get_manifest(&reference).await {
            Ok(existing) => match serde_json::from_slice::<Value>(&existing.bytes) {
                Ok(v) if v["manifests"].is_array() => v,
                _ => {
                    tracing::warn!(%reference, "the fallback tag holds no image index; left as it is");
                    continue;
                }
            },
            Err(oci::Error::NotFound { .. }) => {
                json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
            }
            Err(e) => return Err(failed(e)),
        };
        let Some(listed) = index["manifests"].as_array_mut() else {
            continue;
        };
        let before = listed.len();
        for descriptor in descriptors {
            if !listed.iter().any(|d| d["digest"] == descriptor["digest"]) {
                listed.push(descriptor);
            }
        }
        if listed.len() == before {
            continue;
        }
        let bytes = serde_json::to_vec(&index).unwrap_or_default();
        let manifest = Manifest::from_bytes(bytes.into(), Some(OCI_INDEX), &reference.to_string())
            .map_err(failed)?;
        target
            .put_manifest(to, &tag, &manifest)
            .await
            .map_err(failed)?;
    }
    Ok(())
}
