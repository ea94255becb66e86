//! A deliberately small, independent VHDX parser for tests: it finds the
//! structures of a *valid* image (per FORMAT-NOTES.md) so that a test can
//! damage exactly one field, and re-seal checksums where the test wants the
//! damage to get past the CRC. It shares no code with the engine.
//!
//! It trusts its input (it is only ever run on images we just made), so it
//! panics on anything unexpected.

use uuid::Uuid;

/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// File offsets of the two headers.
pub const HEADERS: [usize; 2] = [0x10000, 0x20000];
/// File offsets of the two region tables.
pub const REGION_TABLES: [usize; 2] = [0x30000, 0x40000];
/// Bytes covered by a header's checksum.
pub const HEADER_LEN: usize = 4096;
/// Bytes covered by a region table's checksum.
pub const REGION_TABLE_LEN: usize = 0x10000;

/// Region: BAT.
pub const BAT_GUID: &str = "2DC27766-F623-4200-9D64-115E9BFD4A08";
/// Region: metadata.
pub const METADATA_GUID: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
/// Metadata item: file parameters (block size, flags).
pub const FILE_PARAMETERS: &str = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B";
/// Metadata item: virtual disk size.
pub const VIRTUAL_SIZE: &str = "2FA54224-CD1B-4876-B211-5DBED83BF4B8";
/// Metadata item: virtual disk ID.
pub const DISK_ID: &str = "BECA12AB-B2E6-4523-93EF-C309E000C746";
/// Metadata item: logical sector size.
pub const LOGICAL_SECTOR: &str = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F";
/// Metadata item: physical sector size.
pub const PHYSICAL_SECTOR: &str = "CDA348C7-445D-4471-9CC9-E9885251C556";

/// Parse one of the GUID constants.
pub fn guid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("GUID constant")
}

/// Little-endian u16 at `off`.
pub fn rd16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
/// Little-endian u32 at `off`.
pub fn rd32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
/// Little-endian u64 at `off`.
pub fn rd64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
/// Store a little-endian u16 at `off`.
pub fn wr16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
/// Store a little-endian u32 at `off`.
pub fn wr32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
/// Store a little-endian u64 at `off`.
pub fn wr64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
/// GUID stored in mixed-endian ("bytes_le") form at `off`.
pub fn rdguid(b: &[u8], off: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Uuid::from_bytes_le(a)
}
/// Store a GUID in mixed-endian form at `off`.
pub fn wrguid(b: &mut [u8], off: usize, g: Uuid) {
    b[off..off + 16].copy_from_slice(&g.to_bytes_le());
}

/// CRC-32C of `b` with the 4-byte field at `field` taken as zero.
pub fn crc_zeroed(b: &[u8], field: usize) -> u32 {
    let c = crc32c::crc32c(&b[..field]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &b[field + 4..])
}

/// Recompute and store the checksum of `b` (field at `field`).
pub fn seal(b: &mut [u8], field: usize) {
    let c = crc_zeroed(b, field);
    wr32(b, field, c);
}

/// Apply `f` to both headers (4 KiB each) and re-seal their checksums.
pub fn edit_headers(img: &mut [u8], f: impl Fn(&mut [u8])) {
    for h in HEADERS {
        let hdr = &mut img[h..h + HEADER_LEN];
        f(hdr);
        seal(hdr, 4);
    }
}

/// Apply `f` to both region tables (64 KiB each) and re-seal their checksums.
pub fn edit_region_tables(img: &mut [u8], f: impl Fn(&mut [u8])) {
    for t in REGION_TABLES {
        let tab = &mut img[t..t + REGION_TABLE_LEN];
        f(tab);
        seal(tab, 4);
    }
}

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Position in the table.
    pub index: usize,
    /// Region GUID.
    pub guid: Uuid,
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
    /// The Required word.
    pub required: u32,
}

/// One metadata table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaItem {
    /// Position in the table.
    pub index: usize,
    /// Item GUID.
    pub guid: Uuid,
    /// Offset from the start of the metadata region.
    pub offset: u32,
    /// Length of the item.
    pub length: u32,
    /// Flags (bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired).
    pub flags: u32,
}

/// Where everything is in a valid image.
#[derive(Debug, Clone)]
pub struct Layout {
    /// File offset of the current header.
    pub current_header: usize,
    /// The current header's LogGuid.
    pub log_guid: Uuid,
    /// Log offset.
    pub log_offset: u64,
    /// Log length.
    pub log_length: u32,
    /// The region table entries (table 1).
    pub regions: Vec<Region>,
    /// BAT region offset.
    pub bat_offset: u64,
    /// BAT region length.
    pub bat_length: u32,
    /// Metadata region offset.
    pub meta_offset: u64,
    /// Metadata region length.
    pub meta_length: u32,
    /// Metadata table entries.
    pub meta: Vec<MetaItem>,
    /// Block size.
    pub block_size: u32,
    /// Virtual size.
    pub virtual_size: u64,
    /// Logical sector size.
    pub logical_sector: u32,
    /// Payload blocks per sector-bitmap block.
    pub chunk_ratio: u64,
    /// Number of payload blocks.
    pub data_blocks: u64,
}

impl Layout {
    /// Parse a valid image; panics when it is not one.
    pub fn parse(img: &[u8]) -> Layout {
        assert_eq!(&img[0..8], b"vhdxfile", "file identifier");
        let mut best: Option<(u64, usize)> = None;
        for h in HEADERS {
            let hdr = &img[h..h + HEADER_LEN];
            if rd32(hdr, 0) != 0x6461_6568 || crc_zeroed(hdr, 4) != rd32(hdr, 4) {
                continue;
            }
            let seq = rd64(hdr, 8);
            match best {
                Some((s, _)) if s >= seq => {}
                _ => best = Some((seq, h)),
            }
        }
        let (_, current_header) = best.expect("a valid header");
        let hdr = &img[current_header..current_header + HEADER_LEN];
        let log_guid = rdguid(hdr, 48);
        let log_length = rd32(hdr, 68);
        let log_offset = rd64(hdr, 72);

        let t = REGION_TABLES
            .into_iter()
            .find(|&t| {
                let tab = &img[t..t + REGION_TABLE_LEN];
                rd32(tab, 0) == 0x6967_6572 && crc_zeroed(tab, 4) == rd32(tab, 4)
            })
            .expect("a valid region table");
        let tab = &img[t..t + REGION_TABLE_LEN];
        let count = rd32(tab, 8) as usize;
        assert!(count <= 2047);
        let regions: Vec<Region> = (0..count)
            .map(|i| {
                let e = 16 + 32 * i;
                Region {
                    index: i,
                    guid: rdguid(tab, e),
                    offset: rd64(tab, e + 16),
                    length: rd32(tab, e + 24),
                    required: rd32(tab, e + 28),
                }
            })
            .collect();
        let find = |g: &str| {
            *regions
                .iter()
                .find(|r| r.guid == guid(g))
                .expect("required region present")
        };
        let bat = find(BAT_GUID);
        let md = find(METADATA_GUID);

        let mo = md.offset as usize;
        assert_eq!(rd64(img, mo), 0x6174_6164_6174_656D, "metadata signature");
        let mcount = rd16(img, mo + 10) as usize;
        let meta: Vec<MetaItem> = (0..mcount)
            .map(|i| {
                let e = mo + 32 + 32 * i;
                MetaItem {
                    index: i,
                    guid: rdguid(img, e),
                    offset: rd32(img, e + 16),
                    length: rd32(img, e + 20),
                    flags: rd32(img, e + 24),
                }
            })
            .collect();
        let item = |g: &str| {
            let m = meta
                .iter()
                .find(|m| m.guid == guid(g))
                .expect("metadata item present");
            mo + m.offset as usize
        };
        let block_size = rd32(img, item(FILE_PARAMETERS));
        let virtual_size = rd64(img, item(VIRTUAL_SIZE));
        let logical_sector = rd32(img, item(LOGICAL_SECTOR));
        let chunk_ratio = ((1u64 << 23) * logical_sector as u64) / block_size as u64;
        let data_blocks = virtual_size.div_ceil(block_size as u64);
        Layout {
            current_header,
            log_guid,
            log_offset,
            log_length,
            regions,
            bat_offset: bat.offset,
            bat_length: bat.length,
            meta_offset: md.offset,
            meta_length: md.length,
            meta,
            block_size,
            virtual_size,
            logical_sector,
            chunk_ratio,
            data_blocks,
        }
    }

    /// The region entry with this GUID.
    pub fn region(&self, g: &str) -> Region {
        *self
            .regions
            .iter()
            .find(|r| r.guid == guid(g))
            .expect("region present")
    }

    /// The metadata entry with this GUID.
    pub fn item(&self, g: &str) -> MetaItem {
        *self
            .meta
            .iter()
            .find(|m| m.guid == guid(g))
            .expect("metadata item present")
    }

    /// File offset of a metadata item's value.
    pub fn item_pos(&self, g: &str) -> usize {
        self.meta_offset as usize + self.item(g).offset as usize
    }

    /// File offset of a metadata table entry.
    pub fn meta_entry_pos(&self, index: usize) -> usize {
        self.meta_offset as usize + 32 + 32 * index
    }

    /// File offset of the BAT entry of payload block `block`.
    pub fn bat_pos(&self, block: u64) -> usize {
        (self.bat_offset + 8 * (block + block / self.chunk_ratio)) as usize
    }

    /// The BAT entry of payload block `block`.
    pub fn bat_entry(&self, img: &[u8], block: u64) -> u64 {
        rd64(img, self.bat_pos(block))
    }

    /// Payload blocks that have a file offset (state 6 or 7), with it.
    pub fn allocated(&self, img: &[u8]) -> Vec<(u64, u64)> {
        (0..self.data_blocks)
            .filter_map(|b| {
                let e = self.bat_entry(img, b);
                matches!(e & 7, 6 | 7).then_some((b, e & 0xFFFF_FFFF_FFF0_0000))
            })
            .collect()
    }

    /// End of the last structure (region, log or payload block) in the file.
    pub fn end_of_structures(&self, img: &[u8]) -> u64 {
        let mut end = self.log_offset + self.log_length as u64;
        for r in &self.regions {
            end = end.max(r.offset + r.length as u64);
        }
        for (_, off) in self.allocated(img) {
            end = end.max(off + self.block_size as u64);
        }
        end
    }
}

/// A data sector to be written by a log entry: the full 4 KiB that should
/// land at `file_offset`.
pub struct LogWrite {
    /// Target file offset (4 KiB aligned).
    pub file_offset: u64,
    /// The 4096 bytes to write there.
    pub data: Vec<u8>,
}

/// Build one log entry (header sector with data descriptors, then one data
/// sector per write), checksum included.
pub fn log_entry(
    log_guid: Uuid,
    seq: u64,
    tail: u32,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: &[LogWrite],
) -> Vec<u8> {
    assert!(writes.len() <= 126);
    let len = 4096 * (1 + writes.len());
    let mut e = vec![0u8; len];
    wr32(&mut e, 0, 0x6567_6F6C); // "loge"
    wr32(&mut e, 8, len as u32);
    wr32(&mut e, 12, tail);
    wr64(&mut e, 16, seq);
    wr32(&mut e, 24, writes.len() as u32);
    wrguid(&mut e, 32, log_guid);
    wr64(&mut e, 48, flushed_file_offset);
    wr64(&mut e, 56, last_file_offset);
    for (i, w) in writes.iter().enumerate() {
        assert_eq!(w.data.len(), 4096);
        assert_eq!(w.file_offset % 4096, 0);
        let d = 64 + 32 * i;
        wr32(&mut e, d, 0x6373_6564); // "desc"
        wr32(&mut e, d + 4, rd32(&w.data, 4092));
        wr64(&mut e, d + 8, rd64(&w.data, 0));
        wr64(&mut e, d + 16, w.file_offset);
        wr64(&mut e, d + 24, seq);
        let s = 4096 * (1 + i);
        wr32(&mut e, s, 0x6174_6164); // "data"
        wr32(&mut e, s + 4, (seq >> 32) as u32);
        e[s + 8..s + 4092].copy_from_slice(&w.data[8..4092]);
        wr32(&mut e, s + 4092, seq as u32);
    }
    seal(&mut e, 4);
    e
}
