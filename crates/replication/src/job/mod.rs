//! The execution input (version 1): what to replicate, from where, to where, and how. Parsed with
//! unknown fields rejected and validated with every problem naming its field (`validate`:
//! the checks, one function per rule group); repository names mapped into a destination
//! (`mapping`: `repositoryMapping` rules, `repositoryPrefix`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldProblem, Result};
pub use crate::filter::TagFilter;
use crate::filter::{RepositoryMatcher, TagMatcher};
use crate::keys::SignaturePolicy;
use crate::platforms::{PlatformFilter, MAX_PLATFORMS};
pub use crate::trust::SignerIdentity;
use crate::trust::{TrustPolicy, MAX_SIGNATURE_IDENTITIES, MAX_SIGNATURE_KEYS};

mod layout;
mod mapping;
mod validate;

pub use layout::{LayoutLocation, LayoutSide};

pub use mapping::RepositoryRename;

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
    /// Empty (or left out) when the source is a `layout`.
    // Always written: the state machine reads `$.job.source.registry` (a path it lacks fails
    // the execution), empty for a layout.
    #[serde(default)]
    pub registry: String,
    /// An OCI image layout to import from instead of a registry (the air-gap transfer's far
    /// side): `s3://BUCKET/PREFIX`, or in the CLI also an absolute directory. Its signed
    /// transfer statement is verified first when a trusted transfer key is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    /// (With `layout`) the digest of the layout's statement file (`sha256:<hex>`, what the export
    /// printed): any other statement is refused. The state machine's first step sets it to the
    /// statement it verified, so a whole run imports one statement (a pin is still refused when
    /// older than the newest statement imported from the layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_digest: Option<String>,
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
    /// ECR registry host or any OCI registry host. Empty (left out) when the destination is a
    /// `layout`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registry: String,
    /// An OCI image layout to export into instead of a registry (the air-gap transfer's near
    /// side): `s3://BUCKET/PREFIX`, or in the CLI also an absolute directory. Images are named
    /// `REPOSITORY:TAG` in its `index.json`; the run signs a transfer statement of the layout
    /// with the receipt key. A layout is the job's only destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
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
}
