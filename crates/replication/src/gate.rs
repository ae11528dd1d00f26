//! The signature gate where the work is. Selecting a repository's images sends no signature
//! request: each image is only marked for the gate (`defer`, `SelectedImage::pending`), and a
//! page judges an image (`Judge`) only when it would write something: the image, or a tag or
//! referrer of it, missing in a destination. An image every destination already holds at the
//! same digest under every tag is not read again: nothing is written for it, and nothing
//! unsigned is newly copied or newly tagged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use oci::Repository;

use crate::artifacts::{artifact_refusal, artifact_subject, digests_by_tag, fallback_tag};
use crate::connect::Connection;
use crate::error::Result;
use crate::filter::{ListedImage, PendingGate, SelectedImage};
use crate::signatures::{admission, SignatureGate};

/// Signature checks (an image's candidates read and verified) at once in one call.
pub const PARALLEL_SIGNATURE_CHECKS: usize = 8;

/// What the gate needs to judge `subjects` later: where the repository's listing (`by_tag`)
/// says their signatures are (`sha256-<hex>.sig`, the `sha256-<hex>` fallback index).
pub(crate) fn pending_for(by_tag: &HashMap<&str, &str>, subjects: Vec<String>) -> PendingGate {
    let mut signature_tags = BTreeMap::new();
    for subject in &subjects {
        let fallback = fallback_tag(subject);
        for tag in [format!("{fallback}.sig"), fallback] {
            if let Some(digest) = by_tag.get(tag.as_str()) {
                signature_tags.insert(tag, digest.to_string());
            }
        }
    }
    PendingGate {
        subjects,
        signature_tags,
    }
}

/// The selection marked for the gate, without a request: an image is judged by its own
/// signatures; an artifact selected by its tag (`sha256-<hex>.sig`, ...) follows its subjects
/// (dropped now when one of them is not selected, as the gate always did; judged later as an
/// artifact of each). `images` is the repository's listing, where the `.sig` tags are.
pub(crate) fn defer(images: &[ListedImage], selected: Vec<SelectedImage>) -> Vec<SelectedImage> {
    let by_tag = digests_by_tag(images);
    let (artifacts, mut subjects): (Vec<SelectedImage>, Vec<SelectedImage>) = selected
        .into_iter()
        .partition(|s| !s.tags.is_empty() && s.tags.iter().all(|t| artifact_subject(t).is_some()));
    for image in &mut subjects {
        image.pending = Some(pending_for(&by_tag, vec![image.digest.clone()]));
    }
    let known: HashSet<String> = subjects.iter().map(|s| s.digest.clone()).collect();
    for mut artifact in artifacts {
        let of: Vec<String> = artifact
            .tags
            .iter()
            .filter_map(|t| artifact_subject(t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !of.iter().all(|s| known.contains(s)) {
            continue;
        }
        artifact.pending = Some(pending_for(&by_tag, of));
        subjects.push(artifact);
    }
    subjects
}

/// What the gate decided for one selected image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It travels; an image judged by its own signatures names what admitted it. An artifact
    /// found under the tags of several images travels under the tags of those admitted only
    /// (`Some`: the tags it keeps, when fewer than it was selected with).
    Admitted(Option<String>, Option<Vec<String>>),
    /// No signature admits it (the reason).
    Unsigned(String),
    /// An artifact of admitted images that is not an artifact of them (the reason).
    Refused(String),
    /// An artifact of an image that is not admitted: left behind with it, not reported.
    Dropped,
}

/// Judges selected images of one repository for the signature gate, reading their signatures
/// in the source; each subject's verdict is kept for the call (an image and its `.sig`
/// artifact ask once), and at most `PARALLEL_SIGNATURE_CHECKS` images are judged at once.
pub(crate) struct Judge<'a> {
    source: &'a Connection,
    repo: Repository,
    gate: SignatureGate,
    /// Whether the source may have the referrers API (false after its first 404).
    api: AtomicBool,
    verdicts: tokio::sync::Mutex<HashMap<String, std::result::Result<String, String>>>,
    permits: tokio::sync::Semaphore,
}

impl<'a> Judge<'a> {
    /// A judge of `repository`'s images in `source` under `gate`.
    pub(crate) fn new(source: &'a Connection, repository: &str, gate: SignatureGate) -> Self {
        Judge {
            source,
            repo: Repository {
                registry: source.registry.clone(),
                name: repository.to_string(),
            },
            gate,
            api: AtomicBool::new(true),
            verdicts: Default::default(),
            permits: tokio::sync::Semaphore::new(PARALLEL_SIGNATURE_CHECKS),
        }
    }

    /// The verdict on `image`; one not pending the gate (none applies, or judged already)
    /// travels as it is.
    pub(crate) async fn judge(&self, image: &SelectedImage) -> Result<Verdict> {
        let Some(pending) = &image.pending else {
            return Ok(Verdict::Admitted(image.signed_by.clone(), None));
        };
        // Bounded: a closed semaphore is never made, so a permit always comes.
        let _permit = self.permits.acquire().await.ok();
        if pending.is_subject(&image.digest) {
            return Ok(match self.admitted(pending, &image.digest).await? {
                Ok(line) => Verdict::Admitted(Some(line), None),
                Err(why) => Verdict::Unsigned(why),
            });
        }
        let mut admitted = HashSet::new();
        for subject in &pending.subjects {
            if self.admitted(pending, subject).await?.is_ok() {
                admitted.insert(subject.as_str());
            }
        }
        // A tag of an image that is judged travels when that image is admitted; a tag found
        // further down (an artifact of an artifact) when every image it was found for is.
        let all_admitted = admitted.len() == pending.subjects.len();
        let kept: Vec<String> = image
            .tags
            .iter()
            .filter(|tag| match artifact_subject(tag) {
                Some(subject) if pending.is_subject(&subject) => {
                    admitted.contains(subject.as_str())
                }
                _ => all_admitted,
            })
            .cloned()
            .collect();
        if kept.is_empty() {
            return Ok(Verdict::Dropped);
        }
        // The tag alone proves nothing: anyone who can push can push anything under it.
        for tag in &kept {
            let Some(subject) = artifact_subject(tag) else {
                continue;
            };
            let refusal =
                artifact_refusal(self.source, &self.repo, &image.digest, tag, &subject, true).await;
            if let Some(why) = refusal {
                return Ok(Verdict::Refused(why));
            }
        }
        let narrowed = (kept.len() < image.tags.len()).then_some(kept);
        Ok(Verdict::Admitted(None, narrowed))
    }

    /// What admitted `subject` (its signatures listed in `pending`), or why nothing did.
    async fn admitted(
        &self,
        pending: &PendingGate,
        subject: &str,
    ) -> Result<std::result::Result<String, String>> {
        if let Some(known) = self.verdicts.lock().await.get(subject) {
            return Ok(known.clone());
        }
        let by_tag: HashMap<&str, &str> = pending
            .signature_tags
            .iter()
            .map(|(tag, digest)| (tag.as_str(), digest.as_str()))
            .collect();
        let mut api = self.api.load(Ordering::Relaxed);
        let verdict = admission(
            self.source,
            &self.repo,
            subject,
            &by_tag,
            &self.gate,
            &mut api,
        )
        .await?;
        if !api {
            self.api.store(false, Ordering::Relaxed);
        }
        self.verdicts
            .lock()
            .await
            .insert(subject.to_string(), verdict.clone());
        Ok(verdict)
    }

    /// Every image of `selected` judged now (a verification compares what a replication would
    /// copy): admitted ones name what admitted them, the others are marked `unsigned` or
    /// `refused`; artifacts of images not admitted are left out.
    pub(crate) async fn judge_all(
        &self,
        selected: Vec<SelectedImage>,
    ) -> Result<Vec<SelectedImage>> {
        let mut verdicts = futures::stream::iter(selected)
            .map(|image| async move { (self.judge(&image).await, image) })
            .buffered(PARALLEL_SIGNATURE_CHECKS);
        let mut judged = Vec::new();
        while let Some((verdict, mut image)) = verdicts.next().await {
            match verdict? {
                Verdict::Admitted(signed_by, narrowed) => {
                    image.signed_by = signed_by;
                    if let Some(tags) = narrowed {
                        image.tags = tags;
                    }
                }
                Verdict::Unsigned(why) => image.unsigned = Some(why),
                Verdict::Refused(why) => image.refused = Some(why),
                Verdict::Dropped => continue,
            }
            image.pending = None;
            judged.push(image);
        }
        Ok(judged)
    }
}
