//! Ceph RBD streams: the "rbd diff v1" format of `rbd export-diff` and
//! `rbd import-diff` (`diff.rs`: records, writer, reader), whole images with
//! their snapshots as `rbd export --export-format 2` (`image.rs`), and a disk state
//! written as, or filled from, such a stream (`stream.rs`).
//!
//! This module knows disks and bytes, not checkpoints: which ranges a
//! stream carries is decided by the caller. Exporting a VM's checkpoint
//! tree to RBD images and importing it back (driving the `rbd` tool) is in
//! [`crate::checkpoint::rbd`].

pub mod diff;
pub mod image;
pub mod stream;

pub use diff::{DiffReader, DiffRecord, DiffStats, DiffWriter, DIFF_V1_HEADER};
pub use stream::{
    allocated_ranges, apply_diff, apply_diff_over, write_disk_diff, AppliedDiff, DiffNames,
};
