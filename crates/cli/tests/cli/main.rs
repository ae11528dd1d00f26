//! The command line's tests, one module per subject, in one test binary (one link; the slow crash test overlaps the others). Run one with `cargo test -p ecr-replicator --test cli crash::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod copy;
mod crash;
mod layout;
mod layout_referrers;
mod layout_s3;
mod layout_sync;
mod secrets;
mod transfer;
mod transfer_attacks;
mod verify;
