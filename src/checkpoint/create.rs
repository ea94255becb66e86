//! Taking a checkpoint (create), applying one (apply, revert) and renaming
//! one, with the [`Hooks`] the hypervisor gives for them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::vm::*;
use crate::checkpoint::model::*;
use crate::checkpoint::owner;
use crate::disk::live::par_map;
use crate::disk::{ChildOptions, Disk, OpenMode};
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
///
/// # A running VM (attached: its I/O goes through [`Vm::disk`])
///
/// The new differencing disks are made ready first, while the guest runs.
/// Then:
///
/// - production: [`Hooks::quiesce`] → I/O on all the VM's disks paused
///   together (requests in flight complete, the tops are flushed), each
///   handle switched to its new disk and `vm.json` committed, I/O resumed →
///   [`Hooks::thaw`];
/// - standard: [`Hooks::save_memory`] (the hypervisor pauses the vCPUs,
///   completes its own in-flight disk requests and writes the memory and
///   CPU state; the vCPUs stay paused) → the same pause, switch, commit and
///   resume of I/O → [`Hooks::resume`]. Memory and disks are so of one
///   instant, and the disk pause stays short (a few flushes, no copy).
///
/// Meanwhile the guest may keep writing during `quiesce` / after `thaw`
/// (production: its writes land wholly in the old or the new layer) but a
/// standard checkpoint's guest must not run between `save_memory` and
/// `resume`.
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
    /// Write the memory state into the fresh, empty file at `path` (what
    /// the control channel asks of a client that saves memory itself, so
    /// that the bytes go into the file the holder reads); `Ok(false)` as
    /// for [`Hooks::save_memory`], which the default calls on the file.
    fn save_memory_to(&mut self, path: &Path) -> std::io::Result<bool> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        let saved = self.save_memory(&mut f)?;
        f.sync_all()?;
        Ok(saved)
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

/// A name for a new differencing disk next to `parent`, unique by `id`:
/// `.avhdx` on a VHDX, `.avhd` on a VHD (as Hyper-V names them; the
/// format comes from `parent`'s content).
pub(super) fn child_path(parent: &Path, original: &Path, id: &str) -> PathBuf {
    let stem = original
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("disk");
    parent
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{stem}_{id}.{}", child_extension(parent)))
}

/// The extension of a differencing disk on `parent`.
fn child_extension(parent: &Path) -> &'static str {
    match crate::disk::Format::of_file(parent) {
        Some(crate::disk::Format::Vhd) => "avhd",
        _ => "avhdx",
    }
}

impl Vm {
    /// Where the new differencing disks on the current disks go, one per
    /// disk, named for the operation `id` (a checkpoint, a live switch).
    pub(super) fn current_children(&self, id: &str) -> Vec<PathBuf> {
        self.data
            .current
            .disks
            .iter()
            .zip(&self.data.disks)
            .map(|(cur, orig)| child_path(cur, orig, id))
            .collect()
    }
}

impl Vm {
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
        let c = self.create_then(name, memory_file, hooks, None)?;
        // A hidden node kept under the current state (a reference point's
        // anchor) now has a frozen checkpoint above it: merged now when
        // detached (attached, at the next open, keeping the create fast).
        let parent = c
            .parent
            .clone()
            .filter(|p| self.index(p).is_ok_and(|i| self.data.checkpoints[i].hidden));
        match parent {
            Some(p) if !self.attached() => {
                self.collapse_after_commit(&format!("taking checkpoint {name:?}"), &p);
                Ok(self
                    .index(&c.id)
                    .map_or(c, |i| self.data.checkpoints[i].clone()))
            }
            _ => Ok(c),
        }
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
        // An attached VM's own live handles hold them already.
        let _held = if self.attached() {
            Vec::new()
        } else {
            self.data
                .current
                .disks
                .iter()
                .map(|d| Disk::open(d, OpenMode::ReadOnly))
                .collect::<Result<Vec<Disk>>>()?
        };
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
        // A risky role warns, never refuses: recorded with the checkpoint
        // and reported once it is taken.
        let role_warning = self.data.settings.role.map(VmRole::checkpoint_warning);
        let loc = self.checkpoint_location();
        let config_file = loc.join(format!("{id}.json"));
        let memory_path = loc.join(format!("{id}.vmrs"));
        let new_disks = self.current_children(&id);
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
        // Attached: the children are made ready before the memory is saved,
        // so that the guest's pause is short (see [`Hooks`]).
        let live = self.prepare_live(&new_disks)?;

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
        if live.is_none() {
            let pairs: Vec<(&PathBuf, &PathBuf)> =
                self.data.current.disks.iter().zip(&new_disks).collect();
            self.make_children(&pairs)?;
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
            warnings: role_warning.iter().map(|w| w.to_string()).collect(),
        };
        self.data.checkpoints.push(ck.clone());
        self.data.current.parent = Some(id.clone());
        self.data.current.disks = new_disks;
        match live {
            // Pause, switch, commit, resume I/O (see `live.rs`).
            Some(children) => self.switch_live(children, &id, |vm| vm.save())?,
            // A save that failed once `vm.json` was in place (syncing its
            // folder) committed all the same.
            None => {
                if let Err(e) = self.save() {
                    if !self.stored_holds(|d| d.checkpoints.iter().any(|c| c.id == id)) {
                        return Err(e);
                    }
                    self.after_commit(&format!("creating checkpoint {name:?}"), Err(e));
                }
            }
        }
        if let Some(w) = role_warning {
            self.warnings.push(format!("checkpoint {name:?}: {w}"));
        }
        // Committed: the checkpoint exists, and what fails from here on is
        // tidying up ([`Vm::take_warnings`]; the next open removes the
        // journal).
        if !chained {
            let r = self.end_journal();
            self.after_commit(&format!("creating checkpoint {name:?}"), r);
        }
        Ok(ck)
    }

    /// Make checkpoint `name` the active state: new differencing disks on
    /// its disks, its configuration restored, the VM saved (standard, with
    /// memory state) or off. With `save_current`, the current state is first
    /// kept as a new checkpoint of that name; otherwise it is discarded.
    /// Refused (`InvalidArgument`, changing nothing) while the VM is
    /// running, and (`Busy`) while a current disk is open elsewhere. On an
    /// attached VM (stopped or saved by the hypervisor) each live handle of
    /// [`Vm::disk`] is switched to the new current disk.
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

    /// A new differencing disk at `new` on each `(parent, new)`, stamped
    /// as this VM's from the start (a VHDX; a VHD has no place for the
    /// stamp), one thread per disk. On an error some may be made: the
    /// caller's journal removes a partial set.
    fn make_children(&self, pairs: &[(&PathBuf, &PathBuf)]) -> Result<()> {
        let item = [owner::stamp_item(&self.dir, &self.data)?];
        par_map(pairs, |(parent, new)| {
            let items: &[_] = match crate::disk::Format::of_file(parent) {
                Some(crate::disk::Format::Vhd) => &[],
                _ => &item,
            };
            Disk::create_child_with(new, parent, &ChildOptions::default(), items)
                .and_then(|d| d.close())
        })
        .into_iter()
        .collect()
    }

    pub(super) fn apply_id(&mut self, id: &str) -> Result<()> {
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
        // The current disks are discarded: never while something uses them
        // (an attached VM's own live handles are switched away from them).
        // (Attaching checked already that they are no other VM's.)
        if !self.attached() {
            check_disks_unused(&old_files)?;
            owner::refuse_foreign(&self.data, &old_files, "applying a checkpoint")?;
        }
        self.journal(&Journal::Apply {
            target: Some(target.id.clone()),
            new_files: new_files.clone(),
            old_files: old_files.clone(),
            old_saved: old_saved.clone(),
        })?;
        let mut opened = None;
        let r = (|| -> Result<()> {
            let pairs: Vec<(&PathBuf, &PathBuf)> = target.disks.iter().zip(&new_files).collect();
            self.make_children(&pairs)?;
            // Attached: the new chains open before the commit (all or none).
            opened = self.open_live(&new_files)?;
            let config: VmConfig = match &target.config_file {
                Some(f) => read_json(f)?,
                None => self.data.config.clone(),
            };
            self.anchors_off(&old_files)?;
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
        let what = format!("applying checkpoint {:?}", target.name);
        if let Err(e) = r {
            // A save that failed once `vm.json` was in place (syncing its
            // folder) committed all the same.
            let stored = read_vm_file(&self.dir.join(VM_FILE));
            if !stored.as_ref().is_ok_and(|d| d.current.disks == new_files) {
                drop(opened);
                // Roll back here (a reopen after a crash rolls forward instead).
                if let Ok(d) = stored {
                    self.data = d;
                    let undone = new_files.iter().all(|f| remove_if_exists(f).is_ok());
                    if undone {
                        let _ = self.end_journal();
                    }
                }
                return Err(e);
            }
            self.after_commit(&what, Err(e));
        }
        // Committed: the live handles follow, their old chains closed
        // before the old files go; the rest is tidying up
        // ([`Vm::take_warnings`]).
        if let Some(new) = opened {
            self.replace_live(new);
        }
        let r = (|| -> Result<()> {
            self.remove_unless_held(&old_files)?;
            self.release_saved_state(old_saved)?;
            self.end_journal()
        })();
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
        let before = self.data.clone();
        let old = std::mem::replace(&mut self.data.checkpoints[i].name, new_name.to_string());
        // The handle shows what vm.json holds: a rename that could not be
        // saved is undone.
        self.save_or_restore(before, &format!("renaming checkpoint {old:?}"))
    }
}
