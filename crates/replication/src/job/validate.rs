//! Validation of a job: every rule group is one function (the job's version, its source, its
//! destinations and each destination, its limits, tag filters, listed images, signature
//! requirement and platforms), each problem naming its field; all are reported together.

use super::mapping::mapping_merges_repositories;
use super::{
    Job, Mode, RequireSignature, ValidJob, MAX_DESTINATIONS, MAX_JOB_BYTES, MAX_LISTED_IMAGES,
    MAX_MAPPING_RULES, MAX_PULL_BUDGET, MIN_RANGE_BYTES,
};
use crate::error::{Error, FieldProblem, Result};
use crate::filter::{RepositoryMatcher, TagMatcher};
use crate::keys::SignaturePolicy;
use crate::platforms::{PlatformFilter, MAX_PLATFORMS};
use crate::trust::{policy_name_problem, PolicySource};

impl Job {
    /// Checks every value; all problems are reported together, each naming its field. Docker
    /// Hub names are first written the one way (`normalize_docker_hub`).
    pub fn validate(mut self) -> Result<ValidJob> {
        self.normalize_docker_hub();
        let mut problems = Vec::new();
        let mut problem = |field: &str, text: String| {
            problems.push(FieldProblem {
                field: field.to_string(),
                problem: text,
            })
        };
        check_version(&self, &mut problem);
        check_source(&self, &mut problem);
        check_destination_count(&self, &mut problem);
        check_job_size(&self, &mut problem);
        check_destinations(&self, &mut problem);
        check_limits(&self, &mut problem);
        check_tags(&self, &mut problem);
        check_images(&self, &mut problem);
        super::layout::check_layout_job(&self, &mut problem);
        let signature_policy = self
            .require_signature
            .as_ref()
            .and_then(|required| signature_policy(required, &mut problem));
        let platforms = check_platforms(&self, &mut problem);
        let repositories =
            RepositoryMatcher::new(&self.repositories.include, &self.repositories.exclude)
                .map_err(|(field, e)| problem(&format!("repositories.{field}"), e))
                .ok();
        let tags = TagMatcher::new(&self.tags)
            .map_err(|(field, e)| problem(&format!("tags.{field}"), e))
            .ok();
        match (repositories, tags) {
            (Some(repositories), Some(tags)) if problems.is_empty() => Ok(ValidJob {
                job: self,
                repositories,
                tags,
                signature_policy,
                platforms,
            }),
            _ => Err(Error::InvalidInput { problems }),
        }
    }
}

/// `version`: this release reads version 1.
fn check_version(job: &Job, problem: &mut impl FnMut(&str, String)) {
    if job.version != 1 {
        problem(
            "version",
            format!(
                "unsupported version {}; this release reads version 1",
                job.version
            ),
        );
    }
}

/// `source`: its registry, how it is reached (TLS, role, secret), its pull budget, and the
/// repositories a source without a catalog (Docker Hub) must name.
fn check_source(job: &Job, problem: &mut impl FnMut(&str, String)) {
    if job.source.layout.is_some() {
        return super::layout::check_layout_source(job, problem);
    }
    if job.source.statement_digest.is_some() {
        problem(
            "source.statementDigest",
            "pins a layout's statement: give it with `layout`".into(),
        );
    }
    if let Err(e) = check_registry(&job.source.registry) {
        problem("source.registry", e);
    }
    if job.source.insecure && ecr::EcrRegistry::is_ecr_host(&job.source.registry) {
        problem("source.insecure", ECR_OVER_TLS.into());
    }
    check_role(
        "source",
        job.source.role_arn.as_deref(),
        job.source.external_id.as_deref(),
        problem,
    );
    check_credential(
        "source",
        &job.source.registry,
        job.source.credential_arn.as_deref(),
        problem,
    );
    check_pull_budget(job, problem);
    if job.source.registry == oci::reference::DOCKER_HUB
        && job.images.is_empty()
        && job.named_repositories().is_none()
    {
        problem(
            "repositories.include",
            "Docker Hub lists no catalog of repositories: name each one (no wildcards, \
             e.g. [\"library/nginx\", \"bitnami/redis\"]) or list `images`"
                .into(),
        );
    }
}

/// `source.pullBudget`: within bounds, and not in a verification.
fn check_pull_budget(job: &Job, problem: &mut impl FnMut(&str, String)) {
    let Some(budget) = &job.source.pull_budget else {
        return;
    };
    if !(2..=MAX_PULL_BUDGET).contains(&budget.max_pulls) {
        problem(
            "source.pullBudget.maxPulls",
            format!(
                "{} pulls: give 2 to {MAX_PULL_BUDGET} (an image needs at least 2: its \
                 manifest read when planned and when put)",
                budget.max_pulls
            ),
        );
    }
    if budget.keep_remaining > MAX_PULL_BUDGET {
        problem(
            "source.pullBudget.keepRemaining",
            format!("{}: at most {MAX_PULL_BUDGET}", budget.keep_remaining),
        );
    }
    if job.mode == Mode::Verify {
        problem(
            "source.pullBudget",
            "a verification does not stop at a pull budget (it must read every \
             image to compare it): leave the budget out of verify jobs"
                .into(),
        );
    }
}

/// `destinations`: one at least, `MAX_DESTINATIONS` at most.
fn check_destination_count(job: &Job, problem: &mut impl FnMut(&str, String)) {
    if job.destinations.is_empty() {
        problem("destinations", "at least one destination is needed".into());
    }
    if job.destinations.len() > MAX_DESTINATIONS {
        problem(
            "destinations",
            format!(
                "{} destinations; at most {MAX_DESTINATIONS} per job: split them over several jobs",
                job.destinations.len()
            ),
        );
    }
}

/// The whole job: `MAX_JOB_BYTES` of JSON at most.
fn check_job_size(job: &Job, problem: &mut impl FnMut(&str, String)) {
    let bytes = serde_json::to_vec(job).map(|v| v.len()).unwrap_or(0);
    if bytes > MAX_JOB_BYTES {
        problem(
            "(whole job)",
            format!("the job is {bytes} bytes of JSON; at most {MAX_JOB_BYTES} (it travels in every state of the workflow): split a long `images` list over several jobs"),
        );
    }
}

/// Every destination (`destinations[i]`), and no two with the same registry and prefix.
fn check_destinations(job: &Job, problem: &mut impl FnMut(&str, String)) {
    let mut seen = Vec::new();
    for (i, d) in job.destinations.iter().enumerate() {
        let at = format!("destinations[{i}]");
        check_destination(job, &at, d, problem);
        let key = (
            d.registry.clone(),
            d.repository_prefix.clone().unwrap_or_default(),
        );
        if seen.contains(&key) {
            problem(
                &at,
                format!(
                    "duplicate destination {} (same registry and prefix as an earlier one)",
                    d.registry
                ),
            );
        }
        seen.push(key);
        check_kms_key_mapping(&at, d, problem);
    }
}

/// One destination, at `at`: its registry, how it is reached (TLS, role, secret), its
/// repository prefix and mapping rules.
fn check_destination(
    job: &Job,
    at: &str,
    d: &super::Destination,
    problem: &mut impl FnMut(&str, String),
) {
    if d.layout.is_some() {
        return super::layout::check_layout_destination(at, d, problem);
    }
    if let Err(e) = check_registry(&d.registry) {
        problem(&format!("{at}.registry"), e);
    }
    if d.insecure && ecr::EcrRegistry::is_ecr_host(&d.registry) {
        problem(&format!("{at}.insecure"), ECR_OVER_TLS.into());
    }
    check_role(at, d.role_arn.as_deref(), d.external_id.as_deref(), problem);
    check_credential(at, &d.registry, d.credential_arn.as_deref(), problem);
    let prefix = d.repository_prefix.clone().unwrap_or_default();
    if let Some(p) = &d.repository_prefix {
        if let Err(e) = check_prefix(p) {
            problem(&format!("{at}.repositoryPrefix"), e);
        }
    }
    for (j, rule) in d.repository_mapping.iter().enumerate() {
        if let Some((field, e)) = rule.problem(&prefix) {
            problem(&format!("{at}.repositoryMapping[{j}].{field}"), e);
        }
    }
    if job.prune {
        if let Some((j, why)) = mapping_merges_repositories(&d.repository_mapping) {
            problem(&format!("{at}.repositoryMapping[{j}]"), why);
        }
    }
    if d.repository_mapping.len() > MAX_MAPPING_RULES {
        problem(
            &format!("{at}.repositoryMapping"),
            format!(
                "{} rules; at most {MAX_MAPPING_RULES}",
                d.repository_mapping.len()
            ),
        );
    }
    if d.registry == job.source.registry && prefix.is_empty() {
        problem(&format!("{at}.registry"), "equals the source registry without a repositoryPrefix: images would be copied onto themselves".into());
    }
}

/// A destination's `kmsKeyMapping`: KMS key ARNs (or `"*"` for any other source key).
fn check_kms_key_mapping(at: &str, d: &super::Destination, problem: &mut impl FnMut(&str, String)) {
    for (from, to) in &d.kms_key_mapping {
        if from != "*" && !is_kms_key_arn(from) {
            problem(
                &format!("{at}.kmsKeyMapping"),
                format!("key {from:?} is not a KMS key ARN (or \"*\")"),
            );
        }
        if !is_kms_key_arn(to) {
            problem(
                &format!("{at}.kmsKeyMapping.{from}"),
                format!("{to:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)"),
            );
        }
    }
}

/// `maxConcurrency` and `rangeBytes`: within their ranges.
fn check_limits(job: &Job, problem: &mut impl FnMut(&str, String)) {
    if job.max_concurrency == 0 || job.max_concurrency > 1000 {
        problem(
            "maxConcurrency",
            format!("{} is out of range 1..=1000", job.max_concurrency),
        );
    }
    if job.range_bytes < MIN_RANGE_BYTES {
        problem(
            "rangeBytes",
            format!(
                "{} is below the 5 MiB minimum upload part ({MIN_RANGE_BYTES})",
                job.range_bytes
            ),
        );
    }
}

/// `tags.latest` and `tags.maxAgeDays`: at least 1 when given (the patterns are compiled by
/// `TagMatcher`).
fn check_tags(job: &Job, problem: &mut impl FnMut(&str, String)) {
    if job.tags.latest == Some(0) {
        problem(
            "tags.latest",
            "must be at least 1 (leave it out to keep every image)".into(),
        );
    }
    if job.tags.max_age_days == Some(0) {
        problem(
            "tags.maxAgeDays",
            "must be at least 1 (leave it out for no age limit)".into(),
        );
    }
}

/// `platforms`: `MAX_PLATFORMS` at most, each `os/architecture[/variant]`; the filter when
/// the job names some.
fn check_platforms(job: &Job, problem: &mut impl FnMut(&str, String)) -> Option<PlatformFilter> {
    if job.platforms.len() > MAX_PLATFORMS {
        problem(
            "platforms",
            format!("{} platforms; at most {MAX_PLATFORMS}", job.platforms.len()),
        );
    }
    PlatformFilter::parse(&job.platforms)
        .map_err(|(i, e)| problem(&format!("platforms[{i}]"), e))
        .ok()
        .flatten()
}

/// The job's own policy, or its named one's name checked; each problem names its field.
fn signature_policy(
    required: &RequireSignature,
    problem: &mut impl FnMut(&str, String),
) -> Option<SignaturePolicy> {
    match (&required.policy, required.is_inline()) {
        (Some(_), true) => {
            problem(
                "requireSignature.policy",
                "give either policy (one of the deployment's trustPolicies) or publicKeys and identities, not both".into(),
            );
            None
        }
        (Some(name), false) => {
            if let Some(why) = policy_name_problem(name) {
                problem("requireSignature.policy", why);
            }
            None
        }
        (None, _) => {
            required
                .inline_policy()
                .compile("requireSignature", PolicySource::Job, problem)
        }
    }
}

/// Why `insecure` is refused for an ECR host: ECR serves TLS only, so plain HTTP to its name
/// can only reach whoever answers in its place, and would hand them the registry token.
const ECR_OVER_TLS: &str = "ECR is reached over TLS only: plain HTTP to an ECR host name would send its token to whoever answers there";

fn check_registry(registry: &str) -> std::result::Result<(), String> {
    if registry.is_empty() {
        return Err(
            "empty; give a registry host such as 111111111111.dkr.ecr.us-east-1.amazonaws.com"
                .into(),
        );
    }
    if registry.contains("://") || registry.contains('/') {
        return Err(format!(
            "{registry:?} must be a host[:port] only, without scheme or path"
        ));
    }
    let probe = format!("{registry}/probe:tag");
    oci::Reference::parse(&probe)
        .map(|_| ())
        .map_err(|_| format!("{registry:?} is not a registry host"))?;
    if registry.contains(".dkr.ecr") || registry.contains(".dkr-ecr") {
        ecr::EcrRegistry::parse(registry).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn check_images(job: &Job, problem: &mut impl FnMut(&str, String)) {
    if job.images.is_empty() {
        return;
    }
    // The name filters narrow a list (the deployment's exclusions hold for pushes too); the
    // filters that choose among a repository's whole listing mean nothing for named images.
    for (field, set) in [
        ("tags.latest", job.tags.latest.is_some()),
        ("tags.maxAgeDays", job.tags.max_age_days.is_some()),
        ("tags.untagged", job.tags.untagged),
    ] {
        if set {
            problem(
                field,
                "chooses among a repository's listed images; an explicit image list names them: give one or the other".into(),
            );
        }
    }
    if job.prune {
        problem(
            "prune",
            "prune removes tags the filters select; it cannot be combined with an explicit image list"
                .into(),
        );
    }
    if job.images.len() > MAX_LISTED_IMAGES {
        problem(
            "images",
            format!(
                "{} images listed; at most {MAX_LISTED_IMAGES} (split the list over executions)",
                job.images.len()
            ),
        );
    }
    for (i, image) in job.images.iter().enumerate() {
        let at = format!("images[{i}]");
        if let Err(e) = oci::reference::validate_repository_name(&image.repository) {
            problem(&format!("{at}.repository"), e);
        }
        if let Some(tag) = &image.tag {
            if let Err(e) = oci::reference::validate_tag(tag) {
                problem(&format!("{at}.tag"), e);
            }
        }
        if let Some(digest) = &image.digest {
            if let Err(e) = oci::Digest::parse(digest) {
                problem(&format!("{at}.digest"), e.to_string());
            }
        }
        if image.tag.is_none() && image.digest.is_none() {
            problem(&at, "names no image: give a tag, a digest, or both".into());
        }
    }
}

/// A registry secret: a Secrets Manager ARN, for a registry that is not ECR (ECR registries
/// authenticate with the functions' role or `roleArn`).
fn check_credential(
    at: &str,
    registry: &str,
    credential: Option<&str>,
    problem: &mut impl FnMut(&str, String),
) {
    let Some(arn) = credential else {
        return;
    };
    let field = format!("{at}.credentialArn");
    if let Err(e) = ecr::SecretArn::parse(arn) {
        problem(&field, format!("{arn:?} {e}"));
    }
    if ecr::EcrRegistry::is_ecr_host(registry) {
        problem(
            &field,
            "an ECR registry is reached with the functions' role or roleArn, not a secret".into(),
        );
    }
}

fn check_role(
    at: &str,
    role: Option<&str>,
    external_id: Option<&str>,
    problem: &mut impl FnMut(&str, String),
) {
    if let Some(role) = role {
        if ecr::RoleArn::parse(role).is_err() {
            problem(
                &format!("{at}.roleArn"),
                format!("{role:?} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
            );
        }
    }
    if let Some(id) = external_id {
        let ok = (2..=1224).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@:/-_".contains(c));
        if !ok {
            problem(
                &format!("{at}.externalId"),
                "2 to 1224 characters of letters, digits and +=,.@:/-_".into(),
            );
        }
        if role.is_none() {
            problem(
                &format!("{at}.externalId"),
                "given without a roleArn".into(),
            );
        }
    }
}

fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() || !prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must be a repository path ending in '/', e.g. \"mirror/\""
        ));
    }
    oci::reference::validate_repository_name(trimmed)
}

fn is_kms_key_arn(text: &str) -> bool {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "kms"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && (parts[5].starts_with("key/") || parts[5].starts_with("alias/"))
}
