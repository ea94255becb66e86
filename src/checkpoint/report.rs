//! Reports: the checkpoint list with monitoring facts, the checkpoint
//! location, and the stray files that look like the tree's but that no
//! node owns.

use std::path::{Path, PathBuf};

use super::vm::*;
use crate::checkpoint::model::*;
use crate::checkpoint::owner;
use crate::disk::{Disk, OpenMode};
use crate::error::Result;

/// A checkpoint as listed, with what monitoring wants to know.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointView {
    /// The record.
    pub checkpoint: Checkpoint,
    /// Seconds since it was taken.
    pub age_seconds: u64,
    /// Whether it is older than the VM's age warning.
    pub age_warning: bool,
    /// Bytes its differencing disks use on the host.
    pub size_bytes: u64,
    /// Layers under its first disk (1 for a base disk).
    pub chain_depth: usize,
    /// Upper bound of the bytes deleting it would have to copy.
    pub delete_copy_bytes: u64,
}

impl Vm {
    /// Files that look like ours (differencing disks next to the VM's disks,
    /// configuration copies and memory state in the checkpoint location)
    /// but that no node of the tree owns.
    pub fn strays(&self) -> Result<Vec<PathBuf>> {
        strays_of(&self.dir, &self.data)
    }

    /// Every checkpoint with its monitoring facts, parents before children.
    pub fn list(&self) -> Result<Vec<CheckpointView>> {
        list_of(&self.data)
    }
}

/// Monitoring facts for every checkpoint of a VM file.
pub fn list_of(data: &VmFile) -> Result<Vec<CheckpointView>> {
    let t = now();
    let mut out = Vec::new();
    for c in &data.checkpoints {
        let age = t.saturating_sub(c.created);
        // Its differencing files, each looked at alone (no chain to open,
        // no lock to wait for: a file a writer holds is still counted).
        let mut size = 0u64;
        for d in &c.disks {
            if crate::disk::merge::look_at(d).is_ok_and(|f| f.has_parent()) {
                use std::os::unix::fs::MetadataExt;
                size += std::fs::metadata(d).map(|m| m.blocks() * 512).unwrap_or(0);
            }
        }
        let chain_depth = c
            .disks
            .first()
            .and_then(|d| Disk::open(d, OpenMode::ReadOnly).ok())
            .map(|d| d.depth())
            .unwrap_or(0);
        // Deleting copies the only dependant's own changes (if it has one).
        let deps: Vec<&[PathBuf]> = data
            .checkpoints
            .iter()
            .filter(|x| x.parent.as_deref() == Some(&c.id))
            .map(|x| x.disks.as_slice())
            .chain(
                (data.current.parent.as_deref() == Some(&c.id))
                    .then_some(data.current.disks.as_slice()),
            )
            .collect();
        let mut delete_copy_bytes = 0;
        if deps.len() == 1 {
            for d in deps[0] {
                if let Ok(disk) = Disk::open(d, OpenMode::ReadOnly) {
                    if let Ok(r) = disk.changed_ranges(1) {
                        delete_copy_bytes += r.iter().map(|r| r.length).sum::<u64>();
                    }
                }
            }
        }
        out.push(CheckpointView {
            checkpoint: c.clone(),
            age_seconds: age,
            age_warning: data.settings.age_warning_seconds.is_some_and(|w| age > w),
            size_bytes: size,
            chain_depth,
            delete_copy_bytes,
        });
    }
    Ok(out)
}

/// The checkpoint location of a VM: its setting, or `DIR/checkpoints`.
pub fn checkpoint_location_of(dir: &Path, data: &VmFile) -> PathBuf {
    data.settings
        .checkpoint_location
        .clone()
        .unwrap_or_else(|| dir.join("checkpoints"))
}

/// Files that look like ours (differencing disks next to the VM's disks,
/// configuration copies and memory state in the checkpoint location)
/// but that no node of the tree owns.
///
/// Only names the tree gives: `<disk>_<anything>.avhdx` (`.avhd` for a
/// VHD) next to a disk,
/// `<id>.json` and `<id>.vmrs` (`<id>` a UUID) in the checkpoint location
/// or in one the VM used before; never the VM's own files (`vm.json`, the
/// journal, the lock file) nor any file the VM uses.
pub fn strays_of(dir: &Path, data: &VmFile) -> Result<Vec<PathBuf>> {
    let location = checkpoint_location_of(dir, data);
    let mut locations = vec![location.clone()];
    locations.extend(data.past_checkpoint_locations.iter().cloned());
    let mut owned: Vec<PathBuf> = data.current.disks.clone();
    owned.extend(data.disks.iter().cloned());
    owned.extend(
        [VM_FILE, JOURNAL_FILE, LOCK_FILE]
            .iter()
            .map(|f| dir.join(f)),
    );
    owned.extend(data.current.saved_state.iter().cloned());
    for c in &data.checkpoints {
        owned.extend(c.disks.iter().cloned());
        owned.extend(c.config_file.iter().cloned());
        owned.extend(c.saved_state.iter().cloned());
    }
    let mut dirs: Vec<PathBuf> = owned
        .iter()
        .filter_map(|p| p.parent().map(|d| d.to_path_buf()))
        .collect();
    dirs.extend(locations.iter().cloned());
    dirs.sort();
    dirs.dedup();
    let stems: Vec<String> = data
        .disks
        .iter()
        .filter_map(|d| {
            d.file_stem()
                .and_then(|s| s.to_str())
                .map(|s| format!("{s}_"))
        })
        .collect();
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            let id_named = [".vmrs", ".json"].iter().any(|ext| {
                name.strip_suffix(ext)
                    .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
            });
            let differencing = name.ends_with(".avhdx") || name.ends_with(".avhd");
            let ours = (differencing && stems.iter().any(|s| name.starts_with(s)))
                || (locations.contains(&d) && id_named);
            if ours && !owned.contains(&p) {
                out.push(p);
            }
        }
    }
    // Another VM sharing the folder or the checkpoint location: its files.
    let theirs = owner::others_files(&out, data.id.as_deref());
    out.retain(|p| !theirs.contains(p));
    out.sort();
    Ok(out)
}
