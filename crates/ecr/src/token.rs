//! Registry credentials from `ecr:GetAuthorizationToken`, cached and refreshed before expiry.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// Refresh a token this long before it expires (tokens live 12 hours).
const REFRESH_MARGIN: Duration = Duration::from_secs(15 * 60);
/// How long to trust a token whose reported expiry is already past (a skewed clock, or moto's
/// fixed 2015 date), so the cache never loops fetching tokens that look expired.
const FALLBACK_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Hands out Basic credentials for one ECR registry.
pub struct EcrTokenSource {
    client: aws_sdk_ecr::Client,
    registry: String,
    cached: Mutex<Option<(oci::Credential, SystemTime)>>,
}

impl EcrTokenSource {
    /// A token source for `registry` (its host, for messages) using an ECR client of its
    /// account and region.
    pub fn new(client: aws_sdk_ecr::Client, registry: &str) -> Self {
        EcrTokenSource {
            client,
            registry: registry.to_string(),
            cached: Mutex::new(None),
        }
    }

    /// A valid credential, fetching a new token when the cached one is near expiry.
    pub async fn credential(&self) -> Result<oci::Credential> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, valid_until)) = cached.as_ref() {
            if SystemTime::now() + REFRESH_MARGIN < *valid_until {
                return Ok(credential.clone());
            }
        }
        let (credential, valid_until) = self.fetch().await?;
        *cached = Some((credential.clone(), valid_until));
        Ok(credential)
    }

    /// Forgets the cached token (after the registry refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(oci::Credential, SystemTime)> {
        let out = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| Error::api("ecr:GetAuthorizationToken", self.registry.clone(), &e))?;
        let bad = |reason: &str| Error::BadToken {
            registry: self.registry.clone(),
            reason: reason.to_string(),
        };
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| bad("no authorizationData"))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| bad("no authorizationToken"))?;
        let decoded = BASE64
            .decode(token)
            .map_err(|_| bad("token is not base64"))?;
        if !decoded.contains(&b':') {
            return Err(bad("token is not base64 of USER:PASSWORD"));
        }
        let now = SystemTime::now();
        let reported = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or(now + FALLBACK_LIFETIME);
        let valid_until = if reported <= now + REFRESH_MARGIN {
            tracing::warn!(registry = %self.registry, "ECR token reports an expiry in the past or imminent; trusting it for 30 minutes");
            now + FALLBACK_LIFETIME + REFRESH_MARGIN
        } else {
            reported
        };
        Ok((oci::Credential::BasicToken(token.to_string()), valid_until))
    }
}
