//! Ceph RBD streams from C (added in 0.2): one disk's state, or its
//! changes between two points of the tree, written to a file descriptor as
//! an "rbd diff v1" stream for `rbd import-diff`
//! (`ckpt_vm_write_rbd_diff`).

#[allow(unused_imports)]
use super::*;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

/// What `ckpt_vm_write_rbd_diff` wrote (a plain output struct).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ckpt_rbd_diff_stats {
    /// Bytes of the stream (header and records).
    pub stream_bytes: u64,
    /// Data bytes in `w` records.
    pub data_bytes: u64,
    /// Bytes covered by `z` records (ranges that read zeros).
    pub zero_bytes: u64,
}

const _: () = assert!(size_of::<ckpt_rbd_diff_stats>() == 24);

/// Write disk `disk_index`'s state at checkpoint `to` (NULL: the current
/// state) as an "rbd diff v1" stream to the file descriptor `fd` (a file
/// or a pipe into `rbd import-diff - POOL/IMAGE`; it is not closed). With
/// `from` (a checkpoint older than `to`, or on another branch) only the
/// ranges that differ from `from` go, after an `f` record naming `from`'s
/// snapshot; without it, every allocated range. A `to` checkpoint adds a
/// `t` record (then `rbd import-diff` creates that snapshot once applied).
/// Ranges that read zeros go as `z` records. Snapshot names are the
/// checkpoint names, mapped as `ckpt vm export-rbd` maps them (README,
/// "RBD"). `*out_stats` (when not NULL) receives what was written.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`vm` NULL),
/// `CKPT_STATUS_INVALID_ARGUMENT` (`disk_index` past the last disk, `from`
/// is `to`, an empty name), `CKPT_STATUS_NOT_FOUND` (no such checkpoint),
/// `CKPT_STATUS_BUSY` (the current state of an attached VM),
/// `CKPT_STATUS_UNSUPPORTED` (the disk was resized in between),
/// `CKPT_STATUS_IO` (a write to `fd` failed, e.g. a closed pipe),
/// `CKPT_STATUS_CORRUPT`. On an error part of the stream may have been
/// written (without its end record, so `rbd import-diff` refuses it).
///
/// # Safety
///
/// `vm` is NULL or a live handle; `from` and `to` are NULL or
/// NUL-terminated strings; `fd` is an open file descriptor the caller
/// keeps open during the call; `out_stats` is NULL or valid for writing
/// one `ckpt_rbd_diff_stats`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_write_rbd_diff(
    vm: *mut ckpt_vm,
    disk_index: usize,
    from: *const c_char,
    to: *const c_char,
    fd: c_int,
    out_stats: *mut ckpt_rbd_diff_stats,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_write_rbd_diff", {
        let from = if from.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(from, "from")? })
        };
        let to = if to.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(to, "to")? })
        };
        if fd < 0 {
            return Err(
                crate::Error::InvalidArgument(format!("fd {fd} is not a file descriptor")).into(),
            );
        }
        // SAFETY: the caller keeps `fd` open during the call; ManuallyDrop
        // never closes it.
        let file = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &*file);
        // SAFETY: per this function's contract.
        let st = unsafe {
            change(vm, |v| {
                let st = v.write_rbd_diff(disk_index, from, to, &mut out)?;
                out.flush()?;
                Ok(st)
            })?
        };
        if !out_stats.is_null() {
            let s = ckpt_rbd_diff_stats {
                stream_bytes: st.stream_bytes,
                data_bytes: st.data_bytes,
                zero_bytes: st.zero_bytes,
            };
            // SAFETY: not NULL, writable per the contract.
            unsafe { out_stats.write(s) };
        }
        Ok(())
    })
}
