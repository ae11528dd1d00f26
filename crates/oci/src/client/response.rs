//! Reading answers: headers, bounded bodies, and failed responses as errors.

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH};
use reqwest::Response;
use url::Url;

use crate::error::{parse_error_body, redact_url, Error, ErrorCode, Result};

pub(super) fn content_length_zero() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    h
}

pub(super) fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(super) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A manifest body, at most `limit` bytes (a larger one is not a usable manifest).
pub(super) async fn read_limited(resp: Response, limit: usize, url: &str) -> Result<Bytes> {
    read_bounded(resp, limit, url, "manifest")
        .await
        .map_err(|e| match e {
            Error::ResponseTooLarge { url, .. } => Error::InvalidManifest {
                url,
                reason: format!("larger than {limit} bytes"),
            },
            other => other,
        })
}

/// A response body, at most `limit` bytes: refused as soon as the registry announces or sends
/// more (a hostile registry cannot make the client hold more than this).
pub(super) async fn read_bounded(
    resp: Response,
    limit: usize,
    url: &str,
    what: &str,
) -> Result<Bytes> {
    let too_large = || Error::ResponseTooLarge {
        what: what.to_string(),
        url: url.to_string(),
        limit: format!("{limit} bytes"),
    };
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| Error::transport("GET", url.to_string(), source))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Bytes of an error body read at most: enough for the spec's `errors` JSON; the rest is
/// dropped unread.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The start of a response body (at most `MAX_ERROR_BODY_BYTES`), for messages.
async fn body_start(resp: Response) -> Bytes {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_ERROR_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    Bytes::from(body)
}

/// The registry's error message, or the start of its body.
pub(super) async fn error_message(resp: Response) -> String {
    let body = body_start(resp).await;
    match parse_error_body(&body) {
        Some(e) if !e.message.is_empty() => truncate(&e.message),
        Some(e) => format!("{:?}", e.code),
        None => String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string(),
    }
}

/// A registry's message, cut to 1,000 characters for messages.
fn truncate(message: &str) -> String {
    match message.char_indices().nth(1000) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message.to_string(),
    }
}

/// Turns a failed response into the matching error.
pub(super) async fn status_error(resp: Response, method: &str, what: &str) -> Error {
    let status = resp.status().as_u16();
    let url = redact_url(resp.url());
    let body = body_start(resp).await;
    let parsed = parse_error_body(&body);
    let code = parsed.as_ref().map(|e| e.code.clone());
    let not_found_code = matches!(
        code,
        Some(ErrorCode::ManifestUnknown | ErrorCode::BlobUnknown | ErrorCode::NameUnknown)
    );
    if status == 404 || (not_found_code && status < 500) {
        return Error::NotFound {
            what: what.to_string(),
            url,
        };
    }
    let message = match parsed {
        Some(e) if !e.message.is_empty() => truncate(&e.message),
        _ => String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string(),
    };
    if status == 401 {
        return Error::Unauthorized {
            registry: resp_host(&url),
            url,
            reason: message,
        };
    }
    Error::Registry {
        method: method.to_string(),
        url,
        status,
        code,
        message,
    }
}

pub(super) fn resp_host(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .unwrap_or_default()
}
