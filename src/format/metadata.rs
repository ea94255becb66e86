//! The metadata region: its table and the system items.

use uuid::Uuid;

use crate::error::{bad_field, Error, Reason, Result, Structure};
use crate::format::{
    put16, put32, put64, put_guid, Reader, KIB, MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE,
    META_FILE_PARAMETERS, META_LOGICAL_SECTOR_SIZE, META_PARENT_LOCATOR, META_PHYSICAL_SECTOR_SIZE,
    META_VIRTUAL_DISK_ID, META_VIRTUAL_DISK_SIZE, MIB, MIN_BLOCK_SIZE,
};

// Byte layout of the metadata table (MS-VHDX 2.6.1), little-endian, 64 KiB at
// the start of the metadata region:
//
//   0   8  Signature "metadata"
//   8   2  reserved
//  10   2  EntryCount (at most 2047)
//  12  20  reserved
//  32      entries, 32 bytes each:
//            0  16  ItemId
//           16   4  Offset (from the start of the region; 0 for an empty item)
//           20   4  Length (at most 1 MiB)
//           24   4  bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired
//           28   4  reserved
//
// System items (MS-VHDX 2.6.2), each at its entry's Offset:
//   file parameters      0 4 BlockSize; 4 4 bit 0 LeaveBlocksAllocated, bit 1 HasParent
//   virtual disk size    0 8 VirtualDiskSize
//   virtual disk id      0 16 VirtualDiskId (a GUID)
//   logical sector size  0 4 LogicalSectorSize (512 or 4096)
//   physical sector size 0 4 PhysicalSectorSize (512 or 4096)

const SIGNATURE_OFFSET: usize = 0;
const ENTRY_COUNT_OFFSET: usize = 10;
const ENTRIES_OFFSET: usize = 32;
const ENTRY_SIZE: usize = 32;
const ENTRY_ITEM_ID_OFFSET: usize = 0;
const ENTRY_OFFSET_OFFSET: usize = 16;
const ENTRY_LENGTH_OFFSET: usize = 20;
const ENTRY_FLAGS_OFFSET: usize = 24;
const FP_BLOCK_SIZE_OFFSET: usize = 0;
const FP_FLAGS_OFFSET: usize = 4;
const FP_SIZE: usize = 8;
const _: () = assert!(ENTRIES_OFFSET + ENTRY_SIZE * MAX_ENTRIES as usize <= TABLE_SIZE);

/// "metadata".
pub const SIGNATURE: u64 = 0x6174_6164_6174_656D;
/// Size of the metadata table.
pub const TABLE_SIZE: usize = 64 * 1024;
/// Largest entry count.
pub const MAX_ENTRIES: u16 = 2047;
/// Largest item.
pub const MAX_ITEM_LEN: u32 = MIB as u32;

/// Undocumented item seen in Microsoft's own code: CHS parameters (optional).
pub const META_CHS: Uuid = uuid::uuid!("DA02D7BC-3D3A-423C-AC88-2A36AB21479B");
/// Undocumented item marking a file whose creation has not finished (required).
pub const META_INCOMPLETE: Uuid = uuid::uuid!("71CC85F0-1B69-4E28-9558-C3BF83AE75D3");

bitflags::bitflags! {
    /// Flags of a metadata table entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EntryFlags: u32 {
        /// A user item (not a system one).
        const IS_USER = 1;
        /// Describes the virtual disk (copied to children, replaced on merge).
        const IS_VIRTUAL_DISK = 2;
        /// An implementation must understand it.
        const IS_REQUIRED = 4;
    }
}

bitflags::bitflags! {
    /// Flags of the file parameters item.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FileParameterFlags: u32 {
        /// Keep every block allocated (fixed disks).
        const LEAVE_BLOCK_ALLOCATED = 1;
        /// A differencing disk.
        const HAS_PARENT = 2;
    }
}

/// One entry of the metadata table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataEntry {
    /// Item type.
    pub item_id: Uuid,
    /// Offset from the start of the region.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
    /// Flags.
    pub flags: EntryFlags,
}

/// Parse and validate the 64 KiB metadata table; `region_len` bounds the items.
pub fn parse_table(b: &[u8], region_len: u64) -> Result<Vec<MetadataEntry>> {
    const S: Structure = Structure::MetadataTable;
    if b.len() < TABLE_SIZE {
        return Err(Error::corrupt(
            S,
            None,
            Reason::Truncated {
                needed: TABLE_SIZE as u64,
                found: b.len() as u64,
            },
        ));
    }
    let r = Reader::new(b, S);
    let sig = r.u64(SIGNATURE_OFFSET)?;
    if sig != SIGNATURE {
        return Err(Error::corrupt(S, None, Reason::BadSignature { found: sig }));
    }
    let count = r.u16(ENTRY_COUNT_OFFSET)?;
    if count > MAX_ENTRIES {
        return Err(bad_field(
            S,
            "EntryCount",
            count as u64,
            "more than 2047 entries",
        ));
    }
    let mut out: Vec<MetadataEntry> = Vec::with_capacity(count as usize);
    let mut users = 0;
    for i in 0..count as usize {
        let o = ENTRIES_OFFSET + ENTRY_SIZE * i;
        let e = MetadataEntry {
            item_id: r.guid(o + ENTRY_ITEM_ID_OFFSET)?,
            offset: r.u32(o + ENTRY_OFFSET_OFFSET)?,
            length: r.u32(o + ENTRY_LENGTH_OFFSET)?,
            flags: EntryFlags::from_bits_retain(r.u32(o + ENTRY_FLAGS_OFFSET)?),
        };
        if e.length > MAX_ITEM_LEN {
            return Err(bad_field(
                S,
                "item Length",
                e.length as u64,
                "larger than 1 MiB",
            ));
        }
        if e.length == 0 {
            if e.offset != 0 {
                return Err(bad_field(
                    S,
                    "item Offset",
                    e.offset as u64,
                    "non-zero for an empty item",
                ));
            }
        } else if (e.offset as u64) < 64 * KIB || e.offset as u64 + e.length as u64 > region_len {
            return Err(bad_field(
                S,
                "item Offset",
                e.offset as u64,
                "outside the metadata region",
            ));
        }
        let user = e.flags.contains(EntryFlags::IS_USER);
        if user {
            users += 1;
            if users > 1024 {
                return Err(Error::corrupt(
                    S,
                    None,
                    Reason::Invalid("more than 1024 user items".into()),
                ));
            }
        }
        if out
            .iter()
            .any(|x| x.item_id == e.item_id && x.flags.contains(EntryFlags::IS_USER) == user)
        {
            return Err(Error::corrupt(
                S,
                None,
                Reason::Invalid(format!("item {} appears twice", e.item_id)),
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// The decoded metadata of a VHDX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Block size.
    pub block_size: u32,
    /// File parameter flags.
    pub file_flags: FileParameterFlags,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Virtual disk ID.
    pub disk_id: Uuid,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// The raw parent locator item, when present.
    pub parent_locator: Option<Vec<u8>>,
    /// Items this crate does not interpret (optional ones), kept as they are.
    pub other_items: Vec<(MetadataEntry, Vec<u8>)>,
}

fn need(
    items: &[(MetadataEntry, Vec<u8>)],
    id: &Uuid,
    name: &'static str,
    len: usize,
) -> Result<Vec<u8>> {
    let (_, data) = items
        .iter()
        .find(|(e, _)| e.item_id == *id && !e.flags.contains(EntryFlags::IS_USER))
        .ok_or_else(|| Error::corrupt(Structure::MetadataTable, None, Reason::Missing(name)))?;
    if data.len() < len {
        return Err(Error::corrupt(
            Structure::MetadataItem(name),
            None,
            Reason::Truncated {
                needed: len as u64,
                found: data.len() as u64,
            },
        ));
    }
    Ok(data.clone())
}

impl Metadata {
    /// Decode and validate the items (entry plus bytes).
    pub fn from_items(items: Vec<(MetadataEntry, Vec<u8>)>) -> Result<Metadata> {
        let fp = need(&items, &META_FILE_PARAMETERS, "file parameters", FP_SIZE)?;
        let fp = Reader::new(&fp, Structure::MetadataItem("file parameters"));
        let block_size = fp.u32(FP_BLOCK_SIZE_OFFSET)?;
        let file_flags = FileParameterFlags::from_bits_retain(fp.u32(FP_FLAGS_OFFSET)?);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(bad_field(
                Structure::MetadataItem("file parameters"),
                "BlockSize",
                block_size as u64,
                "must be a power of two from 1 MiB to 256 MiB",
            ));
        }
        let ls = Reader::new(
            &need(&items, &META_LOGICAL_SECTOR_SIZE, "logical sector size", 4)?,
            Structure::MetadataItem("logical sector size"),
        )
        .u32(0)?;
        if ls != 512 && ls != 4096 {
            return Err(bad_field(
                Structure::MetadataItem("logical sector size"),
                "LogicalSectorSize",
                ls as u64,
                "must be 512 or 4096",
            ));
        }
        let ps = Reader::new(
            &need(
                &items,
                &META_PHYSICAL_SECTOR_SIZE,
                "physical sector size",
                4,
            )?,
            Structure::MetadataItem("physical sector size"),
        )
        .u32(0)?;
        if ps != 512 && ps != 4096 {
            return Err(bad_field(
                Structure::MetadataItem("physical sector size"),
                "PhysicalSectorSize",
                ps as u64,
                "must be 512 or 4096",
            ));
        }
        let vs = Reader::new(
            &need(&items, &META_VIRTUAL_DISK_SIZE, "virtual disk size", 8)?,
            Structure::MetadataItem("virtual disk size"),
        )
        .u64(0)?;
        if vs == 0 || vs > MAX_VIRTUAL_SIZE || vs % ls as u64 != 0 {
            return Err(bad_field(
                Structure::MetadataItem("virtual disk size"),
                "VirtualDiskSize",
                vs,
                "zero, above 64 TiB or not a multiple of the logical sector size",
            ));
        }
        let disk_id = Reader::new(
            &need(&items, &META_VIRTUAL_DISK_ID, "virtual disk id", 16)?,
            Structure::MetadataItem("virtual disk id"),
        )
        .guid(0)?;
        let has_parent = file_flags.contains(FileParameterFlags::HAS_PARENT);
        let mut parent_locator = None;
        let mut other_items = Vec::new();
        for (e, data) in items {
            let system = !e.flags.contains(EntryFlags::IS_USER);
            let known = system
                && [
                    META_FILE_PARAMETERS,
                    META_VIRTUAL_DISK_SIZE,
                    META_VIRTUAL_DISK_ID,
                    META_LOGICAL_SECTOR_SIZE,
                    META_PHYSICAL_SECTOR_SIZE,
                ]
                .contains(&e.item_id);
            if known {
                continue;
            }
            if system && e.item_id == META_PARENT_LOCATOR {
                parent_locator = Some(data);
                continue;
            }
            if system && e.item_id == META_INCOMPLETE {
                return Err(Error::Unsupported(
                    "the file is marked incomplete (its creation did not finish)".into(),
                ));
            }
            if e.flags.contains(EntryFlags::IS_REQUIRED) {
                return Err(Error::Unsupported(format!(
                    "required metadata item {}",
                    e.item_id
                )));
            }
            other_items.push((e, data));
        }
        if has_parent && parent_locator.is_none() {
            return Err(Error::corrupt(
                Structure::MetadataTable,
                None,
                Reason::Missing("the parent locator of a differencing disk"),
            ));
        }
        Ok(Metadata {
            block_size,
            file_flags,
            virtual_size: vs,
            disk_id,
            logical_sector_size: ls,
            physical_sector_size: ps,
            parent_locator,
            other_items,
        })
    }

    /// Whether the disk has a parent.
    pub fn has_parent(&self) -> bool {
        self.file_flags.contains(FileParameterFlags::HAS_PARENT)
    }

    /// Serialise the whole region (table and items) into `region_len` bytes.
    pub fn to_region_bytes(&self, region_len: usize) -> Result<Vec<u8>> {
        let mut items: Vec<(Uuid, EntryFlags, Vec<u8>)> = Vec::new();
        let vd = EntryFlags::IS_VIRTUAL_DISK | EntryFlags::IS_REQUIRED;
        let mut fp = vec![0u8; FP_SIZE];
        put32(&mut fp, FP_BLOCK_SIZE_OFFSET, self.block_size);
        put32(&mut fp, FP_FLAGS_OFFSET, self.file_flags.bits());
        items.push((META_FILE_PARAMETERS, EntryFlags::IS_REQUIRED, fp));
        items.push((
            META_VIRTUAL_DISK_SIZE,
            vd,
            self.virtual_size.to_le_bytes().to_vec(),
        ));
        items.push((
            META_VIRTUAL_DISK_ID,
            vd,
            self.disk_id.to_bytes_le().to_vec(),
        ));
        items.push((
            META_LOGICAL_SECTOR_SIZE,
            vd,
            self.logical_sector_size.to_le_bytes().to_vec(),
        ));
        items.push((
            META_PHYSICAL_SECTOR_SIZE,
            vd,
            self.physical_sector_size.to_le_bytes().to_vec(),
        ));
        if let Some(pl) = &self.parent_locator {
            items.push((META_PARENT_LOCATOR, EntryFlags::IS_REQUIRED, pl.clone()));
        }
        for (e, d) in &self.other_items {
            items.push((e.item_id, e.flags, d.clone()));
        }
        let mut b = vec![0u8; region_len];
        put64(&mut b, SIGNATURE_OFFSET, SIGNATURE);
        put16(&mut b, ENTRY_COUNT_OFFSET, items.len() as u16);
        let mut pos = TABLE_SIZE;
        for (i, (id, flags, data)) in items.iter().enumerate() {
            let o = ENTRIES_OFFSET + ENTRY_SIZE * i;
            if pos + data.len() > region_len || o + ENTRY_SIZE > TABLE_SIZE {
                return Err(Error::InvalidArgument(
                    "metadata does not fit its region".into(),
                ));
            }
            put_guid(&mut b, o + ENTRY_ITEM_ID_OFFSET, id);
            let item_offset = if data.is_empty() { 0 } else { pos as u32 };
            put32(&mut b, o + ENTRY_OFFSET_OFFSET, item_offset);
            put32(&mut b, o + ENTRY_LENGTH_OFFSET, data.len() as u32);
            put32(&mut b, o + ENTRY_FLAGS_OFFSET, flags.bits());
            b[pos..pos + data.len()].copy_from_slice(data);
            pos += data.len();
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION_LEN: usize = MIB as usize;

    fn sample() -> Metadata {
        Metadata {
            block_size: 32 << 20,
            file_flags: FileParameterFlags::empty(),
            virtual_size: 1 << 30,
            disk_id: uuid::uuid!("00112233-4455-6677-8899-AABBCCDDEEFF"),
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent_locator: None,
            other_items: Vec::new(),
        }
    }

    fn decode(b: &[u8]) -> Result<Metadata> {
        let items = parse_table(b, b.len() as u64)?
            .into_iter()
            .map(|e| {
                let o = e.offset as usize;
                (e, b[o..o + e.length as usize].to_vec())
            })
            .collect();
        Metadata::from_items(items)
    }

    #[test]
    fn round_trip() {
        let mut m = sample();
        assert_eq!(decode(&m.to_region_bytes(REGION_LEN).unwrap()).unwrap(), m);
        m.file_flags = FileParameterFlags::HAS_PARENT;
        m.parent_locator = Some(vec![1, 2, 3, 4]);
        assert_eq!(decode(&m.to_region_bytes(REGION_LEN).unwrap()).unwrap(), m);
    }

    #[test]
    fn golden_bytes_written_by_hand() {
        let mut b = vec![0u8; REGION_LEN];
        b[0..8].copy_from_slice(b"metadata");
        b[10] = 5;
        // (ItemId mixed-endian, Offset, Length, Flags) for the five system items.
        let entries: [([u8; 16], u32, u32, u8); 5] = [
            (
                // CAA16737-FA36-4D43-B3B6-33F0AA44E76B file parameters
                [
                    0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa,
                    0x44, 0xe7, 0x6b,
                ],
                0x10000,
                8,
                4,
            ),
            (
                // 2FA54224-CD1B-4876-B211-5DBED83BF4B8 virtual disk size
                [
                    0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8,
                    0x3b, 0xf4, 0xb8,
                ],
                0x10008,
                8,
                6,
            ),
            (
                // BECA12AB-B2E6-4523-93EF-C309E000C746 virtual disk id
                [
                    0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0,
                    0x00, 0xc7, 0x46,
                ],
                0x10010,
                16,
                6,
            ),
            (
                // 8141BF1D-A96F-4709-BA47-F233A8FAAB5F logical sector size
                [
                    0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8,
                    0xfa, 0xab, 0x5f,
                ],
                0x10020,
                4,
                6,
            ),
            (
                // CDA348C7-445D-4471-9CC9-E9885251C556 physical sector size
                [
                    0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52,
                    0x51, 0xc5, 0x56,
                ],
                0x10024,
                4,
                6,
            ),
        ];
        for (i, (id, off, len, flags)) in entries.iter().enumerate() {
            let o = 32 + 32 * i;
            b[o..o + 16].copy_from_slice(id);
            b[o + 16..o + 20].copy_from_slice(&off.to_le_bytes());
            b[o + 20..o + 24].copy_from_slice(&len.to_le_bytes());
            b[o + 24] = *flags;
        }
        b[0x10003] = 0x02; // BlockSize 32 MiB
        b[0x1000b] = 0x40; // VirtualDiskSize 1 GiB
        b[0x10010..0x10020].copy_from_slice(&[
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        b[0x10021] = 0x02; // 512
        b[0x10025] = 0x10; // 4096
        assert_eq!(decode(&b).unwrap(), sample());
        assert_eq!(sample().to_region_bytes(REGION_LEN).unwrap(), b);
    }

    #[test]
    fn short_or_garbage_input_is_an_error_never_a_panic() {
        let good = sample().to_region_bytes(REGION_LEN).unwrap();
        for n in [0, 7, 8, 11, 64, TABLE_SIZE - 1] {
            assert!(
                parse_table(&good[..n], REGION_LEN as u64).is_err(),
                "{n} bytes"
            );
        }
        let mut x = 0x1234_5679u32;
        for count in [0u16, 1, 5, 100, MAX_ENTRIES, MAX_ENTRIES + 1, u16::MAX] {
            let mut b: Vec<u8> = (0..TABLE_SIZE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            b[0..8].copy_from_slice(b"metadata");
            b[10..12].copy_from_slice(&count.to_le_bytes());
            let _ = parse_table(&b, REGION_LEN as u64);
        }
        // An item shorter than its fields is refused, not read past its end.
        let mut items: Vec<(MetadataEntry, Vec<u8>)> = parse_table(&good, REGION_LEN as u64)
            .unwrap()
            .into_iter()
            .map(|e| {
                let o = e.offset as usize;
                (e, good[o..o + e.length as usize].to_vec())
            })
            .collect();
        items[0].1.truncate(4);
        assert!(matches!(
            Metadata::from_items(items),
            Err(Error::Corrupt(crate::error::Corruption {
                structure: Structure::MetadataItem("file parameters"),
                reason: Reason::Truncated {
                    needed: 8,
                    found: 4
                },
                ..
            }))
        ));
    }
}
