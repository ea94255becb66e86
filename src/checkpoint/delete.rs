//! Deleting a checkpoint: every check that can refuse before anything
//! changes, the merge of its dependants' disks into its own (or keeping it
//! as a hidden node when another disk depends on it), and the collapse of
//! hidden branch points.
//!
//! # While the VM is attached
//!
//! A merge whose source is a layer of a live chain runs live
//! ([`crate::disk::live::LiveDisk::merge_down`]); when the source is the
//! top the guest writes (deleting the checkpoint the current state hangs
//! under), every live disk is first switched to a fresh child (journaled as
//! the merge's `children`), so that the source is frozen. Anything else is
//! merged as offline.
//!
//! **At a branch point.** When the merged dependant is itself a branch
//! point (deleting the only parent of a node with several dependants, one
//! of which the live chains run through), `merge_down` re-links the layer
//! above the source in the live chain, and the other branches' disks
//! (checkpoint disks, which no live chain holds; one held by anything else
//! refuses the delete with `Busy` before anything changes) are re-pointed
//! at the destination and its new DataWriteGuid just after, as the offline
//! merge re-points descendants. Until they are, they name the source, which
//! reads the same and is removed only at the commit. The journal needs
//! nothing more than `Journal::Merge`: the states to re-point are the
//! dependant's dependants in the tree, which do not change until the
//! commit. A retry on the attached VM (the source is out of the live chain,
//! not yet removed) re-points them again; the finish on the next open (not
//! attached) runs the whole merge offline with every dependant as a
//! descendant, which copies again what is there already and re-points all.
//!
//! **The hidden node left by deleting the current state's parent** stays
//! while the VM is attached and is collapsed (offline) when the VM is next
//! opened after detaching. After that delete the live chain is
//! `[fresh child (written by the guest), the deleted checkpoint's disk
//! (holding the old top, merged), its parent, …]`, and the tree says the
//! same: a hidden node between the current state and the checkpoint's
//! parent. Removing it needs one of two operations that `disk::live` does
//! not have: an *active commit* of the written top into that layer (guest
//! writes mirrored into both while the top's data is copied down, then a
//! pivot that reopens the layer read-write as the new top), or a *stream*
//! of that layer's data up into the top (copying only the sectors the top
//! does not hold, serialized against guest writes to the same sectors,
//! then re-linking the top to the layer below). `merge_down` merges only
//! frozen layers into the layer below, and switching to yet another fresh
//! child and merging again only moves the same node down one switch: it
//! never goes away. Merging the node into its parent instead would change
//! a checkpoint that must keep its content. So it is left: it is hidden
//! (marked `hidden` in listings, never applied, exported or reverted to),
//! costs one layer of lookups, and every crash or retry path treats it as
//! any hidden node (collapsed by [`Vm::collapse_hidden`] once detached).

use std::path::{Path, PathBuf};

use super::create::*;
use super::vm::*;
use crate::checkpoint::model::*;
use crate::checkpoint::owner;
use crate::disk::live::LiveMergeOptions;
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

/// Whether two paths name one file.
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
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
        self.seal_live()?;
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

    pub(super) fn delete_id(&mut self, id: &str, hooks: &mut dyn Hooks) -> Result<()> {
        let deps = self.dependants(id);
        let name = self.data.checkpoints[self.index(id)?].name.clone();
        // A layer another VM's disk depends on is kept, hidden, untouched.
        let kept = self.shared_with_others(id, &deps)?;
        if kept.is_none() {
            self.check_delete_unused(id, &deps)?;
        }
        // The anchor of a reference point under the current state is never
        // made the disk the guest writes: kept hidden, merged once a
        // checkpoint freezes the layer above it (see `backup::reference`).
        let anchored =
            deps == [None] && self.is_anchor(&self.data.checkpoints[self.index(id)?].disks);
        let hide = deps.len() > 1 || kept.is_some() || anchored;
        let r = match deps.len() {
            _ if kept.is_some() || anchored => self.remove_node(id, true),
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
        // hidden: a branch point, or the node a live delete of the current
        // state's parent keeps under the switched disks), the delete is
        // done: a later failure is a warning.
        if r.is_err() {
            let committed = read_vm_file(&self.dir.join(VM_FILE)).is_ok_and(|d| {
                d.checkpoints
                    .iter()
                    .find(|c| c.id == id)
                    .is_none_or(|c| c.hidden && (hide || !c.deleting))
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
        let children = self.live_children(dep);
        let guids = self.journal_merge(id, dep, &sizes, &children)?;
        let i = self.index(id)?;
        self.data.checkpoints[i].deleting = true;
        self.save()?;
        self.finish_merge(id, dep, hooks, &guids, &sizes, &children)
    }

    /// The files of the attached VM's live chains (none when detached):
    /// its own handles hold them, which never makes a delete `Busy`.
    fn live_files(&self) -> Vec<PathBuf> {
        self.live
            .iter()
            .flatten()
            .flat_map(|d| d.chain())
            .flatten()
            .collect()
    }

    /// The writable tops of the attached VM's live chains.
    fn live_tops(&self) -> Vec<PathBuf> {
        self.live
            .iter()
            .flatten()
            .filter_map(|d| d.path())
            .collect()
    }

    /// The layer index of `p` in the live chain of disk `k`, if attached
    /// and there.
    fn live_layer(&self, k: usize, p: &Path) -> Option<usize> {
        let chain = self.live.as_ref()?.get(k)?.chain();
        chain
            .iter()
            .position(|c| c.as_deref().is_some_and(|c| same_file(c, p)))
    }

    /// Where a live delete whose dependant is the current state switches
    /// each live disk before merging its old top (the same scheme as a
    /// live create's children); none when not attached or for a
    /// checkpoint dependant.
    fn live_children(&self, dep: &Option<String>) -> Vec<PathBuf> {
        if dep.is_some() || !self.attached() {
            return Vec::new();
        }
        self.current_children(&uuid::Uuid::new_v4().to_string())
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
        let live = self.live_files();
        let unheld: Vec<PathBuf> = touched
            .iter()
            .filter(|f| !live.iter().any(|l| same_file(l, f)))
            .cloned()
            .collect();
        check_disks_unused(&unheld)?;
        // The live tops were checked when the VM was attached.
        let tops = self.live_tops();
        touched.retain(|f| !tops.iter().any(|t| same_file(t, f)));
        owner::refuse_foreign(&self.data, &touched, "deleting this checkpoint")?;
        let mut sizes = Vec::new();
        // Per file system (device): a folder on it and the bytes still free
        // there, merge after merge (each frees its source's file at the end).
        let mut free: Vec<(u64, PathBuf, u64)> = Vec::new();
        for (k, (target, src)) in node.disks.iter().zip(&dep_disks).enumerate() {
            if src == target {
                sizes.push(0);
                continue;
            }
            // The live top is held read-write: estimate on its live chain.
            let (copied, need) = match (self.live_layer(k, src), &self.live) {
                (Some(0), Some(live)) => {
                    live[k].with_disk(|d| merge::merge_estimate_in(d, target))?
                }
                _ => merge::merge_estimate(src, target)?,
            };
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
        let live = self.live_files();
        let tops = self.live_tops();
        disks.retain(|f| !tops.iter().any(|t| same_file(t, f)));
        let unheld: Vec<PathBuf> = disks
            .iter()
            .filter(|f| !live.iter().any(|l| same_file(l, f)))
            .cloned()
            .collect();
        check_disks_unused(&unheld)?;
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
            let c = &self.data.checkpoints[i];
            if !hide && c.parent.is_some() {
                let disks = c.disks.clone();
                self.anchors_off(&disks)?;
            }
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
        if deps == [None] && self.attached() {
            return Ok(()); // the guest writes right above it: once detached
        }
        if deps == [None] && self.is_anchor(&self.data.checkpoints[i].disks) {
            return Ok(()); // a reference point's anchor: once a checkpoint freezes its child
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
        // This VM's own files (and the files its live handles write, which
        // a live switch not yet committed adds) are never someone else's.
        let mut known = ours.clone();
        known.extend(self.live_files());
        for f in changed.iter().filter(|f| f.is_file()) {
            let others = merge::find_children_except(f, &dirs, &known)?;
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

    /// Journal the merge of `dep` into `id` (with the live switch's
    /// `children`); returns the DataWriteGuids of `id`'s disks it recorded.
    /// The dependant's disks are among the files removed at the end (a
    /// live merge leaves its source for the journal to remove).
    fn journal_merge(
        &self,
        id: &str,
        dep: &Option<String>,
        sizes: &[u64],
        children: &[PathBuf],
    ) -> Result<Vec<String>> {
        let c = &self.data.checkpoints[self.index(id)?];
        let mut files = self.own_files(c);
        files.extend(
            self.disks_of(dep)?
                .into_iter()
                .filter(|s| !c.disks.contains(s)),
        );
        let guids: Vec<String> = c.disks.iter().map(|d| data_write_guid(d)).collect();
        self.journal(&Journal::Merge {
            id: id.to_string(),
            dependant: dep.clone(),
            files,
            guids: guids.clone(),
            sizes: sizes.to_vec(),
            children: children.to_vec(),
        })?;
        Ok(guids)
    }

    /// Merge every disk of `dep` into `node`'s (the ones not merged yet).
    /// On an attached VM a disk in a live chain is merged live
    /// ([`crate::disk::live::LiveDisk::merge_down`]); when the current
    /// state is the dependant, every live disk is first switched to its
    /// fresh child in `children` (as a live create switches), so that its
    /// old top, the source, is frozen.
    pub(super) fn merge_disks(
        &mut self,
        node: &Checkpoint,
        dep: &Option<String>,
        hooks: Option<&mut dyn Hooks>,
        guids: &[String],
        sizes: &[u64],
        children: &[PathBuf],
    ) -> Result<()> {
        let dep_disks = self.disks_of(dep)?;
        let on_top = dep_disks
            .iter()
            .enumerate()
            .any(|(k, s)| self.live_layer(k, s) == Some(0));
        if on_top {
            if dep.is_some() || children.len() != dep_disks.len() {
                return Err(Error::InvalidArgument(format!(
                    "deleting checkpoint {:?} would merge the disk the running guest writes, \
                     and no new child for it was journaled: detach the VM and try again",
                    node.name
                )));
            }
            let made = self.prepare_live(children)?.unwrap_or_default();
            self.switch_live(made, &node.id, |_| Ok(()))?;
        }
        // A frozen top whose seal failed after its switch (then only a
        // warning: no data changed) is still open read-write under its
        // child; sealed now, before the merge opens it (an error stops the
        // delete here, to be retried).
        self.seal_live()?;
        // The states that hang under the dependant: their disks get re-pointed.
        let grand: Vec<Option<String>> = match dep {
            Some(d) => self.dependants(d),
            None => Vec::new(),
        };
        let mut todo = Vec::new();
        let mut relinked = Vec::new();
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
            if self.live_layer(k, src).is_none() && self.live_layer(k, target).is_some() {
                // Merged live already (the chain was re-linked); the other
                // branches may still name the source.
                relinked.push((k, target));
                continue;
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
        for (k, target) in relinked {
            self.repoint_branches(k, target, &grand)?;
        }
        // What each merge brings into a reference point's anchor is in its
        // change map before a byte moves.
        for (k, target, src, _) in &todo {
            self.note_merge(*k, target, src)?;
        }
        let mut base = 0u64;
        for (k, target, src, size) in todo {
            let mut descendants = Vec::new();
            for g in &grand {
                descendants.push(self.disks_of(g)?[k].clone());
            }
            descendants.extend(children.get(k).filter(|c| c.exists()).cloned());
            let mut cb = |done: u64, _total: u64| -> bool {
                match hooks.as_mut() {
                    Some(h) => h.progress(base + done, grand_total),
                    None => true,
                }
            };
            let live = self.live.as_ref().and_then(|l| l.get(k));
            if let (Some(live), Some(j)) = (live, self.live_layer(k, src)) {
                if j == 0 || self.live_layer(k, target) != Some(j + 1) {
                    return Err(Error::InvalidArgument(format!(
                        "the running VM's disk {k} does not hold {} right above {}: deleting \
                         checkpoint {:?} cannot merge it live",
                        src.display(),
                        target.display(),
                        node.name
                    )));
                }
                live.merge_down(
                    j,
                    LiveMergeOptions {
                        progress: Some(&mut cb),
                        skip_space_check: false,
                        space_limit: None,
                    },
                )?;
                self.repoint_branches(k, target, &grand)?;
                base += size;
                continue;
            }
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

    /// After disk `k` of a branch point was merged live into `target` (the
    /// live chain re-linked the layer above it): disk `k` of every other
    /// state in `grand` (the branch point's dependants, which no live chain
    /// holds: checkpoint disks) is re-pointed at `target` and its new
    /// DataWriteGuid, as the offline merge re-points descendants. Until
    /// then they name the merged source, which reads the same and is only
    /// removed once the delete commits; doing it again changes nothing, so
    /// a retry or the journal's finish after a crash may repeat it.
    fn repoint_branches(&self, k: usize, target: &Path, grand: &[Option<String>]) -> Result<()> {
        let mut others = Vec::new();
        for g in grand {
            let x = self.disks_of(g)?[k].clone();
            if self.live_layer(k, &x).is_none() && !same_file(&x, target) {
                others.push(x);
            }
        }
        if others.is_empty() {
            return Ok(());
        }
        if crate::disk::Format::of_file(target) == Some(crate::disk::Format::Vhd) {
            return crate::disk::vhd_merge::repoint_vhd(&others, target).map(drop);
        }
        let guid = merge::open_single(target, false)?
            .vhdx()?
            .header()
            .data_write_guid;
        merge::repoint(&others, target, &guid)?;
        Ok(())
    }

    /// The merged disks belong to the dependant now (the current state's
    /// are the live switch's `children` where they exist); `node` leaves
    /// the tree; the merged sources a live merge left are removed.
    pub(super) fn commit_merge(
        &mut self,
        node: &Checkpoint,
        dep: &Option<String>,
        children: &[PathBuf],
    ) -> Result<()> {
        let id = node.id.as_str();
        let sources = self.disks_of(dep)?;
        // Reference points anchored on a merged source follow its data.
        self.move_anchors(&sources, &node.disks);
        // Commit: the dependant takes over the merged disks.
        match dep {
            Some(d) => {
                let j = self.index(d)?;
                self.data.checkpoints[j].disks = node.disks.clone();
                self.data.checkpoints[j].parent = node.parent.clone();
            }
            None if children.iter().any(|c| c.exists()) => {
                // Switched live: the current state writes the children,
                // over `node`'s merged disks, which stay as a hidden node
                // (no merge of the guest's own top while it writes); it is
                // collapsed once the VM is detached, at the next open.
                self.data.current.disks = node
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(k, n)| match children.get(k) {
                        Some(c) if c.exists() => c.clone(),
                        _ => n.clone(),
                    })
                    .collect();
            }
            None => {
                self.data.current.disks = node.disks.clone();
                self.data.current.parent = node.parent.clone();
            }
        }
        let own = self.own_files(node);
        let i = self.index(id)?;
        if dep.is_none() && children.iter().any(|c| c.exists()) {
            let c = &mut self.data.checkpoints[i];
            c.hidden = true;
            c.deleting = false;
            c.config_file = None;
            c.saved_state = None;
        } else {
            self.data.checkpoints.remove(i);
        }
        self.save()?;
        for f in &own {
            remove_if_exists(f)?;
        }
        let used = self.disks_of(dep)?;
        for s in sources
            .iter()
            .filter(|s| !used.contains(s) && !node.disks.contains(s))
        {
            remove_if_exists(s)?;
        }
        self.end_journal()
    }
}
