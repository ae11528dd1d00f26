//! Tag lists served as ECR pages them: at most `TAG_PAGE_MAX` a page, sorted, with a `Link` to
//! the next.

use std::collections::HashMap;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::upstream::into_response;
use super::{bump, registry_error, PlaneState, TAG_PAGE_MAX};

/// A tag list page of at most `TAG_PAGE_MAX` (or the asked `n` when smaller), sorted, after
/// `last`, with a `Link` to the next page.
pub(super) async fn tags_page(state: &PlaneState, name: &str, request: Request) -> Response {
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
