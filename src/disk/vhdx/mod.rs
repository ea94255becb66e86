//! One VHDX file: open (with log replay), create, read, write, trim, flush, close.
//!
//! The state of an open file and its accessors live here; each operation
//! has its own file: [`open`], [`create`], [`read`], [`write`] (allocation,
//! trim), [`bitmap`] (sector bitmaps) [`journal`] (session, metadata
//! changes, flush, headers, close), [`replay`] (log replay at open),
//! [`compact`], [`resize`] and [`kind`] (fixed ↔ dynamic in place).
//!
//! Knows one file, not chains (the parent is only "read elsewhere": see
//! [`Src::Parent`]). Depends on `crate::io`, `crate::format`,
//! `crate::error` and the option types of `crate::disk`; never on the chain
//! code, `checkpoint`, `ffi` or the CLI.

mod bitmap;
mod compact;
mod create;
mod journal;
mod kind;
mod open;
mod read;
mod replay;
mod resize;
mod table;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use uuid::Uuid;

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
pub(crate) use table::BatTable;

/// Bytes of metadata read at open are bounded by this.
const MAX_METADATA_BYTES: u64 = 64 * MIB;
/// Highest current-header SequenceNumber a read-write open accepts: every
/// session increments it a few times, and it must never wrap.
const MAX_WRITABLE_SEQUENCE: u64 = u64::MAX - (1 << 32);
/// BAT sector (log granularity).
const SECTOR: u64 = 4096;

/// The MiB-aligned places of `len` bytes in `[0, end)` that none of the
/// `used` areas (offset, length; any order) touch, lowest first, at most
/// `most` of them.
fn block_holes(mut used: Vec<(u64, u64)>, len: u64, end: u64, most: usize) -> Vec<u64> {
    used.sort_unstable();
    let mut holes = Vec::new();
    let mut take = |from: u64, to: u64| {
        let mut at = align_up(from, MIB).unwrap_or(u64::MAX);
        while at.saturating_add(len) <= to && holes.len() < most {
            holes.push(at);
            at += len;
        }
    };
    let mut covered = 0u64;
    for (off, l) in used {
        if off > covered {
            take(covered, off);
        }
        covered = covered.max(off.saturating_add(l));
    }
    take(covered, end);
    holes
}

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
    /// restore (index, old entry, new space) if the data cannot be written;
    /// `publish`: the entry (index, new entry) of a block being filled, to
    /// set once the data is written (one dirty sector reserved for it).
    Ready {
        base: u64,
        bits: Option<usize>,
        undo: Option<(usize, BatEntry, u64)>,
        publish: Option<(usize, BatEntry)>,
    },
    /// The dirty set is full: flush, then try again. Holds the log
    /// sequence number seen: a flush that ran since made the room.
    NeedFlush(u64),
}

/// Cached sector-bitmap sectors, by (chunk, sector of the bitmap block).
type BitmapCache = HashMap<(u64, u64), Box<[u8]>, std::hash::BuildHasherDefault<KeyHasher>>;

/// A cheap hasher for the bitmap cache (looked up on every read of a
/// partly present block; SipHash cost more than the lookup). Its keys come
/// from the file's own geometry, bounded by the number of bitmap sectors,
/// so nothing gains from a keyed hash.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

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
    /// Block-sized holes below `file_end` that no entry used when the file
    /// was opened (trimmed in an earlier session, or allocated by a write
    /// whose entry a crash lost), the lowest last: reused after being
    /// zeroed (their bytes are unknown).
    reclaim: Vec<u64>,
    file_end: u64,
    /// BAT indexes of blocks that read through to the parent and are being
    /// given their own space by a write: their entries are published only
    /// once the data is in the file (see [`Vhdx::prepare_write`]); other
    /// writes to them wait on [`Vhdx::filled`].
    filling: Vec<usize>,
}

/// One open VHDX file.
#[derive(Debug)]
pub(crate) struct Vhdx {
    storage: Arc<dyn Storage>,
    /// The storage the file was opened on: `storage` itself, or what a
    /// read-only open's replayed-log view reads through.
    host: Arc<dyn Storage>,
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
    bat: BatTable,
    state: Mutex<WriteState>,
    /// Held shared by every read or write that looks a block's file offset
    /// up and then uses it, exclusively by a flush while it takes its
    /// snapshot: no space freed by a trim is reused while an I/O that found
    /// it is still running, and no BAT entry is committed before the data
    /// of the write that made it.
    gate: RwLock<()>,
    /// Held by every flush (and by what flushes as part of a change: a
    /// metadata change, close) from its snapshot to its end: one flush at a
    /// time, while the state lock is held only to take the snapshot and to
    /// record the result, so that writes go on during the syncs. Lock
    /// order: `flushing`, then `gate`, then `state`.
    flushing: Mutex<()>,
    /// Signalled (with `state`) when a block leaves `WriteState::filling`.
    filled: Condvar,
    /// Most data sectors one log entry can carry (the bound of a flush).
    entry_cap: usize,
    /// Mirrors `WriteState::poisoned` for the lock-free data path.
    poisoned_flag: AtomicBool,
    session_started: AtomicBool,
    data_changed: AtomicBool,
    pub(crate) log_dirty: bool,
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

    /// Whether a sync of this handle failed (it refuses writes and flushes).
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned_flag.load(Ordering::Acquire)
    }

    pub(crate) fn header(&self) -> Header {
        lock(&self.state).header.clone()
    }

    pub(crate) fn file_len(&self) -> Result<u64> {
        Ok(self.storage.len()?)
    }

    pub(crate) fn bat_snapshot(&self) -> BatTable {
        self.bat.clone()
    }

    /// The state of payload block `block`.
    pub(crate) fn block_entry(&self, block: u64) -> BatEntry {
        BatEntry(self.bat.at(self.geo.payload_index(block)))
    }

    pub(crate) fn allocated_bytes(&self) -> u64 {
        let bat = &self.bat;
        let g = &self.geo;
        let n = bat
            .nonzero()
            .filter(|&(i, e)| {
                !g.is_bitmap_index(i)
                    && (i as u64 - i as u64 / (g.chunk_ratio + 1)) < g.data_blocks
                    && matches!(
                        BatEntry(e).payload_state(),
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

impl Vhdx {
    /// The storage under the file (a live switch reopens a frozen top on it
    /// read-only, without reopening the file).
    pub(crate) fn storage_arc(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// The storage the file was opened on, under any replayed-log view (a
    /// live merge locks it and reopens the file on it).
    pub(crate) fn host_storage(&self) -> Arc<dyn Storage> {
        self.host.clone()
    }

    /// Whether reads go through a view of a dirty log replayed in memory.
    pub(crate) fn reads_replayed_log(&self) -> bool {
        !std::ptr::eq(
            Arc::as_ptr(&self.storage) as *const u8,
            Arc::as_ptr(&self.host) as *const u8,
        )
    }
}
