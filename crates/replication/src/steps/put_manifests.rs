//! `put-manifests`: puts an image's manifests in a destination once its blobs are there
//! (children by digest, then every tag) and checks each tag names the source digest.

use std::sync::Arc;

use futures::StreamExt;
use oci::{BlobRef, Digest, PullMeter, Repository};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::connect::Connections;
use crate::copy::{put_manifests_in_order, Known};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::metrics::{self, Metric};
use crate::receipts;
use crate::referrers;

/// The `put-manifests` step: the result in its listed form (a few tags), as one of a page's
/// in the Map's aggregated result.
pub struct PutManifests;

impl Step for PutManifests {
    const NAME: &'static str = "put-manifests";
    type Input = PutManifestsInput;
    type Output = ImageResult;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(async move { Ok(put_manifests(conns, input).await?.listed()) })
    }
}

/// Input of `put-manifests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutManifestsInput {
    /// The job.
    pub job: Job,
    /// The image and destination.
    pub image: ImageTask,
    /// What the copy steps returned per range of the image's page: when every range is
    /// complete, the blobs need no presence check before the manifests. (The page's bytes are
    /// counted once, by `summarise`.)
    #[serde(default, deserialize_with = "range_outcomes")]
    pub copied: Vec<RangeOutcome>,
    /// The execution running the step (`$$.Execution.Id`), named in promotion receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

/// The ranges' outcomes as the Map returned them: an entry that is not one (a range child that
/// failed where no Catch applies leaves `null` or an error object) is a failed range, so the
/// blobs are checked and a missing one fails the image, named.
fn range_outcomes<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<RangeOutcome>, D::Error> {
    let value = JsonValue::deserialize(deserializer)?;
    let (mut outcomes, lost) = flatten_children::<RangeOutcome>(&value);
    outcomes.extend((0..lost).map(|_| RangeOutcome {
        bytes: 0,
        error: Some("RangeChildLost: its child execution ended without a result".to_string()),
    }));
    Ok(outcomes)
}

impl PutManifestsInput {
    /// Bytes the copy steps moved.
    pub fn bytes_copied(&self) -> u64 {
        self.copied.iter().map(|r| r.bytes).sum()
    }

    /// Whether every range of the image's page completed (at least one, none with an error):
    /// its blobs are then known to be in the destination.
    pub fn ranges_complete(&self) -> bool {
        !self.copied.is_empty() && self.copied.iter().all(|r| r.error.is_none())
    }

    /// The first error a range of the page reported.
    pub fn first_range_error(&self) -> Option<String> {
        self.copied.iter().find_map(|r| r.error.clone())
    }
}

/// Puts the image's manifests in the destination (children by digest, then every tag) once its
/// blobs are there, and checks each tag resolves to the source digest.
#[tracing::instrument(skip_all, fields(repository = %input.image.repository, digest = %input.image.digest))]
pub async fn put_manifests(conns: &Connections, input: PutManifestsInput) -> Result<ImageResult> {
    // Validated from a copy: the helpers below read the rest of the input.
    let valid = input.job.clone().validate()?;
    let (job, platforms) = (&valid.job, valid.platforms.as_ref());
    let target = checked_target(conns, job, &input.image)?;
    let source = conns.source(job).await?;
    let dest = conns.destination(job, input.image.destination).await?;
    // Reached where the connection goes (a layout's is its served registry on loopback).
    let to = Repository {
        registry: dest.registry.clone(),
        name: target,
    };
    // Its reads are counted (pulls, on a rate-limited source); the plan reserved them.
    let meter = Arc::new(PullMeter::counting(&source.registry));
    let client = source.client.metered(meter.clone());
    let read = |digest, platforms| {
        read_source_image(
            (&client, &source.registry),
            &input.image.repository,
            digest,
            platforms,
        )
    };
    let image = read(&input.image.digest, platforms).await?;
    let mut referred = Vec::new();
    for digest in &input.image.referrers {
        referred.push(read(digest, None).await?);
    }
    check_blobs_there(&dest.client, &to, &input, &image, &referred).await?;
    if job.destination(input.image.destination)?.layout.is_some() {
        // Before any name: the seal states where each image it names came from and what
        // admitted it.
        let image = (to.name.as_str(), &input.image.digest);
        conns
            .record_export_provenance(
                job,
                input.image.destination,
                image,
                (&input.image.repository, input.image.signed_by.as_deref()),
            )
            .await?;
    }
    let (from, top, walked) = image;
    let known = Known {
        tags_absent: input.image.tags_absent,
        repository_absent: input.image.repository_absent,
    };
    put_manifests_in_order(
        &dest.client,
        &to,
        &top,
        &walked.children,
        &input.image.tags,
        known,
        &from.to_string(),
    )
    .await?;
    let mut referrers = Vec::new();
    for (from, top, walked) in referred {
        put_manifests_in_order(
            &dest.client,
            &to,
            &top,
            &walked.children,
            &[],
            known,
            &from.to_string(),
        )
        .await?;
        referrers.push(top);
    }
    if let Some(receipt) =
        promotion_receipt(conns, &dest.client, &input, &job.source_name(), &to, &top).await?
    {
        referrers.push(receipt);
    }
    // The fallback indexes may name the image, its referrers, and the platform subset put in
    // its place (the receipt's subject).
    let subjects: Vec<&Digest> = std::iter::once(&input.image.digest)
        .chain(&input.image.referrers)
        .chain((top.digest != input.image.digest).then_some(&top.digest))
        .collect();
    referrers::write_fallback_indexes(&dest.client, &to, &referrers, &subjects).await?;
    let lag_seconds = arrived(&input.image, metrics::now_seconds());
    // Bytes are the page's (its ranges', counted once by `summarise`): blobs are shared.
    Ok(ImageResult {
        source_pulls: meter.sent(),
        target_digest: (top.digest != input.image.digest).then(|| top.digest.to_string()),
        lag_seconds,
        ..ImageResult::for_task(&input.image, ImageStatus::Copied, 0, None)
    })
}

/// The task's target repository, recomputed from the job and checked against the deployment's
/// scope: whatever reached this step's input, it writes only where the job may.
fn checked_target(conns: &Connections, job: &Job, task: &ImageTask) -> Result<String> {
    let spec = job.destination(task.destination)?;
    let target = spec.checked_target_repository(&task.repository)?;
    if target != task.target_repository || spec.target_name() != task.target_registry {
        return Err(Error::invalid(
            "image.targetRepository",
            format!(
                "{}/{} is not where the job puts {} ({}/{target})",
                task.target_registry,
                task.target_repository,
                task.repository,
                spec.target_name()
            ),
        ));
    }
    conns.check_target_scope(&spec.registry, &target)?;
    Ok(target)
}

/// An image as `read_source_image` gives it: its reference, top manifest and what it holds.
type SourceImage = (oci::Reference, oci::Manifest, crate::copy::Walked);

/// No manifest before all of its blobs are there (a range of the page may have failed):
/// checked in the destination unless every range of the page reported complete. A missing blob
/// fails the image, naming the range's error when one was reported.
async fn check_blobs_there(
    dest: &oci::RegistryClient,
    to: &Repository,
    input: &PutManifestsInput,
    (from, _, walked): &SourceImage,
    referred: &[SourceImage],
) -> Result<()> {
    if input.ranges_complete() {
        return Ok(());
    }
    let blobs: Vec<&BlobRef> = walked
        .blobs
        .values()
        .chain(referred.iter().flat_map(|(_, _, w)| w.blobs.values()))
        .collect();
    let checks: Vec<(&BlobRef, oci::Result<Option<u64>>)> = futures::stream::iter(blobs)
        .map(|blob| async move { (blob, dest.head_blob(to, &blob.digest).await) })
        .buffer_unordered(PARALLEL_CHECKS)
        .collect()
        .await;
    for (blob, present) in checks {
        let present = present.map_err(|e| Error::Registry {
            image: from.to_string(),
            source: e,
        })?;
        if present.is_none() {
            return Err(Error::BlobMissing {
                image: from.to_string(),
                blob: blob.digest.to_string(),
                target: to.to_string(),
                cause: missing_blob_cause(&from.to_string(), input.first_range_error()),
            });
        }
    }
    Ok(())
}

/// Why a blob is missing: the page's range error (said once: it names this image too), or a
/// copy that failed or a blob removed since.
fn missing_blob_cause(from: &str, range_error: Option<String>) -> String {
    match range_error {
        Some(e) => {
            let e = ["ReplicationFailed: ", "ReplicationRetryable: "]
                .iter()
                .find_map(|kind| e.strip_prefix(kind))
                .unwrap_or(&e);
            format!(
                "a blob copy failed: {}",
                e.replacen(&format!("copy of {from} failed: "), "", 1)
                    .replacen(&format!("{from}: "), "", 1)
            )
        }
        None => "its copy failed or it was removed since: run again".into(),
    }
}

/// Promoted under requireSignature, with a receipt key: the signed receipt, attached before the
/// fallback index is written (it lists the receipt too). Only what the deployment's own
/// policies admitted is certified: keys a caller wrote in the job never yield a receipt.
async fn promotion_receipt(
    conns: &Connections,
    dest: &oci::RegistryClient,
    input: &PutManifestsInput,
    source_registry: &str,
    to: &Repository,
    top: &oci::Manifest,
) -> Result<Option<oci::Manifest>> {
    let certified = input
        .image
        .signed_by
        .as_deref()
        .and_then(|line| conns.certified_admissions(line));
    let (Some(admitted_by), Some(signer)) = (&certified, conns.receipt_signer().await) else {
        return Ok(None);
    };
    let promotion = receipts::Promotion {
        source_registry,
        source_repository: &input.image.repository,
        source_digest: &input.image.digest,
        target: to,
        manifest: top,
        admitted_by,
        run: input
            .execution
            .as_deref()
            .unwrap_or("ecr-replicator CLI (in process)"),
    };
    Ok(Some(
        receipts::attach_receipt(dest, signer.as_ref(), &promotion).await?,
    ))
}

/// The image arrived in its destination now (`now`, seconds since the epoch): writes its
/// `ImagesCopied` and `ReplicationLag` metrics (dimension `Destination`) and returns its lag in
/// seconds (see `ImageResult::lag_seconds`), `None` when the source reports no push time.
fn arrived(task: &ImageTask, now: i64) -> Option<u64> {
    let lag = task
        .pushed_at
        .map(|pushed| u64::try_from(now.saturating_sub(pushed)).unwrap_or(0));
    let mut measured = vec![(Metric::ImagesCopied, 1.0)];
    if let Some(lag) = lag {
        measured.push((Metric::ReplicationLag, lag as f64));
    }
    metrics::emit(&task.target_registry, &measured);
    lag
}
