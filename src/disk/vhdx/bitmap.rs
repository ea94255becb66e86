//! Sector bitmaps of a differencing file: which sectors of a partly
//! present block the file holds, read and set through the bitmap cache.

use super::*;
use crate::error::{Reason, Structure};

impl Vhdx {
    pub(super) fn sectors_per_block(&self) -> u64 {
        self.geo.block_size as u64 / self.geo.logical_sector_size as u64
    }

    /// Load (and cache) sector `k` of the bitmap of `chunk`.
    pub(super) fn bitmap_sector(&self, chunk: u64, k: u64) -> Result<()> {
        if rlock(&self.bitmaps).contains_key(&(chunk, k)) {
            return Ok(());
        }
        let e = BatEntry(self.bat.at(self.geo.bitmap_index(chunk)));
        let mut buf = vec![0u8; SECTOR as usize].into_boxed_slice();
        if e.state_bits() == SB_PRESENT {
            let off = e.offset() + k * SECTOR;
            self.storage.read_at(&mut buf, off)?;
        }
        self.bitmaps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry((chunk, k))
            .or_insert(buf);
        Ok(())
    }

    /// The value of the bitmap bit of `sector` (in `block`) and how many
    /// following bits (at most `max`) share it.
    pub(super) fn bit_run(&self, block: u64, sector: u64, max: u64) -> Result<(bool, u64)> {
        let chunk = block / self.geo.chunk_ratio;
        let first = (block % self.geo.chunk_ratio) * self.sectors_per_block() + sector;
        let bits_per_sector = SECTOR * 8;
        let mut bit = first;
        let mut value = None;
        while bit < first + max {
            let k = bit / bits_per_sector;
            // One lookup when the sector is cached (the common case).
            let maps = rlock(&self.bitmaps);
            let Some(sec) = maps.get(&(chunk, k)) else {
                drop(maps);
                self.bitmap_sector(chunk, k)?;
                continue;
            };
            let sector_end = ((k + 1) * bits_per_sector).min(first + max);
            while bit < sector_end {
                let i = (bit % bits_per_sector) as usize;
                let byte = sec[i / 8];
                // Skip whole bytes when they are uniform.
                if i % 8 == 0 && bit + 8 <= sector_end {
                    if let Some(v) = value {
                        let want = if v { 0xff } else { 0 };
                        if byte == want {
                            bit += 8;
                            continue;
                        }
                    }
                }
                let b = byte >> (i % 8) & 1 == 1;
                match value {
                    None => value = Some(b),
                    Some(v) if v != b => return Ok((v, bit - first)),
                    _ => {}
                }
                bit += 1;
            }
        }
        Ok((value.unwrap_or(false), max))
    }

    /// Set the bitmap bits of `count` sectors from `sector` in `block` (state lock held).
    pub(super) fn set_bits(
        &self,
        st: &mut WriteState,
        block: u64,
        sector: u64,
        count: u64,
    ) -> Result<()> {
        self.write_bits(st, block, sector, count, true)
    }

    /// Set or clear the bitmap bits of `count` sectors from `sector` in `block`.
    pub(super) fn write_bits(
        &self,
        st: &mut WriteState,
        block: u64,
        sector: u64,
        count: u64,
        on: bool,
    ) -> Result<()> {
        let chunk = block / self.geo.chunk_ratio;
        let first = (block % self.geo.chunk_ratio) * self.sectors_per_block() + sector;
        let bits_per_sector = SECTOR * 8;
        let mut bit = first;
        while bit < first + count {
            let k = bit / bits_per_sector;
            self.bitmap_sector(chunk, k)?;
            let end = ((k + 1) * bits_per_sector).min(first + count);
            let mut maps = self.bitmaps.write().unwrap_or_else(|e| e.into_inner());
            let sec = maps.get_mut(&(chunk, k)).ok_or_else(|| {
                Error::corrupt(
                    Structure::SectorBitmap,
                    None,
                    Reason::Invalid("sector bitmap vanished from the cache".into()),
                )
            })?;
            while bit < end {
                let i = (bit % bits_per_sector) as usize;
                if i % 8 == 0 && bit + 8 <= end {
                    sec[i / 8] = if on { 0xff } else { 0 };
                    bit += 8;
                } else {
                    if on {
                        sec[i / 8] |= 1 << (i % 8);
                    } else {
                        sec[i / 8] &= !(1 << (i % 8));
                    }
                    bit += 1;
                }
            }
            drop(maps);
            let sb = BatEntry(self.bat.at(self.geo.bitmap_index(chunk))).offset();
            st.dirty.insert(sb + k * SECTOR, Dirty::Bitmap(chunk, k));
        }
        Ok(())
    }

    /// Most bitmap sectors the bits of one block span.
    pub(super) fn bitmap_sectors_per_block(&self) -> usize {
        (self.sectors_per_block().div_ceil(SECTOR * 8) + 1) as usize
    }
}
