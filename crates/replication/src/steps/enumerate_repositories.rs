//! `enumerate-repositories`: one page of the source's repositories the job selects, the job
//! validated with every default filled in, and how `maxConcurrency` is shared out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::enumerate_repositories_listing::{next_batch, ListingPosition};
use super::*;
use crate::connect::Connections;
use crate::cost::Cost;
use crate::error::{Error, Result};
use crate::job::{Job, Mode, ValidJob};

/// Source repositories per `enumerate-repositories` page: each becomes a child execution whose
/// report (with its cost) is part of the Map's aggregated result (256 KiB at most: 94 % in the
/// worst case `payload_bounds` builds).
pub const REPOSITORIES_PER_PAGE: usize = 16;

/// Names asked of the registry per listing request (ECR's `DescribeRepositories` maximum): the
/// filter is applied within these large pages, so a page of selected repositories costs the
/// parent execution the same whether the registry holds 30 repositories or 30,000.
pub const LISTING_PAGE: usize = 1000;

/// Listing requests one call makes at most before handing back a token (bounded work per
/// invocation: 50,000 names at ECR's page size).
pub const LISTING_REQUESTS_PER_CALL: usize = 50;

/// The token of a listing already read to its end: the page takes only repositories handed
/// back by their children (`RunReport::continuations`).
pub const LISTING_DONE: &str = "done";

/// Repositories checked for work at once.
pub const TRIAGE_CONCURRENCY: usize = 8;

/// The `enumerate-repositories` step.
pub struct EnumerateRepositories;

impl Step for EnumerateRepositories {
    const NAME: &'static str = "enumerate-repositories";
    type Input = EnumerateRepositoriesInput;
    type Output = EnumerateRepositoriesOutput;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(enumerate_repositories(conns, input))
    }
}

/// Input of `enumerate-repositories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnumerateRepositoriesInput {
    /// The job.
    pub job: Job,
    /// Page token from the previous call.
    #[serde(default)]
    pub next_token: Option<String>,
    /// The run's report so far: returned with the repositories this page settled added and
    /// the continuations it took out.
    #[serde(default)]
    pub report: Option<RunReport>,
    /// Pages this execution ran before this one.
    #[serde(default)]
    pub pages: u32,
}

/// Output of `enumerate-repositories`: selected repositories of one source page, and the job
/// validated with every default filled in, which the state machine uses from then on (a Choice
/// or `*Path` on a field the input left out fails an execution in AWS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateRepositoriesOutput {
    /// Selected repositories with work to do: each gets a child execution.
    pub repositories: Vec<String>,
    /// The input's report with every selected repository this page found nothing to do in
    /// added (present images counted, unsigned images, prune notes): they get no child
    /// execution. Absent outside the workflow (the CLI decides per repository itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<RunReport>,
    /// Selected repositories this page settled (nothing to do).
    #[serde(default)]
    pub settled: usize,
    /// Pages this execution ran, this one included.
    #[serde(default)]
    pub pages: u32,
    /// Pages an execution runs before it continues as a new one.
    #[serde(default)]
    pub pages_per_execution: u32,
    /// Pages of images a repository child runs before it hands its token back.
    #[serde(default)]
    pub pages_per_child: u32,
    /// For each of `repositories`, the `nextToken` its first `enumerate-images` call starts
    /// from: the selection its check kept in the work bucket (so the repository is listed once
    /// per run), or `null` (listed by its child).
    #[serde(default)]
    pub selections: Vec<Option<String>>,
    /// For each of `repositories`, the repositories packed with it into one child (led by it:
    /// several with little work, `enumerate_pack`), or empty: a child of its own.
    #[serde(default)]
    pub packs: Vec<Vec<String>>,
    /// Token for the next page, `null` on the last.
    pub next_token: Option<String>,
    /// The job, validated, defaults filled in.
    pub job: Job,
    /// How the job's `maxConcurrency` is shared out over the nested maps.
    pub concurrency: Concurrency,
    /// Names the source's catalog listed that are not valid repository names: never used in a
    /// request (the first `ENSURE_LISTED`, each with why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// `maxConcurrency` shared out: repositories at once times images at once per repository never
/// exceeds it, and each image copies one range at a time, so concurrent copy invocations stay
/// within `maxConcurrency` for the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// Repository child executions at once (ForEachRepository's MaxConcurrency).
    pub repositories: u32,
    /// Image child executions at once per repository (ForEachImage's MaxConcurrency).
    pub images: u32,
}

impl Concurrency {
    /// Up to 5 images at once per repository, the rest of the budget to repositories.
    pub fn share(max_concurrency: u32) -> Self {
        let max = max_concurrency.max(1);
        let images = max.min(5);
        Concurrency {
            repositories: (max / images).max(1),
            images,
        }
    }
}

/// One page of the source's repositories with work to do, filtered by the job's globs: in a
/// replication, each selected repository is first checked (settings, prune and every image, as
/// its child would, writing nothing) and one with nothing to do is settled here, its report
/// added to the run's, without a child execution. The page holds at most
/// `REPOSITORIES_PER_PAGE` repositories with work and ends when the triage budget (`WorkflowLimits`) is spent.
pub async fn enumerate_repositories(
    conns: &Connections,
    input: EnumerateRepositoriesInput,
) -> Result<EnumerateRepositoriesOutput> {
    let budget = conns.settings().limits.triage_budget;
    enumerate_and_settle(conns, input, budget).await
}

/// `enumerate_repositories` with its time budget given (a test hands back after one batch).
pub async fn enumerate_and_settle(
    conns: &Connections,
    input: EnumerateRepositoriesInput,
    budget: std::time::Duration,
) -> Result<EnumerateRepositoriesOutput> {
    let started = std::time::Instant::now();
    let mut report = input.report.unwrap_or_default();
    let mut job = input.job.validate()?;
    // An import runs as a replication from the layout, served as a registry (`source()`); an
    // export as one into the layout, served as a registry (`destination()`), sealed by Finish.
    // The whole job against the deployment first: nothing is sent for a job it refuses.
    conns.admit(&job.job)?;
    conns.check_layout_export(&job.job).await?;
    // A layout's statement verified once for the run: every later step reads that one.
    conns.pin_source_statement(&mut job.job).await?;
    let limits = conns.settings().limits;
    // Under a pull budget a page holds one repository with work: its child starts knowing
    // what the run spent before it (the parent's report), so the count stays exact.
    let per_page = match job.job.source.pull_budget {
        Some(_) => 1,
        None => REPOSITORIES_PER_PAGE,
    };
    // Repositories handed back by their children first, each to a new child from its token.
    let resumed: Vec<Continuation> = report
        .continuations
        .drain(..report.continuations.len().min(per_page))
        .collect();
    for c in &resumed {
        oci::reference::validate_repository_name(&c.repository)
            .map_err(|reason| Error::invalid("report.continuations", reason))?;
    }
    let room = per_page - resumed.len();
    let listing_done = input.next_token.as_deref() == Some(LISTING_DONE);
    let mut page = if room == 0 || listing_done {
        // No room, or nothing left to list: the listing stays where it is.
        EnumerateRepositoriesOutput {
            repositories: Vec::new(),
            report: None,
            settled: 0,
            pages: 0,
            pages_per_execution: 0,
            pages_per_child: 0,
            selections: Vec::new(),
            packs: Vec::new(),
            next_token: input.next_token,
            job: job.job.clone(),
            concurrency: Concurrency::share(limits.copies_at_once(job.job.max_concurrency)),
            refused: Vec::new(),
        }
    } else {
        let triage = Triage::of(&job, budget);
        enumerate_validated(conns, &job, input.next_token, room, &triage).await?
    };
    if let Some(settled) = &page.report {
        report.merge(settled);
    }
    let (names, tokens): (Vec<String>, Vec<Option<String>>) = resumed
        .into_iter()
        .map(|c| (c.repository, Some(c.next_token)))
        .unzip();
    page.repositories.splice(0..0, names);
    page.packs.splice(0..0, vec![Vec::new(); tokens.len()]);
    page.selections.splice(0..0, tokens);
    // A listing read to its end with continuations still waiting goes on with those alone.
    if page.next_token.is_none() && !report.continuations.is_empty() {
        page.next_token = Some(LISTING_DONE.to_string());
    }
    if listing_done && report.continuations.is_empty() {
        page.next_token = None;
    }
    if job.job.dry_run && report.planned_cost.is_none() {
        report.planned_cost = Some(Cost::default());
    }
    // This call and the parent's states for this page; the run's own execution on its first.
    let first_of_execution = input.pages == 0;
    let mut own = Cost::this_call(started);
    own.add(&Cost::transitions(crate::cost::repositories_page_states(
        first_of_execution,
    )));
    own.standard_executions += u64::from(first_of_execution);
    report.add_cost(&own);
    page.report = Some(report.priced(&conns.settings().cost_model));
    page.pages = input.pages.saturating_add(1);
    page.pages_per_execution = limits.pages_per_execution;
    page.pages_per_child = limits.pages_per_child;
    Ok(page)
}

/// `enumerate_repositories` with pages of at most `page` source repositories, none settled (in
/// one process the state's bound does not apply, each repository is handled in turn, and
/// registries' catalogs are cheaper read in large pages).
pub async fn enumerate_repositories_within(
    conns: &Connections,
    input: EnumerateRepositoriesInput,
    page: usize,
) -> Result<EnumerateRepositoriesOutput> {
    let job = input.job.validate()?;
    enumerate_validated(conns, &job, input.next_token, page, &Triage::None).await
}

/// Whether selected repositories are checked for work and settled without a child.
enum Triage<'a> {
    /// In process: every selected repository is handled in turn.
    None,
    /// A replication's workflow step.
    Check {
        /// The job.
        job: &'a ValidJob,
        /// The job as the check runs it (`dryRun`: ensure only says what it would do), made
        /// once per call.
        look_only: Box<ValidJob>,
        /// When the call stops taking new batches (it always takes one).
        deadline: std::time::Instant,
        /// Whether repositories with little work are packed (`packs_repositories`): their
        /// check then sizes their work.
        packing: bool,
    },
}

impl<'a> Triage<'a> {
    /// A replication checks for `budget`; a verification compares every repository in a child.
    fn of(job: &'a ValidJob, budget: std::time::Duration) -> Self {
        if job.job.mode != Mode::Replicate {
            return Triage::None;
        }
        let mut look_only = Box::new(job.clone());
        look_only.job.dry_run = true;
        Triage::Check {
            job,
            look_only,
            deadline: std::time::Instant::now() + budget,
            packing: super::packs_repositories(job),
        }
    }

    /// Repositories one batch takes at most.
    fn batch(&self) -> usize {
        match self {
            Triage::None => usize::MAX,
            Triage::Check { .. } => TRIAGE_CONCURRENCY,
        }
    }

    /// Whether another batch may start after `batches` of them.
    fn time_left(&self, batches: usize) -> bool {
        match self {
            Triage::None => true,
            Triage::Check { deadline, .. } => batches == 0 || std::time::Instant::now() < *deadline,
        }
    }

    /// Keeps the repositories of a batch that have work (in order, each with the selection its
    /// check kept and, when it fits one page, its tasks) and adds the report of those settled
    /// to `settled`, counting them.
    async fn sort(
        &self,
        conns: &Connections,
        batch: Vec<String>,
        settled: &mut (RunReport, usize),
    ) -> Vec<(String, Option<String>, Option<usize>)> {
        let Triage::Check {
            job,
            look_only,
            packing,
            ..
        } = self
        else {
            return batch.into_iter().map(|r| (r, None, None)).collect();
        };
        let checked =
            futures::future::join_all(batch.iter().map(|repository| {
                settle_repository(conns, (job, look_only), repository, *packing)
            }))
            .await;
        let mut with_work = Vec::new();
        for (repository, check) in batch.into_iter().zip(checked) {
            match check {
                Ok(Checked::Settled(report)) => {
                    settled.0.merge(&report);
                    settled.1 += 1;
                }
                Ok(Checked::Work { selection, tasks }) => {
                    with_work.push((repository, selection, tasks))
                }
                // Its child meets the error again, retries it and records it, named.
                Err(e) => {
                    tracing::info!(%repository, error = %e, "could not check for work: left to its child");
                    with_work.push((repository, None, None))
                }
            }
        }
        with_work
    }
}

/// What a repository's check found.
enum Checked {
    /// Nothing to do: its report, as its child would have made it.
    Settled(Box<RunReport>),
    /// Work for a child, which starts from the selection kept here (if one was); `tasks` when
    /// the whole work fits one page (its tasks and results): the repository may be packed.
    Work {
        selection: Option<String>,
        tasks: Option<usize>,
    },
}

/// Checks a repository for work: a repository to create or change, a tag to prune, an image
/// missing in a destination, or more images than one check covers (`IMAGES_CHECKED_PER_CALL`).
/// With `packing`, a repository with work is sized: one page of its tasks at most is found, and
/// one whose whole work fits it is left to a pack (no selection kept: the pack lists it).
async fn settle_repository(
    conns: &Connections,
    (job, look_only): (&ValidJob, &ValidJob),
    repository: &str,
    packing: bool,
) -> Result<Checked> {
    let mut ensured = Vec::new();
    let mut changes = false;
    for destination in 0..job.job.destinations.len() {
        let out =
            super::ensure_repository::ensure_validated(conns, look_only, repository, destination)
                .await?;
        if out.changes_something() && !packing {
            return Ok(Checked::Work {
                selection: None,
                tasks: None,
            });
        }
        changes |= out.changes_something();
        ensured.push(out.bounded());
    }
    // The signature gate's reads, where they are pulls, count in the settled report (a
    // repository with work leaves them uncounted: its child's count starts from its pages).
    let (selected, _, selection_pulls) = selected_counted(conns, job, repository).await?;
    let work = || async {
        // Kept for the child, whose pages then read it instead of listing the repository again.
        let Some(bucket) = conns.work_bucket().await else {
            return Checked::Work {
                selection: None,
                tasks: None,
            };
        };
        match keep_selection(
            bucket,
            (job, &conns.deployment_digest()),
            repository,
            &selected,
        )
        .await
        {
            Ok(id) => Checked::Work {
                selection: Some(format!("{id}:0")),
                tasks: None,
            },
            Err(e) => {
                tracing::warn!(%repository, error = %e, "could not keep the selection: its child lists the repository again");
                Checked::Work {
                    selection: None,
                    tasks: None,
                }
            }
        }
    };
    let page = page_of_work(
        conns,
        job,
        repository,
        Selection::whole(&selected),
        0,
        PageBounds {
            // Packing sizes the work (one page of it); otherwise the first task is enough.
            tasks: if packing { TASKS_PER_PAGE } else { 0 },
            unsigned: usize::MAX,
            ..PageBounds::STEP
        },
    )
    .await?;
    // A repository with tasks whose whole work fits a page may share a child (one with only
    // settings to change keeps its own, as before).
    let fits_a_page = page.next_token.is_none() && page.unsigned.len() <= UNSIGNED_PER_PAGE;
    if packing && fits_a_page && !page.images.is_empty() {
        return Ok(Checked::Work {
            selection: None,
            tasks: Some(page.images.len() + page.unsigned.len()),
        });
    }
    if changes && page.images.is_empty() && page.next_token.is_none() {
        return Ok(Checked::Work {
            selection: None,
            tasks: None,
        });
    }
    if changes || !page.images.is_empty() || page.next_token.is_some() {
        return Ok(work().await);
    }
    page.emit_present_metrics();
    let report = super::summarise(
        SummariseInput {
            results: serde_json::to_value(&page.unsigned).unwrap_or_default(),
            repositories: serde_json::to_value(&ensured).unwrap_or_default(),
            present: page.present,
            enumerated_pulls: selection_pulls + page.pulls,
            list: Some(crate::report::CHILD_LISTED),
            ..SummariseInput::default()
        },
        &conns.settings().cost_model,
    )?;
    Ok(Checked::Settled(Box::new(report)))
}

/// `maxConcurrency` cut to the deployment's reservation for the copying functions, said in the
/// log when it is.
fn copies_at_once(conns: &Connections, max_concurrency: u32) -> u32 {
    let limits = conns.settings().limits;
    let capped = limits.copies_at_once(max_concurrency);
    if capped < max_concurrency {
        tracing::warn!(
            max_concurrency,
            copy_concurrency = capped,
            "maxConcurrency is above the deployment's copyConcurrency: the run copies {capped} at \
             once, as many as the copying functions' reservation runs"
        );
    }
    capped
}

#[tracing::instrument(skip_all, fields(next = ?next_token))]
async fn enumerate_validated(
    conns: &Connections,
    job: &ValidJob,
    next_token: Option<String>,
    page: usize,
    triage: &Triage<'_>,
) -> Result<EnumerateRepositoriesOutput> {
    let concurrency = Concurrency::share(copies_at_once(conns, job.job.max_concurrency));
    // Repositories named one by one: those of an image list, or a Docker Hub source's (it
    // lists no catalog). No catalog is read.
    let named: Option<Vec<&String>> = if !job.job.images.is_empty() {
        Some(job.job.images.iter().map(|i| &i.repository).collect())
    } else if job.job.source.registry == oci::reference::DOCKER_HUB {
        job.job
            .named_repositories()
            .map(|names| names.iter().collect())
    } else {
        None
    };
    if let Some(named) = named {
        return named_page(job, named, next_token.as_deref(), page, concurrency);
    }
    let listed = catalog_page(conns, job, next_token, page, triage).await?;
    let (report, settled) = match triage {
        Triage::None => (None, 0),
        Triage::Check { .. } => {
            let (mut report, count) = listed.settled;
            report.limit_lists(crate::report::CHILD_LISTED);
            (Some(report), count)
        }
    };
    Ok(EnumerateRepositoriesOutput {
        repositories: listed.repositories,
        report,
        settled,
        pages: 0,
        pages_per_execution: 0,
        pages_per_child: 0,
        selections: listed.selections,
        packs: listed.packs,
        next_token: listed.next_token,
        job: job.job.clone(),
        concurrency,
        refused: listed.refused,
    })
}

/// One page of the repositories a job names one by one (no catalog read), paged like the
/// catalog (the parent's state holds one page of repositories at a time): the token is the
/// offset into the list's valid, selected repositories, in first-named order.
fn named_page(
    job: &ValidJob,
    named: Vec<&String>,
    next_token: Option<&str>,
    page: usize,
    concurrency: Concurrency,
) -> Result<EnumerateRepositoriesOutput> {
    let mut listed: Vec<String> = Vec::new();
    let mut refused = Vec::new();
    for name in named {
        if let Err(reason) = oci::reference::validate_repository_name(name) {
            if refused.len() < ENSURE_LISTED {
                refused.push(format!("{name}: {reason}"));
            }
            continue;
        }
        if !listed.contains(name) && job.repositories.matches(name) {
            listed.push(name.clone());
        }
    }
    let offset = match next_token {
        None => 0,
        Some(token) => token
            .parse::<usize>()
            .ok()
            .filter(|o| *o < listed.len())
            .ok_or_else(|| {
                Error::invalid(
                    "nextToken",
                    format!("{token:?} is not a page of this job's image list"),
                )
            })?,
    };
    let end = offset.saturating_add(page.max(1)).min(listed.len());
    Ok(EnumerateRepositoriesOutput {
        repositories: listed[offset..end].to_vec(),
        report: None,
        settled: 0,
        pages: 0,
        pages_per_execution: 0,
        pages_per_child: 0,
        selections: vec![None; end - offset],
        packs: vec![Vec::new(); end - offset],
        next_token: (end < listed.len()).then(|| end.to_string()),
        job: job.job.clone(),
        concurrency,
        refused,
    })
}

/// What one call read of the source's catalog: the selected repositories with work (each with
/// the selection its check kept), the report and count of those it settled, the names refused,
/// and where the next call goes on.
struct CatalogPage {
    repositories: Vec<String>,
    selections: Vec<Option<String>>,
    packs: Vec<Vec<String>>,
    settled: (RunReport, usize),
    refused: Vec<String>,
    next_token: Option<String>,
}

/// Reads the source's catalog from `next_token` in listing pages of `LISTING_PAGE` names, the
/// job's globs applied within them, and hands the selected names to `triage` in batches, until
/// `page` repositories with work are found, the triage's time is up, `LISTING_REQUESTS_PER_CALL`
/// requests were made, or the catalog ends.
async fn catalog_page(
    conns: &Connections,
    job: &ValidJob,
    next_token: Option<String>,
    page: usize,
    triage: &Triage<'_>,
) -> Result<CatalogPage> {
    let source = conns.source(&job.job).await?;
    let catalog = source.catalog();
    let mut at = ListingPosition::parse(next_token.as_deref())?;
    let mut items = super::enumerate_pack::Packer::default();
    let mut out = CatalogPage {
        repositories: Vec::new(),
        selections: Vec::new(),
        packs: Vec::new(),
        settled: (RunReport::default(), 0),
        refused: Vec::new(),
        next_token: None,
    };
    let mut batches = 0;
    let page = page.max(1);
    // Whether this call may take another batch: room on the page, and time left.
    let more = |items: usize, batches: usize| items < page && triage.time_left(batches);
    for request in 0..LISTING_REQUESTS_PER_CALL {
        if request > 0 && !more(items.used(), batches) {
            out.next_token = Some(at.token());
            break;
        }
        let listing = catalog
            .repositories(at.registry_token.clone(), LISTING_PAGE)
            .await?;
        let mut consumed = at.offset;
        while consumed < listing.items.len() && more(items.used(), batches) {
            // The next batch: as many selected names as the page and the triage take at once.
            let room = (page - items.used()).min(triage.batch());
            let names = &listing.items[consumed..];
            let (batch, read) = next_batch(job, names, room, &mut out.refused);
            consumed += read;
            for (repository, selection, tasks) in triage.sort(conns, batch, &mut out.settled).await
            {
                items.add(repository, selection, tasks);
            }
            batches += 1;
        }
        if consumed < listing.items.len() {
            // The page ended within this listing page: the next call reads it again from
            // where this one stopped.
            at.offset = consumed;
            out.next_token = Some(at.token());
            break;
        }
        match listing.next {
            Some(registry_token) => {
                at = ListingPosition {
                    offset: 0,
                    registry_token: Some(registry_token),
                };
                out.next_token = Some(at.token());
            }
            None => {
                out.next_token = None;
                break;
            }
        }
    }
    items.close();
    (out.repositories, out.selections, out.packs) =
        (items.repositories, items.selections, items.packs);
    Ok(out)
}
