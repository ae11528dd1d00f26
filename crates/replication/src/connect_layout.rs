//! A job's source layout, as the workflow's steps reach it (issue 35): opened in S3 with the
//! deployment's allowlist entry (its bucket owner, its pinned `transferKey`), verified, and
//! served to the steps as a registry on loopback ([`LayoutRegistry`]).

use std::collections::HashMap;
use std::sync::Arc;

use ecr::{S3Layout, S3LayoutOptions};
use oci::layout::LayoutStore;

use crate::allowlist::layouts::AllowedLayout;
use crate::error::{Error, Result};
use crate::job::LayoutLocation;
use crate::layout_registry::{ExportNames, LayoutExportRegistry, LayoutRegistry, VerifiedLayout};
use crate::transfer_statement::TrustedTransferKey;

/// Layouts served to this process's steps, by location: sources to import, destinations to
/// export blobs into.
#[derive(Default)]
pub(crate) struct ServedLayouts {
    served: tokio::sync::Mutex<HashMap<String, Arc<LayoutRegistry>>>,
    exports: tokio::sync::Mutex<HashMap<String, Arc<LayoutExportRegistry>>>,
}

impl ServedLayouts {
    /// The registry the layout at `location` is served on: opened with `entry` (the
    /// allowlist's; its `transferKey` is required: the workflow imports only a layout whose
    /// statement verifies), verified now, or earlier under the same `pin` (the statement
    /// digest a run imports).
    pub(crate) async fn host(
        &self,
        aws: &ecr::AwsSettings,
        location: &str,
        entry: Option<&AllowedLayout>,
        pin: Option<&str>,
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
            .and_then(|k| k.with_pins(None, pin))
            .map_err(|e| Error::invalid(field, format!("the transferKey of {location}: {e}")))?;
        // One server per place, however the job spells it.
        let place = in_s3(location, field, ("reads", "import a directory"))?;
        let name = place.to_string();
        let mut served = self.served.lock().await;
        if let Some(registry) = served.get(&name) {
            // A pinned statement is the same layout for good (what it serves is read by
            // digest): verified once per function instance. Unpinned (a run's first step),
            // the layout is verified again.
            if pin.is_some_and(|p| registry.layout().statement.digest == p) {
                return Ok(registry.clone());
            }
        }
        let store: Arc<dyn LayoutStore> = open_s3(aws, place, entry, None).await?;
        let verified = VerifiedLayout::read(store, &key).await?;
        match served.get(&name) {
            Some(registry) => {
                // The same statement covers the same index: the one served keeps what it read
                // (its indexes' children), else the newer one is served from now on.
                if registry.layout().statement.digest != verified.statement.digest {
                    registry.replace(verified);
                }
                Ok(registry.clone())
            }
            None => {
                let registry = Arc::new(LayoutRegistry::serve(verified).await?);
                served.insert(name, registry.clone());
                Ok(registry)
            }
        }
    }

    /// Each served layout's loopback host with the name users know it by (`oci:s3://BUCKET/PREFIX`),
    /// for messages: `127.0.0.1:PORT` is this process's and means nothing to a reader.
    pub(crate) async fn names(&self) -> Vec<(String, String)> {
        let mut names: Vec<(String, String)> = self
            .served
            .lock()
            .await
            .iter()
            .map(|(place, registry)| (registry.host().to_string(), format!("oci:{place}")))
            .collect();
        names.extend(
            self.exports
                .lock()
                .await
                .iter()
                .map(|(place, registry)| (registry.host().to_string(), format!("oci:{place}"))),
        );
        names
    }

    /// The registry the layout at `location` takes blob uploads on, for destination `field`:
    /// opened with `entry` (the allowlist's, which must allow export; its bucket owner and KMS
    /// key), one server per place for the life of the process.
    pub(crate) async fn export_host(
        &self,
        aws: &ecr::AwsSettings,
        (location, field): (&str, &str),
        entry: Option<&AllowedLayout>,
        work_bucket: Option<&ecr::WorkBucket>,
    ) -> Result<Arc<LayoutExportRegistry>> {
        let (entry, place, work_bucket) = export_place((location, field), entry, work_bucket)?;
        let name = place.to_string();
        let mut exports = self.exports.lock().await;
        if let Some(registry) = exports.get(&name) {
            return Ok(registry.clone());
        }
        let kms_key = match entry.kms_key.as_deref() {
            Some(arn) => Some(ecr::KmsKeyArn::parse(arn).map_err(|problem| {
                Error::invalid(field, format!("the kmsKey of {location}: {problem}"))
            })?),
            None => None,
        };
        // The names a run gives wait for the seal in the deployment's own bucket.
        let names = ExportNames::new(work_bucket.clone(), &name);
        let store = open_s3(aws, place, entry, kms_key).await?;
        let registry = Arc::new(LayoutExportRegistry::serve(store, names).await?);
        exports.insert(name, registry.clone());
        Ok(registry)
    }
}

/// Where an export into `location` (the job's `field`) may go, checked without a call: a layout
/// in S3 (a directory is the CLI's), one of the deployment's layouts allowed for export
/// (`entry`), with the work bucket its names wait in for the seal.
pub(crate) fn export_place<'a, 'w>(
    (location, field): (&str, &str),
    entry: Option<&'a AllowedLayout>,
    work_bucket: Option<&'w ecr::WorkBucket>,
) -> Result<(&'a AllowedLayout, ecr::S3Location, &'w ecr::WorkBucket)> {
    let place = in_s3(location, field, ("writes", "export into a directory"))?;
    let Some(entry) = entry.filter(|e| e.export) else {
        return Err(Error::invalid(
            field,
            format!(
                "{location} is not one of the deployment's layouts allowed for export \
                 (layouts[] in its configuration)"
            ),
        ));
    };
    let Some(work_bucket) = work_bucket else {
        return Err(Error::invalid(
            field,
            "exporting into a layout needs the deployment's work bucket \
             (ECR_REPLICATOR_WORK_BUCKET), where the names it gives wait for the seal",
        ));
    };
    Ok((entry, place, work_bucket))
}

/// The S3 place `location` names for `field`: the workflow (which `does` with layouts) reaches
/// none but S3; a directory is refused, saying to use `sync` to `instead`.
fn in_s3(location: &str, field: &str, (does, instead): (&str, &str)) -> Result<ecr::S3Location> {
    match LayoutLocation::parse(location) {
        Ok(LayoutLocation::S3(at)) => Ok(at),
        Ok(LayoutLocation::Dir(_)) => Err(Error::invalid(
            field,
            format!(
                "the workflow {does} layouts in S3 (s3://BUCKET/PREFIX); {instead} with \
                 `ecr-replicator sync`"
            ),
        )),
        Err(problem) => Err(Error::invalid(field, problem)),
    }
}

/// The S3 layout at `location`, every call made with the bucket owner the entry names (else the
/// function's own account).
async fn open_s3(
    aws: &ecr::AwsSettings,
    at: ecr::S3Location,
    entry: &AllowedLayout,
    kms_key: Option<ecr::KmsKeyArn>,
) -> Result<Arc<S3Layout>> {
    let owner = match &entry.bucket_owner {
        Some(owner) => owner.clone(),
        None => ecr::own_account(aws).await.map_err(|source| Error::Aws {
            context: format!("finding the account that must own {at}'s bucket"),
            source,
        })?,
    };
    let options = S3LayoutOptions {
        expected_owner: Some(owner),
        kms_key,
        part_bytes: None,
        copy_part_bytes: None,
    };
    Ok(Arc::new(
        S3Layout::new(aws, &ecr::own_region(), at, options).await,
    ))
}

/// Reads and conditional writes of a layout's newest-statement mark before a run gives up.
const MAX_MARK_ATTEMPTS: usize = 5;

/// How far ahead of this function's clock a statement's `exportedAt` may be.
const MAX_CLOCK_SKEW_MINUTES: i64 = 5;

/// Where the work bucket keeps the newest statement a run imported from each layout (no
/// expiry: it is what makes a later run refuse an older one).
pub const NEWEST_STATEMENTS_PREFIX: &str = "layout-statements/";

/// The newest statement runs of this deployment imported from one layout.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewestStatement {
    location: String,
    statement_digest: String,
    exported_at: String,
}

/// Refuses a rollback: a statement exported before the newest one a run of this deployment
/// already imported from `location` (recorded in the work bucket), which the same key also
/// verifies (a carrier kept an older copy of the layout and put it back). A newer statement is
/// recorded. A statement whose `exportedAt` cannot be read, or is in the future, is refused.
pub(crate) async fn refuse_rollback(
    bucket: &ecr::WorkBucket,
    location: &str,
    statement: &crate::transfer_statement::VerifiedStatement,
) -> Result<()> {
    let field = "source.layout";
    let name = match LayoutLocation::parse(location) {
        Ok(place) => place.to_string(),
        Err(problem) => return Err(Error::invalid(field, problem)),
    };
    let key = format!(
        "{NEWEST_STATEMENTS_PREFIX}{}.json",
        oci::Digest::of(name.as_bytes()).hex()
    );
    let aws = |context: &str| {
        let context = format!("{context} the newest statement imported from {name}");
        move |source| Error::Aws { context, source }
    };
    let refused = |reason: String| Error::TransferStatement {
        layout: name.clone(),
        reason,
    };
    let exported_at = |text: &str| text.parse::<jiff::Timestamp>();
    let this = exported_at(&statement.run.exported_at).map_err(|e| {
        refused(format!(
            "its statement's run.exportedAt {:?} is not an RFC 3339 time ({e}): its age cannot \
             be told, not imported",
            statement.run.exported_at
        ))
    })?;
    // A statement from the future would hold back every later one: an exporter's clock ahead
    // by more than a few minutes is refused, and never recorded.
    if this > jiff::Timestamp::now() + jiff::SignedDuration::from_mins(MAX_CLOCK_SKEW_MINUTES) {
        return Err(refused(format!(
            "its statement {} says it was exported at {}, in the future: the exporting \
             deployment's clock is wrong; not imported",
            statement.digest, statement.run.exported_at
        )));
    }
    let newest = NewestStatement {
        location: name.clone(),
        statement_digest: statement.digest.clone(),
        exported_at: statement.run.exported_at.clone(),
    };
    let body = serde_json::to_vec(&newest).map_err(|e| Error::Output(e.to_string()))?;
    // Read, compare, and record only if the mark is still what was read (an S3 conditional
    // write): two runs importing from the same layout at once never set the mark back.
    for _ in 0..MAX_MARK_ATTEMPTS {
        let held = bucket.get_tagged(&key).await.map_err(aws("reading"))?;
        let condition = match &held {
            Some((bytes, etag)) => {
                let newest: NewestStatement = serde_json::from_slice(bytes).map_err(|e| {
                    Error::invalid(
                        field,
                        format!("{key} in the work bucket is not readable: {e}"),
                    )
                })?;
                if newest.statement_digest == statement.digest {
                    return Ok(());
                }
                let newest_at = exported_at(&newest.exported_at).map_err(|e| {
                    Error::invalid(field, format!("{key} in the work bucket: exportedAt: {e}"))
                })?;
                // Not newer than the newest imported (an equal time is not newer either).
                if this <= newest_at {
                    return Err(refused(format!(
                        "its statement {} was exported at {}, not after {} ({}), which a run \
                         already imported from here: an older layout the key signed was put \
                         back; not imported (an operator who means it removes {key} from the \
                         work bucket)",
                        statement.digest,
                        statement.run.exported_at,
                        newest.statement_digest,
                        newest.exported_at
                    )));
                }
                ecr::WriteIf::Unchanged(etag)
            }
            None => ecr::WriteIf::Absent,
        };
        if bucket
            .put_if(&key, body.clone(), condition)
            .await
            .map_err(aws("recording"))?
        {
            return Ok(());
        }
    }
    Err(Error::Aws {
        context: format!(
            "recording the newest statement imported from {name}: {key} in the work bucket \
             changed under each of {MAX_MARK_ATTEMPTS} attempts (other runs importing from the \
             same layout); run again"
        ),
        source: ecr::Error::Api {
            code: Some("PreconditionFailed".into()),
            operation: "s3:PutObject",
            resource: key.clone(),
            message: "conditional write refused".into(),
            retryable: true,
        },
    })
}
