//! The restore check of a backup set ([`verify_backup`]): every disk of
//! the newest export opened with its whole chain (the parents found
//! through their locators, each linkage checked against its parent's
//! DataWriteGuid, sizes compared), each file's structure checked and its
//! DataWriteGuid compared with its export's manifest, each export's
//! starting point compared with what the export under it captured, and
//! the chain read end to end.

use std::path::{Path, PathBuf};

use super::manifest::read_manifest;
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

/// Bytes read per step.
const CHUNK: usize = 4 << 20;

/// The verdict on one disk of a backup set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskVerdict {
    /// The disk file of the newest export.
    pub file: PathBuf,
    /// The files of its chain, newest first, as far as it opened.
    pub chain: Vec<PathBuf>,
    /// Its virtual size in bytes (0 when it did not open).
    pub virtual_size: u64,
    /// What is wrong; None when the disk restores.
    pub error: Option<String>,
}

/// Check the backup set whose export folders are `dests`: either the
/// whole set, oldest (the full export) first, or only the newest export
/// (its chain is followed through the parent locators). Returns a verdict
/// per disk of the newest export, in the VM's disk order; `Err` only when
/// the newest export cannot be read as one (no folder given, no manifest).
pub fn verify_backup(dests: &[PathBuf]) -> Result<Vec<DiskVerdict>> {
    let Some(newest) = dests.last() else {
        return Err(Error::InvalidArgument(
            "no export folder given to verify".into(),
        ));
    };
    let m = read_manifest(newest)?;
    let given: Vec<PathBuf> = dests
        .iter()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
        .collect();
    Ok(m.disks
        .iter()
        .map(|d| {
            let file = newest.join(&d.file);
            let mut v = DiskVerdict {
                file: file.clone(),
                chain: Vec::new(),
                virtual_size: 0,
                error: None,
            };
            if let Err(e) = verify_disk(&file, &given, &mut v) {
                v.error = Some(e.to_string());
            }
            v
        })
        .collect())
}

/// Check one disk (see [`verify_backup`]), filling `v` as it goes.
fn verify_disk(file: &Path, given: &[PathBuf], v: &mut DiskVerdict) -> Result<()> {
    let disk = Disk::open(file, OpenMode::ReadOnly)?;
    v.chain = disk.chain().into_iter().flatten().collect();
    v.virtual_size = disk.virtual_size();
    if given.len() > 1 {
        let folders: Vec<PathBuf> = v
            .chain
            .iter()
            .rev()
            .map(|f| {
                let dir = f.parent().unwrap_or(Path::new("."));
                std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
            })
            .collect();
        if folders != given {
            return Err(Error::InvalidArgument(format!(
                "the chain of the disk runs through {} (oldest first), not through the \
                 folders given",
                shown(&folders)
            )));
        }
    }
    // Each file against its export's manifest, and each export's start
    // against what the one under it captured.
    let mut below: Option<super::Manifest> = None;
    for (k, f) in v.chain.iter().enumerate().rev() {
        let report = crate::disk::check::check(f)?;
        if !report.is_ok() {
            return Err(Error::InvalidArgument(format!(
                "{}: the file's structure is damaged: {report:?}",
                f.display()
            )));
        }
        let dir = f.parent().unwrap_or(Path::new("."));
        let m = read_manifest(dir)?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(entry) = m.disks.iter().find(|d| d.file == name) else {
            return Err(Error::InvalidArgument(format!(
                "{}: the export's manifest does not list this file",
                f.display()
            )));
        };
        let guid = Disk::open_single(f)?.info().data_write_guid.to_string();
        if guid != entry.data_write_guid {
            return Err(Error::InvalidArgument(format!(
                "{}: changed after the export (DataWriteGuid {guid}, the export recorded {})",
                f.display(),
                entry.data_write_guid
            )));
        }
        let is_base = k + 1 == v.chain.len();
        match (&below, &m.since) {
            (None, None) if is_base => {}
            (None, _) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: the oldest export of the chain is an incremental (its base is missing)",
                    dir.display()
                )))
            }
            (Some(b), since) => {
                let captured = b.captured.as_ref().map(|p| &p.id);
                if since.as_ref().map(|p| &p.id) != captured || captured.is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "{}: the export starts from {}, but the export under it captured {}",
                        dir.display(),
                        since
                            .as_ref()
                            .map(|p| format!("checkpoint {:?} (id {})", p.name, p.id))
                            .unwrap_or_else(|| "nothing (it is a full export)".into()),
                        b.captured_text()
                    )));
                }
            }
        }
        below = Some(m);
    }
    let mut buf = vec![0u8; CHUNK];
    let size = disk.virtual_size();
    let mut pos = 0u64;
    while pos < size {
        let n = (CHUNK as u64).min(size - pos) as usize;
        disk.read_at(&mut buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Folders for a message.
fn shown(folders: &[PathBuf]) -> String {
    folders
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
