//! `summarise`: adds up reports and per-image results into one run report; as the workflow's
//! last step it fails the execution naming every failed image and repository.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::connect::Connections;
use crate::cost::{children_page_states, page_states, repositories_page_states, Cost, CostModel};
use crate::error::{Error, Result};
use crate::metrics::{self, Metric};

/// The `summarise` step (it reads no registry).
pub struct Summarise;

impl Step for Summarise {
    const NAME: &'static str = "summarise";
    type Input = SummariseInput;
    type Output = RunReport;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let model = &conns.settings().cost_model;
            let finish = input.fail_on_failure;
            let execution = input.execution.clone();
            // Sealed before the report is judged: the images that arrived are named and stated
            // even when others failed.
            let statement = match (&input.job, finish) {
                (Some(job), true) => conns.seal_layout_export(job).await?,
                _ => None,
            };
            let mut report = summarise(input, model)?;
            report.layout_statement = statement;
            report.add_cost(&Cost::this_call(started));
            let report = report.priced(model);
            if finish {
                if let Some(execution) = execution {
                    metrics::emit_cost(&execution, &report.cost);
                }
            }
            Ok(report)
        })
    }
}

/// Input of `summarise`: reports and per-image results to add up (arrays may nest, as Map
/// states produce them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummariseInput {
    /// Run reports to merge (nested arrays allowed).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub reports: JsonValue,
    /// Per-image results to add (nested arrays allowed).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub results: JsonValue,
    /// `ensure-repository` outputs whose prune results to add (nested arrays allowed).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub repositories: JsonValue,
    /// Tasks `enumerate-images` found present (counted, never run).
    #[serde(default)]
    pub present: usize,
    /// Manifest GETs `enumerate-images` sent to a source that counts pulls (its `pulls`: the
    /// signature gate's and platform subsets' reads), added to the report's `sourcePulls`.
    #[serde(default)]
    pub enumerated_pulls: u64,
    /// The repository's page as the state holds it: with `dryRun`, its plan's images are
    /// reported planned (or failed, or present). Anything but a plan (an empty page, a copy
    /// run's page) is not read: the state machine passes the page as it is, so a dry run's plan
    /// is held once.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub plan: JsonValue,
    /// Whether the job is a dry run (`plan` is then its page plan).
    #[serde(default)]
    pub dry_run: bool,
    /// What the page's ranges copied (`[{"bytes": N, "error": ...}]`, nested arrays allowed):
    /// bytes added up, failed ranges counted.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub copied: JsonValue,
    /// What a page's repository children returned, one entry each: `{"repository", "report"}`.
    /// A child that failed where no Catch applies (history or payload limit, stopped) returns
    /// no such entry (`null`, or an object with `Error` and `Cause`).
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub child_reports: JsonValue,
    /// The repositories the page gave its children: each one without a report in
    /// `childReports` is recorded failed.
    #[serde(default)]
    pub child_repositories: Vec<String>,
    /// For each of `childRepositories`, its pack (`enumerate-repositories`' `packs`; empty: a
    /// repository alone): a pack's child without a report has each of its repositories
    /// recorded failed.
    #[serde(default)]
    pub child_packs: Vec<Vec<String>>,
    /// The execution whose Map ran the children (named in those failures); at `Finish`, the
    /// execution whose cost metrics are written.
    #[serde(default)]
    pub execution: Option<String>,
    /// A page of images (`SummariseImages`): whether `EnumerateImages` listed it (`false`: the
    /// part of the page planned before deferred it). Counts the page's states and calls.
    #[serde(default)]
    pub enumerated: Option<bool>,
    /// The source registry of the page's images (where its bytes come from).
    #[serde(default)]
    pub source_registry: Option<String>,
    /// With `childReports`: the parent's listing token after this page (`null`: read to its
    /// end), which says whether the parent goes on through `ResumeHandedBack`.
    #[serde(default)]
    pub listing_next_token: Option<String>,
    /// Entries each list of the report may hold (default `MAX_FAILURES_LISTED`).
    #[serde(default)]
    pub list: Option<usize>,
    /// Fail (naming the failed images) when any image failed: the workflow's last step.
    #[serde(default)]
    pub fail_on_failure: bool,
    /// At the workflow's last step, the job: an export into a layout is sealed there (the
    /// names its images were given written into `index.json`, its statement signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::job::Job>,
}

/// A repository child's output; `nextToken` when it handed the rest of its work back.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChildReport {
    repository: String,
    report: RunReport,
    #[serde(default)]
    next_token: Option<String>,
}

/// Merges the children's reports and records each repository whose child left none.
fn add_child_reports(report: &mut RunReport, input: &SummariseInput) -> Result<()> {
    let JsonValue::Array(children) = &input.child_reports else {
        if input.child_repositories.is_empty() {
            return Ok(());
        }
        return Err(Error::invalid("childReports", "not an array"));
    };
    let mut reported = std::collections::BTreeSet::new();
    let mut unexplained = Vec::new();
    for child in children {
        match ChildReport::deserialize(child) {
            Ok(c) => {
                report.merge(&c.report);
                if let Some(next_token) = c.next_token {
                    report.continuations.push(Continuation {
                        repository: c.repository.clone(),
                        next_token,
                    });
                }
                reported.insert(c.repository);
            }
            Err(_) => unexplained.push(child),
        }
    }
    // AWS may give a failed child's error in its place; moto gives null.
    let reason = unexplained
        .iter()
        .find_map(|c| Some(format!("{}: {}", c.get("Error")?, c.get("Cause")?)))
        .map(|r| format!(" (one such child: {r})"))
        .unwrap_or_default();
    let execution = input.execution.as_deref().unwrap_or("this run's execution");
    for (at, repository) in input.child_repositories.iter().enumerate() {
        if reported.contains(repository) {
            continue;
        }
        let alone = std::slice::from_ref(repository);
        let pack = match input.child_packs.get(at) {
            Some(pack) if !pack.is_empty() => pack.as_slice(),
            _ => alone,
        };
        report.merge(&RunReport {
            repositories_failed: pack.len(),
            repository_failures: pack
                .iter()
                .map(|repository| RepositoryFailure {
                    repository: repository.clone(),
                    error: format!(
                        "its child execution ended without a report{reason}: it failed where no \
                     Catch applies (the 25,000-event history or the 256 KiB payload limit) or \
                     was stopped. Find it among the child executions of the ForEachRepository \
                     Map Run of {execution}; the next run replicates it again"
                    ),
                })
                .collect(),
            ..RunReport::default()
        });
    }
    Ok(())
}

/// The page's results, with a failed result for each image of a copy run's page plan that has
/// none: its child execution failed where no Catch applies.
fn with_missing_children(
    mut results: Vec<ImageResult>,
    input: &SummariseInput,
    plan: Option<&PagePlan>,
) -> Vec<ImageResult> {
    let Some(plan) = plan.filter(|_| !input.dry_run) else {
        return results;
    };
    let key = |r: &ImageResult| {
        (
            r.repository.clone(),
            r.digest.clone(),
            r.target_registry.clone(),
            r.target_repository.clone(),
        )
    };
    let have: std::collections::BTreeSet<_> = results.iter().map(key).collect();
    for planned in &plan.images {
        let lost = ImageResult::for_task(
            &planned.image,
            ImageStatus::Failed,
            0,
            Some(
                "its child execution (ForEachImage) ended without a result: it failed where \
                 no Catch applies (an EXPRESS child's 5 minutes, the 256 KiB payload limit) or \
                 was stopped; the next run copies it again"
                    .to_string(),
            ),
        );
        if !have.contains(&key(&lost)) {
            results.push(lost.listed());
        }
    }
    results
}

/// What a page of images cost (`CostModel::page_round`); in a dry run also what copying it
/// would cost (`plannedCost`).
fn add_page_cost(
    report: &mut RunReport,
    input: &SummariseInput,
    model: &CostModel,
    (plan, destinations): (Option<&PagePlan>, usize),
) {
    let Some(enumerated) = input.enumerated else {
        return;
    };
    let round = PageRound {
        enumerated,
        plan,
        destinations,
        source: input.source_registry.as_deref().unwrap_or_default(),
    };
    if input.dry_run {
        report.cost.add(&model.page_round(&round, false));
        report
            .planned_cost
            .get_or_insert_with(Cost::default)
            .add(&model.page_round(&round, true));
    } else {
        report.add_cost(&model.page_round(&round, true));
    }
}

/// Adds up reports and per-image results into one run report, with what the part of the
/// workflow it ends cost. With `failOnFailure`, a run with failed images or repositories is an
/// error naming each of them.
pub fn summarise(input: SummariseInput, model: &CostModel) -> Result<RunReport> {
    // The page's plan (a copy run reads it leniently: only to find lost children) and the
    // destination repositories ensured, each read once.
    let plan = match input
        .plan
        .is_object()
        .then(|| PagePlan::deserialize(&input.plan))
    {
        Some(Ok(plan)) => Some(plan),
        Some(Err(e)) if input.dry_run || input.enumerated.is_some() => {
            return Err(Error::invalid("plan", format!("not a page plan: {e}")))
        }
        _ => None,
    };
    let ensured = flatten::<EnsureRepositoryOutput>(&input.repositories, "repositories")?;
    let mut report = RunReport::default();
    for r in flatten::<RunReport>(&input.reports, "reports")? {
        report.merge(&r);
    }
    add_child_reports(&mut report, &input)?;
    if !input.child_repositories.is_empty() {
        let resumes = input.listing_next_token.is_none() && !report.continuations.is_empty();
        report.add_cost(&Cost::transitions(children_page_states(resumes)));
    }
    add_page_cost(&mut report, &input, model, (plan.as_ref(), ensured.len()));
    let mut failed_by_destination: std::collections::BTreeMap<String, usize> = Default::default();
    let (results, _) = flatten_children::<ImageResult>(&input.results);
    let results = with_missing_children(results, &input, plan.as_ref());
    for r in results {
        if r.status == ImageStatus::Failed {
            *failed_by_destination
                .entry(r.target_registry.clone())
                .or_default() += 1;
        }
        report.add(&r);
    }
    // Each image's result reaches exactly one summarise call (its page's).
    for (destination, failed) in &failed_by_destination {
        metrics::emit(destination, &[(Metric::ImagesFailed, *failed as f64)]);
    }
    for r in &ensured {
        report.add_repository(r);
    }
    report.add_present(input.present);
    report.source_pulls += input.enumerated_pulls;
    if let Some(plan) = &plan {
        report.source_pulls += plan.pulls;
        for postponed in plan.postponed_results() {
            report.add(&postponed);
        }
    }
    if let Some(plan) = plan.as_ref().filter(|_| input.dry_run) {
        for planned in &plan.images {
            report.add(&planned.dry_run_result());
        }
    }
    let (ranges, ranges_lost) = flatten_children::<RangeOutcome>(&input.copied);
    report.ranges_failed += ranges_lost;
    for range in ranges {
        report.bytes_copied += range.bytes;
        if range.error.is_some() {
            report.ranges_failed += 1;
        }
    }
    if let Some(max) = input.list {
        report.limit_lists(max);
    }
    if let (true, Some(verify)) = (input.fail_on_failure, &report.verify) {
        if verify.total() > 0 || report.repositories_failed > 0 {
            let repositories = report
                .repository_failures
                .iter()
                .map(|f| format!("repository {}: {}", f.repository, f.error));
            let differences = verify
                .differences
                .iter()
                .map(|d| format!("{} {}: {}", d.kind.as_str(), d.target, d.detail));
            return Err(Error::DestinationsDiffer {
                differences: verify.total(),
                repositories_failed: report.repositories_failed,
                listed: repositories.chain(differences).collect(),
            });
        }
    }
    if input.fail_on_failure && (report.failed > 0 || report.repositories_failed > 0) {
        let repositories = report
            .repository_failures
            .iter()
            .map(|f| format!("repository {}: {}", f.repository, f.error));
        let images = report.failures.iter().map(|f| {
            format!(
                "{}@{} -> {}/{}: {}",
                f.repository,
                f.digest,
                f.target_registry,
                f.target_repository,
                f.error.clone().unwrap_or_default()
            )
        });
        return Err(Error::ImagesFailed {
            failed: report.failed,
            images: report.images,
            repositories_failed: report.repositories_failed,
            names: repositories.chain(images).collect(),
        });
    }
    Ok(report)
}

/// One page of images as a repository child runs it.
#[derive(Debug, Clone, Copy)]
pub struct PageRound<'a> {
    /// Listed by `EnumerateImages` (`false`: the deferred part of the page before).
    pub enumerated: bool,
    /// Its plan (`None`: nothing to copy, `PlanPage` not entered).
    pub plan: Option<&'a PagePlan>,
    /// The child's first page: destinations ensured before it (0 on later pages).
    pub destinations: usize,
    /// The source registry.
    pub source: &'a str,
}

/// What the workflow's parts cost, from the shapes the steps see (`cost.rs` has the states and
/// prices).
impl CostModel {
    /// What a page of images costs: its states (with the child's start on its first page), its
    /// calls, and when `copying` (not a dry run) the copy's children, calls and bytes.
    pub fn page_round(&self, round: &PageRound, copying: bool) -> Cost {
        let planned = round.plan.is_some();
        let deferred = round.plan.is_some_and(|p| !p.deferred.is_empty());
        let copied = copying && planned;
        let mut cost = self.calls(u64::from(round.enumerated) + u64::from(planned));
        cost.standard_transitions = page_states(round.enumerated, planned, copied, deferred);
        if round.destinations > 0 {
            cost.add(&self.child_start(round.destinations));
        }
        let Some(plan) = round.plan.filter(|_| copied) else {
            return cost;
        };
        for r in &plan.ranges {
            let mut range = self.range_copy(
                &r.range,
                plan.express,
                (round.source, &r.image.target_registry),
                r.range.bytes(),
            );
            if plan.batched {
                // Its child's start is the batch's, counted below.
                range.standard_transitions -= crate::cost::MAP_CHILD_START_TRANSITIONS;
                range.express_executions -= 1;
            }
            cost.add(&range);
        }
        if plan.batched {
            let children = (plan.ranges.len() as u64).div_ceil(RANGES_PER_CHILD);
            cost.standard_transitions += children * crate::cost::MAP_CHILD_START_TRANSITIONS;
            cost.express_executions += children;
        }
        let puts = plan
            .images
            .iter()
            .filter(|i| i.error.is_none() && !i.present)
            .count();
        cost.add(&self.image_children(plan.images.len() as u64, puts as u64));
        cost
    }

    /// The parent's part of a run with `children` repository children (the CLI's estimate of
    /// the workflow: pages of `REPOSITORIES_PER_PAGE`, one listing call each, the last
    /// summarise).
    pub fn parent(&self, children: usize) -> Cost {
        let per_page = REPOSITORIES_PER_PAGE;
        let pages = children.div_ceil(per_page).max(1) as u64;
        let pages_with_children = children.div_ceil(per_page) as u64;
        let mut cost = self.calls(pages + pages_with_children + 1);
        cost.standard_executions = 1;
        cost.standard_transitions = repositories_page_states(true)
            + (pages - 1) * repositories_page_states(false)
            + pages_with_children * children_page_states(false);
        cost
    }
}
