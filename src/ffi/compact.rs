//! `ckpt_disk_compact`: give back the space a disk's top file no longer
//! needs (Optimize-VHD), with its report `ckpt_compact_report`.

use std::ffi::{c_int, c_void};
use std::mem::size_of;

use super::chain::CProgress;
use super::disk::{ckpt_disk, DiskHandle};
use super::{ckpt_progress_fn, ckpt_status, ffi_boundary, non_null, FfiError, FfiResult};
use crate::{CompactMode, CompactOptions};

/// `mode` of `ckpt_disk_compact`: give back the space of blocks that no
/// longer hold data (trimmed), move the others down, shrink the file.
pub const CKPT_COMPACT_QUICK: c_int = 0;
/// `mode` of `ckpt_disk_compact`: as `CKPT_COMPACT_QUICK`, and also give
/// back every block whose data reads as all zeros (in a differencing disk
/// such a block keeps hiding the parent's data).
pub const CKPT_COMPACT_FULL: c_int = 1;

/// What `ckpt_disk_compact` did (a versioned output struct).
///
/// Set `struct_size` to `sizeof(ckpt_compact_report)` before the call.
/// The library writes the fields it knows and sets `struct_size` to the
/// number of bytes it wrote; it writes nothing unless the call succeeds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ckpt_compact_report {
    /// In: `sizeof(ckpt_compact_report)` as compiled by the caller. Out:
    /// the number of bytes the library wrote.
    pub struct_size: u32,
    /// The mode it ran in (`CKPT_COMPACT_QUICK` or `CKPT_COMPACT_FULL`).
    pub mode: c_int,
    /// Blocks whose space was given back (zero blocks in full mode, and
    /// entries that held space without data).
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

/// Compact the top file of `disk` (opened read-write): blocks move down
/// into the space of freed ones and the file is cut after its last used
/// byte. What the disk reads does not change, nor its DataWriteGuid
/// (children stay linked); parents are only read.
///
/// `mode` is `CKPT_COMPACT_QUICK` or `CKPT_COMPACT_FULL`. `progress` (may
/// be NULL) is called with bytes done and bytes to do (an estimate that
/// can shrink once the moves are planned); returning non-zero cancels
/// (`CKPT_STATUS_CANCELLED`, the disk stays consistent). `report` (may be
/// NULL) receives what was done, on success only.
///
/// Calls on the same handle from other threads meanwhile stay correct and
/// wait for one step at a time (a block scanned or moved). On a VM's disk
/// handle (from `ckpt_vm_disk`) the compaction is live: the guest's I/O
/// goes on, and a checkpoint operation arriving meanwhile does not wait
/// for it (the compaction steps aside; it ends with `CKPT_STATUS_BUSY`
/// when a checkpoint made another file the disk's top: compact again).
/// A crash or an error leaves a file that opens with all its data;
/// compacting again finishes.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk`), `CKPT_STATUS_INVALID_ARGUMENT`
/// (an unknown `mode`, a `report->struct_size` too small),
/// `CKPT_STATUS_UNSUPPORTED` (a fixed disk: its blocks stay allocated),
/// `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_BUSY`
/// (a VM's disk: another compaction of it runs, or a checkpoint switched
/// it), `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `progress` is NULL or a function that
/// may be called with `user` during this call; `report` is NULL or points
/// to a `ckpt_compact_report` of at least `report->struct_size` bytes,
/// readable and writable.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_compact(
    disk: *mut ckpt_disk,
    mode: c_int,
    progress: ckpt_progress_fn,
    user: *mut c_void,
    report: *mut ckpt_compact_report,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_compact", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let mode = match mode {
            CKPT_COMPACT_QUICK => CompactMode::Quick,
            CKPT_COMPACT_FULL => CompactMode::Full,
            m => {
                return Err(FfiError::invalid(format!(
                    "mode {m}: expected CKPT_COMPACT_QUICK or CKPT_COMPACT_FULL"
                )))
            }
        };
        if !report.is_null() {
            // Refuse a too small struct before any work.
            // SAFETY: not NULL; the first field of every version is the u32 size.
            let size = unsafe { report.cast::<u32>().read_unaligned() } as usize;
            check_size(size)?;
        }
        let cb = CProgress { f: progress, user };
        let mut call = |done: u64, total: u64| cb.call(done, total);
        let opts = CompactOptions {
            mode,
            progress: Some(&mut call),
        };
        let r = match &disk.disk {
            DiskHandle::Owned(d) => d.compact(opts)?,
            DiskHandle::Live(l) => l.compact(opts)?,
        };
        if !report.is_null() {
            let value = ckpt_compact_report {
                struct_size: size_of::<ckpt_compact_report>() as u32,
                mode: match r.mode {
                    CompactMode::Quick => CKPT_COMPACT_QUICK,
                    CompactMode::Full => CKPT_COMPACT_FULL,
                },
                blocks_freed: r.blocks_freed,
                blocks_moved: r.blocks_moved,
                bytes_moved: r.bytes_moved,
                bytes_before: r.bytes_before,
                bytes_after: r.bytes_after,
            };
            // SAFETY: per this function's contract.
            unsafe {
                super::write_versioned(report, value, "report", "ckpt_compact_report")?;
            }
        }
        Ok(())
    })
}

fn check_size(size: usize) -> FfiResult {
    let ours = size_of::<ckpt_compact_report>();
    if size < ours {
        return Err(FfiError::invalid(format!(
            "report->struct_size is {size}, expected at least {ours} \
             (sizeof(ckpt_compact_report))"
        )));
    }
    Ok(())
}
