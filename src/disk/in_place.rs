//! Converting a base disk between fixed and dynamic in place:
//! [`Disk::convert_in_place`] with [`InPlaceOptions`]; what it did is an
//! [`InPlaceReport`]. The file-level steps are in `vhdx/kind.rs`.
//!
//! - dynamic → fixed: check that the volume has room for every block the
//!   file does not hold (refused with [`Error::NoSpace`], nothing
//!   changed); give each such block zeroed space of its own, committed in
//!   batches (a flush, one log entry, every 8 blocks or 1 GiB), with
//!   progress and cancel; pack the blocks into the holes left (a quick
//!   [`Disk::compact`], so that the file is as long as a fixed file is:
//!   metadata and every block); then set LeaveBlocksAllocated
//!   through the log. A crash leaves a dynamic disk (perhaps with more
//!   blocks allocated, all reading what they read before) or the fixed
//!   one; converting again finishes.
//! - fixed → dynamic: clear LeaveBlocksAllocated through the log first,
//!   then run a full compaction ([`Disk::compact`]): blocks that read as
//!   zeros are given back, the others move down, the file shrinks. A
//!   crash leaves the fixed disk or a dynamic one (perhaps not yet
//!   compacted: `Disk::compact` in full mode finishes it).
//!
//! Depends on the file layer (`vhdx`), [`super::compact`] and
//! `crate::error` only.

use std::path::Path;

use super::compact::{CompactMode, CompactOptions};
use super::merge::Progress;
use super::{Disk, DiskKind};
use crate::error::{Error, Result};

/// Most bytes of blocks allocated between two flushes (dynamic → fixed).
const BATCH_BYTES: u64 = 1 << 30;
/// Most blocks allocated between two flushes.
const BATCH_BLOCKS: u64 = 8;

/// Options of [`Disk::convert_in_place`].
#[derive(Default)]
pub struct InPlaceOptions<'a> {
    /// Called with (bytes done, bytes to do) after each block allocated
    /// (dynamic → fixed) or scanned and moved (fixed → dynamic, as
    /// [`Disk::compact`] reports it); returning false cancels (the disk is
    /// left consistent and usable, the call returns [`Error::Cancelled`]).
    pub progress: Option<Progress<'a>>,
    /// dynamic → fixed: count at most this many bytes as free on the
    /// volume (the free space is measured only for a disk opened from a
    /// path; a disk on other storage is limited by this alone). For tests
    /// and for callers that keep room for something else.
    pub space_limit: Option<u64>,
}

impl std::fmt::Debug for InPlaceOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlaceOptions")
            .field("progress", &self.progress.is_some())
            .field("space_limit", &self.space_limit)
            .finish()
    }
}

/// What [`Disk::convert_in_place`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlaceReport {
    /// The kind before.
    pub from: DiskKind,
    /// The kind after.
    pub to: DiskKind,
    /// False when the disk was of that kind already (nothing was done).
    pub changed: bool,
    /// Blocks given zeroed space of their own (dynamic → fixed).
    pub blocks_allocated: u64,
    /// Blocks whose space was given back (fixed → dynamic: blocks that
    /// read as zeros).
    pub blocks_freed: u64,
    /// Blocks moved to a lower place (fixed → dynamic).
    pub blocks_moved: u64,
    /// The file's length before.
    pub bytes_before: u64,
    /// The file's length after.
    pub bytes_after: u64,
}

impl Disk {
    /// Convert this base disk to `to` ([`DiskKind::Fixed`] or
    /// [`DiskKind::Dynamic`]) in place; see the [module](self) for the
    /// steps. What the disk reads does not change, and neither does its
    /// DataWriteGuid (as for [`Disk::compact`]: a differencing disk made
    /// on this file stays linked). A disk of that kind already is left
    /// alone (the report says `changed: false`).
    ///
    /// dynamic → fixed first checks that the volume holds the space of
    /// every block the file lacks (and at most `opts.space_limit`), else
    /// it fails with [`Error::NoSpace`] naming both numbers, having
    /// changed nothing. fixed → dynamic gives back the blocks that read as
    /// zeros and shrinks the file.
    ///
    /// Takes `&mut self`: the disk's kind changes, and a trim meanwhile
    /// could unmap a block of a disk about to become fixed, so no I/O may
    /// run through this handle meanwhile. The disk must be open
    /// read-write ([`Error::ReadOnly`]). A differencing disk is refused
    /// ([`Error::Unsupported`]), and so is `to` =
    /// [`DiskKind::Differencing`] ([`Error::InvalidArgument`]).
    ///
    /// A crash at any point leaves a file that opens with the same data,
    /// of the old kind or the new one (see the module doc); an error or a
    /// cancel leaves the disk consistent and usable. After an interrupted
    /// dynamic → fixed, converting again finishes; after an interrupted
    /// fixed → dynamic the disk may be dynamic already but not compacted:
    /// [`Disk::compact`] in full mode finishes it.
    pub fn convert_in_place(
        &mut self,
        to: DiskKind,
        opts: InPlaceOptions<'_>,
    ) -> Result<InPlaceReport> {
        let r = self.convert_in_place_inner(to, opts);
        self.ctx(r)
    }

    fn convert_in_place_inner(
        &mut self,
        to: DiskKind,
        mut opts: InPlaceOptions<'_>,
    ) -> Result<InPlaceReport> {
        let top = self.top().vhdx_for("in-place conversion")?;
        if to == DiskKind::Differencing {
            return Err(Error::InvalidArgument(
                "a disk can be converted in place to fixed or dynamic, not to differencing".into(),
            ));
        }
        if top.has_parent() || self.layers.len() > 1 {
            return Err(Error::Unsupported(
                "converting a differencing disk in place: only a base disk is fixed or \
                 dynamic (merge the chain, or convert it to a new file with `ckpt convert`)"
                    .into(),
            ));
        }
        if top.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let from = top.kind();
        let bytes_before = top.file_len()?;
        let mut report = InPlaceReport {
            from,
            to,
            changed: from != to,
            blocks_allocated: 0,
            blocks_freed: 0,
            blocks_moved: 0,
            bytes_before,
            bytes_after: bytes_before,
        };
        if from == to {
            return Ok(report);
        }
        match to {
            DiskKind::Fixed => {
                report.blocks_allocated = self.make_fixed(&mut opts)?;
            }
            _ => {
                self.top()
                    .vhdx_for("in-place conversion")?
                    .set_leave_allocated(false)?;
                let r = self.compact(CompactOptions {
                    mode: CompactMode::Full,
                    progress: opts.progress.take(),
                })?;
                report.blocks_freed = r.blocks_freed;
                report.blocks_moved = r.blocks_moved;
            }
        }
        report.bytes_after = self.top().file_len()?;
        Ok(report)
    }

    /// dynamic → fixed: the space check, the allocations, the flag.
    /// Returns how many blocks were allocated.
    fn make_fixed(&self, opts: &mut InPlaceOptions<'_>) -> Result<u64> {
        let top = self.top().vhdx_for("in-place conversion")?;
        let bs = top.geo.block_size as u64;
        let missing = top.blocks_not_held();
        let need = missing.len() as u64 * bs;
        self.check_room(need, opts.space_limit)?;
        top.kind_change_start()?;
        let batch = (BATCH_BYTES / bs).clamp(1, BATCH_BLOCKS) as usize;
        let mut done = 0u64;
        let mut allocated = 0u64;
        for (k, &b) in missing.iter().enumerate() {
            if top.allocate_zeroed(b)? {
                allocated += 1;
            }
            if (k + 1) % batch == 0 {
                // A batch is durable: a crash later keeps it.
                top.flush()?;
            }
            done += bs;
            let go_on = match opts.progress.as_mut() {
                Some(p) => p(done, need),
                None => true,
            };
            if !go_on {
                top.flush()?;
                return Err(Error::Cancelled);
            }
        }
        top.flush()?;
        // Holes the new blocks did not fill (space given back by trims
        // beyond what was missing) leave the file longer than a fixed
        // file is: move the blocks above them down and cut the file.
        let mut tick = |d: u64, t: u64| match opts.progress.as_mut() {
            Some(p) => p(need + d, need + t),
            None => true,
        };
        self.compact(CompactOptions {
            mode: CompactMode::Quick,
            progress: Some(&mut tick),
        })?;
        let top = self.top().vhdx_for("in-place conversion")?;
        // No I/O runs through this handle (`&mut`): every block is held.
        let left = top.blocks_not_held();
        if let Some(b) = left.first() {
            return Err(Error::InvalidArgument(format!(
                "block {b} lost its space while the disk was converted ({} blocks \
                 unallocated): convert again",
                left.len()
            )));
        }
        top.set_leave_allocated(true)?;
        Ok(allocated)
    }

    /// Fail with [`Error::NoSpace`] when fewer than `need` bytes are free
    /// on the volume holding the file (for a disk opened from a path), or
    /// under `limit`.
    fn check_room(&self, need: u64, limit: Option<u64>) -> Result<()> {
        if need == 0 {
            return Ok(());
        }
        let mut free = limit.unwrap_or(u64::MAX);
        let mut place = String::from("the space limit");
        if let Some(path) = self.path() {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let on_volume = crate::io::free_space(dir).map_err(|e| Error::from(e).in_file(dir))?;
            if on_volume < free {
                free = on_volume;
                place = format!("{}", dir.display());
            }
        }
        if need > free {
            return Err(Error::NoSpace(format!(
                "converting to a fixed disk allocates {need} bytes ({} blocks of {} bytes), \
                 but only {free} bytes are free ({place}); nothing was changed",
                need / self.top().geo.block_size as u64,
                self.top().geo.block_size
            )));
        }
        Ok(())
    }
}
