//! Resizing a disk of the current state, as Hyper-V's Resize-VHD on a
//! VM's disk does: [`Vm::resize_disk`].
//!
//! Only the current state's top file changes (a differencing disk once a
//! checkpoint exists, the base disk before): every checkpoint keeps its
//! disks, and so its size, and applying one brings that size back (the
//! new current disk is a child of the checkpoint's, made at its size).
//! The file-level steps, and why a crash leaves the old or the new size,
//! are [`crate::disk::Disk::resize`]'s.

use super::owner;
use super::vm::*;
use crate::disk::resize::{ResizeOptions, ResizeReport};
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

impl Vm {
    /// Change the virtual size of disk `i` of the current state (the
    /// order of [`VmFile::disks`](crate::checkpoint::VmFile::disks)) to
    /// `new_size`, with the rules of [`Disk::resize`] (a shrink that would
    /// drop data needs `opts.allow_shrink`). Checkpoints keep the size
    /// they were taken with.
    ///
    /// An attached VM is resized through its live handle
    /// ([`crate::disk::live::LiveDisk::resize`]): the guest sees the new size on
    /// its next size query. A detached VM's disk is opened here (`Busy`
    /// when something else holds it). A disk another VM uses is refused.
    pub fn resize_disk(
        &mut self,
        i: usize,
        new_size: u64,
        opts: ResizeOptions,
    ) -> Result<ResizeReport> {
        self.settle(None)?;
        let n = self.data.current.disks.len();
        let Some(path) = self.data.current.disks.get(i).cloned() else {
            return Err(Error::InvalidArgument(format!(
                "VM {:?} has {n} disk(s): there is no disk {i}",
                self.data.config.name
            )));
        };
        owner::refuse_foreign(&self.data, std::slice::from_ref(&path), "resizing the disk")?;
        if let Some(live) = self.live.as_ref().map(|l| l[i].clone()) {
            return live.resize(new_size, opts);
        }
        let mut d = Disk::open(&path, OpenMode::ReadWrite)?;
        let r = d.resize(new_size, opts);
        let closed = d.close();
        let r = r?;
        closed?;
        Ok(r)
    }
}
