//! Credentials and authentication: Basic, Bearer via the `WWW-Authenticate` challenge, a given
//! Basic token (how ECR tokens arrive), and docker `config.json` files.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Credentials for one registry. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credentials: anonymous pulls, or a Bearer token obtained without login.
    Anonymous,
    /// Username and password.
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A ready `base64(user:password)` token, as ECR's GetAuthorizationToken returns it.
    BasicToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::BasicToken(_) => f.write_str("BasicToken(<redacted>)"),
        }
    }
}

impl Credential {
    /// Parses `user:password` as written on a command line.
    pub fn from_user_pass(text: &str) -> Result<Self> {
        match text.split_once(':') {
            Some((user, pass)) if !user.is_empty() => Ok(Credential::Basic {
                username: user.to_string(),
                password: pass.to_string(),
            }),
            _ => Err(Error::DockerConfig {
                path: "<command line>".into(),
                reason: "credentials must be written USER:PASSWORD".into(),
            }),
        }
    }

    /// The `Authorization: Basic ...` value, if this credential has one.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Anonymous => None,
            Credential::Basic { username, password } => Some(format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{password}"))
            )),
            Credential::BasicToken(token) => Some(format!("Basic {token}")),
        }
    }
}

/// Where credentials come from: explicit per-registry entries first, then a docker config file.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    by_registry: HashMap<String, Credential>,
}

impl CredentialStore {
    /// An empty store: everything anonymous.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the credential for a registry (host[:port]), replacing any from a config file.
    pub fn insert(&mut self, registry: &str, credential: Credential) {
        self.by_registry
            .insert(normalise_registry_key(registry), credential);
    }

    /// The credential for a registry, `Anonymous` if none is known.
    pub fn get(&self, registry: &str) -> Credential {
        self.by_registry
            .get(registry)
            .cloned()
            .unwrap_or(Credential::Anonymous)
    }

    /// Adds every `auths` entry of a docker `config.json` that has no explicit entry yet.
    /// `credsStore` and `credHelpers` (external programs) are not run: pass such credentials
    /// explicitly.
    pub fn load_docker_config(&mut self, path: &Path) -> Result<()> {
        let err = |reason: String| Error::DockerConfig {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let config: DockerConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("not a docker config: {e}")))?;
        for (key, entry) in config.auths {
            let registry = normalise_registry_key(&key);
            if self.by_registry.contains_key(&registry) {
                continue;
            }
            let credential = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let decoded = BASE64
                        .decode(auth.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| {
                            err(format!("auths.{key}.auth is not base64 of user:password"))
                        })?;
                    Credential::from_user_pass(&decoded).map_err(|_| {
                        err(format!("auths.{key}.auth is not base64 of user:password"))
                    })?
                }
                (_, Some(username), Some(password)) => Credential::Basic { username, password },
                _ => continue,
            };
            self.by_registry.insert(registry, credential);
        }
        Ok(())
    }

    /// The docker config file users expect to be read: `$REGISTRY_AUTH_FILE`, else
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, if it exists.
    pub fn default_docker_config_path() -> Option<PathBuf> {
        let candidates = [
            std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from),
            std::env::var_os("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json")),
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
        ];
        candidates.into_iter().flatten().find(|p| p.is_file())
    }
}

/// `https://index.docker.io/v1/` and friends become `docker.io`; schemes and paths are dropped.
fn normalise_registry_key(key: &str) -> String {
    let without_scheme = key.split_once("://").map(|(_, r)| r).unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// Service name to ask the token for.
        service: Option<String>,
        /// Scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses the header value; `registry` names the registry in errors.
    pub fn parse(header: &str, registry: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadChallenge {
            registry: registry.to_string(),
            header: header.to_string(),
            reason: reason.to_string(),
        };
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        let params = parse_params(rest).ok_or_else(|| bad("malformed parameters"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Ok(Challenge::Basic),
            "bearer" => {
                let realm = params
                    .get("realm")
                    .cloned()
                    .ok_or_else(|| bad("Bearer challenge without realm"))?;
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return Err(bad("realm is not an http(s) URL"));
                }
                Ok(Challenge::Bearer {
                    realm,
                    service: params.get("service").cloned(),
                    scope: params.get("scope").cloned(),
                })
            }
            _ => Err(bad("unknown scheme (expected Basic or Bearer)")),
        }
    }
}

/// Parses `k="v", k2=v2` auth-params (quoted strings may hold commas and `\"`).
fn parse_params(text: &str) -> Option<HashMap<String, String>> {
    let mut params = HashMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(params);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            if c == ',' || c.is_whitespace() {
                return None;
            }
            key.push(c);
            chars.next();
        }
        chars.next()?; // '='
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if key.is_empty() {
            return None;
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges_with_commas_in_quotes() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
            "r",
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#, "r").unwrap(),
            Challenge::Basic
        );
    }

    #[test]
    fn rejects_bad_challenges() {
        for bad in [
            "Bearer service=x",
            "Digest realm=\"x\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=\"ftp://x\"",
        ] {
            assert!(
                matches!(Challenge::parse(bad, "r"), Err(Error::BadChallenge { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::BasicToken("c2VjcmV0".into())).contains("c2VjcmV0"));
    }

    #[test]
    fn reads_docker_config_auths() {
        let dir = std::env::temp_dir().join(format!("oci-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let auth = BASE64.encode("alice:s3cret");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"r.io:5000":{{"username":"bob","password":"pw"}}}},"credsStore":"desktop"}}"#),
        )
        .unwrap();
        let mut store = CredentialStore::new();
        store.insert("r.io:5000", Credential::BasicToken("explicit".into()));
        store.load_docker_config(&path).unwrap();
        assert_eq!(
            store.get("docker.io"),
            Credential::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            }
        );
        assert_eq!(
            store.get("r.io:5000"),
            Credential::BasicToken("explicit".into())
        );
        assert_eq!(store.get("other"), Credential::Anonymous);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            store.load_docker_config(&path),
            Err(Error::DockerConfig { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
