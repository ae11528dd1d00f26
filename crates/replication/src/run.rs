//! Running a whole job in-process, in the order the state machine runs the steps: the CLI's
//! `sync` and `plan`. One image failing is recorded and the others go on.

use futures::StreamExt;

use crate::connect::Connections;
use crate::error::Result;
use crate::job::Job;
use crate::plan::CopyRange;
use crate::steps::*;
use crate::workflow;

/// Hears about each image as it finishes (for progress output).
pub trait RunObserver: Send + Sync {
    /// One image in one destination is done.
    fn image_done(&self, _result: &ImageResult) {}
    /// A destination repository was ensured.
    fn repository_ensured(&self, _output: &EnsureRepositoryOutput) {}
}

/// Observes nothing.
pub struct Quiet;
impl RunObserver for Quiet {}

/// What a run produced: the report, every image's result and the repository reports.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutput {
    /// Counts, bytes, failures.
    pub report: RunReport,
    /// Every image x destination.
    pub images: Vec<ImageResult>,
    /// Every destination repository ensured (created, settings changed, drift).
    pub repositories: Vec<EnsureRepositoryOutput>,
}

/// Runs the job: repositories page by page, each ensured in every destination, its images
/// page by page, up to `maxConcurrency` images at once. Invalid input fails at once; image
/// failures are recorded in the report.
pub async fn run_job(
    conns: &Connections,
    job: Job,
    observer: &dyn RunObserver,
) -> Result<RunOutput> {
    let valid = job.validate()?;
    let job = valid.job;
    let mut output = RunOutput {
        report: RunReport::default(),
        images: Vec::new(),
        repositories: Vec::new(),
    };
    let mut repo_token = None;
    loop {
        let page = workflow::enumerate_repositories(
            conns,
            EnumerateRepositoriesInput {
                job: job.clone(),
                next_token: repo_token,
            },
        )
        .await?;
        for repository in &page.repositories {
            for destination in 0..job.destinations.len() {
                let ensured = workflow::ensure_repository(
                    conns,
                    EnsureRepositoryInput {
                        job: job.clone(),
                        repository: repository.clone(),
                        destination,
                    },
                )
                .await?;
                observer.repository_ensured(&ensured);
                output.report.add_repository(&ensured);
                output.repositories.push(ensured);
            }
            let mut image_token = None;
            loop {
                let images = workflow::enumerate_images(
                    conns,
                    EnumerateImagesInput {
                        job: job.clone(),
                        repository: repository.clone(),
                        next_token: image_token,
                    },
                )
                .await?;
                let results: Vec<ImageResult> = futures::stream::iter(images.images)
                    .map(|task| {
                        let job = job.clone();
                        async move {
                            let result = replicate_image(conns, job, task).await;
                            observer.image_done(&result);
                            result
                        }
                    })
                    .buffer_unordered(job.max_concurrency as usize)
                    .collect()
                    .await;
                for r in &results {
                    output.report.add(r);
                }
                output.images.extend(results);
                match images.next_token {
                    Some(t) => image_token = Some(t),
                    None => break,
                }
            }
        }
        match page.next_token {
            Some(t) => repo_token = Some(t),
            None => break,
        }
    }
    Ok(output)
}

/// One image for one destination, as the per-image branch of the state machine: present, or
/// planned (dry run), or plan, copy every range (segment loops included), put manifests. Any
/// failure becomes a failed result naming the error.
pub async fn replicate_image(conns: &Connections, job: Job, task: ImageTask) -> ImageResult {
    if task.present {
        return ImageResult::for_task(&task, ImageStatus::Present, 0, None);
    }
    match copy_task(conns, job, &task).await {
        Ok(result) => result,
        Err(e) => ImageResult::for_task(
            &task,
            ImageStatus::Failed,
            0,
            Some(format!("{}: {e}", e.kind().as_str())),
        ),
    }
}

async fn copy_task(conns: &Connections, job: Job, task: &ImageTask) -> Result<ImageResult> {
    let plan = workflow::plan_image(
        conns,
        PlanImageInput {
            job: job.clone(),
            image: task.clone(),
        },
    )
    .await?;
    if plan.image.present {
        return Ok(ImageResult::for_task(task, ImageStatus::Present, 0, None));
    }
    if job.dry_run {
        return Ok(ImageResult::for_task(
            task,
            ImageStatus::Planned,
            plan.bytes,
            None,
        ));
    }
    let copied: Vec<Result<u64>> = futures::stream::iter(plan.ranges)
        .map(|range| copy_range(conns, job.clone(), task.clone(), range))
        .buffer_unordered(4)
        .collect()
        .await;
    let mut bytes = 0;
    for c in copied {
        bytes += c?;
    }
    workflow::put_manifests(
        conns,
        PutManifestsInput {
            job,
            image: task.clone(),
            copied: serde_json::json!([{ "bytes": bytes }]),
        },
    )
    .await
}

async fn copy_range(
    conns: &Connections,
    job: Job,
    image: ImageTask,
    range: CopyRange,
) -> Result<u64> {
    let mut state = None;
    let mut bytes = 0;
    loop {
        let out = workflow::copy_blobs(
            conns,
            CopyBlobsInput {
                job: job.clone(),
                image: image.clone(),
                range: range.clone(),
                state,
            },
        )
        .await?;
        bytes += out.bytes_copied;
        if out.done {
            return Ok(bytes);
        }
        state = out.state;
    }
}
