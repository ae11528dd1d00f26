//! `enumerate-repositories`: one page of the source's repositories the job selects, the job
//! validated with every default filled in, and how `maxConcurrency` is shared out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::connect::Connections;
use crate::error::{Error, Result};
use crate::job::Job;

/// Source repositories per `enumerate-repositories` page: each becomes a child execution whose
/// report is part of the Map's aggregated result (256 KiB at most).
pub const REPOSITORIES_PER_PAGE: usize = 20;

/// Names asked of the registry per listing request (ECR's `DescribeRepositories` maximum): the
/// filter is applied within these large pages, so a page of selected repositories costs the
/// parent execution the same whether the registry holds 30 repositories or 30,000.
pub const LISTING_PAGE: usize = 1000;

/// Listing requests one call makes at most before handing back a token (bounded work per
/// invocation: 50,000 names at ECR's page size).
pub const LISTING_REQUESTS_PER_CALL: usize = 50;

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
}

/// Output of `enumerate-repositories`: selected repositories of one source page, and the job
/// validated with every default filled in, which the state machine uses from then on (a Choice
/// or `*Path` on a field the input left out fails an execution in AWS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnumerateRepositoriesOutput {
    /// Selected repository names.
    pub repositories: Vec<String>,
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

/// One page of the source's repositories, filtered by the job's globs.
pub async fn enumerate_repositories(
    conns: &Connections,
    input: EnumerateRepositoriesInput,
) -> Result<EnumerateRepositoriesOutput> {
    enumerate_repositories_within(conns, input, REPOSITORIES_PER_PAGE).await
}

/// `enumerate_repositories` with pages of at most `page` source repositories (in one process
/// the state's bound does not apply; registries' catalogs are cheaper read in large pages).
#[tracing::instrument(skip_all, fields(next = ?input.next_token))]
pub async fn enumerate_repositories_within(
    conns: &Connections,
    input: EnumerateRepositoriesInput,
    page: usize,
) -> Result<EnumerateRepositoriesOutput> {
    let job = input.job.validate()?;
    let concurrency = Concurrency::share(job.job.max_concurrency);
    if !job.job.images.is_empty() {
        // Paged like the catalog (the parent's state holds one page of repositories at a
        // time): the token is the offset into the list's repositories, in first-named order.
        let mut listed: Vec<String> = Vec::new();
        for image in &job.job.images {
            if !listed.contains(&image.repository) && job.repositories.matches(&image.repository) {
                listed.push(image.repository.clone());
            }
        }
        let offset = match input.next_token.as_deref() {
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
        return Ok(EnumerateRepositoriesOutput {
            repositories: listed[offset..end].to_vec(),
            next_token: (end < listed.len()).then(|| end.to_string()),
            job: job.job,
            concurrency,
            refused: Vec::new(),
        });
    }
    let source = conns.source(&job.job).await?;
    let catalog = source.catalog();
    let mut at = ListingPosition::parse(input.next_token.as_deref())?;
    let mut repositories = Vec::new();
    let mut refused = Vec::new();
    let mut next_token = None;
    for request in 0..LISTING_REQUESTS_PER_CALL {
        if request > 0 && repositories.len() >= page {
            next_token = Some(at.token());
            break;
        }
        let listing = catalog
            .repositories(at.registry_token.clone(), LISTING_PAGE)
            .await?;
        let mut consumed = at.offset;
        for name in listing.items.iter().skip(at.offset) {
            if repositories.len() >= page {
                break;
            }
            consumed += 1;
            // A name from the catalog that is not a repository name never reaches a URL.
            if let Err(reason) = oci::reference::validate_repository_name(name) {
                tracing::warn!(repository = %name.escape_debug(), %reason, "refused a name from the source's catalog");
                if refused.len() < crate::report::ENSURE_LISTED {
                    let refusal = crate::filter::Refusal::new(name, reason);
                    refused.push(format!("{}: {}", refusal.name, refusal.reason));
                }
                continue;
            }
            if job.repositories.matches(name) {
                repositories.push(name.clone());
            }
        }
        if consumed < listing.items.len() {
            // The page of selected repositories is full within this listing page: the next
            // call reads it again from where this one stopped.
            at.offset = consumed;
            next_token = Some(at.token());
            break;
        }
        match listing.next {
            Some(registry_token) => {
                at = ListingPosition {
                    offset: 0,
                    registry_token: Some(registry_token),
                };
                next_token = Some(at.token());
            }
            None => {
                next_token = None;
                break;
            }
        }
    }
    Ok(EnumerateRepositoriesOutput {
        repositories,
        next_token,
        job: job.job,
        concurrency,
        refused,
    })
}

/// Where a repository listing goes on: the registry's page token (none: the first page) and how
/// many names of that page were already read. As a step token: `<offset>:<registry token>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ListingPosition {
    offset: usize,
    registry_token: Option<String>,
}

impl ListingPosition {
    fn parse(token: Option<&str>) -> Result<Self> {
        let Some(token) = token else {
            return Ok(ListingPosition::default());
        };
        let invalid = || {
            Error::invalid(
                "nextToken",
                format!(
                    "{:?} is not a token enumerate-repositories gave",
                    crate::report::truncate_chars(token, 80)
                ),
            )
        };
        let (offset, registry_token) = token.split_once(':').ok_or_else(invalid)?;
        let offset = offset.parse::<usize>().map_err(|_| invalid())?;
        // A registry may answer more than it was asked for (moto pages nothing), never this many.
        if offset > 1_000_000 {
            return Err(invalid());
        }
        Ok(ListingPosition {
            offset,
            registry_token: (!registry_token.is_empty()).then(|| registry_token.to_string()),
        })
    }

    fn token(&self) -> String {
        format!(
            "{}:{}",
            self.offset,
            self.registry_token.as_deref().unwrap_or_default()
        )
    }
}
