//! An open virtual disk: one VHDX file (fixed, dynamic or differencing) or a
//! chain of them, with read, write, flush, trim, create and information.
//!
//! Knows blocks and sectors, not checkpoints.

mod chain;
pub mod check;
pub mod convert;
pub mod live;
pub mod merge;
pub mod path;
mod span;
pub(crate) mod user_item;
mod vhdx;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::format::locator::{self, ParentLocator};
use crate::io::{FileStorage, Storage};
use crate::version::creator;
use vhdx::Src;

pub use crate::format::MIB;
pub use path::absolute;

/// How a disk is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Never writes to the file (a dirty log is replayed in memory).
    ReadOnly,
    /// Reads and writes (a dirty log is replayed into the file).
    ReadWrite,
}

/// The kind of a VHDX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// Every block allocated at creation.
    Fixed,
    /// Blocks allocated on first write.
    Dynamic,
    /// A child of another VHDX.
    Differencing,
}

impl DiskKind {
    /// "fixed", "dynamic" or "differencing".
    pub fn as_str(self) -> &'static str {
        match self {
            DiskKind::Fixed => "fixed",
            DiskKind::Dynamic => "dynamic",
            DiskKind::Differencing => "differencing",
        }
    }
}

/// Parameters of a new disk. Defaults follow Hyper-V.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of the logical sector size, at most 64 TiB).
    pub virtual_size: u64,
    /// Allocate every block now.
    pub fixed: bool,
    /// Block size (power of two, 1 MiB ..= 256 MiB). Default 32 MiB.
    pub block_size: u32,
    /// 512 or 4096. Default 512.
    pub logical_sector_size: u32,
    /// 512 or 4096. Default 4096.
    pub physical_sector_size: u32,
    /// Log size (a multiple of 1 MiB, at least 1 MiB). Default 1 MiB.
    pub log_size: u32,
}

impl CreateOptions {
    /// Defaults for a dynamic disk of `virtual_size` bytes.
    pub fn new(virtual_size: u64) -> CreateOptions {
        CreateOptions {
            virtual_size,
            fixed: false,
            block_size: 32 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            log_size: 1 << 20,
        }
    }
    /// Make it a fixed disk.
    pub fn fixed(mut self, fixed: bool) -> Self {
        self.fixed = fixed;
        self
    }
    /// Set the block size.
    pub fn block_size(mut self, v: u32) -> Self {
        self.block_size = v;
        self
    }
    /// Set the logical sector size.
    pub fn logical_sector_size(mut self, v: u32) -> Self {
        self.logical_sector_size = v;
        self
    }
    /// Set the physical sector size.
    pub fn physical_sector_size(mut self, v: u32) -> Self {
        self.physical_sector_size = v;
        self
    }
    /// Set the log size.
    pub fn log_size(mut self, v: u32) -> Self {
        self.log_size = v;
        self
    }
}

/// What [`Disk::info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Fixed, dynamic or differencing.
    pub kind: DiskKind,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// Bytes of payload blocks allocated in the file.
    pub allocated_bytes: u64,
    /// The parent's path (None for a base disk).
    pub parent: Option<PathBuf>,
    /// Whether the log held entries to replay when the disk was opened.
    pub log_dirty: bool,
    /// The creator string of the file identifier.
    pub creator: String,
    /// The virtual disk ID.
    pub disk_id: uuid::Uuid,
    /// The header's DataWriteGuid.
    pub data_write_guid: uuid::Uuid,
    /// The header's FileWriteGuid.
    pub file_write_guid: uuid::Uuid,
    /// Whether the disk is open read-only.
    pub read_only: bool,
}

/// A run of the virtual disk, allocated in the file or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start (bytes).
    pub offset: u64,
    /// Length (bytes).
    pub length: u64,
    /// Whether the file holds data for it (false: reads as zeros).
    pub allocated: bool,
}

/// An open virtual disk: one VHDX, or a differencing VHDX with the chain of
/// parents under it. `Send + Sync`: share it between threads with `Arc`, or
/// by reference; reads and writes may run concurrently and run in parallel
/// where they touch different blocks.
///
/// Writes go to the top file only; parents are opened read-only.
/// Dropping a disk opened read-write closes it cleanly (as [`Disk::close`],
/// ignoring errors); call `close` to see them.
#[derive(Debug)]
pub struct Disk {
    layers: Vec<Layer>,
    /// Per block of the top layer: which layer answers the whole block
    /// (0 unknown, k+1 layer k, `MIXED`), valid while the top layer does
    /// not hold the block.
    owner: Vec<AtomicU8>,
    /// Page maps of mixed blocks (see [`Disk::page_owners`]).
    pages: RwLock<HashMap<u64, Arc<[u8]>>>,
    /// Stripe locks by top block (see [`Disk::write_inner`]).
    stripes: Vec<RwLock<()>>,
}

#[derive(Debug)]
struct Layer {
    path: Option<PathBuf>,
    file: vhdx::Vhdx,
}

const MIXED: u8 = u8::MAX;
/// Granularity of the per-page owner maps of mixed blocks.
const PAGE: u64 = 4096;
/// Stripe locks guarding sector read-modify-writes in a differencing top.
const STRIPES: usize = 64;
/// Most mixed blocks whose page map is kept.
const MAX_PAGE_MAPS: usize = 1 << 16;
/// Deepest chain opened.
pub const MAX_CHAIN_DEPTH: usize = 64;

impl Disk {
    /// A chain without the per-block owner cache (for chains whose lower
    /// layers change while open, as during a merge).
    fn from_layers_uncached(layers: Vec<Layer>) -> Disk {
        Disk {
            layers,
            owner: Vec::new(),
            pages: RwLock::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    fn from_layers(layers: Vec<Layer>) -> Disk {
        let blocks = layers[0].file.geo.data_blocks as usize;
        // The caches name layers in a byte; deeper chains go without.
        let owner = if layers.len() > 1 && layers.len() < MIXED as usize - 1 {
            (0..blocks).map(|_| AtomicU8::new(0)).collect()
        } else {
            Vec::new()
        };
        Disk {
            layers,
            owner,
            pages: RwLock::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    fn top(&self) -> &vhdx::Vhdx {
        &self.layers[0].file
    }

    /// Create a new VHDX at `path` (which must not exist) and open it read-write.
    pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Disk> {
        let path = path.as_ref();
        let storage = create_file(path, |s| vhdx::Vhdx::create(s, opts, &creator(), None))?;
        let file = vhdx::Vhdx::open(storage, false).map_err(|e| e.in_file(path))?;
        Ok(Disk::from_layers(vec![Layer {
            path: Some(path.to_path_buf()),
            file,
        }]))
    }

    /// Create a new VHDX on empty storage and open it read-write.
    pub fn create_on(storage: Arc<dyn Storage>, opts: &CreateOptions) -> Result<Disk> {
        if storage.len()? != 0 {
            return Err(Error::InvalidArgument(
                "storage for a new disk must be empty".into(),
            ));
        }
        vhdx::Vhdx::create(storage.as_ref(), opts, &creator(), None)?;
        let file = vhdx::Vhdx::open(storage, false)?;
        Ok(Disk::from_layers(vec![Layer { path: None, file }]))
    }

    /// Create a differencing disk at `path` (which must not exist) on top of
    /// the VHDX at `parent`, and open the new chain read-write.
    pub fn create_child(
        path: impl AsRef<Path>,
        parent: impl AsRef<Path>,
        opts: &ChildOptions,
    ) -> Result<Disk> {
        let path = path.as_ref();
        let parent = parent.as_ref();
        // The parent's chain stays open (locked shared) until the child's
        // chain holds it: nobody can write the parent in between.
        let pdisk = Disk::open(parent, OpenMode::ReadOnly)?;
        let spec = chain::parent_spec(path, parent, pdisk.top())?;
        let copts = child_create_options(&pdisk, opts);
        create_file(path, |s| {
            vhdx::Vhdx::create(s, &copts, &creator(), Some(&spec))
        })?;
        let child = Disk::open(path, OpenMode::ReadWrite);
        drop(pdisk);
        child
    }

    /// Create a differencing disk on empty `storage` whose parent is the
    /// top file of `parent` (in-memory chains, for tests and embedders).
    /// Open the result with [`Disk::open_storage_chain`].
    pub fn create_child_on(
        storage: Arc<dyn Storage>,
        parent: &Disk,
        opts: &ChildOptions,
    ) -> Result<()> {
        if storage.len()? != 0 {
            return Err(Error::InvalidArgument(
                "storage for a new disk must be empty".into(),
            ));
        }
        let h = parent.top().header();
        let mut loc = ParentLocator::new(Vec::new());
        loc.set(
            locator::PARENT_LINKAGE,
            locator::linkage_string(&h.data_write_guid),
        );
        loc.set(locator::RELATIVE_PATH, ".\\parent.vhdx".into());
        let spec = vhdx::ParentSpec {
            disk_id: parent.top().metadata().disk_id,
            locator: loc,
        };
        let copts = child_create_options(parent, opts);
        vhdx::Vhdx::create(storage.as_ref(), &copts, &creator(), Some(&spec))
    }

    /// Open a VHDX file; for a differencing disk, its whole chain of parents
    /// (read-only), found through each parent locator and checked against
    /// its linkage.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Disk> {
        let layers = chain::open_chain(path.as_ref(), mode)?;
        Ok(Disk::from_layers(layers))
    }

    /// Open a VHDX held by `storage` (a base disk; a differencing disk needs
    /// [`Disk::open_storage_chain`]).
    pub fn open_storage(storage: Arc<dyn Storage>, mode: OpenMode) -> Result<Disk> {
        Disk::open_storage_chain(vec![storage], mode)
    }

    /// Open a chain held by storages, top first then each parent. The
    /// linkage of every child to its parent is checked.
    pub fn open_storage_chain(storages: Vec<Arc<dyn Storage>>, mode: OpenMode) -> Result<Disk> {
        if storages.is_empty() || storages.len() > MAX_CHAIN_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "a chain has 1 to {MAX_CHAIN_DEPTH} layers, not {}",
                storages.len()
            )));
        }
        let mut layers: Vec<Layer> = Vec::new();
        for (i, s) in storages.into_iter().enumerate() {
            let ro = i > 0 || mode == OpenMode::ReadOnly;
            let file = vhdx::Vhdx::open(s, ro)?;
            if let Some(child) = layers.last() {
                chain::check_linkage(&child.file, &file, None, None)?;
            }
            layers.push(Layer { path: None, file });
        }
        match layers.last() {
            Some(l) if l.file.has_parent() => Err(Error::InvalidArgument(
                "the last storage of the chain is a differencing disk: its parent is missing"
                    .into(),
            )),
            _ => Ok(Disk::from_layers(layers)),
        }
    }

    fn ctx<T>(&self, r: Result<T>) -> Result<T> {
        match (&self.layers[0].path, r) {
            (Some(p), Err(e)) if !matches!(e, Error::OutOfRange { .. } | Error::ReadOnly) => {
                Err(e.in_file(p))
            }
            (_, r) => r,
        }
    }

    /// The top file's path, when opened from a path.
    pub fn path(&self) -> Option<&Path> {
        self.layers[0].path.as_deref()
    }

    /// The files of the chain, top first (one entry for a base disk).
    /// Entries are `None` for layers not opened from a path.
    pub fn chain(&self) -> Vec<Option<PathBuf>> {
        self.layers.iter().map(|l| l.path.clone()).collect()
    }

    /// Number of layers (1 for a base disk).
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Virtual size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.top().geo.virtual_size
    }

    /// Logical sector size in bytes.
    pub fn logical_sector_size(&self) -> u32 {
        self.top().geo.logical_sector_size
    }

    /// Block size of the top file in bytes.
    pub fn block_size(&self) -> u32 {
        self.top().geo.block_size
    }

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
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = pos / bs;
            let n = ((bs - pos % bs) as usize).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match self.block_owner(block)? {
                MIXED => self.read_pages(block, dst, pos)?,
                owner => self.read_level(owner as usize - 1, dst, pos)?,
            }
            done += n;
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
        let lss = top.geo.logical_sector_size as u64;
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

    fn read_chain_or_single(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.layers.len() == 1 {
            self.top().read_at(buf, offset)
        } else {
            self.read_chain(buf, offset)
        }
    }

    /// Make every completed write durable.
    pub fn flush(&self) -> Result<()> {
        self.ctx(self.top().flush())
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

    /// Facts about the disk (about its top file).
    pub fn info(&self) -> DiskInfo {
        let top = self.top();
        let h = top.header();
        let m = top.metadata();
        DiskInfo {
            kind: top.kind(),
            virtual_size: top.geo.virtual_size,
            block_size: top.geo.block_size,
            logical_sector_size: m.logical_sector_size,
            physical_sector_size: m.physical_sector_size,
            file_size: top.file_len().unwrap_or(0),
            allocated_bytes: top.allocated_bytes(),
            parent: self.layers.get(1).and_then(|l| l.path.clone()),
            log_dirty: top.log_dirty,
            creator: top.creator.clone(),
            disk_id: m.disk_id,
            data_write_guid: h.data_write_guid,
            file_write_guid: h.file_write_guid,
            read_only: top.is_read_only(),
        }
    }

    /// The whole virtual disk as extents, in order: `allocated` when some
    /// layer of the chain holds data there (false: reads as zeros).
    pub fn extents(&self) -> Result<Vec<Extent>> {
        self.extents_in(0, self.virtual_size())
    }

    /// The extents of `[offset, offset+len)`, in order, at block
    /// granularity (the first and last are cut to the range).
    pub fn extents_in(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.top().check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let size = offset + len;
        let step = self
            .layers
            .iter()
            .map(|l| l.file.geo.block_size as u64)
            .min()
            .unwrap_or(MIB);
        let mut runs = Vec::new();
        let mut pos = offset;
        while pos < size {
            let n = (step - pos % step).min(size - pos);
            let mut allocated = false;
            for l in &self.layers {
                runs.clear();
                l.file.map(pos, n, &mut runs)?;
                if runs.iter().any(|(_, s)| matches!(s, Src::Data(_))) {
                    allocated = true;
                    break;
                }
                if !runs.iter().any(|(_, s)| *s == Src::Parent) {
                    break;
                }
            }
            match out.last_mut() {
                Some(x) if x.allocated == allocated => x.length += n,
                _ => out.push(Extent {
                    offset: pos,
                    length: n,
                    allocated,
                }),
            }
            pos += n;
        }
        Ok(out)
    }

    /// Flush, leave an empty log, and close.
    pub fn close(self) -> Result<()> {
        let r = self.top().close();
        self.ctx(r)
    }

    /// A `Read + Write + Seek` view of the disk starting at offset 0.
    pub fn cursor(&self) -> DiskCursor<'_> {
        DiskCursor { disk: self, pos: 0 }
    }
}

/// Open the image file `path` alone, locked: exclusively when `writable`,
/// shared otherwise (see [`crate::io::lock_file`]). A refused lock is
/// [`Error::Busy`] naming the file and who holds it.
pub(crate) fn open_file(path: &Path, writable: bool) -> Result<FileStorage> {
    FileStorage::open(path, writable).map_err(|e| file_error(e, path))
}

/// An error from opening `path`: a lock conflict becomes [`Error::Busy`].
pub(crate) fn file_error(e: std::io::Error, path: &Path) -> Error {
    match crate::io::lock_conflict(&e) {
        Some(c) => Error::Busy(c.to_string()).in_file(path),
        None => Error::from(e).in_file(path),
    }
}

/// Fail with [`Error::Busy`] when another handle or process has the image
/// `path` open (for writing, or read-only as a parent of an open chain):
/// takes an exclusive lock for a moment and gives it back. For operations
/// that are about to change or remove a file, checked before their first
/// step so that a refusal changes nothing.
pub fn check_not_in_use(path: &Path) -> Result<()> {
    open_file(path, true).map(drop)
}

/// Create `path` (which must not exist) with `init`, removing it again if
/// that fails.
fn create_file(
    path: &Path,
    init: impl FnOnce(&dyn Storage) -> Result<()>,
) -> Result<Arc<dyn Storage>> {
    let storage = FileStorage::create(path).map_err(|e| file_error(e, path))?;
    let storage: Arc<dyn Storage> = Arc::new(storage);
    if let Err(e) = init(storage.as_ref()) {
        drop(storage);
        let _ = std::fs::remove_file(path);
        return Err(e.in_file(path));
    }
    Ok(storage)
}

fn child_create_options(parent: &Disk, opts: &ChildOptions) -> CreateOptions {
    let m = parent.top().metadata();
    CreateOptions {
        virtual_size: m.virtual_size,
        fixed: false,
        block_size: opts.block_size,
        logical_sector_size: m.logical_sector_size,
        physical_sector_size: m.physical_sector_size,
        log_size: opts.log_size,
    }
}

/// Parameters of a new differencing disk. Defaults follow Hyper-V.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildOptions {
    /// Block size (power of two, 1 MiB ..= 256 MiB). Default 2 MiB.
    pub block_size: u32,
    /// Log size. Default 1 MiB.
    pub log_size: u32,
}

impl Default for ChildOptions {
    fn default() -> Self {
        ChildOptions {
            block_size: 2 << 20,
            log_size: 1 << 20,
        }
    }
}

/// `std::io::{Read, Write, Seek}` over a [`Disk`].
#[derive(Debug)]
pub struct DiskCursor<'a> {
    disk: &'a Disk,
    pos: u64,
}

fn to_io(e: Error) -> std::io::Error {
    match e {
        Error::Io(e) => e,
        e => std::io::Error::other(e),
    }
}

impl std::io::Read for DiskCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.disk.virtual_size();
        if self.pos >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - self.pos) as usize;
        self.disk.read_at(&mut buf[..n], self.pos).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Write for DiskCursor<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let size = self.disk.virtual_size();
        if self.pos >= size && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "end of virtual disk",
            ));
        }
        let n = (buf.len() as u64).min(size.saturating_sub(self.pos)) as usize;
        self.disk.write_at(&buf[..n], self.pos).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.disk.flush().map_err(to_io)
    }
}

impl std::io::Seek for DiskCursor<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let size = self.disk.virtual_size() as i128;
        let new = match pos {
            std::io::SeekFrom::Start(p) => p as i128,
            std::io::SeekFrom::End(d) => size + d as i128,
            std::io::SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 || new > u64::MAX as i128 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
