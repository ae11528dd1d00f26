//! Promotion receipts: when a run promotes an image under `requireSignature` and the deployment
//! names a KMS key (`ECR_REPLICATOR_RECEIPT_KEY`), the destination image gets a signed in-toto
//! statement saying where it came from, what admitted it and which run copied it. The statement
//! is a DSSE envelope signed by `kms:Sign` (ECDSA P-256, SHA-256), attached as an OCI 1.1
//! referrer of the image (artifact type `application/vnd.dsse.envelope.v1+json`, one layer of
//! that type annotated with its `predicateType`), listed in the `sha256-<hex>` fallback index
//! where the destination has no referrers API. A consumer verifies it with the key's public key
//! and requires "this image came through the promotion pipeline".

use base64::Engine;
use oci::manifest::OCI_MANIFEST;
use oci::{Digest, Manifest, RegistryClient, Repository};
use serde_json::json;

use crate::error::{Error, Result};
use crate::trust::{Admission, Signer};

/// The receipt's in-toto predicate type.
pub const RECEIPT_PREDICATE: &str = "urn:ecr-replicator:promotion:v1";
/// The media type (and artifact type) of a DSSE envelope in a registry.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The payload type of an in-toto statement in DSSE.
pub(crate) const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The empty config of an OCI artifact.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// Characters of a free-text field (what admitted the image, the run) kept in a receipt, so
/// the signed message stays far below KMS's 4,096 bytes.
const MAX_FIELD_CHARS: usize = 400;

/// Where the receipt's signature comes from: a KMS key in the functions, anything that signs
/// ECDSA P-256 SHA-256 (DER) elsewhere.
#[async_trait::async_trait]
pub trait ReceiptSigner: Send + Sync + std::fmt::Debug {
    /// The key's name, as the envelope's `keyid` (a KMS key ARN).
    fn key_id(&self) -> &str;
    /// The DER ECDSA signature of `message`.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
    /// The key's public key as SubjectPublicKeyInfo DER (its fingerprint is the SHA-256 of it).
    async fn public_key(&self) -> Result<Vec<u8>>;
}

#[async_trait::async_trait]
impl ReceiptSigner for ecr::KmsSigner {
    fn key_id(&self) -> &str {
        self.key_arn()
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        ecr::KmsSigner::sign(self, message)
            .await
            .map_err(|source| Error::Aws {
                context: format!("signing with {}", self.key_arn()),
                source,
            })
    }

    async fn public_key(&self) -> Result<Vec<u8>> {
        ecr::KmsSigner::public_key(self)
            .await
            .map_err(|source| Error::Aws {
                context: format!("reading the public key of {}", self.key_arn()),
                source,
            })
    }
}

/// One promotion: the image as the source had it and as the destination now holds it.
#[derive(Debug, Clone)]
pub struct Promotion<'a> {
    /// Source registry host.
    pub source_registry: &'a str,
    /// Source repository.
    pub source_repository: &'a str,
    /// The source's digest (what the signature covers).
    pub source_digest: &'a Digest,
    /// Where it was put.
    pub target: &'a Repository,
    /// The top manifest as put (its digest differs from the source's for a platform subset).
    pub manifest: &'a Manifest,
    /// What admitted it, per deployment policy: the policy's name and digest, the signer, the
    /// signature ([`certified_admissions`]).
    pub admitted_by: &'a [Certified],
    /// The run: the Step Functions execution ARN, or the CLI.
    pub run: &'a str,
}

/// The in-toto statement of a promotion (JSON), at `time` (RFC 3339).
pub fn statement(promotion: &Promotion<'_>, time: &str) -> Vec<u8> {
    let hex = |d: &Digest| d.as_str().trim_start_matches("sha256:").to_string();
    let short = |text: &str| crate::text::truncate_chars(text, MAX_FIELD_CHARS);
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{
            "name": format!("{}/{}", promotion.target.registry, promotion.target.name),
            "digest": {"sha256": hex(&promotion.manifest.digest)}
        }],
        "predicateType": RECEIPT_PREDICATE,
        "predicate": {
            "source": {
                "registry": promotion.source_registry,
                "repository": promotion.source_repository,
                "digest": promotion.source_digest.as_str()
            },
            "admittedBy": promotion.admitted_by.iter().map(Certified::to_json).collect::<Vec<_>>(),
            "run": short(promotion.run),
            "promotedAt": time
        }
    });
    serde_json::to_vec(&statement).unwrap_or_default()
}

/// One admission a receipt certifies: the deployment's policy (name and the SHA-256 of its
/// canonical JSON) and what the gate verified under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// The policy's name in the deployment's `trustPolicies`.
    pub policy: String,
    /// `sha256:<hex>` of the policy's canonical JSON.
    pub policy_digest: String,
    /// What admitted the image under it.
    pub admission: Admission,
}

impl Certified {
    fn to_json(&self) -> serde_json::Value {
        let signer = match &self.admission.signer {
            Signer::Key { fingerprint, .. } => {
                json!({"publicKey": {"sha256": fingerprint.trim_start_matches("sha256:")}})
            }
            Signer::Identity {
                subject, issuer, ..
            } => {
                json!({"identity": {"subject": crate::text::truncate_chars(subject, MAX_FIELD_CHARS), "issuer": crate::text::truncate_chars(issuer, MAX_FIELD_CHARS)}})
            }
        };
        let mut entry = json!({
            "policy": {"name": self.policy, "sha256": self.policy_digest.trim_start_matches("sha256:")},
            "signature": self.admission.signature,
        });
        if let (Some(entry), Some(signer)) = (entry.as_object_mut(), signer.as_object()) {
            entry.extend(signer.clone());
        }
        entry
    }
}

/// The admissions of a `signedBy` line a receipt may certify: every one must be under a policy
/// the deployment defines (`digest_of` gives its digest by name). `None` when the line names the
/// job's own keys or identities, or anything else: no receipt then.
pub fn certified_admissions(
    signed_by: &str,
    digest_of: impl Fn(&str) -> Option<String>,
) -> Option<Vec<Certified>> {
    Admission::parse_line(signed_by)?
        .into_iter()
        .map(|admission| {
            let name = admission.policy.strip_prefix("policy ")?.to_string();
            Some(Certified {
                policy_digest: digest_of(&name)?,
                policy: name,
                admission,
            })
        })
        .collect()
}

/// DSSE's pre-authentication encoding of an in-toto payload.
pub(crate) fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {IN_TOTO} {} ", IN_TOTO.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The DSSE envelope (JSON) of an in-toto `payload` signed by `signer`: the one signing path
/// of receipts and transfer statements.
pub(crate) async fn sign_envelope(
    signer: &dyn ReceiptSigner,
    payload: &[u8],
) -> Result<bytes::Bytes> {
    let signature = signer.sign(&pae(payload)).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(bytes::Bytes::from(
        serde_json::to_vec(&json!({
            "payloadType": IN_TOTO,
            "payload": b64.encode(payload),
            "signatures": [{"keyid": signer.key_id(), "sig": b64.encode(&signature)}]
        }))
        .unwrap_or_default(),
    ))
}

/// Signs the promotion's receipt and attaches it to the image in `promotion.target`; returns
/// the referrer manifest put there (by digest, with no tag).
pub async fn attach_receipt(
    client: &RegistryClient,
    signer: &dyn ReceiptSigner,
    promotion: &Promotion<'_>,
) -> Result<Manifest> {
    let time = jiff::Timestamp::now().to_string();
    let payload = statement(promotion, &time);
    let envelope = sign_envelope(signer, &payload).await?;
    let config = bytes::Bytes::from_static(b"{}");
    let failed = |source| Error::Registry {
        image: format!(
            "{}@{} (promotion receipt)",
            promotion.target, promotion.manifest.digest
        ),
        source,
    };
    for blob in [&config, &envelope] {
        oci::put_small_blob(client, promotion.target, blob.clone())
            .await
            .map_err(failed)?;
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": DSSE_MEDIA_TYPE,
        "config": {"mediaType": EMPTY_CONFIG, "digest": Digest::of(&config).as_str(), "size": config.len()},
        "layers": [{
            "mediaType": DSSE_MEDIA_TYPE,
            "digest": Digest::of(&envelope).as_str(),
            "size": envelope.len(),
            "annotations": {"predicateType": RECEIPT_PREDICATE}
        }],
        "subject": {
            "mediaType": promotion.manifest.media_type,
            "digest": promotion.manifest.digest.as_str(),
            "size": promotion.manifest.bytes.len()
        },
        "annotations": {"org.opencontainers.image.created": time}
    });
    let bytes = bytes::Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
    let receipt = Manifest {
        digest: Digest::of(&bytes),
        media_type: OCI_MANIFEST.into(),
        bytes,
    };
    client
        .put_manifest(promotion.target, receipt.digest.as_str(), &receipt)
        .await
        .map_err(failed)?;
    Ok(receipt)
}
