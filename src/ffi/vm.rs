//! `ckpt_vm`: a VM folder and its checkpoint tree, with the hypervisor's
//! callbacks (`ckpt_hooks`) for quiescing the guest, saving its memory
//! state and following progress.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::io::Write;
use std::mem::size_of;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::chain::{ckpt_progress_fn, CProgress};
use super::{
    c_name, c_path, c_path_opt, c_str, ckpt_status, ffi_boundary, non_null, out_ptr, path_bytes,
    read_versioned, write_string, write_versioned, FfiError, FfiResult,
};
use crate::checkpoint::json::{checkpoints_json, export_json, vm_json};
use crate::checkpoint::{
    list_of, CheckpointType, CheckpointView, Hooks, Settings, TakenType, Vm, VmSpec, VmState,
};

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

struct VmHandle {
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
}

/// A string getter and its index arguments.
type SnapshotKey = (&'static str, usize, usize);

/// The size-then-fill contract of every string getter of a VM handle: the
/// text `produce` makes, unless a call that found the buffer too small
/// measured one for `key`; that text is kept for the next call instead of
/// being measured again, so that the length it reported always suffices
/// (the ages in the checkpoint list tick between the two calls).
///
/// # Safety
///
/// As for [`write_string`].
unsafe fn snapshot_string(
    h: &mut VmHandle,
    key: SnapshotKey,
    what: &str,
    produce: impl FnOnce(&VmHandle) -> FfiResult<Vec<u8>>,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> FfiResult {
    let bytes = match h.snapshots.remove(&key) {
        Some(b) => b,
        None => produce(h)?,
    };
    // SAFETY: forwarded from the caller.
    let r = unsafe { write_string(&bytes, buf, len, out_len, what) };
    if matches!(&r, Err(e) if e.status == ckpt_status::BufferTooSmall) {
        h.snapshots.insert(key, bytes);
    }
    r
}

/// The per-VM checkpoint setting (`ckpt_vm_spec.checkpoint_type`,
/// `ckpt_vm_set_checkpoint_type`, `ckpt_vm_info.checkpoint_type`,
/// `ckpt_checkpoint_info.requested`). Where a function takes it as a
/// `uint32_t`, other values are refused with
/// `CKPT_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_checkpoint_type {
    /// No checkpoints can be taken.
    Disabled = 1,
    /// Disks, configuration and memory state (from the `save_memory` hook).
    Standard = 2,
    /// Quiesce the guest (the `quiesce` hook), keep no memory state; when
    /// quiescing fails, take a standard checkpoint instead and record why.
    /// The default.
    Production = 3,
    /// Quiesce the guest or fail.
    ProductionOnly = 4,
}

/// The kind a checkpoint really is (`ckpt_checkpoint_info.taken`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_taken_type {
    /// Taken without quiescing; holds memory state when the `save_memory`
    /// hook gave one.
    Standard = 1,
    /// The guest was quiesced; no memory state.
    Production = 2,
}

/// The VM's state as the hypervisor reports it (`ckpt_vm_set_state`,
/// `ckpt_vm_info.state`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_vm_state {
    /// Not running.
    Off = 1,
    /// Running.
    Running = 2,
    /// Saved: memory state waits to be resumed (after applying a standard
    /// checkpoint).
    Saved = 3,
}

fn checkpoint_type_of(v: u32) -> FfiResult<CheckpointType> {
    Ok(match v {
        1 => CheckpointType::Disabled,
        2 => CheckpointType::Standard,
        3 => CheckpointType::Production,
        4 => CheckpointType::ProductionOnly,
        _ => {
            return Err(FfiError::invalid(format!(
                "checkpoint type {v}: expected a CKPT_CHECKPOINT_TYPE_* value (1 to 4)"
            )))
        }
    })
}

fn c_checkpoint_type(t: CheckpointType) -> ckpt_checkpoint_type {
    match t {
        CheckpointType::Disabled => ckpt_checkpoint_type::Disabled,
        CheckpointType::Standard => ckpt_checkpoint_type::Standard,
        CheckpointType::Production => ckpt_checkpoint_type::Production,
        CheckpointType::ProductionOnly => ckpt_checkpoint_type::ProductionOnly,
    }
}

fn c_vm_state(s: VmState) -> ckpt_vm_state {
    match s {
        VmState::Off => ckpt_vm_state::Off,
        VmState::Running => ckpt_vm_state::Running,
        VmState::Saved => ckpt_vm_state::Saved,
    }
}

/// Parameters of `ckpt_vm_create` (a versioned struct, used like
/// `ckpt_create_options`: set `struct_size` to `sizeof(ckpt_vm_spec)`,
/// everything else to 0 or NULL, then fill in what you need; 0 and NULL
/// take the default).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ckpt_vm_spec {
    /// `sizeof(ckpt_vm_spec)` as compiled by the caller.
    pub struct_size: u32,
    /// A `CKPT_CHECKPOINT_TYPE_*` value. 0: production.
    pub checkpoint_type: u32,
    /// The VM's name (required, not empty).
    pub name: *const c_char,
    /// `disk_count` paths of the VM's VHDX disks (each a base disk or a
    /// chain). NULL only when `disk_count` is 0.
    pub disks: *const *const c_char,
    /// Number of entries in `disks`.
    pub disk_count: usize,
    /// `passthrough_count` pass-through devices (host disks the VM uses
    /// directly; never checkpointed, recorded as skipped). NULL only when
    /// `passthrough_count` is 0.
    pub passthrough: *const *const c_char,
    /// Number of entries in `passthrough`.
    pub passthrough_count: usize,
    /// Memory in MiB. 0: 1024.
    pub memory_mib: u64,
    /// Virtual CPUs. 0: 1.
    pub cpus: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Where configuration copies and memory state of checkpoints go.
    /// NULL: the folder `checkpoints` in the VM folder.
    pub checkpoint_location: *const c_char,
    /// The hypervisor's own settings, as a JSON text kept as it is (and
    /// restored by apply). NULL: none.
    pub hypervisor_json: *const c_char,
    /// Warn (in `ckpt_checkpoint_info.age_warning` and the JSON) about
    /// checkpoints older than this many seconds. 0: never.
    pub age_warning_seconds: u64,
}

/// Facts about an open VM, filled by `ckpt_vm_get_info` (a versioned output
/// struct, used like `ckpt_disk_info`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ckpt_vm_info {
    /// In: `sizeof(ckpt_vm_info)` as compiled by the caller. Out: the
    /// number of bytes the library wrote.
    pub struct_size: u32,
    /// Off, running or saved.
    pub state: ckpt_vm_state,
    /// The checkpoint setting.
    pub checkpoint_type: ckpt_checkpoint_type,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Number of VHDX disks (see `ckpt_vm_current_disk_path`).
    pub disk_count: u32,
    /// Number of pass-through devices.
    pub passthrough_count: u32,
    /// Number of checkpoints, hidden ones included (see
    /// `ckpt_vm_checkpoint_get`).
    pub checkpoint_count: u32,
    /// Whether the current state hangs under a checkpoint (one that is not
    /// hidden: the one `ckpt_vm_checkpoint_revert` goes back to).
    pub has_current_checkpoint: bool,
    /// Whether the current state has memory state to resume from.
    pub has_saved_state: bool,
    /// Always 0.
    pub reserved: [u8; 2],
    /// The age warning in seconds (0: none).
    pub age_warning_seconds: u64,
}

/// One checkpoint, filled by `ckpt_vm_checkpoint_get` (a versioned output
/// struct, used like `ckpt_disk_info`). Its strings (name, id, fallback
/// reason, disk paths) come from the `ckpt_vm_checkpoint_*` getters with
/// the same index.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ckpt_checkpoint_info {
    /// In: `sizeof(ckpt_checkpoint_info)` as compiled by the caller. Out:
    /// the number of bytes the library wrote.
    pub struct_size: u32,
    /// The kind the checkpoint really is.
    pub taken: ckpt_taken_type,
    /// The kind the VM's setting asked for when it was taken.
    pub requested: ckpt_checkpoint_type,
    /// Number of frozen disks (see `ckpt_vm_checkpoint_disk_path`).
    pub disk_count: u32,
    /// The index of the parent checkpoint in the same list, or -1 for a
    /// root. Parents come before their children.
    pub parent_index: i64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Seconds since it was taken.
    pub age_seconds: u64,
    /// Bytes the differencing disks of the checkpoint use on the host.
    pub size_bytes: u64,
    /// Upper bound of the bytes deleting it would copy.
    pub delete_copy_bytes: u64,
    /// Files in the chain under its first disk (1 for a base disk).
    pub chain_depth: u32,
    /// Number of pass-through devices that were not checkpointed.
    pub skipped_passthrough_count: u32,
    /// A deleted branch point kept only because two or more states still
    /// read its disks; it has no name lookups and cannot be applied.
    pub hidden: bool,
    /// Whether it holds memory state.
    pub has_saved_state: bool,
    /// Whether it has a fallback reason (`taken` differs from what was
    /// asked for; see `ckpt_vm_checkpoint_fallback_reason`).
    pub has_fallback_reason: bool,
    /// Whether it is older than the VM's age warning.
    pub age_warning: bool,
    /// Whether it is the checkpoint the current state hangs under (the one
    /// revert goes back to; never a hidden one: after the checkpoint the
    /// current state hung under is deleted, that is its parent).
    pub is_current_parent: bool,
    /// Whether it is being deleted: a delete was cancelled or failed after
    /// its disks began to change, so they no longer hold its data. It can
    /// no longer be applied or exported (`CKPT_STATUS_BUSY`), and the next
    /// change to the VM (or `ckpt_vm_open`) finishes the delete first.
    pub deleting: bool,
    /// Always 0.
    pub reserved: [u8; 2],
}

// The layouts are ABI (on 64-bit targets, where the pointer-holding
// structs are measured).
const _: () = assert!(size_of::<ckpt_vm_info>() == 48);
const _: () = assert!(size_of::<ckpt_checkpoint_info>() == 72);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<ckpt_vm_spec>() == 88);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<ckpt_hooks>() == 48);

/// The `quiesce` hook: ask the guest to flush its applications and freeze
/// its file systems for a production checkpoint. Return 0 when it is
/// quiesced; any other value means it could not be (a production
/// checkpoint then falls back to standard, a production-only one fails).
pub type ckpt_quiesce_fn = Option<unsafe extern "C" fn(user: *mut c_void) -> c_int>;

/// The `thaw` hook: undo a successful `quiesce`; called once the disks are
/// checkpointed (also when taking the checkpoint failed).
pub type ckpt_thaw_fn = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// The `save_memory` hook: write the VM's memory and CPU state for a
/// standard checkpoint, through `ckpt_writer_write(writer, ...)` as many
/// times as needed. Return 0 when the state was written, 1 when there is
/// none (the VM is off; the checkpoint then holds no memory state), any
/// other value on failure (the checkpoint is not taken). `writer` is
/// valid only during the call.
pub type ckpt_save_memory_fn =
    Option<unsafe extern "C" fn(writer: *mut ckpt_writer, user: *mut c_void) -> c_int>;

/// What the hypervisor does for the library during checkpoint operations
/// (a versioned struct: set `struct_size` to `sizeof(ckpt_hooks)`, the rest
/// to 0/NULL, then set the callbacks you have). Every callback may be NULL;
/// a function taking `const ckpt_hooks *` also accepts NULL for "no hooks".
///
/// Without `quiesce`, quiescing fails (production checkpoints fall back to
/// standard); without `save_memory`, standard checkpoints hold no memory
/// state; without `progress`, nothing is reported and nothing cancels.
///
/// Every callback gets `user` as its last argument, runs on the calling
/// thread inside the library call, and must return normally: never
/// `longjmp` out of it or let a C++ exception escape it. It must not call
/// functions on the `ckpt_vm` the running call uses (they fail with
/// `CKPT_STATUS_BUSY`); other libckpt calls are fine.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ckpt_hooks {
    /// `sizeof(ckpt_hooks)` as compiled by the caller.
    pub struct_size: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Quiesce the guest (production checkpoints); NULL: cannot.
    pub quiesce: ckpt_quiesce_fn,
    /// Thaw the guest after a successful quiesce; NULL: nothing to do.
    pub thaw: ckpt_thaw_fn,
    /// Write memory state (standard checkpoints); NULL: none.
    pub save_memory: ckpt_save_memory_fn,
    /// Progress of long steps (the merges of a delete, the copies of an
    /// export); non-zero cancels with `CKPT_STATUS_CANCELLED`.
    pub progress: ckpt_progress_fn,
    /// Passed to every callback.
    pub user: *mut c_void,
}

/// The stream a `save_memory` hook writes the memory state into (opaque;
/// only valid during that callback).
pub struct ckpt_writer<'a> {
    out: &'a mut dyn Write,
    /// The first write error, which fails the checkpoint whatever the
    /// callback returns.
    error: Option<String>,
}

/// The hooks a C caller gave, as the library's [`Hooks`].
struct CHooks(Option<ckpt_hooks>);

impl Hooks for CHooks {
    fn quiesce(&mut self) -> Result<(), String> {
        let Some(h) = &self.0 else {
            return Err("no hooks were given (hooks is NULL)".into());
        };
        let Some(f) = h.quiesce else {
            return Err("no quiesce callback was given".into());
        };
        // SAFETY: the caller of the exported function gave a callback that
        // may be called with `user` during the call.
        match unsafe { f(h.user) } {
            0 => Ok(()),
            rc => Err(format!("the quiesce callback returned {rc}")),
        }
    }

    fn thaw(&mut self) {
        if let Some(h) = &self.0 {
            if let Some(f) = h.thaw {
                // SAFETY: as in `quiesce`.
                unsafe { f(h.user) }
            }
        }
    }

    fn save_memory(&mut self, out: &mut dyn Write) -> std::io::Result<bool> {
        let Some(h) = &self.0 else { return Ok(false) };
        let Some(f) = h.save_memory else {
            return Ok(false);
        };
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut w = ckpt_writer {
            out: &mut buffered,
            error: None,
        };
        // SAFETY: as in `quiesce`; `w` outlives the call, and the contract
        // forbids keeping the pointer after it.
        let rc = unsafe { f(&mut w, h.user) };
        if let Some(e) = w.error.take() {
            return Err(std::io::Error::other(format!(
                "writing the memory state failed: {e}"
            )));
        }
        match rc {
            0 => {
                buffered.flush()?;
                Ok(true)
            }
            1 => Ok(false),
            rc => Err(std::io::Error::other(format!(
                "the save_memory callback returned {rc}"
            ))),
        }
    }

    fn progress(&mut self, done: u64, total: u64) -> bool {
        match &self.0 {
            Some(h) => CProgress {
                f: h.progress,
                user: h.user,
            }
            .call(done, total),
            None => true,
        }
    }
}

/// # Safety
///
/// As for [`read_versioned`].
unsafe fn hooks_of(p: *const ckpt_hooks) -> FfiResult<CHooks> {
    // SAFETY: forwarded; every bit pattern of pointers and optional
    // function pointers is valid.
    let h = unsafe { read_versioned(p, "hooks", "ckpt_hooks")? };
    if let Some(h) = &h {
        if h.reserved != 0 {
            return Err(FfiError::invalid("hooks->reserved must be 0"));
        }
    }
    Ok(CHooks(h))
}

/// Write `len` bytes from `buf` to the memory-state stream of a
/// `save_memory` callback. Call it only from inside that callback, with
/// the `writer` it received. With `len == 0`, `buf` is not touched.
///
/// After a failed write the checkpoint fails, whatever the callback
/// returns; the callback should return a non-zero value.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_IO` (for example the
/// disk is full).
///
/// # Safety
///
/// `writer` is NULL or the pointer a running `save_memory` callback
/// received; `buf` is valid for reads of `len` bytes when `len > 0`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_writer_write(
    writer: *mut ckpt_writer,
    buf: *const u8,
    len: usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_writer_write", {
        // SAFETY: per this function's contract: the live writer of the
        // running callback, used by one thread.
        let w = unsafe { writer.as_mut() }.ok_or_else(|| FfiError::null("writer"))?;
        if len == 0 {
            return Ok(());
        }
        if buf.is_null() {
            return Err(FfiError::null("buf"));
        }
        // SAFETY: not NULL, `len` readable bytes per the contract.
        let data = unsafe { std::slice::from_raw_parts(buf, len) };
        if let Err(e) = w.out.write_all(data) {
            let msg = e.to_string();
            w.error.get_or_insert(msg.clone());
            return Err(FfiError::new(
                ckpt_status::Io,
                format!("writing the memory state: {msg}"),
            ));
        }
        Ok(())
    })
}

fn new_handle(vm: Vm) -> *mut ckpt_vm {
    Box::into_raw(Box::new(ckpt_vm {
        inner: Mutex::new(VmHandle {
            vm,
            views: None,
            snapshots: HashMap::new(),
            last_export: None,
        }),
    }))
}

/// Take the handle for one call.
fn lock(vm: &ckpt_vm) -> FfiResult<MutexGuard<'_, VmHandle>> {
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

/// Run `f` on the handle's VM for a change (the measured list is dropped).
///
/// # Safety
///
/// `vm` is NULL or a live handle.
unsafe fn change<T>(
    vm: *const ckpt_vm,
    f: impl FnOnce(&mut Vm) -> crate::Result<T>,
) -> FfiResult<T> {
    // SAFETY: forwarded from the caller.
    let vm = unsafe { non_null(vm, "vm")? };
    let mut h = lock(vm)?;
    h.views = None;
    h.snapshots.clear();
    Ok(f(&mut h.vm)?)
}

/// Change the VM's checkpoint settings: `f` edits a copy, which is saved.
///
/// # Safety
///
/// `vm` is NULL or a live handle.
unsafe fn change_settings(vm: *const ckpt_vm, f: impl FnOnce(&mut Settings)) -> FfiResult {
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
unsafe fn look<T>(
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
unsafe fn c_strings(
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
unsafe fn vm_spec(p: *const ckpt_vm_spec) -> FfiResult<VmSpec> {
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
    let location = unsafe { c_path_opt(c.checkpoint_location, "spec->checkpoint_location")? };
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
    };
    spec.hypervisor = hypervisor;
    Ok(spec)
}

fn parse_json(text: &str, what: &str) -> FfiResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| FfiError::invalid(format!("{what} is not JSON: {e}")))
}

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
        let dir = unsafe { c_path(dir, "dir")? };
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
        let dir = unsafe { c_path(dir, "dir")? };
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
                    state: c_vm_state(d.state),
                    checkpoint_type: c_checkpoint_type(d.settings.checkpoint_type),
                    cpus: d.config.cpus,
                    memory_mib: d.config.memory_mib,
                    disk_count: count_u32(d.current.disks.len()),
                    passthrough_count: count_u32(d.config.passthrough.len()),
                    checkpoint_count: count_u32(d.checkpoints.len()),
                    has_current_checkpoint: d.current_checkpoint().is_some(),
                    has_saved_state: d.current.saved_state.is_some(),
                    reserved: [0; 2],
                    age_warning_seconds: d.settings.age_warning_seconds.unwrap_or(0),
                })
            })?
        };
        // SAFETY: per this function's contract.
        unsafe { write_versioned(info, value, "info", "ckpt_vm_info") }
    })
}

fn count_u32(n: usize) -> u32 {
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
        // SAFETY: per this function's contract.
        unsafe {
            look(vm, |h| {
                let produce = |h: &VmHandle| Ok(h.vm.data().config.name.as_bytes().to_vec());
                snapshot_string(h, ("name", 0, 0), "the VM name", produce, buf, len, out_len)
            })
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
        // SAFETY: per this function's contract.
        unsafe {
            look(vm, |h| {
                let produce = |h: &VmHandle| Ok(path_bytes(h.vm.dir()).to_vec());
                snapshot_string(
                    h,
                    ("dir", 0, 0),
                    "the VM folder",
                    produce,
                    buf,
                    len,
                    out_len,
                )
            })
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
        // SAFETY: per this function's contract.
        unsafe {
            look(vm, |h| {
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
                snapshot_string(h, key, "the disk path", produce, buf, len, out_len)
            })
        }
    })
}

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
        let state = match state {
            1 => VmState::Off,
            2 => VmState::Running,
            3 => VmState::Saved,
            s => {
                return Err(FfiError::invalid(format!(
                    "state {s}: expected a CKPT_VM_STATE_* value (1 to 3)"
                )))
            }
        };
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
        let loc = unsafe { c_path_opt(location, "location")? }.map(|p| p.to_path_buf());
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

fn json_text(v: &serde_json::Value) -> FfiResult<String> {
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
        // SAFETY: per this function's contract.
        unsafe {
            look(vm, |h| {
                let produce = |h: &VmHandle| Ok(json_text(&vm_json(h.vm.data()))?.into_bytes());
                snapshot_string(h, ("show", 0, 0), "the VM JSON", produce, buf, len, out_len)
            })
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
        // SAFETY: per this function's contract.
        unsafe {
            look(vm, |h| {
                let produce =
                    |h: &VmHandle| Ok(json_text(&checkpoints_json(h.vm.data())?)?.into_bytes());
                let what = "the checkpoints JSON";
                snapshot_string(h, ("checkpoints", 0, 0), what, produce, buf, len, out_len)
            })
        }
    })
}

/// Set `*out` to the number of checkpoints of the VM, hidden ones
/// included. Indexes `0 .. *out - 1` are valid for `ckpt_vm_checkpoint_get`
/// and the other `ckpt_vm_checkpoint_*` getters until the next change
/// through the handle; parents come before their children.
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

fn bad_index(index: usize, n: usize) -> FfiError {
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
        let value = unsafe {
            look(vm, |h| {
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
                    taken: match c.taken {
                        TakenType::Standard => ckpt_taken_type::Standard,
                        TakenType::Production => ckpt_taken_type::Production,
                    },
                    requested: c_checkpoint_type(c.requested),
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
                    is_current_parent: data.current_checkpoint().map(|x| x.id.as_str())
                        == Some(c.id.as_str()),
                    deleting: c.deleting,
                    reserved: [0; 2],
                })
            })?
        };
        // SAFETY: per this function's contract.
        unsafe { write_versioned(info, value, "info", "ckpt_checkpoint_info") }
    })
}

/// Which string of a checkpoint a getter returns.
enum Field {
    Name,
    Id,
    FallbackReason,
    Disk(usize),
}

/// # Safety
///
/// As for the string getters.
unsafe fn checkpoint_string(
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
    unsafe {
        look(vm, |h| {
            snapshot_string(h, key, what, produce, buf, len, out_len)
        })
    }
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
/// `ckpt_disk_get_parent_path`).
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
        let dest = unsafe { c_path(dest_dir, "dest_dir")? };
        // SAFETY: per this function's contract.
        let mut hooks = unsafe { hooks_of(hooks)? };
        // SAFETY: per this function's contract.
        let vm = unsafe { non_null(vm, "vm")? };
        let mut h = lock(vm)?;
        h.views = None;
        h.snapshots.clear();
        h.last_export = None;
        let disk_count = h.vm.data().disks.len();
        let files = h.vm.export(name, dest, &mut hooks)?;
        h.last_export = Some(export_json(&files, disk_count));
        Ok(())
    })
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
        // SAFETY: per this function's contract.
        unsafe {
            look(vm, |h| {
                let produce = |h: &VmHandle| match &h.last_export {
                    Some(v) => Ok(json_text(v)?.into_bytes()),
                    None => Err(FfiError::new(
                        ckpt_status::NotFound,
                        "no export through this VM handle has succeeded yet",
                    )),
                };
                let what = "the export JSON";
                snapshot_string(h, ("export", 0, 0), what, produce, buf, len, out_len)
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory-state file on a full disk.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("no space left"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("no space left"))
        }
    }

    /// `user` points to (bytes to write, status of the write).
    unsafe extern "C" fn writes_then_says_ok(w: *mut ckpt_writer, user: *mut c_void) -> c_int {
        // SAFETY: the test passes a `(usize, ckpt_status)`.
        let state = unsafe { &mut *user.cast::<(usize, ckpt_status)>() };
        let data = vec![7u8; state.0];
        // SAFETY: the writer of this callback; `data` is readable.
        state.1 = unsafe { ckpt_writer_write(w, data.as_ptr(), data.len()) };
        0 // ignores the failure: the library must not
    }

    fn hooks(user: &mut (usize, ckpt_status)) -> CHooks {
        CHooks(Some(ckpt_hooks {
            struct_size: size_of::<ckpt_hooks>() as u32,
            reserved: 0,
            quiesce: None,
            thaw: None,
            save_memory: Some(writes_then_says_ok),
            progress: None,
            user: (user as *mut (usize, ckpt_status)).cast(),
        }))
    }

    #[test]
    fn a_failed_write_fails_save_memory_whatever_the_callback_returns() {
        // Small: buffered, fails when flushed.
        let mut user = (100usize, ckpt_status::Panic);
        let e = hooks(&mut user).save_memory(&mut Full).unwrap_err();
        assert_eq!(user.1, ckpt_status::Ok);
        assert!(e.to_string().contains("no space left"), "{e}");
        // Large: fails in ckpt_writer_write itself.
        let mut user = (3 << 20, ckpt_status::Ok);
        let e = hooks(&mut user).save_memory(&mut Full).unwrap_err();
        assert_eq!(user.1, ckpt_status::Io);
        assert!(
            e.to_string().contains("writing the memory state failed"),
            "{e}"
        );
        // And a working stream gets every byte.
        let mut out = Vec::new();
        let mut user = (3 << 20, ckpt_status::Panic);
        assert!(hooks(&mut user).save_memory(&mut out).unwrap());
        assert_eq!(user.1, ckpt_status::Ok);
        assert_eq!(out, vec![7u8; 3 << 20]);
    }

    #[test]
    fn missing_hooks_behave_like_none() {
        let mut h = CHooks(None);
        assert!(h.quiesce().unwrap_err().contains("NULL"));
        assert!(!h.save_memory(&mut Vec::new()).unwrap());
        assert!(h.progress(1, 2));
        h.thaw();
    }

    /// Size-then-fill on the checkpoint list never fails, even when an age
    /// gains a digit between the two calls (9 s -> 10 s).
    #[test]
    fn size_then_fill_survives_an_age_rolling_over() {
        use std::ffi::CString;
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("os.vhdx");
        crate::Disk::create(&disk, &crate::CreateOptions::new(1 << 20))
            .unwrap()
            .close()
            .unwrap();
        let vmdir = dir.path().join("vm");
        let mut v = Vm::create(&vmdir, &VmSpec::new("t", vec![disk])).unwrap();
        v.create_checkpoint("one", None, &mut crate::checkpoint::NoHooks)
            .unwrap();
        drop(v);
        let now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let vmdir_c = CString::new(vmdir.to_str().unwrap()).unwrap();
        let mut rolled = false;
        for _ in 0..5 {
            // The checkpoint is 9 seconds old now, 10 a second from now.
            let path = vmdir.join(crate::checkpoint::model::VM_FILE);
            let mut data: crate::checkpoint::VmFile =
                crate::checkpoint::model::read_json(&path).unwrap();
            let t0 = now();
            data.checkpoints[0].created = t0 - 9;
            crate::checkpoint::model::write_json(&path, &data).unwrap();
            let mut vm = std::ptr::null_mut();
            let (mut len, mut len2, mut fresh) = (0usize, 0usize, 0usize);
            // SAFETY: valid strings, out pointers and buffers of the sizes given.
            unsafe {
                assert_eq!(ckpt_vm_open(vmdir_c.as_ptr(), &mut vm), ckpt_status::Ok);
                let s = ckpt_vm_checkpoints_json(vm, std::ptr::null_mut(), 0, &mut len);
                assert_eq!(s, ckpt_status::BufferTooSmall);
                let measured_at = now();
                while now() < measured_at + 1 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let mut buf = vec![0u8; len + 1];
                let s = ckpt_vm_checkpoints_json(vm, buf.as_mut_ptr().cast(), len + 1, &mut len2);
                assert_eq!(
                    s,
                    ckpt_status::Ok,
                    "the size the first call gave was too small"
                );
                assert_eq!(len2, len);
                let text: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
                // A new measurement now sees the new age.
                let s = ckpt_vm_checkpoints_json(vm, std::ptr::null_mut(), 0, &mut fresh);
                assert_eq!(s, ckpt_status::BufferTooSmall);
                assert_eq!(ckpt_vm_close(vm), ckpt_status::Ok);
                if measured_at == t0 && text["checkpoints"][0]["age_seconds"] == 9 {
                    assert_eq!(fresh, len + 1, "the age gained a digit");
                    rolled = true;
                    break;
                }
            }
        }
        assert!(rolled, "could not measure at 9 seconds of age");
    }

    /// The JSON getters give exactly what `checkpoint::json` builds for the
    /// CLI, and it parses.
    #[test]
    fn json_getters_match_the_shared_builders() {
        use std::ffi::CString;
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("os.vhdx");
        crate::Disk::create(&disk, &crate::CreateOptions::new(1 << 20))
            .unwrap()
            .close()
            .unwrap();
        let vmdir = CString::new(dir.path().join("vm").to_str().unwrap()).unwrap();
        let disk_c = CString::new(disk.to_str().unwrap()).unwrap();
        let disks = [disk_c.as_ptr()];
        // SAFETY: all-zero is a valid spec (NULL pointers, zero numbers).
        let mut spec: ckpt_vm_spec = unsafe { std::mem::zeroed() };
        spec.struct_size = size_of::<ckpt_vm_spec>() as u32;
        spec.name = c"j".as_ptr();
        spec.disks = disks.as_ptr();
        spec.disk_count = 1;
        let mut vm = std::ptr::null_mut();
        // SAFETY: valid strings, spec and out pointer.
        unsafe {
            assert_eq!(
                ckpt_vm_create(vmdir.as_ptr(), &spec, &mut vm),
                ckpt_status::Ok
            );
            assert_eq!(
                ckpt_vm_checkpoint_create(vm, c"one".as_ptr(), std::ptr::null()),
                ckpt_status::Ok
            );
        }
        let get = |f: unsafe extern "C" fn(
            *const ckpt_vm,
            *mut c_char,
            usize,
            *mut usize,
        ) -> ckpt_status| {
            let mut len = 0usize;
            // SAFETY: len 0 with a NULL buffer, then a buffer of len + 1.
            unsafe {
                assert_eq!(
                    f(vm, std::ptr::null_mut(), 0, &mut len),
                    ckpt_status::BufferTooSmall
                );
                let mut buf = vec![0u8; len + 1];
                assert_eq!(
                    f(vm, buf.as_mut_ptr().cast(), buf.len(), &mut len),
                    ckpt_status::Ok
                );
                buf.truncate(len);
                serde_json::from_slice::<serde_json::Value>(&buf).unwrap()
            }
        };
        let show = get(ckpt_vm_show_json);
        let list = get(ckpt_vm_checkpoints_json);
        let data = Vm::load(&dir.path().join("vm")).unwrap();
        assert_eq!(show, vm_json(&data));
        let mut want = checkpoints_json(&data).unwrap();
        // Ages tick between the two calls.
        want["checkpoints"][0]["age_seconds"] = list["checkpoints"][0]["age_seconds"].clone();
        assert_eq!(list, want);
        assert_eq!(list["checkpoints"][0]["name"], "one");
        assert_eq!(show["current_checkpoint"], "one");
        // SAFETY: a live handle, closed once.
        assert_eq!(unsafe { ckpt_vm_close(vm) }, ckpt_status::Ok);
    }
}
