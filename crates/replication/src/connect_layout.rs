//! A job's source layout, as the workflow's steps reach it (issue 35): opened in S3 with the
//! deployment's allowlist entry (its bucket owner, its pinned `transferKey`), verified, and
//! served to the steps as a registry on loopback ([`LayoutRegistry`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecr::{S3Layout, S3LayoutOptions};
use oci::layout::LayoutStore;

use crate::allowlist::layouts::AllowedLayout;
use crate::error::{Error, Result};
use crate::job::LayoutLocation;
use crate::layout_registry::{LayoutRegistry, VerifiedLayout};
use crate::transfer_statement::TrustedTransferKey;

/// How long one verification of a layout serves a warm function: the statement and
/// `index.json` are read and checked again after this, so a later export is seen by the next
/// run (two small reads per step invocation at most).
const VERIFIED_FOR: Duration = Duration::from_secs(60);

/// Layouts served to this process's steps, by location.
#[derive(Default)]
pub(crate) struct ServedLayouts {
    served: tokio::sync::Mutex<HashMap<String, (Arc<LayoutRegistry>, Instant)>>,
}

impl ServedLayouts {
    /// The registry host the layout at `location` is served on, verified within
    /// [`VERIFIED_FOR`]: opened with `entry` (the allowlist's; its `transferKey` is required:
    /// the workflow imports only a layout whose statement verifies).
    pub(crate) async fn host(
        &self,
        aws: &ecr::AwsSettings,
        location: &str,
        entry: Option<&AllowedLayout>,
    ) -> Result<Arc<LayoutRegistry>> {
        let field = "source.layout";
        let Some(entry) = entry.filter(|e| e.import) else {
            return Err(Error::invalid(
                field,
                format!(
                    "{location} is not one of the deployment's layouts allowed for import \
                     (layouts[] in its configuration)"
                ),
            ));
        };
        let Some(pem) = entry.transfer_key.as_deref() else {
            return Err(Error::invalid(
                field,
                format!(
                    "the deployment pins no transferKey for {location}: the workflow imports \
                     only a layout whose signed transfer statement it verifies; add the \
                     exporting deployment's key to its layouts[] entry"
                ),
            ));
        };
        let key = TrustedTransferKey::from_pem(pem)
            .map_err(|e| Error::invalid(field, format!("the transferKey of {location}: {e}")))?;
        let mut served = self.served.lock().await;
        if let Some((registry, at)) = served.get(location) {
            if at.elapsed() < VERIFIED_FOR {
                return Ok(registry.clone());
            }
        }
        let store = open_s3(aws, location, entry).await?;
        let verified = VerifiedLayout::read(store, &key).await?;
        let registry = match served.remove(location) {
            Some((registry, _)) => {
                // The same statement covers the same index: the one served keeps what it read
                // (the referrers), else the newer one is served from now on.
                if registry.layout().statement.digest != verified.statement.digest {
                    registry.replace(verified);
                }
                registry
            }
            None => Arc::new(LayoutRegistry::serve(verified).await?),
        };
        served.insert(location.to_string(), (registry.clone(), Instant::now()));
        Ok(registry)
    }
}

/// The S3 layout at `location`, every call made with the bucket owner the entry names (else the
/// function's own account).
async fn open_s3(
    aws: &ecr::AwsSettings,
    location: &str,
    entry: &AllowedLayout,
) -> Result<Arc<dyn LayoutStore>> {
    let at = match LayoutLocation::parse(location) {
        Ok(LayoutLocation::S3(at)) => at,
        Ok(LayoutLocation::Dir(_)) => {
            return Err(Error::invalid(
                "source.layout",
                "the workflow reads layouts in S3 (s3://BUCKET/PREFIX); import a directory \
                 with `ecr-replicator sync`",
            ))
        }
        Err(problem) => return Err(Error::invalid("source.layout", problem)),
    };
    let owner = match &entry.bucket_owner {
        Some(owner) => owner.clone(),
        None => ecr::own_account(aws).await.map_err(|source| Error::Aws {
            context: format!("finding the account that must own {location}'s bucket"),
            source,
        })?,
    };
    let options = S3LayoutOptions {
        expected_owner: Some(owner),
        kms_key: None,
        part_bytes: None,
    };
    Ok(Arc::new(
        S3Layout::new(aws, &ecr::own_region(), at, options).await,
    ))
}
