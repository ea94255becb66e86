//! Pure VHDX on-disk structures ([MS-VHDX] v6.0): parsing at named offsets,
//! validation, and serialisation. No I/O policy and no `unsafe` here.
//!
//! One file per on-disk structure, each with its byte layout and `*_OFFSET`
//! constants at the top, and round-trip and golden tests at the bottom:
//!
//! - `fileid.rs`: the file type identifier at offset 0.
//! - `header.rs`: the two headers, and the choice of the current one.
//! - `region.rs`: the region tables.
//! - `metadata.rs`: the metadata table and the system items.
//! - `locator.rs`: the parent locator item.
//! - `bat.rs`: BAT entries and the geometry that places them.
//! - `log/`: the log: entry layout (`mod.rs`), reading one entry
//!   (`entry.rs`), the active-sequence search (`scan.rs`), new entries
//!   (`build.rs`).
//! - `read.rs`: `Reader`, bounds-checked little-endian reads that fail
//!   with a typed [`Corruption`](crate::error::Corruption), never a panic.
//!
//! Depends on `crate::error` only: nothing above it (`disk`, `checkpoint`,
//! `ffi`, the CLI) and no I/O of its own; the log scan reads through the
//! callbacks its caller passes.

#![forbid(unsafe_code)]

pub mod bat;
pub mod fileid;
pub mod header;
pub mod locator;
pub mod log;
pub mod metadata;
mod read;
pub mod region;

pub(crate) use read::Reader;

use uuid::Uuid;

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// Largest virtual disk: 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Smallest block size.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// Largest block size.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Sectors described by one sector-bitmap block (2^23).
pub const SECTORS_PER_BITMAP: u64 = 1 << 23;
/// Offset of header 1.
pub const HEADER1_OFFSET: u64 = 64 * KIB;
/// Offset of header 2.
pub const HEADER2_OFFSET: u64 = 128 * KIB;
/// Offset of region table 1.
pub const REGION1_OFFSET: u64 = 192 * KIB;
/// Offset of region table 2.
pub const REGION2_OFFSET: u64 = 256 * KIB;
/// End of the header section; every other object lies at or beyond it.
pub const HEADER_SECTION_SIZE: u64 = MIB;

/// Region: Block Allocation Table.
pub const BAT_REGION: Uuid = uuid::uuid!("2DC27766-F623-4200-9D64-115E9BFD4A08");
/// Region: metadata.
pub const METADATA_REGION: Uuid = uuid::uuid!("8B7CA206-4790-4B9A-B8FE-575F050F886E");
/// Metadata item: file parameters.
pub const META_FILE_PARAMETERS: Uuid = uuid::uuid!("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
/// Metadata item: virtual disk size.
pub const META_VIRTUAL_DISK_SIZE: Uuid = uuid::uuid!("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
/// Metadata item: virtual disk ID (a.k.a. page 83 data).
pub const META_VIRTUAL_DISK_ID: Uuid = uuid::uuid!("BECA12AB-B2E6-4523-93EF-C309E000C746");
/// Metadata item: logical sector size.
pub const META_LOGICAL_SECTOR_SIZE: Uuid = uuid::uuid!("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
/// Metadata item: physical sector size.
pub const META_PHYSICAL_SECTOR_SIZE: Uuid = uuid::uuid!("CDA348C7-445D-4471-9CC9-E9885251C556");
/// Metadata item: parent locator.
pub const META_PARENT_LOCATOR: Uuid = uuid::uuid!("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
/// Parent locator type: VHDX.
pub const PARENT_LOCATOR_VHDX: Uuid = uuid::uuid!("B04AEFB7-D19E-4A81-B789-25B8E9445913");

/// Read a little-endian u32 at `off` (the caller guarantees the bounds).
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// Read a little-endian u64 at `off`.
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Store a GUID in Microsoft mixed-endian form at `off`.
pub(crate) fn put_guid(b: &mut [u8], off: usize, g: &Uuid) {
    b[off..off + 16].copy_from_slice(&g.to_bytes_le());
}

/// Store a little-endian u16.
pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Store a little-endian u32.
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Store a little-endian u64.
pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// CRC-32C of `b` with the 4-byte checksum field at `field` taken as zero.
pub fn crc_with_zeroed_field(b: &[u8], field: usize) -> u32 {
    let c = crc32c::crc32c(&b[..field]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &b[field + 4..])
}

/// The first `size` bytes of `b`, once its 4-byte signature (at 0) and
/// CRC-32C (at 4, over `size` bytes) check out: the validation shared by
/// the headers and the region tables.
pub(crate) fn checked_structure(
    b: &[u8],
    size: usize,
    signature: u32,
    structure: crate::error::Structure,
    offset: u64,
) -> crate::error::Result<&[u8]> {
    use crate::error::{Error, Reason};
    if b.len() < size {
        return Err(Error::corrupt(
            structure,
            Some(offset),
            Reason::Truncated {
                needed: size as u64,
                found: b.len() as u64,
            },
        ));
    }
    let b = &b[..size];
    let sig = le32(b, 0);
    if sig != signature {
        return Err(Error::corrupt(
            structure,
            Some(offset),
            Reason::BadSignature { found: sig as u64 },
        ));
    }
    let stored = le32(b, 4);
    let computed = crc_with_zeroed_field(b, 4);
    if stored != computed {
        return Err(Error::corrupt(
            structure,
            Some(offset),
            Reason::BadChecksum { stored, computed },
        ));
    }
    Ok(b)
}

/// Round `v` up to a multiple of `align` (a power of two), None on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}
