//! Executions: starting one and waiting for its end, its history and statistics
//! ([`Execution`]), and the Distributed Maps' child executions the strict interpreter recorded.

use std::time::{Duration, Instant};

use super::rig::definition;
use super::LocalStepFunctions;

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

impl LocalStepFunctions {
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
