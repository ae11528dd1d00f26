//! The library's black-box tests, one module per subject, in one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod allowlist;
mod input_validation;
mod layering;
