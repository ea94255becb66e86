//! A VM's checkpoint tree to and from Ceph RBD, through the `rbd` tool and
//! the streams of [`crate::rbd`]:
//!
//! - `names.rs`: image and snapshot names (a checkpoint name mapped to a
//!   valid snapshot name);
//! - `tool.rs`: [`RbdTool`], the `rbd` command run as a child process;
//! - `plan.rs`: which images a tree becomes (the main line, branches as
//!   clones);
//! - `export.rs`: [`Vm::export_rbd`](crate::checkpoint::Vm::export_rbd),
//!   incremental, resumable and verified;
//! - `import.rs`: [`import_rbd`], images with snapshots back into a new VM;
//! - `stream.rs`: [`Vm::write_rbd_diff`](crate::checkpoint::Vm::write_rbd_diff),
//!   one disk's diff between two points as a stream.
//!
//! Depends on `crate::rbd`, `crate::disk` and the rest of
//! `crate::checkpoint` (the changes between two points); never on `ffi`
//! or the CLI.

mod export;
mod import;
pub mod names;
pub mod plan;
mod stream;
pub mod tool;

pub use export::{RbdExportOptions, RbdExportReport, RbdImageReport};
pub use import::{import_rbd, RbdImportOptions};
pub use tool::RbdTool;
