//! Reference points from C (added in 0.3): converting a checkpoint
//! (`ckpt_vm_checkpoint_reference`), deleting one
//! (`ckpt_vm_reference_delete`) and listing them
//! (`ckpt_vm_references_json`). The changes since one are read with
//! `ckpt_vm_changes_open`, and incrementals since one are made with
//! `ckpt_vm_checkpoint_export_incremental`, naming it as `since`.

#[allow(unused_imports)]
use super::*;
use crate::checkpoint::json::references_json;
use crate::Error;

/// Turn checkpoint `name` into a reference point: the checkpoint is
/// deleted (its disks merged, as `ckpt_vm_checkpoint_delete` does; its
/// configuration copy and memory state go), and what is left answers
/// exactly what changed since it: `ckpt_vm_changes_open` and
/// `ckpt_vm_checkpoint_export_incremental` with `since = name` (on the
/// export that captured the checkpoint). A reference point keeps no data
/// and never blocks a merge or a delete. A conversion interrupted after
/// the reference point was recorded is finished by calling this again.
/// `hooks` may be NULL (`progress` follows the merge).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (empty name), `CKPT_STATUS_NOT_FOUND` (no such checkpoint),
/// `CKPT_STATUS_ALREADY_EXISTS` (a reference point of that name exists),
/// `CKPT_STATUS_BUSY`, `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_CANCELLED`,
/// `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string; `hooks` as for `ckpt_vm_checkpoint_create`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_reference(
    vm: *mut ckpt_vm,
    name: *const c_char,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_reference", {
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? };
        // SAFETY: per this function's contract.
        let mut hooks = unsafe { hooks_of(hooks)? };
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.convert_to_reference(name, &mut hooks)) }
    })
}

/// Delete reference point `name` (its change maps go; nothing else
/// changes).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (empty name), `CKPT_STATUS_NOT_FOUND` (no such reference point),
/// `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `name` is NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_reference_delete(
    vm: *mut ckpt_vm,
    name: *const c_char,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_reference_delete", {
        // SAFETY: per this function's contract.
        let name = unsafe { c_str(name, "name")? };
        if name.is_empty() {
            return Err(Error::InvalidArgument("name is empty".into()).into());
        }
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.delete_reference(name)) }
    })
}

/// Copy the reference points as JSON into `buf` (a string getter, as
/// described at `ckpt_vm_checkpoints_json`): `{"references": [{"name",
/// "id", "type", "created", "converted", "age_seconds", "map_bytes",
/// "anchors"}, ...]}`, oldest first. `created` is when the checkpoint was
/// taken, `converted` when it became a reference point (seconds since the
/// Unix epoch), `map_bytes` what its change maps hold.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT` (a damaged
/// change map).
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_references_json(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_references_json", {
        let produce = |h: &VmHandle| Ok(json_text(&references_json(h.vm.data())?)?.into_bytes());
        let what = "the reference points JSON";
        // SAFETY: per this function's contract.
        unsafe { vm_string(vm, ("references", 0, 0), what, produce, buf, len, out_len) }
    })
}
