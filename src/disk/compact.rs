//! Compaction (Hyper-V's Optimize-VHD): make the top file of a disk take
//! only the space its data needs. [`Disk::compact`] with
//! [`CompactOptions`]; what it did is a [`CompactReport`].
//!
//! The steps (the file-level ones are in `vhdx/compact.rs`): flush, so
//! that trimmed blocks are free; in [`CompactMode::Full`], give back every
//! block that reads as zeros; move the blocks down into the holes, one
//! committed move at a time; close the log and cut the file after its last
//! used byte. Parents are only read. A crash or an error at any point
//! leaves a file that opens and reads the same data; compacting again
//! finishes the job.
//!
//! Depends on the file layer (`vhdx`) and `crate::error` only.

use super::merge::Progress;
use super::vhdx::Src;
use super::{Disk, DiskKind};
use crate::error::{Error, Result};

/// How much [`Disk::compact`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompactMode {
    /// Give back the space of blocks that no longer hold data (trimmed or
    /// unmapped), move the rest down and shrink the file. Reads no data.
    #[default]
    Quick,
    /// Also give back every block whose data reads as all zeros (it reads
    /// every allocated block). In a differencing disk such a block keeps
    /// hiding the parent (it becomes ZERO) unless the parent reads zeros
    /// there too (then it becomes NOT_PRESENT).
    Full,
}

impl CompactMode {
    /// "quick" or "full".
    pub fn as_str(self) -> &'static str {
        match self {
            CompactMode::Quick => "quick",
            CompactMode::Full => "full",
        }
    }

    /// The mode named "quick" or "full" (any case).
    pub fn parse(s: &str) -> Option<CompactMode> {
        match s.to_ascii_lowercase().as_str() {
            "quick" => Some(CompactMode::Quick),
            "full" => Some(CompactMode::Full),
            _ => None,
        }
    }
}

/// Options of [`Disk::compact`].
#[derive(Default)]
pub struct CompactOptions<'a> {
    /// Quick or full.
    pub mode: CompactMode,
    /// Called with (bytes done, bytes to do) after each block scanned or
    /// moved; returning false cancels (the disk is left consistent, the
    /// call returns [`Error::Cancelled`]). The total is an estimate until
    /// the moves are planned (it can then shrink).
    pub progress: Option<Progress<'a>>,
}

impl std::fmt::Debug for CompactOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactOptions")
            .field("mode", &self.mode)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What [`Disk::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactReport {
    /// The mode it ran in.
    pub mode: CompactMode,
    /// Blocks whose space it gave back: blocks found to read as zeros
    /// (full mode) and entries that held space without data.
    pub blocks_freed: u64,
    /// Blocks (payload and sector bitmap) moved to a lower place.
    pub blocks_moved: u64,
    /// Bytes those moves copied.
    pub bytes_moved: u64,
    /// The file's length before.
    pub bytes_before: u64,
    /// The file's length after.
    pub bytes_after: u64,
}

impl Disk {
    /// Compact the top file of the disk (see [`CompactMode`]): blocks move
    /// down into the space of freed ones and the file is cut after its
    /// last used byte, so that it really shrinks. What the disk reads does
    /// not change (nor its DataWriteGuid: children stay linked).
    ///
    /// The disk must be open read-write. A fixed disk is refused
    /// ([`Error::Unsupported`]): its blocks stay allocated by definition.
    /// Reads and writes through the same handle meanwhile wait for each
    /// step and stay correct (blocks they allocate go to the end of the
    /// file, so the file is cut only when the last step finds no write
    /// running; the holes left are reused by new blocks first). For a
    /// running guest's disk use [`LiveDisk::compact`], which also lets
    /// checkpoint switches through.
    ///
    /// [`LiveDisk::compact`]: crate::disk::live::LiveDisk::compact
    ///
    /// Each move copies the block, syncs, then changes the BAT through the
    /// log; the old place is reused only after that. A crash at any point
    /// leaves a file that opens (replaying its log) with all its data; an
    /// error or a cancel leaves the disk consistent and usable, and
    /// compacting again finishes the job.
    pub fn compact(&self, opts: CompactOptions<'_>) -> Result<CompactReport> {
        let r = self.compact_inner(opts);
        self.ctx(r)
    }

    fn compact_inner(&self, mut opts: CompactOptions<'_>) -> Result<CompactReport> {
        let top = self.top().vhdx_for("compaction")?;
        if top.is_read_only() {
            return Err(Error::ReadOnly);
        }
        if top.kind() == DiskKind::Fixed {
            return Err(Error::Unsupported(
                "compacting a fixed disk: every block of a fixed disk stays allocated \
                 (convert it to a dynamic disk to make it smaller)"
                    .into(),
            ));
        }
        let mut report = CompactReport {
            mode: opts.mode,
            bytes_before: top.file_len()?,
            ..CompactReport::default()
        };
        top.compact_start()?;
        report.blocks_freed += top.compact_tidy()?;
        let bs = top.geo.block_size as u64;
        let mut done = 0u64;
        let mut tick = |done: u64, total: u64| -> Result<()> {
            let go_on = match opts.progress.as_mut() {
                Some(p) => p(done, total),
                None => true,
            };
            if go_on {
                return Ok(());
            }
            top.flush()?;
            Err(Error::Cancelled)
        };
        if opts.mode == CompactMode::Full {
            let held = top.held_blocks();
            let total = 2 * held.len() as u64 * bs;
            let mut buf = Vec::new();
            let mut below = |buf: &mut [u8], off: u64| self.read_under_top(buf, off);
            for block in held {
                if top.release_if_zero(block, &mut buf, &mut below)? {
                    report.blocks_freed += 1;
                }
                done += bs;
                tick(done, total)?;
            }
            top.flush()?;
        }
        let moves = top.plan_moves()?;
        let total = done + moves.iter().map(|m| m.len).sum::<u64>();
        tick(done, total)?;
        for m in &moves {
            if !top.move_block(m)? {
                // Something else changed the block since the plan: later
                // moves may count on its place, so stop here.
                break;
            }
            report.blocks_moved += 1;
            report.bytes_moved += m.len;
            done += m.len;
            tick(done, total)?;
        }
        report.bytes_after = top.shrink()?;
        Ok(report)
    }

    /// Read what the layers under the top hold (zeros for a base disk).
    fn read_under_top(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        buf.fill(0);
        self.read_layers(1, buf, offset)
    }

    /// Read from `level` down through the chain (zeros past the base).
    fn read_layers(&self, level: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(layer) = self.layers.get(level) else {
            buf.fill(0);
            return Ok(());
        };
        let file = &layer.file;
        let _io = file.io_guard();
        let mut runs = Vec::new();
        file.map(offset, buf.len() as u64, &mut runs)?;
        let mut at = 0usize;
        for (l, src) in runs {
            let dst = &mut buf[at..at + l as usize];
            match src {
                Src::Data(f) => file.read_raw(dst, f)?,
                Src::Zero => dst.fill(0),
                Src::Parent => self.read_layers(level + 1, dst, offset + at as u64)?,
            }
            at += l as usize;
        }
        Ok(())
    }
}
