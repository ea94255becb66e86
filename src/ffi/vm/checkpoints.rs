//! The checkpoint operations: create, apply, revert, delete, rename, export.

#[allow(unused_imports)]
use super::*;

/// Take a checkpoint called `name` (unique among the VM's checkpoints) of
/// the current state, as the VM's checkpoint type says:
///
/// - standard: `hooks->save_memory` writes the memory state (none without
///   it);
/// - production: `hooks->quiesce` is called; on success no memory state is
///   kept and `hooks->thaw` is called once the disks are checkpointed; on
///   failure (or without a quiesce callback) a standard checkpoint is
///   taken instead, and its fallback reason says why;
/// - production-only: as production, but a failed quiesce fails the call
///   (`CKPT_STATUS_INVALID_ARGUMENT`);
/// - disabled: refused (`CKPT_STATUS_INVALID_ARGUMENT`).
///
/// Every VHDX disk gets a new differencing disk next to its current file;
/// the VM writes there from now on (see `ckpt_vm_current_disk_path`).
/// Pass-through devices are recorded as skipped. `hooks` may be NULL. On
/// failure nothing is left behind.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (empty name, or one breaking the rule for new names given at
/// `ckpt_vm_checkpoint_find`; disabled; production-only quiesce failure),
/// `CKPT_STATUS_ALREADY_EXISTS` (the name is taken, ignoring case),
/// `CKPT_STATUS_UNSUPPORTED` (hooks from a newer header),
/// `CKPT_STATUS_NO_SPACE`,
/// `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO` (including a failed `save_memory`),
/// `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `hooks` is NULL or a readable `ckpt_hooks` of at least
/// `hooks->struct_size` bytes whose callbacks may be called with its `user`
/// during this call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_create(
    vm: *mut ckpt_vm,
    name: *const c_char,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_create", {
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? };
        // SAFETY: per this function's contract.
        let mut hooks = unsafe { hooks_of(hooks)? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.create_checkpoint(name, None, &mut hooks)) }?;
        Ok(())
    })
}

/// Make checkpoint `name` the active state: new differencing disks are
/// made on its disks, its configuration (memory, CPUs, hypervisor
/// settings) is restored, and the VM is saved (a checkpoint with memory
/// state: resume it) or off.
///
/// With `save_current_name` not NULL, the current state is first kept as
/// a new checkpoint of that name (taken as `ckpt_vm_checkpoint_create`
/// does, with `hooks`); with NULL it is discarded for good.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (an
/// empty `name` or `save_current_name`, a `save_current_name` breaking the
/// rule for new names given at `ckpt_vm_checkpoint_find`, the current
/// state hangs under no checkpoint, or the VM is running: stop or save it
/// first), `CKPT_STATUS_NOT_FOUND` (no such checkpoint, or a
/// missing file), `CKPT_STATUS_ALREADY_EXISTS` (a taken
/// `save_current_name`), `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_BUSY`,
/// `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `save_current_name` is NULL or a NUL-terminated string; `hooks`
/// as for `ckpt_vm_checkpoint_create`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_apply(
    vm: *mut ckpt_vm,
    name: *const c_char,
    save_current_name: *const c_char,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_apply", {
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? };
        let save = if save_current_name.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(save_current_name, "save_current_name")? })
        };
        // SAFETY: per this function's contract.
        let mut hooks = unsafe { hooks_of(hooks)? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.apply(name, save, &mut hooks)) }
    })
}

/// Go back to the checkpoint the current state hangs under, discarding
/// everything since (apply without capture). That is never a hidden
/// checkpoint: once the checkpoint the current state hung under is
/// deleted, it is that checkpoint's parent (as `current_checkpoint` in
/// `ckpt_vm_show_json` says).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (no
/// checkpoint to revert to, or the VM is running: stop or save it first),
/// `CKPT_STATUS_BUSY` (a current disk is open elsewhere), `CKPT_STATUS_IO`,
/// `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_revert(vm: *mut ckpt_vm) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_revert", {
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.revert()) }
    })
}

/// Delete checkpoint `name` (with `subtree != 0`, also every checkpoint
/// under it). No data the current state or another checkpoint reads is
/// lost: the checkpoint's disk data is merged into the state that depends
/// on it; only its configuration copy and memory state go. A branch point
/// (two or more states depend on it) stays as a hidden checkpoint until
/// only one is left.
///
/// `hooks->progress` (if any) follows the merges and may cancel them
/// (`CKPT_STATUS_CANCELLED`). It is called once with `done == 0` before
/// anything changes. A delete cancelled (or failed) before the
/// checkpoint's disks changed leaves it exactly as it was. One cancelled
/// (or failed) later cannot be undone — its disks already hold part of the
/// merged data — so the checkpoint is left being deleted
/// (`ckpt_checkpoint_info.deleting`, `"deleting": true` in the JSON): it
/// can no longer be applied or exported, and the next change to the VM
/// through any handle (this delete again, any other operation, or
/// `ckpt_vm_open`) finishes the delete before doing anything else. `hooks`
/// may be NULL.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (empty name),
/// `CKPT_STATUS_NOT_FOUND` (no such checkpoint, or a missing file),
/// `CKPT_STATUS_NO_SPACE` (no room for a merge; nothing changed),
/// `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_BUSY`,
/// `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `hooks` as for `ckpt_vm_checkpoint_create`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_delete(
    vm: *mut ckpt_vm,
    name: *const c_char,
    subtree: c_int,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_delete", {
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? };
        // SAFETY: per this function's contract.
        let mut hooks = unsafe { hooks_of(hooks)? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.delete(name, subtree != 0, &mut hooks)) }
    })
}

/// Rename checkpoint `name` to `new_name` (unique among the VM's
/// checkpoints).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (empty name or new name, or a new name breaking the rule given at
/// `ckpt_vm_checkpoint_find`), `CKPT_STATUS_NOT_FOUND` (no such
/// checkpoint), `CKPT_STATUS_ALREADY_EXISTS` (the new name is taken by
/// another checkpoint, ignoring case; changing only the case is fine),
/// `CKPT_STATUS_BUSY`,
/// `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` and `new_name` are NULL or
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_rename(
    vm: *mut ckpt_vm,
    name: *const c_char,
    new_name: *const c_char,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_rename", {
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? };
        // SAFETY: per this function's contract.
        let new_name = unsafe { c_str(new_name, "new_name")? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.rename(name, new_name)) }
    })
}

/// Export checkpoint `name` (NULL: the current state) into the folder
/// `dest_dir` (made if missing; it must be empty): a standalone copy of the
/// VM as it was then, with one flattened VHDX per disk (no parent),
/// `config.json` (the configuration), and `memory.vmrs` when it has memory
/// state.
///
/// Disk files are named after the VM's disks: `NAME.vhdx` when no other
/// disk of the VM has the same file name `NAME` (ignoring ASCII case and
/// the extension), else `NAME-K.vhdx` with K the disk's index in the VM's
/// disk order (0 first), with `-K` added again while that name is taken
/// too. So `a/disk1.vhdx`, `b/disk1.vhdx` and `c/os.vhdx` export as
/// `disk1-0.vhdx`, `disk1-1.vhdx` and `os.vhdx`. Names never collide, and
/// depend only on the VM's disks. `ckpt_vm_export_files_json` lists the
/// files made.
///
/// `hooks->progress` (if any) follows the copies and may cancel them
/// (`CKPT_STATUS_CANCELLED`). An export that fails or is cancelled leaves
/// none of its files. `hooks` may be NULL.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (`dest_dir` not empty, an empty name), `CKPT_STATUS_NOT_FOUND` (no
/// such checkpoint, or a missing file), `CKPT_STATUS_BUSY` (also: the
/// checkpoint is being deleted), `CKPT_STATUS_NO_SPACE`,
/// `CKPT_STATUS_CANCELLED`, `CKPT_STATUS_UNSUPPORTED`, `CKPT_STATUS_IO`,
/// `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `dest_dir` is NULL or a NUL-terminated string; `hooks` as for
/// `ckpt_vm_checkpoint_create`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_export(
    vm: *mut ckpt_vm,
    name: *const c_char,
    dest_dir: *const c_char,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_export", {
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(name, "name")? })
        };
        // SAFETY: per this function's contract.
        unsafe { export_with(vm, dest_dir, hooks, |v, dest, h| v.export(name, dest, h)) }
    })
}

/// The body of the export functions: `f` exports into the destination,
/// whose files the handle then keeps for `ckpt_vm_export_files_json`.
///
/// # Safety
///
/// As for `ckpt_vm_checkpoint_export` (for `vm`, `dest_dir` and `hooks`).
pub(super) unsafe fn export_with(
    vm: *mut ckpt_vm,
    dest_dir: *const c_char,
    hooks: *const ckpt_hooks,
    f: impl FnOnce(&mut Vm, &std::path::Path, &mut dyn Hooks) -> crate::Result<Vec<PathBuf>>,
) -> FfiResult {
    // SAFETY: per the contract.
    let dest = unsafe { c_vm_path(dest_dir, "dest_dir")? };
    // SAFETY: per the contract.
    let mut hooks = unsafe { hooks_of(hooks)? };
    // SAFETY: per the contract.
    let vm = unsafe { non_null(vm, "vm")? };
    let mut h = lock(vm)?;
    h.views = None;
    h.snapshots.clear();
    h.last_export = None;
    let disk_count = h.vm.data().disks.len();
    let files = f(&mut h.vm, dest, &mut hooks)?;
    h.last_export = Some(export_json(&files, disk_count));
    Ok(())
}

/// Copy the list of the files the last successful
/// `ckpt_vm_checkpoint_export` through this handle made into `buf` (a
/// string getter, as described at `ckpt_disk_get_parent_path`), as JSON:
/// `{"files": [{"path": "/abs/dest/os.vhdx", "kind": "disk",
/// "disk_index": 0}, ..., {"path": "/abs/dest/config.json", "kind":
/// "config"}, {"path": "/abs/dest/memory.vmrs", "kind": "memory"}]}` —
/// disks first, in the VM's disk order, then the configuration, then the
/// memory state when there is one. More keys (and kinds) may be added.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_NOT_FOUND` (no export through this handle succeeded since
/// it was opened, or the last one failed), `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_export_files_json(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_export_files_json", {
        let produce = |h: &VmHandle| match &h.last_export {
            Some(v) => Ok(json_text(v)?.into_bytes()),
            None => Err(FfiError::new(
                ckpt_status::NotFound,
                "no export through this VM handle has succeeded yet",
            )),
        };
        let what = "the export JSON";
        // SAFETY: per this function's contract.
        unsafe { vm_string(vm, ("export", 0, 0), what, produce, buf, len, out_len) }
    })
}
