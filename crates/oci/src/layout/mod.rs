//! OCI image layouts (the image-spec's `image-layout.md`): an `oci-layout` file, an `index.json`
//! whose descriptors carry `org.opencontainers.image.ref.name`, and `blobs/sha256/<hex>`.
//!
//! [`LayoutStore`] is the seam: where the files live (a local directory, [`DirLayout`]; an S3
//! prefix later). What a layout means (the index, its ref names, verified reads) is here, on
//! top of any store.

mod dir;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::client::RegistryClient;
use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::reference::{validate_repository_name, validate_tag, Repository};
use crate::strict_json;
use crate::transfer::BlobRef;

pub use dir::DirLayout;

/// The annotation naming a manifest of `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The `oci-layout` file's content.
pub const OCI_LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// Largest `index.json` read (a layout of many thousand images stays far below it).
pub const MAX_INDEX_BYTES: usize = 8 * 1024 * 1024;
/// Largest `oci-layout` file read.
const MAX_LAYOUT_FILE_BYTES: usize = 4096;

/// A blob's bytes as they are read, chunk by chunk.
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// Where a layout's files live. Blobs are streamed, never held whole; a blob written becomes
/// visible only once its digest and size are checked.
pub trait LayoutStore: Send + Sync {
    /// Where the layout is, for messages (`/srv/export`, later `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// Where one blob is, for messages.
    fn blob_location(&self, digest: &Digest) -> String;
    /// The size of a stored blob, `None` when the layout lacks it.
    fn blob_size<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Option<u64>>>;
    /// Opens a stored blob for reading (the bytes are not checked here: see [`verify_blob`]).
    fn read_blob<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<BlobStream>> {
        self.read_blob_range(digest, 0, None)
    }
    /// Opens a stored blob from byte `start` to byte `end` (inclusive; `None`: to its end), as
    /// an HTTP `Range` asks (unchecked, like [`LayoutStore::read_blob`]).
    fn read_blob_range<'a>(
        &'a self,
        digest: &'a Digest,
        start: u64,
        end: Option<u64>,
    ) -> BoxFuture<'a, Result<BlobStream>>;
    /// Whether the store itself vouches that the blob's bytes are its digest, so it need not be
    /// read and hashed again (S3: the object's full-object SHA-256 checksum, which S3 computed
    /// or checked when the object was written, is the digest). Default: no.
    fn attests_blob<'a>(&'a self, _digest: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Ok(false) })
    }
    /// Stores a blob from a stream, checking it against `blob` before it becomes visible.
    fn write_blob<'a>(&'a self, blob: &'a BlobRef, body: BlobStream) -> BoxFuture<'a, Result<()>>;
    /// Reads a small top-level file (`index.json`, `oci-layout`), refusing one over `limit`.
    fn read_file<'a>(&'a self, name: &'a str, limit: usize)
        -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// Replaces a small top-level file at once (readers see the old or the new one).
    fn write_file<'a>(&'a self, name: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<()>>;
    /// The version of a small top-level file, for [`LayoutStore::replace_file_if`]. Read it
    /// before the file's content: a change in between then fails the replace, as it should.
    /// Default: [`FileVersion::Unversioned`].
    fn file_version<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<FileVersion>> {
        Box::pin(async { Ok(FileVersion::Unversioned) })
    }
    /// Replaces a small top-level file only if it is still at `version`: `false`, and nothing
    /// written, when another writer changed it since. Default (no versions): replaced.
    fn replace_file_if<'a>(
        &'a self,
        name: &'a str,
        bytes: Bytes,
        _version: &'a FileVersion,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.write_file(name, bytes).await.map(|()| true) })
    }
}

/// A top-level file's version, as a store that can replace a file conditionally knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileVersion {
    /// The store keeps no versions: a replace is unconditional.
    Unversioned,
    /// There is no such file: a replace must create it.
    Absent,
    /// The file as it is now (S3: its ETag): a replace must find it so.
    Tagged(String),
}

/// A blob upload a [`PartUploads`] store holds open: its staging object (`uploads/<32 hex>`,
/// named by the caller) and the store's own id for it. It travels between processes (the
/// workflow's copy steps), so a store checks both before it uses them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartUpload {
    /// The staging object, relative to the layout: `uploads/<32 lowercase hex>`.
    pub staging: String,
    /// The store's id of the upload (S3's `UploadId`).
    pub upload_id: String,
}

impl PartUpload {
    /// Refuses a staging name other than `uploads/<32 lowercase hex>` and an upload id that is
    /// empty, over 1024 bytes or not printable ASCII (S3's ids are URL-safe text).
    pub fn check(&self) -> std::result::Result<(), String> {
        let hex = self.staging.strip_prefix("uploads/").unwrap_or_default();
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "the staging object {} is not uploads/<32 lowercase hex>",
                quoted(&self.staging)
            ));
        }
        let id = self.upload_id.as_bytes();
        if id.is_empty() || id.len() > 1024 || !id.iter().all(|b| b.is_ascii_graphic()) {
            return Err("the upload id is not 1 to 1024 printable ASCII characters".into());
        }
        Ok(())
    }
}

/// A store that takes a blob in parts, across processes, before it knows the blob's digest
/// (S3 multipart uploads): what the workflow's copy steps write a layout with, one range per
/// Lambda invocation. The caller hashes the parts as it sends them; the blob becomes visible at
/// `blobs/sha256/<hex>` only in [`PartUploads::finish_upload`], after that hash matched.
pub trait PartUploads: LayoutStore {
    /// Opens an upload into the staging object `staging`; the store's id for it.
    fn begin_upload<'a>(&'a self, staging: &'a str) -> BoxFuture<'a, Result<String>>;
    /// Stores part `number` (1 to 10,000, in order) of an upload.
    fn put_part<'a>(
        &'a self,
        upload: &'a PartUpload,
        number: u32,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<()>>;
    /// The sizes of the parts the store holds for an upload, in part order.
    fn stored_parts<'a>(&'a self, upload: &'a PartUpload) -> BoxFuture<'a, Result<Vec<u64>>>;
    /// Completes an upload whose bytes the caller checked are `blob` and moves it to the blob's
    /// place; the staging object is removed.
    fn finish_upload<'a>(
        &'a self,
        upload: &'a PartUpload,
        blob: &'a BlobRef,
    ) -> BoxFuture<'a, Result<()>>;
    /// Drops an upload and its parts (one already gone is no error).
    fn abort_upload<'a>(&'a self, upload: &'a PartUpload) -> BoxFuture<'a, Result<()>>;
}

fn layout_error(path: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Layout {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Hashes a stored blob end to end: `Ok` when it has the digest and size `blob` names; a
/// `DigestMismatch` or `SizeMismatch` naming the blob's path otherwise.
pub async fn verify_blob(store: &dyn LayoutStore, blob: &BlobRef) -> Result<()> {
    let path = store.blob_location(&blob.digest);
    let mut stream = store.read_blob(&blob.digest).await?;
    let mut verifier = Verifier::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| layout_error(&path, format!("reading failed: {e}")))?;
        verifier.update(&chunk);
        if verifier.seen() > blob.size {
            break;
        }
    }
    verifier.check(&blob.digest, blob.size, &path)
}

/// Downloads a registry repository's blob into the layout unless the layout holds it at its
/// size (the store checks digest and size before it becomes visible). `Some(size)` when
/// written.
pub async fn pull_blob(
    source: &RegistryClient,
    repo: &Repository,
    store: &dyn LayoutStore,
    blob: &BlobRef,
) -> Result<Option<u64>> {
    if store.blob_size(&blob.digest).await? == Some(blob.size) {
        return Ok(None);
    }
    let response = source.get_blob(repo, &blob.digest, 0).await?;
    let body: BlobStream = response
        .into_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other))
        .boxed();
    store.write_blob(blob, body).await?;
    Ok(Some(blob.size))
}

/// Uploads a layout's blob to a registry repository unless it is there: hashed first (a
/// tampered blob is refused naming its path and digest, nothing uploaded), then streamed.
/// `Some(size)` when uploaded.
pub async fn push_blob(
    store: &dyn LayoutStore,
    target: &RegistryClient,
    repo: &Repository,
    blob: &BlobRef,
) -> Result<Option<u64>> {
    if target.head_blob(repo, &blob.digest).await?.is_some() {
        return Ok(None);
    }
    verify_blob(store, blob).await?;
    let body = reqwest::Body::wrap_stream(store.read_blob(&blob.digest).await?);
    let session = target.start_upload(repo).await?;
    let session = target.upload_part(session, body, blob.size).await?;
    target.complete_upload(session, &blob.digest).await?;
    Ok(Some(blob.size))
}

/// Reads a manifest stored as a blob, bounded and checked against its descriptor.
pub async fn read_manifest(
    store: &dyn LayoutStore,
    blob: &BlobRef,
    media_type: Option<&str>,
) -> Result<Manifest> {
    let path = store.blob_location(&blob.digest);
    if blob.size > MAX_MANIFEST_BYTES as u64 {
        return Err(layout_error(
            &path,
            format!(
                "a manifest of {} bytes is over the {MAX_MANIFEST_BYTES}-byte limit",
                blob.size
            ),
        ));
    }
    let mut stream = store.read_blob(&blob.digest).await?;
    let mut bytes = Vec::with_capacity(blob.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| layout_error(&path, format!("reading failed: {e}")))?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > blob.size {
            break;
        }
    }
    let mut verifier = Verifier::new();
    verifier.update(&bytes);
    verifier.check(&blob.digest, blob.size, &path)?;
    Manifest::from_bytes(Bytes::from(bytes), media_type, &path)
}

/// Stores a manifest as a blob unless the layout has it; `true` when written.
pub async fn write_manifest(store: &dyn LayoutStore, manifest: &Manifest) -> Result<bool> {
    if store.blob_size(&manifest.digest).await?.is_some() {
        return Ok(false);
    }
    let blob = BlobRef {
        digest: manifest.digest.clone(),
        size: manifest.bytes.len() as u64,
    };
    let body: BlobStream = futures::stream::iter([Ok(manifest.bytes.clone())]).boxed();
    store.write_blob(&blob, body).await?;
    Ok(true)
}

/// One manifest `index.json` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutEntry {
    /// Its ref name (`org.opencontainers.image.ref.name`).
    pub ref_name: String,
    /// Its media type.
    pub media_type: String,
    /// Its digest and size.
    pub blob: BlobRef,
}

/// The repository and tag a ref name stands for: `<repository>:<tag>` (what this tool
/// writes, one layout holding several repositories), or a bare `<tag>` (skopeo's
/// `oci:DIR:TAG`, repository `None`). Both parts pass the registry validators: names in an
/// `index.json` are untrusted.
pub fn split_ref_name(ref_name: &str) -> std::result::Result<(Option<&str>, &str), String> {
    match ref_name.rsplit_once(':') {
        Some((repository, tag)) => {
            validate_repository_name(repository)?;
            validate_tag(tag)?;
            Ok((Some(repository), tag))
        }
        None => {
            validate_tag(ref_name)?;
            Ok((None, ref_name))
        }
    }
}

/// A layout's `index.json`, kept as read (entries this tool does not touch stay as they are).
#[derive(Debug, Clone)]
pub struct LayoutIndex {
    document: Value,
}

impl LayoutIndex {
    /// Reads `index.json` and checks `oci-layout`: bounded, by the strict JSON rules of
    /// manifests. `None` when the layout has neither file yet (an empty directory).
    pub async fn read(store: &dyn LayoutStore) -> Result<Option<Self>> {
        let path = format!("{}/index.json", store.location());
        let layout_file = store.read_file("oci-layout", MAX_LAYOUT_FILE_BYTES).await?;
        let index = store.read_file("index.json", MAX_INDEX_BYTES).await?;
        let (layout_file, index) =
            match (layout_file, index) {
                (None, None) => return Ok(None),
                (Some(l), Some(i)) => (l, i),
                _ => return Err(layout_error(
                    store.location(),
                    "has one of oci-layout and index.json but not the other: not an OCI layout; \
                     name an empty directory or a complete layout",
                )),
            };
        let version: Value = serde_json::from_slice(&layout_file)
            .map_err(|e| layout_error(format!("{}/oci-layout", store.location()), e.to_string()))?;
        if version.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
            return Err(layout_error(
                format!("{}/oci-layout", store.location()),
                "imageLayoutVersion is not 1.0.0, the only version this tool reads",
            ));
        }
        strict_json::check_manifest(&index)
            .map_err(|refusal| layout_error(&path, format!("refused: {refusal}")))?;
        let document: Value =
            serde_json::from_slice(&index).map_err(|e| layout_error(&path, e.to_string()))?;
        if !document.get("manifests").is_some_and(Value::is_array) {
            return Err(layout_error(&path, "has no manifests array"));
        }
        Ok(Some(LayoutIndex { document }))
    }

    /// An index naming nothing.
    pub fn empty() -> Self {
        LayoutIndex {
            document: json!({
                "schemaVersion": 2,
                "mediaType": crate::manifest::OCI_INDEX,
                "manifests": [],
            }),
        }
    }

    fn manifests(&self) -> &[Value] {
        self.document
            .get("manifests")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The entry named `ref_name`; its name and descriptor are checked.
    pub fn find(&self, ref_name: &str, path: &str) -> Result<Option<LayoutEntry>> {
        let named = self.manifests().iter().filter(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                == Some(ref_name)
        });
        let mut found = None;
        for entry in named {
            if found.is_some() {
                return Err(layout_error(
                    path,
                    format!("names {ref_name:?} more than once: ambiguous, refused"),
                ));
            }
            found = Some(entry_of(entry, ref_name, path)?);
        }
        Ok(found)
    }

    /// Every named entry of the index, each checked as [`Self::find`] checks one (entries
    /// without a ref name, referrers, are [`Self::unnamed`]). An entry whose ref name is
    /// present but not a string is an error, not skipped.
    pub fn entries(&self, path: &str) -> Result<Vec<LayoutEntry>> {
        let mut entries = Vec::new();
        for m in self.manifests() {
            if let Some(name) = ref_name_of(m, path)? {
                entries.push(entry_of(m, name, path)?);
            }
        }
        Ok(entries)
    }

    /// Every entry without a ref name (a referrer kept in the layout as oras-go's OCI store
    /// keeps one: found by its manifest's `subject`), checked as a descriptor, with its
    /// `artifactType` when the descriptor states one. `ref_name` is empty. An entry whose ref
    /// name is present but not a string is an error, not skipped.
    pub fn unnamed(&self, path: &str) -> Result<Vec<(LayoutEntry, Option<String>)>> {
        let mut unnamed = Vec::new();
        for m in self.manifests() {
            if ref_name_of(m, path)?.is_some() {
                continue;
            }
            let kind = m.get("artifactType").and_then(Value::as_str);
            unnamed.push((descriptor_of(m, "", path)?, kind.map(str::to_string)));
        }
        Ok(unnamed)
    }

    /// Lists `manifest` without a ref name (a referrer), with `artifact_type` when given.
    /// `false` when the index lists it so already.
    pub fn add_unnamed(&mut self, manifest: &Manifest, artifact_type: Option<&str>) -> bool {
        let mut entry = json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest.as_str(),
            "size": manifest.bytes.len(),
        });
        if let Some(kind) = artifact_type {
            entry["artifactType"] = json!(kind);
        }
        let Some(list) = self
            .document
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        if list.contains(&entry) {
            return false;
        }
        list.push(entry);
        true
    }

    /// Every ref name the index holds, in order.
    pub fn ref_names(&self) -> Vec<String> {
        self.manifests()
            .iter()
            .filter_map(|m| {
                m.pointer("/annotations/org.opencontainers.image.ref.name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }

    /// Names `manifest` as `ref_name`, replacing what the name named before. `false` when the
    /// index already said exactly this (nothing to write).
    pub fn set(&mut self, ref_name: &str, manifest: &Manifest) -> bool {
        let entry = json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest.as_str(),
            "size": manifest.bytes.len(),
            "annotations": { REF_NAME: ref_name },
        });
        let Some(list) = self
            .document
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let same_name = |m: &Value| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                == Some(ref_name)
        };
        if list.iter().filter(|m| same_name(m)).count() == 1 && list.contains(&entry) {
            return false;
        }
        list.retain(|m| !same_name(m));
        list.push(entry);
        true
    }

    /// Writes `oci-layout` (when missing) and this index.
    pub async fn write(&self, store: &dyn LayoutStore) -> Result<()> {
        self.write_if(store, &FileVersion::Unversioned)
            .await
            .map(|_| ())
    }

    /// Writes `oci-layout` (when missing) and this index, only if `index.json` is still at
    /// `version` (read before the index was): `false`, and the index not written, when another
    /// writer changed it since.
    pub async fn write_if(&self, store: &dyn LayoutStore, version: &FileVersion) -> Result<bool> {
        if store
            .read_file("oci-layout", MAX_LAYOUT_FILE_BYTES)
            .await?
            .is_none()
        {
            store
                .write_file("oci-layout", Bytes::from_static(OCI_LAYOUT_FILE.as_bytes()))
                .await?;
        }
        let bytes = serde_json::to_vec(&self.document)
            .map_err(|e| layout_error(format!("{}/index.json", store.location()), e.to_string()))?;
        store
            .replace_file_if("index.json", Bytes::from(bytes), version)
            .await
    }
}

/// Untrusted text for a message: at most [`QUOTED_CHARS`] characters, quoted and escaped
/// (no control character reaches a terminal or a log).
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((at, _)) => format!("{:?}… ({} bytes)", &text[..at], text.len()),
        None => format!("{text:?}"),
    }
}

/// Characters of untrusted text a message quotes.
const QUOTED_CHARS: usize = 100;
/// Longest media type taken (RFC 6838: 127 characters each side of the `/`).
const MAX_MEDIA_TYPE: usize = 255;

/// `Ok` for a media type of RFC 6838's restricted-name characters (`type/subtype`, no
/// parameters), at most 255 characters.
pub fn check_media_type(media_type: &str) -> std::result::Result<(), String> {
    let name = |part: &str| {
        let mut bytes = part.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let valid = media_type.len() <= MAX_MEDIA_TYPE
        && media_type
            .split_once('/')
            .is_some_and(|(kind, sub)| name(kind) && name(sub));
    match valid {
        true => Ok(()),
        false => Err(format!(
            "mediaType {} is not a media type (RFC 6838 type/subtype, at most \
             {MAX_MEDIA_TYPE} characters)",
            quoted(media_type)
        )),
    }
}

/// The ref name of an `index.json` entry: `None` without one; an error when the annotation is
/// there but not a string (an entry neither named nor unnamed would escape every check).
fn ref_name_of<'a>(entry: &'a Value, path: &str) -> Result<Option<&'a str>> {
    match entry.pointer("/annotations/org.opencontainers.image.ref.name") {
        None => Ok(None),
        Some(Value::String(name)) => Ok(Some(name)),
        Some(other) => Err(layout_error(
            path,
            format!(
                "an entry's {REF_NAME} is {}, not a string: refused",
                quoted(&other.to_string())
            ),
        )),
    }
}

fn entry_of(entry: &Value, ref_name: &str, path: &str) -> Result<LayoutEntry> {
    split_ref_name(ref_name).map_err(|e| {
        layout_error(
            path,
            format!("entry {}: not a valid name: {e}", quoted(ref_name)),
        )
    })?;
    descriptor_of(entry, ref_name, path)
}

fn descriptor_of(entry: &Value, ref_name: &str, path: &str) -> Result<LayoutEntry> {
    let bad = |reason: String| layout_error(path, format!("entry {}: {reason}", quoted(ref_name)));
    let media_type = entry
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("has no mediaType".into()))?;
    check_media_type(media_type).map_err(bad)?;
    let digest = entry
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("has no digest".into()))?;
    let digest = Digest::parse(digest).map_err(|e| bad(e.to_string()))?;
    let size = entry
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("has no size".into()))?;
    Ok(LayoutEntry {
        ref_name: ref_name.to_string(),
        media_type: media_type.to_string(),
        blob: BlobRef { digest, size },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_are_repository_and_tag_or_a_bare_tag_and_validated() {
        assert_eq!(split_ref_name("team/app:v1"), Ok((Some("team/app"), "v1")));
        assert_eq!(split_ref_name("v1"), Ok((None, "v1")));
        assert!(split_ref_name("Team/App:v1").is_err());
        assert!(split_ref_name("team/app:v1/../x").is_err());
        assert!(split_ref_name("../etc:v1").is_err());
        assert!(split_ref_name("").is_err());
    }

    #[test]
    fn referrers_are_listed_without_a_ref_name_once_and_apart_from_named_entries() {
        let bytes = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#);
        let referrer = Manifest::from_bytes(bytes, None, "test").expect("manifest");
        let mut index = LayoutIndex::empty();
        assert!(index.add_unnamed(&referrer, Some("application/spdx+json")));
        assert!(!index.add_unnamed(&referrer, Some("application/spdx+json")));
        assert!(index.set("team/app:v1", &referrer));
        let named = index.entries("test").expect("valid");
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].ref_name, "team/app:v1");
        let unnamed = index.unnamed("test").expect("valid");
        assert_eq!(unnamed.len(), 1);
        assert_eq!(unnamed[0].0.blob.digest, referrer.digest);
        assert_eq!(unnamed[0].1.as_deref(), Some("application/spdx+json"));
        assert_eq!(index.ref_names(), vec!["team/app:v1".to_string()]);
    }

    #[test]
    fn setting_the_same_entry_twice_changes_nothing_and_a_new_one_replaces_the_name() {
        let bytes = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#);
        let first = Manifest::from_bytes(bytes, None, "test").expect("manifest");
        let mut index = LayoutIndex::empty();
        assert!(index.set("team/app:v1", &first));
        assert!(!index.set("team/app:v1", &first));
        let other = Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"a":"b"}}"#);
        let second = Manifest::from_bytes(other, None, "test").expect("manifest");
        assert!(index.set("team/app:v1", &second));
        assert_eq!(index.ref_names(), vec!["team/app:v1".to_string()]);
        let found = index
            .find("team/app:v1", "test")
            .expect("valid")
            .expect("named");
        assert_eq!(found.blob.digest, second.digest);
    }
}
