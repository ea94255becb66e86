//! The C ABI: the only module with `extern "C"`, raw pointers and `unsafe`.
//!
//! `build.rs` turns this module into `include/libckpt.h` with cbindgen; the
//! conventions every function follows (statuses, the thread-local last
//! error, ownership, buffers, strings, versioned structs, thread safety)
//! are written once at the top of that header, from `cbindgen.toml`.
//!
//! How the module is built:
//!
//! - every exported body runs inside `ffi_boundary!`, the one panic
//!   boundary: it clears the thread's last error, catches a panic (which
//!   becomes [`ckpt_status::Panic`] with a message), and turns an
//!   `FfiError` into its status plus the last-error message;
//! - [`ckpt::Error`](crate::Error) becomes a status in one place,
//!   [`status::status_of`];
//! - raw pointers are turned into references only through the helpers
//!   below, which check for NULL first; strings go out through one
//!   size-then-fill helper (`write_string`, and `write_measured` for
//!   texts that may change between the two calls), versioned structs in
//!   and out through `read_versioned` / `write_versioned`.
//!
//! What the folder holds:
//!
//! - `mod.rs`: the panic boundary, the pointer, string and versioned-struct
//!   helpers, `FfiError`;
//! - `status.rs`: `ckpt_status` and the one mapping from
//!   [`ckpt::Error`](crate::Error); `last_error.rs`: the thread-local last
//!   error and its getters; `version.rs`: the version functions;
//! - `disk.rs`: `ckpt_disk` (open, create, read/write/flush/trim, info,
//!   extents); `disk_io.rs`: vectored I/O and opening one file alone;
//!   `chain.rs`: differencing disks (create a child, merge,
//!   changed ranges, re-parent, the chain's paths) and `ckpt_progress_fn`;
//!   `compact.rs`: `ckpt_disk_compact` and its report; `resize.rs`:
//!   `ckpt_disk_resize` and its report; `in_place.rs`:
//!   `ckpt_disk_convert_in_place` and its report;
//! - `vm/`: `ckpt_vm` and the checkpoint tree — `mod.rs` the handle (one
//!   call at a time) and shared helpers, `types.rs` the C enums and info
//!   structs, `lifecycle.rs` create/open/close and the VM getters,
//!   `settings.rs` the setters, `getters.rs` the typed getters, `ids.rs`
//!   the calls by stable id, `hooks.rs` `ckpt_hooks` and the
//!   memory-state writer, `checkpoints.rs` create/apply/revert/delete/
//!   rename/export, `views.rs` the JSON views and checkpoint getters,
//!   `tests.rs` unit tests.
//!
//! Dependencies: the ffi module sits on top (ffi -> checkpoint -> disk ->
//! format -> io). It uses the library's public API only (the crate root's
//! re-exports, `crate::disk`, `crate::checkpoint`), never `crate::format`
//! or `crate::io` directly; nothing else in the crate may use it (no other
//! module has `extern "C"` or raw pointers from C); and it holds no format
//! or checkpoint logic of its own: a rule the library does not enforce is
//! not added here.

#![deny(unsafe_op_in_unsafe_fn)]
// The C names (`ckpt_disk`, `ckpt_status`, ...) are the API.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, CStr};
use std::path::Path;

pub mod chain;
pub mod compact;
pub mod disk;
pub mod disk_io;
pub mod in_place;
pub mod last_error;
pub mod resize;
pub mod status;
pub mod version;
pub mod vm;

pub use chain::{ckpt_child_options, ckpt_progress_fn, ckpt_range};
pub use compact::ckpt_compact_report;
pub use disk::{ckpt_create_options, ckpt_disk, ckpt_disk_info, ckpt_disk_kind, ckpt_extent};
pub use disk_io::ckpt_iovec;
pub use in_place::ckpt_in_place_report;
pub use resize::ckpt_resize_report;
pub use status::ckpt_status;
pub use vm::{
    ckpt_checkpoint_info, ckpt_checkpoint_type, ckpt_hooks, ckpt_taken_type, ckpt_vm, ckpt_vm_info,
    ckpt_vm_spec, ckpt_vm_state, ckpt_writer,
};

/// An error on its way to C: the status to return and the message for the
/// thread's last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FfiError {
    /// The status the exported function returns.
    pub(crate) status: ckpt_status,
    /// The text `ckpt_last_error` will give back.
    pub(crate) message: String,
}

impl FfiError {
    /// An error with an explicit status.
    pub(crate) fn new(status: ckpt_status, message: impl Into<String>) -> FfiError {
        FfiError {
            status,
            message: message.into(),
        }
    }

    /// `what` was NULL.
    pub(crate) fn null(what: &str) -> FfiError {
        FfiError::new(ckpt_status::NullPointer, format!("{what} is NULL"))
    }

    /// `what` is not acceptable.
    pub(crate) fn invalid(message: impl Into<String>) -> FfiError {
        FfiError::new(ckpt_status::InvalidArgument, message)
    }
}

impl From<crate::Error> for FfiError {
    fn from(e: crate::Error) -> FfiError {
        FfiError::new(status::status_of(e.kind()), e.to_string())
    }
}

/// What every status-returning body evaluates to.
pub(crate) type FfiResult<T = ()> = Result<T, FfiError>;

/// The one panic boundary around every exported body.
///
/// `ffi_boundary!("name", { body })`: `body` is a block evaluating to
/// [`FfiResult<()>`] (it may use `?` and `return Err(..)`); the
/// macro evaluates to a [`ckpt_status`]. The thread's last error is cleared
/// first, set from the error on failure, and set to a "panic" message when
/// the body panics.
///
/// `ffi_boundary!("name", { body }, panic_default = value)`: for the few functions that
/// return a plain value and not a status (they never fail); a panic yields
/// `value` and sets the last error, a normal return leaves it unchanged.
macro_rules! ffi_boundary {
    ($name:literal, $body:block) => {
        $crate::ffi::run_status($name, move || -> $crate::ffi::FfiResult { $body })
    };
    ($name:literal, $body:block, panic_default = $default:expr) => {
        $crate::ffi::run_value($name, move || $body, $default)
    };
}
pub(crate) use ffi_boundary;

/// The status half of `ffi_boundary!`; call it only through the macro.
pub(crate) fn run_status<F>(name: &'static str, body: F) -> ckpt_status
where
    F: FnOnce() -> FfiResult,
{
    last_error::clear();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => ckpt_status::Ok,
        Ok(Err(e)) => {
            last_error::set(&e.message);
            e.status
        }
        Err(payload) => {
            last_error::set(&panic_message(name, payload.as_ref()));
            ckpt_status::Panic
        }
    }
}

/// The value half of `ffi_boundary!`; call it only through the macro.
pub(crate) fn run_value<T, F>(name: &'static str, body: F, default: T) -> T
where
    F: FnOnce() -> T,
{
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            last_error::set(&panic_message(name, payload.as_ref()));
            default
        }
    }
}

fn panic_message(name: &str, payload: &(dyn std::any::Any + Send)) -> String {
    let what = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(no message)"
    };
    format!("internal error: {name} panicked: {what}")
}

/// A C string argument as `&str`.
///
/// # Safety
///
/// `s` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(crate) unsafe fn c_str<'a>(s: *const c_char, what: &str) -> FfiResult<&'a str> {
    if s.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string
    // valid for 'a.
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str()
        .map_err(|_| FfiError::invalid(format!("{what} is not valid UTF-8")))
}

/// A C path argument (NUL-terminated, not empty) as a [`Path`]: any bytes
/// but NUL, as Linux file names are (not necessarily UTF-8).
///
/// # Safety
///
/// As for [`c_str`].
pub(crate) unsafe fn c_path<'a>(s: *const c_char, what: &str) -> FfiResult<&'a Path> {
    use std::os::unix::ffi::OsStrExt;
    if s.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string
    // valid for 'a.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    if bytes.is_empty() {
        return Err(FfiError::invalid(format!("{what} is empty")));
    }
    Ok(Path::new(std::ffi::OsStr::from_bytes(bytes)))
}

/// A C path argument that a VM stores in `vm.json` or its journal (its
/// folder, its checkpoint location, an export folder): as [`c_path`], but
/// it must be UTF-8, since they keep paths as JSON text (the documented
/// limit).
///
/// # Safety
///
/// As for [`c_str`].
pub(crate) unsafe fn c_vm_path<'a>(s: *const c_char, what: &str) -> FfiResult<&'a Path> {
    // SAFETY: forwarded from the caller.
    let p = unsafe { c_path(s, what)? };
    if p.to_str().is_none() {
        return Err(FfiError::invalid(format!(
            "{what} is not valid UTF-8: a VM keeps its paths in vm.json as text, (and its journal) \
             as text, so its folder, disks, checkpoint location and export folders must have \
             UTF-8 names"
        )));
    }
    Ok(p)
}

/// An optional [`c_vm_path`]: NULL is `None`.
///
/// # Safety
///
/// As for [`c_str`].
pub(crate) unsafe fn c_vm_path_opt<'a>(
    s: *const c_char,
    what: &str,
) -> FfiResult<Option<&'a Path>> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { c_vm_path(s, what) }.map(Some)
}

/// A shared reference from a pointer that must not be NULL.
///
/// # Safety
///
/// `p` is NULL or valid for reads as a `T` for `'a`, with no writer at the
/// same time.
pub(crate) unsafe fn non_null<'a, T>(p: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: forwarded from the caller; `as_ref` handles NULL.
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::null(what))
}

/// Check that an out-parameter is not NULL (before any work is done).
pub(crate) fn out_ptr<T>(p: *mut T, what: &str) -> FfiResult<*mut T> {
    if p.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(p)
    }
}

/// The largest `struct_size` accepted for an input struct (a guard against
/// garbage in the field).
const MAX_STRUCT_SIZE: usize = 4096;

/// Read a versioned input struct (one whose first field is the `u32`
/// `struct_size`): `Ok(None)` when `p` is NULL.
///
/// `struct_size` must be at least `size_of::<T>()` (for a struct that never
/// grew: its first version is the current one) and at most
/// [`MAX_STRUCT_SIZE`]; bytes past `size_of::<T>()` (fields of a newer
/// header) must be 0, or the call fails with `CKPT_STATUS_UNSUPPORTED`.
/// `what` names the argument and `c_type` the C type in messages. A struct
/// that grew reads through [`read_versioned_since`].
///
/// # Safety
///
/// `p` is NULL or points to a readable struct of at least `p->struct_size`
/// bytes; every bit pattern of those bytes is a valid `T` (no `bool`, no
/// enums in input structs).
pub(crate) unsafe fn read_versioned<T: Copy>(
    p: *const T,
    what: &str,
    c_type: &str,
) -> FfiResult<Option<T>> {
    // SAFETY: forwarded.
    unsafe { read_versioned_since(p, std::mem::size_of::<T>(), what, c_type) }
}

/// [`read_versioned`] for a struct that grew at its end: `struct_size` may
/// also be that of an older version, from `first_size` (the size of the
/// first version) on; the fields such an old caller does not have read as
/// 0 / NULL.
///
/// # Safety
///
/// As for [`read_versioned`]; in addition all-zero bytes are a valid `T`
/// (integers, raw pointers and optional function pointers only), and
/// `first_size` is at least 4 (it covers `struct_size` itself).
pub(crate) unsafe fn read_versioned_since<T: Copy>(
    p: *const T,
    first_size: usize,
    what: &str,
    c_type: &str,
) -> FfiResult<Option<T>> {
    if p.is_null() {
        return Ok(None);
    }
    let ours = std::mem::size_of::<T>();
    // SAFETY: not NULL; the first field of every version is the u32 size.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    if size < first_size {
        return Err(FfiError::invalid(format!(
            "{what}->struct_size is {size}, expected at least {first_size} (sizeof({c_type}))"
        )));
    }
    if size > MAX_STRUCT_SIZE {
        return Err(FfiError::invalid(format!(
            "{what}->struct_size is {size}, larger than any version of {c_type}"
        )));
    }
    // SAFETY: the caller promises `size` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) };
    if bytes.len() > ours && bytes[ours..].iter().any(|&b| b != 0) {
        return Err(FfiError::new(
            ckpt_status::Unsupported,
            format!(
                "{what} sets fields of {c_type} that this version of libckpt ({}) does not know",
                crate::VERSION
            ),
        ));
    }
    // SAFETY: all-zero bytes are a valid `T` per the contract; then the
    // caller's `min(size, ours)` bytes, every bit pattern of which is valid.
    let mut out: T = unsafe { std::mem::zeroed() };
    let n = size.min(ours);
    // SAFETY: `n` readable bytes at `p`, `n <= size_of::<T>()` writable at `out`.
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&mut out as *mut T).cast::<u8>(), n) };
    Ok(Some(out))
}

/// The size-then-fill protocol of a string getter whose text may change
/// between two calls (the ages of the checkpoint list tick): the text
/// `produce` measures is written as [`write_string`] does, unless an
/// earlier call that found the buffer too small kept one for `key` in the
/// `kept` map of `holder`; that text is handed out instead of measuring
/// again, so the length a too-small call reported always suffices. A call
/// that finds the buffer too small keeps its text for the next call.
/// (`kept` picks the map out of `holder` so that `produce` can read the
/// rest of it.)
///
/// # Safety
///
/// As for [`write_string`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn write_measured<H, K: Eq + std::hash::Hash>(
    holder: &mut H,
    kept: fn(&mut H) -> &mut std::collections::HashMap<K, Vec<u8>>,
    key: K,
    what: &str,
    produce: impl FnOnce(&H) -> FfiResult<Vec<u8>>,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> FfiResult {
    let bytes = match kept(holder).remove(&key) {
        Some(b) => b,
        None => produce(holder)?,
    };
    // SAFETY: forwarded from the caller.
    let r = unsafe { write_string(&bytes, buf, len, out_len, what) };
    if matches!(&r, Err(e) if e.status == ckpt_status::BufferTooSmall) {
        kept(holder).insert(key, bytes);
    }
    r
}

/// Copy `bytes` and a NUL into the caller's `(buf, len)` and the length
/// (without the NUL) into `*out_len`: the one implementation of every
/// `(buf, len, out_len)` string getter.
///
/// - the whole string fits (`bytes.len() < len`): it and its NUL are
///   written, `*out_len` is set, `Ok`;
/// - it does not: `buf` is not touched, `*out_len` is still set to the
///   length (so the caller can retry with `*out_len + 1` bytes) and the
///   result is `CKPT_STATUS_BUFFER_TOO_SMALL`;
/// - `buf` NULL with `len > 0`: `CKPT_STATUS_NULL_POINTER`, nothing written.
///
/// `out_len` may be NULL. The caller has already checked the other
/// arguments, so `*out_len` is written only when the call otherwise
/// succeeds.
///
/// # Safety
///
/// `buf` is NULL or valid for writes of `len` bytes; `out_len` is NULL or
/// valid for a write of one `size_t`.
pub(crate) unsafe fn write_string(
    bytes: &[u8],
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
    what: &str,
) -> FfiResult {
    if len > 0 && buf.is_null() {
        return Err(FfiError::null("buf"));
    }
    if bytes.contains(&0) {
        return Err(FfiError::invalid(format!(
            "{what} contains a NUL byte and cannot be returned as a C string"
        )));
    }
    if !out_len.is_null() {
        // SAFETY: not NULL; writable per the contract.
        unsafe { out_len.write(bytes.len()) };
    }
    if bytes.len() >= len {
        return Err(FfiError::new(
            ckpt_status::BufferTooSmall,
            format!(
                "{what} needs {} bytes with its NUL, the buffer has {len}",
                bytes.len() + 1
            ),
        ));
    }
    // SAFETY: `buf` is not NULL (len > bytes.len() >= 0) and valid for `len`
    // bytes; `bytes.len() + 1 <= len`; `bytes` is ours, so no overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
        buf.add(bytes.len()).write(0);
    }
    Ok(())
}

/// [`write_versioned`] for a struct that grew at its end since its first
/// version of `first` bytes: a caller whose `struct_size` is at least
/// `first` (compiled against an older header) gets the fields that fit,
/// `struct_size` set to the bytes written; a newer one gets all of them.
///
/// # Safety
///
/// As for [`write_versioned`].
pub(crate) unsafe fn write_versioned_grown<T: Copy>(
    p: *mut T,
    mut value: T,
    first: usize,
    what: &str,
    c_type: &str,
) -> FfiResult {
    let p = out_ptr(p, what)?;
    let ours = std::mem::size_of::<T>();
    // SAFETY: not NULL; the first field of every version is the u32 size.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    if size < first {
        return Err(FfiError::invalid(format!(
            "{what}->struct_size is {size}, expected at least {first} (sizeof({c_type}))"
        )));
    }
    let n = size.min(ours);
    // SAFETY: `value` is a plain struct whose first field is the u32 size.
    unsafe { std::ptr::addr_of_mut!(value).cast::<u32>().write(n as u32) };
    // SAFETY: `n <= size` writable bytes per the contract; `value` is ours.
    unsafe {
        std::ptr::copy_nonoverlapping(std::ptr::addr_of!(value).cast::<u8>(), p.cast::<u8>(), n)
    };
    Ok(())
}

/// Write a versioned output struct (one whose first field is the `u32`
/// `struct_size`): the caller's `struct_size` must be at least
/// `size_of::<T>()`; the library writes `size_of::<T>()` bytes (`value`,
/// whose `struct_size` says so) and leaves bytes past them (fields of a
/// newer header) as they were.
///
/// # Safety
///
/// `p` is NULL or points to a readable and writable struct of at least
/// `p->struct_size` bytes.
pub(crate) unsafe fn write_versioned<T: Copy>(
    p: *mut T,
    value: T,
    what: &str,
    c_type: &str,
) -> FfiResult {
    // A struct that never grew: its first version is the current one.
    // SAFETY: forwarded.
    unsafe { write_versioned_grown(p, value, std::mem::size_of::<T>(), what, c_type) }
}

/// A path's bytes as the operating system holds them.
pub(crate) fn path_bytes(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

/// An optional C path argument: NULL is `None`.
///
/// # Safety
///
/// As for [`c_str`].
pub(crate) unsafe fn c_path_opt<'a>(s: *const c_char, what: &str) -> FfiResult<Option<&'a Path>> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    unsafe { c_path(s, what) }.map(Some)
}

/// A required string argument that must not be empty.
///
/// # Safety
///
/// As for [`c_str`].
pub(crate) unsafe fn c_name<'a>(s: *const c_char, what: &str) -> FfiResult<&'a str> {
    // SAFETY: forwarded from the caller.
    let s = unsafe { c_str(s, what)? };
    if s.is_empty() {
        return Err(FfiError::invalid(format!("{what} is empty")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        last_error::get().unwrap_or_default()
    }

    #[test]
    fn panic_becomes_status_and_message() {
        let s = ffi_boundary!("ckpt_test_panic", {
            let v: Vec<u8> = Vec::new();
            if v.is_empty() {
                panic!("boom {}", 42);
            }
            Ok(())
        });
        assert_eq!(s, ckpt_status::Panic);
        let m = last();
        assert!(m.contains("ckpt_test_panic"), "{m}");
        assert!(m.contains("boom 42"), "{m}");
    }

    #[test]
    fn error_sets_and_success_clears_last_error() {
        let s = ffi_boundary!("ckpt_test_err", { Err(crate::Error::ReadOnly.into()) });
        assert_eq!(s, ckpt_status::ReadOnly);
        assert_eq!(last(), "the disk is open read-only");
        let s = ffi_boundary!("ckpt_test_ok", { Ok(()) });
        assert_eq!(s, ckpt_status::Ok);
        assert_eq!(last_error::get(), None);
    }

    #[test]
    fn value_boundary_returns_default_on_panic() {
        let v = ffi_boundary!(
            "ckpt_test_value",
            {
                let n: u32 = "x".parse().unwrap_or(7);
                if n == 7 {
                    panic!("static str payload");
                }
                n
            },
            panic_default = 99u32
        );
        assert_eq!(v, 99);
        assert!(last().contains("static str payload"));
    }

    #[test]
    fn null_and_bad_strings() {
        // SAFETY: NULL is allowed; the literals are NUL-terminated.
        unsafe {
            assert_eq!(
                c_path(std::ptr::null(), "path").unwrap_err().status,
                ckpt_status::NullPointer
            );
            assert_eq!(
                c_path(c"".as_ptr(), "path").unwrap_err().status,
                ckpt_status::InvalidArgument
            );
            // Linux file names are bytes: a non-UTF-8 path is taken as it
            // is, except where a VM stores it.
            let bad = [b'a' as c_char, 0xffu8 as c_char, 0];
            assert_eq!(
                path_bytes(c_path(bad.as_ptr(), "path").unwrap()),
                &[b'a', 0xff]
            );
            assert_eq!(
                c_vm_path(bad.as_ptr(), "path").unwrap_err().status,
                ckpt_status::InvalidArgument
            );
            assert_eq!(
                c_str(bad.as_ptr(), "name").unwrap_err().status,
                ckpt_status::InvalidArgument
            );
            assert_eq!(
                c_path(c"a.vhdx".as_ptr(), "path").unwrap(),
                Path::new("a.vhdx")
            );
        }
    }
}
