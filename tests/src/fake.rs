//! An in-process fake registry, only for faults a real registry can't be made to produce:
//! 429 with Retry-After, 500s, a connection reset mid-blob, a truncated body, bytes that don't
//! match their digest, and a Bearer token flow. It serves one image read-only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;

use crate::image::TestImage;

/// A misbehaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: secs` and the TOOMANYREQUESTS code.
    TooManyRequests {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// 500 Internal Server Error.
    ServerError,
    /// Half the body, then the connection is dropped (Content-Length promised the whole).
    ResetMidBody,
    /// Half the body with a Content-Length of half: a complete-looking short response.
    Truncated,
    /// The full length, one byte flipped.
    WrongBytes,
}

/// Applies `fault` to the next `times` requests of `method` whose path contains `path_part`.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// HTTP method to match.
    pub method: Method,
    /// Substring of the path.
    pub path_part: String,
    /// The misbehaviour.
    pub fault: Fault,
    /// How many matching requests get it (`usize::MAX`: all).
    pub times: usize,
    /// When above 0, only every n-th matching request gets it (the rest are served normally).
    pub every: usize,
    /// Matching requests seen so far.
    pub seen: usize,
}

impl FaultRule {
    /// `fault` on the next `times` requests of `method` whose path contains `path_part`.
    pub fn new(method: Method, path_part: &str, fault: Fault, times: usize) -> Self {
        FaultRule {
            method,
            path_part: path_part.to_string(),
            fault,
            times,
            every: 0,
            seen: 0,
        }
    }

    /// `fault` on every `n`-th request of any method to any path, forever.
    pub fn every(n: usize, fault: Fault) -> Self {
        FaultRule {
            every: n,
            ..FaultRule::new(Method::GET, "", fault, usize::MAX)
        }
    }
}

/// Basic auth: the user, the password accepted now, and a rotation (after that many requests,
/// only the new password is accepted: an expiring token).
type ExpiringBasic = (String, Mutex<String>, Mutex<Option<(usize, String)>>);

#[derive(Default)]
struct FakeState {
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, Bytes>,
    rules: Mutex<Vec<FaultRule>>,
    requests: Mutex<Vec<String>>,
    token: Option<(String, String, String)>,
    token_scopes: Mutex<Vec<String>>,
    host: String,
    basic: Option<ExpiringBasic>,
    started: Option<std::time::Instant>,
    /// The tag the image is served under (for the tag list).
    tag: String,
    /// OCI 1.1 referrers API: descriptors of the manifests whose subject is the image, served
    /// one per page (`Link` paging). `None`: no API (404).
    referrers: Option<Vec<serde_json::Value>>,
    subject: String,
    arrivals: Mutex<Vec<(std::time::Duration, String)>>,
}

/// A running fake registry; stops when dropped.
pub struct FakeRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    /// Serves `image` (and its children) under tag `tag`, with these faults.
    pub async fn start(image: &TestImage, tag: &str, rules: Vec<FaultRule>) -> Self {
        Self::start_inner(image, tag, rules, None).await
    }

    /// Like `start`, but every `/v2/` request needs a Bearer token issued at `/token` to
    /// `user`:`password`.
    pub async fn start_with_bearer(
        image: &TestImage,
        tag: &str,
        user: &str,
        password: &str,
    ) -> Self {
        let token = (
            "fake-bearer-token-value".to_string(),
            user.to_string(),
            password.to_string(),
        );
        Self::start_inner(image, tag, Vec::new(), Some(token)).await
    }

    async fn start_inner(
        image: &TestImage,
        tag: &str,
        rules: Vec<FaultRule>,
        token: Option<(String, String, String)>,
    ) -> Self {
        Self::launch(image, tag, rules, token, None, None).await
    }

    async fn launch(
        image: &TestImage,
        tag: &str,
        rules: Vec<FaultRule>,
        token: Option<(String, String, String)>,
        basic: Option<ExpiringBasic>,
        referrers: Option<&[(TestImage, &str)]>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let mut state = FakeState {
            rules: Mutex::new(rules),
            token,
            basic,
            started: Some(std::time::Instant::now()),
            host: host.clone(),
            tag: tag.to_string(),
            subject: image.digest.clone(),
            referrers: referrers.map(|list| {
                list.iter()
                    .map(|(r, artifact_type)| {
                        serde_json::json!({"mediaType": r.media_type, "digest": r.digest,
                            "size": r.manifest.len(), "artifactType": artifact_type})
                    })
                    .collect()
            }),
            ..FakeState::default()
        };
        add_image(&mut state, image);
        for (referrer, _) in referrers.unwrap_or_default() {
            add_image(&mut state, referrer);
        }
        state.manifests.insert(
            tag.to_string(),
            (image.media_type.clone(), image.manifest.clone()),
        );
        let state = Arc::new(state);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeRegistry { host, state, task }
    }

    /// Like `start`, but every `/v2/` request needs Basic `user`:`password`; after
    /// `rotate_after` requests only `next_password` is accepted (a token expiring mid-copy).
    pub async fn start_with_expiring_basic(
        image: &TestImage,
        tag: &str,
        user: &str,
        password: &str,
        rotate_after: usize,
        next_password: &str,
    ) -> Self {
        let basic = (
            user.to_string(),
            Mutex::new(password.to_string()),
            Mutex::new(Some((rotate_after, next_password.to_string()))),
        );
        Self::launch(image, tag, Vec::new(), None, Some(basic), None).await
    }

    /// Like `start`, plus the OCI 1.1 referrers API listing `referrers` (each with `subject` =
    /// the image), one per page.
    pub async fn start_with_referrers(
        image: &TestImage,
        tag: &str,
        referrers: &[(TestImage, &str)],
    ) -> Self {
        Self::launch(image, tag, Vec::new(), None, None, Some(referrers)).await
    }

    /// When each request arrived (since the start) and what it was, as `METHOD /path`.
    pub fn arrivals(&self) -> Vec<(std::time::Duration, String)> {
        self.state.arrivals.lock().unwrap().clone()
    }

    /// Requests seen so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests of `method` had a path containing `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")) && r.contains(part))
            .count()
    }

    /// Scopes requested at the token endpoint.
    pub fn token_scopes(&self) -> Vec<String> {
        self.state.token_scopes.lock().unwrap().clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn add_image(state: &mut FakeState, image: &TestImage) {
    state.manifests.insert(
        image.digest.clone(),
        (image.media_type.clone(), image.manifest.clone()),
    );
    for blob in &image.blobs {
        let crate::image::BlobData::Bytes(bytes) = &blob.data else {
            panic!("the fake registry serves in-memory blobs only");
        };
        state.blobs.insert(blob.digest.clone(), bytes.clone());
    }
    for child in &image.children {
        add_image(state, child);
    }
}

fn registry_error(status: StatusCode, code: &str, headers: &[(&'static str, String)]) -> Response {
    let mut resp = (
        status,
        format!(r#"{{"errors":[{{"code":"{code}","message":"fake registry says {code}"}}]}}"#),
    )
        .into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(*k, v.parse().unwrap());
    }
    resp
}

async fn handle(State(state): State<Arc<FakeState>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let seen = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(format!("{method} {path}"));
        requests.len()
    };
    if let Some(started) = state.started {
        state
            .arrivals
            .lock()
            .unwrap()
            .push((started.elapsed(), format!("{method} {path}")));
    }
    if let Some((user, password, rotation)) = &state.basic {
        {
            let mut rotation = rotation.lock().unwrap();
            if rotation.as_ref().is_some_and(|(after, _)| seen > *after) {
                *password.lock().unwrap() = rotation.take().unwrap().1;
            }
        }
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.lock().unwrap()))
        );
        let authorized = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected);
        if !authorized {
            return registry_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                &[("www-authenticate", r#"Basic realm="fake""#.to_string())],
            );
        }
    }

    if path == "/token" {
        return issue_token(&state, request.headers(), &query);
    }
    if let Some((token, _, _)) = &state.token {
        let authorized = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {token}"));
        if !authorized {
            let challenge = format!(
                r#"Bearer realm="http://{}/token",service="fake-registry",scope="repository:x:pull""#,
                state.host
            );
            return registry_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                &[("www-authenticate", challenge)],
            );
        }
    }

    let fault = {
        let mut rules = state.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| {
                r.times > 0 && (r.every > 0 || r.method == method) && path.contains(&r.path_part)
            })
            .and_then(|r| {
                r.seen += 1;
                if r.every > 0 && r.seen % r.every != 0 {
                    return None;
                }
                r.times = r.times.saturating_sub(1);
                Some(r.fault.clone())
            })
    };
    match fault {
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            return registry_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                &[("retry-after", retry_after_secs.to_string())],
            );
        }
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
        }
        _ => {}
    }

    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    if path == "/v2/_catalog" {
        return axum::Json(serde_json::json!({"repositories": ["app"]})).into_response();
    }
    if path.ends_with("/tags/list") {
        return axum::Json(serde_json::json!({"name": "app", "tags": [state.tag]})).into_response();
    }
    if let Some((_, subject)) = path.rsplit_once("/referrers/") {
        let Some(all) = &state.referrers else {
            return registry_error(StatusCode::NOT_FOUND, "NOT_FOUND", &[]);
        };
        let listed: Vec<serde_json::Value> = if subject == state.subject {
            all.clone()
        } else {
            Vec::new()
        };
        let page: usize = query
            .split('&')
            .find_map(|p| p.strip_prefix("page="))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let body = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": listed.get(page).into_iter().collect::<Vec<_>>()});
        let mut resp = axum::Json(body).into_response();
        if page + 1 < listed.len() {
            let link = format!("<{path}?page={}>; rel=\"next\"", page + 1);
            resp.headers_mut().insert("link", link.parse().unwrap());
        }
        return resp;
    }
    if let Some((_, reference)) = path.rsplit_once("/manifests/") {
        return match state.manifests.get(reference) {
            Some((media_type, bytes)) => Response::builder()
                .header("content-type", media_type)
                .header("docker-content-digest", crate::image::sha256(bytes))
                .header("content-length", bytes.len())
                .body(Body::from(bytes.clone()))
                .unwrap(),
            None => registry_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &[]),
        };
    }
    if let Some((_, digest)) = path.rsplit_once("/blobs/") {
        let Some(bytes) = state.blobs.get(digest).cloned() else {
            return registry_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &[]);
        };
        let half = bytes.slice(..bytes.len() / 2);
        let (body, length) = match fault {
            Some(Fault::ResetMidBody) => {
                let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                    Ok(half),
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "reset by fake",
                    )),
                ];
                (
                    Body::from_stream(futures::stream::iter(chunks)),
                    bytes.len(),
                )
            }
            Some(Fault::Truncated) => (Body::from(half.clone()), half.len()),
            Some(Fault::WrongBytes) => {
                let mut wrong = bytes.to_vec();
                if let Some(first) = wrong.first_mut() {
                    *first ^= 0xff;
                }
                (Body::from(wrong), bytes.len())
            }
            _ => (Body::from(bytes.clone()), bytes.len()),
        };
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", length)
            .body(body)
            .unwrap();
    }
    registry_error(StatusCode::NOT_FOUND, "UNSUPPORTED", &[])
}

fn issue_token(state: &FakeState, headers: &HeaderMap, query: &str) -> Response {
    let Some((token, user, password)) = &state.token else {
        return StatusCode::NOT_FOUND.into_response();
    };
    for pair in query.split('&') {
        if let Some(scope) = pair.strip_prefix("scope=") {
            let scope = url_decode(scope);
            state.token_scopes.lock().unwrap().push(scope);
        }
    }
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64_engine().encode(format!("{user}:{password}"))
    );
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if given != expected {
        return registry_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", &[]);
    }
    axum::Json(serde_json::json!({"token": token, "expires_in": 300})).into_response()
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
