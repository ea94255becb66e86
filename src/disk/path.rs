//! Paths made absolute, the one way every layer does it (chains, the
//! checkpoint tree, the JSON views, the command-line tool).
//!
//! Pure path arithmetic and `canonicalize`: no disk format, no policy.

use std::path::{Component, Path, PathBuf};

use crate::error::Result;

/// Lexically clean `p` (resolve `.` and `..`).
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// `p` made absolute (against the current folder) and lexically cleaned
/// (`.` and `..` resolved without looking at the file system). Fails only
/// when `p` is relative and the current folder is unknown.
pub fn absolute(p: &Path) -> Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(normalize(&p))
}

/// `p` as the tool shows it: canonical (symbolic links resolved) when it
/// exists, else [`absolute`], else `p` as it is.
pub fn canonical_or_absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_cleans_dots_lexically() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute(Path::new("x/../y")).unwrap(), cwd.join("y"));
    }

    #[test]
    fn canonical_or_absolute_falls_back_for_missing_files() {
        let missing = Path::new("/no/such/dir/../file.vhdx");
        assert_eq!(
            canonical_or_absolute(missing),
            PathBuf::from("/no/such/file.vhdx")
        );
        let cwd = std::fs::canonicalize(".").unwrap();
        assert_eq!(canonical_or_absolute(Path::new(".")), cwd);
    }
}
