//! A registry with Docker Hub's pull limit, in front of a distribution registry (test rig only).
//!
//! Docker Hub counts each manifest GET as a pull and no HEAD; every manifest answer carries
//! `ratelimit-limit: <limit>;w=21600` and `ratelimit-remaining: <left>;w=21600`, and past the
//! limit a manifest GET answers 429 `TOOMANYREQUESTS` with `ratelimit-remaining: 0` (Docker Hub
//! documentation, "Docker Hub pull usage and limits"). Everything else is forwarded unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;

use crate::hostile::{forward_to, serve, Server};

/// Docker Hub's window: 6 hours.
pub const WINDOW_SECONDS: u64 = 21_600;

struct Quota {
    upstream: String,
    http: reqwest::Client,
    limit: AtomicU64,
    pulls: AtomicU64,
    refused: AtomicU64,
    log: Mutex<Vec<String>>,
    /// From this many pulls on, the headers claim (limit, remaining) instead of the truth.
    claim: Mutex<Option<(u64, u64, u64)>>,
}

/// A running pull-limited registry; stops when dropped.
pub struct PullLimitedRegistry {
    /// `127.0.0.1:PORT`: where clients reach it.
    pub host: String,
    quota: Arc<Quota>,
    _server: Server,
}

impl PullLimitedRegistry {
    /// A registry allowing `limit` pulls in the window, in front of the distribution registry
    /// at `upstream` (`host:port`).
    pub fn start(upstream: &str, limit: u64) -> Self {
        let quota = Arc::new(Quota {
            upstream: upstream.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            limit: AtomicU64::new(limit),
            pulls: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            claim: Mutex::new(None),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(quota.clone());
        let (host, server) = serve("127.0.0.1:0", app);
        PullLimitedRegistry {
            host,
            quota,
            _server: server,
        }
    }

    /// Pulls counted so far (manifest GETs answered).
    pub fn pulls(&self) -> u64 {
        self.quota.pulls.load(Ordering::SeqCst)
    }

    /// Manifest GETs refused for the limit.
    pub fn refused(&self) -> u64 {
        self.quota.refused.load(Ordering::SeqCst)
    }

    /// Pulls left in the window.
    pub fn remaining(&self) -> u64 {
        self.quota.limit().saturating_sub(self.pulls())
    }

    /// A new window of `limit` pulls: the count starts over (what six hours do on Docker Hub,
    /// or an upgraded account).
    pub fn new_window(&self, limit: u64) {
        self.quota.limit.store(limit, Ordering::SeqCst);
        self.quota.pulls.store(0, Ordering::SeqCst);
        self.quota.refused.store(0, Ordering::SeqCst);
    }

    /// Lies about the count: once `after` pulls are counted, every manifest answer claims
    /// `ratelimit-limit: <limit>` and `ratelimit-remaining: <remaining>` (a header a client
    /// must not let raise the count it keeps), while the registry goes on counting the truth.
    pub fn claim_after(&self, after: u64, limit: u64, remaining: u64) {
        *self.quota.claim.lock().unwrap() = Some((after, limit, remaining));
    }

    /// Every request as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.quota.log.lock().unwrap().clone()
    }

    /// Every manifest request as `METHOD /path`.
    pub fn manifest_requests(&self) -> Vec<String> {
        let mut all = self.requests();
        all.retain(|r| r.contains("/manifests/"));
        all
    }
}

impl Quota {
    fn limit(&self) -> u64 {
        self.limit.load(Ordering::SeqCst)
    }
}

fn quota_header(count: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("{count};w={WINDOW_SECONDS}")).unwrap()
}

async fn handle(State(quota): State<Arc<Quota>>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    quota.log.lock().unwrap().push(format!("{method} {path}"));
    if !path.contains("/manifests/") {
        return forward_to(&quota.http, &quota.upstream, request).await;
    }
    if method == Method::GET {
        let counted = quota
            .pulls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < quota.limit()).then_some(p + 1)
            });
        if counted.is_err() {
            quota.refused.fetch_add(1, Ordering::SeqCst);
            let mut refused = Response::new(Body::from(
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#,
            ));
            *refused.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let headers = refused.headers_mut();
            headers.insert("ratelimit-limit", quota_header(quota.limit()));
            headers.insert("ratelimit-remaining", quota_header(0));
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            return refused;
        }
    }
    let pulls = quota.pulls.load(Ordering::SeqCst);
    let (limit, remaining) = match *quota.claim.lock().unwrap() {
        Some((after, limit, remaining)) if pulls >= after => (limit, remaining),
        _ => (quota.limit(), quota.limit().saturating_sub(pulls)),
    };
    let mut response = forward_to(&quota.http, &quota.upstream, request).await;
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", quota_header(limit));
    headers.insert("ratelimit-remaining", quota_header(remaining));
    response
}
