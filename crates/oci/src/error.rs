//! The one error type of the registry client.

use serde::Deserialize;

/// Result of registry operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error code from the OCI distribution spec (`errors[].code` in a registry's error body).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Blob unknown to registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    Toomanyrequests,
    /// A code this client does not know.
    #[serde(other)]
    Unknown,
}

/// One entry of a registry's `{"errors": [...]}` body.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistryErrorBody {
    /// The spec's error code.
    pub code: ErrorCode,
    /// Human-readable message from the registry.
    #[serde(default)]
    pub message: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    errors: Vec<RegistryErrorBody>,
}

/// Parses a registry error body; `None` when it is not the spec's JSON shape.
pub fn parse_error_body(body: &[u8]) -> Option<RegistryErrorBody> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
}

/// Everything that can go wrong talking to a registry. Messages name the registry or URL and say
/// what to do; they never contain a credential (URLs are shown without their query string).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest string is malformed or uses an unsupported algorithm.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The text given.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry rejected our credentials, or wanted some and we had none.
    #[error("authentication to {registry} failed for {url}: {reason}; check the credentials for {registry} (for ECR, that the role may call ecr:GetAuthorizationToken)")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// The URL (without query).
        url: String,
        /// What the registry or the client said.
        reason: String,
    },
    /// The registry does not have the manifest, blob or repository.
    #[error("{what} not found at {url}")]
    NotFound {
        /// What was looked for (manifest, blob, repository).
        what: String,
        /// The URL (without query).
        url: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url} failed: HTTP {status}{}: {message}{}", code.as_ref().map(|c| format!(" {c:?}")).unwrap_or_default(), hint(*status))]
    Registry {
        /// HTTP method.
        method: String,
        /// The URL (without query).
        url: String,
        /// HTTP status code.
        status: u16,
        /// The spec's error code, when the registry sent one.
        code: Option<ErrorCode>,
        /// The registry's message, or the start of its body.
        message: String,
    },
    /// The connection failed or timed out (after retries).
    #[error("{method} {url}: {source}; check that the registry is reachable, and whether it serves TLS or plain HTTP")]
    Transport {
        /// HTTP method.
        method: String,
        /// The URL (without query).
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// Bytes received do not hash to the expected digest.
    #[error("content from {url} does not match its digest: expected {expected}, got {actual}; the source is corrupt or changed during the copy, nothing was committed")]
    DigestMismatch {
        /// Where the bytes came from.
        url: String,
        /// Expected digest.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// Bytes received are more or fewer than the descriptor says.
    #[error("content from {url} has the wrong size: expected {expected} bytes, got {actual}; nothing was committed")]
    SizeMismatch {
        /// Where the bytes came from.
        url: String,
        /// Expected size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// A manifest could not be understood.
    #[error("manifest at {url} is not usable: {reason}")]
    InvalidManifest {
        /// Where the manifest came from.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A `WWW-Authenticate` challenge could not be parsed.
    #[error("authentication challenge from {registry} is not understood ({reason}): {header:?}")]
    BadChallenge {
        /// Registry host.
        registry: String,
        /// The header value.
        header: String,
        /// What is wrong.
        reason: String,
    },
    /// A docker `config.json` could not be read.
    #[error("docker config {path}: {reason}; fix the file or give the credentials another way")]
    DockerConfig {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry refused to continue an upload session (416: it holds other bytes than the
    /// client sent, e.g. after a crash mid-PATCH; 404: the session expired or is unknown).
    #[error("upload session at {url} was refused (HTTP {status}: {message}); the blob restarts on a new session")]
    UploadSessionBroken {
        /// Session URL (redacted).
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The registry refused to store the empty (0-byte) blob: ECR cannot hold one.
    #[error("empty (0-byte) blob {digest} refused: ECR cannot store one, so an image that references it cannot be copied there unchanged ({url}: {message})")]
    EmptyBlobRefused {
        /// Upload URL (redacted).
        url: String,
        /// The empty blob's digest.
        digest: String,
        /// The registry's message.
        message: String,
    },
    /// A registry's answer is larger than the client reads for its kind (a listing, a token,
    /// a manifest): refused rather than held in memory.
    #[error("{what} from {url} is larger than {limit}; the registry is misbehaving (or hostile): nothing more was read")]
    ResponseTooLarge {
        /// What was being read.
        what: String,
        /// Where from (without query).
        url: String,
        /// The bound it passed.
        limit: String,
    },
    /// A registry tried to send the client, or its credentials, somewhere they do not belong:
    /// another origin than the registry's for a page, an upload or a token over plain HTTP.
    #[error("{registry} sent the client to {url}: {reason}; refused (credentials stay with their registry)")]
    OriginRefused {
        /// The registry whose answer it was.
        registry: String,
        /// Where it pointed (without query).
        url: String,
        /// Why that is refused.
        reason: String,
    },
    /// A manifest GET was not sent: the pull budget the caller set for this registry is spent
    /// (nothing is wrong with the image; a later run reads it).
    #[error("pull budget for {registry} spent: {reason}; the image is left for the next run")]
    PullBudgetSpent {
        /// Registry host.
        registry: String,
        /// Which budget, and what is left of it.
        reason: String,
    },
    /// The registry refused a manifest GET because its pull limit is reached (429 with
    /// `ratelimit-remaining: 0`, as Docker Hub answers): waiting within a run does not help.
    #[error("{registry} refused {url}: its pull limit is reached ({detail}); not retried: the pulls come back as the registry's window moves on, so run again later, authenticate (credentialArn) for a higher limit, or set source.pullBudget so runs stop before the limit")]
    PullLimitReached {
        /// Registry host.
        registry: String,
        /// The URL (without query).
        url: String,
        /// What the registry's headers said.
        detail: String,
    },
    /// The registry broke the upload protocol (missing Location, wrong digest echoed...).
    #[error("upload to {url}: {reason}")]
    Upload {
        /// The upload URL (without query).
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An OCI image layout (a directory export) cannot be read or written.
    #[error("OCI layout {path}: {reason}")]
    Layout {
        /// The file or directory concerned.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

fn hint(status: u16) -> &'static str {
    match status {
        403 => "; the credentials lack permission for this repository (push needs write access)",
        408 | 429 => "; the registry is throttling: retried with backoff; try again later or copy less at once",
        500..=599 => "; the registry failed: retried with backoff, try again later",
        _ => "",
    }
}

impl Error {
    /// A transport error. The source loses its URL: reqwest's message would show it with its
    /// query string (a presigned URL's `X-Amz-Signature`, an upload's state), and messages
    /// reach logs, step outputs, reports and events.
    pub fn transport(method: impl Into<String>, url: String, source: reqwest::Error) -> Self {
        Error::Transport {
            method: method.into(),
            url,
            source: source.without_url(),
        }
    }

    /// Whether retrying the same operation may succeed (throttling, server and connection errors,
    /// and a body that broke off mid-stream).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry { status, code, .. } => {
                matches!(status, 408 | 429 | 500..=599) || *code == Some(ErrorCode::Toomanyrequests)
            }
            Error::Transport { .. } => true,
            Error::Upload { .. } | Error::UploadSessionBroken { .. } => true,
            _ => false,
        }
    }

    /// Whether the registry asked to slow down (429, 503, `TOOMANYREQUESTS`): waited out within
    /// the throttle budget, never counted as a failed attempt.
    pub fn is_throttling(&self) -> bool {
        matches!(self, Error::Registry { status, code, .. }
            if matches!(status, 429 | 503) || *code == Some(ErrorCode::Toomanyrequests))
    }

    /// Whether a pull budget or the registry's pull limit stopped a manifest read: the image is
    /// left for a later run, not failed.
    pub fn is_pull_limit(&self) -> bool {
        matches!(
            self,
            Error::PullBudgetSpent { .. } | Error::PullLimitReached { .. }
        )
    }

    /// Whether the error means "does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// A URL fit for messages and logs: scheme, host and path, no query (presigned URLs and upload
/// state live in the query) and no user info.
pub fn redact_url(url: &url::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}
