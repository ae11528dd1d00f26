//! The signature gate of a layout copy (issue 35): an export under a trust policy writes only
//! an image one of whose signatures travelling with it verifies, and says what admitted it in
//! the transfer statement; an import under a policy verifies the signatures the layout carries,
//! offline, before it puts anything, and may sign a promotion receipt on the far side.
//!
//! Both sides judge exactly the referrers that travel (`layout_referrers`): the `.sig` tag
//! first, then signature and bundle referrers whose `subject` is the image, with the gate of
//! registry copies (`signatures::judge_candidates`).

use std::sync::Arc;

use futures::StreamExt;
use oci::layout::{self, LayoutStore};
use oci::{BlobRef, Digest, Manifest, Reference, RegistryClient, Repository};

use crate::allowlist::Allowlist;
use crate::artifacts::runnable;
use crate::error::Result;
use crate::keys::SignaturePolicy;
use crate::layout_referrers::LayoutReferrer;
use crate::receipts::{self, ReceiptSigner};
use crate::signatures::{candidate, judge_candidates, Candidate, SignatureGate, SignatureReader};
use crate::sigstore::BundleVerifier;

/// The trust policies a layout copy requires, and the trusted root bundles are verified
/// against.
#[derive(Debug, Clone)]
pub struct LayoutGate {
    gate: SignatureGate,
}

impl LayoutGate {
    /// A gate every image must pass: each of `policies` (the deployment's, by name).
    pub fn new(policies: Vec<SignaturePolicy>, verifier: Arc<BundleVerifier>) -> Self {
        LayoutGate {
            gate: SignatureGate { policies, verifier },
        }
    }

    /// What admitted the image at `digest` (the `signedBy` line), or why nothing did, among
    /// its `referrers` read through `reader`.
    pub(crate) async fn admit(
        &self,
        reader: &impl SignatureReader,
        referrers: &[LayoutReferrer],
        digest: &Digest,
    ) -> std::result::Result<String, String> {
        let candidates = candidates(referrers, digest.as_str());
        judge_candidates(reader, &candidates, 0, digest.as_str(), &self.gate).await
    }
}

/// What may travel with an admitted image at `top`, as with a gated registry copy
/// (`artifacts::runnable`): a referrer that is an index or a runnable image is left behind,
/// with the referrers that refer to it; returns those kept and why each other was refused.
pub(crate) async fn artifacts_only(
    reader: &impl SignatureReader,
    referrers: Vec<LayoutReferrer>,
    top: &Digest,
) -> (Vec<LayoutReferrer>, Vec<String>) {
    let mut kept: Vec<LayoutReferrer> = Vec::new();
    let mut refused = Vec::new();
    for referrer in referrers {
        let digest = referrer.manifest.digest.to_string();
        if referrer.subject != top.as_str()
            && !kept
                .iter()
                .any(|k| k.manifest.digest.as_str() == referrer.subject)
        {
            refused.push(format!(
                "{digest}: refers to {}, which is left behind",
                referrer.subject
            ));
            continue;
        }
        let parsed: serde_json::Value =
            serde_json::from_slice(&referrer.manifest.bytes).unwrap_or_default();
        let why = if parsed["manifests"].is_array() {
            Some("is an index (it could list any image), not an artifact".to_string())
        } else {
            runnable(reader, &parsed)
                .await
                .map(|why| format!("is a runnable image ({why}), not an artifact"))
        };
        match why {
            Some(why) => refused.push(format!("{digest} {why}; not copied")),
            None => kept.push(referrer),
        }
    }
    (kept, refused)
}

/// The signature candidates among an image's referrers: the `.sig` tag first, then signature
/// and bundle referrers naming the image.
fn candidates(referrers: &[LayoutReferrer], digest: &str) -> Vec<Candidate> {
    let of_image = referrers.iter().filter(|r| r.subject == digest);
    let tagged = of_image
        .clone()
        .filter(|r| r.tag.as_deref().is_some_and(|t| t.ends_with(".sig")))
        .map(|r| Candidate {
            digest: r.manifest.digest.to_string(),
            bundle: false,
        });
    let listed = of_image
        .filter(|r| r.tag.is_none())
        .filter_map(|r| candidate(Some(&r.artifact_type), r.manifest.digest.to_string()));
    tagged.chain(listed).collect()
}

/// Bounded read of a blob stream, checked against its digest.
async fn bounded(
    mut stream: layout::BlobStream,
    digest: &Digest,
    what: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let mut content = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("a {what} is unreadable: {e}"))?;
        content.extend_from_slice(&chunk);
        if content.len() as u64 > limit {
            return Err(format!("a {what} is over {limit} bytes"));
        }
    }
    if Digest::of(&content) != *digest {
        return Err(format!("a {what} does not match its digest"));
    }
    Ok(content)
}

fn layer_digest(
    layer: &oci::Descriptor,
    what: &str,
    limit: u64,
) -> std::result::Result<Digest, String> {
    if layer.size() > limit {
        return Err(format!("a {what} is {} bytes", layer.size()));
    }
    Digest::parse(layer.digest().as_ref()).map_err(|_| format!("a {what} has no valid digest"))
}

/// Signatures read from the source registry of an export.
pub(crate) struct SourceReader<'a> {
    /// The source.
    pub(crate) client: &'a RegistryClient,
    /// The image's repository there.
    pub(crate) repo: &'a Repository,
}

impl SignatureReader for SourceReader<'_> {
    async fn manifest(&self, digest: &Digest) -> std::result::Result<Manifest, String> {
        let at = Reference {
            repository: self.repo.clone(),
            tag: None,
            digest: Some(digest.clone()),
        };
        self.client
            .get_manifest(&at)
            .await
            .map_err(|e| format!("unreadable: {e}"))
    }

    async fn layer(
        &self,
        layer: &oci::Descriptor,
        what: &str,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let digest = layer_digest(layer, what, limit)?;
        let response = self
            .client
            .get_blob(self.repo, &digest, 0)
            .await
            .map_err(|e| format!("a {what} is unreadable: {e}"))?;
        let stream = response
            .into_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed();
        bounded(stream, &digest, what, limit).await
    }
}

/// Signatures read from a layout, offline.
pub(crate) struct LayoutReader<'a> {
    /// The layout.
    pub(crate) store: &'a dyn LayoutStore,
}

impl SignatureReader for LayoutReader<'_> {
    async fn manifest(&self, digest: &Digest) -> std::result::Result<Manifest, String> {
        let size = self
            .store
            .blob_size(digest)
            .await
            .map_err(|e| format!("unreadable: {e}"))?
            .ok_or_else(|| format!("not in the layout ({})", self.store.blob_location(digest)))?;
        let blob = BlobRef {
            digest: digest.clone(),
            size,
        };
        layout::read_manifest(self.store, &blob, None)
            .await
            .map_err(|e| format!("unreadable: {e}"))
    }

    async fn layer(
        &self,
        layer: &oci::Descriptor,
        what: &str,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let digest = layer_digest(layer, what, limit)?;
        let stream = self
            .store
            .read_blob(&digest)
            .await
            .map_err(|e| format!("a {what} is unreadable: {e}"))?;
        bounded(stream, &digest, what, limit).await
    }
}

/// Signs the promotion receipt of an image a gated import put in `to` (what admitted it,
/// `signed_by`, certified under the deployment's policies in `allowlist`) and attaches it, listed
/// in the `sha256-<hex>` fallback index where the destination has no referrers API. `None` when
/// the line names no deployment policy (no receipt then, as for registry promotions).
pub async fn sign_import_receipt(
    (target, to): (&RegistryClient, &Reference),
    top: &Manifest,
    signed_by: &str,
    allowlist: &Allowlist,
    signer: &dyn ReceiptSigner,
    (source_registry, source_repository): (&str, &str),
) -> Result<Option<Manifest>> {
    let Some(admitted_by) = receipts::certified_admissions(signed_by, |name| {
        Some(allowlist.trust_policies.get(name)?.canonical_digest())
    }) else {
        return Ok(None);
    };
    let promotion = receipts::Promotion {
        source_registry,
        source_repository,
        source_digest: &top.digest,
        target: &to.repository,
        manifest: top,
        admitted_by: &admitted_by,
        run: "ecr-replicator CLI (layout import)",
    };
    let receipt = receipts::attach_receipt(target, signer, &promotion).await?;
    crate::referrers::write_fallback_indexes(
        target,
        &to.repository,
        std::slice::from_ref(&receipt),
        &[&top.digest],
    )
    .await?;
    Ok(Some(receipt))
}
