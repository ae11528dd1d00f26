//! An OCI distribution (registry v2) client: image references, authentication (Basic, Bearer
//! challenges, ECR-style Basic tokens, docker `config.json`), manifests kept byte-exact, blob
//! streaming with digest verification, resumable and chunked uploads, retries with backoff.
//! It knows nothing of AWS.

pub mod auth;
pub mod client;
pub mod digest;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod reference;
pub mod strict_json;
pub mod transfer;

pub use auth::{Credential, CredentialStore};
pub use client::{
    ClientConfig, CredentialRefresher, PullMeter, RateLimit, Referrer, RegistryClient, RetryPolicy,
    UploadSession, MAX_LISTED_TAGS, MAX_LISTING_PAGES, MAX_REFERRERS,
};
pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::{Manifest, ManifestContent};
/// An OCI content descriptor (a manifest's layers, an index's children).
pub use oci_spec::image::Descriptor;
pub use reference::{Reference, Repository};
pub use transfer::{
    copy_blob, copy_blob_segment, put_small_blob, upload_blob, BlobOutcome, BlobRef, ProgressFn,
    SegmentProgress, SegmentState,
};
