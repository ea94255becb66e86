//! The fuzz targets' bodies (see `harness.rs`), as a library for the targets.
mod harness;
pub use harness::*;
