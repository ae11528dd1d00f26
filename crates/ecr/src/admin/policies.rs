//! A repository's lifecycle and repository policies: read (absent is `None`), written or
//! deleted, and compared as JSON; a repository policy ECR refused, remembered on the target.

use super::EcrAdmin;
use crate::error::{Error, Result};

impl EcrAdmin {
    /// The repository's lifecycle policy text, `None` when it has none.
    pub(super) async fn lifecycle_policy(&self, repository: &str) -> Result<Option<String>> {
        match self
            .client
            .get_lifecycle_policy()
            .registry_id(&self.registry.account_id)
            .repository_name(repository)
            .send()
            .await
        {
            Ok(out) => Ok(out.lifecycle_policy_text().map(str::to_string)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_lifecycle_policy_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::api(
                "ecr:GetLifecyclePolicy",
                self.resource(repository),
                &e,
            )),
        }
    }

    /// The repository's policy text, `None` when it has none.
    pub(super) async fn repository_policy(&self, repository: &str) -> Result<Option<String>> {
        match self
            .client
            .get_repository_policy()
            .registry_id(&self.registry.account_id)
            .repository_name(repository)
            .send()
            .await
        {
            Ok(out) => Ok(out.policy_text().map(str::to_string)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_policy_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::api(
                "ecr:GetRepositoryPolicy",
                self.resource(repository),
                &e,
            )),
        }
    }

    /// Puts `text` as the repository's lifecycle policy, or deletes it (`None`).
    pub(super) async fn set_lifecycle_policy(
        &self,
        repository: &str,
        text: Option<&str>,
    ) -> Result<()> {
        let id = &self.registry.account_id;
        let resource = self.resource(repository);
        match text {
            Some(text) => self
                .client
                .put_lifecycle_policy()
                .registry_id(id)
                .repository_name(repository)
                .lifecycle_policy_text(text)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api("ecr:PutLifecyclePolicy", resource, &e)),
            None => self
                .client
                .delete_lifecycle_policy()
                .registry_id(id)
                .repository_name(repository)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api("ecr:DeleteLifecyclePolicy", resource, &e)),
        }
    }

    /// Sets `text` as the repository's policy, or deletes it (`None`).
    pub(super) async fn set_repository_policy(
        &self,
        repository: &str,
        text: Option<&str>,
    ) -> Result<()> {
        let id = &self.registry.account_id;
        let resource = self.resource(repository);
        match text {
            Some(text) => self
                .client
                .set_repository_policy()
                .registry_id(id)
                .repository_name(repository)
                .policy_text(text)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api("ecr:SetRepositoryPolicy", resource, &e)),
            None => self
                .client
                .delete_repository_policy()
                .registry_id(id)
                .repository_name(repository)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::api("ecr:DeleteRepositoryPolicy", resource, &e)),
        }
    }
}

/// Whether two policies (JSON text, or none) say the same: compared as JSON values, so
/// spacing and key order do not count (text that is no JSON is compared as text).
pub(super) fn json_equal(a: &Option<String>, b: &Option<String>) -> bool {
    let parse = |s: &Option<String>| {
        s.as_deref().map(|t| {
            serde_json::from_str::<serde_json::Value>(t)
                .unwrap_or(serde_json::Value::String(t.to_string()))
        })
    };
    parse(a) == parse(b)
}

/// A policy said briefly for a change: `none`, or its size.
pub(super) fn short(policy: &Option<String>) -> String {
    match policy {
        None => "none".into(),
        Some(text) => format!("{} bytes of JSON", text.len()),
    }
}

/// The resource tag on a target repository that remembers the repository policy ECR last
/// refused there (`SetRepositoryPolicy` answering `InvalidParameterException`, such as
/// "Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Principal not found'" for a
/// principal IAM does not have): its value is `refusal_key` of that put and ECR's message.
///
/// Why remembered, and why there: nothing read-only says ECR would refuse a policy (whether a
/// principal exists is IAM's knowledge in the target account, which the replicator may not
/// read), so without memory every run would count the same refused policy as a change and give
/// the repository a child execution, forever. The functions keep no state between runs (the
/// work bucket's objects expire), so the memory lives with what it describes: on the target
/// repository, written with the `ecr:TagResource` the settings copy already has, gone with the
/// repository, visible to an operator. It names the exact put (the policy wanted and the policy
/// the target held), so a change of either is tried again; removing the tag retries the same
/// policy (after creating the missing principal). The tag is never compared or copied as one
/// of the repository's own tags.
pub const REFUSED_POLICY_TAG: &str = "ecr-replicator:refused-repository-policy";

/// ECR's longest tag value.
const TAG_VALUE_CHARS: usize = 256;

/// What identifies one put of a repository policy: the sha256 (hex) of the policy wanted and
/// the policy the target held, each as canonical JSON (keys sorted; spacing and key order do
/// not count) or `none`.
pub(super) fn refusal_key(current: &Option<String>, desired: &Option<String>) -> String {
    let canonical = |policy: &Option<String>| match policy {
        None => "none".to_string(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(value) => canonical_json(&value),
            Err(_) => text.clone(),
        },
    };
    let both = format!("{}\n{}", canonical(desired), canonical(current));
    oci::Digest::of(both.as_bytes()).hex().to_string()
}

/// JSON with every object's keys sorted, whatever map order serde_json was built with.
fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// The tag value remembering a refusal: the put's key, then ECR's message as a tag value may
/// hold it (letters, digits, spaces and `_ . : / = + - @`; anything else a space), within
/// ECR's 256 characters.
pub(super) fn refusal_tag_value(key: &str, message: &str) -> String {
    let allowed = |c: char| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c);
    let cleaned: String = message
        .chars()
        .map(|c| if allowed(c) { c } else { ' ' })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    let value = format!("{key} {cleaned}");
    value
        .chars()
        .take(TAG_VALUE_CHARS)
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// A remembered refusal: the put's key and ECR's message (as the tag holds it).
pub(super) fn parse_refusal(value: &str) -> (&str, &str) {
    value.split_once(' ').unwrap_or((value, ""))
}

impl EcrAdmin {
    /// Remembers on the repository that ECR refused a policy put (`REFUSED_POLICY_TAG`).
    pub(super) async fn remember_refusal(&self, repository: &str, value: &str) -> Result<()> {
        let tag = aws_sdk_ecr::types::Tag::builder()
            .key(REFUSED_POLICY_TAG)
            .value(value)
            .build()
            .map_err(|e| Error::Api {
                code: None,
                operation: "ecr:TagResource",
                resource: self.resource(repository),
                message: e.to_string(),
                retryable: false,
            })?;
        self.client
            .tag_resource()
            .resource_arn(self.registry.repository_arn(repository))
            .tags(tag)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::api("ecr:TagResource", self.resource(repository), &e))
    }

    /// Forgets a remembered refusal (the policy was put, or none is wanted any more).
    pub(super) async fn forget_refusal(&self, repository: &str) -> Result<()> {
        self.client
            .untag_resource()
            .resource_arn(self.registry.repository_arn(repository))
            .tag_keys(REFUSED_POLICY_TAG)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::api("ecr:UntagResource", self.resource(repository), &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_exact_put_and_fits_a_tag_value() {
        let a = Some(
            r#"{"Version":"2012-10-17","Statement":[{"Sid":"x","Effect":"Allow"}]}"#.to_string(),
        );
        let same = Some(
            r#"{ "Statement": [{"Effect":"Allow","Sid":"x"}], "Version":"2012-10-17" }"#
                .to_string(),
        );
        let other = Some(r#"{"Version":"2012-10-17","Statement":[]}"#.to_string());
        assert_eq!(refusal_key(&None, &a), refusal_key(&None, &same));
        assert_ne!(refusal_key(&None, &a), refusal_key(&None, &other));
        assert_ne!(refusal_key(&None, &a), refusal_key(&other, &a));
        let message =
            "Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Principal not found'";
        let value = refusal_tag_value(&refusal_key(&None, &a), message);
        let (key, said) = parse_refusal(&value);
        assert_eq!(key, refusal_key(&None, &a));
        assert_eq!(
            said,
            "Invalid parameter at PolicyText failed to satisfy constraint: Principal not found"
        );
        let long = refusal_tag_value(key, &"x".repeat(1000));
        assert_eq!(long.chars().count(), TAG_VALUE_CHARS);
    }
}
