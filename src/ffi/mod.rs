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
//!   below, which check for NULL first.

#![deny(unsafe_op_in_unsafe_fn)]
// The C names (`ckpt_disk`, `ckpt_status`, ...) are the API.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, CStr};
use std::path::Path;

pub mod disk;
pub mod last_error;
pub mod status;
pub mod version;

pub use disk::{ckpt_create_options, ckpt_disk, ckpt_disk_info, ckpt_disk_kind};
pub use status::ckpt_status;

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

/// A C path argument (UTF-8, NUL-terminated, not empty) as a [`Path`].
///
/// # Safety
///
/// As for [`c_str`].
pub(crate) unsafe fn c_path<'a>(s: *const c_char, what: &str) -> FfiResult<&'a Path> {
    // SAFETY: forwarded from the caller.
    let s = unsafe { c_str(s, what)? };
    if s.is_empty() {
        return Err(FfiError::invalid(format!("{what} is empty")));
    }
    Ok(Path::new(s))
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
            let bad = [0xffu8 as c_char, 0];
            assert_eq!(
                c_path(bad.as_ptr(), "path").unwrap_err().status,
                ckpt_status::InvalidArgument
            );
            assert_eq!(
                c_path(c"a.vhdx".as_ptr(), "path").unwrap(),
                Path::new("a.vhdx")
            );
        }
    }
}
