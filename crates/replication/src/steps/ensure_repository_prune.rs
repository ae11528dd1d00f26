//! `ensure-repository`, prune: the destination tags the filters select that the source no
//! longer has are removed, unless something that stays needs them (an index's child, a
//! subject's referrers fallback index), the repository keeps its tags immutable, or another
//! source repository maps onto the same destination repository.

use std::collections::{BTreeMap, HashMap, HashSet};

use ecr::ListedImage;
use oci::Repository;

use super::*;
use crate::artifacts::{artifact_subject, fallback_tag, short_digest};
use crate::catalog::{aws, too_many_pages};
use crate::connect::{Connection, Connections};
use crate::error::{Error, Result};
use crate::job::{Destination, ValidJob};

/// Removes the destination tags the tag filters select that the source repository no longer
/// has; nothing outside the filters. Returns the tags removed (in a dry run, to remove) and those
/// kept with the reason: an ECR repository with immutable tags keeps them all (reported, the run
/// goes on); a registry that cannot untag (distribution answers 400) loses a tag only by deleting
/// its manifest, done when every tag on that manifest is stale; and a tag that something staying
/// needs is kept (`keep_what_remains_needs`: an index's child, a subject's fallback index).
pub(super) async fn prune_stale_tags(
    conns: &Connections,
    job: &ValidJob,
    index: usize,
    repository: &str,
    target: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let source = conns.source(&job.job).await?;
    let dest = conns.destination(&job.job, index).await?;
    let dest_spec = job.job.destination(index)?;
    let sharing = sources_sharing_target(&source, job, dest_spec, repository, target).await?;
    if !sharing.is_empty() {
        // Each would prune the other's tags on every run: neither prunes, the run says why.
        return Ok((
            Vec::new(),
            vec![format!(
                "(none pruned): source repositories {repository} and {} all map onto {target}; prune needs one source per destination repository (fix repositoryMapping)",
                sharing.join(", ")
            )],
        ));
    }
    let in_source = source_tags(&source, repository).await?;
    let in_target = match all_images(&dest, target).await {
        Ok(images) => images,
        Err(e) if is_missing_repository(&e) => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let mut stale: Vec<(String, String)> = in_target
        .iter()
        .flat_map(|i| i.tags.iter().map(|t| (t.clone(), i.digest.clone())))
        .filter(|(tag, _)| job.tags.tag_matches(tag) && !in_source.contains(tag))
        .collect();
    stale.sort();
    let mut kept: Vec<String> = Vec::new();
    if let Some(admin) = &dest.ecr {
        let settings = admin.read_settings(target).await.map_err(aws(format!(
            "reading the settings of {}/{target}",
            admin.registry()
        )))?;
        // Immutable tags (all of them, or those the exclusion filters make immutable) stay.
        let (immutable, mutable): (Vec<_>, Vec<_>) = stale
            .into_iter()
            .partition(|(t, _)| settings.as_ref().is_some_and(|s| s.tag_is_immutable(t)));
        kept.extend(immutable.iter().map(|(t, _)| {
            format!(
                "{t}: the repository's tags are immutable; remove it by hand if that is intended"
            )
        }));
        stale = mutable;
    }
    // Nothing that stays may lose what it needs: an index its children, an image its fallback
    // index (receipts and referrers where the registry has no referrers API).
    let (stale, protected) = keep_what_remains_needs(&dest, target, &in_target, stale).await?;
    kept.extend(protected);
    let stale_tags: Vec<String> = stale.iter().map(|(t, _)| t.clone()).collect();
    if job.job.dry_run || stale_tags.is_empty() {
        return Ok((stale_tags, kept));
    }
    if let Some(admin) = &dest.ecr {
        let refused = admin
            .remove_tags(target, &stale_tags)
            .await
            .map_err(aws(format!(
                "removing stale tags from {}/{target}",
                admin.registry()
            )))?;
        let removed = stale_tags
            .into_iter()
            .filter(|t| !refused.iter().any(|(r, _)| r == t))
            .collect();
        kept.extend(refused.into_iter().map(|(t, why)| format!("{t}: {why}")));
        return Ok((removed, kept));
    }
    let removed =
        delete_stale_tags(&dest, target, &in_target, &stale, &stale_tags, &mut kept).await?;
    Ok((removed, kept))
}

/// Removes stale tags from a registry that is not ECR: by tag, or, where the registry cannot
/// untag, by deleting the manifest once every tag on it is stale (otherwise the tag is kept,
/// said in `kept`). Returns the tags removed.
async fn delete_stale_tags(
    dest: &Connection,
    target: &str,
    in_target: &[ListedImage],
    stale: &[(String, String)],
    stale_tags: &[String],
    kept: &mut Vec<String>,
) -> Result<Vec<String>> {
    let repo = Repository {
        registry: dest.registry.clone(),
        name: target.to_string(),
    };
    let failed = |source| Error::Registry {
        image: repo.to_string(),
        source,
    };
    let mut removed = Vec::new();
    let mut deleted_digests: HashSet<String> = HashSet::new();
    for (tag, digest) in stale {
        if deleted_digests.contains(digest) {
            removed.push(tag.clone());
            continue;
        }
        match dest.client.delete_manifest(&repo, tag).await {
            Ok(_) => removed.push(tag.clone()),
            Err(e) if cannot_untag(&e) => {
                let others: Vec<&String> = in_target
                    .iter()
                    .filter(|i| i.digest == *digest)
                    .flat_map(|i| i.tags.iter())
                    .filter(|t| !stale_tags.contains(t))
                    .collect();
                if others.is_empty() {
                    dest.client
                        .delete_manifest(&repo, digest)
                        .await
                        .map_err(failed)?;
                    deleted_digests.insert(digest.clone());
                    removed.push(tag.clone());
                } else {
                    kept.push(format!(
                        "{tag}: the registry removes manifests, not single tags, and {digest} is also tagged {}",
                        others.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(removed)
}

/// Splits the stale `(tag, digest)` pairs into those that may go and the reasons of those that
/// stay because something staying in the destination needs them:
/// - a manifest an index that stays lists as a child (removing its last tag deletes it, and the
///   index would name a manifest that is gone);
/// - the referrers fallback index tag `sha256-<hex>` of a subject that stays (the replicator
///   writes it for receipts and referrers where the registry has no referrers API; the source
///   never has it).
///
/// A digest stays when it keeps a tag (or is listed untagged), or an index that stays lists it;
/// keeping a tag can make more stay (an index kept for its subject, a nested index), so this
/// repeats until nothing changes. Only indexes that stay are read, and only when a tag is stale.
async fn keep_what_remains_needs(
    dest: &Connection,
    target: &str,
    images: &[ListedImage],
    stale: Vec<(String, String)>,
) -> Result<(Vec<(String, String)>, Vec<String>)> {
    let mut going: BTreeMap<String, String> = stale.into_iter().collect();
    let mut kept = Vec::new();
    if going.is_empty() {
        return Ok((Vec::new(), kept));
    }
    let mut children: HashMap<String, Vec<(String, String)>> = HashMap::new();
    loop {
        // Digests keeping a tag (or listed untagged), then whatever indexes among them list.
        let mut staying: HashSet<String> = images
            .iter()
            .filter(|i| i.tags.is_empty() || i.tags.iter().any(|t| !going.contains_key(t)))
            .map(|i| i.digest.clone())
            .collect();
        let mut listed_by: HashMap<String, String> = HashMap::new();
        let mut indexes: Vec<String> = images
            .iter()
            .filter(|i| staying.contains(&i.digest))
            .filter(|i| {
                i.media_type
                    .as_deref()
                    .is_none_or(oci::manifest::is_index_type)
            })
            .map(|i| i.digest.clone())
            .collect();
        while let Some(index) = indexes.pop() {
            if !children.contains_key(&index) {
                let listed = index_children(dest, target, &index).await?;
                children.insert(index.clone(), listed);
            }
            for (child, media_type) in children.get(&index).into_iter().flatten() {
                if listed_by.contains_key(child) {
                    continue;
                }
                listed_by.insert(child.clone(), index.clone());
                if staying.insert(child.clone()) && oci::manifest::is_index_type(media_type) {
                    indexes.push(child.clone());
                }
            }
        }
        let before = kept.len();
        for (tag, digest) in going.clone() {
            let why = if let Some(index) = listed_by.get(&digest) {
                Some(format!(
                    "{tag}: {} is listed by the index {}, which stays; removing it would break that index",
                    short_digest(&digest),
                    named(images, index, &going)
                ))
            } else {
                artifact_subject(&tag)
                    .filter(|subject| fallback_tag(subject) == tag && staying.contains(subject))
                    .map(|subject| {
                        format!(
                            "{tag}: the referrers fallback index of {}, which stays (it holds the image's receipts and referrers where the registry has no referrers API)",
                            named(images, &subject, &going)
                        )
                    })
            };
            if let Some(why) = why {
                going.remove(&tag);
                kept.push(why);
            }
        }
        if kept.len() == before {
            break;
        }
    }
    Ok((going.into_iter().collect(), kept))
}

/// The children an index in the destination lists, each with its media type; none when the
/// manifest is gone (removed since the listing) or is not an index.
async fn index_children(
    dest: &Connection,
    target: &str,
    digest: &str,
) -> Result<Vec<(String, String)>> {
    let repo = Repository {
        registry: dest.registry.clone(),
        name: target.to_string(),
    };
    let failed = |source| Error::Registry {
        image: format!("{repo}@{digest}"),
        source,
    };
    let parsed = oci::Digest::parse(digest).map_err(failed)?;
    let manifest = match dest.manifest_by_digest(target, &parsed).await {
        Ok((_, manifest)) => manifest,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(failed(e)),
    };
    let body: serde_json::Value = serde_json::from_slice(&manifest.bytes).unwrap_or_default();
    Ok(body["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|child| {
            Some((
                child["digest"].as_str()?.to_string(),
                child["mediaType"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect())
}

/// A digest as a report names it: a tag of it that stays, with the digest shortened.
fn named(images: &[ListedImage], digest: &str, going: &BTreeMap<String, String>) -> String {
    let tag = images
        .iter()
        .filter(|i| i.digest == digest)
        .flat_map(|i| i.tags.iter())
        .find(|t| !going.contains_key(*t));
    match tag {
        Some(tag) => format!("{tag} ({})", short_digest(digest)),
        None => short_digest(digest),
    }
}

/// Every tag the source repository has, from its full tag listing: a tag whose manifest cannot
/// be read right now (a transient 404, a refused media type) is still the source's, and is
/// never pruned for it.
async fn source_tags(source: &Connection, repository: &str) -> Result<HashSet<String>> {
    if source.ecr.is_some() {
        // ECR's ListImages lists tags with their digests: nothing is resolved one by one.
        return Ok(all_images(source, repository)
            .await?
            .into_iter()
            .flat_map(|i| i.tags)
            .collect());
    }
    let repo = Repository {
        registry: source.registry.clone(),
        name: repository.to_string(),
    };
    source
        .client
        .list_tags(&repo)
        .await
        .map(|tags| tags.into_iter().collect())
        .map_err(|source| Error::Listing {
            what: format!("tags of {repo} (the source's full set, for prune)"),
            source,
        })
}

/// The other selected source repositories that `dest` maps onto the same repository as
/// `repository` (only possible with `repositoryMapping`; a prefix alone maps one to one). The
/// source's repository names are listed for it (names only, at most
/// `oci::MAX_LISTING_PAGES` pages).
async fn sources_sharing_target(
    source: &Connection,
    job: &ValidJob,
    dest: &Destination,
    repository: &str,
    target: &str,
) -> Result<Vec<String>> {
    if dest.repository_mapping.is_empty() {
        return Ok(Vec::new());
    }
    let catalog = source.catalog();
    let mut sharing = Vec::new();
    let mut next = None;
    for _ in 0..oci::MAX_LISTING_PAGES {
        let page = catalog.repositories(next, 1000).await?;
        sharing.extend(page.items.into_iter().filter(|other| {
            other != repository
                && job.repositories.matches(other)
                && dest.target_repository(other) == target
        }));
        match page.next {
            Some(n) => next = Some(n),
            None => return Ok(sharing),
        }
    }
    Err(too_many_pages(
        &source.registry,
        format!("repositories of {}", source.registry),
    ))
}

/// The registry refused to delete by tag (the distribution registry answers 400; others 405 or
/// `UNSUPPORTED`).
fn cannot_untag(e: &oci::Error) -> bool {
    match e {
        oci::Error::Registry { status, code, .. } => {
            matches!(status, 400 | 405) || *code == Some(oci::error::ErrorCode::Unsupported)
        }
        _ => false,
    }
}

fn is_missing_repository(e: &Error) -> bool {
    match e {
        Error::Listing { source, .. } => matches!(source, oci::Error::NotFound { .. }),
        Error::Aws { source, .. } => source.is_repository_not_found(),
        _ => false,
    }
}
