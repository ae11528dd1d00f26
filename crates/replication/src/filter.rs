//! Repository filters (globs) and image filters (tag regexes, semver range, latest N, max age,
//! untagged).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::Regex;
use schemars::JsonSchema;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

pub use ecr::ListedImage;

/// Compiled repository globs.
#[derive(Debug, Clone)]
pub struct RepositoryMatcher {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

fn glob_set(field: &str, globs: &[String]) -> Result<GlobSet, (String, String)> {
    let mut builder = GlobSetBuilder::new();
    for (i, glob) in globs.iter().enumerate() {
        let compiled = GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                (
                    format!("{field}[{i}]"),
                    format!("bad glob {glob:?}: {}", e.kind()),
                )
            })?;
        builder.add(compiled);
    }
    builder
        .build()
        .map_err(|e| (field.to_string(), e.to_string()))
}

impl RepositoryMatcher {
    /// Compiles the globs; an error names the field (`include[2]`) and the problem.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, (String, String)> {
        Ok(RepositoryMatcher {
            include: if include.is_empty() {
                None
            } else {
                Some(glob_set("include", include)?)
            },
            exclude: glob_set("exclude", exclude)?,
        })
    }

    /// Whether a repository is selected.
    pub fn matches(&self, repository: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(repository))
            && !self.exclude.is_match(repository)
    }
}

/// An image chosen by the filters, with the tags to copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectedImage {
    /// Manifest digest.
    pub digest: String,
    /// Tags selected (empty: copied by digest only).
    pub tags: Vec<String>,
    /// Push time, if known.
    pub pushed_at: Option<i64>,
    /// Referrers the source's API lists for it (all levels), copied within its task.
    #[serde(default)]
    pub referrers: Vec<String>,
    /// Why it is not copied although selected: the job requires a signature and none verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned: Option<String>,
    /// What admitted it under `requireSignature`: the key or identity, and the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// Why it is refused although selected: its name from the source is not valid (its tag or
    /// digest never reaches a URL), or it is an artifact the signature gate does not cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Why it is not copied: the job named this digest under its tag (a push), and the tag has
    /// moved on to another image since (a later push, whose own run copies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<String>,
    /// Why it is not copied: the source keeps it in ECR's archive storage class, where pulls
    /// answer 404; restoring it is the owner's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<String>,
    /// With `requireSignature`: the gate has not looked at it yet. A page asks for its
    /// signatures only when it would write something (the image, or a tag of it, missing in a
    /// destination): an image every destination already holds is not read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingGate>,
    /// Its referrers were not asked for (`referrers` is empty): when it was selected, every
    /// destination held it, and everything of the source repository that could refer to it
    /// (`steps::enumerate_images_held`). A page that finds it missing somewhere asks then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub referrers_unread: bool,
}

/// What the signature gate needs to judge a selected image later, without the repository's
/// listing: whose signatures admit it, and where the listing said they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingGate {
    /// The images whose signatures admit it: itself, or, for an artifact found under an
    /// artifact tag (`sha256-<hex>.sig`, ...), the signed image(s) it travels with. An
    /// artifact travels under the tags of the admitted ones, and only when it is an artifact
    /// of each (`gate::Judge`).
    pub subjects: Vec<String>,
    /// The repository's tags naming those images' signatures (`sha256-<hex>.sig`, the
    /// `sha256-<hex>` fallback index) as listed, tag -> digest.
    #[serde(default)]
    pub signature_tags: std::collections::BTreeMap<String, String>,
}

impl PendingGate {
    /// Whether `digest` is judged by its own signatures (not an artifact of another image).
    pub fn is_subject(&self, digest: &str) -> bool {
        self.subjects.iter().any(|s| s == digest)
    }
}

impl SelectedImage {
    /// Something the run names and never copies, with why (`refused`).
    pub fn refused(digest: String, tags: Vec<String>, why: String) -> Self {
        SelectedImage {
            digest,
            tags,
            refused: Some(why),
            ..SelectedImage::default()
        }
    }
}

/// A name read from a registry that is not valid, with the reason: reported, never used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The name as the registry gave it (cut to 200 characters).
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Refusal {
    /// A refusal of `name`, kept short (a hostile registry chooses its length).
    pub fn new(name: &str, reason: String) -> Self {
        Refusal {
            name: crate::text::truncate_chars(&name.escape_debug().to_string(), 200),
            reason,
        }
    }

    /// The refusal as a selected image the run reports (`refused`) and never copies.
    pub fn into_selected(self) -> SelectedImage {
        SelectedImage::refused(String::new(), vec![self.name], self.reason)
    }
}

/// Splits a registry's listing into images whose every name is valid (tags checked against the
/// distribution grammar, digests parsed) and refusals: an invalid tag is dropped from its image
/// (the image keeps its valid ones), an image with an invalid digest is dropped whole.
pub fn refuse_invalid(images: Vec<ListedImage>) -> (Vec<ListedImage>, Vec<Refusal>) {
    let mut refused = Vec::new();
    let mut valid = Vec::with_capacity(images.len());
    for mut image in images {
        if let Err(e) = oci::Digest::parse(&image.digest) {
            refused.push(Refusal::new(&image.digest, format!("not a digest: {e}")));
            continue;
        }
        image.tags = valid_tags(std::mem::take(&mut image.tags), &mut refused);
        valid.push(image);
    }
    (valid, refused)
}

/// The tags that are valid names (the distribution grammar); each other one is added to
/// `refused` with why.
pub fn valid_tags(tags: Vec<String>, refused: &mut Vec<Refusal>) -> Vec<String> {
    tags.into_iter()
        .filter(|tag| match oci::reference::validate_tag(tag) {
            Ok(()) => true,
            Err(reason) => {
                refused.push(Refusal::new(tag, reason));
                false
            }
        })
        .collect()
}

/// Image selection by tag and age.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagFilter {
    /// Regexes (full match) a tag must match (any); empty means every tag.
    #[serde(default)]
    pub include: Vec<String>,
    /// Regexes (full match) that exclude a tag (any).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A semver range (`>=1.4, <2`); tags that are not semver (a leading `v` is allowed) are not
    /// selected when set. Pre-releases match only ranges that name a pre-release.
    #[serde(default)]
    pub semver: Option<String>,
    /// Keep only the N most recently pushed of the selected tagged images, per repository.
    #[serde(default)]
    pub latest: Option<u32>,
    /// Keep only images pushed within this many days.
    #[serde(default)]
    pub max_age_days: Option<u32>,
    /// Also copy untagged images (by digest).
    #[serde(default)]
    pub untagged: bool,
}

/// Compiled tag filters.
#[derive(Debug, Clone)]
pub struct TagMatcher {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    semver: Option<VersionReq>,
    latest: Option<usize>,
    max_age_days: Option<u32>,
    untagged: bool,
}

fn regexes(field: &str, patterns: &[String]) -> Result<Vec<Regex>, (String, String)> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            regex::RegexBuilder::new(&format!("^(?:{p})$"))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| (format!("{field}[{i}]"), format!("bad regex {p:?}: {e}")))
        })
        .collect()
}

impl TagMatcher {
    /// Compiles the filters; an error names the field and the problem.
    pub fn new(filter: &TagFilter) -> Result<Self, (String, String)> {
        let semver = filter
            .semver
            .as_deref()
            .map(|s| {
                VersionReq::parse(s)
                    .map_err(|e| ("semver".to_string(), format!("bad semver range {s:?}: {e}")))
            })
            .transpose()?;
        Ok(TagMatcher {
            include: regexes("include", &filter.include)?,
            exclude: regexes("exclude", &filter.exclude)?,
            semver,
            latest: filter.latest.map(|n| n as usize),
            max_age_days: filter.max_age_days,
            untagged: filter.untagged,
        })
    }

    /// Whether one tag passes the regex and semver filters.
    pub fn tag_matches(&self, tag: &str) -> bool {
        let included = self.include.is_empty() || self.include.iter().any(|r| r.is_match(tag));
        let excluded = self.exclude.iter().any(|r| r.is_match(tag));
        let semver_ok = match &self.semver {
            None => true,
            Some(req) => {
                Version::parse(tag.strip_prefix('v').unwrap_or(tag)).is_ok_and(|v| req.matches(&v))
            }
        };
        included && !excluded && semver_ok
    }

    /// Chooses images: tagged ones with at least one matching tag (only those tags kept),
    /// untagged ones when asked; then the age limit; then the latest N tagged images by push time
    /// (unknown times last, ties by digest for a stable order).
    pub fn select(&self, images: &[ListedImage], now: i64) -> Vec<SelectedImage> {
        let oldest = self.max_age_days.map(|d| now - i64::from(d) * 86_400);
        let young_enough = |i: &ListedImage| match (oldest, i.pushed_at) {
            (Some(limit), Some(at)) => at >= limit,
            _ => true,
        };
        let mut tagged: Vec<SelectedImage> = Vec::new();
        let mut untagged: Vec<SelectedImage> = Vec::new();
        for image in images.iter().filter(|i| young_enough(i)) {
            if image.tags.is_empty() {
                if self.untagged {
                    untagged.push(SelectedImage {
                        digest: image.digest.clone(),
                        tags: Vec::new(),
                        pushed_at: image.pushed_at,
                        ..SelectedImage::default()
                    });
                }
                continue;
            }
            let mut tags: Vec<String> = image
                .tags
                .iter()
                .filter(|t| self.tag_matches(t))
                .cloned()
                .collect();
            if !tags.is_empty() {
                tags.sort();
                tagged.push(SelectedImage {
                    digest: image.digest.clone(),
                    tags,
                    pushed_at: image.pushed_at,
                    ..SelectedImage::default()
                });
            }
        }
        if let Some(n) = self.latest {
            tagged.sort_by(|a, b| {
                b.pushed_at
                    .cmp(&a.pushed_at)
                    .then_with(|| a.digest.cmp(&b.digest))
            });
            tagged.truncate(n);
        }
        tagged.extend(untagged);
        tagged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn catalog() -> Vec<ListedImage> {
        // (tag, days ago) — one image per tag, plus two untagged ones.
        let tagged = [
            ("v1.2.3", 40),
            ("v1.10.0", 10),
            ("1.2", 5),
            ("latest", 1),
            ("sha-abc123", 2),
            ("v2.0.0-rc.1", 3),
        ];
        let mut images: Vec<ListedImage> = tagged
            .iter()
            .enumerate()
            .map(|(i, (tag, days))| ListedImage {
                digest: format!("sha256:{i:064}"),
                tags: vec![tag.to_string()],
                pushed_at: Some(NOW - days * DAY),
                size: None,
                media_type: None,
                archived: false,
            })
            .collect();
        for (i, days) in [(90, 4), (91, 100)] {
            images.push(ListedImage {
                digest: format!("sha256:{i:064}"),
                tags: vec![],
                pushed_at: Some(NOW - days * DAY),
                size: None,
                media_type: None,
                archived: false,
            });
        }
        images
    }

    fn selected(filter: TagFilter) -> Vec<String> {
        let m = TagMatcher::new(&filter).unwrap();
        let mut names: Vec<String> = m
            .select(&catalog(), NOW)
            .into_iter()
            .map(|s| {
                if s.tags.is_empty() {
                    format!("<untagged {}>", &s.digest[s.digest.len() - 2..])
                } else {
                    s.tags.join(",")
                }
            })
            .collect();
        names.sort();
        names
    }

    fn f() -> TagFilter {
        TagFilter::default()
    }

    #[test]
    fn tag_filters_table() {
        let cases: Vec<(&str, TagFilter, Vec<&str>)> = vec![
            (
                "no filter: every tagged image",
                f(),
                vec![
                    "1.2",
                    "latest",
                    "sha-abc123",
                    "v1.10.0",
                    "v1.2.3",
                    "v2.0.0-rc.1",
                ],
            ),
            (
                "regex for release tags",
                TagFilter {
                    include: vec![r"v\d+\.\d+\.\d+".into()],
                    ..f()
                },
                vec!["v1.10.0", "v1.2.3"],
            ),
            (
                "regex exclude",
                TagFilter {
                    exclude: vec!["sha-.*".into(), "latest".into()],
                    ..f()
                },
                vec!["1.2", "v1.10.0", "v1.2.3", "v2.0.0-rc.1"],
            ),
            (
                "regex is a full match",
                TagFilter {
                    include: vec!["v1".into()],
                    ..f()
                },
                vec![],
            ),
            (
                "semver range: 1.2 is not semver, rc is a pre-release",
                TagFilter {
                    semver: Some(">=1.2".into()),
                    ..f()
                },
                vec!["v1.10.0", "v1.2.3"],
            ),
            (
                "semver upper bound",
                TagFilter {
                    semver: Some(">=1.4, <2".into()),
                    ..f()
                },
                vec!["v1.10.0"],
            ),
            (
                "semver naming the pre-release",
                TagFilter {
                    semver: Some(">=2.0.0-rc.0".into()),
                    ..f()
                },
                vec!["v2.0.0-rc.1"],
            ),
            (
                "latest 2 by push time",
                TagFilter {
                    latest: Some(2),
                    ..f()
                },
                vec!["latest", "sha-abc123"],
            ),
            (
                "latest 1 among release tags",
                TagFilter {
                    include: vec![r"v\d+\.\d+\.\d+".into()],
                    latest: Some(1),
                    ..f()
                },
                vec!["v1.10.0"],
            ),
            (
                "max age 7 days",
                TagFilter {
                    max_age_days: Some(7),
                    ..f()
                },
                vec!["1.2", "latest", "sha-abc123", "v2.0.0-rc.1"],
            ),
            (
                "untagged on, with max age",
                TagFilter {
                    untagged: true,
                    max_age_days: Some(30),
                    include: vec!["latest".into()],
                    ..f()
                },
                vec!["<untagged 90>", "latest"],
            ),
            (
                "untagged on, latest applies to tagged only",
                TagFilter {
                    untagged: true,
                    latest: Some(1),
                    ..f()
                },
                vec!["<untagged 90>", "<untagged 91>", "latest"],
            ),
        ];
        for (name, filter, want) in cases {
            assert_eq!(selected(filter), want, "{name}");
        }
    }

    #[test]
    fn only_matching_tags_of_an_image_are_kept() {
        let m = TagMatcher::new(&TagFilter {
            include: vec!["v.*".into()],
            ..f()
        })
        .unwrap();
        let images = vec![ListedImage {
            digest: "sha256:1".into(),
            tags: vec!["latest".into(), "v2".into(), "v1".into()],
            pushed_at: None,
            size: None,
            media_type: None,
            archived: false,
        }];
        assert_eq!(m.select(&images, NOW)[0].tags, vec!["v1", "v2"]);
    }

    #[test]
    fn repository_globs() {
        let m = RepositoryMatcher::new(
            &["ml/*".into(), "services/**".into()],
            &["**/scratch".into()],
        )
        .unwrap();
        for (name, want) in [
            ("ml/pytorch", true),
            ("ml/team/pytorch", false),
            ("services/api", true),
            ("services/a/b/c", true),
            ("services/a/scratch", false),
            ("other", false),
        ] {
            assert_eq!(m.matches(name), want, "{name}");
        }
        assert!(RepositoryMatcher::new(&[], &[])
            .unwrap()
            .matches("anything/at/all"));
        assert_eq!(
            RepositoryMatcher::new(&["a/[".into()], &[]).unwrap_err().0,
            "include[0]"
        );
    }
}
