//! Read-only structural check of a VHDX file.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::Storage;

/// The outcome of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every inconsistency found, one sentence each. Empty when the file is sound.
    pub problems: Vec<String>,
    /// Facts worth knowing that are not problems (for example a dirty log).
    pub notes: Vec<String>,
    /// A one-line summary (kind, size, blocks allocated).
    pub summary: String,
}

impl CheckReport {
    /// No problems found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check the VHDX at `path` without writing to it. Errors only when the file
/// cannot be read at all; damage is reported in the [`CheckReport`].
pub fn check(path: &Path) -> Result<CheckReport> {
    let _ = path;
    Err(Error::Unsupported("not yet written".into()))
}

/// Check the VHDX held by `storage` without writing to it.
pub fn check_storage(storage: Arc<dyn Storage>) -> CheckReport {
    let _ = storage;
    CheckReport::default()
}
