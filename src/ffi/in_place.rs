//! `ckpt_disk_convert_in_place`: convert a base disk between fixed and
//! dynamic in place, with its report `ckpt_in_place_report`.

use std::ffi::{c_int, c_void};
use std::mem::size_of;

use super::chain::CProgress;
use super::disk::{ckpt_disk, ckpt_disk_kind, DiskHandle};
use super::{ckpt_progress_fn, ckpt_status, ffi_boundary, FfiError, FfiResult};
use crate::{DiskKind, InPlaceOptions};

/// What `ckpt_disk_convert_in_place` did (a versioned output struct).
///
/// Set `struct_size` to `sizeof(ckpt_in_place_report)` before the call.
/// The library writes the fields it knows and sets `struct_size` to the
/// number of bytes it wrote; it writes nothing unless the call succeeds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ckpt_in_place_report {
    /// In: `sizeof(ckpt_in_place_report)` as compiled by the caller. Out:
    /// the number of bytes the library wrote.
    pub struct_size: u32,
    /// 0 when the disk was of that kind already (nothing was done), else 1.
    pub changed: c_int,
    /// The kind before.
    pub from: ckpt_disk_kind,
    /// The kind after.
    pub to: ckpt_disk_kind,
    /// Blocks given zeroed space of their own (to fixed).
    pub blocks_allocated: u64,
    /// Blocks whose space was given back (to dynamic: blocks that read as
    /// zeros).
    pub blocks_freed: u64,
    /// Blocks moved to a lower place (to dynamic).
    pub blocks_moved: u64,
    /// The file's length before.
    pub bytes_before: u64,
    /// The file's length after.
    pub bytes_after: u64,
}

fn c_kind(k: DiskKind) -> ckpt_disk_kind {
    match k {
        DiskKind::Fixed => ckpt_disk_kind::Fixed,
        DiskKind::Dynamic => ckpt_disk_kind::Dynamic,
        DiskKind::Differencing => ckpt_disk_kind::Differencing,
    }
}

/// Convert `disk` (a base disk opened read-write) to the kind `to` names
/// (`CKPT_DISK_KIND_FIXED` or `CKPT_DISK_KIND_DYNAMIC`) in place. To fixed:
/// every block the file lacks is given zeroed space of its own, after a
/// check that the volume holds the room (else `CKPT_STATUS_NO_SPACE`,
/// nothing changed), then the file is marked fixed. To dynamic: the file
/// is marked dynamic, then the blocks that read as zeros are given back
/// and the file shrinks (as `ckpt_disk_compact` in full mode). A disk of
/// that kind already is left alone (`report->changed` is 0). What the
/// disk reads does not change, nor its DataWriteGuid (children stay
/// linked).
///
/// `progress` (may be NULL) is called with bytes done and bytes to do;
/// returning non-zero cancels (`CKPT_STATUS_CANCELLED`, the disk stays
/// consistent and usable). `report` (may be NULL) receives what was done,
/// on success only. A crash leaves a file that opens with the same data,
/// of the old kind or the new one; converting to fixed again finishes an
/// interrupted conversion to fixed.
///
/// Not thread-safe on this handle: no other call on `disk` may run during
/// this one (its kind changes).
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk`), `CKPT_STATUS_INVALID_ARGUMENT`
/// (a `to` that is not fixed or dynamic, a `report->struct_size` too
/// small, a VM's disk handle from `ckpt_vm_disk`), `CKPT_STATUS_UNSUPPORTED`
/// (a differencing disk), `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_READ_ONLY`,
/// `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `disk` is NULL or a live handle no other thread uses during the call;
/// `progress` is NULL or a function that may be called with `user` during
/// this call; `report` is NULL or points to a `ckpt_in_place_report` of at
/// least `report->struct_size` bytes, readable and writable.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_convert_in_place(
    disk: *mut ckpt_disk,
    to: c_int,
    progress: ckpt_progress_fn,
    user: *mut c_void,
    report: *mut ckpt_in_place_report,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_convert_in_place", {
        if disk.is_null() {
            return Err(FfiError::null("disk"));
        }
        // SAFETY: not NULL, live, and not used by another thread (contract).
        let disk = unsafe { &mut *disk };
        let to = match to {
            t if t == ckpt_disk_kind::Fixed as c_int => DiskKind::Fixed,
            t if t == ckpt_disk_kind::Dynamic as c_int => DiskKind::Dynamic,
            t => {
                return Err(FfiError::invalid(format!(
                    "to {t}: expected CKPT_DISK_KIND_FIXED or CKPT_DISK_KIND_DYNAMIC"
                )))
            }
        };
        if !report.is_null() {
            // Refuse a too small struct before any work.
            // SAFETY: not NULL; the first field of every version is the u32 size.
            let size = unsafe { report.cast::<u32>().read_unaligned() } as usize;
            check_size(size)?;
        }
        let DiskHandle::Owned(d) = &mut disk.disk else {
            return Err(FfiError::invalid(
                "a VM's disk (from ckpt_vm_disk) cannot be converted through its handle: \
                 convert its file with the VM closed",
            ));
        };
        let cb = CProgress { f: progress, user };
        let mut call = |done: u64, total: u64| cb.call(done, total);
        let r = d.convert_in_place(
            to,
            InPlaceOptions {
                progress: Some(&mut call),
                space_limit: None,
            },
        )?;
        if !report.is_null() {
            let value = ckpt_in_place_report {
                struct_size: size_of::<ckpt_in_place_report>() as u32,
                changed: r.changed as c_int,
                from: c_kind(r.from),
                to: c_kind(r.to),
                blocks_allocated: r.blocks_allocated,
                blocks_freed: r.blocks_freed,
                blocks_moved: r.blocks_moved,
                bytes_before: r.bytes_before,
                bytes_after: r.bytes_after,
            };
            // SAFETY: per this function's contract.
            unsafe {
                super::write_versioned(report, value, "report", "ckpt_in_place_report")?;
            }
        }
        Ok(())
    })
}

fn check_size(size: usize) -> FfiResult {
    let ours = size_of::<ckpt_in_place_report>();
    if size < ours {
        return Err(FfiError::invalid(format!(
            "report->struct_size is {size}, expected at least {ours} \
             (sizeof(ckpt_in_place_report))"
        )));
    }
    Ok(())
}
