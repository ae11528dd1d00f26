//! Blobs: HEAD, and ranged GETs that follow redirects without leaking credentials.

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode};

use crate::digest::Digest;
use crate::error::{redact_url, Error, Result};
use crate::reference::Repository;

use super::origins::redirect_refusal;
use super::*;

/// Redirects of one blob GET followed at most.
const MAX_REDIRECTS: usize = 5;

/// A blob body being received.
pub struct BlobResponse {
    /// Where it comes from (redacted, for messages).
    pub url: String,
    /// `Content-Length`, when sent.
    pub length: Option<u64>,
    response: Response,
}

impl BlobResponse {
    /// The body as a stream of chunks.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
        self.response.bytes_stream()
    }
}

impl RegistryClient {
    /// The size of a blob if the repository has it, `None` on 404.
    pub async fn head_blob(&self, repo: &Repository, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(repo, Resource::Blobs, Some(digest.as_str()))?;
        let resp = self
            .pull(Method::HEAD, &url, repo, HeaderMap::new())
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            // reqwest reports a HEAD body's length (0), not the header: read the header.
            s if s.is_success() => Ok(Some(
                header_str(resp.headers(), CONTENT_LENGTH.as_str())
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            )),
            // HEAD on a blob answered by a redirect to storage still means it exists.
            s if s.is_redirection() => Ok(Some(0)),
            _ => Err(status_error(resp, "HEAD", &format!("blob {digest}")).await),
        }
    }

    /// Starts receiving a blob, from byte `offset`. Redirects (ECR sends blobs from presigned S3
    /// URLs) are followed without the `Authorization` header when the host changes.
    pub async fn get_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse> {
        self.get_blob_range(repo, digest, offset, None).await
    }

    /// Starts receiving `length` bytes of a blob from `offset` (to the end when `None`).
    pub async fn get_blob_range(
        &self,
        repo: &Repository,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<BlobResponse> {
        let mut url = self.url(repo, Resource::Blobs, Some(digest.as_str()))?;
        let mut headers = HeaderMap::new();
        let ranged = offset > 0 || length.is_some();
        match length {
            Some(len) if len > 0 => {
                let last = offset + len - 1;
                headers.insert(RANGE, header_value(&format!("bytes={offset}-{last}")));
            }
            _ if offset > 0 => {
                headers.insert(RANGE, header_value(&format!("bytes={offset}-")));
            }
            _ => {}
        }
        // Credentials go to the registry's own origin only: a hop elsewhere (presigned storage)
        // is sent bare, and so is any further hop until one comes back to the registry. A hop
        // the redirect rules refuse (https to http, a private or link-local address the
        // registry is not on) is never sent.
        let registry_base = self.base(repo)?;
        let registry_origin = registry_base.origin();
        let mut resp = self.pull(Method::GET, &url, repo, headers.clone()).await?;
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                break;
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| Error::Registry {
                    method: "GET".into(),
                    url: redact_url(&url),
                    status: resp.status().as_u16(),
                    code: None,
                    message: "redirect without a usable Location".into(),
                })?;
            if let Some(reason) = redirect_refusal(&registry_base, &url, &next) {
                return Err(Error::OriginRefused {
                    registry: repo.registry.clone(),
                    url: redact_url(&next),
                    reason: format!("blob {digest}: {reason}"),
                });
            }
            let registry_hop = next.origin() == registry_origin;
            url = next;
            resp = if registry_hop {
                self.pull(Method::GET, &url, repo, headers.clone()).await?
            } else {
                self.send_retrying(&Method::GET, &url, || {
                    self.inner.http.get(url.clone()).headers(headers.clone())
                })
                .await?
            };
        }
        // A registry may answer a range that starts at 0 with the whole blob (200); the caller
        // counts bytes, so a longer body is caught there.
        let whole_ok = offset == 0 && resp.status() == StatusCode::OK;
        let expected = if ranged && !whole_ok {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if resp.status() != expected {
            if url.origin() != registry_origin {
                // Another origin's body (storage's error document) is never quoted: S3's echoes
                // the presigned request, its signature and session token included.
                return Err(foreign_status(&url, resp.status().as_u16(), digest, repo));
            }
            if resp.status().is_redirection() {
                return Err(Error::Registry {
                    method: "GET".into(),
                    url: redact_url(&url),
                    status: resp.status().as_u16(),
                    code: None,
                    message: format!("more than {MAX_REDIRECTS} redirects"),
                });
            }
            return Err(status_error(resp, "GET", &format!("blob {digest} in {repo}")).await);
        }
        Ok(BlobResponse {
            url: redact_url(&url),
            length: resp.content_length(),
            response: resp,
        })
    }
}

/// A blob GET that ended on another origin than the registry's (storage it redirected to)
/// with `status`: the error names the status and that origin's host only, never its body or
/// its path.
fn foreign_status(url: &Url, status: u16, digest: &Digest, repo: &Repository) -> Error {
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    Error::Registry {
        method: "GET".into(),
        url: format!("{}://{host}", url.scheme()),
        status,
        code: None,
        message: format!(
            "blob {digest} in {repo}: the registry redirected to {host}, which answered HTTP {status}{} (its body is not shown: it comes from another origin)",
            if (300..400).contains(&status) {
                format!(" after {MAX_REDIRECTS} redirects")
            } else {
                String::new()
            }
        ),
    }
}
