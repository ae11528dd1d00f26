//! The one error type of the replication domain.

/// Result of replication steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can fail while replicating. Each message names the image and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// An index nests deeper than any real image does.
    #[error("{image}: manifests nest more than {limit} levels deep; refusing to follow")]
    TooDeep {
        /// The image.
        image: String,
        /// The depth limit.
        limit: usize,
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
}

impl Error {
    /// Whether running the same step again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}
