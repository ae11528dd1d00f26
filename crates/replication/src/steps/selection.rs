//! The selection `enumerate-images` keeps in the run's work bucket between the pages of one
//! run, so a repository is listed and resolved once per run, and the page token naming it.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};

use super::*;
use crate::error::{Error, FieldProblem, Result};
use crate::filter::SelectedImage;
use crate::job::ValidJob;

/// Selected images a kept selection holds per object (an `enumerate-images` call reads one).
pub const SELECTION_CHUNK: usize = IMAGES_CHECKED_PER_CALL;

/// Where the kept selections live in the work bucket (the deployment expires them).
pub const SELECTIONS_PREFIX: &str = "selections/";

/// Where a page starts: an offset into the repository's selection, and the kept selection
/// (`<id>:<offset>`), if any.
pub(crate) struct PageToken {
    /// The kept selection's id.
    pub(crate) selection: Option<String>,
    /// Index into the whole selection.
    pub(crate) offset: usize,
}

impl PageToken {
    /// Reads a page token; one this step did not write is refused naming `nextToken`.
    pub(crate) fn parse(token: Option<&str>) -> Result<PageToken> {
        let Some(token) = token else {
            return Ok(PageToken {
                selection: None,
                offset: 0,
            });
        };
        let invalid = || Error::InvalidInput {
            problems: vec![FieldProblem {
                field: "nextToken".into(),
                problem: format!("{token:?} is not a token this step returned"),
            }],
        };
        let (selection, offset) = match token.rsplit_once(':') {
            Some((id, offset)) => {
                let valid_id = !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
                if !valid_id {
                    return Err(invalid());
                }
                (Some(id.to_string()), offset)
            }
            None => (None, token),
        };
        Ok(PageToken {
            selection,
            offset: offset.parse().map_err(|_| invalid())?,
        })
    }
}

/// A stretch of a repository's selection: `images` are the selection's from index `first`,
/// of `total` in all.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    /// The images of the stretch.
    pub images: &'a [SelectedImage],
    /// Index of the first of them in the whole selection.
    pub first: usize,
    /// Images in the whole selection.
    pub total: usize,
}

impl<'a> Selection<'a> {
    /// The whole selection.
    pub fn whole(images: &'a [SelectedImage]) -> Self {
        Selection {
            images,
            first: 0,
            total: images.len(),
        }
    }
}

/// One object of a kept selection.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SelectionChunk {
    /// Which job and repository made it (`made_for`): its images carry that job's verdicts
    /// (signature gate, refusals), so no other job or repository may read it.
    #[serde(default)]
    made_for: String,
    total: usize,
    first: usize,
    images: Vec<SelectedImage>,
}

/// What a kept selection is bound to: the repository, the whole validated job (filters,
/// `requireSignature`) and the deployment it was judged under (its trust policies and
/// destination scopes: `Connections::deployment_digest`), as a digest. A token naming a
/// selection made for another job or repository (a forged execution input's continuation,
/// say), or before the deployment changed (a key revoked), is never read.
fn made_for(job: &ValidJob, repository: &str, deployment: &str) -> String {
    let job = serde_json::to_string(&job.job).unwrap_or_default();
    oci::Digest::of(format!("{repository}\n{deployment}\n{job}").as_bytes()).to_string()
}

impl SelectionChunk {
    pub(crate) fn as_selection(&self) -> Selection<'_> {
        Selection {
            images: &self.images,
            first: self.first,
            total: self.total,
        }
    }
}

fn selection_key(id: &str, chunk: usize) -> String {
    format!("{SELECTIONS_PREFIX}{id}/{chunk}.json")
}

/// Keeps a repository's selection in the work bucket; returns its id (new for each listing, so
/// a retried first page never reads another's), or why it could not (only ever logged: a
/// selection not kept costs a listing per page, nothing else).
pub(crate) async fn keep_selection(
    bucket: &ecr::WorkBucket,
    (job, deployment): (&ValidJob, &str),
    repository: &str,
    selected: &[SelectedImage],
) -> std::result::Result<String, String> {
    let made_for = made_for(job, repository, deployment);
    use std::hash::{BuildHasher, Hasher};
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(repository.as_bytes());
        h.write_u64(salt);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.finish()
    };
    let id = format!("{:016x}{:016x}", random(1), random(2));
    futures::stream::iter(selected.chunks(SELECTION_CHUNK).enumerate())
        .map(|(index, images)| {
            let chunk = SelectionChunk {
                made_for: made_for.clone(),
                total: selected.len(),
                first: index * SELECTION_CHUNK,
                images: images.to_vec(),
            };
            let key = selection_key(&id, index);
            async move {
                let body = serde_json::to_vec(&chunk).map_err(|e| e.to_string())?;
                bucket.put(&key, body).await.map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(id)
}

/// The object of kept selection `id` holding the image at `offset`, made for this job and
/// repository; `None` when it is gone, cannot be read or was made for another (logged: the
/// caller lists the repository again, which is always correct).
pub(crate) async fn stored_selection_chunk(
    bucket: &ecr::WorkBucket,
    (job, deployment): (&ValidJob, &str),
    repository: &str,
    id: &str,
    offset: usize,
) -> Option<SelectionChunk> {
    let key = selection_key(id, offset / SELECTION_CHUNK);
    let body = match bucket.get(&key).await {
        Ok(body) => body?,
        Err(e) => {
            tracing::warn!(%key, error = %e, "could not read the kept selection");
            return None;
        }
    };
    let chunk: SelectionChunk = match serde_json::from_slice(&body) {
        Ok(chunk) => chunk,
        Err(e) => {
            tracing::warn!(%key, error = %e, "the kept selection is not one this step wrote");
            return None;
        }
    };
    if chunk.made_for != made_for(job, repository, deployment) {
        tracing::warn!(%key, %repository, "the kept selection was made for another job or repository: not read");
        return None;
    }
    let holds_offset = offset >= chunk.first && offset < chunk.first + chunk.images.len();
    holds_offset.then_some(chunk)
}
