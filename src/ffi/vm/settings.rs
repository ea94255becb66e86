//! Changing a VM's state, resources and checkpoint settings (`ckpt_vm_set_*`).

#[allow(unused_imports)]
use super::*;

/// Record the VM's state as the hypervisor reports it: a `ckpt_vm_state`
/// value. Leaving the saved state drops the memory state the current state
/// would have resumed from.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (unknown state), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_set_state(vm: *mut ckpt_vm, state: u32) -> ckpt_status {
    ffi_boundary!("ckpt_vm_set_state", {
        let state = vm_state_of(state)?;
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.set_state(state)) }
    })
}

/// Change the VM's memory (MiB) and CPU count; 0 keeps the current value.
/// Checkpoints keep the values they were taken with, and apply restores
/// them.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_set_resources(
    vm: *mut ckpt_vm,
    memory_mib: u64,
    cpus: u32,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_set_resources", {
        let m = (memory_mib != 0).then_some(memory_mib);
        let c = (cpus != 0).then_some(cpus);
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.set_resources(m, c)) }
    })
}

/// Change the kind of checkpoints the VM takes: a `ckpt_checkpoint_type`
/// value.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (unknown type), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_set_checkpoint_type(
    vm: *mut ckpt_vm,
    checkpoint_type: u32,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_set_checkpoint_type", {
        let t = checkpoint_type_of(checkpoint_type)?;
        // SAFETY: per this function's contract.
        unsafe { change_settings(vm, |s| s.checkpoint_type = t) }
    })
}

/// Change where new checkpoints keep their configuration copy and memory
/// state (`location` NULL: the folder `checkpoints` in the VM folder). A
/// relative path is taken from the current directory. Existing checkpoints
/// stay where they are.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (empty or non-UTF-8 path), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `location` is NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_set_checkpoint_location(
    vm: *mut ckpt_vm,
    location: *const c_char,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_set_checkpoint_location", {
        // SAFETY: per this function's contract.
        let loc = unsafe { c_vm_path_opt(location, "location")? }.map(|p| p.to_path_buf());
        // SAFETY: per this function's contract.
        unsafe { change_settings(vm, |s| s.checkpoint_location = loc) }
    })
}

/// Warn about checkpoints older than `seconds` (0: never warn).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_set_age_warning(vm: *mut ckpt_vm, seconds: u64) -> ckpt_status {
    ffi_boundary!("ckpt_vm_set_age_warning", {
        let warn = (seconds != 0).then_some(seconds);
        // SAFETY: per this function's contract.
        unsafe { change_settings(vm, |s| s.age_warning_seconds = warn) }
    })
}

/// Mark the VM with a role whose checkpoints are risky to apply: `role`
/// is "domain-controller", "cluster-member" or "replicated"; NULL or
/// "none" clears it. A checkpoint of such a VM is still taken, with a
/// warning recorded with it (`"warnings"` in `ckpt_vm_checkpoints_json`),
/// and `ckpt monitor` reports it as WARNING. `ckpt_vm_show_json` has the
/// role as `"role"`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`vm`), `CKPT_STATUS_INVALID_ARGUMENT`
/// (unknown role), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `role` is NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_set_role(vm: *mut ckpt_vm, role: *const c_char) -> ckpt_status {
    ffi_boundary!("ckpt_vm_set_role", {
        let role = if role.is_null() {
            None
        } else {
            // SAFETY: per this function's contract.
            match unsafe { c_str(role, "role")? } {
                "none" => None,
                name => Some(name.parse::<crate::checkpoint::VmRole>()?),
            }
        };
        // SAFETY: per this function's contract.
        unsafe { change_settings(vm, |s| s.role = role) }
    })
}

/// Replace the hypervisor's own settings with the JSON text `json` (kept as
/// it is, copied into checkpoints, restored by apply).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (not
/// JSON), `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `json` is NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_set_hypervisor_settings(
    vm: *mut ckpt_vm,
    json: *const c_char,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_set_hypervisor_settings", {
        // SAFETY: per this function's contract.
        let text = unsafe { c_str(json, "json")? };
        let value = parse_json(text, "json")?;
        // SAFETY: per this function's contract.
        unsafe { change(vm, |v| v.set_hypervisor_settings(value)) }
    })
}
