//! Reference points ([`Vm::convert_to_reference`]): a checkpoint turned
//! into what answers "what changed since" once its data is gone, as
//! Hyper-V's `ConvertToReferencePoint` does for backup checkpoints, and
//! the change tracking that keeps the answer exact.
//!
//! # How the changes since a reference point are known
//!
//! Per disk, a reference point keeps an *anchor* (a disk file of the tree)
//! and a *change map* ([`ChangeMap`]): the changes since the point are the
//! map's ranges plus what differs between the anchor and the point asked
//! about, read off the chains as between two checkpoints
//! ([`changes_between`]). At the conversion the anchor is the checkpoint's
//! own disk and the map is empty.
//!
//! The anchor is never written: the guest's writes since then land in the
//! differencing layers above it, whose BAT and sector bitmaps the write
//! path keeps through the VHDX log. That is the crash-consistent record of
//! every write: after any crash a layer holds exactly the sectors whose
//! writes reached it (the log replays or drops each allocation whole), so
//! nothing written is missed and nothing costs more per write or per flush
//! than the write path already pays. The map takes over what would be
//! lost when layers go away:
//!
//! - **A merge into the anchor** (deleting the checkpoint the anchor
//!   belongs to, or collapsing a hidden node): before the merge starts, the
//!   ranges the merged layer holds are added to the map and the map is
//!   synced; the anchor then holds the merged state. A crash between the
//!   two leaves a map that says more than happened, never less.
//! - **A merge of the anchor into its parent**: the parent then reads as
//!   the anchor did; the anchor moves to it in the same `vm.json` commit.
//! - **The removal of the anchor** (its checkpoint deleted with no
//!   dependant): the anchor's own ranges are added to the map first and
//!   the anchor moves to its parent file.
//! - **A delete that would make the anchor the disk the guest writes**
//!   (the checkpoint the current state hangs under): the node is kept
//!   hidden instead, its data untouched, and collapsed once a checkpoint
//!   has frozen the layer above it. Such a hidden node holds only the
//!   current state's own data, nothing the reference point adds.
//!
//! A reference point never blocks a merge, a delete or an apply: each
//! only adds to its map first.

use std::path::{Path, PathBuf};

use super::changes::changes_between;
use super::map::ChangeMap;
use crate::checkpoint::create::Hooks;
use crate::checkpoint::model::{same_name, ReferenceDisk, ReferencePoint};
use crate::checkpoint::vm::Vm;
use crate::disk::merge::{coalesce, Range};
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

/// The folder of the change maps inside the VM folder.
pub const REFERENCES_DIR: &str = "references";

/// A reference point as listed ([`Vm::references`]).
#[derive(Debug, Clone)]
pub struct ReferenceView {
    /// The reference point.
    pub reference: ReferencePoint,
    /// Seconds since the checkpoint was taken.
    pub age_seconds: u64,
    /// Bytes its change maps cover (what merges brought in since the
    /// point; the layers above the anchors add to that).
    pub map_bytes: u64,
}

/// `a` and `b` name one file.
fn same_file(a: &Path, b: &Path) -> bool {
    crate::checkpoint::delete::same_file(a, b)
}

/// The next file under `p` in its chain, and what `p` holds over it
/// (None, everything: `p` has no parent).
fn parent_and_ranges(p: &Path) -> Result<(Option<PathBuf>, Vec<Range>)> {
    let d = Disk::open(p, OpenMode::ReadOnly)?;
    let chain = d.chain();
    match chain.get(1).cloned().flatten() {
        Some(parent) => Ok((Some(parent), d.changed_ranges(1)?)),
        None => Ok((
            None,
            vec![Range {
                offset: 0,
                length: d.virtual_size(),
            }],
        )),
    }
}

impl Vm {
    /// Turn checkpoint `name` into a reference point: the checkpoint is
    /// deleted (its disks merged, as [`Vm::delete`] does; nothing of the
    /// tree's data is lost), and what is kept answers exactly what changed
    /// since it ([`Vm::changes`], incremental exports with `since = name`,
    /// on a base export that captured the checkpoint). Its configuration
    /// copy and memory state go.
    ///
    /// Refused, changing nothing: an unknown or hidden checkpoint
    /// (`NotFound`), one being deleted (`Busy`), a reference point of that
    /// name already there (`AlreadyExists`). A conversion interrupted after
    /// the reference point was recorded is finished by running it again
    /// (the checkpoint is still listed until its delete commits).
    pub fn convert_to_reference(&mut self, name: &str, hooks: &mut dyn Hooks) -> Result<()> {
        self.settle(Some(hooks))?;
        let c = self.usable(name)?.clone();
        let exists = self
            .data
            .references
            .iter()
            .find(|r| same_name(&r.name, name));
        match exists {
            Some(r) if r.id == c.id => {} // interrupted: finish the delete
            Some(_) => {
                return Err(Error::AlreadyExists(format!(
                    "a reference point is already called {name:?}: delete it first \
                     (`ckpt checkpoint delete-reference`)"
                )))
            }
            None => {
                let dir = self.dir().join(REFERENCES_DIR).join(&c.id);
                std::fs::create_dir_all(&dir).map_err(|e| Error::from(e).in_file(&dir))?;
                let mut disks = Vec::with_capacity(c.disks.len());
                for (k, f) in c.disks.iter().enumerate() {
                    let size = Disk::open(f, OpenMode::ReadOnly)?.virtual_size();
                    let map = dir.join(format!("disk{k}.map"));
                    ChangeMap::empty(size).write(&map)?;
                    disks.push(ReferenceDisk {
                        anchor: Some(f.clone()),
                        map,
                    });
                }
                let before = self.data.clone();
                self.data.references.push(ReferencePoint {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    created: c.created,
                    converted: crate::checkpoint::vm::now(),
                    taken: c.taken,
                    disks,
                });
                self.save_or_restore(before, &format!("converting checkpoint {name:?}"))?;
            }
        }
        self.delete_id(&c.id, hooks)
    }

    /// Delete reference point `name`: its record and change maps go, and
    /// hidden nodes kept only for it are collapsed (now or at the next
    /// open). `NotFound` for an unknown name.
    pub fn delete_reference(&mut self, name: &str) -> Result<()> {
        self.settle(None)?;
        let i = self
            .data
            .references
            .iter()
            .position(|r| same_name(&r.name, name))
            .ok_or_else(|| Error::NotFound(format!("no reference point is called {name:?}")))?;
        let before = self.data.clone();
        let r = self.data.references.remove(i);
        self.save_or_restore(before, &format!("deleting reference point {name:?}"))?;
        let what = format!("deleting reference point {name:?}");
        let tidy = (|| -> Result<()> {
            for d in &r.disks {
                crate::checkpoint::vm::remove_if_exists(&d.map)?;
            }
            let dir = self.dir().join(REFERENCES_DIR).join(&r.id);
            let _ = std::fs::remove_dir(&dir);
            Ok(())
        })();
        self.after_commit(&what, tidy);
        let collapsed = self.collapse_hidden();
        self.after_commit(&what, collapsed);
        Ok(())
    }

    /// The reference points, oldest first, with their age.
    pub fn references(&self) -> Result<Vec<ReferenceView>> {
        references_of(&self.data.references)
    }

    /// The reference point called `name` (None: there is none).
    pub(crate) fn reference(&self, name: &str) -> Option<&ReferencePoint> {
        self.data
            .references
            .iter()
            .find(|r| same_name(&r.name, name))
    }

    /// Whether one of the files `disks` is the anchor of a reference point.
    pub(crate) fn is_anchor(&self, disks: &[PathBuf]) -> bool {
        self.data.references.iter().any(|r| {
            r.disks.iter().any(|d| {
                d.anchor
                    .as_deref()
                    .is_some_and(|a| disks.iter().any(|f| same_file(a, f)))
            })
        })
    }

    /// Before disk `k`'s file `src` is merged into `target`: every
    /// reference point anchored at `target` adds what `src` holds over it
    /// to its map (synced before the merge changes a byte).
    pub(crate) fn note_merge(&self, k: usize, target: &Path, src: &Path) -> Result<()> {
        let mut ranges = None;
        for r in &self.data.references {
            let Some(d) = r.disks.get(k) else { continue };
            if !d.anchor.as_deref().is_some_and(|a| same_file(a, target)) {
                continue;
            }
            if ranges.is_none() {
                let s = Disk::open(src, OpenMode::ReadOnly)?;
                let level = s.level_of(target)?;
                ranges = Some(s.changed_ranges(level)?);
            }
            let mut m = ChangeMap::read(&d.map)?;
            if m.add(ranges.as_deref().unwrap_or_default()) {
                m.write(&d.map)?;
            }
        }
        Ok(())
    }

    /// At a merge's commit (in memory, saved by the caller): the anchors on
    /// a merged source `sources[k]` move to `targets[k]`, which reads as
    /// the source did.
    pub(crate) fn move_anchors(&mut self, sources: &[PathBuf], targets: &[PathBuf]) {
        for r in &mut self.data.references {
            for (k, d) in r.disks.iter_mut().enumerate() {
                let (Some(s), Some(t)) = (sources.get(k), targets.get(k)) else {
                    continue;
                };
                if d.anchor.as_deref().is_some_and(|a| same_file(a, s)) && !same_file(s, t) {
                    d.anchor = Some(t.clone());
                }
            }
        }
    }

    /// Before the files `removed` go (in memory, saved by the caller; the
    /// maps are written now): every anchor among them moves to its parent
    /// file, its map taking what it held over that parent (everything, for
    /// a file without a parent).
    pub(crate) fn anchors_off(&mut self, removed: &[PathBuf]) -> Result<()> {
        let gone = |p: &Path| removed.iter().any(|f| same_file(f, p));
        let mut refs = std::mem::take(&mut self.data.references);
        let r = (|| -> Result<()> {
            for r in &mut refs {
                for d in &mut r.disks {
                    let mut add = Vec::new();
                    let mut hops = 0;
                    while let Some(a) = d.anchor.clone().filter(|a| gone(a)) {
                        let (parent, ranges) = parent_and_ranges(&a)?;
                        add.extend(ranges);
                        d.anchor = parent;
                        hops += 1;
                        if hops > crate::disk::MAX_CHAIN_DEPTH {
                            d.anchor = None;
                        }
                    }
                    if d.anchor.is_none() && hops > 0 {
                        let m = ChangeMap::read(&d.map)?;
                        ChangeMap::full(m.virtual_size).write(&d.map)?;
                    } else if !add.is_empty() {
                        let mut m = ChangeMap::read(&d.map)?;
                        if m.add(&add) {
                            m.write(&d.map)?;
                        }
                    }
                }
            }
            Ok(())
        })();
        self.data.references = refs;
        r
    }
}

/// The ranges of disk `k` that may differ between reference point `r` and
/// the chain `to`, sorted and coalesced.
pub(crate) fn reference_disk_changes(
    r: &ReferencePoint,
    k: usize,
    to: &Disk,
) -> Result<Vec<Range>> {
    let d = r.disks.get(k).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "reference point {:?} has no disk {k} (it has {})",
            r.name,
            r.disks.len()
        ))
    })?;
    let m = ChangeMap::read(&d.map)?;
    if m.virtual_size != to.virtual_size() {
        return Err(Error::Unsupported(format!(
            "the disk's virtual size changed since reference point {:?} ({} and {} bytes): \
             the changes of a resized disk are not supported",
            r.name,
            m.virtual_size,
            to.virtual_size()
        )));
    }
    let mut all = m.runs;
    match &d.anchor {
        None => {}
        Some(a) => {
            let from = Disk::open(a, OpenMode::ReadOnly).map_err(|e| e.in_file(a))?;
            all.extend(changes_between(&from, to).map_err(|e| e.in_file(a))?);
        }
    }
    Ok(coalesce(all))
}

/// The views of `refs`, oldest first.
pub fn references_of(refs: &[ReferencePoint]) -> Result<Vec<ReferenceView>> {
    let now = crate::checkpoint::vm::now();
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let mut map_bytes = 0;
        for d in &r.disks {
            map_bytes += ChangeMap::read(&d.map).map(|m| m.bytes()).unwrap_or(0);
        }
        out.push(ReferenceView {
            reference: r.clone(),
            age_seconds: now.saturating_sub(r.created),
            map_bytes,
        });
    }
    out.sort_by_key(|v| v.reference.created);
    Ok(out)
}
