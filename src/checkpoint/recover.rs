//! Recovery: finishing or undoing the operation a journal records
//! (reconcile), the undo, finish and adoption of an interrupted merge, and
//! the old files left to remove (memory states, pending removals).

use std::path::{Path, PathBuf};

use super::create::*;
use super::delete::*;
use super::vm::*;
use crate::checkpoint::model::*;
use crate::checkpoint::owner;
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

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

impl Vm {
    /// Remove a memory-state file the current state no longer uses, unless
    /// a checkpoint still owns it.
    pub(super) fn release_saved_state(&self, old: Option<PathBuf>) -> Result<()> {
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
    pub(super) fn remove_unless_held(&mut self, files: &[PathBuf]) -> Result<()> {
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
    pub(super) fn retry_pending_removals(&mut self) -> Result<()> {
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
    pub(super) fn finish_merge(
        &mut self,
        id: &str,
        dep: &Option<String>,
        hooks: Option<&mut dyn Hooks>,
        guids: &[String],
        sizes: &[u64],
        children: &[PathBuf],
    ) -> Result<()> {
        let i = self.index(id)?;
        let node = self.data.checkpoints[i].clone();
        // A live switch's child that does not open was never switched to
        // (it is made durable first); one that opens may hold guest writes.
        let live: Vec<PathBuf> = self
            .live
            .iter()
            .flatten()
            .filter_map(|d| d.path())
            .collect();
        for c in children
            .iter()
            .filter(|c| c.exists() && !live.iter().any(|l| same_file(l, c)))
        {
            if crate::disk::merge::open_single(c, false).is_err() {
                remove_made(c)?;
            }
        }
        let r = self.merge_disks(&node, dep, hooks, guids, sizes, children);
        if let Err(e) = r {
            // Once switched, the current state is to take the children.
            if !children.iter().any(|c| c.exists()) && Self::untouched(&node, guids) {
                let _ = self.undo_merge(id);
            } else {
                self.adopt_merged(&node, dep, guids, sizes);
            }
            return Err(e);
        }
        self.commit_merge(&node, dep, children)
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
    pub(super) fn merged_already(
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

    /// Finish or undo an operation a crash (or an error) interrupted.
    pub fn reconcile(&mut self) -> Result<()> {
        self.reconcile_with(None)
    }

    /// Before any operation: finish (or undo) the one a cancel, an error or
    /// a crash left pending, so that no operation ever starts on a tree
    /// with a checkpoint half deleted.
    pub(super) fn settle(&mut self, hooks: Option<&mut dyn Hooks>) -> Result<()> {
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
                children,
            } => {
                // A live delete of the current state's parent is committed
                // once the current state names the children it switched to.
                let switched = self.data.current.disks.iter().any(|d| children.contains(d));
                if self.data.checkpoints.iter().any(|c| c.id == id) && !switched {
                    self.finish_merge(&id, &dependant, hooks, &guids, &sizes, &children)
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
}
