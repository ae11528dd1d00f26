//! A hostile registry for the rig: an in-process proxy in front of a real distribution registry
//! that forwards everything, except where an attack is switched on and it answers as a registry
//! operator (or whoever can push to it) would to steer the replicator: forged names, pages that
//! never end, huge bodies, redirects and links to other hosts, a referrers API that lies. Every
//! request is logged (method, raw path and query, whether it carried credentials), and so is
//! every request to a `Sink`: another host that must never be reached, or never with credentials.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;

/// One attack the hostile registry plays (several may be on at once).
#[derive(Clone, Debug, Default)]
pub struct Attacks {
    /// Tags the tag list names besides the real ones (dot segments, encoded slashes, paths).
    pub forged_tags: Vec<String>,
    /// Repository names the catalog lists besides the real ones.
    pub forged_repositories: Vec<String>,
    /// Every tag list page links to a next page, forever (a new `last` each time).
    pub endless_pages: bool,
    /// Every tag list page links to the page just read (the same `last`).
    pub stuck_pages: bool,
    /// Tag lists answer with a JSON body of this many bytes.
    pub huge_tag_list: Option<usize>,
    /// A GET the registry refuses (404, 500, ...) carries a body of this many bytes; how many
    /// were sent is counted (`huge_bytes_sent`).
    pub huge_errors: Option<usize>,
    /// Blob GETs redirect to this host (another origin), which redirects once within itself.
    pub blob_redirect_to: Option<String>,
    /// Upload sessions are opened at this host instead of the registry.
    pub upload_location_host: Option<String>,
    /// Referrers API pages (served for every digest) link to an absolute URL on this host.
    pub referrers_link_to: Option<String>,
    /// A referrers API: digest to the descriptors it lists (what the operator claims refers to
    /// it). Digests not listed have none. `None`: no API (404, as distribution answers).
    pub referrers: Option<HashMap<String, Vec<serde_json::Value>>>,
    /// Every request without credentials is challenged (Bearer, realm `/token` on this host),
    /// and the token endpoint answers a body of this many bytes.
    pub huge_token: Option<usize>,
    /// Every request without credentials is challenged with a Bearer realm at this URL (another
    /// host or port: where the operator wants the client's credentials sent).
    pub bearer_realm: Option<String>,
    /// Manifest GETs (and HEADs) by these tags answer 404: a transient refusal, not a deletion.
    pub hidden_tags: Vec<String>,
    /// Manifest GETs by these references answer bytes that are not the manifest.
    pub corrupt_manifests: Vec<String>,
}

struct HostileState {
    upstream: String,
    http: reqwest::Client,
    attacks: Mutex<Attacks>,
    log: Mutex<Vec<String>>,
    huge_bytes_sent: Arc<std::sync::atomic::AtomicUsize>,
    endless_counter: std::sync::atomic::AtomicUsize,
}

/// A running hostile registry; stops when dropped.
pub struct HostileRegistry {
    /// `127.0.0.1:PORT`: where clients reach it.
    pub host: String,
    state: Arc<HostileState>,
    _server: Server,
}

/// A thread running an axum app on its own runtime (so tests of any flavour can use it).
pub(crate) struct Server {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn serve(bind: &str, app: axum::Router) -> (String, Server) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let bind = bind.to_string();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
            ready_tx
                .send(listener.local_addr().unwrap().to_string())
                .unwrap();
            // Not graceful: a connection still streaming a huge body to a client that stopped
            // reading must not hold the test up; the runtime's end drops every connection.
            tokio::select! {
                _ = axum::serve(listener, app).into_future() => {}
                _ = shutdown_rx => {}
            }
        });
    });
    let host = ready_rx.recv().expect("the server did not start");
    (
        host,
        Server {
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        },
    )
}

impl HostileRegistry {
    /// A hostile registry in front of the distribution registry at `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Self {
        let state = Arc::new(HostileState {
            upstream: upstream.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            attacks: Mutex::new(Attacks::default()),
            log: Mutex::new(Vec::new()),
            huge_bytes_sent: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            endless_counter: std::sync::atomic::AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let (host, server) = serve("127.0.0.1:0", app);
        HostileRegistry {
            host,
            state,
            _server: server,
        }
    }

    /// Switches attacks on or off (the others stay as they are).
    pub fn attack(&self, change: impl FnOnce(&mut Attacks)) {
        change(&mut self.state.attacks.lock().unwrap());
    }

    /// Every request received: `METHOD /path?query` and ` auth` when it carried credentials.
    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// Bytes of huge bodies (tag lists, errors) actually sent.
    pub fn huge_bytes_sent(&self) -> usize {
        self.state
            .huge_bytes_sent
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A host that records every request and answers each as told: the place a hostile registry
/// points at (storage it redirects to, a host its links name). Must never see credentials.
pub struct Sink {
    /// `ADDRESS:PORT`.
    pub host: String,
    log: Arc<Mutex<Vec<String>>>,
    _server: Server,
}

impl Sink {
    /// A sink on `address` (a loopback address: `127.0.0.1`, or `127.0.0.2` for a host the rig
    /// does not allow). A GET of `/bounce/...` redirects within the sink to `/again/...`, which
    /// redirects to `back_to` (`http://host/path`) when given; anything else answers 404.
    pub fn start(address: &str, back_to: Option<String>) -> Self {
        Sink::serve(address, back_to, None)
    }

    /// A sink on `address` that answers every request but a `/bounce/...` one with `status`
    /// and `body` (storage refusing a presigned URL, with its error document).
    pub fn answering(address: &str, status: u16, body: &str) -> Self {
        let status = StatusCode::from_u16(status).unwrap();
        Sink::serve(address, None, Some((status, body.to_string())))
    }

    fn serve(address: &str, back_to: Option<String>, answer: Option<(StatusCode, String)>) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let recorded = log.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let log = recorded.clone();
            let back_to = back_to.clone();
            let answer = answer.clone();
            async move {
                let line = request_line(&request);
                log.lock().unwrap().push(line);
                let path = request.uri().path().to_string();
                if let Some(rest) = path.strip_prefix("/bounce/") {
                    return redirect(&format!("/again/{rest}"));
                }
                if path.starts_with("/again/") {
                    if let Some(back) = &back_to {
                        return redirect(back);
                    }
                }
                if let Some((status, body)) = answer {
                    return (status, [("content-type", "application/xml")], body).into_response();
                }
                (StatusCode::NOT_FOUND, "nothing here").into_response()
            }
        });
        let (host, server) = serve(&format!("{address}:0"), app);
        Sink {
            host,
            log,
            _server: server,
        }
    }

    /// Every request received (as `HostileRegistry::requests` writes them).
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn redirect(location: &str) -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [("location", location.to_string())],
        Body::empty(),
    )
        .into_response()
}

fn request_line(request: &Request) -> String {
    let auth = if request.headers().contains_key("authorization") {
        " auth"
    } else {
        ""
    };
    format!(
        "{} {}{auth}",
        request.method(),
        request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("")
    )
}

async fn handle(State(state): State<Arc<HostileState>>, request: Request) -> Response {
    state.log.lock().unwrap().push(request_line(&request));
    let attacks = state.attacks.lock().unwrap().clone();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();

    if let Some(size) = attacks.huge_token {
        if path == "/token" {
            return huge_body(&state, size, StatusCode::OK, br#"{"token":""#);
        }
        if !request.headers().contains_key("authorization") {
            let host = request
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let challenge = format!(r#"Bearer realm="http://{host}/token",service="hostile""#);
            return (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", challenge)],
                "",
            )
                .into_response();
        }
    }
    if let Some(realm) = &attacks.bearer_realm {
        if !request.headers().contains_key("authorization") {
            let challenge = format!(r#"Bearer realm="{realm}",service="hostile""#);
            return (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", challenge)],
                "",
            )
                .into_response();
        }
    }
    if path == "/v2/_catalog" && !attacks.forged_repositories.is_empty() {
        let response = forward(&state, request).await;
        return with_forged_entries(response, "repositories", &attacks.forged_repositories).await;
    }
    if path.ends_with("/tags/list") && method == Method::GET {
        if let Some(size) = attacks.huge_tag_list {
            return huge_body(&state, size, StatusCode::OK, br#"{"name":"x","tags":[""#);
        }
        if attacks.endless_pages || attacks.stuck_pages {
            let last = if attacks.stuck_pages {
                "t0".to_string()
            } else {
                let n = state
                    .endless_counter
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                format!("t{}", n + 1)
            };
            let name = path
                .trim_start_matches("/v2/")
                .trim_end_matches("/tags/list");
            let link = format!("</v2/{name}/tags/list?n=1&last={last}>; rel=\"next\"");
            return (
                StatusCode::OK,
                [
                    ("content-type", "application/json".to_string()),
                    ("link", link),
                ],
                format!(r#"{{"name":"{name}","tags":["{last}"]}}"#),
            )
                .into_response();
        }
        let response = forward(&state, request).await;
        return with_forged_entries(response, "tags", &attacks.forged_tags).await;
    }
    if let Some((_, reference)) = path.rsplit_once("/manifests/") {
        if attacks.hidden_tags.iter().any(|t| t == reference) && method != Method::PUT {
            return (
                StatusCode::NOT_FOUND,
                [("content-type", "application/json")],
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            )
                .into_response();
        }
        if attacks.corrupt_manifests.iter().any(|t| t == reference) && method == Method::GET {
            return (
                StatusCode::OK,
                [(
                    "content-type",
                    "application/vnd.oci.image.manifest.v1+json",
                )],
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":"junk"}"#,
            )
                .into_response();
        }
    }
    if let Some((name, digest)) = path.trim_start_matches("/v2/").rsplit_once("/referrers/") {
        if let Some(host) = &attacks.referrers_link_to {
            let link = format!("<http://{host}/v2/{name}/referrers/{digest}?page=2>; rel=\"next\"");
            return (
                StatusCode::OK,
                [
                    ("content-type", "application/vnd.oci.image.index.v1+json".to_string()),
                    ("link", link),
                ],
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            )
                .into_response();
        }
        if let Some(api) = &attacks.referrers {
            let listed = api.get(digest).cloned().unwrap_or_default();
            let body = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": listed});
            return (
                StatusCode::OK,
                [("content-type", "application/vnd.oci.image.index.v1+json")],
                body.to_string(),
            )
                .into_response();
        }
    }
    if path.contains("/blobs/sha256:") && method == Method::GET {
        if let Some(host) = &attacks.blob_redirect_to {
            // As storage would: presigned, the signature and a session token in the query.
            return redirect(&format!(
                "http://{host}/bounce{path}?X-Amz-Signature=0f1e2d&X-Amz-Security-Token=SESSION-SECRET"
            ));
        }
    }
    let upload_start = path.ends_with("/blobs/uploads/") && method == Method::POST;
    let mut response = forward(&state, request).await;
    if upload_start && !query.contains("mount=") {
        if let Some(host) = &attacks.upload_location_host {
            let moved = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(|l| {
                    let path = l
                        .find("/v2/")
                        .map(|at| l[at..].to_string())
                        .unwrap_or_else(|| l.to_string());
                    format!("http://{host}{path}")
                });
            if let Some(moved) = moved {
                response
                    .headers_mut()
                    .insert("location", HeaderValue::from_str(&moved).unwrap());
            }
        }
    }
    if (response.status().is_client_error() || response.status().is_server_error())
        && method == Method::GET
    {
        if let Some(size) = attacks.huge_errors {
            return huge_body(
                &state,
                size,
                response.status(),
                b"{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"",
            );
        }
    }
    response
}

/// A listing answer (`{"<field>": [...]}`) with `forged` entries added to the list.
async fn with_forged_entries(mut response: Response, field: &str, forged: &[String]) -> Response {
    if forged.is_empty() || response.status() != StatusCode::OK {
        return response;
    }
    let body = axum::body::to_bytes(std::mem::take(response.body_mut()), 16 << 20)
        .await
        .unwrap_or_default();
    let mut list: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !list[field].is_array() {
        list[field] = serde_json::json!([]);
    }
    let entries = list[field].as_array_mut().unwrap();
    entries.extend(forged.iter().map(|f| serde_json::json!(f)));
    response.headers_mut().remove("content-length");
    *response.body_mut() = Body::from(serde_json::to_vec(&list).unwrap());
    response
}

/// A body of `size` bytes starting with `prefix` and then `a`s, streamed in 64 KiB chunks; the
/// bytes actually sent are counted.
fn huge_body(
    state: &HostileState,
    size: usize,
    status: StatusCode,
    prefix: &'static [u8],
) -> Response {
    let sent = state.huge_bytes_sent.clone();
    let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
    let chunks = size / chunk.len();
    let stream = futures::stream::iter(
        std::iter::once(Bytes::from_static(prefix)).chain(std::iter::repeat_n(chunk, chunks)),
    )
    .map(move |c| {
        sent.fetch_add(c.len(), std::sync::atomic::Ordering::SeqCst);
        Ok::<_, std::io::Error>(c)
    });
    (
        status,
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn forward(state: &HostileState, request: Request) -> Response {
    forward_to(&state.http, &state.upstream, request).await
}

/// Sends a request on to the registry at `upstream` (`host:port`) and gives back its answer.
pub(crate) async fn forward_to(
    http: &reqwest::Client,
    upstream: &str,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 30)
        .await
        .unwrap_or_default();
    let url = format!(
        "http://{}{}",
        upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut builder = http.request(parts.method.clone(), &url);
    // The Host header goes along: the registry builds its Locations from it, so they name
    // this proxy, as a registry's own answers would.
    for (name, value) in &parts.headers {
        if name != "content-length" {
            builder = builder.header(name, value);
        }
    }
    let upstream = match builder.body(body).send().await {
        Ok(response) => response,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    headers.remove("transfer-encoding");
    let bytes = upstream.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
