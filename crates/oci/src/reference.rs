//! Image references: `registry/repository[:tag][@digest]`, with Docker Hub normalisation.

use std::fmt;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry name Docker Hub images get when none is written.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A repository in a registry: `registry/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    /// Registry host with optional port, e.g. `123456789012.dkr.ecr.us-east-1.amazonaws.com`.
    pub registry: String,
    /// Repository path, e.g. `ml/pytorch`.
    pub name: String,
}

impl Repository {
    /// The host the registry API is served on (Docker Hub's API host differs from its name).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

/// The host the registry API is served on for a registry name.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// A parsed image reference. At least one of `tag` and `digest` is usually set; a bare repository
/// (neither) is allowed where a whole repository is meant (`copy --all-tags`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The repository.
    pub repository: Repository,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The digest, if any (wins over the tag when pulling).
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `[registry/]name[:tag][@digest]`. A first component with a `.` or `:`, or
    /// `localhost`, is a registry; otherwise Docker Hub is assumed (and `library/` for one-part
    /// names), as docker does.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidReference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(invalid("empty reference"));
        }
        if text.len() > 512 {
            return Err(invalid("longer than 512 characters"));
        }
        if text.contains("://") {
            return Err(invalid(
                "write the reference without a scheme, e.g. registry.example.com/repo:tag",
            ));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(Digest::parse(digest).map_err(|e| invalid(&e.to_string()))?),
            ),
            None => (text, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|reason| invalid(&reason))?;
        }
        let (registry, name) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == DOCKER_HUB_API {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let name = if registry == DOCKER_HUB && !name.contains('/') {
            format!("library/{name}")
        } else {
            name
        };
        validate_registry(&registry).map_err(|reason| invalid(&reason))?;
        validate_repository_name(&name).map_err(|reason| invalid(&reason))?;
        Ok(Reference {
            repository: Repository { registry, name },
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// What to ask the registry for: the digest when known, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// This reference with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// This reference pinned to a digest (the tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            repository: self.repository.clone(),
            tag: self.tag.clone(),
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

/// Checks a tag against the distribution grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let bytes = tag.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 {
        return Err("a tag has 1 to 128 characters".to_string());
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if !word(bytes[0]) || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') {
        return Err(format!("tag {tag:?} may hold only letters, digits, '_', '.' and '-', and not start with '.' or '-'"));
    }
    Ok(())
}

/// Checks a repository name: lowercase path components of `[a-z0-9]` joined by `.`, `_`, `__`
/// or runs of `-`, separated by `/`; at most 256 characters (ECR's limit).
pub fn validate_repository_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("a repository name has 1 to 256 characters".to_string());
    }
    for component in name.split('/') {
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = !b.is_empty()
            && alnum(b[0])
            && alnum(b[b.len() - 1])
            && b.iter()
                .all(|&c| alnum(c) || c == b'.' || c == b'_' || c == b'-')
            && !component.contains("..")
            && !component.contains("___")
            && !component.contains("._")
            && !component.contains("_.");
        if !ok {
            return Err(format!(
                "repository name {name:?}: component {component:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn validate_registry(registry: &str) -> std::result::Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!("registry {registry:?} is not a host name"));
    }
    if let Some(port) = port {
        if port.parse::<u16>().is_err() {
            return Err(format!("registry {registry:?} has a bad port"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parts<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);

    fn parts(r: &Reference) -> Parts<'_> {
        (
            r.repository.registry.as_str(),
            r.repository.name.as_str(),
            r.tag.as_deref(),
            r.digest.as_ref().map(|d| d.as_str()),
        )
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_the_forms_users_write() {
        let cases: &[(&str, Parts)] = &[
            ("ubuntu", ("docker.io", "library/ubuntu", None, None)),
            (
                "ubuntu:22.04",
                ("docker.io", "library/ubuntu", Some("22.04"), None),
            ),
            (
                "bitnami/redis:7",
                ("docker.io", "bitnami/redis", Some("7"), None),
            ),
            (
                "index.docker.io/library/alpine:3",
                ("docker.io", "library/alpine", Some("3"), None),
            ),
            (
                "localhost:5000/a/b:v1",
                ("localhost:5000", "a/b", Some("v1"), None),
            ),
            ("localhost/a", ("localhost", "a", None, None)),
            (
                "127.0.0.1:5000/ml/pytorch:2.3-cuda",
                ("127.0.0.1:5000", "ml/pytorch", Some("2.3-cuda"), None),
            ),
            (
                "111111111111.dkr.ecr.us-east-1.amazonaws.com/services/api:v1.2.3",
                (
                    "111111111111.dkr.ecr.us-east-1.amazonaws.com",
                    "services/api",
                    Some("v1.2.3"),
                    None,
                ),
            ),
        ];
        for (text, want) in cases {
            let r = Reference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parts(&r), *want, "{text}");
        }
        let r = Reference::parse(&format!("r.io:443/x/y:t@{D}")).unwrap();
        assert_eq!(parts(&r), ("r.io:443", "x/y", Some("t"), Some(D)));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("r.io:443/x/y:t@{D}"));
    }

    #[test]
    fn rejects_bad_references_with_a_reason() {
        for bad in [
            "",
            "https://r.io/x:1",
            "r.io/UPPER:1",
            "r.io/x:",
            "r.io/x:-bad",
            "r.io/x@sha256:123",
            "r.io/a//b",
            "r.io/-a",
            "r.io:port/a",
            "r.io/a:tag with space",
        ] {
            match Reference::parse(bad) {
                Err(Error::InvalidReference { reference, .. }) => assert_eq!(reference, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
