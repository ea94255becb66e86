//! The log (journal): entries, descriptors, the active-sequence search of
//! [MS-VHDX] §2.3.3, and building new entries.
//!
//! File by file: `mod.rs` the entry and descriptor layouts (named offsets)
//! and their types; `entry.rs` reading and checking one entry; `scan.rs`
//! the linear scan for the active sequence; `build.rs` new entries.
//! Like the rest of `format`, pure: it works on bytes the caller read and
//! depends on `crate::error` and `crate::format` only; never on `io`,
//! `disk` or anything above.

use crate::error::{bad_field, Error, Reason, Result, Structure};
use crate::format::{le32, le64, put32, put64, put_guid};

mod build;
mod entry;
mod scan;

pub use build::{build_entry, max_data_sectors};
pub use entry::{for_each_update, read_data_sector, read_entry};
pub use scan::find_active_sequence;

// Byte layout of a log entry (MS-VHDX 2.3.1), little-endian, 4 KiB sectors:
//
// entry header, the first 64 bytes of the first sector:
//    0   4  Signature "loge"
//    4   4  Checksum: CRC-32C over the whole entry with this field zero
//    8   4  EntryLength (4 KiB multiple)
//   12   4  Tail: log offset of the first entry of the sequence
//   16   8  SequenceNumber (non-zero)
//   24   4  DescriptorCount
//   28   4  reserved
//   32  16  LogGuid (the header's)
//   48   8  FlushedFileOffset
//   56   8  LastFileOffset
//   64      descriptors, 32 bytes each (126 in the first sector, 128 in the next ones)
//
// zero descriptor:              data descriptor:
//    0  4  "zero"                  0  4  "desc"
//    4  4  reserved                4  4  TrailingBytes (sector bytes 4092..4096)
//    8  8  ZeroLength              8  8  LeadingBytes (sector bytes 0..8)
//   16  8  FileOffset             16  8  FileOffset
//   24  8  SequenceNumber         24  8  SequenceNumber
//
// data sector (one per data descriptor, after the descriptor sectors):
//    0     4  "data"
//    4     4  SequenceHigh (sequence >> 32)
//    8  4084  Data (sector bytes 8..4092)
// 4092     4  SequenceLow (sequence as u32)

const ENTRY_SIGNATURE_OFFSET: usize = 0;
const ENTRY_CHECKSUM_OFFSET: usize = 4;
const ENTRY_LENGTH_OFFSET: usize = 8;
const ENTRY_TAIL_OFFSET: usize = 12;
const ENTRY_SEQUENCE_OFFSET: usize = 16;
const ENTRY_DESCRIPTOR_COUNT_OFFSET: usize = 24;
const ENTRY_LOG_GUID_OFFSET: usize = 32;
const ENTRY_FLUSHED_FILE_OFFSET_OFFSET: usize = 48;
const ENTRY_LAST_FILE_OFFSET_OFFSET: usize = 56;
const ENTRY_HEADER_SIZE: usize = 64;
const DESC_SIZE: usize = 32;
const DESC_SIGNATURE_OFFSET: usize = 0;
const DESC_TRAILING_OFFSET: usize = 4;
const DESC_ZERO_LENGTH_OFFSET: usize = 8;
const DESC_LEADING_OFFSET: usize = 8;
const DESC_FILE_OFFSET_OFFSET: usize = 16;
const DESC_SEQUENCE_OFFSET: usize = 24;
const DATA_SIGNATURE_OFFSET: usize = 0;
const DATA_SEQUENCE_HIGH_OFFSET: usize = 4;
const DATA_OFFSET: usize = 8;
const DATA_SEQUENCE_LOW_OFFSET: usize = 4092;
const _: () = assert!(ENTRY_HEADER_SIZE + DESC_SIZE * DESCS_IN_FIRST == SECTOR);
const _: () = assert!(DESC_SIZE * DESCS_PER_SECTOR == SECTOR);

/// "loge".
pub const ENTRY_SIGNATURE: u32 = 0x6567_6F6C;
/// "desc".
pub const DATA_DESC_SIGNATURE: u32 = 0x6373_6564;
/// "zero".
pub const ZERO_DESC_SIGNATURE: u32 = 0x6F72_657A;
/// "data".
pub const DATA_SECTOR_SIGNATURE: u32 = 0x6174_6164;
/// Log sector size.
pub const SECTOR: usize = 4096;
/// Descriptors in the first sector of an entry.
pub const DESCS_IN_FIRST: usize = 126;
/// Descriptors in each further descriptor sector.
pub const DESCS_PER_SECTOR: usize = 128;

/// One update carried by a log entry, as found by [`for_each_update`]:
/// no sector data is held, a data update names where its sector is in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Write one 4 KiB sector.
    Data {
        /// Target file offset (4 KiB multiple).
        file_offset: u64,
        /// Where the data sector is, relative to the start of the log.
        log_position: u64,
        /// Bytes 0..8 of the sector (kept in the descriptor).
        leading: [u8; 8],
        /// Bytes 4092..4096 of the sector (kept in the descriptor).
        trailing: [u8; 4],
    },
    /// Write zeros.
    Zero {
        /// Target file offset (4 KiB multiple).
        file_offset: u64,
        /// Length (4 KiB multiple).
        length: u64,
    },
}

impl Update {
    /// The range this update writes (the end saturates).
    pub fn range(&self) -> (u64, u64) {
        match self {
            Update::Data { file_offset, .. } => {
                (*file_offset, file_offset.saturating_add(SECTOR as u64))
            }
            Update::Zero {
                file_offset,
                length,
            } => (*file_offset, file_offset.saturating_add(*length)),
        }
    }
}

/// Restore a data sector read from the log into the sector it stands for.
pub fn restore_sector(sector: &mut [u8], leading: &[u8; 8], trailing: &[u8; 4]) {
    sector[0..8].copy_from_slice(leading);
    sector[4092..4096].copy_from_slice(trailing);
}

/// A validated log entry: its header fields, not its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the entry inside the log.
    pub position: u64,
    /// Entry length in bytes.
    pub length: u64,
    /// Offset (inside the log) of the first entry of its sequence.
    pub tail: u64,
    /// Sequence number.
    pub sequence: u64,
    /// Size the file is known to have durably.
    pub flushed_file_offset: u64,
    /// Every structure lies below this offset.
    pub last_file_offset: u64,
    /// Number of descriptors.
    pub descriptor_count: u32,
}

/// Reads `buf.len()` bytes at a log-relative position (no wrap; the caller splits).
pub type LogReader<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + 'a;

/// Given a log-relative position, the next log-relative range `[start, end)`
/// at or after it that may hold data (`None`: only holes follow). Lets a
/// scan skip the holes of a sparse file; `|p| Ok(Some((p, u64::MAX)))`
/// scans everything.
pub type DataFinder<'a> = dyn Fn(u64) -> Result<Option<(u64, u64)>> + 'a;

/// Bytes read at once while scanning or checksumming.
const CHUNK: usize = 64 * SECTOR;

fn read_wrapped(read: &LogReader, log_len: u64, pos: u64, buf: &mut [u8]) -> Result<()> {
    let first = ((log_len - pos) as usize).min(buf.len());
    read(pos, &mut buf[..first])?;
    if first < buf.len() {
        read(0, &mut buf[first..])?;
    }
    Ok(())
}

fn desc_sectors(count: usize) -> usize {
    if count <= DESCS_IN_FIRST {
        1
    } else {
        1 + (count - DESCS_IN_FIRST).div_ceil(DESCS_PER_SECTOR)
    }
}

fn desc_offset(i: usize) -> usize {
    if i < DESCS_IN_FIRST {
        ENTRY_HEADER_SIZE + DESC_SIZE * i
    } else {
        let j = i - DESCS_IN_FIRST;
        SECTOR * (1 + j / DESCS_PER_SECTOR) + DESC_SIZE * (j % DESCS_PER_SECTOR)
    }
}
