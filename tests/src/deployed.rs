//! The Lambda service as the deployment configures it, for the state machine rig: each
//! function's timeout and memory read from the synthesized template (`make cdk-test` writes
//! `cdk/cdk.out.iam`, the rig deployment's synth), the deadline a function is told, and a
//! reservation that throttles invocations beyond it.
//!
//! `cargo lambda watch` gives every invocation `Lambda-Runtime-Deadline-Ms: 600000` (a constant,
//! not an epoch time: `functions_router.rs` of cargo-lambda-watch 1.9) and one `--timeout` for
//! all functions, so the rig puts a small proxy between each function instance and watch's
//! Runtime API ([`runtime_api_proxy`]) that sets the deadline as Lambda does (the invocation's
//! start plus the function's timeout, in epoch milliseconds: "Lambda-Runtime-Deadline-Ms – The
//! date that the function times out in Unix time milliseconds", Lambda developer guide, "Using
//! the Lambda runtime API for custom runtimes", Next invocation), and the invocation proxy
//! answers an invocation still running at its function's timeout as Lambda does
//! (`Sandbox.Timedout`, "Task timed out after N.00 seconds") and stops that instance.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

/// One function as deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeployedFunction {
    /// `Timeout`.
    pub timeout: Duration,
    /// `MemorySize`, in MB.
    pub memory_mb: u32,
    /// `ReservedConcurrentExecutions`, when the deployment sets it (`copyConcurrency`).
    pub reserved_concurrency: Option<u32>,
    /// Whether its `Environment` names the work bucket ([`WORK_BUCKET_VARIABLE`]): the rig
    /// gives the variable to exactly these functions.
    pub work_bucket: bool,
}

/// The variable the CDK app names the deployment's work bucket in.
pub const WORK_BUCKET_VARIABLE: &str = "ECR_REPLICATOR_WORK_BUCKET";

/// The synthesized workflow template the rig deployment is read from.
pub fn template_path() -> PathBuf {
    crate::sfn::workspace().join("cdk/cdk.out.iam/EcrReplicatorWorkflow.template.json")
}

/// Every step's function as the synthesized template deploys it, by function (step) name.
/// Panics naming the file and `make cdk-test` when the template is missing, and naming the
/// function when one of the step registry's functions is not in it.
pub fn functions() -> HashMap<String, DeployedFunction> {
    let path = template_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the rig runs each function under its deployed timeout and memory, read from {} \
             ({e}): run `make cdk-test` (it synthesizes the rig deployment, \
             cdk/test/config.iam.json, into cdk/cdk.out.iam)",
            path.display()
        )
    });
    let template: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): run `make cdk-test`", path.display()));
    let mut functions = HashMap::new();
    for resource in template["Resources"].as_object().into_iter().flatten() {
        let (_, resource) = resource;
        if resource["Type"] != "AWS::Lambda::Function" {
            continue;
        }
        let properties = &resource["Properties"];
        // The CDK app describes each function as "ecr-replicator step <name>".
        let Some(name) = properties["Description"]
            .as_str()
            .and_then(|d| d.strip_prefix("ecr-replicator step "))
        else {
            continue;
        };
        let number = |key: &str| properties[key].as_u64();
        functions.insert(
            name.to_string(),
            DeployedFunction {
                // Lambda's defaults: 3 seconds and 128 MB.
                timeout: Duration::from_secs(number("Timeout").unwrap_or(3)),
                memory_mb: number("MemorySize").unwrap_or(128) as u32,
                reserved_concurrency: number("ReservedConcurrentExecutions").map(|n| n as u32),
                work_bucket: properties["Environment"]["Variables"]
                    .get(WORK_BUCKET_VARIABLE)
                    .is_some(),
            },
        );
    }
    for (_, step) in crate::sfn::functions() {
        assert!(
            functions.contains_key(step),
            "{} deploys no function {step} (\"ecr-replicator step {step}\"): run `make cdk-test`",
            path.display()
        );
    }
    functions
}

/// Lambda's answer to an invocation still running at the function's timeout.
pub fn timed_out_body(timeout: Duration) -> String {
    serde_json::json!({
        "errorType": "Sandbox.Timedout",
        "errorMessage": format!(
            "RequestId: 00000000 Error: Task timed out after {}.00 seconds",
            timeout.as_secs()
        ),
    })
    .to_string()
}

/// Invoke's answer when a function's reservation (or the account's concurrency) is full: HTTP
/// 429 `TooManyRequestsException` (Lambda API reference, Invoke, Errors: "TooManyRequestsException
/// ... HTTP Status Code: 429"), its body `Type`, `message`, `Reason` and `retryAfterSeconds` in
/// the `Retry-After` header (botocore's Lambda model, TooManyRequestsException;
/// `ReservedFunctionConcurrentInvocationLimitExceeded` for a reserved function).
pub fn throttled_response() -> Response {
    Response::builder()
        .status(429)
        .header("content-type", "application/json")
        .header("x-amzn-errortype", "TooManyRequestsException")
        .header("retry-after", "1")
        .body(Body::from(
            serde_json::json!({
                "Type": "User",
                "message": "Rate Exceeded.",
                "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
            })
            .to_string(),
        ))
        .unwrap()
}

/// Reservations the rig plays (a function's concurrent invocations at most), the invocations
/// running under each, and how many were throttled.
#[derive(Default)]
pub struct Reservations {
    /// Function -> (reserved, running).
    limits: Mutex<HashMap<String, (usize, usize)>>,
    /// Function -> invocations answered 429.
    throttled: Mutex<HashMap<String, usize>>,
}

/// Whether an invocation may run.
pub enum Admission {
    /// The reservation is full: answered 429, counted.
    Throttled,
    /// It runs, holding its place in the reservation, if its function has one, until dropped.
    Runs(Option<Held>),
}

/// A running invocation's hold on its function's reservation, released when dropped (also when
/// the caller goes away mid-invocation).
pub struct Held {
    reservations: Arc<Reservations>,
    function: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((_, running)) = self
            .reservations
            .limits
            .lock()
            .unwrap()
            .get_mut(&self.function)
        {
            *running = running.saturating_sub(1);
        }
    }
}

impl Reservations {
    /// `function` runs at most `reserved` invocations at once; more are answered 429.
    pub fn reserve(&self, function: &str, reserved: usize) {
        self.limits
            .lock()
            .unwrap()
            .insert(function.to_string(), (reserved, 0));
    }

    /// Takes a place for an invocation of `function`: throttled (and counted) when its
    /// reservation is full, else a hold (none for a function without a reservation).
    pub fn admit(self: &Arc<Self>, function: &str) -> Admission {
        let mut limits = self.limits.lock().unwrap();
        let Some((reserved, running)) = limits.get_mut(function) else {
            return Admission::Runs(None);
        };
        if *running >= *reserved {
            drop(limits);
            *self
                .throttled
                .lock()
                .unwrap()
                .entry(function.to_string())
                .or_default() += 1;
            return Admission::Throttled;
        }
        *running += 1;
        Admission::Runs(Some(Held {
            reservations: self.clone(),
            function: function.to_string(),
        }))
    }

    /// Invocations answered 429 so far, per function.
    pub fn throttled(&self) -> std::collections::BTreeMap<String, usize> {
        self.throttled
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// What the Runtime API proxy shares with the invocation proxy and the instance supervisor.
pub struct RuntimeApi {
    /// Watch's Runtime API: `http://127.0.0.1:<port>/.rt`.
    pub watch: String,
    /// Each function's deployed timeout.
    pub timeouts: HashMap<String, Duration>,
    /// The instance (`<function>-<slot>`) each running invocation's payload went to, by the
    /// payload's fingerprint.
    pub running: Mutex<HashMap<u64, String>>,
    /// Instances to stop (a timed-out invocation's), taken by the supervisor.
    pub to_stop: Mutex<Vec<String>>,
    /// Deadlines handed out (function, milliseconds from the invocation's start to its
    /// deadline), for tests.
    pub deadlines: Mutex<Vec<(String, u64)>>,
    http: reqwest::Client,
}

impl RuntimeApi {
    /// The proxy's state: watch's Runtime API at `watch`, the functions' timeouts.
    pub fn new(watch: String, timeouts: HashMap<String, Duration>) -> Self {
        RuntimeApi {
            watch,
            timeouts,
            running: Mutex::default(),
            to_stop: Mutex::default(),
            deadlines: Mutex::default(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
        }
    }

    /// Stops the instance that runs the invocation with payload fingerprint `payload` (its
    /// function timed out), as Lambda ends a timed-out sandbox.
    pub fn stop_running(&self, payload: u64) {
        if let Some(instance) = self.running.lock().unwrap().remove(&payload) {
            self.to_stop.lock().unwrap().push(instance);
        }
    }
}

/// The payload fingerprint the invocation proxy and the Runtime API proxy both compute.
pub fn fingerprint(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

/// Serves `/<function>/<slot>/<runtime API path>` (an instance's `AWS_LAMBDA_RUNTIME_API` is
/// `http://127.0.0.1:<port>/<function>/<slot>`) by forwarding to watch's
/// `/.rt/<function>/<path>`; a next-invocation answer gets the deadline the function's timeout
/// gives, and its payload is noted as running on that instance.
pub async fn runtime_api_proxy(State(api): State<Arc<RuntimeApi>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (Some(function), Some(slot), Some(rest)) = (parts.next(), parts.next(), parts.next())
    else {
        return Response::builder()
            .status(404)
            .body(Body::from(format!("no instance in {path}")))
            .unwrap();
    };
    let (function, slot, rest) = (function.to_string(), slot.to_string(), rest.to_string());
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 64 << 20)
        .await
        .unwrap_or_default();
    let mut forwarded = api
        .http
        .request(method, format!("{}/{function}/{rest}", api.watch));
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            forwarded = forwarded.header(k, v);
        }
    }
    let answer = match forwarded.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .unwrap()
        }
    };
    let status = answer.status();
    let mut out = Response::builder().status(status.as_u16());
    let next = rest.ends_with("runtime/invocation/next") && status.as_u16() == 200;
    for (k, v) in answer.headers() {
        if k == "content-length" || k == "transfer-encoding" {
            continue;
        }
        if next && k == "lambda-runtime-deadline-ms" {
            continue;
        }
        out = out.header(k, v);
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    if next {
        let timeout = api
            .timeouts
            .get(&function)
            .copied()
            .unwrap_or(Duration::from_secs(900));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        out = out.header(
            "lambda-runtime-deadline-ms",
            (now + timeout).as_millis().to_string(),
        );
        api.deadlines
            .lock()
            .unwrap()
            .push((function.clone(), timeout.as_millis() as u64));
        api.running
            .lock()
            .unwrap()
            .insert(fingerprint(&bytes), format!("{function}-{slot}"));
    }
    out.body(Body::from(bytes)).unwrap()
}
