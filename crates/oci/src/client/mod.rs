//! The registry client: one HTTP connection pool for any number of registries, with per-registry
//! credentials, Bearer token caching, bounded retries with backoff and manual redirect handling.
//!
//! One transport (`transport`: requests, retries and the per-host pause, 401 handling and the
//! token cache) under one file per resource: manifests, listings (tags, catalog), referrers,
//! blobs, uploads; `response` maps answers to errors.

mod blobs;
mod listing;
mod manifests;
mod origins;
mod pulls;
mod referrers;
mod response;
mod retry;
mod transport;
mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use url::Url;

use crate::auth::{Challenge, Credential, CredentialStore};
use crate::error::{Error, Result};
use crate::reference::{validate_repository_name, validate_tag, Repository};

pub use blobs::BlobResponse;
use listing::next_link;
pub use listing::{MAX_LISTED_TAGS, MAX_LISTING_PAGES};
use manifests::ManifestCache;
pub use manifests::ManifestHead;
pub use pulls::{PullMeter, RateLimit};
pub use referrers::Referrer;
pub use referrers::MAX_REFERRERS;
use response::*;
use retry::{is_retryable_status, is_throttling};
pub use retry::{retry_after, RetryPolicy, DEFAULT_THROTTLE_BUDGET};
pub use uploads::{Mount, UploadSession};

const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

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

impl ClientConfig {
    /// Adds an endpoint override written `HOST=URL` (requests for registry HOST go to URL); a
    /// malformed entry is refused with the reason.
    pub fn add_endpoint(&mut self, entry: &str) -> std::result::Result<(), String> {
        match entry.split_once('=') {
            Some((host, url)) if !host.trim().is_empty() && !url.trim().is_empty() => {
                self.endpoints
                    .insert(host.trim().to_string(), url.trim().to_string());
                Ok(())
            }
            _ => Err(format!("entry {entry:?} must be HOST=URL")),
        }
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

/// An OCI distribution client for any number of registries. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
    /// Count (and may bound) the manifest GETs this view sends, innermost first: a step's
    /// meter over its connection's.
    meters: Vec<Arc<PullMeter>>,
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
            .map_err(|source| Error::transport("BUILD", "client".into(), source))?;
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
            meters: Vec::new(),
        })
    }

    /// A view of this client (same connections, credentials and caches) whose manifest GETs to
    /// the meter's registry go through `meter`: counted, and refused past its budget. On a
    /// view that is metered already, they go through both (see `PullMeter`).
    pub fn metered(&self, meter: Arc<PullMeter>) -> RegistryClient {
        let mut meters = vec![meter];
        meters.extend(self.meters.iter().cloned());
        RegistryClient {
            inner: self.inner.clone(),
            meters,
        }
    }

    /// The meters of this view for `registry`, innermost first.
    fn meters_for(&self, registry: &str) -> Vec<&PullMeter> {
        self.meters
            .iter()
            .map(|m| m.as_ref())
            .filter(|m| m.registry() == registry)
            .collect()
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
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

    /// The URL of a repository's resource: `base/<name>/<resource>[/<reference>]`, built segment
    /// by segment. The name and the reference (a tag or a digest) come from registries and
    /// inputs, so both are checked against the distribution grammar first and each is pushed
    /// as whole segments: no value can add a `/`, a `..` or a `?` to the path.
    fn url(&self, repo: &Repository, resource: Resource, reference: Option<&str>) -> Result<Url> {
        let invalid = |reason: String| Error::InvalidReference {
            reference: format!(
                "{repo}{}",
                reference.map(|r| format!(" {r}")).unwrap_or_default()
            ),
            reason,
        };
        validate_repository_name(&repo.name).map_err(invalid)?;
        if let Some(reference) = reference {
            validate_manifest_reference(reference).map_err(invalid)?;
        }
        let mut url = self.base(repo)?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| invalid("the registry endpoint cannot be a base URL".into()))?;
            segments.pop_if_empty();
            segments.extend(repo.name.split('/'));
            segments.extend(resource.segments());
            if let Some(reference) = reference {
                segments.push(reference);
            }
        }
        Ok(url)
    }

    /// The origin requests for this registry go to (its endpoint override, or its host).
    fn origin(&self, repo: &Repository) -> Result<url::Origin> {
        Ok(self.base(repo)?.origin())
    }
}

/// The resources of a repository the client reads and writes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resource {
    Manifests,
    Blobs,
    Uploads,
    Tags,
    Referrers,
}

impl Resource {
    fn segments(self) -> &'static [&'static str] {
        match self {
            Resource::Manifests => &["manifests"],
            Resource::Blobs => &["blobs"],
            // The trailing empty segment: `blobs/uploads/`, as the spec writes it.
            Resource::Uploads => &["blobs", "uploads", ""],
            Resource::Tags => &["tags", "list"],
            Resource::Referrers => &["referrers"],
        }
    }
}

/// A tag or a digest, as a manifest, blob or referrers URL may name it.
fn validate_manifest_reference(reference: &str) -> std::result::Result<(), String> {
    if reference.contains(':') {
        crate::digest::Digest::parse(reference)
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        validate_tag(reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

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
    fn request_paths_are_built_from_checked_segments() {
        let client = RegistryClient::new(ClientConfig::default(), CredentialStore::new()).unwrap();
        let repo = Repository {
            registry: "r.example".into(),
            name: "team/app".into(),
        };
        let url = client
            .url(&repo, Resource::Manifests, Some("v1.2"))
            .unwrap();
        assert_eq!(url.as_str(), "https://r.example/v2/team/app/manifests/v1.2");
        assert_eq!(
            client.url(&repo, Resource::Uploads, None).unwrap().as_str(),
            "https://r.example/v2/team/app/blobs/uploads/"
        );
        for forged in ["../../victim/manifests/pwn", "..", "a%2Fb", "x?y", "a/b"] {
            assert!(
                client
                    .url(&repo, Resource::Manifests, Some(forged))
                    .is_err(),
                "{forged}"
            );
        }
        let forged_name = Repository {
            registry: "r.example".into(),
            name: "team/../victim".into(),
        };
        assert!(client.url(&forged_name, Resource::Tags, None).is_err());
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
