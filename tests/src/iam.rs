//! IAM as the synthesized CloudFormation templates grant it, checked against what the functions
//! actually did in a run: every AWS API call (recorded by the invocation proxy in front of moto)
//! and every registry request (recorded by the ECR data planes, mapped to the ECR action it
//! needs), each with the identity that made it: the function's own role, or the role it assumed.
//!
//! Checked: Allow statements' actions and resources (wildcards as IAM matches them). Not checked:
//! conditions (external IDs, `kms:ViaService`), trust policies, explicit denies (there are none),
//! service control policies and resource policies.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde_json::Value;

/// One Allow statement: its actions and resources, intrinsics resolved.
#[derive(Debug, Clone)]
pub struct Statement {
    /// `Sid`, if any.
    pub sid: String,
    /// Actions, possibly with wildcards.
    pub actions: Vec<String>,
    /// Resource ARNs, possibly with wildcards.
    pub resources: Vec<String>,
}

/// Something a function did, as IAM sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Performed {
    /// The function (its step name).
    pub function: String,
    /// The assumed role's ARN, or `None`: the function's own role.
    pub assumed_role: Option<String>,
    /// e.g. `ecr:PutImage`.
    pub action: String,
    /// The resource ARN (`*` for actions without one).
    pub resource: String,
}

impl Performed {
    /// What the AWS API calls `calls` did, one entry per resource each named.
    pub fn of(calls: impl IntoIterator<Item = crate::sfn::ApiCall>) -> BTreeSet<Performed> {
        calls
            .into_iter()
            .flat_map(|c| {
                c.resources.into_iter().map(move |resource| Performed {
                    function: c.function.clone(),
                    assumed_role: c.assumed_role.clone(),
                    action: c.action.clone(),
                    resource,
                })
            })
            .collect()
    }
}

/// The statements of every role of a deployment.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// A function's own role's statements, by step name.
    pub by_function: HashMap<String, Vec<Statement>>,
    /// A named role's statements, by its ARN (target and source roles).
    pub by_role: HashMap<String, Vec<Statement>>,
}

impl Policies {
    /// Reads every `*.template.json` of a `cdk synth` output: the workflow stack (in
    /// `workflow_account`) and the target/source stacks (their account from the stack name).
    pub fn load(cdk_out: &Path, workflow_account: &str) -> Self {
        let mut policies = Policies::default();
        for entry in std::fs::read_dir(cdk_out).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let Some(stack) = name.strip_suffix(".template.json") else {
                continue;
            };
            let account = stack
                .trim_start_matches("EcrReplicatorTarget")
                .trim_start_matches("EcrReplicatorSource");
            let account = if account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()) {
                account.to_string()
            } else {
                workflow_account.to_string()
            };
            let template: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            policies.add_stack(&template, &account);
        }
        policies
    }

    fn add_stack(&mut self, template: &Value, account: &str) {
        let resources = template["Resources"].as_object().unwrap();
        // A bucket's ARN is the local stand-in's: the deployment's work bucket is moto's here.
        let arns: HashMap<String, String> = resources
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::S3::Bucket")
            .map(|(logical, _)| {
                (
                    logical.clone(),
                    format!("arn:aws:s3:::{}", crate::sfn::WORK_BUCKET),
                )
            })
            .collect();
        let context = Context { account, arns };
        let mut by_role: HashMap<String, Vec<Statement>> = HashMap::new();
        for (_, r) in resources
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::IAM::Policy")
        {
            let statements = statements(&r["Properties"]["PolicyDocument"], &context);
            for role in r["Properties"]["Roles"].as_array().into_iter().flatten() {
                let logical = role["Ref"].as_str().unwrap_or_default().to_string();
                by_role
                    .entry(logical)
                    .or_default()
                    .extend(statements.iter().cloned());
            }
        }
        for (logical, r) in resources
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::IAM::Role")
        {
            if let Some(name) = r["Properties"]["RoleName"].as_str() {
                let arn = format!("arn:aws:iam::{account}:role/{name}");
                self.by_role
                    .insert(arn, by_role.get(logical).cloned().unwrap_or_default());
            }
        }
        for (_, r) in resources
            .iter()
            .filter(|(_, r)| r["Type"] == "AWS::Lambda::Function")
        {
            let Some(step) = r["Properties"]["Description"]
                .as_str()
                .and_then(|d| d.strip_prefix("ecr-replicator step "))
            else {
                continue;
            };
            let role = r["Properties"]["Role"]["Fn::GetAtt"][0]
                .as_str()
                .unwrap_or_default();
            self.by_function.insert(
                step.to_string(),
                by_role.get(role).cloned().unwrap_or_default(),
            );
        }
    }

    /// What of `performed` the identity that did it was not granted, one line each.
    pub fn violations(&self, performed: &BTreeSet<Performed>) -> Vec<String> {
        performed
            .iter()
            .filter_map(|p| {
                let (who, statements) = match &p.assumed_role {
                    Some(role) => (role.clone(), self.by_role.get(role)),
                    None => (
                        format!("the {} function's role", p.function),
                        self.by_function.get(&p.function),
                    ),
                };
                let granted = statements
                    .is_some_and(|s| s.iter().any(|st| st.allows(&p.action, &p.resource)));
                (!granted).then(|| {
                    format!(
                        "{} (in {}) did {} on {}: not granted",
                        who, p.function, p.action, p.resource
                    )
                })
            })
            .collect()
    }

    /// The same policies without the statement `sid` of the role `role_arn` (to show the check
    /// fails when a statement is missing).
    pub fn without(&self, role_arn: &str, sid: &str) -> Self {
        let mut copy = self.clone();
        if let Some(statements) = copy.by_role.get_mut(role_arn) {
            statements.retain(|s| s.sid != sid);
        }
        copy
    }
}

impl Statement {
    fn allows(&self, action: &str, resource: &str) -> bool {
        self.actions
            .iter()
            .any(|a| wildcard(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
            && self.resources.iter().any(|r| wildcard(r, resource))
    }
}

/// What a template's intrinsics resolve to: the stack's account, resources' ARNs by logical id.
struct Context<'a> {
    account: &'a str,
    arns: HashMap<String, String>,
}

fn statements(document: &Value, context: &Context) -> Vec<Statement> {
    document["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Effect"] == "Allow")
        .map(|s| Statement {
            sid: s["Sid"].as_str().unwrap_or_default().to_string(),
            actions: list(&s["Action"], context),
            resources: list(&s["Resource"], context),
        })
        .collect()
}

fn list(value: &Value, context: &Context) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(|v| resolve(v, context)).collect(),
        other => vec![resolve(other, context)],
    }
}

/// A template value as a string: `Fn::Join` joined, pseudo parameters and known resources'
/// `Arn` attributes filled in; anything else as a placeholder no ARN matches.
fn resolve(value: &Value, context: &Context) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(o) if o.contains_key("Fn::Join") => {
            let join = &o["Fn::Join"];
            let separator = join[0].as_str().unwrap_or_default();
            join[1]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| resolve(v, context))
                .collect::<Vec<_>>()
                .join(separator)
        }
        Value::Object(o) if o.contains_key("Fn::GetAtt") => {
            let attribute = &o["Fn::GetAtt"];
            match (attribute[0].as_str(), attribute[1].as_str()) {
                (Some(logical), Some("Arn")) => context
                    .arns
                    .get(logical)
                    .cloned()
                    .unwrap_or_else(|| "<unresolved>".into()),
                _ => "<unresolved>".into(),
            }
        }
        Value::Object(o) => match o.get("Ref").and_then(Value::as_str) {
            Some("AWS::Partition") => "aws".into(),
            Some("AWS::AccountId") => context.account.into(),
            Some("AWS::URLSuffix") => "amazonaws.com".into(),
            _ => "<unresolved>".into(),
        },
        _ => "<unresolved>".into(),
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` one character.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An ECR host's account and region.
pub fn ecr_host(host: &str) -> (String, String) {
    let parts: Vec<&str> = host.split('.').collect();
    (parts[0].to_string(), parts[3].to_string())
}

/// The repository ARN.
pub fn repository_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:ecr:{region}:{account}:repository/{name}")
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard(
            "arn:aws:ecr:*:1:repository/mirror/*",
            "arn:aws:ecr:eu-west-1:1:repository/mirror/a/b"
        ));
        assert!(!wildcard(
            "arn:aws:ecr:*:1:repository/mirror/*",
            "arn:aws:ecr:eu-west-1:1:repository/other"
        ));
        assert!(wildcard("ecr:*", "ecr:putimage"));
        assert!(wildcard("*", "anything"));
        assert!(!wildcard("ecr:Get?", "ecr:Get"));
    }
}
