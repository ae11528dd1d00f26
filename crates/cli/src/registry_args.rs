//! Command-line options that configure registry clients: TLS exceptions, credentials, parts.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use oci::{ClientConfig, Credential, CredentialStore, Reference, RegistryClient};

/// Registry connection options shared by the commands.
#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// Reach this registry (HOST[:PORT]) over plain HTTP instead of TLS. Repeatable; never implied.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Source credentials as USER:PASSWORD.
    #[arg(
        long,
        env = "ECR_REPLICATOR_SRC_CREDS",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub src_creds: Option<String>,
    /// Destination credentials as USER:PASSWORD.
    #[arg(
        long,
        env = "ECR_REPLICATOR_DEST_CREDS",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub dest_creds: Option<String>,
    /// Source Basic token, base64 of USER:PASSWORD (what `aws ecr get-authorization-token` returns).
    #[arg(
        long,
        env = "ECR_REPLICATOR_SRC_TOKEN",
        hide_env_values = true,
        conflicts_with = "src_creds"
    )]
    pub src_token: Option<String>,
    /// Destination Basic token, base64 of USER:PASSWORD.
    #[arg(
        long,
        env = "ECR_REPLICATOR_DEST_TOKEN",
        hide_env_values = true,
        conflicts_with = "dest_creds"
    )]
    pub dest_token: Option<String>,
    /// Docker config.json to read `auths` from (default: $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json).
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<PathBuf>,
    /// Upload in parts of SIZE bytes to REGISTRY (e.g. ghcr.io=4194304). Default: one streamed PATCH.
    #[arg(long = "chunk-size", value_name = "REGISTRY=BYTES")]
    pub chunk_sizes: Vec<String>,
    #[command(flatten)]
    pub throttle: ThrottleArgs,
}

/// How throttling is waited out; shared by every command that talks to registries.
#[derive(Args, Debug)]
pub struct ThrottleArgs {
    /// How long one request or blob may be throttled (429/503) before it fails; throttling
    /// waits meanwhile, it does not fail the run.
    #[arg(long, value_name = "SECONDS", default_value_t = oci::client::DEFAULT_THROTTLE_BUDGET.as_secs())]
    pub throttle_budget: u64,
}

impl ThrottleArgs {
    /// Sets the throttle budget of a client configuration.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.retry.throttle_budget = std::time::Duration::from_secs(self.throttle_budget);
    }
}

impl RegistryArgs {
    /// Builds the source and destination clients for the two references.
    pub fn clients(
        &self,
        source: &Reference,
        target: &Reference,
    ) -> anyhow::Result<(RegistryClient, RegistryClient)> {
        let mut config = ClientConfig {
            insecure_registries: self.insecure_registries.clone(),
            ..ClientConfig::default()
        };
        self.throttle.apply(&mut config);
        for entry in &self.chunk_sizes {
            let (registry, size) = entry
                .split_once('=')
                .with_context(|| format!("--chunk-size {entry:?}: write REGISTRY=BYTES"))?;
            let size: u64 = size
                .parse()
                .with_context(|| format!("--chunk-size {entry:?}: BYTES must be a whole number"))?;
            if size == 0 {
                bail!("--chunk-size {entry:?}: BYTES must be above zero");
            }
            config.chunk_sizes.insert(registry.to_string(), size);
        }
        let mut base = CredentialStore::new();
        let authfile = self
            .authfile
            .clone()
            .or_else(CredentialStore::default_docker_config_path);
        if let Some(path) = &authfile {
            base.load_docker_config(path)?;
        }
        let mut source_store = base.clone();
        if let Some(c) = credential(
            self.src_creds.as_deref(),
            self.src_token.as_deref(),
            "--src-creds",
        )? {
            source_store.insert(&source.repository.registry, c);
        }
        let mut target_store = base;
        if let Some(c) = credential(
            self.dest_creds.as_deref(),
            self.dest_token.as_deref(),
            "--dest-creds",
        )? {
            target_store.insert(&target.repository.registry, c);
        }
        Ok((
            RegistryClient::new(config.clone(), source_store)?,
            RegistryClient::new(config, target_store)?,
        ))
    }
}

fn credential(
    user_pass: Option<&str>,
    token: Option<&str>,
    flag: &str,
) -> anyhow::Result<Option<Credential>> {
    match (user_pass, token) {
        (Some(up), _) => {
            Ok(Some(Credential::from_user_pass(up).map_err(|_| {
                anyhow::anyhow!("{flag}: write USER:PASSWORD")
            })?))
        }
        (None, Some(token)) => Ok(Some(Credential::BasicToken(token.trim().to_string()))),
        (None, None) => Ok(None),
    }
}
