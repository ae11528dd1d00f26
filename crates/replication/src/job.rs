//! The execution input (version 1): what to replicate, from where, to where, and how. Parsed with
//! unknown fields rejected and validated with every problem naming its field.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldProblem, Result};
pub use crate::filter::TagFilter;
use crate::filter::{RepositoryMatcher, TagMatcher};
use crate::keys::SignaturePolicy;
use crate::platforms::{PlatformFilter, MAX_PLATFORMS};
pub use crate::trust::SignerIdentity;
use crate::trust::{
    policy_name_problem, PolicySource, TrustPolicy, MAX_SIGNATURE_IDENTITIES, MAX_SIGNATURE_KEYS,
};

/// Default byte budget of one copy invocation: 2 GiB.
pub const DEFAULT_RANGE_BYTES: u64 = 2 << 30;
/// Smallest budget accepted: ECR's minimum upload part.
pub const MIN_RANGE_BYTES: u64 = 5 << 20;
/// Destinations one job may have: each adds a task per image to a page and an
/// `ensure-repository` output to a repository's state (256 KiB at most in Step Functions).
pub const MAX_DESTINATIONS: usize = 10;
/// The job's JSON at most: it travels in every state of every execution (256 KiB each).
pub const MAX_JOB_BYTES: usize = 24 * 1024;

/// A replication job: the Step Functions execution input, the CLI's `--input` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Job {
    /// Schema version; 1.
    #[serde(default = "one")]
    pub version: u32,
    /// Where images come from.
    pub source: Source,
    /// Where images go (one or more accounts/regions/registries).
    #[schemars(length(min = 1, max = MAX_DESTINATIONS))]
    pub destinations: Vec<Destination>,
    /// Which repositories (globs on the repository name; `*` stays within one path segment,
    /// `**` crosses `/`). Empty include means all.
    #[serde(default)]
    pub repositories: RepositoryFilter,
    /// Which images, by tag and push time.
    #[serde(default)]
    pub tags: TagFilter,
    /// Exactly these images, instead of listing the repositories (the ECR push trigger sends
    /// the pushed image here, tag and digest). The repository filter and the tag name filters
    /// (`include`, `exclude`, `semver`) still narrow the list; a tag listed with a digest it no
    /// longer names is reported superseded. At most 1000.
    #[serde(default)]
    #[schemars(length(max = MAX_LISTED_IMAGES))]
    pub images: Vec<ImageSelector>,
    /// What to do with repository settings in the destinations.
    #[serde(default)]
    pub repository_settings: SettingsMode,
    /// Copy the source repository's policy too (default false): only its statements whose
    /// principals are all in the source account (rewritten to the destination's account);
    /// statements granting another account, `*` or a service are left out and reported.
    #[serde(default)]
    pub copy_repository_policy: bool,
    /// Copy signatures, SBOMs and attestations that refer to the images (default true).
    #[serde(default = "yes")]
    pub referrers: bool,
    /// Remove destination tags selected by the filters that the source no longer has.
    #[serde(default)]
    pub prune: bool,
    /// `replicate` (the default) copies; `verify` compares every destination with the source
    /// (digests of manifests, children and referrers; tags; repository settings) and writes
    /// nothing.
    #[serde(default)]
    pub mode: Mode,
    /// Send an EventBridge event for every image that arrived (`Replication Image Arrived`),
    /// besides the run's (`Replication Run Finished`, always sent) (default false).
    #[serde(default)]
    pub image_events: bool,
    /// Copy only images signed as the deployment's trust policy `policy` says (or, where the
    /// deployment allows it, as keys and identities written here say); the others are reported
    /// `unsigned` and not copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<RequireSignature>,
    /// Copy an index with only the children of these platforms (`os/architecture[/variant]`,
    /// e.g. `linux/amd64`, `linux/arm64/v8`): the destination gets a new index (a new digest)
    /// keeping the source's fields, annotations and order. Images that are no index, and indexes
    /// whose children are all wanted, are copied unchanged (default: every platform).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PLATFORMS))]
    pub platforms: Vec<String>,
    /// Plan only: report what would be copied and changed, write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Images copied at once (the Map state's MaxConcurrency).
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrency: u32,
    /// Bytes one copy invocation moves at most; larger blobs are copied in segments of this size.
    #[serde(default = "default_range_bytes")]
    #[schemars(range(min = MIN_RANGE_BYTES))]
    pub range_bytes: u64,
}

/// The source registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// ECR registry host (`<account>.dkr.ecr.<region>.amazonaws.com`) or any OCI registry host.
    pub registry: String,
    /// Role to assume to read the source (another account), if any.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// External ID for that role.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Secrets Manager secret with this registry's credentials (`{"username": ...,
    /// "accessToken": ...}`, as ECR pull-through cache rules store them), for a registry that is
    /// not ECR. The deployment must allow the secret for this registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_arn: Option<String>,
    /// Pulls (manifest GETs, which Docker Hub counts) a run may spend on this registry: images
    /// past the budget are left for the next run, reported `postponed`, not failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_budget: Option<PullBudget>,
    /// Reach the registry over plain HTTP (local tests only).
    #[serde(default)]
    pub insecure: bool,
}

/// How many pulls a run may spend on a rate-limited source (Docker Hub: 100 or 200 per 6 hours
/// by account, counted per manifest GET; HEADs are free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullBudget {
    /// Manifest GETs the run sends to the source at most (each image's manifests are read
    /// twice in the workflow: when planned and when put). Repositories are then replicated one
    /// at a time, so the count is exact.
    pub max_pulls: u64,
    /// Also stop starting images when the registry's own count (`ratelimit-remaining`) would
    /// fall under this: pulls kept for everyone else sharing the account or address.
    #[serde(default)]
    pub keep_remaining: u64,
}

/// A budget past any registry's limit: larger ones are surely a mistake.
pub const MAX_PULL_BUDGET: u64 = 1_000_000;

/// A registry's one name: Docker Hub's other names (`index.docker.io` in docker's config
/// files, `registry-1.docker.io` its API host) are `docker.io`.
pub fn canonical_registry(registry: &str) -> &str {
    match registry {
        "index.docker.io" | "registry-1.docker.io" => oci::reference::DOCKER_HUB,
        other => other,
    }
}

impl Job {
    /// Docker Hub as users write it: `index.docker.io` (docker's config files) and
    /// `registry-1.docker.io` (its API host) are `docker.io`; for a Docker Hub source, a
    /// one-part repository name or glob is an official image's (`nginx` is `library/nginx`), as
    /// `docker pull nginx` reads it.
    pub fn normalize_docker_hub(&mut self) {
        let hub = |registry: &mut String| {
            *registry = canonical_registry(registry).to_string();
        };
        hub(&mut self.source.registry);
        for destination in &mut self.destinations {
            hub(&mut destination.registry);
        }
        if self.source.registry != oci::reference::DOCKER_HUB {
            return;
        }
        let official = |name: &mut String| {
            if !name.contains('/') {
                *name = format!("library/{name}");
            }
        };
        self.images
            .iter_mut()
            .for_each(|i| official(&mut i.repository));
        self.repositories.include.iter_mut().for_each(official);
        self.repositories.exclude.iter_mut().for_each(official);
    }

    /// The repositories the job names one by one, for a source that lists no catalog (Docker
    /// Hub): `repositories.include` when none of its entries is a glob.
    pub fn named_repositories(&self) -> Option<&[String]> {
        let include = &self.repositories.include;
        let literal = |name: &String| !name.contains(['*', '?', '[', '{', '\\']);
        (!include.is_empty() && include.iter().all(literal)).then_some(include.as_slice())
    }
}

/// One destination registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// ECR registry host or any OCI registry host.
    pub registry: String,
    /// Role to assume in the destination account.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// External ID for that role.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Prefix put before every repository name in this destination, e.g. `mirror/`.
    #[serde(default)]
    pub repository_prefix: Option<String>,
    /// Repository names rewritten on the way, in order, the first whose `match` matches the
    /// whole source name winning (then `repositoryPrefix` is put before the result); a name no
    /// rule matches keeps its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_MAPPING_RULES))]
    pub repository_mapping: Vec<RepositoryRename>,
    /// Source KMS key ARN to destination KMS key ARN (keys are regional); `"*"` is the default for
    /// any other key. Without a mapping, KMS-encrypted repositories use the AWS managed key.
    #[serde(default)]
    pub kms_key_mapping: BTreeMap<String, String>,
    /// Secrets Manager secret with this registry's credentials (`{"username": ...,
    /// "accessToken": ...}`, as ECR pull-through cache rules store them), for a registry that is
    /// not ECR. The deployment must allow the secret for this registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_arn: Option<String>,
    /// Reach the registry over plain HTTP (local tests only).
    #[serde(default)]
    pub insecure: bool,
}

/// One rewrite of repository names: `{"match": "team-(.*)", "replace": "teams/$1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryRename {
    /// A regex the whole source repository name must match.
    #[serde(rename = "match")]
    pub pattern: String,
    /// The destination name: text with `$1`, `${1}` or `$name` standing for the regex's groups.
    pub replace: String,
}

impl RepositoryRename {
    fn regex(&self) -> std::result::Result<regex::Regex, regex::Error> {
        regex::RegexBuilder::new(&format!("^(?:{})$", self.pattern))
            .size_limit(1 << 20)
            .build()
    }

    /// The rewritten name when the rule matches `repository`.
    pub fn apply(&self, repository: &str) -> Option<String> {
        let captures = self.regex().ok()?.captures(repository)?;
        let mut renamed = String::new();
        captures.expand(&self.replace, &mut renamed);
        Some(renamed)
    }

    /// What is wrong with the rule (named by its field), or `None`: the regex compiles, the
    /// template names only groups the regex has, and it produces a valid repository name
    /// (checked with every group standing for `a`).
    fn problem(&self, prefix: &str) -> Option<(&'static str, String)> {
        let regex = match self.regex() {
            Ok(regex) => regex,
            Err(e) => return Some(("match", format!("bad regex {:?}: {e}", self.pattern))),
        };
        let names: Vec<&str> = regex.capture_names().flatten().collect();
        let mut sample = String::new();
        let mut rest = self.replace.as_str();
        while let Some(at) = rest.find('$') {
            sample.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(stripped) = rest.strip_prefix('$') {
                sample.push('$');
                rest = stripped;
                continue;
            }
            let (group, after) = match rest.strip_prefix('{') {
                Some(inner) => match inner.find('}') {
                    Some(end) => (&inner[..end], &inner[end + 1..]),
                    None => return Some(("replace", format!("{:?}: unclosed ${{", self.replace))),
                },
                None => {
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    (&rest[..end], &rest[end..])
                }
            };
            let known = match group.parse::<usize>() {
                Ok(n) => n < regex.captures_len(),
                Err(_) => names.contains(&group),
            };
            if !known {
                return Some((
                    "replace",
                    format!(
                        "{:?} names group {group:?}, which {:?} does not have",
                        self.replace, self.pattern
                    ),
                ));
            }
            sample.push('a');
            rest = after;
        }
        sample.push_str(rest);
        let name = format!("{prefix}{sample}");
        oci::reference::validate_repository_name(&name)
            .err()
            .map(|e| {
                (
                    "replace",
                    format!(
                        "{:?} produces an invalid repository name {name:?}: {e}",
                        self.replace
                    ),
                )
            })
    }
}

impl Destination {
    /// The repository name in this destination: the source name as the first matching
    /// `repositoryMapping` rule rewrites it (or as it is), after the prefix.
    pub fn target_repository(&self, repository: &str) -> String {
        let renamed = self
            .repository_mapping
            .iter()
            .find_map(|rule| rule.apply(repository))
            .unwrap_or_else(|| repository.to_string());
        format!(
            "{}{renamed}",
            self.repository_prefix.as_deref().unwrap_or_default()
        )
    }

    /// The repository name in this destination, checked against the registry naming rules (ECR:
    /// at most 256 characters, lowercase path components): a prefix can push a valid source
    /// name past them, and that repository then fails alone, named, before any call.
    pub fn checked_target_repository(&self, repository: &str) -> Result<String> {
        let target = self.target_repository(repository);
        oci::reference::validate_repository_name(&target).map_err(|problem| {
            Error::TargetNameInvalid {
                repository: format!("{}/{target}", self.registry),
                problem,
            }
        })?;
        Ok(target)
    }
}

/// Repository selection by glob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryFilter {
    /// Globs a repository must match (any); empty means every repository.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs that exclude a repository (any).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// One image named explicitly: a repository and a tag, a digest, or both (the tag must then
/// point at that digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSelector {
    /// Source repository name.
    pub repository: String,
    /// Tag to copy (copied under the same tag).
    #[serde(default)]
    pub tag: Option<String>,
    /// Manifest digest (`sha256:<64 hex>`); alone, the image is copied by digest, untagged.
    #[serde(default)]
    pub digest: Option<String>,
}

/// Rename rules a destination may have at most.
pub const MAX_MAPPING_RULES: usize = 50;

/// Most images an explicit list may name (keeps the execution input far below 256 KiB).
pub const MAX_LISTED_IMAGES: usize = 1000;

/// Promotion gated on signatures: the deployment's trust policy named by `policy` (the usual
/// form), or keys and identities written here (only where the deployment sets
/// `allowJobTrustPolicies`; such a run writes no receipts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequireSignature {
    /// The name of one of the deployment's `trustPolicies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// PEM public keys (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256, as `cosign
    /// generate-key-pair` writes `cosign.pub`), instead of `policy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SIGNATURE_KEYS))]
    pub public_keys: Vec<String>,
    /// Keyless signers (issuer and identity), instead of `policy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SIGNATURE_IDENTITIES))]
    pub identities: Vec<SignerIdentity>,
    /// Count an unsigned image as a failed one (the run then fails); by default it is only
    /// reported.
    #[serde(default)]
    pub fail_unsigned: bool,
}

impl RequireSignature {
    /// Whether the job writes its own keys or identities (instead of naming a policy).
    pub fn is_inline(&self) -> bool {
        !self.public_keys.is_empty() || !self.identities.is_empty()
    }

    /// The inline keys and identities as a policy.
    pub fn inline_policy(&self) -> TrustPolicy {
        TrustPolicy {
            public_keys: self.public_keys.clone(),
            identities: self.identities.clone(),
        }
    }
}

/// What a run does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Copy what the destinations lack.
    #[default]
    Replicate,
    /// Report how the destinations differ from the source; write nothing.
    Verify,
}

/// What happens to repository settings in a destination. Whatever the mode, a source without
/// settings (a registry that is not ECR, a repository the source lacks) changes nothing in an
/// existing destination repository, and the repository policy is copied only with
/// `copyRepositoryPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SettingsMode {
    /// Create missing repositories with the source's settings, and bring existing ones toward
    /// them without ever weakening them: immutable tags stay immutable, scan on push stays on,
    /// a lifecycle policy, repository policy or resource tag is never removed (reported as
    /// drift instead).
    #[default]
    Copy,
    /// Create missing repositories with the source's settings; never change existing ones.
    Create,
    /// Like `copy`, and make existing repositories exactly the source's, weaker settings
    /// included (immutable to mutable, policies removed): the explicit opt-in.
    Mirror,
    /// Touch no repository: they must exist.
    None,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn ten() -> u32 {
    10
}
fn default_range_bytes() -> u64 {
    DEFAULT_RANGE_BYTES
}

/// A job whose filters are compiled and values checked.
#[derive(Debug, Clone)]
pub struct ValidJob {
    /// The job as given.
    pub job: Job,
    /// Compiled repository globs.
    pub repositories: RepositoryMatcher,
    /// Compiled tag filters.
    pub tags: TagMatcher,
    /// The job's own keys and identities, compiled, when it writes them inline (a named
    /// policy is the deployment's: `Connections::signature_policies`).
    pub signature_policy: Option<SignaturePolicy>,
    /// The platforms an index is cut down to, when the job names some.
    pub platforms: Option<PlatformFilter>,
}

impl Job {
    /// Destination `index` (as step inputs name it); out of range is invalid input.
    pub fn destination(&self, index: usize) -> Result<&Destination> {
        self.destinations
            .get(index)
            .ok_or_else(|| Error::InvalidInput {
                problems: vec![FieldProblem {
                    field: "destination".into(),
                    problem: format!(
                        "index {index} is out of range: the job has {} destinations",
                        self.destinations.len()
                    ),
                }],
            })
    }

    /// Parses JSON; unknown fields and wrong types are errors naming the field path.
    pub fn from_json(text: &str) -> Result<Self> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let problem = e.into_inner().to_string();
            // A missing field is reported at its parent: name the field itself.
            let missing = problem
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string);
            let field = match (path.as_str(), missing) {
                (".", Some(name)) => name,
                (".", None) => "(input)".into(),
                (parent, Some(name)) => format!("{parent}.{name}"),
                (parent, None) => parent.to_string(),
            };
            Error::InvalidInput {
                problems: vec![FieldProblem { field, problem }],
            }
        })
    }

    /// Parses and validates.
    pub fn parse(text: &str) -> Result<ValidJob> {
        Self::from_json(text)?.validate()
    }

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
        if self.version != 1 {
            problem(
                "version",
                format!(
                    "unsupported version {}; this release reads version 1",
                    self.version
                ),
            );
        }
        if let Err(e) = check_registry(&self.source.registry) {
            problem("source.registry", e);
        }
        if self.source.insecure && ecr::EcrRegistry::is_ecr_host(&self.source.registry) {
            problem("source.insecure", ECR_OVER_TLS.into());
        }
        check_role(
            "source",
            self.source.role_arn.as_deref(),
            self.source.external_id.as_deref(),
            &mut problem,
        );
        check_credential(
            "source",
            &self.source.registry,
            self.source.credential_arn.as_deref(),
            &mut problem,
        );
        if let Some(budget) = &self.source.pull_budget {
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
            if self.mode == Mode::Verify {
                problem(
                    "source.pullBudget",
                    "a verification does not stop at a pull budget (it must read every \
                     image to compare it): leave the budget out of verify jobs"
                        .into(),
                );
            }
        }
        if self.source.registry == oci::reference::DOCKER_HUB
            && self.images.is_empty()
            && self.named_repositories().is_none()
        {
            problem(
                "repositories.include",
                "Docker Hub lists no catalog of repositories: name each one (no wildcards, \
                 e.g. [\"library/nginx\", \"bitnami/redis\"]) or list `images`"
                    .into(),
            );
        }
        if self.destinations.is_empty() {
            problem("destinations", "at least one destination is needed".into());
        }
        if self.destinations.len() > MAX_DESTINATIONS {
            problem(
                "destinations",
                format!(
                    "{} destinations; at most {MAX_DESTINATIONS} per job: split them over several jobs",
                    self.destinations.len()
                ),
            );
        }
        let bytes = serde_json::to_vec(&self).map(|v| v.len()).unwrap_or(0);
        if bytes > MAX_JOB_BYTES {
            problem(
                "(whole job)",
                format!("the job is {bytes} bytes of JSON; at most {MAX_JOB_BYTES} (it travels in every state of the workflow): split a long `images` list over several jobs"),
            );
        }
        let mut seen = Vec::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let at = format!("destinations[{i}]");
            if let Err(e) = check_registry(&d.registry) {
                problem(&format!("{at}.registry"), e);
            }
            if d.insecure && ecr::EcrRegistry::is_ecr_host(&d.registry) {
                problem(&format!("{at}.insecure"), ECR_OVER_TLS.into());
            }
            check_role(
                &at,
                d.role_arn.as_deref(),
                d.external_id.as_deref(),
                &mut problem,
            );
            check_credential(&at, &d.registry, d.credential_arn.as_deref(), &mut problem);
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
            if self.prune {
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
            if d.registry == self.source.registry && prefix.is_empty() {
                problem(&format!("{at}.registry"), "equals the source registry without a repositoryPrefix: images would be copied onto themselves".into());
            }
            let key = (d.registry.clone(), prefix);
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
        if self.max_concurrency == 0 || self.max_concurrency > 1000 {
            problem(
                "maxConcurrency",
                format!("{} is out of range 1..=1000", self.max_concurrency),
            );
        }
        if self.range_bytes < MIN_RANGE_BYTES {
            problem(
                "rangeBytes",
                format!(
                    "{} is below the 5 MiB minimum upload part ({MIN_RANGE_BYTES})",
                    self.range_bytes
                ),
            );
        }
        if self.tags.latest == Some(0) {
            problem(
                "tags.latest",
                "must be at least 1 (leave it out to keep every image)".into(),
            );
        }
        if self.tags.max_age_days == Some(0) {
            problem(
                "tags.maxAgeDays",
                "must be at least 1 (leave it out for no age limit)".into(),
            );
        }
        check_images(&self, &mut problem);
        let signature_policy = self
            .require_signature
            .as_ref()
            .and_then(|required| signature_policy(required, &mut problem));
        if self.platforms.len() > MAX_PLATFORMS {
            problem(
                "platforms",
                format!(
                    "{} platforms; at most {MAX_PLATFORMS}",
                    self.platforms.len()
                ),
            );
        }
        let platforms = PlatformFilter::parse(&self.platforms)
            .map_err(|(i, e)| problem(&format!("platforms[{i}]"), e))
            .ok()
            .flatten();
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

/// A rule that visibly maps several source repositories onto one destination repository (with
/// `prune`, each would remove the other's tags): a constant `replace` for a `match` that is not
/// a plain name, or two rules with the same constant `replace`. The index of the rule and why.
fn mapping_merges_repositories(rules: &[RepositoryRename]) -> Option<(usize, String)> {
    let mut constants: Vec<(&str, &str)> = Vec::new();
    for (j, rule) in rules.iter().enumerate() {
        if rule.replace.contains('$') {
            continue;
        }
        if regex::escape(&rule.pattern) != rule.pattern {
            return Some((j, format!(
                "maps every repository matching {:?} onto the one repository {:?}: with prune each would remove the others' tags; use groups ($1) or one rule per repository",
                rule.pattern, rule.replace
            )));
        }
        if let Some((earlier, _)) = constants.iter().find(|(_, r)| *r == rule.replace) {
            return Some((j, format!(
                "maps {:?} onto {:?}, as a rule before it maps {earlier:?}: with prune each would remove the other's tags",
                rule.pattern, rule.replace
            )));
        }
        constants.push((&rule.pattern, &rule.replace));
    }
    None
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
