//! One VHDX file: open (with log replay), create, read, write, trim, flush, close.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use uuid::Uuid;

use crate::disk::replay;
use crate::disk::{CreateOptions, DiskKind};
use crate::error::{Error, Result};
use crate::format::bat::{self, BatEntry, Geometry, PayloadState, SB_PRESENT};
use crate::format::fileid::{self, FileIdentifier};
use crate::format::header::{self, Header, Slot};
use crate::format::log as vlog;
use crate::format::metadata::{self, FileParameterFlags, Metadata, MetadataEntry};
use crate::format::region::{self, RegionEntry, RegionTable};
use crate::format::{
    align_up, BAT_REGION, HEADER1_OFFSET, HEADER2_OFFSET, HEADER_SECTION_SIZE, MAX_BLOCK_SIZE,
    MAX_VIRTUAL_SIZE, METADATA_REGION, MIB, MIN_BLOCK_SIZE, REGION1_OFFSET, REGION2_OFFSET,
};
use crate::io::Storage;

/// Bytes of metadata read at open are bounded by this.
const MAX_METADATA_BYTES: u64 = 64 * MIB;
/// Highest current-header SequenceNumber a read-write open accepts: every
/// session increments it a few times, and it must never wrap.
const MAX_WRITABLE_SEQUENCE: u64 = u64::MAX - (1 << 32);
/// BAT sector (log granularity).
const SECTOR: u64 = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rlock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// A metadata sector waiting for the next flush.
#[derive(Debug, Clone)]
enum Dirty {
    /// A 4 KiB sector of the BAT (its index).
    Bat(u64),
    /// A 4 KiB sector of the sector bitmap of a chunk.
    Bitmap(u64, u64),
    /// A sector of the metadata region with its new content.
    Bytes(Vec<u8>),
}

/// Where a run of a layer's sectors is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    /// In this file, at a file offset.
    Data(u64),
    /// Reads as zeros.
    Zero,
    /// In the parent.
    Parent,
}

/// What [`Vhdx::prepare_write`] found for a block.
enum Prep {
    /// Write at `base` (the block's file offset); `bits`: bitmap sectors
    /// reserved, to set once the data is written; `undo`: the entry to
    /// restore (index, old entry, new space) if the data cannot be written.
    Ready {
        base: u64,
        bits: Option<usize>,
        undo: Option<(usize, BatEntry, u64)>,
    },
    /// The dirty set is full: flush, then try again.
    NeedFlush,
}

/// Cached sector-bitmap sectors, by (chunk, sector of the bitmap block).
type BitmapCache = HashMap<(u64, u64), Box<[u8]>>;

/// A log entry that was built (and perhaps partly written) by a flush that
/// failed before the entry was known to be applied. The next flush writes
/// the same bytes at the same place and applies them before anything else,
/// so that whatever part of it reached the disk is completed, never mixed.
#[derive(Debug)]
struct PendingEntry {
    /// Position inside the log.
    pos: u64,
    /// The whole entry.
    bytes: Vec<u8>,
    /// The sectors it carries, by file offset.
    images: Vec<(u64, Vec<u8>)>,
    /// Payload space of trimmed blocks that becomes free once it is applied.
    frees: Vec<u64>,
}

/// Mutable state of a writable file, behind one mutex.
///
/// Invariants: `dirty.len() + reserved` never exceeds `entry_cap`, so that
/// every flush is exactly one log entry (and so atomic); a change reaches
/// `dirty` only while the state is consistent (each block entirely old or
/// entirely new).
#[derive(Debug)]
struct WriteState {
    header: Header,
    slot: Slot,
    session: bool,
    data_changed: bool,
    log_pos: u64,
    log_seq: u64,
    /// LogGuid of the session being started (kept across a failed start,
    /// so that a retry never strands a header naming a vanished entry).
    session_log_guid: Option<Uuid>,
    /// Metadata sectors changed since the last flush, by file offset.
    dirty: BTreeMap<u64, Dirty>,
    /// Dirty sectors promised to writes in flight (their bitmap bits are
    /// set once their data is written).
    reserved: usize,
    /// An entry of a failed flush, to finish first.
    pending: Option<PendingEntry>,
    /// Set when a sync failed: what reached the disk is unknown, so no later
    /// write or flush may report success (until the file is reopened).
    poisoned: Option<String>,
    /// A close failed while writing the headers: the next close writes them again.
    close_failed: bool,
    /// DataWriteGuid to use when the next session starts (merges choose it in advance).
    next_data_write_guid: Option<Uuid>,
    pending_free: Vec<u64>,
    free_blocks: Vec<u64>,
    file_end: u64,
}

/// One open VHDX file.
#[derive(Debug)]
pub(crate) struct Vhdx {
    storage: Arc<dyn Storage>,
    read_only: bool,
    pub(crate) geo: Geometry,
    meta: RwLock<Metadata>,
    /// Whether this is a differencing disk (fixed for the life of the file).
    parent: bool,
    pub(crate) creator: String,
    bat_offset: u64,
    meta_offset: u64,
    meta_len: u64,
    /// Sector-bitmap sectors read so far, by (chunk, sector).
    bitmaps: RwLock<BitmapCache>,
    log_offset: u64,
    log_length: u64,
    bat: RwLock<Vec<u64>>,
    state: Mutex<WriteState>,
    /// Held shared by every read or write that looks a block's file offset
    /// up and then uses it, exclusively by a flush while it takes its
    /// snapshot: no space freed by a trim is reused while an I/O that found
    /// it is still running, and no BAT entry is committed before the data
    /// of the write that made it.
    gate: RwLock<()>,
    /// Most data sectors one log entry can carry (the bound of a flush).
    entry_cap: usize,
    /// Mirrors `WriteState::poisoned` for the lock-free data path.
    poisoned_flag: AtomicBool,
    session_started: AtomicBool,
    data_changed: AtomicBool,
    pub(crate) log_dirty: bool,
}

/// Reads of the structures at open: only inside the bytes that really
/// exist (`len`), so that no allocation is sized past them.
struct Reader<'a> {
    storage: &'a dyn Storage,
    len: u64,
}

impl Reader<'_> {
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.storage.read_at(buf, offset)?;
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

    pub(crate) fn open_with_layout(
        storage: Arc<dyn Storage>,
        read_only: bool,
    ) -> Result<(Vhdx, Layout)> {
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
        if log_length > 0
            && log_offset
                .checked_add(log_length)
                .is_none_or(|e| e > file_len)
        {
            return Err(Error::Corrupt(format!(
                "the log at {log_offset:#x}+{log_length:#x} lies past the end of the file ({file_len:#x})"
            )));
        }

        if !read_only && hdr.sequence_number > MAX_WRITABLE_SEQUENCE {
            return Err(Error::Corrupt(format!(
                "the current header's SequenceNumber {:#x} is too close to 2^64 to be \
                 incremented: the file can only be opened read-only",
                hdr.sequence_number
            )));
        }

        // Log replay: everything below reads the file as replayed, through
        // the read-only view; a read-write open applies the log to the file
        // once the replayed file has been judged sound.
        let log_dirty = !hdr.log_guid.is_nil();
        let mut plan = None;
        let mut backed_len = file_len;
        let mut view: Arc<dyn Storage> = storage.clone();
        let mut applied = false;
        if log_dirty {
            let p = replay::plan(storage.as_ref(), log_offset, log_length, &hdr.log_guid)?;
            backed_len = p.backed_len;
            file_len = p.replayed_len;
            match replay::Replayed::new(storage.clone(), &p) {
                Ok(v) => view = Arc::new(v),
                Err(e) if read_only => return Err(e),
                Err(_) => {
                    // Too large to hold in memory: replay into the file first.
                    replay::apply(storage.as_ref(), &p)?;
                    applied = true;
                }
            }
            plan = Some(p);
        }
        let reader = Reader {
            storage: view.as_ref(),
            len: backed_len,
        };

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
                            Error::Corrupt(format!(
                                "no valid region table: table 1: {e1}; table 2: {e2}"
                            ))
                        })?;
                    (t, Some(format!("region table 1: {e1}")))
                }
            }
        };
        for e in &regions.entries {
            if e.guid != BAT_REGION && e.guid != METADATA_REGION && e.required {
                return Err(Error::Unsupported(format!("required region {}", e.guid)));
            }
            if e.end() > backed_len {
                return Err(Error::Corrupt(format!(
                    "region {} at {:#x}+{:#x} lies past the end of the file ({backed_len:#x} bytes{})",
                    e.guid,
                    e.file_offset,
                    e.length,
                    if log_dirty { " with the log's writes" } else { "" }
                )));
            }
            if log_length > 0 && e.file_offset < log_offset + log_length && log_offset < e.end() {
                return Err(Error::Corrupt(format!(
                    "region {} overlaps the log",
                    e.guid
                )));
            }
        }
        let bat_region = *regions
            .find(&BAT_REGION)
            .ok_or_else(|| Error::Corrupt("the region table has no BAT region".into()))?;
        let meta_region = *regions
            .find(&METADATA_REGION)
            .ok_or_else(|| Error::Corrupt("the region table has no metadata region".into()))?;

        // Metadata.
        let table = reader.read_vec(
            meta_region.file_offset,
            metadata::TABLE_SIZE as u64,
            "metadata table",
        )?;
        let entries =
            metadata::parse_table(&table, meta_region.length as u64).map_err(|e| match e {
                Error::BadSignature {
                    structure, found, ..
                } => Error::BadSignature {
                    structure,
                    offset: meta_region.file_offset,
                    found,
                },
                e => e,
            })?;
        let total: u64 = entries.iter().map(|e| e.length as u64).sum();
        if total > MAX_METADATA_BYTES {
            return Err(Error::Corrupt(format!(
                "metadata items total {total} bytes"
            )));
        }
        let mut items: Vec<(MetadataEntry, Vec<u8>)> = Vec::with_capacity(entries.len());
        for e in entries {
            let data = reader.read_vec(
                meta_region.file_offset + e.offset as u64,
                e.length as u64,
                "metadata item",
            )?;
            items.push((e, data));
        }
        let meta = Metadata::from_items(items)?;
        if let Some(raw) = meta.parent_locator.as_deref().filter(|_| meta.has_parent()) {
            // Refuse a locator this engine does not understand (its type
            // first, [MS-VHDX] 2.6.2.6.1) before anything uses the file.
            crate::format::locator::ParentLocator::parse(raw)?;
        }
        let geo = Geometry::new(
            meta.virtual_size,
            meta.block_size,
            meta.logical_sector_size,
            meta.has_parent(),
        )?;
        if geo.total_entries * 8 > bat_region.length as u64 {
            return Err(Error::Corrupt(format!(
                "the BAT region ({} bytes) is too small for {} entries",
                bat_region.length, geo.total_entries
            )));
        }
        let raw = reader.read_vec(bat_region.file_offset, geo.total_entries * 8, "BAT")?;
        let entries = bat::parse(&raw, &geo)?;
        drop(raw);
        validate_bat(
            &entries,
            &geo,
            &meta,
            &regions.entries,
            log_offset,
            log_length,
            file_len,
        )?;

        let mut file_end = align_up(file_len, MIB).unwrap_or(file_len);
        for e in &regions.entries {
            file_end = file_end.max(e.end());
        }
        for (i, &e) in entries.iter().enumerate() {
            let e = BatEntry(e);
            let len = if geo.is_bitmap_index(i) {
                if meta.has_parent() && e.state_bits() == SB_PRESENT {
                    MIB
                } else {
                    continue;
                }
            } else if matches!(
                e.payload_state(),
                Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent)
            ) {
                geo.block_size as u64
            } else {
                continue;
            };
            let end = e.offset().checked_add(len).ok_or_else(|| {
                Error::Corrupt(format!("BAT entry {i} points past 2^64 ({:#x})", e.0))
            })?;
            file_end = file_end.max(end);
        }

        // The replayed file is sound: a read-write open applies the log
        // and marks it empty; a read-only one keeps reading through the view.
        let storage = match plan {
            Some(p) if !read_only => {
                if !applied {
                    replay::apply(storage.as_ref(), &p)?;
                }
                let mut h = hdr.clone();
                h.log_guid = Uuid::nil();
                h.file_write_guid = Uuid::new_v4();
                slot = write_headers(storage.as_ref(), &mut h, slot)?;
                hdr = h;
                file_len = storage.len()?;
                storage
            }
            _ => view,
        };
        let vhdx = Vhdx {
            storage: storage.clone(),
            read_only,
            geo,
            parent: meta.has_parent(),
            meta: RwLock::new(meta),
            creator: fid.creator,
            bat_offset: bat_region.file_offset,
            meta_offset: meta_region.file_offset,
            meta_len: meta_region.length as u64,
            bitmaps: RwLock::new(HashMap::new()),
            log_offset,
            log_length,
            bat: RwLock::new(entries),
            state: Mutex::new(WriteState {
                header: hdr,
                slot,
                session: false,
                data_changed: false,
                log_pos: 0,
                log_seq: 0,
                session_log_guid: None,
                dirty: BTreeMap::new(),
                reserved: 0,
                pending: None,
                poisoned: None,
                close_failed: false,
                next_data_write_guid: None,
                pending_free: Vec::new(),
                free_blocks: Vec::new(),
                file_end,
            }),
            gate: RwLock::new(()),
            entry_cap: vlog::max_data_sectors(log_length),
            poisoned_flag: AtomicBool::new(false),
            session_started: AtomicBool::new(false),
            data_changed: AtomicBool::new(false),
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

    /// Create a VHDX on empty storage; `parent` makes it a differencing disk.
    pub(crate) fn create(
        storage: &dyn Storage,
        opts: &CreateOptions,
        creator: &str,
        parent: Option<&ParentSpec>,
    ) -> Result<()> {
        validate_create(opts)?;
        let has_parent = parent.is_some();
        let geo = Geometry::new(
            opts.virtual_size,
            opts.block_size,
            opts.logical_sector_size,
            has_parent,
        )?;
        let fixed = opts.fixed && !has_parent;
        let log_offset = MIB;
        let meta_offset = log_offset + opts.log_size as u64;
        let meta_len = MIB;
        let bat_offset = meta_offset + meta_len;
        let bat_len = geo.bat_region_len();
        if bat_len > u32::MAX as u64 {
            return Err(Error::InvalidArgument("the BAT would exceed 4 GiB".into()));
        }
        let data_start = bat_offset + bat_len;
        let mut flags = FileParameterFlags::empty();
        if fixed {
            flags |= FileParameterFlags::LEAVE_BLOCK_ALLOCATED;
        }
        if has_parent {
            flags |= FileParameterFlags::HAS_PARENT;
        }
        let meta = Metadata {
            block_size: opts.block_size,
            file_flags: flags,
            virtual_size: opts.virtual_size,
            disk_id: parent.map(|p| p.disk_id).unwrap_or_else(Uuid::new_v4),
            logical_sector_size: opts.logical_sector_size,
            physical_sector_size: opts.physical_sector_size,
            parent_locator: parent.map(|p| p.locator.to_bytes()),
            other_items: Vec::new(),
        };
        let regions = RegionTable {
            entries: vec![
                RegionEntry {
                    guid: BAT_REGION,
                    file_offset: bat_offset,
                    length: bat_len as u32,
                    required: true,
                },
                RegionEntry {
                    guid: METADATA_REGION,
                    file_offset: meta_offset,
                    length: meta_len as u32,
                    required: true,
                },
            ],
        };
        let mut h = Header {
            sequence_number: 0,
            file_write_guid: Uuid::new_v4(),
            data_write_guid: Uuid::new_v4(),
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: opts.log_size,
            log_offset,
        };
        // Everything but the file identifier first; the identifier last, so
        // that an interrupted create is never taken for a valid disk.
        let end = if fixed {
            data_start + geo.data_blocks * opts.block_size as u64
        } else {
            data_start
        };
        storage.set_len(end)?;
        if fixed {
            storage.allocate(data_start, end - data_start)?;
            let mut raw = vec![0u8; (geo.total_entries * 8) as usize];
            for b in 0..geo.data_blocks {
                let i = geo.payload_index(b);
                let e = BatEntry::new(
                    PayloadState::FullyPresent.bits(),
                    data_start + b * opts.block_size as u64,
                );
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
        let fid = FileIdentifier {
            creator: creator.to_string(),
        };
        storage.write_at(&fid.to_bytes(), 0)?;
        storage.sync()?;
        Ok(())
    }

    pub(crate) fn has_parent(&self) -> bool {
        self.parent
    }

    pub(crate) fn metadata(&self) -> Metadata {
        rlock(&self.meta).clone()
    }

    pub(crate) fn kind(&self) -> DiskKind {
        let m = rlock(&self.meta);
        if m.has_parent() {
            DiskKind::Differencing
        } else if m
            .file_flags
            .contains(FileParameterFlags::LEAVE_BLOCK_ALLOCATED)
        {
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

    /// The state of payload block `block`.
    pub(crate) fn block_entry(&self, block: u64) -> BatEntry {
        BatEntry(rlock(&self.bat)[self.geo.payload_index(block)])
    }

    pub(crate) fn allocated_bytes(&self) -> u64 {
        let bat = rlock(&self.bat);
        let n = (0..self.geo.data_blocks)
            .filter(|&b| {
                matches!(
                    BatEntry(bat[self.geo.payload_index(b)]).payload_state(),
                    Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent)
                )
            })
            .count() as u64;
        n * self.geo.block_size as u64
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.virtual_size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.geo.virtual_size,
            }),
        }
    }

    fn sectors_per_block(&self) -> u64 {
        self.geo.block_size as u64 / self.geo.logical_sector_size as u64
    }

    /// Load (and cache) sector `k` of the bitmap of `chunk`.
    fn bitmap_sector(&self, chunk: u64, k: u64) -> Result<()> {
        if rlock(&self.bitmaps).contains_key(&(chunk, k)) {
            return Ok(());
        }
        let e = BatEntry(rlock(&self.bat)[self.geo.bitmap_index(chunk)]);
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
    fn bit_run(&self, block: u64, sector: u64, max: u64) -> Result<(bool, u64)> {
        let chunk = block / self.geo.chunk_ratio;
        let first = (block % self.geo.chunk_ratio) * self.sectors_per_block() + sector;
        let bits_per_sector = SECTOR * 8;
        let mut bit = first;
        let mut value = None;
        while bit < first + max {
            let k = bit / bits_per_sector;
            self.bitmap_sector(chunk, k)?;
            let maps = rlock(&self.bitmaps);
            let sec = &maps[&(chunk, k)];
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
    fn set_bits(&self, st: &mut WriteState, block: u64, sector: u64, count: u64) -> Result<()> {
        self.write_bits(st, block, sector, count, true)
    }

    /// Set or clear the bitmap bits of `count` sectors from `sector` in `block`.
    fn write_bits(
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
            let sec = maps
                .get_mut(&(chunk, k))
                .ok_or_else(|| Error::Corrupt("sector bitmap vanished from the cache".into()))?;
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
            let sb = BatEntry(rlock(&self.bat)[self.geo.bitmap_index(chunk)]).offset();
            st.dirty.insert(sb + k * SECTOR, Dirty::Bitmap(chunk, k));
        }
        Ok(())
    }

    /// Where the bytes `[offset, offset+len)` of this layer are: runs in order.
    pub(crate) fn map(&self, offset: u64, len: u64, out: &mut Vec<(u64, Src)>) -> Result<()> {
        let bs = self.geo.block_size as u64;
        let lss = self.geo.logical_sector_size as u64;
        let parent = self.has_parent();
        let push = |out: &mut Vec<(u64, Src)>, n: u64, src: Src| match (out.last_mut(), src) {
            (Some((l, Src::Data(f))), Src::Data(g)) if *f + *l == g => *l += n,
            (Some((l, Src::Zero)), Src::Zero) => *l += n,
            (Some((l, Src::Parent)), Src::Parent) => *l += n,
            _ => out.push((n, src)),
        };
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / bs;
            let within = pos % bs;
            let n = (bs - within).min(end - pos);
            let e = BatEntry(rlock(&self.bat)[self.geo.payload_index(block)]);
            match e.payload_state() {
                Some(PayloadState::FullyPresent) => push(out, n, Src::Data(e.offset() + within)),
                Some(PayloadState::NotPresent) if parent => push(out, n, Src::Parent),
                Some(PayloadState::PartiallyPresent) if parent => {
                    // Per sector, through the bitmap.
                    let mut p = pos;
                    while p < pos + n {
                        let w = p % bs;
                        let sector = w / lss;
                        let max_sectors = (w + (pos + n - p)).div_ceil(lss) - sector;
                        let (present, run) = self.bit_run(block, sector, max_sectors)?;
                        let run_end = ((sector + run) * lss).min(w + (pos + n - p));
                        let m = run_end - w;
                        push(
                            out,
                            m,
                            if present {
                                Src::Data(e.offset() + w)
                            } else {
                                Src::Parent
                            },
                        );
                        p += m;
                    }
                }
                _ => push(out, n, Src::Zero),
            }
            pos += n;
        }
        Ok(())
    }

    /// The first run of `[offset, offset+len)` (never past the end of its
    /// block): its length and where it is. No allocation.
    pub(crate) fn map_first(&self, offset: u64, len: u64) -> Result<(u64, Src)> {
        let bs = self.geo.block_size as u64;
        let block = offset / bs;
        let within = offset % bs;
        let n = (bs - within).min(len);
        let e = BatEntry(rlock(&self.bat)[self.geo.payload_index(block)]);
        Ok(match e.payload_state() {
            Some(PayloadState::FullyPresent) => (n, Src::Data(e.offset() + within)),
            Some(PayloadState::NotPresent) if self.parent => (n, Src::Parent),
            Some(PayloadState::PartiallyPresent) if self.parent => {
                let lss = self.geo.logical_sector_size as u64;
                let sector = within / lss;
                let max_sectors = (within + n).div_ceil(lss) - sector;
                let (present, run) = self.bit_run(block, sector, max_sectors)?;
                let m = ((sector + run) * lss).min(within + n) - within;
                (
                    m,
                    if present {
                        Src::Data(e.offset() + within)
                    } else {
                        Src::Parent
                    },
                )
            }
            _ => (n, Src::Zero),
        })
    }

    /// Read from this layer alone (parent runs read as zeros).
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let _io = self.io_guard();
        let mut runs = Vec::new();
        self.map(offset, buf.len() as u64, &mut runs)?;
        let mut at = 0usize;
        for (l, src) in runs {
            let l = l as usize;
            match src {
                Src::Data(f) => self.storage.read_at(&mut buf[at..at + l], f)?,
                Src::Zero | Src::Parent => buf[at..at + l].fill(0),
            }
            at += l;
        }
        Ok(())
    }

    /// Hold while using file offsets looked up with [`Vhdx::map`] or
    /// [`Vhdx::map_first`] on a file that may be written meanwhile: the
    /// space they name is not given to another block until it is dropped.
    /// Never take it twice on one thread (a flush waiting in between would
    /// deadlock).
    pub(crate) fn io_guard(&self) -> RwLockReadGuard<'_, ()> {
        rlock(&self.gate)
    }

    /// Read file bytes of this layer (for runs returned by [`Vhdx::map`]).
    pub(crate) fn read_raw(&self, buf: &mut [u8], file_offset: u64) -> Result<()> {
        Ok(self.storage.read_at(buf, file_offset)?)
    }

    /// Choose the DataWriteGuid the next write session will use.
    pub(crate) fn set_next_data_write_guid(&self, g: Uuid) {
        lock(&self.state).next_data_write_guid = Some(g);
    }

    /// The error every write and flush gets once a sync failed.
    fn poisoned_error(why: &str) -> Error {
        Error::Io(std::io::Error::other(format!(
            "an earlier sync of this file failed ({why}), so what reached the disk since the \
             last successful flush is unknown; nothing more is written through this handle: \
             reopen the disk (the log is replayed) and write again what was not flushed"
        )))
    }

    /// Refuse writes and flushes on a read-only or poisoned handle.
    fn check_writable(&self, st: &WriteState) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        match &st.poisoned {
            Some(why) => Err(Self::poisoned_error(why)),
            None => Ok(()),
        }
    }

    /// The lock-free form of [`Vhdx::check_writable`] for the data path.
    fn check_not_poisoned(&self) -> Result<()> {
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
    fn sync(&self, st: &mut WriteState) -> Result<()> {
        if let Err(e) = self.storage.sync() {
            if !self.storage.sync_retry_is_safe() {
                st.poisoned.get_or_insert_with(|| e.to_string());
                self.poisoned_flag.store(true, Ordering::Release);
            }
            return Err(Error::Io(e));
        }
        Ok(())
    }

    /// Start a write session if none is running; `visible` says the change
    /// alters what the disk reads (then the DataWriteGuid changes first).
    fn begin_session(&self, visible: bool) -> Result<()> {
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
    fn begin_session_locked(&self, st: &mut WriteState, visible: bool) -> Result<()> {
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
    fn write_headers(&self, st: &mut WriteState, h: &mut Header) -> Result<Slot> {
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

    /// A zeroed payload-sized (or 1 MiB) area of the file.
    fn take_space(&self, st: &mut WriteState, len: u64, reuse: bool) -> Result<u64> {
        if reuse {
            if let Some(off) = st.free_blocks.pop() {
                return Ok(off);
            }
        }
        let off = st.file_end;
        let end = off
            .checked_add(len)
            .ok_or_else(|| Error::Corrupt(format!("no room in the file after {off:#x}")))?;
        self.storage.allocate(off, len)?;
        st.file_end = end;
        Ok(off)
    }

    fn set_entry(&self, st: &mut WriteState, idx: usize, e: BatEntry) {
        self.bat.write().unwrap_or_else(|e| e.into_inner())[idx] = e.0;
        let sector = idx as u64 * 8 / SECTOR;
        st.dirty
            .insert(self.bat_offset + sector * SECTOR, Dirty::Bat(sector));
    }

    /// Most bitmap sectors the bits of one block span.
    fn bitmap_sectors_per_block(&self) -> usize {
        (self.sectors_per_block().div_ceil(SECTOR * 8) + 1) as usize
    }

    /// Whether `need` more dirty sectors still fit in one log entry.
    fn room(&self, st: &WriteState, need: usize) -> bool {
        st.dirty.len() + st.reserved + need <= self.entry_cap
    }

    /// Flush because the dirty set is full (or wait for writes in flight
    /// that hold reservations).
    fn flush_for_room(&self) -> Result<()> {
        let mut st = self.lock_for_flush();
        if st.dirty.is_empty() && st.pending.is_none() {
            drop(st);
            std::thread::yield_now();
            return Ok(());
        }
        self.flush_locked(&mut st)
    }

    /// Prepare `block` for a write of `[within, within+n)`.
    fn prepare_write(&self, block: u64, within: u64, n: u64) -> Result<Prep> {
        let idx = self.geo.payload_index(block);
        let bs = self.geo.block_size as u64;
        let e = BatEntry(rlock(&self.bat)[idx]);
        if e.payload_state() == Some(PayloadState::FullyPresent) {
            return Ok(Prep::Ready {
                base: e.offset(),
                bits: None,
                undo: None,
            });
        }
        let mut st = lock(&self.state);
        self.check_writable(&st)?;
        let e = BatEntry(rlock(&self.bat)[idx]);
        let bits = self.bitmap_sectors_per_block();
        match e.payload_state() {
            Some(PayloadState::FullyPresent) => Ok(Prep::Ready {
                base: e.offset(),
                bits: None,
                undo: None,
            }),
            Some(PayloadState::PartiallyPresent) => {
                if !self.room(&st, bits) {
                    return Ok(Prep::NeedFlush);
                }
                st.reserved += bits;
                Ok(Prep::Ready {
                    base: e.offset(),
                    bits: Some(bits),
                    undo: None,
                })
            }
            Some(PayloadState::NotPresent) if self.has_parent() && !(within == 0 && n == bs) => {
                // A partial write into a block of the parent: this layer holds
                // only the written sectors, marked in the sector bitmap.
                if !self.room(&st, 2 + bits) {
                    return Ok(Prep::NeedFlush);
                }
                let chunk = block / self.geo.chunk_ratio;
                let sbi = self.geo.bitmap_index(chunk);
                if BatEntry(rlock(&self.bat)[sbi]).state_bits() != SB_PRESENT {
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
                })
            }
            _ => {
                // Unallocated, zero, unmapped or undefined: a whole new block
                // that reads as zeros where it is not written.
                if !self.room(&st, 1) {
                    return Ok(Prep::NeedFlush);
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
    /// space, store the data, then set the bitmap bits. A block that got
    /// its space for this write goes back to its old state when the data
    /// cannot be stored, so a failed write never leaves a block pointing
    /// at space that was never written.
    fn write_with(
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
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let block = pos / bs;
            let within = pos % bs;
            let n = (bs - within).min(len - done);
            let io = self.io_guard();
            let (base, bits, undo) = match self.prepare_write(block, within, n)? {
                Prep::NeedFlush => {
                    drop(io);
                    self.flush_for_room()?;
                    continue;
                }
                Prep::Ready { base, bits, undo } => (base, bits, undo),
            };
            if let Err(e) = put(self.storage.as_ref(), done, base + within, n) {
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
            done += n;
        }
        Ok(())
    }

    /// The storage under this file.
    pub(crate) fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
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
            if !self.room(&st, 1 + self.bitmap_sectors_per_block()) {
                drop(st);
                self.flush_for_room()?;
                continue;
            }
            let cur = BatEntry(rlock(&self.bat)[idx]);
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
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let bstart = block * bs;
            let bend = (bstart + bs).min(self.geo.virtual_size);
            let n = (bend - pos).min(end - pos);
            let whole = pos == bstart && pos + n == bend;
            if !(whole && self.trim_block(block)?) {
                // The offset is used under the gate, so that the space is
                // not given away meanwhile by a trim of the whole block.
                let _io = self.io_guard();
                let e = self.block_entry(block);
                if e.payload_state() == Some(PayloadState::FullyPresent) {
                    crate::io::write_zeros(self.storage.as_ref(), e.offset() + (pos - bstart), n)?;
                }
            }
            pos += n;
        }
        Ok(())
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
        let mut st = self.lock_for_flush();
        // Whatever else is dirty goes first, in its own entry.
        self.flush_locked(&mut st)?;
        let old = {
            let mut v = vec![0u8; self.meta_len as usize];
            self.storage.read_at(&mut v, self.meta_offset)?;
            v
        };
        let changed: Vec<(u64, Vec<u8>)> = old
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
        for (off, b) in changed {
            st.dirty.insert(off, Dirty::Bytes(b));
        }
        *self.meta.write().unwrap_or_else(|e| e.into_inner()) = m;
        self.flush_locked(&mut st)
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
        let mut st = self.lock_for_flush();
        self.flush_locked(&mut st)
    }

    /// The state lock, taken once no read or write is between looking a
    /// block up and using it (the gate is held exclusively for a moment):
    /// every change in `dirty` then has its data written.
    fn lock_for_flush(&self) -> MutexGuard<'_, WriteState> {
        let gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let st = lock(&self.state);
        drop(gate);
        st
    }

    /// The flush protocol. Every flush is one log entry (the dirty set is
    /// bounded by what one entry holds), so a crash leaves the whole flush
    /// or none of it. What is dirty stays dirty until its entry is applied:
    /// a flush that fails leaves its entry pending, and the next flush
    /// writes it again, at the same place with the same sequence number,
    /// before anything else.
    fn flush_locked(&self, st: &mut WriteState) -> Result<()> {
        self.check_writable(st)?;
        if !st.session {
            return Ok(());
        }
        if let Some(p) = st.pending.take() {
            if let Err(e) = self.commit_entry(st, &p) {
                st.pending = Some(p);
                return Err(e);
            }
            self.release_space(st, p.frees);
        }
        // Data first, so that no BAT entry can point at unwritten data.
        self.sync(st)?;
        if st.dirty.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(st.reserved, 0);
        let images = self.dirty_images(st);
        if images.len() > self.entry_cap {
            return Err(Error::Corrupt(format!(
                "{} metadata sectors to flush exceed one log entry ({})",
                images.len(),
                self.entry_cap
            )));
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
        let p = PendingEntry {
            pos,
            bytes,
            images,
            frees: std::mem::take(&mut st.pending_free),
        };
        if let Err(e) = self.commit_entry(st, &p) {
            st.pending = Some(p);
            return Err(e);
        }
        self.release_space(st, p.frees);
        Ok(())
    }

    /// The images of every dirty sector, by file offset.
    fn dirty_images(&self, st: &WriteState) -> Vec<(u64, Vec<u8>)> {
        let bat = rlock(&self.bat);
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
    fn commit_entry(&self, st: &mut WriteState, p: &PendingEntry) -> Result<()> {
        let first = ((self.log_length - p.pos) as usize).min(p.bytes.len());
        self.storage
            .write_at(&p.bytes[..first], self.log_offset + p.pos)?;
        if first < p.bytes.len() {
            self.storage.write_at(&p.bytes[first..], self.log_offset)?;
        }
        self.sync(st)?;
        for (off, data) in &p.images {
            self.storage.write_at(data, *off)?;
        }
        self.sync(st)?;
        st.log_pos = (p.pos + p.bytes.len() as u64) % self.log_length;
        Ok(())
    }

    /// Space of trimmed blocks can be reused once no durable entry points at
    /// it (and no I/O can still use it: the flush took the gate).
    fn release_space(&self, st: &mut WriteState, frees: Vec<u64>) {
        for off in frees {
            // Reused space must read as zeros; space that cannot be zeroed
            // is left unused.
            if self
                .storage
                .discard(off, self.geo.block_size as u64)
                .is_ok()
            {
                st.free_blocks.push(off);
            }
        }
    }

    /// Flush and leave an empty log behind.
    pub(crate) fn close(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let mut st = self.lock_for_flush();
        self.check_writable(&st)?;
        if !st.session && !st.close_failed {
            return Ok(());
        }
        self.flush_locked(&mut st)?;
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

impl Drop for Vhdx {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// What a child copies from its parent at creation.
#[derive(Debug, Clone)]
pub(crate) struct ParentSpec {
    pub(crate) disk_id: Uuid,
    pub(crate) locator: crate::format::locator::ParentLocator,
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
        return bad(format!(
            "logical sector size {} (must be 512 or 4096)",
            o.logical_sector_size
        ));
    }
    if o.physical_sector_size != 512 && o.physical_sector_size != 4096 {
        return bad(format!(
            "physical sector size {} (must be 512 or 4096)",
            o.physical_sector_size
        ));
    }
    if !o.block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&o.block_size)
    {
        return bad(format!(
            "block size {} (must be a power of two from 1 MiB to 256 MiB)",
            o.block_size
        ));
    }
    if o.virtual_size == 0 || o.virtual_size > MAX_VIRTUAL_SIZE {
        return bad(format!(
            "virtual size {} (must be from one sector to 64 TiB)",
            o.virtual_size
        ));
    }
    if o.virtual_size % o.logical_sector_size as u64 != 0 {
        return bad(format!(
            "virtual size {} is not a multiple of the logical sector size {}",
            o.virtual_size, o.logical_sector_size
        ));
    }
    if o.log_size == 0 || o.log_size as u64 % MIB != 0 {
        return bad(format!(
            "log size {} (must be a non-zero multiple of 1 MiB)",
            o.log_size
        ));
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
    let check_offset = |what: String, off: u64, len: u64| -> Result<()> {
        if off < HEADER_SECTION_SIZE {
            return Err(Error::Corrupt(format!(
                "{what} points into the header section ({off:#x})"
            )));
        }
        if off >= file_len {
            return Err(Error::Corrupt(format!(
                "{what} points past the end of the file ({off:#x} >= {file_len:#x})"
            )));
        }
        let end = off + len;
        if log_length > 0 && off < log_offset + log_length && log_offset < end {
            return Err(Error::Corrupt(format!("{what} overlaps the log")));
        }
        for r in regions {
            if off < r.end() && r.file_offset < end {
                return Err(Error::Corrupt(format!("{what} overlaps region {}", r.guid)));
            }
        }
        Ok(())
    };
    // Every entry, the padding beyond the last data block included: block
    // entries decode to a known state, sector-bitmap entries are
    // NOT_PRESENT or (in a differencing disk) PRESENT, reserved bits are
    // clear, and every offset in use lies inside the file. Each block's
    // file range is kept to find two entries sharing space.
    let mut used: Vec<(u64, u64, usize)> = Vec::new();
    for (i, &raw) in entries.iter().enumerate() {
        let e = BatEntry(raw);
        if geo.is_bitmap_index(i) {
            let c = i as u64 / (geo.chunk_ratio + 1);
            if e.0 & bat::RESERVED_MASK != 0 {
                return Err(Error::Corrupt(format!(
                    "BAT entry {i} (sector bitmap {c}) has reserved bits set: {:#x}",
                    e.0
                )));
            }
            match e.state_bits() {
                bat::SB_NOT_PRESENT => {}
                SB_PRESENT if meta.has_parent() => {
                    check_offset(
                        format!("BAT entry {i} (sector bitmap {c})"),
                        e.offset(),
                        MIB,
                    )?;
                    used.push((e.offset(), MIB, i));
                }
                SB_PRESENT => {
                    return Err(Error::Corrupt(format!(
                        "BAT entry {i} (sector bitmap {c}) is SB_BLOCK_PRESENT in a disk without a parent"
                    )));
                }
                st => {
                    return Err(Error::Corrupt(format!(
                        "BAT entry {i} (sector bitmap {c}) has the reserved state {st}"
                    )));
                }
            }
            continue;
        }
        let b = i as u64 - i as u64 / (geo.chunk_ratio + 1);
        let what = if b < geo.data_blocks {
            format!("BAT entry {i} (block {b})")
        } else {
            format!("BAT entry {i} (padding after the last block)")
        };
        let Some(state) = e.payload_state() else {
            return Err(Error::Corrupt(format!(
                "{what} has the reserved state {}",
                e.state_bits()
            )));
        };
        if e.0 & bat::RESERVED_MASK != 0 {
            return Err(Error::Corrupt(format!(
                "{what} has reserved bits set: {:#x}",
                e.0
            )));
        }
        match state {
            PayloadState::PartiallyPresent if !meta.has_parent() => {
                return Err(Error::Corrupt(format!(
                    "{what} is PARTIALLY_PRESENT in a disk without a parent"
                )));
            }
            PayloadState::FullyPresent | PayloadState::PartiallyPresent => {
                check_offset(what, e.offset(), bs)?;
                used.push((e.offset(), bs, i));
                if state == PayloadState::PartiallyPresent
                    && BatEntry(entries[geo.bitmap_index(b / geo.chunk_ratio)]).state_bits()
                        != SB_PRESENT
                {
                    return Err(Error::Corrupt(format!(
                        "block {b} is PARTIALLY_PRESENT but its sector bitmap block is not present"
                    )));
                }
            }
            _ => {}
        }
    }
    used.sort_unstable();
    for w in used.windows(2) {
        let ((a, alen, ai), (b, _, bi)) = (w[0], w[1]);
        if a + alen > b {
            return Err(Error::Corrupt(format!(
                "BAT entries {ai} and {bi} use the same file space (at {a:#x} and {b:#x})"
            )));
        }
    }
    Ok(())
}
