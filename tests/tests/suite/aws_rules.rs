//! The rules of AWS Step Functions that moto's interpreter does not enforce as released, and
//! that `tests/aws_rules/strict_moto.py` (how every local execution runs) adds. Each test runs a
//! small state machine that breaks one rule and expects the execution to fail as AWS documents;
//! the rules moto already enforces are proven the same way, so a moto upgrade that loosened them
//! would be caught. Where a rule is patched, the same definition on moto as released succeeds,
//! which shows the patch is what makes it fire.

use std::time::Duration;

use e2e::moto::{Interpreter, Moto};
use serde_json::{json, Value};

/// How an execution ended: status, error, cause.
#[derive(Debug)]
struct Ended {
    status: String,
    error: String,
    cause: String,
    output: Option<Value>,
}

async fn execute(moto: &Moto, definition: Value, input: Value) -> Ended {
    let sfn = ecr::sfn_client(&moto.aws_settings(), "us-east-1").await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let arn = sfn
        .create_state_machine()
        .name(format!("rule-{nanos}"))
        .definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/rules")
        .send()
        .await
        .unwrap()
        .state_machine_arn;
    let (_, d) = e2e::sfn::run_to_end(&sfn, &arn, &input, Duration::from_secs(60))
        .await
        .unwrap();
    Ended {
        status: d.status().as_str().to_string(),
        error: d.error().unwrap_or("").to_string(),
        cause: d.cause().unwrap_or("").to_string(),
        output: d.output().and_then(|o| serde_json::from_str(o).ok()),
    }
}

async fn moto(interpreter: Interpreter) -> Moto {
    let moto = Moto::start_with(interpreter);
    moto.enable_executions().await;
    moto
}

fn pass_end() -> Value {
    json!({"Type": "Pass", "End": true})
}

/// A Choice on `$.dryRun`, as the workflow had before the job was normalised.
fn choice_on_missing_field() -> Value {
    json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice",
              "Choices": [{"Variable": "$.dryRun", "BooleanEquals": true, "Next": "A"}],
              "Default": "B"},
        "A": pass_end(), "B": pass_end()}})
}

/// Rule 1 (patched). AWS: a Choice rule on a path that does not exist fails the execution with
/// States.Runtime; only `IsPresent` may probe it.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/state-choice.html>
#[tokio::test]
async fn a_choice_on_a_missing_path_fails_with_states_runtime() {
    let strict = moto(Interpreter::Strict).await;

    let run = execute(&strict, choice_on_missing_field(), json!({})).await;

    assert_eq!(
        (run.status.as_str(), run.error.as_str()),
        ("FAILED", "States.Runtime"),
        "{run:?}"
    );
    assert!(run.cause.contains("Invalid path '$.dryRun'"), "{run:?}");
    // IsPresent is the safe probe and still works.
    let probe = json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice",
              "Choices": [{"Variable": "$.dryRun", "IsPresent": true, "Next": "A"}],
              "Default": "B"},
        "A": pass_end(), "B": {"Type": "Pass", "Result": {"branch": "absent"}, "End": true}}});
    let probed = execute(&strict, probe, json!({})).await;
    assert_eq!(
        (probed.status.as_str(), probed.output),
        ("SUCCEEDED", Some(json!({"branch": "absent"})))
    );
    // Also through an array (`$.page.deferred[0]` when `$.page` is a list, as the workflow's
    // MoreDeferred sees after a page with no work): absent, where moto raised and hung the run.
    let through_array = json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice",
              "Choices": [{"Variable": "$.page.deferred[0]", "IsPresent": true, "Next": "A"}],
              "Default": "B"},
        "A": pass_end(), "B": {"Type": "Pass", "Result": {"branch": "absent"}, "End": true}}});
    let probed = execute(&strict, through_array, json!({"page": []})).await;
    assert_eq!(
        (probed.status.as_str(), probed.output),
        ("SUCCEEDED", Some(json!({"branch": "absent"})))
    );
    // moto as released takes the Default branch instead.
    let lenient = moto(Interpreter::AsReleased).await;
    assert_eq!(
        execute(&lenient, choice_on_missing_field(), json!({}))
            .await
            .status,
        "SUCCEEDED"
    );
}

/// Rule 2 (patched). AWS: `States.MathAdd` takes 32-bit integers.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/intrinsic-functions.html#asl-intrsc-func-math-operation>
#[tokio::test]
async fn math_add_outside_32_bit_integers_fails_with_states_runtime() {
    let add = json!({"StartAt": "A", "States": {"A": {"Type": "Pass",
        "Parameters": {"bytes.$": "States.MathAdd($.bytes, $.more)"}, "End": true}}});
    let strict = moto(Interpreter::Strict).await;

    // A 2 GiB segment count, as the old segment loop added them.
    let over = execute(
        &strict,
        add.clone(),
        json!({"bytes": 2147483648u64, "more": 1}),
    )
    .await;
    let sum_over = execute(
        &strict,
        add.clone(),
        json!({"bytes": 2147483000, "more": 1000}),
    )
    .await;
    let within = execute(
        &strict,
        add.clone(),
        json!({"bytes": 2147483000, "more": 647}),
    )
    .await;

    assert_eq!(
        (over.status.as_str(), over.error.as_str()),
        ("FAILED", "States.Runtime"),
        "{over:?}"
    );
    assert_eq!(sum_over.error, "States.Runtime", "{sum_over:?}");
    assert_eq!(within.output, Some(json!({"bytes": 2147483647})));
    let lenient = moto(Interpreter::AsReleased).await;
    assert_eq!(
        execute(&lenient, add, json!({"bytes": 2147483648u64, "more": 1}))
            .await
            .status,
        "SUCCEEDED"
    );
}

/// Rule 3 (patched). AWS: `States.ALL` does not catch `States.DataLimitExceeded` or
/// `States.Runtime`; a Task's `.$` parameter on a missing path is `States.Runtime` (moto as
/// released reports `States.TaskFailed` there, and catches it).
/// <https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html>
#[tokio::test]
async fn states_all_does_not_catch_data_limit_or_runtime_errors() {
    let caught = |state: Value| {
        json!({"StartAt": "A", "States": {
            "A": state,
            "Caught": {"Type": "Pass", "Result": {"caught": true}, "End": true}}})
    };
    let catch_all = json!([{"ErrorEquals": ["States.ALL"], "Next": "Caught"}]);
    // A Map whose aggregated result is over 256 KiB (10 items of 8 x 10 KB each).
    let big_map = caught(json!({"Type": "Map", "ItemsPath": "$.items",
        "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Grow", "States": {
            "Grow": {"Type": "Pass", "End": true, "Parameters":
                {"a.$": "$", "b.$": "$", "c.$": "$", "d.$": "$", "e.$": "$", "f.$": "$", "g.$": "$", "h.$": "$"}}}},
        "Catch": catch_all, "End": true}));
    // The task fails on its parameters, before any function is invoked.
    let task_missing_path = caught(json!({"Type": "Task",
        "Resource": "arn:aws:lambda:us-east-1:123456789012:function:never-invoked",
        "Parameters": {"job.$": "$.job"}, "Catch": catch_all, "End": true}));
    let strict = moto(Interpreter::Strict).await;

    let data = execute(
        &strict,
        big_map,
        json!({"items": vec!["x".repeat(10_000); 10]}),
    )
    .await;
    let runtime = execute(&strict, task_missing_path.clone(), json!({})).await;

    assert_eq!(
        (data.status.as_str(), data.error.as_str()),
        ("FAILED", "States.DataLimitExceeded"),
        "{data:?}"
    );
    assert_eq!(
        (runtime.status.as_str(), runtime.error.as_str()),
        ("FAILED", "States.Runtime"),
        "{runtime:?}"
    );
    assert!(runtime.cause.contains("'$.job'"), "{runtime:?}");
    let lenient = moto(Interpreter::AsReleased).await;
    let released = execute(&lenient, task_missing_path, json!({})).await;
    assert_eq!(
        released.output,
        Some(json!({"caught": true})),
        "moto as released catches it: {released:?}"
    );
}

/// Rule 4 (patched). AWS: a Distributed Map fails with `States.ExceedToleratedFailureThreshold`
/// when more children fail than tolerated (default 0).
/// <https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html>
#[tokio::test]
async fn a_failed_distributed_child_fails_the_map() {
    let map = |tolerated: Value| {
        let mut state = json!({"Type": "Map", "ItemsPath": "$.items",
            "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                "StartAt": "Check", "States": {
                    "Check": {"Type": "Choice",
                        "Choices": [{"Variable": "$", "NumericEquals": 2, "Next": "Fail"}],
                        "Default": "Ok"},
                    "Ok": {"Type": "Pass", "End": true},
                    "Fail": {"Type": "Fail", "Error": "Broken", "Cause": "item 2"}}},
            "End": true});
        for (k, v) in tolerated.as_object().unwrap() {
            state[k] = v.clone();
        }
        json!({"StartAt": "M", "States": {"M": state}})
    };
    let strict = moto(Interpreter::Strict).await;

    let failed = execute(&strict, map(json!({})), json!({"items": [1, 2, 3]})).await;
    let tolerated = execute(
        &strict,
        map(json!({"ToleratedFailurePercentage": 50.0})),
        json!({"items": [1, 2, 3]}),
    )
    .await;

    assert_eq!(
        (failed.status.as_str(), failed.error.as_str()),
        ("FAILED", "States.ExceedToleratedFailureThreshold"),
        "{failed:?}"
    );
    assert_eq!(tolerated.status, "SUCCEEDED", "{tolerated:?}");
    let lenient = moto(Interpreter::AsReleased).await;
    assert_eq!(
        execute(&lenient, map(json!({})), json!({"items": [1, 2, 3]}))
            .await
            .status,
        "SUCCEEDED"
    );
}

/// Enforced by moto as released (kept here so an upgrade that loosened them is caught):
/// a `.$` parameter, `ItemsPath` or `MaxConcurrencyPath` on a missing path fails with
/// `States.Runtime`; a state's output of 256 KiB or more fails with `States.DataLimitExceeded`.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html> (256 KiB payload)
#[tokio::test]
async fn missing_paths_and_oversized_outputs_fail_the_execution() {
    let strict = moto(Interpreter::Strict).await;
    let map = |field: &str, path: &str| {
        let mut state = json!({"Type": "Map", "ItemsPath": "$.items",
            "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                "StartAt": "P", "States": {"P": pass_end()}}, "End": true});
        state[field] = json!(path);
        json!({"StartAt": "M", "States": {"M": state}})
    };

    let parameter = execute(
        &strict,
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Parameters": {"x.$": "$.job.maxConcurrency"}, "End": true}}}),
        json!({"job": {}}),
    )
    .await;
    let items = execute(
        &strict,
        map("ItemsPath", "$.nothing"),
        json!({"items": [1]}),
    )
    .await;
    let concurrency = execute(
        &strict,
        map("MaxConcurrencyPath", "$.job.maxConcurrency"),
        json!({"items": [1], "job": {}}),
    )
    .await;
    let with_concurrency = execute(
        &strict,
        map("MaxConcurrencyPath", "$.limit"),
        json!({"items": [1, 2], "limit": 1}),
    )
    .await;
    let oversized = execute(
        &strict,
        json!({"StartAt": "A", "States": {"A": {"Type": "Pass", "Parameters": {"a.$": "$.s", "b.$": "$.s"}, "End": true}}}),
        json!({"s": "x".repeat(140 * 1024)}),
    )
    .await;

    for run in [&parameter, &items, &concurrency] {
        assert_eq!(
            (run.status.as_str(), run.error.as_str()),
            ("FAILED", "States.Runtime"),
            "{run:?}"
        );
    }
    assert_eq!(
        with_concurrency.output,
        Some(json!([1, 2])),
        "{with_concurrency:?}"
    );
    assert_eq!(
        (oversized.status.as_str(), oversized.error.as_str()),
        ("FAILED", "States.DataLimitExceeded"),
        "{oversized:?}"
    );
}

/// A loop of `$.n` rounds (two states, four events a round) from `$.i`.
fn counting_loop() -> Value {
    json!({"StartAt": "Count", "States": {
        "Count": {"Type": "Pass",
            "Parameters": {"i.$": "States.MathAdd($.i, 1)", "n.$": "$.n"}, "Next": "Done?"},
        "Done?": {"Type": "Choice",
            "Choices": [{"Variable": "$.i", "NumericGreaterThanEqualsPath": "$.n", "Next": "Done"}],
            "Default": "Count"},
        "Done": {"Type": "Pass", "End": true}}})
}

/// Rule 5 (patched). AWS: an execution history holds at most 25,000 events; the execution that
/// would write more fails, no Catch takes it, and each child execution of a Distributed Map has
/// its own history (EXPRESS children keep none, so no limit). moto shares one event list among
/// a Map's children and has no limit. Run here with the limit lowered to 60 events.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html>
#[tokio::test]
async fn an_execution_history_past_its_limit_fails_each_child_counted_alone() {
    let stats = tempfile::NamedTempFile::new().unwrap();
    let strict = Moto::start_with_env(
        Interpreter::Strict,
        &[
            ("STRICT_MOTO_HISTORY_LIMIT", "60"),
            ("STRICT_MOTO_STATS", stats.path().to_str().unwrap()),
        ],
    );
    strict.enable_executions().await;
    let caught_loop = json!({"StartAt": "P", "States": {"P": {"Type": "Parallel",
        "Branches": [counting_loop()],
        "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}], "End": true},
        "Caught": pass_end()}});
    let map_of_loops = |execution_type: &str| {
        json!({"StartAt": "M", "States": {"M": {"Type": "Map", "ItemsPath": "$.items",
            "ItemSelector": {"i": 0, "n.$": "$$.Map.Item.Value"},
            "ToleratedFailurePercentage": 100.0,
            "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": execution_type},
                "StartAt": "Loop", "States": {"Loop": {"Type": "Parallel", "Branches": [counting_loop()],
                    "OutputPath": "$[0]", "End": true}}},
            "End": true}}})
    };

    let short = execute(&strict, caught_loop.clone(), json!({"i": 0, "n": 10})).await;
    let long = execute(&strict, caught_loop, json!({"i": 0, "n": 20})).await;
    // Three children of 10 rounds: 120 events in all, each child well within 60.
    let children = execute(
        &strict,
        map_of_loops("STANDARD"),
        json!({"items": [10, 20, 10]}),
    )
    .await;
    let express = execute(&strict, map_of_loops("EXPRESS"), json!({"items": [20]})).await;

    assert_eq!(short.status, "SUCCEEDED", "{short:?}");
    assert_eq!(
        (long.status.as_str(), long.error.as_str()),
        ("FAILED", "States.Runtime"),
        "{long:?}"
    );
    assert!(long.cause.contains("60 events"), "{long:?}");
    assert_eq!(children.status, "SUCCEEDED", "{children:?}");
    let outputs = children.output.clone().unwrap();
    assert_eq!(outputs[0]["i"], 10, "{children:?}");
    assert_eq!(
        outputs[1],
        Value::Null,
        "the 20-round child failed: {children:?}"
    );
    assert_eq!(outputs[2]["i"], 10, "{children:?}");
    assert_eq!(
        express.output.unwrap()[0]["i"],
        20,
        "EXPRESS children keep no history"
    );
    let records: Vec<Value> = std::fs::read_to_string(stats.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let standard: Vec<&Value> = records.iter().filter(|r| r["type"] == "STANDARD").collect();
    assert_eq!(standard.len(), 3, "{records:?}");
    assert_eq!(standard.iter().filter(|r| r["failed"] == true).count(), 1);
    // The failed child stops at the first state it enters past the limit: its failure events
    // come after.
    assert!(
        standard
            .iter()
            .all(|r| r["events"].as_u64().unwrap() <= 60 + 8),
        "{records:?}"
    );
    let express_child = records.iter().find(|r| r["type"] == "EXPRESS").unwrap();
    assert!(
        express_child["events"].as_u64().unwrap() > 60,
        "{records:?}"
    );
    assert!(
        express_child["transitions"].as_u64().unwrap() >= 40,
        "{records:?}"
    );
}

/// A Distributed Map over `$.items` whose children echo their input, batched by `batcher`.
fn batched_map(batcher: Value) -> Value {
    json!({"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.items", "ItemBatcher": batcher,
        "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"},
            "StartAt": "Echo", "States": {"Echo": pass_end()}},
        "End": true}}})
}

/// Rule 8 (a feature moto lacks). AWS: with `ItemBatcher` a Distributed Map starts one child per
/// batch, whose input is `{"Items": [...], "BatchInput": {...}}` (BatchInput's `.$` fields from
/// the state's input), a batch at most MaxItemsPerBatch items and MaxInputBytesPerBatch bytes;
/// an item too large for any batch fails the Map.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itembatcher.html>
#[tokio::test]
async fn an_item_batcher_starts_a_child_per_batch_cut_by_items_and_by_bytes() {
    let stats = tempfile::NamedTempFile::new().unwrap();
    let strict = Moto::start_with_env(
        Interpreter::Strict,
        &[("STRICT_MOTO_STATS", stats.path().to_str().unwrap())],
    );
    strict.enable_executions().await;
    let long = "x".repeat(40);
    let input = json!({"job": "j", "items": [1, 2, 3, 4, 5, long, 7]});
    let batcher = |bytes: u64| {
        json!({"MaxItemsPerBatch": 3, "MaxInputBytesPerBatch": bytes,
               "BatchInput": {"job.$": "$.job", "fixed": 1}})
    };

    let run = execute(&strict, batched_map(batcher(100)), input.clone()).await;
    let too_small = execute(&strict, batched_map(batcher(80)), input).await;

    assert_eq!(run.status, "SUCCEEDED", "{run:?}");
    let shared = json!({"job": "j", "fixed": 1});
    assert_eq!(
        run.output.clone().unwrap(),
        json!([
            {"Items": [1, 2, 3], "BatchInput": shared},
            // 92 bytes: a fourth item would pass MaxItemsPerBatch, the long one fits 100 bytes.
            {"Items": [4, 5, "x".repeat(40)], "BatchInput": shared},
            {"Items": [7], "BatchInput": shared}
        ]),
        "{run:?}"
    );
    let children = std::fs::read_to_string(stats.path())
        .unwrap()
        .lines()
        .count();
    assert_eq!(children, 3, "one child per batch");
    // {"Items":["xxx..."],...} alone is 89 bytes.
    assert_eq!(
        (too_small.status.as_str(), too_small.error.as_str()),
        ("FAILED", "States.Runtime"),
        "{too_small:?}"
    );
    assert!(
        too_small.cause.contains("MaxInputBytesPerBatch"),
        "{too_small:?}"
    );
}

/// A Parallel whose one branch fails with `Flaky`, retried by `retrier`.
fn always_failing(retrier: Value) -> Value {
    json!({"StartAt": "P", "States": {"P": {
        "Type": "Parallel",
        "Branches": [{"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "Flaky", "Cause": "always"}}}],
        "Retry": [retrier],
        "End": true
    }}})
}

/// Retry as Step Functions computes it (strict_moto.py rule 7): each wait is IntervalSeconds
/// times BackoffRate per attempt, capped at MaxDelaySeconds, and STRICT_MOTO_RETRY_SCALE scales
/// what is slept: 3 retries of IntervalSeconds 1, BackoffRate 10, MaxDelaySeconds 2 wait
/// 1 + 2 + 2 s (not 1 + 10 + 100), 0.5 s at scale 0.1; MaxDelaySeconds must be below 31622401
/// ("a value greater than 0 and less than 31622401"), which moto as released accepted.
/// <https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html>
#[tokio::test]
async fn retry_waits_are_capped_by_max_delay_seconds_and_scaled_by_the_rig() {
    let strict = Moto::start_with_env(Interpreter::Strict, &[("STRICT_MOTO_RETRY_SCALE", "0.1")]);
    strict.enable_executions().await;
    let retrier = json!({"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "BackoffRate": 10.0,
        "MaxDelaySeconds": 2, "MaxAttempts": 3, "JitterStrategy": "NONE"});
    let began = std::time::Instant::now();
    let ended = execute(&strict, always_failing(retrier), json!({})).await;
    let waited = began.elapsed().as_secs_f64();
    assert_eq!(
        (ended.status.as_str(), ended.error.as_str()),
        ("FAILED", "Flaky"),
        "{ended:?}"
    );
    assert!((0.5..5.0).contains(&waited), "waited {waited} s");

    let too_long = json!({"ErrorEquals": ["Flaky"], "MaxDelaySeconds": 31622401});
    let create = |moto: &Moto, definition: Value| {
        let settings = moto.aws_settings();
        async move {
            ecr::sfn_client(&settings, "us-east-1")
                .await
                .create_state_machine()
                .name("max-delay")
                .definition(definition.to_string())
                .role_arn("arn:aws:iam::123456789012:role/rules")
                .send()
                .await
        }
    };
    assert!(
        create(&strict, always_failing(too_long.clone()))
            .await
            .is_err(),
        "MaxDelaySeconds 31622401 accepted"
    );
    let released = moto(Interpreter::AsReleased).await;
    assert!(create(&released, always_failing(too_long)).await.is_ok());
}
