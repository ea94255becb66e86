//! Creating, opening and closing a VM, and its facts (`ckpt_vm_get_*`).

#[allow(unused_imports)]
use super::*;

/// Create a VM in the folder `dir` (made if missing; it must not hold a VM
/// yet) from `spec`, and open it. The VM starts off, with no checkpoints;
/// its disks must exist and be sound VHDX files (they are not copied: the
/// VM refers to them by absolute path).
///
/// On success `*out` receives a handle (holding the VM's lock) to close
/// with `ckpt_vm_close`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`dir`, `spec`, `out`, `spec->name`
/// or an array entry NULL), `CKPT_STATUS_INVALID_ARGUMENT` (empty name,
/// a disk given twice, bad JSON, unknown checkpoint type),
/// `CKPT_STATUS_ALREADY_EXISTS` (the folder holds a VM),
/// `CKPT_STATUS_UNSUPPORTED` (a spec from a newer header),
/// `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_CORRUPT` (a disk),
/// `CKPT_STATUS_BUSY`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `dir` is NULL or a NUL-terminated string; `spec` is NULL or a readable
/// `ckpt_vm_spec` of at least `spec->struct_size` bytes whose pointers are
/// NULL or valid as their field docs say; `out` is NULL or valid for
/// writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_create(
    dir: *const c_char,
    spec: *const ckpt_vm_spec,
    out: *mut *mut ckpt_vm,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_create", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let dir = unsafe { c_vm_path(dir, "dir")? };
        // SAFETY: per this function's contract.
        let spec = unsafe { vm_spec(spec)? };
        let vm = Vm::create(dir, &spec)?;
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(new_handle(vm)) };
        Ok(())
    })
}

/// Open the VM in the folder `dir` for changes: take its lock, and finish
/// or undo an operation a crash interrupted there.
///
/// On success `*out` receives a handle to close with `ckpt_vm_close`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
/// `CKPT_STATUS_BUSY` (another process or handle has the VM open),
/// `CKPT_STATUS_NOT_FOUND` (no such folder or no VM in it, or a disk file
/// the tree names is missing), `CKPT_STATUS_CORRUPT` (`vm.json` cannot be
/// read or its tree is inconsistent — a duplicate id or name, a parent
/// that does not exist, a cycle, a disk count that differs from the VM's —
/// or `journal.json` cannot be read; the last error message names the
/// file, what is wrong and what to do), `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `dir` is NULL or a NUL-terminated string; `out` is NULL or valid for
/// writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_open(dir: *const c_char, out: *mut *mut ckpt_vm) -> ckpt_status {
    ffi_boundary!("ckpt_vm_open", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let dir = unsafe { c_vm_path(dir, "dir")? };
        let vm = Vm::open(dir)?;
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(new_handle(vm)) };
        Ok(())
    })
}

/// Release the VM's lock and free the handle. Every change was saved when
/// the call that made it returned, so this cannot fail; it returns
/// `CKPT_STATUS_OK`. `vm` may be NULL.
///
/// # Safety
///
/// `vm` is NULL or a live handle from `ckpt_vm_create` / `ckpt_vm_open`
/// that is not closed yet and that no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_close(vm: *mut ckpt_vm) -> ckpt_status {
    ffi_boundary!("ckpt_vm_close", {
        if vm.is_null() {
            return Ok(());
        }
        // Its control server first: its threads use the handle.
        super::control::stop_control(vm);
        // SAFETY: a live handle made by `new_handle` (Box::into_raw), given
        // back exactly once per the contract.
        drop(unsafe { Box::from_raw(vm) });
        Ok(())
    })
}

/// Fill `*info` with facts about the VM. Set `info->struct_size` to
/// `sizeof(ckpt_vm_info)` first; `*info` is written only on success.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (`struct_size` too small), `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `info` is NULL or points to a readable
/// and writable `ckpt_vm_info` of at least `info->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_get_info(
    vm: *const ckpt_vm,
    info: *mut ckpt_vm_info,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_get_info", {
        out_ptr(info, "info")?;
        // SAFETY: per this function's contract.
        let value = unsafe {
            look(vm, |h| {
                let d = h.vm.data();
                Ok(ckpt_vm_info {
                    struct_size: size_of::<ckpt_vm_info>() as u32,
                    state: d.state.into(),
                    checkpoint_type: d.settings.checkpoint_type.into(),
                    cpus: d.config.cpus,
                    memory_mib: d.config.memory_mib,
                    disk_count: count_u32(d.current.disks.len()),
                    passthrough_count: count_u32(d.config.passthrough.len()),
                    checkpoint_count: count_u32(d.checkpoints.len()),
                    has_current_checkpoint: d.current_checkpoint().is_some(),
                    has_saved_state: d.current.saved_state.is_some(),
                    delete_pending: h.vm.delete_pending(),
                    role: match d.settings.role {
                        None => CKPT_VM_ROLE_NONE,
                        Some(crate::checkpoint::VmRole::DomainController) => {
                            CKPT_VM_ROLE_DOMAIN_CONTROLLER
                        }
                        Some(crate::checkpoint::VmRole::ClusterMember) => {
                            CKPT_VM_ROLE_CLUSTER_MEMBER
                        }
                        Some(crate::checkpoint::VmRole::Replicated) => CKPT_VM_ROLE_REPLICATED,
                    },
                    age_warning_seconds: d.settings.age_warning_seconds.unwrap_or(0),
                })
            })?
        };
        // SAFETY: per this function's contract.
        unsafe { write_versioned(info, value, "info", "ckpt_vm_info") }
    })
}

pub(super) fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Copy the VM's name into `buf` (a string getter, as described at
/// `ckpt_disk_get_parent_path`).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_get_name(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_get_name", {
        let produce = |h: &VmHandle| Ok(h.vm.data().config.name.as_bytes().to_vec());
        // SAFETY: per this function's contract.
        unsafe {
            vm_string(
                vm,
                ("name", 0, 0),
                "the VM name",
                produce,
                buf,
                len,
                out_len,
            )
        }
    })
}

/// Copy the absolute path of the VM folder into `buf` (a string getter, as
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
pub unsafe extern "C" fn ckpt_vm_get_dir(
    vm: *const ckpt_vm,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_get_dir", {
        let produce = |h: &VmHandle| Ok(path_bytes(h.vm.dir()).to_vec());
        // SAFETY: per this function's contract.
        unsafe {
            vm_string(
                vm,
                ("dir", 0, 0),
                "the VM folder",
                produce,
                buf,
                len,
                out_len,
            )
        }
    })
}

/// Copy the path of the file the VM writes disk `index` to now (its
/// newest differencing disk, or the base disk before any checkpoint) into
/// `buf` (a string getter, as described at `ckpt_disk_get_parent_path`).
/// This is the file to give the hypervisor, or to open with
/// `ckpt_disk_open`. It changes with every checkpoint operation.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_BUFFER_TOO_SMALL`,
/// `CKPT_STATUS_INVALID_ARGUMENT` (`index` not less than
/// `ckpt_vm_info.disk_count`), `CKPT_STATUS_BUSY`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `len` bytes; `out_len` is NULL or valid for writing one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_current_disk_path(
    vm: *const ckpt_vm,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_current_disk_path", {
        let produce = |h: &VmHandle| {
            let disks = &h.vm.data().current.disks;
            let p = disks.get(index).ok_or_else(|| {
                FfiError::invalid(format!(
                    "disk index {index}: the VM has {} disks",
                    disks.len()
                ))
            })?;
            Ok(path_bytes(p).to_vec())
        };
        let key = ("current_disk_path", index, 0);
        // SAFETY: per this function's contract.
        unsafe { vm_string(vm, key, "the disk path", produce, buf, len, out_len) }
    })
}
