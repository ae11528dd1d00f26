//! Blobs: HEAD, and ranged GETs that follow redirects without leaking credentials.

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode};

use crate::digest::Digest;
use crate::error::{redact_url, Error, Result};
use crate::reference::Repository;

use super::*;

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
        // is sent bare, and so is any further hop until one comes back to the registry.
        let registry_origin = self.origin(repo)?;
        let mut resp = self.pull(Method::GET, &url, repo, headers.clone()).await?;
        for _ in 0..5 {
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
            return Err(status_error(resp, "GET", &format!("blob {digest} in {repo}")).await);
        }
        Ok(BlobResponse {
            url: redact_url(&url),
            length: resp.content_length(),
            response: resp,
        })
    }
}
