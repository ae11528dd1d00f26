//! Promotion gated on signatures: with `requireSignature`, an image is copied only when a
//! signature over its digest verifies for one of the job's public keys or keyless identities.
//! Signatures are found where cosign puts them: the `sha256-<hex>.sig` tag and, through the OCI
//! 1.1 referrers API (or its `sha256-<hex>` fallback index), referrers of artifact type
//! `application/vnd.dev.cosign.artifact.sig.v1+json` (cosign's legacy signatures, verified here
//! with p256 over the "simple signing" payload, which must name the image's digest so another
//! image's signature cannot be replayed) or `application/vnd.dev.sigstore.bundle.v0.3+json`
//! (Sigstore bundles, verified by `sigstore.rs` against the deployment's trusted root).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use oci::{Digest, ManifestContent, Repository};
use p256::ecdsa::DerSignature;

use crate::artifacts::{fallback_tag, short_digest};
pub(crate) use crate::artifacts::{RegistryReader, SignatureReader};
use crate::connect::Connection;
use crate::error::{Error, Result};
use crate::keys::SignaturePolicy;
use crate::sigstore::{BundleVerifier, MAX_BUNDLE_BYTES};
use crate::trust::{Admission, PolicySource, Signer};

/// The media type of a cosign signature layer (the payload it signs).
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature in the referrers API.
const COSIGN_SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// A signature payload larger than this is not read (real ones are under 1 KiB).
const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;
/// Characters of what admitted an image (`signedBy`) at most: it travels in every task.
pub const MAX_ADMISSION_CHARS: usize = 500;
/// Signature candidates (manifests) examined per image at most.
const MAX_CANDIDATES: usize = 64;
/// Signature layers examined per candidate at most.
const MAX_LAYERS_PER_CANDIDATE: usize = 8;
/// A candidate whose descriptor says it is larger is no cosign signature manifest (those are
/// well under 4 KiB) and is not read.
const MAX_SIGNATURE_MANIFEST_BYTES: u64 = 64 * 1024;

/// A signature candidate: a manifest that may sign the image, and how it would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The manifest's digest.
    pub(crate) digest: String,
    /// A Sigstore bundle (else a cosign legacy signature).
    pub(crate) bundle: bool,
}

/// Whether an artifact type (or layer media type) is a Sigstore bundle's (v0.3 and later).
fn is_bundle_type(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.dev.sigstore.bundle.v0.3")
}

/// The candidate an artifact type makes, if it is a signature's.
pub(crate) fn candidate(artifact_type: Option<&str>, digest: String) -> Option<Candidate> {
    match artifact_type {
        Some(COSIGN_SIGNATURE) => Some(Candidate {
            digest,
            bundle: false,
        }),
        Some(t) if is_bundle_type(t) => Some(Candidate {
            digest,
            bundle: true,
        }),
        _ => None,
    }
}

/// What admitted the image at `digest` (`Ok`: the key or identity, with the signature's
/// manifest), or why it is not signed as the job requires (`Err`). `by_tag` is the repository's
/// listing (tag -> digest); `api` says whether the source may have a referrers API (set false
/// on its first 404: then the `sha256-<hex>` fallback index is read instead).
pub(crate) async fn admission(
    source: &Connection,
    repo: &Repository,
    digest: &str,
    by_tag: &HashMap<&str, &str>,
    gate: &SignatureGate,
    api: &mut bool,
) -> Result<std::result::Result<String, String>> {
    let listing = |what: &str| {
        let what = format!("{what} of {repo}@{digest}");
        move |source| Error::Listing { what, source }
    };
    let subject = Digest::parse(digest).map_err(listing("the signatures"))?;
    // The tag first: cosign writes one per image, so junk referrers cannot crowd it out.
    let mut candidates: Vec<Candidate> = Vec::new();
    // Signature-typed referrers beyond MAX_CANDIDATES: counted, never read.
    let mut not_examined = 0;
    if let Some(signature) = by_tag.get(format!("{}.sig", fallback_tag(digest)).as_str()) {
        candidates.push(Candidate {
            digest: signature.to_string(),
            bundle: false,
        });
    }
    let mut listed: Vec<(Option<String>, String, u64)> = Vec::new();
    if *api {
        match source
            .client
            .referrers(repo, &subject)
            .await
            .map_err(listing("the referrers"))?
        {
            None => *api = false,
            Some(referrers) => {
                listed.extend(
                    referrers
                        .into_iter()
                        .map(|r| (r.artifact_type, r.digest, r.size)),
                );
            }
        }
    }
    if !*api {
        // A registry without the API: OCI 1.1 clients list referrers in the fallback index.
        if let Some(index) = by_tag.get(fallback_tag(digest).as_str()) {
            listed.extend(fallback_referrers(source, repo, index).await);
        }
    }
    for (artifact_type, referrer, size) in listed {
        let Some(found) = candidate(artifact_type.as_deref(), referrer) else {
            continue;
        };
        if size > MAX_SIGNATURE_MANIFEST_BYTES || candidates.contains(&found) {
            continue;
        }
        if candidates.len() < MAX_CANDIDATES {
            candidates.push(found);
        } else {
            not_examined += 1;
        }
    }
    let reader = RegistryReader { source, repo };
    Ok(judge_candidates(&reader, &candidates, not_examined, digest, gate).await)
}

/// What admitted the image at `digest` among its signature `candidates` (read through
/// `reader`), or why nothing did; `not_examined` candidates were left out past the limit.
pub(crate) async fn judge_candidates(
    reader: &impl SignatureReader,
    candidates: &[Candidate],
    not_examined: usize,
    digest: &str,
    gate: &SignatureGate,
) -> std::result::Result<String, String> {
    if candidates.is_empty() {
        return Err(
            "unsigned: no cosign signature or Sigstore bundle (neither a sha256-<hex>.sig tag nor one among its referrers)".into(),
        );
    }
    // Every candidate is looked at (up to MAX_CANDIDATES) for each policy; one that cannot be
    // read or is not a signature is skipped and named, never fatal, and costs at most one
    // manifest and MAX_LAYERS_PER_CANDIDATE payloads, so junk cannot exhaust the look-up before
    // a valid one. Every policy must admit the image.
    let mut admissions = Vec::new();
    for policy in &gate.policies {
        let mut problems: Vec<String> = Vec::new();
        let mut admitted = None;
        for candidate in candidates.iter().take(MAX_CANDIDATES) {
            match verify_candidate(reader, candidate, digest, policy, &gate.verifier).await {
                Ok(signer) => {
                    admitted = Some(Admission {
                        policy: policy.source.label(),
                        signer,
                        signature: candidate.digest.clone(),
                    });
                    break;
                }
                Err(problem) => {
                    problems.push(format!("{}: {problem}", short_digest(&candidate.digest)))
                }
            }
        }
        let Some(admission) = admitted else {
            let whose = match &policy.source {
                PolicySource::Job => "the job's keys or identities".to_string(),
                PolicySource::Deployment { name, .. } => format!("the trust policy {name}"),
            };
            let mut reason = format!(
                "unsigned: no signature verifies for {whose} ({} candidate(s): {})",
                candidates.len(),
                problems
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let not_examined = not_examined + candidates.len().saturating_sub(MAX_CANDIDATES);
            if not_examined > 0 {
                reason.push_str(&format!("; {not_examined} more candidates not examined"));
            }
            return Err(reason);
        };
        admissions.push(admission);
    }
    let line = Admission::join(&admissions);
    let length = line.chars().count();
    if length > MAX_ADMISSION_CHARS {
        // Never cut: a receipt is made from this line and must name exactly what was checked.
        return Err(format!(
            "unsigned: what admitted it is {length} characters, over the {MAX_ADMISSION_CHARS} a task carries (a long certificate identity, or several policies): sign with a shorter identity, or split the job by destination"
        ));
    }
    Ok(line)
}

/// The referrers a fallback index (`sha256-<hex>`) lists, with their artifact types; an index
/// that cannot be read lists none.
async fn fallback_referrers(
    source: &Connection,
    repo: &Repository,
    index: &str,
) -> Vec<(Option<String>, String, u64)> {
    let Ok(parsed) = Digest::parse(index) else {
        return Vec::new();
    };
    let Ok((reference, manifest)) = source.manifest_by_digest(&repo.name, &parsed).await else {
        return Vec::new();
    };
    match manifest.content(&reference.to_string()) {
        Ok(ManifestContent::Index { manifests }) => manifests
            .iter()
            .take(MAX_CANDIDATES * 4)
            .map(|m| {
                (
                    m.artifact_type().as_ref().map(|t| t.to_string()),
                    m.digest().to_string(),
                    m.size(),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Who may sign, and the trusted root bundles are verified against.
#[derive(Debug, Clone)]
pub(crate) struct SignatureGate {
    /// The policies every image must pass (the job's, each destination's).
    pub policies: Vec<SignaturePolicy>,
    /// The deployment's trusted root.
    pub verifier: Arc<BundleVerifier>,
}

/// Verifies one signature candidate (a manifest digest) for the image at `digest`: `Ok` names
/// the key or identity that signed it, `Err` says why it does not sign it (unreadable, not a
/// signature, another image's, wrong key or identity).
async fn verify_candidate(
    reader: &impl SignatureReader,
    candidate: &Candidate,
    digest: &str,
    policy: &SignaturePolicy,
    verifier: &BundleVerifier,
) -> std::result::Result<Signer, String> {
    let signature_manifest = Digest::parse(&candidate.digest).map_err(|e| e.to_string())?;
    let manifest = reader.manifest(&signature_manifest).await?;
    let ManifestContent::Image { layers, .. } = manifest
        .content(&candidate.digest)
        .map_err(|e| format!("not a manifest: {e}"))?
    else {
        return Err("an index, not a signature".into());
    };
    if candidate.bundle {
        return verify_bundles(reader, &layers, digest, policy, verifier).await;
    }
    let keys = &policy.keys;
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
        let payload = match reader
            .layer(layer, "signature payload", MAX_PAYLOAD_BYTES)
            .await
        {
            Ok(payload) => payload,
            Err(why) => {
                reason = why;
                continue;
            }
        };
        // Read as cosign (Go) reads it: a payload two readers would read differently signs
        // nothing.
        if let Err(e) = oci::strict_json::check_document(&payload) {
            reason = format!("an ambiguous signature payload: {e}");
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
        if let Some(key) = keys.verifying(&payload, &signature) {
            return Ok(Signer::Key {
                rule: key.name.clone(),
                fingerprint: key.fingerprint.clone(),
            });
        }
        reason = "no signature verifies with the job's public keys (wrong key, or tampered)".into();
    }
    Err(reason)
}

/// Verifies the Sigstore bundle layers of a bundle manifest (cosign 3, GitHub attestations) for
/// the image at `digest`: each is read (bounded), checked against its digest, and verified
/// against the trusted root.
async fn verify_bundles(
    reader: &impl SignatureReader,
    layers: &[oci::Descriptor],
    digest: &str,
    policy: &SignaturePolicy,
    verifier: &BundleVerifier,
) -> std::result::Result<Signer, String> {
    let mut reason = String::from("holds no Sigstore bundle layer");
    for layer in layers
        .iter()
        .filter(|l| is_bundle_type(l.media_type().as_ref()))
        .take(MAX_LAYERS_PER_CANDIDATE)
    {
        let bundle = match reader.layer(layer, "bundle", MAX_BUNDLE_BYTES).await {
            Ok(bundle) => bundle,
            Err(why) => {
                reason = why;
                continue;
            }
        };
        match verifier.admitted_by(&bundle, digest, policy) {
            Ok(admitted_by) => return Ok(admitted_by),
            Err(why) => reason = why,
        }
    }
    Err(reason)
}
