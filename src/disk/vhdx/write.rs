//! Writes: block allocation, data writes and trim.

use super::*;
use crate::disk::span::spans;

impl Vhdx {
    /// A zeroed payload-sized (or 1 MiB) area of the file.
    pub(super) fn take_space(&self, st: &mut WriteState, len: u64, reuse: bool) -> Result<u64> {
        if reuse {
            if let Some(off) = st.free_blocks.pop() {
                return Ok(off);
            }
            // A hole found at open: zeroed first (a new block reads as
            // zeros where it is not written); one that cannot be is skipped.
            while let Some(off) = st.reclaim.pop() {
                if self.storage.discard(off, len).is_ok() {
                    return Ok(off);
                }
            }
        }
        let off = st.file_end;
        let end = off.checked_add(len).ok_or_else(|| {
            Error::corrupt(
                crate::error::Structure::Layout,
                Some(off),
                crate::error::Reason::Invalid(format!("no room in the file after {off:#x}")),
            )
        })?;
        self.storage.allocate(off, len)?;
        st.file_end = end;
        Ok(off)
    }

    pub(super) fn set_entry(&self, st: &mut WriteState, idx: usize, e: BatEntry) {
        self.bat.set(idx, e.0);
        let sector = idx as u64 * 8 / SECTOR;
        st.dirty
            .insert(self.bat_offset + sector * SECTOR, Dirty::Bat(sector));
    }

    /// Prepare `block` for a write of `[within, within+n)`.
    pub(super) fn prepare_write(&self, block: u64, within: u64, n: u64) -> Result<Prep> {
        let idx = self.geo.payload_index(block);
        let bs = self.geo.block_size as u64;
        let e = BatEntry(self.bat.at(idx));
        if e.payload_state() == Some(PayloadState::FullyPresent) {
            return Ok(Prep::Ready {
                base: e.offset(),
                bits: None,
                undo: None,
                publish: None,
            });
        }
        let mut st = lock(&self.state);
        // Another write is filling this block: its entry is not published
        // yet, so wait for it rather than give the block space twice.
        while st.filling.contains(&idx) {
            st = self.filled.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        self.check_writable(&st)?;
        // The session may have ended since `write_with` looked (a close
        // racing this write, as a live compaction's last step does): a
        // metadata change made outside a session would never be flushed.
        self.begin_session_locked(&mut st, true)?;
        let e = BatEntry(self.bat.at(idx));
        let bits = self.bitmap_sectors_per_block();
        match e.payload_state() {
            Some(PayloadState::FullyPresent) => Ok(Prep::Ready {
                base: e.offset(),
                bits: None,
                undo: None,
                publish: None,
            }),
            Some(PayloadState::PartiallyPresent) => {
                if !self.room(&st, bits) {
                    return Ok(Prep::NeedFlush(st.log_seq));
                }
                st.reserved += bits;
                Ok(Prep::Ready {
                    base: e.offset(),
                    bits: Some(bits),
                    undo: None,
                    publish: None,
                })
            }
            Some(PayloadState::NotPresent) if self.has_parent() && !(within == 0 && n == bs) => {
                // A partial write into a block of the parent: this layer holds
                // only the written sectors, marked in the sector bitmap.
                if !self.room(&st, 2 + bits) {
                    return Ok(Prep::NeedFlush(st.log_seq));
                }
                let chunk = block / self.geo.chunk_ratio;
                let sbi = self.geo.bitmap_index(chunk);
                if BatEntry(self.bat.at(sbi)).state_bits() != SB_PRESENT {
                    let sb = self.take_space(&mut st, MIB, false)?;
                    // New space reads as zeros, like any bitmap sector cached before.
                    self.set_entry(&mut st, sbi, BatEntry::new(SB_PRESENT, sb));
                }
                let off = self.take_space(&mut st, bs, true)?;
                self.set_entry(
                    &mut st,
                    idx,
                    BatEntry::new(PayloadState::PartiallyPresent.bits(), off),
                );
                st.reserved += bits;
                Ok(Prep::Ready {
                    base: off,
                    bits: Some(bits),
                    undo: Some((idx, e, off)),
                    publish: None,
                })
            }
            Some(PayloadState::NotPresent) if self.has_parent() => {
                // A whole-block write into a block of the parent: the new
                // space reads as zeros, not as the parent, until the data is
                // in it, so the entry is published only then (readers see
                // the parent meanwhile; other writes to the block wait).
                if !self.room(&st, 1) {
                    return Ok(Prep::NeedFlush(st.log_seq));
                }
                let off = self.take_space(&mut st, bs, true)?;
                st.reserved += 1;
                st.filling.push(idx);
                Ok(Prep::Ready {
                    base: off,
                    bits: None,
                    undo: None,
                    publish: Some((idx, BatEntry::new(PayloadState::FullyPresent.bits(), off))),
                })
            }
            _ => {
                // Unallocated, zero, unmapped or undefined: a whole new block
                // that reads as zeros where it is not written.
                if !self.room(&st, 1) {
                    return Ok(Prep::NeedFlush(st.log_seq));
                }
                let off = self.take_space(&mut st, bs, true)?;
                self.set_entry(
                    &mut st,
                    idx,
                    BatEntry::new(PayloadState::FullyPresent.bits(), off),
                );
                Ok(Prep::Ready {
                    base: off,
                    bits: None,
                    undo: Some((idx, e, off)),
                    publish: None,
                })
            }
        }
    }

    /// Write any range inside the disk. In a differencing disk the range
    /// must be aligned to logical sectors (the chain handles the rest).
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_with(offset, buf.len() as u64, |storage, done, file_offset, n| {
            let done = done as usize;
            Ok(storage.write_at(&buf[done..done + n as usize], file_offset)?)
        })
    }

    /// Copy `len` bytes at `src_offset` of the storage `src` (another
    /// layer's file) into the disk at `offset`, without passing them
    /// through user memory where the storages allow it.
    pub(crate) fn copy_in(
        &self,
        offset: u64,
        len: u64,
        src: &dyn Storage,
        src_offset: u64,
    ) -> Result<()> {
        self.write_with(offset, len, |storage, done, file_offset, n| {
            Ok(crate::io::copy_range(
                src,
                src_offset + done,
                storage,
                file_offset,
                n,
            )?)
        })
    }

    /// The write path: `put(storage, done, file_offset, n)` stores bytes
    /// `[done, done+n)` of the request at `file_offset` of this file.
    ///
    /// Block by block, under the I/O gate: find or allocate the block's
    /// space, store the data, then set the bitmap bits (or, for a block
    /// that read through to the parent, publish its entry). A block that got
    /// its space for this write goes back to its old state when the data
    /// cannot be stored, so a failed write never leaves a block pointing
    /// at space that was never written.
    pub(super) fn write_with(
        &self,
        offset: u64,
        len: u64,
        mut put: impl FnMut(&dyn Storage, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let lss = self.geo.logical_sector_size as u64;
        if self.has_parent() && (offset % lss != 0 || len % lss != 0) {
            return Err(Error::InvalidArgument(
                "writes into a differencing layer must be sector-aligned".into(),
            ));
        }
        self.check_not_poisoned()?;
        self.begin_session(true)?;
        let bs = self.geo.block_size as u64;
        for s in spans(offset, len, bs) {
            let (block, within, n) = (s.block, s.within, s.len);
            let done = s.pos - offset;
            let (io, base, bits, undo, publish) = loop {
                let io = self.io_guard();
                match self.prepare_write(block, within, n)? {
                    Prep::NeedFlush(seen) => {
                        drop(io);
                        self.flush_for_room(seen)?;
                    }
                    Prep::Ready {
                        base,
                        bits,
                        undo,
                        publish,
                    } => break (io, base, bits, undo, publish),
                }
            };
            let stored = put(self.storage.as_ref(), done, base + within, n);
            if let Some((idx, entry)) = publish {
                // The block being filled: publish its entry now that its
                // data is in the file (or give its space up), and let the
                // writes waiting for it go on.
                let mut st = lock(&self.state);
                st.reserved -= 1;
                st.filling.retain(|&i| i != idx);
                match stored {
                    Ok(()) => self.set_entry(&mut st, idx, entry),
                    Err(_) => st.pending_free.push(entry.offset()),
                }
                self.filled.notify_all();
            }
            if let Err(e) = stored {
                let mut st = lock(&self.state);
                if let Some(r) = bits {
                    st.reserved -= r;
                }
                if let Some((idx, old, off)) = undo {
                    self.set_entry(&mut st, idx, old);
                    // Freed like a trimmed block: after the next flush, when
                    // no I/O can still be using it.
                    st.pending_free.push(off);
                }
                return Err(e);
            }
            if let Some(r) = bits {
                let mut st = lock(&self.state);
                st.reserved -= r;
                self.set_bits(&mut st, block, within / lss, n / lss)?;
            }
            drop(io);
        }
        Ok(())
    }

    /// Make a whole block read as zeros: a dynamic disk gives its space
    /// back (after the next flush); a differencing disk also hides the
    /// parent's data. Returns false when the block must be zeroed by writing.
    pub(crate) fn trim_block(&self, block: u64) -> Result<bool> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let parent = self.has_parent();
        if self.kind() == DiskKind::Fixed {
            return Ok(false);
        }
        self.check_not_poisoned()?;
        self.begin_session(true)?;
        let idx = self.geo.payload_index(block);
        loop {
            let mut st = lock(&self.state);
            self.check_writable(&st)?;
            // As in `prepare_write`: never a change outside a session.
            self.begin_session_locked(&mut st, true)?;
            if !self.room(&st, 1 + self.bitmap_sectors_per_block()) {
                let seen = st.log_seq;
                drop(st);
                self.flush_for_room(seen)?;
                continue;
            }
            let cur = BatEntry(self.bat.at(idx));
            match cur.payload_state() {
                Some(state @ (PayloadState::FullyPresent | PayloadState::PartiallyPresent)) => {
                    st.pending_free.push(cur.offset());
                    self.set_entry(&mut st, idx, BatEntry::new(PayloadState::Zero.bits(), 0));
                    if state == PayloadState::PartiallyPresent {
                        // Leave no stale bits behind (readers that consult the
                        // bitmap of a zero block then see the parent, not junk).
                        self.write_bits(&mut st, block, 0, self.sectors_per_block(), false)?;
                    }
                }
                Some(PayloadState::NotPresent) if parent => {
                    self.set_entry(&mut st, idx, BatEntry::new(PayloadState::Zero.bits(), 0));
                }
                _ => {}
            }
            return Ok(true);
        }
    }

    /// Trim a range of a base disk: it reads as zeros afterwards.
    pub(crate) fn trim(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.check_not_poisoned()?;
        self.begin_session(true)?;
        let bs = self.geo.block_size as u64;
        for s in spans(offset, len, bs) {
            let (block, pos, n) = (s.block, s.pos, s.len);
            let bstart = pos - s.within;
            if !(s.is_whole(bs, self.geo.virtual_size) && self.trim_block(block)?) {
                // The offset is used under the gate, so that the space is
                // not given away meanwhile by a trim of the whole block.
                let _io = self.io_guard();
                let e = self.block_entry(block);
                if e.payload_state() == Some(PayloadState::FullyPresent) {
                    crate::io::write_zeros(self.storage.as_ref(), e.offset() + (pos - bstart), n)?;
                }
            }
        }
        Ok(())
    }

    /// Space of trimmed blocks can be reused once no durable entry points at
    /// it (and no I/O can still use it: the flush that took it from
    /// `pending_free` took the gate). Returns the offsets now free; reused
    /// space must read as zeros, so space that cannot be zeroed is left
    /// unused.
    pub(super) fn discard_freed(&self, frees: &[u64]) -> Vec<u64> {
        frees
            .iter()
            .copied()
            .filter(|&off| {
                self.storage
                    .discard(off, self.geo.block_size as u64)
                    .is_ok()
            })
            .collect()
    }
}
