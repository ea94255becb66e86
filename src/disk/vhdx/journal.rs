//! The write session, metadata changes and flush: dirty metadata sectors
//! go through the log, batched until a flush; headers and close.

use super::*;
use crate::error::{Reason, Structure};

impl Vhdx {
    /// Choose the DataWriteGuid the next write session will use.
    pub(crate) fn set_next_data_write_guid(&self, g: Uuid) {
        lock(&self.state).next_data_write_guid = Some(g);
    }

    /// The error every write and flush gets once a sync failed.
    pub(super) fn poisoned_error(why: &str) -> Error {
        Error::Io(std::io::Error::other(format!(
            "an earlier sync of this file failed ({why}), so what reached the disk since the \
             last successful flush is unknown; nothing more is written through this handle: \
             reopen the disk (the log is replayed) and write again what was not flushed"
        )))
    }

    /// Refuse writes and flushes on a read-only or poisoned handle.
    pub(super) fn check_writable(&self, st: &WriteState) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        match &st.poisoned {
            Some(why) => Err(Self::poisoned_error(why)),
            None => Ok(()),
        }
    }

    /// The lock-free form of [`Vhdx::check_writable`] for the data path.
    pub(super) fn check_not_poisoned(&self) -> Result<()> {
        if self.poisoned_flag.load(Ordering::Acquire) {
            self.check_writable(&lock(&self.state))?;
        }
        Ok(())
    }

    /// Sync the storage. On a file, a failed sync leaves unknown what
    /// reached the disk (the kernel may have dropped the unwritten pages),
    /// so it poisons the handle: no later write or flush can report
    /// success. A storage that keeps its writes until a sync succeeds
    /// ([`Storage::sync_retry_is_safe`]) is simply synced again next time.
    pub(super) fn sync(&self, st: &mut WriteState) -> Result<()> {
        self.storage.sync().map_err(|e| self.sync_failed(st, e))
    }

    /// [`Vhdx::sync`] without the state lock (a flush's syncs, while writes
    /// go on): the lock is taken only to record a failure.
    fn sync_unlocked(&self) -> Result<()> {
        self.storage
            .sync()
            .map_err(|e| self.sync_failed(&mut lock(&self.state), e))
    }

    fn sync_failed(&self, st: &mut WriteState, e: std::io::Error) -> Error {
        if !self.storage.sync_retry_is_safe() {
            st.poisoned.get_or_insert_with(|| e.to_string());
            self.poisoned_flag.store(true, Ordering::Release);
        }
        Error::Io(e)
    }

    /// Start a write session if none is running; `visible` says the change
    /// alters what the disk reads (then the DataWriteGuid changes first).
    pub(super) fn begin_session(&self, visible: bool) -> Result<()> {
        if self.session_started.load(Ordering::Acquire)
            && (!visible || self.data_changed.load(Ordering::Acquire))
        {
            return Ok(());
        }
        let mut st = lock(&self.state);
        self.begin_session_locked(&mut st, visible)
    }

    /// The header update protocol on the first modification after open:
    /// an empty log entry under a new LogGuid, then both headers with a new
    /// FileWriteGuid and LogGuid (and a new DataWriteGuid before the first
    /// user-visible change). A start that fails is retried with the same
    /// LogGuid and DataWriteGuid, so that whatever part of it reached the
    /// disk stays valid.
    pub(super) fn begin_session_locked(&self, st: &mut WriteState, visible: bool) -> Result<()> {
        self.check_writable(st)?;
        if st.session && (!visible || st.data_changed) {
            return Ok(());
        }
        let mut h = st.header.clone();
        let mut first_entry = 0;
        if !st.session {
            let log_guid = *st.session_log_guid.get_or_insert_with(Uuid::new_v4);
            let len = self.storage.len()?;
            let last = align_up(len, MIB).unwrap_or(len).max(st.file_end);
            let entry = vlog::build_entry(&log_guid, 1, 0, len, last, &[]);
            self.storage.write_at(&entry, self.log_offset)?;
            self.sync(st)?;
            h.file_write_guid = Uuid::new_v4();
            h.log_guid = log_guid;
            first_entry = entry.len() as u64;
        }
        if visible {
            h.data_write_guid = *st.next_data_write_guid.get_or_insert_with(Uuid::new_v4);
        }
        st.slot = self.write_headers(st, &mut h)?;
        st.header = h;
        if !st.session {
            st.log_pos = first_entry % self.log_length;
            st.log_seq = 1;
            st.session_log_guid = None;
            st.close_failed = false;
            st.session = true;
            self.session_started.store(true, Ordering::Release);
        }
        if visible {
            st.next_data_write_guid = None;
            st.data_changed = true;
            self.data_changed.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Write `h` into both header slots (the non-current one first), with a
    /// sync after each. Returns the slot that is current afterwards.
    pub(super) fn write_headers(&self, st: &mut WriteState, h: &mut Header) -> Result<Slot> {
        let mut slot = st.slot;
        for _ in 0..2 {
            h.sequence_number = h.sequence_number.checked_add(1).ok_or_else(|| {
                Error::Unsupported("the header sequence number is exhausted".into())
            })?;
            let (next, off) = match slot {
                Slot::First => (Slot::Second, HEADER2_OFFSET),
                Slot::Second => (Slot::First, HEADER1_OFFSET),
            };
            self.storage.write_at(&h.to_bytes(), off)?;
            self.sync(st)?;
            slot = next;
        }
        Ok(slot)
    }

    /// Whether `need` more dirty sectors still fit in one log entry.
    pub(super) fn room(&self, st: &WriteState, need: usize) -> bool {
        st.dirty.len() + st.reserved + need <= self.entry_cap
    }

    /// Flush because the dirty set was full when the caller looked, with
    /// the log at sequence number `seen` (or wait for writes in flight that
    /// hold reservations). Several writers can find the set full while one
    /// flush runs: once it is done, the others only look again (a flush
    /// that staged an entry since `seen` and left nothing pending emptied
    /// the set then), instead of each flushing what was written meanwhile.
    pub(super) fn flush_for_room(&self, seen: u64) -> Result<()> {
        let _one = lock(&self.flushing);
        let st = self.lock_for_flush();
        if st.pending.is_none() && (st.log_seq != seen || st.dirty.is_empty()) {
            drop(st);
            std::thread::yield_now();
            return Ok(());
        }
        drop(st);
        self.flush_serialized()
    }

    /// Replace the parent locator (through the log).
    pub(crate) fn set_parent_locator(&self, locator: Vec<u8>) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let mut m = self.metadata();
        m.parent_locator = Some(locator);
        self.set_metadata(m)
    }

    /// Replace the virtual-disk metadata (through the log): the items a
    /// merge copies from the child. Durable when it returns; the change is
    /// one log entry of its own, so it lands whole or not at all.
    pub(crate) fn set_metadata(&self, m: Metadata) -> Result<()> {
        if m.virtual_size != self.geo.virtual_size
            || m.logical_sector_size != self.geo.logical_sector_size
            || m.block_size != self.geo.block_size
        {
            return Err(Error::Unsupported(
                "changing the size, sector size or block size of a disk".into(),
            ));
        }
        self.begin_session(false)?;
        let new = m.to_region_bytes(self.meta_len as usize)?;
        let _one = lock(&self.flushing);
        // Whatever else is dirty goes first, in its own entry.
        self.flush_serialized()?;
        let old = {
            let mut v = vec![0u8; self.meta_len as usize];
            self.storage.read_at(&mut v, self.meta_offset)?;
            v
        };
        let mut changed: Vec<(u64, Vec<u8>)> = old
            .chunks(SECTOR as usize)
            .zip(new.chunks(SECTOR as usize))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(k, (_, b))| (self.meta_offset + k as u64 * SECTOR, b.to_vec()))
            .collect();
        if changed.len() > self.entry_cap {
            return Err(Error::Unsupported(format!(
                "a metadata change of {} sectors does not fit in one entry of this file's \
                 {} KiB log",
                changed.len(),
                self.log_length / 1024
            )));
        }
        let mut m = Some(m);
        let entry = loop {
            let mut st = self.lock_for_flush();
            self.check_writable(&st)?;
            if !self.room(&st, changed.len()) {
                // Writes made since the flush above go first.
                drop(st);
                self.flush_serialized()?;
                continue;
            }
            for (off, b) in std::mem::take(&mut changed) {
                st.dirty.insert(off, Dirty::Bytes(b));
            }
            if let Some(m) = m.take() {
                *self.meta.write().unwrap_or_else(|e| e.into_inner()) = m;
            }
            break self.stage(&mut st)?;
        };
        self.apply(entry)
    }

    /// Make everything written so far durable; metadata goes through the log.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if !self.session_started.load(Ordering::Acquire)
            && !self.poisoned_flag.load(Ordering::Acquire)
        {
            return Ok(());
        }
        let _one = lock(&self.flushing);
        self.flush_serialized()
    }

    /// The state lock, taken once no read or write is between looking a
    /// block up and using it (the gate is held exclusively for a moment):
    /// every change in `dirty` then has its data written. A flush takes
    /// its snapshot under it.
    pub(super) fn lock_for_flush(&self) -> MutexGuard<'_, WriteState> {
        let gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let st = lock(&self.state);
        drop(gate);
        st
    }

    /// The flush protocol (the caller holds `flushing`). Every flush is
    /// one log entry (the dirty set is bounded by what one entry holds), so
    /// a crash leaves the whole flush or none of it. The snapshot of the
    /// dirty set is taken under the state lock; the syncs and the entry's
    /// writes run without it, so that writes (even allocating ones) go on
    /// meanwhile and land in the next flush. What was snapshotted stays
    /// owed until its entry is applied: a flush that fails leaves its entry
    /// pending, and the next flush writes it again, at the same place with
    /// the same sequence number, before anything else.
    pub(super) fn flush_serialized(&self) -> Result<()> {
        loop {
            let (entry, retried) = {
                let mut st = self.lock_for_flush();
                self.check_writable(&st)?;
                if !st.session {
                    return Ok(());
                }
                match st.pending.take() {
                    Some(p) => (Some(p), true),
                    None => (self.stage(&mut st)?, false),
                }
            };
            self.apply(entry)?;
            if !retried {
                return Ok(());
            }
        }
    }

    /// Turn the dirty set into the next log entry (none when nothing is
    /// dirty): the sequence number is taken and the set starts again empty.
    pub(super) fn stage(&self, st: &mut WriteState) -> Result<Option<PendingEntry>> {
        if st.dirty.is_empty() {
            return Ok(None);
        }
        debug_assert_eq!(st.reserved, 0);
        let images = self.dirty_images(st);
        if images.len() > self.entry_cap {
            return Err(Error::corrupt(
                Structure::Log,
                None,
                Reason::Invalid(format!(
                    "{} metadata sectors to flush exceed one log entry ({})",
                    images.len(),
                    self.entry_cap
                )),
            ));
        }
        let file_len = self.storage.len()?;
        let last = align_up(file_len, MIB).unwrap_or(file_len).max(st.file_end);
        let seq = st
            .log_seq
            .checked_add(1)
            .ok_or_else(|| Error::Unsupported("the log sequence number is exhausted".into()))?;
        let pos = st.log_pos;
        let writes: Vec<(u64, &[u8])> = images.iter().map(|(o, d)| (*o, d.as_slice())).collect();
        let bytes = vlog::build_entry(&st.header.log_guid, seq, pos, file_len, last, &writes);
        drop(writes);
        st.log_seq = seq;
        st.dirty.clear();
        Ok(Some(PendingEntry {
            pos,
            bytes,
            images,
            frees: std::mem::take(&mut st.pending_free),
        }))
    }

    /// Sync the data, then write and apply `entry`, without the state lock
    /// (the caller holds `flushing`). Data first, so that no BAT entry can
    /// point at unwritten data. On failure the entry is left pending.
    pub(super) fn apply(&self, entry: Option<PendingEntry>) -> Result<()> {
        let written = self.sync_unlocked().and_then(|()| match &entry {
            Some(p) => self.write_entry(p),
            None => Ok(()),
        });
        let Some(p) = entry else {
            return written;
        };
        if let Err(e) = written {
            lock(&self.state).pending = Some(p);
            return Err(e);
        }
        let freed = self.discard_freed(&p.frees);
        let mut st = lock(&self.state);
        st.log_pos = (p.pos + p.bytes.len() as u64) % self.log_length;
        st.free_blocks.extend(freed);
        Ok(())
    }

    /// The images of every dirty sector, by file offset.
    pub(super) fn dirty_images(&self, st: &WriteState) -> Vec<(u64, Vec<u8>)> {
        let bat = &self.bat;
        let maps = rlock(&self.bitmaps);
        st.dirty
            .iter()
            .map(|(&off, d)| {
                let img = match d {
                    Dirty::Bat(s) => {
                        let mut img = vec![0u8; SECTOR as usize];
                        let first = (s * SECTOR / 8) as usize;
                        for (k, chunk) in img.chunks_exact_mut(8).enumerate() {
                            if let Some(v) = bat.get(first + k) {
                                chunk.copy_from_slice(&v.to_le_bytes());
                            }
                        }
                        img
                    }
                    Dirty::Bitmap(c, k) => maps
                        .get(&(*c, *k))
                        .map(|b| b.to_vec())
                        .unwrap_or_else(|| vec![0u8; SECTOR as usize]),
                    Dirty::Bytes(b) => b.clone(),
                };
                (off, img)
            })
            .collect()
    }

    /// Write an entry into the log, sync, write its sectors to their
    /// places, sync. The entry is its own sequence (its tail is itself), and
    /// the one before it stays intact until it is written: an entry never
    /// exceeds half the log.
    fn write_entry(&self, p: &PendingEntry) -> Result<()> {
        let first = ((self.log_length - p.pos) as usize).min(p.bytes.len());
        self.storage
            .write_at(&p.bytes[..first], self.log_offset + p.pos)?;
        if first < p.bytes.len() {
            self.storage.write_at(&p.bytes[first..], self.log_offset)?;
        }
        self.sync_unlocked()?;
        for (off, data) in &p.images {
            self.storage.write_at(data, *off)?;
        }
        self.sync_unlocked()
    }

    /// Flush and leave an empty log behind.
    pub(crate) fn close(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _one = lock(&self.flushing);
        let mut st = loop {
            {
                let st = lock(&self.state);
                self.check_writable(&st)?;
                if !st.session && !st.close_failed {
                    return Ok(());
                }
            }
            self.flush_serialized()?;
            let st = self.lock_for_flush();
            // Nothing written since (a close has no writers left, but one
            // that raced it is flushed, not dropped).
            if st.dirty.is_empty() && st.pending.is_none() {
                break st;
            }
        };
        let mut h = st.header.clone();
        h.log_guid = Uuid::nil();
        let written = self.write_headers(&mut st, &mut h);
        // Whether or not a header saying "empty log" reached the disk, the
        // session is over: a later change starts a new one, under a new
        // LogGuid, instead of logging under one a header may have dropped;
        // a retried close writes the headers again.
        st.session = false;
        st.data_changed = false;
        self.session_started.store(false, Ordering::Release);
        self.data_changed.store(false, Ordering::Release);
        st.close_failed = written.is_err();
        let slot = written?;
        st.slot = slot;
        st.header = h;
        Ok(())
    }
}

/// Write `h` into both header slots (the non-current one first), with a
/// flush after each. Returns the slot that is current afterwards.
pub(super) fn write_headers(storage: &dyn Storage, h: &mut Header, current: Slot) -> Result<Slot> {
    let mut slot = current;
    for _ in 0..2 {
        h.sequence_number += 1;
        let (next, off) = match slot {
            Slot::First => (Slot::Second, HEADER2_OFFSET),
            Slot::Second => (Slot::First, HEADER1_OFFSET),
        };
        storage.write_at(&h.to_bytes(), off)?;
        storage.sync()?;
        slot = next;
    }
    Ok(slot)
}

impl Vhdx {
    /// Start the write session now (with its DataWriteGuid), so that the
    /// first write does not pay for it: a live switch prepares a new child
    /// this way before the pause.
    pub(crate) fn start_session(&self) -> Result<()> {
        self.begin_session(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;
    use std::sync::atomic::AtomicUsize;

    /// Memory that counts its syncs and can fail the next one.
    #[derive(Debug, Default)]
    struct Counted {
        inner: MemStorage,
        syncs: AtomicUsize,
        fail_next_sync: AtomicBool,
    }

    impl Storage for Counted {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.inner.write_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync(&self) -> std::io::Result<()> {
            if self.fail_next_sync.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("injected"));
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
            self.inner.sync()
        }
        fn sync_retry_is_safe(&self) -> bool {
            true
        }
    }

    /// Blocks whose BAT entries lie in different BAT sectors (a sector holds
    /// 512 entries): each allocation dirties a sector of its own.
    const SPREAD: u64 = 600;

    fn small_log_disk() -> (Arc<Counted>, Vhdx) {
        let st = Arc::new(Counted::default());
        let opts = CreateOptions::new(4 * SPREAD * MIB).block_size(MIB as u32);
        Vhdx::create(st.as_ref(), &opts, "test", None, &[]).unwrap();
        let mut v = Vhdx::open(st.clone(), false).unwrap();
        // Two dirty sectors fill one entry.
        v.entry_cap = 2;
        (st, v)
    }

    fn write_block(v: &Vhdx, block: u64) {
        let bs = v.geo.block_size as u64;
        v.write_at(&[7u8; 4096], block * bs).unwrap();
    }

    /// Writers that found the dirty set full while another flush ran look
    /// again instead of each flushing what was written meanwhile; a flush
    /// that failed is still retried by the next one.
    #[test]
    fn a_flush_since_the_look_made_the_room() {
        let (st, v) = small_log_disk();
        write_block(&v, 0);
        write_block(&v, SPREAD);
        let Prep::NeedFlush(seen) = v.prepare_write(2 * SPREAD, 0, 4096).unwrap() else {
            panic!("the dirty set should be full");
        };
        // The first writer flushes.
        let before = st.syncs.load(Ordering::SeqCst);
        v.flush_for_room(seen).unwrap();
        assert!(st.syncs.load(Ordering::SeqCst) > before);
        assert_ne!(lock(&v.state).log_seq, seen);
        // Another write lands before the second writer gets its turn.
        write_block(&v, 1);
        let before = st.syncs.load(Ordering::SeqCst);
        v.flush_for_room(seen).unwrap();
        assert_eq!(st.syncs.load(Ordering::SeqCst), before, "flushed twice");
        assert_eq!(lock(&v.state).dirty.len(), 1);
        // It then finds room and writes.
        write_block(&v, 2 * SPREAD);

        // A flush that failed leaves its entry pending: the next writer
        // that found the set full retries it, though the sequence moved on.
        let seen = lock(&v.state).log_seq;
        st.fail_next_sync.store(true, Ordering::SeqCst);
        assert!(v.flush_for_room(seen).is_err());
        assert!(lock(&v.state).pending.is_some());
        assert_ne!(lock(&v.state).log_seq, seen);
        let before = st.syncs.load(Ordering::SeqCst);
        v.flush_for_room(seen).unwrap();
        assert!(st.syncs.load(Ordering::SeqCst) > before);
        assert!(lock(&v.state).pending.is_none());
        v.close().unwrap();

        // Everything written is there after a reopen.
        let v = Vhdx::open(st.clone(), true).unwrap();
        let bs = v.geo.block_size as u64;
        for b in [0, 1, SPREAD, 2 * SPREAD] {
            let mut buf = [0u8; 4096];
            v.read_at(&mut buf, b * bs).unwrap();
            assert_eq!(buf, [7u8; 4096], "block {b}");
        }
    }
}
