//! A whole image with its snapshots as `rbd export --export-format 2`
//! writes it and `rbd import --export-format 2` reads it (Ceph's
//! `doc/dev/rbd-export.rst`): [`write_image_v2`].
//!
//! Layout (integers little-endian; every metadata record is a tag, a le64
//! length of its data, and the data):
//!
//! ```text
//! "rbd image v2\n"
//! 'O' le64 8, le64 order          object size 2^order
//! 'E'                             end of the metadata (no length)
//! "rbd image diffs v2\n"
//! le64 count                      then `count` "rbd diff v2" streams:
//!   "rbd diff v2\n", 'f'/'t'/'s'/'w'/'z' records (tag, le64 length,
//!   data: the v1 fields), 'e'
//! ```
//!
//! One diff per snapshot, oldest first (the first from nothing, each next
//! one from the snapshot before it, with a `t` record naming the snapshot),
//! then one for the head (no `t`). Only the order is written among the
//! image's metadata: the importer takes its defaults for the features and
//! the striping. The optional snapshot protection record is not written.

use std::io::Write;

use super::diff::{DiffStats, DiffWriter};
use super::stream::{clip, write_records, DiffNames};
use crate::disk::merge::Range;
use crate::disk::Disk;
use crate::error::{Error, Result};

/// The first bytes of an export-format 2 image.
pub const IMAGE_V2_HEADER: &[u8; 13] = b"rbd image v2\n";
/// The header of the image's diff section.
pub const IMAGE_DIFFS_V2_HEADER: &[u8; 19] = b"rbd image diffs v2\n";

/// One state of the image: a snapshot, or the head (`snap` None, last).
pub struct ImageState<'a> {
    /// The snapshot name (None: the head).
    pub snap: Option<&'a str>,
    /// The disk holding the state.
    pub disk: &'a Disk,
    /// The ranges that differ from the state before (for the first, its
    /// allocated ranges).
    pub ranges: Vec<Range>,
}

/// Write `states` (snapshots oldest first, then the head) as an
/// export-format 2 image with objects of 2^`order` bytes (12 to 25).
pub fn write_image_v2<W: Write>(
    states: &[ImageState<'_>],
    order: u8,
    mut out: W,
) -> Result<DiffStats> {
    if !(12..=25).contains(&order) {
        return Err(Error::InvalidArgument(format!(
            "object order {order}: RBD takes 12 (4 KiB) to 25 (32 MiB)"
        )));
    }
    if states.is_empty() || states[..states.len() - 1].iter().any(|s| s.snap.is_none()) {
        return Err(Error::InvalidArgument(
            "an image is its snapshots then its head: only the last state may be the head".into(),
        ));
    }
    let mut total = DiffStats::default();
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(IMAGE_V2_HEADER);
    head.push(b'O');
    head.extend_from_slice(&8u64.to_le_bytes());
    head.extend_from_slice(&(order as u64).to_le_bytes());
    head.push(b'E');
    head.extend_from_slice(IMAGE_DIFFS_V2_HEADER);
    head.extend_from_slice(&(states.len() as u64).to_le_bytes());
    out.write_all(&head)?;
    total.stream_bytes += head.len() as u64;
    let mut prev: Option<&str> = None;
    for s in states {
        let ranges = clip(&s.ranges, s.disk.virtual_size());
        let mut w = DiffWriter::new_v2(&mut out)?;
        let names = DiffNames {
            from_snap: prev,
            to_snap: s.snap,
        };
        let st = write_records(&mut w, s.disk, &ranges, names, &mut |_, _| true)?;
        total.add(&st);
        prev = s.snap;
    }
    out.flush()?;
    Ok(total)
}
