//! The served registry's manifests, for a layout the workflow exports into (issue 35): what
//! `put-manifests` puts (an image's children by digest, its top manifest under its tags, its
//! referrers and receipt) is stored as blobs, and each name it gives is recorded as a
//! [`PendingRef`] in the deployment's work bucket ([`ExportNames`]; never in the layout, where
//! whoever may write its bucket could plant one), for the run's end to write into `index.json`
//! and state in the signed statement. Until then a tag is answered from its record, else from
//! `index.json` (what earlier exports wrote), so a second export finds its images present.
//!
//! A manifest is taken only whole and sound: at most 4 MiB, read strictly, its digest the one
//! asked for, every blob and child it names already in the layout at its size (a registry's
//! `MANIFEST_BLOB_UNKNOWN`), so no name ever points at an incomplete image.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use oci::layout::{self, LayoutIndex, LayoutStore};
use oci::manifest::{is_foreign_layer, MAX_MANIFEST_BYTES};
use oci::{BlobRef, Digest, Manifest, ManifestContent};
use serde::{Deserialize, Serialize};

use super::http::{created, error, failed, manifest_answer};
use crate::layout_referrers::{artifact_type_of, subject_of};

/// Where the work bucket keeps the names runs gave in each layout until `index.json` holds them
/// (`layout-names/<sha256 of the layout's place>/<record>.json`).
pub const PENDING_REFS: &str = "layout-names/";
/// Where the work bucket keeps where each image a run exported into a layout came from and what
/// admitted it, until the seal states it
/// (`layout-provenance/<sha256 of the layout's place>/<sha256 of repository and digest>.json`).
pub const EXPORT_PROVENANCE: &str = "layout-provenance/";
/// Largest record read.
const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Records listed at most (a run's names: its images' tags and referrers).
pub const MAX_PENDING_REFS: usize = 100_000;

/// The names given in one layout, kept in the deployment's work bucket until the seal.
#[derive(Clone)]
pub struct ExportNames {
    bucket: ecr::WorkBucket,
    prefix: String,
    provenance: String,
    layout: String,
    /// The layout's `index.json` as last read, with its version.
    index: IndexCache,
}

/// A layout's `index.json` as last read (up to 8 MiB), kept with its version (S3's ETag): read
/// again only when a `HEAD` finds another version, so a run that looks up many tags reads it
/// once per change, not once per tag.
#[derive(Clone, Default)]
struct IndexCache(std::sync::Arc<tokio::sync::Mutex<Option<IndexAt>>>);

/// `index.json` (none: the layout had none) at a version (its ETag).
type IndexAt = (String, Option<std::sync::Arc<LayoutIndex>>);

impl IndexCache {
    /// `index.json` now (`None`: the layout has none yet). Its version is read before and after
    /// the content, and the content kept only when both agree: a change in between is answered
    /// (it is the file as read) but not kept under a version it is not.
    async fn read(
        &self,
        store: &dyn LayoutStore,
    ) -> oci::Result<Option<std::sync::Arc<LayoutIndex>>> {
        let etag = match store.file_version("index.json").await? {
            layout::FileVersion::Tagged(etag) => etag,
            layout::FileVersion::Absent => return Ok(None),
            layout::FileVersion::Unversioned => {
                return Ok(LayoutIndex::read(store).await?.map(std::sync::Arc::new))
            }
        };
        let mut cached = self.0.lock().await;
        if let Some((version, index)) = cached.as_ref() {
            if *version == etag {
                return Ok(index.clone());
            }
        }
        let index = LayoutIndex::read(store).await?.map(std::sync::Arc::new);
        if store.file_version("index.json").await? == layout::FileVersion::Tagged(etag.clone()) {
            *cached = Some((etag, index.clone()));
        } else {
            *cached = None;
        }
        Ok(index)
    }
}

/// Where one exported image came from and what admitted it, as `put-manifests` recorded it
/// before it put the image's manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provenance {
    /// The repository it was put in (its name in the layout).
    pub repository: String,
    /// The image's digest.
    pub digest: String,
    /// The repository it was read from: `REGISTRY/REPOSITORY`.
    pub source: String,
    /// What admitted it (the gate's line, when every policy in it is the deployment's own);
    /// empty when nothing gated it.
    pub admitted_by: Vec<String>,
}

impl std::fmt::Debug for ExportNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportNames")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl ExportNames {
    /// The names of the layout at `location` (`s3://BUCKET/PREFIX`) in `bucket`.
    pub fn new(bucket: ecr::WorkBucket, location: &str) -> Self {
        let place = Digest::of(location.as_bytes());
        ExportNames {
            bucket,
            prefix: format!("{PENDING_REFS}{}/", place.hex()),
            provenance: format!("{EXPORT_PROVENANCE}{}/", place.hex()),
            layout: location.to_string(),
            index: IndexCache::default(),
        }
    }

    /// Records where an image came from and what admitted it, for the seal's statement.
    pub async fn record_provenance(&self, provenance: &Provenance) -> oci::Result<()> {
        let key = self.provenance_key(&provenance.repository, &provenance.digest);
        self.write_record(&key, provenance).await
    }

    /// Writes one record at `key`, as JSON.
    async fn write_record(&self, key: &str, record: &impl Serialize) -> oci::Result<()> {
        let json = serde_json::to_vec(record).unwrap_or_default();
        self.bucket.put(key, json).await.map_err(|e| self.failed(e))
    }

    /// The record at `key`, if any, read strictly and bounded (`what` names its kind in an
    /// error).
    async fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &str,
    ) -> oci::Result<Option<T>> {
        let Some(bytes) = self.bucket.get(key).await.map_err(|e| self.failed(e))? else {
            return Ok(None);
        };
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(self.failed_reason(format!("{key} is over {MAX_RECORD_BYTES} bytes")));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.failed_reason(format!("{key} is not {what}: {e}")))
    }

    /// The provenance recorded for `repository@digest`, if any; read strictly, and a record of
    /// another image is an error.
    pub async fn provenance(
        &self,
        repository: &str,
        digest: &str,
    ) -> oci::Result<Option<Provenance>> {
        let key = self.provenance_key(repository, digest);
        match self
            .read_record::<Provenance>(&key, "a provenance record")
            .await?
        {
            Some(p) if p.repository != repository || p.digest != digest => {
                Err(self.failed_reason(format!("{key} names {}@{}", p.repository, p.digest)))
            }
            read => Ok(read),
        }
    }

    /// Removes the provenance of `repository@digest`, once stated.
    pub async fn forget_provenance(&self, repository: &str, digest: &str) -> oci::Result<()> {
        let key = self.provenance_key(repository, digest);
        self.bucket.delete(&key).await.map_err(|e| self.failed(e))
    }

    fn provenance_key(&self, repository: &str, digest: &str) -> String {
        let image = format!("{repository}\n{digest}");
        format!(
            "{}{}.json",
            self.provenance,
            Digest::of(image.as_bytes()).hex()
        )
    }

    fn failed(&self, e: ecr::Error) -> oci::Error {
        self.failed_reason(format!("the names of the export in the work bucket: {e}"))
    }

    /// Records a name (replacing the record of the same repository and tag).
    pub async fn put(&self, record: &PendingRef) -> oci::Result<()> {
        let key = format!("{}{}", self.prefix, record.file());
        self.write_record(&key, record).await
    }

    /// The record in `file`, if any (read strictly: an unreadable one is an error).
    pub async fn get(&self, file: &str) -> oci::Result<Option<PendingRef>> {
        let key = format!("{}{file}", self.prefix);
        self.read_record(&key, "a name record").await
    }

    fn failed_reason(&self, reason: String) -> oci::Error {
        oci::Error::Layout {
            path: self.layout.clone(),
            reason,
        }
    }

    /// The record files there now, in order.
    pub async fn list(&self) -> oci::Result<Vec<String>> {
        self.list_folder("").await
    }

    /// The record files under `folder` (one repository's), in order.
    async fn list_folder(&self, folder: &str) -> oci::Result<Vec<String>> {
        let keys = self
            .bucket
            .list(&format!("{}{folder}", self.prefix), MAX_PENDING_REFS)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .filter(|f| !f.is_empty())
            .collect())
    }

    /// Removes a record file.
    pub async fn remove(&self, file: &str) -> oci::Result<()> {
        let key = format!("{}{file}", self.prefix);
        self.bucket.delete(&key).await.map_err(|e| self.failed(e))
    }
}

/// A name a run gave a manifest of the layout, not yet in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PendingRef {
    /// The repository it was put in.
    pub repository: String,
    /// The tag it was put under; `None` for a referrer put by digest (named by its subject).
    pub tag: Option<String>,
    /// The manifest's digest, media type and size.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The digest its `subject` names (an OCI 1.1 referrer), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Its `artifactType` (else its config's media type), for a referrer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl PendingRef {
    /// The record's file: one per repository and tag (or referrer digest), under its
    /// repository's folder (a repository's tags are listed without reading the others').
    pub fn file(&self) -> String {
        Self::file_of(
            &self.repository,
            self.tag.as_deref().unwrap_or(&self.digest),
        )
    }

    /// The file of the record of `repository` and `reference` (its tag, or a referrer's
    /// digest).
    fn file_of(repository: &str, reference: &str) -> String {
        let name = format!("{repository}\n{reference}");
        format!(
            "{}{}.json",
            repository_folder(repository),
            Digest::of(name.as_bytes()).hex()
        )
    }
}

/// The folder of a repository's records.
fn repository_folder(repository: &str) -> String {
    format!("{}/", Digest::of(repository.as_bytes()).hex())
}

/// `GET /v2/<name>/tags/list`: the repository's tags in `index.json` and in the run's records,
/// in order, one page of at most `n` after `last`.
pub(super) async fn tags(
    (store, names): (&dyn LayoutStore, &ExportNames),
    name: &str,
) -> oci::Result<Vec<String>> {
    let mut tags = std::collections::BTreeSet::new();
    if let Some(index) = names.index.read(store).await? {
        let path = format!("{}/index.json", store.location());
        for entry in index.entries(&path)? {
            if let Ok((Some(repository), tag)) = layout::split_ref_name(&entry.ref_name) {
                if repository == name {
                    tags.insert(tag.to_string());
                }
            }
        }
    }
    for file in names.list_folder(&repository_folder(name)).await? {
        if let Some(record) = names.get(&file).await? {
            if record.repository == name {
                tags.extend(record.tag);
            }
        }
    }
    Ok(tags.into_iter().collect())
}

/// `PUT /v2/<name>/manifests/<reference>`.
pub(super) async fn put(
    (store, names): (&dyn LayoutStore, &ExportNames),
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let place = format!("{}/{name}:{reference}", store.location());
    // At most the bound is read: a longer body is refused.
    let bytes = match axum::body::to_bytes(body, MAX_MANIFEST_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MANIFEST_INVALID",
                format!("a manifest is at most {MAX_MANIFEST_BYTES} bytes"),
            )
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let manifest = match Manifest::from_bytes(bytes, content_type, &place) {
        Ok(manifest) => manifest,
        Err(e) => return error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string()),
    };
    let tag = if reference.starts_with("sha256:") {
        if reference != manifest.digest.as_str() {
            return error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("the body is {}, not {reference}", manifest.digest),
            );
        }
        None
    } else if let Err(problem) = oci::reference::validate_tag(reference) {
        return error(StatusCode::BAD_REQUEST, "TAG_INVALID", problem);
    } else {
        Some(reference.to_string())
    };
    if let Some(response) = missing_content(store, &manifest, &place).await {
        return response;
    }
    if let Err(e) = layout::write_manifest(store, &manifest).await {
        return failed(e);
    }
    let subject = subject_of(&manifest);
    // A manifest put by digest gets a name only when it refers to another (a referrer).
    if tag.is_some() || subject.is_some() {
        let artifact_type = subject
            .as_ref()
            .map(|_| artifact_type_of(&manifest))
            .filter(|t| !t.is_empty());
        let record = PendingRef {
            repository: name.to_string(),
            tag,
            digest: manifest.digest.to_string(),
            media_type: manifest.media_type.clone(),
            size: manifest.bytes.len() as u64,
            subject,
            artifact_type,
        };
        if let Err(e) = names.put(&record).await {
            return failed(e);
        }
    }
    created(
        &format!("/v2/{name}/manifests/{}", manifest.digest),
        &manifest.digest,
    )
}

/// Index levels checked below a manifest put (an index of indexes is two).
const MAX_DEPTH: usize = 4;
/// Manifests one put checks at most (an index and its children, theirs, ...).
const MAX_CHECKED: usize = 1_000;

/// `400 MANIFEST_BLOB_UNKNOWN` naming the first blob or child the manifest names that the
/// layout does not hold at its size (a foreign layer is not carried, so not asked for); an
/// index's children are read back and checked the same way, level by level, so a child stored
/// as mere bytes (a blob upload) that names what the layout lacks does not pass either.
async fn missing_content(
    store: &dyn LayoutStore,
    manifest: &Manifest,
    place: &str,
) -> Option<Response> {
    let mut queue = std::collections::VecDeque::from([(manifest.clone(), 0usize)]);
    let mut checked = 0;
    while let Some((manifest, depth)) = queue.pop_front() {
        checked += 1;
        if checked > MAX_CHECKED || depth > MAX_DEPTH {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("{place} names over {MAX_CHECKED} manifests or {MAX_DEPTH} index levels"),
            ));
        }
        let content = match manifest.content(place) {
            Ok(content) => content,
            Err(e) => {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    e.to_string(),
                ))
            }
        };
        let (named, children) = match content {
            ManifestContent::Image { config, layers } => (
                std::iter::once(*config)
                    .chain(
                        layers
                            .into_iter()
                            .filter(|l| !is_foreign_layer(l.media_type().as_ref())),
                    )
                    .collect::<Vec<_>>(),
                false,
            ),
            ManifestContent::Index { manifests } => (manifests, true),
        };
        for descriptor in named {
            let Ok(digest) = Digest::parse(descriptor.digest().as_ref()) else {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    format!("it names {} as a digest", descriptor.digest()),
                ));
            };
            match store.blob_size(&digest).await {
                Ok(Some(size)) if size == descriptor.size() => {}
                Ok(_) => {
                    return Some(error(
                        StatusCode::BAD_REQUEST,
                        "MANIFEST_BLOB_UNKNOWN",
                        format!(
                            "{place} names {digest} ({} bytes), which the layout does not hold",
                            descriptor.size()
                        ),
                    ))
                }
                Err(e) => return Some(failed(e)),
            }
            if children {
                let blob = BlobRef {
                    digest,
                    size: descriptor.size(),
                };
                let media_type = descriptor.media_type().to_string();
                match layout::read_manifest(store, &blob, Some(&media_type)).await {
                    Ok(child) => queue.push_back((child, depth + 1)),
                    Err(e) => {
                        return Some(error(
                            StatusCode::BAD_REQUEST,
                            "MANIFEST_INVALID",
                            format!("{place}: a child: {e}"),
                        ))
                    }
                }
            }
        }
    }
    None
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`: by digest, a manifest the layout holds; by
/// tag, the run's record of it, else `index.json`'s.
pub(super) async fn get(
    (store, names): (&dyn LayoutStore, &ExportNames),
    name: &str,
    reference: &str,
    head: bool,
) -> Response {
    let unknown = || {
        error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("the layout has no manifest {name}:{reference}"),
        )
    };
    let blob = if reference.starts_with("sha256:") {
        let Ok(digest) = Digest::parse(reference) else {
            return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", reference);
        };
        match store.blob_size(&digest).await {
            Ok(Some(size)) => BlobRef { digest, size },
            Ok(None) => return unknown(),
            Err(e) => return failed(e),
        }
    } else {
        match named((store, names), name, reference).await {
            Ok(Some(blob)) => blob,
            Ok(None) => return unknown(),
            Err(e) => return failed(e),
        }
    };
    if blob.size > MAX_MANIFEST_BYTES as u64 {
        return unknown();
    }
    let manifest = match layout::read_manifest(store, &blob, None).await {
        Ok(manifest) => manifest,
        Err(e) => return failed(e),
    };
    manifest_answer(&manifest, head)
}

/// The manifest `name:tag` names: the run's record, else `index.json`'s entry (an unreadable
/// record is an error, as the seal refuses it).
async fn named(
    (store, names): (&dyn LayoutStore, &ExportNames),
    name: &str,
    tag: &str,
) -> oci::Result<Option<BlobRef>> {
    if oci::reference::validate_tag(tag).is_err() {
        return Ok(None);
    }
    if let Some(record) = names.get(&PendingRef::file_of(name, tag)).await? {
        if record.repository == name && record.tag.as_deref() == Some(tag) {
            let digest = Digest::parse(&record.digest).map_err(|e| oci::Error::Layout {
                path: store.location(),
                reason: format!("the record of {name}:{tag} names {:?}: {e}", record.digest),
            })?;
            return Ok(Some(BlobRef {
                digest,
                size: record.size,
            }));
        }
    }
    let Some(index) = names.index.read(store).await? else {
        return Ok(None);
    };
    let path = format!("{}/index.json", store.location());
    Ok(index
        .find(&format!("{name}:{tag}"), &path)?
        .map(|entry| entry.blob))
}
