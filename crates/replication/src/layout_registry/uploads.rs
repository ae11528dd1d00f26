//! The served registry's write side, for a layout the workflow exports into (issue 35): blob
//! uploads as the OCI distribution spec has them, answered from a [`PartUploads`] store (S3
//! multipart uploads), so `copy-blobs` writes a layout with the requests it writes a registry
//! with, one range per Lambda invocation.
//!
//! Nothing of an upload lives in the server: its `Location` carries the store's upload (staging
//! object and id) and the sha256 state of every byte sent so far, as the distribution registry's
//! `_state` parameter carries its own. Another invocation, on another port, continues it from
//! there (`copy-blobs` moves the session to the current server with [`super::rehome`]). Each
//! PATCH is stored as parts of at most [`PART_BYTES`], hashed on the way; a PATCH that does not
//! start where the store's parts end is refused with `416` (a crash after a part was stored),
//! which makes the client start the blob again. The blob appears at `blobs/sha256/<hex>` only
//! when the completing `PUT`'s digest is the hash of every byte stored.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use oci::digest::{Verifier, VerifierState};
use oci::layout::{PartUpload, PartUploads};
use oci::{BlobRef, Digest};
use serde::{Deserialize, Serialize};

use super::http::{created, error, failed};

/// S3's most parts of one upload, and its smallest part but the last ("Amazon S3 multipart
/// upload limits": <https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html>).
const MAX_PARTS: u64 = 10_000;
const MIN_PART_BYTES: u64 = 5 << 20;

/// Largest part a PATCH is stored as (each PATCH is split into parts of equal size, so a range
/// of at least 5 MiB never leaves a part under S3's 5 MiB minimum). With 10,000 parts an upload
/// holds blobs up to 625 GiB; one part is held in memory at a time per upload.
pub const PART_BYTES: u64 = 64 << 20;
/// Longest session token read from a `Location` (a real one is about 300 bytes).
const MAX_TOKEN_BYTES: usize = 4096;

/// An upload's state, carried in its `Location`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    /// The store's upload.
    upload: PartUpload,
    /// sha256 state over every byte stored so far (`seen` is the upload's offset).
    hash: VerifierState,
}

impl Token {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(text: &str) -> Option<Token> {
        if text.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let token: Token = serde_json::from_slice(&json).ok()?;
        token.upload.check().ok()?;
        Some(token)
    }

    fn location(&self, name: &str) -> String {
        format!("/v2/{name}/blobs/uploads/{}", self.encode())
    }
}

fn upload_unknown(reason: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", reason)
}

/// `202 Accepted` for a session at `token`, with its `Location` and the bytes it holds.
fn accepted(name: &str, token: &Token) -> Response {
    let mut response = StatusCode::ACCEPTED.into_response();
    session_headers(response.headers_mut(), name, token);
    response
}

fn session_headers(headers: &mut HeaderMap, name: &str, token: &Token) {
    if let Ok(value) = HeaderValue::from_str(&token.location(name)) {
        headers.insert(header::LOCATION, value);
    }
    // `0-<last byte>`; none while the upload is empty (`0-0` would say one byte).
    let held = token.hash.seen;
    if held > 0 {
        if let Ok(value) = HeaderValue::from_str(&format!("0-{}", held - 1)) {
            headers.insert(header::RANGE, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
}

/// `POST /v2/<name>/blobs/uploads/`: opens an upload into a new staging object (a mount is
/// never done: the layout has one set of blobs, and the client asks `HEAD` first).
pub(super) async fn start(store: &dyn PartUploads, name: &str) -> Response {
    let mut random = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut random) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            format!("no random name for the staging object: {e}"),
        );
    }
    let staging = format!(
        "uploads/{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    match store.begin_upload(&staging).await {
        Ok(upload_id) => accepted(
            name,
            &Token {
                upload: PartUpload { staging, upload_id },
                hash: Verifier::new().export(),
            },
        ),
        Err(e) => failed(e),
    }
}

/// One request to an open upload: `PATCH` (more bytes), `PUT ?digest=` (the last bytes, if any,
/// and completion), `GET` (its offset) or `DELETE`.
pub(super) async fn session(
    store: &dyn PartUploads,
    name: &str,
    token: &str,
    request: (axum::http::Method, &Uri, &HeaderMap, Body),
) -> Response {
    let (method, uri, headers, body) = request;
    let Some(token) = Token::decode(token) else {
        return upload_unknown("the upload's location is not one this server gave");
    };
    match method.as_str() {
        "GET" => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            session_headers(response.headers_mut(), name, &token);
            response
        }
        "DELETE" => match store.abort_upload(&token.upload).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => failed(e),
        },
        "PATCH" => match append(store, token, headers, body).await {
            Ok(token) => accepted(name, &token),
            Err(response) => response,
        },
        "PUT" => complete(store, name, token, uri, headers, body).await,
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "an upload takes PATCH, PUT, GET and DELETE",
        ),
    }
}

/// The length a request states (`Content-Length`; a body without one is refused).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Stores a request's body as the upload's next parts after checking it starts where the
/// store's parts end; the session's state after it.
async fn append(
    store: &dyn PartUploads,
    token: Token,
    headers: &HeaderMap,
    body: Body,
) -> Result<Token, Response> {
    let Some(length) = content_length(headers) else {
        return Err(error(
            StatusCode::LENGTH_REQUIRED,
            "SIZE_INVALID",
            "an upload's PATCH states its Content-Length",
        ));
    };
    let offset = token.hash.seen;
    let checked = async {
        let start = headers
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once('-'))
            .and_then(|(start, _)| start.parse::<u64>().ok());
        if start.is_some_and(|s| s != offset) {
            return Err(not_at(offset, "the PATCH's Content-Range starts elsewhere"));
        }
        if offset.checked_add(length).is_none() || length.div_ceil(PART_BYTES) > MAX_PARTS {
            return Err(too_large(length));
        }
        let held = store
            .stored_parts(&token.upload)
            .await
            .map_err(stored_failed)?;
        if held.iter().sum::<u64>() != offset {
            return Err(not_at(
                offset,
                "the store holds other bytes (a part stored after this session's last answer)",
            ));
        }
        if held.len() as u64 + length.div_ceil(PART_BYTES) > MAX_PARTS {
            return Err(too_large(length));
        }
        // Only the last part may be under S3's 5 MiB: the part stored last stops being last.
        if held.last().is_some_and(|last| *last < MIN_PART_BYTES) && length > 0 {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "SIZE_INVALID",
                format!(
                    "the upload's last PATCH was {} bytes, under S3's {MIN_PART_BYTES}-byte smallest \
                     part but the last: send a blob in ranges of at least 5 MiB (rangeBytes)",
                    held.last().copied().unwrap_or_default()
                ),
            ));
        }
        Ok(held)
    };
    let held = match checked.await {
        Ok(held) => held,
        Err(refusal) => {
            // Read what the client is sending before answering: a refusal sent mid-body cuts
            // its connection, which it could only take for a broken source (it would not
            // start the blob again). A length over the bound is not read.
            if refusal.status() != StatusCode::PAYLOAD_TOO_LARGE {
                let mut stream = body.into_data_stream();
                while let Some(Ok(_)) = stream.next().await {}
            }
            return Err(refusal);
        }
    };
    let mut verifier = Verifier::import(&token.hash)
        .map_err(|e| error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_INVALID", e.to_string()))?;
    let mut stream = body.into_data_stream();
    let mut buffer = BytesMut::new();
    let mut number = held.len() as u32;
    for size in part_sizes(length, PART_BYTES) {
        buffer.reserve((size as usize).saturating_sub(buffer.len()));
        while (buffer.len() as u64) < size {
            match stream.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "BLOB_UPLOAD_INVALID",
                        format!("the PATCH body broke off: {e}"),
                    ))
                }
                None => return Err(size_invalid(length)),
            }
        }
        let part: Bytes = buffer.split_to(size as usize).freeze();
        verifier.update(&part);
        number += 1;
        store
            .put_part(&token.upload, number, part)
            .await
            .map_err(stored_failed)?;
    }
    if !buffer.is_empty() || stream.next().await.is_some() {
        return Err(size_invalid(length));
    }
    Ok(Token {
        upload: token.upload,
        hash: verifier.export(),
    })
}

/// An S3 failure of an upload: `404 BLOB_UPLOAD_UNKNOWN` when the upload is gone (completed,
/// aborted, expired: the client starts the blob again), else as any layout failure.
fn stored_failed(e: oci::Error) -> Response {
    match &e {
        oci::Error::Layout { reason, .. } if reason.contains("NoSuchUpload") => {
            upload_unknown(e.to_string())
        }
        _ => failed(e),
    }
}

fn too_large(length: u64) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
        format!(
            "{length} more bytes would take the upload past S3's {MAX_PARTS} parts of at most \
             {PART_BYTES} bytes"
        ),
    )
}

fn size_invalid(length: u64) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "SIZE_INVALID",
        format!("the body is not the {length} bytes its Content-Length states"),
    )
}

/// `416` naming the offset the session is at (the client starts the blob again).
fn not_at(offset: u64, why: &str) -> Response {
    let mut response = error(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
        format!("{why}: this session is at byte {offset}; start the blob again"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("0-{}", offset.saturating_sub(1))) {
        response.headers_mut().insert(header::RANGE, value);
    }
    response
}

/// Sizes of the parts `length` bytes are stored as: as few as fit in `most` bytes each, equal
/// to within a byte (never a small part after a large one).
pub(super) fn part_sizes(length: u64, most: u64) -> impl Iterator<Item = u64> {
    let count = length.div_ceil(most.max(1));
    let (each, extra) = (
        length.checked_div(count).unwrap_or(0),
        length.checked_rem(count).unwrap_or(0),
    );
    (0..count).map(move |i| each + u64::from(i < extra))
}

/// `PUT ?digest=`: stores the body (if any), then makes the upload the blob `digest` when the
/// hash of every byte stored is that digest; the upload is dropped otherwise.
async fn complete(
    store: &dyn PartUploads,
    name: &str,
    token: Token,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let wanted = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "digest")
        .map(|(_, v)| v.into_owned());
    let Some(Ok(digest)) = wanted.as_deref().map(Digest::parse) else {
        return error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "completing an upload takes ?digest=sha256:<64 hex>",
        );
    };
    let upload = token.upload.clone();
    if content_length(headers).is_none() && headers.contains_key(header::TRANSFER_ENCODING) {
        return error(
            StatusCode::LENGTH_REQUIRED,
            "SIZE_INVALID",
            "a completing PUT with a body states its Content-Length",
        );
    }
    let token = if content_length(headers).unwrap_or(0) > 0 {
        match append(store, token, headers, body).await {
            Ok(token) => token,
            Err(response) => return response,
        }
    } else {
        token
    };
    let verifier = match Verifier::import(&token.hash) {
        Ok(verifier) => verifier,
        Err(e) => return error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_INVALID", e.to_string()),
    };
    let blob = BlobRef {
        digest,
        size: verifier.seen(),
    };
    let place = store.blob_location(&blob.digest);
    if let Err(e) = verifier.check(&blob.digest, blob.size, &place) {
        let _ = store.abort_upload(&upload).await;
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string());
    }
    let finished = match store.blob_size(&blob.digest).await {
        // Written meanwhile (another image's range): the upload is not needed.
        Ok(Some(size)) if size == blob.size => store.abort_upload(&upload).await,
        Ok(_) => store.finish_upload(&upload, &blob).await,
        Err(e) => Err(e),
    };
    if let Err(e) = finished {
        return match e {
            // S3's own hash of what it holds is not the digest: refused as a registry would.
            oci::Error::DigestMismatch { .. } | oci::Error::SizeMismatch { .. } => {
                error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
            }
            e => stored_failed(e),
        };
    }
    created(&format!("/v2/{name}/blobs/{}", blob.digest), &blob.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_is_split_into_parts_of_equal_size_within_the_bound() {
        const MIB: u64 = 1 << 20;
        let sizes = |length, most| part_sizes(length, most).collect::<Vec<u64>>();
        assert_eq!(sizes(0, 64 * MIB), Vec::<u64>::new());
        assert_eq!(sizes(5 * MIB, 64 * MIB), [5 * MIB]);
        assert_eq!(sizes(64 * MIB, 64 * MIB), [64 * MIB]);
        // 65 MiB is two parts of 32.5 MiB, not 64 MiB and a 1 MiB part S3 would refuse.
        assert_eq!(sizes(65 * MIB, 64 * MIB), [65 * MIB / 2; 2]);
        assert_eq!(sizes(7, 3), [3, 2, 2]);
        // A length no upload could take makes no list of its parts (it is refused first).
        assert_eq!(part_sizes(u64::MAX, 64 * MIB).take(2).count(), 2);
        for length in [1, 5 * MIB, 300 * MIB + 7, 800 * MIB] {
            let sizes = sizes(length, 64 * MIB);
            assert_eq!(sizes.iter().sum::<u64>(), length);
            assert!(sizes.iter().all(|s| *s <= 64 * MIB));
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn a_token_is_read_back_and_a_foreign_one_refused() {
        let token = Token {
            upload: PartUpload {
                staging: format!("uploads/{}", "0a".repeat(16)),
                upload_id: "abc.DEF-1_2".into(),
            },
            hash: Verifier::new().export(),
        };
        let read = Token::decode(&token.encode()).unwrap();
        assert_eq!(read.upload, token.upload);
        assert_eq!(read.hash, token.hash);
        // A staging object outside uploads/ (a blob's own place) is not an upload.
        let moved = Token {
            upload: PartUpload {
                staging: format!("blobs/sha256/{}", "0".repeat(64)),
                upload_id: "x".into(),
            },
            hash: Verifier::new().export(),
        };
        assert!(Token::decode(&moved.encode()).is_none());
        assert!(Token::decode("not base64!").is_none());
        assert!(Token::decode(&"A".repeat(MAX_TOKEN_BYTES + 1)).is_none());
    }
}
