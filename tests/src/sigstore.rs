//! A private Sigstore instance for the tests: a certificate authority standing for Fulcio, a
//! transparency log key standing for Rekor, and the `trusted_root.json` naming them; it signs
//! images the way cosign 3 does (a Sigstore bundle v0.3 holding a DSSE envelope whose in-toto
//! statement names the image digest) with keyless certificates or with a key, and logs them
//! (a hashedrekord entry with its inclusion proof, signed checkpoint and signed entry
//! timestamp). Written from the formats' specifications (the Sigstore bundle and trusted root
//! protobuf-JSON, Rekor's entry and checkpoint formats), independent of the code under test.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The in-toto statement type and DSSE payload type cosign 3 signs images with.
const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The predicate type of a cosign 3 image signature.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// Fulcio's OIDC issuer extension (v2: a DER UTF8String).
const FULCIO_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];
/// The log's origin line in its checkpoints.
const LOG_ORIGIN: &str = "rekor.test.invalid - 1";

/// A keyless signature's certificate and log entry, as the test wants them.
#[derive(Debug, Clone)]
pub struct Keyless<'a> {
    /// The certificate's identity (its URI subject alternative name).
    pub subject: &'a str,
    /// The OIDC issuer the certificate names.
    pub issuer: &'a str,
    /// When the certificate is valid (seconds since the epoch): Fulcio's last 10 minutes.
    pub valid_from: i64,
    /// Whether the signature is in the log (with proof); without, nothing proves when it was
    /// made.
    pub logged: bool,
}

impl<'a> Keyless<'a> {
    /// A certificate for `subject` from `issuer`, valid for the 10 minutes from an hour ago
    /// (long expired, as Fulcio's always are when verified later), logged while valid.
    pub fn new(subject: &'a str, issuer: &'a str) -> Self {
        Keyless {
            subject,
            issuer,
            valid_from: now() - 3600,
            logged: true,
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The private instance: its CA and log keys, and the trusted root naming them.
pub struct PrivateSigstore {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_der: Vec<u8>,
    log_key: SigningKey,
    log_spki: Vec<u8>,
}

impl Default for PrivateSigstore {
    fn default() -> Self {
        Self::new()
    }
}

impl PrivateSigstore {
    /// A new instance with fresh keys.
    pub fn new() -> Self {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "ecr-replicator tests");
        name.push(DnType::CommonName, "test-fulcio");
        ca_params.distinguished_name = name;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        ca_params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let ca_der = ca_params.self_signed(&ca_key).unwrap().der().to_vec();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        let log_key = SigningKey::from_slice(&crate::image::pseudo_random(seed, 32)).unwrap();
        let log_spki = log_key
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec();
        PrivateSigstore {
            ca_key,
            ca_params,
            ca_der,
            log_key,
            log_spki,
        }
    }

    /// `trusted_root.json` naming this instance's CA and log (no CT log, no TSA).
    pub fn trusted_root(&self) -> String {
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.test.invalid",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(&self.log_spki),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2020-01-01T00:00:00Z"}
                },
                "logId": {"keyId": B64.encode(Sha256::digest(&self.log_spki))}
            }],
            "certificateAuthorities": [{
                "subject": {"organization": "ecr-replicator tests", "commonName": "test-fulcio"},
                "uri": "https://fulcio.test.invalid",
                "certChain": {"certificates": [{"rawBytes": B64.encode(&self.ca_der)}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"}
            }],
            "ctlogs": [],
            "timestampAuthorities": []
        })
        .to_string()
    }

    /// Writes the trusted root into `dir`; returns its path.
    pub fn write_trusted_root(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("trusted_root.json");
        std::fs::write(&path, self.trusted_root()).unwrap();
        path
    }

    /// A keyless bundle signing the image `digest` (`sha256:<hex>`), as cosign 3 makes it in
    /// CI: a Fulcio certificate for `who`, the DSSE signature by its ephemeral key, and (if
    /// `who.logged`) the log entry made while the certificate was valid.
    pub fn keyless_bundle(&self, digest: &str, who: &Keyless<'_>) -> Vec<u8> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(who.subject.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.not_before = time_at(who.valid_from);
        params.not_after = time_at(who.valid_from + 600);
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            FULCIO_ISSUER_V2,
            der_utf8_string(who.issuer),
        )];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&leaf_key, &issuer).unwrap();
        let signer = SigningKey::from_pkcs8_der(&leaf_key.serialize_der()).unwrap();
        let verification = json!({"certificate": {"rawBytes": B64.encode(cert.der())}});
        self.bundle(
            digest,
            &signer,
            verification,
            who.logged.then(|| (cert.pem(), who.valid_from + 60)),
        )
    }

    /// A bundle signing the image `digest` with `key` (cosign 3's `sign --key`), logged a
    /// minute ago.
    pub fn key_bundle(&self, digest: &str, key: &SigningKey) -> Vec<u8> {
        let verification = json!({"publicKey": {"hint": "test-key"}});
        let pem = key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        self.bundle(digest, key, verification, Some((pem, now() - 60)))
    }

    /// An instance with its own CA and this one's log: its certificates do not chain to this
    /// one's root, though its log entries verify.
    pub fn with_another_ca(&self) -> Self {
        let other = PrivateSigstore::new();
        PrivateSigstore {
            log_key: self.log_key.clone(),
            log_spki: self.log_spki.clone(),
            ..other
        }
    }

    /// The bundle: a DSSE envelope over the in-toto statement naming `digest`, signed by
    /// `signer`; with `logged` (the signer's PEM, the time), a log entry of it.
    fn bundle(
        &self,
        digest: &str,
        signer: &SigningKey,
        mut verification: Value,
        logged: Option<(String, i64)>,
    ) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "registry.example/app", "digest": {"sha256": hex}}],
            "predicateType": COSIGN_SIGN_PREDICATE,
            "predicate": {}
        })
        .to_string();
        let pae = pae(IN_TOTO, statement.as_bytes());
        let signature: Signature = signer.sign(&pae);
        let signature = signature.to_der().as_bytes().to_vec();
        let envelope = json!({
            "payload": B64.encode(statement.as_bytes()),
            "payloadType": IN_TOTO,
            "signatures": [{"sig": B64.encode(&signature), "keyid": ""}]
        });
        if let Some((pem, integrated)) = logged {
            // A `dsse` v0.0.1 entry, as Rekor v1 records a DSSE envelope. Keys in sorted
            // order: Rekor stores canonical JSON.
            let body = json!({
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(envelope.to_string()))},
                    "payloadHash": {"algorithm": "sha256", "value": hex::encode(Sha256::digest(statement.as_bytes()))},
                    "signatures": [{"signature": B64.encode(&signature), "verifier": B64.encode(pem)}]
                }
            });
            verification["tlogEntries"] = json!([self.log_entry(&body.to_string(), integrated)]);
        }
        serde_json::to_vec(&json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": verification,
            "dsseEnvelope": envelope
        }))
        .unwrap()
    }

    /// The log entry of `body` (the only one of a log of size 1): the signed entry timestamp
    /// over it, and the inclusion proof with a signed checkpoint.
    fn log_entry(&self, body: &str, integrated: i64) -> Value {
        let log_id = Sha256::digest(&self.log_spki);
        let set_payload = format!(
            r#"{{"body":"{}","integratedTime":{integrated},"logID":"{}","logIndex":0}}"#,
            B64.encode(body),
            hex::encode(log_id)
        );
        let set: Signature = self.log_key.sign(set_payload.as_bytes());
        // RFC 6962 leaf hash; a tree of one leaf has it as its root, and an empty proof.
        let mut leaf = Sha256::new();
        leaf.update([0u8]);
        leaf.update(body.as_bytes());
        let root = leaf.finalize();
        let note = format!("{LOG_ORIGIN}\n1\n{}\n", B64.encode(root));
        let note_signature: Signature = self.log_key.sign(note.as_bytes());
        let mut signed = Sha256::digest(&self.log_spki)[..4].to_vec();
        signed.extend_from_slice(note_signature.to_der().as_bytes());
        let origin_name = LOG_ORIGIN.split(' ').next().unwrap_or(LOG_ORIGIN);
        let envelope = format!("{note}\n\u{2014} {origin_name} {}\n", B64.encode(signed));
        json!({
            "logIndex": "0",
            "logId": {"keyId": B64.encode(log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": integrated.to_string(),
            "inclusionPromise": {"signedEntryTimestamp": B64.encode(set.to_der().as_bytes())},
            "inclusionProof": {
                "logIndex": "0",
                "rootHash": B64.encode(root),
                "treeSize": "1",
                "hashes": [],
                "checkpoint": {"envelope": envelope}
            },
            "canonicalizedBody": B64.encode(body)
        })
    }
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DER UTF8String (short form: the issuers here are under 128 bytes).
fn der_utf8_string(text: &str) -> Vec<u8> {
    assert!(text.len() < 128);
    let mut out = vec![0x0c, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

fn time_at(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).unwrap()
}
