//! Where a VM's files are and whose they are: paths inside the VM folder
//! are stored in `vm.json` (and the journal) relative to the folder and
//! resolved on open, so the folder can be moved; a VM has a stable id and
//! records the folder it was last saved from, so a copy of the folder is
//! told from a move, and a copy never changes a file the VM it was copied
//! from still uses.
//!
//! Knows the VM file and the journal, not disks.

use std::path::{Component, Path, PathBuf};

use crate::checkpoint::model::{read_vm_file, Journal, VmFile, VM_FILE};
use crate::error::{Error, Result};

/// `p` lexically cleaned (`.` dropped, `..` applied).
fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// How `p` is stored for a VM in `dir`: relative when inside `dir`.
fn store(dir: &Path, p: &Path) -> PathBuf {
    match clean(p).strip_prefix(dir) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => p.to_path_buf(),
    }
}

/// A stored path resolved for a VM in `dir` (absolute paths are kept).
fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Every path `vm.json` holds, changed by `f`.
fn map_vm(data: &mut VmFile, f: &dyn Fn(&Path) -> PathBuf) {
    let one = |v: &mut PathBuf| *v = f(v);
    data.disks.iter_mut().for_each(one);
    data.settings.checkpoint_location.iter_mut().for_each(one);
    data.current.disks.iter_mut().for_each(one);
    data.current.saved_state.iter_mut().for_each(one);
    for c in &mut data.checkpoints {
        c.disks.iter_mut().for_each(one);
        c.config_file.iter_mut().for_each(one);
        c.saved_state.iter_mut().for_each(one);
    }
    data.past_checkpoint_locations.iter_mut().for_each(one);
    data.pending_removals.iter_mut().for_each(one);
}

/// Every path a journal holds, changed by `f`.
fn map_journal(j: &mut Journal, f: &dyn Fn(&Path) -> PathBuf) {
    let one = |v: &mut PathBuf| *v = f(v);
    match j {
        Journal::Create { files, dirs, .. } => {
            files.iter_mut().for_each(one);
            dirs.iter_mut().for_each(one);
        }
        Journal::Apply {
            new_files,
            old_files,
            old_saved,
            ..
        } => {
            new_files.iter_mut().for_each(one);
            old_files.iter_mut().for_each(one);
            old_saved.iter_mut().for_each(one);
        }
        Journal::Merge { files, .. }
        | Journal::Remove { files, .. }
        | Journal::Export { files } => files.iter_mut().for_each(one),
    }
}

/// `data` as the VM in `dir` stores it: paths inside `dir` relative, the
/// folder recorded.
pub fn stored_vm(dir: &Path, data: &VmFile) -> VmFile {
    let mut d = data.clone();
    map_vm(&mut d, &|p| store(dir, p));
    d.folder = Some(dir.to_path_buf());
    d
}

/// A VM file read from `dir`, its relative paths resolved.
pub fn resolved_vm(dir: &Path, mut data: VmFile) -> VmFile {
    map_vm(&mut data, &|p| resolve(dir, p));
    data
}

/// A journal as the VM in `dir` stores it.
pub fn stored_journal(dir: &Path, j: &Journal) -> Journal {
    let mut j = j.clone();
    map_journal(&mut j, &|p| store(dir, p));
    j
}

/// A journal read from `dir`, its relative paths resolved.
pub fn resolved_journal(dir: &Path, mut j: Journal) -> Journal {
    map_journal(&mut j, &|p| resolve(dir, p));
    j
}

/// A new VM id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What opening the VM at `dir` found about where it was last saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Saved from `dir` (or a VM file from before ids): nothing to do.
    Home,
    /// Saved from another folder that holds no VM with its id any more:
    /// the folder was moved (keep the id, record the new folder).
    Moved,
    /// Saved from another folder that still holds a VM with its id: this
    /// folder is a copy of that VM (it gets a new id and never changes the
    /// files the original uses).
    Copied(PathBuf),
}

/// Where the VM file of a VM opened at `dir` was saved from.
pub fn found_at(dir: &Path, data: &VmFile) -> Found {
    let (Some(id), Some(folder)) = (&data.id, &data.folder) else {
        return Found::Home;
    };
    if folder == dir {
        return Found::Home;
    }
    match read_vm_file(&folder.join(VM_FILE)) {
        Ok(other) if other.id.as_ref() == Some(id) => Found::Copied(folder.clone()),
        _ => Found::Moved,
    }
}

/// Every file the VM `data` uses or may remove: base and current disks,
/// checkpoint disks, configuration copies and memory states.
pub fn files_of(data: &VmFile) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = data.disks.clone();
    out.extend(data.current.disks.iter().cloned());
    out.extend(data.current.saved_state.iter().cloned());
    for c in &data.checkpoints {
        out.extend(c.disks.iter().cloned());
        out.extend(c.config_file.iter().cloned());
        out.extend(c.saved_state.iter().cloned());
    }
    out
}

/// Refuse (`InvalidArgument`, naming the file and its owner, before
/// anything changes) when one of `files`, which the VM `data` is about to
/// write, merge into or remove, is used by another existing VM this one
/// shares files with (the VM it was copied from).
pub fn refuse_foreign(data: &VmFile, files: &[PathBuf], what: &str) -> Result<()> {
    for other_dir in &data.related_vms {
        let Ok(other) = read_vm_file(&other_dir.join(VM_FILE)) else {
            continue;
        };
        if other.id.is_some() && other.id == data.id {
            continue;
        }
        let theirs = files_of(&other);
        if let Some(f) = files
            .iter()
            .find(|f| theirs.iter().any(|t| same_file(t, f)))
        {
            return Err(Error::InvalidArgument(format!(
                "{}: this disk file belongs to VM {:?} in {} (this VM is a copy of it and \
                 shares the file); {what} would change it: nothing was changed",
                f.display(),
                other.config.name,
                other_dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether two paths name one file (the same path, or the same inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if clean(a) == clean(b) {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
