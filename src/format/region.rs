//! The region tables.

use uuid::Uuid;

use crate::error::{bad_field, Error, Reason, Result, Structure};
use crate::format::{put32, put64, put_guid, Reader, MIB};

// Byte layout of a region table (MS-VHDX 2.2.3), little-endian, 64 KiB:
//
//   0   4  Signature "regi"
//   4   4  Checksum: CRC-32C over the 64 KiB with this field zero
//   8   4  EntryCount (at most 2047)
//  12   4  reserved
//  16      entries, 32 bytes each:
//            0  16  Guid
//           16   8  FileOffset
//           24   4  Length
//           28   4  bit 0: Required; the other bits reserved

const SIGNATURE_OFFSET: usize = 0;
const CHECKSUM_OFFSET: usize = 4;
const ENTRY_COUNT_OFFSET: usize = 8;
const ENTRIES_OFFSET: usize = 16;
const ENTRY_SIZE: usize = 32;
const ENTRY_GUID_OFFSET: usize = 0;
const ENTRY_FILE_OFFSET_OFFSET: usize = 16;
const ENTRY_LENGTH_OFFSET: usize = 24;
const ENTRY_FLAGS_OFFSET: usize = 28;
const _: () = assert!(ENTRIES_OFFSET + ENTRY_SIZE * MAX_ENTRIES as usize <= SIZE);

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
        RegionTable::parse_checked(b, offset).map_err(|e| e.at(offset))
    }

    fn parse_checked(b: &[u8], offset: u64) -> Result<RegionTable> {
        const S: Structure = Structure::RegionTable;
        let b = super::checked_structure(b, SIZE, SIGNATURE, S, offset)?;
        let r = Reader::new(b, S);
        let count = r.u32(ENTRY_COUNT_OFFSET)?;
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
            let o = ENTRIES_OFFSET + ENTRY_SIZE * i;
            let e = RegionEntry {
                guid: r.guid(o + ENTRY_GUID_OFFSET)?,
                file_offset: r.u64(o + ENTRY_FILE_OFFSET_OFFSET)?,
                length: r.u32(o + ENTRY_LENGTH_OFFSET)?,
                required: r.u32(o + ENTRY_FLAGS_OFFSET)? & 1 != 0,
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
                    return Err(Error::corrupt(
                        S,
                        None,
                        Reason::Invalid(format!("region {} appears twice", e.guid)),
                    ));
                }
                if e.file_offset < other.end() && other.file_offset < e.end() {
                    return Err(Error::corrupt(
                        S,
                        None,
                        Reason::Overlap {
                            what: format!("region {}", other.guid),
                            with: format!("region {}", e.guid),
                        },
                    ));
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

    /// Serialise to 64 KiB with a valid checksum; a table of more than
    /// [`MAX_ENTRIES`] entries (which [`RegionTable::parse`] refuses) is an
    /// error.
    pub fn try_to_bytes(&self) -> Result<Vec<u8>> {
        if self.entries.len() > MAX_ENTRIES as usize {
            return Err(Error::InvalidArgument(format!(
                "region table: {} entries, at most {MAX_ENTRIES} fit",
                self.entries.len()
            )));
        }
        let mut b = vec![0u8; SIZE];
        put32(&mut b, SIGNATURE_OFFSET, SIGNATURE);
        put32(&mut b, ENTRY_COUNT_OFFSET, self.entries.len() as u32);
        for (i, e) in self.entries.iter().enumerate() {
            let o = ENTRIES_OFFSET + ENTRY_SIZE * i;
            put_guid(&mut b, o + ENTRY_GUID_OFFSET, &e.guid);
            put64(&mut b, o + ENTRY_FILE_OFFSET_OFFSET, e.file_offset);
            put32(&mut b, o + ENTRY_LENGTH_OFFSET, e.length);
            put32(&mut b, o + ENTRY_FLAGS_OFFSET, e.required as u32);
        }
        let crc = crc32c::crc32c(&b);
        put32(&mut b, CHECKSUM_OFFSET, crc);
        Ok(b)
    }

    /// [`RegionTable::try_to_bytes`] for callers that build the table
    /// themselves: a table too large to store (more than [`MAX_ENTRIES`])
    /// gives 64 KiB of zeros, which no reader accepts as a region table,
    /// instead of a panic or a silently shortened table.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.try_to_bytes().unwrap_or_else(|_| vec![0u8; SIZE])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{BAT_REGION, METADATA_REGION, REGION1_OFFSET};

    fn sample() -> RegionTable {
        RegionTable {
            entries: vec![
                RegionEntry {
                    guid: BAT_REGION,
                    file_offset: 3 * MIB,
                    length: MIB as u32,
                    required: true,
                },
                RegionEntry {
                    guid: METADATA_REGION,
                    file_offset: 2 * MIB,
                    length: MIB as u32,
                    required: true,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(
            RegionTable::parse(&t.to_bytes(), REGION1_OFFSET).unwrap(),
            t
        );
    }

    #[test]
    fn golden_bytes_written_by_hand() {
        let mut b = vec![0u8; SIZE];
        b[0..4].copy_from_slice(b"regi");
        b[8] = 2;
        // BAT region 2DC27766-F623-4200-9D64-115E9BFD4A08, mixed-endian.
        b[16..32].copy_from_slice(&[
            0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
            0x4a, 0x08,
        ]);
        b[32 + 2] = 0x30; // FileOffset 3 MiB
        b[40 + 2] = 0x10; // Length 1 MiB
        b[44] = 1;
        // Metadata region 8B7CA206-4790-4B9A-B8FE-575F050F886E.
        b[48..64].copy_from_slice(&[
            0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f,
            0x88, 0x6e,
        ]);
        b[64 + 2] = 0x20;
        b[72 + 2] = 0x10;
        b[76] = 1;
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(RegionTable::parse(&b, REGION1_OFFSET).unwrap(), sample());
        assert_eq!(sample().to_bytes(), b);
    }

    #[test]
    fn a_table_too_large_to_store_is_refused_not_a_panic() {
        let e = sample().entries[0];
        let mut t = RegionTable {
            entries: (0..MAX_ENTRIES as u64)
                .map(|i| RegionEntry {
                    file_offset: (i + 1) * MIB,
                    ..e
                })
                .collect(),
        };
        let full = t.try_to_bytes().unwrap();
        assert_eq!(&full[8..12], &MAX_ENTRIES.to_le_bytes());
        assert_eq!(t.to_bytes(), full);
        t.entries.push(e);
        assert!(matches!(t.try_to_bytes(), Err(Error::InvalidArgument(_))));
        let stored = t.to_bytes();
        assert_eq!(stored.len(), SIZE);
        assert!(RegionTable::parse(&stored, REGION1_OFFSET).is_err());
    }

    #[test]
    fn short_or_garbage_input_is_an_error_never_a_panic() {
        let good = sample().to_bytes();
        for n in [0, 3, 8, 16, 48, SIZE - 1] {
            assert!(RegionTable::parse(&good[..n], 0).is_err(), "{n} bytes");
        }
        let mut x = 0x9e37_79b9u32;
        for count in [0u32, 1, 2, 100, MAX_ENTRIES, MAX_ENTRIES + 1, u32::MAX] {
            let mut b: Vec<u8> = (0..SIZE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            b[0..4].copy_from_slice(b"regi");
            b[8..12].copy_from_slice(&count.to_le_bytes());
            b[4..8].fill(0);
            let crc = crc32c::crc32c(&b);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            let _ = RegionTable::parse(&b, 0);
        }
    }
}
