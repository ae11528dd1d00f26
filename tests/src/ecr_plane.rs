//! ECR's data plane as it really behaves, in front of a distribution registry (test rig only).
//!
//! Distribution is well behaved where ECR is not. This proxy, one per ECR host, forwards every
//! request to its distribution registry and changes only what ECR is documented or reported to
//! do differently; each behaviour can be switched off alone (`EcrPlane::set`), so a test can
//! show that the engine needs it. Every ECR-mode test and `make demo` go through it.
//!
//! It runs on its own runtime thread so that a test blocking its own thread (skopeo, a child
//! process) never stalls it.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use sha2::Digest as _;

mod listing;

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

#[derive(Default)]
struct Upload {
    /// Bytes the registry holds.
    received: u64,
    /// Parts received.
    parts: u32,
    /// Size of the last part.
    last_part: u64,
    /// The `Range` end reported after the first part (ECR never advances it).
    first_range_end: Option<u64>,
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

/// A registry request as IAM sees it: the function that made it (`function/<name>` in the
/// user agent; empty for the harness's own), the ECR action it needs and the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneOp {
    /// The Lambda function, or empty.
    pub function: String,
    /// e.g. `ecr:PutImage`.
    pub action: &'static str,
    /// Repository name.
    pub repository: String,
}

/// The IAM action ECR requires for a registry request ("Amazon ECR required IAM permissions for
/// pushing and pulling images": BatchGetImage for manifests, GetDownloadUrlForLayer for blobs,
/// BatchCheckLayerAvailability to check a layer, Initiate/UploadLayerPart/CompleteLayerUpload
/// and PutImage to push, ListImages to list tags, BatchDeleteImage to delete); `None` for
/// requests that need none (`/v2/`, cancelling an upload). The referrers API is taken to need
/// BatchGetImage, like the manifests it lists.
fn ecr_action(route: &Route, method: &Method) -> Option<(&'static str, String)> {
    let (action, name) = match (route, method) {
        (Route::Manifest { name, .. }, &Method::GET | &Method::HEAD) => ("ecr:BatchGetImage", name),
        (Route::Manifest { name, .. }, &Method::PUT) => ("ecr:PutImage", name),
        (Route::Manifest { name, .. }, &Method::DELETE) => ("ecr:BatchDeleteImage", name),
        (Route::Blob { name }, &Method::GET) => ("ecr:GetDownloadUrlForLayer", name),
        (Route::Blob { name }, &Method::HEAD) => ("ecr:BatchCheckLayerAvailability", name),
        (Route::UploadStart { name }, &Method::POST) => ("ecr:InitiateLayerUpload", name),
        (Route::UploadSession { name, .. }, &Method::PATCH) => ("ecr:UploadLayerPart", name),
        (Route::UploadSession { name, .. }, &Method::PUT) => ("ecr:CompleteLayerUpload", name),
        (Route::Tags { name }, &Method::GET) => ("ecr:ListImages", name),
        (Route::Referrers { name, .. }, &Method::GET) => ("ecr:BatchGetImage", name),
        _ => return None,
    };
    Some((action, name.clone()))
}

/// What a `/v2/` path addresses.
enum Route {
    UploadStart { name: String },
    UploadSession { name: String, id: String },
    Blob { name: String },
    Manifest { name: String, reference: String },
    Tags { name: String },
    Referrers { name: String, digest: String },
    Other,
}

fn route(path: &str) -> Route {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        if id.is_empty() {
            return Route::UploadStart {
                name: name.to_string(),
            };
        }
        return Route::UploadSession {
            name: name.to_string(),
            id: id.to_string(),
        };
    }
    if let Some((name, _)) = rest.rsplit_once("/blobs/") {
        return Route::Blob {
            name: name.to_string(),
        };
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Route::Manifest {
            name: name.to_string(),
            reference: reference.to_string(),
        };
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags {
            name: name.to_string(),
        };
    }
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        return Route::Referrers {
            name: name.to_string(),
            digest: digest.to_string(),
        };
    }
    Route::Other
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

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Checks a part against ECR's rules before it is stored: it must start where the session
/// stands, and the part before it must not have been under the minimum.
fn refuse_part(
    state: &PlaneState,
    behaviours: &Behaviours,
    id: &str,
    first_byte: Option<u64>,
) -> Option<Response> {
    let uploads = state.uploads.lock().unwrap();
    let upload = uploads.get(id);
    let received = upload.map(|u| u.received).unwrap_or(0);
    if behaviours.refuse_rewind {
        if let Some(first) = first_byte {
            if first != received {
                drop(uploads);
                bump(state, "rewind_refused");
                return Some(registry_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UPLOAD_INVALID",
                    &format!("First byte of the layer part is {first} instead of {received}"),
                ));
            }
        }
    }
    if behaviours.min_part_size {
        if let Some(u) = upload {
            if u.parts > 0 && u.last_part < MIN_PART_BYTES {
                drop(uploads);
                bump(state, "part_too_small");
                return Some(registry_error(
                    StatusCode::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    "LayerPartTooSmallException: All layer parts except the last part should be at least 5MB",
                ));
            }
        }
    }
    None
}

fn record_part(state: &PlaneState, id: &str, length: u64) {
    let mut uploads = state.uploads.lock().unwrap();
    let upload = uploads.entry(id.to_string()).or_default();
    upload.received += length;
    upload.parts += 1;
    upload.last_part = length;
    if upload.first_range_end.is_none() && upload.received > 0 {
        upload.first_range_end = Some(upload.received - 1);
    }
}

fn stick_range(state: &PlaneState, id: &str, response: &mut Response) {
    let first = state
        .uploads
        .lock()
        .unwrap()
        .get(id)
        .and_then(|u| u.first_range_end);
    if let Some(end) = first {
        response
            .headers_mut()
            .insert("range", HeaderValue::from_str(&format!("0-{end}")).unwrap());
    }
}

async fn upload_part(
    state: &PlaneState,
    behaviours: &Behaviours,
    id: &str,
    request: Request,
) -> Response {
    bump(state, "patch");
    let first_byte = request
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim_start_matches("bytes ")
                .split('-')
                .next()?
                .parse()
                .ok()
        });
    if let Some(refused) = refuse_part(state, behaviours, id, first_byte) {
        // Read the part before answering, so the client sees the answer rather than a reset.
        let _ = axum::body::to_bytes(request.into_body(), usize::MAX).await;
        return refused;
    }
    let declared = content_length(request.headers());
    let mut response = forward(state, request).await;
    if !response.status().is_success() {
        return response;
    }
    // Distribution's Range says what it holds; the part is the difference.
    let held = response
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.rsplit_once('-')?.1.parse::<u64>().ok())
        .map(|end| end + 1);
    let before = state
        .uploads
        .lock()
        .unwrap()
        .get(id)
        .map(|u| u.received)
        .unwrap_or(0);
    let length = held
        .map(|h| h.saturating_sub(before))
        .or(declared)
        .unwrap_or(0);
    record_part(state, id, length);
    if behaviours.patch_created {
        *response.status_mut() = StatusCode::CREATED;
    }
    if behaviours.sticky_range {
        stick_range(state, id, &mut response);
    }
    response
}

async fn complete_upload(
    state: &PlaneState,
    behaviours: &Behaviours,
    name: &str,
    id: &str,
    request: Request,
) -> Response {
    let body_length = content_length(request.headers()).unwrap_or(0);
    if body_length > 0 {
        if let Some(refused) = refuse_part(state, behaviours, id, None) {
            return refused;
        }
        record_part(state, id, body_length);
    }
    let parts = state
        .uploads
        .lock()
        .unwrap()
        .get(id)
        .map(|u| u.parts)
        .unwrap_or(0);
    if behaviours.refuse_empty_upload && parts == 0 {
        bump(state, "empty_refused");
        let account = state.ecr_host.split('.').next().unwrap_or_default();
        return registry_error(
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
            &format!("The upload with id '{id}' in the repository with name '{name}' in registry with id '{account}' cannot be completed because it does not have any parts"),
        );
    }
    let response = forward(state, request).await;
    if response.status().is_success() {
        state.uploads.lock().unwrap().remove(id);
    }
    response
}

async fn put_manifest(
    state: &PlaneState,
    behaviours: &Behaviours,
    name: &str,
    reference: &str,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let limit = MAX_MANIFEST_BYTES * 4;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return registry_error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "manifest body unreadable",
        );
    };
    if behaviours.manifest_size_limit && bytes.len() > MAX_MANIFEST_BYTES {
        bump(state, "manifest_too_large");
        return registry_error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            &format!(
                "Manifest is {} bytes; the maximum is {MAX_MANIFEST_BYTES}",
                bytes.len()
            ),
        );
    }
    if behaviours.put_image_rate_limit && over_put_rate(state, name) {
        bump(state, "put_image_throttled");
        return registry_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "Rate exceeded",
        );
    }
    let by_tag = !reference.starts_with("sha256:");
    if behaviours.immutable_tags && by_tag && tag_immutable(state, name, reference).await {
        let head = state
            .http
            .head(format!(
                "http://{}/v2/{name}/manifests/{reference}",
                state.upstream
            ))
            .header("accept", oci::manifest::MANIFEST_ACCEPT);
        let head = match &state.upstream_auth {
            Some((u, p)) => head.basic_auth(u, Some(p)),
            None => head,
        };
        if head
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            bump(state, "immutable_refused");
            return registry_error(
                StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                &format!("The image tag '{reference}' already exists in the '{name}' repository and cannot be overwritten because the repository is immutable."),
            );
        }
    }
    let media_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let request = Request::from_parts(parts, Body::from(bytes.clone()));
    let response = forward(state, request).await;
    if response.status().is_success() {
        record_referrer(state, name, &media_type, &bytes);
        if behaviours.pushes_listed {
            listing::list_pushed(state, (name, reference), &media_type, &bytes).await;
        }
    }
    response
}

/// Sliding one-second window of manifest PUTs per repository.
fn over_put_rate(state: &PlaneState, name: &str) -> bool {
    let mut puts = state.puts.lock().unwrap();
    let window = puts.entry(name.to_string()).or_default();
    let now = Instant::now();
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
    {
        window.pop_front();
    }
    if window.len() >= PUT_IMAGE_PER_SECOND {
        return true;
    }
    window.push_back(now);
    false
}

/// Whether `tag` is immutable in the repository, from moto's DescribeRepositories: every tag
/// under IMMUTABLE, the tags no exclusion filter matches under IMMUTABLE_WITH_EXCLUSION, the
/// tags a filter matches under MUTABLE_WITH_EXCLUSION (ECR user guide, "Preventing image tags
/// from being overwritten").
async fn tag_immutable(state: &PlaneState, name: &str, tag: &str) -> bool {
    let Some(client) = control_client(state).await else {
        return false;
    };
    let found = client
        .describe_repositories()
        .repository_names(name)
        .send()
        .await;
    let Some(repo) = found.ok().and_then(|o| o.repositories().first().cloned()) else {
        return false;
    };
    let (tag_mutability, tag_mutability_exclusions) = ecr::admin::tag_mutability_of(&repo);
    ecr::RepositorySettings {
        tag_mutability,
        tag_mutability_exclusions,
        ..ecr::RepositorySettings::default()
    }
    .tag_is_immutable(tag)
}

/// The ECR control plane (moto) this data plane belongs to, when it has one: built once, shared.
async fn control_client(state: &PlaneState) -> Option<aws_sdk_ecr::Client> {
    let (moto_url, role) = state.control.lock().unwrap().clone()?;
    let mut ecr = state.ecr.lock().await;
    if ecr.is_none() {
        let moto = crate::moto::Moto::attach(&moto_url);
        // The plane's own calls (listing a push, reading an archive) retry briefly: moto answers
        // 500 for a push into a repository it does not hold, and the product's adaptive
        // 8-attempt backoff would stall the push for ~25 seconds.
        let client = moto.sdk(&state.ecr_host, role.as_deref()).await;
        let retry = aws_sdk_ecr::config::retry::RetryConfig::standard()
            .with_max_attempts(4)
            .with_initial_backoff(std::time::Duration::from_millis(10))
            .with_max_backoff(std::time::Duration::from_millis(100));
        let config = client.config().to_builder().retry_config(retry).build();
        *ecr = Some(aws_sdk_ecr::Client::from_conf(config));
    }
    ecr.clone()
}

/// Whether the control plane lists the image (a tag or a digest) as archived.
async fn archived(state: &PlaneState, name: &str, reference: &str) -> bool {
    let Some(client) = control_client(state).await else {
        return false;
    };
    let id = aws_sdk_ecr::types::ImageIdentifier::builder();
    let id = if reference.starts_with("sha256:") {
        id.image_digest(reference)
    } else {
        id.image_tag(reference)
    };
    client
        .describe_images()
        .repository_name(name)
        .image_ids(id.build())
        .filter(
            aws_sdk_ecr::types::DescribeImagesFilter::builder()
                .image_status(aws_sdk_ecr::types::ImageStatusFilter::Any)
                .build(),
        )
        .send()
        .await
        .ok()
        .is_some_and(|out| {
            out.image_details()
                .iter()
                .any(|d| d.image_status() == Some(&aws_sdk_ecr::types::ImageStatus::Archived))
        })
}

fn record_referrer(state: &PlaneState, name: &str, media_type: &str, bytes: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let Some(subject) = manifest["subject"]["digest"].as_str() else {
        return;
    };
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let artifact_type = manifest["artifactType"]
        .as_str()
        .or_else(|| manifest["config"]["mediaType"].as_str())
        .unwrap_or_default();
    let mut descriptor = serde_json::json!({
        "mediaType": manifest["mediaType"].as_str().unwrap_or(media_type),
        "digest": digest,
        "size": bytes.len(),
        "artifactType": artifact_type,
    });
    if let Some(annotations) = manifest.get("annotations") {
        descriptor["annotations"] = annotations.clone();
    }
    let mut referrers = state.referrers.lock().unwrap();
    let list = referrers
        .entry((name.to_string(), subject.to_string()))
        .or_default();
    if !list.iter().any(|d| d["digest"] == descriptor["digest"]) {
        list.push(descriptor);
    }
}

fn referrers(state: &PlaneState, name: &str, digest: &str, query: Option<&str>) -> Response {
    let wanted = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "artifactType")
            .map(|(_, v)| v.to_string())
    });
    let list: Vec<serde_json::Value> = state
        .referrers
        .lock()
        .unwrap()
        .get(&(name.to_string(), digest.to_string()))
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| wanted.as_deref().is_none_or(|w| d["artifactType"] == w))
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": list,
    });
    let mut response = (
        StatusCode::OK,
        [("content-type", "application/vnd.oci.image.index.v1+json")],
        index.to_string(),
    )
        .into_response();
    if wanted.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    response
}

/// A tag list page of at most `TAG_PAGE_MAX` (or the asked `n` when smaller), sorted, after
/// `last`, with a `Link` to the next page.
async fn tags_page(state: &PlaneState, name: &str, request: Request) -> Response {
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let n = query
        .get("n")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(TAG_PAGE_MAX)
        .clamp(1, TAG_PAGE_MAX);
    let (parts, _) = request.into_parts();
    let mut all = Vec::new();
    let mut next = Some(format!("/v2/{name}/tags/list?n=100000"));
    while let Some(path) = next.take() {
        let mut rb = state.http.get(format!("http://{}{path}", state.upstream));
        if let Some(auth) = parts.headers.get("authorization") {
            rb = rb.header("authorization", auth);
        }
        let Ok(resp) = rb.send().await else {
            return registry_error(StatusCode::BAD_GATEWAY, "UNKNOWN", "upstream unreachable");
        };
        if !resp.status().is_success() {
            return into_response(resp, state);
        }
        next = resp
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| Some(l.split_once('<')?.1.split_once('>')?.0.to_string()));
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        for tag in body["tags"].as_array().into_iter().flatten() {
            if let Some(tag) = tag.as_str() {
                all.push(tag.to_string());
            }
        }
    }
    all.sort();
    let after = query.get("last");
    let rest: Vec<String> = all
        .into_iter()
        .filter(|t| after.is_none_or(|a| t > a))
        .collect();
    let page: Vec<String> = rest.iter().take(n).cloned().collect();
    let body = serde_json::json!({"name": name, "tags": page});
    let mut response = (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if rest.len() > n {
        bump(state, "tag_page_cut");
        let last = page.last().cloned().unwrap_or_default();
        let link = format!(
            "</v2/{name}/tags/list?n={n}&last={}>; rel=\"next\"",
            url::form_urlencoded::byte_serialize(last.as_bytes()).collect::<String>()
        );
        response
            .headers_mut()
            .insert("link", HeaderValue::from_str(&link).unwrap());
    }
    response
}

/// The presigned-URL host: serves blobs without registry auth, refusing a request that carries
/// an `Authorization` header as S3 does.
async fn presigned(State(state): State<Arc<PlaneState>>, request: Request) -> Response {
    if request.headers().contains_key("authorization") {
        bump(&state, "presigned_auth_refused");
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified</Message><ArgumentName>Authorization</ArgumentName></Error>",
        )
            .into_response();
    }
    let mut rb = state
        .http
        .get(format!("http://{}{}", state.upstream, request.uri().path()));
    if let Some(range) = request.headers().get("range") {
        rb = rb.header("range", range);
    }
    if let Some((u, p)) = &state.upstream_auth {
        rb = rb.basic_auth(u, Some(p));
    }
    match rb.send().await {
        Ok(resp) => into_response(resp, &state),
        Err(e) => registry_error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
    }
}

/// Sends the request on to the distribution registry, streaming both bodies.
async fn forward(state: &PlaneState, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("http://{}{path}", state.upstream);
    let mut rb = state.http.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if name != "host" && name != "transfer-encoding" {
            rb = rb.header(name, value);
        }
    }
    let has_body = content_length(&parts.headers).is_some_and(|l| l > 0)
        || parts.headers.contains_key("transfer-encoding");
    if has_body {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        rb = rb.body(reqwest::Body::wrap_stream(stream));
    }
    match rb.send().await {
        Ok(resp) => into_response(resp, state),
        Err(e) => registry_error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
    }
}

/// The upstream's answer as ours: status, headers (its own host in `Location` replaced by
/// ours) and the streamed body.
fn into_response(resp: reqwest::Response, state: &PlaneState) -> Response {
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if name == "location" {
            let location = value
                .to_str()
                .unwrap_or_default()
                .replace(&state.upstream, &state.host);
            builder = builder.header(name.as_str(), location);
        } else if name != "transfer-encoding" && name != "connection" {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
    }
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap()
}
