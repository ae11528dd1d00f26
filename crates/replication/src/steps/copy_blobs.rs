//! `copy-blobs`: copies one range of a page plan: its whole blobs in parallel, or the next
//! segment of a large blob (the upload session carried between calls).

use futures::StreamExt;
use oci::{BlobOutcome, Repository, SegmentProgress, SegmentState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;
use crate::connect::Connections;
use crate::copy::BlobTally;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::metrics::{self, Metric};
use crate::plan::CopyRange;

/// Blobs of one range copied at once.
const PARALLEL_BLOBS: usize = 8;

/// The `copy-blobs` step.
pub struct CopyBlobs;

impl Step for CopyBlobs {
    const NAME: &'static str = "copy-blobs";
    type Input = CopyBlobsInput;
    type Output = CopyBlobsOutput;
    fn run(conns: &Connections, input: Self::Input) -> StepFuture<'_, Self::Output> {
        Box::pin(copy_blobs(conns, input))
    }
}

/// What copying one range of a page came to, as the state machine records it per range
/// (`RangeDone`/`RangeFailed`) and `put-manifests` and `summarise` read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeOutcome {
    /// Bytes the range's calls streamed (`rangeBytesCopied`; 0 where counted elsewhere).
    #[serde(default)]
    pub bytes: u64,
    /// Why the range failed (the error name in the state machine, which keeps state small;
    /// the whole message in process), else `null`.
    #[serde(default)]
    pub error: Option<String>,
}

/// Input of `copy-blobs`: one range, and for a segment loop the state of the previous call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyBlobsInput {
    /// The job.
    pub job: Job,
    /// The image and destination.
    pub image: ImageTask,
    /// The range to copy.
    pub range: CopyRange,
    /// Upload state after the previous segment.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub state: Option<SegmentState>,
    /// Bytes earlier calls of this range copied (the segment loop carries it, so no byte count
    /// goes through a 32-bit intrinsic).
    #[serde(default)]
    pub bytes_before: u64,
}

/// Output of `copy-blobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyBlobsOutput {
    /// The range (echoed, for the segment loop).
    pub range: CopyRange,
    /// The range is complete in the target.
    pub done: bool,
    /// State for the next segment when not done.
    #[schemars(with = "Option<serde_json::Value>")]
    pub state: Option<SegmentState>,
    /// Bytes streamed by this call.
    pub bytes_copied: u64,
    /// Bytes streamed for this range by this call and the earlier ones (`bytesBefore` + this).
    pub range_bytes_copied: u64,
    /// Blobs completed by this call.
    pub blobs_copied: usize,
    /// Blobs the target already had.
    pub blobs_skipped: usize,
}

/// Copies one range: its whole blobs in parallel, or the next segment of a large blob
/// (continuing the upload session in `state`).
#[tracing::instrument(skip_all, fields(repository = %input.image.repository, digest = %input.image.digest))]
pub async fn copy_blobs(conns: &Connections, input: CopyBlobsInput) -> Result<CopyBlobsOutput> {
    let job = input.job.validate()?.job;
    let source = conns.source(&job).await?;
    let dest = conns.destination(&job, input.image.destination).await?;
    let mut state = input.state.clone();
    if job.destination(input.image.destination)?.layout.is_some() {
        // A layout's upload session lives in its location's path: another invocation's server
        // (another port) opened it, this one's continues it.
        if let Some(state) = state.as_mut() {
            crate::layout_registry::rehome(&mut state.session, &dest.registry)?;
        }
    }
    let from = Repository {
        registry: source.registry.clone(),
        name: input.image.repository.clone(),
    };
    let to = Repository {
        registry: dest.registry.clone(),
        name: input.image.target_repository.clone(),
    };
    let image = format!("{from}@{}", input.image.digest);
    let oci_err = |source: oci::Error| Error::Registry {
        image: image.clone(),
        source,
    };
    // Bytes streamed by this call, as a metric, whether it completes the range or fails.
    let emit_bytes = |bytes: u64| {
        metrics::emit(
            &input.image.target_registry,
            &[(Metric::BytesCopied, bytes as f64)],
        )
    };
    let mut output = CopyBlobsOutput {
        range: input.range.clone(),
        done: true,
        state: None,
        bytes_copied: 0,
        range_bytes_copied: 0,
        blobs_copied: 0,
        blobs_skipped: 0,
    };
    match &input.range {
        CopyRange::Blobs { blobs } => {
            // Every blob of the range is copied, even after one fails: the range's blobs belong
            // to several images, and `put-manifests` puts each image whose own blobs all arrived
            // (a bad blob fails its image alone, not the images batched beside it).
            let results: Vec<oci::Result<(BlobOutcome, u64)>> = futures::stream::iter(blobs)
                .map(|blob| async {
                    let (source, dest) = (&source.client, &dest.client);
                    if input.image.repository_absent {
                        oci::upload_blob(source, &from, dest, &to, blob, None).await
                    } else {
                        oci::copy_blob(source, &from, dest, &to, blob, None).await
                    }
                    .map(|o| (o, blob.size))
                })
                .buffer_unordered(PARALLEL_BLOBS)
                .collect()
                .await;
            let mut failed: Vec<oci::Error> = Vec::new();
            let tally: BlobTally = results
                .into_iter()
                .filter_map(|r| r.map_err(|e| failed.push(e)).ok())
                .collect();
            // A transient failure is reported over a lasting one (a stable sort keeps the
            // first of each): the step is then retried.
            failed.sort_by_key(|e| !e.is_retryable());
            if let Some(first) = failed.into_iter().next() {
                emit_bytes(tally.bytes);
                return Err(oci_err(first));
            }
            // The step reports a mounted blob as copied: it is now in the target.
            output.blobs_copied = tally.copied + tally.mounted;
            output.blobs_skipped = tally.present;
            output.bytes_copied = tally.bytes;
        }
        CopyRange::Segments { blob, .. } => {
            let progress = oci::copy_blob_segment(
                &source.client,
                &from,
                &dest.client,
                &to,
                blob,
                state,
                job.range_bytes,
            )
            .await
            .map_err(oci_err)?;
            match progress {
                SegmentProgress::InProgress { state, bytes } => {
                    output.done = false;
                    output.state = Some(state);
                    output.bytes_copied = bytes;
                }
                SegmentProgress::Done { bytes, present } => {
                    output.bytes_copied = bytes;
                    if present {
                        output.blobs_skipped = 1;
                    } else {
                        output.blobs_copied = 1;
                    }
                }
            }
        }
    }
    output.range_bytes_copied = input.bytes_before + output.bytes_copied;
    emit_bytes(output.bytes_copied);
    Ok(output)
}
