//! `validate`, `plan`, `sync`, `start` and `schema`: the workflow's job, run in-process or on
//! Step Functions.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use replication::connect::{Connections, Settings};
use replication::job::Mode;
use replication::run::{run_job, RunObserver, RunOutput};
use replication::steps::{
    self, EnsureRepositoryOutput, ImageResult, ImageStatus, RepositoryFailure,
};
use replication::Job;

use crate::OutputFormat;

/// The job file.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// Execution input (JSON); `-` reads standard input.
    #[arg(long, short, value_name = "FILE")]
    pub input: PathBuf,
}

impl InputArgs {
    fn read(&self) -> anyhow::Result<String> {
        if self.input.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            return Ok(text);
        }
        std::fs::read_to_string(&self.input)
            .with_context(|| format!("reading {}", self.input.display()))
    }
}

/// Where AWS and the registries are reached when running in-process.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Send every AWS call here (moto, LocalStack); also `AWS_ENDPOINT_URL`.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Reach registry HOST at URL instead (e.g. an ECR host served locally). Repeatable.
    #[arg(long = "registry-endpoint", value_name = "HOST=URL")]
    pub registry_endpoints: Vec<String>,
    /// Reach this registry over plain HTTP. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Docker config.json for registries that are not ECR.
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
    /// Refuse a job naming a registry, role or plain HTTP this allowlist does not allow (the
    /// deployed functions' `ECR_REPLICATOR_ALLOWED_REGISTRIES` JSON: `{"sources": [{"registry":
    /// HOST, "roleArns": [...]}], "destinations": [...], "insecure": [HOST]}`).
    #[arg(long, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,
    #[command(flatten)]
    pub root: crate::trusted_root_args::TrustedRootArgs,
    /// Sign a promotion receipt for every image promoted under `requireSignature` with this
    /// KMS key (`arn:aws:kms:REGION:ACCOUNT:key/ID`, ECC_NIST_P256, SIGN_VERIFY).
    #[arg(long, value_name = "KEY_ARN", env = "ECR_REPLICATOR_RECEIPT_KEY")]
    pub receipt_key: Option<String>,
    #[command(flatten)]
    pub throttle: crate::registry_args::ThrottleArgs,
    #[command(flatten)]
    pub layout: crate::layout_sync::LayoutJobArgs,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

impl RunArgs {
    pub(crate) fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings {
            cost_model: replication::cost::CostModel::from_env()?,
            ..Settings::default()
        };
        settings.aws.endpoint_url = self.aws_endpoint_url.clone().filter(|u| !u.is_empty());
        settings.registry.insecure_registries = self.insecure_registries.clone();
        self.throttle.apply(&mut settings.registry);
        for entry in &self.registry_endpoints {
            settings
                .registry
                .add_endpoint(entry)
                .map_err(|problem| anyhow::anyhow!("--registry-endpoint: {problem}"))?;
        }
        let authfile = self
            .authfile
            .clone()
            .or_else(oci::CredentialStore::default_docker_config_path);
        if let Some(path) = authfile {
            settings.credentials.load_docker_config(&path)?;
        }
        let (root, policy) = self.root.resolve()?;
        if let Some(root) = root {
            settings.trusted_root = root;
        }
        settings.trusted_root_policy = policy;
        if let Some(arn) = self.receipt_key.as_deref().filter(|a| !a.trim().is_empty()) {
            settings.receipt_key = Some(
                ecr::KmsKeyArn::parse(arn)
                    .map_err(|problem| anyhow::anyhow!("--receipt-key: {problem}"))?,
            );
        }
        if let Some(path) = &self.allowlist {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            settings.allowlist = Some(replication::allowlist::Allowlist::from_json(
                &text,
                &format!("--allowlist {}", path.display()),
            )?);
        }
        Ok(settings)
    }
}

/// Refuses a job naming a Secrets Manager secret (`credentialArn`, the source's or any
/// destination's) when no `--allowlist` is given: only an allowlist binds a secret to the
/// registry it belongs to, and without one the job could send any secret the caller may read
/// to a registry of its choosing. Every such field is named; nothing is read or sent.
fn secrets_need_an_allowlist(job: &Job, args: &RunArgs) -> anyhow::Result<()> {
    if args.allowlist.is_some() {
        return Ok(());
    }
    let mut named = Vec::new();
    if job.source.credential_arn.is_some() {
        named.push("source.credentialArn".to_string());
    }
    for (i, d) in job.destinations.iter().enumerate() {
        if d.credential_arn.is_some() {
            named.push(format!("destinations[{i}].credentialArn"));
        }
    }
    if named.is_empty() {
        return Ok(());
    }
    bail!(
        "{} names a Secrets Manager secret, whose credentials may go only to the registry an \
         allowlist binds it to: pass --allowlist FILE (the deployment's allowlist, listing the \
         secret under that registry's credentialArns) to run this job",
        named.join(", ")
    )
}

/// `step`: one step with its input.
#[derive(Args, Debug)]
pub struct StepArgs {
    /// The step, by its Lambda function's name.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(steps::STEP_NAMES))]
    pub name: String,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `step`: runs one workflow step in-process exactly as its Lambda function would, reading the
/// step's input JSON and printing its output JSON; a failure prints the error type Step
/// Functions would see (`ReplicationRetryable`, ...) and exits 1. For debugging a run from its
/// execution history, and for the crash tests.
pub async fn step(args: StepArgs) -> anyhow::Result<ExitCode> {
    let text = args.run.input.read()?;
    let input: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("the step input is not JSON: {e}"))?;
    if let Some(job) = input
        .get("job")
        .and_then(|j| serde_json::from_value::<Job>(j.clone()).ok())
    {
        secrets_need_an_allowlist(&job, &args.run)?;
    }
    let conns = Connections::new(args.run.settings()?);
    let result = steps::run_named(&conns, &args.name, &input).await;
    match result {
        Ok(output) => {
            println!("{output}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", e.kind().as_str());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `validate`: schema and value checks only.
pub fn validate(args: InputArgs) -> anyhow::Result<ExitCode> {
    let valid = Job::parse(&args.read()?)?;
    let job = valid.job;
    println!(
        "valid: {} -> {} destination(s){}",
        job.source.registry,
        job.destinations.len(),
        if job.dry_run { " (dry run)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) struct Progress {
    pub(crate) enabled: bool,
    pub(crate) dry_run: bool,
}

impl RunObserver for Progress {
    fn image_done(&self, r: &ImageResult) {
        if self.enabled {
            let tags = if r.tags.is_empty() {
                r.digest.clone()
            } else {
                r.tags.join(",")
            };
            let status = format!("{:?}", r.status).to_lowercase();
            eprintln!(
                "{status:<8} {}:{tags} -> {}/{}",
                r.repository, r.target_registry, r.target_repository
            );
            if let Some(e) = &r.error {
                eprintln!("         {e}");
            }
        }
    }
    fn repository_failed(&self, f: &RepositoryFailure) {
        if self.enabled {
            eprintln!("failed   repository {}: {}", f.repository, f.error);
        }
    }
    fn repository_ensured(&self, o: &EnsureRepositoryOutput) {
        if self.enabled && (o.created || !o.changes.is_empty() || !o.drift.is_empty()) {
            let verb = if o.created { "create" } else { "update" };
            eprintln!(
                "{verb:<8} {}/{} {:?} {}",
                o.registry,
                o.repository,
                o.changes.iter().map(|c| &c.setting).collect::<Vec<_>>(),
                o.drift.join("; ")
            );
        }
        if self.enabled {
            let verb = if self.dry_run {
                "would prune"
            } else {
                "pruned"
            };
            for tag in &o.pruned {
                eprintln!("{verb:<8} {}/{}:{tag}", o.registry, o.repository);
            }
            for kept in &o.prune_kept {
                eprintln!("kept     {}/{}:{kept}", o.registry, o.repository);
            }
        }
    }
}

/// `sync` (and `plan`, a dry run): the whole workflow in-process.
pub async fn sync(args: RunArgs, dry_run: bool) -> anyhow::Result<ExitCode> {
    let mut job = Job::parse(&args.input.read()?)?.job;
    if dry_run {
        job.dry_run = true;
    }
    // Before anything else: a secret goes only where an allowlist binds it, layout jobs too.
    secrets_need_an_allowlist(&job, &args)?;
    if job.layout_side().is_some() {
        return crate::layout_sync::sync(args, job).await;
    }
    if job.mode == Mode::Verify {
        return verify_job(args, job).await;
    }
    let conns = Connections::new(args.settings()?);
    let dry_run = job.dry_run;
    let observer = Progress {
        enabled: args.output == OutputFormat::Text,
        dry_run,
    };
    // Boxed: the whole run's future is deep enough to pass rustc's layout query depth (128)
    // inside `sync`'s own future otherwise.
    let output = Box::pin(run_job(&conns, job, &observer)).await?;
    print_run(&output, args.output, dry_run)?;
    Ok(
        if output.report.failed > 0 || output.report.repositories_failed > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// `verify`: compares every destination with the source (the job's mode is set to verify);
/// writes nothing. Exit 1 on any difference or a repository that could not be compared.
pub async fn verify(args: RunArgs) -> anyhow::Result<ExitCode> {
    let job = Job::parse(&args.input.read()?)?.job;
    verify_job(args, job).await
}

async fn verify_job(args: RunArgs, job: Job) -> anyhow::Result<ExitCode> {
    let job = Job {
        mode: Mode::Verify,
        ..job
    };
    secrets_need_an_allowlist(&job, &args)?;
    let conns = Connections::new(args.settings()?);
    let output = Box::pin(run_job(&conns, job, &replication::run::Quiet)).await?;
    let report = &output.report;
    let verify = report.verify.clone().unwrap_or_default();
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        for d in &output.differences {
            println!("{:<9} {}: {}", d.kind.as_str(), d.target, d.detail);
        }
        for f in &report.repository_failures {
            println!("FAILED repository {}: {}", f.repository, f.error);
        }
        println!(
            "\n{} image x destination pairs compared: {} identical{}; {} missing, {} different, {} extra, {} settings; {} repositories could not be compared",
            verify.images,
            verify.identical,
            match verify.archived {
                0 => String::new(),
                n => format!(", {n} archived there"),
            },
            verify.missing,
            verify.different,
            verify.extra,
            verify.settings,
            report.repositories_failed
        );
    }
    Ok(if verify.total() > 0 || report.repositories_failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn print_run(
    output: &RunOutput,
    format: OutputFormat,
    dry_run: bool,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(output)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<45} {:<8} {:>10}",
        "image", "destination", "status", "MiB"
    );
    for r in &output.images {
        let tags = if r.tags.is_empty() {
            short(&r.digest)
        } else {
            r.tags.join(",")
        };
        println!(
            "{:<40} {:<45} {:<8} {:>10.1}",
            format!("{}:{tags}", r.repository),
            format!("{}/{}", short_host(&r.target_registry), r.target_repository),
            format!("{:?}", r.status).to_lowercase(),
            r.bytes_copied as f64 / 1048576.0
        );
    }
    let r = &output.report;
    println!(
        "\n{} images: {} copied, {} present, {} planned, {} failed; {:.1} MiB copied; {} repositories failed",
        r.images,
        r.copied,
        r.present,
        r.planned,
        r.failed,
        r.bytes_copied as f64 / 1048576.0,
        r.repositories_failed
    );
    if let Some(c) = &r.planned_cost {
        const GB: f64 = 1e9;
        println!(
            "In the workflow this would cost about ${:.4}: {} Lambda invocations ({:.0} GB-s), \
             {} STANDARD executions ({} billed state transitions), {} EXPRESS executions; \
             {:.2} GB across regions, {:.2} GB out of AWS",
            c.estimated_usd,
            c.lambda_invocations,
            c.lambda_gb_seconds,
            c.standard_executions,
            c.standard_transitions,
            c.express_executions,
            c.cross_region_bytes as f64 / GB,
            c.internet_bytes as f64 / GB,
        );
    }
    if r.tags_pruned + r.tags_kept > 0 {
        println!(
            "{} stale tags {}, {} kept (see above)",
            r.tags_pruned,
            if dry_run { "to prune" } else { "pruned" },
            r.tags_kept
        );
    }
    for f in output
        .images
        .iter()
        .filter(|i| i.status == ImageStatus::Failed)
    {
        println!(
            "FAILED {}@{} -> {}/{}: {}",
            f.repository,
            f.digest,
            f.target_registry,
            f.target_repository,
            f.error.clone().unwrap_or_default()
        );
    }
    for f in &r.repository_failures {
        println!("FAILED repository {}: {}", f.repository, f.error);
    }
    Ok(())
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

fn short_host(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

/// Arguments of `start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// The deployed state machine.
    #[arg(long)]
    pub state_machine_arn: String,
    /// Execution name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Wait for the execution to end and print its output; exit 1 if it did not succeed.
    #[arg(long)]
    pub wait: bool,
    /// Send AWS calls here (moto); also `AWS_ENDPOINT_URL`.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
}

/// `start`: StartExecution, then (with `--wait`) DescribeExecution until it ends.
pub async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let text = args.input.read()?;
    let region = args
        .state_machine_arn
        .split(':')
        .nth(3)
        .filter(|r| !r.is_empty())
        .context(
            "--state-machine-arn: not an ARN (arn:aws:states:REGION:ACCOUNT:stateMachine:NAME)",
        )?;
    let settings = ecr::AwsSettings {
        endpoint_url: args.aws_endpoint_url.clone().filter(|u| !u.is_empty()),
        static_credentials: None,
        app_name: None,
    };
    let client = ecr::sfn_client(&settings, region).await;
    let name = args.name.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("ecr-replicator-{}-{}", now.as_secs(), now.subsec_nanos())
    });
    let started = client
        .start_execution()
        .state_machine_arn(&args.state_machine_arn)
        .name(name)
        .input(text)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "states:StartExecution on {}: {}",
                args.state_machine_arn,
                aws_message(&e)
            )
        })?;
    let arn = started.execution_arn().to_string();
    eprintln!("started {arn}");
    if !args.wait {
        println!("{arn}");
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let d = client
            .describe_execution()
            .execution_arn(&arn)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("states:DescribeExecution on {arn}: {}", aws_message(&e))
            })?;
        match d.status().as_str() {
            "RUNNING" | "PENDING_REDRIVE" => tokio::time::sleep(Duration::from_secs(2)).await,
            "SUCCEEDED" => {
                println!("{}", d.output().unwrap_or("{}"));
                return Ok(ExitCode::SUCCESS);
            }
            status => {
                if let Some(output) = d.output() {
                    println!("{output}");
                }
                bail!(
                    "execution {arn} ended {status}: {} {}",
                    d.error().unwrap_or(""),
                    d.cause().unwrap_or("")
                );
            }
        }
    }
}

fn aws_message<E: std::fmt::Debug + std::error::Error>(e: &E) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `schema`: the execution input's JSON Schema.
pub fn schema() -> anyhow::Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&schemars::schema_for!(Job))?
    );
    Ok(ExitCode::SUCCESS)
}
