//! A job with an OCI image layout on one side (issue 35, the air-gap transfer): the source is a
//! layout to import from (`source.layout`), or the job's one destination is a layout to export
//! into (`destinations[0].layout`). The rules here name every field a layout job cannot use.

use std::fmt;

use super::{Job, Mode, SettingsMode};

/// Longest layout location accepted (a directory path or `s3://BUCKET/PREFIX`).
const MAX_LOCATION_BYTES: usize = 1024;

/// Where a layout is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutLocation {
    /// An absolute local directory (the CLI).
    Dir(String),
    /// An S3 prefix.
    S3(ecr::S3Location),
}

impl LayoutLocation {
    /// Parses `s3://BUCKET[/PREFIX]` or an absolute directory path (`/srv/export`) without
    /// `.` or `..` segments, control characters or `:` (which ends a location in `oci:DIR:REF`).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_LOCATION_BYTES {
            return Err(format!(
                "{} bytes; at most {MAX_LOCATION_BYTES}",
                text.len()
            ));
        }
        if text.starts_with("s3://") {
            return ecr::S3Location::parse(text).map(LayoutLocation::S3);
        }
        if !text.starts_with('/') {
            return Err(format!(
                "{text:?} is neither s3://BUCKET/PREFIX nor an absolute directory (/srv/export)"
            ));
        }
        let bad_segment = text
            .trim_end_matches('/')
            .split('/')
            .skip(1)
            .any(|s| s == "." || s == "..");
        if bad_segment || text.chars().any(|c| c == ':' || c.is_control()) {
            return Err(format!(
                "{text:?}: a directory without '.' or '..' segments, ':' or control characters"
            ));
        }
        // One spelling per directory: no empty segments, no trailing '/'.
        let segments: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        if segments.is_empty() {
            return Err(format!("{text:?}: the root directory is no layout"));
        }
        Ok(LayoutLocation::Dir(format!("/{}", segments.join("/"))))
    }
}

impl fmt::Display for LayoutLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutLocation::Dir(dir) => f.write_str(dir),
            LayoutLocation::S3(at) => write!(f, "{at}"),
        }
    }
}

/// Which side of a job is a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutSide<'a> {
    /// The destination is a layout: images are exported into it.
    Export(&'a str),
    /// The source is a layout: images are imported from it.
    Import(&'a str),
}

impl Job {
    /// The job's layout side, if it has one (a valid job has at most one).
    pub fn layout_side(&self) -> Option<LayoutSide<'_>> {
        if let Some(layout) = &self.source.layout {
            return Some(LayoutSide::Import(layout));
        }
        self.export_destination()
            .map(|(_, layout)| LayoutSide::Export(layout))
    }

    /// The destination that is a layout (an export), with its index, if any.
    pub fn export_destination(&self) -> Option<(usize, &str)> {
        self.destinations
            .iter()
            .enumerate()
            .find_map(|(i, d)| d.layout.as_deref().map(|layout| (i, layout)))
    }

    /// How reports and receipts name the source: its registry, or `oci:` and its layout.
    pub fn source_name(&self) -> String {
        match &self.source.layout {
            Some(layout) => format!("oci:{layout}"),
            None => self.source.registry.clone(),
        }
    }

    /// The field naming the job's layout (`source.layout`, `destinations[i].layout`).
    pub fn layout_field(&self) -> Option<String> {
        if self.source.layout.is_some() {
            return Some("source.layout".into());
        }
        self.export_destination()
            .map(|(i, _)| format!("destinations[{i}].layout"))
    }
}

/// What a field left at its default must be, as `(field, set?)` pairs.
fn unused(at: &str, fields: &[(&str, bool)], problem: &mut impl FnMut(&str, String)) {
    for (field, set) in fields {
        if *set {
            problem(
                &format!("{at}.{field}"),
                "not used with a layout: leave it out".into(),
            );
        }
    }
}

/// `source` when it is a layout: the location, and none of a registry's fields.
pub(super) fn check_layout_source(job: &Job, problem: &mut impl FnMut(&str, String)) {
    let s = &job.source;
    let Some(layout) = &s.layout else {
        return;
    };
    if let Some(digest) = &s.statement_digest {
        if let Err(e) = oci::Digest::parse(digest) {
            problem("source.statementDigest", e.to_string());
        }
    }
    if let Err(e) = LayoutLocation::parse(layout) {
        problem("source.layout", e);
    }
    if !s.registry.is_empty() {
        problem(
            "source.registry",
            "give `registry` or `layout`, not both".into(),
        );
    }
    unused(
        "source",
        &[
            ("roleArn", s.role_arn.is_some()),
            ("externalId", s.external_id.is_some()),
            ("credentialArn", s.credential_arn.is_some()),
            ("pullBudget", s.pull_budget.is_some()),
            ("insecure", s.insecure),
        ],
        problem,
    );
}

/// `destinations[i]` (at `at`) when it is a layout: the location, and none of a registry's
/// fields (names are the source's in a layout: rename on import).
pub(super) fn check_layout_destination(
    at: &str,
    d: &super::Destination,
    problem: &mut impl FnMut(&str, String),
) {
    let Some(layout) = &d.layout else {
        return;
    };
    if let Err(e) = LayoutLocation::parse(layout) {
        problem(&format!("{at}.layout"), e);
    }
    if !d.registry.is_empty() {
        problem(
            &format!("{at}.registry"),
            "give `registry` or `layout`, not both".into(),
        );
    }
    unused(
        at,
        &[
            ("roleArn", d.role_arn.is_some()),
            ("externalId", d.external_id.is_some()),
            ("repositoryPrefix", d.repository_prefix.is_some()),
            ("repositoryMapping", !d.repository_mapping.is_empty()),
            ("kmsKeyMapping", !d.kms_key_mapping.is_empty()),
            ("credentialArn", d.credential_arn.is_some()),
            ("insecure", d.insecure),
        ],
        problem,
    );
}

/// The whole job when a side is a layout: one layout side only, the layout the only
/// destination, and none of what a layout cannot carry or the layout run does not do.
pub(super) fn check_layout_job(job: &Job, problem: &mut impl FnMut(&str, String)) {
    let Some(side) = job.layout_side() else {
        return;
    };
    let exports = job.destinations.iter().any(|d| d.layout.is_some());
    if exports && job.destinations.len() > 1 {
        problem(
            "destinations",
            "a layout is the job's only destination: export in one job, replicate in another"
                .into(),
        );
    }
    if exports && job.source.layout.is_some() {
        problem(
            "source.layout",
            "both sides are layouts: one side must be a registry".into(),
        );
    }
    if job.mode == Mode::Verify {
        problem(
            "mode",
            "a verification compares registries: an import verifies the layout's transfer \
             statement and every digest as it goes"
                .into(),
        );
    }
    let what = match side {
        LayoutSide::Export(_) => "an export",
        LayoutSide::Import(_) => "an import",
    };
    let mut refuse = |field: &str, set: bool, why: &str| {
        if set {
            problem(field, format!("{what} does not take it: {why}"));
        }
    };
    refuse("prune", job.prune, "a layout run never deletes");
    refuse(
        "copyRepositoryPolicy",
        job.copy_repository_policy,
        "a layout carries no repository settings",
    );
    refuse(
        "repositorySettings",
        job.repository_settings == SettingsMode::Mirror,
        "a layout carries no settings to mirror (copy and create make missing repositories \
         with ECR's defaults, none touches none)",
    );
    refuse(
        "referrers",
        !job.referrers,
        "signatures, SBOMs and attestations always travel in a layout (its transfer statement \
         lists them)",
    );
    refuse(
        "platforms",
        !job.platforms.is_empty(),
        "a layout keeps an index whole",
    );
    refuse("imageEvents", job.image_events, "the workflow sends events");
    if matches!(side, LayoutSide::Export(_)) {
        refuse(
            "source.pullBudget",
            job.source.pull_budget.is_some(),
            "it does not meter pulls yet",
        );
        refuse(
            "tags.untagged",
            job.tags.untagged,
            "a layout names images REPOSITORY:TAG",
        );
        for (i, image) in job.images.iter().enumerate() {
            refuse(
                &format!("images[{i}].tag"),
                image.tag.is_none(),
                "a layout names images REPOSITORY:TAG: give the tag",
            );
            refuse(
                &format!("images[{i}].digest"),
                image.digest.is_some(),
                "it reads images by tag: leave the digest out",
            );
        }
    }
    if matches!(side, LayoutSide::Import(_)) {
        // A layout's images are the ref names its statement signs: one is named by its tag
        // (a digest alone could name any manifest the bucket still holds).
        for (i, image) in job.images.iter().enumerate() {
            refuse(
                &format!("images[{i}].tag"),
                image.tag.is_none(),
                "a layout's images are imported by the tag its statement names: give the tag",
            );
        }
        refuse(
            "tags.maxAgeDays",
            job.tags.max_age_days.is_some(),
            "a layout keeps no push times",
        );
        refuse(
            "tags.latest",
            job.tags.latest.is_some(),
            "a layout keeps no push times",
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::Error;

    /// The fields a job's problems name.
    fn problems(job: serde_json::Value) -> Vec<String> {
        let job = Job::from_json(&job.to_string()).unwrap();
        match job.validate() {
            Ok(_) => Vec::new(),
            Err(Error::InvalidInput { problems }) => {
                problems.into_iter().map(|p| p.field).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn locations_are_s3_prefixes_or_absolute_directories() {
        assert!(matches!(
            LayoutLocation::parse("s3://bucket-1/exports/prod"),
            Ok(LayoutLocation::S3(_))
        ));
        for same in ["/srv/export", "/srv/export/", "//srv//export"] {
            assert_eq!(
                LayoutLocation::parse(same).unwrap(),
                LayoutLocation::Dir("/srv/export".into()),
                "{same}"
            );
        }
        for bad in [
            "srv/export",
            "/srv/../etc",
            "/srv/./x",
            "/srv/a:b",
            "/srv/\u{7}",
            "s3://B/x",
            "/",
            "//",
            "https://bucket/x",
            "",
        ] {
            assert!(LayoutLocation::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_export_and_an_import_are_valid_jobs() {
        let export = json!({
            "source": {"registry": "registry.example.com"},
            "destinations": [{"layout": "s3://air-gap/out"}],
            "tags": {"include": ["v.*"], "latest": 3},
        });
        assert_eq!(problems(export.clone()), Vec::<String>::new());
        let job = Job::from_json(&export.to_string()).unwrap();
        assert_eq!(
            job.layout_side(),
            Some(LayoutSide::Export("s3://air-gap/out"))
        );
        let import = json!({
            "source": {"layout": "/srv/in"},
            "destinations": [{"registry": "111111111111.dkr.ecr.eu-west-1.amazonaws.com",
                              "repositoryPrefix": "mirror/"}],
        });
        assert_eq!(problems(import), Vec::<String>::new());
    }

    /// Every one of `fields` is named among the problems `job` has.
    fn assert_named(job: serde_json::Value, fields: &[&str]) {
        let found = problems(job);
        for field in fields {
            assert!(found.iter().any(|f| f == field), "{field} not in {found:?}");
        }
    }

    #[test]
    fn what_a_layout_job_cannot_use_is_named() {
        assert_named(
            json!({
                "source": {"registry": "registry.example.com", "layout": "/srv/in",
                           "roleArn": "arn:aws:iam::111111111111:role/r"},
                "destinations": [{"registry": "other.example.com"}],
                "prune": true,
                "tags": {"maxAgeDays": 3},
            }),
            &[
                "source.registry",
                "source.roleArn",
                "prune",
                "tags.maxAgeDays",
            ],
        );
        assert_named(
            json!({
                "source": {"registry": "registry.example.com"},
                "destinations": [{"layout": "/srv/out", "repositoryPrefix": "x/"},
                                 {"registry": "other.example.com"}],
                "images": [{"repository": "app", "digest": format!("sha256:{}", "a".repeat(64))}],
                "referrers": false,
            }),
            &[
                "destinations",
                "destinations[0].repositoryPrefix",
                "images[0].tag",
                "images[0].digest",
                "referrers",
            ],
        );
        assert_named(
            json!({
                "source": {"layout": "/srv/in"},
                "destinations": [{"layout": "/srv/out"}],
            }),
            &["source.layout"],
        );
    }

    #[test]
    fn an_import_names_images_by_tag_and_pins_only_a_layouts_statement() {
        let to = json!([{"registry": "other.example.com"}]);
        assert_named(
            json!({
                "source": {"layout": "/srv/in"},
                "destinations": to,
                "images": [{"repository": "app", "digest": format!("sha256:{}", "a".repeat(64))}],
            }),
            &["images[0].tag"],
        );
        assert_named(
            json!({
                "source": {"layout": "/srv/in", "statementDigest": "sha256:short"},
                "destinations": to,
            }),
            &["source.statementDigest"],
        );
        assert_named(
            json!({
                "source": {"registry": "registry.example.com",
                           "statementDigest": format!("sha256:{}", "a".repeat(64))},
                "destinations": to,
            }),
            &["source.statementDigest"],
        );
        let pinned = json!({
            "source": {"layout": "/srv/in", "statementDigest": format!("sha256:{}", "a".repeat(64))},
            "destinations": to,
            "images": [{"repository": "app", "tag": "v1"}],
        });
        assert_eq!(problems(pinned), Vec::<String>::new());
    }
}
