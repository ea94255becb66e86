//! One VHDX file: open (with log replay), create, read, write, trim, flush, close.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use uuid::Uuid;

use crate::disk::{CreateOptions, DiskKind, Extent};
use crate::error::{Error, Result};
use crate::format::bat::{self, BatEntry, Geometry, PayloadState};
use crate::format::fileid::{self, FileIdentifier};
use crate::format::header::{self, Header, Slot};
use crate::format::log::{self as vlog, Descriptor};
use crate::format::metadata::{self, FileParameterFlags, Metadata, MetadataEntry};
use crate::format::region::{self, RegionEntry, RegionTable};
use crate::format::{
    align_up, BAT_REGION, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_SECTION_SIZE, MAX_BLOCK_SIZE,
    MAX_VIRTUAL_SIZE, METADATA_REGION, MIB, MIN_BLOCK_SIZE, REGION1_OFFSET, REGION2_OFFSET,
};
use crate::io::Storage;

/// Bytes of metadata read at open are bounded by this.
const MAX_METADATA_BYTES: u64 = 64 * MIB;
/// Most a log replay may grow a file by.
const MAX_LOG_GROWTH: u64 = 1 << 40;
/// BAT sector (log granularity).
const SECTOR: u64 = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rlock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// Writes replayed in memory for a read-only open of a dirty file.
#[derive(Debug, Default)]
struct Overlay {
    writes: Vec<(u64, Vec<u8>)>,
    zeros: Vec<(u64, u64)>,
    order: Vec<(bool, usize)>,
}

impl Overlay {
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
    fn patch(&self, buf: &mut [u8], offset: u64) {
        let end = offset + buf.len() as u64;
        for &(is_zero, i) in &self.order {
            let (s, e, src): (u64, u64, Option<&[u8]>) = if is_zero {
                let (o, l) = self.zeros[i];
                (o, o + l, None)
            } else {
                let (o, ref d) = self.writes[i];
                (o, o + d.len() as u64, Some(d))
            };
            let (lo, hi) = (s.max(offset), e.min(end));
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match src {
                Some(d) => dst.copy_from_slice(&d[(lo - s) as usize..(hi - s) as usize]),
                None => dst.fill(0),
            }
        }
    }
}

/// Mutable state of a writable file, behind one mutex.
#[derive(Debug)]
struct WriteState {
    header: Header,
    slot: Slot,
    session: bool,
    log_pos: u64,
    log_seq: u64,
    dirty_sectors: BTreeSet<u64>,
    pending_free: Vec<u64>,
    free_blocks: Vec<u64>,
    file_end: u64,
    unsynced: bool,
}

/// One open VHDX file.
#[derive(Debug)]
pub(crate) struct Vhdx {
    storage: Arc<dyn Storage>,
    read_only: bool,
    pub(crate) geo: Geometry,
    pub(crate) meta: Metadata,
    pub(crate) creator: String,
    bat_offset: u64,
    log_offset: u64,
    log_length: u64,
    bat: RwLock<Vec<u64>>,
    state: Mutex<WriteState>,
    session_started: AtomicBool,
    pub(crate) log_dirty: bool,
}

struct Reader<'a> {
    storage: &'a dyn Storage,
    overlay: &'a Overlay,
    len: u64,
}

impl Reader<'_> {
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.storage.read_at(buf, offset)?;
        if !self.overlay.is_empty() {
            self.overlay.patch(buf, offset);
        }
        Ok(())
    }
    fn read_vec(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(Error::Corrupt(format!(
                    "{what} at {offset:#x}+{len:#x} lies past the end of the file ({:#x})",
                    self.len
                )))
            }
        }
        let mut v = vec![0u8; len as usize];
        self.read(&mut v, offset)?;
        Ok(v)
    }
}

/// Facts read at open that a check wants too.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) regions: Vec<RegionEntry>,
    pub(crate) header_problem: Option<String>,
    pub(crate) region_problem: Option<String>,
    pub(crate) file_len: u64,
}

impl Vhdx {
    /// Open a VHDX on `storage`.
    pub(crate) fn open(storage: Arc<dyn Storage>, read_only: bool) -> Result<Vhdx> {
        Self::open_with_layout(storage, read_only).map(|(v, _)| v)
    }

    pub(crate) fn open_with_layout(storage: Arc<dyn Storage>, read_only: bool) -> Result<(Vhdx, Layout)> {
        if !read_only && !storage.is_writable() {
            return Err(Error::ReadOnly);
        }
        let mut file_len = storage.len()?;
        if file_len < HEADER_SECTION_SIZE {
            let mut id = vec![0u8; fileid::SIZE];
            storage.read_at(&mut id, 0)?;
            FileIdentifier::parse(&id)?;
            return Err(Error::Corrupt(format!(
                "file is {file_len} bytes, shorter than the 1 MiB header section"
            )));
        }
        let mut id = vec![0u8; fileid::SIZE];
        storage.read_at(&mut id, 0)?;
        let fid = FileIdentifier::parse(&id)?;

        let mut h1 = vec![0u8; header::SIZE];
        let mut h2 = vec![0u8; header::SIZE];
        storage.read_at(&mut h1, HEADER1_OFFSET)?;
        storage.read_at(&mut h2, HEADER2_OFFSET)?;
        let (mut hdr, mut slot, header_err) = header::choose(&h1, &h2)?;
        let header_problem = header_err.map(|e| e.to_string());
        let log_offset = hdr.log_offset;
        let log_length = hdr.log_length as u64;
        if log_length > 0 && log_offset.checked_add(log_length).is_none_or(|e| e > file_len) {
            return Err(Error::Corrupt(format!(
                "the log at {log_offset:#x}+{log_length:#x} lies past the end of the file ({file_len:#x})"
            )));
        }

        // Log replay.
        let mut overlay = Overlay::default();
        let log_dirty = !hdr.log_guid.is_nil();
        if log_dirty {
            let reader = |pos: u64, buf: &mut [u8]| -> Result<()> {
                storage.read_at(buf, log_offset + pos)?;
                Ok(())
            };
            let seq = vlog::find_active_sequence(&reader, log_length, &hdr.log_guid)?;
            let head = seq.last().ok_or_else(|| Error::Corrupt("empty log sequence".into()))?;
            if file_len < head.flushed_file_offset {
                return Err(Error::Corrupt(format!(
                    "file is truncated: {file_len:#x} bytes, the log says at least {:#x}",
                    head.flushed_file_offset
                )));
            }
            if head.last_file_offset > file_len.saturating_add(MAX_LOG_GROWTH) {
                return Err(Error::Corrupt(format!(
                    "the log would grow the file from {file_len:#x} to {:#x} bytes",
                    head.last_file_offset
                )));
            }
            let limit = head.last_file_offset.max(file_len);
            let log_end = log_offset + log_length;
            for e in &seq {
                for d in &e.descriptors {
                    let (start, end) = match d {
                        Descriptor::Data { file_offset, .. } | Descriptor::Zero { file_offset, .. } => {
                            (*file_offset, d.end())
                        }
                    };
                    if start < REGION1_OFFSET || end > limit || (start < log_end && log_offset < end) {
                        return Err(Error::Corrupt(format!(
                            "log entry {} writes {start:#x}..{end:#x}, outside the file's structures",
                            e.sequence
                        )));
                    }
                }
            }
            let last = head.last_file_offset;
            if read_only {
                for e in &seq {
                    for d in &e.descriptors {
                        match d {
                            Descriptor::Data { file_offset, data } => {
                                overlay.order.push((false, overlay.writes.len()));
                                overlay.writes.push((*file_offset, data.clone()));
                            }
                            Descriptor::Zero { file_offset, length } => {
                                overlay.order.push((true, overlay.zeros.len()));
                                overlay.zeros.push((*file_offset, *length));
                            }
                        }
                    }
                }
                file_len = file_len.max(last);
            } else {
                for e in &seq {
                    for d in &e.descriptors {
                        match d {
                            Descriptor::Data { file_offset, data } => storage.write_at(data, *file_offset)?,
                            Descriptor::Zero { file_offset, length } => {
                                crate::io::write_zeros(storage.as_ref(), *file_offset, *length)?
                            }
                        }
                    }
                }
                if storage.len()? < last {
                    storage.set_len(last)?;
                }
                storage.sync()?;
                // The log is applied: mark it empty in both headers.
                let mut h = hdr.clone();
                h.log_guid = Uuid::nil();
                h.file_write_guid = Uuid::new_v4();
                slot = write_headers(storage.as_ref(), &mut h, slot)?;
                hdr = h;
                file_len = storage.len()?;
            }
        }
        let reader = Reader { storage: storage.as_ref(), overlay: &overlay, len: file_len };

        // Region tables.
        let (regions, region_problem) = {
            let r1 = reader
                .read_vec(REGION1_OFFSET, region::SIZE as u64, "region table 1")
                .and_then(|b| RegionTable::parse(&b, REGION1_OFFSET));
            match r1 {
                Ok(t) => (t, None),
                Err(e1) => {
                    let t = reader
                        .read_vec(REGION2_OFFSET, region::SIZE as u64, "region table 2")
                        .and_then(|b| RegionTable::parse(&b, REGION2_OFFSET))
                        .map_err(|e2| {
                            Error::Corrupt(format!("no valid region table: table 1: {e1}; table 2: {e2}"))
                        })?;
                    (t, Some(format!("region table 1: {e1}")))
                }
            }
        };
        for e in &regions.entries {
            if e.guid != BAT_REGION && e.guid != METADATA_REGION && e.required {
                return Err(Error::Unsupported(format!("required region {}", e.guid)));
            }
            if e.end() > file_len {
                return Err(Error::Corrupt(format!(
                    "region {} at {:#x}+{:#x} lies past the end of the file ({file_len:#x})",
                    e.guid, e.file_offset, e.length
                )));
            }
            if log_length > 0 && e.file_offset < log_offset + log_length && log_offset < e.end() {
                return Err(Error::Corrupt(format!("region {} overlaps the log", e.guid)));
            }
        }
        let bat_region = *regions
            .find(&BAT_REGION)
            .ok_or_else(|| Error::Corrupt("the region table has no BAT region".into()))?;
        let meta_region = *regions
            .find(&METADATA_REGION)
            .ok_or_else(|| Error::Corrupt("the region table has no metadata region".into()))?;

        // Metadata.
        let table = reader.read_vec(meta_region.file_offset, metadata::TABLE_SIZE as u64, "metadata table")?;
        let entries = metadata::parse_table(&table, meta_region.length as u64).map_err(|e| match e {
            Error::BadSignature { structure, found, .. } => Error::BadSignature {
                structure,
                offset: meta_region.file_offset,
                found,
            },
            e => e,
        })?;
        let total: u64 = entries.iter().map(|e| e.length as u64).sum();
        if total > MAX_METADATA_BYTES {
            return Err(Error::Corrupt(format!("metadata items total {total} bytes")));
        }
        let mut items: Vec<(MetadataEntry, Vec<u8>)> = Vec::with_capacity(entries.len());
        for e in entries {
            let data = reader.read_vec(meta_region.file_offset + e.offset as u64, e.length as u64, "metadata item")?;
            items.push((e, data));
        }
        let meta = Metadata::from_items(items)?;
        if meta.has_parent() {
            return Err(Error::Unsupported(
                "differencing disks (AVHDX with a parent) are not supported yet".into(),
            ));
        }
        let geo = Geometry::new(meta.virtual_size, meta.block_size, meta.logical_sector_size, meta.has_parent())?;
        if geo.total_entries * 8 > bat_region.length as u64 {
            return Err(Error::Corrupt(format!(
                "the BAT region ({} bytes) is too small for {} entries",
                bat_region.length, geo.total_entries
            )));
        }
        let raw = reader.read_vec(bat_region.file_offset, geo.total_entries * 8, "BAT")?;
        let entries = bat::parse(&raw, &geo)?;
        drop(raw);
        validate_bat(&entries, &geo, &meta, &regions.entries, log_offset, log_length, file_len)?;

        let mut file_end = align_up(file_len, MIB).unwrap_or(file_len);
        for e in &regions.entries {
            file_end = file_end.max(e.end());
        }
        for (i, &e) in entries.iter().enumerate() {
            if !geo.is_bitmap_index(i) && BatEntry(e).payload_state() == Some(PayloadState::FullyPresent) {
                file_end = file_end.max(BatEntry(e).offset() + geo.block_size as u64);
            }
        }
        let kind = if meta.file_flags.contains(FileParameterFlags::LEAVE_BLOCK_ALLOCATED) {
            DiskKind::Fixed
        } else {
            DiskKind::Dynamic
        };
        let _ = kind;
        let vhdx = Vhdx {
            storage: storage.clone(),
            read_only,
            geo,
            meta,
            creator: fid.creator,
            bat_offset: bat_region.file_offset,
            log_offset,
            log_length,
            bat: RwLock::new(entries),
            state: Mutex::new(WriteState {
                header: hdr,
                slot,
                session: false,
                log_pos: 0,
                log_seq: 0,
                dirty_sectors: BTreeSet::new(),
                pending_free: Vec::new(),
                free_blocks: Vec::new(),
                file_end,
                unsynced: false,
            }),
            session_started: AtomicBool::new(false),
            log_dirty,
        };
        let layout = Layout {
            regions: regions.entries,
            header_problem,
            region_problem,
            file_len,
        };
        Ok((vhdx, layout))
    }

    /// Create a VHDX on empty storage.
    pub(crate) fn create(storage: &dyn Storage, opts: &CreateOptions, creator: &str) -> Result<()> {
        validate_create(opts)?;
        let geo = Geometry::new(opts.virtual_size, opts.block_size, opts.logical_sector_size, false)?;
        let log_offset = MIB;
        let meta_offset = log_offset + opts.log_size as u64;
        let meta_len = MIB;
        let bat_offset = meta_offset + meta_len;
        let bat_len = geo.bat_region_len();
        let data_start = bat_offset + bat_len;
        let mut flags = FileParameterFlags::empty();
        if opts.fixed {
            flags |= FileParameterFlags::LEAVE_BLOCK_ALLOCATED;
        }
        let meta = Metadata {
            block_size: opts.block_size,
            file_flags: flags,
            virtual_size: opts.virtual_size,
            disk_id: Uuid::new_v4(),
            logical_sector_size: opts.logical_sector_size,
            physical_sector_size: opts.physical_sector_size,
            parent_locator: None,
            other_items: Vec::new(),
        };
        let regions = RegionTable {
            entries: vec![
                RegionEntry { guid: BAT_REGION, file_offset: bat_offset, length: bat_len as u32, required: true },
                RegionEntry { guid: METADATA_REGION, file_offset: meta_offset, length: meta_len as u32, required: true },
            ],
        };
        if bat_len > u32::MAX as u64 {
            return Err(Error::InvalidArgument("the BAT would exceed 4 GiB".into()));
        }
        let data_write_guid = Uuid::new_v4();
        let mut h = Header {
            sequence_number: 0,
            file_write_guid: Uuid::new_v4(),
            data_write_guid,
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: opts.log_size,
            log_offset,
        };
        // Everything but the file identifier first; the identifier last, so
        // that an interrupted create is never taken for a valid disk.
        let end = if opts.fixed {
            data_start + geo.data_blocks * opts.block_size as u64
        } else {
            data_start
        };
        storage.set_len(end)?;
        if opts.fixed {
            storage.allocate(data_start, end - data_start)?;
            let mut raw = vec![0u8; (geo.total_entries * 8) as usize];
            for b in 0..geo.data_blocks {
                let i = geo.payload_index(b);
                let e = BatEntry::new(PayloadState::FullyPresent.bits(), data_start + b * opts.block_size as u64);
                raw[i * 8..i * 8 + 8].copy_from_slice(&e.0.to_le_bytes());
            }
            storage.write_at(&raw, bat_offset)?;
        }
        storage.write_at(&meta.to_region_bytes(meta_len as usize)?, meta_offset)?;
        let rt = regions.to_bytes();
        storage.write_at(&rt, REGION1_OFFSET)?;
        storage.write_at(&rt, REGION2_OFFSET)?;
        storage.write_at(&h.to_bytes(), HEADER1_OFFSET)?;
        h.sequence_number = 1;
        storage.write_at(&h.to_bytes(), HEADER2_OFFSET)?;
        storage.sync()?;
        let fid = FileIdentifier { creator: creator.to_string() };
        storage.write_at(&fid.to_bytes(), 0)?;
        storage.sync()?;
        Ok(())
    }

    pub(crate) fn kind(&self) -> DiskKind {
        if self.meta.has_parent() {
            DiskKind::Differencing
        } else if self.meta.file_flags.contains(FileParameterFlags::LEAVE_BLOCK_ALLOCATED) {
            DiskKind::Fixed
        } else {
            DiskKind::Dynamic
        }
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn header(&self) -> Header {
        lock(&self.state).header.clone()
    }

    pub(crate) fn file_len(&self) -> Result<u64> {
        Ok(self.storage.len()?)
    }

    pub(crate) fn bat_snapshot(&self) -> Vec<u64> {
        rlock(&self.bat).clone()
    }

    pub(crate) fn allocated_bytes(&self) -> u64 {
        let bat = rlock(&self.bat);
        let n = (0..self.geo.data_blocks)
            .filter(|&b| BatEntry(bat[self.geo.payload_index(b)]).payload_state() == Some(PayloadState::FullyPresent))
            .count() as u64;
        n * self.geo.block_size as u64
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.virtual_size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size: self.geo.virtual_size }),
        }
    }

    /// Read any range inside the disk.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let bs = self.geo.block_size as u64;
        // Collect (buffer start, len, Some(file offset) | None) under the lock, then do I/O.
        let mut runs: Vec<(usize, usize, Option<u64>)> = Vec::new();
        {
            let bat = rlock(&self.bat);
            let mut done = 0usize;
            while done < buf.len() {
                let pos = offset + done as u64;
                let block = pos / bs;
                let within = pos % bs;
                let n = ((bs - within) as usize).min(buf.len() - done);
                let e = BatEntry(bat[self.geo.payload_index(block)]);
                let src = match e.payload_state() {
                    Some(PayloadState::FullyPresent) => Some(e.offset() + within),
                    _ => None,
                };
                match runs.last_mut() {
                    Some((s, l, Some(f))) if src == Some(*f + *l as u64) && *s + *l == done => *l += n,
                    Some((s, l, None)) if src.is_none() && *s + *l == done => *l += n,
                    _ => runs.push((done, n, src)),
                }
                done += n;
            }
        }
        for (s, l, src) in runs {
            match src {
                Some(f) => self.storage.read_at(&mut buf[s..s + l], f)?,
                None => buf[s..s + l].fill(0),
            }
        }
        Ok(())
    }

    fn begin_session(&self) -> Result<()> {
        if self.session_started.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = lock(&self.state);
        self.begin_session_locked(&mut st)
    }

    /// The header update protocol on the first modification after open:
    /// an empty log entry under a new LogGuid, then both headers with new
    /// FileWriteGuid, DataWriteGuid and LogGuid.
    fn begin_session_locked(&self, st: &mut WriteState) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if st.session {
            return Ok(());
        }
        let log_guid = Uuid::new_v4();
        let len = self.storage.len()?;
        let entry = vlog::build_entry(&log_guid, 1, 0, len, len, &[]);
        self.storage.write_at(&entry, self.log_offset)?;
        self.storage.sync()?;
        let mut h = st.header.clone();
        h.file_write_guid = Uuid::new_v4();
        h.data_write_guid = Uuid::new_v4();
        h.log_guid = log_guid;
        st.slot = write_headers(self.storage.as_ref(), &mut h, st.slot)?;
        st.header = h;
        st.log_pos = entry.len() as u64 % self.log_length;
        st.log_seq = 1;
        st.session = true;
        self.session_started.store(true, Ordering::Release);
        Ok(())
    }

    /// Allocate a payload block for `block` (under the state lock); returns its file offset.
    fn allocate_block(&self, st: &mut WriteState, block: u64) -> Result<u64> {
        let bs = self.geo.block_size as u64;
        let idx = self.geo.payload_index(block);
        {
            let bat = rlock(&self.bat);
            let e = BatEntry(bat[idx]);
            if e.payload_state() == Some(PayloadState::FullyPresent) {
                return Ok(e.offset());
            }
        }
        let off = match st.free_blocks.pop() {
            Some(off) => off,
            None => {
                let off = st.file_end;
                self.storage.allocate(off, bs)?;
                st.file_end = off + bs;
                off
            }
        };
        self.bat.write().unwrap_or_else(|e| e.into_inner())[idx] =
            BatEntry::new(PayloadState::FullyPresent.bits(), off).0;
        st.dirty_sectors.insert(idx as u64 * 8 / SECTOR);
        st.unsynced = true;
        Ok(off)
    }

    /// Write any range inside the disk.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.begin_session()?;
        let bs = self.geo.block_size as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(buf.len() - done);
            let e = BatEntry(rlock(&self.bat)[self.geo.payload_index(block)]);
            let base = if e.payload_state() == Some(PayloadState::FullyPresent) {
                e.offset()
            } else {
                let mut st = lock(&self.state);
                self.allocate_block(&mut st, block)?
            };
            self.storage.write_at(&buf[done..done + n], base + within)?;
            done += n;
        }
        Ok(())
    }

    /// Trim a range: it reads as zeros afterwards; whole blocks of a dynamic
    /// disk give their space back (after the next flush).
    pub(crate) fn trim(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.begin_session()?;
        let bs = self.geo.block_size as u64;
        let fixed = self.kind() == DiskKind::Fixed;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let bstart = block * bs;
            let bend = (bstart + bs).min(self.geo.virtual_size);
            let n = (bend - pos).min(end - pos);
            let idx = self.geo.payload_index(block);
            let e = BatEntry(rlock(&self.bat)[idx]);
            if e.payload_state() == Some(PayloadState::FullyPresent) {
                let whole = pos == bstart && pos + n == bend;
                if whole && !fixed {
                    let mut st = lock(&self.state);
                    let mut bat = self.bat.write().unwrap_or_else(|e| e.into_inner());
                    let cur = BatEntry(bat[idx]);
                    if cur.payload_state() == Some(PayloadState::FullyPresent) {
                        bat[idx] = BatEntry::new(PayloadState::Zero.bits(), 0).0;
                        st.pending_free.push(cur.offset());
                        st.dirty_sectors.insert(idx as u64 * 8 / SECTOR);
                        st.unsynced = true;
                    }
                } else {
                    crate::io::write_zeros(self.storage.as_ref(), e.offset() + (pos - bstart), n)?;
                    lock(&self.state).unsynced = true;
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Make everything written so far durable; metadata goes through the log.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if !self.session_started.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = lock(&self.state);
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut WriteState) -> Result<()> {
        if !st.session {
            return Ok(());
        }
        // Data first, so that no BAT entry can point at unwritten data.
        self.storage.sync()?;
        st.unsynced = false;
        if st.dirty_sectors.is_empty() {
            return Ok(());
        }
        let sectors: Vec<u64> = std::mem::take(&mut st.dirty_sectors).into_iter().collect();
        let images: Vec<(u64, Vec<u8>)> = {
            let bat = rlock(&self.bat);
            sectors
                .iter()
                .map(|&s| {
                    let mut img = vec![0u8; SECTOR as usize];
                    let first = (s * SECTOR / 8) as usize;
                    for (k, chunk) in img.chunks_exact_mut(8).enumerate() {
                        if let Some(v) = bat.get(first + k) {
                            chunk.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                    (self.bat_offset + s * SECTOR, img)
                })
                .collect()
        };
        self.log_and_apply(st, &images)?;
        // Space of trimmed blocks can go now that no durable entry points at it.
        for off in std::mem::take(&mut st.pending_free) {
            self.storage.discard(off, self.geo.block_size as u64)?;
            st.free_blocks.push(off);
        }
        Ok(())
    }

    /// Write metadata sectors through the log: entry, flush, apply, flush.
    fn log_and_apply(&self, st: &mut WriteState, images: &[(u64, Vec<u8>)]) -> Result<()> {
        let per_entry = vlog::max_data_sectors(self.log_length).max(1);
        for batch in images.chunks(per_entry) {
            let file_len = self.storage.len()?;
            let last = align_up(file_len, MIB).unwrap_or(file_len).max(st.file_end);
            let writes: Vec<(u64, &[u8])> = batch.iter().map(|(o, d)| (*o, d.as_slice())).collect();
            let seq = st.log_seq + 1;
            let pos = st.log_pos;
            let entry = vlog::build_entry(&st.header.log_guid, seq, pos, file_len, last, &writes);
            let first = ((self.log_length - pos) as usize).min(entry.len());
            self.storage.write_at(&entry[..first], self.log_offset + pos)?;
            if first < entry.len() {
                self.storage.write_at(&entry[first..], self.log_offset)?;
            }
            self.storage.sync()?;
            st.log_seq = seq;
            st.log_pos = (pos + entry.len() as u64) % self.log_length;
            for (off, data) in batch {
                self.storage.write_at(data, *off)?;
            }
            self.storage.sync()?;
        }
        Ok(())
    }

    /// Flush and leave an empty log behind.
    pub(crate) fn close(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let mut st = lock(&self.state);
        if !st.session {
            return Ok(());
        }
        self.flush_locked(&mut st)?;
        let mut h = st.header.clone();
        h.log_guid = Uuid::nil();
        st.slot = write_headers(self.storage.as_ref(), &mut h, st.slot)?;
        st.header = h;
        st.session = false;
        self.session_started.store(false, Ordering::Release);
        Ok(())
    }

    /// Allocated/unallocated runs of the whole disk.
    pub(crate) fn extents(&self) -> Vec<Extent> {
        let bs = self.geo.block_size as u64;
        let bat = rlock(&self.bat);
        let mut out: Vec<Extent> = Vec::new();
        for b in 0..self.geo.data_blocks {
            let allocated = BatEntry(bat[self.geo.payload_index(b)]).payload_state() == Some(PayloadState::FullyPresent);
            let offset = b * bs;
            let length = bs.min(self.geo.virtual_size - offset);
            match out.last_mut() {
                Some(x) if x.allocated == allocated => x.length += length,
                _ => out.push(Extent { offset, length, allocated }),
            }
        }
        out
    }
}

/// Write `h` into both header slots (the non-current one first), with a
/// flush after each. Returns the slot that is current afterwards.
fn write_headers(storage: &dyn Storage, h: &mut Header, current: Slot) -> Result<Slot> {
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

fn validate_create(o: &CreateOptions) -> Result<()> {
    let bad = |s: String| Err(Error::InvalidArgument(s));
    if o.logical_sector_size != 512 && o.logical_sector_size != 4096 {
        return bad(format!("logical sector size {} (must be 512 or 4096)", o.logical_sector_size));
    }
    if o.physical_sector_size != 512 && o.physical_sector_size != 4096 {
        return bad(format!("physical sector size {} (must be 512 or 4096)", o.physical_sector_size));
    }
    if !o.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&o.block_size) {
        return bad(format!("block size {} (must be a power of two from 1 MiB to 256 MiB)", o.block_size));
    }
    if o.virtual_size == 0 || o.virtual_size > MAX_VIRTUAL_SIZE {
        return bad(format!("virtual size {} (must be from one sector to 64 TiB)", o.virtual_size));
    }
    if o.virtual_size % o.logical_sector_size as u64 != 0 {
        return bad(format!(
            "virtual size {} is not a multiple of the logical sector size {}",
            o.virtual_size, o.logical_sector_size
        ));
    }
    if o.log_size == 0 || o.log_size as u64 % MIB != 0 {
        return bad(format!("log size {} (must be a non-zero multiple of 1 MiB)", o.log_size));
    }
    Ok(())
}

fn validate_bat(
    entries: &[u64],
    geo: &Geometry,
    meta: &Metadata,
    regions: &[RegionEntry],
    log_offset: u64,
    log_length: u64,
    file_len: u64,
) -> Result<()> {
    let bs = geo.block_size as u64;
    for b in 0..geo.data_blocks {
        let i = geo.payload_index(b);
        let e = BatEntry(entries[i]);
        let Some(state) = e.payload_state() else {
            return Err(Error::Corrupt(format!("BAT entry {i} (block {b}) has the reserved state {}", e.state_bits())));
        };
        if e.0 & bat::RESERVED_MASK != 0 {
            return Err(Error::Corrupt(format!("BAT entry {i} (block {b}) has reserved bits set: {:#x}", e.0)));
        }
        match state {
            PayloadState::PartiallyPresent if !meta.has_parent() => {
                return Err(Error::Corrupt(format!(
                    "BAT entry {i} (block {b}) is PARTIALLY_PRESENT in a disk without a parent"
                )));
            }
            PayloadState::FullyPresent | PayloadState::PartiallyPresent => {
                let off = e.offset();
                if off < HEADER_SECTION_SIZE {
                    return Err(Error::Corrupt(format!("BAT entry {i} (block {b}) points into the header section ({off:#x})")));
                }
                if off >= file_len {
                    return Err(Error::Corrupt(format!(
                        "BAT entry {i} (block {b}) points past the end of the file ({off:#x} >= {file_len:#x})"
                    )));
                }
                let end = off + bs;
                if log_length > 0 && off < log_offset + log_length && log_offset < end {
                    return Err(Error::Corrupt(format!("BAT entry {i} (block {b}) overlaps the log")));
                }
                for r in regions {
                    if off < r.end() && r.file_offset < end {
                        return Err(Error::Corrupt(format!("BAT entry {i} (block {b}) overlaps region {}", r.guid)));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
