//! The layouts a deployment lets jobs export into or import from (issue 35): exact locations,
//! each with what it may be used for, the account that must own its bucket and the KMS key
//! its objects are written with. A job names only the location; the rest is the deployment's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::FieldProblem;
use crate::job::{Job, LayoutLocation};

/// One allowed layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedLayout {
    /// `s3://BUCKET/PREFIX` (or, for the CLI, an absolute directory): a job's `layout` must be
    /// exactly this place (a trailing `/` aside).
    pub location: String,
    /// Jobs may export into it (default false).
    #[serde(default)]
    pub export: bool,
    /// Jobs may import from it (default false).
    #[serde(default)]
    pub import: bool,
    /// The account that must own the bucket (S3's `ExpectedBucketOwner` on every call);
    /// default: the account the run's credentials belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_owner: Option<String>,
    /// Exported objects are written with SSE-KMS under this key; default: the bucket's own
    /// encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// The trust policy every image exported into or imported from it must pass, whether or not
    /// the job asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<String>,
    /// (Import) the exporting deployment's statement key (PEM public key, P-256): an import from
    /// here verifies the layout's transfer statement with it, always (no unverified import, and
    /// no other key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_key: Option<String>,
}

impl AllowedLayout {
    /// Whether this entry is the place `location` names.
    fn is(&self, location: &LayoutLocation) -> bool {
        LayoutLocation::parse(&self.location).is_ok_and(|own| &own == location)
    }
}

/// The entry of `layouts` for `location`, if any.
pub fn find<'a>(layouts: &'a [AllowedLayout], location: &str) -> Option<&'a AllowedLayout> {
    let location = LayoutLocation::parse(location).ok()?;
    layouts.iter().find(|l| l.is(&location))
}

/// Every entry well formed: a location, 12-digit owner, KMS key ARN, some use, a trust policy
/// among `policies`, a P-256 transfer key.
pub(super) fn validate(
    layouts: &[AllowedLayout],
    policies: &[&str],
    problem: &mut impl FnMut(&str, String),
) {
    for (i, entry) in layouts.iter().enumerate() {
        let at = format!("layouts[{i}]");
        if let Some(name) = &entry.require_signature {
            if !policies.contains(&name.as_str()) {
                problem(
                    &format!("{at}.requireSignature"),
                    format!("{name:?} is not one of the deployment's trustPolicies"),
                );
            }
        }
        if let Some(pem) = &entry.transfer_key {
            // The same P-256 PEM reading as a trust policy's keys (the statement's key type
            // sits above the allowlist).
            if let Err((_, e)) = crate::keys::SignatureKeys::parse(std::slice::from_ref(pem)) {
                problem(&format!("{at}.transferKey"), e);
            }
            if !entry.import {
                problem(
                    &format!("{at}.transferKey"),
                    "checks imports, and this layout allows none".into(),
                );
            }
        }
        if let Err(e) = LayoutLocation::parse(&entry.location) {
            problem(&format!("{at}.location"), e);
        }
        if let Some(owner) = &entry.bucket_owner {
            if owner.len() != 12 || !owner.bytes().all(|b| b.is_ascii_digit()) {
                problem(
                    &format!("{at}.bucketOwner"),
                    format!("{owner:?}: an AWS account is 12 digits"),
                );
            }
        }
        if let Some(key) = &entry.kms_key {
            if let Err(e) = ecr::KmsKeyArn::parse(key) {
                problem(&format!("{at}.kmsKey"), e.to_string());
            }
        }
        if !entry.export && !entry.import {
            problem(
                &at,
                "allows neither export nor import: set \"export\": true, \"import\": true or both"
                    .into(),
            );
        }
        let same = LayoutLocation::parse(&entry.location).ok();
        if let Some(j) = layouts[..i]
            .iter()
            .position(|earlier| same.as_ref().is_some_and(|s| earlier.is(s)))
        {
            problem(
                &format!("{at}.location"),
                format!("the same place as layouts[{j}]: one entry per layout"),
            );
        }
    }
}

/// A job's layout must be an entry of `layouts` allowing that use.
pub(super) fn check(layouts: &[AllowedLayout], job: &Job, problems: &mut Vec<FieldProblem>) {
    let Some(field) = job.layout_field() else {
        return;
    };
    let (location, use_, allowed): (&str, &str, fn(&AllowedLayout) -> bool) =
        match job.layout_side() {
            Some(crate::job::LayoutSide::Import(at)) => (at, "import", |l| l.import),
            Some(crate::job::LayoutSide::Export(at)) => (at, "export", |l| l.export),
            None => return,
        };
    let problem = match find(layouts, location) {
        Some(entry) if allowed(entry) => return,
        Some(_) => format!("{location:?}: this deployment does not let jobs {use_} here"),
        None => format!(
            "{location:?} is not one of this deployment's layouts ({})",
            if layouts.is_empty() {
                "it has none".to_string()
            } else {
                layouts
                    .iter()
                    .map(|l| l.location.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    };
    problems.push(FieldProblem { field, problem });
}

#[cfg(test)]
mod tests {
    use crate::allowlist::Allowlist;
    use crate::error::Error;

    #[test]
    fn every_layout_entry_problem_is_named() {
        let text = serde_json::json!({"layouts": [
            {"location": "s3://air-gap/out", "export": true, "bucketOwner": "12345",
             "kmsKey": "alias/mine"},
            {"location": "s3://air-gap/out/", "import": true},
            {"location": "relative/dir"},
        ]})
        .to_string();
        let Err(Error::InvalidInput { problems }) = Allowlist::from_json(&text, "FILE") else {
            panic!("accepted");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for field in [
            "FILE: layouts[0].bucketOwner",
            "FILE: layouts[0].kmsKey",
            "FILE: layouts[1].location",
            "FILE: layouts[2].location",
            "FILE: layouts[2]",
        ] {
            assert!(fields.contains(&field), "{field} not in {fields:?}");
        }
    }
}
