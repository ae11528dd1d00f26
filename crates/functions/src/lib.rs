//! The workflow's Lambda functions. Each binary in `src/bin` serves one step
//! (`replication::steps`) with [`serve`]: tracing initialised, settings read once, connections
//! built once, then the very same library step the CLI's `step` command runs, on every event.
//! Errors reach Step Functions with an error type the state machine's `Retry`/`Catch` match:
//! `ReplicationRetryable`, `ReplicationInvalidInput` or `ReplicationFailed`.

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use replication::connect::{settings_from_env, Connections};
use replication::steps::{self, Step};
use replication::ErrorKind;

/// A step's failure as Step Functions sees it.
#[derive(Debug)]
pub struct StepError {
    /// Retry, catch, or fail the execution.
    pub kind: ErrorKind,
    /// What failed and what to do.
    pub message: String,
}

/// Characters of an error message a step returns at most: the message becomes the `Cause`
/// the state machine records (a repository's failure is kept in its report, and a page of
/// reports must fit in 256 KiB).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 512;

impl From<replication::Error> for StepError {
    fn from(e: replication::Error) -> Self {
        StepError {
            kind: e.kind(),
            message: replication::steps::truncate_chars(&e.to_string(), MAX_ERROR_MESSAGE_CHARS),
        }
    }
}

impl From<StepError> for Diagnostic {
    fn from(e: StepError) -> Diagnostic {
        Diagnostic {
            error_type: e.kind.as_str().to_string(),
            error_message: e.message,
        }
    }
}

/// Serves step `S` as a Lambda function: initialises logging (JSON when
/// `AWS_LAMBDA_LOG_FORMAT=JSON`), reads the settings from the environment once
/// (`AWS_ENDPOINT_URL`, `ECR_REPLICATOR_REGISTRY_ENDPOINTS`, `ECR_REPLICATOR_WORK_BUCKET`, ...),
/// builds the connection cache once, and runs the step on every event.
pub async fn serve<S: Step>() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let connections = Connections::new(settings_from_env()?);
    lambda_runtime::run(service_fn(|event: RawEvent| {
        handle::<S>(&connections, event)
    }))
    .await
}

/// A raw event, as the functions receive it: parsed by [`handle`] so a malformed input is a
/// `ReplicationInvalidInput` naming the field, not the runtime's generic deserialisation error.
pub type RawEvent = LambdaEvent<serde_json::Value>;

/// Runs step `S` on one event: its input parsed (a problem names the field), its output as
/// the state machine receives it.
pub async fn handle<S: Step>(conns: &Connections, event: RawEvent) -> Result<S::Output, StepError> {
    let (payload, context) = event.into_parts();
    let input = steps::parse_input::<S::Input>(&payload)?;
    invoke::<S>(conns, LambdaEvent::new(input, context)).await
}

/// Runs step `S` on an event already parsed, as its function does, within the invocation's
/// deadline (`steps::within_deadline`: a step that pages hands the rest of its work to its next
/// call before the function would time out). An event without one (a test's default context)
/// runs without.
pub async fn invoke<S: Step>(
    conns: &Connections,
    event: LambdaEvent<S::Input>,
) -> Result<S::Output, StepError> {
    let step = S::run(conns, event.payload);
    let output = match event.context.deadline {
        0 => step.await,
        _ => steps::within_deadline(event.context.deadline(), step).await,
    };
    match output {
        Ok(output) => Ok(output),
        Err(e) => {
            // A served layout is named as the job names it, not by this process's loopback port.
            let kind = e.kind();
            let message = conns.name_served_layouts(&e.to_string()).await;
            Err(StepError {
                kind,
                message: replication::steps::truncate_chars(&message, MAX_ERROR_MESSAGE_CHARS),
            })
        }
    }
}

/// Serves `coalesce-pushes`: the push queue's event source mapping hands it batches of
/// messages (`steps::SqsBatch`), each becoming a few runs of the state machine named by
/// `ECR_REPLICATOR_STATE_MACHINE_ARN` (`steps::coalesce_pushes`), each message's job checked
/// against the deployment's push job read once from `ECR_REPLICATOR_PUSH_JOB`; it answers with
/// the messages to deliver again (`ReportBatchItemFailures`). A batch that is no SQS event is an
/// error; either variable missing or invalid, the function fails at start naming it.
pub async fn serve_coalescer() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let template = steps::coalesce_pushes::PushTemplate::from_env()?;
    let executions = steps::executions_from_env().await?;
    lambda_runtime::run(service_fn(|event: RawEvent| {
        let (executions, template) = (&executions, &template);
        async move {
            let batch =
                steps::parse_input::<steps::SqsBatch>(&event.payload).map_err(StepError::from)?;
            let report = steps::coalesce_pushes(executions, template, &batch).await;
            Ok::<_, StepError>(report.response())
        }
    }))
    .await
}
