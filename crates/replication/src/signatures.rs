//! Promotion gated on signatures: with `requireSignature`, an image is copied only when a cosign
//! signature over its digest verifies with one of the job's public keys (ECDSA P-256 with
//! SHA-256, the keys `cosign generate-key-pair` makes). Signatures are found where cosign puts
//! them: the `sha256-<hex>.sig` tag, and the OCI 1.1 referrers API (artifact type
//! `application/vnd.dev.cosign.artifact.sig.v1+json`). Each signature layer's payload (the
//! "simple signing" JSON, a few hundred bytes) must name the image's digest, so a signature of
//! another image cannot be replayed.

use std::collections::HashMap;

use base64::Engine;
use futures::StreamExt;
use oci::{Digest, ManifestContent, Repository};
use p256::ecdsa::DerSignature;

use crate::artifacts::{
    artifact_refusal, artifact_subject, digests_by_tag, fallback_tag, short_digest,
};
use crate::connect::Connection;
use crate::error::{Error, Result};
use crate::filter::{ListedImage, SelectedImage};
use crate::keys::SignatureKeys;

/// The media type of a cosign signature layer (the payload it signs).
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature in the referrers API.
const COSIGN_SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// A signature payload larger than this is not read (real ones are under 1 KiB).
const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;
/// Signature candidates (manifests) examined per image at most.
const MAX_CANDIDATES: usize = 64;
/// Signature layers examined per candidate at most.
const MAX_LAYERS_PER_CANDIDATE: usize = 8;
/// A candidate whose descriptor says it is larger is no cosign signature manifest (those are
/// well under 4 KiB) and is not read.
const MAX_SIGNATURE_MANIFEST_BYTES: u64 = 64 * 1024;

/// Why the image at `digest` is not signed as the job requires; `None` when a signature
/// verifies. `by_tag` is the repository's listing (tag -> digest); `api` says whether the source
/// may have a referrers API (set false on its first 404).
pub(crate) async fn unsigned_reason(
    source: &Connection,
    repo: &Repository,
    digest: &str,
    by_tag: &HashMap<&str, &str>,
    keys: &SignatureKeys,
    api: &mut bool,
) -> Result<Option<String>> {
    let listing = |what: &str| {
        let what = format!("{what} of {repo}@{digest}");
        move |source| Error::Listing { what, source }
    };
    let subject = Digest::parse(digest).map_err(listing("the signatures"))?;
    // The tag first: cosign writes one per image, so junk referrers cannot crowd it out.
    let mut candidates: Vec<String> = Vec::new();
    // Signature-typed referrers beyond MAX_CANDIDATES: counted, never read.
    let mut not_examined = 0;
    if let Some(signature) = by_tag.get(format!("{}.sig", fallback_tag(digest)).as_str()) {
        candidates.push(signature.to_string());
    }
    if *api {
        match source
            .client
            .referrers(repo, &subject)
            .await
            .map_err(listing("the referrers"))?
        {
            None => *api = false,
            Some(referrers) => {
                for r in referrers {
                    if r.artifact_type.as_deref() != Some(COSIGN_SIGNATURE)
                        || r.size > MAX_SIGNATURE_MANIFEST_BYTES
                        || candidates.contains(&r.digest)
                    {
                        continue;
                    }
                    if candidates.len() < MAX_CANDIDATES {
                        candidates.push(r.digest);
                    } else {
                        not_examined += 1;
                    }
                }
            }
        }
    }
    if candidates.is_empty() {
        return Ok(Some(
            "unsigned: no cosign signature (neither a sha256-<hex>.sig tag nor one in the referrers API)".into(),
        ));
    }
    // Every candidate is looked at (up to MAX_CANDIDATES); one that cannot be read or is not a
    // signature is skipped and named, never fatal, and costs at most one manifest and
    // MAX_LAYERS_PER_CANDIDATE payloads, so junk cannot exhaust the look-up before a valid one.
    let mut problems: Vec<String> = Vec::new();
    let examined = candidates.len();
    for candidate in &candidates {
        match verify_candidate(source, repo, candidate, digest, keys).await {
            Ok(()) => return Ok(None),
            Err(problem) => problems.push(format!("{}: {problem}", short_digest(candidate))),
        }
    }
    let mut reason = format!(
        "unsigned: no signature verifies with the job's public keys ({examined} candidate(s): {})",
        problems
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    if not_examined > 0 {
        reason.push_str(&format!("; {not_examined} more candidates not examined"));
    }
    Ok(Some(reason))
}

/// Verifies one signature candidate (a manifest digest) for the image at `digest`: `Err` says
/// why it does not sign it (unreadable, not a cosign signature, another image's, wrong key).
async fn verify_candidate(
    source: &Connection,
    repo: &Repository,
    candidate: &str,
    digest: &str,
    keys: &SignatureKeys,
) -> std::result::Result<(), String> {
    let signature_manifest = Digest::parse(candidate).map_err(|e| e.to_string())?;
    let (reference, manifest) = source
        .manifest_by_digest(&repo.name, &signature_manifest)
        .await
        .map_err(|e| format!("unreadable: {e}"))?;
    let ManifestContent::Image { layers, .. } = manifest
        .content(&reference.to_string())
        .map_err(|e| format!("not a manifest: {e}"))?
    else {
        return Err("an index, not a signature".into());
    };
    let mut reason = String::from("holds no cosign signature layer");
    for layer in layers
        .iter()
        .filter(|l| l.media_type().as_ref() == SIMPLE_SIGNING)
        .take(MAX_LAYERS_PER_CANDIDATE)
    {
        let Some(encoded) = layer
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
        else {
            reason = "a signature layer without its signature annotation".into();
            continue;
        };
        let Some(signature) = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|der| DerSignature::try_from(der.as_slice()).ok())
        else {
            reason = "a signature is not base64 DER ECDSA".into();
            continue;
        };
        if layer.size() > MAX_PAYLOAD_BYTES {
            reason = format!("a signature payload is {} bytes", layer.size());
            continue;
        }
        let Ok(payload_digest) = Digest::parse(layer.digest().as_ref()) else {
            reason = "a signature payload has no valid digest".into();
            continue;
        };
        let payload = match read_payload(source, repo, &payload_digest).await {
            Ok(payload) => payload,
            Err(e) => {
                reason = format!("a signature payload is unreadable: {e}");
                continue;
            }
        };
        if Digest::of(&payload) != payload_digest {
            reason = "a signature payload does not match its digest".into();
            continue;
        }
        let signed_digest = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|p| {
                p["critical"]["image"]["docker-manifest-digest"]
                    .as_str()
                    .map(str::to_string)
            });
        if signed_digest.as_deref() != Some(digest) {
            reason = format!(
                "signs {}, not this image",
                signed_digest
                    .map(|d| crate::text::truncate_chars(&d, 71))
                    .unwrap_or_else(|| "no image".into())
            );
            continue;
        }
        if keys.verifies(&payload, &signature) {
            return Ok(());
        }
        reason = "no signature verifies with the job's public keys (wrong key, or tampered)".into();
    }
    Err(reason)
}

/// A signature payload, read whole (it is bounded by `MAX_PAYLOAD_BYTES`).
async fn read_payload(
    source: &Connection,
    repo: &Repository,
    digest: &Digest,
) -> oci::Result<Vec<u8>> {
    let response = source.client.get_blob(repo, digest, 0).await?;
    let url = response.url.clone();
    let mut stream = response.into_stream();
    let mut payload = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| oci::Error::transport("GET", url.clone(), source))?;
        payload.extend_from_slice(&chunk);
        if payload.len() as u64 > MAX_PAYLOAD_BYTES {
            break;
        }
    }
    Ok(payload)
}

/// The selection as the job's keys allow it: an image no signature verifies for is kept but
/// marked (`SelectedImage::unsigned`, with the reason: reported, never copied). An artifact
/// selected by its tag (`sha256-<hex>.sig`, ...) follows its subject: dropped when the subject
/// is not signed; when it is, kept only if it is an artifact of that subject
/// (`artifact_refusal`), else marked refused. The tag alone proves nothing: anyone who can push
/// can push anything under it. `images` is the repository's listing, where the `.sig` tags
/// are.
pub(crate) async fn gate(
    source: &Connection,
    repository: &str,
    images: &[ListedImage],
    selected: Vec<SelectedImage>,
    keys: &SignatureKeys,
) -> Result<Vec<SelectedImage>> {
    let by_tag = digests_by_tag(images);
    let repo = Repository {
        registry: source.registry.clone(),
        name: repository.to_string(),
    };
    let (artifacts, mut subjects): (Vec<SelectedImage>, Vec<SelectedImage>) = selected
        .into_iter()
        .partition(|s| !s.tags.is_empty() && s.tags.iter().all(|t| artifact_subject(t).is_some()));
    let mut api = true;
    for image in &mut subjects {
        image.unsigned =
            unsigned_reason(source, &repo, &image.digest, &by_tag, keys, &mut api).await?;
    }
    let signed: std::collections::HashSet<String> = subjects
        .iter()
        .filter(|s| s.unsigned.is_none())
        .map(|s| s.digest.clone())
        .collect();
    for mut artifact in artifacts {
        let mut subjects_signed = true;
        for tag in &artifact.tags {
            let Some(subject) = artifact_subject(tag) else {
                continue;
            };
            if !signed.contains(&subject) {
                subjects_signed = false;
                break;
            }
            if let Some(why) =
                artifact_refusal(source, &repo, &artifact.digest, tag, &subject, true).await
            {
                artifact.refused = Some(why);
                break;
            }
        }
        if subjects_signed {
            subjects.push(artifact);
        }
    }
    Ok(subjects)
}
