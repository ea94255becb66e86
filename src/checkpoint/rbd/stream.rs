//! [`Vm::write_rbd_diff`]: one disk's state, or its changes between two
//! points of the tree, as an "rbd diff v1" stream for `rbd import-diff`;
//! [`Vm::write_rbd_image`]: one disk with its checkpoints as an `rbd
//! export --export-format 2` image.

use std::io::Write;

use super::names::snap_name;
use crate::checkpoint::backup::changes_between;
use crate::checkpoint::vm::Vm;
use crate::disk::merge::Range;
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};
use crate::rbd::diff::DiffStats;
use crate::rbd::image::{write_image_v2, ImageState};
use crate::rbd::stream::{allocated_ranges, write_disk_diff, DiffNames};

impl Vm {
    /// Write disk `disk`'s state at checkpoint `to` (None: the current
    /// state) as an rbd diff v1 stream into `out`. With `from` (a
    /// checkpoint older than `to`, one on another branch, or a reference
    /// point: the ranges [`Vm::changes`] gives), only what
    /// changed since `from` goes (the ranges that differ, whichever of the
    /// two is older), after an `f` record naming `from`'s snapshot; without it, every allocated range. A `to` checkpoint
    /// adds a `t` record (`rbd import-diff` then creates that snapshot).
    /// Snapshot names follow [`snap_name`]. Refused for the current state
    /// of an attached VM.
    pub fn write_rbd_diff(
        &mut self,
        disk: usize,
        from: Option<&str>,
        to: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<DiffStats> {
        self.settle(None)?;
        if disk >= self.data.disks.len() {
            return Err(Error::InvalidArgument(format!(
                "the VM has {} disks; there is no disk {disk}",
                self.data.disks.len()
            )));
        }
        if to.is_none() && self.attached() {
            return Err(Error::Busy(
                "the VM is attached: its current state changes while it is written (take a \
                 checkpoint and write that)"
                    .into(),
            ));
        }
        let to_ck = match to {
            Some(n) => Some(self.usable(n)?.clone()),
            None => None,
        };
        let from_ck = match from {
            Some(n) => Some(self.since(n)?),
            None => None,
        };
        if let (Some(f), Some(t)) = (&from_ck, &to_ck) {
            if f.point().id == t.id {
                return Err(Error::InvalidArgument(format!(
                    "the diff from checkpoint {:?} to itself is empty: name an earlier one",
                    t.name
                )));
            }
        }
        let to_path = match &to_ck {
            Some(c) => c.disks[disk].clone(),
            None => self.data.current.disks[disk].clone(),
        };
        let to_disk = Disk::open(&to_path, OpenMode::ReadOnly)?;
        let ranges = match &from_ck {
            Some(f) => f
                .disk_changes(disk, &to_disk)
                .map_err(|e| e.in_file(&to_path))?,
            None => allocated_ranges(&to_disk)?,
        };
        let from_snap = from_ck.as_ref().map(|f| {
            let p = f.point();
            snap_name(&p.name, &p.id)
        });
        let to_snap = to_ck.as_ref().map(|c| snap_name(&c.name, &c.id));
        let names = DiffNames {
            from_snap: from_snap.as_deref(),
            to_snap: to_snap.as_deref(),
        };
        write_disk_diff(&to_disk, &ranges, names, out, &mut |_, _| true)
    }
}

impl Vm {
    /// Write disk `disk` as a whole RBD image in `rbd export
    /// --export-format 2` form into `out` (for `rbd import
    /// --export-format 2 - POOL/IMAGE`): one snapshot per checkpoint on
    /// the path from the root to the current state, oldest first, named
    /// as [`snap_name`] says, each sent as its changes since the one
    /// before, and the current state as the head; objects of 4 MiB.
    /// Checkpoints on other branches are not in it. Refused for an
    /// attached VM.
    pub fn write_rbd_image(&mut self, disk: usize, out: &mut dyn Write) -> Result<DiffStats> {
        self.settle(None)?;
        if disk >= self.data.disks.len() {
            return Err(Error::InvalidArgument(format!(
                "the VM has {} disks; there is no disk {disk}",
                self.data.disks.len()
            )));
        }
        if self.attached() {
            return Err(Error::Busy(
                "the VM is attached: its current state changes while it is written".into(),
            ));
        }
        let plan = super::plan::plan_of(&self.data);
        let main = &plan.lines[0];
        let mut paths: Vec<(Option<String>, std::path::PathBuf)> = main
            .steps
            .iter()
            .map(|s| (Some(s.snap.clone()), s.disks[disk].clone()))
            .collect();
        paths.push((None, self.data.current.disks[disk].clone()));
        let disks: Vec<Disk> = paths
            .iter()
            .map(|(_, p)| Disk::open(p, OpenMode::ReadOnly).map_err(|e| e.in_file(p)))
            .collect::<Result<_>>()?;
        let mut states = Vec::with_capacity(disks.len());
        for (i, d) in disks.iter().enumerate() {
            let ranges = match i.checked_sub(1).map(|j| &disks[j]) {
                None => allocated_ranges(d)?,
                Some(prev) if prev.virtual_size() == d.virtual_size() => {
                    changes_between(prev, d).map_err(|e| e.in_file(&paths[i].1))?
                }
                Some(_) => vec![Range {
                    offset: 0,
                    length: d.virtual_size(),
                }],
            };
            states.push(ImageState {
                snap: paths[i].0.as_deref(),
                disk: d,
                ranges,
            });
        }
        write_image_v2(&states, 22, out)
    }
}
