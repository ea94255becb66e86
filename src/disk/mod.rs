//! An open virtual disk: one VHDX file (fixed or dynamic), with read, write,
//! flush, trim, create and information.
//!
//! Knows blocks and sectors, not checkpoints.

pub mod check;
mod vhdx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::{FileStorage, Storage};

/// 1 MiB.
pub const MIB: u64 = 1 << 20;

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

/// An open virtual disk. `Send + Sync`: share it between threads with
/// `Arc`, or by reference; reads and writes may run concurrently and run in
/// parallel where they touch different blocks.
///
/// Dropping a disk opened read-write closes it cleanly (as [`Disk::close`],
/// ignoring errors); call `close` to see them.
#[derive(Debug)]
pub struct Disk {
    path: Option<PathBuf>,
    file: vhdx::Vhdx,
    closed: bool,
}

/// The creator string written into new files.
pub(crate) fn creator() -> String {
    format!("libckpt {}", crate::VERSION)
}

impl Disk {
    /// Create a new VHDX at `path` (which must not exist) and open it read-write.
    pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Disk> {
        let path = path.as_ref();
        let storage = FileStorage::create(path).map_err(|e| Error::from(e).in_file(path))?;
        let storage: Arc<dyn Storage> = Arc::new(storage);
        if let Err(e) = vhdx::Vhdx::create(storage.as_ref(), opts, &creator()) {
            drop(storage);
            let _ = std::fs::remove_file(path);
            return Err(e.in_file(path));
        }
        let file = vhdx::Vhdx::open(storage, false).map_err(|e| e.in_file(path))?;
        Ok(Disk { path: Some(path.to_path_buf()), file, closed: false })
    }

    /// Create a new VHDX on empty storage and open it read-write.
    pub fn create_on(storage: Arc<dyn Storage>, opts: &CreateOptions) -> Result<Disk> {
        if storage.len()? != 0 {
            return Err(Error::InvalidArgument("storage for a new disk must be empty".into()));
        }
        vhdx::Vhdx::create(storage.as_ref(), opts, &creator())?;
        let file = vhdx::Vhdx::open(storage, false)?;
        Ok(Disk { path: None, file, closed: false })
    }

    /// Open a VHDX file.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Disk> {
        let path = path.as_ref();
        let rw = mode == OpenMode::ReadWrite;
        let storage = FileStorage::open(path, rw).map_err(|e| Error::from(e).in_file(path))?;
        let file = vhdx::Vhdx::open(Arc::new(storage), !rw).map_err(|e| e.in_file(path))?;
        Ok(Disk { path: Some(path.to_path_buf()), file, closed: false })
    }

    /// Open a VHDX held by `storage`.
    pub fn open_storage(storage: Arc<dyn Storage>, mode: OpenMode) -> Result<Disk> {
        let file = vhdx::Vhdx::open(storage, mode == OpenMode::ReadOnly)?;
        Ok(Disk { path: None, file, closed: false })
    }

    fn ctx<T>(&self, r: Result<T>) -> Result<T> {
        match (&self.path, r) {
            (Some(p), Err(e)) if !matches!(e, Error::OutOfRange { .. } | Error::ReadOnly) => Err(e.in_file(p)),
            (_, r) => r,
        }
    }

    /// The file's path, when opened from a path.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Virtual size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.file.geo.virtual_size
    }

    /// Logical sector size in bytes.
    pub fn logical_sector_size(&self) -> u32 {
        self.file.meta.logical_sector_size
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.file.geo.block_size
    }

    /// Read `buf.len()` bytes at `offset` (any alignment).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.ctx(self.file.read_at(buf, offset))
    }

    /// Write `buf` at `offset` (any alignment). Durable after [`Disk::flush`].
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.ctx(self.file.write_at(buf, offset))
    }

    /// Make every completed write durable.
    pub fn flush(&self) -> Result<()> {
        self.ctx(self.file.flush())
    }

    /// Discard `[offset, offset+len)`: afterwards it reads as zeros; whole
    /// blocks of a dynamic disk stop using space in the file (once flushed).
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.ctx(self.file.trim(offset, len))
    }

    /// Facts about the disk.
    pub fn info(&self) -> DiskInfo {
        let h = self.file.header();
        DiskInfo {
            kind: self.file.kind(),
            virtual_size: self.file.geo.virtual_size,
            block_size: self.file.geo.block_size,
            logical_sector_size: self.file.meta.logical_sector_size,
            physical_sector_size: self.file.meta.physical_sector_size,
            file_size: self.file.file_len().unwrap_or(0),
            allocated_bytes: self.file.allocated_bytes(),
            parent: None,
            log_dirty: self.file.log_dirty,
            creator: self.file.creator.clone(),
            disk_id: self.file.meta.disk_id,
            data_write_guid: h.data_write_guid,
            file_write_guid: h.file_write_guid,
            read_only: self.file.is_read_only(),
        }
    }

    /// The whole virtual disk as extents, allocated or not, in order.
    pub fn extents(&self) -> Result<Vec<Extent>> {
        Ok(self.file.extents())
    }

    /// Flush, leave an empty log, and close.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.ctx(self.file.close())
    }

    /// A `Read + Write + Seek` view of the disk starting at offset 0.
    pub fn cursor(&self) -> DiskCursor<'_> {
        DiskCursor { disk: self, pos: 0 }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.file.close();
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
