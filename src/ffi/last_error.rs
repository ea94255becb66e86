//! The thread-local last-error message.

use std::cell::RefCell;
use std::ffi::c_char;

use super::{ckpt_status, ffi_boundary};

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Forget this thread's last error.
pub(crate) fn clear() {
    LAST_ERROR.with(|e| e.borrow_mut().take());
}

/// Set this thread's last error (an interior NUL is written as `\0` so the
/// C string is the whole message).
pub(crate) fn set(message: &str) {
    let message = message.replace('\0', "\\0");
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(message));
}

/// This thread's last error, if any.
#[cfg(test)]
pub(crate) fn get() -> Option<String> {
    LAST_ERROR.with(|e| e.borrow().clone())
}

/// Copy this thread's last error message into `buf` as a NUL-terminated
/// UTF-8 string.
///
/// The last error belongs to the most recent call on the calling thread
/// that returned a status; a call that returns `CKPT_STATUS_OK` clears it
/// (then the message is empty). `ckpt_last_error` and
/// `ckpt_last_error_length` themselves never change it, so a too-small
/// buffer can be retried.
///
/// `*out_len` (when `out_len` is not NULL) receives the length of the whole
/// message in bytes, without the terminating NUL; a buffer of
/// `*out_len + 1` bytes holds it.
///
/// Returns:
/// - `CKPT_STATUS_OK`: the whole message and its NUL were written;
///   `*out_len` is set.
/// - `CKPT_STATUS_BUFFER_TOO_SMALL`: `len` is smaller than the message
///   length + 1. If `len > 0`, `buf` holds the longest prefix of the
///   message that fits in `len - 1` bytes without splitting a UTF-8
///   character, followed by a NUL; if `len == 0`, `buf` is not touched (it
///   may be NULL). `*out_len` is set to the full length either way.
/// - `CKPT_STATUS_NULL_POINTER`: `buf` is NULL and `len > 0`; nothing is
///   written.
///
/// # Safety
///
/// `buf` is NULL or valid for writes of `len` bytes; `out_len` is NULL or
/// valid for a write of one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_last_error(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> ckpt_status {
    ffi_boundary!(
        "ckpt_last_error",
        {
            if len > 0 && buf.is_null() {
                return ckpt_status::NullPointer;
            }
            LAST_ERROR.with(|e| {
                let e = e.borrow();
                let msg = e.as_deref().unwrap_or("");
                let (n, status) = if msg.len() < len {
                    (msg.len(), ckpt_status::Ok)
                } else {
                    let mut n = len.saturating_sub(1);
                    while !msg.is_char_boundary(n) {
                        n -= 1;
                    }
                    (n, ckpt_status::BufferTooSmall)
                };
                if len > 0 {
                    // SAFETY: `buf` is not NULL and valid for `len` bytes, and
                    // `n < len`, so `n + 1` bytes fit; `msg` does not overlap a
                    // buffer owned by C.
                    unsafe {
                        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
                        *buf.add(n) = 0;
                    }
                }
                if !out_len.is_null() {
                    // SAFETY: not NULL; the caller promises it is writable.
                    unsafe { *out_len = msg.len() };
                }
                status
            })
        },
        panic_default = ckpt_status::Panic
    )
}

/// The length in bytes of this thread's last error message, without the
/// terminating NUL (0 when there is none). A buffer of this length + 1
/// receives it whole from `ckpt_last_error`.
///
/// # Safety
///
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_last_error_length() -> usize {
    ffi_boundary!(
        "ckpt_last_error_length",
        { LAST_ERROR.with(|e| e.borrow().as_ref().map_or(0, |m| m.len())) },
        panic_default = 0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(len: usize) -> (ckpt_status, Vec<u8>, usize) {
        let mut buf = vec![0x55u8; len + 2];
        let mut out = usize::MAX;
        // SAFETY: buf has len + 2 bytes; out is a valid usize.
        let s = unsafe { ckpt_last_error(buf.as_mut_ptr().cast(), len, &mut out) };
        (s, buf, out)
    }

    #[test]
    fn copies_whole_or_truncates_on_char_boundary() {
        set("héllo");
        // SAFETY: always safe.
        assert_eq!(unsafe { ckpt_last_error_length() }, 6);
        let (s, buf, out) = copy(7);
        assert_eq!((s, out), (ckpt_status::Ok, 6));
        assert_eq!(&buf[..8], "héllo\0\x55".as_bytes());
        // 3 bytes: "h" + the first byte of "é" would split it; keep "h".
        let (s, buf, out) = copy(3);
        assert_eq!((s, out), (ckpt_status::BufferTooSmall, 6));
        assert_eq!(&buf[..3], b"h\0\x55");
        let (s, buf, out) = copy(6);
        assert_eq!((s, out), (ckpt_status::BufferTooSmall, 6));
        assert_eq!(&buf[..7], "héll\0\x55".as_bytes());
        // len == 0 never touches buf, even when it is NULL.
        let mut out = 0;
        // SAFETY: len is 0, so buf is not used.
        let s = unsafe { ckpt_last_error(std::ptr::null_mut(), 0, &mut out) };
        assert_eq!((s, out), (ckpt_status::BufferTooSmall, 6));
        // SAFETY: buf is NULL with len > 0, which is rejected.
        let s = unsafe { ckpt_last_error(std::ptr::null_mut(), 4, std::ptr::null_mut()) };
        assert_eq!(s, ckpt_status::NullPointer);
        // None of that changed the message.
        assert_eq!(get().as_deref(), Some("héllo"));
    }

    #[test]
    fn empty_when_cleared_and_nul_escaped() {
        clear();
        let (s, buf, out) = copy(1);
        assert_eq!((s, out, buf[0]), (ckpt_status::Ok, 0, 0));
        set("a\0b");
        assert_eq!(get().as_deref(), Some("a\\0b"));
    }
}
