//! Resize of one file, base or differencing (the file-level steps of
//! `Disk::resize`).
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
    /// Change the virtual size of this file to `new_size` (validated by
    /// the caller: a multiple of the logical sector size, in range, not the
    /// current size). Blocks past a smaller end are dropped. The handle
    /// must be reopened afterwards, whatever the result.
    ///
    /// For a differencing file, `below` is the virtual size of its parent
    /// (what the chain under it can hold): space a grow adds under that
    /// size would show the parent's data, so it is made to read zeros
    /// (whole new blocks become ZERO; the tail of an old partial last
    /// block gets its sector bits, over zeroed data, in the entry that
    /// changes the size). Past it, new blocks stay NOT_PRESENT (the parent
    /// reads zeros there). `below` is ignored for a base file.
    pub(crate) fn resize_file(&self, new_size: u64, below: u64) -> Result<Resized> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let below = if self.parent { below } else { 0 };
        let old = self.geo;
        let new = Geometry::new(
            new_size,
            old.block_size,
            old.logical_sector_size,
            self.parent,
        )?;
        debug_assert_eq!(new.chunk_ratio, old.chunk_ratio);
        self.check_not_poisoned()?;
        // A visible change: a new DataWriteGuid, then nothing else dirty.
        self.begin_session(true)?;
        let _one = lock(&self.flushing);
        self.flush_serialized()?;
        let mut out = Resized::default();
        let bs = old.block_size as u64;
        let lss = old.logical_sector_size as u64;
        let mut images: Vec<(u64, Vec<u8>)> = Vec::new();
        // The sector bits the size change sets: (block, first sector, count).
        let mut tail_bits: Option<(u64, u64, u64)> = None;
        if new_size > old.virtual_size {
            let fixed = self.kind() == DiskKind::Fixed;
            // The tail of an old partial last block reads zeros from now on.
            if old.virtual_size % bs != 0 {
                let last = old.data_blocks - 1;
                let at = old.virtual_size % bs;
                if below > old.virtual_size
                    && self.block_entry(last).payload_state() == Some(PayloadState::NotPresent)
                {
                    // The parent holds data under the tail: the block gets
                    // space of its own first, with no sector bit set (it
                    // reads as before), committed on its own.
                    self.give_partial_block(last)?;
                    self.flush_serialized()?;
                }
                let e = self.block_entry(last);
                match e.payload_state() {
                    Some(PayloadState::FullyPresent) => {
                        let zeros = vec![0u8; (bs - at) as usize];
                        self.storage.write_at(&zeros, e.offset() + at)?;
                    }
                    Some(PayloadState::PartiallyPresent) => {
                        let zeros = vec![0u8; (bs - at) as usize];
                        self.storage.write_at(&zeros, e.offset() + at)?;
                        if below > old.virtual_size {
                            tail_bits = Some((last, at / lss, (bs - at) / lss));
                        }
                    }
                    _ => {}
                }
            }
            let file_end = lock(&self.state).file_end;
            let mut end = align_up(self.storage.len()?.max(file_end), MIB)
                .ok_or_else(|| Error::InvalidArgument("the file is too large".into()))?;
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
            // Entries from the first new block on: past the old entries,
            // and (in a differencing file, whose BAT covers whole chunks)
            // the old entries past the old last block, which a shrink may
            // have left as they were.
            let start = new
                .payload_index(old.data_blocks)
                .min(old.total_entries as usize);
            let mut added = Vec::with_capacity(new.total_entries as usize - start);
            for i in start..new.total_entries as usize {
                let block = (i as u64) - (i as u64) / (new.chunk_ratio + 1);
                if new.is_bitmap_index(i) {
                    added.push(if i < old.total_entries as usize {
                        self.bat.at(i)
                    } else {
                        0
                    });
                } else if fixed {
                    added.push(BatEntry::new(PayloadState::FullyPresent.bits(), end).0);
                    end += bs;
                } else if block * bs < below {
                    added.push(BatEntry::new(PayloadState::Zero.bits(), 0).0);
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
                    let at = self.bat_offset + start as u64 * 8;
                    self.storage.write_at(&bytes(&added), at)?;
                }
                Some((at, len)) => {
                    let mut all: Vec<u64> = (0..start).map(|i| self.bat.at(i)).collect();
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
        let bit_sectors = if tail_bits.is_some() {
            self.bitmap_sectors_per_block()
        } else {
            0
        };
        if images.len() + bit_sectors > self.entry_cap {
            return Err(Error::Unsupported(format!(
                "a resize changing {} sectors does not fit in one entry of this file's \
                 {} KiB log",
                images.len() + bit_sectors,
                self.log_length / 1024
            )));
        }
        let entry = {
            let mut st = self.lock_for_flush();
            self.check_writable(&st)?;
            for (off, b) in images {
                st.dirty.insert(off, Dirty::Bytes(b));
            }
            if let Some((block, sector, count)) = tail_bits {
                self.set_bits(&mut st, block, sector, count)?;
            }
            self.stage(&mut st)?
        };
        self.apply(entry)?;
        if new_size < old.virtual_size {
            // Nothing reads the dropped entries now (those past the new
            // last block; the sector-bitmap entry of a chunk still in use
            // stays); their blocks are given back when the reopened file
            // is cut.
            let start = new.payload_index(new.data_blocks);
            let kept: Vec<u64> = (start..old.total_entries as usize)
                .map(|i| {
                    if i < new.total_entries as usize && new.is_bitmap_index(i) {
                        self.bat.at(i)
                    } else {
                        0
                    }
                })
                .collect();
            let b: Vec<u8> = kept.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.storage
                .write_at(&b, self.bat_offset + start as u64 * 8)?;
            let mut st = lock(&self.state);
            self.sync(&mut st)?;
        }
        Ok(out)
    }

    /// Give the NOT_PRESENT `block` of this differencing file space of its
    /// own as a PARTIALLY_PRESENT block with no sector bit set, so that it
    /// reads as before (all from the parent): staged for the next flush.
    fn give_partial_block(&self, block: u64) -> Result<()> {
        let mut st = lock(&self.state);
        self.check_writable(&st)?;
        let sbi = self.geo.bitmap_index(block / self.geo.chunk_ratio);
        if BatEntry(self.bat.at(sbi)).state_bits() != SB_PRESENT {
            let sb = self.take_space(&mut st, MIB, false)?;
            self.set_entry(&mut st, sbi, BatEntry::new(SB_PRESENT, sb));
        }
        let off = self.take_space(&mut st, self.geo.block_size as u64, true)?;
        self.set_entry(
            &mut st,
            self.geo.payload_index(block),
            BatEntry::new(PayloadState::PartiallyPresent.bits(), off),
        );
        Ok(())
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
