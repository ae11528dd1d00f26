//! Manifest pushes as ECR takes them (size limit, PutImage rate, immutable tags, the push listed
//! in the control plane) and the OCI 1.1 referrers API served from the pushes' subjects.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;

use super::control::tag_immutable;
use super::listing;
use super::upstream::forward;
use super::{
    bump, registry_error, Behaviours, PlaneState, MAX_MANIFEST_BYTES, PUT_IMAGE_PER_SECOND,
};

pub(super) async fn put_manifest(
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

pub(super) fn referrers(
    state: &PlaneState,
    name: &str,
    digest: &str,
    query: Option<&str>,
) -> Response {
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
