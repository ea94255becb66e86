//! Parent locators of a differencing VHD: the platform codes and how each
//! one's data holds the parent's path.
//!
//! - `W2ku`: an absolute Windows path, UTF-16 little-endian.
//! - `W2ru`: a path relative to the child's folder, UTF-16 little-endian.
//! - `MacX`: a file URL (`file://localhost/…`), UTF-8 (read only).
//! - `Mac `: a Mac OS alias record: not readable here, skipped.
//! - `Wi2r` / `Wi2k`: deprecated (ANSI paths), read as bytes.
//!
//! The paths found are handed to the chain code as the keys of a VHDX
//! parent locator (`relative_path`, `absolute_win32_path`), so that both
//! formats look for a parent the same way. Pure data: no I/O.

use crate::format::locator::{self, ParentLocator};

/// Platform code of an absolute UTF-16 path.
pub(crate) const W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Platform code of a relative UTF-16 path.
pub(crate) const W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// Platform code of a Mac OS X file URL.
pub(crate) const MACX: u32 = u32::from_be_bytes(*b"MacX");
const WI2R: u32 = u32::from_be_bytes(*b"Wi2r");
const WI2K: u32 = u32::from_be_bytes(*b"Wi2k");
/// Most bytes of locator data read (a Windows path is at most 32767 UTF-16 units).
pub(crate) const MAX_LOCATOR_DATA: u32 = 64 << 10;

/// A path as `W2ku` / `W2ru` data (UTF-16 little-endian).
pub(crate) fn encode_utf16le(path: &str) -> Vec<u8> {
    path.encode_utf16().flat_map(|c| c.to_le_bytes()).collect()
}

fn decode_utf16le(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&c| c != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The path of a `MacX` file URL, percent escapes decoded.
fn macx_path(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?.trim_end_matches('\0');
    let rest = s.strip_prefix("file://")?;
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The locator entries read, as a VHDX-style parent locator: `W2ru` gives
/// the relative path, `W2ku` (else `MacX`, else `Wi2k`) the absolute one.
pub(crate) fn as_parent_locator(entries: &[(u32, Vec<u8>)]) -> ParentLocator {
    let mut loc = ParentLocator::new(Vec::new());
    let find = |code: u32| {
        entries
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    };
    if let Some(d) = find(W2RU) {
        loc.set(locator::RELATIVE_PATH, decode_utf16le(d));
    } else if let Some(d) = find(WI2R) {
        loc.set(
            locator::RELATIVE_PATH,
            String::from_utf8_lossy(d)
                .trim_end_matches('\0')
                .to_string(),
        );
    }
    let abs = find(W2KU)
        .map(decode_utf16le)
        .or_else(|| find(MACX).and_then(macx_path))
        .or_else(|| {
            find(WI2K).map(|d| {
                String::from_utf8_lossy(d)
                    .trim_end_matches('\0')
                    .to_string()
            })
        });
    if let Some(a) = abs {
        loc.set(locator::ABSOLUTE_WIN32_PATH, a);
    }
    loc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode() {
        let e = vec![
            (W2RU, encode_utf16le(".\\base.vhd")),
            (MACX, b"file://localhost/tmp/a%20b/base.vhd".to_vec()),
        ];
        let l = as_parent_locator(&e);
        assert_eq!(l.get(locator::RELATIVE_PATH), Some(".\\base.vhd"));
        assert_eq!(
            l.get(locator::ABSOLUTE_WIN32_PATH),
            Some("/tmp/a b/base.vhd")
        );
        assert_eq!(macx_path(b"file://x%"), Some("x%".into()));
    }
}
