//! The distribution registry behind the plane: requests forwarded to it with both bodies
//! streamed, its answers made ours, and the presigned-URL host that serves its blobs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;

use super::{bump, registry_error, PlaneState};

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The presigned-URL host: serves blobs without registry auth, refusing a request that carries
/// an `Authorization` header as S3 does.
pub(super) async fn presigned(State(state): State<Arc<PlaneState>>, request: Request) -> Response {
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
pub(super) async fn forward(state: &PlaneState, request: Request) -> Response {
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
pub(super) fn into_response(resp: reqwest::Response, state: &PlaneState) -> Response {
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
