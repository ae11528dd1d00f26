//! Running a whole job in-process with the workflow's steps: the CLI's `sync` and `plan`.
//! Several repositories at once; within a repository, each page of images is planned, the
//! page's missing blobs are copied once per destination repository (shared base layers travel
//! once, and no two uploads of one blob race), then the manifests are put. At most
//! `maxConcurrency` copy or put calls run at any moment. One image or one repository failing is
//! recorded and the others go on.

use std::sync::Mutex;

use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::connect::Connections;
use crate::cost::Cost;
use crate::error::{Error, Result};
use crate::job::{Job, Mode, ValidJob};
use crate::plan::CopyRange;
use crate::steps::enumerate_pack::PageRanges;
use crate::steps::{self, *};

/// Source repositories read per catalog page in process.
const REPOSITORY_PAGE_IN_PROCESS: usize = 1000;

/// Hears about each image as it finishes (for progress output).
pub trait RunObserver: Send + Sync {
    /// One image in one destination is done.
    fn image_done(&self, _result: &ImageResult) {}
    /// A destination repository was ensured.
    fn repository_ensured(&self, _output: &EnsureRepositoryOutput) {}
    /// A repository failed as a whole.
    fn repository_failed(&self, _failure: &RepositoryFailure) {}
    /// A range of blobs could not be copied (the images needing them fail).
    fn range_failed(&self, _error: &str) {}
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
    /// A verification's differences, every one (the report lists the first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<Difference>,
}

/// Verifies the job (`"mode": "verify"`): every repository compared with each destination,
/// several at once; a repository that cannot be compared is recorded as failed.
async fn verify_job(
    conns: &Connections,
    job: &Job,
    observer: &dyn RunObserver,
) -> Result<RunOutput> {
    let parallel_repositories = (job.max_concurrency as usize).clamp(1, 8);
    let mut output = RunOutput {
        report: RunReport {
            verify: Some(VerifyReport::default()),
            ..RunReport::default()
        },
        ..RunOutput::default()
    };
    let mut token = None;
    loop {
        let page = steps::enumerate_repositories_within(
            conns,
            EnumerateRepositoriesInput {
                job: job.clone(),
                next_token: token,
                report: None,
                pages: 0,
            },
            REPOSITORY_PAGE_IN_PROCESS,
        )
        .await?;
        let verified: Vec<(String, Result<VerifyReport>)> =
            futures::stream::iter(page.repositories)
                .map(|repository| async move {
                    let input = VerifyRepositoryInput {
                        job: job.clone(),
                        repository: repository.clone(),
                        next_token: None,
                        report: None,
                    };
                    (repository, steps::verify_repository(conns, input).await)
                })
                .buffer_unordered(parallel_repositories)
                .collect()
                .await;
        for (repository, verified) in verified {
            match verified {
                Ok(mut report) => {
                    output.differences.append(&mut report.differences);
                    if let Some(total) = &mut output.report.verify {
                        total.merge(&report);
                    }
                }
                Err(e) => {
                    let failure = RepositoryFailure {
                        repository,
                        error: format!("{}: {e}", e.kind().as_str()),
                    };
                    observer.repository_failed(&failure);
                    output.report.repositories_failed += 1;
                    if output.report.repository_failures.len() < MAX_FAILURES_LISTED {
                        output.report.repository_failures.push(failure);
                    }
                }
            }
        }
        match page.next_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    output
        .differences
        .sort_by(|a, b| (&a.repository, &a.target).cmp(&(&b.repository, &b.target)));
    if let Some(total) = &mut output.report.verify {
        total.differences = output
            .differences
            .iter()
            .take(MAX_FAILURES_LISTED)
            .cloned()
            .collect();
        total.differences_omitted = total.total() - total.differences.len();
    }
    Ok(output)
}

/// Runs the job. Invalid input fails at once; image and repository failures are recorded in
/// the report.
pub async fn run_job(
    conns: &Connections,
    job: Job,
    observer: &dyn RunObserver,
) -> Result<RunOutput> {
    let valid = job.validate()?;
    if let Some(field) = valid.job.layout_field() {
        return Err(Error::invalid(
            field,
            "a layout job runs with `layout_run::run_layout_job`, given the opened layout",
        ));
    }
    // The whole job against the deployment first: nothing is sent for a job it refuses.
    conns.admit(&valid.job)?;
    if valid.job.mode == Mode::Verify {
        return verify_job(conns, &valid.job, observer).await;
    }
    let job = valid.job.clone();
    let run = Run {
        conns,
        job: &job,
        valid: &valid,
        observer,
        copies: Semaphore::new(job.max_concurrency.max(1) as usize),
        output: Mutex::new(RunOutput::default()),
        // A plan pages as the workflow does, so what it says the workflow will cost is so.
        bounds: if job.dry_run {
            PageBounds::STEP
        } else {
            PageBounds::IN_PROCESS
        },
        planned: Mutex::new((Cost::default(), 0)),
        packable: Mutex::new(Vec::new()),
        packs: steps::packs_repositories(&valid),
    };
    // Under a pull budget one repository at a time: each plan knows what the run spent.
    let parallel_repositories = match job.source.pull_budget {
        Some(_) => 1,
        None => (job.max_concurrency as usize).clamp(1, 8),
    };
    let mut repo_token = None;
    loop {
        let page = steps::enumerate_repositories_within(
            conns,
            EnumerateRepositoriesInput {
                job: job.clone(),
                next_token: repo_token,
                report: None,
                pages: 0,
            },
            REPOSITORY_PAGE_IN_PROCESS,
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
    let (mut planned, mut children) = run.planned.into_inner().unwrap_or_else(|e| e.into_inner());
    // Repositories the workflow packs share children: in the catalog's order (by name).
    let mut packable = run.packable.into_inner().unwrap_or_else(|e| e.into_inner());
    packable.sort_by(|a, b| a.repository.cmp(&b.repository));
    let model = &conns.settings().cost_model;
    let (packed, pack_children) = steps::enumerate_pack::estimate_packs(model, &packable);
    planned.add(&packed);
    children += pack_children;
    let mut output = run.output.into_inner().unwrap_or_else(|e| e.into_inner());
    if job.dry_run {
        let mut cost = model.parent(children);
        cost.add(&planned);
        output.report.planned_cost = Some(model.priced(cost));
    }
    Ok(output)
}

struct Run<'a> {
    conns: &'a Connections,
    job: &'a Job,
    valid: &'a ValidJob,
    observer: &'a dyn RunObserver,
    /// Copy and put calls at once: `maxConcurrency`.
    copies: Semaphore,
    output: Mutex<RunOutput>,
    /// How large a page of work is.
    bounds: PageBounds,
    /// A plan's estimate of the workflow: the repository children's cost, and how many.
    planned: Mutex<(Cost, usize)>,
    /// Repositories the workflow would pack (`steps::packs_repositories`): whole work one page.
    packable: Mutex<Vec<steps::enumerate_pack::PackMember>>,
    /// Whether the workflow packs this job's repositories.
    packs: bool,
}

impl Run<'_> {
    /// Pulls the run sent to the source so far (the signature gate's and platform subsets' reads,
    /// planned and put images).
    fn pulls_spent(&self) -> u64 {
        let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        output.report.source_pulls
    }

    fn record(&self, f: impl FnOnce(&mut RunOutput)) {
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut output);
    }

    /// One repository: ensured in every destination, then its images page by page. A failure
    /// of the repository as a whole is recorded, naming it.
    async fn repository(&self, repository: &str) {
        if let Err(e) = self.try_repository(repository).await {
            let failure = RepositoryFailure {
                repository: repository.to_string(),
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
        let model = &self.conns.settings().cost_model;
        // What the workflow's child for this repository would cost; it has none when the
        // repository has nothing to do (enumerate-repositories settles it).
        let mut child = model.child_start(self.job.destinations.len());
        let mut has_work = false;
        for destination in 0..self.job.destinations.len() {
            let ensured = steps::ensure_repository(
                self.conns,
                EnsureRepositoryInput {
                    job: self.job.clone(),
                    repository: repository.to_string(),
                    destination,
                },
            )
            .await?;
            self.observer.repository_ensured(&ensured);
            has_work |= ensured.changes_something();
            self.record(|o| {
                o.report.add_repository(&ensured);
                o.repositories.push(ensured);
            });
        }
        // Listed and resolved once; pages of work taken from it (larger than a step's).
        let (selected, selection_pulls) =
            steps::selected_images_counted(self.conns, self.valid, repository).await?;
        // The signature gate's reads are pulls too: counted before any plan takes its share.
        self.record(|o| o.report.source_pulls += selection_pulls);
        let mut offset = 0;
        // The first page's tasks and results, its planned images and puts, if it was the only.
        let mut single = None;
        loop {
            let page = steps::page_of_work(
                self.conns,
                self.valid,
                repository,
                Selection::whole(&selected),
                offset,
                self.bounds,
            )
            .await?;
            page.emit_present_metrics();
            self.record(|o| {
                o.report.add_present(page.present);
                o.report.source_pulls += page.pulls;
            });
            has_work |= !page.images.is_empty();
            let first = offset == 0 && page.next_token.is_none() && !page.images.is_empty();
            let images = page.images.len() as u64;
            let held = page.images.len() + page.unsigned.len();
            let mut results = page.unsigned;
            let (replicated, rounds, ranges) = self.replicate_page(page.images).await;
            if first {
                let puts = replicated
                    .iter()
                    .filter(|r| r.status == ImageStatus::Planned);
                single = Some((held, images, puts.count() as u64, ranges));
            }
            child.add(&rounds);
            results.extend(replicated);
            for r in &results {
                self.observer.image_done(r);
            }
            self.record(|o| {
                for r in &results {
                    o.report.add(r);
                }
                o.images.extend(results);
            });
            match page.next_token.and_then(|t| t.parse().ok()) {
                Some(next) => offset = next,
                None => break,
            }
        }
        match single.filter(|_| self.packs && self.job.mode == Mode::Replicate) {
            Some((tasks, images, puts, ranges)) if has_work => {
                let mut packable = self.packable.lock().unwrap_or_else(|e| e.into_inner());
                packable.push(steps::enumerate_pack::PackMember {
                    repository: repository.to_string(),
                    tasks,
                    alone: child,
                    images,
                    puts,
                    destinations: self.job.destinations.len(),
                    ranges: ranges.unwrap_or_default(),
                });
            }
            _ if has_work => {
                let mut planned = self.planned.lock().unwrap_or_else(|e| e.into_inner());
                planned.0.add(&child);
                planned.1 += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// One page of tasks, as the state machine runs it: the page planned (the union of its
    /// images' missing blobs per destination repository, each blob once), every range copied,
    /// then each image's manifests put once all of its blobs are there. Deferred tasks (the
    /// plan's size bound) are planned next, the same way. Returns the results and what the
    /// page's rounds cost in the workflow (the repository child's states and calls, its copy's).
    async fn replicate_page(
        &self,
        tasks: Vec<ImageTask>,
    ) -> (Vec<ImageResult>, Cost, Option<PageRanges>) {
        let model = &self.conns.settings().cost_model;
        let mut round = PageRound {
            enumerated: true,
            plan: None,
            destinations: 0,
            source: &self.job.source.registry,
        };
        let mut results: Vec<ImageResult> = Vec::new();
        let mut tasks = tasks;
        // Each round ends in a `SummariseImages` call (in the workflow, it counts itself).
        let summarise = model.calls(1);
        let mut cost = Cost::default();
        let mut ranges = None;
        if tasks.is_empty() {
            cost.add(&model.page_round(&round, true));
            cost.add(&summarise);
        }
        while !tasks.is_empty() {
            let plan = match steps::plan_page_within(
                self.conns,
                PlanPageInput {
                    job: self.job.clone(),
                    images: tasks.clone(),
                    // The report has this page's put reads once its results are recorded.
                    pulls_before: 0,
                    pulls_spent: self.pulls_spent()
                        + results.iter().map(|r| r.source_pulls).sum::<u64>(),
                },
                self.bounds.plan_bytes,
            )
            .await
            {
                Ok(plan) => plan,
                Err(e) => {
                    results.extend(tasks.iter().map(|t| failed(t, &e)));
                    return (results, cost, ranges);
                }
            };
            if round.enumerated {
                ranges = Some(PageRanges::of(&plan));
            }
            cost.add(&model.page_round(
                &PageRound {
                    plan: Some(&plan),
                    ..round
                },
                true,
            ));
            cost.add(&summarise);
            round.enumerated = false;
            tasks = plan.deferred.clone();
            self.record(|o| o.report.source_pulls += plan.pulls);
            results.extend(plan.postponed_results());
            results.extend(self.run_plan(plan).await);
        }
        (results, cost, ranges)
    }

    async fn run_plan(&self, plan: PagePlan) -> Vec<ImageResult> {
        let mut results = Vec::new();
        let mut to_put = Vec::new();
        for planned in plan.images {
            match planned.settled_result() {
                Some(result) => results.push(result),
                None if self.job.dry_run => results.push(planned.dry_run_result()),
                None => to_put.push(planned),
            }
        }
        if to_put.is_empty() {
            return results;
        }
        let copied: Vec<Result<u64>> = futures::stream::iter(plan.ranges)
            .map(|r| async move { self.copy_range(&r.image, &r.range).await })
            .buffer_unordered(self.job.max_concurrency.max(1) as usize)
            .collect()
            .await;
        // Bytes are counted here, once per range; the outcomes tell the puts which failed.
        let mut ranges = Vec::new();
        for outcome in copied {
            match outcome {
                Ok(bytes) => {
                    self.record(|o| o.report.bytes_copied += bytes);
                    ranges.push(RangeOutcome::default());
                }
                Err(e) => {
                    let error = format!("{}: {e}", e.kind().as_str());
                    self.observer.range_failed(&error);
                    self.record(|o| o.report.ranges_failed += 1);
                    ranges.push(RangeOutcome {
                        bytes: 0,
                        error: Some(error),
                    });
                }
            }
        }
        let puts: Vec<ImageResult> = futures::stream::iter(to_put)
            .map(|planned| {
                let ranges = ranges.clone();
                async move {
                    let task = planned.image;
                    let _permit = self.copies.acquire().await;
                    steps::put_manifests(
                        self.conns,
                        PutManifestsInput {
                            job: self.job.clone(),
                            image: task.clone(),
                            copied: ranges,
                            execution: None,
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
            let out = steps::copy_blobs(
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

fn failed(task: &ImageTask, e: &Error) -> ImageResult {
    ImageResult::for_task(
        task,
        ImageStatus::Failed,
        0,
        Some(format!("{}: {e}", e.kind().as_str())),
    )
}
