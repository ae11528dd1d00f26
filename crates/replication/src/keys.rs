//! Who a job trusts for `requireSignature`: public keys and keyless signer identities, part of
//! the job's policy and read when the job is validated. Verifying signatures against them is
//! `signatures.rs`, below the job.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};

/// One public key a job trusts, for cosign's legacy signatures (p256) and for Sigstore
/// bundles (the same key, as DER).
#[derive(Debug, Clone)]
pub struct SignatureKey {
    key: VerifyingKey,
    /// The key as SubjectPublicKeyInfo DER, as Sigstore's verifier takes it.
    der: Vec<u8>,
    /// Which key it is in reports: `publicKeys[i]`.
    pub name: String,
    /// `sha256:<hex>` of the key's SubjectPublicKeyInfo DER: what a receipt names.
    pub fingerprint: String,
}

impl SignatureKey {
    /// The key as SubjectPublicKeyInfo DER.
    pub(crate) fn der(&self) -> &[u8] {
        &self.der
    }
}

/// The public keys a job trusts.
#[derive(Debug, Clone, Default)]
pub struct SignatureKeys(Vec<SignatureKey>);

impl SignatureKeys {
    /// Reads PEM public keys (`-----BEGIN PUBLIC KEY-----`, P-256); a problem names the key's
    /// index.
    pub fn parse(pems: &[String]) -> std::result::Result<Self, (usize, String)> {
        pems.iter()
            .enumerate()
            .map(|(i, pem)| {
                let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
                    (i, format!("not a P-256 public key in PEM (as `cosign generate-key-pair` writes cosign.pub): {e}"))
                })?;
                let der = key
                    .to_public_key_der()
                    .map_err(|e| (i, format!("cannot encode the key as DER: {e}")))?
                    .into_vec();
                let fingerprint = oci::Digest::of(&der).as_str().to_string();
                Ok(SignatureKey {
                    key,
                    der,
                    fingerprint,
                    name: format!("publicKeys[{i}]"),
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(SignatureKeys)
    }

    /// The key that verifies `signature` over `payload`, if one does.
    pub(crate) fn verifying(
        &self,
        payload: &[u8],
        signature: &DerSignature,
    ) -> Option<&SignatureKey> {
        self.0
            .iter()
            .find(|k| k.key.verify(payload, signature).is_ok())
    }

    /// Every key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SignatureKey> {
        self.0.iter()
    }
}

/// How a signer's certificate identity (its subject alternative name) must read.
#[derive(Debug, Clone)]
pub enum SubjectMatch {
    /// Exactly this text (cosign's `--certificate-identity`).
    Exact(String),
    /// The whole identity matches this regex (cosign's `--certificate-identity-regexp`, but
    /// always anchored at both ends: a pattern cannot match a part of a hostile identity).
    Pattern(regex::Regex),
}

impl SubjectMatch {
    /// Whether `identity` is one this allows.
    pub fn matches(&self, identity: &str) -> bool {
        match self {
            SubjectMatch::Exact(expected) => identity == expected,
            SubjectMatch::Pattern(pattern) => pattern.is_match(identity),
        }
    }

    /// An anchored pattern: the whole identity must match.
    pub fn pattern(text: &str) -> std::result::Result<Self, String> {
        regex::RegexBuilder::new(&format!("^(?:{text})$"))
            .size_limit(1 << 20)
            .build()
            .map(SubjectMatch::Pattern)
            .map_err(|e| format!("bad regex {text:?}: {e}"))
    }
}

/// A keyless signer a job trusts: a Fulcio certificate issued for an OIDC token of `issuer`
/// whose identity `subject` allows.
#[derive(Debug, Clone)]
pub struct TrustedIdentity {
    /// The OIDC issuer, exactly (cosign's `--certificate-oidc-issuer`).
    pub issuer: String,
    /// The identity's rule.
    pub subject: SubjectMatch,
    /// Which identity it is in reports: `identities[i]`.
    pub name: String,
}

/// Who may sign what a job promotes: any one key or identity will do.
#[derive(Debug, Clone)]
pub struct SignaturePolicy {
    /// Public keys (cosign's `--key`).
    pub keys: SignatureKeys,
    /// Keyless signer identities.
    pub identities: Vec<TrustedIdentity>,
    /// The deployment's policy (its name and digest), or the job's own keys.
    pub source: PolicySource,
}

/// Where a policy comes from, as reports and receipts name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The deployment's policy of this name, with the SHA-256 of its canonical JSON.
    Deployment {
        /// Its name in `trustPolicies`.
        name: String,
        /// `sha256:<hex>` of its canonical JSON (`TrustPolicy::canonical_digest`).
        digest: String,
    },
    /// Keys and identities written in the job (allowed by `allowJobTrustPolicies`): never
    /// certified by a receipt.
    Job,
}

impl PolicySource {
    /// How `signedBy` names it: `policy release` or `job`.
    pub fn label(&self) -> String {
        match self {
            PolicySource::Deployment { name, .. } => format!("policy {name}"),
            PolicySource::Job => "job".into(),
        }
    }
}
