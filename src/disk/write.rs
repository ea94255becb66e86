//! The write path: writes (whole sectors, partial sectors by
//! read-modify-write under the stripe locks) and trim.

use std::sync::RwLock;

use super::{span, Disk, STRIPES};
use crate::error::{Error, Result};

impl Disk {
    /// Write `buf` at `offset` (any alignment) into the top file. Durable
    /// after [`Disk::flush`].
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let r = self.write_inner(buf, offset);
        self.ctx(r)
    }

    fn write_inner(&self, buf: &[u8], offset: u64) -> Result<()> {
        let top = self.top();
        if top.is_read_only() {
            return Err(Error::ReadOnly);
        }
        top.check_range(offset, buf.len() as u64)?;
        let lss = top.write_granularity();
        if !top.has_parent() {
            return top.write_at(buf, offset);
        }
        if offset % lss == 0 && buf.len() as u64 % lss == 0 {
            return self.write_sectors(buf, offset);
        }
        // A differencing layer holds whole sectors: merge a partial first or
        // last sector with what the chain reads there. The read-modify-write
        // holds its blocks' stripe locks, so that a concurrent write to other
        // bytes of the same sector is not undone.
        let start = offset / lss * lss;
        let end = (offset + buf.len() as u64).div_ceil(lss) * lss;
        let head = (offset - start) as usize;
        if end - start <= 2 * lss || buf.len() < 1 << 16 {
            let _guards = self.lock_exclusive(start, end);
            let mut tmp = vec![0u8; (end - start) as usize];
            self.read_partial_sectors(&mut tmp, start, lss)?;
            tmp[head..head + buf.len()].copy_from_slice(buf);
            return top.write_at(&tmp, start);
        }
        // Large unaligned write: edges separately, the aligned middle as is.
        let mid_start = offset.div_ceil(lss) * lss;
        let mid_end = (offset + buf.len() as u64) / lss * lss;
        self.write_inner(&buf[..(mid_start - offset) as usize], offset)?;
        let a = (mid_start - offset) as usize;
        let b = (mid_end - offset) as usize;
        self.write_sectors(&buf[a..b], mid_start)?;
        self.write_inner(&buf[b..], mid_end)
    }

    /// Write whole sectors into a differencing top, block by block under
    /// the blocks' stripe locks (shared).
    fn write_sectors(&self, buf: &[u8], offset: u64) -> Result<()> {
        let top = self.top();
        let bs = top.geo.block_size as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = ((bs - pos % bs) as usize).min(buf.len() - done);
            let _g = self
                .stripe(pos / bs)
                .read()
                .unwrap_or_else(|e| e.into_inner());
            top.write_at(&buf[done..done + n], pos)?;
            done += n;
        }
        Ok(())
    }

    fn stripe(&self, block: u64) -> &RwLock<()> {
        &self.stripes[(block % STRIPES as u64) as usize]
    }

    /// Take the stripe locks of every block of `[start, end)` exclusively,
    /// in stripe order.
    fn lock_exclusive(&self, start: u64, end: u64) -> Vec<std::sync::RwLockWriteGuard<'_, ()>> {
        let bs = self.top().geo.block_size as u64;
        let mut ids: Vec<usize> = (start / bs..end.div_ceil(bs))
            .map(|b| (b % STRIPES as u64) as usize)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|i| self.stripes[i].write().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    fn read_partial_sectors(&self, tmp: &mut [u8], start: u64, lss: u64) -> Result<()> {
        let l = lss as usize;
        let n = tmp.len();
        self.read_chain_or_single(&mut tmp[..l], start)?;
        if n > l {
            self.read_chain_or_single(&mut tmp[n - l..], start + (n - l) as u64)?;
        }
        Ok(())
    }

    /// Discard `[offset, offset+len)`: afterwards it reads as zeros (in a
    /// differencing disk this hides the parent's data); whole blocks of a
    /// dynamic or differencing disk stop using space in the file (once flushed).
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        let r = self.trim_inner(offset, len);
        self.ctx(r)
    }

    fn trim_inner(&self, offset: u64, len: u64) -> Result<()> {
        let top = self.top();
        if top.is_read_only() {
            return Err(Error::ReadOnly);
        }
        top.check_range(offset, len)?;
        if !top.has_parent() {
            return top.trim(offset, len);
        }
        let bs = top.geo.block_size as u64;
        for s in span::spans(offset, len, bs) {
            let (block, pos, n) = (s.block, s.pos, s.len);
            let whole = s.is_whole(bs, self.virtual_size());
            let trimmed = whole && {
                let _g = self.stripe(block).read().unwrap_or_else(|e| e.into_inner());
                top.trim_block(block)?
            };
            if !trimmed {
                // Part of a block: write zeros over it (this hides the parent).
                let zeros = vec![0u8; n.min(4 << 20) as usize];
                let mut p = pos;
                while p < pos + n {
                    let m = (pos + n - p).min(zeros.len() as u64);
                    self.write_inner(&zeros[..m as usize], p)?;
                    p += m;
                }
            }
        }
        Ok(())
    }
}
