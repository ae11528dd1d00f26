//! `sync` and `plan` of a job whose source or destination is an OCI image layout (`"layout":
//! "s3://BUCKET/PREFIX"` or a directory; issue 35): the layout is opened here, with the
//! deployment's bucket owner and KMS key when its allowlist lists the layout, and the library's
//! layout run does the rest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use replication::allowlist::layouts;
use replication::connect::Connections;
use replication::job::{LayoutLocation, LayoutSide};
use replication::layout_run::{run_layout_job, ImportTrust};
use replication::transfer_statement::STATEMENT_FILE;
use replication::Job;

use crate::job_commands::{print_run, Progress, RunArgs};
use crate::layout_command::{open, LayoutArgs, Place};
use crate::OutputFormat;

/// Options of a job with a `layout`.
#[derive(Args, Debug, Default)]
pub struct LayoutJobArgs {
    /// Import: verify the layout's transfer statement with this P-256 public key (PEM, the
    /// exporting deployment's receipt key) before reading anything else.
    #[arg(
        long,
        value_name = "FILE.pem",
        env = "ECR_REPLICATOR_TRUST_TRANSFER_KEY"
    )]
    pub trust_transfer_key: Option<PathBuf>,
    /// Import: refuse a statement exported before this time (RFC 3339).
    #[arg(long, value_name = "TIME", requires = "trust_transfer_key")]
    pub not_before: Option<String>,
    /// Import: refuse any statement but this one (`sha256:...`, printed by the export).
    #[arg(long, value_name = "DIGEST", requires = "trust_transfer_key")]
    pub statement_digest: Option<String>,
    /// Import a layout carrying a transfer statement without verifying it: refused otherwise.
    #[arg(long)]
    pub allow_unverified_layout: bool,
    /// Export to s3://: write objects with SSE-KMS under this key (the allowlist's `kmsKey` for
    /// the layout wins).
    #[arg(long, value_name = "KEY_ARN", env = "ECR_REPLICATOR_LAYOUT_KMS_KEY")]
    pub layout_kms_key: Option<String>,
    /// s3://: the account that must own the bucket (the allowlist's `bucketOwner` wins;
    /// default: the credentials' account).
    #[arg(
        long,
        value_name = "ACCOUNT",
        env = "ECR_REPLICATOR_LAYOUT_BUCKET_OWNER"
    )]
    pub layout_bucket_owner: Option<String>,
}

/// Runs a layout job: export into or import from the job's layout.
pub async fn sync(args: RunArgs, job: Job) -> anyhow::Result<ExitCode> {
    // Every field named first (a bad location included), before anything is opened.
    let valid = job.clone().validate()?;
    let text = match valid.job.layout_side() {
        Some(LayoutSide::Export(at) | LayoutSide::Import(at)) => at.to_string(),
        None => anyhow::bail!("the job names no layout"),
    };
    let conns = Connections::new(args.settings()?);
    conns.admit(&valid.job)?;
    let entry = conns
        .settings()
        .allowlist
        .as_ref()
        .and_then(|a| layouts::find(&a.layouts, &text));
    let place = match LayoutLocation::parse(&text).map_err(|e| anyhow::anyhow!(e))? {
        LayoutLocation::Dir(dir) => Place::Dir(dir),
        LayoutLocation::S3(at) => Place::S3(at),
    };
    let layout_args = LayoutArgs {
        aws_endpoint_url: args.aws_endpoint_url.clone(),
        layout_kms_key: entry
            .and_then(|e| e.kms_key.clone())
            .or_else(|| args.layout.layout_kms_key.clone()),
        layout_bucket_owner: entry
            .and_then(|e| e.bucket_owner.clone())
            .or_else(|| args.layout.layout_bucket_owner.clone()),
    };
    let store = open(&place, &layout_args).await?;
    let key = crate::transfer_args::trusted_key(
        args.layout.trust_transfer_key.as_deref(),
        args.layout.not_before.as_deref(),
        args.layout.statement_digest.as_deref(),
    )?;
    let trust = ImportTrust {
        key: key.as_ref(),
        allow_unverified: args.layout.allow_unverified_layout,
    };
    let dry_run = job.dry_run;
    let observer = Progress {
        enabled: args.output == OutputFormat::Text,
        dry_run,
    };
    let output = Box::pin(run_layout_job(
        &conns,
        job,
        store.as_ref(),
        trust,
        &observer,
    ))
    .await?;
    let exports = matches!(valid.job.layout_side(), Some(LayoutSide::Export(_)));
    match (&output.statement, exports) {
        (Some(s), true) => eprintln!(
            "signed {}/{STATEMENT_FILE}: {} image(s), key {}, statement {} exported {} (carry \
             them out of band for --statement-digest or --not-before)",
            store.location(),
            s.images.len(),
            s.fingerprint,
            s.digest,
            s.run.exported_at
        ),
        (Some(s), false) => eprintln!(
            "verified {}/{STATEMENT_FILE}: signed by {}, exported {} by {}",
            store.location(),
            s.fingerprint,
            s.run.exported_at,
            s.run.tool
        ),
        (None, true) if !dry_run && output.run.report.copied > 0 => eprintln!(
            "warning: no receipt key (--receipt-key): {} carries no signed transfer statement \
             for this run; an import that verifies statements will refuse it",
            store.location()
        ),
        (None, false) if !dry_run => eprintln!(
            "warning: {}'s transfer statement was NOT verified: only blob and manifest \
             digests were checked (--trust-transfer-key FILE.pem checks it)",
            store.location()
        ),
        _ => {}
    }
    print_run(&output.run, args.output, dry_run)?;
    let report = &output.run.report;
    Ok(if report.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
