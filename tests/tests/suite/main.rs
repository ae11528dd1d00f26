//! The rig's end-to-end tests, one module per subject, in one test binary: the dependency tree's generics are compiled and linked once, not once per file. Run one subject with `cargo test -p e2e --test suite state_machine::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod asl;
mod aws_rules;
mod deployment_controls;
mod ecr_data_plane;
mod ecr_steps;
mod faults;
mod guide_examples;
mod hostile;
mod lambda_limits;
mod packing;
mod payload_bounds;
mod platforms;
mod pull_budget;
mod push_bursts;
mod real_inputs;
mod receipts;
mod referrers;
mod referrers_held;
mod secrets;
mod signatures;
mod sigstore_bundles;
mod state_machine;
mod steps_oci;
mod uploads;
mod workflow_e2e;
