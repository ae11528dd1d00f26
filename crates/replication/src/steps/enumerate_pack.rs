//! `enumerate-images` for a pack: several repositories with little work (their whole work one
//! page's worth, as `enumerate-repositories`' check found it) share one STANDARD child. The
//! child's first call ensures each packed repository in every destination (as
//! `ensure-repository` does) and each call returns one page of tasks spanning them, so a first
//! sync of many single-image repositories starts one child per pack, not one per repository
//! (Step Functions bills every child a Distributed Map starts and every state its STANDARD
//! children enter: <https://docs.aws.amazon.com/step-functions/latest/dg/concepts-transitions.html>).
//!
//! A repository whose ensure, listing or check fails (`ReplicationFailed`) is recorded failed,
//! named, in the page's `report`, and the others go on; a retryable error fails the call, which
//! the state machine retries (every part is idempotent: a repository is ensured once its page
//! is taken, and the token says which ones were).

use super::enumerate_images::{enumerate_within, json_bytes};
use super::*;
use crate::connect::Connections;
use crate::cost::{Cost, MAP_CHILD_START_TRANSITIONS};
use crate::error::{Error, ErrorKind, Result};
use crate::job::{canonical_registry, ValidJob};
use crate::report::{truncate_chars, MAX_ERROR_CHARS};

/// Repositories one pack holds at most (each at least one task or one ensure's worth of work,
/// and a pack's tasks are one page's: `TASKS_PER_PAGE`).
pub const REPOSITORIES_PER_PACK: usize = TASKS_PER_PAGE;

/// JSON bytes of packed repositories' names one page of repositories holds at most: they
/// travel in the parent's state (`packs`) beside the page's children's reports, and each pack
/// in its child's state (`payload_bounds` counts them at ECR's longest names).
pub const PACKED_NAME_BYTES: usize = 6 * 1024;

/// States a pack's child enters before its first page (`ReplicateOrVerify`; `EnumerateImages`,
/// `TakePage` and `AnyWork` are its first page's, as a repository child's): a repository child
/// enters `EnsureRepositories` and one `EnsureRepository` a destination besides
/// (`cost::child_start_states`), which a pack's first call does itself.
pub const PACK_START_STATES: u64 = 1;

/// Whether a job's repositories with little work may share a child: a replication of the
/// source's catalog (not an image list) whose source counts no pulls (a pull budget or Docker
/// Hub keeps one repository a page, so each child knows what the run spent before it).
pub fn packs_repositories(job: &ValidJob) -> bool {
    job.job.mode == crate::job::Mode::Replicate
        && job.job.images.is_empty()
        && job.job.source.pull_budget.is_none()
        && canonical_registry(&job.job.source.registry) != oci::reference::DOCKER_HUB
}

/// Where a pack's pages go on: `<index>/<token>`, the packed repository the next page starts
/// with and, once that repository was ensured, its own `enumerate-images` token (empty: not
/// ensured yet, listed from its start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PackToken {
    index: usize,
    inner: Option<String>,
}

impl PackToken {
    fn parse(token: Option<&str>, pack: usize) -> Result<Self> {
        let Some(token) = token else {
            return Ok(PackToken::default());
        };
        let invalid = || {
            Error::invalid(
                "nextToken",
                format!(
                    "{:?} is not a token of this pack",
                    truncate_chars(token, 80)
                ),
            )
        };
        let (index, inner) = token.split_once('/').ok_or_else(invalid)?;
        let index: usize = index.parse().map_err(|_| invalid())?;
        if index >= pack {
            return Err(invalid());
        }
        Ok(PackToken {
            index,
            inner: (!inner.is_empty()).then(|| inner.to_string()),
        })
    }

    fn token(&self) -> String {
        format!(
            "{}/{}",
            self.index,
            self.inner.as_deref().unwrap_or_default()
        )
    }
}

/// Checks a pack as a forged input could give it: valid names the job selects, at most
/// `REPOSITORIES_PER_PACK`, none twice, led by the child's repository.
fn check_pack(job: &ValidJob, repository: &str, pack: &[String]) -> Result<()> {
    if pack.len() > REPOSITORIES_PER_PACK || pack.first().map(String::as_str) != Some(repository) {
        return Err(Error::invalid(
            "pack",
            format!("a pack is at most {REPOSITORIES_PER_PACK} repositories led by `repository`"),
        ));
    }
    for (at, name) in pack.iter().enumerate() {
        oci::reference::validate_repository_name(name)
            .map_err(|reason| Error::invalid(format!("pack[{at}]"), reason))?;
        if !job.repositories.matches(name) || pack[..at].contains(name) {
            return Err(Error::invalid(
                format!("pack[{at}]"),
                "not a repository this job selects, or named twice",
            ));
        }
    }
    Ok(())
}

/// One page of a pack's work: the packed repositories from the token's on, each ensured in every
/// destination before its tasks join the page, until the page is full (`TASKS_PER_PAGE` tasks,
/// `PAGE_TASK_BYTES`, `UNSIGNED_PER_PAGE` results) or the call nears its deadline. A
/// repository's tasks that do not fit start the next page.
pub(crate) async fn enumerate_pack(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
    pack: &[String],
    next_token: Option<&str>,
) -> Result<EnumerateImagesOutput> {
    check_pack(job, repository, pack)?;
    let mut at = PackToken::parse(next_token, pack.len())?;
    let mut report = RunReport::default();
    if next_token.is_none() {
        let start = Cost {
            standard_executions: 1,
            standard_transitions: MAP_CHILD_START_TRANSITIONS + PACK_START_STATES,
            ..Cost::default()
        };
        report.add_cost(&start);
        if job.job.dry_run {
            report
                .planned_cost
                .get_or_insert_with(Cost::default)
                .add(&start);
        }
    }
    let mut out = EnumerateImagesOutput::default();
    let mut bytes = 0usize;
    while at.index < pack.len() {
        let name = &pack[at.index];
        let bounds = PageBounds {
            tasks: TASKS_PER_PAGE.saturating_sub(out.images.len() + out.unsigned.len()),
            task_bytes: PAGE_TASK_BYTES.saturating_sub(bytes),
            unsigned: UNSIGNED_PER_PAGE.saturating_sub(out.unsigned.len()),
            ..PageBounds::STEP
        };
        let empty = out.images.is_empty() && out.unsigned.is_empty();
        if !empty && (bounds.tasks == 0 || bounds.unsigned == 0) {
            break;
        }
        let page = match enumerate_within(conns, job, name, at.inner.as_deref(), bounds).await {
            Ok(page) => page,
            Err(e) => {
                failed(&mut report, name, e)?;
                at = PackToken {
                    index: at.index + 1,
                    inner: None,
                };
                continue;
            }
        };
        // A repository's first image is taken even past the bounds on a page of its own.
        let page_bytes = json_bytes(&page.images) + json_bytes(&page.unsigned);
        let fits = page.images.len() + page.unsigned.len() <= bounds.tasks
            && page_bytes <= bounds.task_bytes
            && page.unsigned.len() <= bounds.unsigned;
        if !fits && !empty {
            break;
        }
        if at.inner.is_none() {
            if let Err(e) = ensure_everywhere(conns, job, name, &mut report).await {
                failed(&mut report, name, e)?;
                at = PackToken {
                    index: at.index + 1,
                    inner: None,
                };
                continue;
            }
        }
        page.emit_present_metrics();
        bytes += page_bytes;
        out.images.extend(page.images);
        out.unsigned.extend(page.unsigned);
        out.present += page.present;
        out.selected += page.selected;
        out.pulls += page.pulls;
        at = match page.next_token {
            // More of this repository than the page holds: the next page goes on with it.
            Some(next) => {
                at.inner = Some(next);
                break;
            }
            None => PackToken {
                index: at.index + 1,
                inner: None,
            },
        };
        if time_to_hand_back() {
            break;
        }
    }
    out.next_token = (at.index < pack.len()).then(|| at.token());
    // As a repository's report lists them (the counts keep the rest): it joins the child's.
    report.limit_lists(crate::report::CHILD_LISTED);
    out.report = Some(report.priced(&conns.settings().cost_model));
    Ok(out)
}

/// Ensures a repository in every destination at once (as a repository's child does, an
/// `EnsureRepositories` iteration each: one destination failing does not keep the others from
/// being ensured), the outputs counted in the pack's report; the first error, if any, is
/// returned (a retryable one first: the call is retried).
async fn ensure_everywhere(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
    report: &mut RunReport,
) -> Result<()> {
    let ensured = futures::future::join_all((0..job.job.destinations.len()).map(|destination| {
        super::ensure_repository::ensure_validated(conns, job, repository, destination)
    }))
    .await;
    let mut errors = Vec::new();
    for outcome in ensured {
        match outcome {
            Ok(out) => report.add_repository(&out.bounded()),
            Err(e) => errors.push(e),
        }
    }
    errors.sort_by_key(|e| e.kind() == ErrorKind::Failed);
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Records a packed repository's failure (`ReplicationFailed`), as a repository's child records
/// its own; an error the state machine retries (or one that fails the run) is returned.
fn failed(report: &mut RunReport, repository: &str, e: Error) -> Result<()> {
    if e.kind() != ErrorKind::Failed {
        return Err(e);
    }
    tracing::warn!(%repository, error = %e, "a packed repository failed; the others go on");
    report.merge(&RunReport {
        repositories_failed: 1,
        repository_failures: vec![RepositoryFailure {
            repository: repository.to_string(),
            error: truncate_chars(
                &format!("{}: {e}", ErrorKind::Failed.as_str()),
                MAX_ERROR_CHARS,
            ),
        }],
        ..RunReport::default()
    });
    Ok(())
}

/// A page of repositories as `enumerate-repositories` builds it: repositories alone (each with
/// the selection its check kept) and packs of repositories with little work, in the order
/// checked. A pack takes a repository while its tasks stay within a page's `TASKS_PER_PAGE`
/// and the page's packed names within `PACKED_NAME_BYTES`; a pack of one is a repository
/// alone. A page holding a pack holds one item fewer (`used`): its packed names take the room
/// of one child's report in the parent's state.
#[derive(Debug, Default)]
pub(crate) struct Packer {
    /// The page's items: a repository alone, or a pack's first repository.
    pub(crate) repositories: Vec<String>,
    /// For each item, the token its first `enumerate-images` call starts from.
    pub(crate) selections: Vec<Option<String>>,
    /// For each item, its pack (empty: a repository alone).
    pub(crate) packs: Vec<Vec<String>>,
    open: Vec<String>,
    open_tasks: usize,
    packed_bytes: usize,
}

impl Packer {
    /// Items so far, the pack still open included, and one more once the page holds a pack
    /// (the room its names take): adding a repository adds one at most.
    pub(crate) fn used(&self) -> usize {
        let packed = self.open.len() > 1 || self.packs.iter().any(|p| !p.is_empty());
        self.repositories.len() + usize::from(!self.open.is_empty()) + usize::from(packed)
    }

    /// Adds a repository with work: `tasks` is its whole work's tasks (and results) when its
    /// check found it fits one page (it may be packed), `None` when it wants a child of its own.
    pub(crate) fn add(
        &mut self,
        repository: String,
        selection: Option<String>,
        tasks: Option<usize>,
    ) {
        if let Some(tasks) = tasks {
            let name_bytes = repository.len() + 3;
            if self.packed_bytes + name_bytes <= PACKED_NAME_BYTES {
                let joins = !self.open.is_empty()
                    && self.open_tasks + tasks <= TASKS_PER_PAGE
                    && self.open.len() < REPOSITORIES_PER_PACK;
                if !joins {
                    self.close();
                }
                self.open.push(repository);
                self.open_tasks += tasks;
                self.packed_bytes += name_bytes;
                return;
            }
        }
        self.alone(repository, selection);
    }

    fn alone(&mut self, repository: String, selection: Option<String>) {
        self.repositories.push(repository);
        self.selections.push(selection);
        self.packs.push(Vec::new());
    }

    /// Ends the open pack (a pack of one becomes a repository alone, listed by its child).
    pub(crate) fn close(&mut self) {
        let mut pack = std::mem::take(&mut self.open);
        self.open_tasks = 0;
        match pack.len() {
            0 => {}
            1 => self.alone(pack.remove(0), None),
            _ => {
                self.repositories.push(pack[0].clone());
                self.selections.push(None);
                self.packs.push(pack);
            }
        }
    }
}

/// A repository `plan` (in process) found the workflow would pack: its whole work one page.
#[derive(Debug, Clone)]
pub struct PackMember {
    /// The repository.
    pub repository: String,
    /// Its page's tasks and results.
    pub tasks: usize,
    /// What its child would cost alone (`CostModel::child_start` and its page's round).
    pub alone: Cost,
    /// Its page's planned images and the puts among them (`CostModel::image_children`).
    pub images: u64,
    /// Puts among `images`.
    pub puts: u64,
    /// The job's destinations.
    pub destinations: usize,
    /// Its page's ranges.
    pub ranges: PageRanges,
}

/// A page plan's ranges as the range Maps copy them.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageRanges {
    /// Ranges.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Each whole blobs of at most `EXPRESS_RANGE_BYTES` (`PagePlan::express`).
    pub express: bool,
}

impl PageRanges {
    /// A plan's.
    pub fn of(plan: &PagePlan) -> Self {
        PageRanges {
            count: plan.ranges.len() as u64,
            bytes: plan.bytes,
            express: plan.express,
        }
    }

    /// The EXPRESS children copying them (`CopyBatchedRanges` or `CopySmallRanges`; none for
    /// STANDARD ranges, whose children are counted apart).
    fn express_children(&self) -> u64 {
        match self.express {
            true if self.bytes <= super::plan_image::EXPRESS_RANGE_BYTES => {
                self.count.div_ceil(RANGES_PER_CHILD)
            }
            true => self.count,
            false => 0,
        }
    }
}

/// What `members` cost packed as the workflow packs them (in order, `TASKS_PER_PAGE` tasks
/// and `REPOSITORIES_PER_PACK` a pack), and how many children: a pack is one child, one page,
/// one image child, its repositories ensured by its enumeration; its ranges are each member's.
pub fn estimate_packs(model: &crate::cost::CostModel, members: &[PackMember]) -> (Cost, usize) {
    let mut packer = Packer::default();
    for m in members {
        packer.add(m.repository.clone(), None, Some(m.tasks));
    }
    packer.close();
    let by_name: std::collections::BTreeMap<&str, &PackMember> =
        members.iter().map(|m| (m.repository.as_str(), m)).collect();
    let mut cost = Cost::default();
    let alone = |name: &String| by_name.get(name.as_str()).copied();
    for (first, pack) in packer.repositories.iter().zip(&packer.packs) {
        if pack.is_empty() {
            cost.add(&alone(first).map(|m| m.alone.clone()).unwrap_or_default());
            continue;
        }
        // One start, page and image child for the pack instead of one for each member.
        let members: Vec<&PackMember> = pack.iter().filter_map(alone).collect();
        let mut page = model.calls(3);
        page.standard_transitions = crate::cost::page_states(true, true, true, false);
        let (mut images, mut puts) = (0, 0);
        let mut ranges = PageRanges {
            express: true,
            ..PageRanges::default()
        };
        for (at, m) in members.iter().enumerate() {
            cost.add(&m.alone);
            // The pack's ranges share its batch children (below) instead of each member's.
            let children = m.ranges.express_children();
            cost.subtract(&Cost {
                standard_transitions: children * MAP_CHILD_START_TRANSITIONS,
                express_executions: children,
                ..Cost::default()
            });
            ranges.count += m.ranges.count;
            ranges.bytes += m.ranges.bytes;
            ranges.express &= m.ranges.express;
            cost.subtract(&model.child_start(m.destinations));
            cost.subtract(&model.image_children(m.images, m.puts));
            if at > 0 {
                cost.subtract(&page);
            }
            (images, puts) = (images + m.images, puts + m.puts);
        }
        cost.add(&model.image_children(images, puts));
        let children = ranges.express_children();
        cost.standard_transitions += children * MAP_CHILD_START_TRANSITIONS;
        cost.express_executions += children;
        cost.standard_executions += 1;
        cost.standard_transitions += MAP_CHILD_START_TRANSITIONS + PACK_START_STATES;
    }
    (cost, packer.repositories.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_token_names_the_repository_and_whether_it_was_ensured() {
        let t = PackToken::parse(Some("3/abc:25"), 5).unwrap();
        assert_eq!(t.index, 3);
        assert_eq!(t.inner.as_deref(), Some("abc:25"));
        assert_eq!(t.token(), "3/abc:25");
        let t = PackToken::parse(Some("1/"), 5).unwrap();
        assert_eq!(t.inner, None);
        assert_eq!(t.token(), "1/");
        assert!(PackToken::parse(Some("5/"), 5).is_err());
        assert!(PackToken::parse(Some("x/1"), 5).is_err());
        assert!(PackToken::parse(Some("25"), 5).is_err());
        assert_eq!(PackToken::parse(None, 5).unwrap(), PackToken::default());
    }

    #[test]
    fn packs_fill_a_page_of_tasks_and_a_repository_with_much_work_stays_alone() {
        let mut p = Packer::default();
        for i in 0..30 {
            p.add(format!("r{i}"), None, Some(1));
        }
        p.add("big".into(), Some("sel:0".into()), None);
        p.add("ten".into(), None, Some(10));
        p.add("twenty".into(), None, Some(20));
        p.add("last".into(), None, Some(1));
        p.close();
        assert_eq!(p.repositories, ["r0", "big", "r25", "twenty"]);
        assert_eq!(p.packs[0].len(), 25);
        assert!(p.packs[1].is_empty() && p.selections[1].as_deref() == Some("sel:0"));
        assert_eq!(p.packs[2], ["r25", "r26", "r27", "r28", "r29", "ten"]);
        assert_eq!(p.packs[3], ["twenty", "last"]);
        let mut one = Packer::default();
        one.add("only".into(), None, Some(3));
        assert_eq!(one.used(), 1);
        one.add("second".into(), None, Some(3));
        assert_eq!(one.used(), 2, "a page with a pack holds one item fewer");
        let mut one = Packer::default();
        one.add("only".into(), None, Some(3));
        one.close();
        assert_eq!(
            (one.repositories, one.packs),
            (vec!["only".to_string()], vec![vec![]])
        );
    }
}
