//! A verified OCI layout served to the workflow's steps as a read-only registry (issue 35: the
//! state machine imports a layout with the same steps it replicates a registry with).
//!
//! The functions reach a source through a [`oci::RegistryClient`]: listing (`_catalog`, tag
//! lists), manifests, blobs in byte ranges (a large layer split across invocations), the
//! referrers API for the signature gate. [`LayoutRegistry`] answers exactly those requests on
//! the function's own loopback interface (`127.0.0.1`, a port the system picks; nothing outside
//! the process's host reaches it), from a layout whose transfer statement verified:
//! - a tag is answered only when the verified `index.json` names it (`REPOSITORY:TAG`, the
//!   statement's image, or a tag-scheme signature `sha256-<hex>.sig` of the repository);
//! - a manifest or blob is answered by digest from `blobs/sha256/`, a manifest bounded and
//!   checked against its digest before it is sent; a blob is streamed as stored, and its digest
//!   is checked where it arrives (the destination registry refuses a blob whose bytes are not
//!   its digest, and the client checks every manifest);
//! - the referrers API lists the layout's referrers (descriptors without a ref name whose
//!   manifest's `subject` is the digest asked), read once per verified index.
//!
//! Everything else is `404` or `405`: the served registry takes no write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use oci::layout::{self, split_ref_name, LayoutEntry, LayoutIndex, LayoutStore};
use oci::{BlobRef, Digest};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::transfer_statement::{verify_statement, TrustedTransferKey, VerifiedStatement};

/// Entries one tag list or catalog page answers at most (the client asks for fewer).
const MAX_PAGE: usize = 1000;
/// Referrer manifests of the layout read at once, when the referrers are first asked for.
const REFERRER_READS_AT_ONCE: usize = 16;
/// The image index media type the referrers API answers with.
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// What one verification of the layout found: its statement, its index, and the tags it
/// serves by repository.
pub struct VerifiedLayout {
    store: Arc<dyn LayoutStore>,
    /// The statement the layout's `index.json` matched.
    pub statement: VerifiedStatement,
    index: LayoutIndex,
    tags: BTreeMap<String, BTreeMap<String, LayoutEntry>>,
    /// Referrer descriptors by the digest they refer to, read on the first referrers request.
    referrers: OnceCell<HashMap<String, Vec<Value>>>,
}

impl std::fmt::Debug for VerifiedLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedLayout")
            .field("layout", &self.store.location())
            .field("repositories", &self.tags.len())
            .finish()
    }
}

impl VerifiedLayout {
    /// Verifies the layout's statement with `key` before anything else is read, then reads
    /// `index.json` and refuses it unless its images are exactly the statement's.
    pub async fn read(store: Arc<dyn LayoutStore>, key: &TrustedTransferKey) -> Result<Self> {
        let statement = verify_statement(store.as_ref(), key).await?;
        let path = format!("{}/index.json", store.location());
        let index = LayoutIndex::read(store.as_ref())
            .await
            .map_err(|source| Error::Registry {
                image: format!("oci:{}", store.location()),
                source,
            })?
            .ok_or_else(|| Error::TransferStatement {
                layout: store.location(),
                reason: "it has no index.json: nothing to import".into(),
            })?;
        statement.check_index(&index, &path)?;
        let mut tags: BTreeMap<String, BTreeMap<String, LayoutEntry>> = BTreeMap::new();
        let entries = index.entries(&path).map_err(|source| Error::Registry {
            image: path.clone(),
            source,
        })?;
        for entry in entries {
            // A bare `TAG` (no repository) is no image of a registry: not served.
            if let Ok((Some(repository), tag)) = split_ref_name(&entry.ref_name) {
                let (repository, tag) = (repository.to_string(), tag.to_string());
                tags.entry(repository).or_default().insert(tag, entry);
            }
        }
        Ok(VerifiedLayout {
            store,
            statement,
            index,
            tags,
            referrers: OnceCell::new(),
        })
    }

    /// The repositories the layout names.
    pub fn repositories(&self) -> impl Iterator<Item = &str> {
        self.tags.keys().map(String::as_str)
    }

    /// The layout's referrers by subject: each descriptor without a ref name whose manifest
    /// (read and checked against its digest) has a `subject`.
    async fn referrers(&self) -> oci::Result<&HashMap<String, Vec<Value>>> {
        self.referrers
            .get_or_try_init(|| async {
                let path = format!("{}/index.json", self.store.location());
                let unnamed = self.index.unnamed(&path)?;
                let store = self.store.as_ref();
                let read: Vec<oci::Result<Option<(String, Value)>>> =
                    futures::stream::iter(unnamed)
                        .map(|(entry, artifact_type)| async move {
                            let manifest =
                                layout::read_manifest(store, &entry.blob, Some(&entry.media_type))
                                    .await?;
                            let parsed: Value =
                                serde_json::from_slice(&manifest.bytes).unwrap_or(Value::Null);
                            let Some(subject) = parsed["subject"]["digest"].as_str() else {
                                return Ok(None);
                            };
                            let artifact_type = artifact_type
                                .or_else(|| parsed["artifactType"].as_str().map(str::to_string))
                                .or_else(|| {
                                    parsed["config"]["mediaType"].as_str().map(str::to_string)
                                });
                            let mut descriptor = json!({
                                "mediaType": entry.media_type,
                                "digest": entry.blob.digest.as_str(),
                                "size": entry.blob.size,
                            });
                            if let Some(t) = artifact_type {
                                descriptor["artifactType"] = t.into();
                            }
                            if let Some(a) = parsed.get("annotations").filter(|a| a.is_object()) {
                                descriptor["annotations"] = a.clone();
                            }
                            Ok(Some((subject.to_string(), descriptor)))
                        })
                        .buffered(REFERRER_READS_AT_ONCE)
                        .collect()
                        .await;
                let mut by_subject: HashMap<String, Vec<Value>> = HashMap::new();
                for found in read {
                    if let Some((subject, descriptor)) = found? {
                        by_subject.entry(subject).or_default().push(descriptor);
                    }
                }
                Ok(by_subject)
            })
            .await
    }
}

/// A layout served as a read-only registry on `127.0.0.1`; stops serving when dropped.
pub struct LayoutRegistry {
    host: String,
    served: Arc<RwLock<Arc<VerifiedLayout>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for LayoutRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for LayoutRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayoutRegistry")
            .field("host", &self.host)
            .finish()
    }
}

impl LayoutRegistry {
    /// Serves `layout` on a free port of `127.0.0.1`.
    pub async fn serve(layout: VerifiedLayout) -> Result<Self> {
        let location = layout.store.location();
        let refused = |e: std::io::Error| Error::Registry {
            image: format!("oci:{location}"),
            source: oci::Error::Layout {
                path: location.clone(),
                reason: format!("no loopback port to serve it to the steps on: {e}"),
            },
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(refused)?;
        let port = listener.local_addr().map_err(refused)?.port();
        let served = Arc::new(RwLock::new(Arc::new(layout)));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(served.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LayoutRegistry {
            host: format!("127.0.0.1:{port}"),
            served,
            server,
        })
    }

    /// `127.0.0.1:PORT`: the registry host the steps' client reaches the layout at.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The layout served now.
    pub fn layout(&self) -> Arc<VerifiedLayout> {
        match self.served.read() {
            Ok(held) => held.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Serves `layout` from now on (a newer verification of the same place).
    pub fn replace(&self, layout: VerifiedLayout) {
        let layout = Arc::new(layout);
        match self.served.write() {
            Ok(mut held) => *held = layout,
            Err(poisoned) => *poisoned.into_inner() = layout,
        }
    }
}

type Served = Arc<RwLock<Arc<VerifiedLayout>>>;

/// An OCI distribution error answer.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"errors": [{"code": code, "message": message.into()}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A layout read that failed: the store's error (it names the object) as a server error.
fn failed(e: oci::Error) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
}

/// One request's route: `/v2/`, `/v2/_catalog`, or a repository's resource.
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

/// Makes a repository resource's route from its name and reference.
type RouteOf<'a> = fn(&'a str, &'a str) -> Route<'a>;

fn route<'a>(path: &'a str) -> Option<Route<'a>> {
    let rest = path.strip_prefix("/v2/")?;
    if rest.is_empty() {
        return Some(Route::Base);
    }
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    let routes: [(&str, RouteOf<'a>); 3] = [
        ("/manifests/", Route::Manifest),
        ("/blobs/", Route::Blob),
        ("/referrers/", Route::Referrers),
    ];
    for (marker, make) in routes {
        if let Some((name, reference)) = rest.rsplit_once(marker) {
            if !reference.contains('/') {
                return Some(make(name, reference));
            }
        }
    }
    None
}

/// `n` and `last` of a listing request.
fn page_query(uri: &Uri) -> (usize, Option<String>) {
    let mut n = MAX_PAGE;
    let mut last = None;
    for (key, value) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "n" => {
                n = value
                    .parse::<usize>()
                    .unwrap_or(MAX_PAGE)
                    .clamp(1, MAX_PAGE)
            }
            "last" => last = Some(value.into_owned()),
            _ => {}
        }
    }
    (n, last)
}

/// One page of `names` after `last`, with the `Link` to the next one.
fn page(
    names: impl Iterator<Item = String>,
    (n, last): (usize, Option<String>),
    path: &str,
) -> (Vec<String>, Option<String>) {
    let mut after: Vec<String> = names
        .filter(|name| last.as_ref().is_none_or(|l| name > l))
        .take(n + 1)
        .collect();
    let link = (after.len() > n).then(|| {
        after.truncate(n);
        let last: String = url::form_urlencoded::byte_serialize(after[n - 1].as_bytes()).collect();
        format!("<{path}?n={n}&last={last}>; rel=\"next\"")
    });
    (after, link)
}

fn json_page(body: Value, link: Option<String>) -> Response {
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(value) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

async fn answer(
    State(served): State<Served>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the layout is served read-only",
        );
    }
    let layout = match served.read() {
        Ok(held) => held.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let Some(route) = route(uri.path()) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource");
    };
    let name = match &route {
        Route::Tags(name)
        | Route::Manifest(name, _)
        | Route::Blob(name, _)
        | Route::Referrers(name, _) => Some(*name),
        Route::Base | Route::Catalog => None,
    };
    if let Some(name) = name {
        if let Err(problem) = oci::reference::validate_repository_name(name) {
            return error(StatusCode::NOT_FOUND, "NAME_INVALID", problem);
        }
        if !layout.tags.contains_key(name) {
            return error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("the layout names no repository {name:?}"),
            );
        }
    }
    let head = method == Method::HEAD;
    match route {
        Route::Base => json_page(json!({}), None),
        Route::Catalog => {
            let (names, link) = page(
                layout.tags.keys().cloned(),
                page_query(&uri),
                "/v2/_catalog",
            );
            json_page(json!({ "repositories": names }), link)
        }
        Route::Tags(name) => {
            let tags = layout.tags[name].keys().cloned();
            let (tags, link) = page(tags, page_query(&uri), &format!("/v2/{name}/tags/list"));
            json_page(json!({ "name": name, "tags": tags }), link)
        }
        Route::Manifest(name, reference) => manifest(&layout, name, reference, head).await,
        Route::Blob(_, digest) => blob(&layout, digest, &headers, head).await,
        Route::Referrers(_, digest) => referrers(&layout, digest, &uri).await,
    }
}

async fn manifest(layout: &VerifiedLayout, name: &str, reference: &str, head: bool) -> Response {
    let unknown = || {
        error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("the layout has no manifest {name}:{reference}"),
        )
    };
    let (blob, media_type) = if reference.starts_with("sha256:") {
        let Ok(digest) = Digest::parse(reference) else {
            return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", reference);
        };
        match layout.store.blob_size(&digest).await {
            Ok(Some(size)) => (BlobRef { digest, size }, None),
            Ok(None) => return unknown(),
            Err(e) => return failed(e),
        }
    } else {
        match layout.tags[name].get(reference) {
            Some(entry) => (entry.blob.clone(), Some(entry.media_type.as_str())),
            None => return unknown(),
        }
    };
    let manifest = match layout::read_manifest(layout.store.as_ref(), &blob, media_type).await {
        Ok(manifest) => manifest,
        Err(e) => return failed(e),
    };
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes.clone())
    });
    let headers = response.headers_mut();
    for (key, value) in [
        (header::CONTENT_TYPE, manifest.media_type.as_str()),
        (header::CONTENT_LENGTH, &manifest.bytes.len().to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            manifest.digest.as_str(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(key, value);
        }
    }
    response
}

/// `bytes=START-` or `bytes=START-END` of a blob of `size` bytes: the first and last byte.
fn byte_range(headers: &HeaderMap, size: u64) -> Option<std::result::Result<(u64, u64), ()>> {
    let spec = headers.get(header::RANGE)?.to_str().ok();
    let parsed = spec
        .and_then(|s| s.strip_prefix("bytes="))
        .and_then(|s| s.split_once('-'))
        .and_then(|(start, end)| {
            let start: u64 = start.parse().ok()?;
            let end: u64 = match end {
                "" => size.checked_sub(1)?,
                end => end.parse::<u64>().ok()?.min(size.checked_sub(1)?),
            };
            (start <= end).then_some((start, end))
        });
    Some(parsed.ok_or(()))
}

async fn blob(layout: &VerifiedLayout, digest: &str, headers: &HeaderMap, head: bool) -> Response {
    let Ok(digest) = Digest::parse(digest) else {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", digest);
    };
    let size = match layout.store.blob_size(&digest).await {
        Ok(Some(size)) => size,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("the layout has no blob {digest}"),
            )
        }
        Err(e) => return failed(e),
    };
    let range = match byte_range(headers, size) {
        Some(Ok(range)) => Some(range),
        Some(Err(())) => {
            return error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                format!("the range is not within the blob's {size} bytes"),
            )
        }
        None => None,
    };
    let (status, length) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end - start + 1),
        None => (StatusCode::OK, size),
    };
    let body = if head {
        Body::empty()
    } else {
        let stream = match range {
            Some((start, end)) => {
                layout
                    .store
                    .read_blob_range(&digest, start, Some(end))
                    .await
            }
            None => layout.store.read_blob(&digest).await,
        };
        match stream {
            Ok(stream) => Body::from_stream(stream),
            Err(e) => return failed(e),
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let out = response.headers_mut();
    let mut set = |key: header::HeaderName, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            out.insert(key, value);
        }
    };
    set(header::CONTENT_LENGTH, length.to_string());
    set(header::CONTENT_TYPE, "application/octet-stream".to_string());
    set(
        header::HeaderName::from_static("docker-content-digest"),
        digest.to_string(),
    );
    if let Some((start, end)) = range {
        set(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    response
}

async fn referrers(layout: &VerifiedLayout, digest: &str, uri: &Uri) -> Response {
    if Digest::parse(digest).is_err() {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", digest);
    }
    let by_subject = match layout.referrers().await {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    let wanted: Option<String> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.into_owned());
    let manifests: Vec<&Value> = by_subject
        .get(digest)
        .into_iter()
        .flatten()
        .filter(|d| {
            wanted
                .as_deref()
                .is_none_or(|w| d["artifactType"].as_str() == Some(w))
        })
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, INDEX_MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_the_repository_from_its_resource() {
        assert!(matches!(route("/v2/"), Some(Route::Base)));
        assert!(matches!(route("/v2/_catalog"), Some(Route::Catalog)));
        assert!(matches!(
            route("/v2/team/app/tags/list"),
            Some(Route::Tags("team/app"))
        ));
        assert!(matches!(
            route("/v2/team/manifests/app/manifests/v1"),
            Some(Route::Manifest("team/manifests/app", "v1"))
        ));
        assert!(matches!(
            route("/v2/a/blobs/sha256:00"),
            Some(Route::Blob("a", "sha256:00"))
        ));
        assert!(route("/v3/a/blobs/x").is_none());
        assert!(route("/v2/a/blobs/uploads/").is_none());
    }

    #[test]
    fn ranges_are_read_as_registries_send_them() {
        let with = |spec: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_str(spec).unwrap());
            byte_range(&h, 100)
        };
        assert_eq!(with("bytes=10-"), Some(Ok((10, 99))));
        assert_eq!(with("bytes=10-19"), Some(Ok((10, 19))));
        assert_eq!(with("bytes=90-500"), Some(Ok((90, 99))));
        assert_eq!(with("bytes=100-"), Some(Err(())));
        assert_eq!(with("bytes=-5"), Some(Err(())));
        assert_eq!(with("items=1-2"), Some(Err(())));
        assert_eq!(byte_range(&HeaderMap::new(), 100), None);
    }

    #[test]
    fn listing_pages_link_to_the_next() {
        let names = || ["a", "b", "c"].into_iter().map(String::from);
        let (first, link) = page(names(), (2, None), "/v2/_catalog");
        assert_eq!(first, ["a", "b"]);
        assert_eq!(
            link.as_deref(),
            Some("</v2/_catalog?n=2&last=b>; rel=\"next\"")
        );
        let (rest, link) = page(names(), (2, Some("b".into())), "/v2/_catalog");
        assert_eq!(rest, ["c"]);
        assert_eq!(link, None);
    }
}
