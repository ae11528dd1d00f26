//! The registry client: one HTTP connection pool for any number of registries, with per-registry
//! credentials, Bearer token caching, bounded retries with backoff and manual redirect handling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::auth::{Challenge, Credential, CredentialStore};
use crate::digest::Digest;
use crate::error::{parse_error_body, redact_url, Error, ErrorCode, Result};
use crate::manifest::{Manifest, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::reference::{Reference, Repository};

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Pages of a referrers listing read at most.
const MAX_REFERRER_PAGES: usize = 100;

/// A descriptor from the referrers API: a manifest whose `subject` is the asked-for digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    /// The referring manifest's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// What kind of artifact it is (signature, SBOM, attestation), if stated.
    #[serde(default)]
    pub artifact_type: Option<String>,
}

/// How failed requests are retried. Throttling (429, and 503 as S3 behind ECR says it) slows a
/// run but does not fail it: it is waited out (`Retry-After`, else jittered backoff) for up to
/// `throttle_budget` per request or blob, without counting attempts. Other transient failures
/// (408, 5xx, connection errors) get `max_attempts` with jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first, for failures that are not throttling.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound for one backoff delay.
    pub max_backoff: Duration,
    /// Upper bound for a server's `Retry-After`.
    pub max_retry_after: Duration,
    /// How long one request (or one blob's upload) may be throttled before it is an error.
    pub throttle_budget: Duration,
}

/// Default for `RetryPolicy::throttle_budget`.
pub const DEFAULT_THROTTLE_BUDGET: Duration = Duration::from_secs(300);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            throttle_budget: DEFAULT_THROTTLE_BUDGET,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (attempt counts from 1), unless the server said.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// `backoff` with equal jitter (between half and all of it), so parallel clients spread out.
    pub fn jittered_backoff(&self, attempt: u32) -> Duration {
        let full = self.backoff(attempt);
        full / 2 + jitter(full / 2)
    }

    /// How long to wait after a throttling answer: its `Retry-After` (capped) plus up to a
    /// quarter more, so the requests a pause held back do not all return at once; without one,
    /// the jittered backoff of the `throttled`-th throttling.
    pub fn throttle_delay(&self, headers: &HeaderMap, throttled: u32) -> Duration {
        match retry_after(headers) {
            Some(after) => {
                let after = after.min(self.max_retry_after);
                after + jitter(after / 4)
            }
            None => self.jittered_backoff(throttled),
        }
    }
}

/// A random duration in `0..=max` (no RNG dependency: std's randomly keyed hasher).
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_nanos(random % (nanos + 1))
}

/// Client settings. Plain HTTP is allowed only for the registries listed.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Registries (`host[:port]`) reached over plain HTTP instead of TLS.
    pub insecure_registries: Vec<String>,
    /// Retry behaviour for every request.
    pub retry: RetryPolicy,
    /// Upload part size per registry. A registry not listed gets one streamed PATCH per blob;
    /// a listed one gets PATCHes of this many bytes (at least 5 MiB for ECR, at most 4 MiB
    /// for GHCR), the last one shorter.
    pub chunk_sizes: HashMap<String, u64>,
    /// Where to reach a registry instead of `https://<registry>`: registry name to base URL,
    /// e.g. an ECR host to a local registry in tests (like `location` in registries.conf).
    /// Credentials stay keyed by the registry name.
    pub endpoints: HashMap<String, String>,
    /// Sent as `User-Agent`.
    pub user_agent: String,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure_registries: Vec::new(),
            retry: RetryPolicy::default(),
            chunk_sizes: HashMap::new(),
            endpoints: HashMap::new(),
            user_agent: concat!("ecr-replicator/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// The state of a blob upload, enough for another process to continue it from `offset`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadSession {
    /// Registry host.
    pub registry: String,
    /// Repository the blob goes into.
    pub repository: String,
    /// Absolute URL for the next request of this session (registries rotate it).
    pub location: String,
    /// Bytes the registry has accepted so far, counted by the client (ECR's `Range` header
    /// stops advancing after the second PATCH).
    pub offset: u64,
}

impl std::fmt::Debug for UploadSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = Url::parse(&self.location)
            .map(|u| redact_url(&u))
            .unwrap_or_default();
        f.debug_struct("UploadSession")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .field("location", &shown)
            .field("offset", &self.offset)
            .finish()
    }
}

/// What a cross-repository mount did.
#[derive(Debug)]
pub enum Mount {
    /// The registry linked the blob; nothing to upload.
    Mounted,
    /// The registry declined and opened an upload session instead.
    NotMounted(UploadSession),
}

/// A manifest's identity as a HEAD request reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// Digest of the stored manifest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: Option<String>,
}

/// A blob body being received.
pub struct BlobResponse {
    /// Where it comes from (redacted, for messages).
    pub url: String,
    /// `Content-Length`, when sent.
    pub length: Option<u64>,
    response: Response,
}

impl BlobResponse {
    /// The body as a stream of chunks.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
        self.response.bytes_stream()
    }
}

#[derive(Default)]
struct AuthCache {
    challenges: HashMap<String, Challenge>,
    tokens: HashMap<(String, String), (String, Instant)>,
}

/// Fetches a fresh credential for a registry that refused the current one (an ECR token that
/// expired mid-run); `None` when there is none to be had.
pub type CredentialRefresher =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Option<Credential>> + Send + Sync>;

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    credentials: RwLock<CredentialStore>,
    auth: Mutex<AuthCache>,
    refreshers: RwLock<HashMap<String, CredentialRefresher>>,
    /// Per host (`host:port`), the instant before which no request is sent: a 429 or 503 seen by
    /// one request pauses every request of this client to that host, not just its own.
    paused_until: Mutex<HashMap<String, Instant>>,
    /// Manifests read by digest (verified), kept for later reads of the same digest.
    manifests: Mutex<ManifestCache>,
}

/// Bytes of manifests the cache keeps at most; past that it starts over.
const MANIFEST_CACHE_BYTES: usize = 32 << 20;

/// Manifests by (registry, repository, digest).
#[derive(Default)]
struct ManifestCache {
    entries: HashMap<(String, String, String), Manifest>,
    bytes: usize,
}

impl ManifestCache {
    fn insert(&mut self, key: (String, String, String), manifest: Manifest) {
        if self.bytes + manifest.bytes.len() > MANIFEST_CACHE_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += manifest.bytes.len();
        if let Some(old) = self.entries.insert(key, manifest) {
            self.bytes -= old.bytes.len();
        }
    }
}

/// An OCI distribution client for any number of registries. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

/// The token scope for reading (`pull`) or writing (`pull,push`) a repository.
fn scope(repo: &Repository, push: bool) -> String {
    format!(
        "repository:{}:{}",
        repo.name,
        if push { "pull,push" } else { "pull" }
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RegistryClient {
    /// Builds a client; the connection pool is shared by every registry it talks to.
    pub fn new(config: ClientConfig, credentials: CredentialStore) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| Error::Transport {
                method: "BUILD".into(),
                url: "client".into(),
                source,
            })?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                config,
                credentials: RwLock::new(credentials),
                auth: Mutex::new(AuthCache::default()),
                refreshers: RwLock::new(HashMap::new()),
                paused_until: Mutex::new(HashMap::new()),
                manifests: Mutex::new(ManifestCache::default()),
            }),
        })
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

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
    async fn refresh_credential(&self, registry: &str, used: &Credential) -> bool {
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

    /// Waits while the URL's host is paused by an earlier throttling answer.
    async fn wait_for_host(&self, url: &Url) {
        let key = host_key(url);
        loop {
            let until = lock(&self.inner.paused_until).get(&key).copied();
            match until {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await
                }
                _ => return,
            }
        }
    }

    /// Pauses every request to the URL's host for `delay` (never shortening a longer pause).
    fn pause_host(&self, url: &Url, delay: Duration) {
        let until = Instant::now() + delay;
        let mut paused = lock(&self.inner.paused_until);
        let entry = paused.entry(host_key(url)).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    fn credential(&self, registry: &str) -> Credential {
        self.inner
            .credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
    }

    /// The upload part size configured for a registry, if uploads there are chunked.
    pub fn chunk_size(&self, registry: &str) -> Option<u64> {
        self.inner.config.chunk_sizes.get(registry).copied()
    }

    /// `scheme://host/v2/` for a repository's registry.
    fn base(&self, repo: &Repository) -> Result<Url> {
        if let Some(endpoint) = self.inner.config.endpoints.get(&repo.registry) {
            return Url::parse(&format!("{}/v2/", endpoint.trim_end_matches('/'))).map_err(|e| {
                Error::InvalidReference {
                    reference: repo.to_string(),
                    reason: format!("endpoint {endpoint:?}: {e}"),
                }
            });
        }
        let scheme = if self
            .inner
            .config
            .insecure_registries
            .iter()
            .any(|r| r == &repo.registry)
        {
            "http"
        } else {
            "https"
        };
        let text = format!("{scheme}://{}/v2/", repo.api_host());
        Url::parse(&text).map_err(|e| Error::InvalidReference {
            reference: repo.to_string(),
            reason: e.to_string(),
        })
    }

    fn url(&self, repo: &Repository, suffix: &str) -> Result<Url> {
        let base = self.base(repo)?;
        base.join(&format!("{}/{suffix}", repo.name))
            .map_err(|e| Error::InvalidReference {
                reference: repo.to_string(),
                reason: e.to_string(),
            })
    }

    /// Sends a request built afresh by `make` for each attempt: throttling is waited out within
    /// the throttle budget (the whole host paused meanwhile), 408/5xx and connection errors are
    /// retried up to `max_attempts`. Returns the last response whatever its status.
    async fn send_retrying(
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
                    return Err(Error::Transport {
                        method: method.to_string(),
                        url: redact_url(url),
                        source,
                    })
                }
            }
        }
    }

    /// Sends an authenticated, replayable request: answers a 401 challenge once (Basic or
    /// Bearer token for `scope`), then retries as `send_retrying` does.
    async fn execute(
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
    async fn learn_challenge(&self, repo: &Repository) -> Result<()> {
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
    async fn authorization(&self, registry: &str, scope: &str) -> Result<Option<String>> {
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

    async fn fetch_token(
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
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            for s in scope.split(' ') {
                query.append_pair("scope", s);
            }
        }
        let basic = self.credential(registry).basic_header();
        let resp = self
            .send_retrying(&Method::GET, &url, || {
                let mut rb = self.inner.http.get(url.clone());
                if let Some(b) = &basic {
                    rb = rb.header(AUTHORIZATION, b.as_str());
                }
                rb
            })
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized {
                registry: registry.into(),
                url: redact_url(&url),
                reason: format!(
                    "token endpoint refused the credentials: {}",
                    error_message(resp).await
                ),
            });
        }
        if !resp.status().is_success() {
            return Err(status_error(resp, "GET", "token").await);
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body: TokenResponse = resp.json().await.map_err(|source| Error::Transport {
            method: "GET".into(),
            url: redact_url(&url),
            source,
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

    // ----- manifests -----

    /// Fetches a manifest by tag or digest, keeping its bytes; verifies the digest when the
    /// reference has one, and always against the registry's `Docker-Content-Digest`.
    #[tracing::instrument(skip(self), fields(reference = %reference))]
    pub async fn get_manifest(&self, reference: &Reference) -> Result<Manifest> {
        let repo = &reference.repository;
        // By digest a manifest never changes: one read per process (listing, plan, put).
        let cache_key = reference
            .digest
            .as_ref()
            .map(|d| (repo.registry.clone(), repo.name.clone(), d.to_string()));
        if let Some(key) = &cache_key {
            if let Some(hit) = lock(&self.inner.manifests).entries.get(key) {
                return Ok(hit.clone());
            }
        }
        let url = self.url(
            repo,
            &format!("manifests/{}", reference.manifest_reference()),
        )?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self
            .execute(Method::GET, &url, repo, &scope(repo, false), headers, None)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, "GET", &format!("manifest {reference}")).await);
        }
        let shown = redact_url(&url);
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST_BYTES as u64)
        {
            return Err(Error::InvalidManifest {
                url: shown,
                reason: "larger than the 4 MiB manifest limit".into(),
            });
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(resp.headers(), DOCKER_CONTENT_DIGEST);
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, &shown).await?;
        let manifest = Manifest::from_bytes(bytes, content_type.as_deref(), &shown)?;
        let expected = reference
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .or(header_digest.filter(|d| d.starts_with("sha256:")));
        if let Some(expected) = expected {
            if expected != manifest.digest.as_str() {
                return Err(Error::DigestMismatch {
                    url: shown,
                    expected,
                    actual: manifest.digest.to_string(),
                });
            }
        }
        // Read by tag, it is kept by its digest too: a later read by digest (the plan after
        // the listing) costs no request.
        let key = cache_key.unwrap_or_else(|| {
            (
                repo.registry.clone(),
                repo.name.clone(),
                manifest.digest.to_string(),
            )
        });
        lock(&self.inner.manifests).insert(key, manifest.clone());
        Ok(manifest)
    }

    /// Whether a manifest exists, and its digest. `None` when the registry says 404.
    #[tracing::instrument(skip(self), fields(reference = %reference))]
    pub async fn head_manifest(&self, reference: &Reference) -> Result<Option<ManifestHead>> {
        let repo = &reference.repository;
        let url = self.url(
            repo,
            &format!("manifests/{}", reference.manifest_reference()),
        )?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self
            .execute(Method::HEAD, &url, repo, &scope(repo, false), headers, None)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(resp, "HEAD", &format!("manifest {reference}")).await);
        }
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        match header_str(resp.headers(), DOCKER_CONTENT_DIGEST).map(|d| Digest::parse(&d)) {
            Some(Ok(digest)) => Ok(Some(ManifestHead { digest, media_type })),
            // No usable digest header: ask for the bytes and hash them.
            _ => match self.get_manifest(reference).await {
                Ok(m) => Ok(Some(ManifestHead {
                    digest: m.digest,
                    media_type: Some(m.media_type),
                })),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Stores a manifest under a tag or its digest; checks the registry computed the same digest.
    /// `Some(digest)` when the registry confirmed what it stored (`Docker-Content-Digest`, as
    /// distribution and ECR send), `None` when it said nothing.
    #[tracing::instrument(skip(self, manifest), fields(repository = %repo, digest = %manifest.digest))]
    pub async fn put_manifest(
        &self,
        repo: &Repository,
        tag_or_digest: &str,
        manifest: &Manifest,
    ) -> Result<Option<Digest>> {
        let url = self.url(repo, &format!("manifests/{tag_or_digest}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&manifest.media_type).map_err(|_| Error::InvalidManifest {
                url: redact_url(&url),
                reason: "media type is not a valid header value".into(),
            })?,
        );
        let resp = self
            .execute(
                Method::PUT,
                &url,
                repo,
                &scope(repo, true),
                headers,
                Some(manifest.bytes.clone()),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(
                status_error(resp, "PUT", &format!("manifest {repo}:{tag_or_digest}")).await,
            );
        }
        match header_str(resp.headers(), DOCKER_CONTENT_DIGEST) {
            Some(echoed) if echoed != manifest.digest.as_str() => Err(Error::DigestMismatch {
                url: redact_url(&url),
                expected: manifest.digest.to_string(),
                actual: echoed,
            }),
            Some(_) => Ok(Some(manifest.digest.clone())),
            None => Ok(None),
        }
    }

    /// Deletes a manifest by tag (untags it, where the registry can) or by digest (removes it
    /// and every tag on it). `Ok(false)` when there was no such manifest.
    #[tracing::instrument(skip(self), fields(repository = %repo))]
    pub async fn delete_manifest(&self, repo: &Repository, tag_or_digest: &str) -> Result<bool> {
        let url = self.url(repo, &format!("manifests/{tag_or_digest}"))?;
        let scope = format!("repository:{}:delete", repo.name);
        let resp = self
            .execute(Method::DELETE, &url, repo, &scope, HeaderMap::new(), None)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => {
                Err(status_error(resp, "DELETE", &format!("manifest {repo}:{tag_or_digest}")).await)
            }
        }
    }

    /// Every tag of a repository, following `Link` pagination.
    #[tracing::instrument(skip(self), fields(repository = %repo))]
    pub async fn list_tags(&self, repo: &Repository) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = self.tags_page(repo, 1000, after.as_deref()).await?;
            tags.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(tags),
            }
        }
    }

    /// One page of a repository's tags, after tag `after`; the second value is the token (the
    /// last tag) for the next page, `None` on the last page.
    pub async fn tags_page(
        &self,
        repo: &Repository,
        page_size: usize,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>)> {
        #[derive(Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(repo, "tags/list")?;
        paging_query(&mut url, page_size, after);
        let (page, next): (TagList, _) = self
            .page(
                &url,
                repo,
                &scope(repo, false),
                &format!("tag list of {repo}"),
            )
            .await?;
        Ok((page.tags.unwrap_or_default(), next))
    }

    /// One page of a registry's repositories (`/v2/_catalog`), after repository `after`.
    pub async fn catalog_page(
        &self,
        registry: &str,
        page_size: usize,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>)> {
        #[derive(Deserialize)]
        struct Catalog {
            repositories: Option<Vec<String>>,
        }
        let repo = Repository {
            registry: registry.to_string(),
            name: String::new(),
        };
        let mut url = self
            .base(&repo)?
            .join("_catalog")
            .map_err(|e| Error::InvalidReference {
                reference: registry.to_string(),
                reason: e.to_string(),
            })?;
        paging_query(&mut url, page_size, after);
        let (page, next): (Catalog, _) = self
            .page(
                &url,
                &repo,
                "registry:catalog:*",
                &format!("catalog of {registry}"),
            )
            .await?;
        Ok((page.repositories.unwrap_or_default(), next))
    }

    /// The manifests that name `digest` as their `subject`, from the OCI 1.1 referrers API
    /// (every page). `None` when the registry has no referrers API (it answers 404).
    pub async fn referrers(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Option<Vec<Referrer>>> {
        #[derive(Deserialize)]
        struct ReferrersIndex {
            #[serde(default)]
            manifests: Vec<Referrer>,
        }
        let mut url = self.url(repo, &format!("referrers/{digest}"))?;
        let mut found = Vec::new();
        for _ in 0..MAX_REFERRER_PAGES {
            let resp = self
                .execute(
                    Method::GET,
                    &url,
                    repo,
                    &scope(repo, false),
                    HeaderMap::new(),
                    None,
                )
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                let what = format!("referrers of {repo}@{digest}");
                return Err(status_error(resp, "GET", &what).await);
            }
            let next = next_link(resp.headers(), &url);
            let shown = redact_url(&url);
            let body = read_limited(resp, MAX_MANIFEST_BYTES, &shown).await?;
            let page: ReferrersIndex =
                serde_json::from_slice(&body).map_err(|e| Error::InvalidManifest {
                    url: shown.clone(),
                    reason: format!("referrers response is not an image index: {e}"),
                })?;
            found.extend(page.manifests);
            match next {
                Some(n) => url = n,
                None => return Ok(Some(found)),
            }
        }
        Err(Error::InvalidManifest {
            url: redact_url(&url),
            reason: format!("referrers span more than {MAX_REFERRER_PAGES} pages"),
        })
    }

    /// GETs a JSON page and the `last` value of its `Link: rel="next"` target.
    async fn page<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        repo: &Repository,
        scope: &str,
        what: &str,
    ) -> Result<(T, Option<String>)> {
        let resp = self
            .execute(Method::GET, url, repo, scope, HeaderMap::new(), None)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp, "GET", what).await);
        }
        let next = next_link(resp.headers(), url).and_then(|n| {
            n.query_pairs()
                .find(|(k, _)| k == "last")
                .map(|(_, v)| v.into_owned())
        });
        let page = resp.json().await.map_err(|source| Error::Transport {
            method: "GET".into(),
            url: redact_url(url),
            source,
        })?;
        Ok((page, next))
    }

    // ----- blobs -----

    /// The size of a blob if the repository has it, `None` on 404.
    pub async fn head_blob(&self, repo: &Repository, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let resp = self
            .execute(
                Method::HEAD,
                &url,
                repo,
                &scope(repo, false),
                HeaderMap::new(),
                None,
            )
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            // reqwest reports a HEAD body's length (0), not the header: read the header.
            s if s.is_success() => Ok(Some(
                header_str(resp.headers(), CONTENT_LENGTH.as_str())
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            )),
            // HEAD on a blob answered by a redirect to storage still means it exists.
            s if s.is_redirection() => Ok(Some(0)),
            _ => Err(status_error(resp, "HEAD", &format!("blob {digest}")).await),
        }
    }

    /// Starts receiving a blob, from byte `offset`. Redirects (ECR sends blobs from presigned S3
    /// URLs) are followed without the `Authorization` header when the host changes.
    pub async fn get_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse> {
        self.get_blob_range(repo, digest, offset, None).await
    }

    /// Starts receiving `length` bytes of a blob from `offset` (to the end when `None`).
    pub async fn get_blob_range(
        &self,
        repo: &Repository,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<BlobResponse> {
        let mut url = self.url(repo, &format!("blobs/{digest}"))?;
        let mut headers = HeaderMap::new();
        let ranged = offset > 0 || length.is_some();
        match length {
            Some(len) if len > 0 => {
                let last = offset + len - 1;
                headers.insert(RANGE, header_value(&format!("bytes={offset}-{last}")));
            }
            _ if offset > 0 => {
                headers.insert(RANGE, header_value(&format!("bytes={offset}-")));
            }
            _ => {}
        }
        let mut resp = self
            .execute(
                Method::GET,
                &url,
                repo,
                &scope(repo, false),
                headers.clone(),
                None,
            )
            .await?;
        for _ in 0..5 {
            if !resp.status().is_redirection() {
                break;
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| Error::Registry {
                    method: "GET".into(),
                    url: redact_url(&url),
                    status: resp.status().as_u16(),
                    code: None,
                    message: "redirect without a usable Location".into(),
                })?;
            let same_origin = next.origin() == url.origin();
            url = next;
            resp = if same_origin {
                self.execute(
                    Method::GET,
                    &url,
                    repo,
                    &scope(repo, false),
                    headers.clone(),
                    None,
                )
                .await?
            } else {
                self.send_retrying(&Method::GET, &url, || {
                    self.inner.http.get(url.clone()).headers(headers.clone())
                })
                .await?
            };
        }
        // A registry may answer a range that starts at 0 with the whole blob (200); the caller
        // counts bytes, so a longer body is caught there.
        let whole_ok = offset == 0 && resp.status() == StatusCode::OK;
        let expected = if ranged && !whole_ok {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if resp.status() != expected {
            return Err(status_error(resp, "GET", &format!("blob {digest} in {repo}")).await);
        }
        Ok(BlobResponse {
            url: redact_url(&url),
            length: resp.content_length(),
            response: resp,
        })
    }

    /// Opens an upload session in a repository.
    pub async fn start_upload(&self, repo: &Repository) -> Result<UploadSession> {
        let url = self.url(repo, "blobs/uploads/")?;
        let resp = self
            .execute(
                Method::POST,
                &url,
                repo,
                &scope(repo, true),
                content_length_zero(),
                Some(Bytes::new()),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(resp, "POST", &format!("upload to {repo}")).await);
        }
        self.session_from(repo, &url, &resp, 0)
    }

    /// Asks the registry to link a blob from another repository of the same registry.
    pub async fn mount_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        from: &Repository,
    ) -> Result<Mount> {
        let mut url = self.url(repo, "blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", &from.name);
        let scopes = format!("{} {}", scope(repo, true), scope(from, false));
        let resp = self
            .execute(
                Method::POST,
                &url,
                repo,
                &scopes,
                content_length_zero(),
                Some(Bytes::new()),
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::NotMounted(self.session_from(repo, &url, &resp, 0)?)),
            _ => Err(status_error(resp, "POST", &format!("mount of {digest} into {repo}")).await),
        }
    }

    fn session_from(
        &self,
        repo: &Repository,
        url: &Url,
        resp: &Response,
        offset: u64,
    ) -> Result<UploadSession> {
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| Error::Upload {
                url: redact_url(url),
                reason: format!(
                    "HTTP {} without a usable Location header",
                    resp.status().as_u16()
                ),
            })?;
        Ok(UploadSession {
            registry: repo.registry.clone(),
            repository: repo.name.clone(),
            location: location.to_string(),
            offset,
        })
    }

    fn session_url(&self, session: &UploadSession) -> Result<(Repository, Url)> {
        let repo = Repository {
            registry: session.registry.clone(),
            name: session.repository.clone(),
        };
        let url = Url::parse(&session.location).map_err(|e| Error::Upload {
            url: "<session>".into(),
            reason: format!("upload session location is not a URL: {e}"),
        })?;
        Ok((repo, url))
    }

    /// Sends the next `length` bytes of an upload (one PATCH), from `session.offset`.
    /// `body` may be a stream; it is sent once, never replayed.
    pub async fn upload_part(
        &self,
        session: UploadSession,
        body: reqwest::Body,
        length: u64,
    ) -> Result<UploadSession> {
        let (repo, url) = self.session_url(&session)?;
        self.learn_challenge(&repo).await?;
        let auth = self
            .authorization(&repo.registry, &scope(&repo, true))
            .await?;
        let mut rb = self
            .inner
            .http
            .patch(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length);
        if length > 0 {
            rb = rb.header(
                "content-range",
                format!("{}-{}", session.offset, session.offset + length - 1),
            );
        }
        if let Some(auth) = auth {
            rb = rb.header(AUTHORIZATION, auth);
        }
        let resp = rb
            .body(body)
            .send()
            .await
            .map_err(|source| Error::Transport {
                method: "PATCH".into(),
                url: redact_url(&url),
                source,
            })?;
        // Distribution answers 202; ECR answers 201.
        let status = resp.status();
        if status != StatusCode::ACCEPTED && status != StatusCode::CREATED {
            if is_throttling(status) {
                let delay = self.inner.config.retry.throttle_delay(resp.headers(), 1);
                self.pause_host(&url, delay);
            }
            if matches!(status.as_u16(), 404 | 416) {
                return Err(Error::UploadSessionBroken {
                    url: redact_url(&url),
                    status: status.as_u16(),
                    message: error_message(resp).await,
                });
            }
            return Err(status_error(resp, "PATCH", &format!("upload to {repo}")).await);
        }
        self.session_from(&repo, &url, &resp, session.offset + length)
    }

    /// Completes an upload as `digest`; the registry verifies the bytes it holds.
    pub async fn complete_upload(&self, session: UploadSession, digest: &Digest) -> Result<()> {
        let (repo, mut url) = self.session_url(&session)?;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let resp = self
            .execute(
                Method::PUT,
                &url,
                &repo,
                &scope(&repo, true),
                content_length_zero(),
                Some(Bytes::new()),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(resp, "PUT", &format!("blob {digest} in {repo}")).await);
        }
        if let Some(echoed) = header_str(resp.headers(), DOCKER_CONTENT_DIGEST) {
            if echoed != digest.as_str() {
                return Err(Error::Upload {
                    url: redact_url(&url),
                    reason: format!("registry stored {echoed}, expected {digest}"),
                });
            }
        }
        Ok(())
    }

    /// Asks the registry how many bytes a session holds (for resuming after a crash).
    pub async fn upload_status(&self, session: &UploadSession) -> Result<u64> {
        let (repo, url) = self.session_url(session)?;
        let resp = self
            .execute(
                Method::GET,
                &url,
                &repo,
                &scope(&repo, true),
                HeaderMap::new(),
                None,
            )
            .await?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(status_error(resp, "GET", &format!("upload status in {repo}")).await);
        }
        let range = header_str(resp.headers(), RANGE.as_str()).unwrap_or_default();
        Ok(range
            .rsplit_once('-')
            .and_then(|(_, end)| end.parse::<u64>().ok())
            .map(|end| end + 1)
            .unwrap_or(0))
    }

    /// Abandons an upload session (best effort: registries expire them anyway).
    pub async fn cancel_upload(&self, session: UploadSession) {
        if let Ok((repo, url)) = self.session_url(&session) {
            let result = self
                .execute(
                    Method::DELETE,
                    &url,
                    &repo,
                    &scope(&repo, true),
                    HeaderMap::new(),
                    None,
                )
                .await;
            tracing::debug!(repository = %repo, ok = result.is_ok(), "upload cancelled");
        }
    }

    /// Uploads a small blob held in memory (configs, test fixtures, the empty blob): POST then
    /// one PUT with the bytes.
    pub async fn put_blob(&self, repo: &Repository, digest: &Digest, bytes: Bytes) -> Result<()> {
        let session = self.start_upload(repo).await?;
        let (repo, mut url) = self.session_url(&session)?;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let resp = self
            .execute(
                Method::PUT,
                &url,
                &repo,
                &scope(&repo, true),
                headers,
                Some(bytes),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(resp, "PUT", &format!("blob {digest} in {repo}")).await);
        }
        Ok(())
    }
}

fn content_length_zero() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    h
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `host:port` of a URL: the unit a registry throttles.
fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// The registry asks clients to slow down (429; 503 is how S3 behind ECR says it).
fn is_throttling(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 503)
}

fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500..=599)
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn paging_query(url: &mut Url, page_size: usize, after: Option<&str>) {
    let mut query = url.query_pairs_mut();
    query.append_pair("n", &page_size.to_string());
    if let Some(last) = after {
        query.append_pair("last", last);
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The `rel="next"` target of a `Link` header, resolved against the current URL.
fn next_link(headers: &HeaderMap, current: &Url) -> Option<Url> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().trim_start_matches('<').trim_end_matches('>');
        current.join(target).ok()
    })
}

async fn read_limited(resp: Response, limit: usize, url: &str) -> Result<Bytes> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| Error::Transport {
            method: "GET".into(),
            url: url.to_string(),
            source,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(Error::InvalidManifest {
                url: url.to_string(),
                reason: format!("larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The registry's error message, or the start of its body.
async fn error_message(resp: Response) -> String {
    let body = resp.bytes().await.unwrap_or_default();
    match parse_error_body(&body) {
        Some(e) if !e.message.is_empty() => e.message,
        Some(e) => format!("{:?}", e.code),
        None => String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string(),
    }
}

/// Turns a failed response into the matching error.
async fn status_error(resp: Response, method: &str, what: &str) -> Error {
    let status = resp.status().as_u16();
    let url = redact_url(resp.url());
    let body = resp.bytes().await.unwrap_or_default();
    let parsed = parse_error_body(&body);
    let code = parsed.as_ref().map(|e| e.code.clone());
    let not_found_code = matches!(
        code,
        Some(ErrorCode::ManifestUnknown | ErrorCode::BlobUnknown | ErrorCode::NameUnknown)
    );
    if status == 404 || (not_found_code && status < 500) {
        return Error::NotFound {
            what: what.to_string(),
            url,
        };
    }
    let message = match parsed {
        Some(e) if !e.message.is_empty() => e.message,
        _ => String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string(),
    };
    if status == 401 {
        return Error::Unauthorized {
            registry: resp_host(&url),
            url,
            reason: message,
        };
    }
    Error::Registry {
        method: method.to_string(),
        url,
        status,
        code,
        message,
    }
}

fn resp_host(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(250));
        assert_eq!(p.backoff(3), Duration::from_millis(1000));
        assert_eq!(p.backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn next_link_resolves_relative_targets() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#),
        );
        let cur = Url::parse("http://r:5000/v2/a/tags/list?n=2").unwrap();
        assert_eq!(
            next_link(&h, &cur).unwrap().as_str(),
            "http://r:5000/v2/a/tags/list?last=x&n=2"
        );
    }

    #[test]
    fn session_debug_hides_the_upload_state() {
        let s = UploadSession {
            registry: "r".into(),
            repository: "a".into(),
            location: "http://r/v2/a/blobs/uploads/u?_state=SECRETSTATE".into(),
            offset: 3,
        };
        assert!(!format!("{s:?}").contains("SECRETSTATE"));
    }
}
