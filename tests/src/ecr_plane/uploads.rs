//! Blob uploads as ECR takes them: the session's parts checked (rewinds, parts under the
//! minimum, empty uploads), PATCH answered 201 and the `Range` header stuck at the first part.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use super::upstream::{content_length, forward};
use super::{bump, registry_error, Behaviours, PlaneState, MIN_PART_BYTES};

#[derive(Default)]
pub(super) struct Upload {
    /// Bytes the registry holds.
    received: u64,
    /// Parts received.
    parts: u32,
    /// Size of the last part.
    last_part: u64,
    /// The `Range` end reported after the first part (ECR never advances it).
    first_range_end: Option<u64>,
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

pub(super) fn stick_range(state: &PlaneState, id: &str, response: &mut Response) {
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

pub(super) async fn upload_part(
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

pub(super) async fn complete_upload(
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
