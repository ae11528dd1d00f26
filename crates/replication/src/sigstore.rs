//! Sigstore bundles (`application/vnd.dev.sigstore.bundle.v0.3+json`, what cosign 3 and
//! GitHub's artifact attestations attach through the referrers API), verified offline against
//! the deployment's trusted root with the `sigstore-verify` crate: no call to Fulcio, Rekor or
//! TUF during a run. This module only chooses the policy (which key or identity) and names
//! the outcome; the cryptography (certificate chain, SCT, transparency-log inclusion proof,
//! checkpoint and signed entry timestamp, DSSE and in-toto subject binding) is the crate's.

use std::sync::Arc;

use sigstore_verify::trust_root::{TrustedRoot, SIGSTORE_PRODUCTION_TRUSTED_ROOT};
use sigstore_verify::types::{Bundle, DerPublicKey, SignatureContent};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

use crate::error::{Error, Result};
use crate::keys::SignaturePolicy;

/// The media type (and artifact type) of a Sigstore bundle v0.3 in a registry.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// A bundle larger than this is not read (a keyless bundle with its chain and log entry is a
/// few KiB; an attestation with a large predicate can be more).
pub const MAX_BUNDLE_BYTES: u64 = 512 * 1024;
/// A trusted root larger than this is refused (Sigstore's public one is about 10 KiB).
const MAX_TRUSTED_ROOT_BYTES: usize = 1024 * 1024;

/// Where the deployment's trusted root comes from (`ECR_REPLICATOR_TRUSTED_ROOT`, the CLI's
/// `--trusted-root`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TrustedRootSource {
    /// Sigstore's public-good root (Fulcio, Rekor, CT logs, TSA), as built into the binary.
    #[default]
    Bundled,
    /// A `trusted_root.json` file.
    File(std::path::PathBuf),
    /// An S3 object (`s3://bucket/key`), in the function's region.
    S3 {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
}

impl TrustedRootSource {
    /// `s3://bucket/key`, or a file path; empty is the bundled root.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(TrustedRootSource::Bundled);
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                    Ok(TrustedRootSource::S3 {
                        bucket: bucket.into(),
                        key: key.into(),
                    })
                }
                _ => Err(format!("{text:?}: an S3 location is s3://bucket/key")),
            };
        }
        Ok(TrustedRootSource::File(text.into()))
    }

    /// What it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            TrustedRootSource::Bundled => "Sigstore's public-good trusted root (bundled)".into(),
            TrustedRootSource::File(path) => path.display().to_string(),
            TrustedRootSource::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }
}

/// A trusted root, checked and ready to verify bundles against.
pub struct BundleVerifier {
    verifier: Verifier,
    /// Whether the root has certificate transparency logs: then a certificate must carry an
    /// SCT from one of them (Sigstore's public Fulcio does); a private Fulcio without CT logs
    /// cannot.
    has_ct_logs: bool,
    /// Where it came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleVerifier")
            .field("source", &self.source)
            .finish()
    }
}

impl BundleVerifier {
    /// A verifier over the `trusted_root.json` text; `source` names it in errors.
    pub fn from_json(json: &str, source: &str) -> Result<Self> {
        let invalid = |problem: String| {
            Error::invalid(
                "ECR_REPLICATOR_TRUSTED_ROOT",
                format!("{source}: {problem}"),
            )
        };
        if json.len() > MAX_TRUSTED_ROOT_BYTES {
            return Err(invalid(format!(
                "{} bytes; a trusted root is at most {MAX_TRUSTED_ROOT_BYTES}",
                json.len()
            )));
        }
        let root = TrustedRoot::from_json(json)
            .map_err(|e| invalid(format!("not a Sigstore trusted_root.json: {e}")))?;
        let verifier = Verifier::new(&root)
            .map_err(|e| invalid(format!("its keys or certificates are unusable: {e}")))?;
        Ok(BundleVerifier {
            verifier,
            has_ct_logs: !root.ctlogs.is_empty(),
            source: source.to_string(),
        })
    }

    /// The verifier for `source`, read once (the caller keeps it).
    pub async fn load(
        source: &TrustedRootSource,
        aws: &ecr::AwsSettings,
    ) -> Result<Arc<BundleVerifier>> {
        let name = source.describe();
        let json = match source {
            TrustedRootSource::Bundled => SIGSTORE_PRODUCTION_TRUSTED_ROOT.to_string(),
            TrustedRootSource::File(path) => {
                tokio::fs::read_to_string(path).await.map_err(|e| {
                    Error::invalid(
                        "ECR_REPLICATOR_TRUSTED_ROOT",
                        format!("cannot read {name}: {e}"),
                    )
                })?
            }
            TrustedRootSource::S3 { bucket, key } => {
                let bucket = ecr::WorkBucket::new(aws, &ecr::own_region(), bucket.clone()).await;
                let bytes = bucket
                    .get(key)
                    .await
                    .map_err(|source| Error::Aws {
                        context: format!("reading the Sigstore trusted root {name}"),
                        source,
                    })?
                    .ok_or_else(|| {
                        Error::invalid(
                            "ECR_REPLICATOR_TRUSTED_ROOT",
                            format!("{name}: no such object"),
                        )
                    })?;
                String::from_utf8(bytes).map_err(|_| {
                    Error::invalid("ECR_REPLICATOR_TRUSTED_ROOT", format!("{name}: not UTF-8"))
                })?
            }
        };
        Ok(Arc::new(BundleVerifier::from_json(&json, &name)?))
    }

    /// Who of `policy` signed the image `digest` (`sha256:<hex>`) with this bundle (JSON):
    /// `Ok` names the key or identity that admitted it, `Err` says why none did.
    pub fn admitted_by(
        &self,
        bundle_json: &[u8],
        digest: &str,
        policy: &SignaturePolicy,
    ) -> std::result::Result<String, String> {
        let text = std::str::from_utf8(bundle_json).map_err(|_| "a bundle that is not UTF-8")?;
        let bundle = Bundle::from_json(text).map_err(|e| format!("not a Sigstore bundle: {e}"))?;
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or("only sha256 images are verified against bundles")?;
        let artifact = sigstore_verify::types::Sha256Hash::from_hex(hex)
            .map_err(|e| format!("image digest {digest}: {e}"))?;
        let what = match &bundle.content {
            SignatureContent::DsseEnvelope(_) => "DSSE bundle",
            _ => "bundle",
        };
        if bundle.signing_certificate().is_some() {
            if policy.identities.is_empty() {
                return Err(format!(
                    "a keyless {what}, and the job trusts no identities (requireSignature.identities)"
                ));
            }
            // Verified once (chain, SCT, log proof, signature, subject), then its identity and
            // issuer matched against each rule: a bundle costs one verification whatever the
            // number of identities.
            let mut rule = VerificationPolicy::any_identity();
            if !self.has_ct_logs {
                rule = rule.skip_sct();
            }
            let result = self
                .verifier
                .verify(artifact, &bundle, &rule)
                .map_err(|e| {
                    format!(
                        "a keyless {what} that does not verify: {}",
                        crate::text::truncate_chars(&e.to_string(), 300)
                    )
                })?;
            if !result.certificate_verified() {
                return Err(format!(
                    "a keyless {what} whose certificate was not verified"
                ));
            }
            let subject = result.identity().map(|s| s.as_str()).unwrap_or_default();
            let issuer = result.issuer().unwrap_or_default();
            if let Some(identity) = policy
                .identities
                .iter()
                .find(|i| i.issuer == issuer && i.subject.matches(subject))
            {
                return Ok(format!("{} ({subject}, issuer {issuer})", identity.name));
            }
            return Err(format!(
                "a keyless {what} by {} (issuer {}), which none of requireSignature.identities allows",
                crate::text::truncate_chars(subject, 200),
                crate::text::truncate_chars(issuer, 100)
            ));
        }
        if policy.keys.iter().next().is_none() {
            return Err(format!(
                "a {what} signed with a key, and the job trusts no keys (requireSignature.publicKeys)"
            ));
        }
        // A key's signature needs no time proof; log entries it carries must verify.
        let mut reasons: Vec<String> = Vec::new();
        let logged = !bundle.verification_material.tlog_entries.is_empty();
        for key in policy.keys.iter() {
            let mut rule = PublicKeyVerificationPolicy::new(DerPublicKey::new(key.der().to_vec()));
            if !logged {
                rule = rule.skip_tlog_unsafe();
            }
            match self.verifier.verify(artifact, &bundle, &rule) {
                Ok(_) => return Ok(key.name.clone()),
                Err(e) => reasons.push(crate::text::truncate_chars(&e.to_string(), 300)),
            }
        }
        reasons.dedup();
        Err(format!(
            "a {what} that does not verify: {}",
            reasons.join("; ")
        ))
    }
}
