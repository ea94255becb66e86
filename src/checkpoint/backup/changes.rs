//! What changed between two points of the tree: [`changes_between`] on
//! two open chains, and [`Vm::changes`] by checkpoint name.
//!
//! The changes are read off the chains themselves, exact to the logical
//! sector: from REF to NAME on one path they are the ranges the layers
//! above REF's disk in NAME's chain hold; with REF on another branch, the
//! union of what both sides hold above their deepest common file (what
//! may differ between REF and NAME goes through the common ancestor).

use std::path::PathBuf;

use super::manifest::Point;
use super::reference::reference_disk_changes;
use crate::checkpoint::model::{Checkpoint, ReferencePoint};
use crate::checkpoint::vm::Vm;
use crate::disk::merge::{coalesce, Range};
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

/// The canonical paths of the files of `d`'s chain, top first (a layer
/// not opened from a path, or gone, is None).
fn chain_paths(d: &Disk) -> Vec<Option<PathBuf>> {
    d.chain()
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::canonicalize(p).ok()))
        .collect()
}

/// Every byte range whose content may differ between the chains `from`
/// (REF) and `to` (NAME): sorted, coalesced, exact to the logical sector.
/// Empty when both are the same file. Refused when the chains share no
/// file (different disks), or when their virtual sizes differ.
pub fn changes_between(from: &Disk, to: &Disk) -> Result<Vec<Range>> {
    if from.virtual_size() != to.virtual_size() {
        return Err(Error::Unsupported(format!(
            "the disk's virtual size changed between the two points ({} and {} bytes): \
             the changes of a resized disk are not supported",
            from.virtual_size(),
            to.virtual_size()
        )));
    }
    let (fc, tc) = (chain_paths(from), chain_paths(to));
    let common = tc.iter().enumerate().find_map(|(i, p)| {
        let p = p.as_ref()?;
        let j = fc.iter().position(|q| q.as_ref() == Some(p))?;
        Some((i, j))
    });
    let Some((i, j)) = common else {
        return Err(Error::InvalidArgument(
            "the two disks share no file in their chains: they are not two states of one disk"
                .into(),
        ));
    };
    let mut all = Vec::new();
    if i > 0 {
        all.extend(to.changed_ranges(i)?);
    }
    if j > 0 {
        all.extend(from.changed_ranges(j)?);
    }
    Ok(coalesce(all))
}

/// The point the changes start from (REF): a checkpoint of the tree, or
/// a reference point.
#[derive(Debug, Clone)]
pub(crate) enum Since {
    /// A checkpoint (its disks hold its state).
    Checkpoint(Checkpoint),
    /// A reference point (its anchors and change maps).
    Reference(ReferencePoint),
}

impl Since {
    /// REF as a manifest names it.
    pub(crate) fn point(&self) -> Point {
        match self {
            Since::Checkpoint(c) => Point::of(c),
            Since::Reference(r) => Point {
                id: r.id.clone(),
                name: r.name.clone(),
            },
        }
    }

    /// The ranges of disk `k` that may differ between REF and the chain
    /// `to`, sorted and coalesced.
    pub(crate) fn disk_changes(&self, k: usize, to: &Disk) -> Result<Vec<Range>> {
        match self {
            Since::Checkpoint(c) => {
                let f = c.disks.get(k).ok_or_else(|| {
                    Error::InvalidArgument(format!("checkpoint {:?} has no disk {k}", c.name))
                })?;
                let fd = Disk::open(f, OpenMode::ReadOnly)?;
                changes_between(&fd, to).map_err(|e| e.in_file(f))
            }
            Since::Reference(r) => reference_disk_changes(r, k, to),
        }
    }
}

impl Vm {
    /// REF called `name`: a checkpoint (refused while it is being
    /// deleted), else a reference point; `NotFound` when neither is.
    pub(crate) fn since(&self, name: &str) -> Result<Since> {
        match self.usable(name) {
            Ok(c) => Ok(Since::Checkpoint(c.clone())),
            Err(Error::NotFound(_)) => match self.reference(name) {
                Some(r) => Ok(Since::Reference(r.clone())),
                None => Err(Error::NotFound(format!(
                    "no checkpoint or reference point is called {name:?}"
                ))),
            },
            Err(e) => Err(e),
        }
    }

    /// Per disk of the VM (in its disk order), the byte ranges that may
    /// differ between `since` and checkpoint `to` (None: the current
    /// state), exact to the logical sector (to 64 KiB for what a reference
    /// point's change map holds), sorted and coalesced: what an
    /// incremental export since `since` copies.
    ///
    /// `since` is a checkpoint or a reference point
    /// ([`Vm::convert_to_reference`]). A checkpoint may be any one on the
    /// path to `to`, or on another branch (then the changes of both sides
    /// since their common ancestor). Refused (`InvalidArgument`) when
    /// `since` is `to` or was taken after it on its path; `NotFound` for an
    /// unknown name. For the current state of an attached VM the ranges
    /// are those of the live chains now (a guest writing meanwhile may add
    /// more).
    pub fn changes(&mut self, since: &str, to: Option<&str>) -> Result<Vec<Vec<Range>>> {
        self.settle(None)?;
        self.seal_live()?;
        let from = self.since(since)?;
        let to_ck = match to {
            Some(n) => Some(self.usable(n)?.clone()),
            None => None,
        };
        if let Since::Checkpoint(c) = &from {
            self.check_order(c, to_ck.as_ref())?;
        }
        let n = self.data.current.disks.len();
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let r = match (&to_ck, &self.live) {
                (Some(c), _) => from.disk_changes(k, &Disk::open(&c.disks[k], OpenMode::ReadOnly)?),
                (None, Some(live)) => live[k].with_disk(|d| from.disk_changes(k, d)),
                (None, None) => from.disk_changes(
                    k,
                    &Disk::open(&self.data.current.disks[k], OpenMode::ReadOnly)?,
                ),
            };
            out.push(r?);
        }
        Ok(out)
    }

    /// Refuse (`InvalidArgument`) a REF `since` that is not older than
    /// `to` (None: the current state): the same checkpoint, or one taken
    /// after it on its path. One on another branch is accepted.
    pub(super) fn check_order(&self, since: &Checkpoint, to: Option<&Checkpoint>) -> Result<()> {
        let Some(to) = to else {
            return Ok(());
        };
        if since.id == to.id {
            return Err(Error::InvalidArgument(format!(
                "the changes since checkpoint {:?} are asked up to the same checkpoint: REF \
                 (--since) must be an earlier checkpoint, or one on another branch",
                since.name
            )));
        }
        let mut p = since.parent.as_deref();
        for _ in 0..=self.data.checkpoints.len() {
            let Some(id) = p else { break };
            if id == to.id {
                return Err(Error::InvalidArgument(format!(
                    "checkpoint {:?} (--since) was taken after {:?} on its path: REF must be \
                     older than the exported point, or on another branch",
                    since.name, to.name
                )));
            }
            p = self
                .data
                .checkpoints
                .iter()
                .find(|c| c.id == id)
                .and_then(|c| c.parent.as_deref());
        }
        Ok(())
    }
}
