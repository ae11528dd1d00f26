//! Platform subsets (`platforms` in the job): an index is copied with only the children of the
//! platforms asked for. The subset is a new manifest (a new digest) that keeps the source's
//! fields, annotations and order, each kept child descriptor byte for byte; an index whose
//! children are all wanted is copied unchanged (same digest).
//!
//! Matching follows the OCI image index's `platform` (`os`, `architecture`, `variant`): a
//! platform named without a variant matches every variant of its architecture; one named with a
//! variant matches that variant, where a child without one has its architecture's default
//! (`arm64` is `v8`, `arm` is `v7`, as containerd normalises them). Docker's attestation
//! manifests (`vnd.docker.reference.type: attestation-manifest`) follow the child they describe.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use oci::Manifest;

/// Platforms a job may name at most.
pub const MAX_PLATFORMS: usize = 32;

/// One platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`, `windows`).
    pub os: String,
    /// CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// Variant (`v8`), when named.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/architecture[/variant]` (lowercase letters, digits, `.`, `_`, `-`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |p: &&str| {
            !p.is_empty()
                && p.len() <= 64
                && p.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(format!(
                "{text:?} is not a platform: write os/architecture[/variant] in lowercase, \
                 e.g. linux/amd64 or linux/arm64/v8"
            ));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// Whether a child descriptor's platform is this one.
    fn matches(&self, child: &ChildPlatform) -> bool {
        if child.os != self.os || child.architecture != self.architecture {
            return false;
        }
        let Some(wanted) = &self.variant else {
            return true;
        };
        let default = match child.architecture.as_str() {
            "arm64" => Some("v8"),
            "arm" => Some("v7"),
            _ => None,
        };
        child.variant.as_deref().or(default) == Some(wanted.as_str())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

/// The platforms a job asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformFilter {
    wanted: Vec<Platform>,
}

/// What a platform filter makes of an image.
#[derive(Debug, Clone)]
pub enum Subset {
    /// Copied as it is: not an index, or every child is wanted.
    Unchanged,
    /// Copied as this new index (its children a part of the source's).
    Index(Manifest),
    /// No child is for a platform asked: not copied (the reason names what it offers).
    NoneWanted(String),
}

#[derive(Deserialize, Default)]
struct ChildPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Child {
    digest: String,
    #[serde(default)]
    platform: Option<ChildPlatform>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// A JSON object's members in the order written, each value as its raw text.
struct OrderedObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

impl PlatformFilter {
    /// The job's `platforms`; `None` when it names none. An error names the entry's index.
    pub fn parse(platforms: &[String]) -> Result<Option<Self>, (usize, String)> {
        if platforms.is_empty() {
            return Ok(None);
        }
        let wanted = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| Platform::parse(p).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(PlatformFilter { wanted }))
    }

    /// What the filter makes of `manifest` (read from `url`, for messages).
    pub fn subset(&self, manifest: &Manifest, url: &str) -> oci::Result<Subset> {
        if !oci::manifest::is_index_type(&manifest.media_type) {
            return Ok(Subset::Unchanged);
        }
        let invalid = |reason: String| oci::Error::InvalidManifest {
            url: url.to_string(),
            reason,
        };
        let text =
            std::str::from_utf8(&manifest.bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        let OrderedObject(members) =
            serde_json::from_str(text).map_err(|e| invalid(format!("not a JSON object: {e}")))?;
        let Some(at) = members.iter().position(|(k, _)| k == "manifests") else {
            return Err(invalid("an index without `manifests`".into()));
        };
        let raw_children: Vec<Box<RawValue>> = serde_json::from_str(members[at].1.get())
            .map_err(|e| invalid(format!("`manifests` is not an array: {e}")))?;
        let children: Vec<Child> = raw_children
            .iter()
            .map(|raw| serde_json::from_str(raw.get()))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(format!("a child descriptor is not usable: {e}")))?;
        let wanted = |child: &Child| {
            child
                .platform
                .as_ref()
                .is_some_and(|p| self.wanted.iter().any(|w| w.matches(p)))
        };
        let kept_images: Vec<&str> = children
            .iter()
            .filter(|c| wanted(c))
            .map(|c| c.digest.as_str())
            .collect();
        if kept_images.is_empty() {
            let offered: Vec<String> = children
                .iter()
                .filter_map(|c| c.platform.as_ref())
                .filter(|p| !p.os.is_empty() && p.os != "unknown")
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            return Ok(Subset::NoneWanted(format!(
                "no child of the index is for the platforms the job names ({}); it offers {}",
                self.wanted
                    .iter()
                    .map(Platform::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                if offered.is_empty() {
                    "none named".to_string()
                } else {
                    offered.join(", ")
                }
            )));
        }
        let keep: Vec<bool> = children
            .iter()
            .map(|c| {
                wanted(c)
                    || (c.annotations.get(REFERENCE_TYPE).map(String::as_str)
                        == Some("attestation-manifest")
                        && c.annotations
                            .get(REFERENCE_DIGEST)
                            .is_some_and(|d| kept_images.contains(&d.as_str())))
            })
            .collect();
        if keep.iter().all(|k| *k) {
            return Ok(Subset::Unchanged);
        }
        let kept: Vec<&str> = raw_children
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(raw, _)| raw.get())
            .collect();
        let mut out = String::with_capacity(text.len());
        out.push('{');
        for (i, (key, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(key).map_err(|e| invalid(e.to_string()))?);
            out.push(':');
            if i == at {
                out.push('[');
                out.push_str(&kept.join(","));
                out.push(']');
            } else {
                out.push_str(value.get());
            }
        }
        out.push('}');
        let subset = Manifest::from_bytes(out.into(), Some(&manifest.media_type), url)?;
        Ok(Subset::Index(subset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(children: &[(&str, &str)]) -> Manifest {
        let manifests: Vec<String> = children
            .iter()
            .enumerate()
            .map(|(i, (platform, annotations))| {
                format!(
                    r#"{{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:{}", "size": 10{platform}{annotations}}}"#,
                    &format!("{i:x}").repeat(64)[..64]
                )
            })
            .collect();
        let text = format!(
            r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [{}], "annotations": {{"org.opencontainers.image.source": "https://x"}}}}"#,
            manifests.join(",\n    ")
        );
        Manifest::from_bytes(text.into(), None, "test").unwrap()
    }

    fn filter(platforms: &[&str]) -> PlatformFilter {
        let list: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
        PlatformFilter::parse(&list).unwrap().unwrap()
    }

    const AMD64: &str = r#", "platform": {"os": "linux", "architecture": "amd64"}"#;
    const ARM64: &str =
        r#", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}"#;
    const ARM64_BARE: &str = r#", "platform": {"architecture": "arm64", "os": "linux"}"#;
    const ARM_V6: &str = r#", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}"#;

    #[test]
    fn a_subset_keeps_the_fields_order_and_each_kept_descriptor_byte_for_byte() {
        let source = index(&[(AMD64, ""), (ARM64, ""), (ARM_V6, "")]);
        let Subset::Index(subset) = filter(&["linux/amd64", "linux/arm/v6"])
            .subset(&source, "test")
            .unwrap()
        else {
            panic!("not a subset")
        };
        let text = std::str::from_utf8(&subset.bytes).unwrap();
        assert!(text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType""#), "{text}");
        assert!(text.contains(AMD64) && text.contains(ARM_V6) && !text.contains("arm64"));
        assert!(
            text.ends_with(r#""annotations":{"org.opencontainers.image.source": "https://x"}}"#),
            "{text}"
        );
        assert_ne!(subset.digest, source.digest);
        assert_eq!(subset.media_type, source.media_type);
        // The same subset twice is the same manifest: a later run finds it present.
        let Subset::Index(again) = filter(&["linux/arm/v6", "linux/amd64"])
            .subset(&source, "test")
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(again.digest, subset.digest);
    }

    #[test]
    fn variants_match_as_containerd_normalises_them() {
        let source = index(&[(AMD64, ""), (ARM64_BARE, ""), (ARM_V6, "")]);
        for (wanted, kept) in [
            ("linux/arm64", 1),
            ("linux/arm64/v8", 1),
            ("linux/arm64/v9", 0),
            ("linux/arm", 1),
            ("linux/arm/v7", 0),
        ] {
            let subset = filter(&[wanted]).subset(&source, "test").unwrap();
            match (subset, kept) {
                (Subset::Index(m), 1) => {
                    let content = m.content("test").unwrap();
                    let oci::ManifestContent::Index { manifests } = content else {
                        panic!()
                    };
                    assert_eq!(manifests.len(), 1, "{wanted}");
                }
                (Subset::NoneWanted(reason), 0) => {
                    assert!(
                        reason.contains("it offers linux/amd64, linux/arm64, linux/arm/v6"),
                        "{reason}"
                    );
                }
                (other, _) => panic!("{wanted}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_child_wanted_or_no_index_is_copied_unchanged() {
        let source = index(&[(AMD64, ""), (ARM64, "")]);
        assert!(matches!(
            filter(&["linux/amd64", "linux/arm64"])
                .subset(&source, "t")
                .unwrap(),
            Subset::Unchanged
        ));
        let image = Manifest::from_bytes(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"a","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#.into(),
            None,
            "t",
        )
        .unwrap();
        assert!(matches!(
            filter(&["linux/s390x"]).subset(&image, "t").unwrap(),
            Subset::Unchanged
        ));
    }

    #[test]
    fn attestations_follow_the_child_they_describe() {
        let attest = |digest: &str| {
            format!(
                r#", "platform": {{"os": "unknown", "architecture": "unknown"}}, "annotations": {{"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": "sha256:{}"}}"#,
                digest.repeat(64)
            )
        };
        let (for_amd64, for_arm64) = (attest("0"), attest("1"));
        let source = index(&[(AMD64, ""), (ARM64, ""), ("", &for_amd64), ("", &for_arm64)]);
        let Subset::Index(subset) = filter(&["linux/amd64"]).subset(&source, "t").unwrap() else {
            panic!()
        };
        let text = std::str::from_utf8(&subset.bytes).unwrap();
        assert!(
            text.contains(&for_amd64) && !text.contains(&for_arm64),
            "{text}"
        );
    }

    #[test]
    fn platforms_are_parsed_with_the_entry_named() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        for bad in [
            "linux",
            "Linux/amd64",
            "linux/amd64/v8/x",
            "linux//v8",
            "linux/amd 64",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let list = vec!["linux/amd64".to_string(), "amd64".to_string()];
        assert_eq!(PlatformFilter::parse(&list).unwrap_err().0, 1);
        assert_eq!(PlatformFilter::parse(&[]).unwrap(), None);
    }
}
