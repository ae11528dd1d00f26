//! Signing with an asymmetric KMS key (`ECC_NIST_P256`, `SIGN_VERIFY`): the private key never
//! leaves KMS. `kms:Sign` with `ECDSA_SHA_256` and message type `RAW` signs at most 4,096 bytes
//! (AWS KMS API Reference, "Sign": "You can submit messages of up to 4096 bytes"); the signature
//! is DER-encoded ECDSA.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{MessageType, SigningAlgorithmSpec};

use crate::aws::{sdk_config, AwsSettings};
use crate::error::{Error, Result};

/// The most bytes `kms:Sign` signs as a raw message.
pub const MAX_RAW_MESSAGE_BYTES: usize = 4096;

/// A KMS key ARN: `arn:PARTITION:kms:REGION:ACCOUNT:key/KEY-ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KmsKeyArn {
    /// The ARN text.
    pub arn: String,
    /// The key's region (where the client goes).
    pub region: String,
}

impl KmsKeyArn {
    /// Parses a key ARN; the error says what is wrong with it.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let shape = "must be arn:PARTITION:kms:REGION:ACCOUNT:key/KEY-ID";
        let parts: Vec<&str> = text.trim().splitn(6, ':').collect();
        let region = crate::aws::arn_region(&parts, "kms", shape)?;
        let Some(id) = parts[5].strip_prefix("key/") else {
            return Err(format!("{shape} (an alias is not accepted: name the key)"));
        };
        if id.is_empty()
            || id.len() > 128
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("{shape} (the key id {id:?} is not one)"));
        }
        Ok(KmsKeyArn {
            arn: text.trim().to_string(),
            region: region.to_string(),
        })
    }
}

/// Signs with one KMS key under the process's own identity.
#[derive(Debug, Clone)]
pub struct KmsSigner {
    client: aws_sdk_kms::Client,
    key: KmsKeyArn,
}

impl KmsSigner {
    /// A signer for `key`, in its region.
    pub async fn new(settings: &AwsSettings, key: KmsKeyArn) -> Self {
        let config = sdk_config(settings, &key.region, None).await;
        KmsSigner {
            client: aws_sdk_kms::Client::new(&config),
            key,
        }
    }

    /// The key's ARN.
    pub fn key_arn(&self) -> &str {
        &self.key.arn
    }

    /// The key's public key as SubjectPublicKeyInfo DER (`kms:GetPublicKey`).
    pub async fn public_key(&self) -> Result<Vec<u8>> {
        let answer = self
            .client
            .get_public_key()
            .key_id(&self.key.arn)
            .send()
            .await
            .map_err(|e| Error::api("kms:GetPublicKey", self.key.arn.clone(), &e))?;
        answer
            .public_key
            .map(Blob::into_inner)
            .ok_or_else(|| Error::Api {
                code: None,
                operation: "kms:GetPublicKey",
                resource: self.key.arn.clone(),
                message: "the answer holds no public key".into(),
                retryable: true,
            })
    }

    /// The DER ECDSA P-256 SHA-256 signature of `message` (at most `MAX_RAW_MESSAGE_BYTES`).
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        if message.len() > MAX_RAW_MESSAGE_BYTES {
            return Err(Error::Api {
                code: None,
                operation: "kms:Sign",
                resource: self.key.arn.clone(),
                message: format!(
                    "a message of {} bytes; KMS signs at most {MAX_RAW_MESSAGE_BYTES}",
                    message.len()
                ),
                retryable: false,
            });
        }
        let signed = self
            .client
            .sign()
            .key_id(&self.key.arn)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| Error::api("kms:Sign", self.key.arn.clone(), &e))?;
        signed
            .signature
            .map(Blob::into_inner)
            .ok_or_else(|| Error::Api {
                code: None,
                operation: "kms:Sign",
                resource: self.key.arn.clone(),
                message: "the answer holds no signature".into(),
                retryable: true,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_arns_are_parsed_and_aliases_and_other_services_refused() {
        let key = KmsKeyArn::parse("arn:aws-cn:kms:cn-north-1:111111111111:key/1234abcd-12ab")
            .expect("a key ARN");
        assert_eq!(key.region, "cn-north-1");
        for (text, says) in [
            (
                "arn:aws:kms:us-east-1:111111111111:alias/receipts",
                "an alias",
            ),
            (
                "arn:aws:secretsmanager:us-east-1:111111111111:key/x",
                "must be arn:",
            ),
            ("arn:aws:kms:US-EAST-1:111111111111:key/x", "region"),
            ("arn:aws:kms:us-east-1:1111:key/x", "12 digits"),
            ("arn:aws:kms:us-east-1:111111111111:key/a b", "key id"),
        ] {
            let problem = KmsKeyArn::parse(text).expect_err(text);
            assert!(problem.contains(says), "{text}: {problem}");
        }
    }
}
