//! # libckpt
//!
//! A pure-Rust engine for Hyper-V virtual disks (VHDX) with a checkpoint
//! tree on top, usable from Rust and, through `include/libckpt.h`, from C.
//!
//! Layers, each depending only on the ones before it:
//! [`io`] (storage) → [`format`](mod@format) (on-disk structures) → [`disk`] (an open
//! virtual disk) → [`rbd`] (Ceph RBD streams of a disk) → [`checkpoint`] (checkpoint tree)
//! → [`monitor`] (reports for monitoring systems) → `ffi` (C ABI) and the `ckpt` CLI.
//!
//! ```
//! use ckpt::{CreateOptions, Disk, OpenMode};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("disk.vhdx");
//! let disk = Disk::create(&path, &CreateOptions::new(64 << 20))?;
//! disk.write_at(b"hello", 4096)?;
//! disk.close()?;
//!
//! let disk = Disk::open(&path, OpenMode::ReadOnly)?;
//! let mut buf = [0u8; 5];
//! disk.read_at(&mut buf, 4096)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), ckpt::Error>(())
//! ```

#![warn(missing_docs)]
// `unsafe` only where audited: the C ABI (`ffi`), the system calls in
// `io/platform.rs` and the guarded mapped reads of `io/mapped.rs`, each
// allowed where it is declared.
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod disk;
mod error;
// The C ABI takes raw pointers from C and exports unmangled symbols:
// necessarily unsafe, fenced in this one module.
#[allow(unsafe_code)]
pub mod ffi;
pub mod format;
pub mod io;
pub mod monitor;
pub mod rbd;
mod version;

pub use disk::check::{check, check_storage, CheckReport};
pub use disk::compact::{CompactMode, CompactOptions, CompactReport};
pub use disk::in_place::{InPlaceOptions, InPlaceReport};
pub use disk::live::LiveDisk;
pub use disk::resize::{ResizeOptions, ResizeReport};
pub use disk::{
    ChildOptions, CreateOptions, Disk, DiskCursor, DiskInfo, DiskKind, Extent, Format, OpenMode,
    VhdOptions,
};
pub use error::{Corruption, Error, ErrorKind, Reason, Result, Structure};

pub use version::VERSION;
