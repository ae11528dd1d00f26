//! The real state machine (unchanged: Distributed Maps and `MaxConcurrencyPath` included) on
//! moto's Step Functions interpreter made as strict as AWS (`tests/aws_rules/strict_moto.py`),
//! its Lambda tasks served by the real function binaries: `cargo lambda watch
//! --only-lambda-apis` serves the Lambda invoke and Runtime APIs (it builds and starts nothing),
//! and the harness runs the binaries the test build already made (`target/debug/<function>`,
//! [`FUNCTION_INSTANCES`] processes per function, each polling watch's Runtime API as a Lambda
//! instance does). moto's interpreter invokes Lambda at `localhost:$MOTO_PORT`; the small proxy
//! here listens there, sends `/2015-03-31/functions/<name>/invocations` to watch (a 5xx from
//! watch, a handler error, becomes 200 with `X-Amz-Function-Error: Unhandled`, as Lambda
//! answers) and everything else to moto.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

use crate::registry::{free_port, which};

/// The metrics namespace the deployment gives the functions (the CDK app's).
pub const METRICS_NAMESPACE: &str = "EcrReplicator";

/// Each step's function (binary) and the placeholder it fills in the definition, from the
/// step registry.
pub fn functions() -> Vec<(String, &'static str)> {
    replication::steps::STEP_NAMES
        .iter()
        .map(|name| (replication::steps::function_placeholder(name), *name))
        .collect()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The definition's placeholder for the EventBridge PutEvents integration (the CDK app fills it
/// with the stack's partition: `arn:aws-cn:states:::events:putEvents` in China).
pub const PUT_EVENTS_PLACEHOLDER: &str = "EventsPutEventsArn";

/// The definition's placeholder for the Step Functions `startExecution.sync:2` integration
/// (ContinueAsNew), filled the same way.
pub const START_EXECUTION_PLACEHOLDER: &str = "StatesStartExecutionSyncArn";

/// The state machine with every placeholder replaced by a function ARN and the integrations of
/// the `aws` partition, as CDK's `definitionSubstitutions` does.
/// `E2E_DEFINITION` names another definition file to run instead (e.g. to see a test fail on an
/// older Retry).
pub fn definition(account: &str, region: &str) -> String {
    let path = std::env::var_os("E2E_DEFINITION")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("statemachine/replicate.asl.json"));
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the state machine at {}: {e}", path.display()));
    for (placeholder, function) in functions() {
        text = text.replace(
            &format!("${{{placeholder}}}"),
            &format!("arn:aws:lambda:{region}:{account}:function:{function}"),
        );
    }
    text = text.replace(
        &format!("${{{PUT_EVENTS_PLACEHOLDER}}}"),
        "arn:aws:states:::events:putEvents",
    );
    text = text.replace(
        &format!("${{{START_EXECUTION_PLACEHOLDER}}}"),
        "arn:aws:states:::states:startExecution.sync:2",
    );
    assert!(!text.contains("${"), "a placeholder is left");
    text
}

/// Where moto's Step Functions interpreter is made as strict as AWS (`strict_moto.py`).
pub fn strict_moto_script() -> PathBuf {
    workspace().join("tests/aws_rules/strict_moto.py")
}

/// moto with Step Functions execution on, `cargo lambda watch --only-lambda-apis` with the
/// function processes polling it, and the proxy between them.
pub struct LocalStepFunctions {
    /// What clients use: the proxy's URL (moto behind it).
    pub url: String,
    /// moto itself (what the functions use for ECR and STS).
    pub moto_url: String,
    moto: Child,
    watch: Child,
    functions: Option<FunctionInstances>,
    proxy: tokio::task::JoinHandle<()>,
    runtime_proxy: Option<tokio::task::JoinHandle<()>>,
    proxy_state: std::sync::Arc<Proxy>,
    dir: tempfile::TempDir,
}

fn cargo_lambda() -> PathBuf {
    let venv = workspace().join(".venv/bin/cargo-lambda");
    if venv.is_file() {
        return venv;
    }
    which("cargo-lambda")
        .expect("cargo-lambda not found: run `make setup` (installs it into .venv)")
}

/// Processes per function: as many invocations of one function as run at once (a Rust
/// `lambda_runtime` process serves one invocation at a time; more wait in watch's queue, as
/// `cargo lambda watch --concurrency 4` had them).
pub const FUNCTION_INSTANCES: usize = 4;

/// Where watch serves the Runtime API: a function's `AWS_LAMBDA_RUNTIME_API` is
/// `http://<address>:<port>/.rt/<function>` (cargo-lambda's `RUNTIME_EMULATOR_PATH` and
/// `RuntimeState::function_addr`, crates/cargo-lambda-watch; as `--only-lambda-apis` prints it).
const RUNTIME_API_PATH: &str = "/.rt";

/// Lambda's longest timeout (watch's `--timeout`, and the proxy's wait); each function's own,
/// from the synthesized template, is enforced by the invocation proxy (`crate::deployed`).
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(900);

/// The cargo target directory the test build used: the one this executable was built into
/// (`<target>/<profile>/deps/<test>` or `<target>/<profile>/<bin>`), else `CARGO_TARGET_DIR`
/// (relative: to the workspace), else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let mut dir = exe.parent()?;
        if dir.file_name()? == "deps" {
            dir = dir.parent()?;
        }
        // The profile directory holds a `.fingerprint` of cargo's; its parent is the target dir
        // (a `--target <triple>` build has one more level, which the functions do not use).
        dir.join(".fingerprint")
            .is_dir()
            .then(|| dir.parent().map(Path::to_path_buf))
            .flatten()
    });
    from_exe
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .filter(|dir| !dir.is_empty())
                .map(|dir| workspace().join(dir))
        })
        .unwrap_or_else(|| workspace().join("target"))
}

/// Where the function binaries are: the `debug` profile of [`target_dir`], as `cargo test
/// --workspace --all-targets` and `cargo build --workspace --bins` leave them.
pub fn functions_dir() -> PathBuf {
    target_dir().join("debug")
}

/// The function binaries, by function name, built once per process if any is missing or older
/// than a source it was built from (cargo's dep-info, `<bin>.d`): `cargo test -p e2e` builds
/// no binary of the `functions` crate.
fn function_binaries() -> std::collections::HashMap<&'static str, PathBuf> {
    static CHECKED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let dir = functions_dir();
    let binaries: std::collections::HashMap<&'static str, PathBuf> = functions()
        .into_iter()
        .map(|(_, function)| (function, dir.join(function)))
        .collect();
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if *checked {
        return binaries;
    }
    let mut outdated: Vec<String> = binaries
        .iter()
        .filter_map(|(function, path)| {
            outdated_binary(path).map(|why| format!("{function} ({why})"))
        })
        .collect();
    outdated.sort();
    if !outdated.is_empty() {
        build_function_binaries(&dir, &outdated);
        if let Some((function, path)) = binaries.iter().find(|(_, path)| !path.is_file()) {
            panic!(
                "{function} is still missing at {} after building the functions; build them \
                 into {} (profile debug): `cargo build --workspace --bins`",
                path.display(),
                target_dir().display()
            );
        }
    }
    *checked = true;
    binaries
}

/// Why the binary at `path` cannot be used as is: missing, or older than one of its sources.
fn outdated_binary(path: &Path) -> Option<String> {
    let Ok(built) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return Some("missing".into());
    };
    // `<bin>.d`: "<bin>: <source> <source> ...", spaces in paths escaped.
    let mut dep_info = path.as_os_str().to_owned();
    dep_info.push(".d");
    let text = std::fs::read_to_string(dep_info).ok()?;
    let (_, sources) = text.lines().next()?.split_once(": ")?;
    sources
        .replace("\\ ", "\0")
        .split_whitespace()
        .map(|source| PathBuf::from(source.replace('\0', " ")))
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|m| m.modified())
                .is_ok_and(|changed| changed > built)
        })
        .map(|source| format!("older than {}", source.display()))
}

/// Builds the function binaries into the test build's target dir: `cargo build --workspace
/// --bin <function>...`, the `functions` crate's binaries with the dependencies' features of a
/// workspace build (what `cargo test --workspace --all-targets` links them with; `-p functions`
/// alone would build another variant of half the dependency tree). Panics saying what to run
/// when it fails.
fn build_function_binaries(dir: &Path, outdated: &[String]) {
    use std::io::Write;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.args(["build", "--workspace"]);
    for (_, function) in functions() {
        command.args(["--bin", function]);
    }
    command
        .arg("--target-dir")
        .arg(target_dir())
        .current_dir(workspace())
        .stdin(Stdio::null());
    // Without what cargo set for this test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`,
    // ...): build scripts rerun when those change (ring's does, and with it rustls, the AWS
    // SDK...), which would rebuild half the tree here and again in the next workspace build.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo = [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&key)
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_");
        if set_by_cargo {
            command.env_remove(key);
        }
    }
    // Straight to stderr, not through the test harness's capture: the build's output follows.
    let _ = writeln!(
        std::io::stderr(),
        "e2e: building the function binaries in {} (outdated: {})",
        dir.display(),
        outdated.join(", ")
    );
    let status = command.status();
    if !matches!(&status, Ok(s) if s.success()) {
        panic!(
            "the state machine tests run the function binaries from {} and could not build them \
             ({status:?}; outdated: {}): run `cargo build --workspace --bins` (`cargo test \
             --workspace --all-targets` builds them too) and fix what it reports",
            dir.display(),
            outdated.join(", ")
        );
    }
}

/// The function processes: [`FUNCTION_INSTANCES`] of each function, started by one thread that
/// restarts any that exits (as Lambda starts a new instance) and kills them all when dropped.
struct FunctionInstances {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One function process (an instance) and how to start it again.
struct Instance {
    function: &'static str,
    /// Its number among the function's instances.
    slot: usize,
    command: Command,
    child: Option<Child>,
    /// When it was last started.
    started: Instant,
}

impl FunctionInstances {
    /// Starts every instance; each polls `runtime_api/<function>` and logs to `log`.
    fn start(
        binaries: &std::collections::HashMap<&'static str, PathBuf>,
        deployed: &std::collections::HashMap<String, crate::deployed::DeployedFunction>,
        runtime: std::sync::Arc<crate::deployed::RuntimeApi>,
        runtime_api: &str,
        env: &[(String, String)],
        log: &std::fs::File,
    ) -> Result<Self, String> {
        let mut instances = Vec::new();
        let mut names: Vec<_> = binaries.iter().collect();
        names.sort();
        for (function, binary) in names {
            for slot in 0..FUNCTION_INSTANCES {
                // What cargo-lambda's watch gives each function it starts (`watcher.rs`), then
                // the harness's variables.
                // Its memory as deployed (the Runtime API proxy gives each invocation the
                // deadline of its deployed timeout).
                let memory_mb = deployed[*function].memory_mb.to_string();
                let mut command = Command::new(binary);
                command
                    .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .env(
                        "AWS_LAMBDA_RUNTIME_API",
                        format!("{runtime_api}/{function}/{slot}"),
                    )
                    .env("AWS_LAMBDA_FUNCTION_NAME", function)
                    .env("AWS_LAMBDA_MAX_CONCURRENCY", "1")
                    .env("AWS_LAMBDA_INSTANCE_ID", format!("{function}-{slot}"))
                    .current_dir(workspace())
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().map_err(|e| e.to_string())?)
                    .stderr(log.try_clone().map_err(|e| e.to_string())?);
                die_with_parent(&mut command);
                instances.push(Instance {
                    function,
                    slot,
                    command,
                    child: None,
                    started: Instant::now(),
                });
            }
        }
        let log = log.try_clone().map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        // One thread starts, watches and stops every process: no other thread's end can touch
        // them, and each dies with the test process (`PR_SET_PDEATHSIG`, this thread's end).
        let thread = std::thread::Builder::new()
            .name("lambda-instances".into())
            .spawn({
                let stop = stop.clone();
                move || supervise(instances, &stop, &runtime, log, started_tx)
            })
            .map_err(|e| e.to_string())?;
        let started = started_rx
            .recv()
            .unwrap_or_else(|_| Err("the instance thread ended".into()));
        let instances = FunctionInstances {
            stop,
            thread: Some(thread),
        };
        started.map(|()| instances)
    }
}

impl Drop for FunctionInstances {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the instances (reporting on `started`), restarts any that exits (at most once a
/// second each, noted in the log), and kills them all when `stop` is set.
fn supervise(
    mut instances: Vec<Instance>,
    stop: &std::sync::atomic::AtomicBool,
    runtime: &crate::deployed::RuntimeApi,
    mut log: std::fs::File,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    use std::io::Write;
    let mut failure = None;
    for instance in &mut instances {
        match instance.command.spawn() {
            Ok(child) => instance.child = Some(child),
            Err(e) => {
                failure = Some(format!(
                    "cannot start {} ({:?}): {e}",
                    instance.function,
                    instance.command.get_program()
                ));
                break;
            }
        }
    }
    let failed = failure.is_some();
    let _ = started.send(failure.map_or(Ok(()), Err));
    while !failed && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // Instances whose invocation ran past the function's timeout end, as Lambda ends the
        // sandbox (restarted below like any that exits).
        let timed_out = std::mem::take(&mut *runtime.to_stop.lock().unwrap());
        for instance in &mut instances {
            let id = format!("{}-{}", instance.function, instance.slot);
            if let (true, Some(child)) = (timed_out.contains(&id), &mut instance.child) {
                let _ = writeln!(log, "e2e: {id} timed out; stopping it");
                let _ = child.kill();
            }
        }
        for instance in &mut instances {
            if let Some(child) = &mut instance.child {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        let _ = writeln!(
                            log,
                            "e2e: {} instance (pid {}) exited ({status}); starting another",
                            instance.function,
                            child.id()
                        );
                        instance.child = None;
                    }
                    Ok(None) | Err(_) => continue,
                }
            }
            if instance.started.elapsed() < Duration::from_secs(1) {
                continue;
            }
            instance.started = Instant::now();
            match instance.command.spawn() {
                Ok(child) => instance.child = Some(child),
                Err(e) => {
                    let _ = writeln!(log, "e2e: cannot start {}: {e}", instance.function);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for instance in &mut instances {
        if let Some(child) = &mut instance.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes the process `command` starts die with the thread that starts it (the supervisor): the
/// kernel kills it if the test process dies or exits without dropping the harness.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One child execution of a Distributed Map, as the strict interpreter recorded it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ChildExecution {
    /// STANDARD or EXPRESS.
    #[serde(rename = "type")]
    pub execution_type: String,
    /// Events in its history.
    pub events: usize,
    /// States it entered (state transitions).
    pub transitions: usize,
    /// Whether it failed.
    pub failed: bool,
    /// How long it ran.
    #[serde(default)]
    pub seconds: f64,
}

/// How an execution ended, with its history.
pub struct Execution {
    /// SUCCEEDED, FAILED, ...
    pub status: String,
    /// The output, when it succeeded.
    pub output: Option<serde_json::Value>,
    /// Error and cause, when it failed.
    pub cause: String,
    /// Wall time from start to end.
    pub seconds: f64,
    /// History events.
    pub events: usize,
    /// States entered (what Step Functions bills as state transitions).
    pub transitions: usize,
    /// Largest state input or output in the history, in bytes.
    pub largest_payload: usize,
    /// One line per event (id, type, state and payload or failure), for messages.
    pub history: Vec<String>,
}

impl Execution {
    /// The history, each line cut to `width`, for assertion messages.
    pub fn history_text(&self, width: usize) -> String {
        self.history
            .iter()
            .map(|l| &l[..l.len().min(width)])
            .collect::<Vec<_>>()
            .join("\n")
    }
}

struct Proxy {
    http: reqwest::Client,
    moto: String,
    watch: String,
    /// Per function, the Lambda service errors its next invocations answer with instead of
    /// running (see `LocalStepFunctions::fail_next_invocation`).
    faults: std::sync::Mutex<std::collections::HashMap<String, Vec<LambdaFault>>>,
    /// Per IAM action (`ecr:CreateRepository`), the AWS error its next calls answer with instead
    /// of reaching moto (see `LocalStepFunctions::fail_next_api_call`).
    api_faults: std::sync::Mutex<std::collections::HashMap<String, Vec<AwsFault>>>,
    /// Invocations per function (every child execution's included), faults counted too.
    invocations: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Seconds the invocations took per function, as the proxy waited for each answer.
    invocation_seconds: std::sync::Mutex<std::collections::HashMap<String, f64>>,
    /// Copy and put invocations running now, and the most ever running at once.
    copies_in_flight: std::sync::Mutex<(usize, usize)>,
    /// `invocations.log`: a line when each invocation starts and ends (a stuck run shows which).
    journal: std::sync::Mutex<Option<std::fs::File>>,
    /// Every AWS API call the functions made (they reach moto through this proxy).
    api_calls: std::sync::Mutex<Vec<ApiCall>>,
    /// Access key id of each assumed-role session handed out, to the role assumed.
    sessions: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Each function's deployed timeout: an invocation still running then is answered
    /// `Sandbox.Timedout` and its instance stopped.
    timeouts: std::collections::HashMap<String, Duration>,
    /// The Runtime API proxy's state (which instance runs which payload).
    runtime: std::sync::Arc<crate::deployed::RuntimeApi>,
    /// Reservations played (`LocalStepFunctions::reserve`): invocations beyond one answered 429.
    reservations: std::sync::Arc<crate::deployed::Reservations>,
}

/// An AWS API call made by a function, as the proxy saw it.
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// The function (`app/<name>` in the SDK's user agent).
    pub function: String,
    /// IAM action, e.g. `ecr:CreateRepository`, `sts:AssumeRole`.
    pub action: String,
    /// Region of the request's signature.
    pub region: String,
    /// The role whose session signed it (an assumed role), or `None`: the function's own role.
    pub assumed_role: Option<String>,
    /// Repositories named in the request (`repositoryName`, `repositoryNames`), the secret
    /// (`SecretId`), the KMS key (`KeyId`), or the role asked for by `AssumeRole`.
    pub resources: Vec<String>,
}

impl Proxy {
    fn note(&self, line: String) {
        use std::io::Write;
        if let Some(file) = self.journal.lock().unwrap().as_mut() {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// The work bucket every local run's functions use, in moto (the deployment's is the CDK app's
/// `WorkBucket`; the IAM check reads that bucket's ARN as this one's).
pub const WORK_BUCKET: &str = "ecr-replicator-work";
/// Its region, the functions' `AWS_REGION`.
pub const WORK_BUCKET_REGION: &str = "us-east-1";

/// The functions whose concurrent invocations `maxConcurrency` bounds.
const COPY_FUNCTIONS: [&str; 2] = ["copy-blobs", "put-manifests"];

/// The name of the upstream registry secret the rig deployment allows (a test creates it).
pub const RIG_UPSTREAM_SECRET_NAME: &str = "ecr-replicator-test/upstream";
/// Its ARN as jobs name it (without Secrets Manager's suffix), as `cdk/test/config.iam.json`
/// grants it.
pub const RIG_UPSTREAM_SECRET: &str =
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:ecr-replicator-test/upstream";

/// The KMS key the rig deployment signs promotion receipts with (`receiptKeyArn` in
/// `cdk/test/config.iam.json`); the harness seeds moto with it (`STRICT_MOTO_RECEIPT_KEY`).
pub const RIG_RECEIPT_KEY: &str =
    "arn:aws:kms:us-east-1:123456789012:key/0c7e5a1d-rig0-4ece-b1e7-000000000024";

/// The rig deployment's allowlist: the tests' registries (any port of 127.0.0.1, over plain
/// HTTP, with the rig's upstream secret) and the ECR hosts of the world with their roles, as
/// sources and destinations.
pub fn rig_allowlist() -> serde_json::Value {
    use crate::world::{role_of, DEST, DEST2, SOURCE, SOURCE_OTHER_REGION};
    let mut entries = vec![
        serde_json::json!({"registry": "127.0.0.1:*", "credentialArns": [RIG_UPSTREAM_SECRET]}),
    ];
    for host in [SOURCE, DEST, DEST2, SOURCE_OTHER_REGION] {
        entries.push(serde_json::json!({"registry": host, "roleArns": role_of(host).into_iter().collect::<Vec<_>>()}));
    }
    // The rig's destinations let jobs do everything a test plays: prune, every settings mode.
    let destinations: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            entry["prune"] = true.into();
            entry["settingsModes"] =
                serde_json::json!(["copy", "create", "mirror", "none", "copyRepositoryPolicy"]);
            entry
        })
        .collect();
    let (_, rig_key) = crate::image::signing_key(RIG_SIGNING_SEED);
    serde_json::json!({
        "sources": entries,
        "destinations": destinations,
        "insecure": ["127.0.0.1:*"],
        "trustPolicies": {RIG_TRUST_POLICY: {"publicKeys": [rig_key]}},
    })
}

/// The rig deployment's trust policy (`trustPolicies`): the key of `signing_key(RIG_SIGNING_SEED)`.
pub const RIG_TRUST_POLICY: &str = "rig-release";
/// The seed of the key the rig's trust policy trusts.
pub const RIG_SIGNING_SEED: u64 = 88;

/// How a Lambda invocation can end without the function answering, as Step Functions reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LambdaFault {
    /// The function ran past its timeout ("Task timed out after 900.00 seconds"), reported as
    /// `Sandbox.Timedout` by newer runtimes.
    Timeout,
    /// The runtime died (out of memory, or a timeout on older runtimes) and returned no error
    /// type: `Lambda.Unknown`. "Unhandled errors in Lambda are reported as Lambda.Unknown ...
    /// These include out-of-memory errors and function timeouts."
    /// <https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html>
    Unknown,
    /// A custom runtime (provided.al2023, our binaries) killed for memory: the process exits and
    /// Lambda reports `Runtime.ExitError` ("Runtime exited with error: signal: killed"; AWS
    /// re:Post knowledge center, "Lambda runtime exit error"), not `Lambda.Unknown`.
    ExitError,
}

/// An AWS API error as the service answers it (JSON protocol: the code in `__type` and in
/// `x-amzn-ErrorType`), for errors moto does not produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsFault {
    /// HTTP status.
    pub status: u16,
    /// Error code, e.g. `LimitExceededException`.
    pub code: String,
    /// The service's message.
    pub message: String,
}

impl AwsFault {
    /// ECR's answer when a service quota is reached, e.g. CreateRepository past the repositories
    /// per registry (ECR API reference, CreateRepository "Errors": LimitExceededException, HTTP
    /// 400, "The operation did not succeed because it would have exceeded a service limit for
    /// your account").
    pub fn ecr_limit_exceeded() -> Self {
        AwsFault {
            status: 400,
            code: "LimitExceededException".into(),
            message: "The operation did not succeed because it would have exceeded a service limit for your account.".into(),
        }
    }

    fn response(&self) -> Response {
        Response::builder()
            .status(self.status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", &self.code)
            .body(Body::from(
                serde_json::json!({"__type": self.code, "message": self.message}).to_string(),
            ))
            .unwrap()
    }
}

impl LambdaFault {
    fn body(self) -> &'static str {
        match self {
            LambdaFault::Timeout => {
                r#"{"errorType":"Sandbox.Timedout","errorMessage":"RequestId: 00000000 Error: Task timed out after 900.00 seconds"}"#
            }
            LambdaFault::ExitError => {
                r#"{"errorType":"Runtime.ExitError","errorMessage":"RequestId: 00000000 Error: Runtime exited with error: signal: killed"}"#
            }
            LambdaFault::Unknown => {
                r#"{"errorType":"Lambda.Unknown","errorMessage":"The cause could not be determined because Lambda did not return an error type. Returned payload: {\"errorType\":\"Runtime.OutOfMemory\"}"}"#
            }
        }
    }
}

impl LocalStepFunctions {
    /// Starts everything; `env` goes to every function (AWS endpoint, registry endpoints...),
    /// except `STRICT_MOTO_*` variables, which go to the interpreter (`strict_moto.py`).
    pub async fn start(env: &[(String, String)]) -> Self {
        let (interpreter_env, env): (Vec<_>, Vec<_>) = env
            .iter()
            .cloned()
            .partition(|(k, _)| k.starts_with("STRICT_MOTO_"));
        let env = env.as_slice();
        // First, as it may build them: nothing listens yet.
        let binaries = function_binaries();
        // Each function's timeout and memory as the synthesized deployment gives them.
        let deployed = crate::deployed::functions();
        let dir = tempfile::Builder::new()
            .prefix("ecr-replicator-sfn-")
            .tempdir()
            .unwrap();
        let (moto_port, proxy_port, watch_port) = (free_port(), free_port(), free_port());
        let timeouts: std::collections::HashMap<String, Duration> = deployed
            .iter()
            .map(|(function, d)| (function.clone(), d.timeout))
            .collect();
        let runtime = std::sync::Arc::new(crate::deployed::RuntimeApi::new(
            format!("http://127.0.0.1:{watch_port}{RUNTIME_API_PATH}"),
            timeouts.clone(),
        ));
        let moto_log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        // moto's server, its Step Functions interpreter patched to fail where AWS fails.
        let moto = Command::new(workspace().join(".venv/bin/python"))
            .arg(strict_moto_script())
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .env("MOTO_PORT", proxy_port.to_string())
            .env("STRICT_MOTO_STATS", dir.path().join("children.jsonl"))
            .envs(interpreter_env)
            .env_remove("MOTO_ACCOUNT_ID")
            .stdin(Stdio::null())
            .stdout(moto_log.try_clone().unwrap())
            .stderr(moto_log)
            .spawn()
            .unwrap();
        // Only the Lambda APIs: watch builds and starts no function (the harness runs the
        // test build's binaries against its Runtime API), and needs no `--concurrency` (it
        // would start `cargo run` instances of its own). It reads the workspace's metadata,
        // hence the directory.
        let mut watch_cmd = Command::new(cargo_lambda());
        watch_cmd
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
                &watch_port.to_string(),
                "--timeout",
                &INVOCATION_TIMEOUT.as_secs().to_string(),
            ])
            .current_dir(workspace());
        let defaults = [
            (
                // Through the proxy, which records each call for the IAM check.
                "AWS_ENDPOINT_URL".to_string(),
                format!("http://127.0.0.1:{proxy_port}"),
            ),
            ("AWS_ACCESS_KEY_ID".to_string(), "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "testing".to_string()),
            ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
            // The deployment's work bucket (the CDK app sets it for enumerate-images).
            ("AWS_REGION".to_string(), WORK_BUCKET_REGION.to_string()),
            (
                "ECR_REPLICATOR_WORK_BUCKET".to_string(),
                WORK_BUCKET.to_string(),
            ),
            // The deployment's metrics (EMF lines on the functions' stdout, as in Lambda).
            (
                replication::metrics::NAMESPACE_VARIABLE.to_string(),
                METRICS_NAMESPACE.to_string(),
            ),
            // The deployment's allowlist (the CDK app writes one from its configuration).
            (
                replication::allowlist::ALLOWLIST_VARIABLE.to_string(),
                rig_allowlist().to_string(),
            ),
        ];
        // A variable the caller gives replaces the rig's default.
        let defaults: Vec<(String, String)> = defaults
            .into_iter()
            .filter(|(k, _)| !env.iter().any(|(key, _)| key == k))
            .collect();
        // `ECR_REPLICATOR_FUNCTION_LOG=debug` (a RUST_LOG filter) makes the functions verbose.
        let log_filter = std::env::var("ECR_REPLICATOR_FUNCTION_LOG")
            .map(|filter| vec![("RUST_LOG".to_string(), filter)])
            .unwrap_or_default();
        let function_env: Vec<(String, String)> = defaults
            .into_iter()
            .chain(log_filter)
            .chain(env.iter().cloned())
            .collect();
        let watch_log = std::fs::File::create(dir.path().join("watch.log")).unwrap();
        let watch = watch_cmd
            .stdin(Stdio::null())
            .stdout(watch_log.try_clone().unwrap())
            .stderr(watch_log)
            .spawn()
            .unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", proxy_port))
            .await
            .unwrap();
        let state = std::sync::Arc::new(Proxy {
            http: reqwest::Client::builder()
                .timeout(INVOCATION_TIMEOUT)
                .build()
                .unwrap(),
            moto: format!("http://127.0.0.1:{moto_port}"),
            watch: format!("http://127.0.0.1:{watch_port}"),
            faults: Default::default(),
            api_faults: Default::default(),
            invocations: Default::default(),
            invocation_seconds: Default::default(),
            copies_in_flight: Default::default(),
            journal: std::sync::Mutex::new(
                std::fs::File::create(dir.path().join("invocations.log")).ok(),
            ),
            api_calls: Default::default(),
            sessions: Default::default(),
            timeouts,
            runtime: runtime.clone(),
            reservations: Default::default(),
        });
        let proxy_state = state.clone();
        let app = axum::Router::new().fallback(forward).with_state(state);
        let proxy = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let mut sfn = LocalStepFunctions {
            url: format!("http://127.0.0.1:{proxy_port}"),
            moto_url: format!("http://127.0.0.1:{moto_port}"),
            moto,
            watch,
            functions: None,
            proxy,
            runtime_proxy: None,
            proxy_state,
            dir,
        };
        sfn.wait_for_moto(moto_port).await;
        sfn.wait_for(watch_port, "cargo lambda watch").await;
        // The functions, once watch's Runtime API listens (each polls it as it starts).
        let functions_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(sfn.dir.path().join("functions.log"))
            .unwrap();
        // The instances reach watch's Runtime API through the deadline-setting proxy.
        let runtime_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let runtime_api = format!("http://{}", runtime_listener.local_addr().unwrap());
        let runtime_app = axum::Router::new()
            .fallback(crate::deployed::runtime_api_proxy)
            .with_state(runtime.clone());
        sfn.runtime_proxy = Some(tokio::spawn(async move {
            axum::serve(runtime_listener, runtime_app).await.unwrap();
        }));
        match FunctionInstances::start(
            &binaries,
            &deployed,
            runtime,
            &runtime_api,
            &function_env,
            &functions_log,
        ) {
            Ok(functions) => sfn.functions = Some(functions),
            Err(e) => panic!("{e}\n{}", sfn.logs()),
        }
        sfn.warm_up(watch_port).await;
        crate::moto::enable_executions_at(&format!("http://127.0.0.1:{moto_port}")).await;
        crate::moto::create_bucket_at(&format!("http://127.0.0.1:{moto_port}"), WORK_BUCKET).await;
        sfn
    }

    /// Waits until moto's own API answers (not merely something on its port: the port was
    /// free when asked, and another server of the test may have taken it since).
    async fn wait_for_moto(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !crate::moto::answers_as_moto(port) {
            if let Ok(Some(status)) = self.moto.try_wait() {
                panic!(
                    "moto_server exited ({status}) before answering on port {port} (taken by \
                     another server since it was found free?); logs in {}",
                    self.dir.path().display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for(&self, port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "{what} did not start; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Invokes every function once with an empty payload (each answers with a deserialisation
    /// error): every function polls watch's Runtime API before a test starts.
    async fn warm_up(&self, watch_port: u16) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        for (_, function) in functions() {
            let resp = http
                .post(format!(
                    "http://127.0.0.1:{watch_port}/2015-03-31/functions/{function}/invocations"
                ))
                .body("{}")
                .send()
                .await;
            assert!(
                resp.is_ok(),
                "warming up {function} failed: {resp:?}\n{}",
                self.logs()
            );
        }
    }

    /// The next invocation of `function` ends with `fault` instead of running (the Lambda
    /// service's answer for a timed-out or crashed function); later ones run as usual.
    pub fn fail_next_invocation(&self, function: &str, fault: LambdaFault) {
        self.proxy_state
            .faults
            .lock()
            .unwrap()
            .entry(function.to_string())
            .or_default()
            .push(fault);
    }

    /// Faults queued for `function` and not yet consumed by an invocation.
    /// The next call of `action` (an IAM action, `ecr:CreateRepository`) by any function answers
    /// `fault` instead of reaching moto (queued: one call per queued fault).
    pub fn fail_next_api_call(&self, action: &str, fault: AwsFault) {
        self.proxy_state
            .api_faults
            .lock()
            .unwrap()
            .entry(action.to_string())
            .or_default()
            .push(fault);
    }

    /// AWS faults queued for `action` and not served yet.
    pub fn api_faults_left(&self, action: &str) -> usize {
        self.proxy_state
            .api_faults
            .lock()
            .unwrap()
            .get(action)
            .map_or(0, Vec::len)
    }

    pub fn faults_left(&self, function: &str) -> usize {
        self.proxy_state
            .faults
            .lock()
            .unwrap()
            .get(function)
            .map_or(0, Vec::len)
    }

    /// Lambda invocations so far per function, across the parent and every child execution
    /// (moto keeps child executions' histories apart; the proxy sees every invocation).
    pub fn invocations(&self) -> std::collections::BTreeMap<String, usize> {
        self.proxy_state
            .invocations
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Seconds the invocations so far took per function (each from its request to its answer,
    /// as Lambda bills an invocation's duration), across every execution.
    pub fn invocation_seconds(&self) -> std::collections::BTreeMap<String, f64> {
        self.proxy_state
            .invocation_seconds
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Plays a reservation of `reserved` concurrent executions for `function` (the deployment's
    /// `copyConcurrency` for the copying functions, or what other runs left of it): invocations
    /// beyond it are answered 429 `TooManyRequestsException` and never run.
    pub fn reserve(&self, function: &str, reserved: usize) {
        self.proxy_state.reservations.reserve(function, reserved);
    }

    /// Invocations answered 429 so far, per function.
    pub fn throttled(&self) -> std::collections::BTreeMap<String, usize> {
        self.proxy_state.reservations.throttled()
    }

    /// Every deadline the functions were given: (function, milliseconds from the invocation's
    /// start to its `Lambda-Runtime-Deadline-Ms`).
    pub fn deadlines(&self) -> Vec<(String, u64)> {
        self.proxy_state.runtime.deadlines.lock().unwrap().clone()
    }

    /// Every AWS API call the functions made so far.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        self.proxy_state.api_calls.lock().unwrap().clone()
    }

    /// The most copy-blobs and put-manifests invocations that ever ran at once.
    pub fn max_concurrent_copies(&self) -> usize {
        self.proxy_state.copies_in_flight.lock().unwrap().1
    }

    /// The embedded-metric-format documents the functions wrote (parsed from their stdout).
    pub fn metric_documents(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("functions.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.find('{').map(|at| &line[at..]))
            .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
            .filter(|document| document.get("_aws").is_some())
            .collect()
    }

    /// Calls an AWS JSON-protocol API of this moto (EventBridge, SQS), for the tests' own
    /// seeding and reading; moto does not check signatures, it only reads the service name.
    pub async fn aws_json(
        &self,
        service: &str,
        target: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let version = if service == "sqs" { "1.0" } else { "1.1" };
        let resp = reqwest::Client::new()
            .post(&self.moto_url)
            .header("content-type", format!("application/x-amz-json-{version}"))
            .header("x-amz-target", target)
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{target}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// The logs of moto, watch and the functions, for failure messages.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- moto\n{}\n--- watch\n{}\n--- functions\n{}",
            tail(&read("moto.log")),
            tail(&read("watch.log")),
            tail(&read("functions.log"))
        )
    }

    /// AWS settings pointing at moto through the proxy.
    pub fn aws_settings(&self) -> ecr::AwsSettings {
        ecr::AwsSettings {
            endpoint_url: Some(self.url.clone()),
            static_credentials: Some(("testing".into(), "testing".into())),
            app_name: None,
        }
    }

    /// Starts an execution with a unique name (moto names unnamed ones "None"), waits up to 15
    /// minutes for it to end, and reads its history.
    pub async fn execute(&self, state_machine_arn: &str, input: &serde_json::Value) -> Execution {
        self.execute_within(state_machine_arn, input, Duration::from_secs(900))
            .await
    }

    /// `execute`, waiting up to `limit` (the scale run's executions take longer).
    pub async fn execute_within(
        &self,
        state_machine_arn: &str,
        input: &serde_json::Value,
        limit: Duration,
    ) -> Execution {
        let client = ecr::sfn_client(&self.aws_settings(), "us-east-1").await;
        let began = Instant::now();
        let (execution_arn, described) = run_to_end(&client, state_machine_arn, input, limit)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let mut execution = Execution {
            status: described.status().as_str().to_string(),
            output: described.output().map(|o| serde_json::from_str(o).unwrap()),
            cause: format!(
                "{} {}",
                described.error().unwrap_or(""),
                described.cause().unwrap_or("")
            ),
            seconds: began.elapsed().as_secs_f64(),
            events: 0,
            transitions: 0,
            largest_payload: 0,
            history: Vec::new(),
        };
        let mut next = None;
        loop {
            let page = client
                .get_execution_history()
                .execution_arn(&execution_arn)
                .set_next_token(next)
                .max_results(1000)
                .send()
                .await
                .unwrap();
            for e in page.events() {
                execution.events += 1;
                if e.r#type().as_str().ends_with("StateEntered") {
                    execution.transitions += 1;
                }
                let entered = e
                    .state_entered_event_details()
                    .map(|d| (d.name(), d.input().unwrap_or("")));
                let exited = e
                    .state_exited_event_details()
                    .map(|d| (d.name(), d.output().unwrap_or("")));
                let failed = e
                    .lambda_function_failed_event_details()
                    .map(|d| format!("{:?}: {:?}", d.error(), d.cause()))
                    .or_else(|| {
                        e.execution_failed_event_details()
                            .map(|d| format!("{:?}: {:?}", d.error(), d.cause()))
                    });
                let detail = match (entered.or(exited), failed) {
                    (Some((name, payload)), _) => {
                        execution.largest_payload = execution.largest_payload.max(payload.len());
                        format!("{name} {payload}")
                    }
                    (None, Some(failure)) => failure,
                    (None, None) => String::new(),
                };
                execution
                    .history
                    .push(format!("{} {:?} {detail}", e.id(), e.r#type()));
            }
            match page.next_token() {
                Some(n) => next = Some(n.to_string()),
                None => return execution,
            }
        }
    }

    /// Every child execution of every Distributed Map so far, in the order they ended.
    pub fn child_executions(&self) -> Vec<ChildExecution> {
        std::fs::read_to_string(self.dir.path().join("children.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a child record of strict_moto.py"))
            .collect()
    }

    /// Creates the state machine from the real definition; returns its ARN.
    pub async fn create_state_machine(&self, name: &str) -> String {
        let sfn = ecr::sfn_client(&self.aws_settings(), "us-east-1").await;
        sfn.create_state_machine()
            .name(name)
            .definition(definition("123456789012", "us-east-1"))
            .role_arn("arn:aws:iam::123456789012:role/ecr-replicator-workflow")
            .send()
            .await
            .unwrap()
            .state_machine_arn
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(6000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(start);
    &text[start..]
}

impl Drop for LocalStepFunctions {
    fn drop(&mut self) {
        self.proxy.abort();
        if let Some(runtime_proxy) = self.runtime_proxy.take() {
            runtime_proxy.abort();
        }
        // The function processes (killed and waited for by their thread), then the servers.
        drop(self.functions.take());
        for child in [&mut self.moto, &mut self.watch] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn forward(State(proxy): State<std::sync::Arc<Proxy>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let invocation = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|rest| rest.strip_suffix("/invocations"))
        .map(|name| {
            let name = percent_decode(name);
            name.rsplit(':').next().unwrap_or(&name).to_string()
        });
    if let Some(function) = &invocation {
        *proxy
            .invocations
            .lock()
            .unwrap()
            .entry(function.clone())
            .or_default() += 1;
    }
    let fault = invocation.as_ref().and_then(|function| {
        let mut faults = proxy.faults.lock().unwrap();
        let queue = faults.get_mut(function)?;
        (!queue.is_empty()).then(|| queue.remove(0))
    });
    // A reservation played full: Lambda refuses the invocation, the function never runs.
    let held = match invocation.as_deref().map(|f| proxy.reservations.admit(f)) {
        Some(crate::deployed::Admission::Throttled) => {
            return crate::deployed::throttled_response()
        }
        Some(crate::deployed::Admission::Runs(held)) => held,
        None => None,
    };
    if let Some(fault) = fault {
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-amz-function-error", "Unhandled")
            .body(Body::from(fault.body()))
            .unwrap();
    }
    let counted = invocation
        .as_deref()
        .is_some_and(|f| COPY_FUNCTIONS.contains(&f));
    if counted {
        let mut in_flight = proxy.copies_in_flight.lock().unwrap();
        in_flight.0 += 1;
        in_flight.1 = in_flight.1.max(in_flight.0);
    }
    let started = std::time::Instant::now();
    let id = format!("{:x}", fingerprint(&body));
    if let Some(function) = &invocation {
        proxy.note(format!("START {function} {id}"));
    }
    let name = invocation.clone();
    let timeout = invocation
        .as_ref()
        .and_then(|f| proxy.timeouts.get(f).copied())
        .unwrap_or(INVOCATION_TIMEOUT);
    let payload = crate::deployed::fingerprint(&body);
    let response = match tokio::time::timeout(
        timeout,
        forward_to(&proxy, invocation, method, path, query, headers, body),
    )
    .await
    {
        Ok(response) => response,
        // Still running at the function's timeout: Lambda answers for it and ends its sandbox.
        Err(_) => {
            proxy.runtime.stop_running(payload);
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-amz-function-error", "Unhandled")
                .body(Body::from(crate::deployed::timed_out_body(timeout)))
                .unwrap()
        }
    };
    drop(held);
    if let Some(function) = name {
        let seconds = started.elapsed().as_secs_f64();
        proxy.note(format!("END {function} {id} {seconds:.1}s"));
        *proxy
            .invocation_seconds
            .lock()
            .unwrap()
            .entry(function)
            .or_default() += seconds;
    }
    if counted {
        proxy.copies_in_flight.lock().unwrap().0 -= 1;
    }
    response
}

/// The AWS API call a function's request is: its action (ECR's JSON protocol names it in
/// `X-Amz-Target`, STS's query protocol in the form body), signer and resources. `None` for
/// requests that are not a function's (the harness's own have no `app/` in their user agent).
fn api_call(
    proxy: &Proxy,
    method: &axum::http::Method,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Option<ApiCall> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let function = header("user-agent")
        .split_whitespace()
        .find_map(|part| part.strip_prefix("app/"))?
        .to_string();
    let scope: Vec<&str> = header("authorization")
        .split("Credential=")
        .nth(1)
        .unwrap_or("")
        .split(',')
        .next()
        .unwrap_or("")
        .split('/')
        .collect();
    let (key, region, service) = (
        scope.first().copied().unwrap_or(""),
        scope.get(2).copied().unwrap_or("").to_string(),
        scope.get(3).copied().unwrap_or(""),
    );
    let (action, resources) = if let Some(target) = headers.get("x-amz-target") {
        let operation = target.to_str().ok()?.rsplit('.').next()?.to_string();
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let mut names: Vec<String> = json["repositoryNames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        names.extend(json["repositoryName"].as_str().map(str::to_string));
        // Secrets Manager: the secret asked for, as the caller named it; KMS: the key.
        names.extend(json["SecretId"].as_str().map(str::to_string));
        names.extend(json["KeyId"].as_str().map(str::to_string));
        (format!("{service}:{operation}"), names)
    } else if service == "s3" {
        // REST, path-style: the object's ARN; only the object calls the functions make.
        let action = match *method {
            axum::http::Method::PUT => "s3:PutObject",
            axum::http::Method::GET => "s3:GetObject",
            _ => return None,
        };
        (
            action.to_string(),
            vec![format!("arn:aws:s3:::{}", path.trim_start_matches('/'))],
        )
    } else {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let operation = form.get("Action")?.clone();
        (
            format!("{service}:{operation}"),
            form.get("RoleArn").cloned().into_iter().collect(),
        )
    };
    let assumed_role = proxy.sessions.lock().unwrap().get(key).cloned();
    Some(ApiCall {
        function,
        action,
        region,
        assumed_role,
        resources,
    })
}

/// Records which role an `AssumeRole` answer's access key belongs to.
fn remember_session(proxy: &Proxy, call: &ApiCall, response: &[u8]) {
    let text = String::from_utf8_lossy(response);
    let key = text
        .split("<AccessKeyId>")
        .nth(1)
        .and_then(|rest| rest.split("</AccessKeyId>").next());
    if let (Some(key), Some(role)) = (key, call.resources.first()) {
        proxy
            .sessions
            .lock()
            .unwrap()
            .insert(key.to_string(), role.clone());
    }
}

/// A short fingerprint of an invocation's payload, to pair its START and END lines.
fn fingerprint(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

async fn forward_to(
    proxy: &Proxy,
    invocation: Option<String>,
    method: axum::http::Method,
    path: String,
    query: String,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match invocation {
        Some(function) => {
            let resp = proxy
                .http
                .post(format!(
                    "{}/2015-03-31/functions/{function}/invocations",
                    proxy.watch
                ))
                .body(body)
                .send()
                .await;
            match resp {
                Ok(resp) => {
                    let failed = resp.status().is_server_error();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let mut out = Response::builder().status(200).header("content-type", "application/json");
                    if failed {
                        out = out.header("x-amz-function-error", "Unhandled");
                    }
                    out.body(Body::from(bytes)).unwrap()
                }
                Err(e) => Response::builder()
                    .status(200)
                    .header("x-amz-function-error", "Unhandled")
                    .body(Body::from(format!(r#"{{"errorType":"Lambda.ServiceException","errorMessage":"watch unreachable: {e}"}}"#)))
                    .unwrap(),
            }
        }
        None => {
            let call = api_call(proxy, &method, &path, &headers, &body);
            let fault = call.as_ref().and_then(|call| {
                let mut faults = proxy.api_faults.lock().unwrap();
                let queue = faults.get_mut(&call.action)?;
                (!queue.is_empty()).then(|| queue.remove(0))
            });
            if let (Some(fault), Some(call)) = (fault, call.clone()) {
                proxy.api_calls.lock().unwrap().push(call);
                return fault.response();
            }
            let mut rb = proxy
                .http
                .request(method, format!("{}{path}{query}", proxy.moto));
            for (k, v) in headers.iter() {
                if k != "host" && k != "content-length" {
                    rb = rb.header(k, v);
                }
            }
            match rb.body(body).send().await {
                Ok(resp) => {
                    let mut out = Response::builder().status(resp.status().as_u16());
                    for (k, v) in resp.headers() {
                        if k != "content-length" && k != "transfer-encoding" {
                            out = out.header(k, v);
                        }
                    }
                    let bytes = resp.bytes().await.unwrap_or_default();
                    if let Some(call) = call {
                        if call.action == "sts:AssumeRole" {
                            remember_session(proxy, &call, &bytes);
                        }
                        proxy.api_calls.lock().unwrap().push(call);
                    }
                    out.body(Body::from(bytes)).unwrap()
                }
                Err(e) => Response::builder()
                    .status(502)
                    .body(Body::from(e.to_string()))
                    .unwrap(),
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            ) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts an execution under a unique name (moto names unnamed ones "None") and polls until it
/// is no longer RUNNING or `limit` passes; returns its ARN and final description.
pub async fn run_to_end(
    client: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    input: &serde_json::Value,
    limit: Duration,
) -> Result<
    (
        String,
        aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput,
    ),
    String,
> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let started = client
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(format!("run-{nanos}"))
        .input(input.to_string())
        .send()
        .await
        .map_err(|e| format!("StartExecution: {e:?}"))?;
    let began = Instant::now();
    loop {
        let d = client
            .describe_execution()
            .execution_arn(started.execution_arn())
            .send()
            .await
            .map_err(|e| format!("DescribeExecution: {e:?}"))?;
        if d.status().as_str() != "RUNNING" {
            return Ok((started.execution_arn().to_string(), d));
        }
        if began.elapsed() > limit {
            return Err(format!("execution still running after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the path is inside the workspace.
pub fn inside_workspace(path: &Path) -> bool {
    path.starts_with(workspace())
}
