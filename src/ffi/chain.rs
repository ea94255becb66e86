//! Differencing chains from C: create a child, walk the chain, changed
//! ranges, merge, flatten and re-parent.

use std::ffi::{c_char, c_int, c_void};
use std::mem::size_of;

use super::disk::{ckpt_disk, create_options, new_handle};
use super::{
    c_path, c_path_opt, ckpt_create_options, ckpt_status, ffi_boundary, non_null, out_ptr,
    path_bytes, read_versioned, write_string, FfiError, FfiResult,
};
use crate::disk::merge::{self, MergeOptions};
use crate::{ChildOptions, Disk};

/// A progress callback: `done` of `total` bytes (or units) are finished.
/// Return 0 to go on, any other value to cancel (the operation then stops
/// as soon as it safely can and returns `CKPT_STATUS_CANCELLED`).
///
/// The callback runs on the calling thread, inside the library call. It
/// must return normally: it must not `longjmp` out, throw a C++ exception
/// or call back into libckpt with the object the running call uses.
pub type ckpt_progress_fn =
    Option<unsafe extern "C" fn(done: u64, total: u64, user: *mut c_void) -> c_int>;

/// A progress callback and its `user` pointer, as a Rust closure.
#[derive(Clone, Copy)]
pub(crate) struct CProgress {
    pub(crate) f: ckpt_progress_fn,
    pub(crate) user: *mut c_void,
}

impl CProgress {
    /// Call the callback (`true`: go on). Without a callback, always go on.
    pub(crate) fn call(&self, done: u64, total: u64) -> bool {
        match self.f {
            None => true,
            // SAFETY: the caller of the exported function gave a callback
            // that may be called with its `user` pointer during the call.
            Some(f) => (unsafe { f(done, total, self.user) }) == 0,
        }
    }
}

/// A byte range of the virtual disk, filled by `ckpt_disk_changed_ranges`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ckpt_range {
    /// Start in bytes.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub length: u64,
}

/// Options of `ckpt_disk_create_child` (a versioned struct, used like
/// `ckpt_create_options`: set `struct_size` to `sizeof(ckpt_child_options)`,
/// everything else to 0, then change what you need; 0 takes the default).
///
/// The virtual size and the sector sizes always come from the parent.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ckpt_child_options {
    /// `sizeof(ckpt_child_options)` as compiled by the caller.
    pub struct_size: u32,
    /// No flags are defined yet: must be 0.
    pub flags: u32,
    /// Block size in bytes: a power of two from 1 MiB to 256 MiB.
    /// 0: 2 MiB (as Hyper-V makes checkpoint disks).
    pub block_size: u32,
    /// Log size in bytes, a multiple of 1 MiB. 0: 1 MiB.
    pub log_size: u32,
}

const _: () = assert!(size_of::<ckpt_range>() == 16);
const _: () = assert!(size_of::<ckpt_child_options>() == 16);

/// # Safety
///
/// As for [`read_versioned`].
unsafe fn child_options(p: *const ckpt_child_options) -> FfiResult<ChildOptions> {
    let mut o = ChildOptions::default();
    // SAFETY: forwarded from the caller; the struct has only integers.
    let Some(c) = (unsafe { read_versioned(p, "options", "ckpt_child_options")? }) else {
        return Ok(o);
    };
    if c.flags != 0 {
        return Err(FfiError::invalid(format!(
            "options->flags has unknown bits {:#x}",
            c.flags
        )));
    }
    if c.block_size != 0 {
        o.block_size = c.block_size;
    }
    if c.log_size != 0 {
        o.log_size = c.log_size;
    }
    Ok(o)
}

/// Create a differencing disk at `path` (which must not exist) whose parent
/// is the VHDX at `parent_path` (a base disk or itself a differencing
/// disk), and open the new chain read-write. Writes go to the new file; the
/// parents are never written.
///
/// The child records the parent both by relative and by absolute path.
/// `options` may be NULL for the defaults (2 MiB blocks, 1 MiB log). On
/// success `*out` receives a handle to close with `ckpt_disk_close`.
///
/// Do not write to the parent afterwards (through another handle): that
/// breaks the child's linkage, and opening the child then fails with
/// `CKPT_STATUS_PARENT_MISMATCH`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
/// `CKPT_STATUS_UNSUPPORTED` (options from a newer header),
/// `CKPT_STATUS_ALREADY_EXISTS`, `CKPT_STATUS_NOT_FOUND` (no parent, or no
/// folder for the child), `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `path` and `parent_path` are NULL or NUL-terminated strings; `options`
/// is NULL or points to a readable `ckpt_child_options` of at least
/// `options->struct_size` bytes; `out` is NULL or valid for writing one
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_create_child(
    path: *const c_char,
    parent_path: *const c_char,
    options: *const ckpt_child_options,
    out: *mut *mut ckpt_disk,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_create_child", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let path = unsafe { c_path(path, "path")? };
        // SAFETY: per this function's contract.
        let parent = unsafe { c_path(parent_path, "parent_path")? };
        // SAFETY: per this function's contract.
        let opts = unsafe { child_options(options)? };
        let disk = Disk::create_child(path, parent, &opts)?;
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(new_handle(disk)) };
        Ok(())
    })
}

/// The path of layer `index` of the open chain, absolute: the parents were
/// found (and resolved) by the library; the top, which the caller named,
/// is resolved the same way (symbolic links and `..`; made absolute
/// against the current folder should it have gone meanwhile).
fn layer_path(disk: &ckpt_disk, index: usize) -> FfiResult<std::path::PathBuf> {
    let chain = disk.disk.chain();
    match chain.get(index) {
        Some(Some(p)) if p.is_relative() || index == 0 => Ok(std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.clone())),
        Some(Some(p)) => Ok(p.clone()),
        Some(None) => Err(FfiError::invalid(format!(
            "layer {index} of the chain was not opened from a path"
        ))),
        None => Err(FfiError::invalid(format!(
            "index {index} is past the end of the chain of {} layers",
            chain.len()
        ))),
    }
}

/// Copy the path of `disk`'s parent (the file under it in the chain) into
/// `buf` as a NUL-terminated string: the path where the parent was found
/// when the chain was opened.
///
/// String getters (this one and the other `(buf, len, out_len)`
/// functions) all work alike: `*out_len` (when `out_len` is not NULL)
/// receives the length without the NUL. If `len` is at least that + 1, the
/// string and its NUL are written and the result is `CKPT_STATUS_OK`;
/// otherwise `buf` is not touched, `*out_len` is still set, and the result
/// is `CKPT_STATUS_BUFFER_TOO_SMALL`. `buf` may be NULL when `len` is 0.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (a base disk: it has no parent; check
/// `ckpt_disk_info.has_parent`).
///
/// # Safety
///
/// `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_get_parent_path(
    disk: *const ckpt_disk,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_get_parent_path", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        if disk.disk.depth() < 2 {
            return Err(FfiError::invalid(
                "the disk is a base disk: it has no parent",
            ));
        }
        let p = layer_path(disk, 1)?;
        // SAFETY: per this function's contract.
        unsafe { write_string(path_bytes(&p), buf, len, out_len, "the parent path") }
    })
}

/// Copy the creator string of `disk`'s top file (the program that made it,
/// for example `"libckpt 0.1.0"` or `"Microsoft Windows 10.0.17763.0"`)
/// into `buf`, as described at `ckpt_disk_get_parent_path`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_get_creator(
    disk: *const ckpt_disk,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_get_creator", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let creator = disk.disk.info().creator;
        // SAFETY: per this function's contract.
        unsafe { write_string(creator.as_bytes(), buf, len, out_len, "the creator") }
    })
}

/// Set `*out` to the number of files in `disk`'s chain: 1 for a base disk,
/// 2 for a differencing disk on a base disk, and so on.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `out` is NULL or valid for writing one
/// `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_chain_length(
    disk: *const ckpt_disk,
    out: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_chain_length", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let out = out_ptr(out, "out")?;
        // SAFETY: not NULL, writable per the contract.
        unsafe { out.write(disk.disk.depth()) };
        Ok(())
    })
}

/// Copy the path of file `index` of `disk`'s chain into `buf` (0 is the
/// file the handle was opened on, 1 its parent, ..., `chain length - 1`
/// the base disk), as described at `ckpt_disk_get_parent_path`. Every
/// index, 0 included, gives an absolute path with symbolic links and `..`
/// resolved (before 0.2, index 0 gave the path as it was passed to
/// `ckpt_disk_open`). Paths are returned as the bytes the file system
/// holds: on Linux they need not be UTF-8.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (`index` is not less than the chain
/// length).
///
/// # Safety
///
/// `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_chain_path(
    disk: *const ckpt_disk,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_chain_path", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let p = layer_path(disk, index)?;
        // SAFETY: per this function's contract.
        unsafe { write_string(path_bytes(&p), buf, len, out_len, "the path") }
    })
}

/// Set `*out` to the index in `disk`'s chain (0 = top) of the file at
/// `path` (compared after resolving symbolic links and `..`).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_NOT_FOUND` (no such
/// file), `CKPT_STATUS_INVALID_ARGUMENT` (the file is not in the chain).
///
/// # Safety
///
/// `disk` is NULL or a live handle; `path` is NULL or a NUL-terminated
/// string; `out` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_level_of(
    disk: *const ckpt_disk,
    path: *const c_char,
    out: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_level_of", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        // SAFETY: per this function's contract.
        let path = unsafe { c_path(path, "path")? };
        let out = out_ptr(out, "out")?;
        let level = disk.disk.level_of(path)?;
        // SAFETY: not NULL, writable per the contract.
        unsafe { out.write(level) };
        Ok(())
    })
}

/// The byte ranges whose content may differ between the file `levels`
/// below the top of `disk`'s chain and the top (what changed since that
/// checkpoint: the raw material of an incremental backup), exact to the
/// logical sector, sorted, non-overlapping and coalesced.
///
/// `levels` is 1 for the changes of the top file alone, 2 for the top two
/// files, ..., and the chain length to compare with an empty disk (every
/// range any file holds).
///
/// The ranges go into `buf`, which has room for `cap` of them. `*out_count`
/// receives the number of ranges. If `cap` is too small, nothing is
/// written to `buf`, `*out_count` is still set and the result is
/// `CKPT_STATUS_BUFFER_TOO_SMALL`: call once with `cap = 0` (`buf` may then
/// be NULL) to learn the count, then again with a buffer that big. Each
/// call reads the chain's allocation tables again.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk` or `out_count` NULL, or `buf`
/// NULL with `cap > 0`), `CKPT_STATUS_INVALID_ARGUMENT` (`levels` is 0 or
/// more than the chain length), `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `cap` `ckpt_range`s; `out_count` is NULL or valid for writing one
/// `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_changed_ranges(
    disk: *const ckpt_disk,
    levels: usize,
    buf: *mut ckpt_range,
    cap: usize,
    out_count: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_changed_ranges", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let out_count = out_ptr(out_count, "out_count")?;
        if cap > 0 && buf.is_null() {
            return Err(FfiError::null("buf"));
        }
        let ranges = disk.disk.changed_ranges(levels)?;
        // SAFETY: not NULL, writable per the contract.
        unsafe { out_count.write(ranges.len()) };
        if ranges.len() > cap {
            return Err(FfiError::new(
                ckpt_status::BufferTooSmall,
                format!(
                    "{} changed ranges do not fit in a buffer of {cap}",
                    ranges.len()
                ),
            ));
        }
        for (i, r) in ranges.iter().enumerate() {
            // SAFETY: `i < ranges.len() <= cap`, and `buf` (not NULL here,
            // since cap > 0 when there is a range) has `cap` writable slots.
            unsafe {
                buf.add(i).write(ckpt_range {
                    offset: r.offset,
                    length: r.length,
                })
            };
        }
        Ok(())
    })
}

/// Merge the differencing disk `child_path` into its parent, or into the
/// ancestor `into_path` (a file further down its chain), like deleting a
/// checkpoint: only the data the merged files hold is copied, ranges they
/// zeroed are zeroed, the differencing disks in the child's folder whose
/// parent is the child are re-pointed at the destination, and the merged
/// files are removed.
///
/// Before it starts, the merge checks that the destination's file system
/// has room for the blocks it may allocate, and refuses
/// (`CKPT_STATUS_NO_SPACE`, nothing changed) otherwise.
///
/// `progress` (may be NULL) is called after every chunk with the bytes
/// copied and the bytes to copy; returning non-zero cancels. A cancelled,
/// failed or interrupted merge leaves a chain that reads the same data
/// as before; running the same merge again finishes it.
///
/// No handle may have any file of the chain open during the merge.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (not
/// a differencing disk, `into_path` not in its chain),
/// `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_NOT_FOUND`,
/// `CKPT_STATUS_PARENT_MISMATCH`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `child_path` is NULL or a NUL-terminated string; `into_path` is NULL or
/// a NUL-terminated string; `progress` is NULL or a function that may be
/// called with `user` during this call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_merge(
    child_path: *const c_char,
    into_path: *const c_char,
    progress: ckpt_progress_fn,
    user: *mut c_void,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_merge", {
        // SAFETY: per this function's contract.
        let child = unsafe { c_path(child_path, "child_path")? };
        // SAFETY: per this function's contract.
        let into = unsafe { c_path_opt(into_path, "into_path")? };
        let cb = CProgress { f: progress, user };
        let mut call = |done: u64, total: u64| cb.call(done, total);
        let opts = MergeOptions {
            into: into.map(|p| p.to_path_buf()),
            descendants: None,
            progress: Some(&mut call),
            skip_space_check: false,
            space_limit: None,
        };
        merge::merge(child, opts)?;
        Ok(())
    })
}

/// Copy everything `src_path` reads (through its whole chain) into a new
/// standalone VHDX at `dst_path` (which must not exist; it has no parent).
/// Ranges no file of the chain holds, and all-zero chunks, are not written.
///
/// `options` (may be NULL) chooses the kind and block size of the new file
/// as for `ckpt_disk_create`; the virtual size and the sector sizes are
/// always the source's. `progress` (may be NULL) is called as for
/// `ckpt_disk_merge`; on cancel or failure `dst_path` is removed.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
/// `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_ALREADY_EXISTS`,
/// `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_NOT_FOUND`,
/// `CKPT_STATUS_PARENT_MISMATCH`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `src_path` and `dst_path` are NULL or NUL-terminated strings; `options`
/// is NULL or points to a readable `ckpt_create_options` of at least
/// `options->struct_size` bytes; `progress` is NULL or a function that may
/// be called with `user` during this call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_flatten(
    src_path: *const c_char,
    dst_path: *const c_char,
    options: *const ckpt_create_options,
    progress: ckpt_progress_fn,
    user: *mut c_void,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_flatten", {
        // SAFETY: per this function's contract.
        let src = unsafe { c_path(src_path, "src_path")? };
        // SAFETY: per this function's contract.
        let dst = unsafe { c_path(dst_path, "dst_path")? };
        // SAFETY: per this function's contract (the size is replaced by
        // the source's).
        let opts = unsafe { create_options(options, 0)? };
        // SAFETY: as above.
        if unsafe { crate::ffi::disk::vhd_options(options, 0)? }.is_some() {
            return Err(crate::Error::Unsupported(
                "flattening into a VHD (CKPT_CREATE_VHD): use ckpt convert".into(),
            )
            .into());
        }
        let cb = CProgress { f: progress, user };
        let mut call = |done: u64, total: u64| cb.call(done, total);
        merge::flatten(src, dst, &opts, Some(&mut call))?;
        Ok(())
    })
}

/// Point the differencing disk `child_path` at `new_parent_path` (like
/// `Set-VHD -ParentPath`), for example after the parent was moved.
///
/// With `force == 0`, the new parent must be the same disk as the old one
/// (its DataWriteGuid matches the child's linkage), or the call fails with
/// `CKPT_STATUS_PARENT_MISMATCH` and nothing changes. With `force != 0`
/// the linkage is rewritten to the new parent, which must have the same
/// virtual and sector sizes: only do this when you know the new parent
/// holds the data the child was made on.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (not
/// a differencing disk, other sizes), `CKPT_STATUS_PARENT_MISMATCH`,
/// `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `child_path` and `new_parent_path` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_reparent(
    child_path: *const c_char,
    new_parent_path: *const c_char,
    force: c_int,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_reparent", {
        // SAFETY: per this function's contract.
        let child = unsafe { c_path(child_path, "child_path")? };
        // SAFETY: per this function's contract.
        let parent = unsafe { c_path(new_parent_path, "new_parent_path")? };
        merge::reparent(child, parent, force != 0)?;
        Ok(())
    })
}
