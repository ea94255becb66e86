//! User metadata items of one VHDX file ([MS-VHDX] 2.6.1: items with the
//! IsUser flag, which other readers ignore): read one by its GUID, or set
//! it through the log (one atomic metadata update, the DataWriteGuid
//! unchanged, so children of the file stay linked to it).
//!
//! Knows one file's metadata, not chains or checkpoints.

use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use crate::disk::merge::look_at;
use crate::disk::{open_file, vhdx::Vhdx};
use crate::error::Result;
use crate::format::metadata::{EntryFlags, Metadata, MetadataEntry};

/// The bytes of the user item `id` in `m`, if any.
fn find(m: &Metadata, id: &Uuid) -> Option<Vec<u8>> {
    m.other_items
        .iter()
        .find(|(e, _)| e.item_id == *id && e.flags.contains(EntryFlags::IS_USER))
        .map(|(_, d)| d.clone())
}

/// The user item `id` of the file `path` (opened alone, read-only; one
/// that a writer holds is read unlocked: [`look_at`]).
pub(crate) fn user_item(path: &Path, id: &Uuid) -> Result<Option<Vec<u8>>> {
    let f = look_at(path)?;
    // A VHD has no metadata items.
    Ok(f.as_vhdx().and_then(|f| find(&f.metadata(), id)))
}

/// Set the user item `id` of the file `path` to `data` (neither required
/// nor part of the virtual disk: a copy or a conversion does not carry it).
/// Nothing is written when it already holds `data`.
pub(crate) fn set_user_item(path: &Path, id: &Uuid, data: &[u8]) -> Result<()> {
    let s = open_file(path, true)?;
    let f = Vhdx::open(Arc::new(s), false).map_err(|e| e.in_file(path))?;
    let mut m = f.metadata();
    if find(&m, id).as_deref() == Some(data) {
        return Ok(());
    }
    m.other_items
        .retain(|(e, _)| !(e.item_id == *id && e.flags.contains(EntryFlags::IS_USER)));
    let entry = MetadataEntry {
        item_id: *id,
        offset: 0,
        length: data.len() as u32,
        flags: EntryFlags::IS_USER,
    };
    m.other_items.push((entry, data.to_vec()));
    f.set_metadata(m).map_err(|e| e.in_file(path))?;
    f.close().map_err(|e| e.in_file(path))
}
