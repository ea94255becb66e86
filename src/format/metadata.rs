//! The metadata region: its table and the system items.

use uuid::Uuid;

use crate::error::{bad_field, Error, Result};
use crate::format::{
    guid_at, le16, le32, le64, put16, put32, put64, put_guid, KIB, MAX_BLOCK_SIZE,
    MAX_VIRTUAL_SIZE, META_FILE_PARAMETERS, META_LOGICAL_SECTOR_SIZE, META_PARENT_LOCATOR,
    META_PHYSICAL_SECTOR_SIZE, META_VIRTUAL_DISK_ID, META_VIRTUAL_DISK_SIZE, MIB, MIN_BLOCK_SIZE,
};

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
    const S: &str = "metadata table";
    if b.len() < TABLE_SIZE {
        return Err(Error::Corrupt("metadata table is truncated".into()));
    }
    let sig = le64(b, 0);
    if sig != SIGNATURE {
        return Err(Error::BadSignature {
            structure: S,
            offset: 0,
            found: sig,
        });
    }
    let count = le16(b, 10);
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
        let o = 32 + 32 * i;
        let raw_flags = le32(b, o + 24);
        let e = MetadataEntry {
            item_id: guid_at(b, o),
            offset: le32(b, o + 16),
            length: le32(b, o + 20),
            flags: EntryFlags::from_bits_retain(raw_flags),
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
                return Err(Error::Corrupt(
                    "metadata table: more than 1024 user items".into(),
                ));
            }
        }
        if out
            .iter()
            .any(|x| x.item_id == e.item_id && x.flags.contains(EntryFlags::IS_USER) == user)
        {
            return Err(Error::Corrupt(format!(
                "metadata table: item {} appears twice",
                e.item_id
            )));
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
        .ok_or_else(|| Error::Corrupt(format!("metadata: required item {name} is missing")))?;
    if data.len() < len {
        return Err(bad_field(
            "metadata",
            name,
            data.len() as u64,
            "item too short",
        ));
    }
    Ok(data.clone())
}

impl Metadata {
    /// Decode and validate the items (entry plus bytes).
    pub fn from_items(items: Vec<(MetadataEntry, Vec<u8>)>) -> Result<Metadata> {
        const S: &str = "metadata";
        let fp = need(&items, &META_FILE_PARAMETERS, "file parameters", 8)?;
        let block_size = le32(&fp, 0);
        let file_flags = FileParameterFlags::from_bits_retain(le32(&fp, 4));
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(bad_field(
                S,
                "BlockSize",
                block_size as u64,
                "must be a power of two from 1 MiB to 256 MiB",
            ));
        }
        let ls = le32(
            &need(&items, &META_LOGICAL_SECTOR_SIZE, "logical sector size", 4)?,
            0,
        );
        if ls != 512 && ls != 4096 {
            return Err(bad_field(
                S,
                "LogicalSectorSize",
                ls as u64,
                "must be 512 or 4096",
            ));
        }
        let ps = le32(
            &need(
                &items,
                &META_PHYSICAL_SECTOR_SIZE,
                "physical sector size",
                4,
            )?,
            0,
        );
        if ps != 512 && ps != 4096 {
            return Err(bad_field(
                S,
                "PhysicalSectorSize",
                ps as u64,
                "must be 512 or 4096",
            ));
        }
        let vs = le64(
            &need(&items, &META_VIRTUAL_DISK_SIZE, "virtual disk size", 8)?,
            0,
        );
        if vs == 0 || vs > MAX_VIRTUAL_SIZE || vs % ls as u64 != 0 {
            return Err(bad_field(
                S,
                "VirtualDiskSize",
                vs,
                "zero, above 64 TiB or not a multiple of the logical sector size",
            ));
        }
        let disk_id = guid_at(
            &need(&items, &META_VIRTUAL_DISK_ID, "virtual disk id", 16)?,
            0,
        );
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
            return Err(Error::Corrupt(
                "metadata: differencing disk without a parent locator".into(),
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
        let mut fp = vec![0u8; 8];
        put32(&mut fp, 0, self.block_size);
        put32(&mut fp, 4, self.file_flags.bits());
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
        put64(&mut b, 0, SIGNATURE);
        put16(&mut b, 10, items.len() as u16);
        let mut pos = TABLE_SIZE;
        for (i, (id, flags, data)) in items.iter().enumerate() {
            let o = 32 + 32 * i;
            if pos + data.len() > region_len || o + 32 > TABLE_SIZE {
                return Err(Error::InvalidArgument(
                    "metadata does not fit its region".into(),
                ));
            }
            put_guid(&mut b, o, id);
            put32(&mut b, o + 16, if data.is_empty() { 0 } else { pos as u32 });
            put32(&mut b, o + 20, data.len() as u32);
            put32(&mut b, o + 24, flags.bits());
            b[pos..pos + data.len()].copy_from_slice(data);
            pos += data.len();
        }
        Ok(b)
    }
}
