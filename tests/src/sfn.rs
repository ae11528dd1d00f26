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
//!
//! Here the harness ([`LocalStepFunctions`]: starting everything, what it observed, its logs);
//! `rig` holds the deployment it plays (definition, names, allowlist), `function_binaries` and
//! `function_instances` the function processes, `proxy` the proxy, `faults` what a test queues
//! there, and `execution` running an execution and reading its history.

mod execution;
mod faults;
mod function_binaries;
mod function_instances;
mod proxy;
mod rig;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::{free_port, which};

pub use execution::{run_to_end, ChildExecution, Execution};
pub use faults::{AwsFault, LambdaFault};
use function_binaries::function_binaries;
pub use function_binaries::{functions_dir, target_dir};
use function_instances::FunctionInstances;
pub use function_instances::FUNCTION_INSTANCES;
pub use proxy::ApiCall;
use proxy::{forward, Proxy};
pub use rig::{
    definition, functions, inside_workspace, rig_allowlist, strict_moto_script, workspace,
    METRICS_NAMESPACE, PUT_EVENTS_PLACEHOLDER, RIG_RECEIPT_KEY, RIG_SIGNING_SEED, RIG_TRUST_POLICY,
    RIG_UPSTREAM_SECRET, RIG_UPSTREAM_SECRET_NAME, START_EXECUTION_PLACEHOLDER, WORK_BUCKET,
    WORK_BUCKET_REGION,
};

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

/// Where watch serves the Runtime API: a function's `AWS_LAMBDA_RUNTIME_API` is
/// `http://<address>:<port>/.rt/<function>` (cargo-lambda's `RUNTIME_EMULATOR_PATH` and
/// `RuntimeState::function_addr`, crates/cargo-lambda-watch; as `--only-lambda-apis` prints it).
const RUNTIME_API_PATH: &str = "/.rt";

/// Lambda's longest timeout (watch's `--timeout`, and the proxy's wait); each function's own,
/// from the synthesized template, is enforced by the invocation proxy (`crate::deployed`).
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(900);

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
            // The deployment's work bucket, given to the functions the synthesized template
            // names it for (`deployed::WORK_BUCKET_VARIABLE`).
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
