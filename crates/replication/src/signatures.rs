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
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use crate::connect::Connection;
use crate::error::{Error, Result};
use crate::filter::{ListedImage, SelectedImage};
use crate::referrers::{artifact_subject, digests_by_tag, fallback_tag};

/// The media type of a cosign signature layer (the payload it signs).
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The artifact type of a cosign signature in the referrers API.
const COSIGN_SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// A signature payload larger than this is not read (real ones are under 1 KiB).
const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;
/// Signature layers examined per image at most.
const MAX_SIGNATURES: usize = 32;

/// The public keys a job trusts.
#[derive(Debug, Clone)]
pub struct SignatureKeys(Vec<VerifyingKey>);

impl SignatureKeys {
    /// Reads PEM public keys (`-----BEGIN PUBLIC KEY-----`, P-256); a problem names the key's
    /// index.
    pub fn parse(pems: &[String]) -> std::result::Result<Self, (usize, String)> {
        pems.iter()
            .enumerate()
            .map(|(i, pem)| {
                VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
                    (i, format!("not a P-256 public key in PEM (as `cosign generate-key-pair` writes cosign.pub): {e}"))
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(SignatureKeys)
    }

    fn verifies(&self, payload: &[u8], signature: &DerSignature) -> bool {
        self.0
            .iter()
            .any(|key| key.verify(payload, signature).is_ok())
    }
}

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
    let mut candidates: Vec<String> = Vec::new();
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
            Some(referrers) => candidates.extend(
                referrers
                    .into_iter()
                    .filter(|r| r.artifact_type.as_deref() == Some(COSIGN_SIGNATURE))
                    .map(|r| r.digest),
            ),
        }
    }
    if candidates.is_empty() {
        return Ok(Some(
            "unsigned: no cosign signature (neither a sha256-<hex>.sig tag nor one in the referrers API)".into(),
        ));
    }
    let mut reason = String::from("unsigned: the signature manifests hold no cosign signature");
    let mut examined = 0;
    for candidate in candidates {
        let signature_manifest = Digest::parse(&candidate).map_err(listing("a signature"))?;
        let (reference, manifest) = source
            .manifest_by_digest(&repo.name, &signature_manifest)
            .await
            .map_err(listing("a signature"))?;
        let ManifestContent::Image { layers, .. } = manifest
            .content(&reference.to_string())
            .map_err(listing("a signature"))?
        else {
            continue;
        };
        for layer in layers
            .iter()
            .filter(|l| l.media_type().as_ref() == SIMPLE_SIGNING)
        {
            examined += 1;
            if examined > MAX_SIGNATURES {
                return Ok(Some(reason));
            }
            let Some(encoded) = layer
                .annotations()
                .as_ref()
                .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            else {
                continue;
            };
            let signature = match base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|der| DerSignature::try_from(der.as_slice()).ok())
            {
                Some(signature) => signature,
                None => {
                    reason = "unsigned: a signature is not base64 DER ECDSA".into();
                    continue;
                }
            };
            if layer.size() > MAX_PAYLOAD_BYTES {
                reason = format!("unsigned: a signature payload is {} bytes", layer.size());
                continue;
            }
            let payload_digest =
                Digest::parse(layer.digest().as_ref()).map_err(listing("a signature payload"))?;
            let payload = read_payload(source, repo, &payload_digest)
                .await
                .map_err(listing("a signature payload"))?;
            if Digest::of(&payload) != payload_digest {
                reason = "unsigned: a signature payload does not match its digest".into();
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
                    "unsigned: a signature signs {}, not this image",
                    signed_digest.unwrap_or_else(|| "no image".into())
                );
                continue;
            }
            if keys.verifies(&payload, &signature) {
                return Ok(None);
            }
            reason = "unsigned: no signature verifies with the job's public keys (wrong key, or tampered)".into();
        }
    }
    Ok(Some(reason))
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
        let chunk = chunk.map_err(|source| oci::Error::Transport {
            method: "GET".into(),
            url: url.clone(),
            source,
        })?;
        payload.extend_from_slice(&chunk);
        if payload.len() as u64 > MAX_PAYLOAD_BYTES {
            break;
        }
    }
    Ok(payload)
}

/// The selection as the job's keys allow it: an image no signature verifies for is kept but
/// marked (`SelectedImage::unsigned`, with the reason: reported, never copied); an artifact
/// selected by its tag (`sha256-<hex>.sig`, ...) follows its subject: kept when the subject is
/// signed, dropped otherwise. `images` is the repository's listing, where the `.sig` tags are.
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
    subjects.extend(artifacts.into_iter().filter(|a| {
        a.tags
            .iter()
            .filter_map(|t| artifact_subject(t))
            .any(|subject| signed.contains(&subject))
    }));
    Ok(subjects)
}
