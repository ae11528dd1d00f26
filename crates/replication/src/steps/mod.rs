//! The workflow's steps, one module each: its input, its output and its logic together. Each
//! Lambda function runs exactly one step (through [`Step`]); the CLI's `step` command runs any
//! of them by name through [`run_named`]; the CLI's `sync` calls the step functions in the
//! order the state machine does (`crate::run`).
//!
//! Adding a step: a module here with a type implementing [`Step`], one line in [`registry!`]
//! below, a Task in `statemachine/replicate.asl.json` naming `${<Name>FunctionArn}`, a binary in
//! `crates/functions/src/bin`, and a test. The CDK app and the local rig find the function from
//! the state machine's placeholder.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connect::Connections;
use crate::error::{Error, FieldProblem, Result};

pub mod coalesce_pushes;
pub mod copy_blobs;
pub mod deadline;
pub mod ensure_repository;
mod ensure_repository_prune;
pub mod enumerate_images;
mod enumerate_images_archive;
mod enumerate_images_held;
mod enumerate_images_presence;
mod enumerate_images_selection;
pub mod enumerate_pack;
pub mod enumerate_repositories;
mod enumerate_repositories_listing;
pub mod plan_image;
pub mod put_manifests;
pub mod selection;
pub mod summarise;
pub mod verify_repository;

pub use crate::report::*;
pub use coalesce_pushes::{
    coalesce_pushes, executions_from_env, plan_batch, BatchPlan, BatchResponse, CoalesceReport,
    SqsBatch, SqsMessage,
};
pub use copy_blobs::{copy_blobs, CopyBlobs, CopyBlobsInput, CopyBlobsOutput, RangeOutcome};
pub use deadline::{time_to_hand_back, within_deadline};
pub use ensure_repository::{
    ensure_repository, target_settings, EnsureRepository, EnsureRepositoryInput,
    EnsureRepositoryOutput,
};
pub use enumerate_images::{
    enumerate_images, page_of_work, selected_images, selected_images_counted, EnumerateImages,
    EnumerateImagesInput, EnumerateImagesOutput, ImageTask, PageBounds, IMAGES_CHECKED_PER_CALL,
    PAGE_TASK_BYTES, TASKS_PER_PAGE, UNSIGNED_PER_PAGE,
};
pub use enumerate_pack::{packs_repositories, PACKED_NAME_BYTES, REPOSITORIES_PER_PACK};
pub use enumerate_repositories::{
    enumerate_and_settle, enumerate_repositories, enumerate_repositories_within, Concurrency,
    EnumerateRepositories, EnumerateRepositoriesInput, EnumerateRepositoriesOutput,
    REPOSITORIES_PER_PAGE,
};
pub use plan_image::{
    plan_image, plan_page, plan_page_within, ImagePlan, PagePlan, PageRange, PlanImage,
    PlanImageInput, PlanPageInput, PlannedImage, MAX_PLAN_BYTES, PAGE_PLAN_BYTES, RANGES_PER_CHILD,
};
pub use put_manifests::{put_manifests, PutManifests, PutManifestsInput};
pub use selection::{Selection, SELECTIONS_PREFIX, SELECTION_CHUNK};
pub use summarise::{summarise, PageRound, Summarise, SummariseInput};
pub use verify_repository::{verify_repository, VerifyRepository, VerifyRepositoryInput};

use ensure_repository::apply_settings;
use enumerate_images::{
    all_images, destination_tags, is_present, selected_and_listed, selected_counted,
    signature_gate, PARALLEL_CHECKS,
};
use plan_image::{platform_subset, read_source_image};
use selection::{keep_selection, stored_selection_chunk, PageToken};

/// A future a step returns (boxed: the step futures nest deeply enough to exceed the
/// compiler's layout depth when awaited inline by the Lambda runtime; not `Send`: a function
/// serves one event at a time and the CLI awaits one step).
pub type StepFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + 'a>>;

/// One step of the workflow as its Lambda function runs it: the function's name, its input and
/// output types, and what it does. The output is the one the state machine receives (lists
/// bounded so the state stays under 256 KiB).
pub trait Step {
    /// The Lambda function's name, the CLI `step` argument, and (in PascalCase, followed by
    /// `FunctionArn`) the state machine's placeholder for it.
    const NAME: &'static str;
    /// The step's input, as the state machine passes it.
    type Input: DeserializeOwned + Send;
    /// The step's output, as the state machine receives it.
    type Output: Serialize + Send;
    /// Runs the step.
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output>;
}

/// Parses a step's input; a problem names the JSON path that does not fit.
pub fn parse_input<I: DeserializeOwned>(input: &serde_json::Value) -> Result<I> {
    serde_path_to_error::deserialize(input).map_err(|e| Error::InvalidInput {
        problems: vec![FieldProblem {
            field: e.path().to_string(),
            problem: e.inner().to_string(),
        }],
    })
}

/// Runs step `S` on a JSON input, returning its JSON output.
pub async fn run_json<S: Step>(
    conns: &Connections,
    input: &serde_json::Value,
) -> Result<serde_json::Value> {
    let output = S::run(conns, parse_input(input)?).await?;
    serde_json::to_value(output).map_err(|e| Error::Output(e.to_string()))
}

/// The registry: every step, listed once.
macro_rules! registry {
    ($($step:ty),* $(,)?) => {
        /// Every step's name, in workflow order.
        pub const STEP_NAMES: &[&str] = &[$(<$step as Step>::NAME),*];

        /// Runs the step called `name` on a JSON input, as its Lambda function would.
        pub async fn run_named(
            conns: &Connections,
            name: &str,
            input: &serde_json::Value,
        ) -> Result<serde_json::Value> {
            $(if name == <$step as Step>::NAME {
                return run_json::<$step>(conns, input).await;
            })*
            Err(Error::InvalidInput {
                problems: vec![FieldProblem {
                    field: "step".into(),
                    problem: format!("no step {name:?}; the steps are {}", STEP_NAMES.join(", ")),
                }],
            })
        }
    };
}

registry!(
    EnumerateRepositories,
    EnsureRepository,
    EnumerateImages,
    PlanImage,
    CopyBlobs,
    PutManifests,
    Summarise,
    VerifyRepository,
);

/// The state machine's placeholder for a step's function ARN: `copy-blobs` ->
/// `CopyBlobsFunctionArn`.
pub fn function_placeholder(name: &str) -> String {
    let pascal: String = name
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("{pascal}FunctionArn")
}
