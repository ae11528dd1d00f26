//! The Lambda handlers of the workflow, one per step. Each binary in `src/bin` only initialises
//! tracing, reads its settings once, builds its connections once and runs one of these handlers,
//! which call the very same library steps the CLI uses. Errors reach Step Functions with an
//! error type the state machine's `Retry`/`Catch` match: `ReplicationRetryable`,
//! `ReplicationInvalidInput` or `ReplicationFailed`.

use lambda_runtime::{Diagnostic, LambdaEvent};
use replication::connect::{settings_from_env, Connections};
use replication::steps::*;
use replication::{workflow, ErrorKind};

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

/// Initialises logging (JSON when `AWS_LAMBDA_LOG_FORMAT=JSON`) and builds the connection cache
/// from the environment (`AWS_ENDPOINT_URL`, `ECR_REPLICATOR_REGISTRY_ENDPOINTS`,
/// `ECR_REPLICATOR_INSECURE_REGISTRIES`).
pub fn start() -> Result<Connections, lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    Ok(Connections::new(settings_from_env()?))
}

/// A raw event, as the binaries receive it: parsed here so a malformed input is a
/// `ReplicationInvalidInput` naming the field, not the runtime's generic deserialisation error.
pub type RawEvent = LambdaEvent<replication::steps::JsonValue>;

/// Turns a raw event into a step's typed input.
pub fn parse_event<I: serde::de::DeserializeOwned>(
    event: RawEvent,
) -> Result<LambdaEvent<I>, StepError> {
    let (payload, context) = event.into_parts();
    let text = payload.to_string();
    let mut deserializer = serde_json::Deserializer::from_str(&text);
    let input = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| StepError {
        kind: ErrorKind::InvalidInput,
        message: replication::steps::truncate_chars(
            &format!("invalid step input: {}: {}", e.path(), e.inner()),
            MAX_ERROR_MESSAGE_CHARS,
        ),
    })?;
    Ok(LambdaEvent::new(input, context))
}

/// `enumerate-repositories`.
pub async fn enumerate_repositories(
    conns: &Connections,
    event: LambdaEvent<EnumerateRepositoriesInput>,
) -> Result<EnumerateRepositoriesOutput, StepError> {
    // Boxed: the step futures nest deeply enough to exceed the compiler's layout depth.
    Ok(Box::pin(workflow::enumerate_repositories(conns, event.payload)).await?)
}

/// `ensure-repository`.
pub async fn ensure_repository(
    conns: &Connections,
    event: LambdaEvent<EnsureRepositoryInput>,
) -> Result<EnsureRepositoryOutput, StepError> {
    // Boxed: the step futures nest deeply enough to exceed the compiler's layout depth.
    Ok(Box::pin(workflow::ensure_repository(conns, event.payload))
        .await?
        .bounded())
}

/// `enumerate-images`.
pub async fn enumerate_images(
    conns: &Connections,
    event: LambdaEvent<EnumerateImagesInput>,
) -> Result<EnumerateImagesOutput, StepError> {
    // Boxed: the step futures nest deeply enough to exceed the compiler's layout depth.
    Ok(Box::pin(workflow::enumerate_images(conns, event.payload)).await?)
}

/// `plan-image`: plans a page of images (`workflow::plan_page`).
pub async fn plan_image(
    conns: &Connections,
    event: LambdaEvent<PlanPageInput>,
) -> Result<PagePlan, StepError> {
    // Boxed: the step futures nest deeply enough to exceed the compiler's layout depth.
    Ok(Box::pin(workflow::plan_page(conns, event.payload)).await?)
}

/// `copy-blobs`.
pub async fn copy_blobs(
    conns: &Connections,
    event: LambdaEvent<CopyBlobsInput>,
) -> Result<CopyBlobsOutput, StepError> {
    // Boxed: the step futures nest deeply enough to exceed the compiler's layout depth.
    Ok(Box::pin(workflow::copy_blobs(conns, event.payload)).await?)
}

/// `put-manifests`.
pub async fn put_manifests(
    conns: &Connections,
    event: LambdaEvent<PutManifestsInput>,
) -> Result<ImageResult, StepError> {
    // Boxed: the step futures nest deeply enough to exceed the compiler's layout depth.
    // Listed form (a few tags): the result is one of a page's in the Map's aggregated result.
    Ok(Box::pin(workflow::put_manifests(conns, event.payload))
        .await?
        .listed())
}

/// `summarise`: merges reports and per-image results; with `failOnFailure` it fails the
/// execution (`ReplicationFailed`) naming every failed image.
pub async fn summarise(event: LambdaEvent<SummariseInput>) -> Result<RunReport, StepError> {
    Ok(workflow::summarise(event.payload)?)
}
