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
//! - `reference.rs`: reference points ([`Vm::convert_to_reference`](crate::checkpoint::Vm::convert_to_reference)),
//!   what the changes since one are and how merges keep them exact;
//! - `map.rs`: the change map file of a reference point's disk.
//!
//! The point an incremental starts from (REF) is a checkpoint of the tree
//! or a reference point; [`Point`] names it by id (a reference point keeps
//! the id of the checkpoint it was, so an export of that checkpoint is the
//! base of an incremental since the reference point).
//!
//! Depends on `crate::disk` (open chains, changed ranges, children) and the
//! rest of `crate::checkpoint`; never on `ffi` or the CLI.

mod changes;
pub(crate) mod incremental;
pub(crate) mod manifest;
pub mod map;
pub mod reference;
mod verify;

pub use changes::changes_between;
pub use manifest::{read_manifest, Manifest, ManifestDisk, Point, MANIFEST_KEY};
pub use map::ChangeMap;
pub use reference::{references_of, ReferenceView, REFERENCES_DIR};
pub use verify::{verify_backup, DiskVerdict};
