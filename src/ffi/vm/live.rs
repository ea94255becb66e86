//! `ckpt_vm_disk`: the live disk handles of a running VM, borrowed from
//! the `ckpt_vm` (see `Vm::disk`).

use std::sync::Arc;

use super::super::disk::{ckpt_disk, DiskHandle};
use super::*;

/// The `ckpt_disk` handles a VM lent out, freed with the VM handle.
#[derive(Default)]
pub(super) struct Borrowed {
    /// By disk index; each made by `Box::into_raw`.
    disks: Vec<Option<*mut ckpt_disk>>,
}

// SAFETY: the pointers are owned boxes of `ckpt_disk`, which is Send + Sync
// (an `Arc<LiveDisk>` or a `Disk`); they are only freed in `drop`.
unsafe impl Send for Borrowed {}

impl Drop for Borrowed {
    fn drop(&mut self) {
        for p in self.disks.drain(..).flatten() {
            // SAFETY: made by `Box::into_raw` below, freed once, here; the
            // caller's contract (`ckpt_vm_close`) says no one uses it now.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// The live handle of disk `index` of the VM's current state (the order of
/// the VM's disks; pass-through devices are not disks), for the guest's
/// I/O.
///
/// The first call attaches the VM: every current disk is opened for
/// reading and writing (all or none; a disk open elsewhere is
/// `CKPT_STATUS_BUSY`, and then none stays open). Later calls give the same
/// handle for the same index. `*out` is written only on success.
///
/// The handle is borrowed from `vm`: valid until `ckpt_vm_close`, which
/// flushes and closes it; `ckpt_disk_close` refuses it
/// (`CKPT_STATUS_INVALID_ARGUMENT`). It takes every `ckpt_disk_*` call and
/// may be used from any thread, also while a call on `vm` runs: checkpoint
/// create switches it to the new differencing disk in a short pause (its
/// requests wait, none fails), apply and revert (guest stopped or saved)
/// switch it to the new current state. Its identity never changes.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (`index` past the last disk: nothing is attached; or a disk another VM
/// uses), `CKPT_STATUS_BUSY` (a disk is open elsewhere, or the handle is in
/// use by another call), `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `out` is NULL or valid for writing one
/// pointer. Every borrowed disk handle must be out of use (on every thread)
/// before `ckpt_vm_close`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_disk(
    vm: *const ckpt_vm,
    index: usize,
    out: *mut *mut ckpt_disk,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_disk", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let p = unsafe {
            look(vm, |h| {
                if let Some(Some(p)) = h.borrowed.disks.get(index) {
                    return Ok(*p);
                }
                let live: Arc<crate::LiveDisk> = h.vm.disk(index)?;
                let p = Box::into_raw(Box::new(ckpt_disk {
                    disk: DiskHandle::Live(live),
                }));
                if h.borrowed.disks.len() <= index {
                    h.borrowed.disks.resize(index + 1, None);
                }
                h.borrowed.disks[index] = Some(p);
                Ok(p)
            })?
        };
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(p) };
        Ok(())
    })
}
