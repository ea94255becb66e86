//! The read path of a chain: through the top, then the layers under it
//! with the per-block and per-page owner caches.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::span::spans;
use super::vhdx::Src;
use super::{Disk, MAX_PAGE_MAPS, MIXED, PAGE};
use crate::error::Result;

impl Disk {
    /// Read `buf.len()` bytes at `offset` (any alignment), through the chain.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let r = self
            .top()
            .check_range(offset, buf.len() as u64)
            .and_then(|_| {
                if self.layers.len() == 1 {
                    self.top().read_at(buf, offset)
                } else {
                    self.read_chain(buf, offset)
                }
            });
        self.ctx(r)
    }

    fn read_chain(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let top = self.top();
        // Offsets found in the top stay its until the read is done.
        let _io = top.io_guard();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (l, src) = top.map_first(pos, (buf.len() - done) as u64)?;
            let dst = &mut buf[done..done + l as usize];
            match src {
                Src::Data(f) => top.read_raw(dst, f)?,
                Src::Zero => dst.fill(0),
                Src::Parent => self.read_below(dst, pos)?,
            }
            done += l as usize;
        }
        Ok(())
    }

    /// Read what the layers under the top hold, using the owner caches:
    /// per top block the one layer that answers all of it, else per page.
    fn read_below(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.owner.is_empty() {
            return self.resolve(1, buf, offset);
        }
        let bs = self.top().geo.block_size as u64;
        for s in spans(offset, buf.len() as u64, bs) {
            let at = (s.pos - offset) as usize;
            let dst = &mut buf[at..at + s.len as usize];
            match self.block_owner(s.block)? {
                MIXED => self.read_pages(s.block, dst, s.pos)?,
                owner => self.read_level(owner as usize - 1, dst, s.pos)?,
            }
        }
        Ok(())
    }

    /// Read from `level` down (a level past the base reads zeros).
    fn read_level(&self, level: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        if level >= self.layers.len() {
            buf.fill(0);
            Ok(())
        } else {
            self.resolve(level, buf, offset)
        }
    }

    /// Read part of a mixed top block page by page through its page map.
    fn read_pages(&self, block: u64, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(pages) = self.page_owners(block)? else {
            return self.resolve(1, buf, offset);
        };
        let bs = self.top().geo.block_size as u64;
        let base = block * bs;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let page = ((pos - base) / PAGE) as usize;
            let owner = pages[page];
            // Extend over following pages with the same owner.
            let mut end = (base + (page as u64 + 1) * PAGE).min(offset + buf.len() as u64);
            let mut next = page + 1;
            while end < offset + buf.len() as u64 && pages.get(next) == Some(&owner) {
                end = (base + (next as u64 + 1) * PAGE).min(offset + buf.len() as u64);
                next += 1;
            }
            let n = (end - pos) as usize;
            let dst = &mut buf[done..done + n];
            match owner {
                MIXED => self.resolve(1, dst, pos)?,
                o => self.read_level(o as usize - 1, dst, pos)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Which layer answers the whole of `block` (of the top layer's
    /// geometry) under the top; cached.
    fn block_owner(&self, block: u64) -> Result<u8> {
        let slot = &self.owner[block as usize];
        let v = slot.load(Ordering::Relaxed);
        if v != 0 {
            return Ok(v);
        }
        let bs = self.top().geo.block_size as u64;
        let start = block * bs;
        let len = bs.min(self.virtual_size() - start);
        let mut answer = MIXED;
        for level in 1..=self.layers.len() {
            if level == self.layers.len() {
                answer = level as u8 + 1;
                break;
            }
            let (l, src) = self.layers[level].file.map_first(start, len)?;
            if l < len {
                break;
            }
            match src {
                Src::Parent => continue,
                Src::Data(_) | Src::Zero => {
                    answer = level as u8 + 1;
                    break;
                }
            }
        }
        slot.store(answer, Ordering::Relaxed);
        Ok(answer)
    }

    /// Per page of a mixed top block: the layer that answers the whole page
    /// (`MIXED` when none does). Computed once per block, then cached (up to
    /// a bound; past it, reads walk the chain).
    fn page_owners(&self, block: u64) -> Result<Option<Arc<[u8]>>> {
        if let Some(p) = self
            .pages
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&block)
        {
            return Ok(Some(p.clone()));
        }
        let bs = self.top().geo.block_size as u64;
        let start = block * bs;
        let len = bs.min(self.virtual_size() - start);
        let npages = len.div_ceil(PAGE) as usize;
        // 0: still falls through to the next layer.
        let mut owners = vec![0u8; npages];
        let mut runs = Vec::new();
        for level in 1..self.layers.len() {
            runs.clear();
            self.layers[level].file.map(start, len, &mut runs)?;
            // Per page: 0 all of it falls through, 1 this layer holds all
            // of it, 2 partly.
            const UNSET: u8 = u8::MAX;
            let mut class = vec![UNSET; npages];
            let mut at = 0u64;
            for (l, src) in &runs {
                let kind = if *src == Src::Parent { 0 } else { 1 };
                let (pa, pb) = ((at / PAGE) as usize, (at + l).div_ceil(PAGE) as usize);
                for c in &mut class[pa..pb.min(npages)] {
                    *c = if *c == UNSET || *c == kind { kind } else { 2 };
                }
                at += l;
            }
            for (o, c) in owners.iter_mut().zip(&class) {
                if *o == 0 {
                    *o = match c {
                        0 => 0,
                        1 => level as u8 + 1,
                        _ => MIXED,
                    };
                }
            }
        }
        let past_base = self.layers.len() as u8 + 1;
        for o in owners.iter_mut().filter(|o| **o == 0) {
            *o = past_base;
        }
        let owners: Arc<[u8]> = owners.into();
        let mut map = self.pages.write().unwrap_or_else(|e| e.into_inner());
        if map.len() < MAX_PAGE_MAPS {
            map.insert(block, owners.clone());
        }
        Ok(Some(owners))
    }

    /// Read `buf` at `offset` as layer `level` and the layers under it see it.
    fn resolve(&self, level: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let layer = &self.layers[level].file;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (l, src) = layer.map_first(pos, (buf.len() - done) as u64)?;
            let dst = &mut buf[done..done + l as usize];
            match src {
                Src::Data(f) => layer.read_raw(dst, f)?,
                Src::Zero => dst.fill(0),
                Src::Parent if level + 1 < self.layers.len() => {
                    self.resolve(level + 1, dst, pos)?
                }
                Src::Parent => dst.fill(0),
            }
            done += l as usize;
        }
        Ok(())
    }

    pub(super) fn read_chain_or_single(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.layers.len() == 1 {
            self.top().read_at(buf, offset)
        } else {
            self.read_chain(buf, offset)
        }
    }
}
