//! VMs and the checkpoint tree (a later milestone).
//!
//! This layer will know files, chains and the tree, not bytes: it sits on
//! top of [`crate::disk`] and below the C ABI and the CLI.
pub mod model;
