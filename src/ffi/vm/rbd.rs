//! Ceph RBD from C (added in 0.2): one disk's state, or its changes
//! between two points of the tree, written to a file descriptor as an "rbd
//! diff v1" stream for `rbd import-diff` (`ckpt_vm_write_rbd_diff`); the
//! whole tree exported into a cluster and a VM imported back from one
//! through the `rbd` tool (`ckpt_vm_export_rbd`, `ckpt_vm_import_rbd`).

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

/// Run `write` on the VM with a buffered writer on `fd` (flushed before
/// the VM is released; `fd` is never closed), and store its stats in
/// `*out_stats` when not NULL.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `fd` is open for the call; `out_stats`
/// is NULL or valid for writing one `ckpt_rbd_diff_stats`.
unsafe fn stream_to_fd(
    vm: *mut ckpt_vm,
    fd: c_int,
    out_stats: *mut ckpt_rbd_diff_stats,
    write: impl FnOnce(&mut Vm, &mut dyn std::io::Write) -> crate::Result<crate::rbd::DiffStats>,
) -> FfiResult {
    if fd < 0 {
        return Err(
            crate::Error::InvalidArgument(format!("fd {fd} is not a file descriptor")).into(),
        );
    }
    // SAFETY: the caller keeps `fd` open during the call; ManuallyDrop
    // never closes it.
    let file = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &*file);
    // SAFETY: forwarded.
    let st = unsafe {
        change(vm, |v| {
            let st = write(v, &mut out)?;
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
}

/// Write disk `disk_index`'s state at checkpoint `to` (NULL: the current
/// state) as an "rbd diff v1" stream to the file descriptor `fd` (a file
/// or a pipe into `rbd import-diff - POOL/IMAGE`; it is not closed). With
/// `from` (a checkpoint older than `to`, one on another branch, or a
/// reference point: its exact changes, as `ckpt_vm_changes_open` gives)
/// only the ranges that differ from `from` go, after an `f` record naming
/// `from`'s snapshot; without it, every allocated range. A `to` checkpoint adds a
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
        // SAFETY: per this function's contract.
        unsafe {
            stream_to_fd(vm, fd, out_stats, |v, out| {
                v.write_rbd_diff(disk_index, from, to, out)
            })
        }
    })
}

/// `ckpt_rbd_options.flags`: remove the snapshots of checkpoints deleted
/// locally since an earlier export (`--prune`).
pub const CKPT_RBD_PRUNE: u32 = 1;

/// A line of progress text (NUL-terminated, no newline), valid during the
/// call only.
pub type ckpt_message_fn = Option<unsafe extern "C" fn(line: *const c_char, user: *mut c_void)>;

/// Options of `ckpt_vm_export_rbd` and `ckpt_vm_import_rbd` (a versioned
/// input struct: set `struct_size` to `sizeof(ckpt_rbd_options)` and every
/// field you do not use to 0 / NULL; NULL options are all defaults).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ckpt_rbd_options {
    /// `sizeof(ckpt_rbd_options)` as compiled by the caller.
    pub struct_size: u32,
    /// `CKPT_RBD_PRUNE` (export only), or 0.
    pub flags: u32,
    /// The `rbd` program to run (NULL: `$CKPT_RBD`, else `rbd` on the
    /// PATH).
    pub program: *const c_char,
    /// The ceph.conf passed as `--conf` (NULL: rbd's own default, which
    /// honours `CEPH_CONF`).
    pub conf: *const c_char,
    /// The client id passed as `--id` (NULL: rbd's own default).
    pub client_id: *const c_char,
    /// Called with each progress line (NULL: none).
    pub message: ckpt_message_fn,
    /// Passed to `message`.
    pub user: *mut c_void,
}

const _: () = assert!(size_of::<ckpt_rbd_options>() == 48);

/// What `ckpt_vm_export_rbd` did (a versioned output struct: set
/// `struct_size` to `sizeof(ckpt_rbd_export_stats)` first).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ckpt_rbd_export_stats {
    /// In: `sizeof(ckpt_rbd_export_stats)`. Out: the bytes written.
    pub struct_size: u32,
    /// Images made or brought up to date (main lines and clones).
    pub images: u32,
    /// Images made by this call.
    pub images_created: u32,
    /// Snapshots made by this call (checkpoints sent).
    pub snapshots_sent: u32,
    /// Snapshots removed (`CKPT_RBD_PRUNE`).
    pub snapshots_pruned: u32,
    /// Clones removed (`CKPT_RBD_PRUNE`: branches deleted locally).
    pub clones_pruned: u32,
    /// Data bytes sent (`w` records).
    pub data_bytes: u64,
    /// Bytes of all streams sent.
    pub stream_bytes: u64,
}

const _: () = assert!(size_of::<ckpt_rbd_export_stats>() == 40);

/// The tool and the progress callback of `o`.
///
/// # Safety
///
/// `o`'s strings are NULL or NUL-terminated.
unsafe fn rbd_tool(o: &ckpt_rbd_options) -> FfiResult<crate::checkpoint::rbd::RbdTool> {
    let s = |p: *const c_char, what: &str| -> FfiResult<Option<String>> {
        if p.is_null() {
            Ok(None)
        } else {
            // SAFETY: per this function's contract.
            Ok(Some(unsafe { c_str(p, what)? }.to_string()))
        }
    };
    Ok(crate::checkpoint::rbd::RbdTool {
        program: s(o.program, "options->program")?.map(PathBuf::from),
        conf: s(o.conf, "options->conf")?.map(PathBuf::from),
        id: s(o.client_id, "options->client_id")?,
    })
}

/// Call `o.message` with `line` (a line with a NUL inside is cut there).
fn tell(o: &ckpt_rbd_options, line: &str) {
    if let Some(f) = o.message {
        let line = line.split('\0').next().unwrap_or("");
        if let Ok(c) = std::ffi::CString::new(line) {
            // SAFETY: the caller's callback, given a valid string and its
            // own `user`, during the call.
            unsafe { f(c.as_ptr(), o.user) };
        }
    }
}

/// The caller's options, or the defaults.
///
/// # Safety
///
/// `p` is NULL or points to a readable struct of at least `p->struct_size`
/// bytes.
unsafe fn rbd_options(p: *const ckpt_rbd_options) -> FfiResult<ckpt_rbd_options> {
    // SAFETY: forwarded; every field is an integer, a pointer or an
    // optional function pointer.
    let o = unsafe { read_versioned(p, "options", "ckpt_rbd_options")? };
    let o = o.unwrap_or(ckpt_rbd_options {
        struct_size: size_of::<ckpt_rbd_options>() as u32,
        flags: 0,
        program: std::ptr::null(),
        conf: std::ptr::null(),
        client_id: std::ptr::null(),
        message: None,
        user: std::ptr::null_mut(),
    });
    if o.flags & !CKPT_RBD_PRUNE != 0 {
        return Err(crate::Error::InvalidArgument(format!(
            "options->flags has unknown bits {:#x}",
            o.flags & !CKPT_RBD_PRUNE
        ))
        .into());
    }
    Ok(o)
}

/// Export the VM's checkpoint tree into Ceph RBD images in `pool` through
/// the `rbd` tool, as `ckpt vm export-rbd` does (README, "RBD"): per disk
/// K an image `PREFIX-diskK` (`prefix` NULL: the VM's name) with one
/// snapshot per checkpoint from the root to the current state and the
/// current state as its head; other branches as clones. Run again, only
/// what the cluster lacks is sent. An interrupted export leaves complete
/// snapshots only, and running it again finishes. `*out_stats` (when not
/// NULL; set its `struct_size` first) receives what was sent.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`vm`, `pool`),
/// `CKPT_STATUS_INVALID_ARGUMENT` (an empty pool or one with `/` or `@`,
/// unknown flags, a bad prefix, an image of that name that another VM
/// made), `CKPT_STATUS_BUSY` (the VM is attached: detach it first),
/// `CKPT_STATUS_NOT_FOUND` (the `rbd` program), `CKPT_STATUS_IO` (`rbd`
/// failed: its message is in `ckpt_last_error`), `CKPT_STATUS_CORRUPT`
/// (what `rbd` read back differs from what was sent).
///
/// # Safety
///
/// `vm` is NULL or a live handle; `pool` and `prefix` are NULL or
/// NUL-terminated strings; `options` is NULL or points to a readable
/// struct of at least `options->struct_size` bytes whose strings are NULL
/// or NUL-terminated and whose `message` (if set) may be called with
/// `user` during the call; `out_stats` is NULL or points to a writable
/// struct of at least `out_stats->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_export_rbd(
    vm: *mut ckpt_vm,
    pool: *const c_char,
    prefix: *const c_char,
    options: *const ckpt_rbd_options,
    out_stats: *mut ckpt_rbd_export_stats,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_export_rbd", {
        // SAFETY: per this function's contract.
        let pool = unsafe { c_str(pool, "pool")? }.to_string();
        let prefix = if prefix.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(prefix, "prefix")? }.to_string())
        };
        // SAFETY: per this function's contract.
        let o = unsafe { rbd_options(options)? };
        // SAFETY: per this function's contract.
        let tool = unsafe { rbd_tool(&o)? };
        if !out_stats.is_null() {
            // Checked before anything is sent.
            // SAFETY: not NULL; its first field is the u32 size.
            let size = unsafe { out_stats.cast::<u32>().read_unaligned() } as usize;
            if size < size_of::<ckpt_rbd_export_stats>() {
                return Err(crate::Error::InvalidArgument(format!(
                    "out_stats->struct_size is {size}, expected at least {} \
                     (sizeof(ckpt_rbd_export_stats))",
                    size_of::<ckpt_rbd_export_stats>()
                ))
                .into());
            }
        }
        let opts = crate::checkpoint::rbd::RbdExportOptions {
            pool,
            prefix,
            prune: o.flags & CKPT_RBD_PRUNE != 0,
            tool,
        };
        // SAFETY: per this function's contract.
        let report = unsafe { change(vm, |v| v.export_rbd(&opts, &mut |l| tell(&o, l)))? };
        if !out_stats.is_null() {
            let count = |f: &dyn Fn(&crate::checkpoint::rbd::RbdImageReport) -> usize| {
                report.images.iter().map(f).sum::<usize>() as u32
            };
            let s = ckpt_rbd_export_stats {
                struct_size: size_of::<ckpt_rbd_export_stats>() as u32,
                images: report.images.len() as u32,
                images_created: count(&|i| usize::from(i.created)),
                snapshots_sent: count(&|i| i.sent.len()),
                snapshots_pruned: count(&|i| i.pruned.len()),
                clones_pruned: report.pruned_images.len() as u32,
                data_bytes: report.data_bytes,
                stream_bytes: report.stream_bytes,
            };
            // SAFETY: checked above; per this function's contract.
            unsafe { write_versioned(out_stats, s, "out_stats", "ckpt_rbd_export_stats")? };
        }
        Ok(())
    })
}

/// Make a new VM in folder `dir` from `count` RBD images (`images[i]` is
/// "POOL/IMAGE", one disk each, in order), as `ckpt vm import-rbd` does: a
/// base VHDX per image filled from its first snapshot, one checkpoint per
/// later snapshot (named after it), and the images' heads as the current
/// state; the images must have the same snapshots. `name` is the new VM's
/// name. On success `*out` is a handle to the new VM (free it with
/// `ckpt_vm_close`). A failed import leaves what it made in `dir`: remove
/// the folder and import again.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`images` with `count > 0`, an
/// element, `dir`, `name`, `out`), `CKPT_STATUS_INVALID_ARGUMENT` (`count`
/// 0, an image without a pool, a snapshot given, images with different
/// snapshots, `dir` holding a VM), `CKPT_STATUS_NOT_FOUND` (the `rbd`
/// program, an image), `CKPT_STATUS_IO` (`rbd` failed),
/// `CKPT_STATUS_CORRUPT` (a stream `rbd` sent is malformed).
///
/// # Safety
///
/// `images` is NULL or points to `count` readable pointers, each NULL or
/// a NUL-terminated string; `dir` and `name` are NULL or NUL-terminated
/// strings; `options` as for `ckpt_vm_export_rbd` (its flags must be 0);
/// `out` is NULL or valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_import_rbd(
    images: *const *const c_char,
    count: usize,
    dir: *const c_char,
    name: *const c_char,
    options: *const ckpt_rbd_options,
    out: *mut *mut ckpt_vm,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_import_rbd", {
        let out = out_ptr(out, "out")?;
        if count > 0 && images.is_null() {
            return Err(FfiError::null("images"));
        }
        let mut list = Vec::with_capacity(count.min(4096));
        for i in 0..count {
            // SAFETY: `images` holds `count` readable pointers per the contract.
            let p = unsafe { images.add(i).read() };
            // SAFETY: NULL or NUL-terminated per the contract.
            list.push(unsafe { c_str(p, "images[i]")? }.to_string());
        }
        // SAFETY: per this function's contract.
        let dir = unsafe { c_vm_path(dir, "dir")? };
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? }.to_string();
        // SAFETY: per this function's contract.
        let o = unsafe { rbd_options(options)? };
        if o.flags != 0 {
            return Err(crate::Error::InvalidArgument(
                "options->flags must be 0 for an import (CKPT_RBD_PRUNE is for exports)".into(),
            )
            .into());
        }
        // SAFETY: per this function's contract.
        let tool = unsafe { rbd_tool(&o)? };
        let opts = crate::checkpoint::rbd::RbdImportOptions { name, tool };
        let vm = crate::checkpoint::rbd::import_rbd(&list, dir, &opts, &mut |l| tell(&o, l))?;
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(new_handle(vm)) };
        Ok(())
    })
}

/// Write disk `disk_index` as a whole RBD image in the `rbd export
/// --export-format 2` layout to the file descriptor `fd` (for `rbd import
/// --export-format 2 - POOL/IMAGE`; it is not closed): one snapshot per
/// checkpoint on the path from the root to the current state, oldest
/// first, named as `ckpt vm export-rbd` names them, each as its changes
/// since the one before, and the current state as the image's head.
/// Checkpoints on other branches are not in it. `*out_stats` (when not
/// NULL) receives what was written.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`vm`), `CKPT_STATUS_INVALID_ARGUMENT`
/// (`disk_index` past the last disk, a bad `fd`), `CKPT_STATUS_BUSY` (an
/// attached VM), `CKPT_STATUS_UNSUPPORTED` (the disk was resized along the
/// path), `CKPT_STATUS_IO` (a write to `fd` failed), `CKPT_STATUS_CORRUPT`.
/// On an error part of the stream may have been written (without its end,
/// so `rbd import` refuses it).
///
/// # Safety
///
/// `vm` is NULL or a live handle; `fd` is an open file descriptor the
/// caller keeps open during the call; `out_stats` is NULL or valid for
/// writing one `ckpt_rbd_diff_stats`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_write_rbd_image(
    vm: *mut ckpt_vm,
    disk_index: usize,
    fd: c_int,
    out_stats: *mut ckpt_rbd_diff_stats,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_write_rbd_image", {
        // SAFETY: per this function's contract.
        unsafe {
            stream_to_fd(vm, fd, out_stats, |v, out| {
                v.write_rbd_image(disk_index, out)
            })
        }
    })
}
