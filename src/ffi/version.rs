//! The library version, as a string and as numbers.

use std::ffi::c_char;

use super::ffi_boundary;

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
}
