//! AWS SDK configuration, owned here for every client: region, one endpoint override (moto,
//! LocalStack), assumed roles with cached credentials.

use std::time::Duration;

use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::registry::{EcrRegistry, RoleArn};

/// Settings for every AWS client, read once at the edge (env or CLI flags).
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Send every AWS API call to this URL instead of the real endpoints (moto, LocalStack).
    pub endpoint_url: Option<String>,
    /// Use these static credentials (access key, secret) instead of the default chain; for tests
    /// against moto.
    pub static_credentials: Option<(String, String)>,
    /// Sent in every call's user agent as `app/<name>` (the Lambda function's name), so a
    /// request names the function that made it.
    pub app_name: Option<String>,
}

impl AwsSettings {
    /// From the environment: `AWS_ENDPOINT_URL` (the SDK's own variable) and
    /// `AWS_LAMBDA_FUNCTION_NAME` (set by the Lambda runtime).
    pub fn from_env() -> Self {
        AwsSettings {
            endpoint_url: std::env::var("AWS_ENDPOINT_URL")
                .ok()
                .filter(|s| !s.is_empty()),
            static_credentials: None,
            app_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

/// A role to assume, with its external ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    /// The role.
    pub role: RoleArn,
    /// External ID the role's trust policy requires, if any.
    pub external_id: Option<String>,
    /// Session length (15 minutes to the role's maximum).
    pub duration: Duration,
}

impl AssumeRole {
    /// A role with an optional external ID and a one-hour session.
    pub fn new(role: RoleArn, external_id: Option<String>) -> Self {
        AssumeRole {
            role,
            external_id,
            duration: Duration::from_secs(3600),
        }
    }
}

/// Builds SDK configurations for a region, optionally under an assumed role. Assumed-role
/// credentials are cached by the SDK's identity cache until shortly before they expire.
pub async fn sdk_config(
    settings: &AwsSettings,
    region: &str,
    role: Option<&AssumeRole>,
) -> SdkConfig {
    // Adaptive retries: throttling (ThrottlingException, TooManyRequestsException) slows every
    // call made through this config down, instead of failing the step.
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .retry_config(aws_config::retry::RetryConfig::adaptive().with_max_attempts(8));
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(app) = settings
        .app_name
        .as_ref()
        .and_then(|name| aws_config::AppName::new(name.clone()).ok())
    {
        loader = loader.app_name(app);
    }
    if let Some((key, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(aws_sdk_sts::config::Credentials::new(
            key, secret, None, None, "static",
        ));
    }
    let base = loader.load().await;
    let Some(role) = role else {
        return base;
    };
    let mut builder = AssumeRoleProvider::builder(role.role.arn.clone())
        .session_name("ecr-replicator")
        .session_length(role.duration)
        .configure(&base);
    if let Some(id) = &role.external_id {
        builder = builder.external_id(id.clone());
    }
    let provider = builder.build().await;
    base.into_builder()
        .credentials_provider(aws_sdk_sts::config::SharedCredentialsProvider::new(
            provider,
        ))
        .build()
}

/// An ECR client for a registry's region, under a role if given. FIPS hosts use FIPS endpoints.
pub async fn ecr_client(
    settings: &AwsSettings,
    registry: &EcrRegistry,
    role: Option<&AssumeRole>,
) -> aws_sdk_ecr::Client {
    let config = sdk_config(settings, &registry.region, role).await;
    let mut builder = aws_sdk_ecr::config::Builder::from(&config);
    if registry.fips && settings.endpoint_url.is_none() {
        builder = builder.use_fips(true);
    }
    if registry.dual_stack && settings.endpoint_url.is_none() {
        builder = builder.use_dual_stack(true);
    }
    builder = builder.retry_classifier(QuotasAreFinal);
    aws_sdk_ecr::Client::from_conf(builder.build())
}

/// ECR's `LimitExceededException` is a service quota reached (repositories per registry, images
/// per repository, tags per image; ECR API reference, "Errors": "The operation did not succeed
/// because it would have exceeded a service limit for your account"), not throttling: retrying
/// cannot pass. The SDK's standard classifier counts that code as throttling; this one forbids the
/// retry (a `RetryForbidden` from any classifier wins).
#[derive(Debug)]
pub struct QuotasAreFinal;

impl aws_sdk_ecr::config::retry::ClassifyRetry for QuotasAreFinal {
    fn classify_retry(
        &self,
        ctx: &aws_sdk_ecr::config::interceptors::InterceptorContext,
    ) -> aws_sdk_ecr::config::retry::RetryAction {
        use aws_sdk_ecr::config::retry::RetryAction;
        let Some(response) = ctx.response() else {
            return RetryAction::NoActionIndicated;
        };
        let header = response.headers().get("x-amzn-errortype").unwrap_or("");
        let body_type = response
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v.get("__type").and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_default();
        if is_quota_code(header) || is_quota_code(&body_type) {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "QuotasAreFinal"
    }
}

/// Whether an error type (`LimitExceededException`, `com.amazonaws.ecr#LimitExceededException`,
/// `LimitExceededException:http://...`) is ECR's quota error.
fn is_quota_code(error_type: &str) -> bool {
    let name = error_type.split(':').next().unwrap_or("");
    name.rsplit('#').next() == Some(crate::error::QUOTA_ERROR_CODE)
}

/// A Step Functions client for a region (starting and watching executions).
pub async fn sfn_client(settings: &AwsSettings, region: &str) -> aws_sdk_sfn::Client {
    aws_sdk_sfn::Client::new(&sdk_config(settings, region, None).await)
}

/// The account of the identity this process runs as (STS `GetCallerIdentity`, which needs no
/// permission): a Lambda function's, its execution role's account.
pub async fn own_account(settings: &AwsSettings) -> crate::Result<String> {
    let sts = aws_sdk_sts::Client::new(&sdk_config(settings, &own_region(), None).await);
    let identity = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| crate::Error::api("sts:GetCallerIdentity", "*", &e))?;
    identity
        .account()
        .map(str::to_string)
        .ok_or_else(|| crate::Error::Api {
            operation: "sts:GetCallerIdentity",
            resource: "*".into(),
            code: None,
            message: "the answer names no account".into(),
            retryable: false,
        })
}

/// The region this process runs in: `AWS_REGION` (set by the Lambda runtime), else
/// `us-east-1`.
pub fn own_region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

/// The region of an ARN's `parts` (split on `:`) for `service`, after checking its prefix,
/// partition, region and 12-digit account; the error starts with `shape`.
pub(crate) fn arn_region<'a>(
    parts: &[&'a str],
    service: &str,
    shape: &str,
) -> std::result::Result<&'a str, String> {
    if parts.len() < 6
        || parts[0] != "arn"
        || !matches!(parts[1], "aws" | "aws-cn" | "aws-us-gov")
        || parts[2] != service
    {
        return Err(shape.to_string());
    }
    let region = parts[3];
    if region.is_empty()
        || region.len() > 30
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("{shape} (the region {region:?} is not one)"));
    }
    let account = parts[4];
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{shape} (the account must be 12 digits)"));
    }
    Ok(region)
}
