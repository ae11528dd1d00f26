//! Where a deployment lets its functions go. The execution input is untrusted: whoever may start
//! an execution could otherwise name any registry as a destination (and import anything into
//! the target accounts with their roles) or as a source (and exfiltrate through it). The CDK app
//! writes the deployment's allowlist into every function's environment
//! (`ECR_REPLICATOR_ALLOWED_REGISTRIES`); the functions refuse a job naming anything else, with
//! the field named, before any request. The CLI applies one only when given one
//! (`--allowlist FILE`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldProblem, Result};
use crate::job::{canonical_registry, Job};

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
}

impl Allowlist {
    /// Reads an allowlist (JSON); a problem names `what` (the variable or the file).
    pub fn from_json(text: &str, what: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::InvalidInput {
            problems: vec![FieldProblem {
                field: what.to_string(),
                problem: format!("not an allowlist ({{\"sources\": [...], \"destinations\": [...], \"insecure\": [...]}}): {e}"),
            }],
        })
    }

    /// Refuses a job naming a registry, a role or plain HTTP this allowlist does not allow;
    /// every problem names its field.
    pub fn check(&self, job: &Job) -> Result<()> {
        let mut problems = Vec::new();
        let source = &job.source;
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
        for (i, d) in job.destinations.iter().enumerate() {
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
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidInput { problems })
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
