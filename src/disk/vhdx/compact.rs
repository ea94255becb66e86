//! Compaction of one file (the steps of `Disk::compact`): give back the
//! space of blocks that hold no data, move payload and sector-bitmap
//! blocks down into the holes, and cut the file after what is used.
//!
//! Every step goes through the engine's own mechanisms: BAT changes are
//! [`Vhdx::set_entry`] and reach the file through the log in one flush;
//! space given back goes to `pending_free` and is reused only after that
//! flush. A move copies the block, and only the flush that commits the
//! new entry (which syncs the data before it writes the log entry) makes
//! the file claim the new place; the old place is reused only after it.
//! The file is cut only once the log is empty (after a close), so that no
//! log entry names a file size past the new end.
//!
//! Nothing here changes what the disk reads, so the DataWriteGuid stays
//! (a child made on this file keeps its linkage).

use std::collections::BTreeMap;

use super::*;

/// One planned move of a block (payload or sector bitmap) to a lower place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Move {
    /// The BAT index of the block.
    pub(crate) idx: usize,
    /// Where it is.
    pub(crate) from: u64,
    /// Where it goes.
    pub(crate) to: u64,
    /// Its length (the block size, or 1 MiB for a sector bitmap).
    pub(crate) len: u64,
}

/// A block the BAT places in the file: (BAT index, offset, length).
type Placed = (usize, u64, u64);
/// An area of the file: (offset, length).
type Area = (u64, u64);

impl Vhdx {
    /// Whether entry `e` at BAT index `i` holds space in the file (payload
    /// data, or a sector bitmap of a differencing file), and how much.
    fn placed_len(&self, i: usize, e: BatEntry) -> Option<u64> {
        if self.geo.is_bitmap_index(i) {
            (self.parent && e.state_bits() == SB_PRESENT).then_some(MIB)
        } else {
            matches!(
                e.payload_state(),
                Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent)
            )
            .then_some(self.geo.block_size as u64)
        }
    }

    /// Start a session for compaction (one that does not change the
    /// DataWriteGuid: nothing compaction does changes what the disk
    /// reads) and flush what is pending, so that the space of trimmed
    /// blocks is free and the BAT in memory is the one in the file.
    pub(crate) fn compact_start(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_not_poisoned()?;
        self.begin_session(false)?;
        self.flush()
    }

    /// Add one BAT change under the state lock, flushing first when the
    /// dirty set has no room for `need` sectors. `change` returns what it
    /// did (None: nothing to do).
    pub(super) fn compact_change<T>(
        &self,
        need: usize,
        mut change: impl FnMut(&Vhdx, &mut WriteState) -> Result<T>,
    ) -> Result<T> {
        loop {
            let gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let mut st = lock(&self.state);
            self.check_writable(&st)?;
            if !self.room(&st, need) || st.pending.is_some() {
                drop(st);
                drop(gate);
                self.flush()?;
                continue;
            }
            return change(self, &mut st);
        }
    }

    /// Entries that hold no data but still name a file offset (unmapped or
    /// undefined blocks, as other implementations leave them) lose the
    /// offset: unmapped and undefined become ZERO (they read as zeros
    /// here), so that their old space can be reused. Returns how many
    /// changed; flushed when it returns.
    pub(crate) fn compact_tidy(&self) -> Result<u64> {
        let stale: Vec<usize> = self
            .bat
            .nonzero()
            .filter(|&(i, e)| {
                let e = BatEntry(e);
                !self.geo.is_bitmap_index(i) && e.offset() != 0 && self.placed_len(i, e).is_none()
            })
            .map(|(i, _)| i)
            .collect();
        let mut n = 0;
        for i in stale {
            let changed = self.compact_change(1, |v, st| {
                let e = BatEntry(v.bat.at(i));
                if e.offset() == 0 || v.placed_len(i, e).is_some() {
                    return Ok(false);
                }
                let state = match e.payload_state() {
                    Some(PayloadState::NotPresent) => PayloadState::NotPresent,
                    _ => PayloadState::Zero,
                };
                v.set_entry(st, i, BatEntry::new(state.bits(), 0));
                Ok(true)
            })?;
            n += changed as u64;
        }
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    /// The payload blocks whose data this file holds (fully or partly).
    pub(crate) fn held_blocks(&self) -> Vec<u64> {
        let g = &self.geo;
        self.bat
            .nonzero()
            .filter(|&(i, e)| !g.is_bitmap_index(i) && self.placed_len(i, BatEntry(e)).is_some())
            .map(|(i, _)| i as u64 - i as u64 / (g.chunk_ratio + 1))
            .filter(|&b| b < g.data_blocks)
            .collect()
    }

    /// If `block` (held by this file) reads as zeros through the chain,
    /// give its space back: in a base file it becomes NOT_PRESENT; in a
    /// differencing file NOT_PRESENT when `below` (the chain under this
    /// file) also reads zeros there, else ZERO, which keeps hiding the
    /// parent. `below(buf, offset)` reads the layers under this one.
    /// Returns whether the block was given back (its space is free after
    /// the next flush). No read or write of this file runs meanwhile.
    pub(crate) fn release_if_zero(
        &self,
        block: u64,
        buf: &mut Vec<u8>,
        below: &mut dyn FnMut(&mut [u8], u64) -> Result<()>,
    ) -> Result<bool> {
        let bs = self.geo.block_size as u64;
        let start = block * bs;
        let n = bs.min(self.geo.virtual_size - start) as usize;
        let idx = self.geo.payload_index(block);
        let need = 1 + self.bitmap_sectors_per_block();
        self.compact_change(need, |v, st| {
            let e = BatEntry(v.bat.at(idx));
            let Some(state) = e.payload_state() else {
                return Ok(false);
            };
            if v.placed_len(idx, e).is_none() {
                return Ok(false);
            }
            buf.clear();
            buf.resize(n, 0);
            let mut runs = Vec::new();
            v.map(start, n as u64, &mut runs)?;
            let mut at = 0usize;
            for (l, src) in runs {
                let dst = &mut buf[at..at + l as usize];
                match src {
                    Src::Data(f) => v.storage.read_at(dst, f)?,
                    Src::Zero => dst.fill(0),
                    Src::Parent => below(dst, start + at as u64)?,
                }
                at += l as usize;
            }
            if !is_zero(buf) {
                return Ok(false);
            }
            let to = if v.parent {
                below(buf, start)?;
                if is_zero(buf) {
                    PayloadState::NotPresent
                } else {
                    PayloadState::Zero
                }
            } else {
                PayloadState::NotPresent
            };
            st.pending_free.push(e.offset());
            v.set_entry(st, idx, BatEntry::new(to.bits(), 0));
            if state == PayloadState::PartiallyPresent {
                // No stale bits: a later partial write sets only its own.
                v.write_bits(st, block, 0, v.sectors_per_block(), false)?;
            }
            Ok(true)
        })
    }

    /// The areas the file uses, sorted: the header section, the log, every
    /// region, every block the BAT places, and space freed but not yet
    /// flushed (the BAT in the file may still point at it), also in a
    /// failed flush's entry. Returns them
    /// with the blocks that may move. The state lock is held.
    fn used_areas(&self, st: &WriteState) -> Result<(Vec<Area>, Vec<Placed>)> {
        let mut used = vec![(0, HEADER_SECTION_SIZE), (self.log_offset, self.log_length)];
        used.extend(
            self.regions()?
                .iter()
                .map(|r| (r.file_offset, r.length as u64)),
        );
        let bs = self.geo.block_size as u64;
        used.extend(st.pending_free.iter().map(|&o| (o, bs)));
        // A failed flush's entry keeps the space it frees until it is
        // written again.
        if let Some(p) = &st.pending {
            used.extend(p.frees.iter().map(|&o| (o, bs)));
        }
        let mut placed = Vec::new();
        for (i, e) in self.bat.nonzero() {
            if let Some(len) = self.placed_len(i, BatEntry(e)) {
                let off = BatEntry(e).offset();
                used.push((off, len));
                placed.push((i, off, len));
            }
        }
        used.sort_unstable();
        Ok((used, placed))
    }

    /// The region table entries (both copies, in case they differ).
    fn regions(&self) -> Result<Vec<region::RegionEntry>> {
        let mut out = Vec::new();
        for off in [REGION1_OFFSET, REGION2_OFFSET] {
            let mut b = vec![0u8; region::SIZE];
            self.storage.read_at(&mut b, off)?;
            if let Ok(t) = RegionTable::parse(&b, off) {
                out.extend(t.entries);
            }
        }
        if out.is_empty() {
            // The file opened, so a table was valid; keep at least the two
            // regions this handle uses.
            out.push(region::RegionEntry {
                guid: BAT_REGION,
                file_offset: self.bat_offset,
                length: align_up(self.geo.bat_region_len(), MIB).unwrap_or(MIB) as u32,
                required: true,
            });
            out.push(region::RegionEntry {
                guid: METADATA_REGION,
                file_offset: self.meta_offset,
                length: self.meta_len as u32,
                required: true,
            });
        }
        Ok(out)
    }

    /// Plan the moves that pack the blocks down: the highest block first
    /// goes to the lowest hole it fits in, until no block can go lower.
    /// Space the moves vacate is used by later moves (each move is
    /// committed before the next starts). The free list is emptied, so
    /// that no write takes a hole the plan uses; and the plan waits for
    /// whole-block writes still filling space they took (their entries are
    /// not published yet, so their space would look like a hole).
    pub(crate) fn plan_moves(&self) -> Result<Vec<Move>> {
        let (used, placed) = {
            let (_one, mut st) = self.quiet_state();
            st.free_blocks.clear();
            st.reclaim.clear();
            self.used_areas(&st)?
        };
        let mut holes = BTreeMap::new();
        let mut end = 0u64;
        for (off, len) in used {
            let start = align_up(end, MIB).unwrap_or(end);
            let stop = off / MIB * MIB;
            if stop > start {
                holes.insert(start, stop - start);
            }
            end = end.max(off.saturating_add(len));
        }
        let mut blocks = placed;
        let mut moves = Vec::new();
        loop {
            blocks.sort_unstable_by_key(|b| std::cmp::Reverse(b.1));
            let mut moved = false;
            for b in blocks.iter_mut() {
                let (idx, from, len) = *b;
                let Some((&h, &hl)) = holes.range(..from).find(|&(_, &hl)| hl >= len) else {
                    continue;
                };
                holes.remove(&h);
                if hl > len {
                    holes.insert(h + len, hl - len);
                }
                free_hole(&mut holes, from, len);
                moves.push(Move {
                    idx,
                    from,
                    to: h,
                    len,
                });
                b.1 = h;
                moved = true;
            }
            if !moved {
                return Ok(moves);
            }
        }
    }

    /// Carry out one move: copy the block to its new place, point its
    /// entry there and flush (the flush syncs the copy before it writes
    /// the entry through the log). Returns false, doing nothing, when the
    /// entry changed since the plan (the caller then stops moving).
    pub(crate) fn move_block(&self, m: &Move) -> Result<bool> {
        let chunk = m.idx as u64 / (self.geo.chunk_ratio + 1);
        let bitmap = self.geo.is_bitmap_index(m.idx);
        let moved = loop {
            let r = self.compact_change(1, |v, st| {
                let e = BatEntry(v.bat.at(m.idx));
                if e.offset() != m.from || v.placed_len(m.idx, e) != Some(m.len) {
                    return Ok(Some(false));
                }
                // A sector bitmap with changes waiting for the flush: they
                // are queued for its old place, so flush them first.
                if bitmap
                    && st
                        .dirty
                        .values()
                        .any(|d| matches!(d, Dirty::Bitmap(c, _) if *c == chunk))
                {
                    return Ok(None);
                }
                crate::io::copy_range(v.storage.as_ref(), m.from, v.storage.as_ref(), m.to, m.len)?;
                v.set_entry(st, m.idx, BatEntry::new(e.state_bits(), m.to));
                Ok(Some(true))
            })?;
            match r {
                Some(moved) => break moved,
                None => self.flush()?,
            }
        };
        if moved {
            self.flush()?;
        }
        Ok(moved)
    }

    /// The state lock with no flush between its snapshot and its end (the
    /// space an entry being applied frees is in none of the lists then:
    /// it would look like a hole) and no whole-block write filling space
    /// whose entry is not published yet. Returns the `flushing` guard too.
    fn quiet_state(&self) -> (MutexGuard<'_, ()>, MutexGuard<'_, WriteState>) {
        let one = lock(&self.flushing);
        let mut st = lock(&self.state);
        while !st.filling.is_empty() {
            st = self.filled.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        (one, st)
    }

    /// Close the session (the log is left empty), then cut the file after
    /// the last area it uses and offer the holes left below for new
    /// blocks. When a write started meanwhile (a live disk) the file is
    /// not cut, but the holes are offered all the same: otherwise the
    /// space the plan took from the free lists, and the places moves
    /// vacated, would stay unused until the next open, and a disk
    /// compacted again and again while it is written would only grow.
    /// Returns the file's length.
    pub(crate) fn shrink(&self) -> Result<u64> {
        self.close()?;
        let (_one, mut st) = self.quiet_state();
        let quiet = !st.session
            && st.pending_free.is_empty()
            && st.dirty.is_empty()
            && st.pending.is_none();
        let len = self.storage.len()?;
        let (used, _) = self.used_areas(&st)?;
        let end = if quiet {
            let end = used
                .iter()
                .map(|&(o, l)| o.saturating_add(l))
                .max()
                .unwrap_or(0);
            let end = align_up(end, MIB).unwrap_or(end);
            if end < len {
                self.storage.set_len(end)?;
                self.sync(&mut st)?;
                st.file_end = end;
            }
            end
        } else {
            st.file_end
        };
        // The holes below the end take new blocks (zeroed first); they are
        // every unused place, so they replace both lists (a hole kept in
        // two lists would be given to two blocks).
        let free = block_holes(used, self.geo.block_size as u64, end, usize::MAX);
        st.free_blocks = self.discard_freed(&free);
        st.free_blocks.reverse();
        st.reclaim.clear();
        Ok(self.storage.len()?)
    }
}

/// Add `[off, off+len)` to the holes, joined with its neighbours.
fn free_hole(holes: &mut BTreeMap<u64, u64>, mut off: u64, mut len: u64) {
    if let Some((&p, &pl)) = holes.range(..off).next_back() {
        if p + pl == off {
            holes.remove(&p);
            off = p;
            len += pl;
        }
    }
    if let Some(nl) = holes.remove(&(off + len)) {
        len += nl;
    }
    holes.insert(off, len);
}

/// Whether every byte is zero (64 bytes at a time, which vectorizes).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}
