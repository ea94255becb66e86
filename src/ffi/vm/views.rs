//! Read-only views of a VM: the JSON views and the checkpoint getters.

#[allow(unused_imports)]
use super::*;

pub(super) fn json_text(v: &serde_json::Value) -> FfiResult<String> {
    serde_json::to_string_pretty(v)
        .map_err(|e| FfiError::new(ckpt_status::Panic, format!("JSON output failed: {e}")))
}

/// Copy the VM as JSON into `buf` (a string getter, as described at
/// `ckpt_disk_get_parent_path`): the object `ckpt vm show --json` prints,
/// with `name`, `state` ("off", "running", "saved"), `memory_mib`, `cpus`,
/// `checkpoint_type` ("disabled", "standard", "production",
/// "production-only"), `checkpoint_location` (null: the default),
/// `age_warning_seconds`, `current_checkpoint` (the name of the
/// checkpoint the current state hangs under, the one revert goes back to;
/// never a hidden or a being-deleted one; or null),
/// `current_checkpoint_id`, `saved_state`, `disks` (`[{"path": the file
/// written now, "base": the disk the VM was created with}]`),
/// `passthrough`, `hypervisor` and `settings`. Paths are absolute.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_show_json(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_show_json", {
        let produce = |h: &VmHandle| Ok(json_text(&vm_json(h.vm.data()))?.into_bytes());
        // SAFETY: per this function's contract.
        unsafe {
            vm_string(
                vm,
                ("show", 0, 0),
                "the VM JSON",
                produce,
                buf,
                len,
                out_len,
            )
        }
    })
}

/// Copy the checkpoint tree as JSON into `buf` (a string getter, as
/// described at `ckpt_disk_get_parent_path`; for every string getter of a
/// `ckpt_vm`, a call that fails with `CKPT_STATUS_BUFFER_TOO_SMALL` keeps
/// the text it measured, and the next call of the same getter with the
/// same arguments on the handle returns exactly that text, unless the VM
/// was changed through the handle in between: a buffer of the reported
/// size plus one always suffices, although ages tick between the calls):
/// `{"checkpoints": [{"name", "id", "parent" (the parent's id or null),
/// "type", "requested_type", "fallback_reason", "created", "age_seconds",
/// "age_warning", "size_bytes", "chain_depth", "delete_copy_bytes",
/// "saved_state", "disks", "skipped_passthrough", "hidden", "deleting"},
/// ...], "current": {"parent", "disks", "saved_state"}}`, parents before
/// children, paths absolute. `current.parent` is the id of the checkpoint
/// the current state hangs under (never a hidden one; see
/// `ckpt_vm_checkpoint_revert`). The sizes are measured on every call (each
/// checkpoint's disks are opened).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoints_json(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoints_json", {
        let produce = |h: &VmHandle| Ok(json_text(&checkpoints_json(h.vm.data())?)?.into_bytes());
        let what = "the checkpoints JSON";
        // SAFETY: per this function's contract.
        unsafe { vm_string(vm, ("checkpoints", 0, 0), what, produce, buf, len, out_len) }
    })
}

/// Copy the warnings of the last change through this handle into `buf` (a
/// string getter, as described at `ckpt_disk_get_parent_path`), as JSON:
/// `{"warnings": ["deleting checkpoint \"B\" was done, but tidying up
/// after it failed (...); that is finished when the VM is next opened",
/// ...]}`. A change (create, apply, revert, delete or rename of a
/// checkpoint, or a setter; not an export, which changes nothing) that
/// succeeded may still leave warnings: once a create, a delete or an apply
/// is committed, a step after it that fails (removing the journal or the
/// old files, collapsing a hidden branch point) does not make the call fail; it is reported here, and
/// that tidy-up is finished when the VM is next opened (or before its next
/// operation). The list is empty after an open and after a change without
/// a caveat; each change replaces it (reading it does not empty it). More
/// keys may be added.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_warnings_json(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_warnings_json", {
        let produce = |h: &VmHandle| {
            let v = serde_json::json!({ "warnings": h.warnings });
            Ok(json_text(&v)?.into_bytes())
        };
        let what = "the warnings JSON";
        // SAFETY: per this function's contract.
        unsafe { vm_string(vm, ("warnings", 0, 0), what, produce, buf, len, out_len) }
    })
}

/// Set `*out` to the number of checkpoints of the VM, hidden branch points
/// included. Indexes `0 .. *out - 1` are valid for `ckpt_vm_checkpoint_get`
/// and the other `ckpt_vm_checkpoint_*` getters until the next change
/// through the handle (a checkpoint create, apply, revert, delete or
/// rename, or a setter, even one that fails: it may have finished a
/// pending delete first); reading never moves them, and no other handle or
/// process can change the VM meanwhile (the handle holds its lock).
/// Parents come before their children. To keep hold of a checkpoint
/// across changes, keep its id (`ckpt_vm_checkpoint_id`, stable for the
/// checkpoint's life) and find it again with `ckpt_vm_checkpoint_find_id`,
/// or use the `..._by_id` calls.
///
/// The listing is the whole tree: a hidden branch point (a deleted
/// checkpoint kept while two or more states still read its disks) is in
/// it, marked `ckpt_checkpoint_info.hidden`, because the `parent_index` of
/// the checkpoints under it leads through it. A list for a user skips the
/// hidden ones (their children then hang under the nearest visible
/// ancestor); no name lookup or operation takes a hidden one.
///
/// This also starts a fresh measurement: the ages and sizes
/// `ckpt_vm_checkpoint_get` reports are measured at its first call after
/// this one (or after a change), for all checkpoints at once.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `out` is NULL or valid for writing one
/// `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_count(
    vm: *const ckpt_vm,
    out: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_count", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let n = unsafe {
            look(vm, |h| {
                h.views = None;
                Ok(h.vm.data().checkpoints.len())
            })?
        };
        // SAFETY: not NULL, writable per the contract.
        unsafe { out.write(n) };
        Ok(())
    })
}

pub(super) fn bad_index(index: usize, n: usize) -> FfiError {
    FfiError::invalid(format!(
        "checkpoint index {index}: the VM has {n} checkpoints"
    ))
}

/// Fill `*info` with checkpoint `index` (see `ckpt_vm_checkpoint_count`).
/// Set `info->struct_size` to `sizeof(ckpt_checkpoint_info)` first;
/// `*info` is written only on success.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (`index` out of range, `struct_size` too small), `CKPT_STATUS_BUSY`,
/// `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `info` is NULL or points to a readable
/// and writable `ckpt_checkpoint_info` of at least `info->struct_size`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_get(
    vm: *const ckpt_vm,
    index: usize,
    info: *mut ckpt_checkpoint_info,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_get", {
        out_ptr(info, "info")?;
        // SAFETY: per this function's contract.
        let value = unsafe { look(vm, |h| checkpoint_info(h, index))? };
        // SAFETY: per this function's contract.
        unsafe { write_versioned(info, value, "info", "ckpt_checkpoint_info") }
    })
}

/// The info struct of checkpoint `index` (measuring the list first when
/// it is not measured yet).
pub(super) fn checkpoint_info(h: &mut VmHandle, index: usize) -> FfiResult<ckpt_checkpoint_info> {
    if h.views.is_none() {
        h.views = Some(list_of(h.vm.data())?);
    }
    let data = h.vm.data();
    let views = h.views.as_deref().unwrap_or_default();
    let v = views
        .get(index)
        .ok_or_else(|| bad_index(index, views.len()))?;
    let c = &v.checkpoint;
    let parent_index = c
        .parent
        .as_deref()
        .and_then(|p| data.checkpoints.iter().position(|x| x.id == p))
        .map_or(-1, |i| i as i64);
    Ok(ckpt_checkpoint_info {
        struct_size: size_of::<ckpt_checkpoint_info>() as u32,
        taken: c.taken.into(),
        requested: c.requested.into(),
        disk_count: count_u32(c.disks.len()),
        parent_index,
        created: c.created,
        age_seconds: v.age_seconds,
        size_bytes: v.size_bytes,
        delete_copy_bytes: v.delete_copy_bytes,
        chain_depth: count_u32(v.chain_depth),
        skipped_passthrough_count: count_u32(c.skipped_passthrough.len()),
        hidden: c.hidden,
        has_saved_state: c.saved_state.is_some(),
        has_fallback_reason: c.fallback_reason.is_some(),
        age_warning: v.age_warning,
        is_current_parent: data.current_checkpoint().map(|x| x.id.as_str()) == Some(c.id.as_str()),
        deleting: c.deleting,
        reserved: [0; 2],
    })
}

/// Which string of a checkpoint a getter returns.
pub(super) enum Field {
    Name,
    Id,
    FallbackReason,
    Disk(usize),
}

/// # Safety
///
/// As for the string getters.
pub(super) unsafe fn checkpoint_string(
    vm: *const ckpt_vm,
    index: usize,
    field: Field,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> FfiResult {
    // SAFETY: forwarded from the caller.
    let (key, what) = match field {
        Field::Name => (("checkpoint_name", index, 0), "the checkpoint name"),
        Field::Id => (("checkpoint_id", index, 0), "the checkpoint id"),
        Field::FallbackReason => (("fallback_reason", index, 0), "the fallback reason"),
        Field::Disk(k) => (("checkpoint_disk_path", index, k), "the disk path"),
    };
    let produce = |h: &VmHandle| -> FfiResult<Vec<u8>> {
        let all = &h.vm.data().checkpoints;
        let c = all.get(index).ok_or_else(|| bad_index(index, all.len()))?;
        Ok(match field {
            Field::Name => c.name.as_bytes().to_vec(),
            Field::Id => c.id.as_bytes().to_vec(),
            Field::FallbackReason => c.fallback_reason.as_deref().unwrap_or("").into(),
            Field::Disk(k) => {
                let p = c.disks.get(k).ok_or_else(|| {
                    FfiError::invalid(format!(
                        "disk index {k}: the checkpoint has {} disks",
                        c.disks.len()
                    ))
                })?;
                path_bytes(p).to_vec()
            }
        })
    };
    // SAFETY: forwarded from the caller.
    unsafe { vm_string(vm, key, what, produce, buf, len, out_len) }
}

/// Copy the name of checkpoint `index` into `buf` (a string getter, as
/// described at `ckpt_disk_get_parent_path`).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_name(
    vm: *const ckpt_vm,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_name", {
        // SAFETY: per this function's contract.
        unsafe { checkpoint_string(vm, index, Field::Name, buf, len, out_len) }
    })
}

/// Copy the stable id of checkpoint `index` (the `id` and `parent` of the
/// JSON) into `buf` (a string getter, as described at
/// `ckpt_disk_get_parent_path`). Unlike the index, the id holds for the
/// checkpoint's whole life: a rename keeps it, it is the same after a
/// crash and a reopen, and it is never given to another checkpoint (a
/// name can be: that of a deleted or hidden one). Keep it to address the
/// checkpoint later: `ckpt_vm_checkpoint_find_id` and the `..._by_id`
/// calls take it.
///
/// Errors: as for `ckpt_vm_checkpoint_name`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_id(
    vm: *const ckpt_vm,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_id", {
        // SAFETY: per this function's contract.
        unsafe { checkpoint_string(vm, index, Field::Id, buf, len, out_len) }
    })
}

/// Copy why checkpoint `index` is not the kind that was asked for (for
/// example `"quiesce failed: the quiesce callback returned 5"`) into `buf`
/// (a string getter, as described at `ckpt_disk_get_parent_path`); the
/// empty string when it is.
///
/// Errors: as for `ckpt_vm_checkpoint_name`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_fallback_reason(
    vm: *const ckpt_vm,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_fallback_reason", {
        // SAFETY: per this function's contract.
        unsafe { checkpoint_string(vm, index, Field::FallbackReason, buf, len, out_len) }
    })
}

/// Copy the path of frozen disk `disk_index` of checkpoint `index` into
/// `buf` (a string getter, as described at `ckpt_disk_get_parent_path`).
/// Open it read-only to read the disk as it was at the checkpoint; never
/// write to it.
///
/// Errors: as for `ckpt_vm_checkpoint_name`, and
/// `CKPT_STATUS_INVALID_ARGUMENT` for `disk_index` out of range.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_disk_path(
    vm: *const ckpt_vm,
    index: usize,
    disk_index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_disk_path", {
        // SAFETY: per this function's contract.
        unsafe { checkpoint_string(vm, index, Field::Disk(disk_index), buf, len, out_len) }
    })
}

/// Set `*out_index` to the index of the checkpoint called `name` (hidden
/// checkpoints have no name lookups).
///
/// A checkpoint being deleted (`ckpt_checkpoint_info.deleting`) is still
/// found until the delete is finished.
///
/// Names compare ignoring case (as in Windows): "before" finds "Before".
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (an empty name, or one of blanks only, which no checkpoint can have; a
/// non-UTF-8 name), `CKPT_STATUS_NOT_FOUND` (no checkpoint has that name),
/// `CKPT_STATUS_BUSY`. Every function taking a checkpoint name refuses an
/// empty one the same way, and finds names the same way.
///
/// A new name (`ckpt_vm_checkpoint_create`, the `save_current_name` of
/// `ckpt_vm_checkpoint_apply`, the `new_name` of
/// `ckpt_vm_checkpoint_rename`) must also be at most 100 characters
/// (Unicode characters, not bytes), hold no control character (newline,
/// tab, ...) and have no blank at either end (refused, not trimmed):
/// otherwise `CKPT_STATUS_INVALID_ARGUMENT`, with the rule in the last
/// error message. It is taken (`CKPT_STATUS_ALREADY_EXISTS`) when another
/// checkpoint has it, ignoring case.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `out_index` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_find(
    vm: *const ckpt_vm,
    name: *const c_char,
    out_index: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_find", {
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? };
        let out = out_ptr(out_index, "out_index")?;
        // SAFETY: per this function's contract.
        let i = unsafe {
            look(vm, |h| {
                let id = h.vm.find(name)?.id.clone();
                Ok(h.vm.data().checkpoints.iter().position(|c| c.id == id))
            })?
        };
        let i = i.ok_or_else(|| FfiError::invalid(format!("no checkpoint is called {name:?}")))?;
        // SAFETY: not NULL, writable per the contract.
        unsafe { out.write(i) };
        Ok(())
    })
}
