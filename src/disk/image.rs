//! One layer's file in either format: [`Image`] holds a VHDX or a VHD and
//! answers what the chain code needs of a layer, in one place. The format
//! comes from the file's content (a VHD's footer cookie), never from its
//! name. Operations only VHDX has (resize, compact, in-place conversion,
//! merge into the file, live switches) go through [`Image::vhdx`], which
//! is a clear [`Error::Unsupported`] for a VHD.

use std::sync::{Arc, RwLockReadGuard};

use super::vhd::Vhd;
use super::vhdx::{Src, Vhdx};
use super::DiskKind;
use crate::error::{Error, Result};
use crate::format::bat::Geometry;
use crate::io::Storage;

/// The two on-disk formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// VHDX ([MS-VHDX]).
    Vhdx,
    /// The legacy VHD (Virtual PC / Virtual Server / Hyper-V 2008).
    Vhd,
}

impl Format {
    /// "vhdx" or "vhd".
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Vhdx => "vhdx",
            Format::Vhd => "vhd",
        }
    }

    /// The format named "vhdx" or "vhd" (any case).
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "vhdx" => Some(Format::Vhdx),
            "vhd" | "vpc" => Some(Format::Vhd),
            _ => None,
        }
    }

    /// The format of the file at `path`, from its content (looked at
    /// without a lock); None when it cannot be read.
    pub fn of_file(path: &std::path::Path) -> Option<Format> {
        crate::io::FileStorage::peek(path)
            .ok()
            .and_then(|s| Format::detect(&s).ok())
    }

    /// The format of the image held by `storage`, from its content: VHDX
    /// files start with "vhdxfile", VHD files end with (or start with) the
    /// footer cookie "conectix". Anything else is taken for a VHDX (whose
    /// open then says what is wrong).
    pub fn detect(storage: &dyn Storage) -> Result<Format> {
        let mut b = [0u8; 8];
        if storage.len()? >= 8 {
            storage.read_at(&mut b, 0)?;
            if &b == b"vhdxfile" {
                return Ok(Format::Vhdx);
            }
        }
        if super::vhd::looks_like_vhd(storage)? {
            Ok(Format::Vhd)
        } else {
            Ok(Format::Vhdx)
        }
    }
}

#[derive(Debug)]
enum Inner {
    Vhdx(Vhdx),
    Vhd(Vhd),
}

/// One open image file of either format.
#[derive(Debug)]
pub(crate) struct Image {
    /// The geometry (fixed for the life of the open file).
    pub(crate) geo: Geometry,
    inner: Inner,
}

impl From<Vhdx> for Image {
    fn from(v: Vhdx) -> Image {
        Image {
            geo: v.geo,
            inner: Inner::Vhdx(v),
        }
    }
}

impl From<Vhd> for Image {
    fn from(v: Vhd) -> Image {
        Image {
            geo: v.geo,
            inner: Inner::Vhd(v),
        }
    }
}

/// Call `$m` on whichever file the image holds.
macro_rules! both {
    ($s:expr, $f:ident => $e:expr) => {
        match &$s.inner {
            Inner::Vhdx($f) => $e,
            Inner::Vhd($f) => $e,
        }
    };
}

impl Image {
    /// Open the image on `storage` in the format its content shows.
    pub(crate) fn open(storage: Arc<dyn Storage>, read_only: bool) -> Result<Image> {
        match Format::detect(storage.as_ref())? {
            Format::Vhdx => Vhdx::open(storage, read_only).map(Image::from),
            Format::Vhd => Vhd::open(storage, read_only).map(Image::from),
        }
    }

    /// The file's format.
    pub(crate) fn format(&self) -> Format {
        match self.inner {
            Inner::Vhdx(_) => Format::Vhdx,
            Inner::Vhd(_) => Format::Vhd,
        }
    }

    /// The VHDX, or [`Error::Unsupported`] naming `what` for a VHD.
    pub(crate) fn vhdx_for(&self, what: &str) -> Result<&Vhdx> {
        match &self.inner {
            Inner::Vhdx(v) => Ok(v),
            Inner::Vhd(_) => Err(Error::Unsupported(format!(
                "{what} is not supported for VHD files yet (only for VHDX)"
            ))),
        }
    }

    /// The VHDX, or [`Error::Unsupported`] for a VHD.
    pub(crate) fn vhdx(&self) -> Result<&Vhdx> {
        self.vhdx_for("this operation")
    }

    /// The VHD, if the file is one.
    pub(crate) fn as_vhd(&self) -> Option<&Vhd> {
        match &self.inner {
            Inner::Vhd(v) => Some(v),
            Inner::Vhdx(_) => None,
        }
    }

    /// The VHDX, if the file is one.
    pub(crate) fn as_vhdx(&self) -> Option<&Vhdx> {
        match &self.inner {
            Inner::Vhdx(v) => Some(v),
            Inner::Vhd(_) => None,
        }
    }

    /// The unit a differencing top is written in (smaller writes are
    /// merged with what the chain reads around them): a VHDX's logical
    /// sector; for a differencing VHD 4 KiB, so that each byte of its
    /// sector bitmaps is all set or all clear (libvhdi 20210425 misreads
    /// the clear sectors after a set run inside one bitmap byte).
    pub(crate) fn write_granularity(&self) -> u64 {
        match &self.inner {
            Inner::Vhd(v) if v.has_parent() => 4096,
            _ => self.geo.logical_sector_size as u64,
        }
    }

    /// Whether this is a differencing disk.
    pub(crate) fn has_parent(&self) -> bool {
        both!(self, f => f.has_parent())
    }

    /// Fixed, dynamic or differencing.
    pub(crate) fn kind(&self) -> DiskKind {
        both!(self, f => f.kind())
    }

    /// Whether the file is open read-only.
    pub(crate) fn is_read_only(&self) -> bool {
        both!(self, f => f.is_read_only())
    }

    /// Whether a sync failed.
    pub(crate) fn is_poisoned(&self) -> bool {
        both!(self, f => f.is_poisoned())
    }

    /// The file's length.
    pub(crate) fn file_len(&self) -> Result<u64> {
        both!(self, f => f.file_len())
    }

    /// Bytes of blocks allocated in the file.
    pub(crate) fn allocated_bytes(&self) -> u64 {
        both!(self, f => f.allocated_bytes())
    }

    /// The creator string.
    pub(crate) fn creator(&self) -> String {
        both!(self, f => f.creator.clone())
    }

    /// Whether the open found something to recover (a VHDX's dirty log, a
    /// VHD's lost trailing footer).
    pub(crate) fn log_dirty(&self) -> bool {
        match &self.inner {
            Inner::Vhdx(v) => v.log_dirty,
            Inner::Vhd(v) => v.repaired,
        }
    }

    /// Refuse a range past the virtual size.
    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        both!(self, f => f.check_range(offset, len))
    }

    /// Where the runs of a range are.
    pub(crate) fn map(&self, offset: u64, len: u64, out: &mut Vec<(u64, Src)>) -> Result<()> {
        both!(self, f => f.map(offset, len, out))
    }

    /// The first run of a range.
    pub(crate) fn map_first(&self, offset: u64, len: u64) -> Result<(u64, Src)> {
        both!(self, f => f.map_first(offset, len))
    }

    /// Read from this file alone.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        both!(self, f => f.read_at(buf, offset))
    }

    /// Read at a file offset found by a map.
    pub(crate) fn read_raw(&self, buf: &mut [u8], file_offset: u64) -> Result<()> {
        both!(self, f => f.read_raw(buf, file_offset))
    }

    /// Held while offsets found by a map are used (a VHD never moves data).
    pub(crate) fn io_guard(&self) -> Option<RwLockReadGuard<'_, ()>> {
        match &self.inner {
            Inner::Vhdx(v) => v.io_guard(),
            Inner::Vhd(_) => None,
        }
    }

    /// Write into this file.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        both!(self, f => f.write_at(buf, offset))
    }

    /// Trim a range of a base disk.
    pub(crate) fn trim(&self, offset: u64, len: u64) -> Result<()> {
        both!(self, f => f.trim(offset, len))
    }

    /// Make a whole block read as zeros without writing it, if the format
    /// can (a VHD cannot: false).
    pub(crate) fn trim_block(&self, block: u64) -> Result<bool> {
        match &self.inner {
            Inner::Vhdx(v) => v.trim_block(block),
            Inner::Vhd(v) if v.is_read_only() => Err(Error::ReadOnly),
            Inner::Vhd(_) => Ok(false),
        }
    }

    /// Make every completed write durable.
    pub(crate) fn flush(&self) -> Result<()> {
        both!(self, f => f.flush())
    }

    /// Flush and close.
    pub(crate) fn close(&self) -> Result<()> {
        both!(self, f => f.close())
    }

    /// Switch the write-behind of a bulk stream on or off for this file
    /// (see [`Storage::set_write_behind`]).
    pub(crate) fn set_write_behind(&self, on: bool) {
        self.storage_arc().set_write_behind(on);
    }

    /// The storage under the file.
    pub(crate) fn storage_arc(&self) -> Arc<dyn Storage> {
        both!(self, f => f.storage_arc())
    }

    /// The storage the file was opened on (under a VHDX's replayed-log view).
    pub(crate) fn host_storage(&self) -> Arc<dyn Storage> {
        match &self.inner {
            Inner::Vhdx(v) => v.host_storage(),
            Inner::Vhd(v) => v.storage_arc(),
        }
    }

    /// Whether reads go through a VHDX's dirty log replayed in memory.
    pub(crate) fn reads_replayed_log(&self) -> bool {
        self.as_vhdx().is_some_and(|v| v.reads_replayed_log())
    }

    /// Replace a differencing VHDX's parent locator.
    pub(crate) fn set_parent_locator(&self, locator: Vec<u8>) -> Result<()> {
        self.vhdx_for("changing the parent locator this way")?
            .set_parent_locator(locator)
    }
}
