//! `enumerate-images`, archived images: ECR's archive storage class lists and describes an
//! image but answers 404 to its pulls, so an image archived in the source is reported (with how
//! to restore it), never copied and never a failure; one archived in an ECR destination is
//! reported `archived` for that destination and not pushed there (a push restores it).

use std::collections::{BTreeMap, HashSet};

use super::enumerate_images_selection::listed_images;
use crate::connect::Connection;
use crate::filter::{ListedImage, SelectedImage};
use crate::job::ImageSelector;

/// Marks the selected images the repository's listing says are archived: reported, not
/// copied.
pub(super) fn mark_archived(
    selected: &mut [SelectedImage],
    images: &[ListedImage],
    registry: &str,
    repository: &str,
) {
    let archived: HashSet<&str> = images
        .iter()
        .filter(|i| i.archived)
        .map(|i| i.digest.as_str())
        .collect();
    for image in selected {
        if archived.contains(image.digest.as_str()) {
            let name = format!("@{}", image.digest);
            tracing::warn!(image = %format!("{repository}{name}"), "archived in the source: not copied");
            image.archived = Some(archived_reason(registry, repository, &name));
        }
    }
}

/// Why an archived image is not copied.
pub(super) fn archived_reason(registry: &str, repository: &str, name: &str) -> String {
    format!("{registry}/{repository}{name} is archived in the source (ECR archive storage class: pulls answer 404); restore it (UpdateImageStorageClass to STANDARD) to have it copied")
}

/// Why an image missing in an ECR destination is not pushed there: the destination keeps it in
/// ECR's archive storage class (since `archived_at`, seconds since the epoch, if ECR says), and
/// a push would restore it (ECR user guide, "Archiving an image": "The image can be restored
/// as an active image by manually selecting it to be restored or by re-pushing the image to
/// the repository"), undoing the destination's archive rules and paying for its bytes again.
pub(super) fn archived_there_reason(
    registry: &str,
    repository: &str,
    digest: &str,
    archived_at: Option<i64>,
) -> String {
    let since = archived_at
        .and_then(|at| jiff::Timestamp::from_second(at).ok())
        .map(|at| format!(" since {at}"))
        .unwrap_or_default();
    format!("{registry}/{repository}@{digest} is archived in the destination{since} (ECR archive storage class): not pushed, as a push would restore it; restore it there (UpdateImageStorageClass to STANDARD) to have its tags checked and copied")
}

/// The digest of `image` (named by tag or digest) when an ECR source lists it as archived: asked
/// only after a pull answered 404 (a registry that is not ECR has no archive). The repository's
/// listing is read into `listing` the first time and reused for the other images of the call.
pub(super) async fn archived_digest(
    source: &Connection,
    repository: &str,
    image: &ImageSelector,
    listing: &mut Option<Vec<ListedImage>>,
) -> Option<String> {
    source.ecr.as_ref()?;
    if listing.is_none() {
        // A listing that fails too (the repository is gone): not found, as said.
        *listing = Some(listed_images(source, repository).await.ok()?.0);
    }
    listing
        .as_ref()?
        .iter()
        .find(|i| {
            i.archived
                && (image.tag.as_ref().is_some_and(|t| i.tags.contains(t))
                    || image.digest.as_deref() == Some(i.digest.as_str()))
        })
        .map(|i| i.digest.clone())
}

/// An ECR destination repository's archived digests, each with when it was archived (seconds
/// since the epoch, if ECR says), read once, when first asked about (a run or a verification
/// with nothing missing asks nothing).
#[derive(Default)]
pub(super) struct ArchivedThere(tokio::sync::OnceCell<BTreeMap<String, Option<i64>>>);

impl ArchivedThere {
    /// The digests `target` keeps archived; an archive that cannot be read holds none, logged
    /// with `unread`: what the caller does then.
    pub(super) async fn digests(
        &self,
        admin: &ecr::EcrAdmin,
        target: &str,
        unread: &str,
    ) -> &BTreeMap<String, Option<i64>> {
        self.0
            .get_or_init(|| async {
                admin.archived_digests(target).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, repository = %target, "could not read the destination's archived images: {unread}");
                    Default::default()
                })
            })
            .await
    }
}
