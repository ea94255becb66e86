//! Offline resize (Hyper-V's Resize-VHD) of a base disk:
//! [`Disk::resize`] with [`ResizeOptions`]; what it did is a
//! [`ResizeReport`]. The file-level steps (and why a crash leaves the old
//! or the new size) are in `vhdx/resize.rs`; here are the checks, the
//! shrink guard, and the reopen of the file under its new geometry.
//!
//! Depends on the file layer (`vhdx`) and `crate::error` only.

use super::vhdx::Vhdx;
use super::Disk;
use crate::error::{Error, Result};
use crate::format::bat::PayloadState;
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
    /// Change the virtual size of a base disk (fixed or dynamic) opened
    /// read-write. Growing: the new space reads as zeros (a fixed disk
    /// allocates its new blocks, a dynamic one leaves them unallocated);
    /// when the BAT region has no room for the new entries, the BAT moves
    /// to a new region at the end of the file. Shrinking: refused when
    /// data (bytes that are not zero) lies past the new end, unless
    /// `opts.allow_shrink`; the blocks past the end are dropped and the
    /// file is cut. `new_size` must be a multiple of the logical sector
    /// size, 1 byte to 64 TiB. The same size changes nothing.
    ///
    /// A crash at any point leaves a file that opens with the old size or
    /// the new one and all its data. The DataWriteGuid changes, as for any
    /// visible change: a differencing disk made on this file (which cannot
    /// be detected from here) loses its linkage, and its data would no
    /// longer line up anyway. Resizing a differencing disk is not
    /// supported yet ([`Error::Unsupported`]).
    ///
    /// Takes `&mut self`: the handle's geometry changes, so no I/O may
    /// run meanwhile. On an error the handle is reopened on the file as
    /// it was left (old or new size; see [`Disk::virtual_size`]).
    pub fn resize(&mut self, new_size: u64, opts: ResizeOptions) -> Result<ResizeReport> {
        let r = self.resize_inner(new_size, opts);
        self.ctx(r)
    }

    fn resize_inner(&mut self, new_size: u64, opts: ResizeOptions) -> Result<ResizeReport> {
        let top = self.top();
        if top.is_read_only() {
            return Err(Error::ReadOnly);
        }
        if top.has_parent() || self.layers.len() > 1 {
            return Err(Error::Unsupported(
                "resizing a differencing disk is not supported yet (a child whose size \
                 differs from its parent's is a later part of this feature)"
                    .into(),
            ));
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
        let done = top.resize_file(new_size);
        // The handle's geometry is stale whatever happened: reopen.
        let _ = top.close();
        let storage = top.host_storage();
        match Vhdx::open(storage, false) {
            Ok(file) => self.layers[0].file = file,
            Err(e) => {
                self.top().poison(&format!(
                    "the file could not be reopened after a resize: {e}"
                ));
                return Err(done.err().unwrap_or(e));
            }
        }
        let done = done?;
        report.bat_relocated = done.bat_relocated;
        // Give back the space of dropped blocks (and of a moved BAT).
        report.file_size_after = self.top().shrink()?;
        Ok(report)
    }

    /// Bytes past `new_size` (up to the current end) that hold data: the
    /// logical sectors of allocated blocks there that are not all zeros.
    fn data_beyond(&self, new_size: u64) -> Result<u64> {
        let top = self.top();
        let g = top.geo;
        let bs = g.block_size as u64;
        let lss = g.logical_sector_size as usize;
        let mut buf = Vec::new();
        let mut n = 0;
        for b in new_size / bs..g.data_blocks {
            if !matches!(
                top.block_entry(b).payload_state(),
                Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent)
            ) {
                continue;
            }
            let start = (b * bs).max(new_size);
            let end = ((b + 1) * bs).min(g.virtual_size);
            if start >= end {
                continue;
            }
            buf.resize((end - start) as usize, 0);
            self.read_at(&mut buf, start)?;
            n += buf
                .chunks(lss)
                .filter(|s| s.iter().any(|&x| x != 0))
                .map(|s| s.len() as u64)
                .sum::<u64>();
        }
        Ok(n)
    }
}
