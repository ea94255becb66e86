//! The Block Allocation Table: entries, states and the geometry that places
//! payload blocks and sector-bitmap blocks in it.

use crate::error::{bad_field, Error, Result};
use crate::format::{MIB, SECTORS_PER_BITMAP};

/// Mask of the file offset bits of a BAT entry.
pub const OFFSET_MASK: u64 = 0xFFFF_FFFF_FFF0_0000;
/// Mask of the reserved bits 3..=19.
pub const RESERVED_MASK: u64 = 0x000F_FFF8;

/// The state of a payload BAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadState {
    /// No data in this file (differencing: read the parent; otherwise zeros).
    NotPresent,
    /// Content undefined (read as zeros).
    Undefined,
    /// Reads as zeros.
    Zero,
    /// Unmapped by a trim (read as zeros).
    Unmapped,
    /// Reads the block at the entry's offset.
    FullyPresent,
    /// Per sector: the sector bitmap says this file or the parent.
    PartiallyPresent,
}

impl PayloadState {
    /// Decode the 3 state bits. State 5 (UNMAPPED in spec v0.95) reads as Unmapped.
    pub fn from_bits(v: u64) -> Option<PayloadState> {
        Some(match v & 7 {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            3 | 5 => PayloadState::Unmapped,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            _ => return None,
        })
    }
    /// The state bits.
    pub fn bits(self) -> u64 {
        match self {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
        }
    }
}

/// Sector-bitmap entry state: present.
pub const SB_PRESENT: u64 = 6;
/// Sector-bitmap entry state: not present.
pub const SB_NOT_PRESENT: u64 = 0;

/// One raw BAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatEntry(pub u64);

impl BatEntry {
    /// An entry with `state` bits and file `offset` (a 1 MiB multiple).
    pub fn new(state: u64, offset: u64) -> BatEntry {
        BatEntry((offset & OFFSET_MASK) | (state & 7))
    }
    /// The raw state bits.
    pub fn state_bits(self) -> u64 {
        self.0 & 7
    }
    /// The file offset in bytes.
    pub fn offset(self) -> u64 {
        self.0 & OFFSET_MASK
    }
    /// Decoded payload state (None for reserved values 4).
    pub fn payload_state(self) -> Option<PayloadState> {
        PayloadState::from_bits(self.0)
    }
}

/// Where blocks are in the BAT for a given disk shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Virtual size.
    pub virtual_size: u64,
    /// Block size.
    pub block_size: u32,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Payload blocks per sector-bitmap block.
    pub chunk_ratio: u64,
    /// Number of payload blocks.
    pub data_blocks: u64,
    /// Number of sector-bitmap blocks.
    pub bitmap_blocks: u64,
    /// Entries the BAT must hold.
    pub total_entries: u64,
}

impl Geometry {
    /// Compute the geometry (inputs validated by the metadata parser or create).
    pub fn new(
        virtual_size: u64,
        block_size: u32,
        logical_sector_size: u32,
        has_parent: bool,
    ) -> Result<Geometry> {
        if block_size == 0 || logical_sector_size == 0 {
            return Err(bad_field(
                "geometry",
                "BlockSize",
                block_size as u64,
                "zero",
            ));
        }
        let chunk = SECTORS_PER_BITMAP * logical_sector_size as u64;
        let chunk_ratio = chunk / block_size as u64;
        if chunk_ratio == 0 {
            return Err(bad_field(
                "geometry",
                "BlockSize",
                block_size as u64,
                "larger than a chunk",
            ));
        }
        let data_blocks = virtual_size.div_ceil(block_size as u64);
        let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
        let total_entries = if has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else if data_blocks == 0 {
            0
        } else {
            data_blocks + (data_blocks - 1) / chunk_ratio
        };
        Ok(Geometry {
            virtual_size,
            block_size,
            logical_sector_size,
            chunk_ratio,
            data_blocks,
            bitmap_blocks,
            total_entries,
        })
    }
    /// BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }
    /// BAT index of the sector-bitmap block of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> usize {
        (chunk * (self.chunk_ratio + 1) + self.chunk_ratio) as usize
    }
    /// Bytes the BAT occupies, rounded up to 1 MiB.
    pub fn bat_region_len(&self) -> u64 {
        (self.total_entries * 8).div_ceil(MIB).max(1) * MIB
    }
    /// Whether BAT index `i` holds a sector-bitmap entry.
    pub fn is_bitmap_index(&self, i: usize) -> bool {
        (i as u64 + 1) % (self.chunk_ratio + 1) == 0
    }
}

/// Decode a BAT from raw bytes (as many entries as `geometry` needs).
pub fn parse(raw: &[u8], geometry: &Geometry) -> Result<Vec<u64>> {
    let n = geometry.total_entries as usize;
    if raw.len() < n * 8 {
        return Err(Error::Corrupt(format!(
            "BAT region holds {} entries, the disk needs {n}",
            raw.len() / 8
        )));
    }
    Ok(raw[..n * 8]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}
