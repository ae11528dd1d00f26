//! Sending requests: retries, the per-host pause, credentials, 401 challenges and the token
//! cache.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::auth::{Challenge, Credential};
use crate::error::{redact_url, Error, Result};
use crate::reference::Repository;

use super::origins::realm_refusal;
use super::*;

impl RegistryClient {
    /// Replaces the credential for a registry (e.g. a refreshed ECR token) and forgets its
    /// cached tokens.
    pub fn set_credential(&self, registry: &str, credential: Credential) {
        self.inner
            .credentials
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry, credential);
        lock(&self.inner.auth)
            .tokens
            .retain(|(r, _), _| r != registry);
    }

    /// Registers how to get a fresh credential for `registry` when it refuses the current one.
    pub fn set_refresher(&self, registry: &str, refresher: CredentialRefresher) {
        self.inner
            .refreshers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry.to_string(), refresher);
    }

    /// After `used` was refused: true when another request already installed a newer credential,
    /// or the registry's refresher gave one different from `used` (now installed).
    pub(super) async fn refresh_credential(&self, registry: &str, used: &Credential) -> bool {
        if self.credential(registry) != *used {
            return true;
        }
        let refresher = self
            .inner
            .refreshers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
            .cloned();
        let Some(refresher) = refresher else {
            return false;
        };
        match refresher().await {
            Some(fresh) if fresh != *used => {
                tracing::info!(registry, "credential refused; using a refreshed one");
                self.set_credential(registry, fresh);
                true
            }
            _ => false,
        }
    }

    pub(super) fn credential(&self, registry: &str) -> Credential {
        self.inner
            .credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
    }

    /// Sends a request built afresh by `make` for each attempt: throttling is waited out within
    /// the throttle budget (the whole host paused meanwhile), 408/5xx and connection errors are
    /// retried up to `max_attempts`. Returns the last response whatever its status.
    pub(super) async fn send_retrying(
        &self,
        method: &Method,
        url: &Url,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Response> {
        let policy = &self.inner.config.retry;
        let started = Instant::now();
        let mut attempt = 0;
        let mut throttled = 0;
        loop {
            self.wait_for_host(url).await;
            let last = attempt + 1 >= policy.max_attempts;
            match make().send().await {
                Ok(resp) if is_throttling(resp.status()) => {
                    if RateLimit::exhausted(resp.headers()).is_some() {
                        return Ok(resp);
                    }
                    throttled += 1;
                    let delay = policy.throttle_delay(resp.headers(), throttled);
                    if started.elapsed() + delay > policy.throttle_budget {
                        tracing::warn!(%method, url = %redact_url(url), throttled, budget = ?policy.throttle_budget, "still throttled after the throttle budget");
                        return Ok(resp);
                    }
                    self.pause_host(url, delay);
                    tracing::debug!(%method, url = %redact_url(url), status = resp.status().as_u16(), throttled, ?delay, "throttled; host paused");
                }
                Ok(resp) if !last && is_retryable_status(resp.status()) => {
                    attempt += 1;
                    let delay = retry_after(resp.headers())
                        .map(|d| d.min(policy.max_retry_after))
                        .unwrap_or_else(|| policy.jittered_backoff(attempt));
                    tracing::debug!(%method, url = %redact_url(url), status = resp.status().as_u16(), attempt, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e)
                    if !last
                        && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()) =>
                {
                    attempt += 1;
                    let delay = policy.jittered_backoff(attempt);
                    tracing::debug!(%method, url = %redact_url(url), error = %e, attempt, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(source) => {
                    return Err(Error::transport(
                        method.to_string(),
                        redact_url(url),
                        source,
                    ))
                }
            }
        }
    }

    /// Sends an authenticated, replayable request: answers a 401 challenge once (Basic or
    /// Bearer token for `scope`), then retries as `send_retrying` does.
    /// Sends a read request (`pull` scope, no body) for a repository.
    pub(super) async fn pull(
        &self,
        method: Method,
        url: &Url,
        repo: &Repository,
        headers: HeaderMap,
    ) -> Result<Response> {
        self.execute(method, url, repo, &scope(repo, false), headers, None)
            .await
    }

    pub(super) async fn execute(
        &self,
        method: Method,
        url: &Url,
        repo: &Repository,
        scope: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response> {
        let registry = repo.registry.as_str();
        let mut challenged = false;
        let mut refreshed = false;
        loop {
            let used = self.credential(registry);
            let auth = self.authorization(registry, scope).await?;
            let resp = self
                .send_retrying(&method, url, || {
                    let mut rb = self
                        .inner
                        .http
                        .request(method.clone(), url.clone())
                        .headers(headers.clone());
                    if let Some(auth) = &auth {
                        rb = rb.header(AUTHORIZATION, auth.as_str());
                    }
                    if let Some(body) = &body {
                        rb = rb.body(body.clone());
                    }
                    rb
                })
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let header = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let reason = error_message(resp).await;
            if challenged && !refreshed && self.refresh_credential(registry, &used).await {
                refreshed = true;
                continue;
            }
            if challenged {
                return Err(Error::Unauthorized {
                    registry: registry.into(),
                    url: redact_url(url),
                    reason: format!("credentials refused: {reason}"),
                });
            }
            challenged = true;
            let Some(header) = header else {
                return Err(Error::Unauthorized {
                    registry: registry.into(),
                    url: redact_url(url),
                    reason: format!("401 without a WWW-Authenticate challenge: {reason}"),
                });
            };
            let challenge = Challenge::parse(&header, registry)?;
            if challenge == Challenge::Basic && self.credential(registry) == Credential::Anonymous {
                return Err(Error::Unauthorized {
                    registry: registry.into(),
                    url: redact_url(url),
                    reason: "the registry wants credentials and none were given".into(),
                });
            }
            let mut cache = lock(&self.inner.auth);
            cache.challenges.insert(registry.to_string(), challenge);
            cache
                .tokens
                .remove(&(registry.to_string(), scope.to_string()));
        }
    }

    /// Makes sure the registry's auth challenge is known before a request that cannot be
    /// replayed (a streamed PATCH): a process continuing another's upload session has sent
    /// nothing to the registry yet. One `GET /v2/` answers it (a no-op once known).
    pub(super) async fn learn_challenge(&self, repo: &Repository) -> Result<()> {
        if lock(&self.inner.auth)
            .challenges
            .contains_key(&repo.registry)
            || self.credential(&repo.registry) == Credential::Anonymous
        {
            return Ok(());
        }
        let url = self.base(repo)?;
        let resp = self
            .execute(
                Method::GET,
                &url,
                repo,
                &scope(repo, true),
                HeaderMap::new(),
                None,
            )
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(status_error(resp, "GET", "the registry's API root").await);
        }
        Ok(())
    }

    /// The `Authorization` value for a registry and scope, from what its last challenge asked.
    pub(super) async fn authorization(
        &self,
        registry: &str,
        scope: &str,
    ) -> Result<Option<String>> {
        let challenge = lock(&self.inner.auth).challenges.get(registry).cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.credential(registry).basic_header()),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = (registry.to_string(), scope.to_string());
                if let Some((token, expires)) = lock(&self.inner.auth).tokens.get(&key) {
                    if *expires > Instant::now() {
                        return Ok(Some(format!("Bearer {token}")));
                    }
                }
                let (token, lifetime) = self
                    .fetch_token(registry, &realm, service.as_deref(), scope)
                    .await?;
                // Renew a little before the registry's expiry.
                let expires = Instant::now()
                    + lifetime
                        .saturating_sub(Duration::from_secs(10))
                        .max(Duration::from_secs(1));
                lock(&self.inner.auth)
                    .tokens
                    .insert(key, (token.clone(), expires));
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    pub(super) async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(String, Duration)> {
        let mut url = Url::parse(realm).map_err(|e| Error::BadChallenge {
            registry: registry.into(),
            header: realm.into(),
            reason: e.to_string(),
        })?;
        // The realm receives the registry's credentials (Basic): only under the rules of
        // `origins::realm_refusal` (never in clear from a TLS registry, never at a private or
        // link-local address the registry is not on, never in clear to another origin).
        let basic = self.credential(registry).basic_header();
        let registry_base = self.base(&Repository {
            registry: registry.to_string(),
            name: String::new(),
        })?;
        if let Some(reason) = realm_refusal(&registry_base, &url, basic.is_some()) {
            return Err(Error::OriginRefused {
                registry: registry.into(),
                url: redact_url(&url),
                reason,
            });
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for s in scope.split(' ') {
                query.append_pair("scope", s);
            }
        }
        let resp = self
            .send_retrying(&Method::GET, &url, || {
                let mut rb = self.inner.http.get(url.clone());
                if let Some(b) = &basic {
                    rb = rb.header(AUTHORIZATION, b.as_str());
                }
                rb
            })
            .await?;
        // A realm on another origin than the registry's (auth.docker.io, or wherever a
        // registry points) has its error bodies named by status only, never quoted: the text
        // of another origin never reaches a report.
        let foreign_realm = url.origin() != registry_base.origin();
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let said = if foreign_realm {
                format!(
                    "HTTP {} (its body is not shown: the token endpoint is another origin)",
                    status.as_u16()
                )
            } else {
                error_message(resp).await
            };
            return Err(Error::Unauthorized {
                registry: registry.into(),
                url: redact_url(&url),
                reason: format!("token endpoint refused the credentials: {said}"),
            });
        }
        if !status.is_success() {
            if foreign_realm {
                return Err(Error::Registry {
                    method: "GET".into(),
                    url: redact_url(&url),
                    status: status.as_u16(),
                    code: None,
                    message: format!(
                        "token endpoint answered HTTP {} (its body is not shown: the token \
                         endpoint is another origin than {registry})",
                        status.as_u16()
                    ),
                });
            }
            return Err(status_error(resp, "GET", "token").await);
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let shown = redact_url(&url);
        let body = read_bounded(resp, MAX_TOKEN_BYTES, &shown, "token response").await?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::Unauthorized {
                registry: registry.into(),
                url: shown.clone(),
                reason: format!("token endpoint answered with something else than a token: {e}"),
            })?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| Error::Unauthorized {
                registry: registry.into(),
                url: redact_url(&url),
                reason: "token endpoint answered without a token".into(),
            })?;
        Ok((
            token,
            Duration::from_secs(body.expires_in.unwrap_or(60).max(60)),
        ))
    }
}

/// Bytes of a token response read at most (tokens are JWTs of a few KiB).
const MAX_TOKEN_BYTES: usize = 1 << 20;
