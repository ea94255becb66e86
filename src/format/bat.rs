//! The Block Allocation Table: entries, states and the geometry that places
//! payload blocks and sector-bitmap blocks in it.

use crate::error::{bad_field, Error, Reason, Result, Structure};
use crate::format::{MIB, SECTORS_PER_BITMAP};

// Byte layout of a BAT entry (MS-VHDX 2.5.1), one little-endian u64; the BAT
// is an array of them, a sector-bitmap entry after every `chunk_ratio`
// payload entries:
//
//   bits  0..=2   State (PayloadState, or SB_* for a sector-bitmap entry)
//   bits  3..=19  reserved (zero)
//   bits 20..=63  FileOffsetMB: the block's file offset in MiB

/// Bytes of one BAT entry.
pub const ENTRY_SIZE: usize = 8;
/// Mask of the state bits of a BAT entry.
pub const STATE_MASK: u64 = 7;
const _: () = assert!(STATE_MASK | RESERVED_MASK | OFFSET_MASK == u64::MAX);
const _: () = assert!(STATE_MASK & RESERVED_MASK == 0 && RESERVED_MASK & OFFSET_MASK == 0);

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
        Some(match v & STATE_MASK {
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
        BatEntry((offset & OFFSET_MASK) | (state & STATE_MASK))
    }
    /// The raw state bits.
    pub fn state_bits(self) -> u64 {
        self.0 & STATE_MASK
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
                Structure::MetadataItem("file parameters"),
                "BlockSize",
                block_size as u64,
                "zero",
            ));
        }
        let chunk = SECTORS_PER_BITMAP * logical_sector_size as u64;
        let chunk_ratio = chunk / block_size as u64;
        if chunk_ratio == 0 {
            return Err(bad_field(
                Structure::MetadataItem("file parameters"),
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

/// File offset of BAT entry `i`, when `regions` holds the BAT region.
pub fn entry_offset(regions: &[crate::format::region::RegionEntry], i: usize) -> Option<u64> {
    let bat = regions
        .iter()
        .find(|r| r.guid == crate::format::BAT_REGION)?;
    bat.file_offset.checked_add(i as u64 * ENTRY_SIZE as u64)
}

/// Decode a BAT from raw bytes (as many entries as `geometry` needs).
pub fn parse(raw: &[u8], geometry: &Geometry) -> Result<Vec<u64>> {
    let n = geometry.total_entries;
    let have = raw.len() / ENTRY_SIZE;
    if (have as u64) < n {
        return Err(Error::corrupt(
            Structure::Bat,
            None,
            Reason::Mismatch {
                what: "the number of entries the BAT region holds",
                expected: n,
                found: have as u64,
            },
        ));
    }
    Ok(raw
        .chunks_exact(ENTRY_SIZE)
        .take(n as usize)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        for state in [0, 1, 2, 3, 6, 7] {
            let e = BatEntry::new(state, 0x1234 * MIB);
            assert_eq!((e.state_bits(), e.offset()), (state, 0x1234 * MIB));
            assert_eq!(e.payload_state().unwrap().bits(), state);
        }
        assert_eq!(BatEntry::new(4, 0).payload_state(), None);
        assert_eq!(
            BatEntry::new(5, 0).payload_state(),
            Some(PayloadState::Unmapped)
        );
    }

    #[test]
    fn golden_bytes_written_by_hand() {
        // Block at 3 MiB, FullyPresent: 3 << 20 | 6, stored little-endian.
        let raw = [
            0x06, 0x00, 0x30, 0x00, 0, 0, 0, 0, 0x07, 0x00, 0x50, 0, 0, 0, 0, 0,
        ];
        let g = Geometry::new(2 * MIB, MIB as u32, 512, false).unwrap();
        assert_eq!(g.total_entries, 2);
        let v = parse(&raw, &g).unwrap();
        assert_eq!(
            v,
            [BatEntry::new(6, 3 * MIB).0, BatEntry::new(7, 5 * MIB).0]
        );
        assert_eq!(
            BatEntry(v[0]).payload_state(),
            Some(PayloadState::FullyPresent)
        );
        assert_eq!(&BatEntry::new(6, 3 * MIB).0.to_le_bytes()[..], &raw[..8]);
    }

    #[test]
    fn short_input_is_an_error_never_a_panic() {
        let g = Geometry::new(4 * MIB, MIB as u32, 512, false).unwrap();
        let raw = vec![0xffu8; 4 * ENTRY_SIZE];
        assert_eq!(parse(&raw, &g).unwrap().len(), 4);
        for n in [0, 7, 8, 31] {
            assert!(
                matches!(parse(&raw[..n], &g), Err(Error::Corrupt(_))),
                "{n}"
            );
        }
        let huge = Geometry {
            total_entries: u64::MAX,
            ..g
        };
        assert!(parse(&raw, &huge).is_err());
    }
}
