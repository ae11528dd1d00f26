//! Upload sessions: start, mount, PATCH, complete, status, cancel, and small uploads.

use bytes::Bytes;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::digest::Digest;
use crate::error::{redact_url, Error, Result};
use crate::reference::{validate_repository_name, Repository};

use super::*;

/// The state of a blob upload, enough for another process to continue it from `offset`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadSession {
    /// Registry host.
    pub registry: String,
    /// Repository the blob goes into.
    pub repository: String,
    /// Absolute URL for the next request of this session (registries rotate it).
    pub location: String,
    /// Bytes the registry has accepted so far, counted by the client (ECR's `Range` header
    /// stops advancing after the second PATCH).
    pub offset: u64,
}

impl std::fmt::Debug for UploadSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = Url::parse(&self.location)
            .map(|u| redact_url(&u))
            .unwrap_or_default();
        f.debug_struct("UploadSession")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .field("location", &shown)
            .field("offset", &self.offset)
            .finish()
    }
}

/// What a cross-repository mount did.
#[derive(Debug)]
pub enum Mount {
    /// The registry linked the blob; nothing to upload.
    Mounted,
    /// The registry declined and opened an upload session instead.
    NotMounted(UploadSession),
}

impl RegistryClient {
    /// Opens an upload session in a repository.
    pub async fn start_upload(&self, repo: &Repository) -> Result<UploadSession> {
        let url = self.url(repo, Resource::Uploads, None)?;
        let resp = self
            .execute(
                Method::POST,
                &url,
                repo,
                &scope(repo, true),
                content_length_zero(),
                Some(Bytes::new()),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(resp, "POST", &format!("upload to {repo}")).await);
        }
        self.session_from(repo, &url, &resp, 0)
    }

    /// Asks the registry to link a blob from another repository of the same registry.
    pub async fn mount_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        from: &Repository,
    ) -> Result<Mount> {
        validate_repository_name(&from.name).map_err(|reason| Error::InvalidReference {
            reference: from.to_string(),
            reason,
        })?;
        let mut url = self.url(repo, Resource::Uploads, None)?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", &from.name);
        let scopes = format!("{} {}", scope(repo, true), scope(from, false));
        let resp = self
            .execute(
                Method::POST,
                &url,
                repo,
                &scopes,
                content_length_zero(),
                Some(Bytes::new()),
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::NotMounted(self.session_from(repo, &url, &resp, 0)?)),
            _ => Err(status_error(resp, "POST", &format!("mount of {digest} into {repo}")).await),
        }
    }

    pub(super) fn session_from(
        &self,
        repo: &Repository,
        url: &Url,
        resp: &Response,
        offset: u64,
    ) -> Result<UploadSession> {
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| Error::Upload {
                url: redact_url(url),
                reason: format!(
                    "HTTP {} without a usable Location header",
                    resp.status().as_u16()
                ),
            })?;
        self.check_upload_origin(repo, &location)?;
        Ok(UploadSession {
            registry: repo.registry.clone(),
            repository: repo.name.clone(),
            location: location.to_string(),
            offset,
        })
    }

    pub(super) fn session_url(&self, session: &UploadSession) -> Result<(Repository, Url)> {
        let repo = Repository {
            registry: session.registry.clone(),
            name: session.repository.clone(),
        };
        let url = Url::parse(&session.location).map_err(|e| Error::Upload {
            url: "<session>".into(),
            reason: format!("upload session location is not a URL: {e}"),
        })?;
        self.check_upload_origin(&repo, &url)?;
        Ok((repo, url))
    }

    /// An upload session continues only on its registry's origin: a Location (from the
    /// registry, or carried in a step's input) naming another host would receive the
    /// registry's credentials and the blob.
    fn check_upload_origin(&self, repo: &Repository, location: &Url) -> Result<()> {
        if location.origin() == self.origin(repo)? {
            return Ok(());
        }
        Err(Error::OriginRefused {
            registry: repo.registry.clone(),
            url: redact_url(location),
            reason: "an upload session's location is on another origin than the registry".into(),
        })
    }

    /// Sends the next `length` bytes of an upload (one PATCH), from `session.offset`.
    /// `body` may be a stream; it is sent once, never replayed.
    pub async fn upload_part(
        &self,
        session: UploadSession,
        body: reqwest::Body,
        length: u64,
    ) -> Result<UploadSession> {
        let (repo, url) = self.session_url(&session)?;
        self.learn_challenge(&repo).await?;
        let auth = self
            .authorization(&repo.registry, &scope(&repo, true))
            .await?;
        let mut rb = self
            .inner
            .http
            .patch(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, length);
        if length > 0 {
            rb = rb.header(
                "content-range",
                format!("{}-{}", session.offset, session.offset + length - 1),
            );
        }
        if let Some(auth) = auth {
            rb = rb.header(AUTHORIZATION, auth);
        }
        let resp = rb
            .body(body)
            .send()
            .await
            .map_err(|source| Error::transport("PATCH", redact_url(&url), source))?;
        // Distribution answers 202; ECR answers 201.
        let status = resp.status();
        if status != StatusCode::ACCEPTED && status != StatusCode::CREATED {
            if is_throttling(status) {
                let delay = self.inner.config.retry.throttle_delay(resp.headers(), 1);
                self.pause_host(&url, delay);
            }
            if matches!(status.as_u16(), 404 | 416) {
                return Err(Error::UploadSessionBroken {
                    url: redact_url(&url),
                    status: status.as_u16(),
                    message: error_message(resp).await,
                });
            }
            return Err(status_error(resp, "PATCH", &format!("upload to {repo}")).await);
        }
        self.session_from(&repo, &url, &resp, session.offset + length)
    }

    /// Completes an upload as `digest`; the registry verifies the bytes it holds.
    pub async fn complete_upload(&self, session: UploadSession, digest: &Digest) -> Result<()> {
        let (repo, mut url) = self.session_url(&session)?;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let resp = self
            .execute(
                Method::PUT,
                &url,
                &repo,
                &scope(&repo, true),
                content_length_zero(),
                Some(Bytes::new()),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_error(resp, "PUT", &format!("blob {digest} in {repo}")).await);
        }
        if let Some(echoed) = header_str(resp.headers(), DOCKER_CONTENT_DIGEST) {
            if echoed != digest.as_str() {
                return Err(Error::Upload {
                    url: redact_url(&url),
                    reason: format!("registry stored {echoed}, expected {digest}"),
                });
            }
        }
        Ok(())
    }

    /// Asks the registry how many bytes a session holds (for resuming after a crash).
    pub async fn upload_status(&self, session: &UploadSession) -> Result<u64> {
        let (repo, url) = self.session_url(session)?;
        let resp = self
            .execute(
                Method::GET,
                &url,
                &repo,
                &scope(&repo, true),
                HeaderMap::new(),
                None,
            )
            .await?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(status_error(resp, "GET", &format!("upload status in {repo}")).await);
        }
        let range = header_str(resp.headers(), RANGE.as_str()).unwrap_or_default();
        Ok(range
            .rsplit_once('-')
            .and_then(|(_, end)| end.parse::<u64>().ok())
            .map(|end| end + 1)
            .unwrap_or(0))
    }

    /// Abandons an upload session (best effort: registries expire them anyway).
    pub async fn cancel_upload(&self, session: UploadSession) {
        if let Ok((repo, url)) = self.session_url(&session) {
            let result = self
                .execute(
                    Method::DELETE,
                    &url,
                    &repo,
                    &scope(&repo, true),
                    HeaderMap::new(),
                    None,
                )
                .await;
            tracing::debug!(repository = %repo, ok = result.is_ok(), "upload cancelled");
        }
    }
}
