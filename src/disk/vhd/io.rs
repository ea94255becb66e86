//! Map, read, write, trim and flush of one VHD (the order of writes is
//! the module doc's "Crash safety").

use super::footer::DiskType;
use super::{lock, Src, State, Vhd, UNALLOCATED};
use crate::error::{Error, Result};

/// Zeros written at most at once.
const ZERO_CHUNK: usize = 1 << 20;

/// Whether bit `s` (sector `s` of a block) is set: the most significant
/// bit of byte 0 is sector 0.
fn bit(bm: &[u8], s: u64) -> bool {
    bm[(s / 8) as usize] & (0x80 >> (s % 8)) != 0
}

impl Vhd {
    /// The cached bitmap of allocated block `block` (read on first use).
    fn bitmap<'a>(&self, st: &'a mut State, block: u64, base: u64) -> Result<&'a mut Vec<u8>> {
        if !st.bitmaps.contains_key(&block) {
            if st.bitmaps.len() >= super::MAX_CACHED_BITMAPS {
                let dirty = &st.dirty_bitmaps;
                st.bitmaps.retain(|b, _| dirty.contains(b));
            }
            let mut bm = vec![0u8; self.bitmap_len as usize];
            self.storage.read_at(&mut bm, base)?;
            st.bitmaps.insert(block, bm);
        }
        Ok(st.bitmaps.get_mut(&block).expect("inserted above"))
    }

    /// Where the runs of `[offset, offset+len)` are, appended to `out`
    /// (adjacent runs of one kind merged).
    pub(crate) fn map(&self, offset: u64, len: u64, out: &mut Vec<(u64, Src)>) -> Result<()> {
        self.check_range(offset, len)?;
        let push = |out: &mut Vec<(u64, Src)>, l: u64, src: Src| {
            if let Some((pl, ps)) = out.last_mut() {
                let merged = match (*ps, src) {
                    (Src::Data(a), Src::Data(b)) => a + *pl == b,
                    (a, b) => a == b,
                };
                if merged {
                    *pl += l;
                    return;
                }
            }
            out.push((l, src));
        };
        if self.footer.disk_type == DiskType::Fixed {
            if len > 0 {
                push(out, len, Src::Data(offset));
            }
            return Ok(());
        }
        let bs = self.block_size;
        let diff = self.has_parent();
        let mut st = lock(&self.state);
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let e = st.bat[block as usize];
            if e == UNALLOCATED {
                push(out, n, if diff { Src::Parent } else { Src::Zero });
            } else {
                let base = e as u64 * 512;
                let data = base + self.bitmap_len + in_block;
                if !diff {
                    push(out, n, Src::Data(data));
                } else {
                    let bm = self.bitmap(&mut st, block, base)?;
                    let mut at = in_block;
                    while at < in_block + n {
                        let s = at / 512;
                        let l = ((s + 1) * 512).min(in_block + n) - at;
                        let src = if bit(bm, s) {
                            Src::Data(base + self.bitmap_len + at)
                        } else {
                            Src::Parent
                        };
                        push(out, l, src);
                        at += l;
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// The first run of `[offset, offset+len)`: its length and where it is.
    pub(crate) fn map_first(&self, offset: u64, len: u64) -> Result<(u64, Src)> {
        let bs = self.block_size;
        let l = len.min(bs - offset % bs);
        let mut out = Vec::new();
        self.map(offset, l, &mut out)?;
        Ok(out.first().copied().unwrap_or((0, Src::Zero)))
    }

    /// Read from this file alone (the parent's sectors read as zeros).
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut runs = Vec::new();
        self.map(offset, buf.len() as u64, &mut runs)?;
        let mut done = 0usize;
        for (l, src) in runs {
            let dst = &mut buf[done..done + l as usize];
            match src {
                Src::Data(f) => self.storage.read_at(dst, f)?,
                Src::Zero | Src::Parent => dst.fill(0),
            }
            done += l as usize;
        }
        Ok(())
    }

    /// Read bytes of the file at a file offset found by [`Vhd::map`].
    pub(crate) fn read_raw(&self, buf: &mut [u8], file_offset: u64) -> Result<()> {
        Ok(self.storage.read_at(buf, file_offset)?)
    }

    pub(super) fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if let Some(why) = &lock(&self.state).poisoned {
            return Err(Error::Io(std::io::Error::other(format!(
                "an earlier sync failed ({why}): reopen the disk"
            ))));
        }
        Ok(())
    }

    /// Write `buf` at `offset` (a differencing disk: whole sectors only).
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.writable()?;
        self.check_range(offset, buf.len() as u64)?;
        if self.footer.disk_type == DiskType::Fixed {
            return Ok(self.storage.write_at(buf, offset)?);
        }
        let diff = self.has_parent();
        if diff && (offset % 512 != 0 || buf.len() % 512 != 0) {
            return Err(Error::InvalidArgument(
                "a differencing VHD is written in whole 512-byte sectors".into(),
            ));
        }
        let bs = self.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let in_block = pos % bs;
            let n = ((bs - in_block) as usize).min(buf.len() - done);
            let base = self.block_base(block)?;
            self.storage
                .write_at(&buf[done..done + n], base + self.bitmap_len + in_block)?;
            if diff {
                let mut st = lock(&self.state);
                let bm = self.bitmap(&mut st, block, base)?;
                for s in in_block / 512..(in_block + n as u64) / 512 {
                    bm[(s / 8) as usize] |= 0x80 >> (s % 8);
                }
                st.dirty_bitmaps.insert(block);
            }
            done += n;
        }
        Ok(())
    }

    /// The file offset of `block`, allocating it first if needed (under
    /// the state lock, so that two writers never fill one block twice).
    fn block_base(&self, block: u64) -> Result<u64> {
        let mut st = lock(&self.state);
        let e = st.bat[block as usize];
        if e != UNALLOCATED {
            return Ok(e as u64 * 512);
        }
        let len = self.bitmap_len + self.block_size;
        let p = st.next_free;
        let end = p
            .checked_add(len)
            .filter(|&e| e / 512 < UNALLOCATED as u64)
            .ok_or_else(|| {
                Error::NoSpace(
                    "a VHD file cannot grow past 2 TiB (its BAT counts 32-bit sectors)".into(),
                )
            })?;
        let mut fill = true;
        if end > st.footer_pos {
            // 1. The footer moves past the new block first, and is synced.
            self.storage.write_at(&self.footer_bytes(&st), end)?;
            if let Err(e) = self.storage.sync() {
                return Err(self.poison(&mut st, e.to_string()));
            }
            fill = p < st.footer_pos;
            st.footer_pos = end;
        }
        // 2. The bitmap, then zeros where old bytes could be.
        let bitmap = if self.has_parent() { 0u8 } else { 0xff };
        let mut bm = vec![bitmap; self.bitmap_len as usize];
        if bitmap == 0xff {
            // Only the bits of real sectors are set.
            let sectors = self.block_size / 512;
            bm.iter_mut()
                .skip(sectors.div_ceil(8) as usize)
                .for_each(|b| *b = 0);
        }
        self.storage.write_at(&bm, p)?;
        if fill && !self.has_parent() {
            let zeros = vec![0u8; ZERO_CHUNK.min(self.block_size as usize)];
            let mut at = 0u64;
            while at < self.block_size {
                let m = (self.block_size - at).min(zeros.len() as u64);
                self.storage
                    .write_at(&zeros[..m as usize], p + self.bitmap_len + at)?;
                at += m;
            }
        }
        if self.has_parent() {
            st.bitmaps.insert(block, bm);
        }
        // 3. The BAT entry, in memory until the next flush.
        st.bat[block as usize] = (p / 512) as u32;
        st.dirty_bat.insert(block * 4 / 512);
        st.next_free = end;
        Ok(p)
    }

    /// Zero `[offset, offset+len)` of a fixed disk (zeros written: it keeps
    /// its space) or a dynamic one (the space of the data it covers
    /// discarded where the storage can).
    pub(crate) fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        self.check_range(offset, len)?;
        if self.has_parent() {
            return Err(Error::InvalidArgument(
                "a differencing VHD is trimmed by writing zeros (through the disk)".into(),
            ));
        }
        let mut runs = Vec::new();
        self.map(offset, len, &mut runs)?;
        let fixed = self.footer.disk_type == DiskType::Fixed;
        for (l, src) in runs {
            let Src::Data(f) = src else { continue };
            if fixed {
                // A fixed disk keeps its space: zeros are written.
                let zeros = vec![0u8; ZERO_CHUNK.min(l as usize)];
                let mut at = 0u64;
                while at < l {
                    let m = (l - at).min(zeros.len() as u64);
                    self.storage.write_at(&zeros[..m as usize], f + at)?;
                    at += m;
                }
            } else {
                self.storage.discard(f, l)?;
            }
        }
        Ok(())
    }

    /// Make every completed write durable: sync, then the changed bitmap
    /// and BAT sectors, then sync.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.writable()?;
        let mut st = lock(&self.state);
        if let Err(e) = self.storage.sync() {
            return Err(self.poison(&mut st, e.to_string()));
        }
        if st.dirty_bat.is_empty() && st.dirty_bitmaps.is_empty() {
            return Ok(());
        }
        let blocks: Vec<u64> = st.dirty_bitmaps.iter().copied().collect();
        for b in blocks {
            let base = st.bat[b as usize] as u64 * 512;
            let bm = st.bitmaps.get(&b).cloned().unwrap_or_default();
            self.storage.write_at(&bm, base)?;
        }
        let table = st
            .header
            .as_ref()
            .map(|h| h.table_offset)
            .unwrap_or_default();
        let sectors: Vec<u64> = st.dirty_bat.iter().copied().collect();
        for s in sectors {
            let mut b = [0xffu8; 512];
            let first = (s * 128) as usize;
            for (i, e) in st.bat.iter().skip(first).take(128).enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&e.to_be_bytes());
            }
            self.storage.write_at(&b, table + s * 512)?;
        }
        if let Err(e) = self.storage.sync() {
            return Err(self.poison(&mut st, e.to_string()));
        }
        st.dirty_bat.clear();
        st.dirty_bitmaps.clear();
        Ok(())
    }

    /// Flush (a VHD has nothing else to close).
    pub(crate) fn close(&self) -> Result<()> {
        self.flush()
    }
}
