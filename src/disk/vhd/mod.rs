//! One legacy VHD file (Microsoft's "Virtual Hard Disk Image Format
//! Specification", 2006): fixed, dynamic or differencing. Open and
//! validate, read, write, trim, flush, create.
//!
//! Files: [`footer`] (the footer, CHS geometry, checksums), [`header`]
//! (the dynamic disk header and its locator entries), [`locator`] (parent
//! paths), `open.rs` (validation), `io.rs` (map, read, write, trim,
//! flush), `create.rs`, `relink.rs` (a re-parent).
//!
//! Knows one file, not chains (the parent is "read elsewhere":
//! [`Src::Parent`]). Depends on `crate::io`, `crate::format` (the
//! geometry and locator types shared with VHDX) and `crate::error`.
//!
//! # Layout libckpt writes
//!
//! A fixed disk: the data, then the footer. A dynamic or differencing
//! disk: the footer copy (0), the dynamic header (512), the BAT (1536,
//! padded to a sector), the parent locators' data, then the blocks (each a
//! sector bitmap padded to 512 bytes, then the data; placed so that the
//! data lies on 4 KiB), then the footer. The footer's fields never change
//! after creation; only its place moves as the file grows.
//!
//! # Crash safety (VHD has no log)
//!
//! The order of writes keeps the file valid at every cut:
//!
//! 1. A write that needs a new block first moves the footer: it writes the
//!    footer past the new block's end and syncs (the file then ends with a
//!    valid footer, and the old one, where the block will go, is no longer
//!    needed). Then it writes the block's sector bitmap (dynamic: all ones;
//!    differencing: all zeros), zeros over the block's data where the file
//!    could hold old bytes there, and the data. The BAT entry changes in
//!    memory only.
//! 2. A write into a differencing block sets the sectors' bits in the
//!    cached bitmap, in memory only, after its data is written.
//! 3. A flush syncs (every block and every data write is then durable),
//!    writes the changed bitmap sectors and BAT sectors, and syncs again.
//!
//! So a BAT entry or a bitmap bit reaches the disk only after the bytes it
//! points at: a cut leaves each sector written since the last flush old or
//! new, and everything flushed before it. A block written by a cut
//! allocation but never entered in the BAT is a leak (reused by the next
//! allocation of a later session only if it lies before the footer).
//! A file whose trailing footer was lost (another tool's cut allocation)
//! opens from the footer copy at offset 0; a read-write open writes the
//! trailing footer again.
//!
//! # Reading and trimming
//!
//! In a dynamic disk an allocated block's data is read whole, as QEMU does
//! (libckpt and QEMU write its bitmap all ones); an unallocated block reads
//! as zeros. In a differencing disk a sector whose bit is clear, and every
//! sector of an unallocated block, reads from the parent.
//!
//! A trim of a fixed disk writes zeros (it keeps its space); of a dynamic
//! disk it zeroes the data it covers by discarding the file's space where
//! the storage can (unallocated blocks are left as they are). VHD has no "zero" state for a sector of a differencing disk
//! (a clear bit shows the parent), so there a trim writes zeros, which
//! hides the parent's data, as [`crate::Disk::trim`] promises.

mod create;
pub(crate) mod footer;
pub(crate) mod header;
mod io;
pub(crate) mod locator;
mod open;
mod relink;
pub(crate) use open::looks_like_vhd;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::disk::DiskKind;
use crate::error::{Error, Result};
use crate::format::bat::Geometry;
use crate::format::locator::ParentLocator;
use crate::io::Storage;

pub(crate) use create::{VhdCreate, VhdParent};
pub use footer::MAX_VHD_SIZE;
use footer::{DiskType, Footer};
use header::DynHeader;

/// A BAT entry of an unallocated block.
const UNALLOCATED: u32 = u32::MAX;
/// Bitmaps kept in memory at most (clean ones are dropped past it).
const MAX_CACHED_BITMAPS: usize = 1 << 16;

/// Where a run of a layer's sectors is (shared with VHDX).
pub(crate) use crate::disk::vhdx::Src;

/// Mutable state of an open file, behind one mutex.
#[derive(Debug)]
struct State {
    /// The BAT (sector offsets), one entry per block.
    bat: Vec<u32>,
    /// BAT sectors (512 bytes each) changed since the last flush.
    dirty_bat: BTreeSet<u64>,
    /// Sector bitmaps of differencing blocks read or written so far.
    bitmaps: HashMap<u64, Vec<u8>>,
    /// Blocks whose cached bitmap differs from the file's.
    dirty_bitmaps: BTreeSet<u64>,
    /// Where the next block goes.
    next_free: u64,
    /// Where the footer is (the end of the file's structures).
    footer_pos: u64,
    /// Where the dynamic header is (the footer's `data_offset`; a
    /// re-parent moves it).
    data_offset: u64,
    /// Set when a sync failed: what reached the disk is unknown.
    poisoned: Option<String>,
    /// The dynamic header (a re-parent changes it).
    header: Option<DynHeader>,
}

/// One open VHD file.
#[derive(Debug)]
pub(crate) struct Vhd {
    storage: Arc<dyn Storage>,
    read_only: bool,
    /// The geometry in the terms the chain code uses (a fixed disk gets
    /// 2 MiB "blocks" for its walks).
    pub(crate) geo: Geometry,
    footer: Footer,
    /// Bytes of a block's sector bitmap (padded to 512).
    bitmap_len: u64,
    /// Block size in bytes (dynamic and differencing).
    block_size: u64,
    /// The parent locator entries' data, by platform code.
    locators: RwLock<Vec<(u32, Vec<u8>)>>,
    state: Mutex<State>,
    poisoned_flag: AtomicBool,
    /// The creator application of the footer ("win ", "qemu", …).
    pub(crate) creator: String,
    /// The trailing footer was missing or damaged and the copy at offset 0
    /// was used (a read-write open wrote the trailing footer again).
    pub(crate) repaired: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Vhd {
    /// Fixed, dynamic or differencing.
    pub(crate) fn kind(&self) -> DiskKind {
        self.footer.disk_type.kind()
    }

    /// Whether this is a differencing disk.
    pub(crate) fn has_parent(&self) -> bool {
        self.footer.disk_type == DiskType::Differencing
    }

    /// Whether the file was opened read-only.
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether a sync failed (writes and flushes are refused).
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned_flag.load(Ordering::Acquire)
    }

    /// The footer's unique id.
    pub(crate) fn unique_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.footer.unique_id)
    }

    /// The footer's timestamp (seconds since 2000-01-01 UTC).
    pub(crate) fn timestamp(&self) -> u32 {
        self.footer.timestamp
    }

    /// The parent's unique id and timestamp this differencing disk records.
    pub(crate) fn parent_link(&self) -> Option<(uuid::Uuid, u32)> {
        let st = lock(&self.state);
        let h = st.header.as_ref()?;
        self.has_parent()
            .then(|| (uuid::Uuid::from_bytes(h.parent_id), h.parent_timestamp))
    }

    /// The parent's paths, in the shape of a VHDX parent locator.
    pub(crate) fn parent_locator(&self) -> ParentLocator {
        let l = self.locators.read().unwrap_or_else(|e| e.into_inner());
        locator::as_parent_locator(&l)
    }

    /// The file's length.
    pub(crate) fn file_len(&self) -> Result<u64> {
        Ok(self.storage.len()?)
    }

    /// The storage under the file.
    pub(crate) fn storage_arc(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// Bytes of blocks allocated in the file (fixed: the virtual size).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        if self.footer.disk_type == DiskType::Fixed {
            return self.geo.virtual_size;
        }
        let st = lock(&self.state);
        st.bat.iter().filter(|&&e| e != UNALLOCATED).count() as u64 * self.block_size
    }

    /// Refuse a range past the virtual size.
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

    /// The footer as it is to be written now (its `data_offset` is the
    /// state's).
    fn footer_bytes(&self, st: &State) -> [u8; footer::FOOTER_SIZE] {
        let mut f = self.footer.clone();
        if f.disk_type != footer::DiskType::Fixed {
            f.data_offset = st.data_offset;
        }
        f.to_bytes()
    }

    fn poison(&self, st: &mut State, why: String) -> Error {
        st.poisoned = Some(why.clone());
        self.poisoned_flag.store(true, Ordering::Release);
        Error::Io(std::io::Error::other(format!(
            "a sync failed ({why}): what reached the disk is unknown; reopen the disk"
        )))
    }
}

impl Drop for Vhd {
    fn drop(&mut self) {
        if !self.read_only {
            let _ = self.flush();
        }
    }
}
