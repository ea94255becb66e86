//! Typed getters for what was reachable only through the JSON views: the
//! memory-state files, the hypervisor settings, the checkpoint location,
//! the pass-through and skipped devices (added in 0.2).

#[allow(unused_imports)]
use super::*;
use crate::checkpoint::model::read_json;
use crate::checkpoint::VmConfig;

/// One of the getters below: what it returns for the handle's VM, as
/// bytes.
fn vm_text(h: &VmHandle, what: Getter) -> FfiResult<Vec<u8>> {
    let d = h.vm.data();
    let checkpoint = |index: usize| {
        d.checkpoints
            .get(index)
            .ok_or_else(|| bad_index(index, d.checkpoints.len()))
    };
    Ok(match what {
        Getter::CurrentSavedState => d
            .current
            .saved_state
            .as_deref()
            .map(path_bytes)
            .unwrap_or_default()
            .to_vec(),
        Getter::SavedState(i) => checkpoint(i)?
            .saved_state
            .as_deref()
            .map(path_bytes)
            .unwrap_or_default()
            .to_vec(),
        Getter::Hypervisor => compact(&d.config.hypervisor)?,
        Getter::CheckpointHypervisor(i) => {
            let c = checkpoint(i)?;
            let config: VmConfig = match &c.config_file {
                Some(f) => read_json(f)?,
                None => d.config.clone(),
            };
            compact(&config.hypervisor)?
        }
        Getter::Location => {
            let loc = h.vm.checkpoint_location();
            let loc = std::path::absolute(&loc).unwrap_or(loc);
            path_bytes(&loc).to_vec()
        }
        Getter::Passthrough(k) => {
            let all = &d.config.passthrough;
            all.get(k)
                .ok_or_else(|| {
                    FfiError::invalid(format!(
                        "pass-through index {k}: the VM has {} pass-through devices",
                        all.len()
                    ))
                })?
                .as_bytes()
                .to_vec()
        }
        Getter::Skipped(i, k) => {
            let all = &checkpoint(i)?.skipped_passthrough;
            all.get(k)
                .ok_or_else(|| {
                    FfiError::invalid(format!(
                        "skipped device index {k}: the checkpoint skipped {} devices",
                        all.len()
                    ))
                })?
                .as_bytes()
                .to_vec()
        }
    })
}

fn compact(v: &serde_json::Value) -> FfiResult<Vec<u8>> {
    serde_json::to_vec(v)
        .map_err(|e| FfiError::new(ckpt_status::Panic, format!("JSON output failed: {e}")))
}

/// Which getter runs.
#[derive(Clone, Copy)]
enum Getter {
    CurrentSavedState,
    SavedState(usize),
    Hypervisor,
    CheckpointHypervisor(usize),
    Location,
    Passthrough(usize),
    Skipped(usize, usize),
}

/// # Safety
///
/// As for the string getters.
unsafe fn getter(
    vm: *const ckpt_vm,
    what: Getter,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> FfiResult {
    let (key, text): (SnapshotKey, &str) = match what {
        Getter::CurrentSavedState => (("current_saved_state", 0, 0), "the memory-state path"),
        Getter::SavedState(i) => (("saved_state", i, 0), "the memory-state path"),
        Getter::Hypervisor => (("hypervisor", 0, 0), "the hypervisor settings"),
        Getter::CheckpointHypervisor(i) => {
            (("checkpoint_hypervisor", i, 0), "the hypervisor settings")
        }
        Getter::Location => (("checkpoint_location", 0, 0), "the checkpoint location"),
        Getter::Passthrough(k) => (("passthrough", k, 0), "the pass-through device"),
        Getter::Skipped(i, k) => (("skipped", i, k), "the skipped device"),
    };
    // SAFETY: forwarded from the caller.
    unsafe { vm_string(vm, key, text, |h| vm_text(h, what), buf, len, out_len) }
}

/// Copy the path of the memory-state file the current state resumes from
/// into `buf` (a string getter, as described at
/// `ckpt_disk_get_parent_path`): the empty string when it has none
/// (`ckpt_vm_info.has_saved_state` is false). After applying a standard
/// checkpoint this is that checkpoint's own file, borrowed: resume from it,
/// never write into it (a new save goes to a new file). The path is
/// absolute, as the bytes the file system holds.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_current_saved_state_path(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_current_saved_state_path", {
        // SAFETY: per this function's contract.
        unsafe { getter(vm, Getter::CurrentSavedState, buf, len, out_len) }
    })
}

/// Copy the path of the memory-state file of checkpoint `index` (see
/// `ckpt_vm_checkpoint_count`) into `buf` (a string getter, as described
/// at `ckpt_disk_get_parent_path`): the empty string when it has none
/// (`ckpt_checkpoint_info.has_saved_state` is false). Never write into it.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_saved_state_path(
    vm: *const ckpt_vm,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_saved_state_path", {
        // SAFETY: per this function's contract.
        unsafe { getter(vm, Getter::SavedState(index), buf, len, out_len) }
    })
}

/// Copy the hypervisor's own settings of the current state (the
/// `hypervisor_json` of `ckpt_vm_spec`, `ckpt_vm_set_hypervisor_settings`,
/// or what the last apply restored) into `buf` as compact JSON text (a
/// string getter, as described at `ckpt_disk_get_parent_path`): `null`
/// when there are none. The library keeps the JSON as it is: its layout
/// is the hypervisor's.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_hypervisor_json(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_hypervisor_json", {
        // SAFETY: per this function's contract.
        unsafe { getter(vm, Getter::Hypervisor, buf, len, out_len) }
    })
}

/// Copy the hypervisor settings checkpoint `index` keeps (the ones
/// applying it restores: `ckpt_vm_hypervisor_json` gives them after the
/// apply) into `buf` as compact JSON text, as `ckpt_vm_hypervisor_json`
/// does. They are read from the checkpoint's configuration copy.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`,
/// `CKPT_STATUS_NOT_FOUND` / `CKPT_STATUS_IO` / `CKPT_STATUS_CORRUPT` (the
/// configuration copy is missing or cannot be read).
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_hypervisor_json(
    vm: *const ckpt_vm,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_hypervisor_json", {
        // SAFETY: per this function's contract.
        unsafe { getter(vm, Getter::CheckpointHypervisor(index), buf, len, out_len) }
    })
}

/// Copy the absolute path of the VM's checkpoint location (where
/// configuration copies and memory states go: the one set, or the folder
/// `checkpoints` in the VM folder) into `buf` (a string getter, as
/// described at `ckpt_disk_get_parent_path`).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_get_checkpoint_location(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_get_checkpoint_location", {
        // SAFETY: per this function's contract.
        unsafe { getter(vm, Getter::Location, buf, len, out_len) }
    })
}

/// Copy pass-through device `index` of the VM (`0 ..
/// ckpt_vm_info.passthrough_count - 1`, in the order of
/// `ckpt_vm_spec.passthrough`) into `buf` (a string getter, as described
/// at `ckpt_disk_get_parent_path`).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (`index` out of range), `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_passthrough(
    vm: *const ckpt_vm,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_passthrough", {
        // SAFETY: per this function's contract.
        unsafe { getter(vm, Getter::Passthrough(index), buf, len, out_len) }
    })
}

/// Copy device `device_index` of the pass-through devices checkpoint
/// `index` did not checkpoint (`0 ..
/// ckpt_checkpoint_info.skipped_passthrough_count - 1`) into `buf` (a
/// string getter, as described at `ckpt_disk_get_parent_path`).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (an index out of range),
/// `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_checkpoint_skipped_device(
    vm: *const ckpt_vm,
    index: usize,
    device_index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_checkpoint_skipped_device", {
        // SAFETY: per this function's contract.
        unsafe { getter(vm, Getter::Skipped(index, device_index), buf, len, out_len) }
    })
}
