//! Write-behind for bulk streams (convert, merge): the data a long copy
//! writes is sent to the disk while the copy goes on, and once on the disk
//! it leaves the page cache, so that
//!
//! * the final sync finds little left to write (the disk works while the
//!   copy reads and writes, instead of after it);
//! * a copy of many GiB does not push everything else out of the page
//!   cache, and reuses a few MiB of cache pages over and over instead of
//!   touching fresh memory for every page it writes (on a virtual machine
//!   whose host takes back freed memory, a first touch costs several times
//!   the copy itself).
//!
//! Durability is unchanged: nothing here makes a write durable; only
//! [`Storage::sync`](super::Storage::sync) does, and every stream still
//! ends with one. An error the kernel reports while waiting for the
//! write-back (`EIO`) is returned, and the file then refuses every later
//! sync (its error was consumed here, so a later `fdatasync` could report
//! success over pages that were lost).
//!
//! Ranges are gathered into runs of adjacent writes; a run is started
//! (`sync_file_range(WRITE)`) when it reaches [`KICK`] bytes or a write
//! lands elsewhere, and the oldest started runs are waited for and dropped
//! (`sync_file_range(WAIT)`, `posix_fadvise(DONTNEED)`) once more than
//! [`WINDOW`] bytes are in flight.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::RawFd;

use super::{faults, platform};

/// A run is started once it is this long.
pub(crate) const KICK: u64 = 8 << 20;
/// At most this many started bytes are in flight (dirty or being written).
pub(crate) const WINDOW: u64 = 32 << 20;

#[cfg(feature = "fault-injection")]
static SIZES: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((KICK, WINDOW));

/// Tests: use `kick` and `window` instead of [`KICK`] and [`WINDOW`] from
/// now on in this process, so that small images go through every step.
#[cfg(feature = "fault-injection")]
pub fn set_write_behind_sizes(kick: u64, window: u64) {
    *SIZES.lock().unwrap_or_else(|e| e.into_inner()) = (kick.max(1), window);
}

fn sizes() -> (u64, u64) {
    #[cfg(feature = "fault-injection")]
    return *SIZES.lock().unwrap_or_else(|e| e.into_inner());
    #[cfg(not(feature = "fault-injection"))]
    (KICK, WINDOW)
}

/// The write-behind state of one file (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct WriteBehind {
    /// The run being gathered: `[start, end)`.
    start: u64,
    end: u64,
    /// Started runs, oldest first, and their total length.
    started: VecDeque<(u64, u64)>,
    in_flight: u64,
}

impl WriteBehind {
    /// `[offset, offset+len)` of `fd` was just written.
    pub(crate) fn wrote(&mut self, fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if offset != self.end || self.start == self.end {
            self.start_run(fd)?;
            self.start = offset;
        }
        self.end = offset + len;
        if self.end - self.start >= sizes().0 {
            self.start_run(fd)?;
        }
        Ok(())
    }

    /// Start the write-back of the gathered run; settle the oldest runs
    /// beyond the window.
    fn start_run(&mut self, fd: RawFd) -> io::Result<()> {
        let (start, len) = (self.start, self.end - self.start);
        self.start = self.end;
        if len == 0 {
            return Ok(());
        }
        event()?;
        platform::start_writeback(fd, start, len)?;
        self.started.push_back((start, len));
        self.in_flight += len;
        let window = sizes().1;
        while self.in_flight > window {
            let Some((s, l)) = self.started.pop_front() else {
                break;
            };
            self.in_flight -= l;
            event()?;
            platform::settle_writeback(fd, s, l)?;
        }
        Ok(())
    }
}

/// One fault-injection event (a crash or a transient error here is a
/// failure of the write that asked for the write-behind).
fn event() -> io::Result<()> {
    match faults::event()? {
        Some(_) => Err(faults::crash()),
        None => Ok(()),
    }
}
