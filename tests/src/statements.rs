//! Signing a layout's transfer statement in a test with a local P-256 key: the statement the
//! functions verify has to be trusted before they start (their allowlist pins the key), and a
//! KMS key's public key is moto's, made when it starts. The signature is what KMS makes for
//! `ECDSA_SHA_256` (DER, over the SHA-256 of the message), so the envelope is the one a
//! deployment writes.

use oci::layout::{LayoutIndex, LayoutStore};
use oci::Digest;
use replication::layout_referrers::{layout_referrers, tag_scheme};
use replication::receipts::ReceiptSigner;
use replication::transfer_statement::{write_statement, ExportedImage, VerifiedStatement};

/// A receipt signer over a local key (`signing_key(seed)` of `image`).
#[derive(Debug)]
pub struct LocalSigner(pub p256::ecdsa::SigningKey);

#[async_trait::async_trait]
impl ReceiptSigner for LocalSigner {
    fn key_id(&self) -> &str {
        "test-statement-key"
    }

    async fn sign(&self, message: &[u8]) -> replication::Result<Vec<u8>> {
        use p256::ecdsa::signature::Signer;
        let signature: p256::ecdsa::Signature = self.0.sign(message);
        Ok(signature.to_der().as_bytes().to_vec())
    }

    async fn public_key(&self) -> replication::Result<Vec<u8>> {
        use p256::pkcs8::EncodePublicKey;
        Ok(self
            .0
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec())
    }
}

/// Signs a statement of every image the layout's `index.json` names, with its referrers, as
/// an export run with `signer` as its receipt key would.
pub async fn sign_layout(store: &dyn LayoutStore, signer: &LocalSigner) -> VerifiedStatement {
    let index = LayoutIndex::read(store).await.unwrap().unwrap();
    let path = format!("{}/index.json", store.location());
    let mut exported = Vec::new();
    for entry in index.entries(&path).unwrap() {
        if tag_scheme(&entry.ref_name).is_some() {
            continue;
        }
        let top = Digest::parse(entry.blob.digest.as_str()).unwrap();
        let referrers = layout_referrers(store, &index, &entry.ref_name, &top)
            .await
            .unwrap()
            .iter()
            .map(|r| r.manifest.digest.to_string())
            .collect();
        exported.push(ExportedImage {
            ref_name: entry.ref_name.clone(),
            digest: entry.blob.digest.to_string(),
            source: format!("test/{}", entry.ref_name),
            admitted_by: Vec::new(),
            tool: "ecr-replicator tests".into(),
            referrers,
            written_blobs: Vec::new(),
        });
    }
    write_statement(store, signer, &exported).await.unwrap()
}
