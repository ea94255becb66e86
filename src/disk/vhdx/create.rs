//! Creating a new VHDX (fixed, dynamic or differencing) on empty storage.

use super::*;

impl Vhdx {
    /// Create a VHDX on empty storage; `parent` makes it a differencing
    /// disk; `user_items` (GUID, bytes) are user metadata items it holds
    /// from the start (no log entry needed later to add them).
    pub(crate) fn create(
        storage: &dyn Storage,
        opts: &CreateOptions,
        creator: &str,
        parent: Option<&ParentSpec>,
        user_items: &[(Uuid, Vec<u8>)],
    ) -> Result<()> {
        validate_create(opts)?;
        let has_parent = parent.is_some();
        let geo = Geometry::new(
            opts.virtual_size,
            opts.block_size,
            opts.logical_sector_size,
            has_parent,
        )?;
        let fixed = opts.fixed && !has_parent;
        let log_offset = MIB;
        let meta_offset = log_offset + opts.log_size as u64;
        let meta_len = MIB;
        let bat_offset = meta_offset + meta_len;
        let bat_len = geo.bat_region_len();
        if bat_len > u32::MAX as u64 {
            return Err(Error::InvalidArgument("the BAT would exceed 4 GiB".into()));
        }
        let data_start = bat_offset + bat_len;
        let mut flags = FileParameterFlags::empty();
        if fixed {
            flags |= FileParameterFlags::LEAVE_BLOCK_ALLOCATED;
        }
        if has_parent {
            flags |= FileParameterFlags::HAS_PARENT;
        }
        let meta = Metadata {
            block_size: opts.block_size,
            file_flags: flags,
            virtual_size: opts.virtual_size,
            disk_id: parent.map(|p| p.disk_id).unwrap_or_else(Uuid::new_v4),
            logical_sector_size: opts.logical_sector_size,
            physical_sector_size: opts.physical_sector_size,
            parent_locator: parent.map(|p| p.locator.to_bytes()),
            other_items: user_items
                .iter()
                .map(|(id, data)| {
                    let entry = MetadataEntry {
                        item_id: *id,
                        offset: 0,
                        length: data.len() as u32,
                        flags: metadata::EntryFlags::IS_USER,
                    };
                    (entry, data.clone())
                })
                .collect(),
        };
        let regions = RegionTable {
            entries: vec![
                RegionEntry {
                    guid: BAT_REGION,
                    file_offset: bat_offset,
                    length: bat_len as u32,
                    required: true,
                },
                RegionEntry {
                    guid: METADATA_REGION,
                    file_offset: meta_offset,
                    length: meta_len as u32,
                    required: true,
                },
            ],
        };
        let mut h = Header {
            sequence_number: 0,
            file_write_guid: Uuid::new_v4(),
            data_write_guid: Uuid::new_v4(),
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: opts.log_size,
            log_offset,
        };
        // Everything but the file identifier first; the identifier last, so
        // that an interrupted create is never taken for a valid disk.
        // A differencing disk gets every chunk's sector bitmap at once, all
        // zeros (a hole in the file): "every sector in the parent". The spec
        // allows a bitmap no block needs yet, and libvhdi (20210425) reads a
        // chunk whose bitmap is not present as if its bitmap were the bytes
        // at file offset 0, so only this way does it read a pristine chunk
        // from the parent. Costs 1 MiB of file length (none of the disk) per
        // chunk: 4 GiB of virtual size with 512-byte sectors, 32 GiB with 4 KiB.
        let bitmaps = if has_parent { geo.bitmap_blocks } else { 0 };
        let end = if fixed {
            data_start + geo.data_blocks * opts.block_size as u64
        } else {
            data_start + bitmaps * MIB
        };
        storage.set_len(end)?;
        for chunk in 0..bitmaps {
            let e = BatEntry::new(SB_PRESENT, data_start + chunk * MIB);
            let at = bat_offset + geo.bitmap_index(chunk) as u64 * 8;
            storage.write_at(&e.0.to_le_bytes(), at)?;
        }
        if fixed {
            storage.allocate(data_start, end - data_start)?;
            let mut raw = vec![0u8; (geo.total_entries * 8) as usize];
            for b in 0..geo.data_blocks {
                let i = geo.payload_index(b);
                let e = BatEntry::new(
                    PayloadState::FullyPresent.bits(),
                    data_start + b * opts.block_size as u64,
                );
                raw[i * 8..i * 8 + 8].copy_from_slice(&e.0.to_le_bytes());
            }
            storage.write_at(&raw, bat_offset)?;
        }
        storage.write_at(&meta.to_region_bytes(meta_len as usize)?, meta_offset)?;
        let rt = regions.try_to_bytes()?;
        storage.write_at(&rt, REGION1_OFFSET)?;
        storage.write_at(&rt, REGION2_OFFSET)?;
        storage.write_at(&h.to_bytes(), HEADER1_OFFSET)?;
        h.sequence_number = 1;
        storage.write_at(&h.to_bytes(), HEADER2_OFFSET)?;
        storage.sync()?;
        let fid = FileIdentifier {
            creator: creator.to_string(),
        };
        storage.write_at(&fid.to_bytes(), 0)?;
        storage.sync()?;
        Ok(())
    }
}

pub(super) fn validate_create(o: &CreateOptions) -> Result<()> {
    let bad = |s: String| Err(Error::InvalidArgument(s));
    if o.logical_sector_size != 512 && o.logical_sector_size != 4096 {
        return bad(format!(
            "logical sector size {} (must be 512 or 4096)",
            o.logical_sector_size
        ));
    }
    if o.physical_sector_size != 512 && o.physical_sector_size != 4096 {
        return bad(format!(
            "physical sector size {} (must be 512 or 4096)",
            o.physical_sector_size
        ));
    }
    if !o.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&o.block_size)
    {
        return bad(format!(
            "block size {} (must be a power of two from 1 MiB to 256 MiB)",
            o.block_size
        ));
    }
    if o.virtual_size == 0 || o.virtual_size > MAX_VIRTUAL_SIZE {
        return bad(format!(
            "virtual size {} (must be from one sector to 64 TiB)",
            o.virtual_size
        ));
    }
    if o.virtual_size % o.logical_sector_size as u64 != 0 {
        return bad(format!(
            "virtual size {} is not a multiple of the logical sector size {}",
            o.virtual_size, o.logical_sector_size
        ));
    }
    if o.log_size == 0 || o.log_size as u64 % MIB != 0 {
        return bad(format!(
            "log size {} (must be a non-zero multiple of 1 MiB)",
            o.log_size
        ));
    }
    Ok(())
}
