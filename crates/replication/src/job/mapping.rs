//! Repository names in a destination: `repositoryMapping` rules (a regex and a template, the
//! first match winning) and `repositoryPrefix`, and the checks the rules get when the job is
//! validated.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Destination;
use crate::error::{Error, Result};

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
    pub(super) fn problem(&self, prefix: &str) -> Option<(&'static str, String)> {
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
    /// How reports, metrics and each image's task name this destination: its registry, or
    /// `oci:` and its layout.
    pub fn target_name(&self) -> String {
        match &self.layout {
            Some(layout) => format!("oci:{layout}"),
            None => self.registry.clone(),
        }
    }

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

/// A rule that visibly maps several source repositories onto one destination repository (with
/// `prune`, each would remove the other's tags): a constant `replace` for a `match` that is not
/// a plain name, or two rules with the same constant `replace`. The index of the rule and why.
pub(super) fn mapping_merges_repositories(rules: &[RepositoryRename]) -> Option<(usize, String)> {
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
