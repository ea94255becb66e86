//! Reading VM folders for monitoring: what `vm.json` last committed, the
//! space the tree's differencing disks use, the journal of an operation.
//!
//! Nothing here takes a VM's lock or opens a disk: `vm.json` is read as
//! [`Vm::load`] reads it (it is replaced atomically, so it is always a
//! committed tree), disk sizes come from file metadata, and whether an
//! operation is under way is asked with a lock probe that never waits
//! ([`crate::io::held_exclusive`]), and only of a VM that has a journal.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::checkpoint::model::{read_journal, JOURNAL_FILE, LOCK_FILE, VM_FILE};
use crate::checkpoint::{TakenType, Vm, VmFile, VmRole};

/// How deep `--recursive` searches below each folder it is given.
const MAX_SEARCH_DEPTH: usize = 32;

/// One visible checkpoint (hidden nodes, kept only for their disks, are
/// not listed; their disks count in the VM's size and depth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFacts {
    /// Its name.
    pub name: String,
    /// Its stable id.
    pub id: String,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
    /// The kind it got (standard or production).
    pub taken: TakenType,
    /// Bytes its own differencing disks use on the host (0 when its disks
    /// are the VM's base disks).
    pub size_bytes: u64,
    /// Layers of its first disk's chain: 1 for the VM's base disk, one
    /// more per checkpoint above it (a base that is itself a differencing
    /// disk counts as one layer).
    pub chain_depth: u32,
    /// Warnings recorded when it was taken (the VM's role).
    pub warnings: Vec<String>,
    /// A delete of it began and did not finish.
    pub deleting: bool,
}

/// The journal of an operation: one under way (the VM's lock is held) or
/// one a crash interrupted (no one holds the lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The operation ("create", "apply", "merge", "remove", "export");
    /// None when the journal cannot be read.
    pub op: Option<String>,
    /// When the journal was last written, seconds since the Unix epoch.
    pub since: u64,
    /// Whether the VM's lock is held (the operation is under way).
    pub under_way: bool,
}

/// What monitoring knows of one readable VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFacts {
    /// The VM folder, as found.
    pub folder: PathBuf,
    /// The VM's name.
    pub name: String,
    /// Its role, if a risky one.
    pub role: Option<VmRole>,
    /// Its own age warning, seconds.
    pub age_warning_seconds: Option<u64>,
    /// Its visible checkpoints, parents before children.
    pub checkpoints: Vec<CheckpointFacts>,
    /// Bytes all differencing disks the tree made use on the host: every
    /// checkpoint's (hidden ones too) and the current state's.
    pub size_bytes: u64,
    /// The deepest chain of the tree (the current state's or a
    /// checkpoint's), in layers.
    pub chain_depth: u32,
    /// An operation under way or interrupted.
    pub operation: Option<Operation>,
}

/// A folder given or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A VM whose file could be read.
    Vm(VmFacts),
    /// A folder that should hold a VM but cannot be read (missing, not a
    /// VM folder, a damaged `vm.json`).
    Unreadable {
        /// The folder.
        folder: PathBuf,
        /// What is wrong.
        error: String,
    },
}

/// A path a recursive search could not look into (a folder it may not
/// read, a dangling symbolic link): left out, and said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Everything [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The VM folders, in the order given and found (a search lists a
    /// folder's entries by name).
    pub vms: Vec<Found>,
    /// What a search skipped.
    pub skipped: Vec<Skipped>,
    /// Folders searched that held no VM folder.
    pub empty: Vec<PathBuf>,
}

/// Read the VM folders `paths`, or with `recursive` search each of them
/// for VM folders (a folder holding `vm.json`; not searched further),
/// skipping what cannot be read. Symbolic links are followed; each folder
/// is searched (and each VM read) once.
pub fn scan(paths: &[PathBuf], recursive: bool) -> Scan {
    let mut out = Scan::default();
    let mut seen = HashSet::new();
    for p in paths {
        if recursive {
            let before = out.vms.len();
            search(p, 0, &mut out, &mut seen);
            if out.vms.len() == before {
                out.empty.push(p.clone());
            }
        } else {
            // A folder given twice is read once.
            let real = std::fs::canonicalize(p).ok();
            if real.is_none_or(|r| seen.insert(r)) {
                out.vms.push(read_vm(p));
            }
        }
    }
    out
}

/// Search `dir` (at `depth` below a folder given) for VM folders.
fn search(dir: &Path, depth: usize, out: &mut Scan, seen: &mut HashSet<PathBuf>) {
    if let Ok(real) = std::fs::canonicalize(dir) {
        if !seen.insert(real) {
            return;
        }
    }
    if std::fs::metadata(dir.join(VM_FILE)).is_ok() {
        out.vms.push(read_vm(dir));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if depth == 0 => {
            out.vms.push(Found::Unreadable {
                folder: dir.to_path_buf(),
                error: format!("cannot search the folder: {}", crate::Error::from(e)),
            });
            return;
        }
        Err(e) => {
            out.skipped.push(Skipped {
                path: dir.to_path_buf(),
                reason: format!("cannot read the folder: {}", crate::Error::from(e)),
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() && depth + 1 > MAX_SEARCH_DEPTH => out.skipped.push(Skipped {
                path: p,
                reason: format!("more than {MAX_SEARCH_DEPTH} folders deep"),
            }),
            Ok(m) if m.is_dir() => search(&p, depth + 1, out, seen),
            Ok(_) => {}
            Err(e) => {
                let dangling = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink());
                out.skipped.push(Skipped {
                    path: p,
                    reason: if dangling {
                        format!(
                            "a symbolic link that cannot be followed: {}",
                            crate::Error::from(e)
                        )
                    } else {
                        format!("cannot read it: {}", crate::Error::from(e))
                    },
                });
            }
        }
    }
}

/// Read one VM folder without its lock.
pub fn read_vm(dir: &Path) -> Found {
    // Named absolute (not resolved through links), as it was given.
    let folder = crate::disk::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let unreadable = |error: String| Found::Unreadable {
        folder: folder.clone(),
        error,
    };
    match std::fs::metadata(dir) {
        Err(e) => return unreadable(format!("cannot read the folder: {}", crate::Error::from(e))),
        Ok(m) if !m.is_dir() => return unreadable("not a folder".into()),
        Ok(_) => {}
    }
    match std::fs::metadata(dir.join(VM_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return unreadable(format!("not a VM folder (it has no {VM_FILE})"))
        }
        Err(e) => return unreadable(format!("cannot read {VM_FILE}: {}", crate::Error::from(e))),
        Ok(_) => {}
    }
    match Vm::load(dir) {
        Ok(data) => Found::Vm(facts_of(&folder, &data, operation(dir))),
        Err(e) => unreadable(e.to_string()),
    }
}

/// The journal of `dir`, if there is one.
fn operation(dir: &Path) -> Option<Operation> {
    let path = dir.join(JOURNAL_FILE);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    let since = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Some(Operation {
        op: read_journal(&path).ok().map(|j| j.op_name().to_string()),
        since,
        // A probe that fails (the lock file unreadable) says nothing is
        // under way: the journal is then reported as interrupted.
        under_way: crate::io::held_exclusive(&dir.join(LOCK_FILE)).unwrap_or(false),
    })
}

/// Bytes a file uses on the host (0 when it cannot be read).
fn used_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.blocks() * 512)
}

/// Layers of a node whose parent is `parent`: one per checkpoint above it,
/// on the base. Bounded, in case of a cycle (`vm.json` was checked for
/// them).
fn layers_under<'a>(parent_of: &HashMap<&'a str, Option<&'a str>>, parent: Option<&'a str>) -> u32 {
    let mut n = 1u32;
    let mut parent = parent;
    while let Some(p) = parent {
        if n as usize > parent_of.len() {
            break;
        }
        n += 1;
        parent = parent_of.get(p).copied().flatten();
    }
    n
}

/// The facts of a VM file read from `dir`.
fn facts_of(dir: &Path, data: &VmFile, operation: Option<Operation>) -> VmFacts {
    let parent_of: HashMap<&str, Option<&str>> = data
        .checkpoints
        .iter()
        .map(|c| (c.id.as_str(), c.parent.as_deref()))
        .collect();
    let layers = |parent: Option<&str>| layers_under(&parent_of, parent);
    // Only the files the tree made count: never the VM's base disks.
    let own = |disks: &[PathBuf]| -> u64 {
        disks
            .iter()
            .filter(|d| !data.disks.contains(d))
            .map(|d| used_bytes(d))
            .sum()
    };
    let mut size_bytes = own(&data.current.disks);
    let mut chain_depth = layers(data.current.parent.as_deref());
    let mut checkpoints = Vec::new();
    for c in &data.checkpoints {
        let size = own(&c.disks);
        let depth = layers(c.parent.as_deref());
        size_bytes += size;
        chain_depth = chain_depth.max(depth);
        if c.hidden {
            continue;
        }
        checkpoints.push(CheckpointFacts {
            name: c.name.clone(),
            id: c.id.clone(),
            created: c.created,
            taken: c.taken,
            size_bytes: size,
            chain_depth: depth,
            warnings: c.warnings.clone(),
            deleting: c.deleting,
        });
    }
    VmFacts {
        folder: dir.to_path_buf(),
        name: data.config.name.clone(),
        role: data.settings.role,
        age_warning_seconds: data.settings.age_warning_seconds,
        checkpoints,
        size_bytes,
        chain_depth,
        operation,
    }
}
