//! The keys a job trusts for `requireSignature`: part of the job's policy, read when the job is
//! validated. Verifying signatures with them is `signatures.rs`, below the job.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

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

    /// Whether one of the keys verifies `signature` over `payload`.
    pub(crate) fn verifies(&self, payload: &[u8], signature: &DerSignature) -> bool {
        self.0
            .iter()
            .any(|key| key.verify(payload, signature).is_ok())
    }
}
