//! VMs and the checkpoint tree: a VM folder's `vm.json`, its checkpoints
//! and their disks, and every operation on them (create, apply, revert,
//! delete = merge, rename, export), each journaled so that a crash at any
//! point is finished or undone on the next open.
//!
//! This layer knows files, chains and the tree, not bytes: it uses
//! [`crate::disk`] (open disks, children, merges) and [`crate::io`] only
//! through it, and must not depend on `ffi` or the CLI, which sit on top.
mod create;
mod delete;
pub mod export;
pub mod json;
pub mod model;
pub mod owner;
mod recover;
mod report;
pub mod vm;

pub use create::{Hooks, NoHooks};
pub use export::export_names;
pub use model::{
    same_name, Checkpoint, CheckpointType, Current, Journal, Settings, TakenType, VmConfig, VmFile,
    VmState,
};
pub use report::{checkpoint_location_of, list_of, strays_of, CheckpointView};
pub use vm::{Vm, VmSpec, MAX_NAME_CHARS};
