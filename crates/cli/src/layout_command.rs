//! `copy` to and from an OCI image layout directory: `oci:DIR[:REF]` as SRC or DST (issue 35,
//! the air-gap transfer's first part).

use std::process::ExitCode;

use anyhow::{bail, Context};
use oci::layout::{split_ref_name, DirLayout};
use oci::Reference;
use replication::layout::{export_image, import_image};

use crate::copy_command::{print_report, CopyArgs};

/// The prefix naming a layout directory, as skopeo writes it.
const PREFIX: &str = "oci:";

/// `oci:DIR[:REF]` split into the directory and the ref name (the first `:` after the
/// directory ends it, as skopeo reads it: `oci:/srv/export:team/app:v1`).
pub fn parse(text: &str) -> Option<(String, Option<String>)> {
    let rest = text.strip_prefix(PREFIX)?;
    Some(match rest.split_once(':') {
        Some((dir, name)) if !name.is_empty() => (dir.to_string(), Some(name.to_string())),
        Some((dir, _)) => (dir.to_string(), None),
        None => (rest.to_string(), None),
    })
}

/// Whether a copy has a layout on either side.
pub fn involved(args: &CopyArgs) -> bool {
    args.source.starts_with(PREFIX) || args.target.starts_with(PREFIX)
}

/// Runs `copy` with a layout on one side.
pub async fn run(args: CopyArgs) -> anyhow::Result<ExitCode> {
    if args.all_tags {
        bail!("--all-tags does not take an OCI layout yet: copy one image at a time (oci:DIR:REF)");
    }
    let parallel = args.parallel as usize;
    let report = match (parse(&args.source), parse(&args.target)) {
        (Some(_), Some(_)) => {
            bail!("both SRC and DST are OCI layouts: one side must be a registry")
        }
        (None, Some((dir, name))) => {
            let source = Reference::parse(&args.source)?;
            let name = match name {
                Some(name) => name,
                None => default_ref_name(&source).with_context(|| {
                    format!(
                        "{}: name the image in the layout: oci:{dir}:REPOSITORY:TAG",
                        args.target
                    )
                })?,
            };
            let (client, _) = args.registries.clients(&source, &source)?;
            export_image(&client, &source, &DirLayout::new(&dir), &name, parallel).await?
        }
        (Some((dir, name)), None) => {
            let name = name.with_context(|| {
                format!("{}: name the image to import: oci:{dir}:REF (REPOSITORY:TAG as export writes it)", args.source)
            })?;
            let target = target_of(&args.target, &name)?;
            let (_, client) = args.registries.clients(&target, &target)?;
            import_image(&DirLayout::new(&dir), &name, &client, &target, parallel).await?
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

    #[test]
    fn parses_dir_and_ref_name_at_the_first_colon() {
        assert_eq!(
            parse("oci:/srv/export:team/app:v1"),
            Some(("/srv/export".into(), Some("team/app:v1".into())))
        );
        assert_eq!(parse("oci:/srv/export"), Some(("/srv/export".into(), None)));
        assert_eq!(parse("registry.example/app:v1"), None);
    }
}
