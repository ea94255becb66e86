//! Incremental backup: a backup set is one full export plus a chain of
//! incremental exports, each a folder whose disks are differencing VHDX
//! files on the disks of the export before it, so that the newest folder's
//! disks open (with libckpt, libvhdi or Hyper-V) as the VM at the point it
//! captured.
//!
//! - `manifest.rs`: what an export records about itself in its
//!   `config.json` (the point it captured, the disks and their
//!   DataWriteGuids), and the checks a `--base` must pass;
//! - `changes.rs`: the ranges that differ between two points of the tree
//!   ([`Vm::changes`](crate::checkpoint::Vm::changes)), through their
//!   common ancestor when they are on different branches;
//! - `incremental.rs`: [`Vm::export_incremental`](crate::checkpoint::Vm::export_incremental);
//! - `verify.rs`: [`verify_backup`], the restore check of a backup set.
//!
//! Part 1 of issue 15: the point an incremental starts from (REF) is a
//! checkpoint of the tree. Reference points (a checkpoint whose disks were
//! merged away, kept only to answer "what changed since") are not there
//! yet: [`Point`] names REF by id, so that a manifest can name a reference
//! point the same way later.
//!
//! Depends on `crate::disk` (open chains, changed ranges, children) and the
//! rest of `crate::checkpoint`; never on `ffi` or the CLI.

mod changes;
pub(crate) mod incremental;
pub(crate) mod manifest;
mod verify;

pub use changes::changes_between;
pub use manifest::{read_manifest, Manifest, ManifestDisk, Point, MANIFEST_KEY};
pub use verify::{verify_backup, DiskVerdict};
