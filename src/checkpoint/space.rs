//! Space of a VM's current disks: [`Vm::compact_disk`] compacts the top
//! file of current disk `i` (Optimize-VHD) — through its live handle while
//! the VM is attached, so that the guest goes on reading and writing (see
//! `src/disk/live/space.rs`), else on the file opened here.
//!
//! Depends on [`crate::disk`] (compaction, live handles) and on the VM's
//! ownership checks ([`owner`]); nothing in the tree changes, so nothing is
//! journaled: a crash during a compaction leaves a file that opens with
//! all its data (see [`Disk::compact`]).

use super::vm::*;
use crate::checkpoint::owner;
use crate::disk::compact::{CompactOptions, CompactReport};
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

impl Vm {
    /// Compact the top file of current disk `i` (the order of
    /// [`VmFile::disks`](crate::checkpoint::VmFile::disks)): the blocks
    /// that hold no data give their space back and the file shrinks (see
    /// [`Disk::compact`]; what the disk reads does not change, nor its
    /// DataWriteGuid, so the checkpoints' files stay linked).
    ///
    /// Attached (a [`Vm::disk`] handle was taken): live, through that
    /// handle, while the guest keeps doing I/O ([`LiveDisk::compact`]:
    /// the guest waits for one step at a time; a checkpoint taken
    /// meanwhile makes it end with `Busy`). Not attached: the file is
    /// opened read-write here (`Busy` when another process holds it) and
    /// closed afterwards. A file another VM uses is refused
    /// (`InvalidArgument`), as for any operation that writes it.
    ///
    /// [`LiveDisk::compact`]: crate::disk::live::LiveDisk::compact
    pub fn compact_disk(&mut self, i: usize, opts: CompactOptions<'_>) -> Result<CompactReport> {
        let n = self.data.current.disks.len();
        if i >= n {
            return Err(Error::InvalidArgument(format!(
                "VM {:?} has {n} disk(s): there is no disk {i}",
                self.data.config.name
            )));
        }
        if let Some(live) = &self.live {
            return live[i].compact(opts);
        }
        self.settle(None)?;
        let path = self.data.current.disks[i].clone();
        owner::refuse_foreign(&self.data, std::slice::from_ref(&path), "compacting it")?;
        let disk = Disk::open(&path, OpenMode::ReadWrite)?;
        let r = disk.compact(opts);
        let closed = disk.close();
        let report = r?;
        closed.map_err(|e| e.in_file(&path))?;
        Ok(report)
    }
}
