//! The Sigstore trusted root options `sync`, `verify` and a gated `copy` share.

use clap::Args;
use replication::sigstore::{TrustedRootPolicy, TrustedRootSource};

/// Where the trusted root bundles are verified against comes from, and its checks.
#[derive(Args, Debug, Clone, Default)]
pub struct TrustedRootArgs {
    /// The Sigstore trusted root (`trusted_root.json`) that signature bundles are verified
    /// against: a file or `s3://bucket/key`; by default Sigstore's public-good root, built in.
    /// Never read from a job, a registry or a layout.
    #[arg(long, value_name = "FILE", env = "ECR_REPLICATOR_TRUSTED_ROOT")]
    pub trusted_root: Option<String>,
    /// Refuse a trusted root whose sha256 is not this (`sha256:<hex>` or the hex alone).
    #[arg(
        long,
        value_name = "DIGEST",
        env = "ECR_REPLICATOR_TRUSTED_ROOT_SHA256"
    )]
    pub trusted_root_sha256: Option<String>,
    /// Read an `s3://` trusted root only from a bucket this account owns (default: the account
    /// of the credentials in use, from STS GetCallerIdentity).
    #[arg(
        long,
        value_name = "ACCOUNT",
        env = "ECR_REPLICATOR_TRUSTED_ROOT_BUCKET_OWNER"
    )]
    pub trusted_root_bucket_owner: Option<String>,
    /// Accept a trusted root without certificate transparency logs (a private Fulcio without
    /// CT): keyless certificates are then not checked for an SCT. Refused otherwise.
    #[arg(long, env = "ECR_REPLICATOR_TRUSTED_ROOT_ALLOW_NO_CT")]
    pub trusted_root_allow_no_ct: bool,
}

impl TrustedRootArgs {
    /// The root's source (`None`: the built-in one) and the checks it must pass, each problem
    /// naming its option.
    pub fn resolve(&self) -> anyhow::Result<(Option<TrustedRootSource>, TrustedRootPolicy)> {
        let source = match &self.trusted_root {
            Some(root) => Some(
                TrustedRootSource::parse(root)
                    .map_err(|problem| anyhow::anyhow!("--trusted-root: {problem}"))?,
            ),
            None => None,
        };
        let mut policy = TrustedRootPolicy {
            allow_no_ct_logs: self.trusted_root_allow_no_ct,
            ..TrustedRootPolicy::default()
        };
        if let Some(pin) = &self.trusted_root_sha256 {
            policy.sha256 = TrustedRootPolicy::parse_sha256(pin)
                .map_err(|problem| anyhow::anyhow!("--trusted-root-sha256: {problem}"))?;
        }
        if let Some(account) = &self.trusted_root_bucket_owner {
            policy.bucket_owner = TrustedRootPolicy::parse_account(account)
                .map_err(|problem| anyhow::anyhow!("--trusted-root-bucket-owner: {problem}"))?;
        }
        Ok((source, policy))
    }
}
