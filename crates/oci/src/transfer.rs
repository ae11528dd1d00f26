//! Streaming one blob from a source repository into a target repository, verifying size and
//! digest on the way; the upload is completed only when both match.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::client::{Mount, RegistryClient, UploadSession};
use crate::digest::{Digest, Verifier};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// Copies one blob, skipping it when the target has it and mounting it when source and target
/// share a registry. Retryable failures (throttling, resets, truncation) restart the blob on a
/// fresh upload session, with backoff, up to the client's retry budget.
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
    let policy = target.config().retry.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
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
            Err(e) if attempt < policy.max_attempts && worth_retrying(&e) => {
                let delay = policy.backoff(attempt);
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
        return target.complete_upload(session, &blob.digest).await;
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the body stream saw, read back after the PATCH whatever its outcome.
#[derive(Default)]
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
    let seen = Arc::new(Mutex::new(Seen::default()));
    let expected = blob.size;
    let tap = seen.clone();
    let stream = body.map(move |chunk| -> std::result::Result<Bytes, BoxError> {
        let mut s = tap.lock().unwrap_or_else(|p| p.into_inner());
        match chunk {
            Ok(bytes) => {
                s.verifier.update(&bytes);
                if s.verifier.seen() > expected {
                    s.overrun = true;
                    return Err("source sent more bytes than the descriptor's size".into());
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
        .upload_part(session, reqwest::Body::wrap_stream(stream), expected)
        .await;
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    // A source-side failure explains a failed PATCH better than the PATCH's own error.
    if let Some(source) = s.source_error.take() {
        return Err(Error::Transport {
            method: "GET".into(),
            url: url.to_string(),
            source,
        });
    }
    if s.overrun || sent.is_err() && s.verifier.seen() != expected {
        s.verifier.check(&blob.digest, expected, url)?;
    }
    let session = sent?;
    s.verifier.check(&blob.digest, expected, url)?;
    Ok(session)
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
        let chunk = chunk.map_err(|source| Error::Transport {
            method: "GET".into(),
            url: url.to_string(),
            source,
        })?;
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
