//! `ckpt_disk_resize`: change the virtual size of a base disk
//! (Resize-VHD), with its report `ckpt_resize_report`.

use std::ffi::c_int;
use std::mem::size_of;

use super::disk::{ckpt_disk, DiskHandle};
use super::{ckpt_status, ffi_boundary, FfiError, FfiResult};
use crate::ResizeOptions;

/// What `ckpt_disk_resize` did (a versioned output struct).
///
/// Set `struct_size` to `sizeof(ckpt_resize_report)` before the call.
/// The library writes the fields it knows and sets `struct_size` to the
/// number of bytes it wrote; it writes nothing unless the call succeeds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ckpt_resize_report {
    /// In: `sizeof(ckpt_resize_report)` as compiled by the caller. Out:
    /// the number of bytes the library wrote.
    pub struct_size: u32,
    /// 1 when the BAT moved to a new, larger region at the end of the file.
    pub bat_relocated: c_int,
    /// The virtual size before.
    pub old_size: u64,
    /// The virtual size after.
    pub new_size: u64,
    /// Bytes of data past the new end that a shrink dropped.
    pub bytes_dropped: u64,
    /// The file's length before.
    pub file_size_before: u64,
    /// The file's length after.
    pub file_size_after: u64,
}

/// Change the virtual size of `disk` (a base disk, fixed or dynamic,
/// opened read-write) to `size` bytes (a multiple of the logical sector
/// size, at most 64 TiB). Growing: the new space reads as zeros. Shrinking
/// is refused when data lies past the new end unless `allow_shrink` is
/// non-zero (then it is dropped). A crash leaves the old or the new size
/// with all data. The DataWriteGuid changes: differencing disks made on
/// this file lose their linkage. `report` (may be NULL) receives what was
/// done, on success only.
///
/// Not thread-safe on this handle: no other call on `disk` may run during
/// this one (its geometry changes). After an error the handle reads the
/// file as it was left (old or new size: see `ckpt_disk_info`).
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk`), `CKPT_STATUS_INVALID_ARGUMENT`
/// (a bad size, data past a smaller size without `allow_shrink`, a
/// `report->struct_size` too small, a VM's disk handle from
/// `ckpt_vm_disk`), `CKPT_STATUS_UNSUPPORTED` (a differencing disk: not
/// yet), `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `disk` is NULL or a live handle no other thread uses during the call;
/// `report` is NULL or points to a `ckpt_resize_report` of at least
/// `report->struct_size` bytes, readable and writable.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_resize(
    disk: *mut ckpt_disk,
    size: u64,
    allow_shrink: c_int,
    report: *mut ckpt_resize_report,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_resize", {
        if disk.is_null() {
            return Err(FfiError::null("disk"));
        }
        // SAFETY: not NULL, live, and not used by another thread (contract).
        let disk = unsafe { &mut *disk };
        if !report.is_null() {
            // Refuse a too small struct before any work.
            // SAFETY: not NULL; the first field of every version is the u32 size.
            let size = unsafe { report.cast::<u32>().read_unaligned() } as usize;
            check_size(size)?;
        }
        let DiskHandle::Owned(d) = &mut disk.disk else {
            return Err(FfiError::invalid(
                "a VM's disk (from ckpt_vm_disk) cannot be resized through its handle: \
                 resize its file with the VM closed",
            ));
        };
        let r = d.resize(
            size,
            ResizeOptions {
                allow_shrink: allow_shrink != 0,
            },
        )?;
        if !report.is_null() {
            let value = ckpt_resize_report {
                struct_size: size_of::<ckpt_resize_report>() as u32,
                bat_relocated: r.bat_relocated as c_int,
                old_size: r.old_size,
                new_size: r.new_size,
                bytes_dropped: r.bytes_dropped,
                file_size_before: r.file_size_before,
                file_size_after: r.file_size_after,
            };
            // SAFETY: per this function's contract.
            unsafe {
                super::write_versioned(report, value, "report", "ckpt_resize_report")?;
            }
        }
        Ok(())
    })
}

fn check_size(size: usize) -> FfiResult {
    let ours = size_of::<ckpt_resize_report>();
    if size < ours {
        return Err(FfiError::invalid(format!(
            "report->struct_size is {size}, expected at least {ours} \
             (sizeof(ckpt_resize_report))"
        )));
    }
    Ok(())
}
