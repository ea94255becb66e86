//! Resize of one base file (the file-level steps of `Disk::resize`).
//!
//! The BAT layout does not depend on the virtual size: payload block `b`
//! sits at index `b + b / chunk_ratio` and the chunk ratio is
//! `2^23 * LogicalSectorSize / BlockSize` (MS-VHDX 2.5), so a BAT for
//! another size keeps every existing entry at its index; entries are only
//! added or dropped at the end (the sector-bitmap entries of a base file
//! are all zero, SB_NOT_PRESENT, wherever they fall).
//!
//! The virtual size item, and the region table when the BAT moves, change
//! in one log entry (the spec says the region table is updated through
//! the log), so that a crash leaves the old size or the new one:
//!
//! - grow: entries for the new blocks are written first where nothing
//!   reads them yet (past the old entries of the BAT region, or a new,
//!   larger BAT region at the end of the file holding a copy of the old
//!   entries), with the new blocks of a fixed file zeroed at the end and
//!   the tail of an old partial last block zeroed; sync; then the log
//!   entry (metadata sector, and both region tables when the BAT moved).
//! - shrink: the log entry first, then the entries past the new end are
//!   zeroed (nothing reads them any more).
//!
//! The handle's geometry is the old one afterwards: the caller reopens
//! the file (see `Disk::resize`).

use super::*;

/// What [`Vhdx::resize_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Resized {
    /// Whether the BAT moved to a new region at the end of the file.
    pub(crate) bat_relocated: bool,
}

impl Vhdx {
    /// Change the virtual size of this base file to `new_size` (validated
    /// by the caller: a multiple of the logical sector size, in range,
    /// not the current size). Blocks past a smaller end are dropped. The
    /// handle must be reopened afterwards, whatever the result.
    pub(crate) fn resize_file(&self, new_size: u64) -> Result<Resized> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.parent {
            return Err(Error::Unsupported(
                "resizing a differencing disk is not supported yet".into(),
            ));
        }
        let old = self.geo;
        let new = Geometry::new(new_size, old.block_size, old.logical_sector_size, false)?;
        debug_assert_eq!(new.chunk_ratio, old.chunk_ratio);
        self.check_not_poisoned()?;
        // A visible change: a new DataWriteGuid, then nothing else dirty.
        self.begin_session(true)?;
        let _one = lock(&self.flushing);
        self.flush_serialized()?;
        let mut out = Resized::default();
        let bs = old.block_size as u64;
        let mut images: Vec<(u64, Vec<u8>)> = Vec::new();
        if new_size > old.virtual_size {
            let fixed = self.kind() == DiskKind::Fixed;
            let file_end = lock(&self.state).file_end;
            let mut end = align_up(self.storage.len()?.max(file_end), MIB)
                .ok_or_else(|| Error::InvalidArgument("the file is too large".into()))?;
            // The tail of an old partial last block reads zeros from now on.
            if old.virtual_size % bs != 0 {
                let last = old.data_blocks - 1;
                let e = self.block_entry(last);
                if e.payload_state() == Some(PayloadState::FullyPresent) {
                    let at = old.virtual_size % bs;
                    let zeros = vec![0u8; (bs - at) as usize];
                    self.storage.write_at(&zeros, e.offset() + at)?;
                }
            }
            let region_len = self.bat_region_length()?;
            out.bat_relocated = new.total_entries * 8 > region_len;
            let new_bat = if out.bat_relocated {
                let at = end;
                let len = align_up(new.total_entries * 8, MIB).unwrap_or(MIB);
                end += len;
                Some((at, len))
            } else {
                None
            };
            let mut added = Vec::with_capacity((new.total_entries - old.total_entries) as usize);
            for i in old.total_entries as usize..new.total_entries as usize {
                if fixed && !new.is_bitmap_index(i) {
                    added.push(BatEntry::new(PayloadState::FullyPresent.bits(), end).0);
                    end += bs;
                } else {
                    added.push(0);
                }
            }
            let bytes = |v: &[u64]| v.iter().flat_map(|e| e.to_le_bytes()).collect::<Vec<u8>>();
            if self.storage.len()? < end {
                self.storage.set_len(end)?;
            }
            match new_bat {
                None => {
                    let at = self.bat_offset + old.total_entries * 8;
                    self.storage.write_at(&bytes(&added), at)?;
                }
                Some((at, len)) => {
                    let mut all: Vec<u64> = (0..old.total_entries as usize)
                        .map(|i| self.bat.at(i))
                        .collect();
                    all.extend(added);
                    let mut b = bytes(&all);
                    b.resize(len as usize, 0);
                    self.storage.write_at(&b, at)?;
                    images.extend(self.region_images(at, len)?);
                }
            }
            lock(&self.state).file_end = end;
        }
        // The size item (and the region tables) in one log entry; `apply`
        // syncs what was written above before it writes the entry.
        let mut m = self.metadata();
        m.virtual_size = new_size;
        images.extend(self.changed_sectors(
            self.meta_offset,
            &m.to_region_bytes(self.meta_len as usize)?,
        )?);
        if images.len() > self.entry_cap {
            return Err(Error::Unsupported(format!(
                "a resize changing {} sectors does not fit in one entry of this file's \
                 {} KiB log",
                images.len(),
                self.log_length / 1024
            )));
        }
        let entry = {
            let mut st = self.lock_for_flush();
            self.check_writable(&st)?;
            for (off, b) in images {
                st.dirty.insert(off, Dirty::Bytes(b));
            }
            self.stage(&mut st)?
        };
        self.apply(entry)?;
        if new.total_entries < old.total_entries {
            // Nothing reads the dropped entries now; their blocks are
            // given back when the reopened file is cut.
            let n = (old.total_entries - new.total_entries) as usize;
            self.storage
                .write_at(&vec![0u8; n * 8], self.bat_offset + new.total_entries * 8)?;
            let mut st = lock(&self.state);
            self.sync(&mut st)?;
        }
        Ok(out)
    }

    /// The length of the BAT region the region table gives.
    fn bat_region_length(&self) -> Result<u64> {
        let (table, _) = self.region_table()?;
        Ok(table
            .find(&BAT_REGION)
            .map(|r| r.length as u64)
            .unwrap_or(0))
    }

    /// The region table in use (the first copy when valid, else the
    /// second) and the raw bytes of both copies.
    fn region_table(&self) -> Result<(RegionTable, [Vec<u8>; 2])> {
        let mut raw = [vec![0u8; region::SIZE], vec![0u8; region::SIZE]];
        self.storage.read_at(&mut raw[0], REGION1_OFFSET)?;
        self.storage.read_at(&mut raw[1], REGION2_OFFSET)?;
        let t = RegionTable::parse(&raw[0], REGION1_OFFSET)
            .or_else(|_| RegionTable::parse(&raw[1], REGION2_OFFSET))?;
        Ok((t, raw))
    }

    /// The changed sectors of both region tables once the BAT region is
    /// at `offset` with `length` bytes.
    fn region_images(&self, offset: u64, length: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let (mut t, raw) = self.region_table()?;
        let length = u32::try_from(length)
            .map_err(|_| Error::Unsupported(format!("a BAT region of {length} bytes")))?;
        for e in t.entries.iter_mut() {
            if e.guid == BAT_REGION {
                e.file_offset = offset;
                e.length = length;
            }
        }
        let new = t.try_to_bytes()?;
        let mut out = Vec::new();
        for (base, old) in [(REGION1_OFFSET, &raw[0]), (REGION2_OFFSET, &raw[1])] {
            out.extend(diff_sectors(base, old, &new));
        }
        Ok(out)
    }

    /// The sectors of the `new` bytes at file offset `base` that differ
    /// from what the file holds.
    fn changed_sectors(&self, base: u64, new: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut old = vec![0u8; new.len()];
        self.storage.read_at(&mut old, base)?;
        Ok(diff_sectors(base, &old, new))
    }
}

/// The 4 KiB sectors of `new` (at file offset `base`) that differ from `old`.
fn diff_sectors(base: u64, old: &[u8], new: &[u8]) -> Vec<(u64, Vec<u8>)> {
    old.chunks(SECTOR as usize)
        .zip(new.chunks(SECTOR as usize))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (_, b))| (base + k as u64 * SECTOR, b.to_vec()))
        .collect()
}

impl Vhdx {
    /// Refuse every later write and flush of this handle (its view of the
    /// file is stale): used when a resize could not reopen the file.
    pub(crate) fn poison(&self, why: &str) {
        let mut st = lock(&self.state);
        st.poisoned.get_or_insert_with(|| why.to_string());
        self.poisoned_flag.store(true, Ordering::Release);
    }
}
