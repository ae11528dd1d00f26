//! The one error type of the replication domain.

/// Result of replication steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem with the execution input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldProblem {
    /// The field path, e.g. `destinations[1].registry`.
    pub field: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

/// How a step's failure should be treated by the workflow (the Lambda error type that
/// `Retry`/`Catch` match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is wrong: do not retry, fail the execution.
    InvalidInput,
    /// Throttling, timeouts, server errors: retry with backoff.
    Retryable,
    /// Anything else: do not retry; record the failure for this image and go on.
    Failed,
}

impl ErrorKind {
    /// The error type string Step Functions sees.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "ReplicationInvalidInput",
            ErrorKind::Retryable => "ReplicationRetryable",
            ErrorKind::Failed => "ReplicationFailed",
        }
    }
}

/// What can fail while replicating. Each message names the image and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The execution input is malformed or has bad values.
    #[error("invalid execution input: {}", problems.iter().map(|p| format!("{}: {}", p.field, p.problem)).collect::<Vec<_>>().join("; "))]
    InvalidInput {
        /// Every problem found, each naming its field.
        problems: Vec<FieldProblem>,
    },
    /// An AWS call failed.
    #[error("{context}: {source}")]
    Aws {
        /// What was being done.
        context: String,
        /// The AWS side's error.
        #[source]
        source: ecr::Error,
    },
    /// Listing repositories or tags failed.
    #[error("listing {what} failed: {source}")]
    Listing {
        /// What was being listed.
        what: String,
        /// The registry client's error.
        #[source]
        source: oci::Error,
    },
    /// A registry operation failed while copying an image.
    #[error("copy of {image} failed: {source}")]
    Registry {
        /// The image being copied (source reference).
        image: String,
        /// The registry client's error.
        #[source]
        source: oci::Error,
    },
    /// The target reference pins a digest other than the source's.
    #[error("target {target} pins digest {pinned}, but the source {source_ref} is {actual}; drop the digest from the target or fix it")]
    PinnedDigestDiffers {
        /// Target reference as given.
        target: String,
        /// Digest in the target reference.
        pinned: String,
        /// Source reference.
        source_ref: String,
        /// The source manifest's digest.
        actual: String,
    },
    /// Images or whole repositories failed in a run (the workflow's last step).
    #[error("{failed} of {images} images and {repositories_failed} repositories failed: {}", names.join("; "))]
    ImagesFailed {
        /// How many images failed.
        failed: usize,
        /// How many images the run considered.
        images: usize,
        /// How many repositories failed as a whole.
        repositories_failed: usize,
        /// Each listed failure: repository or image, destination, error.
        names: Vec<String>,
    },
    /// An index nests deeper than any real image does.
    #[error("{image}: manifests nest more than {limit} levels deep; refusing to follow")]
    TooDeep {
        /// The image.
        image: String,
        /// The depth limit.
        limit: usize,
    },
    /// An image has more blobs than a plan may carry through the state machine.
    #[error("{image} has {blobs} blobs across its manifests and referrers: its plan is {bytes} bytes, over the {limit} a workflow step may carry; copy it with `ecr-replicator copy`")]
    PlanTooLarge {
        /// The image.
        image: String,
        /// Its distinct blobs.
        blobs: usize,
        /// The plan's JSON size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A blob of the image is not in the destination when its manifests are due.
    #[error("{image}: no manifest put: {cause}; blob {blob} is not in {target}")]
    BlobMissing {
        /// The image (source reference).
        image: String,
        /// The missing blob.
        blob: String,
        /// The destination repository.
        target: String,
        /// Why, as far as known: the page's failed range's error, or what to do.
        cause: String,
    },
    /// A repository's name in a destination breaks the registry's naming rules.
    #[error("{repository} cannot be created: {problem}; shorten the destination's repositoryPrefix or exclude the repository")]
    TargetNameInvalid {
        /// The destination repository (registry/name).
        repository: String,
        /// The rule it breaks.
        problem: String,
    },
    /// An image named in the execution input is not in the source.
    #[error("{image} is not in the source registry: check the repository and tag or digest in `images` (a push trigger can race a delete)")]
    ImageNotFound {
        /// The image as named.
        image: String,
    },
    /// After putting the manifests the target does not resolve to the source digest.
    #[error("after the copy, {target} resolves to {actual}, expected {expected}; another writer may have moved the tag")]
    VerificationFailed {
        /// The target reference.
        target: String,
        /// Source digest.
        expected: String,
        /// What the target answered.
        actual: String,
    },
    /// A verification found destinations that differ from the source.
    #[error("{differences} differences between the source and the destinations ({repositories_failed} repositories could not be verified): {}; run the job with \"mode\": \"replicate\" to bring them in line", listed.join("; "))]
    DestinationsDiffer {
        /// Differences found.
        differences: usize,
        /// Repositories that failed as a whole.
        repositories_failed: usize,
        /// The first differences and failures, in words.
        listed: Vec<String>,
    },
    /// A layout's transfer statement is missing, unsigned by a trusted key, or does not match
    /// the layout (see `transfer_statement`).
    #[error("transfer statement of {layout} refused: {reason}")]
    TransferStatement {
        /// The layout.
        layout: String,
        /// What is wrong, naming the file, the image or the key.
        reason: String,
    },
    /// A layout copy under a trust policy found no signature that admits the image: nothing
    /// was written (see `layout_gate`).
    #[error("{image} is not copied: {reason}")]
    Unsigned {
        /// The image.
        image: String,
        /// Why no signature admits it (`unsigned: ...`).
        reason: String,
    },
    /// A destination repository could not be made ready for an image (an ECR repository not
    /// created): every image of it fails with this.
    #[error("{repository} could not be made ready: {reason}")]
    TargetNotReady {
        /// The destination repository (`registry/name`).
        repository: String,
        /// Why (the first attempt's error).
        reason: String,
    },
    /// A step's output could not be written as JSON (a defect: report it).
    #[error("the step's output could not be written as JSON: {0}; please report this")]
    Output(String),
}

impl Error {
    /// Bad input with one problem, naming its field.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidInput {
            problems: vec![FieldProblem {
                field: field.into(),
                problem: problem.into(),
            }],
        }
    }

    /// Whether running the same step again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry { source, .. } | Error::Listing { source, .. } => source.is_retryable(),
            Error::Aws { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// Whether the source's pull budget or pull limit stopped a read: the image is left for the
    /// next run (reported `postponed`), not failed.
    pub fn is_pull_limit(&self) -> bool {
        match self {
            Error::Registry { source, .. } | Error::Listing { source, .. } => {
                source.is_pull_limit()
            }
            _ => false,
        }
    }

    /// How the workflow should treat this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            e if e.is_retryable() => ErrorKind::Retryable,
            _ => ErrorKind::Failed,
        }
    }
}
