//! Finding the artifacts that refer to an image (signatures, SBOMs, attestations), so they
//! travel with it: the OCI 1.1 referrers API where the source serves it, and the tag scheme
//! (`sha256-<hex>` for the referrers fallback index, with `.sig`, `.att` and `.sbom` as cosign
//! writes them) everywhere.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use oci::{Digest, ManifestContent, Repository};

use crate::artifacts::{artifact_refusal, digests_by_tag};
pub use crate::artifacts::{artifact_tags, fallback_tag};
use crate::connect::Connection;
use crate::error::{Error, Result};
pub(crate) use crate::fallback_index::write_fallback_indexes;
use crate::filter::{ListedImage, SelectedImage};

/// Levels of referrers followed (a signature of an SBOM of an image is two).
const MAX_LEVELS: usize = 4;

/// Adds to `selected` every image of the repository that refers to a selected one, level by
/// level. Tagged artifacts found in `images` (the repository's catalog) become images of their
/// own and keep their tags (an image already selected gains the artifact tags). Referrers the
/// API lists travel inside their root subject's task (`SelectedImage::referrers`), so the step
/// that puts the subject can also write the target's fallback index after they are all there.
///
/// With `gated` (the job requires a signature), only artifacts travel (`artifact_refusal`): a
/// referrer the API lists declaring another subject, or that is a runnable image, goes to
/// `refused` (reported, never copied; one already there is not looked at again); one found
/// under an artifact tag is marked for the gate (`SelectedImage::pending`) with the image it
/// was found for, and judged only where it would be written.
/// Without it, a referrer the API lists is still taken only when its own `subject` is the
/// image it was listed for.
///
/// The API is not asked about the digests in `unasked` (images every destination holds with
/// everything that could refer to them: `steps::enumerate_images_held`).
pub(crate) async fn add_referrers(
    source: &Connection,
    (repository, images): (&str, &[ListedImage]),
    selected: &mut Vec<SelectedImage>,
    refused: &mut Vec<SelectedImage>,
    gated: bool,
    unasked: &HashSet<String>,
) -> Result<()> {
    let by_tag = digests_by_tag(images);
    let repo = Repository {
        registry: source.registry.clone(),
        name: repository.to_string(),
    };
    let mut api = true;
    let mut examined: HashSet<String> = HashSet::new();
    // (digest whose referrers to look for, index of the selected image it belongs to)
    let mut level: Vec<(String, usize)> = selected
        .iter()
        .enumerate()
        .map(|(i, s)| (s.digest.clone(), i))
        .collect();
    for _ in 0..MAX_LEVELS {
        let mut next = Vec::new();
        // The referrers API answers for the whole level first, a few lookups at once: one
        // image at a time, a repository of thousands took longer than the step's timeout.
        let mut listed = if api {
            let subjects: Vec<String> = level
                .iter()
                .map(|(subject, _)| subject.clone())
                .filter(|subject| !examined.contains(subject) && !unasked.contains(subject))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            referrers_of(source, &repo, subjects).await?
        } else {
            HashMap::new()
        };
        for (subject, root) in &level {
            if !examined.insert(subject.clone()) {
                continue;
            }
            let fallback = fallback_tag(subject);
            for tag in artifact_tags(subject) {
                let Some(digest) = by_tag.get(tag.as_str()) else {
                    continue;
                };
                if refused.iter().any(|r| r.digest == *digest) {
                    continue;
                }
                // Gated, it travels only as an artifact of an admitted image: judged where it
                // would be written (`gate::Judge`), with the image it was found for.
                let pending = (gated && !selected.iter().any(|s| s.digest == *digest)).then(|| {
                    let subjects = match &selected[*root].pending {
                        Some(pending) => pending.subjects.clone(),
                        None => vec![selected[*root].digest.clone()],
                    };
                    crate::gate::pending_for(&by_tag, subjects)
                });
                if tag == fallback {
                    // The fallback index lists the referrers: they travel as its children, and
                    // their own referrers are looked for on the next level.
                    for child in index_children(source, &repo, digest).await? {
                        next.push((child, *root));
                    }
                }
                match selected.iter().position(|s| s.digest == *digest) {
                    Some(i) => {
                        if !selected[i].tags.contains(&tag) {
                            selected[i].tags.push(tag);
                        }
                    }
                    None => {
                        selected.push(SelectedImage {
                            digest: digest.to_string(),
                            tags: vec![tag],
                            pending,
                            ..SelectedImage::default()
                        });
                        next.push((digest.to_string(), selected.len() - 1));
                    }
                }
            }
            if !api {
                continue;
            }
            match listed.remove(subject.as_str()) {
                None => {}
                Some(None) => api = false,
                Some(Some(list)) => {
                    for referrer in list {
                        let known = selected.iter().chain(refused.iter()).any(|s| {
                            s.digest == referrer.digest || s.referrers.contains(&referrer.digest)
                        });
                        if known {
                            continue;
                        }
                        if let Some(why) =
                            artifact_refusal(source, &repo, &referrer.digest, "", subject, gated)
                                .await
                        {
                            refused.push(SelectedImage::refused(referrer.digest, Vec::new(), why));
                            continue;
                        }
                        selected[*root].referrers.push(referrer.digest.clone());
                        next.push((referrer.digest, *root));
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(())
}

/// Referrer lookups at once.
const PARALLEL_REFERRER_LOOKUPS: usize = 16;

/// The referrers the source's API lists for `subject`, level by level (`MAX_LEVELS`), each
/// taken only where `artifact_refusal` takes it in `add_referrers` (one refused is left
/// behind, logged); empty where the source has no API. For an image whose referrers were not
/// asked for when it was selected (`SelectedImage::referrers_unread`) and that a page finds
/// missing in a destination after all.
pub(crate) async fn api_referrers(
    source: &Connection,
    repository: &str,
    subject: &str,
    gated: bool,
) -> Result<Vec<String>> {
    let repo = Repository {
        registry: source.registry.clone(),
        name: repository.to_string(),
    };
    let mut found: Vec<String> = Vec::new();
    let mut level = vec![subject.to_string()];
    for _ in 0..MAX_LEVELS {
        let mut next = Vec::new();
        for (of, list) in referrers_of(source, &repo, level).await? {
            for referrer in list.unwrap_or_default() {
                if referrer.digest == subject || found.contains(&referrer.digest) {
                    continue;
                }
                if let Some(why) =
                    artifact_refusal(source, &repo, &referrer.digest, "", &of, gated).await
                {
                    tracing::warn!(referrer = %referrer.digest, subject = %of, reason = %why, "a referrer is refused: left behind");
                    continue;
                }
                found.push(referrer.digest.clone());
                next.push(referrer.digest);
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(found)
}

/// What the source's referrers API lists for each subject (`None`: the registry has no API). The
/// first subject is asked alone: a registry without the API answers that once, not once per
/// image.
async fn referrers_of(
    source: &Connection,
    repo: &Repository,
    subjects: Vec<String>,
) -> Result<HashMap<String, Option<Vec<oci::Referrer>>>> {
    let lookup = |subject: String| async move {
        let digest = Digest::parse(&subject).map_err(|e| listing(repo, &subject, e))?;
        let list = source
            .client
            .referrers(repo, &digest)
            .await
            .map_err(|e| listing(repo, &subject, e))?;
        Ok::<_, Error>((subject, list))
    };
    let mut subjects = subjects.into_iter();
    let mut listed = HashMap::new();
    let Some(first) = subjects.next() else {
        return Ok(listed);
    };
    let (first, list) = lookup(first).await?;
    let has_api = list.is_some();
    listed.insert(first, list);
    if !has_api {
        return Ok(listed);
    }
    let mut rest = futures::stream::iter(subjects)
        .map(lookup)
        .buffered(PARALLEL_REFERRER_LOOKUPS);
    while let Some(found) = rest.next().await {
        let (subject, list) = found?;
        listed.insert(subject, list);
    }
    Ok(listed)
}

/// The digests an index lists (the referrers in a fallback index).
async fn index_children(
    source: &Connection,
    repo: &Repository,
    digest: &str,
) -> Result<Vec<String>> {
    let parsed = Digest::parse(digest).map_err(|e| listing(repo, digest, e))?;
    let (reference, manifest) = source
        .manifest_by_digest(&repo.name, &parsed)
        .await
        .map_err(|e| listing(repo, digest, e))?;
    match manifest
        .content(&reference.to_string())
        .map_err(|e| listing(repo, digest, e))?
    {
        ManifestContent::Index { manifests } => {
            Ok(manifests.iter().map(|m| m.digest().to_string()).collect())
        }
        ManifestContent::Image { .. } => Ok(Vec::new()),
    }
}

fn listing(repo: &Repository, subject: &str, source: oci::Error) -> Error {
    Error::Listing {
        what: format!("referrers of {repo}@{subject}"),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_tags_follow_the_fallback_and_cosign_schemes() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let hex = "ab".repeat(32);
        assert_eq!(
            artifact_tags(&d),
            vec![
                format!("sha256-{hex}"),
                format!("sha256-{hex}.sig"),
                format!("sha256-{hex}.att"),
                format!("sha256-{hex}.sbom"),
            ]
        );
    }
}
