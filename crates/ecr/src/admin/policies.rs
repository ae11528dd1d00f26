//! A repository's lifecycle and repository policies: read (absent is `None`), written or
//! deleted, and compared as JSON.

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
