//! Where a deployment lets its functions go. The execution input is untrusted: whoever may start
//! an execution could otherwise name any registry as a destination (and import anything into
//! the target accounts with their roles) or as a source (and exfiltrate through it). The CDK app
//! writes the deployment's allowlist into every function's environment
//! (`ECR_REPLICATOR_ALLOWED_REGISTRIES`); the functions refuse a job naming anything else, with
//! the field named, before any request. The CLI applies one only when given one
//! (`--allowlist FILE`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::error::{Error, FieldProblem, Result};
use crate::filter::RepositoryMatcher;
use crate::job::{canonical_registry, Job};
use crate::keys::SignaturePolicy;
use crate::trust::{policy_name_problem, PolicySource, TrustPolicy};

pub mod layouts;
pub use layouts::AllowedLayout;

/// The environment variable the functions read the allowlist from (JSON).
pub const ALLOWLIST_VARIABLE: &str = "ECR_REPLICATOR_ALLOWED_REGISTRIES";

/// The registries, roles and plain-HTTP exceptions a deployment allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Allowlist {
    /// Registries a job may read from.
    #[serde(default)]
    pub sources: Vec<AllowedRegistry>,
    /// Registries a job may write to.
    #[serde(default)]
    pub destinations: Vec<AllowedRegistry>,
    /// Registries a job may reach over plain HTTP (`"insecure": true`): `host:port`, or
    /// `host:*` for any port of that host. A CDK deployment lists none.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// The deployment's trust policies by name: a job's `requireSignature` names one
    /// (`{"policy": "release"}`), a destination may require one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trust_policies: BTreeMap<String, TrustPolicy>,
    /// Let a job write its own keys and identities in `requireSignature` (default false); such
    /// runs write no receipts.
    #[serde(default)]
    pub allow_job_trust_policies: bool,
    /// OCI image layouts jobs may export into or import from (`layouts::AllowedLayout`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layouts: Vec<AllowedLayout>,
}

/// One allowed registry and the roles a job may assume to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRegistry {
    /// `host[:port]`, or `host:*` for any port of that host.
    pub registry: String,
    /// Role ARNs a job may name for this registry (none: the job may name no role; the
    /// functions' own role is used).
    #[serde(default)]
    pub role_arns: Vec<String>,
    /// Secrets Manager secrets a job may name (`credentialArn`) for this registry: its
    /// credentials are sent to it and nowhere else (none: the job may name no secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_arns: Vec<String>,
    /// (Destinations) the repository names a job may write here, after its prefix and mapping:
    /// globs (`*` within one path segment, `**` across them); none: any name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// (Destinations) a job may remove tags here (`"prune": true`); default false.
    #[serde(default)]
    pub prune: bool,
    /// (Destinations) the `repositorySettings` modes a job may use here, and
    /// `copyRepositoryPolicy` to let it copy repository policies; none: `copy`, `create` and
    /// `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_modes: Option<Vec<String>>,
    /// (Destinations) the trust policy every image written here must pass, whether or not the
    /// job asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<String>,
}

/// `settingsModes` a destination has when its entry names none.
pub const DEFAULT_SETTINGS_MODES: [&str; 3] = ["copy", "create", "none"];
/// What `settingsModes` may list.
const SETTINGS_MODE_NAMES: [&str; 5] = ["copy", "create", "mirror", "none", "copyRepositoryPolicy"];
/// Repository globs one destination entry may list at most.
const MAX_SCOPE_GLOBS: usize = 50;

impl AllowedRegistry {
    /// Whether the destination's `settingsModes` allows `mode` (`copy`, `mirror`,
    /// `copyRepositoryPolicy`, ...).
    pub fn allows_settings(&self, mode: &str) -> bool {
        match &self.settings_modes {
            Some(modes) => modes.iter().any(|m| m == mode),
            None => DEFAULT_SETTINGS_MODES.contains(&mode),
        }
    }

    /// Why the destination repository `name` is outside this entry's `repositories`, or `None`.
    pub fn scope_problem(&self, name: &str) -> Option<String> {
        if self.repositories.is_empty() {
            return None;
        }
        let matcher = RepositoryMatcher::new(&self.repositories, &[]).ok()?;
        (!matcher.matches(name)).then(|| {
            format!(
                "{name:?} is outside the repositories this deployment lets jobs write in {} ({})",
                self.registry,
                self.repositories.join(", ")
            )
        })
    }
}

impl Allowlist {
    /// Reads an allowlist (JSON); a problem names `what` (the variable or the file).
    pub fn from_json(text: &str, what: &str) -> Result<Self> {
        let allowlist: Allowlist = serde_json::from_str(text).map_err(|e| Error::InvalidInput {
            problems: vec![FieldProblem {
                field: what.to_string(),
                problem: format!("not an allowlist ({{\"sources\": [...], \"destinations\": [...], \"insecure\": [...]}}): {e}"),
            }],
        })?;
        allowlist.validate(what)?;
        Ok(allowlist)
    }

    /// Checks the policies and scopes; each problem names its field under `what`.
    fn validate(&self, what: &str) -> Result<()> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, text: String| {
            problems.push(FieldProblem {
                field: format!("{what}: {field}"),
                problem: text,
            })
        };
        for (name, policy) in &self.trust_policies {
            let at = format!("trustPolicies.{name}");
            if let Some(why) = policy_name_problem(name) {
                problem(&at, why);
            }
            policy.compile(&at, PolicySource::Job, &mut problem);
        }
        for (i, entry) in self.sources.iter().enumerate() {
            let destination_only = !entry.repositories.is_empty()
                || entry.prune
                || entry.settings_modes.is_some()
                || entry.require_signature.is_some();
            if destination_only {
                problem(
                    &format!("sources[{i}]"),
                    "repositories, prune, settingsModes and requireSignature apply to destinations only".into(),
                );
            }
        }
        for (i, entry) in self.destinations.iter().enumerate() {
            let at = format!("destinations[{i}]");
            if entry.repositories.len() > MAX_SCOPE_GLOBS {
                problem(
                    &format!("{at}.repositories"),
                    format!(
                        "{} globs; at most {MAX_SCOPE_GLOBS}",
                        entry.repositories.len()
                    ),
                );
            }
            if let Err((field, e)) = RepositoryMatcher::new(&entry.repositories, &[]) {
                problem(
                    &format!("{at}.repositories{}", field.trim_start_matches("include")),
                    e,
                );
            }
            for (j, mode) in entry.settings_modes.iter().flatten().enumerate() {
                if !SETTINGS_MODE_NAMES.contains(&mode.as_str()) {
                    problem(
                        &format!("{at}.settingsModes[{j}]"),
                        format!(
                            "{mode:?}: give copy, create, mirror, none or copyRepositoryPolicy"
                        ),
                    );
                }
            }
            if let Some(name) = &entry.require_signature {
                if !self.trust_policies.contains_key(name) {
                    problem(
                        &format!("{at}.requireSignature"),
                        format!("{name:?} is not one of the deployment's trustPolicies"),
                    );
                }
            }
        }
        let policies: Vec<&str> = self.trust_policies.keys().map(String::as_str).collect();
        layouts::validate(&self.layouts, &policies, &mut problem);
        for (side, entries) in [
            ("sources", &self.sources),
            ("destinations", &self.destinations),
        ] {
            for (j, later) in entries.iter().enumerate() {
                if let Some(i) = entries[..j]
                    .iter()
                    .position(|e| registries_overlap(&e.registry, &later.registry))
                {
                    problem(
                        &format!("{side}[{j}].registry"),
                        format!(
                            "{:?} also matches {side}[{i}] ({:?}): one entry per registry, so \
                             its roles, secrets, scope and controls cannot depend on which is read",
                            later.registry, entries[i].registry
                        ),
                    );
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidInput { problems })
        }
    }

    /// The deployment's policy `name`, compiled (its source names it and its digest).
    pub fn trust_policy(&self, name: &str) -> Option<SignaturePolicy> {
        let policy = self.trust_policies.get(name)?;
        let source = PolicySource::Deployment {
            name: name.to_string(),
            digest: policy.canonical_digest(),
        };
        policy.compile(name, source, &mut |_, _| {})
    }

    /// The destination entry that allows `registry`, if any.
    pub fn destination(&self, registry: &str) -> Option<&AllowedRegistry> {
        self.destinations
            .iter()
            .find(|a| host_matches(&a.registry, registry))
    }

    /// The source entry that allows `registry`, if any.
    pub fn source(&self, registry: &str) -> Option<&AllowedRegistry> {
        self.sources
            .iter()
            .find(|a| host_matches(&a.registry, registry))
    }

    /// Refuses a job naming a registry, a role or plain HTTP this allowlist does not allow;
    /// every problem names its field.
    pub fn check(&self, job: &Job) -> Result<()> {
        let mut problems = Vec::new();
        let source = &job.source;
        layouts::check(&self.layouts, job, &mut problems);
        if source.layout.is_none() {
            self.check_one(
                "source",
                &self.sources,
                (
                    &source.registry,
                    source.role_arn.as_deref(),
                    source.credential_arn.as_deref(),
                    source.insecure,
                ),
                &mut problems,
            );
        }
        for (i, d) in job
            .destinations
            .iter()
            .enumerate()
            .filter(|(_, d)| d.layout.is_none())
        {
            self.check_one(
                &format!("destinations[{i}]"),
                &self.destinations,
                (
                    &d.registry,
                    d.role_arn.as_deref(),
                    d.credential_arn.as_deref(),
                    d.insecure,
                ),
                &mut problems,
            );
        }
        self.check_trust(job, &mut problems);
        self.check_scopes(job, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidInput { problems })
        }
    }

    /// A job's `requireSignature` must name one of the deployment's policies, unless the
    /// deployment lets jobs write their own keys and identities.
    fn check_trust(&self, job: &Job, problems: &mut Vec<FieldProblem>) {
        let Some(required) = &job.require_signature else {
            return;
        };
        let mut problem = |field: &str, problem: String| {
            problems.push(FieldProblem {
                field: field.into(),
                problem,
            })
        };
        if required.is_inline() && !self.allow_job_trust_policies {
            let field = if required.public_keys.is_empty() {
                "requireSignature.identities"
            } else {
                "requireSignature.publicKeys"
            };
            problem(field, format!(
                "this deployment does not let a job name its own keys or identities: name one of its trust policies ({{\"policy\": \"...\"}}; it has {})",
                self.policy_names()
            ));
        }
        if let Some(name) = &required.policy {
            if !self.trust_policies.contains_key(name) {
                problem(
                    "requireSignature.policy",
                    format!(
                        "{name:?} is not one of this deployment's trust policies ({})",
                        self.policy_names()
                    ),
                );
            }
        }
    }

    fn policy_names(&self) -> String {
        if self.trust_policies.is_empty() {
            "none".into()
        } else {
            let names: Vec<&str> = self.trust_policies.keys().map(String::as_str).collect();
            names.join(", ")
        }
    }

    /// What a job may do in each destination: prune, settings modes, policy copies, and the
    /// repositories its explicit images would be written to.
    fn check_scopes(&self, job: &Job, problems: &mut Vec<FieldProblem>) {
        let settings = serde_json::to_value(job.repository_settings)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        for (i, d) in job.destinations.iter().enumerate() {
            let Some(entry) = self.destination(&d.registry) else {
                continue;
            };
            let mut problem = |field: &str, text: String| {
                problems.push(FieldProblem {
                    field: field.into(),
                    problem: format!("{text} (destinations[{i}], {})", d.registry),
                })
            };
            if job.prune && !entry.prune {
                problem(
                    "prune",
                    "this deployment does not let jobs remove tags in this destination".into(),
                );
            }
            if !entry.allows_settings(&settings) {
                problem(
                    "repositorySettings",
                    format!("{settings:?} is not a settings mode this deployment allows in this destination"),
                );
            }
            if job.copy_repository_policy && !entry.allows_settings("copyRepositoryPolicy") {
                problem(
                    "copyRepositoryPolicy",
                    "this deployment does not let jobs copy repository policies into this destination".into(),
                );
            }
            for (k, image) in job.images.iter().enumerate() {
                if let Some(why) = entry.scope_problem(&d.target_repository(&image.repository)) {
                    problem(&format!("images[{k}].repository"), why);
                }
            }
        }
    }

    fn check_one(
        &self,
        at: &str,
        allowed: &[AllowedRegistry],
        (registry, role, credential, insecure): (&str, Option<&str>, Option<&str>, bool),
        problems: &mut Vec<FieldProblem>,
    ) {
        let mut problem = |field: &str, text: String| {
            problems.push(FieldProblem {
                field: format!("{at}.{field}"),
                problem: text,
            })
        };
        let kind = if at == "source" {
            "source"
        } else {
            "destination"
        };
        match allowed.iter().find(|a| host_matches(&a.registry, registry)) {
            None => {
                let names: Vec<&str> = allowed.iter().map(|a| a.registry.as_str()).collect();
                problem(
                    "registry",
                    format!(
                        "{registry:?} is not a {kind} this deployment allows ({}); add it to the deployment's configuration to replicate there",
                        if names.is_empty() { "it allows none".to_string() } else { names.join(", ") }
                    ),
                );
            }
            Some(entry) => {
                if let Some(role) = role.filter(|r| !entry.role_arns.iter().any(|a| a == r)) {
                    problem(
                        "roleArn",
                        format!("{role:?} is not a role this deployment allows for {registry}"),
                    );
                }
                if let Some(secret) =
                    credential.filter(|c| !entry.credential_arns.iter().any(|a| a == c))
                {
                    problem(
                        "credentialArn",
                        format!("{secret:?} is not a secret this deployment allows for {registry} (a registry's secret goes to that registry only)"),
                    );
                }
            }
        }
        if insecure && !self.insecure.iter().any(|h| host_matches(h, registry)) {
            problem(
                "insecure",
                format!("plain HTTP to {registry} is not allowed by this deployment (only its own configuration can allow it)"),
            );
        }
    }
}

/// Whether two entries' patterns can match one registry (`host:*` and `host:5000`, or the same
/// registry spelt twice).
fn registries_overlap(a: &str, b: &str) -> bool {
    let wildcard = |p: &str| canonical_registry(p).strip_suffix(":*").map(str::to_string);
    match (wildcard(a), wildcard(b)) {
        (Some(x), Some(y)) => x == y,
        (Some(_), None) => host_matches(a, b),
        (None, Some(_)) => host_matches(b, a),
        (None, None) => canonical_registry(a) == canonical_registry(b),
    }
}

/// Whether `host` is allowed by `pattern`: the same `host[:port]`, or `name:*` for any port.
/// Docker Hub's names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one registry.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (canonical_registry(pattern), canonical_registry(host));
    match pattern.strip_suffix(":*") {
        Some(name) => host
            .rsplit_once(':')
            .is_some_and(|(h, port)| h == name && port.parse::<u16>().is_ok()),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_entries_for_one_registry_are_refused_naming_the_later() {
        for (first, second) in [
            ("registry.example:*", "registry.example:5000"),
            ("registry.example:5000", "registry.example:*"),
            ("docker.io", "registry-1.docker.io"),
            ("a.example:*", "a.example:*"),
        ] {
            let text = format!(
                r#"{{"destinations": [{{"registry": "{first}"}}, {{"registry": "{second}", "prune": true}}]}}"#
            );
            let err = Allowlist::from_json(&text, "allowlist")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("destinations[1].registry"),
                "{first} {second}: {err}"
            );
        }
        let distinct = r#"{"sources": [{"registry": "a.example:5000"}, {"registry": "a.example:5001"}, {"registry": "b.example:*"}]}"#;
        Allowlist::from_json(distinct, "allowlist").unwrap();
    }

    #[test]
    fn port_patterns_match_ports_of_that_host_only() {
        assert!(host_matches("127.0.0.1:*", "127.0.0.1:5000"));
        assert!(!host_matches("127.0.0.1:*", "127.0.0.2:5000"));
        assert!(!host_matches("127.0.0.1:*", "127.0.0.1"));
        assert!(!host_matches("127.0.0.1:*", "127.0.0.1:x"));
        assert!(host_matches("r.io", "r.io"));
        assert!(!host_matches("r.io", "r.io:443"));
        assert!(!host_matches("r.io", "evil-r.io"));
        assert!(host_matches("registry-1.docker.io", "docker.io"));
        assert!(host_matches("docker.io", "index.docker.io"));
        assert!(!host_matches("docker.io", "evil.docker.io"));
    }
}
