//! Streaming one blob from a source repository into a target repository, verifying size and
//! digest on the way; the upload is completed only when both match.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::client::{Mount, RegistryClient, UploadSession};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Verifier, VerifierState};
use crate::error::{Error, Result};
use crate::reference::Repository;

/// Called with the number of bytes just transferred (for progress bars).
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// What `copy_blob` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The target already had it.
    Present,
    /// Linked from another repository of the same registry.
    Mounted,
    /// Streamed from the source.
    Copied,
}

/// A blob to move: its digest and size from the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// Copies one blob, skipping it when the target has it and mounting it when source and target
/// share a registry. Retryable failures (resets, truncation, a refused session) restart the blob
/// on a fresh upload session, with backoff, up to the client's retry budget; throttling restarts
/// it without counting an attempt, within the throttle budget.
#[tracing::instrument(skip(source, target, progress), fields(digest = %blob.digest, size = blob.size))]
pub async fn copy_blob(
    source: &RegistryClient,
    from: &Repository,
    target: &RegistryClient,
    to: &Repository,
    blob: &BlobRef,
    progress: Option<ProgressFn>,
) -> Result<BlobOutcome> {
    if target.head_blob(to, &blob.digest).await?.is_some() {
        return Ok(BlobOutcome::Present);
    }
    upload_blob(source, from, target, to, blob, progress).await
}

/// Stores a small blob held in memory (an artifact's config or payload) in one request,
/// unless the target has it.
pub async fn put_small_blob(target: &RegistryClient, to: &Repository, bytes: Bytes) -> Result<()> {
    let digest = Digest::of(&bytes);
    if target.head_blob(to, &digest).await?.is_some() {
        return Ok(());
    }
    let length = bytes.len() as u64;
    let session = target.start_upload(to).await?;
    let session = target
        .upload_part(session, reqwest::Body::from(bytes), length)
        .await?;
    target.complete_upload(session, &digest).await
}

/// `copy_blob` of a blob the target is known not to have (its repository does not exist):
/// uploaded without asking first. Were it there after all, the upload only repeats it.
#[tracing::instrument(skip(source, target, progress), fields(digest = %blob.digest, size = blob.size))]
pub async fn upload_blob(
    source: &RegistryClient,
    from: &Repository,
    target: &RegistryClient,
    to: &Repository,
    blob: &BlobRef,
    progress: Option<ProgressFn>,
) -> Result<BlobOutcome> {
    let policy = target.config().retry.clone();
    let started = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        let session = if from.registry == to.registry && from.name != to.name {
            match target.mount_blob(to, &blob.digest, from).await? {
                Mount::Mounted => return Ok(BlobOutcome::Mounted),
                Mount::NotMounted(session) => session,
            }
        } else {
            target.start_upload(to).await?
        };
        match stream_into(source, from, target, session, blob, progress.clone()).await {
            Ok(()) => return Ok(BlobOutcome::Copied),
            // The throttled request paused its host; the restart waits for that.
            Err(e) if e.is_throttling() && started.elapsed() < policy.throttle_budget => {
                tracing::debug!(error = %e, "blob upload throttled, restarting it after the pause");
            }
            Err(e) if attempt + 1 < policy.max_attempts && worth_retrying(&e) => {
                attempt += 1;
                let delay = policy.jittered_backoff(attempt);
                tracing::warn!(error = %e, attempt, ?delay, "blob copy failed, restarting on a new upload session");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Transient faults, and a body that ended early (a truncated transfer).
fn worth_retrying(e: &Error) -> bool {
    e.is_retryable()
        || matches!(e, Error::SizeMismatch { expected, actual, .. } if actual < expected)
}

/// Streams the source body into an open session and completes it if the bytes verify.
/// On any failure the session is cancelled and nothing is committed.
async fn stream_into(
    source: &RegistryClient,
    from: &Repository,
    target: &RegistryClient,
    session: UploadSession,
    blob: &BlobRef,
    progress: Option<ProgressFn>,
) -> Result<()> {
    if blob.size == 0 {
        // An empty blob has no parts to send; complete it with an empty body.
        if blob.digest != Digest::of(b"") {
            target.cancel_upload(session).await;
            return Err(Error::SizeMismatch {
                url: format!("{from}@{}", blob.digest),
                expected: 0,
                actual: u64::MAX,
            });
        }
        return complete(target, session, blob).await;
    }
    let response = source.get_blob(from, &blob.digest, 0).await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            target.cancel_upload(session).await;
            return Err(e);
        }
    };
    let url = response.url.clone();
    let result = match target.chunk_size(&session.registry) {
        None => {
            single_patch(
                target,
                session.clone(),
                response.into_stream(),
                blob,
                &url,
                progress,
            )
            .await
        }
        Some(part) => {
            chunked(
                target,
                session.clone(),
                response.into_stream(),
                blob,
                &url,
                part.max(1),
                progress,
            )
            .await
        }
    };
    match result {
        Ok(session) => target.complete_upload(session, &blob.digest).await,
        Err(e) => {
            target.cancel_upload(session).await;
            Err(e)
        }
    }
}

/// Completes an upload; a refused empty blob (ECR: "cannot be completed because it does not have
/// any parts") becomes its own error, final rather than retried.
async fn complete(target: &RegistryClient, session: UploadSession, blob: &BlobRef) -> Result<()> {
    match target.complete_upload(session, &blob.digest).await {
        Err(Error::Registry {
            url,
            status: 400,
            message,
            ..
        }) if blob.size == 0 => Err(Error::EmptyBlobRefused {
            url,
            digest: blob.digest.to_string(),
            message,
        }),
        other => other,
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the body stream saw, read back after the PATCH whatever its outcome.
struct Seen {
    verifier: Verifier,
    source_error: Option<reqwest::Error>,
    overrun: bool,
}

async fn single_patch(
    target: &RegistryClient,
    session: UploadSession,
    body: impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    blob: &BlobRef,
    url: &str,
    progress: Option<ProgressFn>,
) -> Result<UploadSession> {
    let (session, verifier) = patch_counted(
        target,
        session,
        body,
        Verifier::new(),
        blob.size,
        url,
        progress,
    )
    .await?;
    verifier.check(&blob.digest, blob.size, url)?;
    Ok(session)
}

/// Sends `body` as one PATCH of `length` bytes, hashing it into `verifier` on the way. Fails if
/// the source breaks off, sends more or fewer bytes than `length`, or the PATCH fails.
async fn patch_counted(
    target: &RegistryClient,
    session: UploadSession,
    body: impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    verifier: Verifier,
    length: u64,
    url: &str,
    progress: Option<ProgressFn>,
) -> Result<(UploadSession, Verifier)> {
    let expected_total = verifier.seen() + length;
    let seen = Arc::new(Mutex::new(Seen {
        verifier,
        source_error: None,
        overrun: false,
    }));
    let tap = seen.clone();
    let stream = body.map(move |chunk| -> std::result::Result<Bytes, BoxError> {
        let mut s = tap.lock().unwrap_or_else(|p| p.into_inner());
        match chunk {
            Ok(bytes) => {
                s.verifier.update(&bytes);
                if s.verifier.seen() > expected_total {
                    s.overrun = true;
                    return Err("source sent more bytes than expected".into());
                }
                if let Some(p) = &progress {
                    p(bytes.len() as u64);
                }
                Ok(bytes)
            }
            Err(e) => {
                let message = e.to_string();
                s.source_error = Some(e);
                Err(message.into())
            }
        }
    });
    let sent = target
        .upload_part(session, reqwest::Body::wrap_stream(stream), length)
        .await;
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    // A source-side failure explains a failed PATCH better than the PATCH's own error.
    if let Some(source) = s.source_error.take() {
        return Err(Error::transport("GET", url.to_string(), source));
    }
    // The registry's answer (a refusal, throttling) explains a PATCH it cut short; a transport
    // failure with a short body is the source's truncation.
    let sent = match sent {
        Err(e) if !matches!(e, Error::Transport { .. }) => return Err(e),
        other => other,
    };
    if s.overrun || s.verifier.seen() != expected_total {
        return Err(Error::SizeMismatch {
            url: url.to_string(),
            expected: expected_total,
            actual: s.verifier.seen(),
        });
    }
    let session = sent?;
    Ok((session, s.verifier.clone()))
}

/// Where a blob copied in segments stands between invocations: the open upload session and the
/// hash of every byte sent so far. Small and serde, so it travels in a step's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentState {
    /// The upload session, with the offset the client counted.
    pub session: UploadSession,
    /// sha256 state over bytes `0..session.offset`.
    pub hash: VerifierState,
}

/// What one segment call did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum SegmentProgress {
    /// More segments to go: pass the state to the next call.
    InProgress {
        /// State for the next call.
        state: SegmentState,
        /// Bytes this call sent.
        bytes: u64,
    },
    /// The blob is complete in the target (copied and verified, or already there).
    Done {
        /// Bytes this call sent.
        bytes: u64,
        /// The target had the blob before the first segment.
        present: bool,
    },
}

/// Copies the next at most `max_bytes` of a blob, continuing the upload session of `state`
/// (another process may have sent the earlier segments). The offset is the one the client
/// counted: registries' reported offsets are not trusted (ECR's `Range` stops advancing after
/// the first part). A session the registry refuses (416: it holds other bytes, as after a crash
/// mid-PATCH; 404: expired) restarts the blob on a new session from byte 0, once per call; a
/// throttled PATCH is sent again at the same offset within the throttle budget. The last
/// segment checks the digest of the whole blob from the carried hash state before completing.
#[tracing::instrument(skip(source, target, state), fields(digest = %blob.digest, size = blob.size))]
pub async fn copy_blob_segment(
    source: &RegistryClient,
    from: &Repository,
    target: &RegistryClient,
    to: &Repository,
    blob: &BlobRef,
    state: Option<SegmentState>,
    max_bytes: u64,
) -> Result<SegmentProgress> {
    let (mut session, mut verifier) = match state {
        // A carried session of another registry or repository is not continued: its location
        // would receive the source's bytes (the state travels outside this process).
        Some(state)
            if state.session.registry != to.registry || state.session.repository != to.name =>
        {
            tracing::warn!(
                session = ?state.session,
                "saved segment state names another repository than the target; restarting the blob"
            );
            (target.start_upload(to).await?, Verifier::new())
        }
        Some(state) => {
            let verifier = Verifier::import(&state.hash)?;
            if verifier.seen() == state.session.offset {
                (state.session, verifier)
            } else {
                tracing::warn!(
                    offset = state.session.offset,
                    hashed = verifier.seen(),
                    "saved segment state is inconsistent; restarting the blob"
                );
                target.cancel_upload(state.session).await;
                (target.start_upload(to).await?, Verifier::new())
            }
        }
        None => {
            if target.head_blob(to, &blob.digest).await?.is_some() {
                return Ok(SegmentProgress::Done {
                    bytes: 0,
                    present: true,
                });
            }
            (target.start_upload(to).await?, Verifier::new())
        }
    };
    let policy = target.config().retry.clone();
    let started = std::time::Instant::now();
    let mut restarted = false;
    let (session, verifier, length) = loop {
        let offset = session.offset;
        let length = max_bytes.max(1).min(blob.size - offset.min(blob.size));
        if length == 0 {
            break (session, verifier, 0);
        }
        match send_range(
            source,
            from,
            target,
            blob,
            session.clone(),
            verifier.clone(),
            length,
        )
        .await
        {
            Ok((sent, hashed)) => break (sent, hashed, length),
            Err(e) if e.is_throttling() && started.elapsed() < policy.throttle_budget => {
                tracing::debug!(error = %e, offset, "segment throttled; sending it again after the pause");
            }
            Err(e @ Error::UploadSessionBroken { .. }) if !restarted => {
                tracing::warn!(error = %e, offset, "upload session refused; restarting the blob on a new session");
                restarted = true;
                target.cancel_upload(session).await;
                session = target.start_upload(to).await?;
                verifier = Verifier::new();
            }
            Err(e) => return Err(e),
        }
    };
    let last = session.offset >= blob.size;
    if !last {
        return Ok(SegmentProgress::InProgress {
            state: SegmentState {
                hash: verifier.export(),
                session,
            },
            bytes: length,
        });
    }
    if let Err(e) = verifier.check(&blob.digest, blob.size, &format!("{from}@{}", blob.digest)) {
        target.cancel_upload(session).await;
        return Err(e);
    }
    complete(target, session, blob).await?;
    Ok(SegmentProgress::Done {
        bytes: length,
        present: false,
    })
}

/// Streams bytes `session.offset..+length` of the source blob as one PATCH.
async fn send_range(
    source: &RegistryClient,
    from: &Repository,
    target: &RegistryClient,
    blob: &BlobRef,
    session: UploadSession,
    verifier: Verifier,
    length: u64,
) -> Result<(UploadSession, Verifier)> {
    let response = source
        .get_blob_range(from, &blob.digest, session.offset, Some(length))
        .await?;
    let url = response.url.clone();
    patch_counted(
        target,
        session,
        response.into_stream(),
        verifier,
        length,
        &url,
        None,
    )
    .await
}

async fn chunked(
    target: &RegistryClient,
    mut session: UploadSession,
    body: impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    blob: &BlobRef,
    url: &str,
    part: u64,
    progress: Option<ProgressFn>,
) -> Result<UploadSession> {
    let part = part as usize;
    let mut verifier = Verifier::new();
    let mut buffer = BytesMut::with_capacity(part);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| Error::transport("GET", url.to_string(), source))?;
        verifier.update(&chunk);
        if verifier.seen() > blob.size {
            return verifier
                .check(&blob.digest, blob.size, url)
                .map(|_| session);
        }
        if let Some(p) = &progress {
            p(chunk.len() as u64);
        }
        buffer.extend_from_slice(&chunk);
        while buffer.len() >= part && (verifier.seen() < blob.size || buffer.len() > part) {
            let piece = buffer.split_to(part).freeze();
            session = target
                .upload_part(session, piece.into(), part as u64)
                .await?;
        }
    }
    // Verify before the last part goes out: a bad blob is never completed.
    verifier.check(&blob.digest, blob.size, url)?;
    if !buffer.is_empty() {
        let len = buffer.len() as u64;
        session = target
            .upload_part(session, buffer.freeze().into(), len)
            .await?;
    }
    Ok(session)
}
