//! The signed transfer statement of a layout copy: `--receipt-key` signs it on export,
//! `--trust-transfer-key` verifies it on import (issue 35).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use oci::layout::LayoutStore;
use oci::{Reference, RegistryClient};
use replication::layout::{export_image, import_image, import_image_verified};
use replication::transfer_statement::{
    statement_present, write_statement, ExportedImage, TrustedTransferKey, STATEMENT_FILE,
};
use replication::CopyReport;

/// Flags of a layout copy's transfer statement.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Export to oci:DIR: sign the layout's transfer statement with this KMS key (the
    /// deployment's receipt key: arn:aws:kms:REGION:ACCOUNT:key/ID, ECC_NIST_P256, SIGN_VERIFY).
    /// AWS is reached with the default credential chain (and --aws-endpoint-url).
    #[arg(long, value_name = "KEY_ARN", env = "ECR_REPLICATOR_RECEIPT_KEY")]
    pub receipt_key: Option<String>,
    /// Import from oci:DIR: verify the layout's transfer statement with this P-256 public key
    /// (PEM) before reading anything else, and refuse a layout that differs from it.
    #[arg(long, value_name = "FILE.pem")]
    pub trust_transfer_key: Option<PathBuf>,
}

impl TransferArgs {
    fn trusted_key(&self) -> anyhow::Result<Option<TrustedTransferKey>> {
        let Some(path) = &self.trust_transfer_key else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--trust-transfer-key: reading {}", path.display()))?;
        TrustedTransferKey::from_pem(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--trust-transfer-key {}: {e}", path.display()))
    }

    async fn signer(
        &self,
        aws_endpoint_url: Option<&str>,
    ) -> anyhow::Result<Option<ecr::KmsSigner>> {
        let Some(arn) = self.receipt_key.as_deref().filter(|a| !a.trim().is_empty()) else {
            return Ok(None);
        };
        let key = ecr::KmsKeyArn::parse(arn)
            .map_err(|problem| anyhow::anyhow!("--receipt-key: {problem}"))?;
        let settings = ecr::AwsSettings {
            endpoint_url: aws_endpoint_url
                .filter(|u| !u.is_empty())
                .map(str::to_string),
            ..ecr::AwsSettings::from_env()
        };
        Ok(Some(ecr::KmsSigner::new(&settings, key).await))
    }
}

/// Exports `source` into the layout as `ref_name`, then signs the whole layout's statement when
/// a receipt key is given (KMS reached at `aws_endpoint_url` when given, `--aws-endpoint-url`).
pub async fn export(
    args: &TransferArgs,
    aws_endpoint_url: Option<&str>,
    client: &RegistryClient,
    source: &Reference,
    store: &dyn LayoutStore,
    ref_name: &str,
    parallel: usize,
) -> anyhow::Result<CopyReport> {
    if args.trust_transfer_key.is_some() {
        anyhow::bail!(
            "--trust-transfer-key verifies an import; an export signs with --receipt-key"
        );
    }
    let signer = args.signer(aws_endpoint_url).await?;
    let report = export_image(client, source, store, ref_name, parallel).await?;
    let Some(signer) = signer else {
        if statement_present(store).await {
            eprintln!(
                "warning: no --receipt-key: {}'s {STATEMENT_FILE} was not rewritten and no \
                 longer covers {ref_name}; an import that verifies it will refuse the layout",
                store.location()
            );
        }
        return Ok(report);
    };
    let exported = ExportedImage {
        ref_name: ref_name.to_string(),
        source: source.to_string(),
        admitted_by: Vec::new(),
        tool: format!("ecr-replicator {}", env!("CARGO_PKG_VERSION")),
    };
    let statement = write_statement(store, &signer, &exported).await?;
    eprintln!(
        "signed {}/{STATEMENT_FILE}: {} image(s), key {} ({})",
        store.location(),
        statement.images.len(),
        statement.fingerprint,
        signer.key_arn()
    );
    Ok(report)
}

/// Imports `ref_name` from the layout into `target`: verified against the trusted key when one
/// is given, else as is, saying that nothing vouched for the layout beyond its digests.
pub async fn import(
    args: &TransferArgs,
    store: &dyn LayoutStore,
    ref_name: &str,
    client: &RegistryClient,
    target: &Reference,
    parallel: usize,
) -> anyhow::Result<CopyReport> {
    if let Some(key) = args.trusted_key()? {
        let (report, statement) =
            import_image_verified(store, ref_name, client, target, parallel, &key).await?;
        eprintln!(
            "verified {}/{STATEMENT_FILE}: signed by {}, exported {} by {}",
            store.location(),
            statement.fingerprint,
            statement.run.exported_at,
            statement.run.tool
        );
        return Ok(report);
    }
    if statement_present(store).await {
        eprintln!(
            "warning: {}'s {STATEMENT_FILE} was NOT verified: pass --trust-transfer-key FILE.pem \
             (the exporting deployment's receipt key) to check it",
            store.location()
        );
    } else {
        eprintln!(
            "warning: {} carries no signed transfer statement: only blob and manifest digests \
             were checked",
            store.location()
        );
    }
    Ok(import_image(store, ref_name, client, target, parallel).await?)
}
