//! An open virtual disk: one VHDX file (fixed or dynamic), with read, write,
//! flush, trim, create and information.
//!
//! Knows blocks and sectors, not checkpoints.

pub mod check;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::Storage;

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
/// `Arc`, or by reference; reads and writes may run concurrently.
#[derive(Debug)]
pub struct Disk {
    path: Option<PathBuf>,
    _storage: Arc<dyn Storage>,
}

impl Disk {
    /// Create a new VHDX at `path` (which must not exist) and open it read-write.
    pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Disk> {
        let _ = (path, opts);
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Create a new VHDX on empty storage and open it read-write.
    pub fn create_on(storage: Arc<dyn Storage>, opts: &CreateOptions) -> Result<Disk> {
        let _ = (storage, opts);
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Open a VHDX file.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Disk> {
        let _ = (path, mode);
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Open a VHDX held by `storage`.
    pub fn open_storage(storage: Arc<dyn Storage>, mode: OpenMode) -> Result<Disk> {
        let _ = (storage, mode);
        Err(Error::Unsupported("not yet written".into()))
    }
    /// The file's path, when opened from a path.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// Virtual size in bytes.
    pub fn virtual_size(&self) -> u64 {
        0
    }
    /// Read `buf.len()` bytes at `offset` (any alignment).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Write `buf` at `offset` (any alignment). Durable after [`Disk::flush`].
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Make every completed write durable.
    pub fn flush(&self) -> Result<()> {
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Discard `[offset, offset+len)`: afterwards it reads as zeros; whole
    /// blocks stop using space in the file.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Facts about the disk.
    pub fn info(&self) -> DiskInfo {
        unimplemented!()
    }
    /// The whole virtual disk as extents, allocated or not, in order.
    pub fn extents(&self) -> Result<Vec<Extent>> {
        Err(Error::Unsupported("not yet written".into()))
    }
    /// Flush, leave an empty log, and close.
    pub fn close(self) -> Result<()> {
        Err(Error::Unsupported("not yet written".into()))
    }
    /// A `Read + Write + Seek` view of the disk starting at offset 0.
    pub fn cursor(&self) -> DiskCursor<'_> {
        DiskCursor { disk: self, pos: 0 }
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
