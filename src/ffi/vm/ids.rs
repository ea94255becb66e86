//! Checkpoints by stable id (added in 0.2): find, info, apply, delete,
//! rename and export taking the id `ckpt_vm_checkpoint_id` gives.
//!
//! Indexes (`ckpt_vm_checkpoint_count`, `ckpt_vm_checkpoint_get`, ...)
//! hold only until the next change through the handle; an id holds for the
//! checkpoint's whole life (a rename keeps it, and a deleted checkpoint's
//! id is never given again), so a hypervisor keeps ids, not indexes or
//! names.

#[allow(unused_imports)]
use super::*;

/// The index of checkpoint `id` on the handle.
fn index_of(h: &VmHandle, id: &str) -> FfiResult<usize> {
    let want = h.vm.find_id(id)?.id.clone();
    let all = &h.vm.data().checkpoints;
    all.iter().position(|c| c.id == want).ok_or_else(|| {
        FfiError::new(
            ckpt_status::NotFound,
            format!("no checkpoint has the id {id:?}"),
        )
    })
}

/// Set `*out_index` to the index (see `ckpt_vm_checkpoint_count`) of the
/// checkpoint whose id is `id`. Unlike `ckpt_vm_checkpoint_find`, every
/// checkpoint is found, hidden branch points (`ckpt_checkpoint_info.hidden`)
/// and checkpoints being deleted included.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (an
/// empty id, or not UTF-8), `CKPT_STATUS_NOT_FOUND` (no checkpoint has that
/// id: it was deleted, or never existed), `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `id` is NULL or a NUL-terminated
/// string; `out_index` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_find_id(
    vm: *const ckpt_vm,
    id: *const c_char,
    out_index: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_find_id", {
        // SAFETY: per this function's contract.
        let id = unsafe { c_str(id, "id")? };
        let out = out_ptr(out_index, "out_index")?;
        // SAFETY: per this function's contract.
        let i = unsafe { look(vm, |h| index_of(h, id))? };
        // SAFETY: not NULL, writable per the contract.
        unsafe { out.write(i) };
        Ok(())
    })
}

/// `ckpt_vm_checkpoint_get` of the checkpoint whose id is `id`.
///
/// Errors: as for `ckpt_vm_checkpoint_find_id` and
/// `ckpt_vm_checkpoint_get`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `id` is NULL or a NUL-terminated
/// string; `info` as for `ckpt_vm_checkpoint_get`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_get_by_id(
    vm: *const ckpt_vm,
    id: *const c_char,
    info: *mut ckpt_checkpoint_info,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_get_by_id", {
        // SAFETY: per this function's contract.
        let id = unsafe { c_str(id, "id")? };
        out_ptr(info, "info")?;
        // SAFETY: per this function's contract.
        let value = unsafe {
            look(vm, |h| {
                let i = index_of(h, id)?;
                checkpoint_info(h, i)
            })?
        };
        // SAFETY: per this function's contract.
        unsafe { write_versioned(info, value, "info", "ckpt_checkpoint_info") }
    })
}

/// `ckpt_vm_checkpoint_apply` of the checkpoint whose id is `id`.
///
/// Errors: as for `ckpt_vm_checkpoint_apply`; also
/// `CKPT_STATUS_NOT_FOUND` (no checkpoint has that id) and
/// `CKPT_STATUS_INVALID_ARGUMENT` (an empty id, or a hidden branch point,
/// which no operation takes).
///
/// # Safety
///
/// As for `ckpt_vm_checkpoint_apply`, `id` in place of `name`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_apply_by_id(
    vm: *mut ckpt_vm,
    id: *const c_char,
    save_current_name: *const c_char,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_apply_by_id", {
        // SAFETY: per this function's contract.
        let id = unsafe { c_str(id, "id")? };
        let save = if save_current_name.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            Some(unsafe { c_str(save_current_name, "save_current_name")? })
        };
        // SAFETY: per this function's contract.
        let mut hooks = unsafe { hooks_of(hooks)? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.apply_by_id(id, save, &mut hooks)) }
    })
}

/// `ckpt_vm_checkpoint_delete` of the checkpoint whose id is `id`.
///
/// Errors: as for `ckpt_vm_checkpoint_delete` and
/// `ckpt_vm_checkpoint_apply_by_id`.
///
/// # Safety
///
/// As for `ckpt_vm_checkpoint_delete`, `id` in place of `name`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_delete_by_id(
    vm: *mut ckpt_vm,
    id: *const c_char,
    subtree: c_int,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_delete_by_id", {
        // SAFETY: per this function's contract.
        let id = unsafe { c_str(id, "id")? };
        // SAFETY: per this function's contract.
        let mut hooks = unsafe { hooks_of(hooks)? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.delete_by_id(id, subtree != 0, &mut hooks)) }
    })
}

/// `ckpt_vm_checkpoint_rename` of the checkpoint whose id is `id` (the id
/// stays).
///
/// Errors: as for `ckpt_vm_checkpoint_rename` and
/// `ckpt_vm_checkpoint_apply_by_id`.
///
/// # Safety
///
/// As for `ckpt_vm_checkpoint_rename`, `id` in place of `name`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_rename_by_id(
    vm: *mut ckpt_vm,
    id: *const c_char,
    new_name: *const c_char,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_rename_by_id", {
        // SAFETY: per this function's contract.
        let id = unsafe { c_str(id, "id")? };
        // SAFETY: per this function's contract.
        let new_name = unsafe { c_str(new_name, "new_name")? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.rename_by_id(id, new_name)) }
    })
}

/// `ckpt_vm_checkpoint_export` of the checkpoint whose id is `id` (the
/// current state has no id: export it with `ckpt_vm_checkpoint_export`
/// and a NULL name). `ckpt_vm_export_files_json` lists the files made.
///
/// Errors: as for `ckpt_vm_checkpoint_export` and
/// `ckpt_vm_checkpoint_apply_by_id`.
///
/// # Safety
///
/// As for `ckpt_vm_checkpoint_export`, `id` (not NULL) in place of
/// `name`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_export_by_id(
    vm: *mut ckpt_vm,
    id: *const c_char,
    dest_dir: *const c_char,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_export_by_id", {
        // SAFETY: per this function's contract.
        let id = unsafe { c_str(id, "id")? };
        // SAFETY: per this function's contract.
        unsafe {
            export_with(vm, dest_dir, hooks, |v, dest, h| {
                v.export_by_id(id, dest, h)
            })
        }
    })
}
