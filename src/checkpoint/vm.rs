//! The [`Vm`] handle: creating, opening and adopting a VM folder (a moved
//! or copied one), its state and settings, lookups in the tree, and the
//! helpers every operation shares (saving `vm.json`, the journal).
//! The operations themselves are in the sibling files of this module.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::report::*;
use crate::checkpoint::model::*;
use crate::checkpoint::owner;
use crate::disk::absolute;
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

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

/// An open VM folder. Holding it holds the VM's lock: another process
/// trying to change the same VM is refused until it is dropped.
#[derive(Debug)]
pub struct Vm {
    pub(super) dir: PathBuf,
    pub(super) data: VmFile,
    _lock: (File, crate::io::FileLock),
    /// What went wrong after an operation was committed ([`Vm::take_warnings`]).
    pub(super) warnings: Vec<String>,
    /// The live handles of the current disks while the VM is attached
    /// ([`Vm::disk`]), in the order of `current.disks`.
    pub(super) live: Option<Vec<std::sync::Arc<crate::disk::live::LiveDisk>>>,
    /// Disks a live create made that could not be stamped yet (they are
    /// open): stamped when the VM detaches.
    pub(super) unstamped: Vec<PathBuf>,
}

pub(super) fn now() -> u64 {
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

pub(super) fn remove_if_exists(p: &Path) -> Result<()> {
    match crate::io::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).in_file(p)),
    }
}

/// Refuse (`InvalidArgument`, naming the child, before anything is
/// written) to make a VM of a disk that differencing disks depend on:
/// writing it would corrupt them. Looked for in the disk's own folder (the
/// tree makes children next to their parents) and in the folders of the
/// VM its ownership stamp names (that VM's folder and its disks' folders).
fn refuse_with_children(disks: &[PathBuf]) -> Result<()> {
    for d in disks {
        let real = std::fs::canonicalize(d).map_err(|e| Error::from(e).in_file(d))?;
        let mut dirs: Vec<PathBuf> = real.parent().map(Path::to_path_buf).into_iter().collect();
        if let Some(s) = owner::stamp_of(d)? {
            let file = s.folder.join(VM_FILE);
            if file.exists() {
                let other = read_vm_file(&file)?;
                dirs.push(s.folder.clone());
                dirs.extend(
                    owner::files_of(&other)
                        .iter()
                        .filter(|p| p.is_file())
                        .filter_map(|p| std::fs::canonicalize(p).ok())
                        .filter_map(|p| p.parent().map(Path::to_path_buf)),
                );
            }
        }
        dirs.sort();
        dirs.dedup();
        let children = crate::disk::merge::find_children_in(d, &dirs)?;
        if let Some(c) = children.first() {
            return Err(Error::InvalidArgument(format!(
                "{}: the differencing disk {} depends on it, and the VM would write it \
                 (corrupting that child): give the VM the child, or a new differencing disk \
                 over this one (ckpt create --parent {} NEW.avhdx): nothing was changed",
                d.display(),
                c.display(),
                d.display()
            )));
        }
    }
    Ok(())
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
pub(super) fn check_disks_unused(disks: &[PathBuf]) -> Result<()> {
    for d in disks.iter().filter(|d| d.exists()) {
        crate::disk::check_not_in_use(d)?;
    }
    Ok(())
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
        refuse_with_children(&disks)?;
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
            references: Vec::new(),
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
            live: None,
            unstamped: Vec::new(),
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
            live: None,
            unstamped: Vec::new(),
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
    /// it leaves the file as it was, and the next open does it again. The
    /// disks are then stamped again ([`Vm::restamp`]), on every open, so
    /// that a restamp a crash or an error cut short is finished later.
    fn adopt_folder(&mut self) -> Result<()> {
        let found = owner::found_at(&self.dir, &self.data);
        let copied = matches!(found, owner::Found::Copied(_));
        if found != owner::Found::Home
            || self.data.id.is_none()
            || self.data.folder.as_deref() != Some(&self.dir)
        {
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
        }
        self.restamp(copied);
        Ok(())
    }

    /// Stamp again the disk files of the tree that are this VM's but whose
    /// stamps still name a folder the VM left (a stamp naming a folder
    /// without the VM counts as no one's): every file stamped with this
    /// VM's id and another folder (a move), and every file inside the VM
    /// folder stamped by a VM this one was copied from (`related_vms`; a
    /// copy, with `copied` set when it was found just now, also an
    /// unstamped one). A disk stamped by any other VM is never restamped.
    /// Run on every open, so it converges after a crash or an error; best
    /// effort: a file that cannot be read or stamped (held by a running
    /// hypervisor, read-only) is a warning.
    fn restamp(&mut self, copied: bool) {
        let id = self.data.id.clone();
        let mut files: Vec<PathBuf> = self.data.current.disks.clone();
        for c in &self.data.checkpoints {
            files.extend(c.disks.iter().cloned());
        }
        files.sort();
        files.dedup();
        for f in files.into_iter().filter(|f| f.is_file()) {
            let stale = match owner::stamp_of(&f) {
                Ok(Some(s)) if s.folder == self.dir => false,
                Ok(Some(s)) if Some(&s.vm_id) == id.as_ref() => true,
                Ok(Some(s)) => {
                    f.starts_with(&self.dir) && self.data.related_vms.contains(&s.folder)
                }
                Ok(None) => copied && f.starts_with(&self.dir),
                Err(e) => {
                    self.warnings.push(format!(
                        "{}: could not read its ownership stamp ({e})",
                        f.display()
                    ));
                    false
                }
            };
            if stale {
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

    /// Warnings of the last operations, emptied by this call: a create,
    /// delete, apply, revert or rename is done once committed (the VM file
    /// says so), and a step after that which fails — removing the journal
    /// or the old files, collapsing a hidden branch point — is not reported
    /// as its failure but here; that tidy-up is finished when the VM is
    /// next opened (or before its next operation). A memory state that
    /// [`Vm::set_state`] could not release is named here too.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// `r`, the rest of an operation after its commit, as a warning.
    pub(super) fn after_commit(&mut self, what: &str, r: Result<()>) {
        if let Err(e) = r {
            self.warnings.push(format!(
                "{what} was done, but tidying up after it failed ({e}); \
                 that is finished when the VM is next opened"
            ));
        }
    }

    /// Whether `vm.json` as stored satisfies `done`: an operation that
    /// failed is judged committed or not by the file, never by the handle.
    pub(super) fn stored_holds(&self, done: impl FnOnce(&VmFile) -> bool) -> bool {
        read_vm_file(&self.dir.join(VM_FILE)).is_ok_and(|d| done(&d))
    }

    /// The checkpoint location (configuration copies and memory state).
    pub fn checkpoint_location(&self) -> PathBuf {
        checkpoint_location_of(&self.dir, &self.data)
    }

    pub(super) fn save(&self) -> Result<()> {
        write_json(
            &self.dir.join(VM_FILE),
            &owner::stored_vm(&self.dir, &self.data),
        )
    }

    pub(super) fn journal(&self, j: &Journal) -> Result<()> {
        write_json(
            &self.dir.join(JOURNAL_FILE),
            &owner::stored_journal(&self.dir, j),
        )
    }

    pub(super) fn end_journal(&self) -> Result<()> {
        remove_if_exists(&self.dir.join(JOURNAL_FILE))
    }

    /// Set the VM's state (the hypervisor reports it).
    pub fn set_state(&mut self, state: VmState) -> Result<()> {
        self.settle(None)?;
        let before = self.data.clone();
        self.data.state = state;
        let old = if state != VmState::Saved {
            self.data.current.saved_state.take()
        } else {
            None
        };
        self.save_or_restore(before, &format!("setting the VM state to {state}"))?;
        // Committed: a memory state left behind is a warning (no journal
        // names it: `vm show` lists it as a stray).
        let left = old.clone();
        if let (Err(e), Some(p)) = (self.release_saved_state(old), left) {
            self.warnings.push(format!(
                "the VM state was set to {state}, but its old memory state {} could not be \
                 removed ({e}): remove it by hand (`vm show` lists it as a stray)",
                p.display()
            ));
        }
        Ok(())
    }

    /// The configuration copy and memory state of checkpoint `c` that can
    /// go with it. A memory state is shared, never copied: the current state
    /// and other checkpoints (taken of the saved VM) may still refer to it,
    /// and it goes only with the last of them.
    pub(super) fn own_files(&self, c: &Checkpoint) -> Vec<PathBuf> {
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
        let before = self.data.clone();
        if let Some(m) = memory_mib {
            self.data.config.memory_mib = m;
        }
        if let Some(c) = cpus {
            self.data.config.cpus = c;
        }
        self.save_or_restore(before, "changing memory and CPU count")
    }

    /// Replace the hypervisor's own settings.
    pub fn set_hypervisor_settings(&mut self, v: serde_json::Value) -> Result<()> {
        self.settle(None)?;
        let before = self.data.clone();
        self.data.config.hypervisor = v;
        self.save_or_restore(before, "changing the hypervisor settings")
    }

    /// Save `vm.json` after a change made to the handle only (`before`:
    /// the handle before it). A save that failed once the new file was in
    /// place (only syncing its folder failed) committed all the same: Ok,
    /// and a warning naming `what`. Any other failure puts the handle back
    /// to `before`, so that it never shows a change the file does not hold.
    pub(super) fn save_or_restore(&mut self, before: VmFile, what: &str) -> Result<()> {
        let Err(e) = self.save() else {
            return Ok(());
        };
        if self.stored_holds(|d| *d == self.data) {
            self.after_commit(what, Err(e));
            return Ok(());
        }
        self.data = before;
        Err(e)
    }

    /// Change the checkpoint settings.
    pub fn set_settings(&mut self, s: Settings) -> Result<()> {
        self.settle(None)?;
        let mut s = s;
        if let Some(l) = &s.checkpoint_location {
            s.checkpoint_location = Some(absolute(l)?);
        }
        let before = self.data.clone();
        // Remember the location left, so that strays there are found.
        let old = self.checkpoint_location();
        self.data.settings = s;
        let new = self.checkpoint_location();
        let past = &mut self.data.past_checkpoint_locations;
        past.retain(|p| *p != new);
        if old != new && !past.contains(&old) {
            past.push(old);
        }
        self.save_or_restore(before, "changing the checkpoint settings")
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
    pub(super) fn usable(&self, name: &str) -> Result<&Checkpoint> {
        let c = self.find(name)?;
        if c.deleting {
            return Err(Error::Busy(format!(
                "checkpoint {name:?} is being deleted; the delete is finished by the next \
                 operation on the VM"
            )));
        }
        Ok(c)
    }

    pub(super) fn index(&self, id: &str) -> Result<usize> {
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
    pub(super) fn dependants(&self, id: &str) -> Vec<Option<String>> {
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

    pub(super) fn disks_of(&self, dep: &Option<String>) -> Result<Vec<PathBuf>> {
        Ok(match dep {
            Some(id) => self.data.checkpoints[self.index(id)?].disks.clone(),
            None => self.data.current.disks.clone(),
        })
    }

    /// A new name for a checkpoint (`except`: the one being renamed).
    pub(super) fn check_name(&self, name: &str, except: Option<&str>) -> Result<()> {
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
}
