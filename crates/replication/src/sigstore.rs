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
use crate::trust::Signer;

/// The media type (and artifact type) of a Sigstore bundle v0.3 in a registry.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// A bundle larger than this is not read (a keyless bundle with its chain and log entry is a
/// few KiB; an attestation with a large predicate can be more).
pub const MAX_BUNDLE_BYTES: u64 = 512 * 1024;
/// A trusted root larger than this is refused (Sigstore's public one is about 10 KiB).
const MAX_TRUSTED_ROOT_BYTES: usize = 1024 * 1024;
/// How long a warm function uses a trusted root read from S3 before it reads it again: a root
/// replaced there (a key rotated out, a CA removed) is in force within this.
pub const TRUSTED_ROOT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// The setting that pins the trusted root's sha256.
pub const SHA256_VARIABLE: &str = "ECR_REPLICATOR_TRUSTED_ROOT_SHA256";
/// The setting naming the account that must own the trusted root's bucket.
pub const BUCKET_OWNER_VARIABLE: &str = "ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER";
/// The setting that accepts a trusted root without certificate transparency logs.
pub const ALLOW_NO_CT_VARIABLE: &str = "ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT";

/// How the deployment's trusted root is checked and kept: whatever its source, a root that
/// fails a check verifies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedRootPolicy {
    /// The sha256 its bytes must have, `sha256:<hex>` (`ECR_REPLICATOR_TRUSTED_ROOT_SHA256`, the
    /// CLI's `--trusted-root-sha256`); none: any.
    pub sha256: Option<String>,
    /// The account that must own an S3 root's bucket (`ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER`,
    /// `--trusted-root-bucket-owner`); none: the process's own account (STS
    /// `GetCallerIdentity`), a function's being the deployment's.
    pub bucket_owner: Option<String>,
    /// Accept a root that lists no certificate transparency log (`ctlogs`), which turns off the
    /// SCT check of keyless certificates (`ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT=true`,
    /// `--trusted-root-allow-no-ct`): a private Fulcio without CT. Refused otherwise.
    pub allow_no_ct_logs: bool,
    /// How long a root read from S3 is used before it is read again (`TRUSTED_ROOT_MAX_AGE`).
    pub max_age: std::time::Duration,
}

impl Default for TrustedRootPolicy {
    fn default() -> Self {
        TrustedRootPolicy {
            sha256: None,
            bucket_owner: None,
            allow_no_ct_logs: false,
            max_age: TRUSTED_ROOT_MAX_AGE,
        }
    }
}

impl TrustedRootPolicy {
    /// A sha256 pin: `sha256:<hex>` or the 64 hex digits alone; empty is none.
    pub fn parse_sha256(text: &str) -> std::result::Result<Option<String>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{text:?} is not a sha256 digest (64 hex digits, optionally after sha256:)"
            ));
        }
        Ok(Some(format!("sha256:{}", hex.to_ascii_lowercase())))
    }

    /// An AWS account id (12 digits); empty is none.
    pub fn parse_account(text: &str) -> std::result::Result<Option<String>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() != 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{text:?} is not an AWS account id (12 digits)"));
        }
        Ok(Some(text.to_string()))
    }

    /// `true` or `false` (empty: `false`).
    pub fn parse_flag(text: &str) -> std::result::Result<bool, String> {
        match text.trim() {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            other => Err(format!("{other:?} is neither true nor false")),
        }
    }
}

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
    /// cannot, and its root is taken only where the deployment allows it.
    has_ct_logs: bool,
    /// Where it came from, for messages.
    pub source: String,
    /// The sha256 of the root's bytes, `sha256:<hex>`.
    pub sha256: String,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleVerifier")
            .field("source", &self.source)
            .finish()
    }
}

impl BundleVerifier {
    /// A verifier over the `trusted_root.json` text, after `policy`'s checks: its sha256 when
    /// pinned, and certificate transparency logs unless allowed without; `source` names it in
    /// errors.
    pub fn from_json(json: &str, source: &str, policy: &TrustedRootPolicy) -> Result<Self> {
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
        let sha256 = oci::Digest::of(json.as_bytes()).to_string();
        if let Some(pinned) = policy.sha256.as_ref().filter(|p| **p != sha256) {
            return Err(Error::invalid(
                SHA256_VARIABLE,
                format!("{source} has sha256 {sha256}, not the pinned {pinned}: refused (a root replaced in its place, or a pin not updated after a rotation)"),
            ));
        }
        let root = TrustedRoot::from_json(json)
            .map_err(|e| invalid(format!("not a Sigstore trusted_root.json: {e}")))?;
        let has_ct_logs = !root.ctlogs.is_empty();
        if !has_ct_logs && !policy.allow_no_ct_logs {
            return Err(Error::invalid(
                ALLOW_NO_CT_VARIABLE,
                format!("{source} lists no certificate transparency log (ctlogs), so a keyless certificate's SCT could not be checked: refused; set {ALLOW_NO_CT_VARIABLE}=true (CDK trustedRootAllowNoCtLogs, CLI --trusted-root-allow-no-ct) where its certificate authorities are trusted without CT (a private Fulcio)"),
            ));
        }
        let verifier = Verifier::new(&root)
            .map_err(|e| invalid(format!("its keys or certificates are unusable: {e}")))?;
        Ok(BundleVerifier {
            verifier,
            has_ct_logs,
            source: source.to_string(),
            sha256,
        })
    }

    /// The verifier for `source` under `policy`, read now (the caller keeps it, and reads an S3
    /// root again after `policy.max_age`). An S3 root is read only from a bucket the expected
    /// account owns (`ExpectedBucketOwner`).
    pub async fn load(
        source: &TrustedRootSource,
        policy: &TrustedRootPolicy,
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
                let owner = match &policy.bucket_owner {
                    Some(account) => account.clone(),
                    None => ecr::own_account(aws).await.map_err(|source| Error::Aws {
                        context: format!("finding the account that must own {name}"),
                        source,
                    })?,
                };
                let bucket = ecr::WorkBucket::new(aws, &ecr::own_region(), bucket.clone()).await;
                let bytes = bucket
                    .get_owned_by(key, &owner)
                    .await
                    .map_err(|source| Error::Aws {
                        context: format!(
                            "reading the Sigstore trusted root {name} (from a bucket account {owner} owns: {BUCKET_OWNER_VARIABLE})"
                        ),
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
        Ok(Arc::new(BundleVerifier::from_json(&json, &name, policy)?))
    }

    /// Who of `policy` signed the image `digest` (`sha256:<hex>`) with this bundle (JSON):
    /// `Ok` names the key or identity that admitted it, `Err` says why none did.
    pub fn admitted_by(
        &self,
        bundle_json: &[u8],
        digest: &str,
        policy: &SignaturePolicy,
    ) -> std::result::Result<Signer, String> {
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
                return Ok(Signer::Identity {
                    rule: identity.name.clone(),
                    subject: subject.to_string(),
                    issuer: issuer.to_string(),
                });
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
                Ok(_) => {
                    return Ok(Signer::Key {
                        rule: key.name.clone(),
                        fingerprint: key.fingerprint.clone(),
                    })
                }
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
