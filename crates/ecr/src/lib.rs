//! The AWS control plane for ecr-replicator: ECR registry hosts, SDK configuration (endpoint
//! override, assumed roles), repositories and images, repository settings, and registry
//! credentials from ECR authorization tokens and Secrets Manager; OCI image layouts in S3 (`layout`). Registry data-plane traffic goes through the `oci` crate.

pub mod admin;
pub mod aws;
pub mod error;
pub mod executions;
pub mod layout;
pub mod registry;
pub mod secrets;
pub mod signing;
pub mod store;
pub mod token;

pub use admin::{
    EcrAdmin, EnsureOptions, EnsureReport, ListedImage, Page, Reconcile, RepositorySettings,
    SettingChange, REFUSED_POLICY_TAG,
};
pub use aws::{
    ecr_client, own_account, own_region, sdk_config, sfn_client, AssumeRole, AwsSettings,
};
pub use aws_sdk_ecr::types::{EncryptionType, ImageTagMutability};
pub use error::{Error, Result};
pub use executions::{Executions, StartOutcome};
pub use layout::{S3Layout, S3LayoutOptions, S3Location};
pub use registry::{EcrRegistry, RoleArn};
pub use secrets::{SecretArn, SecretCredentialSource};
pub use signing::{KmsKeyArn, KmsSigner};
pub use store::{WorkBucket, WriteIf};
pub use token::EcrTokenSource;
