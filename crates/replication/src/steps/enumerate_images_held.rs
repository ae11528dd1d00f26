//! `enumerate-images`, referrers every destination already holds: which selected images need
//! no referrers lookup in the source (one request each) because nothing that could refer to
//! them can be missing in a destination.
//!
//! In ECR a referrer (a signature, an SBOM, an attestation pushed with a `subject`) is an image
//! of the repository its subject is in: "A set of artifacts for a container image is
//! transferred with that container and stored as a separate image that counts as an image
//! consumed for your repository" (Amazon ECR user guide, "Private images in Amazon ECR",
//! docs.aws.amazon.com/AmazonECR/latest/userguide/images.html); the referrers API lists
//! manifests of that repository only (OCI distribution spec 1.1, "Listing Referrers"). And
//! `DescribeImages` without a `tagStatus` filter lists every image, tagged or not
//! (`DescribeImagesFilter.tagStatus`: "TAGGED | UNTAGGED | ANY", not required; ECR API
//! reference, docs.aws.amazon.com/AmazonECR/latest/APIReference/API_DescribeImagesFilter.html),
//! which is how `ecr::EcrAdmin::list_images` lists the source and the destinations. So when the
//! source repository's whole listing is known, every image of it that does not travel on its
//! own (untagged referrers first of all) is held in every destination, and an image is held in
//! every destination under each of its tags, no referrer of it can be missing anywhere: the
//! lookup is left out (`SelectedImage::referrers_unread`). Otherwise, or where a listing is
//! incomplete, fails, or a destination is not ECR, every image is looked up as before.

use std::collections::{HashMap, HashSet};

use crate::connect::{Connection, Connections};
use crate::filter::{ListedImage, SelectedImage};
use crate::job::ValidJob;

/// A destination repository's images as `DescribeImages` lists them: digest -> its tags, for
/// the images that can be pulled (an archived one answers 404, so it is not held).
type Held = HashMap<String, HashSet<String>>;

/// The digests of `selected` whose referrers need not be asked for in the source: none unless
/// the source is ECR (`images` is its whole `DescribeImages` listing, `refused` says whether
/// it listed names that are not valid, left out of `images`) and every destination is ECR
/// and lists the repository completely. Then, if every listed image of the source that is not
/// selected (an untagged referrer, an image the tag filters leave out, one archived) is held
/// in every destination, the selected images held in every destination under every tag the
/// source lists for them. Reads each destination's listing once; sends nothing to the source.
pub(super) async fn referrers_held(
    conns: &Connections,
    job: &ValidJob,
    (source, repository): (&Connection, &str),
    (images, refused): (&[ListedImage], bool),
    selected: &[SelectedImage],
) -> HashSet<String> {
    if source.ecr.is_none() || refused || selected.is_empty() || job.job.destinations.is_empty() {
        return HashSet::new();
    }
    let mut destinations = Vec::new();
    for index in 0..job.job.destinations.len() {
        match destination_listing(conns, job, index, repository).await {
            Some(held) => destinations.push(held),
            None => return HashSet::new(),
        }
    }
    held_everywhere(images, selected, &destinations)
}

/// `referrers_held`'s choice from the listings: the source's (`images`), and each
/// destination's (`destinations`, its active images).
fn held_everywhere(
    images: &[ListedImage],
    selected: &[SelectedImage],
    destinations: &[Held],
) -> HashSet<String> {
    let everywhere = |digest: &str, tags: &[String]| {
        destinations.iter().all(|held| {
            held.get(digest)
                .is_some_and(|there| tags.iter().all(|t| there.contains(t)))
        })
    };
    let chosen: HashSet<&str> = selected.iter().map(|s| s.digest.as_str()).collect();
    // Anything of the source that does not travel on its own could be a referrer that only a
    // lookup would bring along: it must be everywhere already.
    let others_held = images
        .iter()
        .filter(|i| !chosen.contains(i.digest.as_str()))
        .all(|i| !i.archived && everywhere(&i.digest, &[]));
    if destinations.is_empty() || !others_held {
        return HashSet::new();
    }
    let listed: HashMap<&str, &ListedImage> =
        images.iter().map(|i| (i.digest.as_str(), i)).collect();
    selected
        .iter()
        .filter(|s| {
            // Every tag the source lists for it (the selected ones among them), at its digest.
            listed
                .get(s.digest.as_str())
                .is_some_and(|i| !i.archived && everywhere(&i.digest, &i.tags))
                && everywhere(&s.digest, &s.tags)
        })
        .map(|s| s.digest.clone())
        .collect()
}

/// Destination `index`'s repository for `repository` as its ECR listing has it, every page
/// (`None`: not ECR, the repository is not there, the listing failed or went on past
/// `oci::MAX_LISTING_PAGES` pages, or a name in it is not valid: nothing is left out then).
async fn destination_listing(
    conns: &Connections,
    job: &ValidJob,
    index: usize,
    repository: &str,
) -> Option<Held> {
    let spec = job.job.destinations.get(index)?;
    let target = spec.checked_target_repository(repository).ok()?;
    conns.check_target_scope(&spec.registry, &target).ok()?;
    let dest = conns.destination(&job.job, index).await.ok()?;
    let admin = dest.ecr.as_ref()?;
    let mut held = Held::new();
    let mut next = None;
    for _ in 0..oci::MAX_LISTING_PAGES {
        let page = match admin.list_images(&target, next).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, repository = %target, destination = %spec.registry, "destination listing unavailable: referrers are looked up");
                return None;
            }
        };
        let (valid, refused) = crate::filter::refuse_invalid(page.items);
        if !refused.is_empty() {
            return None;
        }
        for image in valid.into_iter().filter(|i| !i.archived) {
            held.entry(image.digest).or_default().extend(image.tags);
        }
        match page.next {
            Some(token) => next = Some(token),
            None => return Some(held),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(digest: &str, tags: &[&str]) -> ListedImage {
        ListedImage {
            digest: digest.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..ListedImage::default()
        }
    }

    fn selected(digest: &str, tags: &[&str]) -> SelectedImage {
        SelectedImage {
            digest: digest.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..SelectedImage::default()
        }
    }

    fn held(images: &[(&str, &[&str])]) -> Held {
        images
            .iter()
            .map(|(d, tags)| (d.to_string(), tags.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn an_image_is_left_unasked_only_when_everything_that_could_refer_to_it_is_everywhere() {
        // v1 and v2 selected; an untagged referrer "r" of either.
        let source = [listed("a", &["v1"]), listed("b", &["v2"]), listed("r", &[])];
        let picked = [selected("a", &["v1"]), selected("b", &["v2"])];
        let full = held(&[("a", &["v1"]), ("b", &["v2"]), ("r", &[])]);
        let chosen = |dests: &[Held]| {
            let mut d: Vec<_> = held_everywhere(&source, &picked, dests)
                .into_iter()
                .collect();
            d.sort();
            d
        };
        assert_eq!(chosen(std::slice::from_ref(&full)), ["a", "b"]);
        // The referrer missing in one destination: every image is asked about.
        let no_referrer = held(&[("a", &["v1"]), ("b", &["v2"])]);
        assert!(chosen(&[full.clone(), no_referrer]).is_empty());
        // v2 moved on in a destination: only v1 is left unasked.
        let moved = held(&[("a", &["v1"]), ("b", &[]), ("c", &["v2"]), ("r", &[])]);
        assert_eq!(chosen(&[moved]), ["a"]);
        // No destination listed: nothing is left unasked.
        assert!(chosen(&[]).is_empty());
    }

    #[test]
    fn an_archived_or_partly_held_image_is_asked_about() {
        let mut archived = listed("r", &[]);
        archived.archived = true;
        let source = [listed("a", &["v1", "latest"]), archived];
        let picked = [selected("a", &["v1"])];
        let dest = held(&[("a", &["v1", "latest"]), ("r", &[])]);
        // An archived image of the source that is not selected could refer to anything.
        assert!(held_everywhere(&source, &picked, std::slice::from_ref(&dest)).is_empty());
        // A tag the source lists for the image missing in the destination (outside the
        // selection): asked about.
        let source = [listed("a", &["v1", "latest"]), listed("r", &[])];
        let partly = held(&[("a", &["v1"]), ("r", &[])]);
        assert!(held_everywhere(&source, &picked, &[partly]).is_empty());
        assert_eq!(
            held_everywhere(&source, &picked, &[dest]),
            HashSet::from(["a".to_string()])
        );
    }
}
