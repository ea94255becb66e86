//! The dynamic disk header of a dynamic or differencing VHD: 1024 bytes,
//! big-endian, at the footer's data offset, with its eight parent locator
//! entries.
//!
//! Layout (offsets in bytes):
//!
//! ```text
//!   0  cookie "cxsparse"        8  data offset (unused, all ones)
//!  16  table offset (the BAT)  24  header version 1.0
//!  28  max table entries       32  block size
//!  36  checksum                40  parent unique id (16)
//!  56  parent timestamp        60  reserved
//!  64  parent unicode name (512 bytes, UTF-16 big-endian)
//! 576  8 parent locator entries of 24 bytes:
//!        platform code, platform data space, platform data length,
//!        reserved, platform data offset (u64)
//! 768  reserved (256 zeros)
//! ```
//!
//! Pure data: no I/O.

use super::footer::{be32, be64, checksum};
use crate::error::{Error, Reason, Result, Structure};

/// Size of the header.
pub(crate) const HEADER_SIZE: usize = 1024;
/// The header's cookie.
pub(crate) const COOKIE: &[u8; 8] = b"cxsparse";
const TABLE_OFFSET_OFFSET: usize = 16;
const VERSION_OFFSET: usize = 24;
const MAX_ENTRIES_OFFSET: usize = 28;
const BLOCK_SIZE_OFFSET: usize = 32;
const CHECKSUM_OFFSET: usize = 36;
const PARENT_ID_OFFSET: usize = 40;
const PARENT_TIMESTAMP_OFFSET: usize = 56;
const PARENT_NAME_OFFSET: usize = 64;
const PARENT_NAME_LEN: usize = 512;
const LOCATORS_OFFSET: usize = 576;
const LOCATOR_SIZE: usize = 24;
/// Number of parent locator entries.
pub(crate) const LOCATORS: usize = 8;
/// Largest block size accepted (QEMU and Hyper-V use 2 MiB).
pub(crate) const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Smallest block size accepted (one byte of sector bitmap).
pub(crate) const MIN_BLOCK_SIZE: u32 = 4096;

/// One parent locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LocatorEntry {
    /// Platform code ("W2ku", "W2ru", "MacX", …; 0 for an unused entry).
    pub(crate) code: u32,
    /// Space reserved for the data, in bytes (see [`LocatorEntry::space_bytes`]).
    pub(crate) space: u32,
    /// Length of the data in bytes.
    pub(crate) length: u32,
    /// File offset of the data.
    pub(crate) offset: u64,
}

impl LocatorEntry {
    /// The reserved space in bytes: the specification counts it in
    /// sectors, Windows in bytes; a value under 512 is taken as sectors
    /// (libvhdi reads it the same way).
    pub(crate) fn space_bytes(&self) -> u64 {
        if self.space < 512 {
            self.space as u64 * 512
        } else {
            self.space as u64
        }
    }
}

/// A parsed dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DynHeader {
    pub(crate) table_offset: u64,
    pub(crate) max_entries: u32,
    pub(crate) block_size: u32,
    pub(crate) parent_id: [u8; 16],
    pub(crate) parent_timestamp: u32,
    /// The parent's file name as stored (UTF-16 big-endian, NULs trimmed).
    pub(crate) parent_name: String,
    pub(crate) locators: [LocatorEntry; LOCATORS],
}

fn bad(field: &'static str, value: u64, problem: &'static str) -> Error {
    Error::corrupt(
        Structure::VhdHeader,
        None,
        Reason::BadField {
            field,
            value,
            problem,
        },
    )
}

impl DynHeader {
    /// Parse and validate: cookie, checksum, version, block size.
    pub(crate) fn parse(b: &[u8]) -> Result<DynHeader> {
        if b.len() < HEADER_SIZE {
            return Err(Error::corrupt(
                Structure::VhdHeader,
                None,
                Reason::Truncated {
                    needed: HEADER_SIZE as u64,
                    found: b.len() as u64,
                },
            ));
        }
        let b = &b[..HEADER_SIZE];
        if &b[..8] != COOKIE {
            return Err(Error::corrupt(
                Structure::VhdHeader,
                None,
                Reason::BadSignature { found: be64(b, 0) },
            ));
        }
        let stored = be32(b, CHECKSUM_OFFSET);
        let computed = checksum(b, CHECKSUM_OFFSET);
        if stored != computed {
            return Err(Error::corrupt(
                Structure::VhdHeader,
                None,
                Reason::BadChecksum { stored, computed },
            ));
        }
        let version = be32(b, VERSION_OFFSET);
        if version >> 16 != 1 {
            return Err(bad(
                "header version",
                version as u64,
                "only version 1 is known",
            ));
        }
        let block_size = be32(b, BLOCK_SIZE_OFFSET);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(bad(
                "block size",
                block_size as u64,
                "not a power of two from 4 KiB to 256 MiB",
            ));
        }
        let table_offset = be64(b, TABLE_OFFSET_OFFSET);
        if table_offset % 512 != 0 {
            return Err(bad(
                "table offset",
                table_offset,
                "not on a 512-byte sector",
            ));
        }
        let mut parent_id = [0u8; 16];
        parent_id.copy_from_slice(&b[PARENT_ID_OFFSET..PARENT_ID_OFFSET + 16]);
        let name: Vec<u16> = b[PARENT_NAME_OFFSET..PARENT_NAME_OFFSET + PARENT_NAME_LEN]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let mut locators = [LocatorEntry::default(); LOCATORS];
        for (i, l) in locators.iter_mut().enumerate() {
            let at = LOCATORS_OFFSET + i * LOCATOR_SIZE;
            *l = LocatorEntry {
                code: be32(b, at),
                space: be32(b, at + 4),
                length: be32(b, at + 8),
                offset: be64(b, at + 16),
            };
        }
        Ok(DynHeader {
            table_offset,
            max_entries: be32(b, MAX_ENTRIES_OFFSET),
            block_size,
            parent_id,
            parent_timestamp: be32(b, PARENT_TIMESTAMP_OFFSET),
            parent_name: String::from_utf16_lossy(&name),
            locators,
        })
    }

    /// The 1024 bytes, with the checksum.
    pub(crate) fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(COOKIE);
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        b[TABLE_OFFSET_OFFSET..TABLE_OFFSET_OFFSET + 8]
            .copy_from_slice(&self.table_offset.to_be_bytes());
        b[VERSION_OFFSET..VERSION_OFFSET + 4].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        b[MAX_ENTRIES_OFFSET..MAX_ENTRIES_OFFSET + 4]
            .copy_from_slice(&self.max_entries.to_be_bytes());
        b[BLOCK_SIZE_OFFSET..BLOCK_SIZE_OFFSET + 4].copy_from_slice(&self.block_size.to_be_bytes());
        b[PARENT_ID_OFFSET..PARENT_ID_OFFSET + 16].copy_from_slice(&self.parent_id);
        b[PARENT_TIMESTAMP_OFFSET..PARENT_TIMESTAMP_OFFSET + 4]
            .copy_from_slice(&self.parent_timestamp.to_be_bytes());
        let name: Vec<u16> = self
            .parent_name
            .encode_utf16()
            .take(PARENT_NAME_LEN / 2 - 1)
            .collect();
        for (i, c) in name.iter().enumerate() {
            let at = PARENT_NAME_OFFSET + 2 * i;
            b[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        for (i, l) in self.locators.iter().enumerate() {
            let at = LOCATORS_OFFSET + i * LOCATOR_SIZE;
            b[at..at + 4].copy_from_slice(&l.code.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&l.space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&l.length.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&l.offset.to_be_bytes());
        }
        let c = checksum(&b, CHECKSUM_OFFSET);
        b[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut h = DynHeader {
            table_offset: 1536,
            max_entries: 4,
            block_size: 2 << 20,
            parent_id: [3; 16],
            parent_timestamp: 77,
            parent_name: "base.vhd".into(),
            locators: [LocatorEntry::default(); LOCATORS],
        };
        h.locators[0] = LocatorEntry {
            code: u32::from_be_bytes(*b"W2ku"),
            space: 512,
            length: 40,
            offset: 4096,
        };
        let b = h.to_bytes();
        assert_eq!(DynHeader::parse(&b).unwrap(), h);
        let mut bad = b;
        bad[40] ^= 1;
        assert!(DynHeader::parse(&bad).is_err());
    }
}
