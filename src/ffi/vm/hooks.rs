//! The hypervisor's callbacks (`ckpt_hooks`), the memory-state stream
//! (`ckpt_writer`) and their adapter to the library's [`Hooks`].

#[allow(unused_imports)]
use super::*;

/// The `quiesce` hook: ask the guest to flush its applications and freeze
/// its file systems for a production checkpoint. Return 0 when it is
/// quiesced; any other value means it could not be (a production
/// checkpoint then falls back to standard, a production-only one fails).
/// Not called when the VM is off: its checkpoint is production, with
/// nothing to quiesce.
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

/// The `resume` hook: let the guest run again after `save_memory` paused it
/// to write its state. Called once the disks are checkpointed (also when
/// taking the checkpoint failed) whenever `save_memory` was called,
/// whatever it returned.
pub type ckpt_resume_fn = Option<unsafe extern "C" fn(user: *mut c_void)>;

/// What the hypervisor does for the library during checkpoint operations
/// (a versioned struct: set `struct_size` to `sizeof(ckpt_hooks)`, the rest
/// to 0/NULL, then set the callbacks you have). Every callback may be NULL;
/// a function taking `const ckpt_hooks *` also accepts NULL for "no hooks".
///
/// Without `quiesce`, quiescing fails (production checkpoints fall back to
/// standard); without `save_memory`, standard checkpoints hold no memory
/// state; without `progress`, nothing is reported and nothing cancels.
///
/// `resume` came after the first version of the struct: a caller built
/// with an older header passes the smaller `struct_size` of that version
/// (48 bytes on 64-bit targets) and has no `resume`.
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
    /// Let the guest run again after `save_memory`; NULL: nothing to do.
    /// (Added after the first version of the struct.)
    pub resume: ckpt_resume_fn,
}

/// `sizeof(ckpt_hooks)` of the first version, without `resume`.
const HOOKS_FIRST_SIZE: usize = std::mem::offset_of!(ckpt_hooks, resume);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(HOOKS_FIRST_SIZE == 48);

/// The stream a `save_memory` hook writes the memory state into (opaque;
/// only valid during that callback).
pub struct ckpt_writer<'a> {
    out: &'a mut dyn Write,
    /// The first write error, which fails the checkpoint whatever the
    /// callback returns.
    error: Option<String>,
}

/// The hooks a C caller gave, as the library's [`Hooks`].
pub(super) struct CHooks(pub(super) Option<ckpt_hooks>);

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

    fn resume(&mut self) {
        if let Some(h) = &self.0 {
            if let Some(f) = h.resume {
                // SAFETY: as in `quiesce`.
                unsafe { f(h.user) }
            }
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
/// As for [`read_versioned`]; an old caller's `struct_size` may be that of
/// the first version (without `resume`).
pub(super) unsafe fn hooks_of(p: *const ckpt_hooks) -> FfiResult<CHooks> {
    // SAFETY: forwarded; every bit pattern of pointers and optional
    // function pointers is valid, all-zero ones included.
    let h = unsafe { read_versioned_since(p, HOOKS_FIRST_SIZE, "hooks", "ckpt_hooks")? };
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
