//! Offline resize (Hyper-V's Resize-VHD) of a base disk or of the top of
//! a chain:
//! [`Disk::resize`] with [`ResizeOptions`]; what it did is a
//! [`ResizeReport`]. The file-level steps (and why a crash leaves the old
//! or the new size) are in `vhdx/resize.rs`; here are the checks, the
//! shrink guard, and the reopen of the file under its new geometry.
//!
//! Depends on the file layer (`vhdx`) and `crate::error` only.

use super::vhdx::Vhdx;
use super::Disk;
use crate::error::{Error, Result};
use crate::format::MAX_VIRTUAL_SIZE;

/// Options of [`Disk::resize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResizeOptions {
    /// Allow a shrink that drops data: the blocks past the new end are
    /// dropped and their space given back. Without it, a shrink is refused
    /// when any byte past the new end is not zero.
    pub allow_shrink: bool,
}

/// What [`Disk::resize`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResizeReport {
    /// The virtual size before.
    pub old_size: u64,
    /// The virtual size after.
    pub new_size: u64,
    /// Whether the BAT moved to a new, larger region at the end of the file.
    pub bat_relocated: bool,
    /// Bytes of data past the new end that a shrink dropped (logical
    /// sectors of allocated blocks that were not all zeros).
    pub bytes_dropped: u64,
    /// The file's length before.
    pub file_size_before: u64,
    /// The file's length after.
    pub file_size_after: u64,
}

impl Disk {
    /// Change the virtual size of a disk opened read-write: a base disk
    /// (fixed or dynamic) or the top of a chain (a differencing disk, which
    /// may then be larger or smaller than its parent: past a parent's end a
    /// child reads zeros). Growing: the new space reads as zeros (a fixed
    /// disk allocates its new blocks, a dynamic one leaves them
    /// unallocated, a differencing one marks them ZERO where its parent
    /// could show through);
    /// when the BAT region has no room for the new entries, the BAT moves
    /// to a new region at the end of the file. Shrinking: refused when
    /// data (bytes that are not zero) lies past the new end, unless
    /// `opts.allow_shrink`; the blocks past the end are dropped and the
    /// file is cut. `new_size` must be a multiple of the logical sector
    /// size, 1 byte to 64 TiB. The same size changes nothing.
    ///
    /// A crash at any point leaves a file that opens with the old size or
    /// the new one and all its data. The DataWriteGuid changes, as for any
    /// visible change, so a differencing disk made on this file would lose
    /// its linkage: a disk that has children in its own folder is refused
    /// ([`Error::InvalidArgument`] naming them; children elsewhere cannot
    /// be seen from here). The checkpoint tree resizes the current state's
    /// top, which has none (`Vm::resize_disk`).
    ///
    /// Takes `&mut self`: the handle's geometry changes, so no I/O may
    /// run meanwhile. On an error the handle is reopened on the file as
    /// it was left (old or new size; see [`Disk::virtual_size`]).
    pub fn resize(&mut self, new_size: u64, opts: ResizeOptions) -> Result<ResizeReport> {
        let r = self.resize_inner(new_size, opts);
        self.ctx(r)
    }

    fn resize_inner(&mut self, new_size: u64, opts: ResizeOptions) -> Result<ResizeReport> {
        let top = self.top().vhdx_for("resize")?;
        if top.is_read_only() {
            return Err(Error::ReadOnly);
        }
        if top.has_parent() != (self.layers.len() > 1) {
            return Err(Error::Unsupported(
                "resizing a differencing disk opened without its parents".into(),
            ));
        }
        if let Some(path) = self.path() {
            let children = super::merge::find_children(path)?;
            if !children.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "refusing to resize {}: it is the parent of {}, which would be broken \
                     (resize the top of the chain, or through the checkpoint tree)",
                    path.display(),
                    children
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let lss = top.geo.logical_sector_size as u64;
        if new_size == 0 || new_size % lss != 0 || new_size > MAX_VIRTUAL_SIZE {
            return Err(Error::InvalidArgument(format!(
                "new size {new_size}: it must be a multiple of the logical sector size \
                 ({lss} bytes), from {lss} bytes to {MAX_VIRTUAL_SIZE} bytes (64 TiB)"
            )));
        }
        let old_size = top.geo.virtual_size;
        let mut report = ResizeReport {
            old_size,
            new_size,
            file_size_before: top.file_len()?,
            ..ResizeReport::default()
        };
        if new_size == old_size {
            report.file_size_after = report.file_size_before;
            return Ok(report);
        }
        if new_size < old_size {
            report.bytes_dropped = self.data_beyond(new_size)?;
            if report.bytes_dropped > 0 && !opts.allow_shrink {
                return Err(Error::InvalidArgument(format!(
                    "cannot shrink from {old_size} to {new_size} bytes: {} bytes of data lie \
                     beyond the new end (allow the shrink to drop them)",
                    report.bytes_dropped
                )));
            }
        }
        // What the chain under a differencing disk can show.
        let below = self
            .layers
            .get(1)
            .map(|l| l.file.geo.virtual_size)
            .unwrap_or(0);
        let done = top.resize_file(new_size, below);
        // The handle's geometry is stale whatever happened: reopen.
        let _ = top.close();
        let storage = top.host_storage();
        match Vhdx::open(storage, false) {
            Ok(file) => {
                self.layers[0].file = file.into();
                self.reset_caches();
            }
            Err(e) => {
                top.poison(&format!(
                    "the file could not be reopened after a resize: {e}"
                ));
                return Err(done.err().unwrap_or(e));
            }
        }
        let done = done?;
        report.bat_relocated = done.bat_relocated;
        // Give back the space of dropped blocks (and of a moved BAT).
        report.file_size_after = self.top().vhdx()?.shrink()?;
        Ok(report)
    }

    /// Bytes past `new_size` (up to the current end) that hold data: the
    /// logical sectors there, in ranges some layer of the chain holds, that
    /// are not all zeros.
    fn data_beyond(&self, new_size: u64) -> Result<u64> {
        let size = self.virtual_size();
        let lss = self.logical_sector_size() as usize;
        let mut buf = Vec::new();
        let mut n = 0;
        for e in self.extents_in(new_size, size - new_size)? {
            if !e.allocated {
                continue;
            }
            let mut pos = e.offset;
            while pos < e.offset + e.length {
                let len = CHUNK.min(e.offset + e.length - pos);
                buf.resize(len as usize, 0);
                self.read_at(&mut buf, pos)?;
                n += buf
                    .chunks(lss)
                    .filter(|s| s.iter().any(|&x| x != 0))
                    .map(|s| s.len() as u64)
                    .sum::<u64>();
                pos += len;
            }
        }
        Ok(n)
    }
}

/// Bytes the shrink check reads at a time.
const CHUNK: u64 = 4 << 20;
