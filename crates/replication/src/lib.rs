//! The replication domain: the execution input and its validation, repository and tag filters,
//! catalogs, planning into byte ranges, the workflow's steps, copying images, and the run
//! report. The Lambda functions and the CLI call the very same functions with the same JSON.

pub mod allowlist;
pub mod artifacts;
pub mod catalog;
pub mod connect;
mod connect_layout;
pub mod copy;
pub mod cost;
pub mod error;
mod fallback_index;
pub mod filter;
pub mod gate;
pub mod job;
pub mod keys;
pub mod layout;
pub mod layout_gate;
pub mod layout_referrers;
pub mod layout_registry;
pub mod layout_run;
pub mod layout_seal;
pub mod metrics;
pub mod plan;
pub mod platforms;
pub mod receipts;
pub mod referrers;
pub mod report;
pub mod run;
pub mod signatures;
pub mod sigstore;
pub mod steps;
mod tag_scheme;
pub mod text;
pub mod transfer_statement;
pub mod trust;

pub use copy::{copy_image, CopyOptions, CopyProgress, CopyReport};
pub use error::{Error, ErrorKind, Result};
pub use job::{Job, ValidJob};
