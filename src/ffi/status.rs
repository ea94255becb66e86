//! `ckpt_status`: what every fallible C function returns, and the one place
//! where library errors become statuses.

use std::ffi::{c_char, CStr};

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
    /// The file to create exists already.
    AlreadyExists = 13,
    /// The operating system denied access to a file.
    PermissionDenied = 14,
    /// Another process is changing the same VM or disk; try again later.
    Busy = 15,
    /// Not enough free space on the volume for the operation (nothing was changed).
    NoSpace = 16,
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
        ErrorKind::Busy => ckpt_status::Busy,
        ErrorKind::AlreadyExists => ckpt_status::AlreadyExists,
        ErrorKind::PermissionDenied => ckpt_status::PermissionDenied,
        ErrorKind::NoSpace => ckpt_status::NoSpace,
    }
}

/// Every status, in number order (used by `ckpt_status_name`).
const ALL: [ckpt_status; 17] = [
    ckpt_status::Ok,
    ckpt_status::InvalidArgument,
    ckpt_status::NullPointer,
    ckpt_status::Io,
    ckpt_status::NotFound,
    ckpt_status::Corrupt,
    ckpt_status::Unsupported,
    ckpt_status::OutOfRange,
    ckpt_status::ReadOnly,
    ckpt_status::Cancelled,
    ckpt_status::BufferTooSmall,
    ckpt_status::Panic,
    ckpt_status::ParentMismatch,
    ckpt_status::AlreadyExists,
    ckpt_status::PermissionDenied,
    ckpt_status::Busy,
    ckpt_status::NoSpace,
];

/// The C name of a status, as cbindgen writes it in the header.
fn c_name(s: ckpt_status) -> &'static CStr {
    match s {
        ckpt_status::Ok => c"CKPT_STATUS_OK",
        ckpt_status::InvalidArgument => c"CKPT_STATUS_INVALID_ARGUMENT",
        ckpt_status::NullPointer => c"CKPT_STATUS_NULL_POINTER",
        ckpt_status::Io => c"CKPT_STATUS_IO",
        ckpt_status::NotFound => c"CKPT_STATUS_NOT_FOUND",
        ckpt_status::Corrupt => c"CKPT_STATUS_CORRUPT",
        ckpt_status::Unsupported => c"CKPT_STATUS_UNSUPPORTED",
        ckpt_status::OutOfRange => c"CKPT_STATUS_OUT_OF_RANGE",
        ckpt_status::ReadOnly => c"CKPT_STATUS_READ_ONLY",
        ckpt_status::Cancelled => c"CKPT_STATUS_CANCELLED",
        ckpt_status::BufferTooSmall => c"CKPT_STATUS_BUFFER_TOO_SMALL",
        ckpt_status::Panic => c"CKPT_STATUS_PANIC",
        ckpt_status::ParentMismatch => c"CKPT_STATUS_PARENT_MISMATCH",
        ckpt_status::AlreadyExists => c"CKPT_STATUS_ALREADY_EXISTS",
        ckpt_status::PermissionDenied => c"CKPT_STATUS_PERMISSION_DENIED",
        ckpt_status::Busy => c"CKPT_STATUS_BUSY",
        ckpt_status::NoSpace => c"CKPT_STATUS_NO_SPACE",
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
            ALL.iter()
                .find(|s| **s as u32 == status)
                .map_or(c"CKPT_STATUS_UNKNOWN", |s| c_name(*s))
                .as_ptr()
        },
        panic_default = c"CKPT_STATUS_UNKNOWN".as_ptr()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_names_follow_the_variants() {
        let numbers = [
            (ckpt_status::Ok, 0),
            (ckpt_status::InvalidArgument, 1),
            (ckpt_status::NullPointer, 2),
            (ckpt_status::Io, 3),
            (ckpt_status::NotFound, 4),
            (ckpt_status::Corrupt, 5),
            (ckpt_status::Unsupported, 6),
            (ckpt_status::OutOfRange, 7),
            (ckpt_status::ReadOnly, 8),
            (ckpt_status::Cancelled, 9),
            (ckpt_status::BufferTooSmall, 10),
            (ckpt_status::Panic, 11),
            (ckpt_status::ParentMismatch, 12),
            (ckpt_status::AlreadyExists, 13),
            (ckpt_status::PermissionDenied, 14),
            (ckpt_status::Busy, 15),
            (ckpt_status::NoSpace, 16),
        ];
        assert_eq!(numbers.len(), ALL.len());
        for (i, (s, n)) in numbers.into_iter().enumerate() {
            assert_eq!(s as u32, n);
            assert_eq!(ALL[i], s);
            // The name is the variant in SCREAMING_SNAKE_CASE, as cbindgen
            // writes it.
            let mut want = String::from("CKPT_STATUS");
            for c in format!("{s:?}").chars() {
                if c.is_ascii_uppercase() {
                    want.push('_');
                }
                want.push(c.to_ascii_uppercase());
            }
            // SAFETY: any value is accepted; the result is a static C string.
            let got = unsafe { CStr::from_ptr(ckpt_status_name(n)) };
            assert_eq!(got.to_str().unwrap(), want);
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(ckpt_status_name(12345)) };
        assert_eq!(unknown.to_str().unwrap(), "CKPT_STATUS_UNKNOWN");
    }

    /// Every `CKPT_STATUS_*` enumerator in the generated header has its
    /// name in `ckpt_status_name` (so `ALL` cannot miss a new status).
    #[test]
    fn header_statuses_all_have_names() {
        let header = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/libckpt.h")).unwrap();
        let mut seen = 0;
        for line in header.lines() {
            let Some((name, rest)) = line.trim().split_once(" = ") else {
                continue;
            };
            if !name.starts_with("CKPT_STATUS_") {
                continue;
            }
            let n: u32 = rest.trim_end_matches(',').parse().unwrap();
            // SAFETY: any value is accepted; the result is a static C string.
            let got = unsafe { CStr::from_ptr(ckpt_status_name(n)) };
            assert_eq!(got.to_str().unwrap(), name);
            seen += 1;
        }
        assert_eq!(seen, ALL.len());
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
