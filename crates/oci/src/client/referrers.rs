//! The OCI 1.1 referrers API.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{redact_url, Error, Result};
use crate::manifest::MAX_MANIFEST_BYTES;
use crate::reference::Repository;

use super::*;

/// Pages of a referrers listing read at most.
pub(super) const MAX_REFERRER_PAGES: usize = 100;
/// Referrers of one manifest listed at most.
pub const MAX_REFERRERS: usize = 10_000;

/// A descriptor from the referrers API: a manifest whose `subject` is the asked-for digest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    /// The referring manifest's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// What kind of artifact it is (signature, SBOM, attestation), if stated.
    #[serde(default)]
    pub artifact_type: Option<String>,
}

impl RegistryClient {
    /// The manifests that name `digest` as their `subject`, from the OCI 1.1 referrers API
    /// (every page). `None` when the registry has no referrers API (it answers 404).
    pub async fn referrers(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Option<Vec<Referrer>>> {
        #[derive(Deserialize)]
        struct ReferrersIndex {
            #[serde(default)]
            manifests: Vec<Referrer>,
        }
        let mut url = self.url(repo, Resource::Referrers, Some(digest.as_str()))?;
        let registry_origin = self.origin(repo)?;
        let mut found = Vec::new();
        for _ in 0..MAX_REFERRER_PAGES {
            let resp = self.pull(Method::GET, &url, repo, HeaderMap::new()).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                let what = format!("referrers of {repo}@{digest}");
                return Err(status_error(resp, "GET", &what).await);
            }
            let next = next_link(resp.headers(), &url);
            let shown = redact_url(&url);
            let body = read_limited(resp, MAX_MANIFEST_BYTES, &shown).await?;
            // An index like any other: read strictly, as a runtime's Go decoder would.
            crate::strict_json::check_manifest(&body).map_err(|e| Error::InvalidManifest {
                url: shown.clone(),
                reason: format!("ambiguous referrers response: {e}"),
            })?;
            let page: ReferrersIndex =
                serde_json::from_slice(&body).map_err(|e| Error::InvalidManifest {
                    url: shown.clone(),
                    reason: format!("referrers response is not an image index: {e}"),
                })?;
            found.extend(page.manifests);
            if found.len() > MAX_REFERRERS {
                return Err(Error::ResponseTooLarge {
                    what: format!("referrers of {repo}@{digest}"),
                    url: shown,
                    limit: format!("{MAX_REFERRERS} referrers"),
                });
            }
            match next {
                // A `Link` elsewhere would take the registry's credentials with it.
                Some(n) if n.origin() != registry_origin => {
                    return Err(Error::OriginRefused {
                        registry: repo.registry.clone(),
                        url: redact_url(&n),
                        reason: "a referrers page's Link leaves the registry".into(),
                    })
                }
                Some(n) if n == url => {
                    return Err(Error::Registry {
                        method: "GET".into(),
                        url: shown,
                        status: 200,
                        code: None,
                        message: "the referrers listing pages without advancing".into(),
                    })
                }
                Some(n) => url = n,
                None => return Ok(Some(found)),
            }
        }
        Err(Error::InvalidManifest {
            url: redact_url(&url),
            reason: format!("referrers span more than {MAX_REFERRER_PAGES} pages"),
        })
    }
}
