//! `ecr-replicator`: copy container images between OCI registries and Amazon ECR.

mod copy_command;
mod job_commands;
mod layout_command;
mod layout_sync;
mod progress;
mod registry_args;
mod transfer_args;
mod trusted_root_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Serverless replication of container images between registries; this CLI runs the same
/// library steps on one machine.
#[derive(Parser)]
#[command(name = "ecr-replicator", version, about)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy one image (or every tag of a repository with --all-tags) from SRC to DST.
    Copy(Box<copy_command::CopyArgs>),
    /// Run a job (the state machine's execution input) in-process: filters, repositories and
    /// their settings, images, report. Exit 1 if any image failed.
    Sync(job_commands::RunArgs),
    /// The dry run of `sync`: what would be copied and changed; writes nothing.
    Plan(job_commands::RunArgs),
    /// Compare every destination with the source for the images the job selects (digests of
    /// manifests, children and referrers; tags; repository settings); writes nothing. Exit 1 on
    /// any difference.
    Verify(job_commands::RunArgs),
    /// Check a job's schema and values only.
    Validate(job_commands::InputArgs),
    /// Start the deployed state machine with a job (StartExecution); --wait polls to the end.
    Start(job_commands::StartArgs),
    /// Print the execution input's JSON Schema.
    Schema,
    /// Run one workflow step as its Lambda function would: the step's input JSON in (--input),
    /// its output JSON out.
    Step(job_commands::StepArgs),
}

/// How results are printed on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One line per image.
    Text,
    /// A JSON summary.
    Json,
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,oci=debug,replication=debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The command-line flags that address a registry error (the library's messages name no flags:
/// the same errors surface in Lambda functions).
fn flag_hint(e: &anyhow::Error) -> Option<&'static str> {
    let oci_error = e.chain().find_map(|cause| {
        cause.downcast_ref::<oci::Error>().or_else(|| {
            match cause.downcast_ref::<replication::Error>()? {
                replication::Error::Registry { source, .. }
                | replication::Error::Listing { source, .. } => Some(source),
                _ => None,
            }
        })
    })?;
    match oci_error {
        oci::Error::Unauthorized { .. } | oci::Error::DockerConfig { .. } => {
            Some("credentials: --src-creds/--dest-creds USER:PASSWORD, or --authfile")
        }
        oci::Error::Transport { .. } => {
            Some("a plain-HTTP registry needs --insecure-registry HOST")
        }
        e if e.is_throttling() => Some("copy less at once: lower --parallel"),
        _ => None,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Copy(args) => copy_command::run(*args).await,
        Command::Sync(args) => job_commands::sync(args, false).await,
        Command::Plan(args) => job_commands::sync(args, true).await,
        Command::Verify(args) => job_commands::verify(args).await,
        Command::Validate(args) => job_commands::validate(args),
        Command::Start(args) => job_commands::start(args).await,
        Command::Schema => job_commands::schema(),
        Command::Step(args) => job_commands::step(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = flag_hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
