//! The parent locator metadata item of a differencing disk.

use uuid::Uuid;

use crate::error::{bad_field, Error, Reason, Result, Structure};
use crate::format::{put16, put32, put_guid, Reader, PARENT_LOCATOR_VHDX};

// Byte layout of the parent locator item (MS-VHDX 2.6.2.6), little-endian:
//
//   0  16  LocatorType (the VHDX locator type)
//  16   2  reserved
//  18   2  KeyValueCount
//  20      key/value entries, 12 bytes each:
//            0  4  KeyOffset (from the start of the item)
//            4  4  ValueOffset
//            8  2  KeyLength (bytes, UTF-16LE, no terminator)
//           10  2  ValueLength
//          then the strings, anywhere in the item.

const LOCATOR_TYPE_OFFSET: usize = 0;
const KEY_VALUE_COUNT_OFFSET: usize = 18;
const ENTRIES_OFFSET: usize = 20;
const ENTRY_SIZE: usize = 12;
const ENTRY_KEY_OFFSET_OFFSET: usize = 0;
const ENTRY_VALUE_OFFSET_OFFSET: usize = 4;
const ENTRY_KEY_LENGTH_OFFSET: usize = 8;
const ENTRY_VALUE_LENGTH_OFFSET: usize = 10;

/// Key: the parent's DataWriteGuid.
pub const PARENT_LINKAGE: &str = "parent_linkage";
/// Key: an alternative accepted DataWriteGuid (used during merges).
pub const PARENT_LINKAGE2: &str = "parent_linkage2";
/// Key: a path relative to the child's folder.
pub const RELATIVE_PATH: &str = "relative_path";
/// Key: a `\\?\Volume{GUID}\…` path.
pub const VOLUME_PATH: &str = "volume_path";
/// Key: an absolute Win32 path.
pub const ABSOLUTE_WIN32_PATH: &str = "absolute_win32_path";

/// A decoded parent locator: its type and its key/value pairs in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// Locator type (VHDX for every file this crate handles).
    pub locator_type: Uuid,
    /// Key/value pairs, in file order.
    pub entries: Vec<(String, String)>,
}

fn utf16(b: &[u8], off: u32, len: u16, what: &'static str) -> Result<String> {
    let (off, len) = (off as usize, len as usize);
    let outside = || {
        bad_field(
            Structure::ParentLocator,
            what,
            off as u64,
            "outside the item",
        )
    };
    if len % 2 != 0 {
        return Err(outside());
    }
    let units: Vec<u16> = Reader::new(b, Structure::ParentLocator)
        .bytes(off, len)
        .map_err(|_| outside())?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| {
        bad_field(
            Structure::ParentLocator,
            what,
            off as u64,
            "not valid UTF-16",
        )
    })
}

impl ParentLocator {
    /// Parse the raw item.
    pub fn parse(b: &[u8]) -> Result<ParentLocator> {
        const S: Structure = Structure::ParentLocator;
        if b.len() < ENTRIES_OFFSET {
            return Err(Error::corrupt(
                S,
                None,
                Reason::Truncated {
                    needed: ENTRIES_OFFSET as u64,
                    found: b.len() as u64,
                },
            ));
        }
        let r = Reader::new(b, S);
        let locator_type = r.guid(LOCATOR_TYPE_OFFSET)?;
        // [MS-VHDX] 2.6.2.6.1: an implementation must understand the type.
        if locator_type != PARENT_LOCATOR_VHDX {
            return Err(Error::Unsupported(format!(
                "parent locator: LocatorType {locator_type} is not the VHDX locator type \
                 {PARENT_LOCATOR_VHDX}"
            )));
        }
        let count = r.u16(KEY_VALUE_COUNT_OFFSET)? as usize;
        if ENTRIES_OFFSET + count * ENTRY_SIZE > b.len() {
            return Err(bad_field(
                S,
                "KeyValueCount",
                count as u64,
                "entries do not fit the item",
            ));
        }
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for i in 0..count {
            let o = ENTRIES_OFFSET + ENTRY_SIZE * i;
            let ko = r.u32(o + ENTRY_KEY_OFFSET_OFFSET)?;
            let vo = r.u32(o + ENTRY_VALUE_OFFSET_OFFSET)?;
            let kl = r.u16(o + ENTRY_KEY_LENGTH_OFFSET)?;
            let vl = r.u16(o + ENTRY_VALUE_LENGTH_OFFSET)?;
            if ko == 0 || vo == 0 || kl == 0 || vl == 0 {
                return Err(bad_field(
                    S,
                    "key/value entry",
                    i as u64,
                    "zero offset or length",
                ));
            }
            let k = utf16(b, ko, kl, "key")?;
            let v = utf16(b, vo, vl, "value")?;
            if entries.iter().any(|(x, _)| *x == k) {
                return Err(Error::corrupt(
                    S,
                    None,
                    Reason::Invalid(format!("key {k} appears twice")),
                ));
            }
            entries.push((k, v));
        }
        Ok(ParentLocator {
            locator_type,
            entries,
        })
    }

    /// A VHDX locator with the given pairs.
    pub fn new(entries: Vec<(String, String)>) -> ParentLocator {
        ParentLocator {
            locator_type: PARENT_LOCATOR_VHDX,
            entries,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Set (or add) `key`.
    pub fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// Remove `key`.
    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| k != key);
    }

    /// A linkage value (`{guid}`) as a GUID.
    pub fn linkage(&self, key: &str) -> Option<Uuid> {
        let v = self.get(key)?;
        Uuid::try_parse(v.trim_start_matches('{').trim_end_matches('}')).ok()
    }

    /// Serialise.
    pub fn to_bytes(&self) -> Vec<u8> {
        let table = ENTRIES_OFFSET + ENTRY_SIZE * self.entries.len();
        let mut strings: Vec<u8> = Vec::new();
        let mut b = vec![0u8; table];
        put_guid(&mut b, LOCATOR_TYPE_OFFSET, &self.locator_type);
        put16(&mut b, KEY_VALUE_COUNT_OFFSET, self.entries.len() as u16);
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let o = ENTRIES_OFFSET + ENTRY_SIZE * i;
            let kb: Vec<u8> = k.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let vb: Vec<u8> = v.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            put32(
                &mut b,
                o + ENTRY_KEY_OFFSET_OFFSET,
                (table + strings.len()) as u32,
            );
            strings.extend_from_slice(&kb);
            put32(
                &mut b,
                o + ENTRY_VALUE_OFFSET_OFFSET,
                (table + strings.len()) as u32,
            );
            strings.extend_from_slice(&vb);
            put16(&mut b, o + ENTRY_KEY_LENGTH_OFFSET, kb.len() as u16);
            put16(&mut b, o + ENTRY_VALUE_LENGTH_OFFSET, vb.len() as u16);
        }
        b.extend_from_slice(&strings);
        b
    }
}

/// A GUID as a linkage value: braced, lowercase.
pub fn linkage_string(g: &Uuid) -> String {
    format!("{{{}}}", g.hyphenated())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ParentLocator {
        ParentLocator::new(vec![
            ("k".to_string(), "vv".to_string()),
            (RELATIVE_PATH.to_string(), "a".to_string()),
        ])
    }

    #[test]
    fn round_trip() {
        let l = sample();
        assert_eq!(ParentLocator::parse(&l.to_bytes()).unwrap(), l);
    }

    #[test]
    fn golden_bytes_written_by_hand() {
        let mut b = vec![0u8; 20 + 2 * 12];
        // B04AEFB7-D19E-4A81-B789-25B8E9445913, mixed-endian.
        b[0..16].copy_from_slice(&[
            0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a, 0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44,
            0x59, 0x13,
        ]);
        b[18] = 2;
        // "k" at 44 (2 bytes), "vv" at 46 (4 bytes).
        b[20..32].copy_from_slice(&[44, 0, 0, 0, 46, 0, 0, 0, 2, 0, 4, 0]);
        // "relative_path" at 50 (26 bytes), "a" at 76 (2 bytes).
        b[32..44].copy_from_slice(&[50, 0, 0, 0, 76, 0, 0, 0, 26, 0, 2, 0]);
        for s in ["k", "vv", "relative_path", "a"] {
            for c in s.bytes() {
                b.extend_from_slice(&[c, 0]);
            }
        }
        assert_eq!(ParentLocator::parse(&b).unwrap(), sample());
        assert_eq!(sample().to_bytes(), b);
    }

    #[test]
    fn short_or_garbage_input_is_an_error_never_a_panic() {
        let good = sample().to_bytes();
        for n in 0..good.len() {
            assert!(ParentLocator::parse(&good[..n]).is_err(), "{n} bytes");
        }
        let mut x = 0x2545_f491u32;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = 16 + (x as usize >> 8) % (b.len() - 16);
                b[i] = x as u8;
            }
            let _ = ParentLocator::parse(&b);
        }
        let mut far = good.clone();
        far[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ParentLocator::parse(&far),
            Err(Error::Corrupt(crate::error::Corruption {
                structure: Structure::ParentLocator,
                reason: Reason::BadField { field: "key", .. },
                ..
            }))
        ));
    }
}
