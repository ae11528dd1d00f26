//! The replication domain: copying images between registries (and, as the workflow grows,
//! filters, planning, range splitting and the run report). Used alike by the CLI and the Lambda
//! functions, so both run the very same steps.

pub mod copy;
pub mod error;

pub use copy::{copy_image, CopyOptions, CopyProgress, CopyReport};
pub use error::{Error, Result};
