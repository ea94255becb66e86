//! The region tables.

use uuid::Uuid;

use crate::error::{bad_field, Error, Result};
use crate::format::{guid_at, le32, le64, put32, put64, put_guid, MIB};

/// "regi".
pub const SIGNATURE: u32 = 0x6967_6572;
/// Size of a region table.
pub const SIZE: usize = 64 * 1024;
/// Largest entry count allowed.
pub const MAX_ENTRIES: u32 = 2047;

/// One region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// Region type.
    pub guid: Uuid,
    /// File offset (1 MiB multiple, at least 1 MiB).
    pub file_offset: u64,
    /// Length (1 MiB multiple).
    pub length: u32,
    /// Whether an implementation must understand this region.
    pub required: bool,
}

impl RegionEntry {
    /// End offset of the region.
    pub fn end(&self) -> u64 {
        self.file_offset + self.length as u64
    }
}

/// A region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    /// The entries, in file order.
    pub entries: Vec<RegionEntry>,
}

impl RegionTable {
    /// Parse and validate 64 KiB read at `offset`.
    pub fn parse(b: &[u8], offset: u64) -> Result<RegionTable> {
        const S: &str = "region table";
        let b = super::checked_structure(b, SIZE, SIGNATURE, S, offset)?;
        let count = le32(b, 8);
        if count > MAX_ENTRIES {
            return Err(bad_field(
                S,
                "EntryCount",
                count as u64,
                "more than 2047 entries",
            ));
        }
        let mut entries: Vec<RegionEntry> = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let o = 16 + 32 * i;
            let e = RegionEntry {
                guid: guid_at(b, o),
                file_offset: le64(b, o + 16),
                length: le32(b, o + 24),
                required: le32(b, o + 28) & 1 != 0,
            };
            if e.file_offset % MIB != 0 || e.file_offset < MIB {
                return Err(bad_field(
                    S,
                    "region FileOffset",
                    e.file_offset,
                    "not a 1 MiB multiple past the header section",
                ));
            }
            if e.length as u64 % MIB != 0 || e.length == 0 {
                return Err(bad_field(
                    S,
                    "region Length",
                    e.length as u64,
                    "not a non-zero 1 MiB multiple",
                ));
            }
            if e.file_offset.checked_add(e.length as u64).is_none() {
                return Err(bad_field(
                    S,
                    "region FileOffset",
                    e.file_offset,
                    "overflows",
                ));
            }
            for other in &entries {
                if other.guid == e.guid {
                    return Err(Error::Corrupt(format!(
                        "region table: region {} appears twice",
                        e.guid
                    )));
                }
                if e.file_offset < other.end() && other.file_offset < e.end() {
                    return Err(Error::Corrupt(format!(
                        "region table: regions {} and {} overlap",
                        other.guid, e.guid
                    )));
                }
            }
            entries.push(e);
        }
        Ok(RegionTable { entries })
    }

    /// Find a region by GUID.
    pub fn find(&self, guid: &Uuid) -> Option<&RegionEntry> {
        self.entries.iter().find(|e| e.guid == *guid)
    }

    /// Serialise to 64 KiB with a valid checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        put32(&mut b, 0, SIGNATURE);
        put32(&mut b, 8, self.entries.len() as u32);
        for (i, e) in self.entries.iter().enumerate() {
            let o = 16 + 32 * i;
            put_guid(&mut b, o, &e.guid);
            put64(&mut b, o + 16, e.file_offset);
            put32(&mut b, o + 24, e.length);
            put32(&mut b, o + 28, e.required as u32);
        }
        let crc = crc32c::crc32c(&b);
        put32(&mut b, 4, crc);
        b
    }
}
