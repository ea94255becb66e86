//! The parent locator metadata item of a differencing disk.

use uuid::Uuid;

use crate::error::{bad_field, Error, Result};
use crate::format::{guid_at, le16, le32, put16, put32, put_guid, PARENT_LOCATOR_VHDX};

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
    if len % 2 != 0 || off.checked_add(len).is_none_or(|e| e > b.len()) {
        return Err(bad_field(
            "parent locator",
            what,
            off as u64,
            "outside the item",
        ));
    }
    let units: Vec<u16> = b[off..off + len]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units)
        .map_err(|_| bad_field("parent locator", what, off as u64, "not valid UTF-16"))
}

impl ParentLocator {
    /// Parse the raw item.
    pub fn parse(b: &[u8]) -> Result<ParentLocator> {
        const S: &str = "parent locator";
        if b.len() < 20 {
            return Err(Error::Corrupt("parent locator item is too short".into()));
        }
        let locator_type = guid_at(b, 0);
        // [MS-VHDX] 2.6.2.6.1: an implementation must understand the type.
        if locator_type != PARENT_LOCATOR_VHDX {
            return Err(Error::Unsupported(format!(
                "parent locator: LocatorType {locator_type} is not the VHDX locator type \
                 {PARENT_LOCATOR_VHDX}"
            )));
        }
        let count = le16(b, 18) as usize;
        if 20 + count * 12 > b.len() {
            return Err(bad_field(
                S,
                "KeyValueCount",
                count as u64,
                "entries do not fit the item",
            ));
        }
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for i in 0..count {
            let o = 20 + 12 * i;
            let (ko, vo) = (le32(b, o), le32(b, o + 4));
            let (kl, vl) = (le16(b, o + 8), le16(b, o + 10));
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
                return Err(Error::Corrupt(format!(
                    "parent locator: key {k} appears twice"
                )));
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
        let table = 20 + 12 * self.entries.len();
        let mut strings: Vec<u8> = Vec::new();
        let mut b = vec![0u8; table];
        put_guid(&mut b, 0, &self.locator_type);
        put16(&mut b, 18, self.entries.len() as u16);
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let o = 20 + 12 * i;
            let kb: Vec<u8> = k.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            let vb: Vec<u8> = v.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            put32(&mut b, o, (table + strings.len()) as u32);
            strings.extend_from_slice(&kb);
            put32(&mut b, o + 4, (table + strings.len()) as u32);
            strings.extend_from_slice(&vb);
            put16(&mut b, o + 8, kb.len() as u16);
            put16(&mut b, o + 10, vb.len() as u16);
        }
        b.extend_from_slice(&strings);
        b
    }
}

/// A GUID as a linkage value: braced, lowercase.
pub fn linkage_string(g: &Uuid) -> String {
    format!("{{{}}}", g.hyphenated())
}
