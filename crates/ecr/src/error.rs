//! The one error type of the AWS side.

/// Result of AWS operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can fail on the AWS control plane. Messages name the call, the resource and the next step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host is not an ECR registry host.
    #[error("{host:?} is not an ECR registry host: {reason} (expected ACCOUNT.dkr.ecr.REGION.amazonaws.com, the -fips, .amazonaws.com.cn or ACCOUNT.dkr-ecr.REGION.on.aws forms)")]
    NotAnEcrHost {
        /// The host given.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// An IAM role ARN is malformed.
    #[error("{arn:?} is not an IAM role ARN (arn:PARTITION:iam::ACCOUNT:role/NAME)")]
    BadRoleArn {
        /// The text given.
        arn: String,
    },
    /// An AWS API call failed.
    #[error("{operation} on {resource} failed: {message}{}", if *retryable { " (transient: retry later)" } else { "" })]
    Api {
        /// The API operation, e.g. `ecr:CreateRepository`.
        operation: &'static str,
        /// The resource (repository, registry, role).
        resource: String,
        /// The service's error code (`RepositoryNotFoundException`, ...), when it sent one.
        code: Option<String>,
        /// The service's error code and message.
        message: String,
        /// Whether the failure is throttling, a timeout or a server error.
        retryable: bool,
    },
    /// A registry secret did not hold a usable credential (its value is never shown).
    #[error("the secret {secret} holds no registry credential: {reason}; store {{\"username\": ..., \"accessToken\": ...}} as its secret string")]
    BadSecret {
        /// The secret's ARN.
        secret: String,
        /// What is wrong.
        reason: String,
    },
    /// The authorization token answer had no usable token.
    #[error("ecr:GetAuthorizationToken for {registry} returned no usable token: {reason}")]
    BadToken {
        /// Registry.
        registry: String,
        /// What is wrong.
        reason: String,
    },
}

/// ECR's error code for a service quota reached: final, never retried.
pub const QUOTA_ERROR_CODE: &str = "LimitExceededException";

impl Error {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Api {
                retryable: true,
                ..
            }
        )
    }

    /// Whether the service said the repository does not exist.
    pub fn is_repository_not_found(&self) -> bool {
        matches!(self, Error::Api { code: Some(code), .. } if code == "RepositoryNotFoundException")
    }

    /// Builds an `Api` error from an SDK error, keeping the service's code and message.
    pub fn api<E>(
        operation: &'static str,
        resource: impl Into<String>,
        err: &aws_sdk_ecr::error::SdkError<E, aws_sdk_ecr::config::http::HttpResponse>,
    ) -> Self
    where
        E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_ecr::error::SdkError;
        let (code, message, retryable) = match err {
            SdkError::ServiceError(se) => {
                let e = se.err();
                let code = e.code().unwrap_or("Unknown");
                let retryable = matches!(
                    code,
                    "ThrottlingException"
                        | "TooManyRequestsException"
                        | "ServerException"
                        | "ServiceUnavailableException"
                        | "InternalFailure"
                ) || se.raw().status().as_u16() >= 500;
                // The advice before ECR's message, which reports may cut short.
                let advice = if code == QUOTA_ERROR_CODE {
                    " (a service quota, e.g. repositories per registry or images per repository: not retried; raise it in Service Quotas or make room, then run again)"
                } else {
                    ""
                };
                (
                    e.code().map(str::to_string),
                    format!("{code}{advice}: {}", e.message().unwrap_or("")),
                    retryable,
                )
            }
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => (
                None,
                format!(
                    "{}",
                    aws_smithy_types::error::display::DisplayErrorContext(err)
                ),
                true,
            ),
            other => (
                None,
                format!(
                    "{}",
                    aws_smithy_types::error::display::DisplayErrorContext(other)
                ),
                false,
            ),
        };
        Error::Api {
            operation,
            resource: resource.into(),
            code,
            message,
            retryable,
        }
    }
}
