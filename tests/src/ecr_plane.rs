//! ECR's data plane as it really behaves, in front of a distribution registry (test rig only).
//!
//! Distribution is well behaved where ECR is not. This proxy, one per ECR host, forwards every
//! request to its distribution registry and changes only what ECR is documented or reported to
//! do differently; each behaviour can be switched off alone (`EcrPlane::set`), so a test can
//! show that the engine needs it. Every ECR-mode test and `make demo` go through it.
//!
//! It runs on its own runtime thread so that a test blocking its own thread (skopeo, a child
//! process) never stalls it.
//!
//! Here the plane itself (its behaviours, state, start and dispatch, credential refusal and
//! throttling); `routes` says what a request addresses and which ECR action it needs, `uploads`,
//! `manifests` (with referrers) and `tags` change what ECR changes, `control` and `listing` read
//! and write ECR's control plane (moto), and `upstream` forwards to the distribution registry and
//! serves presigned blob URLs.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

mod control;
mod listing;
mod manifests;
mod routes;
mod tags;
mod uploads;
mod upstream;

use control::archived;
use manifests::{put_manifest, referrers};
pub use routes::PlaneOp;
use routes::{ecr_action, route, Route};
use tags::tags_page;
use uploads::{complete_upload, stick_range, upload_part, Upload};
use upstream::{forward, presigned};

/// The smallest upload part ECR accepts, except the last one of an upload.
/// "Minimum layer part size: 5 MiB" (Amazon ECR service quotas,
/// docs.aws.amazon.com/AmazonECR/latest/userguide/service-quotas.html); the refusal is
/// `LayerPartTooSmallException`, "All layer parts except the last part should be at least 5MB"
/// (dotnet/sdk-container-builds#424, seen in CloudTrail).
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// The largest manifest PutImage takes: `imageManifest` length at most 4,194,304 (ECR API
/// reference, PutImage).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// PutImage requests per second per repository before 429: "Rate of PutImage requests: 10 per
/// second" (Amazon ECR service quotas).
pub const PUT_IMAGE_PER_SECOND: usize = 10;
/// Tags in one page of a tag listing: `maxResults` at most 1000 (ECR API reference, ListImages).
pub const TAG_PAGE_MAX: usize = 1000;

/// ECR's behaviours, each on (true) by default; `plain()` turns them all off.
#[derive(Clone, Debug)]
pub struct Behaviours {
    /// The `Range` header of PATCH responses and upload-status GETs sticks at the end of the
    /// first part and never advances; the data is stored correctly (aws/containers-roadmap#2831).
    pub sticky_range: bool,
    /// PATCH is answered 201 Created, not 202 (kitops-ml/kitops#821: "the registry is
    /// returning HTTP 201 on the patch request").
    pub patch_created: bool,
    /// Parts under `MIN_PART_BYTES` except the last are refused (`LayerPartTooSmallException`).
    pub min_part_size: bool,
    /// Completing an upload that received no part is refused: "cannot be completed because it
    /// does not have any parts" (`EmptyUploadException`; devcontainers/cli#814,
    /// radius-project/radius#7887): ECR cannot store a 0-byte blob.
    pub refuse_empty_upload: bool,
    /// A part whose first byte is not where the session stands is answered 416
    /// `BLOB_UPLOAD_INVALID` "First byte of the layer part is 0 instead of N" (apple/container#1895,
    /// GoogleContainerTools/kaniko#607): a retry from byte 0 on the same session fails.
    pub refuse_rewind: bool,
    /// Blob GETs are answered 307 to a presigned S3 URL on another host, which answers 400 "Only
    /// one auth mechanism allowed" when an `Authorization` header arrives (ECR pull through
    /// `GetDownloadUrlForLayer`: "a pre-signed Amazon S3 download URL", ECR API reference; the
    /// S3 refusal is S3's documented `InvalidArgument` for two auth mechanisms).
    pub presigned_blob_redirect: bool,
    /// More than `PUT_IMAGE_PER_SECOND` manifest PUTs a second in one repository are answered
    /// 429 `TOOMANYREQUESTS` (service quotas above).
    pub put_image_rate_limit: bool,
    /// In a repository with IMMUTABLE tags, putting a tag that exists is refused even with the
    /// same digest: 400 `TAG_INVALID` "cannot be overwritten because the repository is
    /// immutable" (ECR user guide, "Preventing image tags from being overwritten";
    /// `ImageTagAlreadyExistsException`). Read from moto's DescribeRepositories.
    pub immutable_tags: bool,
    /// Manifests over `MAX_MANIFEST_BYTES` are refused.
    pub manifest_size_limit: bool,
    /// Tag lists are served at most `TAG_PAGE_MAX` a page, with a `Link` to the next.
    pub tag_page_limit: bool,
    /// The OCI 1.1 referrers API is served (ECR has it since 2024: "Amazon ECR adds support for
    /// OCI Image and Distribution specification version 1.1"); distribution 2.8 has not.
    pub referrers_api: bool,
    /// A manifest of an image in ECR's archive storage class is answered 404 `MANIFEST_UNKNOWN`
    /// ("Archived images cannot be pulled. Requests to pull the archived image will fail with
    /// a 404 error": ECR user guide, "Archiving an image"). The status is moto's, which
    /// `tests/aws_rules/ecr_gaps.py` gives UpdateImageStorageClass.
    pub archived_not_pullable: bool,
    /// A manifest pushed is an image of the repository that ECR's control plane lists, tagged
    /// or not (a referrer pushed by digest is an untagged image: "A set of artifacts for a
    /// container image is transferred with that container and stored as a separate image",
    /// ECR user guide, "Private images in Amazon ECR"; `DescribeImages` and `ListImages` list
    /// both unless `tagStatus` says TAGGED or UNTAGGED, ECR API reference,
    /// `DescribeImagesFilter`): each push is written to moto's ECR (PutImage with the pushed
    /// digest, and its tag when pushed by tag; `EcrWorld::seed`'s own record of it then
    /// changes nothing).
    pub pushes_listed: bool,
    /// Added to every request before it is answered (zero by default): a registry across a
    /// network, where a loop of sequential requests costs its count times the round trip, as
    /// it does against ECR from Lambda (tens of milliseconds each), and not on loopback.
    pub latency: std::time::Duration,
}

impl Default for Behaviours {
    fn default() -> Self {
        Behaviours {
            sticky_range: true,
            patch_created: true,
            min_part_size: true,
            refuse_empty_upload: true,
            refuse_rewind: true,
            presigned_blob_redirect: true,
            put_image_rate_limit: true,
            immutable_tags: true,
            manifest_size_limit: true,
            tag_page_limit: true,
            referrers_api: true,
            archived_not_pullable: true,
            pushes_listed: true,
            latency: std::time::Duration::ZERO,
        }
    }
}

impl Behaviours {
    /// Every behaviour off: the proxy is transparent.
    pub fn plain() -> Self {
        Behaviours {
            sticky_range: false,
            patch_created: false,
            min_part_size: false,
            refuse_empty_upload: false,
            refuse_rewind: false,
            presigned_blob_redirect: false,
            put_image_rate_limit: false,
            immutable_tags: false,
            manifest_size_limit: false,
            tag_page_limit: false,
            referrers_api: false,
            archived_not_pullable: false,
            pushes_listed: false,
            latency: std::time::Duration::ZERO,
        }
    }
}

/// Throttling of a whole host, not an ECR specific: one request in `every` (drawn at random from
/// a fixed seed, so a client's retry is not throttled in lockstep) is answered 429 (every other
/// one of those 503, S3's SlowDown) with `Retry-After: retry_after_secs`.
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    /// On average one request in this many is throttled.
    pub every: usize,
    /// `Retry-After` in seconds.
    pub retry_after_secs: u64,
}

/// Where repository settings are read: moto's URL and the role into this host's account.
type ControlPlane = (String, Option<String>);

struct PlaneState {
    /// ECR host this plane serves (`<account>.dkr.ecr.<region>.amazonaws.com`).
    ecr_host: String,
    upstream: String,
    upstream_auth: Option<(String, String)>,
    host: String,
    presign_host: String,
    http: reqwest::Client,
    behaviours: Mutex<Behaviours>,
    throttle: Mutex<Option<Throttle>>,
    /// The throttle's xorshift state.
    throttle_draws: Mutex<u64>,
    uploads: Mutex<HashMap<String, Upload>>,
    puts: Mutex<HashMap<String, VecDeque<Instant>>>,
    referrers: Mutex<HashMap<(String, String), Vec<serde_json::Value>>>,
    revoked: Mutex<Option<String>>,
    control: Mutex<Option<ControlPlane>>,
    ecr: tokio::sync::Mutex<Option<aws_sdk_ecr::Client>>,
    counts: Mutex<HashMap<&'static str, usize>>,
    operations: Mutex<Vec<PlaneOp>>,
}

/// A running ECR data plane in front of one distribution registry; stops when dropped.
pub struct EcrPlane {
    /// `127.0.0.1:PORT`: where clients reach this ECR host's data plane.
    pub host: String,
    state: Arc<PlaneState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EcrPlane {
    /// Starts the plane for `ecr_host` in front of the distribution registry at `upstream`
    /// (whose Basic credentials it uses to serve presigned blob URLs).
    pub fn start(ecr_host: &str, upstream: &str, upstream_auth: Option<(String, String)>) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let ecr_host = ecr_host.to_string();
        let upstream = upstream.to_string();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let presign = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let host = listener.local_addr().unwrap().to_string();
                let presign_port = presign.local_addr().unwrap().port();
                // Another host name (and port): the client must treat it as another origin.
                let presign_v6 = tokio::net::TcpListener::bind(("::1", presign_port))
                    .await
                    .ok();
                let state = Arc::new(PlaneState {
                    ecr_host,
                    upstream,
                    upstream_auth,
                    host: host.clone(),
                    presign_host: format!("localhost:{presign_port}"),
                    http: reqwest::Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .unwrap(),
                    behaviours: Mutex::new(Behaviours::default()),
                    throttle: Mutex::new(None),
                    throttle_draws: Mutex::new(0),
                    uploads: Mutex::new(HashMap::new()),
                    puts: Mutex::new(HashMap::new()),
                    referrers: Mutex::new(HashMap::new()),
                    revoked: Mutex::new(None),
                    control: Mutex::new(None),
                    ecr: tokio::sync::Mutex::new(None),
                    counts: Mutex::new(HashMap::new()),
                    operations: Mutex::new(Vec::new()),
                });
                let app = axum::Router::new()
                    .fallback(handle)
                    .with_state(state.clone());
                let storage = axum::Router::new()
                    .fallback(presigned)
                    .with_state(state.clone());
                tokio::spawn(axum::serve(presign, storage.clone()).into_future());
                if let Some(v6) = presign_v6 {
                    tokio::spawn(axum::serve(v6, storage).into_future());
                }
                ready_tx.send(state).unwrap();
                let server = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = shutdown_rx.await;
                });
                let _ = server.await;
            });
        });
        let state = ready_rx
            .recv()
            .expect("the ECR data plane proxy did not start");
        EcrPlane {
            host: state.host.clone(),
            state,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// Changes behaviours (the others stay as they are).
    pub fn set(&self, change: impl FnOnce(&mut Behaviours)) {
        change(&mut self.state.behaviours.lock().unwrap());
    }

    /// Throttles every `every`-th request from now on (`None`: stop).
    pub fn throttle(&self, throttle: Option<Throttle>) {
        *self.state.throttle.lock().unwrap() = throttle;
    }

    /// Where to read repository settings (tag mutability) for this ECR host: moto, as the
    /// account of `role` (none: moto's default account).
    pub fn attach_control_plane(&self, moto_url: &str, role: Option<&str>) {
        *self.state.control.lock().unwrap() =
            Some((moto_url.to_string(), role.map(str::to_string)));
    }

    /// Refuses a credential (the `Authorization` value) from now on, as ECR does a revoked or
    /// expired token: 401 with ECR's Basic challenge. (moto hands out the same token again, so
    /// a refresh cannot help here; the fake registry's rotating password covers refresh.)
    pub fn revoke_credential(&self, authorization: &str) {
        *self.state.revoked.lock().unwrap() = Some(authorization.to_string());
    }

    /// Every registry request that needs an ECR action, in order.
    pub fn operations(&self) -> Vec<PlaneOp> {
        self.state.operations.lock().unwrap().clone()
    }

    /// How often a behaviour fired, by name (`request`: every request, `redirect`, `throttled`, `rewind_refused`,
    /// `part_too_small`, `empty_refused`, `put_image_throttled`, `immutable_refused`,
    /// `manifest_too_large`, `tag_page_cut`, `referrers_served`, `auth_refused`, `patch`).
    pub fn count(&self, what: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(what)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for EcrPlane {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bump(state: &PlaneState, what: &'static str) {
    *state.counts.lock().unwrap().entry(what).or_default() += 1;
}

/// An OCI error body, as registries (and ECR) send them.
fn registry_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(State(state): State<Arc<PlaneState>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    bump(&state, "request");
    if let Some(refused) = refuse_credential(&state, request.headers()) {
        return refused;
    }
    if let Some(throttled) = throttled(&state) {
        return throttled;
    }
    let behaviours = state.behaviours.lock().unwrap().clone();
    if !behaviours.latency.is_zero() {
        tokio::time::sleep(behaviours.latency).await;
    }
    let route = route(&path);
    if let Some((action, repository)) = ecr_action(&route, &method) {
        let function = request
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| {
                ua.split_whitespace()
                    .find_map(|p| p.strip_prefix("function/"))
            })
            .unwrap_or_default()
            .to_string();
        state.operations.lock().unwrap().push(PlaneOp {
            function,
            action,
            repository,
        });
    }
    match (route, &method) {
        (Route::UploadSession { id, .. }, &Method::PATCH) => {
            upload_part(&state, &behaviours, &id, request).await
        }
        (Route::UploadSession { name, id }, &Method::PUT) => {
            complete_upload(&state, &behaviours, &name, &id, request).await
        }
        (Route::UploadSession { id, .. }, &Method::GET) => {
            let mut response = forward(&state, request).await;
            if behaviours.sticky_range {
                stick_range(&state, &id, &mut response);
            }
            response
        }
        (Route::Blob { .. }, &Method::GET) if behaviours.presigned_blob_redirect => {
            bump(&state, "redirect");
            let location = format!(
                "http://{}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=0f1e2d",
                state.presign_host
            );
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", location)],
                Body::empty(),
            )
                .into_response()
        }
        (Route::Manifest { name, reference }, &Method::PUT) => {
            put_manifest(&state, &behaviours, &name, &reference, request).await
        }
        (Route::Manifest { name, reference }, &Method::GET | &Method::HEAD)
            if behaviours.archived_not_pullable && archived(&state, &name, &reference).await =>
        {
            bump(&state, "archived_refused");
            registry_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                &format!("Requested image not found: {name}:{reference} is archived"),
            )
        }
        (Route::Tags { name }, &Method::GET) if behaviours.tag_page_limit => {
            tags_page(&state, &name, request).await
        }
        (Route::Referrers { name, digest }, &Method::GET) if behaviours.referrers_api => {
            bump(&state, "referrers_served");
            referrers(&state, &name, &digest, request.uri().query())
        }
        _ => forward(&state, request).await,
    }
}

/// ECR answers an expired or revoked token with a Basic challenge.
fn refuse_credential(state: &PlaneState, headers: &HeaderMap) -> Option<Response> {
    let auth = headers.get("authorization")?.to_str().ok()?.to_string();
    if state.revoked.lock().unwrap().as_deref() != Some(auth.as_str()) {
        return None;
    }
    bump(state, "auth_refused");
    let mut response = registry_error(
        StatusCode::UNAUTHORIZED,
        "DENIED",
        "Your authorization token has expired. Reauthenticate and try again.",
    );
    let challenge = format!(
        "Basic realm=\"https://{}/\",service=\"ecr.amazonaws.com\"",
        state.ecr_host
    );
    response.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_str(&challenge).unwrap(),
    );
    Some(response)
}

fn throttled(state: &PlaneState) -> Option<Response> {
    let throttle = (*state.throttle.lock().unwrap())?;
    // A fixed xorshift sequence: strictly periodic throttling (every third request) would hit
    // the same request of a fixed retry cycle every time, which no real service does.
    let draw = {
        let mut seed = state.throttle_draws.lock().unwrap();
        if *seed == 0 {
            *seed = 0x9e37_79b9_7f4a_7c15;
        }
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    if throttle.every == 0 || draw % throttle.every as u64 != 0 {
        return None;
    }
    bump(state, "throttled");
    let (status, code) = if (draw / throttle.every as u64) % 2 == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    } else {
        (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS")
    };
    let mut response = registry_error(status, code, "Rate exceeded");
    response.headers_mut().insert(
        "retry-after",
        HeaderValue::from_str(&throttle.retry_after_secs.to_string()).unwrap(),
    );
    Some(response)
}
