//! VMs and the checkpoint tree (a later milestone).
//!
//! This layer will know files, chains and the tree, not bytes: it sits on
//! top of [`crate::disk`] and below the C ABI and the CLI.
pub mod export;
pub mod json;
pub mod model;
pub mod owner;
pub mod vm;

pub use export::export_names;
pub use model::{
    same_name, Checkpoint, CheckpointType, Current, Journal, Settings, TakenType, VmConfig, VmFile,
    VmState,
};
pub use vm::{
    checkpoint_location_of, list_of, strays_of, CheckpointView, Hooks, NoHooks, Vm, VmSpec,
    MAX_NAME_CHARS,
};
