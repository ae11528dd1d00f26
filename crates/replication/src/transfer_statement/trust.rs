//! Who a transfer statement trusts (issue 35): the key an import verifies it with and the pins
//! against a rollback to an older layout the same key signed (`--not-before`,
//! `--statement-digest`), and, on export, what the key may sign (what this run wrote, or what
//! an earlier statement of the key listed at the same digest; never an image or referrer
//! planted in the layout).

use oci::layout;
use oci::Digest;
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};

use crate::transfer_statement::referrers::unvouched_referrers;
use crate::transfer_statement::{ExportedImage, StatementImage, VerifiedStatement, STATEMENT_FILE};

/// A P-256 public key an import trusts for statements, with what else the statement must be
/// (against a rollback to an older layout the same key signed).
#[derive(Debug, Clone)]
pub struct TrustedTransferKey {
    pub(crate) key: VerifyingKey,
    /// `sha256:<hex>` of its SubjectPublicKeyInfo DER.
    pub fingerprint: String,
    not_before: Option<jiff::Timestamp>,
    statement_digest: Option<Digest>,
}

impl TrustedTransferKey {
    /// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, P-256).
    pub fn from_pem(text: &str) -> std::result::Result<Self, String> {
        let key = VerifyingKey::from_public_key_pem(text.trim())
            .map_err(|e| format!("not a P-256 public key in PEM: {e}"))?;
        Self::of(key)
    }

    /// Reads a SubjectPublicKeyInfo DER public key (what `kms:GetPublicKey` returns).
    pub fn from_der(der: &[u8]) -> std::result::Result<Self, String> {
        let key = VerifyingKey::from_public_key_der(der)
            .map_err(|e| format!("not a P-256 public key: {e}"))?;
        Self::of(key)
    }

    fn of(key: VerifyingKey) -> std::result::Result<Self, String> {
        let der = key
            .to_public_key_der()
            .map_err(|e| format!("cannot encode the key as DER: {e}"))?;
        Ok(TrustedTransferKey {
            fingerprint: Digest::of(der.as_bytes()).as_str().to_string(),
            key,
            not_before: None,
            statement_digest: None,
        })
    }

    /// Also refuse a statement exported before `not_before` (`--not-before`, RFC 3339), or
    /// whose file is not `statement_digest` (`--statement-digest`, what the export printed).
    pub fn with_pins(
        mut self,
        not_before: Option<&str>,
        statement_digest: Option<&str>,
    ) -> std::result::Result<Self, String> {
        if let Some(time) = not_before {
            let at = time.parse::<jiff::Timestamp>().map_err(|e| {
                format!(
                    "--not-before {}: not an RFC 3339 time: {e}",
                    layout::quoted(time)
                )
            })?;
            self.not_before = Some(at);
        }
        if let Some(digest) = statement_digest {
            let digest = Digest::parse(digest).map_err(|e| format!("--statement-digest: {e}"))?;
            self.statement_digest = Some(digest);
        }
        Ok(self)
    }

    /// Refuses a statement file of digest `actual` exported at `exported_at` that the pins
    /// exclude.
    pub(crate) fn check_pins(&self, actual: &Digest, exported_at: &str) -> Result<(), String> {
        if let Some(pinned) = self.statement_digest.as_ref().filter(|p| *p != actual) {
            return Err(format!(
                "{STATEMENT_FILE} is {actual}, not {pinned} (--statement-digest, source.statementDigest): another \
                 export the key signed, an older one or a newer one; not imported"
            ));
        }
        let Some(not_before) = self.not_before else {
            return Ok(());
        };
        match exported_at.parse::<jiff::Timestamp>() {
            Ok(exported) if exported >= not_before => Ok(()),
            Ok(_) => Err(format!(
                "{STATEMENT_FILE} was exported at {exported_at}, before {not_before} \
                 (--not-before): an older layout the key signed; not imported"
            )),
            Err(e) => Err(format!(
                "{STATEMENT_FILE}: run.exportedAt {} is not an RFC 3339 time: {e}",
                layout::quoted(exported_at)
            )),
        }
    }
}

/// Gives `image` (described from the layout) the source and admissions of the run that wrote
/// it, when this run (`exported`) wrote it at that digest, or an earlier statement of the key
/// listed it at that digest; returns what the key may not sign: the image itself when neither
/// did, else its referrers that neither this run nor that statement listed.
pub(crate) fn vouch(
    image: &mut StatementImage,
    exported: &[ExportedImage],
    earlier: Option<&VerifiedStatement>,
) -> Vec<String> {
    let before = earlier
        .and_then(|s| s.images.get(&image.ref_name))
        .filter(|b| b.digest == image.digest);
    let this_run = exported
        .iter()
        .find(|e| image.ref_name == e.ref_name && image.digest == e.digest);
    if let Some(exported) = this_run {
        image.source = exported.source.clone();
        image.admitted_by = exported.admitted_by.clone();
    } else if let Some(before) = before {
        image.source = before.source.clone();
        image.admitted_by = before.admitted_by.clone();
    } else {
        return vec![format!(
            "{} at {}",
            layout::quoted(&image.ref_name),
            image.digest
        )];
    }
    let run_referrers = match this_run {
        Some(exported) => &exported.referrers[..],
        None => &[],
    };
    unvouched_referrers(image, run_referrers, before)
}
