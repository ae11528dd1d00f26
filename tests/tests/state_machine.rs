//! The real state machine (statemachine/replicate.asl.json) executed by moto's Step Functions
//! interpreter, its Lambda tasks served by `cargo lambda watch` running the real functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use e2e::image::{Format, ImageBuilder, Pusher};
use e2e::registry::TestRegistry;
use e2e::sfn::LocalStepFunctions;
use serde_json::{json, Value};

struct Outcome {
    execution_arn: String,
    status: String,
    output: Option<Value>,
    error: Option<String>,
    cause: Option<String>,
}

async fn run(sfn: &LocalStepFunctions, arn: &str, input: &Value) -> Outcome {
    let client = ecr::sfn_client(&sfn.aws_settings(), "us-east-1").await;
    // moto names unnamed executions "None": give each its own name.
    let name = format!(
        "run-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let started = client
        .start_execution()
        .state_machine_arn(arn)
        .name(name)
        .input(input.to_string())
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let d = client
            .describe_execution()
            .execution_arn(started.execution_arn())
            .send()
            .await
            .unwrap();
        let status = d.status().as_str().to_string();
        if status != "RUNNING" {
            return Outcome {
                execution_arn: started.execution_arn().to_string(),
                status,
                output: d.output().map(|o| serde_json::from_str(o).unwrap()),
                error: d.error().map(str::to_string),
                cause: d.cause().map(str::to_string),
            };
        }
        assert!(
            Instant::now() < deadline,
            "execution still running after 10 minutes\n{}",
            sfn.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The execution's history, one line per event (type and any input/output), for messages and
/// for measuring event counts and payload sizes.
async fn history(sfn: &LocalStepFunctions, execution_arn: &str) -> Vec<String> {
    let client = ecr::sfn_client(&sfn.aws_settings(), "us-east-1").await;
    let mut lines = Vec::new();
    let mut next = None;
    loop {
        let page = client
            .get_execution_history()
            .execution_arn(execution_arn)
            .set_next_token(next)
            .max_results(1000)
            .send()
            .await
            .unwrap();
        for e in page.events() {
            let detail = e
                .state_exited_event_details()
                .map(|d| format!("{} output={}", d.name(), d.output().unwrap_or("")))
                .or_else(|| {
                    e.state_entered_event_details()
                        .map(|d| format!("{} input={}", d.name(), d.input().unwrap_or("")))
                })
                .or_else(|| {
                    e.lambda_function_failed_event_details()
                        .map(|d| format!("{:?}: {:?}", d.error(), d.cause()))
                })
                .or_else(|| {
                    e.execution_failed_event_details()
                        .map(|d| format!("{:?}: {:?}", d.error(), d.cause()))
                })
                .or_else(|| {
                    e.map_run_failed_event_details()
                        .map(|d| format!("{:?}: {:?}", d.error(), d.cause()))
                })
                .unwrap_or_default();
            lines.push(format!("{} {:?} {detail}", e.id(), e.r#type()));
        }
        match page.next_token() {
            Some(n) => next = Some(n.to_string()),
            None => return lines,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_state_machine_copies_selected_images_and_a_second_run_finds_them_present() {
    let (src, dst) = (TestRegistry::start(), TestRegistry::start());
    let pusher = Pusher::new(&src.host, None);
    let image = ImageBuilder::new(Format::Oci)
        .layer(1, 50_000)
        .layer(2, 1000)
        .build();
    pusher.push("team/app", "v1.0.0", &image).await;
    pusher
        .push(
            "team/app",
            "scratch",
            &ImageBuilder::new(Format::Oci).layer(3, 100).build(),
        )
        .await;
    let sfn = LocalStepFunctions::start(&[]).await;
    let arn = sfn.create_state_machine("replicate").await;
    let input = json!({
        "source": {"registry": src.host, "insecure": true},
        "destinations": [{"registry": dst.host, "insecure": true}],
        "tags": {"include": ["v.*"]}
    });

    let first = run(&sfn, &arn, &input).await;

    if first.status != "SUCCEEDED" {
        for line in history(&sfn, &first.execution_arn).await {
            eprintln!("{}", &line[..line.len().min(700)]);
        }
    }
    assert_eq!(
        first.status, "SUCCEEDED",
        "{:?} {:?}",
        first.error, first.cause
    );
    let report = first.output.unwrap();
    if report["copied"].as_u64() != Some(1) {
        for line in history(&sfn, &first.execution_arn).await {
            eprintln!("{}", &line[..line.len().min(600)]);
        }
    }
    assert_eq!(
        (report["copied"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(0)),
        "{report}"
    );
    assert_eq!(
        e2e::skopeo::inspect_raw(&format!("{}/team/app:v1.0.0", dst.host), None),
        image.manifest.to_vec()
    );

    let second = run(&sfn, &arn, &input).await;
    assert_eq!(second.status, "SUCCEEDED");
    assert_eq!(second.output.unwrap()["present"].as_u64(), Some(1));
}
