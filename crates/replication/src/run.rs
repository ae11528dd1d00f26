//! Running a whole job in-process with the workflow's steps: the CLI's `sync` and `plan`.
//! Several repositories at once; within a repository, each page of images is planned, the
//! page's missing blobs are copied once per destination repository (shared base layers travel
//! once, and no two uploads of one blob race), then the manifests are put. At most
//! `maxConcurrency` copy or put calls run at any moment. One image or one repository failing is
//! recorded and the others go on.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::StreamExt;
use oci::BlobRef;
use tokio::sync::Semaphore;

use crate::connect::Connections;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::plan::{split_into_ranges, CopyRange};
use crate::steps::*;
use crate::workflow;

/// Hears about each image as it finishes (for progress output).
pub trait RunObserver: Send + Sync {
    /// One image in one destination is done.
    fn image_done(&self, _result: &ImageResult) {}
    /// A destination repository was ensured.
    fn repository_ensured(&self, _output: &EnsureRepositoryOutput) {}
    /// A repository failed as a whole.
    fn repository_failed(&self, _failure: &RepositoryFailure) {}
}

/// Observes nothing.
pub struct Quiet;
impl RunObserver for Quiet {}

/// What a run produced: the report, every image's result and the repository reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutput {
    /// Counts, bytes, failures.
    pub report: RunReport,
    /// Every image x destination that had work (present ones are counted in the report).
    pub images: Vec<ImageResult>,
    /// Every destination repository ensured (created, settings changed, drift).
    pub repositories: Vec<EnsureRepositoryOutput>,
}

/// Runs the job. Invalid input fails at once; image and repository failures are recorded in
/// the report.
pub async fn run_job(
    conns: &Connections,
    job: Job,
    observer: &dyn RunObserver,
) -> Result<RunOutput> {
    let job = job.validate()?.job;
    let run = Run {
        conns,
        job: &job,
        observer,
        copies: Semaphore::new(job.max_concurrency.max(1) as usize),
        output: Mutex::new(RunOutput::default()),
    };
    let parallel_repositories = (job.max_concurrency as usize).clamp(1, 8);
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
        futures::stream::iter(&page.repositories)
            .for_each_concurrent(parallel_repositories, |repository| {
                run.repository(repository)
            })
            .await;
        match page.next_token {
            Some(t) => repo_token = Some(t),
            None => break,
        }
    }
    let output = run.output.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(output)
}

struct Run<'a> {
    conns: &'a Connections,
    job: &'a Job,
    observer: &'a dyn RunObserver,
    /// Copy and put calls at once: `maxConcurrency`.
    copies: Semaphore,
    output: Mutex<RunOutput>,
}

impl Run<'_> {
    fn record(&self, f: impl FnOnce(&mut RunOutput)) {
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut output);
    }

    /// One repository: ensured in every destination, then its images page by page. A failure
    /// of the repository as a whole is recorded, naming it.
    async fn repository(&self, repository: &String) {
        if let Err(e) = self.try_repository(repository).await {
            let failure = RepositoryFailure {
                repository: repository.clone(),
                error: format!("{}: {e}", e.kind().as_str()),
            };
            self.observer.repository_failed(&failure);
            self.record(|o| {
                o.report.repositories_failed += 1;
                if o.report.repository_failures.len() < MAX_FAILURES_LISTED {
                    o.report.repository_failures.push(failure);
                }
            });
        }
    }

    async fn try_repository(&self, repository: &str) -> Result<()> {
        for destination in 0..self.job.destinations.len() {
            let ensured = workflow::ensure_repository(
                self.conns,
                EnsureRepositoryInput {
                    job: self.job.clone(),
                    repository: repository.to_string(),
                    destination,
                },
            )
            .await?;
            self.observer.repository_ensured(&ensured);
            self.record(|o| {
                o.report.add_repository(&ensured);
                o.repositories.push(ensured);
            });
        }
        let mut image_token = None;
        loop {
            let page = workflow::enumerate_images(
                self.conns,
                EnumerateImagesInput {
                    job: self.job.clone(),
                    repository: repository.to_string(),
                    next_token: image_token,
                },
            )
            .await?;
            self.record(|o| o.report.add_present(page.present));
            let results = self.replicate_page(page.images).await;
            for r in &results {
                self.observer.image_done(r);
            }
            self.record(|o| {
                for r in &results {
                    o.report.add(r);
                }
                o.images.extend(results);
            });
            match page.next_token {
                Some(t) => image_token = Some(t),
                None => return Ok(()),
            }
        }
    }

    /// One page of tasks: plan each, copy the union of their missing blobs per destination
    /// repository, then put each image's manifests once all of its blobs arrived.
    async fn replicate_page(&self, tasks: Vec<ImageTask>) -> Vec<ImageResult> {
        let plans: Vec<(ImageTask, Result<ImagePlan>)> = futures::stream::iter(tasks)
            .map(|task| async move {
                let plan = workflow::plan_image(
                    self.conns,
                    PlanImageInput {
                        job: self.job.clone(),
                        image: task.clone(),
                    },
                )
                .await;
                (task, plan)
            })
            .buffered(8)
            .collect()
            .await;
        let mut results = Vec::new();
        let mut planned = Vec::new();
        for (task, plan) in plans {
            match plan {
                Err(e) => results.push(failed(&task, &e)),
                Ok(plan) if plan.image.present => {
                    results.push(ImageResult::for_task(&task, ImageStatus::Present, 0, None))
                }
                Ok(plan) if self.job.dry_run => results.push(ImageResult::for_task(
                    &task,
                    ImageStatus::Planned,
                    plan.bytes,
                    None,
                )),
                Ok(plan) => planned.push(plan),
            }
        }
        // The union of blobs per destination repository, each blob once.
        let mut groups: BTreeMap<(usize, String), (ImageTask, BTreeMap<String, BlobRef>)> =
            BTreeMap::new();
        for plan in &planned {
            let key = (plan.image.destination, plan.image.target_repository.clone());
            let group = groups
                .entry(key)
                .or_insert_with(|| (plan.image.clone(), BTreeMap::new()));
            for blob in plan.ranges.iter().flat_map(range_blobs) {
                group.1.entry(blob.digest.to_string()).or_insert(blob);
            }
        }
        let ranges: Vec<(ImageTask, CopyRange)> = groups
            .into_values()
            .flat_map(|(task, blobs)| {
                let blobs: Vec<BlobRef> = blobs.into_values().collect();
                split_into_ranges(&blobs, self.job.range_bytes)
                    .into_iter()
                    .map(move |range| (task.clone(), range))
            })
            .collect();
        let copied: Vec<(ImageTask, CopyRange, Result<u64>)> = futures::stream::iter(ranges)
            .map(|(task, range)| async move {
                let outcome = self.copy_range(&task, &range).await;
                (task, range, outcome)
            })
            .buffer_unordered(self.job.max_concurrency.max(1) as usize)
            .collect()
            .await;
        // Per destination repository: bytes copied per blob, and the blobs that failed.
        let mut blob_bytes: BTreeMap<(usize, String, String), u64> = BTreeMap::new();
        let mut blob_errors: BTreeMap<(usize, String, String), String> = BTreeMap::new();
        for (task, range, outcome) in copied {
            let blobs = range_blobs(&range);
            let total: u64 = blobs.iter().map(|b| b.size).sum();
            for blob in blobs {
                let key = (
                    task.destination,
                    task.target_repository.clone(),
                    blob.digest.to_string(),
                );
                match &outcome {
                    Ok(bytes) => {
                        // A range's bytes shared out by size (exact for one-blob ranges).
                        let share = if total == 0 {
                            0
                        } else {
                            (*bytes as u128 * blob.size as u128 / total as u128) as u64
                        };
                        blob_bytes.insert(key, share);
                    }
                    Err(e) => {
                        blob_errors.insert(key, format!("{}: {e}", e.kind().as_str()));
                    }
                }
            }
        }
        let puts: Vec<ImageResult> = futures::stream::iter(planned)
            .map(|plan| {
                let blob_bytes = &blob_bytes;
                let blob_errors = &blob_errors;
                async move {
                    let task = plan.image.clone();
                    let keys: Vec<_> = plan
                        .ranges
                        .iter()
                        .flat_map(range_blobs)
                        .map(|b| {
                            (
                                task.destination,
                                task.target_repository.clone(),
                                b.digest.to_string(),
                            )
                        })
                        .collect();
                    if let Some(error) = keys.iter().find_map(|k| blob_errors.get(k)) {
                        return ImageResult::for_task(
                            &task,
                            ImageStatus::Failed,
                            0,
                            Some(error.clone()),
                        );
                    }
                    let bytes = keys.iter().filter_map(|k| blob_bytes.get(k)).sum::<u64>();
                    let _permit = self.copies.acquire().await;
                    workflow::put_manifests(
                        self.conns,
                        PutManifestsInput {
                            job: self.job.clone(),
                            image: task.clone(),
                            copied: serde_json::json!([{ "bytes": bytes }]),
                        },
                    )
                    .await
                    .unwrap_or_else(|e| failed(&task, &e))
                }
            })
            .buffer_unordered(self.job.max_concurrency.max(1) as usize)
            .collect()
            .await;
        results.extend(puts);
        results
    }

    /// Copies one range to completion (a segment loop for a large blob), holding a copy permit
    /// per call.
    async fn copy_range(&self, task: &ImageTask, range: &CopyRange) -> Result<u64> {
        let mut state = None;
        let mut bytes_before = 0;
        loop {
            let _permit = self.copies.acquire().await;
            let out = workflow::copy_blobs(
                self.conns,
                CopyBlobsInput {
                    job: self.job.clone(),
                    image: task.clone(),
                    range: range.clone(),
                    state,
                    bytes_before,
                },
            )
            .await?;
            if out.done {
                return Ok(out.range_bytes_copied);
            }
            bytes_before = out.range_bytes_copied;
            state = out.state;
        }
    }
}

fn range_blobs(range: &CopyRange) -> Vec<BlobRef> {
    match range {
        CopyRange::Blobs { blobs } => blobs.clone(),
        CopyRange::Segments { blob, .. } => vec![blob.clone()],
    }
}

fn failed(task: &ImageTask, e: &Error) -> ImageResult {
    ImageResult::for_task(
        task,
        ImageStatus::Failed,
        0,
        Some(format!("{}: {e}", e.kind().as_str())),
    )
}
