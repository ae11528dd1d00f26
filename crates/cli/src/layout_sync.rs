//! `sync` and `plan` of a job whose source or destination is an OCI image layout (`"layout":
//! "s3://BUCKET/PREFIX"` or a directory; issue 35): the layout is opened here, with the
//! deployment's bucket owner and KMS key when its allowlist lists the layout, and the library's
//! layout run does the rest.

use std::process::ExitCode;

use clap::Args;
use replication::allowlist::layouts;
use replication::connect::Connections;
use replication::job::{LayoutLocation, LayoutSide};
use replication::layout_run::{run_layout_job, ImportTrust};
use replication::transfer_statement::STATEMENT_FILE;
use replication::Job;

use crate::job_commands::{print_run, Progress, RunArgs};
use crate::layout_command::{open, LayoutArgs, Place, S3LayoutArgs};
use crate::transfer_args::VerifyLayoutArgs;
use crate::OutputFormat;

/// Options of a job with a `layout`: how an import verifies it, and the S3 bucket owner and
/// KMS key where the allowlist does not set them.
#[derive(Args, Debug, Default)]
pub struct LayoutJobArgs {
    #[command(flatten)]
    pub verify: VerifyLayoutArgs,
    #[command(flatten)]
    pub s3: S3LayoutArgs,
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
    // A layout the allowlist lists is used with the deployment's owner and key only.
    let s3 = match entry {
        Some(e) => S3LayoutArgs {
            layout_kms_key: e.kms_key.clone(),
            layout_bucket_owner: e.bucket_owner.clone(),
        },
        None => args.layout.s3.clone(),
    };
    let layout_args = LayoutArgs {
        aws_endpoint_url: args.aws_endpoint_url.clone(),
        s3,
    };
    let imports = matches!(valid.job.layout_side(), Some(LayoutSide::Import(_)));
    let pinned = entry.and_then(|e| e.transfer_key.as_deref());
    let key = match imports {
        true => crate::transfer_args::transfer_key(&args.layout.verify, pinned, &text)?,
        false => None,
    };
    // The job's own pin (`source.statementDigest`) holds as `--statement-digest` does.
    let key = match (key, valid.job.source.statement_digest.as_deref()) {
        (key, None) => key,
        (None, Some(_)) => anyhow::bail!(
            "source.statementDigest: pins a statement, but no transfer key verifies it \
             (--trust-transfer-key, or the allowlist's transferKey); nothing imported"
        ),
        (Some(key), Some(digest)) => {
            let given = args.layout.verify.statement_digest.as_deref();
            if given.is_some_and(|g| g != digest) {
                anyhow::bail!(
                    "source.statementDigest {digest} and --statement-digest {} differ; nothing \
                     imported",
                    given.unwrap_or_default()
                );
            }
            Some(
                key.with_pins(None, Some(digest))
                    .map_err(|e| anyhow::anyhow!("source.statementDigest: {e}"))?,
            )
        }
    };
    let store = open(&place, &layout_args).await?;
    let trust = ImportTrust {
        key: key.as_ref(),
        allow_unverified: args.layout.verify.allow_unverified_layout && key.is_none(),
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
    match (&output.statement, !imports) {
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
