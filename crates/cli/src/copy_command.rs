//! `ecr-replicator copy SRC DST [--all-tags]`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use oci::{Reference, RegistryClient};
use replication::{copy_image, CopyOptions, CopyProgress, CopyReport};
use serde::Serialize;

use crate::progress::Bar;
use crate::registry_args::RegistryArgs;
use crate::OutputFormat;

/// Arguments of `copy`.
#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Source image, e.g. 111111111111.dkr.ecr.us-east-1.amazonaws.com/ml/pytorch:2.3 (a repository with --all-tags),
    /// or an OCI image layout naming the image: oci:DIR:REPOSITORY:TAG, oci:s3://BUCKET/PREFIX:REPOSITORY:TAG.
    pub source: String,
    /// Target image; without a tag the source's tag (or digest) is used. Either side may be an
    /// OCI image layout: a directory, oci:DIR[:REPOSITORY:TAG], or an S3 prefix,
    /// oci:s3://BUCKET/PREFIX[:REPOSITORY:TAG] (the first ':' after DIR or after s3:// ends the
    /// location; an S3 prefix holds no ':').
    pub target: String,
    /// Copy every tag of the source repository to the target repository.
    #[arg(long)]
    pub all_tags: bool,
    /// Blobs copied at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub registries: RegistryArgs,
    #[command(flatten)]
    pub layout: crate::layout_command::LayoutArgs,
    #[command(flatten)]
    pub transfer: crate::transfer_args::TransferArgs,
}

/// The JSON printed for `--all-tags`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RepositorySummary {
    images: Vec<CopyReport>,
    failures: Vec<Failure>,
}

#[derive(Serialize)]
struct Failure {
    source: String,
    error: String,
}

/// Runs the command; the exit code is non-zero when any image failed.
pub async fn run(args: CopyArgs) -> anyhow::Result<ExitCode> {
    if crate::layout_command::involved(&args) {
        return crate::layout_command::run(args).await;
    }
    let source = Reference::parse(&args.source)?;
    let target = Reference::parse(&args.target)?;
    let (src_client, dst_client) = args.registries.clients(&source, &target)?;
    if args.all_tags {
        if source.tag.is_some()
            || source.digest.is_some()
            || target.tag.is_some()
            || target.digest.is_some()
        {
            bail!("--all-tags copies whole repositories: write SRC and DST without tag or digest");
        }
        return copy_all_tags(&args, &src_client, &source, &dst_client, &target).await;
    }
    let target = match (&target.tag, &target.digest) {
        (None, None) => Reference {
            repository: target.repository.clone(),
            tag: source.tag.clone(),
            digest: if source.tag.is_none() {
                source.digest.clone()
            } else {
                None
            },
        },
        _ => target,
    };
    let report = copy_one(&args, &src_client, &source, &dst_client, &target).await?;
    print_report(&report, args.output)?;
    Ok(ExitCode::SUCCESS)
}

async fn copy_one(
    args: &CopyArgs,
    src_client: &RegistryClient,
    source: &Reference,
    dst_client: &RegistryClient,
    target: &Reference,
) -> replication::Result<CopyReport> {
    let bar = Bar::for_terminal(&source.to_string(), args.output == OutputFormat::Text);
    let options = CopyOptions {
        parallel_blobs: args.parallel as usize,
        progress: bar.clone().map(|b| b as Arc<dyn CopyProgress>),
    };
    let result = copy_image(src_client, source, dst_client, target, &options).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    result
}

async fn copy_all_tags(
    args: &CopyArgs,
    src_client: &RegistryClient,
    source: &Reference,
    dst_client: &RegistryClient,
    target: &Reference,
) -> anyhow::Result<ExitCode> {
    let tags = src_client.list_tags(&source.repository).await?;
    let mut summary = RepositorySummary {
        images: Vec::new(),
        failures: Vec::new(),
    };
    for tag in tags {
        let from = source.with_tag(&tag);
        match copy_one(args, src_client, &from, dst_client, &target.with_tag(&tag)).await {
            Ok(report) => {
                if args.output == OutputFormat::Text {
                    print_report(&report, args.output)?;
                }
                summary.images.push(report);
            }
            Err(e) => {
                eprintln!("error: {e}");
                summary.failures.push(Failure {
                    source: from.to_string(),
                    error: e.to_string(),
                });
            }
        }
    }
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    if summary.failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} of {} tags failed",
            summary.failures.len(),
            summary.failures.len() + summary.images.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

pub(crate) fn print_report(report: &CopyReport, output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        OutputFormat::Text if report.already_present => {
            println!(
                "present {} -> {} {}",
                report.source, report.target, report.digest
            )
        }
        OutputFormat::Text => println!(
            "copied  {} -> {} {} ({} blobs copied, {} mounted, {} present; {:.1} MiB in {:.1} s)",
            report.source,
            report.target,
            report.digest,
            report.blobs_copied,
            report.blobs_mounted,
            report.blobs_skipped,
            report.bytes_copied as f64 / (1024.0 * 1024.0),
            report.seconds
        ),
    }
    Ok(())
}
