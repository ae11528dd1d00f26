//! What may travel with an image: the tag scheme's names for its artifacts (`sha256-<hex>` for
//! the referrers fallback index, with `.sig`, `.att` and `.sbom` as cosign writes them), and the
//! check that a manifest found there, or listed as a referrer, is an artifact of that image.
//! Below both the signature gate (`signatures.rs`) and the referrer walk (`referrers.rs`).

use std::collections::HashMap;

use oci::{Digest, Repository};

use crate::connect::Connection;
use crate::filter::ListedImage;

/// Children of a referrers fallback index checked at most.
const MAX_FALLBACK_CHILDREN: usize = 64;

/// Suffixes cosign puts after the fallback tag.
const COSIGN_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];

/// The fallback tag of a digest: `sha256:<hex>` becomes `sha256-<hex>`.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The tags that hold artifacts of `digest` under the tag scheme.
pub fn artifact_tags(digest: &str) -> Vec<String> {
    let base = fallback_tag(digest);
    std::iter::once(base.clone())
        .chain(COSIGN_SUFFIXES.iter().map(|s| format!("{base}{s}")))
        .collect()
}

/// A repository's listing as tag -> digest.
pub(crate) fn digests_by_tag(images: &[ListedImage]) -> HashMap<&str, &str> {
    images
        .iter()
        .flat_map(|i| i.tags.iter().map(|t| (t.as_str(), i.digest.as_str())))
        .collect()
}

/// The subject digest an artifact tag names (`sha256-<hex>`, with an optional cosign suffix),
/// if it is one.
pub(crate) fn artifact_subject(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex = COSIGN_SUFFIXES
        .iter()
        .find_map(|suffix| rest.strip_suffix(suffix))
        .unwrap_or(rest);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}

pub(crate) fn short_digest(digest: &str) -> String {
    crate::text::truncate_chars(digest, 19)
}

/// Why the manifest `digest`, found under artifact tag `tag` (or listed as a referrer of
/// `subject` when `tag` is empty), may not travel with `subject`; `None` when it may. With
/// `artifacts_only` (the signature gate) it must be an artifact: an image manifest none of
/// whose layers a container runtime unpacks, whose own `subject`, when it declares one, is
/// `subject`; the fallback tag (`sha256-<hex>`) must hold an index of such artifacts only.
/// Without it, only the declared subject is checked (a referrer listed for one image that
/// names another is not that image's). An unreadable manifest is refused, never fatal.
pub(crate) async fn artifact_refusal(
    source: &Connection,
    repo: &Repository,
    digest: &str,
    tag: &str,
    subject: &str,
    artifacts_only: bool,
) -> Option<String> {
    // The report names the tag already.
    let named = if tag.is_empty() {
        format!(
            "referrer {} of {}",
            short_digest(digest),
            short_digest(subject)
        )
    } else {
        short_digest(digest)
    };
    let manifest = |digest: String| async move {
        let parsed = Digest::parse(&digest).map_err(|e| e.to_string())?;
        let (_, manifest) = source
            .manifest_by_digest(&repo.name, &parsed)
            .await
            .map_err(|e| format!("unreadable: {e}"))?;
        serde_json::from_slice::<serde_json::Value>(&manifest.bytes).map_err(|e| e.to_string())
    };
    let top = match manifest(digest.to_string()).await {
        Ok(top) => top,
        Err(e) => return Some(format!("{named}: {e}")),
    };
    if artifacts_only && !tag.is_empty() && tag == fallback_tag(subject) {
        let Some(children) = top["manifests"].as_array() else {
            return Some(format!(
                "{named}: the referrers fallback tag holds no index"
            ));
        };
        if children.len() > MAX_FALLBACK_CHILDREN {
            return Some(format!(
                "{named}: a fallback index of {} referrers (at most {MAX_FALLBACK_CHILDREN})",
                children.len()
            ));
        }
        for child in children {
            let child_digest = child["digest"].as_str().unwrap_or_default().to_string();
            let why = match manifest(child_digest.clone()).await {
                Ok(child) => not_an_artifact_of(&child, subject),
                Err(e) => Some(format!("unreadable: {e}")),
            };
            if let Some(why) = why {
                return Some(format!(
                    "{named}: it lists {}, which {why}",
                    short_digest(&child_digest)
                ));
            }
        }
        return None;
    }
    let why = if artifacts_only {
        not_an_artifact_of(&top, subject)
    } else {
        other_subject(&top, subject)
    };
    why.map(|why| format!("{named} {why}; not copied"))
}

/// Why a parsed manifest is not an artifact of `subject`, or `None`.
fn not_an_artifact_of(manifest: &serde_json::Value, subject: &str) -> Option<String> {
    if manifest["manifests"].is_array() {
        return Some("is an index (it could list any image), not an artifact".into());
    }
    let runnable = manifest["layers"].as_array().and_then(|layers| {
        layers.iter().find_map(|l| {
            let media_type = l["mediaType"].as_str().unwrap_or_default();
            is_filesystem_layer(media_type).then(|| media_type.to_string())
        })
    });
    if let Some(media_type) = runnable {
        return Some(format!(
            "is a runnable image (a {media_type} layer), not an artifact: the signature covers {}, not it",
            short_digest(subject)
        ));
    }
    other_subject(manifest, subject)
}

/// Why a manifest's declared `subject` is not `subject`, or `None` (also when it declares none,
/// as cosign's tag-scheme signatures do).
fn other_subject(manifest: &serde_json::Value, subject: &str) -> Option<String> {
    match manifest["subject"]["digest"].as_str() {
        Some(declared) if declared != subject => Some(format!(
            "declares subject {}, not {}",
            short_digest(declared),
            short_digest(subject)
        )),
        _ => None,
    }
}

/// A layer a container runtime unpacks into a filesystem (OCI and Docker, any compression).
fn is_filesystem_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}
