//! A VM and its checkpoint tree: create, apply, revert, delete (merge),
//! rename, export; every multi-step operation journaled and reconciled.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::checkpoint::export::{export_names, CONFIG_FILE, MEMORY_FILE};
use crate::checkpoint::model::*;
use crate::checkpoint::owner;
use crate::disk::absolute;
use crate::disk::merge::{self, MergeOptions};
use crate::disk::{ChildOptions, CreateOptions, Disk, OpenMode};
use crate::error::{Error, Result};

/// What the hypervisor does for the library during checkpoint operations.
/// Every method has a default that does nothing.
///
/// The order of a checkpoint (also the one `apply` with a saved current
/// state takes first), each call at most once:
///
/// 1. [`Hooks::quiesce`] (production, VM running or saved) — or
///    [`Hooks::save_memory`] (standard: the guest is paused while its
///    state is written);
/// 2. the disk switch: the new differencing disks are made and the VM file
///    committed, so the guest's next write lands in them;
/// 3. [`Hooks::thaw`] after a successful quiesce, [`Hooks::resume`] after
///    `save_memory` was called — also when the switch (or `save_memory`
///    itself) failed, so the guest never stays frozen or paused.
///
/// A checkpoint of an off VM quiesces nothing (its disks are consistent
/// as they are): neither `quiesce` nor `thaw` is called for it.
pub trait Hooks {
    /// Quiesce the guest (flush applications, freeze file systems) for a
    /// production checkpoint. `Err(reason)` when it could not.
    fn quiesce(&mut self) -> std::result::Result<(), String> {
        Err("no quiesce hook is installed".into())
    }
    /// Undo [`Hooks::quiesce`]; called after the disk switch (or its failure).
    fn thaw(&mut self) {}
    /// Write the VM's memory and CPU state for a standard checkpoint.
    /// Return `Ok(false)` when there is none (the VM is off, or the
    /// hypervisor keeps none): the checkpoint then records that it kept no
    /// memory ([`Checkpoint::memory_kept`]).
    fn save_memory(&mut self, out: &mut dyn Write) -> std::io::Result<bool> {
        let _ = out;
        Ok(false)
    }
    /// Let the guest run again after [`Hooks::save_memory`]; called after
    /// the disk switch (or its failure) whenever `save_memory` was called,
    /// whatever it returned.
    fn resume(&mut self) {}
    /// Progress of a long step (merge, export): return false to cancel.
    fn progress(&mut self, done: u64, total: u64) -> bool {
        let _ = (done, total);
        true
    }
}

/// The kind a new checkpoint gets, and why.
struct Taken {
    taken: TakenType,
    requested: CheckpointType,
    fallback_reason: Option<String>,
}

/// Hooks that do nothing: no quiesce (production falls back to standard),
/// no memory state.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl Hooks for NoHooks {}

/// Parameters of a new VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The VM's name.
    pub name: String,
    /// Its VHDX disks.
    pub disks: Vec<PathBuf>,
    /// Pass-through devices (never checkpointed).
    pub passthrough: Vec<String>,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Checkpoint settings.
    pub settings: Settings,
    /// The hypervisor's own settings.
    pub hypervisor: serde_json::Value,
}

impl VmSpec {
    /// A VM with defaults: 1024 MiB, 1 CPU, production checkpoints.
    pub fn new(name: &str, disks: Vec<PathBuf>) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            disks,
            passthrough: Vec::new(),
            memory_mib: 1024,
            cpus: 1,
            settings: Settings::default(),
            hypervisor: serde_json::Value::Null,
        }
    }
}

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

/// An open VM folder. Holding it holds the VM's lock: another process
/// trying to change the same VM is refused until it is dropped.
#[derive(Debug)]
pub struct Vm {
    dir: PathBuf,
    data: VmFile,
    _lock: (File, crate::io::FileLock),
    /// What went wrong after an operation was committed ([`Vm::take_warnings`]).
    warnings: Vec<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock_vm(dir: &Path) -> Result<(File, crate::io::FileLock)> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::from(e).in_file(&path))?;
    match crate::io::lock_file(&f, crate::io::LockKind::Exclusive) {
        Ok(l) => Ok((f, l)),
        Err(e) => match crate::io::lock_conflict(&e) {
            Some(c) => Err(Error::Busy(format!(
                "{}: the VM is being changed by {}",
                dir.display(),
                c.holder_name()
            ))),
            None => Err(Error::from(e).in_file(&path)),
        },
    }
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match crate::io::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).in_file(p)),
    }
}

/// The warning for an old disk kept because it is held (`e`, the `Busy`
/// error naming it).
fn pending_warning(e: &Error) -> String {
    format!(
        "an old disk of the VM is no longer used but was not removed because it is held \
         ({e}); it is removed when the VM is next opened after it is free"
    )
}

/// Remove a file an interrupted operation made, and the temporary file an
/// interrupted [`write_atomic`] of it may have left.
fn remove_made(p: &Path) -> Result<()> {
    remove_if_exists(&temp_of(p))?;
    remove_if_exists(p)
}

/// The longest checkpoint name, in characters (Unicode scalar values, not
/// bytes), as in Hyper-V.
pub const MAX_NAME_CHARS: usize = 100;

/// Every checkpoint name is refused when empty (or only blanks): the one
/// check for names given to create, find, apply, delete, rename and export.
fn name_given(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "a checkpoint name must not be empty".into(),
        ));
    }
    Ok(())
}

/// The rule for a new checkpoint name (create, apply's saved current
/// state, rename): not empty, at most [`MAX_NAME_CHARS`] characters, no
/// control characters (newline, tab, ...) or line separators, and no blank
/// at either end (refused, not trimmed). Names already in a VM file are
/// found whatever they are.
fn name_valid(name: &str) -> Result<()> {
    name_given(name)?;
    let n = name.chars().count();
    if n > MAX_NAME_CHARS {
        return Err(Error::InvalidArgument(format!(
            "a checkpoint name must be at most {MAX_NAME_CHARS} characters long \
             ({n} given)"
        )));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err(Error::InvalidArgument(format!(
            "a checkpoint name must not contain control characters such as a newline or \
             a tab ({name:?} given)"
        )));
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(Error::InvalidArgument(format!(
            "a checkpoint name must not begin or end with a blank ({name:?} given)"
        )));
    }
    Ok(())
}

/// Refuse (`Busy`, naming the disk) when another handle or process has
/// one of `disks` open: for operations about to write or remove them,
/// before their first step, so that a refusal changes nothing.
fn check_disks_unused(disks: &[PathBuf]) -> Result<()> {
    for d in disks.iter().filter(|d| d.exists()) {
        crate::disk::check_not_in_use(d)?;
    }
    Ok(())
}

/// The DataWriteGuid of the disk file at `p` ("" when it cannot be read).
/// A merge changes it before it changes the first byte of what the disk reads.
fn data_write_guid(p: &Path) -> String {
    Disk::open(p, OpenMode::ReadOnly)
        .map(|d| d.info().data_write_guid.to_string())
        .unwrap_or_default()
}

/// The bytes a merge of `src` into its ancestor `target` copies.
fn merge_size(src: &Path, target: &Path) -> Result<u64> {
    let d = Disk::open(src, OpenMode::ReadOnly)?;
    let k = d.level_of(target)?;
    Ok(d.changed_ranges(k)?.iter().map(|r| r.length).sum())
}

/// The folders `create_dir_all(dir)` would make, outermost first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    out.reverse();
    out
}

/// Remove the folders a rolled-back operation made, innermost first, as
/// long as they are empty.
fn remove_empty_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => break, // not empty: neither are the folders around it
        }
    }
}

/// A name for a new differencing disk next to `parent`, unique by `id`.
fn child_path(parent: &Path, original: &Path, id: &str) -> PathBuf {
    let stem = original
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("disk");
    parent
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{stem}_{id}.avhdx"))
}

impl Vm {
    /// Create a VM folder `dir` (made if missing; must not hold a VM yet).
    pub fn create(dir: &Path, spec: &VmSpec) -> Result<Vm> {
        if spec.name.trim().is_empty() {
            return Err(Error::InvalidArgument("the VM needs a name".into()));
        }
        if spec.memory_mib == 0 || spec.cpus == 0 {
            return Err(Error::InvalidArgument(
                "memory and CPU count must be at least 1".into(),
            ));
        }
        let mut disks = Vec::new();
        for d in &spec.disks {
            let d = absolute(d)?;
            // A VM disk must be a usable VHDX (a chain is fine).
            Disk::open(&d, OpenMode::ReadOnly)?;
            if disks.contains(&d) {
                return Err(Error::InvalidArgument(format!(
                    "disk {} is given twice",
                    d.display()
                )));
            }
            disks.push(d);
        }
        // A folder that already holds a VM is refused first (Busy while that
        // VM is open), before the disks' owners are looked at: its disks are
        // naturally that VM's.
        if dir.join(VM_FILE).exists() {
            let held = std::fs::canonicalize(dir).map_err(|e| Error::from(e).in_file(dir))?;
            let _lock = lock_vm(&held)?;
            return Err(Error::AlreadyExists(format!(
                "{} already holds a VM",
                held.display()
            )));
        }
        owner::refuse_used(&disks)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::from(e).in_file(dir))?;
        let dir = std::fs::canonicalize(dir).map_err(|e| Error::from(e).in_file(dir))?;
        let lock = lock_vm(&dir)?;
        if dir.join(VM_FILE).exists() {
            return Err(Error::AlreadyExists(format!(
                "{} already holds a VM",
                dir.display()
            )));
        }
        let mut settings = spec.settings.clone();
        if let Some(l) = &settings.checkpoint_location {
            settings.checkpoint_location = Some(absolute(l)?);
        }
        let data = VmFile {
            version: 1,
            config: VmConfig {
                name: spec.name.clone(),
                memory_mib: spec.memory_mib,
                cpus: spec.cpus,
                passthrough: spec.passthrough.clone(),
                hypervisor: spec.hypervisor.clone(),
            },
            disks: disks.clone(),
            settings,
            state: VmState::Off,
            current: Current {
                parent: None,
                disks,
                saved_state: None,
            },
            checkpoints: Vec::new(),
            past_checkpoint_locations: Vec::new(),
            id: Some(owner::new_id()),
            folder: Some(dir.clone()),
            related_vms: Vec::new(),
            pending_removals: Vec::new(),
        };
        write_json(&dir.join(VM_FILE), &owner::stored_vm(&dir, &data))?;
        let mut warnings = Vec::new();
        for d in &data.disks {
            // Without its stamp a disk is still the VM's, only less guarded.
            if let Err(e) = owner::stamp(d, &dir, &data) {
                warnings.push(format!(
                    "{}: could not stamp it as this VM's ({e}): another VM could be \
                     given it too",
                    d.display()
                ));
            }
        }
        Ok(Vm {
            dir,
            data,
            _lock: lock,
            warnings,
        })
    }

    /// Open a VM folder for changes: takes the VM's lock (refused while
    /// another process holds it) and finishes or undoes an operation a
    /// crash interrupted.
    pub fn open(dir: &Path) -> Result<Vm> {
        let dir = std::fs::canonicalize(dir).map_err(|e| Error::from(e).in_file(dir))?;
        if !dir.join(VM_FILE).is_file() {
            return Err(Error::NotFound(format!(
                "{} holds no VM ({VM_FILE} is missing)",
                dir.display()
            )));
        }
        let lock = lock_vm(&dir)?;
        let data = read_vm_file(&dir.join(VM_FILE))?;
        let mut vm = Vm {
            dir,
            data,
            _lock: lock,
            warnings: Vec::new(),
        };
        vm.adopt_folder()?;
        vm.reconcile()?;
        vm.retry_pending_removals()?;
        vm.check_disks_exist()?;
        Ok(vm)
    }

    /// A VM file saved from another folder: a moved VM keeps its id and
    /// records its new folder; a copy (the folder it was saved from still
    /// holds a VM with its id) gets a new id and remembers the original,
    /// whose files it then never changes. One atomic save: a crash before
    /// it leaves the file as it was, and the next open does it again.
    fn adopt_folder(&mut self) -> Result<()> {
        let found = owner::found_at(&self.dir, &self.data);
        if found == owner::Found::Home
            && self.data.id.is_some()
            && self.data.folder.as_deref() == Some(&self.dir)
        {
            return Ok(());
        }
        if let owner::Found::Copied(orig) = &found {
            // The files a copy would remove later are the original's.
            self.data.pending_removals.clear();
            self.data.id = Some(owner::new_id());
            if !self.data.related_vms.contains(orig) {
                self.data.related_vms.push(orig.clone());
            }
        }
        if self.data.id.is_none() {
            self.data.id = Some(owner::new_id());
        }
        // A journal of an operation under way is kept as it is: its
        // relative paths already resolve in the new folder.
        self.save()?;
        self.restamp(&found);
        Ok(())
    }

    /// After a move or a copy, stamp again the disk files that are now this
    /// VM's, so that their stamps name the folder the VM is in (a stamp
    /// naming a folder without the VM counts as no one's): after a move
    /// every file stamped with this VM's id; after a copy the files inside
    /// the copy's own folder. Best effort: a file that cannot be stamped
    /// (held by a running hypervisor, read-only) is a warning.
    fn restamp(&mut self, found: &owner::Found) {
        let copied = matches!(found, owner::Found::Copied(_));
        let id = self.data.id.clone();
        let mut files: Vec<PathBuf> = self.data.current.disks.clone();
        for c in &self.data.checkpoints {
            files.extend(c.disks.iter().cloned());
        }
        files.sort();
        files.dedup();
        for f in files {
            let ours = if copied {
                f.starts_with(&self.dir)
            } else {
                owner::stamp_of(&f).is_some_and(|s| Some(&s.vm_id) == id.as_ref())
            };
            let stale = owner::stamp_of(&f).is_none_or(|s| s.folder != self.dir);
            if ours && stale {
                if let Err(e) = owner::stamp(&f, &self.dir, &self.data) {
                    self.warnings.push(format!(
                        "{}: could not stamp it with the VM's new folder ({e})",
                        f.display()
                    ));
                }
            }
        }
    }

    /// Refuse a VM whose committed tree names a disk file that is not
    /// there (a volume not mounted, a file moved or removed by hand): no
    /// operation may start on a tree whose files are missing.
    fn check_disks_exist(&self) -> Result<()> {
        let d = &self.data;
        let mut disks: Vec<(String, &PathBuf)> = d
            .current
            .disks
            .iter()
            .map(|p| ("the current state".to_string(), p))
            .collect();
        for c in &d.checkpoints {
            let whose = if c.hidden {
                format!("the deleted branch point {}", c.id)
            } else {
                format!("checkpoint {:?}", c.name)
            };
            disks.extend(c.disks.iter().map(|p| (whose.clone(), p)));
        }
        match disks.into_iter().find(|(_, p)| !p.exists()) {
            None => Ok(()),
            Some((whose, p)) => Err(Error::NotFound(format!(
                "{}: the disk file {} of {whose} does not exist: put it back (mount its \
                 volume, move it back) before changing the VM",
                self.dir.join(VM_FILE).display(),
                p.display()
            ))),
        }
    }

    /// Read a VM's file without locking it or finishing interrupted work
    /// (for showing and listing).
    pub fn load(dir: &Path) -> Result<VmFile> {
        read_vm_file(&dir.join(VM_FILE))
    }

    /// The VM folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the VM file holds.
    pub fn data(&self) -> &VmFile {
        &self.data
    }

    /// Warnings of the last operations, emptied by this call: a delete or
    /// apply is done once committed (the VM file says so), and a step after
    /// that which fails — removing the old files, collapsing a hidden branch
    /// point — is not reported as its failure but here; that tidy-up is
    /// finished when the VM is next opened (or before its next operation).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// `r`, the rest of an operation after its commit, as a warning.
    fn after_commit(&mut self, what: &str, r: Result<()>) {
        if let Err(e) = r {
            self.warnings.push(format!(
                "{what} was done, but tidying up after it failed ({e}); \
                 that is finished when the VM is next opened"
            ));
        }
    }

    /// The checkpoint location (configuration copies and memory state).
    pub fn checkpoint_location(&self) -> PathBuf {
        checkpoint_location_of(&self.dir, &self.data)
    }

    fn save(&self) -> Result<()> {
        write_json(
            &self.dir.join(VM_FILE),
            &owner::stored_vm(&self.dir, &self.data),
        )
    }

    fn journal(&self, j: &Journal) -> Result<()> {
        write_json(
            &self.dir.join(JOURNAL_FILE),
            &owner::stored_journal(&self.dir, j),
        )
    }

    fn end_journal(&self) -> Result<()> {
        remove_if_exists(&self.dir.join(JOURNAL_FILE))
    }

    /// Set the VM's state (the hypervisor reports it).
    pub fn set_state(&mut self, state: VmState) -> Result<()> {
        self.settle(None)?;
        self.data.state = state;
        let old = if state != VmState::Saved {
            self.data.current.saved_state.take()
        } else {
            None
        };
        self.save()?;
        self.release_saved_state(old)
    }

    /// Remove a memory-state file the current state no longer uses, unless
    /// a checkpoint still owns it.
    fn release_saved_state(&self, old: Option<PathBuf>) -> Result<()> {
        let Some(p) = old else { return Ok(()) };
        let owned = self.data.current.saved_state.as_ref() == Some(&p)
            || self
                .data
                .checkpoints
                .iter()
                .any(|c| c.saved_state.as_ref() == Some(&p));
        if owned {
            Ok(())
        } else {
            remove_if_exists(&p)
        }
    }

    /// Remove the old disks of a committed apply, never one another handle
    /// or process holds (`Busy`): those are kept in `vm.json` as pending
    /// removals (saved before the journal that named them ends), reported
    /// as warnings and removed by the first open that finds them free.
    fn remove_unless_held(&mut self, files: &[PathBuf]) -> Result<()> {
        let mut held = Vec::new();
        for f in files {
            match crate::disk::check_not_in_use(f) {
                Ok(()) => remove_if_exists(f)?,
                Err(e) if e.kind() == crate::ErrorKind::Busy => held.push((f.clone(), e)),
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if held.is_empty() {
            return Ok(());
        }
        for (f, e) in held {
            if !self.data.pending_removals.contains(&f) {
                self.data.pending_removals.push(f);
            }
            self.warnings.push(pending_warning(&e));
        }
        self.save()
    }

    /// Retry the pending removals ([`VmFile::pending_removals`]): a file
    /// now free is removed, one still held stays listed (and is reported);
    /// one the tree uses again, or that is gone, is only dropped from the list.
    fn retry_pending_removals(&mut self) -> Result<()> {
        if self.data.pending_removals.is_empty() {
            return Ok(());
        }
        let used = owner::files_of(&self.data);
        let mut left = Vec::new();
        for f in std::mem::take(&mut self.data.pending_removals) {
            if used.contains(&f) || !f.exists() {
                continue;
            }
            match crate::disk::check_not_in_use(&f) {
                Ok(()) => remove_if_exists(&f)?,
                Err(e) if e.kind() == crate::ErrorKind::Busy => {
                    self.warnings.push(pending_warning(&e));
                    left.push(f);
                }
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
                Err(e) => {
                    left.push(f);
                    self.data.pending_removals = left;
                    return Err(e);
                }
            }
        }
        self.data.pending_removals = left;
        self.save()
    }

    /// The configuration copy and memory state of checkpoint `c` that can
    /// go with it. A memory state is shared, never copied: the current state
    /// and other checkpoints (taken of the saved VM) may still refer to it,
    /// and it goes only with the last of them.
    fn own_files(&self, c: &Checkpoint) -> Vec<PathBuf> {
        let shared = |p: &PathBuf| {
            self.data.current.saved_state.as_ref() == Some(p)
                || self
                    .data
                    .checkpoints
                    .iter()
                    .any(|o| o.id != c.id && o.saved_state.as_ref() == Some(p))
        };
        c.config_file
            .iter()
            .chain(c.saved_state.iter().filter(|p| !shared(p)))
            .cloned()
            .collect()
    }

    /// Change memory and CPU count.
    pub fn set_resources(&mut self, memory_mib: Option<u64>, cpus: Option<u32>) -> Result<()> {
        self.settle(None)?;
        if memory_mib == Some(0) || cpus == Some(0) {
            return Err(Error::InvalidArgument(
                "memory and CPU count must be at least 1".into(),
            ));
        }
        if let Some(m) = memory_mib {
            self.data.config.memory_mib = m;
        }
        if let Some(c) = cpus {
            self.data.config.cpus = c;
        }
        self.save()
    }

    /// Replace the hypervisor's own settings.
    pub fn set_hypervisor_settings(&mut self, v: serde_json::Value) -> Result<()> {
        self.settle(None)?;
        self.data.config.hypervisor = v;
        self.save()
    }

    /// Change the checkpoint settings.
    pub fn set_settings(&mut self, s: Settings) -> Result<()> {
        self.settle(None)?;
        let mut s = s;
        if let Some(l) = &s.checkpoint_location {
            s.checkpoint_location = Some(absolute(l)?);
        }
        // Remember the location left, so that strays there are found.
        let old = self.checkpoint_location();
        let old_past = self.data.past_checkpoint_locations.clone();
        let old_settings = std::mem::replace(&mut self.data.settings, s);
        let new = self.checkpoint_location();
        let past = &mut self.data.past_checkpoint_locations;
        past.retain(|p| *p != new);
        if old != new && !past.contains(&old) {
            past.push(old);
        }
        let saved = self.save();
        if saved.is_err() {
            self.data.settings = old_settings;
            self.data.past_checkpoint_locations = old_past;
        }
        saved
    }

    /// The checkpoint called `name` (hidden ones are not found by name; one
    /// being deleted is, with [`Checkpoint::deleting`] set). An empty name
    /// is an invalid argument.
    pub fn find(&self, name: &str) -> Result<&Checkpoint> {
        name_given(name)?;
        self.data
            .checkpoints
            .iter()
            .find(|c| same_name(&c.name, name) && !c.hidden)
            .ok_or_else(|| Error::NotFound(format!("no checkpoint is called {name:?}")))
    }

    /// The checkpoint called `name`, refused while it is being deleted
    /// (its disks no longer hold its data).
    fn usable(&self, name: &str) -> Result<&Checkpoint> {
        let c = self.find(name)?;
        if c.deleting {
            return Err(Error::Busy(format!(
                "checkpoint {name:?} is being deleted; the delete is finished by the next \
                 operation on the VM"
            )));
        }
        Ok(c)
    }

    fn index(&self, id: &str) -> Result<usize> {
        self.data
            .checkpoints
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| {
                Error::corrupt(
                    crate::error::Structure::CheckpointTree,
                    None,
                    crate::error::Reason::Invalid(format!(
                        "the tree refers to a missing checkpoint {id}"
                    )),
                )
            })
    }

    /// The states that depend on checkpoint `id`: child checkpoints, and
    /// `None` for the current state when it hangs under it.
    fn dependants(&self, id: &str) -> Vec<Option<String>> {
        let mut v: Vec<Option<String>> = self
            .data
            .checkpoints
            .iter()
            .filter(|c| c.parent.as_deref() == Some(id))
            .map(|c| Some(c.id.clone()))
            .collect();
        if self.data.current.parent.as_deref() == Some(id) {
            v.push(None);
        }
        v
    }

    fn disks_of(&self, dep: &Option<String>) -> Result<Vec<PathBuf>> {
        Ok(match dep {
            Some(id) => self.data.checkpoints[self.index(id)?].disks.clone(),
            None => self.data.current.disks.clone(),
        })
    }

    /// A new name for a checkpoint (`except`: the one being renamed).
    fn check_name(&self, name: &str, except: Option<&str>) -> Result<()> {
        name_valid(name)?;
        if self
            .data
            .checkpoints
            .iter()
            .any(|c| same_name(&c.name, name) && !c.hidden && Some(c.id.as_str()) != except)
        {
            return Err(Error::AlreadyExists(format!(
                "a checkpoint called {name:?} already exists"
            )));
        }
        Ok(())
    }

    /// Take a checkpoint of the current state. `memory_file`, when given,
    /// is used as the memory state of a standard checkpoint instead of
    /// [`Hooks::save_memory`].
    pub fn create_checkpoint(
        &mut self,
        name: &str,
        memory_file: Option<&Path>,
        hooks: &mut dyn Hooks,
    ) -> Result<Checkpoint> {
        self.settle(None)?;
        self.create_then(name, memory_file, hooks, None)
    }

    fn create_then(
        &mut self,
        name: &str,
        memory_file: Option<&Path>,
        hooks: &mut dyn Hooks,
        then_apply: Option<String>,
    ) -> Result<Checkpoint> {
        self.check_name(name, None)?;
        // The current disks stay open read-only (locked shared) until the
        // checkpoint is taken: a disk another handle or process has open
        // for writing is refused here, before anything changes, and none
        // can be opened for writing before its new child exists.
        let _held = self
            .data
            .current
            .disks
            .iter()
            .map(|d| Disk::open(d, OpenMode::ReadOnly))
            .collect::<Result<Vec<Disk>>>()?;
        let requested = self.data.settings.checkpoint_type;
        let (taken, fallback_reason, quiesced) = match requested {
            CheckpointType::Disabled => {
                return Err(Error::InvalidArgument(format!(
                    "checkpoints are disabled for VM {:?}",
                    self.data.config.name
                )))
            }
            CheckpointType::Standard => (TakenType::Standard, None, false),
            // An off VM's disks are consistent by definition: a production
            // checkpoint (production-only too) with nothing to quiesce, no
            // fallback.
            CheckpointType::Production | CheckpointType::ProductionOnly
                if self.data.state == VmState::Off =>
            {
                (TakenType::Production, None, false)
            }
            // Nothing to quiesce in a saved VM: its memory state is kept.
            CheckpointType::Production
                if self.data.state == VmState::Saved
                    && self.data.current.saved_state.is_some()
                    && memory_file.is_none() =>
            {
                let why = "the VM is saved: its memory state is kept".to_string();
                (TakenType::Standard, Some(why), false)
            }
            CheckpointType::Production | CheckpointType::ProductionOnly => match hooks.quiesce() {
                Ok(()) => (TakenType::Production, None, true),
                Err(reason) if requested == CheckpointType::Production => (
                    TakenType::Standard,
                    Some(format!("quiesce failed: {reason}")),
                    false,
                ),
                Err(reason) => {
                    return Err(Error::InvalidArgument(format!(
                        "production-only checkpoint refused: quiesce failed: {reason}"
                    )))
                }
            },
        };
        let kind = Taken {
            taken,
            requested,
            fallback_reason,
        };
        // Quiesce or save, then the switch, then thaw or resume (see [`Hooks`]).
        let mut saved = false;
        let r = self.create_inner(name, memory_file, hooks, kind, then_apply, &mut saved);
        if quiesced {
            hooks.thaw();
        }
        if saved {
            hooks.resume();
        }
        if r.is_err() {
            // Undo what was made (the journal says what).
            let _ = self.reconcile();
        }
        r
    }

    fn create_inner(
        &mut self,
        name: &str,
        memory_file: Option<&Path>,
        hooks: &mut dyn Hooks,
        kind: Taken,
        then_apply: Option<String>,
        saved: &mut bool,
    ) -> Result<Checkpoint> {
        let vm_state = self.data.state;
        let Taken {
            taken,
            requested,
            fallback_reason,
        } = kind;
        let id = uuid::Uuid::new_v4().to_string();
        let loc = self.checkpoint_location();
        let config_file = loc.join(format!("{id}.json"));
        let memory_path = loc.join(format!("{id}.vmrs"));
        let new_disks: Vec<PathBuf> = self
            .data
            .current
            .disks
            .iter()
            .zip(&self.data.disks)
            .map(|(cur, orig)| child_path(cur, orig, &id))
            .collect();
        let mut files = new_disks.clone();
        files.push(config_file.clone());
        files.push(memory_path.clone());
        let chained = then_apply.is_some();
        self.journal(&Journal::Create {
            id: id.clone(),
            files,
            then_apply,
            dirs: missing_dirs(&loc),
        })?;
        std::fs::create_dir_all(&loc).map_err(|e| Error::from(e).in_file(&loc))?;

        let mut saved_state = None;
        // A saved VM's memory is its saved state: the checkpoint shares that
        // file (read-only for both, freed with the last node using it).
        let resumes_from = match (self.data.state, &self.data.current.saved_state) {
            (VmState::Saved, Some(p)) if memory_file.is_none() => Some(p.clone()),
            _ => None,
        };
        if let (TakenType::Standard, Some(p)) = (taken, resumes_from) {
            saved_state = Some(p);
        } else if taken == TakenType::Standard {
            if let Some(src) = memory_file {
                std::fs::copy(src, &memory_path).map_err(|e| Error::from(e).in_file(src))?;
                File::open(&memory_path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::from(e).in_file(&memory_path))?;
                saved_state = Some(memory_path.clone());
            } else {
                let mut f =
                    File::create(&memory_path).map_err(|e| Error::from(e).in_file(&memory_path))?;
                *saved = true;
                let wrote = hooks
                    .save_memory(&mut f)
                    .map_err(|e| Error::from(e).in_file(&memory_path))?;
                f.sync_all()
                    .map_err(|e| Error::from(e).in_file(&memory_path))?;
                drop(f);
                if wrote {
                    saved_state = Some(memory_path.clone());
                } else {
                    remove_if_exists(&memory_path)?;
                }
            }
        }
        // All disks together or none: the journal removes a partial set.
        for (cur, new) in self.data.current.disks.iter().zip(&new_disks) {
            Disk::create_child(new, cur, &ChildOptions::default())?.close()?;
            owner::stamp(new, &self.dir, &self.data)?;
        }
        write_json(&config_file, &owner::config_copy(&self.data))?;
        let ck = Checkpoint {
            id: id.clone(),
            name: name.to_string(),
            parent: self.data.current.parent.clone(),
            created: now(),
            taken,
            requested,
            fallback_reason,
            disks: self.data.current.disks.clone(),
            skipped_passthrough: self.data.config.passthrough.clone(),
            config_file: Some(config_file),
            saved_state,
            hidden: false,
            deleting: false,
            vm_state: Some(vm_state),
        };
        self.data.checkpoints.push(ck.clone());
        self.data.current.parent = Some(id);
        self.data.current.disks = new_disks;
        self.save()?;
        if !chained {
            self.end_journal()?;
        }
        Ok(ck)
    }

    /// Make checkpoint `name` the active state: new differencing disks on
    /// its disks, its configuration restored, the VM saved (standard, with
    /// memory state) or off. With `save_current`, the current state is first
    /// kept as a new checkpoint of that name; otherwise it is discarded.
    /// Refused (`InvalidArgument`, changing nothing) while the VM is
    /// running, and (`Busy`) while a current disk is open elsewhere.
    pub fn apply(
        &mut self,
        name: &str,
        save_current: Option<&str>,
        hooks: &mut dyn Hooks,
    ) -> Result<()> {
        self.settle(None)?;
        self.refuse_running()?;
        let target = self.usable(name)?.id.clone();
        if self.data.current.parent.is_none() {
            return Err(Error::InvalidArgument(
                "the current state does not hang under a checkpoint; take one first".into(),
            ));
        }
        if let Some(n) = save_current {
            // One journaled operation: once the capture is taken, a crash
            // finishes the apply on reopen.
            self.create_then(n, None, hooks, Some(target.clone()))?;
        }
        self.apply_id(&target)
    }

    /// Apply the checkpoint the current state hangs under, discarding the current state.
    ///
    /// That is the nearest checkpoint above the current state that is not
    /// hidden ([`VmFile::current_checkpoint`]): after the checkpoint it hung
    /// under was deleted, its parent. Refused like [`Vm::apply`] while the
    /// VM is running or a current disk is open elsewhere.
    pub fn revert(&mut self) -> Result<()> {
        self.settle(None)?;
        self.refuse_running()?;
        let id = self
            .data
            .current_checkpoint()
            .map(|c| c.id.clone())
            .ok_or_else(|| {
                Error::InvalidArgument("the VM has no checkpoint to revert to".into())
            })?;
        self.apply_id(&id)
    }

    /// Apply and revert discard the disks a running guest writes to: refused
    /// (changing nothing) until the VM is stopped or saved.
    fn refuse_running(&self) -> Result<()> {
        if self.data.state == VmState::Running {
            return Err(Error::InvalidArgument(format!(
                "VM {:?} is running: stop or save the VM first",
                self.data.config.name
            )));
        }
        Ok(())
    }

    fn apply_id(&mut self, id: &str) -> Result<()> {
        let target = self.data.checkpoints[self.index(id)?].clone();
        let stamp = uuid::Uuid::new_v4().to_string();
        let new_files: Vec<PathBuf> = target
            .disks
            .iter()
            .zip(&self.data.disks)
            .map(|(d, orig)| child_path(d, orig, &stamp))
            .collect();
        // The old current disks are ours to remove only when they are
        // differencing disks made for a checkpoint.
        let old_parent = self.data.current.parent.clone();
        let old_saved = self.data.current.saved_state.clone();
        let old_files = if old_parent.is_some() {
            self.data.current.disks.clone()
        } else {
            Vec::new()
        };
        if old_parent.is_none() {
            return Err(Error::InvalidArgument(
                "the current state does not hang under a checkpoint; take one first".into(),
            ));
        }
        // The current disks are discarded: never while something uses them.
        check_disks_unused(&old_files)?;
        owner::refuse_foreign(&self.data, &old_files, "applying a checkpoint")?;
        self.journal(&Journal::Apply {
            target: Some(target.id.clone()),
            new_files: new_files.clone(),
            old_files: old_files.clone(),
            old_saved: old_saved.clone(),
        })?;
        let r = (|| -> Result<()> {
            for (d, new) in target.disks.iter().zip(&new_files) {
                Disk::create_child(new, d, &ChildOptions::default())?.close()?;
                owner::stamp(new, &self.dir, &self.data)?;
            }
            let config: VmConfig = match &target.config_file {
                Some(f) => read_json(f)?,
                None => self.data.config.clone(),
            };
            self.data.config = config;
            self.data.current = Current {
                parent: Some(target.id.clone()),
                disks: new_files.clone(),
                saved_state: target.saved_state.clone(),
            };
            self.data.state = if target.saved_state.is_some() {
                VmState::Saved
            } else {
                VmState::Off
            };
            self.save()
        })();
        if let Err(e) = r {
            // Roll back here (a reopen after a crash rolls forward instead).
            if let Ok(d) = read_vm_file(&self.dir.join(VM_FILE)) {
                self.data = d;
            }
            if self.data.current.disks != new_files {
                let undone = new_files.iter().all(|f| remove_if_exists(f).is_ok());
                if undone {
                    let _ = self.end_journal();
                }
            }
            return Err(e);
        }
        // Committed: what follows is tidying up ([`Vm::take_warnings`]).
        let r = (|| -> Result<()> {
            self.remove_unless_held(&old_files)?;
            self.release_saved_state(old_saved)?;
            self.end_journal()
        })();
        let what = format!("applying checkpoint {:?}", target.name);
        if r.is_err() {
            self.after_commit(&what, r);
        } else if let Some(p) = old_parent {
            self.collapse_after_commit(&what, &p);
        }
        Ok(())
    }

    /// Rename a checkpoint.
    pub fn rename(&mut self, name: &str, new_name: &str) -> Result<()> {
        self.settle(None)?;
        let id = self.find(name)?.id.clone();
        let i = self.index(&id)?;
        if self.data.checkpoints[i].name == new_name {
            return Ok(());
        }
        self.check_name(new_name, Some(&id))?;
        let old = std::mem::replace(&mut self.data.checkpoints[i].name, new_name.to_string());
        // The handle shows what vm.json holds: a rename that could not be
        // saved is undone.
        let saved = self.save();
        if saved.is_err() {
            self.data.checkpoints[i].name = old;
        }
        saved
    }

    /// Delete checkpoint `name` (and with `subtree` every checkpoint under
    /// it). Its data is merged so that nothing the current state or any
    /// other checkpoint reads changes; its configuration copy and memory
    /// state are dropped. A branch point stays as a hidden node until one
    /// dependant is left.
    ///
    /// A delete cancelled (or failed) before it changed the checkpoint's
    /// disks leaves it as it was. Once they changed, the checkpoint is left
    /// [`Checkpoint::deleting`]: it can no longer be applied or exported,
    /// and the next operation on the VM (this one again, any other, or
    /// opening it) finishes the delete first.
    pub fn delete(&mut self, name: &str, subtree: bool, hooks: &mut dyn Hooks) -> Result<()> {
        let id = self.find(name)?.id.clone();
        // A pending delete (perhaps of this very checkpoint) goes first.
        self.settle(Some(hooks))?;
        if self.index(&id).is_err() {
            return Ok(());
        }
        if subtree {
            // Deepest first (each node once, whatever the file says).
            let mut order = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut stack = vec![id.clone()];
            while let Some(x) = stack.pop() {
                if !seen.insert(x.clone()) {
                    continue;
                }
                order.push(x.clone());
                for c in self
                    .data
                    .checkpoints
                    .iter()
                    .filter(|c| c.parent.as_deref() == Some(&x))
                {
                    stack.push(c.id.clone());
                }
            }
            for x in order.into_iter().rev() {
                if self.data.checkpoints.iter().any(|c| c.id == x) {
                    self.delete_id(&x, hooks)?;
                }
            }
            Ok(())
        } else {
            self.delete_id(&id, hooks)
        }
    }

    fn delete_id(&mut self, id: &str, hooks: &mut dyn Hooks) -> Result<()> {
        let deps = self.dependants(id);
        let name = self.data.checkpoints[self.index(id)?].name.clone();
        // A layer another VM's disk depends on is kept, hidden, untouched.
        let kept = self.shared_with_others(id, &deps)?;
        if kept.is_none() {
            self.check_delete_unused(id, &deps)?;
        }
        let hide = deps.len() > 1 || kept.is_some();
        let r = match deps.len() {
            _ if kept.is_some() => self.remove_node(id, true),
            0 => self.remove_node(id, false),
            1 => self.merge_away(id, &deps[0], Some(hooks)),
            _ => self.remove_node(id, true),
        };
        if let (Ok(()), Some(why)) = (&r, kept) {
            self.warnings.push(format!(
                "checkpoint {name:?} was deleted, but its disk layer is kept as a hidden node \
                 (as for a branch point) and nothing was merged: {why}"
            ));
        }
        // Once the VM file no longer lists the checkpoint (or lists it
        // hidden), the delete is done: a later failure is a warning.
        if r.is_err() {
            let committed = read_vm_file(&self.dir.join(VM_FILE)).is_ok_and(|d| {
                d.checkpoints
                    .iter()
                    .find(|c| c.id == id)
                    .is_none_or(|c| hide && c.hidden)
            });
            if committed {
                self.after_commit(&format!("deleting checkpoint {name:?}"), r);
                return Ok(());
            }
        }
        r
    }

    /// Delete `id` by merging its only dependant `dep` into it: journaled,
    /// marked as being deleted, then merged.
    fn merge_away(
        &mut self,
        id: &str,
        dep: &Option<String>,
        hooks: Option<&mut dyn Hooks>,
    ) -> Result<()> {
        // Whatever can refuse is checked before the journal says anything.
        let sizes = self.check_merge(id, dep)?;
        let guids = self.journal_merge(id, dep, &sizes)?;
        let i = self.index(id)?;
        self.data.checkpoints[i].deleting = true;
        self.save()?;
        self.finish_merge(id, dep, hooks, &guids, &sizes)
    }

    /// Everything that can refuse the merge of `dep` into `id`, checked
    /// before anything is journaled so that a refusal changes nothing: every
    /// disk the merge reads, writes, re-points or removes exists (`NotFound`
    /// naming it: absence is never taken for "merged"), none is open
    /// elsewhere (`Busy`), and each destination's file system has room for
    /// all that is merged into it (`NoSpace`, the estimate of
    /// [`merge::merge`]). Returns the bytes each disk of `dep` merges.
    fn check_merge(&self, id: &str, dep: &Option<String>) -> Result<Vec<u64>> {
        use std::os::unix::fs::MetadataExt;
        let node = &self.data.checkpoints[self.index(id)?];
        let dep_disks = self.disks_of(dep)?;
        let mut touched: Vec<PathBuf> = node.disks.iter().chain(&dep_disks).cloned().collect();
        if let Some(d) = dep {
            for g in self.dependants(d) {
                touched.extend(self.disks_of(&g)?);
            }
        }
        if let Some(f) = touched.iter().find(|f| !f.is_file()) {
            return Err(Error::NotFound(format!(
                "{}: this disk of the VM is missing (a volume not mounted, or the file moved?); \
                 deleting checkpoint {:?} needs it: nothing was changed",
                f.display(),
                node.name
            )));
        }
        check_disks_unused(&touched)?;
        owner::refuse_foreign(&self.data, &touched, "deleting this checkpoint")?;
        let mut sizes = Vec::new();
        // Per file system (device): a folder on it and the bytes still free
        // there, merge after merge (each frees its source's file at the end).
        let mut free: Vec<(u64, PathBuf, u64)> = Vec::new();
        for (target, src) in node.disks.iter().zip(&dep_disks) {
            if src == target {
                sizes.push(0);
                continue;
            }
            let (copied, need) = merge::merge_estimate(src, target)?;
            sizes.push(copied);
            let dir = target.parent().unwrap_or(Path::new(".")).to_path_buf();
            let dev = std::fs::metadata(&dir)
                .map_err(|e| Error::from(e).in_file(&dir))?
                .dev();
            let i = match free.iter().position(|x| x.0 == dev) {
                Some(i) => i,
                None => {
                    let n =
                        crate::io::free_space(&dir).map_err(|e| Error::from(e).in_file(&dir))?;
                    free.push((dev, dir.clone(), n));
                    free.len() - 1
                }
            };
            if need > free[i].2 {
                return Err(Error::NoSpace(format!(
                    "deleting checkpoint {:?} merges {} into {}, which needs up to {need} \
                     bytes, but only {} will be free there: nothing was changed",
                    node.name,
                    src.display(),
                    target.display(),
                    free[i].2
                )));
            }
            let src_meta = std::fs::metadata(src).map_err(|e| Error::from(e).in_file(src))?;
            let freed = if std::fs::metadata(src.parent().unwrap_or(Path::new(".")))
                .is_ok_and(|m| m.dev() == dev)
            {
                src_meta.blocks().saturating_mul(512)
            } else {
                0
            };
            free[i].2 = free[i].2 - need + freed;
        }
        Ok(sizes)
    }

    /// Refuse to delete `id` while a disk the delete writes (the merge's
    /// destination) or removes is open elsewhere (a hidden branch point
    /// keeps its disks untouched).
    fn check_delete_unused(&self, id: &str, deps: &[Option<String>]) -> Result<()> {
        let c = &self.data.checkpoints[self.index(id)?];
        let mut disks = Vec::new();
        match deps {
            [] if c.parent.is_some() => disks.extend(c.disks.iter().cloned()),
            [dep] => {
                disks.extend(c.disks.iter().cloned());
                disks.extend(self.disks_of(dep)?);
            }
            _ => {}
        }
        check_disks_unused(&disks)?;
        owner::refuse_foreign(&self.data, &disks, "deleting this checkpoint")
    }

    /// Remove a node with no dependants (its disks go), or hide a branch
    /// point (its disks stay); its configuration copy and memory state go.
    fn remove_node(&mut self, id: &str, hide: bool) -> Result<()> {
        let i = self.index(id)?;
        let c = self.data.checkpoints[i].clone();
        let mut files = self.own_files(&c);
        if !hide && c.parent.is_some() {
            files.extend(c.disks.iter().cloned());
        }
        self.journal(&Journal::Remove {
            id: id.to_string(),
            hide,
            files: files.clone(),
        })?;
        self.commit_remove(id, hide)?;
        for f in &files {
            remove_if_exists(f)?;
        }
        self.end_journal()?;
        if !hide {
            if let Some(p) = c.parent {
                self.collapse_after_commit(&format!("deleting checkpoint {:?}", c.name), &p);
            }
        }
        Ok(())
    }

    fn commit_remove(&mut self, id: &str, hide: bool) -> Result<()> {
        if let Ok(i) = self.index(id) {
            if hide {
                let c = &mut self.data.checkpoints[i];
                c.hidden = true;
                c.config_file = None;
                c.saved_state = None;
            } else {
                self.data.checkpoints.remove(i);
            }
            self.save()?;
        }
        Ok(())
    }

    /// The collapse that follows a committed delete or apply. What the
    /// caller asked for is done whatever happens here, so a failure is not
    /// reported as its failure: a collapse refused before it changed
    /// anything (a disk held, no room, a file missing) leaves the hidden
    /// node as it is, to be collapsed when the VM is next opened; one that
    /// failed later is journaled and finished before the next operation.
    fn collapse_after_commit(&mut self, what: &str, id: &str) {
        let r = self.collapse(id);
        self.after_commit(what, r);
    }

    /// Collapse every hidden node left with at most one dependant (a crash
    /// between an operation's commit and its collapse leaves one). A
    /// collapse refused before it changed anything is left for later; one
    /// that failed on the way (its journal is there) is an error.
    fn collapse_hidden(&mut self) -> Result<()> {
        let mut refused: Vec<String> = Vec::new();
        loop {
            let next = self
                .data
                .checkpoints
                .iter()
                .filter(|c| c.hidden && !refused.contains(&c.id))
                .map(|c| c.id.clone())
                .find(|id| self.dependants(id).len() < 2);
            let Some(id) = next else { return Ok(()) };
            if let Err(e) = self.collapse(&id) {
                if self.dir.join(JOURNAL_FILE).exists() {
                    return Err(e);
                }
                refused.push(id);
            } else if self.index(&id).is_ok() {
                refused.push(id); // kept for another VM's disk
            }
        }
    }

    /// A hidden node left with one dependant is merged away; with none, removed.
    fn collapse(&mut self, id: &str) -> Result<()> {
        let Ok(i) = self.index(id) else { return Ok(()) };
        if !self.data.checkpoints[i].hidden {
            return Ok(());
        }
        let deps = self.dependants(id);
        if deps.len() < 2 && self.shared_with_others(id, &deps)?.is_some() {
            return Ok(()); // kept for the other VM's disk
        }
        match deps.len() {
            0 => self.remove_node(id, false),
            1 => self.merge_away(id, &deps[0], None),
            _ => Ok(()),
        }
    }

    /// When deleting `id` (with dependants `deps`) would merge into or
    /// remove a disk file that a differencing disk outside this VM's tree
    /// depends on (another VM's, or one made by hand over it): what to say
    /// about it, naming that disk. Such a layer is kept as a hidden node
    /// instead: a merge never changes a file another disk depends on. The
    /// dependants are looked for, as [`merge::merge`] does, in the folders
    /// of the VM's disk files.
    fn shared_with_others(&self, id: &str, deps: &[Option<String>]) -> Result<Option<String>> {
        let node = &self.data.checkpoints[self.index(id)?];
        let mut changed: Vec<PathBuf> = match deps {
            [] if node.parent.is_some() => node.disks.clone(),
            [_] => node.disks.clone(),
            _ => return Ok(None),
        };
        if let [dep] = deps {
            changed.extend(self.disks_of(dep)?);
        }
        let ours = owner::files_of(&self.data);
        let mut dirs: Vec<PathBuf> = ours
            .iter()
            .filter(|p| p.is_file())
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for f in changed.iter().filter(|f| f.is_file()) {
            let others = merge::find_children_in(f, &dirs)?;
            if let Some(c) = others
                .iter()
                .find(|c| !ours.iter().any(|o| owner::same_file(o, c)))
            {
                let whose = match owner::user_of(c, self.data.id.as_deref()) {
                    Some((vm, folder)) => {
                        format!("of VM {:?} in {}", vm.config.name, folder.display())
                    }
                    None => "not this VM's".to_string(),
                };
                return Ok(Some(format!(
                    "{} ({whose}) depends on {}, which merging would change",
                    c.display(),
                    f.display()
                )));
            }
        }
        Ok(None)
    }

    /// Journal the merge of `dep` into `id`; returns the DataWriteGuids of
    /// `id`'s disks it recorded.
    fn journal_merge(&self, id: &str, dep: &Option<String>, sizes: &[u64]) -> Result<Vec<String>> {
        let c = &self.data.checkpoints[self.index(id)?];
        let files = self.own_files(c);
        let guids: Vec<String> = c.disks.iter().map(|d| data_write_guid(d)).collect();
        self.journal(&Journal::Merge {
            id: id.to_string(),
            dependant: dep.clone(),
            files,
            guids: guids.clone(),
            sizes: sizes.to_vec(),
        })?;
        Ok(guids)
    }

    /// Whether every disk of `node` still has the DataWriteGuid the journal
    /// recorded before the merge: then none of its data changed.
    fn untouched(node: &Checkpoint, guids: &[String]) -> bool {
        guids.len() == node.disks.len()
            && node
                .disks
                .iter()
                .zip(guids)
                .all(|(d, g)| !g.is_empty() && data_write_guid(d) == *g)
    }

    /// Undo a merge that never changed `id`'s disks: it is no longer being
    /// deleted and the journal goes.
    fn undo_merge(&mut self, id: &str) -> Result<()> {
        if let Ok(i) = self.index(id) {
            self.data.checkpoints[i].deleting = false;
        }
        self.save()?;
        self.end_journal()
    }

    /// Merge the disks of `dep` (the only dependant of `id`) into `id`'s
    /// disks, then drop `id` from the tree. Safe to run again after a crash.
    ///
    /// Progress is reported once with `done == 0` before anything changes;
    /// a cancel or an error while `id`'s disks are untouched (their
    /// DataWriteGuids still those in `guids`) undoes the delete instead.
    fn finish_merge(
        &mut self,
        id: &str,
        dep: &Option<String>,
        hooks: Option<&mut dyn Hooks>,
        guids: &[String],
        sizes: &[u64],
    ) -> Result<()> {
        let i = self.index(id)?;
        let node = self.data.checkpoints[i].clone();
        let r = self.merge_disks(&node, dep, hooks, guids, sizes);
        if let Err(e) = r {
            if Self::untouched(&node, guids) {
                let _ = self.undo_merge(id);
            } else {
                self.adopt_merged(&node, dep, guids, sizes);
            }
            return Err(e);
        }
        self.commit_merge(&node, dep)
    }

    /// After a delete stopped half way: the disks of the dependant that
    /// were merged already (their file is gone, their data is in the
    /// checkpoint's) are the checkpoint's files now, so that this handle
    /// never names a file that no longer exists. The journal finishes the
    /// rest before the next operation.
    fn adopt_merged(
        &mut self,
        node: &Checkpoint,
        dep: &Option<String>,
        guids: &[String],
        sizes: &[u64],
    ) {
        let Ok(dep_disks) = self.disks_of(dep) else {
            return;
        };
        let merged: Vec<bool> = node
            .disks
            .iter()
            .zip(&dep_disks)
            .enumerate()
            .map(|(k, (target, src))| {
                src != target && !src.exists() && self.merged_already(k, target, dep, guids, sizes)
            })
            .collect();
        let disks = match dep {
            None => &mut self.data.current.disks,
            Some(d) => match self.data.checkpoints.iter_mut().find(|c| &c.id == d) {
                Some(c) => &mut c.disks,
                None => return,
            },
        };
        for ((src, target), merged) in disks.iter_mut().zip(&node.disks).zip(merged) {
            if merged {
                *src = target.clone();
            }
        }
    }

    /// Whether disk `k` of the dependant `dep`, whose file is gone, was
    /// merged into `target` by this delete: proven, never inferred from the
    /// absence. The journal recorded `target`'s DataWriteGuid before the
    /// merge, and the merge changed it (or had nothing to copy: `sizes[k]`
    /// is 0); and every disk that hung under the source hangs under `target`
    /// now (a merge re-points them before it removes the source).
    fn merged_already(
        &self,
        k: usize,
        target: &Path,
        dep: &Option<String>,
        guids: &[String],
        sizes: &[u64],
    ) -> bool {
        let Some(was) = guids.get(k).filter(|g| !g.is_empty()) else {
            return false;
        };
        let now = data_write_guid(target);
        if now.is_empty() || (now == *was && sizes.get(k) != Some(&0)) {
            return false;
        }
        let Ok(target) = std::fs::canonicalize(target) else {
            return false;
        };
        let grand = match dep {
            Some(d) => self.dependants(d),
            None => Vec::new(),
        };
        grand.iter().all(|g| {
            let Some(x) = self.disks_of(g).ok().and_then(|d| d.get(k).cloned()) else {
                return false;
            };
            let parent = Disk::open(&x, OpenMode::ReadOnly)
                .ok()
                .and_then(|d| d.chain().get(1).cloned().flatten())
                .and_then(|p| std::fs::canonicalize(p).ok());
            parent.as_ref() == Some(&target)
        })
    }

    /// Merge every disk of `dep` into `node`'s (the ones not merged yet).
    fn merge_disks(
        &self,
        node: &Checkpoint,
        dep: &Option<String>,
        hooks: Option<&mut dyn Hooks>,
        guids: &[String],
        sizes: &[u64],
    ) -> Result<()> {
        let dep_disks = self.disks_of(dep)?;
        // The states that hang under the dependant: their disks get re-pointed.
        let grand: Vec<Option<String>> = match dep {
            Some(d) => self.dependants(d),
            None => Vec::new(),
        };
        let mut todo = Vec::new();
        for (k, (target, src)) in node.disks.iter().zip(&dep_disks).enumerate() {
            if src == target {
                continue; // already merged
            }
            if !src.exists() {
                if self.merged_already(k, target, dep, guids, sizes) {
                    continue;
                }
                return Err(Error::NotFound(format!(
                    "{}: this disk of the VM is missing (a volume not mounted, or the file \
                     moved?) and was not merged into {} yet; put it back to finish deleting \
                     checkpoint {:?}",
                    src.display(),
                    target.display(),
                    node.name
                )));
            }
            todo.push((k, target, src, merge_size(src, target)?));
        }
        let grand_total: u64 = todo.iter().map(|t| t.3).sum();
        let mut hooks = hooks;
        if let Some(h) = hooks.as_mut() {
            if !h.progress(0, grand_total) {
                return Err(Error::Cancelled);
            }
        }
        let mut base = 0u64;
        for (k, target, src, size) in todo {
            let mut descendants = Vec::new();
            for g in &grand {
                descendants.push(self.disks_of(g)?[k].clone());
            }
            let mut cb = |done: u64, _total: u64| -> bool {
                match hooks.as_mut() {
                    Some(h) => h.progress(base + done, grand_total),
                    None => true,
                }
            };
            let opts = MergeOptions {
                into: Some(target.clone()),
                descendants: Some(descendants),
                progress: Some(&mut cb),
                skip_space_check: false,
                space_limit: None,
            };
            merge::merge(src, opts)?;
            base += size;
        }
        Ok(())
    }

    /// The merged disks belong to the dependant now; `node` leaves the tree.
    fn commit_merge(&mut self, node: &Checkpoint, dep: &Option<String>) -> Result<()> {
        let id = node.id.as_str();
        // Commit: the dependant takes over the merged disks.
        match dep {
            Some(d) => {
                let j = self.index(d)?;
                self.data.checkpoints[j].disks = node.disks.clone();
                self.data.checkpoints[j].parent = node.parent.clone();
            }
            None => {
                self.data.current.disks = node.disks.clone();
                self.data.current.parent = node.parent.clone();
            }
        }
        let i = self.index(id)?;
        self.data.checkpoints.remove(i);
        self.save()?;
        for f in &self.own_files(node) {
            remove_if_exists(f)?;
        }
        self.end_journal()
    }

    /// Export checkpoint `name` (or the current state when `None`) into the
    /// folder `dest`: one standalone VHDX per disk, the configuration, and
    /// the memory state if any. Returns the files made, disks first (in the
    /// VM's disk order), named as [`export_names`] says; an export that
    /// fails leaves none of them.
    pub fn export(
        &mut self,
        name: Option<&str>,
        dest: &Path,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<PathBuf>> {
        self.settle(None)?;
        let (disks, config, saved): (Vec<PathBuf>, VmConfig, Option<PathBuf>) = match name {
            Some(n) => {
                let c = self.usable(n)?.clone();
                let config = match &c.config_file {
                    Some(f) => read_json(f)?,
                    None => self.data.config.clone(),
                };
                (c.disks, config, c.saved_state)
            }
            None => (
                self.data.current.disks.clone(),
                self.data.config.clone(),
                self.data.current.saved_state.clone(),
            ),
        };
        // A folder holding only what an interrupted export's configuration
        // write left (its temporary file) counts as empty.
        let leftover = temp_of(&dest.join(CONFIG_FILE));
        if dest.exists()
            && std::fs::read_dir(dest)
                .map(|mut d| d.any(|e| e.map(|e| e.path() != leftover).unwrap_or(true)))
                .unwrap_or(true)
        {
            return Err(Error::InvalidArgument(format!(
                "{} exists and is not an empty folder",
                dest.display()
            )));
        }
        remove_if_exists(&leftover)?;
        std::fs::create_dir_all(dest).map_err(|e| Error::from(e).in_file(dest))?;
        let dest = std::fs::canonicalize(dest).map_err(|e| Error::from(e).in_file(dest))?;
        let mut files: Vec<PathBuf> = export_names(&self.data.disks)
            .into_iter()
            .map(|n| dest.join(n))
            .collect();
        files.push(dest.join(CONFIG_FILE));
        if saved.is_some() {
            files.push(dest.join(MEMORY_FILE));
        }
        self.journal(&Journal::Export {
            files: files.clone(),
        })?;
        let r = (|| -> Result<()> {
            // One progress over all disks: the bytes each copy reads.
            let mut sizes = Vec::with_capacity(disks.len());
            for src in &disks {
                let d = Disk::open(src, OpenMode::ReadOnly)?;
                let extents = d.extents()?;
                sizes.push(
                    extents
                        .iter()
                        .filter(|e| e.allocated)
                        .map(|e| e.length)
                        .sum::<u64>(),
                );
            }
            let grand_total: u64 = sizes.iter().sum();
            let mut base = 0u64;
            for ((src, out), size) in disks.iter().zip(&files).zip(sizes) {
                let mut cb = |done: u64, _total: u64| hooks.progress(base + done, grand_total);
                merge::flatten(src, out, &CreateOptions::new(0), Some(&mut cb))?;
                base += size;
            }
            write_json(&dest.join(CONFIG_FILE), &config)?;
            if let Some(m) = &saved {
                let out = dest.join(MEMORY_FILE);
                std::fs::copy(m, &out).map_err(|e| Error::from(e).in_file(m))?;
                File::open(&out)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::from(e).in_file(&out))?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.end_journal()?;
                Ok(files)
            }
            Err(e) => {
                let _ = self.reconcile();
                Err(e)
            }
        }
    }

    /// Finish or undo an operation a crash (or an error) interrupted.
    pub fn reconcile(&mut self) -> Result<()> {
        self.reconcile_with(None)
    }

    /// Before any operation: finish (or undo) the one a cancel, an error or
    /// a crash left pending, so that no operation ever starts on a tree
    /// with a checkpoint half deleted.
    fn settle(&mut self, hooks: Option<&mut dyn Hooks>) -> Result<()> {
        if self.dir.join(JOURNAL_FILE).exists() {
            self.reconcile_with(hooks)
        } else {
            Ok(())
        }
    }

    /// [`Vm::reconcile`], following a pending merge with `hooks`: the
    /// journaled operation is finished or undone, then every hidden node
    /// left with fewer than two dependants is collapsed (the last step of a
    /// delete or apply, which a crash may have cut off).
    fn reconcile_with(&mut self, hooks: Option<&mut dyn Hooks>) -> Result<()> {
        self.finish_journal(hooks)?;
        self.collapse_hidden()
    }

    /// Finish or undo the operation the journal records (if any).
    fn finish_journal(&mut self, hooks: Option<&mut dyn Hooks>) -> Result<()> {
        let jpath = self.dir.join(JOURNAL_FILE);
        // A write of the VM file or the journal killed before its rename
        // leaves its temporary file (the VM's lock says no one is writing).
        remove_if_exists(&temp_of(&self.dir.join(VM_FILE)))?;
        remove_if_exists(&temp_of(&jpath))?;
        if !jpath.exists() {
            return Ok(());
        }
        // The committed tree is what the VM file says now.
        self.data = read_vm_file(&self.dir.join(VM_FILE))?;
        let j = read_journal(&jpath)?;
        match j {
            Journal::Create {
                id,
                files,
                then_apply,
                dirs,
            } => {
                if self.data.checkpoints.iter().any(|c| c.id == id) {
                    // Committed; finish an apply that was to follow.
                    if let Some(target) = then_apply {
                        if self.data.checkpoints.iter().any(|c| c.id == target) {
                            return self.apply_id(&target);
                        }
                    }
                } else {
                    for f in &files {
                        remove_made(f)?;
                    }
                    remove_empty_dirs(&dirs);
                }
                self.end_journal()
            }
            Journal::Apply {
                target,
                new_files,
                old_files,
                old_saved,
            } => {
                if self.data.current.disks == new_files {
                    // Committed: the old current disks go (a held one
                    // once it is free), and the old memory state unless a
                    // checkpoint still refers to it.
                    self.remove_unless_held(&old_files)?;
                    self.release_saved_state(old_saved)?;
                    return self.end_journal();
                }
                // Not committed: drop the partial new disks and apply again
                // (an apply, once started, is finished).
                for f in &new_files {
                    remove_if_exists(f)?;
                }
                match target {
                    Some(t) if self.data.checkpoints.iter().any(|c| c.id == t) => self.apply_id(&t),
                    _ => self.end_journal(),
                }
            }
            Journal::Merge {
                id,
                dependant,
                files,
                guids,
                sizes,
            } => {
                if self.data.checkpoints.iter().any(|c| c.id == id) {
                    self.finish_merge(&id, &dependant, hooks, &guids, &sizes)
                } else {
                    for f in &files {
                        remove_if_exists(f)?;
                    }
                    self.end_journal()
                }
            }
            Journal::Remove { id, hide, files } => {
                self.commit_remove(&id, hide)?;
                for f in &files {
                    remove_if_exists(f)?;
                }
                self.end_journal()
            }
            Journal::Export { files } => {
                for f in &files {
                    remove_made(f)?;
                }
                self.end_journal()
            }
        }
    }

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
        let mut size = 0u64;
        for d in &c.disks {
            if let Ok(disk) = Disk::open(d, OpenMode::ReadOnly) {
                if disk.depth() > 1 {
                    use std::os::unix::fs::MetadataExt;
                    size += std::fs::metadata(d).map(|m| m.blocks() * 512).unwrap_or(0);
                }
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
/// Only names the tree gives: `<disk>_<anything>.avhdx` next to a disk,
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
            let ours = (name.ends_with(".avhdx") && stems.iter().any(|s| name.starts_with(s)))
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
