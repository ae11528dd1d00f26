//! Trust policies: who may sign what a run promotes. A policy is named in the deployment
//! (`trustPolicies` of the allowlist, from the CDK config or the CLI's `--allowlist`); a job
//! refers to one by name (`"requireSignature": {"policy": "release"}`) and a destination may
//! require one for everything written there. Keys and identities written inline in a job are a
//! caller's choice: refused unless the deployment allows them, and never certified by a receipt.
//!
//! What admitted an image travels from enumerate-images to put-manifests as one line
//! (`signedBy`), written and read here only ([`Admission`]), so a receipt names exactly what the
//! gate checked: the policy, the key's fingerprint or the certificate's identity and issuer, and
//! the signature's digest.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::keys::PolicySource;
use crate::keys::{SignatureKeys, SignaturePolicy, SubjectMatch, TrustedIdentity};

/// Public keys a policy may trust at most.
pub const MAX_SIGNATURE_KEYS: usize = 10;
/// Keyless identities a policy may trust at most.
pub const MAX_SIGNATURE_IDENTITIES: usize = 10;
/// Characters of a policy name at most.
pub const MAX_POLICY_NAME_CHARS: usize = 32;

/// Who may sign: any one of the keys or identities will do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustPolicy {
    /// PEM public keys (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256, as `cosign
    /// generate-key-pair` writes `cosign.pub`): cosign's legacy signatures and Sigstore bundles
    /// signed with one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<String>,
    /// Keyless signers: a Sigstore bundle whose Fulcio certificate chains to the deployment's
    /// trusted root, was valid when the transparency log recorded the signature, and names one
    /// of these identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<SignerIdentity>,
}

/// A keyless signer: the OIDC issuer of its certificate and its identity, exact or a pattern
/// (cosign's `--certificate-oidc-issuer` with `--certificate-identity` or
/// `--certificate-identity-regexp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignerIdentity {
    /// The OIDC issuer, exactly: `https://token.actions.githubusercontent.com`,
    /// `https://gitlab.com`.
    pub issuer: String,
    /// The certificate identity, exactly (a workflow URI or an email address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// A regex the whole certificate identity must match (anchored at both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_reg_exp: Option<String>,
}

impl TrustPolicy {
    /// The SHA-256 of the policy's canonical JSON: object keys sorted, no whitespace, empty
    /// lists left out (as serialised here), so a consumer of a receipt can check it names the
    /// policy they reviewed.
    pub fn canonical_digest(&self) -> String {
        // serde_json's Value keeps object keys sorted (no `preserve_order` feature).
        let value = serde_json::to_value(self).unwrap_or_default();
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        oci::Digest::of(&bytes).as_str().to_string()
    }

    /// The policy checked and compiled; each problem names its field under `at`
    /// (`requireSignature`, `trustPolicies.release`).
    pub fn compile(
        &self,
        at: &str,
        source: PolicySource,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<SignaturePolicy> {
        let (keys, identities) = (&self.public_keys, &self.identities);
        if keys.is_empty() && identities.is_empty() {
            problem(
                at,
                "names no signer: give publicKeys, identities or both".into(),
            );
            return None;
        }
        if keys.len() > MAX_SIGNATURE_KEYS {
            problem(
                &format!("{at}.publicKeys"),
                format!("{} keys; at most {MAX_SIGNATURE_KEYS}", keys.len()),
            );
            return None;
        }
        if identities.len() > MAX_SIGNATURE_IDENTITIES {
            problem(
                &format!("{at}.identities"),
                format!(
                    "{} identities; at most {MAX_SIGNATURE_IDENTITIES}",
                    identities.len()
                ),
            );
            return None;
        }
        let keys = SignatureKeys::parse(keys)
            .map_err(|(i, e)| problem(&format!("{at}.publicKeys[{i}]"), e))
            .ok()?;
        let mut trusted = Vec::new();
        for (i, identity) in identities.iter().enumerate() {
            let field = format!("{at}.identities[{i}]");
            if let Some(compiled) = identity.compile(&field, i, problem) {
                trusted.push(compiled);
            }
        }
        (trusted.len() == identities.len()).then_some(SignaturePolicy {
            keys,
            identities: trusted,
            source,
        })
    }
}

impl SignerIdentity {
    fn compile(
        &self,
        field: &str,
        index: usize,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<TrustedIdentity> {
        let issuer = self.issuer.trim();
        if issuer.is_empty() || issuer.len() > 1024 || issuer.chars().any(char::is_whitespace) {
            problem(
                &format!("{field}.issuer"),
                "must be the OIDC issuer URL, exactly (https://token.actions.githubusercontent.com)"
                    .into(),
            );
            return None;
        }
        let subject = match (&self.subject, &self.subject_reg_exp) {
            (Some(exact), None) if !exact.trim().is_empty() => SubjectMatch::Exact(exact.clone()),
            (None, Some(pattern)) if !pattern.trim().is_empty() => {
                match SubjectMatch::pattern(pattern) {
                    Ok(subject) => subject,
                    Err(e) => {
                        problem(&format!("{field}.subjectRegExp"), e);
                        return None;
                    }
                }
            }
            _ => {
                problem(
                    field,
                    "give exactly one of subject (the identity, exactly) and subjectRegExp".into(),
                );
                return None;
            }
        };
        Some(TrustedIdentity {
            issuer: issuer.to_string(),
            subject,
            name: format!("identities[{index}]"),
        })
    }
}

/// Why `name` is not a policy name, or `None`: 1 to 32 lowercase letters, digits and dashes,
/// starting with a letter (it is written in reports and receipts).
pub fn policy_name_problem(name: &str) -> Option<String> {
    let valid = name.len() <= MAX_POLICY_NAME_CHARS
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (!valid).then(|| {
        format!("{name:?} is not a policy name: 1 to {MAX_POLICY_NAME_CHARS} lowercase letters, digits and dashes, starting with a letter")
    })
}

/// Who signed, as the gate verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// A public key: its rule (`publicKeys[1]`) and the SHA-256 of its SubjectPublicKeyInfo DER.
    Key {
        /// The policy's rule that admitted it.
        rule: String,
        /// `sha256:<hex>` of the key's DER.
        fingerprint: String,
    },
    /// A Fulcio certificate: its rule (`identities[0]`), identity and issuer as the certificate
    /// says them.
    Identity {
        /// The policy's rule that admitted it.
        rule: String,
        /// The certificate's identity (its subject alternative name).
        subject: String,
        /// The OIDC issuer the certificate names.
        issuer: String,
    },
}

/// What admitted an image under one policy: the policy, the signer and the digest of the
/// signature (or bundle) manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// `policy <name>` or `job`.
    pub policy: String,
    /// Who signed.
    pub signer: Signer,
    /// `sha256:<hex>` of the manifest holding the signature or bundle.
    pub signature: String,
}

impl std::fmt::Display for Admission {
    /// `policy release: publicKeys[1] sha256:<fp>, signature sha256:<hex>` or `policy release:
    /// identities[0] "<subject>" (issuer "<issuer>"), signature sha256:<hex>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.policy)?;
        match &self.signer {
            Signer::Key { rule, fingerprint } => write!(f, "{rule} {fingerprint}")?,
            Signer::Identity {
                rule,
                subject,
                issuer,
            } => write!(f, "{rule} {subject:?} (issuer {issuer:?})")?,
        }
        write!(f, ", signature {}", self.signature)
    }
}

impl Admission {
    /// Every policy's admission in one line (`; ` between them), as `signedBy` carries it.
    pub fn join(admissions: &[Admission]) -> String {
        admissions
            .iter()
            .map(Admission::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Reads a `signedBy` line back (what [`Admission::join`] wrote); `None` for any other text.
    pub fn parse_line(line: &str) -> Option<Vec<Admission>> {
        let mut rest = line;
        let mut out = Vec::new();
        loop {
            let (admission, after) = Self::parse_one(rest)?;
            out.push(admission);
            if after.is_empty() {
                return Some(out);
            }
            rest = after.strip_prefix("; ")?;
        }
    }

    fn parse_one(text: &str) -> Option<(Admission, &str)> {
        let (policy, rest) = text.split_once(": ")?;
        let valid_policy = policy == "job"
            || policy
                .strip_prefix("policy ")
                .is_some_and(|n| policy_name_problem(n).is_none());
        if !valid_policy {
            return None;
        }
        let (rule, rest) = rest.split_once(' ')?;
        let (signer, rest) = if rule.starts_with("publicKeys[") {
            let (fingerprint, rest) = take_digest(rest)?;
            (
                Signer::Key {
                    rule: rule.into(),
                    fingerprint,
                },
                rest,
            )
        } else if rule.starts_with("identities[") {
            let (subject, rest) = unquote(rest)?;
            let (issuer, rest) = unquote(rest.strip_prefix(" (issuer ")?)?;
            (
                Signer::Identity {
                    rule: rule.into(),
                    subject,
                    issuer,
                },
                rest.strip_prefix(')')?,
            )
        } else {
            return None;
        };
        let (signature, rest) = take_digest(rest.strip_prefix(", signature ")?)?;
        Some((
            Admission {
                policy: policy.into(),
                signer,
                signature,
            },
            rest,
        ))
    }
}

/// A `sha256:<64 hex>` at the start of `text`, and what follows.
fn take_digest(text: &str) -> Option<(String, &str)> {
    let digest = text.get(..71)?;
    let hex = digest.strip_prefix("sha256:")?;
    hex.bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        .then(|| (digest.to_string(), &text[71..]))
}

/// A string as Rust's `{:?}` writes it, at the start of `text`, and what follows.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut chars = text.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[i + 2..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                '0' => out.push('\0'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                'u' => {
                    if chars.next()?.1 != '{' {
                        return None;
                    }
                    let mut hex = String::new();
                    for (_, h) in chars.by_ref() {
                        if h == '}' {
                            break;
                        }
                        hex.push(h);
                    }
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn admissions_read_back_as_written_even_with_hostile_identities() {
        let admissions = vec![
            Admission {
                policy: "policy release".into(),
                signer: Signer::Key {
                    rule: "publicKeys[1]".into(),
                    fingerprint: digest('a'),
                },
                signature: digest('b'),
            },
            Admission {
                policy: "job".into(),
                signer: Signer::Identity {
                    rule: "identities[0]".into(),
                    subject: "x\"), signature sha256:0; policy y: \u{1}é\\".into(),
                    issuer: "https://token.actions.githubusercontent.com".into(),
                },
                signature: digest('c'),
            },
        ];
        let line = Admission::join(&admissions);
        assert_eq!(Admission::parse_line(&line), Some(admissions));
        assert_eq!(
            Admission::parse_line("publicKeys[0], signature sha256:ab"),
            None
        );
        assert_eq!(
            Admission::parse_line(&format!(
                "policy Bad: publicKeys[0] {} , signature {}",
                digest('a'),
                digest('b')
            )),
            None
        );
    }

    #[test]
    fn the_canonical_digest_ignores_key_order_and_whitespace_of_the_source() {
        let a: TrustPolicy = serde_json::from_str(
            r#"{"identities": [{"subject": "s", "issuer": "i"}], "publicKeys": []}"#,
        )
        .unwrap();
        let b: TrustPolicy =
            serde_json::from_str(r#"{"identities":[{"issuer":"i","subject":"s"}]}"#).unwrap();
        assert_eq!(a.canonical_digest(), b.canonical_digest());
        let c: TrustPolicy =
            serde_json::from_str(r#"{"identities":[{"issuer":"i","subject":"t"}]}"#).unwrap();
        assert_ne!(a.canonical_digest(), c.canonical_digest());
    }

    #[test]
    fn policy_names_are_checked() {
        assert!(policy_name_problem("release").is_none());
        assert!(policy_name_problem("prod-2").is_none());
        for bad in ["", "Release", "2x", "a b", &"a".repeat(33)] {
            assert!(policy_name_problem(bad).is_some(), "{bad}");
        }
    }
}
