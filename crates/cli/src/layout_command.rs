//! `copy` to and from an OCI image layout: `oci:DIR[:REF]` (a directory) or
//! `oci:s3://BUCKET/PREFIX[:REF]` (an S3 prefix) as SRC or DST (issue 35, the air-gap transfer).

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use ecr::{S3Layout, S3LayoutOptions, S3Location};
use oci::layout::{split_ref_name, DirLayout, LayoutStore};
use oci::Reference;

use crate::copy_command::{print_report, CopyArgs};

/// The prefix naming a layout, as skopeo writes it.
const PREFIX: &str = "oci:";
/// What starts an S3 layout after [`PREFIX`].
const S3_SCHEME: &str = "s3://";

/// Options of a layout in S3.
#[derive(Args, Debug, Default)]
pub struct LayoutArgs {
    /// Send AWS calls of an oci:s3:// layout here (moto, LocalStack); also `AWS_ENDPOINT_URL`.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    #[command(flatten)]
    pub s3: S3LayoutArgs,
}

/// The bucket owner and KMS key of a layout in S3 (`copy`, and a job's layout when the
/// allowlist does not set them).
#[derive(Args, Debug, Default, Clone)]
pub struct S3LayoutArgs {
    /// Write an oci:s3:// layout's objects with SSE-KMS under this key
    /// (arn:PARTITION:kms:REGION:ACCOUNT:key/ID). Default: the bucket's own encryption.
    #[arg(long, value_name = "KEY_ARN", env = "ECR_REPLICATOR_LAYOUT_KMS_KEY")]
    pub layout_kms_key: Option<String>,
    /// Use an oci:s3:// layout only in a bucket this account owns (S3's ExpectedBucketOwner;
    /// default: the account of the credentials in use, from STS GetCallerIdentity).
    #[arg(
        long,
        value_name = "ACCOUNT",
        env = "ECR_REPLICATOR_LAYOUT_BUCKET_OWNER"
    )]
    pub layout_bucket_owner: Option<String>,
}

/// Where a layout is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A local directory.
    Dir(String),
    /// An S3 prefix.
    S3(S3Location),
}

/// `oci:DIR[:REF]` or `oci:s3://BUCKET/PREFIX[:REF]` split into the layout and the ref name:
/// the first `:` after the directory (after `s3://` for S3, whose prefix holds none) ends the
/// location, as skopeo reads `oci:/srv/export:team/app:v1`; ref names hold `:`.
pub fn parse(text: &str) -> Option<anyhow::Result<(Place, Option<String>)>> {
    let rest = text.strip_prefix(PREFIX)?;
    let (s3, rest) = match rest.strip_prefix(S3_SCHEME) {
        Some(after) => (true, after),
        None => (false, rest),
    };
    let (location, name) = match rest.split_once(':') {
        Some((location, name)) if !name.is_empty() => (location, Some(name.to_string())),
        Some((location, _)) => (location, None),
        None => (rest, None),
    };
    if !s3 {
        return Some(Ok((Place::Dir(location.to_string()), name)));
    }
    Some(
        S3Location::parse(&format!("{S3_SCHEME}{location}"))
            .map(|at| (Place::S3(at), name))
            .map_err(|problem| anyhow::anyhow!("{text}: {problem}")),
    )
}

/// Whether a copy has a layout on either side.
pub fn involved(args: &CopyArgs) -> bool {
    args.source.starts_with(PREFIX) || args.target.starts_with(PREFIX)
}

/// Opens the layout `place` names.
pub async fn open(place: &Place, args: &LayoutArgs) -> anyhow::Result<Box<dyn LayoutStore>> {
    let at = match place {
        Place::Dir(dir) => return Ok(Box::new(DirLayout::new(dir))),
        Place::S3(at) => at.clone(),
    };
    let settings = ecr::AwsSettings {
        endpoint_url: args.aws_endpoint_url.clone().filter(|u| !u.is_empty()),
        ..ecr::AwsSettings::from_env()
    };
    let kms_key = match args
        .s3
        .layout_kms_key
        .as_deref()
        .filter(|k| !k.trim().is_empty())
    {
        Some(arn) => Some(
            ecr::KmsKeyArn::parse(arn)
                .map_err(|problem| anyhow::anyhow!("--layout-kms-key: {problem}"))?,
        ),
        None => None,
    };
    let owner = match args.s3.layout_bucket_owner.as_deref() {
        Some(account) => {
            if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
                bail!("--layout-bucket-owner {account:?}: an AWS account is 12 digits");
            }
            account.to_string()
        }
        None => ecr::own_account(&settings).await.with_context(|| {
            format!("{at}: finding the account that must own the bucket (or give --layout-bucket-owner)")
        })?,
    };
    let options = S3LayoutOptions {
        expected_owner: Some(owner),
        kms_key,
        part_bytes: None,
        copy_part_bytes: None,
    };
    Ok(Box::new(
        S3Layout::new(&settings, &ecr::own_region(), at, options).await,
    ))
}

/// Runs `copy` with a layout on one side.
pub async fn run(args: CopyArgs) -> anyhow::Result<ExitCode> {
    if args.all_tags {
        bail!("--all-tags does not take an OCI layout yet: copy one image at a time (oci:DIR:REF)");
    }
    let parallel = args.parallel as usize;
    let source = parse(&args.source).transpose()?;
    let target = parse(&args.target).transpose()?;
    let report = match (source, target) {
        (Some(_), Some(_)) => {
            bail!("both SRC and DST are OCI layouts: one side must be a registry")
        }
        (None, Some((place, name))) => {
            let source = Reference::parse(&args.source)?;
            let name = match name {
                Some(name) => name,
                None => default_ref_name(&source).with_context(|| {
                    format!(
                        "{}: name the image in the layout: {}:REPOSITORY:TAG",
                        args.target, args.target
                    )
                })?,
            };
            let (client, _) = args.registries.clients(&source, &source)?;
            let store = open(&place, &args.layout).await?;
            crate::transfer_args::export(
                &args.transfer,
                args.layout.aws_endpoint_url.as_deref(),
                &client,
                &source,
                store.as_ref(),
                &name,
                parallel,
            )
            .await?
        }
        (Some((place, name)), None) => {
            let name = name.with_context(|| {
                format!(
                    "{}: name the image to import: {}:REF (REPOSITORY:TAG as export writes it)",
                    args.source, args.source
                )
            })?;
            let target = target_of(&args.target, &name)?;
            let (_, client) = args.registries.clients(&target, &target)?;
            let store = open(&place, &args.layout).await?;
            crate::transfer_args::import(
                &args.transfer,
                store.as_ref(),
                &name,
                &client,
                &target,
                parallel,
                args.layout.aws_endpoint_url.as_deref(),
            )
            .await?
        }
        (None, None) => bail!("neither SRC nor DST is an OCI layout (oci:DIR:REF)"),
    };
    print_report(&report, args.output)?;
    Ok(ExitCode::SUCCESS)
}

/// `<repository>:<tag>`: the repository's name without its registry, so the layout can hold
/// several repositories and be imported into any registry.
fn default_ref_name(source: &Reference) -> anyhow::Result<String> {
    match &source.tag {
        Some(tag) => Ok(format!("{}:{tag}", source.repository.name)),
        None => bail!("the source has no tag to name it by"),
    }
}

/// The destination: as given, taking the ref name's tag when it names none.
fn target_of(text: &str, ref_name: &str) -> anyhow::Result<Reference> {
    let target = Reference::parse(text)?;
    if target.tag.is_some() || target.digest.is_some() {
        return Ok(target);
    }
    let (_, tag) = split_ref_name(ref_name)
        .map_err(|e| anyhow::anyhow!("ref name {ref_name:?} is not REPOSITORY:TAG or TAG: {e}"))?;
    Ok(target.with_tag(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Place, Option<String>) {
        parse(text).expect("a layout").expect("valid")
    }

    #[test]
    fn parses_dir_and_ref_name_at_the_first_colon() {
        assert_eq!(
            parsed("oci:/srv/export:team/app:v1"),
            (Place::Dir("/srv/export".into()), Some("team/app:v1".into()))
        );
        assert_eq!(
            parsed("oci:/srv/export"),
            (Place::Dir("/srv/export".into()), None)
        );
        assert!(parse("registry.example/app:v1").is_none());
    }

    #[test]
    fn parses_an_s3_layout_at_the_first_colon_after_the_scheme() {
        let at = |bucket: &str, prefix: &str| {
            Place::S3(S3Location {
                bucket: bucket.into(),
                prefix: prefix.into(),
            })
        };
        assert_eq!(
            parsed("oci:s3://air-gap/exports/q4:team/app:v1"),
            (at("air-gap", "exports/q4"), Some("team/app:v1".into()))
        );
        assert_eq!(
            parsed("oci:s3://air-gap/exports/"),
            (at("air-gap", "exports"), None)
        );
        assert_eq!(
            parsed("oci:s3://air-gap:v1"),
            (at("air-gap", ""), Some("v1".into()))
        );
        assert!(parse("oci:s3://Air_Gap/x").expect("a layout").is_err());
    }
}
