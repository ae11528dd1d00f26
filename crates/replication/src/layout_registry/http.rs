//! The served registry's HTTP side: routes, listing pages, manifests, blobs in byte ranges and
//! the referrers API, answered from a [`VerifiedLayout`] to the holder of its credential.

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use oci::layout::{self, LayoutStore, PartUploads};
use oci::Digest;
use serde_json::{json, Value};

use super::served::{ServedRepository, VerifiedLayout};

/// Entries one tag list or catalog page answers at most (the client asks for fewer).
const MAX_PAGE: usize = 1000;
/// The image index media type the referrers API answers with.
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// The routes, each answered only with `authorization` (the server's credential).
pub(super) fn router(mode: Mode, authorization: String) -> axum::Router {
    axum::Router::new().fallback(answer).with_state(Shared {
        mode,
        authorization: Arc::new(authorization),
    })
}

/// What a server answers from: a verified layout to import (read-only), or a layout store the
/// workflow exports blobs into.
#[derive(Clone)]
pub(super) enum Mode {
    Import(Served),
    Export(Arc<dyn PartUploads>, super::manifests::ExportNames),
}

#[derive(Clone)]
struct Shared {
    mode: Mode,
    authorization: Arc<String>,
}

pub(super) type Served = Arc<RwLock<Arc<VerifiedLayout>>>;

/// The layout served now (a poisoned lock still holds a whole one: it is only ever swapped).
pub(super) fn current(served: &Served) -> Arc<VerifiedLayout> {
    match served.read() {
        Ok(held) => held.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// An OCI distribution error answer.
pub(super) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"errors": [{"code": code, "message": message.into()}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A layout read that failed: a `422`, never retried (content that is not what the statement
/// says, a manifest over its bound, access denied, an object missing), but for S3 throttling
/// or a timeout after its SDK's own retries: a `502`, which the client retries in its budget.
pub(super) fn failed(e: oci::Error) -> Response {
    let status = match &e {
        oci::Error::DigestMismatch { .. }
        | oci::Error::SizeMismatch { .. }
        | oci::Error::InvalidManifest { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        // S3 answered after its SDK's own retries: only a throttle or a timeout is worth more.
        oci::Error::Layout { reason, .. }
            if [
                "SlowDown",
                "throttl",
                "timed out",
                "timeout",
                "dispatch failure",
                "InternalError",
                "ServiceUnavailable",
            ]
            .iter()
            .any(|t| reason.contains(t)) =>
        {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, "UNKNOWN", e.to_string())
}

/// Whether the request carries the server's credential (compared in constant time).
fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
    else {
        return false;
    };
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&headers, &shared.authorization) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the layout is served to its function only",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ecr-replicator layout\""),
        );
        return response;
    }
    let served = match &shared.mode {
        Mode::Import(served) => served,
        Mode::Export(store, names) => {
            return export((store.as_ref(), names), (method, &uri, &headers, body)).await
        }
    };
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the layout is served read-only",
        );
    }
    let layout = current(served);
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
    let repository = match name {
        Some(name) => {
            if let Err(problem) = oci::reference::validate_repository_name(name) {
                return error(StatusCode::NOT_FOUND, "NAME_INVALID", problem);
            }
            match layout.repositories.get(name) {
                Some(repository) => Some(repository),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "NAME_UNKNOWN",
                        format!("the layout's statement names no repository {name:?}"),
                    )
                }
            }
        }
        None => None,
    };
    let head = method == Method::HEAD;
    match (route, repository) {
        (Route::Catalog, _) => {
            let (names, link) = page(
                layout.repositories.keys().cloned(),
                page_query(&uri),
                "/v2/_catalog",
            );
            json_page(json!({ "repositories": names }), link)
        }
        (Route::Tags(name), Some(repository)) => {
            let tags = repository.tags.keys().cloned();
            let (tags, link) = page(tags, page_query(&uri), &format!("/v2/{name}/tags/list"));
            json_page(json!({ "name": name, "tags": tags }), link)
        }
        (Route::Manifest(name, reference), Some(repository)) => {
            manifest(&layout, (name, repository), reference, head).await
        }
        (Route::Blob(_, digest), Some(_)) => {
            blob(layout.store.as_ref(), digest, &headers, head).await
        }
        (Route::Referrers(_, digest), Some(repository)) => referrers(repository, digest, &uri),
        _ => json_page(json!({}), None),
    }
}

async fn manifest(
    layout: &VerifiedLayout,
    (name, repository): (&str, &ServedRepository),
    reference: &str,
    head: bool,
) -> Response {
    let unknown = || {
        error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("the layout's statement names no manifest {name}:{reference}"),
        )
    };
    let described = if reference.starts_with("sha256:") {
        if Digest::parse(reference).is_err() {
            return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", reference);
        }
        match layout.manifest(repository, reference).await {
            Ok(Some(described)) => described,
            Ok(None) => return unknown(),
            Err(e) => return failed(e),
        }
    } else {
        match repository.tags.get(reference) {
            Some(described) => described.clone(),
            None => return unknown(),
        }
    };
    let blob = described.blob();
    let read = layout::read_manifest(layout.store.as_ref(), &blob, Some(&described.media_type));
    let manifest = match read.await {
        Ok(manifest) => manifest,
        Err(e) => return failed(e),
    };
    manifest_answer(&manifest, head)
}

/// `201 Created` for what a write stored: its `Location` and `Docker-Content-Digest`.
pub(super) fn created(location: &str, digest: &Digest) -> Response {
    let mut response = StatusCode::CREATED.into_response();
    let out = response.headers_mut();
    for (key, value) in [
        (header::LOCATION, location),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.as_str(),
        ),
        (header::CONTENT_LENGTH, "0"),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(key, value);
        }
    }
    response
}

/// A manifest as a registry answers it: its bytes (none for `HEAD`), media type, length and
/// digest.
pub(super) fn manifest_answer(manifest: &oci::Manifest, head: bool) -> Response {
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

async fn blob(store: &dyn LayoutStore, digest: &str, headers: &HeaderMap, head: bool) -> Response {
    let Ok(digest) = Digest::parse(digest) else {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", digest);
    };
    let size = match store.blob_size(&digest).await {
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
        // An empty blob has no byte to range over: it is sent whole.
        Some(Err(())) if size == 0 => None,
        Some(Err(())) => {
            let mut response = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                format!("the range is not within the blob's {size} bytes"),
            );
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
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
            Some((start, end)) => store.read_blob_range(&digest, start, Some(end)).await,
            None => store.read_blob(&digest).await,
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

/// A request to a layout the workflow exports into: its blobs (`HEAD`, `GET`), uploads and
/// manifests (`manifests.rs`). Everything else (listings, the referrers API: a client falls back
/// to the tag scheme) is `404`/`405`.
async fn export(
    (store, names): (&dyn PartUploads, &super::manifests::ExportNames),
    (method, uri, headers, body): (Method, &Uri, &HeaderMap, Body),
) -> Response {
    let path = uri.path();
    if path == "/v2/" {
        return json_page(json!({}), None);
    }
    let (name, upload) = match path
        .strip_prefix("/v2/")
        .and_then(|rest| rest.split_once("/blobs/uploads/"))
    {
        Some((name, token)) if !token.contains('/') => (name, Some(token)),
        _ => match route(path) {
            Some(Route::Blob(name, _) | Route::Manifest(name, _) | Route::Tags(name)) => {
                (name, None)
            }
            _ => return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource"),
        },
    };
    if let Err(problem) = oci::reference::validate_repository_name(name) {
        return error(StatusCode::NOT_FOUND, "NAME_INVALID", problem);
    }
    match (upload, route(path)) {
        (Some(""), _) if method == Method::POST => super::uploads::start(store, name).await,
        (Some(token), _) if !token.is_empty() => {
            super::uploads::session(store, name, token, (method, uri, headers, body)).await
        }
        (None, Some(Route::Blob(_, digest))) if method == Method::GET || method == Method::HEAD => {
            blob(store, digest, headers, method == Method::HEAD).await
        }
        (None, Some(Route::Tags(_))) if method == Method::GET => {
            match super::manifests::tags((store, names), name).await {
                Ok(tags) => {
                    let (tags, link) = page(
                        tags.into_iter(),
                        page_query(uri),
                        &format!("/v2/{name}/tags/list"),
                    );
                    json_page(json!({ "name": name, "tags": tags }), link)
                }
                Err(e) => failed(e),
            }
        }
        (None, Some(Route::Manifest(_, reference))) if method == Method::PUT => {
            super::manifests::put((store, names), name, reference, headers, body).await
        }
        (None, Some(Route::Manifest(_, reference)))
            if method == Method::GET || method == Method::HEAD =>
        {
            super::manifests::get((store, names), name, reference, method == Method::HEAD).await
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "an exported layout takes blob uploads and manifests",
        ),
    }
}

fn referrers(repository: &ServedRepository, digest: &str, uri: &Uri) -> Response {
    if Digest::parse(digest).is_err() {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", digest);
    }
    let wanted: Option<String> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.into_owned());
    let manifests: Vec<Value> = repository
        .referrers
        .iter()
        .filter(|r| r.subject == digest)
        .filter(|r| wanted.as_deref().is_none_or(|w| r.artifact_type == w))
        .map(|r| {
            let mut descriptor = json!({
                "mediaType": r.manifest.media_type,
                "digest": r.manifest.digest.as_str(),
                "size": r.manifest.size,
            });
            if !r.artifact_type.is_empty() {
                descriptor["artifactType"] = r.artifact_type.clone().into();
            }
            descriptor
        })
        .collect();
    let body = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    });
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, INDEX_MEDIA_TYPE)],
        body.to_string(),
    )
        .into_response();
    if wanted.is_some() {
        response.headers_mut().insert(
            header::HeaderName::from_static("oci-filters-applied"),
            HeaderValue::from_static("artifactType"),
        );
    }
    response
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
    fn only_the_servers_credential_is_answered() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(authorized(&with("Basic abc"), "Basic abc"));
        assert!(!authorized(&with("Basic abd"), "Basic abc"));
        assert!(!authorized(&with("Basic ab"), "Basic abc"));
        assert!(!authorized(&HeaderMap::new(), "Basic abc"));
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
