//! VMs and the checkpoint tree: a VM folder's `vm.json`, its checkpoints
//! and their disks, and every operation on them (create, apply, revert,
//! delete = merge, rename, export), each journaled so that a crash at any
//! point is finished or undone on the next open.
//!
//! This layer knows files, chains and the tree, not bytes: it uses
//! [`crate::disk`] (open disks, children, merges) and [`crate::io`] only
//! through it, and must not depend on `ffi` or the CLI, which sit on top.
//!
//! The files, each an `impl Vm` block or the data it works on:
//! - `model.rs`: what `vm.json` and `journal.json` hold (tree, settings,
//!   state, the journal's steps) and their atomic writes;
//! - `json.rs`: the JSON the CLI and the C API show (`vm show`, `list`);
//! - `owner.rs`: which VM owns a disk file (stamps), moved and copied VM
//!   folders, paths stored relative to the VM folder;
//! - `vm.rs`: the [`Vm`] handle: create, open (adopting a moved or copied
//!   folder), state and settings, lookups, saving and journaling;
//! - `create.rs`: [`Hooks`], taking a checkpoint, apply, revert, rename;
//! - `delete.rs`: delete (the checks before it, the merges, keeping a shared
//!   layer hidden) and the collapse of hidden branch points;
//! - `recover.rs`: reconcile after a crash (finish or undo the journaled
//!   step, an interrupted merge) and the old files left to remove;
//! - `report.rs`: the checkpoint list, the checkpoint location, strays;
//! - `export.rs`: export (the file names it gives, and [`Vm::export`]);
//! - `live.rs`: an attached VM: its live disk handles ([`Vm::disk`]) and
//!   the switches of checkpoint operations on a running guest.
//! - `live_export.rs`: export of a running VM's current state through a
//!   temporary checkpoint.
//! - `backup/`: incremental backup: the export manifest, the changes
//!   between two points ([`Vm::changes`]), incremental export
//!   ([`Vm::export_incremental`]) and the restore check
//!   ([`backup::verify_backup`]).
//! - `resize.rs`: resizing a disk of the current state ([`Vm::resize_disk`]).
//! - `space.rs`: compaction of a current disk ([`Vm::compact_disk`]),
//!   live when the VM is attached.
//! - `rbd/`: the tree to and from Ceph RBD images ([`Vm::export_rbd`],
//!   [`rbd::import_rbd`], [`Vm::write_rbd_diff`]).
//! - `by_id.rs`: find, apply, delete, rename and export by stable id.
//! - `control/`: the control channel, a Unix socket through which other
//!   processes of the same user run these operations on the holder's `Vm`.
pub mod backup;
mod by_id;
pub mod control;
mod create;
mod delete;
pub mod export;
pub mod json;
mod live;
mod live_export;
pub mod model;
pub mod owner;
pub mod rbd;
mod recover;
mod report;
mod resize;
mod space;
pub mod vm;

pub use create::{Hooks, NoHooks};
pub use export::export_names;
pub use live_export::EXPORT_CHECKPOINT_NAME;
pub use model::{
    same_name, Checkpoint, CheckpointType, Current, Journal, ReferenceDisk, ReferencePoint,
    Settings, TakenType, VmConfig, VmFile, VmRole, VmState,
};
pub use report::{checkpoint_location_of, list_of, strays_of, CheckpointView};
pub use vm::{Vm, VmSpec, MAX_NAME_CHARS};
