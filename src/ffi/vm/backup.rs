//! Incremental backup from C (added in 0.2): the incremental export
//! (`ckpt_vm_checkpoint_export_incremental`) and the changes between two
//! points of the tree as an iterator over extents (`ckpt_vm_changes_open`,
//! `ckpt_vm_changes_next`, `ckpt_vm_changes_free`).

#[allow(unused_imports)]
use super::*;
use crate::disk::merge::Range;
use crate::ffi::chain::ckpt_range;
use crate::ffi::{c_path, write_string};

/// The changes of one disk between two points of a VM's tree (opaque),
/// read with `ckpt_vm_changes_next`.
///
/// Ownership: `ckpt_vm_changes_open` gives the caller the iterator; the
/// caller frees it with `ckpt_vm_changes_free`, exactly once. It holds its
/// own copy of the extents: the VM handle may change or close meanwhile.
///
/// Thread safety: one call at a time per iterator.
pub struct ckpt_vm_changes {
    ranges: Vec<Range>,
    next: usize,
}

/// Export checkpoint `name` (NULL: the current state) into the folder
/// `dest_dir` as an incremental backup on the export folder `base_dir`:
/// per disk a differencing VHDX whose parent is `base_dir`'s disk (its
/// locator holds the relative and the absolute path, its linkage the
/// parent's DataWriteGuid), holding exactly the sectors that may differ
/// between checkpoint `since` (REF) and the point exported, with that
/// point's content there; `config.json` (with the export's manifest) and
/// the memory state as `ckpt_vm_checkpoint_export`. The chain full export
/// → incremental → … opens with libckpt, libvhdi and Hyper-V.
///
/// REF is an earlier checkpoint on the path to `name`, one on another
/// branch (then the changes of both sides since their common ancestor),
/// or a reference point (`ckpt_vm_checkpoint_reference`).
/// `base_dir` must be the export that captured REF (a full export of REF,
/// or an incremental up to REF), unchanged since: its manifest says so,
/// and its disks still have the DataWriteGuids, virtual sizes and sector
/// sizes it recorded. The current state of a running VM (its live disks
/// handed out by `ckpt_vm_disk`) is exported through a temporary
/// checkpoint, as `ckpt_vm_checkpoint_export` does.
///
/// `hooks->progress` follows the copy and may cancel it. An export that
/// fails or is cancelled leaves none of its files; a refusal changes
/// nothing. `ckpt_vm_export_files_json` lists the files made.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`vm`, `since`, `base_dir` or
/// `dest_dir` NULL), `CKPT_STATUS_INVALID_ARGUMENT` (REF not older than
/// the point exported, `base_dir` captured another point, belongs to
/// another VM, was changed or has no manifest, `dest_dir` not empty),
/// `CKPT_STATUS_NOT_FOUND` (no such checkpoint, `base_dir` missing or no
/// export), `CKPT_STATUS_BUSY`, `CKPT_STATUS_NO_SPACE`,
/// `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_UNSUPPORTED` (a disk resized
/// between REF and the point exported), `CKPT_STATUS_IO`,
/// `CKPT_STATUS_CORRUPT`, `CKPT_STATUS_PARENT_MISMATCH`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `since`, `base_dir` and `dest_dir` are NULL or NUL-terminated
/// strings; `hooks` as for `ckpt_vm_checkpoint_create`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_export_incremental(
    vm: *mut ckpt_vm,
    name: *const c_char,
    since: *const c_char,
    base_dir: *const c_char,
    dest_dir: *const c_char,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_export_incremental", {
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(name, "name")? })
        };
        // SAFETY: per this function's contract.
        let since = unsafe { c_str(since, "since")? };
        // SAFETY: per this function's contract.
        let base = unsafe { c_vm_path(base_dir, "base_dir")? };
        // SAFETY: per this function's contract.
        unsafe {
            export_with(vm, dest_dir, hooks, |v, dest, h| {
                v.export_incremental(name, since, dest, base, h)
            })
        }
    })
}

/// Open an iterator over the byte ranges of disk `disk_index` (in the
/// VM's disk order) that may differ between checkpoint `since` (REF) and
/// checkpoint `to` (NULL: the current state): exact to the logical
/// sector, sorted, non-overlapping and coalesced; what an incremental
/// export since REF copies. REF is an earlier checkpoint on the path to
/// `to`, one on another branch (then through their common ancestor), or a
/// reference point (`ckpt_vm_checkpoint_reference`; what its change map
/// holds is exact to 64 KiB).
/// The ranges are computed by this call; for the current state of a
/// running VM, they are those of its live disks now.
///
/// `*out` receives the iterator; free it with `ckpt_vm_changes_free`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`vm`, `since` or `out` NULL),
/// `CKPT_STATUS_INVALID_ARGUMENT` (REF is `to` or was taken after it on its
/// path, `disk_index` past the last disk, an empty name),
/// `CKPT_STATUS_NOT_FOUND` (no such checkpoint or reference point),
/// `CKPT_STATUS_BUSY`, `CKPT_STATUS_UNSUPPORTED` (the disk was resized in
/// between),
/// `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `since` is NULL or a NUL-terminated
/// string; `to` is NULL or a NUL-terminated string; `out` is NULL or valid
/// for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_changes_open(
    vm: *mut ckpt_vm,
    since: *const c_char,
    to: *const c_char,
    disk_index: usize,
    out: *mut *mut ckpt_vm_changes,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_changes_open", {
        // SAFETY: per this function's contract.
        let since = unsafe { c_str(since, "since")? };
        let to = if to.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(to, "to")? })
        };
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let mut all = unsafe {
            change(vm, |v| {
                let n = v.data().disks.len();
                if disk_index >= n {
                    return Err(crate::Error::InvalidArgument(format!(
                        "disk_index {disk_index}: the VM has {n} disk(s)"
                    )));
                }
                v.changes(since, to)
            })?
        };
        let ranges = std::mem::take(&mut all[disk_index]);
        let it = Box::new(ckpt_vm_changes { ranges, next: 0 });
        // SAFETY: not NULL, writable per the contract.
        unsafe { out.write(Box::into_raw(it)) };
        Ok(())
    })
}

/// The next range of `changes`: on success `*out_more` is true and `*out`
/// holds the range, or, once every range was given, `*out_more` is false
/// and `*out` is not touched (and every later call says the same).
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`changes`, `out` or `out_more`
/// NULL).
///
/// # Safety
///
/// `changes` is NULL or an iterator from `ckpt_vm_changes_open` not yet
/// freed; `out` is NULL or valid for writing one `ckpt_range`; `out_more`
/// is NULL or valid for writing one `bool`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_changes_next(
    changes: *mut ckpt_vm_changes,
    out: *mut ckpt_range,
    out_more: *mut bool,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_changes_next", {
        if changes.is_null() {
            return Err(FfiError::null("changes"));
        }
        let out = out_ptr(out, "out")?;
        let more = out_ptr(out_more, "out_more")?;
        // SAFETY: not NULL; a live iterator per the contract, used by one
        // call at a time.
        let it = unsafe { &mut *changes };
        match it.ranges.get(it.next) {
            Some(r) => {
                // SAFETY: not NULL, writable per the contract.
                unsafe {
                    out.write(ckpt_range {
                        offset: r.offset,
                        length: r.length,
                    });
                    more.write(true);
                }
                it.next += 1;
            }
            // SAFETY: not NULL, writable per the contract.
            None => unsafe { more.write(false) },
        }
        Ok(())
    })
}

/// Free an iterator from `ckpt_vm_changes_open`. NULL is accepted (and
/// does nothing).
///
/// # Safety
///
/// `changes` is NULL or an iterator from `ckpt_vm_changes_open` not yet
/// freed; it must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_changes_free(changes: *mut ckpt_vm_changes) {
    ffi_boundary!(
        "ckpt_vm_changes_free",
        {
            if !changes.is_null() {
                // SAFETY: from `Box::into_raw` in `ckpt_vm_changes_open`,
                // freed once per the contract.
                drop(unsafe { Box::from_raw(changes) });
            }
        },
        panic_default = ()
    )
}

/// The restore check of a backup set (as `ckpt verify-backup`): open the
/// chain of every disk of the newest export, check its linkage, sizes,
/// structure and each file's DataWriteGuid against its export's manifest,
/// and read it end to end. `dirs` holds `dir_count` export folders: the
/// whole set, oldest (the full export) first, or only the newest (its
/// chain is followed through the parent locators).
///
/// `*out_ok` is set to whether every disk restores (whenever the check
/// ran). The report goes into `buf` as a string (the buffer rules of
/// `ckpt_disk_get_parent_path`; a call that finds the buffer too small
/// runs the whole check again when called with a larger one): JSON
/// `{"ok": bool, "disks": [{"file", "chain" (newest first),
/// "virtual_size", "error" (null, or what is wrong)}]}`, in the VM's disk
/// order. A damaged backup is not an error of the call: `*out_ok` is
/// false and the report says why.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`dirs`, an element, or `out_ok`
/// NULL), `CKPT_STATUS_INVALID_ARGUMENT` (`dir_count` 0, an empty path, no
/// manifest in the newest export), `CKPT_STATUS_NOT_FOUND` (the newest
/// folder missing), `CKPT_STATUS_BUFFER_TOO_SMALL`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `dirs` is NULL or valid for reads of `dir_count` pointers, each NULL or
/// a NUL-terminated string; `out_ok` is NULL or valid for writing one
/// `bool`; `buf` is NULL or valid for writes of `len` bytes; `out_len` is
/// NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_verify_backup(
    dirs: *const *const c_char,
    dir_count: usize,
    out_ok: *mut bool,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_verify_backup", {
        if dirs.is_null() {
            return Err(FfiError::null("dirs"));
        }
        let ok_out = out_ptr(out_ok, "out_ok")?;
        if dir_count == 0 {
            return Err(FfiError::invalid("dir_count is 0: give the export folders"));
        }
        let mut paths = Vec::with_capacity(dir_count.min(4096));
        for i in 0..dir_count {
            // SAFETY: `dirs` is valid for `dir_count` reads per the contract.
            let p = unsafe { *dirs.add(i) };
            // SAFETY: NULL or a NUL-terminated string per the contract.
            paths.push(unsafe { c_path(p, "dirs[i]")? }.to_path_buf());
        }
        let verdicts = crate::checkpoint::backup::verify_backup(&paths)?;
        let all_ok = verdicts.iter().all(|v| v.error.is_none());
        // SAFETY: not NULL, writable per the contract.
        unsafe { ok_out.write(all_ok) };
        let disks: Vec<serde_json::Value> = verdicts
            .iter()
            .map(|v| {
                serde_json::json!({
                    "file": v.file.to_string_lossy(),
                    "chain": v.chain.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
                    "virtual_size": v.virtual_size,
                    "error": v.error,
                })
            })
            .collect();
        let text = serde_json::json!({ "ok": all_ok, "disks": disks }).to_string();
        // SAFETY: per this function's contract.
        unsafe { write_string(text.as_bytes(), buf, len, out_len, "the verify report") }
    })
}
