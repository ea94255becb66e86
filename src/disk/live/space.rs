//! Space operations on a running guest's disk: [`LiveDisk::compact`]
//! (Optimize-VHD while the guest reads and writes) and
//! [`LiveDisk::resize`] (Resize-VHD in one pause).
//!
//! Depends on [`super`] (the gate and its pauses) and on the offline
//! operations ([`Disk::compact`], [`Disk::resize`]), which it runs rather
//! than compacting or resizing a second way.
//!
//! # Compaction while the guest writes
//!
//! [`Disk::compact`] already lets I/O through the same handle run between
//! its steps: each step (a block scanned, a block moved, the final cut)
//! holds the file's own lock for that step only, and a write that
//! allocates meanwhile takes new space at the end of the file, never a
//! hole the plan of moves counts on (the plan empties the free lists, and
//! waits for whole-block writes still filling space they took; a block the
//! guest changed since the plan stops the moves). So the guest's requests
//! wait for one step at a time: the longest stall a writer sees is about
//! one block copied and synced (`tests/live_space.rs` prints it).
//!
//! The live compaction holds the handle's gate shared for as long as it
//! runs, like any request. A pause (a checkpoint's switch, a live merge's
//! re-link, an apply's replace, a resize) that arrives meanwhile does not
//! wait for the whole compaction: the compaction sees the pause waiting at
//! its next step, stops there (the file is consistent after every step),
//! lets the pause run, and then:
//!
//! - when the top is still the same file (a resize, a merge of lower
//!   layers, the close of a frozen layer), starts again on it (a fresh
//!   plan: the steps done stay done);
//! - when the pause made another file the top (a switch to a new child, an
//!   apply), stops with [`Error::Busy`]: the old top is frozen now and must
//!   not be written; what was compacted stays, the disk reads the same,
//!   and compacting again compacts the new top.
//!
//! So the pause waits for at most one step of the compaction, and the
//! compaction for the pause: never the other way round for longer. One
//! live compaction runs on a handle at a time (a second gets `Busy`).
//!
//! # Resize
//!
//! [`LiveDisk::resize`] pauses the handle (requests in flight complete
//! first), runs [`Disk::resize`] on the top and ends the pause. The next
//! [`LiveDisk::virtual_size`] returns the new size; a request that waited
//! for the pause and now lies past a smaller end fails with
//! [`Error::OutOfRange`] (naming the new size), like any request past the
//! end. Refused with `Busy` while a live merge runs or a checkpoint switch
//! is not settled.

use std::time::Duration;

use super::{failed_error, LiveDisk, Settled};
use crate::disk::compact::{CompactOptions, CompactReport};
use crate::disk::resize::{ResizeOptions, ResizeReport};
use crate::disk::Disk;
use crate::error::{Error, ErrorKind, Result};

/// How often a compaction that stepped aside looks whether the pause got
/// the gate.
const PAUSE_POLL: Duration = Duration::from_millis(1);

/// The identity of a chain's top file: its storage (a resize reopens the
/// file on the same storage; a switch or an apply puts another one on top).
fn top_id(d: &Disk) -> usize {
    std::sync::Arc::as_ptr(&d.top().host_storage()) as *const u8 as usize
}

impl LiveDisk {
    /// Compact the top file of the disk (see [`Disk::compact`]) while the
    /// guest goes on reading and writing through this handle; see the doc
    /// of `src/disk/live/space.rs` for what the guest waits for and how a
    /// checkpoint switch arriving meanwhile is handled (the compaction
    /// steps aside; it ends with `Busy` if the switch changed the top).
    ///
    /// `opts.progress` is called as for [`Disk::compact`]; after a pause
    /// the compaction starts again, and so does the count. Returning false
    /// cancels ([`Error::Cancelled`]; the disk is consistent). The report
    /// gives the file's length before the first run and after the last;
    /// the block counts are those of the last run.
    pub fn compact(&self, mut opts: CompactOptions<'_>) -> Result<CompactReport> {
        let _one = self
            .compacting
            .try_lock()
            .map_err(|_| Error::Busy("a compaction of this disk is already running".into()))?;
        let mode = opts.mode;
        let mut first: Option<(usize, u64)> = None;
        loop {
            let mut stepped_aside = false;
            let r = {
                let d = self.get();
                let id = top_id(&d);
                match first {
                    None => {
                        first = Some((id, d.top().file_len().map_err(|e| e.in_file(path_of(&d)))?))
                    }
                    Some((was, _)) if was != id => {
                        return Err(Error::Busy(format!(
                            "a checkpoint switch made {} the top of this disk while its old top \
                             was being compacted: the old top is frozen now (what was compacted \
                             stays, the disk reads the same); compact again to compact the new \
                             top",
                            path_of(&d).display()
                        )))
                    }
                    Some(_) => {}
                }
                let user = &mut opts.progress;
                let mut tick = |done: u64, total: u64| {
                    if self.pause_waiting() {
                        stepped_aside = true;
                        return false;
                    }
                    match user.as_mut() {
                        Some(p) => p(done, total),
                        None => true,
                    }
                };
                d.compact(CompactOptions {
                    mode,
                    progress: Some(&mut tick),
                })
            };
            match r {
                Ok(mut report) => {
                    if let Some((_, before)) = first {
                        report.bytes_before = before;
                    }
                    return Ok(report);
                }
                Err(e) if stepped_aside && e.kind() == ErrorKind::Cancelled => {
                    // Let the pause take the gate, then look again.
                    while self.pause_waiting() {
                        std::thread::sleep(PAUSE_POLL);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Change the disk's virtual size (see [`Disk::resize`]: a base top, or
    /// a differencing one, which may then differ from its parent) in one
    /// pause: requests in flight complete first,
    /// later ones see the new size. A request that lies past a smaller end
    /// fails with [`Error::OutOfRange`]. Refused with `Busy` while a live
    /// merge runs on the handle or a checkpoint switch is not settled; a
    /// live compaction running meanwhile steps aside and starts again on
    /// the resized file.
    pub fn resize(&self, new_size: u64, opts: ResizeOptions) -> Result<ResizeReport> {
        let _merge = self.merging.try_lock().map_err(|_| {
            Error::Busy(
                "a live merge is running on this disk: resize it once the merge ended".into(),
            )
        })?;
        let mut p = self.pause();
        // Read under the gate: a switch sets it in its pause.
        if let Some(b) = self.barrier_now() {
            match &*b.state.lock().unwrap_or_else(|e| e.into_inner()) {
                Settled::Failed(why) => return Err(failed_error(why)),
                Settled::Pending => {
                    return Err(Error::Busy(
                        "a checkpoint switch of this disk is not settled yet: resize it once \
                         the checkpoint is taken"
                            .into(),
                    ))
                }
                Settled::Done | Settled::Undone => {}
            }
        }
        p.guards[0].resize(new_size, opts)
    }
}

/// The top's path, for messages.
fn path_of(d: &Disk) -> std::path::PathBuf {
    d.path()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| "the disk's top".into())
}
