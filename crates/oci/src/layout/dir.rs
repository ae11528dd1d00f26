//! A layout in a local directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{layout_error, BlobStream, LayoutStore};
use crate::digest::{Digest, Verifier};
use crate::error::Result;
use crate::transfer::BlobRef;

/// Bytes read from a blob file at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Temporary files of one process get distinct names.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// Removes a temporary file when dropped unless it was renamed into place: a write that fails,
/// or is cancelled (another blob of the copy failed), leaves nothing behind.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An OCI image layout in a local directory (created on the first write).
#[derive(Debug, Clone)]
pub struct DirLayout {
    root: PathBuf,
}

impl DirLayout {
    /// The layout at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirLayout { root: root.into() }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a blob: `blobs/sha256/<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// A temporary file in the layout's root (same filesystem, so the rename is atomic); its
    /// name starts with a dot and is no blob name readers look for.
    fn temp_path(&self, what: &str) -> PathBuf {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!(".tmp-{what}-{}-{n}", std::process::id()))
    }

    async fn store_blob(&self, blob: &BlobRef, mut body: BlobStream) -> Result<()> {
        let final_path = self.blob_path(&blob.digest);
        let shown = final_path.display().to_string();
        let io = |what: &str, e: std::io::Error| {
            layout_error(
                &shown,
                format!("{what} failed: {e}; check the directory is writable"),
            )
        };
        if let Some(parent) = final_path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io("creating the directory", e))?;
        }
        let temp = self.temp_path(blob.digest.hex());
        let mut guard = TempGuard {
            path: temp.clone(),
            armed: true,
        };
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| io("creating a temporary file", e))?;
            let mut verifier = Verifier::new();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| io("receiving the blob", e))?;
                verifier.update(&chunk);
                if verifier.seen() > blob.size {
                    break;
                }
                file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
            }
            verifier.check(&blob.digest, blob.size, &shown)?;
            file.sync_all().await.map_err(|e| io("syncing", e))?;
            drop(file);
            tokio::fs::rename(&temp, &final_path)
                .await
                .map_err(|e| io("renaming the temporary file", e))
        }
        .await;
        guard.armed = result.is_err();
        result
    }

    async fn open(&self, digest: &Digest, start: u64, end: Option<u64>) -> Result<BlobStream> {
        let path = self.blob_path(digest);
        let shown = || path.display().to_string();
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            layout_error(
                shown(),
                format!("cannot open the blob: {e}; the layout is incomplete, export it again"),
            )
        })?;
        if start > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| layout_error(shown(), format!("cannot seek to byte {start}: {e}")))?;
        }
        // Bytes left to read: to `end` inclusive, or the whole rest.
        let left = end.map_or(u64::MAX, |end| end.saturating_add(1).saturating_sub(start));
        let stream = futures::stream::try_unfold((file, left), |(mut file, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let mut buf = vec![0u8; READ_CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX))];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((Bytes::from(buf), (file, left - n as u64))))
        });
        Ok(stream.boxed())
    }

    async fn read_small(&self, name: &str, limit: usize) -> Result<Option<Bytes>> {
        let path = self.root.join(name);
        let shown = path.display().to_string();
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(layout_error(&shown, format!("cannot open: {e}"))),
        };
        let mut bytes = Vec::new();
        file.take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| layout_error(&shown, format!("cannot read: {e}")))?;
        if bytes.len() > limit {
            return Err(layout_error(
                &shown,
                format!("is over {limit} bytes: refused (not a layout this tool wrote?)"),
            ));
        }
        Ok(Some(Bytes::from(bytes)))
    }

    async fn replace_file(&self, name: &str, bytes: Bytes) -> Result<()> {
        let path = self.root.join(name);
        let shown = path.display().to_string();
        let io = |what: &str, e: std::io::Error| {
            layout_error(
                &shown,
                format!("{what} failed: {e}; check the directory is writable"),
            )
        };
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| io("creating the directory", e))?;
        let temp = self.temp_path(name);
        let mut guard = TempGuard {
            path: temp.clone(),
            armed: true,
        };
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| io("creating a temporary file", e))?;
            file.write_all(&bytes).await.map_err(|e| io("writing", e))?;
            file.sync_all().await.map_err(|e| io("syncing", e))?;
            drop(file);
            tokio::fs::rename(&temp, &path)
                .await
                .map_err(|e| io("renaming the temporary file", e))
        }
        .await;
        guard.armed = result.is_err();
        result
    }
}

impl LayoutStore for DirLayout {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn blob_location(&self, digest: &Digest) -> String {
        self.blob_path(digest).display().to_string()
    }

    fn blob_size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>>> {
        async move {
            let path = self.blob_path(digest);
            match tokio::fs::metadata(&path).await {
                Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
                Ok(_) => Err(layout_error(
                    path.display().to_string(),
                    "is not a file: remove it and export again",
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(layout_error(path.display().to_string(), e.to_string())),
            }
        }
        .boxed()
    }

    fn read_blob_range<'a>(
        &'a self,
        digest: &'a Digest,
        start: u64,
        end: Option<u64>,
    ) -> BoxFuture<'a, Result<BlobStream>> {
        self.open(digest, start, end).boxed()
    }

    fn write_blob<'a>(&'a self, blob: &'a BlobRef, body: BlobStream) -> BoxFuture<'a, Result<()>> {
        self.store_blob(blob, body).boxed()
    }

    fn read_file<'a>(
        &'a self,
        name: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        self.read_small(name, limit).boxed()
    }

    fn write_file<'a>(&'a self, name: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>> {
        self.replace_file(name, bytes).boxed()
    }
}
