//! `verify-repository`: how each destination differs from the source for one repository: every
//! selected image by digest (its tags, the children of an index, its referrers), the tags the
//! filters select that only the destination has, and the repository's settings. Reads
//! manifests and listings only, never a blob; writes nothing.

use std::collections::HashSet;

use futures::StreamExt;
use oci::{Digest, Reference, Repository};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::enumerate_images_archive::ArchivedThere;
use super::*;
use crate::connect::{Connection, Connections};
use crate::error::{Error, Result};
use crate::filter::SelectedImage;
use crate::job::{Destination, Job, SettingsMode, ValidJob};
use crate::platforms::{PlatformFilter, Subset};

/// The `verify-repository` step: the repository's report (with `verify`), its differences
/// listed up to `VERIFY_LISTED`, as one of a page's in the Map's aggregated result.
pub struct VerifyRepository;

impl Step for VerifyRepository {
    const NAME: &'static str = "verify-repository";
    type Input = VerifyRepositoryInput;
    type Output = RunReport;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let job = input.job.validate()?;
            let first = input.next_token.is_none();
            let page =
                verify_page(conns, &job, &input.repository, input.next_token.as_deref()).await?;
            // This page added to the report so far (the previous pages' output).
            let mut report = input.report.unwrap_or_default();
            let mut verify = report.verify.take().unwrap_or_default();
            verify.merge(&page);
            verify.limit_lists(VERIFY_LISTED);
            verify.next_token = page.next_token;
            // The call and, on the first page, the verifying child's execution (its start and
            // its states); a later page, the loop's two states.
            let mut cost = crate::cost::Cost::this_call(started);
            if first {
                cost.standard_executions = 1;
                cost.standard_transitions =
                    crate::cost::MAP_CHILD_START_TRANSITIONS + crate::cost::VERIFY_CHILD_STATES;
            } else {
                cost.standard_transitions = VERIFY_PAGE_STATES;
            }
            report.add_cost(&cost);
            report.verify = Some(verify);
            Ok(report.priced(&conns.settings().cost_model))
        })
    }
}

pub use crate::connect::VERIFY_IMAGES_PER_CALL;

/// States a later page of a verification adds: the loop's Choice and the Task.
const VERIFY_PAGE_STATES: u64 = 2;

/// Input of `verify-repository`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyRepositoryInput {
    /// The job.
    pub job: Job,
    /// Source repository name.
    pub repository: String,
    /// Where this call goes on: the previous call's `verify.nextToken` (an offset into the
    /// repository's selection).
    #[serde(default)]
    pub next_token: Option<String>,
    /// The repository's report so far (the previous call's output), which this call's findings
    /// are added to.
    #[serde(default)]
    pub report: Option<RunReport>,
}

/// Compares one source repository with each destination, every page of it (from
/// `input.next_token`), in one process.
#[tracing::instrument(skip_all, fields(repository = %input.repository))]
pub async fn verify_repository(
    conns: &Connections,
    input: VerifyRepositoryInput,
) -> Result<VerifyReport> {
    let job = input.job.validate()?;
    let mut total = VerifyReport::default();
    let mut token = input.next_token;
    loop {
        let mut page = verify_page(conns, &job, &input.repository, token.as_deref()).await?;
        token = page.next_token.take();
        total.merge(&page);
        if token.is_none() {
            return Ok(total);
        }
    }
}

/// Compares one page of a source repository's selection (from the offset `next_token` names,
/// at most `WorkflowLimits::verify_images_per_call` images) with each destination; the first
/// page also compares the repository's settings and finds the tags only a destination has.
/// The report's `next_token` says where the next page starts.
pub async fn verify_page(
    conns: &Connections,
    job: &ValidJob,
    repository: &str,
    next_token: Option<&str>,
) -> Result<VerifyReport> {
    let offset = match next_token {
        None => 0,
        Some(token) => token.parse::<usize>().map_err(|_| {
            Error::invalid(
                "nextToken",
                format!("{token:?} is not a token verify-repository returned"),
            )
        })?,
    };
    let first = offset == 0;
    let source = conns.source(&job.job).await?;
    let (selected, listed) = selected_and_listed(conns, job, repository).await?;
    let per_call = conns.settings().limits.verify_images_per_call.max(1);
    let total = selected.len();
    let end = offset.saturating_add(per_call).min(total);
    let window = selected.get(offset..end).unwrap_or_default().to_vec();
    // What a replication would copy: an image no signature verifies for is not expected there
    // (the gate judges this page's images only).
    let window = match signature_gate(conns, job).await? {
        Some(gate) => {
            crate::gate::Judge::new(&source, repository, gate)
                .judge_all(window)
                .await?
        }
        None => window,
    };
    let selected: Vec<SelectedImage> = window
        .into_iter()
        .filter(|s| s.unsigned.is_none() && s.refused.is_none())
        .collect();
    // Tags only a destination has are extra (once, on the first page); with an explicit image
    // list there is no "all".
    let source_tags: Option<HashSet<String>> = match (job.job.images.is_empty(), listed, first) {
        (true, Some(listed), true) => Some(listed.into_iter().flat_map(|i| i.tags).collect()),
        _ => None,
    };
    let mut report = VerifyReport {
        next_token: (end < total).then(|| end.to_string()),
        ..VerifyReport::default()
    };
    for (index, spec) in job.job.destinations.iter().enumerate() {
        let target = spec.checked_target_repository(repository)?;
        // A verification reads settings and policies: only where the job may write.
        conns.check_target_scope(&spec.registry, &target)?;
        let at = Place {
            repository,
            target: format!("{}/{target}", spec.registry),
            name: target.clone(),
        };
        if first {
            verify_settings(conns, job, (index, spec), &at, &mut report).await?;
        }
        let dest = conns.destination(&job.job, index).await?;
        let (listed, absent) = destination_tags(&dest.client, &spec.registry, &target).await;
        let repo = Repository {
            registry: dest.registry.clone(),
            name: target.clone(),
        };
        let archived_there = ArchivedThere::default();
        let mut compared = futures::stream::iter(&selected)
            .map(|image| {
                let wanted = (image, job.platforms.as_ref());
                compare_image(&source, &dest, &repo, repository, wanted, (&listed, absent))
            })
            .buffered(PARALLEL_CHECKS);
        while let Some(differences) = compared.next().await {
            // `None`: a replication would not copy it (none of the job's platforms).
            let Some((digest, differences)) = differences? else {
                continue;
            };
            report.images += 1;
            if !differences.is_empty()
                && archived_there_holds(&archived_there, &dest, &target, &digest).await
            {
                report.archived += 1;
                continue;
            }
            if differences.is_empty() {
                report.identical += 1;
            }
            for detail in differences {
                report.add(at.difference(detail.0, detail.1, detail.2));
            }
        }
        if let (Some(in_source), Some(in_target)) = (&source_tags, &listed) {
            let mut extra: Vec<&String> = in_target
                .iter()
                // Artifact-scheme tags (`sha256-<hex>` fallback indexes a replication writes
                // where the destination has no referrers API, cosign's suffixes) name no image.
                .filter(|tag| {
                    job.tags.tag_matches(tag)
                        && !in_source.contains(*tag)
                        && crate::artifacts::artifact_subject(tag).is_none()
                })
                .collect();
            extra.sort();
            for tag in extra {
                report.add(at.difference(
                    DifferenceKind::Extra,
                    format!(":{tag}"),
                    "the source has no such tag".into(),
                ));
            }
        }
    }
    Ok(report)
}

/// Whether the destination keeps `digest` in ECR's archive storage class (listed, but a pull
/// answers 404: ECR user guide, "Archiving an image"); a registry that is not ECR, or an
/// archive that cannot be read (logged), holds none.
async fn archived_there_holds(
    archived: &ArchivedThere,
    dest: &Connection,
    target: &str,
    digest: &Digest,
) -> bool {
    let Some(admin) = dest.ecr.as_ref() else {
        return false;
    };
    archived
        .digests(admin, target, "they count as missing")
        .await
        .contains_key(digest.as_str())
}

/// A source repository and its name in a destination, for naming differences.
struct Place<'a> {
    /// Source repository.
    repository: &'a str,
    /// Its name in the destination.
    name: String,
    /// `registry/name`, as differences name it.
    target: String,
}

impl Place<'_> {
    fn difference(&self, kind: DifferenceKind, suffix: String, detail: String) -> Difference {
        Difference {
            kind,
            repository: self.repository.to_string(),
            target: format!("{}{suffix}", self.target),
            detail,
        }
    }
}

/// The destination repository's settings against the source's (ECR only): what a
/// `repositorySettings: "copy"` run would change, and drift it cannot change.
async fn verify_settings(
    conns: &Connections,
    job: &ValidJob,
    (index, spec): (usize, &Destination),
    at: &Place<'_>,
    report: &mut VerifyReport,
) -> Result<()> {
    if job.job.repository_settings == SettingsMode::None {
        return Ok(());
    }
    let dry_copy = Job {
        dry_run: true,
        // What a replication would make them: `mirror` exactly the source's, any other mode
        // the source's without weakening the destination.
        repository_settings: match job.job.repository_settings {
            SettingsMode::Mirror => SettingsMode::Mirror,
            _ => SettingsMode::Copy,
        },
        ..job.job.clone()
    };
    let ensured = apply_settings(conns, &dry_copy, (index, spec), at.repository, &at.name).await?;
    if ensured.skipped.is_some() {
        return Ok(());
    }
    if ensured.created {
        report.add(at.difference(
            DifferenceKind::Missing,
            String::new(),
            "the repository does not exist".into(),
        ));
        return Ok(());
    }
    for change in &ensured.changes {
        report.add(at.difference(
            DifferenceKind::Settings,
            String::new(),
            format!(
                "{} is {}, the source's is {}",
                change.setting, change.from, change.to
            ),
        ));
    }
    for drift in &ensured.drift {
        report.add(at.difference(DifferenceKind::Settings, String::new(), drift.clone()));
    }
    Ok(())
}

/// One image's digest as a replication would put it (the subset's with `platforms`) and its
/// differences in one destination: (kind, where after the repository, detail); `None` when a
/// replication would not copy it.
async fn compare_image(
    source: &Connection,
    dest: &Connection,
    repo: &Repository,
    repository: &str,
    (image, platforms): (&SelectedImage, Option<&PlatformFilter>),
    (listed, repository_absent): (&Option<HashSet<String>>, bool),
) -> Result<Option<(Digest, Vec<(DifferenceKind, String, String)>)>> {
    let listing = |what: &str| {
        let what = format!("{what} of {repository}@{}", image.digest);
        move |source| Error::Listing { what, source }
    };
    let source_digest = Digest::parse(&image.digest).map_err(listing("the digest"))?;
    // With `platforms`, what a replication puts there: the index cut down to them (a new
    // digest, without the source index's referrers), or nothing at all.
    let subset = match platforms {
        Some(filter) => match platform_subset(source, repository, &source_digest, filter).await? {
            Subset::Unchanged => None,
            Subset::Index(subset) => Some(subset),
            Subset::NoneWanted(_) => return Ok(None),
        },
        None => None,
    };
    let digest = subset
        .as_ref()
        .map_or_else(|| source_digest.clone(), |s| s.digest.clone());
    let mut found = Vec::new();
    let missing = |suffix: String, detail: String| (DifferenceKind::Missing, suffix, detail);
    if repository_absent {
        found.push(missing(format!("@{digest}"), "not there".into()));
        return Ok(Some((digest, found)));
    }
    let by_digest = Reference {
        repository: repo.clone(),
        tag: None,
        digest: Some(digest.clone()),
    };
    let mut manifest_there = false;
    for tag in &image.tags {
        if listed.as_ref().is_some_and(|l| !l.contains(tag)) {
            found.push(missing(format!(":{tag}"), format!("should name {digest}")));
            continue;
        }
        let head = dest
            .client
            .head_manifest(&by_digest.with_tag(tag))
            .await
            .map_err(listing("the destination's tags"))?;
        match head {
            None => found.push(missing(format!(":{tag}"), format!("should name {digest}"))),
            Some(h) if h.digest != digest => found.push((
                DifferenceKind::Different,
                format!(":{tag}"),
                format!("names {}, the source's names {digest}", h.digest),
            )),
            Some(_) => manifest_there = true,
        }
    }
    if image.tags.is_empty() {
        manifest_there = dest
            .client
            .head_manifest(&by_digest)
            .await
            .map_err(listing("the destination's manifests"))?
            .is_some();
        if !manifest_there {
            found.push(missing(
                format!("@{digest}"),
                "untagged image not there".into(),
            ));
        }
    }
    if !manifest_there {
        return Ok(Some((digest, found)));
    }
    // The children of an index (read from the source: a manifest, never a blob).
    let (from, source_top) = source
        .manifest_by_digest(repository, &source_digest)
        .await
        .map_err(listing("the source manifest"))?;
    let url = from.to_string();
    let top = subset.unwrap_or(source_top);
    let children = match top.content(&url).map_err(listing("the source manifest"))? {
        oci::ManifestContent::Index { manifests } => manifests
            .iter()
            .map(|child| Digest::parse(child.digest().as_ref()))
            .collect::<oci::Result<Vec<_>>>()
            .map_err(listing("the index"))?,
        oci::ManifestContent::Image { .. } => Vec::new(),
    };
    let referrers = match top.digest == source_digest {
        true => image
            .referrers
            .iter()
            .map(|r| Digest::parse(r))
            .collect::<oci::Result<Vec<_>>>()
            .map_err(listing("the referrers"))?,
        false => Vec::new(),
    };
    for (what, wanted) in children
        .iter()
        .map(|c| ("child", c))
        .chain(referrers.iter().map(|r| ("referrer", r)))
    {
        let head = dest
            .client
            .head_manifest(&by_digest.with_digest(wanted.clone()))
            .await
            .map_err(listing("the destination's manifests"))?;
        if head.is_none() {
            found.push(missing(
                format!("@{wanted}"),
                format!("{what} of {digest} not there"),
            ));
        }
    }
    Ok(Some((digest, found)))
}
