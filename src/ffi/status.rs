//! `ckpt_status`: what every fallible C function returns, and the one place
//! where library errors become statuses.

use std::ffi::c_char;

use super::ffi_boundary;
use crate::ErrorKind;

/// The result of every fallible libckpt function.
///
/// `CKPT_STATUS_OK` (0) means success; any other value is a failure, and
/// `ckpt_last_error` then gives a message with the details. The numbers are
/// part of the ABI: they never change and are never reused; new statuses
/// get new numbers. A caller should treat an unknown non-zero value as a
/// generic failure.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ckpt_status {
    /// Success.
    Ok = 0,
    /// An argument has a value that is not allowed (a bad size, unknown
    /// flags, an empty or non-UTF-8 string, ...).
    InvalidArgument = 1,
    /// A pointer argument that must not be NULL was NULL.
    NullPointer = 2,
    /// An operating-system I/O error.
    Io = 3,
    /// A file or directory does not exist.
    NotFound = 4,
    /// The image is damaged (bad signature, checksum, field or layout).
    Corrupt = 5,
    /// The image or the request uses a feature libckpt does not support.
    Unsupported = 6,
    /// A read, write or trim reaches past the end of the virtual disk.
    OutOfRange = 7,
    /// A write, flush or trim on a disk opened read-only.
    ReadOnly = 8,
    /// A callback asked to stop.
    Cancelled = 9,
    /// The caller's buffer is too small for the whole result.
    BufferTooSmall = 10,
    /// A bug inside libckpt was caught at the API boundary. The message
    /// says where; the handle involved should be closed.
    Panic = 11,
    /// The parent of a differencing disk does not match the child's
    /// linkage: it was modified, replaced or mounted since the child was made.
    ParentMismatch = 12,
}

/// The status for a class of library error. This is the only place that
/// maps [`crate::Error`] to C.
pub fn status_of(kind: ErrorKind) -> ckpt_status {
    match kind {
        ErrorKind::Io => ckpt_status::Io,
        ErrorKind::NotFound => ckpt_status::NotFound,
        ErrorKind::Corrupt => ckpt_status::Corrupt,
        ErrorKind::Unsupported => ckpt_status::Unsupported,
        ErrorKind::InvalidArgument => ckpt_status::InvalidArgument,
        ErrorKind::OutOfRange => ckpt_status::OutOfRange,
        ErrorKind::ReadOnly => ckpt_status::ReadOnly,
        ErrorKind::Cancelled => ckpt_status::Cancelled,
        ErrorKind::ParentMismatch => ckpt_status::ParentMismatch,
    }
}

/// The status's C name as a NUL-terminated string, for example
/// `"CKPT_STATUS_NOT_FOUND"`; `"CKPT_STATUS_UNKNOWN"` for a number this
/// version does not know.
///
/// Never fails. The string is static: do not free it.
///
/// # Safety
///
/// Always safe to call (any value is accepted).
#[no_mangle]
pub unsafe extern "C" fn ckpt_status_name(status: u32) -> *const c_char {
    ffi_boundary!(
        "ckpt_status_name",
        {
            let s: &'static std::ffi::CStr = match status {
                0 => c"CKPT_STATUS_OK",
                1 => c"CKPT_STATUS_INVALID_ARGUMENT",
                2 => c"CKPT_STATUS_NULL_POINTER",
                3 => c"CKPT_STATUS_IO",
                4 => c"CKPT_STATUS_NOT_FOUND",
                5 => c"CKPT_STATUS_CORRUPT",
                6 => c"CKPT_STATUS_UNSUPPORTED",
                7 => c"CKPT_STATUS_OUT_OF_RANGE",
                8 => c"CKPT_STATUS_READ_ONLY",
                9 => c"CKPT_STATUS_CANCELLED",
                10 => c"CKPT_STATUS_BUFFER_TOO_SMALL",
                11 => c"CKPT_STATUS_PANIC",
                _ => c"CKPT_STATUS_UNKNOWN",
            };
            s.as_ptr()
        }? = c"CKPT_STATUS_UNKNOWN".as_ptr()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable() {
        let all = [
            (ckpt_status::Ok, 0, "OK"),
            (ckpt_status::InvalidArgument, 1, "INVALID_ARGUMENT"),
            (ckpt_status::NullPointer, 2, "NULL_POINTER"),
            (ckpt_status::Io, 3, "IO"),
            (ckpt_status::NotFound, 4, "NOT_FOUND"),
            (ckpt_status::Corrupt, 5, "CORRUPT"),
            (ckpt_status::Unsupported, 6, "UNSUPPORTED"),
            (ckpt_status::OutOfRange, 7, "OUT_OF_RANGE"),
            (ckpt_status::ReadOnly, 8, "READ_ONLY"),
            (ckpt_status::Cancelled, 9, "CANCELLED"),
            (ckpt_status::BufferTooSmall, 10, "BUFFER_TOO_SMALL"),
            (ckpt_status::Panic, 11, "PANIC"),
        ];
        for (s, n, name) in all {
            assert_eq!(s as u32, n);
            // SAFETY: any value is accepted; the result is a static C string.
            let got = unsafe { std::ffi::CStr::from_ptr(ckpt_status_name(n)) };
            assert_eq!(got.to_str().unwrap(), format!("CKPT_STATUS_{name}"));
        }
        // SAFETY: as above.
        let unknown = unsafe { std::ffi::CStr::from_ptr(ckpt_status_name(12345)) };
        assert_eq!(unknown.to_str().unwrap(), "CKPT_STATUS_UNKNOWN");
    }

    #[test]
    fn error_kinds_map() {
        assert_eq!(status_of(ErrorKind::NotFound), ckpt_status::NotFound);
        assert_eq!(status_of(ErrorKind::Corrupt), ckpt_status::Corrupt);
        assert_eq!(status_of(ErrorKind::ReadOnly), ckpt_status::ReadOnly);
        let e = crate::Error::Io(std::io::Error::from(std::io::ErrorKind::NotFound))
            .in_file("/nonexistent.vhdx");
        assert_eq!(
            super::super::FfiError::from(e).status,
            ckpt_status::NotFound
        );
    }
}
