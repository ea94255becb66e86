//! Deleting a checkpoint: every check that can refuse before anything
//! changes, the merge of its dependants' disks into its own (or keeping it
//! as a hidden node when another disk depends on it), and the collapse of
//! hidden branch points.

use std::path::{Path, PathBuf};

use super::create::*;
use super::vm::*;
use crate::checkpoint::model::*;
use crate::checkpoint::owner;
use crate::disk::merge::{self, MergeOptions};
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

/// The DataWriteGuid of the disk file at `p` ("" when it cannot be read).
/// A merge changes it before it changes the first byte of what the disk reads.
pub(super) fn data_write_guid(p: &Path) -> String {
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

impl Vm {
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

    pub(super) fn commit_remove(&mut self, id: &str, hide: bool) -> Result<()> {
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
    pub(super) fn collapse_after_commit(&mut self, what: &str, id: &str) {
        let r = self.collapse(id);
        self.after_commit(what, r);
    }

    /// Collapse every hidden node left with at most one dependant (a crash
    /// between an operation's commit and its collapse leaves one). A
    /// collapse refused before it changed anything is left for later; one
    /// that failed on the way (its journal is there) is an error.
    pub(super) fn collapse_hidden(&mut self) -> Result<()> {
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
    /// dependants are looked for in the folder of each disk the delete
    /// changes, in the folders of the VM's files, and in the folders of
    /// the VMs this one was copied from (`related_vms`) and of their files;
    /// a dependant anywhere else cannot be known.
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
        let mut files: Vec<PathBuf> = ours.iter().chain(changed.iter()).cloned().collect();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for other_dir in &self.data.related_vms {
            let file = other_dir.join(VM_FILE);
            if !file.exists() {
                continue; // that VM is gone
            }
            files.extend(owner::files_of(&read_vm_file(&file)?));
            dirs.extend(std::fs::canonicalize(other_dir).ok());
        }
        dirs.extend(
            files
                .iter()
                .filter(|p| p.is_file())
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .filter_map(|p| p.parent().map(Path::to_path_buf)),
        );
        dirs.sort();
        dirs.dedup();
        for f in changed.iter().filter(|f| f.is_file()) {
            let others = merge::find_children_in(f, &dirs)?;
            if let Some(c) = others
                .iter()
                .find(|c| !ours.iter().any(|o| owner::same_file(o, c)))
            {
                let whose = match owner::user_of(c, self.data.id.as_deref())? {
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

    /// Merge every disk of `dep` into `node`'s (the ones not merged yet).
    pub(super) fn merge_disks(
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
    pub(super) fn commit_merge(&mut self, node: &Checkpoint, dep: &Option<String>) -> Result<()> {
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
}
