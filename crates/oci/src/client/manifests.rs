//! Manifests: GET (kept byte-exact, digest verified, cached by digest), HEAD, PUT, DELETE.

use std::collections::HashMap;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};

use crate::digest::Digest;
use crate::error::{redact_url, Error, Result};
use crate::manifest::{Manifest, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use crate::reference::{Reference, Repository};

use super::*;

/// A manifest's identity as a HEAD request reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// Digest of the stored manifest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: Option<String>,
}

/// The registry's refusal of a manifest read because its pull limit is reached: 429 with
/// `ratelimit-remaining: 0` (see `pulls`).
fn pull_limit_reached(resp: &Response, registry: &str, url: &Url) -> Option<Error> {
    if resp.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let seen = RateLimit::exhausted(resp.headers())?;
    Some(Error::PullLimitReached {
        registry: registry.to_string(),
        url: redact_url(url),
        detail: match seen.limit {
            Some(limit) => format!("0 of {limit} pulls left in {}", seen.window()),
            None => format!("0 pulls left in {}", seen.window()),
        },
    })
}

/// Bytes of manifests the cache keeps at most; past that it starts over.
pub(super) const MANIFEST_CACHE_BYTES: usize = 32 << 20;

/// Manifests by (registry, repository, digest).
#[derive(Default)]
pub(super) struct ManifestCache {
    entries: HashMap<(String, String, String), Manifest>,
    bytes: usize,
}

impl ManifestCache {
    pub(super) fn insert(&mut self, key: (String, String, String), manifest: Manifest) {
        if self.bytes + manifest.bytes.len() > MANIFEST_CACHE_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += manifest.bytes.len();
        if let Some(old) = self.entries.insert(key, manifest) {
            self.bytes -= old.bytes.len();
        }
    }
}

impl RegistryClient {
    /// Fetches a manifest by tag or digest, keeping its bytes; verifies the digest when the
    /// reference has one, and always against the registry's `Docker-Content-Digest`.
    #[tracing::instrument(skip(self), fields(reference = %reference))]
    pub async fn get_manifest(&self, reference: &Reference) -> Result<Manifest> {
        let repo = &reference.repository;
        // By digest a manifest never changes: one read per process (listing, plan, put).
        let cache_key = reference
            .digest
            .as_ref()
            .map(|d| (repo.registry.clone(), repo.name.clone(), d.to_string()));
        if let Some(key) = &cache_key {
            if let Some(hit) = lock(&self.inner.manifests).entries.get(key) {
                return Ok(hit.clone());
            }
        }
        let meters = self.meters_for(&repo.registry);
        pulls::take_all(&meters)?;
        let (url, resp) = self.read_manifest(Method::GET, reference).await?;
        pulls::observe_all(&meters, resp.headers());
        if let Some(refused) = pull_limit_reached(&resp, &repo.registry, &url) {
            return Err(refused);
        }
        if !resp.status().is_success() {
            return Err(status_error(resp, "GET", &format!("manifest {reference}")).await);
        }
        let shown = redact_url(&url);
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST_BYTES as u64)
        {
            return Err(Error::InvalidManifest {
                url: shown,
                reason: "larger than the 4 MiB manifest limit".into(),
            });
        }
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        let header_digest = header_str(resp.headers(), DOCKER_CONTENT_DIGEST);
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, &shown).await?;
        let manifest = Manifest::from_bytes(bytes, content_type.as_deref(), &shown)?;
        let expected = reference
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .or(header_digest.filter(|d| d.starts_with("sha256:")));
        if let Some(expected) = expected {
            if expected != manifest.digest.as_str() {
                return Err(Error::DigestMismatch {
                    url: shown,
                    expected,
                    actual: manifest.digest.to_string(),
                });
            }
        }
        // Read by tag, it is kept by its digest too: a later read by digest (the plan after
        // the listing) costs no request.
        let key = cache_key.unwrap_or_else(|| {
            (
                repo.registry.clone(),
                repo.name.clone(),
                manifest.digest.to_string(),
            )
        });
        lock(&self.inner.manifests).insert(key, manifest.clone());
        Ok(manifest)
    }

    /// Whether a manifest exists, and its digest. `None` when the registry says 404.
    #[tracing::instrument(skip(self), fields(reference = %reference))]
    pub async fn head_manifest(&self, reference: &Reference) -> Result<Option<ManifestHead>> {
        let (url, resp) = self.read_manifest(Method::HEAD, reference).await?;
        pulls::observe_all(
            &self.meters_for(&reference.repository.registry),
            resp.headers(),
        );
        if let Some(refused) = pull_limit_reached(&resp, &reference.repository.registry, &url) {
            return Err(refused);
        }
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(resp, "HEAD", &format!("manifest {reference}")).await);
        }
        let media_type = header_str(resp.headers(), CONTENT_TYPE.as_str());
        match header_str(resp.headers(), DOCKER_CONTENT_DIGEST).map(|d| Digest::parse(&d)) {
            Some(Ok(digest)) => Ok(Some(ManifestHead { digest, media_type })),
            // No usable digest header: ask for the bytes and hash them.
            _ => match self.get_manifest(reference).await {
                Ok(m) => Ok(Some(ManifestHead {
                    digest: m.digest,
                    media_type: Some(m.media_type),
                })),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Stores a manifest under a tag or its digest; checks the registry computed the same digest.
    /// `Some(digest)` when the registry confirmed what it stored (`Docker-Content-Digest`, as
    /// distribution and ECR send), `None` when it said nothing.
    #[tracing::instrument(skip(self, manifest), fields(repository = %repo, digest = %manifest.digest))]
    pub async fn put_manifest(
        &self,
        repo: &Repository,
        tag_or_digest: &str,
        manifest: &Manifest,
    ) -> Result<Option<Digest>> {
        let url = self.url(repo, Resource::Manifests, Some(tag_or_digest))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&manifest.media_type).map_err(|_| Error::InvalidManifest {
                url: redact_url(&url),
                reason: "media type is not a valid header value".into(),
            })?,
        );
        let resp = self
            .execute(
                Method::PUT,
                &url,
                repo,
                &scope(repo, true),
                headers,
                Some(manifest.bytes.clone()),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(
                status_error(resp, "PUT", &format!("manifest {repo}:{tag_or_digest}")).await,
            );
        }
        match header_str(resp.headers(), DOCKER_CONTENT_DIGEST) {
            Some(echoed) if echoed != manifest.digest.as_str() => Err(Error::DigestMismatch {
                url: redact_url(&url),
                expected: manifest.digest.to_string(),
                actual: echoed,
            }),
            Some(_) => Ok(Some(manifest.digest.clone())),
            None => Ok(None),
        }
    }

    /// Deletes a manifest by tag (untags it, where the registry can) or by digest (removes it
    /// and every tag on it). `Ok(false)` when there was no such manifest.
    #[tracing::instrument(skip(self), fields(repository = %repo))]
    pub async fn delete_manifest(&self, repo: &Repository, tag_or_digest: &str) -> Result<bool> {
        let url = self.url(repo, Resource::Manifests, Some(tag_or_digest))?;
        let scope = format!("repository:{}:delete", repo.name);
        let resp = self
            .execute(Method::DELETE, &url, repo, &scope, HeaderMap::new(), None)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => {
                Err(status_error(resp, "DELETE", &format!("manifest {repo}:{tag_or_digest}")).await)
            }
        }
    }

    /// Sends a manifest GET or HEAD with the full Accept list; returns the URL asked.
    async fn read_manifest(
        &self,
        method: Method,
        reference: &Reference,
    ) -> Result<(Url, Response)> {
        let repo = &reference.repository;
        let url = self.url(
            repo,
            Resource::Manifests,
            Some(&reference.manifest_reference()),
        )?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self.pull(method, &url, repo, headers).await?;
        Ok((url, resp))
    }
}
