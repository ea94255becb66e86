//! The control channel of an open VM handle (`ckpt_vm_serve_control`,
//! `ckpt_vm_stop_control`): other processes of the same user (the `ckpt`
//! tool) run checkpoint operations on this handle, on a library thread.
//! The protocol is in `crate::checkpoint::control`.

use std::sync::Arc;

#[allow(unused_imports)]
use super::*;
use crate::checkpoint::control::{serve_held, ControlServer, HeldVm};

/// The servers running, by the address of their handle.
static SERVERS: Mutex<Vec<(usize, ControlServer)>> = Mutex::new(Vec::new());

/// A VM handle as the server sees it.
struct CHeld(*const ckpt_vm);

// SAFETY: the handle's state is behind its own mutex (`inner`), which
// `with_vm` takes for every request; the pointer stays valid while the
// server runs, because `ckpt_vm_close` stops the server (and waits for its
// threads) before it frees the handle.
unsafe impl Send for CHeld {}
// SAFETY: as for `Send`: all access goes through the handle's mutex.
unsafe impl Sync for CHeld {}

impl HeldVm for CHeld {
    fn with_vm(
        &self,
        f: &mut dyn FnMut(&mut Vm) -> crate::Result<serde_json::Value>,
    ) -> crate::Result<serde_json::Value> {
        // SAFETY: see the `Send` impl: the handle outlives the server.
        let vm = unsafe { &*self.0 };
        // Bounded: a handle busy in this process's calls for too long
        // refuses the request with Busy.
        let mut h = crate::checkpoint::control::wait_for(|| vm.inner.try_lock())?;
        h.views = None;
        h.snapshots.clear();
        f(&mut h.vm)
    }
}

/// The caller's hooks, called from the server's threads.
struct SendHooks(CHooks);

// SAFETY: `ckpt_vm_serve_control`'s contract lets the library call the
// hooks (and pass their `user_data`) from its own threads, one call at a
// time (the server runs one request at a time).
unsafe impl Send for SendHooks {}

impl Hooks for SendHooks {
    fn quiesce(&mut self) -> Result<(), String> {
        self.0.quiesce()
    }
    fn thaw(&mut self) {
        self.0.thaw()
    }
    fn save_memory(&mut self, out: &mut dyn Write) -> std::io::Result<bool> {
        self.0.save_memory(out)
    }
    fn resume(&mut self) {
        self.0.resume()
    }
    fn progress(&mut self, done: u64, total: u64) -> bool {
        self.0.progress(done, total)
    }
}

/// Stop the control server of `vm`, if it has one (waiting for the
/// request it runs). Called by `ckpt_vm_close` before the handle is freed.
pub(super) fn stop_control(vm: *const ckpt_vm) {
    let server = match SERVERS.lock() {
        Ok(mut s) => s
            .iter()
            .position(|(at, _)| *at == vm as usize)
            .map(|k| s.swap_remove(k).1),
        Err(_) => None,
    };
    // Dropped outside the registry's lock: it waits for its threads.
    drop(server);
}

/// Offer the VM's control channel: listen on the Unix socket
/// `DIR/ckpt-control.sock` (mode 0600) and carry out, on this handle, the
/// checkpoint operations that processes of the same user send (the `ckpt`
/// tool forwards `ckpt checkpoint …` and `ckpt vm show|set` to it). A
/// request from another user is refused. The server runs on library
/// threads until `ckpt_vm_stop_control` or `ckpt_vm_close`. A socket left
/// by a holder that was killed is replaced.
///
/// `hooks` (may be NULL: none) quiesce, thaw and save the memory of the
/// guest for the checkpoints these requests take; they are called from a
/// library thread, one at a time, for as long as the server runs (copied:
/// the struct need not outlive the call; its `user_data` must).
///
/// A request takes the handle as any call does, so that a call of this
/// process on the handle while a request runs fails with
/// `CKPT_STATUS_BUSY` (as for two threads); requests wait for this
/// process's calls to end.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT` (the
/// hooks are malformed, or this handle already serves), `CKPT_STATUS_BUSY`
/// (another process serves the socket), `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `vm` is NULL or a live handle; `hooks` is NULL or points to a readable
/// `ckpt_hooks` whose callbacks may be called from any thread until the
/// server stops.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_serve_control(
    vm: *mut ckpt_vm,
    hooks: *const ckpt_hooks,
) -> ckpt_status {
    ffi_boundary!("ckpt_vm_serve_control", {
        // SAFETY: per this function's contract.
        let handle = unsafe { non_null(vm, "vm")? };
        // SAFETY: per this function's contract.
        let hooks = unsafe { hooks_of(hooks)? };
        let mut servers = SERVERS
            .lock()
            .map_err(|_| FfiError::new(ckpt_status::Panic, "the control registry is unusable"))?;
        if servers.iter().any(|(at, _)| *at == vm as usize) {
            return Err(FfiError::invalid(
                "this VM handle already serves its control channel",
            ));
        }
        // Taken (try_lock) only to refuse a handle in use, as every call.
        drop(lock(handle)?);
        let shared: Option<crate::checkpoint::control::SharedHooks> = match hooks.0 {
            Some(_) => Some(Arc::new(Mutex::new(SendHooks(hooks)))),
            None => None,
        };
        let server = serve_held(Arc::new(CHeld(vm)), shared)?;
        servers.push((vm as usize, server));
        Ok(())
    })
}

/// Stop the VM's control channel (waiting for the request it runs) and
/// remove its socket. A handle that does not serve is left as it is;
/// `vm` may be NULL.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_vm_stop_control(vm: *mut ckpt_vm) -> ckpt_status {
    ffi_boundary!("ckpt_vm_stop_control", {
        stop_control(vm);
        Ok(())
    })
}
