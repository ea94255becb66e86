//! The library version, as a string and as numbers.

use std::ffi::c_char;

use super::{ckpt_status, ffi_boundary, FfiError};

/// `"MAJOR.MINOR.PATCH"` with a NUL; from Cargo.toml.
const VERSION_C: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

fn number(s: &str) -> u32 {
    s.parse().unwrap_or(0)
}

/// The version of the library that is linked, as a NUL-terminated string
/// such as `"0.1.0"` (semantic versioning). The string is static: do not
/// free it.
///
/// # Safety
///
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_version() -> *const c_char {
    ffi_boundary!(
        "ckpt_version",
        { VERSION_C.as_ptr().cast::<c_char>() },
        panic_default = c"0.0.0".as_ptr()
    )
}

/// The major version number of the linked library.
///
/// # Safety
///
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_version_major() -> u32 {
    ffi_boundary!(
        "ckpt_version_major",
        { number(env!("CARGO_PKG_VERSION_MAJOR")) },
        panic_default = 0
    )
}

/// The minor version number of the linked library.
///
/// # Safety
///
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_version_minor() -> u32 {
    ffi_boundary!(
        "ckpt_version_minor",
        { number(env!("CARGO_PKG_VERSION_MINOR")) },
        panic_default = 0
    )
}

/// The patch version number of the linked library.
///
/// # Safety
///
/// Always safe to call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_version_patch() -> u32 {
    ffi_boundary!(
        "ckpt_version_patch",
        { number(env!("CARGO_PKG_VERSION_PATCH")) },
        panic_default = 0
    )
}

/// Whether a program built against the header of version
/// `major.minor` can use the linked library, whose version is
/// `ckpt_version_major()`.`ckpt_version_minor()`.
///
/// Pass the header's `CKPT_VERSION_MAJOR` and `CKPT_VERSION_MINOR` (the
/// macro `CKPT_VERSION_CHECK()` does exactly that). The rule is semantic
/// versioning as Cargo applies it:
///
/// - from 1.0 on, the library must have the same major version and a minor
///   version at least as new as the header's (a newer minor version only
///   adds functions, statuses and struct fields at the end);
/// - before 1.0 (major 0), every minor version may change the ABI, so the
///   minor versions must be equal (the patch versions may differ).
///
/// Returns `CKPT_STATUS_OK` when compatible, otherwise
/// `CKPT_STATUS_UNSUPPORTED` with a last error that names both versions.
/// Never touches anything else; safe to call from any thread at any time.
///
/// # Safety
///
/// Always safe to call (any values are accepted).
#[no_mangle]
pub unsafe extern "C" fn ckpt_version_check(major: u32, minor: u32) -> ckpt_status {
    ffi_boundary!("ckpt_version_check", {
        let have_major = number(env!("CARGO_PKG_VERSION_MAJOR"));
        let have_minor = number(env!("CARGO_PKG_VERSION_MINOR"));
        if compatible((have_major, have_minor), (major, minor)) {
            return Ok(());
        }
        let rule = if major == 0 {
            "before 1.0 the minor versions must be equal"
        } else {
            "the major versions must be equal and the library's minor version at least the header's"
        };
        Err(FfiError::new(
            ckpt_status::Unsupported,
            format!(
                "the program was built with the libckpt {major}.{minor} header, \
                 but libckpt {} is linked ({rule})",
                crate::VERSION
            ),
        ))
    })
}

/// The rule of `ckpt_version_check`: can a library of version `have` serve
/// a program built for `want` (both `(major, minor)`)?
fn compatible(have: (u32, u32), want: (u32, u32)) -> bool {
    if have.0 != want.0 {
        return false;
    }
    if want.0 == 0 {
        have.1 == want.1
    } else {
        have.1 >= want.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matches_numbers() {
        // SAFETY: always safe; the result is a static C string.
        let (s, a, b, c) = unsafe {
            (
                std::ffi::CStr::from_ptr(ckpt_version()),
                ckpt_version_major(),
                ckpt_version_minor(),
                ckpt_version_patch(),
            )
        };
        assert_eq!(s.to_str().unwrap(), crate::VERSION);
        assert_eq!(format!("{a}.{b}.{c}"), crate::VERSION);
    }

    #[test]
    fn version_check_rule() {
        assert!(compatible((0, 1), (0, 1)));
        assert!(!compatible((0, 2), (0, 1)));
        assert!(!compatible((0, 1), (0, 2)));
        assert!(compatible((1, 3), (1, 2)));
        assert!(compatible((1, 2), (1, 2)));
        assert!(!compatible((1, 1), (1, 2)));
        assert!(!compatible((2, 0), (1, 0)));
        // SAFETY: always safe.
        let (ok, bad) = unsafe {
            (
                ckpt_version_check(ckpt_version_major(), ckpt_version_minor()),
                ckpt_version_check(ckpt_version_major() + 1, 0),
            )
        };
        assert_eq!(ok, ckpt_status::Ok);
        assert_eq!(bad, ckpt_status::Unsupported);
        let msg = super::super::last_error::get().unwrap_or_default();
        assert!(msg.contains(crate::VERSION), "{msg}");
    }
}
