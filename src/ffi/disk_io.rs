//! More of the `ckpt_disk` I/O path (added in 0.2): vectored reads and
//! writes, and opening one file of a chain without its parents.
//!
//! Argument order, for these and every later function: a buffer comes as
//! its (pointer, length) pair — here an array and its count — and the
//! position on the disk last (`ckpt_disk_readv(disk, iov, iovcnt,
//! offset)`, as `preadv(2)`); a range with no buffer is (offset, length).

use std::ffi::c_char;

use super::disk::{ckpt_disk, new_handle, CKPT_OPEN_READ_ONLY};
use super::{c_path, ckpt_status, ffi_boundary, non_null, out_ptr, FfiError, FfiResult};
use crate::Disk;

/// One buffer of a vectored read or write (`struct iovec`): `len` bytes at
/// `base`. `base` may be NULL when `len` is 0. `ckpt_disk_writev` only
/// reads through `base`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ckpt_iovec {
    /// The buffer.
    pub base: *mut u8,
    /// Its length in bytes.
    pub len: usize,
}

/// The most buffers one vectored call takes (as Linux's `IOV_MAX`).
pub const CKPT_IOV_MAX: usize = 1024;

/// The caller's buffers, checked: not too many, no NULL buffer with a
/// length, a total that fits, and the range `[offset, offset + total)`
/// inside a disk of `size` bytes (`CKPT_STATUS_OUT_OF_RANGE` otherwise,
/// before anything is read or written).
///
/// # Safety
///
/// `iov` is NULL or points to `iovcnt` readable `ckpt_iovec`s.
unsafe fn buffers<'a>(
    iov: *const ckpt_iovec,
    iovcnt: usize,
    offset: u64,
    size: u64,
) -> FfiResult<&'a [ckpt_iovec]> {
    if iovcnt == 0 {
        return Ok(&[]);
    }
    if iov.is_null() {
        return Err(FfiError::null("iov"));
    }
    if iovcnt > CKPT_IOV_MAX {
        return Err(FfiError::invalid(format!(
            "iovcnt {iovcnt}: at most CKPT_IOV_MAX ({CKPT_IOV_MAX}) buffers"
        )));
    }
    // SAFETY: not NULL, `iovcnt` readable entries per the contract.
    let all = unsafe { std::slice::from_raw_parts(iov, iovcnt) };
    let mut total = 0u64;
    for (i, v) in all.iter().enumerate() {
        if v.len > 0 && v.base.is_null() {
            return Err(FfiError::null(&format!("iov[{i}].base")));
        }
        total = total
            .checked_add(v.len as u64)
            .ok_or_else(|| FfiError::invalid("the buffers' lengths overflow"))?;
    }
    if offset.checked_add(total).is_none_or(|end| end > size) {
        return Err(FfiError::new(
            ckpt_status::OutOfRange,
            format!(
                "{total} bytes at offset {offset} reach past the end of the disk ({size} bytes)"
            ),
        ));
    }
    Ok(all)
}

/// Read into `iovcnt` buffers, one after another, the bytes of the virtual
/// disk from `offset` on (as `preadv(2)`): `iov[0].len` bytes at `offset`
/// into `iov[0].base`, the next `iov[1].len` into `iov[1].base`, and so on.
/// As `ckpt_disk_read` of the whole range: a range past the end fails with
/// `CKPT_STATUS_OUT_OF_RANGE` and no buffer is touched; after another
/// failure the buffers' contents are unspecified. With `iovcnt == 0` (or
/// only empty buffers) nothing is read and `iov` may be NULL.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk` NULL, `iov` NULL with
/// `iovcnt > 0`, a NULL `base` with a `len`), `CKPT_STATUS_INVALID_ARGUMENT`
/// (more than `CKPT_IOV_MAX` buffers), `CKPT_STATUS_OUT_OF_RANGE`,
/// `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `iov` is NULL or points to `iovcnt`
/// readable `ckpt_iovec`s, each `base` valid for writes of `len` bytes;
/// the buffers do not overlap.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_readv(
    disk: *const ckpt_disk,
    iov: *const ckpt_iovec,
    iovcnt: usize,
    offset: u64,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_readv", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        // SAFETY: per this function's contract.
        let all = unsafe { buffers(iov, iovcnt, offset, disk.disk.virtual_size())? };
        let mut at = offset;
        for v in all.iter().filter(|v| v.len > 0) {
            // SAFETY: not NULL (checked), `len` writable bytes owned by the
            // caller for the call, not overlapping another buffer.
            let buf = unsafe { std::slice::from_raw_parts_mut(v.base, v.len) };
            disk.disk.read_at(buf, at)?;
            at += v.len as u64;
        }
        Ok(())
    })
}

/// Write `iovcnt` buffers, one after another, to the virtual disk from
/// `offset` on (as `pwritev(2)`): exactly as `ckpt_disk_write` of their
/// concatenation — one write, with its guarantees: a range past the end
/// (`CKPT_STATUS_OUT_OF_RANGE`) or a read-only handle
/// (`CKPT_STATUS_READ_ONLY`) writes nothing; after another failure the
/// range may hold a part of the new data; durable after a flush. With
/// `iovcnt == 0` (or only empty buffers) nothing is written and `iov` may
/// be NULL.
///
/// Errors: as for `ckpt_disk_readv`, and `CKPT_STATUS_READ_ONLY`,
/// `CKPT_STATUS_NO_SPACE`.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `iov` is NULL or points to `iovcnt`
/// readable `ckpt_iovec`s, each `base` valid for reads of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_writev(
    disk: *mut ckpt_disk,
    iov: *const ckpt_iovec,
    iovcnt: usize,
    offset: u64,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_writev", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        // SAFETY: per this function's contract.
        let all = unsafe { buffers(iov, iovcnt, offset, disk.disk.virtual_size())? };
        let parts: Vec<&[u8]> = all
            .iter()
            .filter(|v| v.len > 0)
            // SAFETY: not NULL (checked), `len` readable bytes per the
            // contract.
            .map(|v| unsafe { std::slice::from_raw_parts(v.base.cast_const(), v.len) })
            .collect();
        match parts.as_slice() {
            [] => {}
            [one] => disk.disk.write_at(one, offset)?,
            many => disk.disk.write_at(&many.concat(), offset)?,
        }
        Ok(())
    })
}

/// Open the one VHDX file at `path` without its parents, read-only, to
/// inspect it (its own data and allocation, `ckpt_disk_get_info`,
/// `ckpt_disk_extents`). `flags` must be `CKPT_OPEN_READ_ONLY` (0).
///
/// For a base disk this is `ckpt_disk_open` read-only. For a differencing
/// disk the parents are neither looked for nor opened (a missing or
/// damaged parent does not matter): the chain has one file
/// (`ckpt_disk_chain_length` gives 1, `ckpt_disk_get_parent_path` fails),
/// `ckpt_disk_info.has_parent` is still true, and the ranges the file does
/// not hold read as zeros: `ckpt_disk_extents` reports them as holes, so
/// a range reads as the file's own data only where an extent has no
/// flags (a data extent may still contain sectors only the parent holds,
/// which read as zeros here). Writes, trims, and children or merges of
/// the handle are refused (`CKPT_STATUS_READ_ONLY`).
///
/// Errors: as for `ckpt_disk_open`; `CKPT_STATUS_INVALID_ARGUMENT` for
/// `flags` other than `CKPT_OPEN_READ_ONLY`.
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string; `out` is NULL or valid for
/// writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_open_file(
    path: *const c_char,
    flags: u32,
    out: *mut *mut ckpt_disk,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_open_file", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let path = unsafe { c_path(path, "path")? };
        if flags != CKPT_OPEN_READ_ONLY {
            return Err(FfiError::invalid(format!(
                "flags {flags:#x}: a file opened without its parents is read-only \
                 (CKPT_OPEN_READ_ONLY); open the chain with ckpt_disk_open to write"
            )));
        }
        let disk = Disk::open_single(path)?;
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(new_handle(disk)) };
        Ok(())
    })
}
