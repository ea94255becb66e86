//! An open virtual disk: one VHDX file (fixed, dynamic or differencing) or a
//! chain of them, with read, write, flush, trim, create and information.
//!
//! Knows blocks and sectors, not checkpoints. Depends on `crate::io`,
//! `crate::format`, `crate::version` and `crate::error` only — never on
//! `checkpoint`, `ffi` or the CLI.
//!
//! File by file:
//! - `mod.rs`: the types ([`Disk`], options, [`DiskInfo`], [`Extent`]),
//!   create, open, facts about the chain, flush, close.
//! - `read.rs`: the read path through the chain and its owner caches.
//! - `write.rs`: the write path (stripe locks, partial sectors) and trim.
//! - `extents.rs`: extents, changed ranges, copying a disk's content.
//! - `cursor.rs`: [`DiskCursor`] (`std::io` over a disk).
//! - `chain.rs`: finding and opening parents, linkage checks, locators.
//! - [`merge`]: merge, flatten, re-parent, finding children.
//! - [`convert`]: raw and VHDX conversion; [`check`]: structural check;
//!   [`compact`]: giving back the space of freed and zero blocks;
//!   [`in_place`]: converting a base disk between fixed and dynamic in place.
//! - [`path`], `span.rs` (block-by-block walks), `user_item.rs`.
//! - [`live`]: [`LiveDisk`](live::LiveDisk), a handle whose chain is switched
//!   (a new child, another chain) while I/O goes on.
//! - `vhdx/`: one VHDX file (see its module doc).

mod chain;
pub mod check;
pub mod compact;
pub mod convert;
mod cursor;
mod extents;
pub(crate) mod image;
pub mod in_place;
pub mod live;
pub mod merge;
pub mod path;
mod read;
pub mod resize;
mod span;
pub(crate) mod user_item;
pub(crate) mod vhd;
mod vhd_api;
pub(crate) mod vhd_merge;
mod vhdx;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::format::locator::{self, ParentLocator};
use crate::io::{FileStorage, Storage};
use crate::version::creator;

pub use crate::format::MIB;
pub use cursor::DiskCursor;
pub(crate) use extents::Range;
pub use image::Format;
pub use path::absolute;
pub use vhd_api::{vhd_max_size, VhdOptions};

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

    /// The kind named "fixed", "dynamic" or "differencing" (any case).
    pub fn parse(s: &str) -> Option<DiskKind> {
        match s.to_ascii_lowercase().as_str() {
            "fixed" => Some(DiskKind::Fixed),
            "dynamic" => Some(DiskKind::Dynamic),
            "differencing" => Some(DiskKind::Differencing),
            _ => None,
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
    /// VHDX or VHD.
    pub format: Format,
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
    /// The virtual disk ID (a VHD's unique id).
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
    file: image::Image,
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

    /// Switch the write-behind of a bulk stream (convert) on or off for
    /// the top file (see [`crate::io::Storage::set_write_behind`]).
    pub(crate) fn set_write_behind(&self, on: bool) {
        self.top().set_write_behind(on);
    }

    fn top(&self) -> &image::Image {
        &self.layers[0].file
    }

    /// Forget the owner caches (the top's geometry changed: they are
    /// sized and computed for the old one).
    fn reset_caches(&mut self) {
        if !self.owner.is_empty() {
            let blocks = self.top().geo.data_blocks as usize;
            self.owner = (0..blocks).map(|_| AtomicU8::new(0)).collect();
        }
        self.pages
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Create a new VHDX at `path` (which must not exist) and open it read-write.
    pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Disk> {
        let path = path.as_ref();
        let storage = create_file(path, |s| vhdx::Vhdx::create(s, opts, &creator(), None, &[]))?;
        let file = vhdx::Vhdx::open(storage, false).map_err(|e| e.in_file(path))?;
        Ok(Disk::from_layers(vec![Layer {
            path: Some(path.to_path_buf()),
            file: file.into(),
        }]))
    }

    /// Create a new VHDX on empty storage and open it read-write.
    pub fn create_on(storage: Arc<dyn Storage>, opts: &CreateOptions) -> Result<Disk> {
        if storage.len()? != 0 {
            return Err(Error::InvalidArgument(
                "storage for a new disk must be empty".into(),
            ));
        }
        vhdx::Vhdx::create(storage.as_ref(), opts, &creator(), None, &[])?;
        let file = vhdx::Vhdx::open(storage, false)?;
        Ok(Disk::from_layers(vec![Layer {
            path: None,
            file: file.into(),
        }]))
    }

    /// Create a differencing disk at `path` (which must not exist) on top of
    /// the VHDX at `parent`, and open the new chain read-write.
    pub fn create_child(
        path: impl AsRef<Path>,
        parent: impl AsRef<Path>,
        opts: &ChildOptions,
    ) -> Result<Disk> {
        Disk::create_child_with(path.as_ref(), parent.as_ref(), opts, &[])
    }

    /// [`Disk::create_child`] with user metadata items in the new file
    /// from the start (a checkpoint's ownership stamp).
    pub(crate) fn create_child_with(
        path: &Path,
        parent: &Path,
        opts: &ChildOptions,
        user_items: &[(uuid::Uuid, Vec<u8>)],
    ) -> Result<Disk> {
        // The parent's chain stays open (locked shared) until the child's
        // chain holds it: nobody can write the parent in between.
        let pdisk = Disk::open(parent, OpenMode::ReadOnly)?;
        if pdisk.format() == Format::Vhd {
            // A child has its parent's format (mixed chains are refused).
            if !user_items.is_empty() {
                return Err(Error::Unsupported(
                    "a VHD has no metadata items: a VHD child cannot carry user items".into(),
                ));
            }
            return Disk::create_vhd_child_of(path, parent, &pdisk, opts);
        }
        let spec = chain::parent_spec(path, parent, pdisk.top())?;
        let copts = child_create_options(&pdisk, opts);
        create_file(path, |s| {
            vhdx::Vhdx::create(s, &copts, &creator(), Some(&spec), user_items)
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
        if parent.top().format() == Format::Vhd {
            return Disk::create_vhd_child_on(storage, parent, opts);
        }
        let h = parent.top().vhdx()?.header();
        let mut loc = ParentLocator::new(Vec::new());
        loc.set(
            locator::PARENT_LINKAGE,
            locator::linkage_string(&h.data_write_guid),
        );
        loc.set(locator::RELATIVE_PATH, ".\\parent.vhdx".into());
        let spec = vhdx::ParentSpec {
            disk_id: parent.top().vhdx()?.metadata().disk_id,
            locator: loc,
        };
        let copts = child_create_options(parent, opts);
        vhdx::Vhdx::create(storage.as_ref(), &copts, &creator(), Some(&spec), &[])
    }

    /// Open a VHDX file; for a differencing disk, its whole chain of parents
    /// (read-only), found through each parent locator and checked against
    /// its linkage.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Disk> {
        let layers = chain::open_chain(path.as_ref(), mode)?;
        Ok(Disk::from_layers(layers))
    }

    /// Open the one file at `path` without its parents, read-only, to
    /// inspect it: its own metadata, allocation and data. For a base disk
    /// this reads as [`Disk::open`] does. For a differencing disk the
    /// parents are neither looked for nor opened (so a missing or damaged
    /// parent does not matter); the ranges the file does not hold read as
    /// zeros, and [`Disk::extents_in`] tells them (holes) from the ranges
    /// it holds. [`Disk::depth`] is 1, while the info still says
    /// `has_parent`. Every write, trim or merge is refused (read-only).
    pub fn open_single(path: impl AsRef<Path>) -> Result<Disk> {
        let path = path.as_ref();
        let storage = open_file(path, false)?;
        let file = image::Image::open(Arc::new(storage), true).map_err(|e| e.in_file(path))?;
        Ok(Disk::from_layers(vec![Layer {
            path: Some(path.to_path_buf()),
            file,
        }]))
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
            let file = image::Image::open(s, ro)?;
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

    /// The index in the chain (0 = top) of the layer stored at `path`.
    pub fn level_of(&self, path: &Path) -> Result<usize> {
        let want = std::fs::canonicalize(path).map_err(|e| Error::from(e).in_file(path))?;
        self.layers
            .iter()
            .position(|l| {
                l.path.as_ref().and_then(|p| std::fs::canonicalize(p).ok()) == Some(want.clone())
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} is not in the chain of {}",
                    path.display(),
                    self.path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "this disk".into())
                ))
            })
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

    /// Make every completed write durable.
    pub fn flush(&self) -> Result<()> {
        self.ctx(self.top().flush())
    }

    /// Facts about the disk (about its top file).
    pub fn info(&self) -> DiskInfo {
        let top = self.top();
        // A VHD has one id (its footer's unique id) and 512-byte sectors.
        let (pss, disk_id, dwg, fwg) = match (top.as_vhdx(), top.as_vhd()) {
            (Some(v), _) => {
                let (h, m) = (v.header(), v.metadata());
                (
                    m.physical_sector_size,
                    m.disk_id,
                    h.data_write_guid,
                    h.file_write_guid,
                )
            }
            (None, Some(v)) => (512, v.unique_id(), uuid::Uuid::nil(), uuid::Uuid::nil()),
            (None, None) => unreachable!("an image is a VHDX or a VHD"),
        };
        DiskInfo {
            format: top.format(),
            kind: top.kind(),
            virtual_size: top.geo.virtual_size,
            block_size: top.geo.block_size,
            logical_sector_size: top.geo.logical_sector_size,
            physical_sector_size: pss,
            file_size: top.file_len().unwrap_or(0),
            allocated_bytes: top.allocated_bytes(),
            parent: self.layers.get(1).and_then(|l| l.path.clone()),
            log_dirty: top.log_dirty(),
            creator: top.creator(),
            disk_id,
            data_write_guid: dwg,
            file_write_guid: fwg,
            read_only: top.is_read_only(),
        }
    }

    /// The top file's format.
    pub fn format(&self) -> Format {
        self.top().format()
    }

    /// Flush, leave an empty log, and close.
    pub fn close(self) -> Result<()> {
        let r = self.top().close();
        self.ctx(r)
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
    let top = parent.top();
    CreateOptions {
        virtual_size: top.geo.virtual_size,
        fixed: false,
        block_size: opts.block_size,
        logical_sector_size: top.geo.logical_sector_size,
        physical_sector_size: top
            .as_vhdx()
            .map(|v| v.metadata().physical_sector_size)
            .unwrap_or(4096),
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
