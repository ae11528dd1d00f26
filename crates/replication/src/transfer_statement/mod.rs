//! Signed transfer statements (issue 35): an export signed with the deployment's receipt key
//! writes, beside `index.json`, a statement of exactly what the layout holds (every ref name
//! with its repository, tag, manifest digest, media type and size, its manifests, blobs and
//! bytes, its source and what admitted it, and the run), and a DSSE envelope signing it. An
//! import given a key it trusts verifies the envelope and the statement before it reads
//! `index.json` or any blob, then refuses an `index.json` or an image that differs from it.
//!
//! The statement is canonical JSON (object keys sorted, no whitespace). KMS signs at most 4,096
//! bytes as a raw message, and a layout's statement can be larger, so what is signed is a small
//! in-toto statement whose subject is the statement file by SHA-256, in a DSSE envelope, by the
//! receipts' one signing path (`receipts::sign_envelope`).

pub mod referrers;
pub mod trust;

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use oci::layout::{self, LayoutEntry, LayoutIndex, LayoutStore};
use oci::{BlobRef, Digest};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::DerSignature;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::copy::walk_with;
use crate::error::{Error, Result};
use crate::layout_referrers::{layout_referrers, tag_scheme};
use crate::receipts::{self, ReceiptSigner, IN_TOTO};
use crate::transfer_statement::referrers::unstated_referrer;
pub use crate::transfer_statement::referrers::StatementReferrer;
use crate::transfer_statement::trust::vouch;
pub use crate::transfer_statement::trust::TrustedTransferKey;

/// The statement's file at the layout's top.
pub const STATEMENT_FILE: &str = "ecr-replicator-transfer.json";
/// The DSSE envelope signing it, beside it.
pub const SIGNATURE_FILE: &str = "ecr-replicator-transfer.dsse.json";
/// The statement's `_type`, and the signed in-toto statement's `predicateType`.
pub const STATEMENT_TYPE: &str = "https://ecr-replicator.dev/transfer/v1";
/// The signed payload's `_type`.
const IN_TOTO_STATEMENT: &str = "https://in-toto.io/Statement/v1";
/// Largest statement read (as `index.json`).
const MAX_STATEMENT_BYTES: usize = layout::MAX_INDEX_BYTES;
/// Largest envelope read: it signs a digest, not the statement.
const MAX_SIGNATURE_BYTES: usize = 64 * 1024;
/// Signatures of an envelope looked at.
const MAX_SIGNATURES: usize = 8;

/// One image the statement names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatementImage {
    /// The ref name `index.json` gives it (`<repository>:<tag>`, or a bare tag).
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// The repository part of the ref name (empty for a bare tag).
    pub repository: String,
    /// The tag part.
    pub tag: String,
    /// The top manifest's digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Manifests of the image in the layout, the top one included.
    pub manifests: u64,
    /// Distinct config and layer blobs (foreign layers are not in a layout).
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// The image the export read (`registry/repository:tag`); for an image an earlier export
    /// wrote, what that export's statement of the key said.
    pub source: String,
    /// What admitted it (`signedBy` lines of a gated copy); empty when nothing gated it.
    pub admitted_by: Vec<String>,
    /// Its referrers in the layout (signatures, bundles, SBOMs, attestations, receipts), by
    /// digest; an import refuses any other.
    #[serde(default)]
    pub referrers: Vec<StatementReferrer>,
}

/// The run that wrote the statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferRun {
    /// When (RFC 3339, UTC).
    pub exported_at: String,
    /// The tool and its version (`ecr-replicator 0.1.0`).
    pub tool: String,
    /// The image this run exported (`registry/repository:tag`), or for a run of several, how
    /// many and from which registries (`12 images from registry.example.com`).
    pub image: String,
}

/// The statement document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    images: Vec<StatementImage>,
    run: TransferRun,
}

/// What an export knows of the image it wrote, for the statement.
#[derive(Debug, Clone)]
pub struct ExportedImage {
    /// The ref name it was written under.
    pub ref_name: String,
    /// The top manifest's digest this run wrote under it.
    pub digest: String,
    /// The image read (`registry/repository:tag`).
    pub source: String,
    /// What admitted it, when gated.
    pub admitted_by: Vec<String>,
    /// The tool and version writing the statement.
    pub tool: String,
    /// The digests of the referrers this run wrote for it: the only ones of the image the
    /// statement lists besides those an earlier statement of the key listed.
    pub referrers: Vec<String>,
    /// The digests of the blobs this run wrote (checked as written); any other blob of the
    /// layout is hashed before it is signed.
    pub written_blobs: Vec<String>,
}

/// A statement whose signature verified with a trusted key.
#[derive(Debug, Clone)]
pub struct VerifiedStatement {
    /// Its images by ref name.
    pub images: BTreeMap<String, StatementImage>,
    /// The run that wrote it.
    pub run: TransferRun,
    /// The key that signed it (`sha256:<hex>`).
    pub fingerprint: String,
    /// The statement file's digest (what `--statement-digest` pins).
    pub digest: String,
    layout: String,
}

fn refused(store: &dyn LayoutStore, reason: impl Into<String>) -> Error {
    Error::TransferStatement {
        layout: store.location(),
        reason: reason.into(),
    }
}

/// Whether the layout carries a statement or its envelope (at most one byte of each read,
/// nothing parsed).
pub async fn statement_present(store: &dyn LayoutStore) -> bool {
    for name in [SIGNATURE_FILE, STATEMENT_FILE] {
        if !matches!(store.read_file(name, 1).await, Ok(None)) {
            return true;
        }
    }
    false
}

/// Verifies the layout's statement against `key`, reading only the envelope and the statement:
/// the envelope must carry a signature by `key` over an in-toto statement naming the statement
/// file by SHA-256, and the statement file must have that digest and be read strictly (a
/// repeated key, an unknown field, a wrong `_type` refused).
pub async fn verify_statement(
    store: &dyn LayoutStore,
    key: &TrustedTransferKey,
) -> Result<VerifiedStatement> {
    let read = async |name: &str, limit: usize| -> Result<Bytes> {
        store
            .read_file(name, limit)
            .await
            .map_err(|e| refused(store, format!("{name}: {e}")))?
            .ok_or_else(|| {
                refused(
                    store,
                    format!(
                        "the layout has no {name}: it was exported without a receipt key, or \
                         the file was removed; nothing else was read"
                    ),
                )
            })
    };
    let envelope = read(SIGNATURE_FILE, MAX_SIGNATURE_BYTES).await?;
    let signed_digest = verify_envelope(&envelope, key).map_err(|r| refused(store, r))?;
    let bytes = read(STATEMENT_FILE, MAX_STATEMENT_BYTES).await?;
    let actual = Digest::of(&bytes);
    if actual.as_str() != format!("sha256:{signed_digest}") {
        return Err(refused(
            store,
            format!(
                "{STATEMENT_FILE} is {actual}, but the signature covers sha256:{signed_digest}: \
                 it changed after it was signed"
            ),
        ));
    }
    let statement: Statement =
        strict_parse(&bytes).map_err(|r| refused(store, format!("{STATEMENT_FILE}: {r}")))?;
    key.check_pins(&actual, &statement.run.exported_at)
        .map_err(|r| refused(store, r))?;
    if statement.kind != STATEMENT_TYPE {
        return Err(refused(
            store,
            format!(
                "{STATEMENT_FILE}: _type is {}, not {STATEMENT_TYPE}",
                layout::quoted(&statement.kind)
            ),
        ));
    }
    let mut images = BTreeMap::new();
    for image in statement.images {
        let name = image.ref_name.clone();
        if images.insert(name.clone(), image).is_some() {
            return Err(refused(
                store,
                format!("{STATEMENT_FILE} names {name:?} twice"),
            ));
        }
    }
    Ok(VerifiedStatement {
        images,
        run: statement.run,
        fingerprint: key.fingerprint.clone(),
        digest: actual.to_string(),
        layout: store.location(),
    })
}

/// JSON read by the strict rules of manifests (no repeated or case-folded keys), then typed.
fn strict_parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    oci::strict_json::check_document(bytes).map_err(|r| format!("refused: {r}"))?;
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The DSSE envelope checked against `key`: the hex SHA-256 of the statement it signs.
fn verify_envelope(bytes: &[u8], key: &TrustedTransferKey) -> std::result::Result<String, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Envelope {
        payload_type: String,
        payload: String,
        signatures: Vec<Signature>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Signature {
        #[serde(default)]
        keyid: String,
        sig: String,
    }
    let at = SIGNATURE_FILE;
    let envelope: Envelope = strict_parse(bytes).map_err(|r| format!("{at}: {r}"))?;
    if envelope.payload_type != IN_TOTO {
        return Err(format!("{at}: payloadType is not {IN_TOTO}"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(&envelope.payload)
        .map_err(|e| format!("{at}: the payload is not base64: {e}"))?;
    let message = receipts::pae(&payload);
    let verified = envelope.signatures.iter().take(MAX_SIGNATURES).any(|s| {
        b64.decode(&s.sig)
            .ok()
            .and_then(|der| DerSignature::try_from(der.as_slice()).ok())
            .is_some_and(|sig| key.key.verify(&message, &sig).is_ok())
    });
    if !verified {
        let claimed = serde_json::from_slice::<Value>(&payload)
            .ok()
            .and_then(|p| {
                p.pointer("/predicate/publicKey/sha256")
                    .and_then(Value::as_str)
                    .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(|h| format!("sha256:{h}"))
            })
            .unwrap_or_else(|| "an unnamed key".into());
        let keyids: Vec<String> = envelope
            .signatures
            .iter()
            .take(MAX_SIGNATURES)
            .map(|s| crate::text::truncate_chars(&s.keyid, 200))
            .collect();
        return Err(format!(
            "{at}: no signature verifies with the trusted key {} (the envelope says it was \
             signed by {claimed}, key id {keyids:?}; a claim, not checked); nothing else was read",
            key.fingerprint
        ));
    }
    let payload: Value = strict_parse(&payload).map_err(|r| format!("{at}: payload {r}"))?;
    let subject = payload.pointer("/subject/0");
    let checks = [
        payload.get("_type").and_then(Value::as_str) == Some(IN_TOTO_STATEMENT),
        payload.get("predicateType").and_then(Value::as_str) == Some(STATEMENT_TYPE),
        payload
            .get("subject")
            .and_then(Value::as_array)
            .map(Vec::len)
            == Some(1),
        subject.and_then(|s| s.get("name")).and_then(Value::as_str) == Some(STATEMENT_FILE),
    ];
    let hex = subject
        .and_then(|s| s.pointer("/digest/sha256"))
        .and_then(Value::as_str)
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    match (checks.iter().all(|c| *c), hex) {
        (true, Some(hex)) => Ok(hex.to_ascii_lowercase()),
        _ => Err(format!(
            "{at}: the signed payload is not a statement of type {STATEMENT_TYPE} about \
             {STATEMENT_FILE} (a receipt or another signed document is not one)"
        )),
    }
}

impl VerifiedStatement {
    pub(crate) fn refused(&self, reason: String) -> Error {
        Error::TransferStatement {
            layout: self.layout.clone(),
            reason,
        }
    }

    /// Refuses an `index.json` whose images differ from the statement's: a ref name the
    /// statement lacks or one it names missing, another digest, media type or size.
    pub fn check_index(&self, index: &LayoutIndex, path: &str) -> Result<()> {
        let entries = index
            .entries(path)
            .map_err(|e| self.refused(e.to_string()))?;
        self.check_referrer_entries(index, path)?;
        let entries: Vec<LayoutEntry> = entries
            .into_iter()
            .filter(|e| tag_scheme(&e.ref_name).is_none())
            .collect();
        for entry in &entries {
            let Some(stated) = self.images.get(&entry.ref_name) else {
                return Err(self.refused(format!(
                    "index.json names {:?}, which the signed statement does not: added after \
                     the export, not imported",
                    entry.ref_name
                )));
            };
            let listed = (
                stated.digest.as_str(),
                stated.media_type.as_str(),
                stated.size,
            );
            let found = (
                entry.blob.digest.as_str(),
                entry.media_type.as_str(),
                entry.blob.size,
            );
            if listed != found {
                return Err(self.refused(format!(
                    "index.json says {:?} is {} ({}, {} bytes), the signed statement {} ({}, {} \
                     bytes): changed after the export, not imported",
                    entry.ref_name, found.0, found.1, found.2, listed.0, listed.1, listed.2
                )));
            }
        }
        if let Some(missing) = self
            .images
            .keys()
            .find(|name| !entries.iter().any(|e| &&e.ref_name == name))
        {
            return Err(self.refused(format!(
                "the signed statement names {missing:?}, which index.json does not"
            )));
        }
        Ok(())
    }

    /// Refuses an image whose manifests and blobs, as walked from the layout, are not the
    /// statement's count.
    pub(crate) fn check_image(
        &self,
        ref_name: &str,
        manifests: usize,
        blobs: &BTreeMap<Digest, BlobRef>,
    ) -> Result<()> {
        let Some(stated) = self.images.get(ref_name) else {
            return Err(self.refused(format!("the signed statement does not name {ref_name:?}")));
        };
        let bytes: u64 = blobs.values().map(|b| b.size).sum();
        let found = (manifests as u64, blobs.len() as u64, bytes);
        if found != (stated.manifests, stated.blobs, stated.blob_bytes) {
            return Err(self.refused(format!(
                "{ref_name:?} has {} manifests and {} blobs of {} bytes in the layout, the \
                 signed statement {} and {} of {} bytes",
                found.0, found.1, found.2, stated.manifests, stated.blobs, stated.blob_bytes
            )));
        }
        Ok(())
    }
}

/// One `index.json` entry described from the layout: its manifests read and checked against
/// their digests, every blob present at its size, and hashed unless this run wrote it
/// (`written`).
async fn describe(
    store: &dyn LayoutStore,
    index: &LayoutIndex,
    entry: &LayoutEntry,
    written: &[String],
) -> Result<StatementImage> {
    let place = store.location();
    let oci_err = |source| Error::Registry {
        image: format!("oci:{place}:{}", entry.ref_name),
        source,
    };
    let top = layout::read_manifest(store, &entry.blob, Some(&entry.media_type))
        .await
        .map_err(oci_err)?;
    let fetch = async |digest: Digest| {
        let size = store.blob_size(&digest).await?.unwrap_or(0);
        layout::read_manifest(store, &BlobRef { digest, size }, None).await
    };
    let image = format!("oci:{place}:{}", entry.ref_name);
    let walked = walk_with(&image, &place, top, fetch).await?;
    let referrers = layout_referrers(store, index, &entry.ref_name, &entry.blob.digest).await?;
    let mut blobs: Vec<BlobRef> = walked.blobs.values().cloned().collect();
    for referrer in &referrers {
        let of = walk_with(&image, &place, referrer.manifest.clone(), fetch).await?;
        blobs.extend(of.blobs.into_values());
    }
    for blob in &blobs {
        if store.blob_size(&blob.digest).await.map_err(oci_err)? != Some(blob.size) {
            return Err(refused(
                store,
                format!(
                    "{:?}: {} is missing or not {} bytes: the layout is incomplete, not signed",
                    entry.ref_name,
                    store.blob_location(&blob.digest),
                    blob.size
                ),
            ));
        }
        let vouched = written.iter().any(|d| d == blob.digest.as_str())
            || store.attests_blob(&blob.digest).await.map_err(oci_err)?;
        if !vouched {
            layout::verify_blob(store, blob).await.map_err(|e| {
                refused(
                    store,
                    format!(
                        "{:?}: {e}: the layout is damaged, not signed",
                        entry.ref_name
                    ),
                )
            })?;
        }
    }
    let (repository, tag) = layout::split_ref_name(&entry.ref_name)
        .map_err(|e| refused(store, format!("{:?}: {e}", entry.ref_name)))?;
    Ok(StatementImage {
        ref_name: entry.ref_name.clone(),
        repository: repository.unwrap_or_default().to_string(),
        tag: tag.to_string(),
        digest: entry.blob.digest.to_string(),
        media_type: entry.media_type.clone(),
        size: entry.blob.size,
        manifests: walked.children.len() as u64 + 1,
        blobs: walked.blobs.len() as u64,
        blob_bytes: walked.blobs.values().map(|b| b.size).sum(),
        source: String::new(),
        admitted_by: Vec::new(),
        referrers: referrers.iter().map(StatementReferrer::of).collect(),
    })
}

/// The statement's `run.image`: the one image exported, or how many and from where.
fn run_images(exported: &[ExportedImage]) -> String {
    match exported {
        [one] => one.source.clone(),
        many => {
            let mut registries: Vec<&str> = many
                .iter()
                .map(|e| e.source.split('/').next().unwrap_or_default())
                .collect();
            registries.sort_unstable();
            registries.dedup();
            format!("{} images from {}", many.len(), registries.join(", "))
        }
    }
}

/// Writes the statement of the whole layout and its envelope signed by `signer`, after an
/// export wrote `index.json`: every image `index.json` names, described from the layout. Only
/// what this run wrote (`exported`: the image at its digest, its referrers) or what a statement
/// this key signed earlier listed at the same digest is signed; anything else in `index.json`
/// (planted in the directory before or during the export) refuses the whole statement, naming
/// it. The exported image carries `exported`'s source and admissions; another keeps those the
/// earlier statement said of it. Returns the statement.
pub async fn write_statement(
    store: &dyn LayoutStore,
    signer: &dyn ReceiptSigner,
    exported: &[ExportedImage],
) -> Result<VerifiedStatement> {
    let index = LayoutIndex::read(store)
        .await
        .map_err(|source| Error::Registry {
            image: store.location(),
            source,
        })?
        .ok_or_else(|| refused(store, "the layout has no index.json to state"))?;
    write_statement_of(store, signer, exported, &index, None).await
}

/// [`write_statement`] of `index` as the caller holds it: every check is made against it, and
/// `before_signing` (when given) runs once they all passed and before the statement is written
/// (a seal writes `index.json` there, so a refused statement leaves the layout as it was).
pub async fn write_statement_of(
    store: &dyn LayoutStore,
    signer: &dyn ReceiptSigner,
    exported: &[ExportedImage],
    index: &LayoutIndex,
    before_signing: Option<futures::future::BoxFuture<'_, Result<()>>>,
) -> Result<VerifiedStatement> {
    let written: Vec<String> = exported
        .iter()
        .flat_map(|e| e.written_blobs.iter().cloned())
        .collect();
    let der = signer.public_key().await?;
    let key = TrustedTransferKey::from_der(&der).map_err(|e| {
        refused(
            store,
            format!("the key {} cannot sign statements: {e}", signer.key_id()),
        )
    })?;
    let earlier = verify_statement(store, &key).await.ok();
    let path = format!("{}/index.json", store.location());
    let (mut images, mut unvouched) = (Vec::new(), Vec::new());
    for entry in index
        .entries(&path)
        .map_err(|e| refused(store, e.to_string()))?
        .into_iter()
        .filter(|e| tag_scheme(&e.ref_name).is_none())
    {
        let mut image = describe(store, index, &entry, &written).await?;
        let problems = vouch(&mut image, exported, earlier.as_ref());
        if problems.is_empty() {
            images.push(image);
        }
        unvouched.extend(problems);
    }
    if !unvouched.is_empty() {
        let shown: Vec<&str> = unvouched.iter().take(10).map(String::as_str).collect();
        return Err(refused(
            store,
            format!(
                "index.json holds {} entr(ies) this export did not write and no earlier \
                 statement of the key lists at that digest: {}: written by someone else (planted \
                 in the layout?); nothing signed. Export into a directory only your signed \
                 exports write",
                unvouched.len(),
                shown.join(", ")
            ),
        ));
    }
    let lost: Vec<String> = exported
        .iter()
        .filter(|e| {
            !images
                .iter()
                .any(|i| i.ref_name == e.ref_name && i.digest == e.digest)
        })
        .take(10)
        .map(|e| format!("{} at {}", layout::quoted(&e.ref_name), e.digest))
        .collect();
    if !lost.is_empty() {
        return Err(refused(
            store,
            format!(
                "index.json no longer names what this export wrote ({}): another export or a \
                 writer of the layout replaced it meanwhile; nothing signed. Export again, one \
                 export at a time",
                lost.join(", ")
            ),
        ));
    }
    images.sort_by(|a, b| a.ref_name.cmp(&b.ref_name));
    unstated_referrer(index, &path, &images).map_err(|r| refused(store, r))?;
    if let Some(step) = before_signing {
        step.await?;
    }
    let statement = Statement {
        kind: STATEMENT_TYPE.into(),
        images,
        run: TransferRun {
            exported_at: jiff::Timestamp::now().to_string(),
            tool: exported.first().map(|e| e.tool.clone()).unwrap_or_default(),
            image: run_images(exported),
        },
    };
    // serde_json's Value keeps object keys sorted (no `preserve_order` feature): canonical.
    let value = serde_json::to_value(&statement).map_err(|e| Error::Output(e.to_string()))?;
    let bytes = Bytes::from(serde_json::to_vec(&value).map_err(|e| Error::Output(e.to_string()))?);
    let digest = Digest::of(&bytes);
    let payload = json!({
        "_type": IN_TOTO_STATEMENT,
        "subject": [{"name": STATEMENT_FILE, "digest": {"sha256": digest.as_str().trim_start_matches("sha256:")}}],
        "predicateType": STATEMENT_TYPE,
        "predicate": {"keyId": signer.key_id(), "publicKey": {"sha256": key.fingerprint.trim_start_matches("sha256:")}}
    });
    let payload = serde_json::to_vec(&payload).map_err(|e| Error::Output(e.to_string()))?;
    let envelope = receipts::sign_envelope(signer, &payload).await?;
    verify_envelope(&envelope, &key).map_err(|r| {
        refused(
            store,
            format!(
                "the key {} signed what its own public key does not verify: {r}",
                signer.key_id()
            ),
        )
    })?;
    let write_err = |source| Error::Registry {
        image: store.location(),
        source,
    };
    store
        .write_file(STATEMENT_FILE, bytes)
        .await
        .map_err(write_err)?;
    store
        .write_file(SIGNATURE_FILE, envelope)
        .await
        .map_err(write_err)?;
    Ok(VerifiedStatement {
        images: statement
            .images
            .into_iter()
            .map(|i| (i.ref_name.clone(), i))
            .collect(),
        run: statement.run,
        fingerprint: key.fingerprint,
        digest: digest.to_string(),
        layout: store.location(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    fn key(seed: u8) -> (SigningKey, TrustedTransferKey) {
        let signing = SigningKey::from_slice(&[seed; 32]).expect("a scalar");
        let der = signing
            .verifying_key()
            .to_public_key_der()
            .expect("DER")
            .into_vec();
        (signing, TrustedTransferKey::from_der(&der).expect("P-256"))
    }

    fn envelope(signing: &SigningKey, payload: &Value) -> Vec<u8> {
        let payload = serde_json::to_vec(payload).expect("JSON");
        let signature: p256::ecdsa::Signature = signing.sign(&receipts::pae(&payload));
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::to_vec(&json!({
            "payloadType": IN_TOTO,
            "payload": b64.encode(&payload),
            "signatures": [{"keyid": "k", "sig": b64.encode(signature.to_der().as_bytes())}]
        }))
        .expect("JSON")
    }

    fn about(name: &str, predicate_type: &str) -> Value {
        json!({"_type": IN_TOTO_STATEMENT, "predicateType": predicate_type,
               "subject": [{"name": name, "digest": {"sha256": "ab".repeat(32)}}], "predicate": {}})
    }

    #[test]
    fn only_a_transfer_statement_signed_by_the_trusted_key_verifies() {
        let (signing, trusted) = key(7);
        let good = envelope(&signing, &about(STATEMENT_FILE, STATEMENT_TYPE));
        assert_eq!(verify_envelope(&good, &trusted), Ok("ab".repeat(32)));

        let (_, other) = key(9);
        let problem = verify_envelope(&good, &other).expect_err("another key");
        assert!(problem.contains("no signature verifies"), "{problem}");

        for payload in [
            about("sha256:whatever", receipts::RECEIPT_PREDICATE),
            about(STATEMENT_FILE, receipts::RECEIPT_PREDICATE),
            about("index.json", STATEMENT_TYPE),
        ] {
            let problem = verify_envelope(&envelope(&signing, &payload), &trusted)
                .expect_err("not a transfer statement");
            assert!(problem.contains("is not a statement of type"), "{problem}");
        }

        let text = String::from_utf8(good).expect("UTF-8");
        let repeated = text.replacen("{", r#"{"payloadType":"x","#, 1);
        let problem = verify_envelope(repeated.as_bytes(), &trusted).expect_err("repeated key");
        assert!(problem.contains("refused"), "{problem}");
    }
}
