//! The signed transfer statement of a layout copy: `--receipt-key` signs it on export,
//! `--trust-transfer-key` verifies it on import (issue 35).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use oci::layout::{LayoutIndex, LayoutStore};
use oci::{Reference, RegistryClient};
use replication::allowlist::{layouts, Allowlist};
use replication::layout::{export_gated, import_gated, import_image, import_image_verified};
use replication::layout_gate::{sign_import_receipt, LayoutGate};
use replication::sigstore::BundleVerifier;
use replication::transfer_statement::{
    statement_present, verify_statement, write_statement, ExportedImage, TrustedTransferKey,
    STATEMENT_FILE,
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
    #[command(flatten)]
    pub verify: VerifyLayoutArgs,
    #[command(flatten)]
    pub gate: GateArgs,
}

/// How an import verifies a layout's transfer statement (`copy` from a layout, an import job).
#[derive(Args, Debug, Default)]
pub struct VerifyLayoutArgs {
    /// Import: verify the layout's transfer statement with this P-256 public key (PEM, the
    /// exporting deployment's receipt key) before reading anything else, and refuse a layout
    /// that differs from it. Set in the importing deployment's environment, every import must
    /// verify.
    #[arg(
        long,
        value_name = "FILE.pem",
        env = "ECR_REPLICATOR_TRUST_TRANSFER_KEY"
    )]
    pub trust_transfer_key: Option<PathBuf>,
    /// Import: refuse a statement exported before this time (RFC 3339, e.g. the last import's
    /// exportedAt): an older layout the same key signed is not taken back.
    #[arg(long, value_name = "TIME", requires = "trust_transfer_key")]
    pub not_before: Option<String>,
    /// Import: refuse any statement but this one (`sha256:...`, printed by the export and
    /// carried out of band).
    #[arg(long, value_name = "DIGEST", requires = "trust_transfer_key")]
    pub statement_digest: Option<String>,
    /// Import a layout that carries a transfer statement without verifying it (no
    /// --trust-transfer-key): refused otherwise.
    #[arg(long)]
    pub allow_unverified_layout: bool,
}

impl VerifyLayoutArgs {
    /// The key of `--trust-transfer-key FILE.pem` (none without it), pinned by `--not-before`
    /// and `--statement-digest` when given.
    pub fn trusted_key(&self) -> anyhow::Result<Option<TrustedTransferKey>> {
        let Some(path) = &self.trust_transfer_key else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--trust-transfer-key: reading {}", path.display()))?;
        let key = TrustedTransferKey::from_pem(&text)
            .map_err(|e| anyhow::anyhow!("--trust-transfer-key {}: {e}", path.display()))?;
        key.with_pins(self.not_before.as_deref(), self.statement_digest.as_deref())
            .map(Some)
            .map_err(|e| anyhow::anyhow!(e))
    }
}

/// The signature gate of a layout copy.
#[derive(Args, Debug)]
pub struct GateArgs {
    /// Copy the image only when a signature travelling with it verifies under this trust policy
    /// of --allowlist (`trustPolicies`): on export, read from the source; on import, read from
    /// the layout, offline, before anything is put. What admitted it goes into the transfer
    /// statement (export) or a promotion receipt signed with --receipt-key (import).
    #[arg(long, value_name = "POLICY", requires = "allowlist")]
    pub require_signature: Option<String>,
    /// The deployment's allowlist, whose `trustPolicies` --require-signature names; on import,
    /// a policy its entry for the destination registry requires (`requireSignature`) applies too.
    #[arg(long, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,
    #[command(flatten)]
    pub root: crate::trusted_root_args::TrustedRootArgs,
}

/// Which side of a layout copy the registry is.
#[derive(Debug, Clone, Copy)]
pub enum CopySide<'a> {
    /// Export from this source registry into the layout.
    Export(&'a str),
    /// Import from the layout into this destination registry.
    Import(&'a str),
}

/// What --allowlist says of one layout copy: the allowlist, the trust policies the image must
/// pass, and the transfer key an import must verify with.
pub struct CopyRules {
    /// The deployment's allowlist.
    pub allowlist: Allowlist,
    /// The policies: --require-signature's, the destination's (import) and the layout's.
    pub policies: Vec<String>,
    /// The layout entry's pinned `transferKey` (PEM), for an import.
    pub transfer_key: Option<String>,
}

impl GateArgs {
    /// With --allowlist, what the deployment says of this copy, as for a job: the registry must
    /// be one of its sources (export) or destinations (import) and the layout one of its
    /// `layouts` for that use (an absolute directory or `s3://` location); their required
    /// policies join --require-signature's. `None` without --allowlist.
    pub fn rules(&self, side: CopySide<'_>, layout: &str) -> anyhow::Result<Option<CopyRules>> {
        let Some(path) = &self.allowlist else {
            return Ok(None);
        };
        let what = format!("--allowlist {}", path.display());
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {what}"))?;
        let allowlist = Allowlist::from_json(&text, &what)?;
        // Per side: the registry's entry, the allowlist's name for its list, the use, whether
        // the layout allows it, and the policy the registry's entry requires (a destination's).
        let (registry, entry, list, use_) = match side {
            CopySide::Export(r) => (r, allowlist.source(r), "sources", "export"),
            CopySide::Import(r) => (r, allowlist.destination(r), "destinations", "import"),
        };
        let Some(entry) = entry else {
            anyhow::bail!("{registry} is not one of {what}'s {list}: nothing copied");
        };
        let Some(layout_entry) = layouts::find(&allowlist.layouts, layout) else {
            anyhow::bail!(
                "{layout} is not one of {what}'s layouts (give it as listed: an absolute \
                 directory or s3://BUCKET/PREFIX): nothing copied"
            );
        };
        let (allowed, required_here) = match side {
            CopySide::Export(_) => (layout_entry.export, None),
            CopySide::Import(_) => (layout_entry.import, entry.require_signature.clone()),
        };
        if !allowed {
            anyhow::bail!("{what} does not let copies {use_} at {layout}: nothing copied");
        }
        let mut policies: Vec<String> = self.require_signature.iter().cloned().collect();
        let required = [required_here, layout_entry.require_signature.clone()];
        for name in required.into_iter().flatten() {
            if !policies.contains(&name) {
                policies.push(name);
            }
        }
        let transfer_key = layout_entry.transfer_key.clone();
        Ok(Some(CopyRules {
            allowlist,
            policies,
            transfer_key,
        }))
    }

    /// The gate the rules' policies make, with the allowlist; `None` when no policy applies.
    async fn gate(
        &self,
        aws_endpoint_url: Option<&str>,
        rules: Option<CopyRules>,
    ) -> anyhow::Result<Option<(LayoutGate, Allowlist)>> {
        let Some(rules) = rules.filter(|r| !r.policies.is_empty()) else {
            return Ok(None);
        };
        let policies = rules
            .policies
            .iter()
            .map(|name| {
                rules.allowlist.trust_policy(name).with_context(|| {
                    format!("the trust policy {name:?} is not one of the allowlist's trustPolicies")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (root, checks) = self.root.resolve()?;
        let root = root.unwrap_or_default();
        let aws = ecr::AwsSettings {
            endpoint_url: aws_endpoint_url
                .filter(|u| !u.is_empty())
                .map(str::to_string),
            ..ecr::AwsSettings::from_env()
        };
        let verifier = BundleVerifier::load(&root, &checks, &aws).await?;
        Ok(Some((LayoutGate::new(policies, verifier), rules.allowlist)))
    }
}

impl TransferArgs {
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
    if args.verify.not_before.is_some() || args.verify.statement_digest.is_some() {
        anyhow::bail!(
            "--not-before and --statement-digest check an import; an export signs with \
             --receipt-key"
        );
    }
    let signer = args.signer(aws_endpoint_url).await?;
    let rules = args.gate.rules(
        CopySide::Export(&source.repository.registry),
        &store.location(),
    )?;
    let gate = args.gate.gate(aws_endpoint_url, rules).await?;
    let (report, admitted, wrote) = export_gated(
        client,
        source,
        (store, ref_name),
        parallel,
        gate.as_ref().map(|(gate, _)| gate),
    )
    .await?;
    if let Some(line) = &admitted {
        eprintln!("admitted {source}: {line}");
    }
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
        digest: report.digest.clone(),
        referrers: wrote.referrers,
        written_blobs: wrote.blobs,
        source: source.to_string(),
        admitted_by: admitted.into_iter().collect(),
        tool: format!("ecr-replicator {}", env!("CARGO_PKG_VERSION")),
    };
    let statement = write_statement(store, &signer, std::slice::from_ref(&exported)).await?;
    eprintln!(
        "signed {}/{STATEMENT_FILE}: {} image(s), key {} ({}), statement {} exported {} (carry \
         them out of band for --statement-digest or --not-before)",
        store.location(),
        statement.images.len(),
        statement.fingerprint,
        signer.key_arn(),
        statement.digest,
        statement.run.exported_at
    );
    Ok(report)
}

/// Imports `ref_name` under the signature gate (verified first when a key is given), then
/// signs a promotion receipt with the receipt key, if any.
async fn import_under_gate(
    args: &TransferArgs,
    key: Option<&TrustedTransferKey>,
    (store, ref_name): (&dyn LayoutStore, &str),
    (client, target): (&RegistryClient, &Reference),
    parallel: usize,
    (gate, allowlist): (&LayoutGate, &Allowlist),
    aws_endpoint_url: Option<&str>,
) -> anyhow::Result<CopyReport> {
    let (report, statement, admitted) =
        import_gated(store, ref_name, (client, target), parallel, key, gate).await?;
    match &statement {
        Some(statement) => eprintln!(
            "verified {}/{STATEMENT_FILE}: signed by {}, exported {} by {}",
            store.location(),
            statement.fingerprint,
            statement.run.exported_at,
            statement.run.tool
        ),
        None => eprintln!(
            "warning: {}'s transfer statement was NOT verified (no --trust-transfer-key): the \
             signature was checked, the rest of the layout only by its digests",
            store.location()
        ),
    }
    eprintln!("admitted {}: {admitted}", report.source);
    let stated = statement
        .as_ref()
        .and_then(|s| s.images.get(ref_name))
        .and_then(|i| Reference::parse(&i.source).ok());
    let location = format!("oci:{}", store.location());
    let from = match &stated {
        Some(at) => (at.repository.registry.as_str(), at.repository.name.as_str()),
        None => (
            location.as_str(),
            oci::layout::split_ref_name(ref_name)
                .ok()
                .and_then(|(repository, _)| repository)
                .unwrap_or(ref_name),
        ),
    };
    if let Some(signer) = args.signer(aws_endpoint_url).await? {
        let top = client
            .get_manifest(&target.with_digest(oci::Digest::parse(&report.digest)?))
            .await?;
        let receipt =
            sign_import_receipt((client, target), &top, &admitted, allowlist, &signer, from)
                .await?;
        if let Some(receipt) = receipt {
            eprintln!(
                "signed the promotion receipt {} of {target}",
                receipt.digest
            );
        }
    }
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
    aws_endpoint_url: Option<&str>,
) -> anyhow::Result<CopyReport> {
    let rules = args.gate.rules(
        CopySide::Import(&target.repository.registry),
        &store.location(),
    )?;
    let pinned = rules.as_ref().and_then(|r| r.transfer_key.as_deref());
    let key = transfer_key(&args.verify, pinned, &store.location())?;
    if key.is_none() && !args.verify.allow_unverified_layout && statement_present(store).await {
        anyhow::bail!(
            "{} carries a signed transfer statement: verify it with --trust-transfer-key \
             FILE.pem (ECR_REPLICATOR_TRUST_TRANSFER_KEY), the exporting deployment's receipt \
             key, or import it unverified with --allow-unverified-layout; nothing imported",
            store.location()
        );
    }
    check_pinned_digest(store, ref_name, target, key.as_ref()).await?;
    if let Some((gate, allowlist)) = args.gate.gate(aws_endpoint_url, rules).await? {
        return import_under_gate(
            args,
            key.as_ref(),
            (store, ref_name),
            (client, target),
            parallel,
            (&gate, &allowlist),
            aws_endpoint_url,
        )
        .await;
    }
    if args.receipt_key.is_some() {
        eprintln!(
            "warning: --receipt-key (ECR_REPLICATOR_RECEIPT_KEY) is not used: an import signs \
             promotion receipts only under --require-signature POLICY --allowlist FILE"
        );
    }
    if let Some(key) = key {
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

/// Refuses a destination naming a digest (`registry/app@sha256:...`) that is not the digest of
/// the image the layout (its verified statement, with a key) names `ref_name`, before anything
/// is put.
async fn check_pinned_digest(
    store: &dyn LayoutStore,
    ref_name: &str,
    target: &Reference,
    key: Option<&TrustedTransferKey>,
) -> anyhow::Result<()> {
    let Some(pinned) = &target.digest else {
        return Ok(());
    };
    let found = match key {
        Some(key) => verify_statement(store, key)
            .await?
            .images
            .get(ref_name)
            .map(|image| image.digest.clone()),
        None => {
            let path = format!("{}/index.json", store.location());
            LayoutIndex::read(store)
                .await?
                .map(|index| index.find(ref_name, &path))
                .transpose()?
                .flatten()
                .map(|entry| entry.blob.digest.to_string())
        }
    };
    match found {
        Some(digest) if digest != pinned.as_str() => anyhow::bail!(
            "{target} names {pinned}, but {}:{ref_name} is {digest}: not imported",
            store.location()
        ),
        _ => Ok(()),
    }
}

/// The key an import verifies the layout's statement with: the one the allowlist pins for the
/// layout (then `--trust-transfer-key`, if given, must be it, and no unverified import is
/// allowed), else `--trust-transfer-key`; pinned by `--not-before` and `--statement-digest`.
pub fn transfer_key(
    args: &VerifyLayoutArgs,
    pinned: Option<&str>,
    layout: &str,
) -> anyhow::Result<Option<TrustedTransferKey>> {
    let given = args.trusted_key()?;
    let Some(pem) = pinned else {
        return Ok(given);
    };
    let key = TrustedTransferKey::from_pem(pem)
        .and_then(|k| k.with_pins(args.not_before.as_deref(), args.statement_digest.as_deref()))
        .map_err(|e| anyhow::anyhow!("the allowlist's transferKey for {layout}: {e}"))?;
    if given.is_some_and(|g| g.fingerprint != key.fingerprint) {
        anyhow::bail!(
            "--trust-transfer-key is not the key the allowlist pins for {layout} ({}): nothing \
             imported",
            key.fingerprint
        );
    }
    if args.allow_unverified_layout {
        anyhow::bail!(
            "--allow-unverified-layout: the allowlist pins {layout}'s transfer key, so every \
             import from it verifies; nothing imported"
        );
    }
    Ok(Some(key))
}
