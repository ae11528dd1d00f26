//! What a verified layout serves, taken from its signed statement (the layout's `index.json`
//! must match it, and is then not read again): each repository's tags (its images' and their
//! tag-scheme artifacts'), the manifests the statement names for it (its images and their
//! referrers) and, read on first need, the children of those that are indexes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use oci::layout::{self, LayoutIndex, LayoutStore};
use oci::{BlobRef, Digest, ManifestContent};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::transfer_statement::{verify_statement, TrustedTransferKey, VerifiedStatement};

/// Index levels followed to find an image's children (an index of indexes is two).
const MAX_INDEX_DEPTH: usize = 4;
/// Children of one repository's indexes served at most.
const MAX_CHILDREN: usize = 10_000;

/// A manifest as the statement (or its parent index) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Described {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl Described {
    fn new(digest: &str, media_type: &str, size: u64) -> Result<Self> {
        let digest = Digest::parse(digest).map_err(|e| Error::TransferStatement {
            layout: String::new(),
            reason: format!("it names {} as a digest: {e}", layout::quoted(digest)),
        })?;
        Ok(Described {
            digest,
            media_type: media_type.to_string(),
            size,
        })
    }

    pub(super) fn blob(&self) -> BlobRef {
        BlobRef {
            digest: self.digest.clone(),
            size: self.size,
        }
    }
}

/// An OCI 1.1 referrer the statement lists: what it refers to, itself, its `artifactType`.
#[derive(Debug, Clone)]
pub(super) struct StatedReferrer {
    pub subject: String,
    pub manifest: Described,
    pub artifact_type: String,
}

/// One repository of the layout, as served.
#[derive(Debug, Default)]
pub(super) struct ServedRepository {
    /// Its tags: each image's, and each tag-scheme artifact's (`sha256-<hex>.sig`).
    pub tags: BTreeMap<String, Described>,
    /// OCI 1.1 referrers of its images (and of their referrers).
    pub referrers: Vec<StatedReferrer>,
    /// The manifests the statement names for it, by digest: images and referrers.
    named: HashMap<String, Described>,
    /// Children of those that are indexes, by digest (read on the first request for one).
    children: OnceCell<HashMap<String, Described>>,
}

/// A layout whose statement verified, and what it serves.
pub struct VerifiedLayout {
    pub(super) store: Arc<dyn LayoutStore>,
    /// The statement, verified, that `index.json` matched.
    pub statement: VerifiedStatement,
    pub(super) repositories: BTreeMap<String, ServedRepository>,
}

impl std::fmt::Debug for VerifiedLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedLayout")
            .field("layout", &self.store.location())
            .field("statement", &self.statement.digest)
            .field("repositories", &self.repositories.len())
            .finish()
    }
}

impl VerifiedLayout {
    /// Verifies the layout's statement with `key` (and its pins) before anything else is read,
    /// then reads `index.json` and refuses it unless its images and referrers are exactly the
    /// statement's.
    pub async fn read(store: Arc<dyn LayoutStore>, key: &TrustedTransferKey) -> Result<Self> {
        let statement = verify_statement(store.as_ref(), key).await?;
        let path = format!("{}/index.json", store.location());
        let index = LayoutIndex::read(store.as_ref())
            .await
            .map_err(|source| Error::Registry {
                image: format!("oci:{}", store.location()),
                source,
            })?
            .ok_or_else(|| Error::TransferStatement {
                layout: store.location(),
                reason: "it has no index.json: nothing to import".into(),
            })?;
        statement.check_index(&index, &path)?;
        let repositories = served(&statement).map_err(|e| match e {
            Error::TransferStatement { reason, .. } => Error::TransferStatement {
                layout: store.location(),
                reason,
            },
            other => other,
        })?;
        Ok(VerifiedLayout {
            store,
            statement,
            repositories,
        })
    }

    /// The repositories the statement names images of.
    pub fn repositories(&self) -> impl Iterator<Item = &str> {
        self.repositories.keys().map(String::as_str)
    }

    /// The manifest `digest` as `repository` serves it: one the statement names for it, or a
    /// child of one of its indexes; `None` for any other (whatever else the bucket holds).
    pub(super) async fn manifest(
        &self,
        repository: &ServedRepository,
        digest: &str,
    ) -> oci::Result<Option<Described>> {
        if let Some(named) = repository.named.get(digest) {
            return Ok(Some(named.clone()));
        }
        let children = repository
            .children
            .get_or_try_init(|| children_of(self.store.as_ref(), repository.named.values()))
            .await?;
        Ok(children.get(digest).cloned())
    }
}

/// The statement's images and referrers by repository (an image without a repository, a bare
/// `TAG`, is not served).
fn served(statement: &VerifiedStatement) -> Result<BTreeMap<String, ServedRepository>> {
    let mut repositories: BTreeMap<String, ServedRepository> = BTreeMap::new();
    let conflict = |what: String| Error::TransferStatement {
        layout: String::new(),
        reason: what,
    };
    for image in statement.images.values() {
        if image.repository.is_empty() {
            continue;
        }
        // The repository and tag are the ref name's, as `index.json` names the image.
        let named = layout::split_ref_name(&image.ref_name).ok();
        if named != Some((Some(image.repository.as_str()), image.tag.as_str())) {
            return Err(conflict(format!(
                "it names {} with repository {} and tag {}, which its ref name does not say",
                layout::quoted(&image.ref_name),
                layout::quoted(&image.repository),
                layout::quoted(&image.tag)
            )));
        }
        let repository = repositories.entry(image.repository.clone()).or_default();
        let top = Described::new(&image.digest, &image.media_type, image.size)?;
        insert_tag(repository, &image.tag, top.clone(), &image.ref_name)?;
        repository.named.insert(image.digest.clone(), top);
        for referrer in &image.referrers {
            let manifest = Described::new(&referrer.digest, &referrer.media_type, referrer.size)?;
            repository
                .named
                .insert(referrer.digest.clone(), manifest.clone());
            if referrer.tag.is_empty() {
                repository.referrers.push(StatedReferrer {
                    subject: referrer.subject.clone(),
                    manifest,
                    artifact_type: referrer.artifact_type.clone(),
                });
            } else {
                insert_tag(repository, &referrer.tag, manifest, &image.ref_name)?;
            }
        }
    }
    Ok(repositories)
}

/// Adds a tag, refusing one the statement gives two different manifests (an image's tag and a
/// tag-scheme artifact's, or two images of one name).
fn insert_tag(
    repository: &mut ServedRepository,
    tag: &str,
    manifest: Described,
    ref_name: &str,
) -> Result<()> {
    match repository.tags.get(tag) {
        Some(held) if *held != manifest => Err(Error::TransferStatement {
            layout: String::new(),
            reason: format!(
                "it gives the tag {} two manifests ({} and {}, at {}): not imported",
                layout::quoted(tag),
                held.digest,
                manifest.digest,
                layout::quoted(ref_name)
            ),
        }),
        _ => {
            repository.tags.insert(tag.to_string(), manifest);
            Ok(())
        }
    }
}

/// The children of the index manifests among `named`, level by level: each index read from
/// the layout, bounded and checked against its digest.
async fn children_of<'a>(
    store: &dyn LayoutStore,
    named: impl Iterator<Item = &'a Described>,
) -> oci::Result<HashMap<String, Described>> {
    let mut children: HashMap<String, Described> = HashMap::new();
    let mut queue: VecDeque<(Described, usize)> = named
        .filter(|d| oci::manifest::is_index_type(&d.media_type))
        .map(|d| (d.clone(), 0))
        .collect();
    while let Some((index, depth)) = queue.pop_front() {
        if depth >= MAX_INDEX_DEPTH {
            continue;
        }
        // An index that cannot be read (missing, changed) names no child: its own image fails
        // when its top manifest is asked for, the others do not.
        let path = store.blob_location(&index.digest);
        let read = layout::read_manifest(store, &index.blob(), Some(&index.media_type)).await;
        let Ok(ManifestContent::Index { manifests }) = read.and_then(|m| m.content(&path)) else {
            tracing::warn!(index = %index.digest, "an index of the layout could not be read: its children are not served");
            continue;
        };
        for child in manifests {
            let Ok(digest) = Digest::parse(child.digest().as_ref()) else {
                continue;
            };
            let described = Described {
                digest,
                media_type: child.media_type().to_string(),
                size: child.size(),
            };
            if children.len() >= MAX_CHILDREN {
                return Err(oci::Error::Layout {
                    path,
                    reason: format!("its images' indexes name over {MAX_CHILDREN} manifests"),
                });
            }
            if oci::manifest::is_index_type(&described.media_type) {
                queue.push_back((described.clone(), depth + 1));
            }
            children.insert(described.digest.to_string(), described);
        }
    }
    Ok(children)
}
