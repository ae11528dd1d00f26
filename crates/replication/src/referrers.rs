//! Finding the artifacts that refer to an image (signatures, SBOMs, attestations), so they
//! travel with it: the OCI 1.1 referrers API where the source serves it, and the tag scheme
//! (`sha256-<hex>` for the referrers fallback index, with `.sig`, `.att` and `.sbom` as cosign
//! writes them) everywhere.

use std::collections::{HashMap, HashSet};

use oci::{Digest, ManifestContent, Reference, Repository};

use crate::connect::Connection;
use crate::error::{Error, Result};
use crate::filter::{ImageInfo, SelectedImage};

/// Suffixes cosign puts after the fallback tag.
const COSIGN_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];
/// Levels of referrers followed (a signature of an SBOM of an image is two).
const MAX_LEVELS: usize = 4;

/// The fallback tag of a digest: `sha256:<hex>` becomes `sha256-<hex>`.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The tags that hold artifacts of `digest` under the tag scheme.
pub fn artifact_tags(digest: &str) -> Vec<String> {
    let base = fallback_tag(digest);
    std::iter::once(base.clone())
        .chain(COSIGN_SUFFIXES.iter().map(|s| format!("{base}{s}")))
        .collect()
}

/// Adds to `selected` every image of the repository that refers to a selected one, level by
/// level: tagged artifacts found in `images` (the repository's catalog) keep their tags;
/// referrers the API lists are added by digest (a registry with the API indexes them again
/// when their manifest is put). An image already selected gains the artifact tags.
pub(crate) async fn add_referrers(
    source: &Connection,
    repository: &str,
    images: &[ImageInfo],
    selected: &mut Vec<SelectedImage>,
) -> Result<()> {
    let by_tag: HashMap<&str, &str> = images
        .iter()
        .flat_map(|i| i.tags.iter().map(|t| (t.as_str(), i.digest.as_str())))
        .collect();
    let repo = Repository {
        registry: source.registry.clone(),
        name: repository.to_string(),
    };
    let mut api = true;
    let mut examined: HashSet<String> = HashSet::new();
    let mut level: Vec<String> = selected.iter().map(|s| s.digest.clone()).collect();
    for _ in 0..MAX_LEVELS {
        let mut next = Vec::new();
        for subject in &level {
            if !examined.insert(subject.clone()) {
                continue;
            }
            let fallback = fallback_tag(subject);
            let mut found: Vec<(String, Option<String>)> = Vec::new();
            for tag in artifact_tags(subject) {
                let Some(digest) = by_tag.get(tag.as_str()) else {
                    continue;
                };
                if tag == fallback {
                    // The fallback index lists the referrers: they travel as its children, and
                    // their own referrers are looked for on the next level.
                    next.extend(index_children(source, &repo, digest).await?);
                }
                found.push((digest.to_string(), Some(tag)));
            }
            if api {
                let digest = Digest::parse(subject).map_err(|e| listing(&repo, subject, e))?;
                match source
                    .client
                    .referrers(&repo, &digest)
                    .await
                    .map_err(|e| listing(&repo, subject, e))?
                {
                    Some(list) => found.extend(list.into_iter().map(|r| (r.digest, None))),
                    None => api = false,
                }
            }
            for (digest, tag) in found {
                match selected.iter_mut().find(|s| s.digest == digest) {
                    Some(existing) => {
                        if let Some(tag) = tag {
                            if !existing.tags.contains(&tag) {
                                existing.tags.push(tag);
                            }
                        }
                    }
                    None => {
                        selected.push(SelectedImage {
                            digest: digest.clone(),
                            tags: tag.into_iter().collect(),
                            pushed_at: None,
                        });
                        next.push(digest);
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

/// The digests an index lists (the referrers in a fallback index).
async fn index_children(
    source: &Connection,
    repo: &Repository,
    digest: &str,
) -> Result<Vec<String>> {
    let parsed = Digest::parse(digest).map_err(|e| listing(repo, digest, e))?;
    let reference = Reference {
        repository: repo.clone(),
        tag: None,
        digest: Some(parsed),
    };
    let manifest = source
        .client
        .get_manifest(&reference)
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
