//! `ckpt_disk`: one open VHDX (a base disk, or a differencing disk with its
//! chain), with create, open, info, read, write, flush, trim and close.
//! Chains (children, merge, flatten, re-parent) are in `chain.rs`.

use std::ffi::c_char;
use std::mem::size_of;
use std::sync::Arc;

use super::{
    c_path, ckpt_status, ffi_boundary, non_null, out_ptr, read_versioned, write_versioned_grown,
    FfiError, FfiResult,
};
use crate::{CreateOptions, Disk, DiskKind, LiveDisk, OpenMode};

/// An open virtual disk (opaque).
///
/// Ownership: `ckpt_disk_create` and `ckpt_disk_open` give the caller a
/// handle; the caller gives it back with `ckpt_disk_close`, exactly once.
///
/// Thread safety: a handle may be used from several threads at the same
/// time. Every function that takes a `ckpt_disk` except `ckpt_disk_close`
/// (read, write, flush, trim, get_info and the chain getters) may run
/// concurrently on one handle, and they run in parallel where they touch
/// different blocks. A flush makes the writes of every thread durable.
/// Overlapping concurrent writes leave, for each byte, the value of one of
/// them, as with a file; with one exception: on a differencing disk
/// (`has_parent`), a write or trim that does not cover whole logical
/// sectors rewrites the rest of its first and last sector with what it
/// read there, so two such calls at the same time that share a sector
/// (even without sharing bytes) may undo one another in that sector.
/// Callers that issue unaligned writes from several threads to a
/// differencing disk serialise them (the nbdkit example plugin does).
/// `ckpt_disk_close` must not run at the same time as, or before, any other
/// call on the same handle.
///
/// The last error is per thread: after a failed call, call
/// `ckpt_last_error` on the same thread.
///
/// A handle from `ckpt_vm_disk` is borrowed from its VM: it follows the
/// VM's current state through every checkpoint operation, may be used from
/// any thread while the VM handle runs its own calls (a checkpoint
/// operation pauses its I/O briefly), is valid until `ckpt_vm_close`, and
/// `ckpt_disk_close` refuses it.
pub struct ckpt_disk {
    pub(crate) disk: DiskHandle,
}

/// What a `ckpt_disk` holds: a disk of its own, or a VM's live disk.
#[derive(Debug)]
pub(crate) enum DiskHandle {
    Owned(Disk),
    Live(Arc<LiveDisk>),
}

impl DiskHandle {
    fn with<R>(&self, f: impl FnOnce(&Disk) -> R) -> R {
        match self {
            DiskHandle::Owned(d) => f(d),
            DiskHandle::Live(l) => l.with_disk(f),
        }
    }
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::Result<()> {
        self.with(|d| d.read_at(buf, offset))
    }
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> crate::Result<()> {
        self.with(|d| d.write_at(buf, offset))
    }
    pub(crate) fn flush(&self) -> crate::Result<()> {
        self.with(|d| d.flush())
    }
    pub(crate) fn trim(&self, offset: u64, len: u64) -> crate::Result<()> {
        self.with(|d| d.trim(offset, len))
    }
    pub(crate) fn extents_in(&self, offset: u64, len: u64) -> crate::Result<Vec<crate::Extent>> {
        self.with(|d| d.extents_in(offset, len))
    }
    pub(crate) fn info(&self) -> crate::DiskInfo {
        self.with(|d| d.info())
    }
    pub(crate) fn virtual_size(&self) -> u64 {
        self.with(|d| d.virtual_size())
    }
    pub(crate) fn chain(&self) -> Vec<Option<std::path::PathBuf>> {
        self.with(|d| d.chain())
    }
    pub(crate) fn depth(&self) -> usize {
        self.with(|d| d.depth())
    }
    pub(crate) fn level_of(&self, path: &std::path::Path) -> crate::Result<usize> {
        self.with(|d| d.level_of(path))
    }
    pub(crate) fn changed_ranges(&self, levels: usize) -> crate::Result<Vec<crate::disk::Range>> {
        self.with(|d| d.changed_ranges(levels))
    }
}

/// `flags` of `ckpt_disk_open`: open for reading only (the file is never
/// written; a dirty log is replayed in memory).
pub const CKPT_OPEN_READ_ONLY: u32 = 0;
/// `flags` of `ckpt_disk_open`: open for reading and writing (a dirty log
/// is replayed into the file).
pub const CKPT_OPEN_READ_WRITE: u32 = 1;

/// `ckpt_create_options.flags`: allocate every block now (a fixed disk).
/// Without it the disk is dynamic (blocks are allocated on first write).
pub const CKPT_CREATE_FIXED: u32 = 1;

/// `ckpt_create_options.flags` of `ckpt_disk_create`: make a legacy VHD
/// (fixed with `CKPT_CREATE_FIXED`, else dynamic) instead of a VHDX. Its
/// sectors are 512 bytes and it has no log: `logical_sector_size`,
/// `physical_sector_size` and `log_size` must be 0; `block_size` 0 means
/// 2 MiB (a power of two from 4 KiB to 256 MiB otherwise). The virtual
/// size is at most 2040 GiB.
pub const CKPT_CREATE_VHD: u32 = 2;

/// Options of `ckpt_disk_create` (a versioned struct).
///
/// Set `struct_size` to `sizeof(ckpt_create_options)` and every other
/// field to 0 (for example `ckpt_create_options o = { sizeof o };` or
/// `memset` + assignment), then change the fields you need. A field left at
/// 0 takes the default. Fields added in later versions go at the end; the
/// library uses `struct_size` to know which fields the caller has, and
/// rejects (with `CKPT_STATUS_UNSUPPORTED`) a larger struct whose fields
/// unknown to it are not 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ckpt_create_options {
    /// `sizeof(ckpt_create_options)` as compiled by the caller.
    pub struct_size: u32,
    /// `CKPT_CREATE_*` bits; other bits must be 0.
    pub flags: u32,
    /// Block size in bytes: a power of two from 1 MiB to 256 MiB.
    /// 0: 32 MiB.
    pub block_size: u32,
    /// Logical sector size, 512 or 4096. 0: 512.
    pub logical_sector_size: u32,
    /// Physical sector size, 512 or 4096. 0: 4096.
    pub physical_sector_size: u32,
    /// Log size in bytes, a multiple of 1 MiB. 0: 1 MiB.
    pub log_size: u32,
}

/// The kind of a VHDX, in `ckpt_disk_info.kind`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_disk_kind {
    /// Every block allocated at creation.
    Fixed = 1,
    /// Blocks allocated on first write.
    Dynamic = 2,
    /// A child of another VHDX (a checkpoint's disk).
    Differencing = 3,
}

/// The format of a disk's top file, in `ckpt_disk_info.format`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_disk_format {
    /// VHDX ([MS-VHDX]), also `.avhdx`.
    Vhdx = 1,
    /// The legacy VHD (also `.avhd`).
    Vhd = 2,
}

/// Facts about an open disk, filled by `ckpt_disk_get_info` (a versioned
/// struct).
///
/// Set `struct_size` to `sizeof(ckpt_disk_info)` before the call. The
/// library writes the fields it knows that fit in `struct_size` bytes and
/// sets `struct_size` to the number of bytes it wrote; fields past that
/// (from a newer header than the library) are left as they were.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ckpt_disk_info {
    /// In: `sizeof(ckpt_disk_info)` as compiled by the caller. Out: the
    /// number of bytes the library wrote.
    pub struct_size: u32,
    /// Fixed, dynamic or differencing.
    pub kind: ckpt_disk_kind,
    /// Size of the virtual disk in bytes.
    pub virtual_size: u64,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// Bytes of payload blocks allocated in the file.
    pub allocated_bytes: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Logical sector size in bytes (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes (512 or 4096).
    pub physical_sector_size: u32,
    /// Whether the log held entries to replay when the disk was opened.
    pub log_dirty: bool,
    /// Whether the disk has a parent (it is a differencing disk; also when
    /// its file was opened alone, with `ckpt_disk_open_file`).
    pub has_parent: bool,
    /// Whether the handle was opened read-only.
    pub read_only: bool,
    /// Always 0.
    pub reserved: u8,
    /// The virtual disk ID, in the byte order of its string form: printing
    /// the bytes in order as hex, with a dash after bytes 4, 6, 8 and 10,
    /// gives the usual GUID text.
    pub disk_id: [u8; 16],
    /// The top file's format. A later field: a caller compiled against a
    /// header without it (`struct_size` 64) does not get it, and a library
    /// older than the caller's header leaves it as the caller set it (set
    /// it to 0 to tell "not known").
    pub format: ckpt_disk_format,
    /// Always 0.
    pub reserved2: u32,
}

// The layout is ABI: no hidden padding, fixed size; version 1 of
// `ckpt_disk_info` ended after `disk_id` (64 bytes).
const _: () = assert!(size_of::<ckpt_create_options>() == 24);
const _: () = assert!(size_of::<ckpt_disk_info>() == 72);
const DISK_INFO_V1: usize = 64;

/// The library's options from the caller's versioned struct (NULL: the
/// defaults).
///
/// # Safety
///
/// `p` is NULL or points to a readable struct of at least `p->struct_size`
/// bytes.
pub(crate) unsafe fn create_options(
    p: *const ckpt_create_options,
    virtual_size: u64,
) -> FfiResult<CreateOptions> {
    let mut o = CreateOptions::new(virtual_size);
    // SAFETY: forwarded from the caller; the struct has only integers.
    let Some(c) = (unsafe { read_versioned(p, "options", "ckpt_create_options")? }) else {
        return Ok(o);
    };
    if c.flags & !(CKPT_CREATE_FIXED | CKPT_CREATE_VHD) != 0 {
        return Err(FfiError::invalid(format!(
            "options->flags has unknown bits {:#x}",
            c.flags & !(CKPT_CREATE_FIXED | CKPT_CREATE_VHD)
        )));
    }
    o = o.fixed(c.flags & CKPT_CREATE_FIXED != 0);
    if c.block_size != 0 {
        o = o.block_size(c.block_size);
    }
    if c.logical_sector_size != 0 {
        o = o.logical_sector_size(c.logical_sector_size);
    }
    if c.physical_sector_size != 0 {
        o = o.physical_sector_size(c.physical_sector_size);
    }
    if c.log_size != 0 {
        o = o.log_size(c.log_size);
    }
    Ok(o)
}

/// The VHD options of `ckpt_create_options` with `CKPT_CREATE_VHD` set
/// (`None` without it).
///
/// # Safety
///
/// As [`create_options`].
pub(crate) unsafe fn vhd_options(
    p: *const ckpt_create_options,
    virtual_size: u64,
) -> FfiResult<Option<crate::VhdOptions>> {
    // SAFETY: forwarded from the caller; the struct has only integers.
    let Some(c) = (unsafe { read_versioned(p, "options", "ckpt_create_options")? }) else {
        return Ok(None);
    };
    if c.flags & CKPT_CREATE_VHD == 0 {
        return Ok(None);
    }
    if c.logical_sector_size != 0 || c.physical_sector_size != 0 || c.log_size != 0 {
        return Err(FfiError::invalid(
            "a VHD (CKPT_CREATE_VHD) has 512-byte sectors and no log: logical_sector_size, \
             physical_sector_size and log_size must be 0"
                .to_string(),
        ));
    }
    let mut o = crate::VhdOptions::new(virtual_size).fixed(c.flags & CKPT_CREATE_FIXED != 0);
    if c.block_size != 0 {
        o = o.block_size(c.block_size);
    }
    Ok(Some(o))
}

pub(crate) fn new_handle(disk: Disk) -> *mut ckpt_disk {
    Box::into_raw(Box::new(ckpt_disk {
        disk: DiskHandle::Owned(disk),
    }))
}

/// Create a new VHDX file (or, with `CKPT_CREATE_VHD` in
/// `options->flags`, a VHD) at `path` (which must not exist yet) holding a
/// virtual disk of `virtual_size` bytes, and open it read-write.
///
/// `options` may be NULL for the defaults (a dynamic disk with 32 MiB
/// blocks, 512-byte logical and 4096-byte physical sectors, a 1 MiB log).
/// On success `*out` receives a new handle to close with
/// `ckpt_disk_close`; on failure `*out` is not written.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`path` or `out` NULL),
/// `CKPT_STATUS_INVALID_ARGUMENT` (bad path string, size or option),
/// `CKPT_STATUS_UNSUPPORTED` (options from a newer header using fields this
/// library does not know), `CKPT_STATUS_IO`, `CKPT_STATUS_NOT_FOUND` (the
/// directory does not exist).
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string; `options` is NULL or points
/// to a readable `ckpt_create_options` of at least `options->struct_size`
/// bytes; `out` is NULL or valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_create(
    path: *const c_char,
    virtual_size: u64,
    options: *const ckpt_create_options,
    out: *mut *mut ckpt_disk,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_create", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let path = unsafe { c_path(path, "path")? };
        // SAFETY: per this function's contract.
        // SAFETY: per this function's contract.
        let disk = match unsafe { vhd_options(options, virtual_size)? } {
            Some(v) => Disk::create_vhd(path, &v)?,
            None => {
                // SAFETY: per this function's contract.
                let opts = unsafe { create_options(options, virtual_size)? };
                Disk::create(path, &opts)?
            }
        };
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(new_handle(disk)) };
        Ok(())
    })
}

/// Open the VHDX file at `path`.
///
/// `flags` is `CKPT_OPEN_READ_ONLY` or `CKPT_OPEN_READ_WRITE`; other bits
/// are rejected. On success `*out` receives a new handle to close with
/// `ckpt_disk_close`; on failure `*out` is not written.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`,
/// `CKPT_STATUS_NOT_FOUND`, `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT` (the
/// file is not a sound VHDX), `CKPT_STATUS_UNSUPPORTED`.
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string; `out` is NULL or valid for
/// writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_open(
    path: *const c_char,
    flags: u32,
    out: *mut *mut ckpt_disk,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_open", {
        let out = out_ptr(out, "out")?;
        // SAFETY: per this function's contract.
        let path = unsafe { c_path(path, "path")? };
        let mode = match flags {
            CKPT_OPEN_READ_ONLY => OpenMode::ReadOnly,
            CKPT_OPEN_READ_WRITE => OpenMode::ReadWrite,
            f => {
                return Err(FfiError::invalid(format!(
                    "flags {f:#x}: expected CKPT_OPEN_READ_ONLY or CKPT_OPEN_READ_WRITE"
                )))
            }
        };
        let disk = Disk::open(path, mode)?;
        // SAFETY: `out` is not NULL and writable per the contract.
        unsafe { out.write(new_handle(disk)) };
        Ok(())
    })
}

/// Fill `*info` with facts about `disk`. Set `info->struct_size` to
/// `sizeof(ckpt_disk_info)` first (see `ckpt_disk_info`). `*info` is
/// written only on success.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_INVALID_ARGUMENT`
/// (`struct_size` smaller than the first version of the struct).
///
/// # Safety
///
/// `disk` is NULL or a live handle; `info` is NULL or points to a
/// `ckpt_disk_info` of at least `info->struct_size` bytes, readable and
/// writable, not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_get_info(
    disk: *const ckpt_disk,
    info: *mut ckpt_disk_info,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_get_info", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        out_ptr(info, "info")?;
        let i = disk.disk.info();
        let value = ckpt_disk_info {
            struct_size: size_of::<ckpt_disk_info>() as u32,
            kind: match i.kind {
                DiskKind::Fixed => ckpt_disk_kind::Fixed,
                DiskKind::Dynamic => ckpt_disk_kind::Dynamic,
                DiskKind::Differencing => ckpt_disk_kind::Differencing,
            },
            virtual_size: i.virtual_size,
            file_size: i.file_size,
            allocated_bytes: i.allocated_bytes,
            block_size: i.block_size,
            logical_sector_size: i.logical_sector_size,
            physical_sector_size: i.physical_sector_size,
            log_dirty: i.log_dirty,
            has_parent: i.kind == DiskKind::Differencing,
            read_only: i.read_only,
            reserved: 0,
            disk_id: *i.disk_id.as_bytes(),
            format: match i.format {
                crate::disk::Format::Vhdx => ckpt_disk_format::Vhdx,
                crate::disk::Format::Vhd => ckpt_disk_format::Vhd,
            },
            reserved2: 0,
        };
        // SAFETY: per this function's contract.
        unsafe { write_versioned_grown(info, value, DISK_INFO_V1, "info", "ckpt_disk_info") }
    })
}

/// Read `len` bytes of the virtual disk at byte `offset` (any alignment)
/// into `buf`. Unallocated ranges read as zeros.
///
/// A request reaching past the end of the disk fails with
/// `CKPT_STATUS_OUT_OF_RANGE` and leaves `buf` untouched; after another
/// failure (`CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`) the contents of `buf`
/// are unspecified. With `len == 0`, `buf` is not touched and may be NULL.
/// Reads never change the disk and may run concurrently with any other
/// call on the handle except `ckpt_disk_close`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk` NULL, or `buf` NULL with
/// `len > 0`), `CKPT_STATUS_OUT_OF_RANGE`, `CKPT_STATUS_IO`,
/// `CKPT_STATUS_CORRUPT` (a damaged allocation table or sector bitmap, or
/// a parent file that changed under the chain).
///
/// # Safety
///
/// `disk` is NULL or a live handle; `buf` is valid for writes of `len`
/// bytes when `len > 0`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_read(
    disk: *const ckpt_disk,
    buf: *mut u8,
    len: usize,
    offset: u64,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_read", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let buf: &mut [u8] = if len == 0 {
            &mut []
        } else {
            let buf = out_ptr(buf, "buf")?;
            // SAFETY: not NULL, `len` writable bytes per the contract, owned
            // by the caller for the duration of the call.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        // The range is checked before anything is read into `buf`.
        disk.disk.read_at(buf, offset)?;
        Ok(())
    })
}

/// Write `len` bytes from `buf` to the virtual disk at byte `offset` (any
/// alignment). On a differencing disk the data goes into the top file
/// only; its parents are never written. Reads on any thread see the data
/// once the call returns; it is durable (survives a power failure) after a
/// later `ckpt_disk_flush` (or `ckpt_disk_close`) returns
/// `CKPT_STATUS_OK`. With `len == 0`, `buf` is not touched and may be
/// NULL. See `ckpt_disk` for concurrent unaligned writes to a differencing
/// disk.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk` NULL, or `buf` NULL with
/// `len > 0`), `CKPT_STATUS_OUT_OF_RANGE` (nothing is written),
/// `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_NO_SPACE` (the file system is
/// full), `CKPT_STATUS_IO`, `CKPT_STATUS_CORRUPT`. After a failure other
/// than `CKPT_STATUS_OUT_OF_RANGE` and `CKPT_STATUS_READ_ONLY`, the range
/// may hold a part of the new data.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `buf` is valid for reads of `len` bytes
/// when `len > 0`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_write(
    disk: *mut ckpt_disk,
    buf: *const u8,
    len: usize,
    offset: u64,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_write", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let data: &[u8] = if len == 0 {
            &[]
        } else if buf.is_null() {
            return Err(FfiError::null("buf"));
        } else {
            // SAFETY: not NULL, `len` readable bytes per the contract.
            unsafe { std::slice::from_raw_parts(buf, len) }
        };
        disk.disk.write_at(data, offset)?;
        Ok(())
    })
}

/// Make every write and trim completed on `disk` before the call (from any
/// thread) durable, metadata and data: after `CKPT_STATUS_OK` they survive
/// a crash or power failure. On a read-only handle there is nothing to do
/// and the result is `CKPT_STATUS_OK`.
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_NO_SPACE`,
/// `CKPT_STATUS_IO` (then it is unknown which writes are durable; a later
/// flush may be tried again).
///
/// # Safety
///
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_flush(disk: *mut ckpt_disk) -> ckpt_status {
    ffi_boundary!("ckpt_disk_flush", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        disk.disk.flush()?;
        Ok(())
    })
}

/// Discard the range `[offset, offset + len)` of the virtual disk (any
/// alignment): afterwards it reads as zeros (on a differencing disk too,
/// whatever its parents hold there), and whole blocks inside it stop using
/// space in the file. Durable after `ckpt_disk_flush`, like a write. Note
/// the argument order: offset, then length (as `ckpt_disk_read` /
/// `ckpt_disk_write` have buffer, length, offset).
///
/// Errors: `CKPT_STATUS_NULL_POINTER`, `CKPT_STATUS_OUT_OF_RANGE`,
/// `CKPT_STATUS_READ_ONLY`, `CKPT_STATUS_NO_SPACE`, `CKPT_STATUS_IO`.
///
/// # Safety
///
/// `disk` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_trim(
    disk: *mut ckpt_disk,
    offset: u64,
    len: u64,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_trim", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        disk.disk.trim(offset, len)?;
        Ok(())
    })
}

/// `ckpt_extent.flags`: no file of the chain holds data for the range (no
/// space is allocated for it). Always set together with
/// `CKPT_EXTENT_ZERO`. The same value as NBD's `NBD_STATE_HOLE` (and
/// nbdkit's `NBDKIT_EXTENT_HOLE`).
pub const CKPT_EXTENT_HOLE: u32 = 1;
/// `ckpt_extent.flags`: the range reads as zeros. The same value as NBD's
/// `NBD_STATE_ZERO` (and nbdkit's `NBDKIT_EXTENT_ZERO`). Only set for
/// holes: an allocated range that happens to hold zeros has no flag.
pub const CKPT_EXTENT_ZERO: u32 = 2;

/// A range of the virtual disk and whether the chain holds data there,
/// filled by `ckpt_disk_extents`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ckpt_extent {
    /// Start in bytes.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub length: u64,
    /// 0 when some file of the chain holds data for the range (it may
    /// still read as zeros); `CKPT_EXTENT_HOLE | CKPT_EXTENT_ZERO` when no
    /// file does and the range reads as zeros (never allocated, or
    /// trimmed). Other bits are 0 in this version; treat unknown bits as
    /// "nothing known".
    pub flags: u32,
    /// Always 0.
    pub reserved: u32,
}

const _: () = assert!(size_of::<ckpt_extent>() == 24);

/// Map `[offset, offset + len)` of the virtual disk: which parts some file
/// of the chain holds data for, and which are holes that read as zeros
/// (what a sparse copy or backup can skip; the NBD `base:allocation`
/// context).
///
/// The extents go into `buf`, which has room for `cap` of them, sorted,
/// contiguous and covering the range exactly: the first starts at
/// `offset`, each next one where the one before ends, and two neighbours
/// never have the same `flags`. The boundaries fall on blocks of the chain
/// (the smallest block size of its files), except that the first and last
/// extent are cut to the range, so there are at most as many extents as
/// blocks the range touches.
///
/// `*out_count` receives the number of extents (0 when `len` is 0). If
/// `cap` is too small, nothing is written to `buf`, `*out_count` is still
/// set and the result is `CKPT_STATUS_BUFFER_TOO_SMALL`: call with
/// `cap = 0` (`buf` may then be NULL) to learn the count, or map a smaller
/// range. Each call reads the allocation tables again, and a write or trim
/// between two calls may change the count; a large disk is best mapped in
/// pieces with a fixed buffer. Like a read, the call may run concurrently
/// with any other call on the handle except `ckpt_disk_close`.
///
/// A block (for the first and last extent: its part inside the range) is
/// data as soon as some file of the chain holds any sector of it, so a
/// data extent may contain zeros, or sectors no file holds; a hole always
/// reads as zeros.
///
/// Errors: `CKPT_STATUS_NULL_POINTER` (`disk` or `out_count` NULL, or `buf`
/// NULL with `cap > 0`), `CKPT_STATUS_OUT_OF_RANGE` (the range reaches past
/// the end of the disk), `CKPT_STATUS_BUFFER_TOO_SMALL`, `CKPT_STATUS_IO`,
/// `CKPT_STATUS_CORRUPT`.
///
/// # Safety
///
/// `disk` is NULL or a live handle; `buf` is NULL or valid for writes of
/// `cap` `ckpt_extent`s; `out_count` is NULL or valid for writing one
/// `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_extents(
    disk: *const ckpt_disk,
    offset: u64,
    len: u64,
    buf: *mut ckpt_extent,
    cap: usize,
    out_count: *mut usize,
) -> ckpt_status {
    ffi_boundary!("ckpt_disk_extents", {
        // SAFETY: per this function's contract.
        let disk = unsafe { non_null(disk, "disk")? };
        let out_count = out_ptr(out_count, "out_count")?;
        if cap > 0 && buf.is_null() {
            return Err(FfiError::null("buf"));
        }
        let extents = disk.disk.extents_in(offset, len)?;
        // SAFETY: not NULL, writable per the contract.
        unsafe { out_count.write(extents.len()) };
        if extents.len() > cap {
            return Err(FfiError::new(
                ckpt_status::BufferTooSmall,
                format!(
                    "{} extents of [{offset}, +{len}) do not fit in a buffer of {cap}",
                    extents.len()
                ),
            ));
        }
        for (i, e) in extents.iter().enumerate() {
            let value = ckpt_extent {
                offset: e.offset,
                length: e.length,
                flags: if e.allocated {
                    0
                } else {
                    CKPT_EXTENT_HOLE | CKPT_EXTENT_ZERO
                },
                reserved: 0,
            };
            // SAFETY: `i < extents.len() <= cap`, and `buf` (not NULL here,
            // since cap > 0 when there is an extent) has `cap` writable
            // slots owned by the caller.
            unsafe { buf.add(i).write(value) };
        }
        Ok(())
    })
}

/// Flush, leave an empty log, close the file and free the handle.
///
/// The handle is freed whatever the status: do not use it again. A
/// non-OK status means the final flush failed, so writes since the last
/// successful `ckpt_disk_flush` may be lost. `disk` may be NULL (then
/// nothing happens and the result is `CKPT_STATUS_OK`). A handle borrowed
/// from a VM (`ckpt_vm_disk`) is refused with
/// `CKPT_STATUS_INVALID_ARGUMENT` and stays valid: `ckpt_vm_close` closes
/// it.
///
/// # Safety
///
/// `disk` is NULL or a live handle from `ckpt_disk_create` /
/// `ckpt_disk_open` (or `ckpt_vm_disk`) that is not closed yet and that no
/// other thread is using.
#[no_mangle]
pub unsafe extern "C" fn ckpt_disk_close(disk: *mut ckpt_disk) -> ckpt_status {
    ffi_boundary!("ckpt_disk_close", {
        if disk.is_null() {
            return Ok(());
        }
        // SAFETY: a live handle per the contract.
        if matches!(unsafe { &(*disk).disk }, DiskHandle::Live(_)) {
            return Err(FfiError::invalid(
                "this disk handle is borrowed from its VM (ckpt_vm_disk): ckpt_vm_close \
                 closes it",
            ));
        }
        // SAFETY: a live handle made by `new_handle` (Box::into_raw), given
        // back exactly once per the contract.
        let handle = unsafe { Box::from_raw(disk) };
        if let DiskHandle::Owned(d) = handle.disk {
            d.close()?;
        }
        Ok(())
    })
}
