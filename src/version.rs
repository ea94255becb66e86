//! The library's version and the creator string it writes into new files.
//!
//! A leaf: depends on nothing in the crate, so every layer may use it.

/// The library version (the crate version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The creator string written into the file identifier of new files.
pub(crate) fn creator() -> String {
    format!("libckpt {VERSION}")
}
