//! Content digests (`sha256:<hex>`) and a hasher that verifies size and digest of streamed bytes.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A validated content digest, `algorithm:hex`. Only sha256 (the one every registry uses) is
/// accepted, so content can always be verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses and validates `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidDigest {
            digest: text.chars().take(80).collect(),
            reason: reason.to_string(),
        };
        let (algorithm, hex) = text
            .split_once(':')
            .ok_or_else(|| invalid("expected algorithm:hex"))?;
        if algorithm != "sha256" {
            return Err(invalid("only sha256 digests are supported"));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("sha256 needs 64 lowercase hex characters"));
        }
        Ok(Digest(text.to_string()))
    }

    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:<hex>` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Digest::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(value: Digest) -> Self {
        value.0
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

/// Hashes bytes as they stream past and checks the total against an expected digest and size.
#[derive(Clone)]
pub struct Verifier {
    hasher: Sha256,
    seen: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// A verifier that has seen nothing.
    pub fn new() -> Self {
        Verifier {
            hasher: Sha256::new(),
            seen: 0,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.seen += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The hash state and byte count, so another process can go on hashing where this one
    /// stopped (a blob copied in segments across Lambda invocations).
    pub fn export(&self) -> VerifierState {
        VerifierState {
            sha256_state: BASE64.encode(self.hasher.serialize().as_slice()),
            seen: self.seen,
        }
    }

    /// Restores a verifier from `export`'s output.
    pub fn import(state: &VerifierState) -> Result<Self> {
        let invalid = || Error::InvalidDigest {
            digest: "<hash state>".into(),
            reason: "the saved hash state is corrupt; restart the blob from the beginning".into(),
        };
        let bytes = BASE64.decode(&state.sha256_state).map_err(|_| invalid())?;
        let serialized =
            SerializedState::<Sha256>::try_from(bytes.as_slice()).map_err(|_| invalid())?;
        let hasher = Sha256::deserialize(&serialized).map_err(|_| invalid())?;
        Ok(Verifier {
            hasher,
            seen: state.seen,
        })
    }

    /// Checks size then digest; `url` names where the bytes came from in the error.
    pub fn check(&self, expected: &Digest, expected_size: u64, url: &str) -> Result<()> {
        if self.seen != expected_size {
            return Err(Error::SizeMismatch {
                url: url.to_string(),
                expected: expected_size,
                actual: self.seen,
            });
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != expected.as_str() {
            return Err(Error::DigestMismatch {
                url: url.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        Ok(())
    }
}

/// A verifier's saved state: sha256 internals and bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifierState {
    /// Base64 of the serialized sha256 state.
    pub sha256_state: String,
    /// Bytes hashed so far.
    pub seen: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_is_the_well_known_one() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:abc",
            "md5:0123",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(Error::InvalidDigest { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_verifier_continues_from_an_exported_state() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut first = Verifier::new();
        first.update(&data[..3333]);
        let state = serde_json::to_string(&first.export()).unwrap();
        let mut second = Verifier::import(&serde_json::from_str(&state).unwrap()).unwrap();
        second.update(&data[3333..]);
        assert!(second
            .check(&Digest::of(&data), data.len() as u64, "u")
            .is_ok());
        let broken = VerifierState {
            sha256_state: "AAAA".into(),
            seen: 1,
        };
        assert!(Verifier::import(&broken).is_err());
    }

    #[test]
    fn verifier_names_size_then_digest() {
        let mut v = Verifier::new();
        v.update(b"hello");
        let right = Digest::of(b"hello");
        assert!(v.check(&right, 5, "u").is_ok());
        assert!(matches!(
            v.check(&right, 6, "u"),
            Err(Error::SizeMismatch { actual: 5, .. })
        ));
        assert!(matches!(
            v.check(&Digest::of(b"world"), 5, "u"),
            Err(Error::DigestMismatch { .. })
        ));
    }
}
