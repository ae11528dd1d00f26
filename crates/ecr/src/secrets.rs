//! Registry credentials kept in AWS Secrets Manager, for registries that are not ECR (Docker
//! Hub, GHCR, Quay, GitLab, Artifactory, Harbor). The secret holds
//! `{"username": ..., "accessToken": ...}`, the shape ECR pull-through cache rules use (ECR user
//! guide, "Storing your upstream repository credentials in an AWS Secrets Manager secret"), so
//! the same secrets serve both. A secret's value never reaches a log or an error message.

use tokio::sync::Mutex;

use crate::aws::{sdk_config, AwsSettings};
use crate::error::{Error, Result};

/// A Secrets Manager secret ARN:
/// `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME` (the name may end with the
/// six-character suffix Secrets Manager adds).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretArn {
    /// The ARN text.
    pub arn: String,
    /// The secret's region (where the client goes).
    pub region: String,
}

impl SecretArn {
    /// Parses a secret ARN; the error says what is wrong with it.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = text.splitn(7, ':').collect();
        let shape = "must be arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME";
        let region = crate::aws::arn_region(&parts, "secretsmanager", shape)?;
        if parts.len() != 7 || parts[5] != "secret" {
            return Err(shape.to_string());
        }
        let name = parts[6];
        if name.is_empty()
            || name.len() > 512
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
        {
            return Err(format!(
                "{shape} (a secret name is 1 to 512 letters, digits and /_+=.@-)"
            ));
        }
        Ok(SecretArn {
            arn: text.to_string(),
            region: region.to_string(),
        })
    }
}

/// Hands out the credential a secret holds, read once and read again when the registry refuses
/// it (the secret was rotated).
pub struct SecretCredentialSource {
    client: aws_sdk_secretsmanager::Client,
    secret: SecretArn,
    cached: Mutex<Option<oci::Credential>>,
}

/// The secret's JSON: what ECR pull-through cache rules read.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrySecret {
    username: String,
    access_token: String,
}

impl SecretCredentialSource {
    /// A source for `secret`, read with the functions' own identity in the secret's region.
    pub async fn new(settings: &AwsSettings, secret: SecretArn) -> Self {
        let config = sdk_config(settings, &secret.region, None).await;
        SecretCredentialSource {
            client: aws_sdk_secretsmanager::Client::new(&config),
            secret,
            cached: Mutex::new(None),
        }
    }

    /// The credential, read from Secrets Manager the first time.
    pub async fn credential(&self) -> Result<oci::Credential> {
        let mut cached = self.cached.lock().await;
        if let Some(credential) = cached.as_ref() {
            return Ok(credential.clone());
        }
        let credential = self.read().await?;
        *cached = Some(credential.clone());
        Ok(credential)
    }

    /// Reads the secret again (after the registry refused what it held) and keeps the answer.
    pub async fn reread(&self) -> Result<oci::Credential> {
        let credential = self.read().await?;
        *self.cached.lock().await = Some(credential.clone());
        Ok(credential)
    }

    async fn read(&self) -> Result<oci::Credential> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret.arn)
            .send()
            .await
            .map_err(|e| {
                Error::api("secretsmanager:GetSecretValue", self.secret.arn.clone(), &e)
            })?;
        let bad = |reason: &str| Error::BadSecret {
            secret: self.secret.arn.clone(),
            reason: reason.to_string(),
        };
        let text = out
            .secret_string()
            .ok_or_else(|| bad("it holds binary data, not a JSON string"))?;
        // serde's message could quote the value: only say which shape was expected.
        let parsed: RegistrySecret = serde_json::from_str(text).map_err(|_| {
            bad("it is not JSON of the form {\"username\": ..., \"accessToken\": ...}")
        })?;
        if parsed.username.is_empty() || parsed.access_token.is_empty() {
            return Err(bad("its username or accessToken is empty"));
        }
        Ok(oci::Credential::Basic {
            username: parsed.username,
            password: parsed.access_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_arns_are_parsed_and_anything_else_refused() {
        let ok = SecretArn::parse(
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:ecr-pullthroughcache/hub-AbC123",
        )
        .unwrap();
        assert_eq!(ok.region, "eu-west-1");
        assert!(
            SecretArn::parse("arn:aws-cn:secretsmanager:cn-north-1:111111111111:secret:x").is_ok()
        );
        for bad in [
            "",
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:",
            "arn:aws:secretsmanager:eu-west-1:1111:secret:x",
            "arn:aws:ssm:eu-west-1:111111111111:secret:x",
            "arn:aws:secretsmanager:eu-west-1:111111111111:parameter:x",
            "arn:aws:secretsmanager:EU_WEST:111111111111:secret:x",
            "arn:aws:secretsmanager:eu-west-1:111111111111:secret:a b",
            "arn:evil:secretsmanager:eu-west-1:111111111111:secret:x",
        ] {
            assert!(SecretArn::parse(bad).is_err(), "{bad}");
        }
    }
}
