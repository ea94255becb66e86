//! `ckpt_vm`: a VM folder and its checkpoint tree, with the hypervisor's
//! callbacks (`ckpt_hooks`) for quiescing the guest, saving its memory
//! state and following progress.
//!
//! File by file: `mod.rs` the handle and its lock; `types.rs` the C enums
//! and versioned structs; `hooks.rs` the callbacks adapter; `lifecycle.rs`
//! create, open, close; `settings.rs`; `views.rs` and `getters.rs` what a
//! caller reads; `checkpoints.rs` and `ids.rs` the checkpoint operations
//! (by index, by id); `backup.rs` incremental export and the changes
//! iterator; `rbd.rs` RBD diff streams; `live.rs` the live disk handles (`ckpt_vm_disk`);
//! `control.rs` the control channel. Depends on `crate::checkpoint` and the
//! shared helpers of `ffi` (panic boundary, strings, versioned structs);
//! nothing in the library depends on it.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::io::Write;
use std::mem::size_of;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::chain::{ckpt_progress_fn, CProgress};
use super::{
    c_name, c_str, c_vm_path, c_vm_path_opt, ckpt_status, ffi_boundary, non_null, out_ptr,
    path_bytes, read_versioned, read_versioned_since, write_measured, write_versioned, FfiError,
    FfiResult,
};
use crate::checkpoint::json::{checkpoints_json, export_json, vm_json};
use crate::checkpoint::{
    list_of, CheckpointType, CheckpointView, Hooks, Settings, TakenType, Vm, VmSpec, VmState,
};

// cbindgen reads these modules in this order, and the order of the items
// in include/libckpt.h follows it: keep the blank lines, so that rustfmt
// does not sort them.
mod types;

mod hooks;

mod lifecycle;

mod settings;

mod views;

mod checkpoints;

mod getters;

mod ids;

mod backup;
/// Reference points.
mod reference;

mod rbd;

mod control;
mod live;

#[cfg(test)]
mod tests;

pub use backup::*;
pub use checkpoints::*;
pub use control::*;
pub use getters::*;
pub use hooks::*;
pub use ids::*;
pub use lifecycle::*;
pub use live::*;
pub use rbd::*;
pub use reference::*;
pub use settings::*;
pub use types::*;
pub use views::*;

/// An open VM folder (opaque): its configuration, checkpoint settings,
/// state and checkpoint tree.
///
/// Ownership: `ckpt_vm_create` and `ckpt_vm_open` give the caller a handle;
/// the caller gives it back with `ckpt_vm_close`, exactly once. While the
/// handle is open it holds the VM's lock: another process (or another
/// handle) opening the same VM gets `CKPT_STATUS_BUSY`.
///
/// Thread safety: one call at a time per handle. A call made while another
/// call on the same handle is running (from another thread, or from a
/// callback of the running call) fails with `CKPT_STATUS_BUSY` instead of
/// waiting. `ckpt_vm_close` must not run at the same time as, or before,
/// any other call on the same handle.
///
/// String getters (names, paths, the JSON views): a call that fails with
/// `CKPT_STATUS_BUFFER_TOO_SMALL` keeps the text it measured for the next
/// call of the same getter with the same arguments, so the size-then-fill
/// idiom never fails, even when ages tick between the two calls (see
/// `ckpt_vm_checkpoints_json`).
pub struct ckpt_vm {
    inner: Mutex<VmHandle>,
}

pub(super) struct VmHandle {
    /// The live disk handles lent out (`ckpt_vm_disk`); dropped before
    /// `vm`, so that the VM detaches with no holder left.
    borrowed: live::Borrowed,
    vm: Vm,
    /// The measured checkpoint list `ckpt_vm_checkpoint_get` reads; dropped
    /// by every change and by `ckpt_vm_checkpoint_count`.
    views: Option<Vec<CheckpointView>>,
    /// Texts a string getter measured for a buffer that was too small,
    /// handed out as they are by the next call of the same getter with the
    /// same arguments (so the size it reported is the size it fills).
    /// Dropped by every change.
    snapshots: HashMap<SnapshotKey, Vec<u8>>,
    /// The files the last successful export through this handle made.
    last_export: Option<serde_json::Value>,
    /// The warnings of the last change through this handle
    /// ([`Vm::take_warnings`]), read by `ckpt_vm_warnings_json`.
    warnings: Vec<String>,
}

/// A string getter and its index arguments.
pub(super) type SnapshotKey = (&'static str, usize, usize);

/// The string getters of a VM handle: [`write_measured`] on the handle
/// of `vm`, its texts kept in [`VmHandle::snapshots`] (see [`look`] for
/// the handle).
///
/// # Safety
///
/// As for [`look`] and [`write_string`](super::write_string).
pub(super) unsafe fn vm_string(
    vm: *const ckpt_vm,
    key: SnapshotKey,
    what: &str,
    produce: impl FnOnce(&VmHandle) -> FfiResult<Vec<u8>>,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> FfiResult {
    // SAFETY: forwarded from the caller.
    unsafe {
        look(vm, |h| {
            write_measured(h, kept_texts, key, what, produce, buf, len, out_len)
        })
    }
}

fn kept_texts(h: &mut VmHandle) -> &mut HashMap<SnapshotKey, Vec<u8>> {
    &mut h.snapshots
}

pub(super) fn new_handle(mut vm: Vm) -> *mut ckpt_vm {
    let warnings = vm.take_warnings();
    Box::into_raw(Box::new(ckpt_vm {
        inner: Mutex::new(VmHandle {
            borrowed: live::Borrowed::default(),
            vm,
            views: None,
            snapshots: HashMap::new(),
            last_export: None,
            warnings,
        }),
    }))
}

/// Take the handle for one call.
pub(super) fn lock(vm: &ckpt_vm) -> FfiResult<MutexGuard<'_, VmHandle>> {
    match vm.inner.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(FfiError::new(
            ckpt_status::Busy,
            "the VM handle is in use by another call (on another thread, or the call whose \
             callback is running)",
        )),
        Err(TryLockError::Poisoned(_)) => Err(FfiError::new(
            ckpt_status::Panic,
            "an earlier call on this VM handle panicked; close it and open the VM again",
        )),
    }
}

/// Run `f` on the handle's VM for a change (the measured list is dropped);
/// the warnings it leaves replace those of the previous change.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
pub(super) unsafe fn change<T>(
    vm: *const ckpt_vm,
    f: impl FnOnce(&mut Vm) -> crate::Result<T>,
) -> FfiResult<T> {
    // SAFETY: forwarded from the caller.
    let vm = unsafe { non_null(vm, "vm")? };
    let mut h = lock(vm)?;
    h.views = None;
    h.snapshots.clear();
    let r = f(&mut h.vm);
    h.warnings = h.vm.take_warnings();
    Ok(r?)
}

/// Change the VM's checkpoint settings: `f` edits a copy, which is saved.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
pub(super) unsafe fn change_settings(
    vm: *const ckpt_vm,
    f: impl FnOnce(&mut Settings),
) -> FfiResult {
    // SAFETY: forwarded from the caller.
    unsafe {
        change(vm, |v| {
            let mut s = v.data().settings.clone();
            f(&mut s);
            v.set_settings(s)
        })
    }
}

/// Run `f` on the handle (read only).
///
/// # Safety
///
/// `vm` is NULL or a live handle.
pub(super) unsafe fn look<T>(
    vm: *const ckpt_vm,
    f: impl FnOnce(&mut VmHandle) -> FfiResult<T>,
) -> FfiResult<T> {
    // SAFETY: forwarded from the caller.
    let vm = unsafe { non_null(vm, "vm")? };
    let mut h = lock(vm)?;
    f(&mut h)
}

/// `count` C strings from an array.
///
/// # Safety
///
/// `p` is NULL or points to `count` readable pointers, each NULL or a
/// NUL-terminated string.
pub(super) unsafe fn c_strings(
    p: *const *const c_char,
    count: usize,
    what: &str,
    count_field: &str,
) -> FfiResult<Vec<String>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return Err(FfiError::null(
            format!("{what} (with {count_field} {count})").as_str(),
        ));
    }
    let mut out = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        // SAFETY: `i < count` readable pointers per the contract.
        let s = unsafe { p.add(i).read() };
        // SAFETY: NULL or a NUL-terminated string per the contract.
        let s = unsafe { c_name(s, &format!("{what}[{i}]"))? };
        out.push(s.to_string());
    }
    Ok(out)
}

/// The library's spec from the caller's.
///
/// # Safety
///
/// `p` is NULL or a readable `ckpt_vm_spec` of at least `p->struct_size`
/// bytes whose pointers follow the field docs.
pub(super) unsafe fn vm_spec(p: *const ckpt_vm_spec) -> FfiResult<VmSpec> {
    if p.is_null() {
        return Err(FfiError::null("spec"));
    }
    // SAFETY: forwarded; pointers and integers only.
    let Some(c) = (unsafe { read_versioned(p, "spec", "ckpt_vm_spec")? }) else {
        return Err(FfiError::null("spec"));
    };
    if c.reserved != 0 {
        return Err(FfiError::invalid("spec->reserved must be 0"));
    }
    // SAFETY: per the contract, for each pointer below.
    let name = unsafe { c_name(c.name, "spec->name")? };
    // SAFETY: as above.
    let disks = unsafe { c_strings(c.disks, c.disk_count, "spec->disks", "spec->disk_count")? };
    // SAFETY: as above.
    let passthrough = unsafe {
        c_strings(
            c.passthrough,
            c.passthrough_count,
            "spec->passthrough",
            "spec->passthrough_count",
        )?
    };
    // SAFETY: as above.
    let location = unsafe { c_vm_path_opt(c.checkpoint_location, "spec->checkpoint_location")? };
    let hypervisor = if c.hypervisor_json.is_null() {
        serde_json::Value::Null
    } else {
        // SAFETY: as above.
        let text = unsafe { c_str(c.hypervisor_json, "spec->hypervisor_json")? };
        parse_json(text, "spec->hypervisor_json")?
    };
    let mut spec = VmSpec::new(name, disks.into_iter().map(PathBuf::from).collect());
    spec.passthrough = passthrough;
    if c.memory_mib != 0 {
        spec.memory_mib = c.memory_mib;
    }
    if c.cpus != 0 {
        spec.cpus = c.cpus;
    }
    spec.settings = Settings {
        checkpoint_type: match c.checkpoint_type {
            0 => CheckpointType::default(),
            t => checkpoint_type_of(t)?,
        },
        checkpoint_location: location.map(|p| p.to_path_buf()),
        age_warning_seconds: (c.age_warning_seconds != 0).then_some(c.age_warning_seconds),
        role: None,
    };
    spec.hypervisor = hypervisor;
    Ok(spec)
}

pub(super) fn parse_json(text: &str, what: &str) -> FfiResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| FfiError::invalid(format!("{what} is not JSON: {e}")))
}
