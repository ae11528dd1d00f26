//! statemachine/replicate.asl.json: valid for both asl-validator and @wmfs/statelint once its
//! placeholders are filled as CDK fills them, JSONPath only, every placeholder a function; and the
//! committed JSON Schema of the execution input matches the Rust types.

use std::process::Command;

use e2e::sfn::{
    definition, functions, workspace, PUT_EVENTS_PLACEHOLDER, START_EXECUTION_PLACEHOLDER,
};

fn node_tool(name: &str) -> std::path::PathBuf {
    let path = workspace()
        .join("statemachine/node_modules/.bin")
        .join(name);
    assert!(
        path.exists(),
        "{name} not installed: run `make setup` (npm ci --prefix statemachine)"
    );
    path
}

fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .suffix(".asl.json")
        .tempfile()
        .unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// The validator exited 0; otherwise its complaints are the failure message.
fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn asl_validator_accepts_the_substituted_definition() {
    let file = write_temp(&definition("123456789012", "us-east-1"));
    let out = Command::new(node_tool("asl-validator"))
        .arg("--json-path")
        .arg(file.path())
        .output()
        .unwrap();
    assert_succeeded(&out);
}

#[test]
fn statelint_accepts_it_but_for_the_distributed_map_fields_it_predates() {
    let text = definition("123456789012", "us-east-1");
    let full = Command::new(node_tool("statelint"))
        .arg(write_temp(&text).path())
        .output()
        .unwrap();
    let complaints: Vec<String> = String::from_utf8_lossy(&full.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&full.stderr).lines())
        .filter(|l| l.starts_with('\t'))
        .map(str::to_string)
        .collect();
    // statelint predates MaxConcurrencyPath, ToleratedFailurePercentage and ItemBatcher
    // (Distributed Map); asl-validator, above, knows them.
    assert!(
        complaints.iter().all(|c| c.contains("MaxConcurrencyPath")
            || c.contains("ToleratedFailurePercentage")
            || c.contains("\"ItemBatcher\" not allowed")),
        "statelint: {complaints:?}"
    );

    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if m.remove("MaxConcurrencyPath").is_some() {
                    m.insert("MaxConcurrency".into(), 10.into());
                }
                m.remove("ToleratedFailurePercentage");
                m.remove("ItemBatcher");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    let out = Command::new(node_tool("statelint"))
        .arg(write_temp(&value.to_string()).path())
        .output()
        .unwrap();
    assert_succeeded(&out);
}

#[test]
fn the_definition_uses_jsonpath_only_and_every_placeholder_is_a_function() {
    let raw = std::fs::read_to_string(workspace().join("statemachine/replicate.asl.json")).unwrap();
    for banned in ["JSONata", "\"Assign\"", "\"Arguments\"", "{%"] {
        assert!(
            !raw.contains(banned),
            "{banned} found: the state machine must use JSONPath (moto's interpreter)"
        );
    }
    let used: std::collections::BTreeSet<&str> = raw
        .match_indices("${")
        .map(|(i, _)| &raw[i + 2..i + 2 + raw[i + 2..].find('}').unwrap()])
        .collect();
    let steps = functions();
    let mut known: std::collections::BTreeSet<&str> =
        steps.iter().map(|(p, _)| p.as_str()).collect();
    known.insert(PUT_EVENTS_PLACEHOLDER);
    known.insert(START_EXECUTION_PLACEHOLDER);
    assert_eq!(
        used, known,
        "the state machine's functions are the registry's steps, and the partition"
    );
    // Service integrations run in the deployment's partition: `arn:aws:` fails them in China
    // and GovCloud (a Resource of another partition is not an integration there).
    assert!(
        !raw.contains("arn:aws"),
        "a literal partition in the definition: use ${{{PUT_EVENTS_PLACEHOLDER}}}"
    );
    for (_, name) in &steps {
        let binary = format!("crates/functions/src/bin/{name}.rs");
        assert!(
            workspace().join(&binary).is_file(),
            "step {name} has no function binary {binary}"
        );
    }
}

#[test]
fn the_committed_schema_matches_the_job_type() {
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("schema/job.schema.json")).unwrap(),
    )
    .unwrap();
    let generated = serde_json::to_value(schemars::schema_for!(replication::Job)).unwrap();
    assert_eq!(
        committed, generated,
        "schema/job.schema.json is stale: run `ecr-replicator schema > schema/job.schema.json`"
    );
    for example in std::fs::read_dir(workspace().join("examples")).unwrap() {
        let path = example.unwrap().path();
        replication::Job::parse(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Every Task retries Lambda's transient errors and its timeouts/crashes (`Lambda.Unknown`,
/// `Sandbox.Timedout`, and `Runtime.ExitError`, what a custom runtime killed for memory reports:
/// no Retry names them by default), bounded, with jitter and a maximum
/// delay; byte counts never go through an intrinsic (32-bit); every Map's concurrency is bounded
/// by the shares of `maxConcurrency` (`Concurrency::share`).
#[test]
fn every_task_retries_with_jitter_and_no_byte_count_goes_through_an_intrinsic() {
    let raw = std::fs::read_to_string(workspace().join("statemachine/replicate.asl.json")).unwrap();
    // The one sum an intrinsic makes is a child's page count (at most pagesPerChild, far inside
    // 32 bits); byte counts are carried by the copy step.
    assert_eq!(
        raw.matches("States.MathAdd").count(),
        raw.matches("\"States.MathAdd($.pages, 1)\"").count(),
        "an intrinsic adds numbers other than the page count"
    );
    let definition: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut tasks = 0;
    let mut maps = Vec::new();
    fn walk(
        states: &serde_json::Value,
        (tasks, events): (&mut usize, &mut usize),
        maps: &mut Vec<(String, serde_json::Value)>,
    ) {
        for (name, state) in states.as_object().unwrap() {
            match state["Type"].as_str().unwrap() {
                "Task" if state["Resource"] == "${StatesStartExecutionSyncArn}" => {
                    // Only StartExecution's own errors are retried: a failed successor is the
                    // run's failure, never started again.
                    for r in state["Retry"].as_array().unwrap() {
                        assert_eq!(r["JitterStrategy"], "FULL", "{name}: {r}");
                        for e in r["ErrorEquals"].as_array().unwrap() {
                            assert!(
                                e.as_str().unwrap().starts_with("StepFunctions."),
                                "{name}: {e}"
                            );
                        }
                    }
                    assert!(state.get("Catch").is_none(), "{name}");
                }
                "Task" if state["Resource"] == "${EventsPutEventsArn}" => {
                    // An event is sent with retries, and never fails what it announces.
                    *events += 1;
                    let retry = state["Retry"].as_array().unwrap();
                    assert!(
                        retry.iter().all(|r| r["JitterStrategy"] == "FULL"),
                        "{name}"
                    );
                    assert_eq!(
                        state["Catch"][0]["ErrorEquals"],
                        serde_json::json!(["States.ALL"]),
                        "{name}"
                    );
                    assert_eq!(state["Catch"][0]["Next"], state["Next"], "{name}");
                }
                "Task" => {
                    *tasks += 1;
                    let retry = state["Retry"].as_array().unwrap();
                    let named: Vec<&str> = retry
                        .iter()
                        .flat_map(|r| r["ErrorEquals"].as_array().unwrap())
                        .map(|e| e.as_str().unwrap())
                        .collect();
                    for error in [
                        "Lambda.ServiceException",
                        "Lambda.TooManyRequestsException",
                        "Lambda.Unknown",
                        "Runtime.ExitError",
                        "Sandbox.Timedout",
                        "ReplicationRetryable",
                    ] {
                        assert!(named.contains(&error), "{name} does not retry {error}");
                    }
                    for r in retry {
                        assert_eq!(r["JitterStrategy"], "FULL", "{name}: {r}");
                        assert!(r["MaxDelaySeconds"].as_u64().is_some(), "{name}: {r}");
                        let errors = r["ErrorEquals"].as_array().unwrap();
                        if errors.contains(&"Lambda.TooManyRequestsException".into()) {
                            // A throttled invocation waits out a reservation held by others'
                            // invocations, each of up to Lambda's longest timeout (15 minutes):
                            // the expected wait (FULL jitter: half of each delay) exceeds it.
                            for throttle in LAMBDA_THROTTLING {
                                assert!(errors.contains(&throttle.into()), "{name}: {r}");
                            }
                            let waits = retry_waits(r);
                            let expected: f64 = waits.iter().sum::<f64>() / 2.0;
                            assert!(expected > 900.0, "{name}: {expected} s expected: {r}");
                        } else {
                            assert!(r["MaxAttempts"].as_u64().unwrap() <= 6, "{name}: {r}");
                        }
                    }
                }
                "Map" => {
                    maps.push((name.clone(), state.clone()));
                    walk(&state["ItemProcessor"]["States"], (tasks, events), maps);
                }
                _ => {}
            }
        }
    }
    let mut events = 0;
    walk(&definition["States"], (&mut tasks, &mut events), &mut maps);
    // 13 Tasks: CopyBatchedRanges' copy-blobs beside CopySmallRanges' and CopyPageRanges'.
    assert_eq!((tasks, events), (13, 2));
    for (name, map) in &maps {
        let distributed = map["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED";
        let bounded =
            map["MaxConcurrency"].as_u64().is_some() || map["MaxConcurrencyPath"].is_string();
        // Inline maps over destinations are bounded by MAX_DESTINATIONS.
        assert!(
            bounded || (!distributed && name == "EnsureRepositories"),
            "{name} is unbounded"
        );
    }
    // The run-wide bound: repositories at once x (ranges or puts at once per repository).
    let path =
        |name: &str| maps.iter().find(|(n, _)| n == name).unwrap().1["MaxConcurrencyPath"].clone();
    assert_eq!(path("ForEachRepository"), "$.concurrency.repositories");
    assert_eq!(path("CopyPageRanges"), "$.imageConcurrency");
    // A page's puts: one batch child at a time, its tasks imageConcurrency at once.
    let map = |name: &str| &maps.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(map("ForEachImage")["MaxConcurrency"], 1);
    assert_eq!(path("PutImages"), "$.BatchInput.imageConcurrency");
    assert_eq!(
        map("PutImages")["ItemSelector"]["copied.$"],
        "$.BatchInput.copied"
    );
    // One child a page: a batch takes a page's tasks, as the cost model counts.
    let batcher = &map("ForEachImage")["ItemBatcher"];
    assert_eq!(
        batcher["MaxItemsPerBatch"].as_u64(),
        Some(replication::cost::IMAGES_PER_CHILD)
    );
    assert_eq!(
        replication::cost::IMAGES_PER_CHILD,
        replication::steps::TASKS_PER_PAGE as u64
    );
    assert!(batcher["MaxInputBytesPerBatch"].as_u64().unwrap() <= 256 * 1024);
}

/// Lambda's errors for an invocation it did not run (a reservation or the account's concurrency
/// is full, or the service failed): retried for as long as a reservation can stay full.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html>
const LAMBDA_THROTTLING: [&str; 4] = [
    "Lambda.TooManyRequestsException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
];

/// A retrier's longest wait before each retry, as Step Functions computes it: `IntervalSeconds`
/// (default 1) times `BackoffRate` (default 2.0) per attempt, capped at `MaxDelaySeconds`, for
/// `MaxAttempts` (default 3) retries; FULL jitter waits a uniform random part of each.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html#error-handling-retrying-after-an-error>
fn retry_waits(retrier: &serde_json::Value) -> Vec<f64> {
    let interval = retrier["IntervalSeconds"].as_f64().unwrap_or(1.0);
    let rate = retrier["BackoffRate"].as_f64().unwrap_or(2.0);
    let cap = retrier["MaxDelaySeconds"].as_f64().unwrap_or(f64::MAX);
    let attempts = retrier["MaxAttempts"].as_u64().unwrap_or(3);
    (0..attempts)
        .map(|n| (interval * rate.powi(n as i32)).min(cap))
        .collect()
}

/// `maxConcurrency` shared out: repositories x images never exceeds it, and never drops to 0.
#[test]
fn max_concurrency_bounds_the_whole_runs_copies() {
    for max in 1..=1000 {
        let c = replication::steps::Concurrency::share(max);
        assert!(c.repositories >= 1 && c.images >= 1, "{max}: {c:?}");
        assert!(c.repositories * c.images <= max, "{max}: {c:?}");
        assert!(
            c.repositories * c.images * 2 > max || max < 5,
            "{max}: {c:?} wastes the budget"
        );
    }
    assert_eq!(
        replication::steps::Concurrency::share(10),
        replication::steps::Concurrency {
            repositories: 2,
            images: 5
        }
    );
}

/// A `maxConcurrency` above the deployment's reservation for the copying functions
/// (`copyConcurrency`) is cut to it: a run never starts more copy invocations at once than
/// Lambda runs for it; without a reservation it is as asked.
#[test]
fn max_concurrency_is_capped_to_the_copy_functions_reservation() {
    let reserved = replication::connect::WorkflowLimits {
        copy_concurrency: Some(20),
        ..Default::default()
    };
    for max in 1..=1000 {
        let c = replication::steps::Concurrency::share(reserved.copies_at_once(max));
        assert!(c.repositories * c.images <= max.min(20), "{max}: {c:?}");
    }
    assert_eq!(reserved.copies_at_once(200), 20);
    assert_eq!(reserved.copies_at_once(5), 5);
    let unreserved = replication::connect::WorkflowLimits::default();
    assert_eq!(unreserved.copies_at_once(200), 200);
}

/// The CDK config's `prices` names exactly the price table's fields the functions read (less
/// the copy function's memory, which the app sets, and the region, which Lambda does).
#[test]
fn the_cdk_prices_are_the_functions_price_table() {
    let model = serde_json::to_value(replication::cost::CostModel::default()).unwrap();
    let mut fields: Vec<String> = model.as_object().unwrap().keys().cloned().collect();
    fields.retain(|f| f != "copyMemoryMb" && f != "region");
    fields.sort();
    let config = std::fs::read_to_string(workspace().join("cdk/lib/config.ts")).unwrap();
    let list = config
        .split("export const PRICE_FIELDS = [")
        .nth(1)
        .and_then(|rest| rest.split("];").next())
        .expect("PRICE_FIELDS in cdk/lib/config.ts");
    let mut cdk: Vec<String> = list
        .split(',')
        .map(|f| f.trim().trim_matches('\'').to_string())
        .filter(|f| !f.is_empty())
        .collect();
    cdk.sort();
    assert_eq!(cdk, fields);
}
