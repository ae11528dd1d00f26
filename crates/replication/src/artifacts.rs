//! What may travel with an image: the tag scheme's names for its artifacts (`sha256-<hex>` for
//! the referrers fallback index, with `.sig`, `.att` and `.sbom` as cosign writes them), and the
//! check that a manifest found there, or listed as a referrer, is an artifact of that image.
//! Below both the signature gate (`signatures.rs`) and the referrer walk (`referrers.rs`).

use std::collections::HashMap;

use futures::StreamExt;
use oci::{Digest, Repository};

use crate::connect::Connection;
use crate::filter::ListedImage;
pub(crate) use crate::tag_scheme::artifact_subject;
pub use crate::tag_scheme::{artifact_tags, fallback_tag};

/// Children of a referrers fallback index checked at most.
const MAX_FALLBACK_CHILDREN: usize = 64;

/// A repository's listing as tag -> digest.
pub(crate) fn digests_by_tag(images: &[ListedImage]) -> HashMap<&str, &str> {
    images
        .iter()
        .flat_map(|i| i.tags.iter().map(|t| (t.as_str(), i.digest.as_str())))
        .collect()
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
                Ok(child) => not_an_artifact_of(source, repo, &child, subject).await,
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
        not_an_artifact_of(source, repo, &top, subject).await
    } else {
        other_subject(&top, subject)
    };
    why.map(|why| format!("{named} {why}; not copied"))
}

/// Why a parsed manifest is not an artifact of `subject`, or `None`.
async fn not_an_artifact_of(
    source: &Connection,
    repo: &Repository,
    manifest: &serde_json::Value,
    subject: &str,
) -> Option<String> {
    if manifest["manifests"].is_array() {
        return Some("is an index (it could list any image), not an artifact".into());
    }
    if let Some(why) = runnable(&RegistryReader { source, repo }, manifest).await {
        return Some(format!(
            "is a runnable image ({why}), not an artifact: the signature covers {}, not it",
            short_digest(subject)
        ));
    }
    other_subject(manifest, subject)
}

/// Config media types of images a runtime runs (OCI image-spec `config.md`, Docker image
/// manifest v2.2).
const IMAGE_CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Config media types of artifacts no runtime runs: the OCI empty descriptor and the types
/// signing, attestation and SBOM tools write. Compared exactly: docker's classic store takes
/// `application/json`, `application/octet-stream`, `""` and any `application/vnd.oci.image.*`
/// or `application/vnd.docker.*` type, in any case, as an image config (moby
/// `distribution/pull_v2.go`), so none of those is on this list.
const ARTIFACT_CONFIG_TYPES: [&str; 3] = [
    "application/vnd.oci.empty.v1+json",
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.dev.cosign.artifact.sbom.v1+json",
];

/// Layer media types known to hold one JSON document (signatures, attestations, SBOMs), never a
/// filesystem; compared exactly.
const JSON_DOCUMENT_TYPES: [&str; 8] = [
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.in-toto+json",
    "application/spdx+json",
    "application/vnd.cyclonedx+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.oci.empty.v1+json",
];

/// A JSON document layer larger than this is not read (and the manifest not let through).
const MAX_DOCUMENT_BYTES: u64 = 512 * 1024;

/// Why a runtime could run `manifest`, or `None` when it is known not to: decided by lists of
/// what is known not to run, never by a list of what runs. Every layer must be of a JSON
/// document type, and the config either an artifact's (no runtime takes it as an image) or an
/// image config whose layers' content, read and checked against its digest, is JSON (cosign's
/// legacy signatures have this shape): a tar or a compressed stream never parses as JSON.
pub(crate) async fn runnable(
    reader: &impl SignatureReader,
    manifest: &serde_json::Value,
) -> Option<String> {
    let empty = Vec::new();
    let layers = manifest["layers"].as_array().unwrap_or(&empty);
    if layers.len() > MAX_FALLBACK_CHILDREN {
        return Some(format!("{} layers", layers.len()));
    }
    for layer in layers {
        let media_type = layer["mediaType"].as_str().unwrap_or_default();
        if !JSON_DOCUMENT_TYPES.contains(&media_type) {
            return Some(format!(
                "a layer of type {:?}, which is not known never to be unpacked",
                crate::text::truncate_chars(media_type, 100)
            ));
        }
    }
    let config = manifest["config"]["mediaType"].as_str().unwrap_or_default();
    if ARTIFACT_CONFIG_TYPES.contains(&config) {
        return None;
    }
    if !IMAGE_CONFIG_TYPES.contains(&config) {
        return Some(format!(
            "a config of type {:?}, which is not known never to be run (docker takes application/json, application/octet-stream and application/vnd.oci.image.* configs as images)",
            crate::text::truncate_chars(config, 100)
        ));
    }
    for layer in layers {
        let media_type = layer["mediaType"].as_str().unwrap_or_default();
        let descriptor: oci::Descriptor = match serde_json::from_value(layer.clone()) {
            Ok(descriptor) => descriptor,
            Err(e) => return Some(format!("an image config and a layer it cannot read: {e}")),
        };
        let content = match reader
            .layer(&descriptor, "document layer", MAX_DOCUMENT_BYTES)
            .await
        {
            Ok(content) => content,
            Err(why) => return Some(format!("an image config and {why}")),
        };
        if let Err(e) = oci::strict_json::check_document(&content) {
            return Some(format!(
                "an image config and a {media_type} layer that is not one unambiguous JSON document: {e}"
            ));
        }
    }
    None
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

/// A small layer's content (a "simple signing" payload, a bundle, an artifact's document), read whole: refused,
/// naming `what`, when its descriptor says more than `limit` bytes, it has no valid digest, it
/// cannot be read, or its bytes (at most `limit` and one chunk are read) do not match its
/// digest.
pub(crate) async fn read_layer(
    source: &Connection,
    repo: &Repository,
    layer: &oci::Descriptor,
    what: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    if layer.size() > limit {
        return Err(format!("a {what} is {} bytes", layer.size()));
    }
    let Ok(digest) = Digest::parse(layer.digest().as_ref()) else {
        return Err(format!("a {what} has no valid digest"));
    };
    let read = async {
        let response = source.client.get_blob(repo, &digest, 0).await?;
        let url = response.url.clone();
        let mut stream = response.into_stream();
        let mut content = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|source| oci::Error::transport("GET", url.clone(), source))?;
            content.extend_from_slice(&chunk);
            if content.len() as u64 > limit {
                break;
            }
        }
        Ok::<_, oci::Error>(content)
    };
    let content = read
        .await
        .map_err(|e| format!("a {what} is unreadable: {e}"))?;
    if Digest::of(&content) != digest {
        return Err(format!("a {what} does not match its digest"));
    }
    Ok(content)
}

/// Where signature manifests and their layers are read: a registry repository, or a layout.
pub(crate) trait SignatureReader {
    /// The manifest `digest`, or why it cannot be read.
    async fn manifest(&self, digest: &Digest) -> std::result::Result<oci::Manifest, String>;
    /// A layer's content, at most `limit` bytes, checked against its digest.
    async fn layer(
        &self,
        layer: &oci::Descriptor,
        what: &str,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, String>;
}

/// Signatures read from a registry repository.
pub(crate) struct RegistryReader<'a> {
    /// The registry.
    pub(crate) source: &'a Connection,
    /// The repository.
    pub(crate) repo: &'a Repository,
}

impl SignatureReader for RegistryReader<'_> {
    async fn manifest(&self, digest: &Digest) -> std::result::Result<oci::Manifest, String> {
        self.source
            .manifest_by_digest(&self.repo.name, digest)
            .await
            .map(|(_, manifest)| manifest)
            .map_err(|e| format!("unreadable: {e}"))
    }

    async fn layer(
        &self,
        layer: &oci::Descriptor,
        what: &str,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        read_layer(self.source, self.repo, layer, what, limit).await
    }
}
