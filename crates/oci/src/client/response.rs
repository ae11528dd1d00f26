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

pub(super) async fn read_limited(resp: Response, limit: usize, url: &str) -> Result<Bytes> {
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| Error::Transport {
            method: "GET".into(),
            url: url.to_string(),
            source,
        })?;
        if body.len() + chunk.len() > limit {
            return Err(Error::InvalidManifest {
                url: url.to_string(),
                reason: format!("larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The registry's error message, or the start of its body.
pub(super) async fn error_message(resp: Response) -> String {
    let body = resp.bytes().await.unwrap_or_default();
    match parse_error_body(&body) {
        Some(e) if !e.message.is_empty() => e.message,
        Some(e) => format!("{:?}", e.code),
        None => String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_string(),
    }
}

/// Turns a failed response into the matching error.
pub(super) async fn status_error(resp: Response, method: &str, what: &str) -> Error {
    let status = resp.status().as_u16();
    let url = redact_url(resp.url());
    let body = resp.bytes().await.unwrap_or_default();
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
        Some(e) if !e.message.is_empty() => e.message,
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
