//! Merging a differencing VHD into its parent (VHD has no DataWriteGuid
//! to announce, so the VHDX merge protocol does not apply).
//!
//! The child's own sectors (exactly those its bitmaps hold) are written
//! into the parent, which is flushed; then the child's own children (the
//! descendants) are re-pointed at the parent, each synced; then the child
//! is removed. Until the removal the child still links to the parent (the
//! parent's unique id and footer timestamp never change), and every sector
//! the parent changed is one the child holds, so an interrupted merge
//! leaves a chain that reads the same, and a descendant reads the same
//! through the child or through the merged parent; running it again
//! finishes it. With the descendants given by a caller that knows the tree
//! ([`MergeOptions::descendants`]), the child is kept for the caller to
//! remove once it has recorded the merge: a VHD has no DataWriteGuid whose
//! change would show afterwards that the merge happened. Refused: a merge
//! into another ancestor than the parent; without that list (a merge of
//! files, `ckpt merge`), a child that has children of its own (after a
//! crash between two re-points, the children already re-pointed could not
//! be told from the parent's other children, so a second run could not
//! finish) and a parent with other children; layers of different sizes.

use std::path::{Path, PathBuf};

use super::merge::{find_children_in, MergeOptions, MergeReport};
use super::{extents, Disk, OpenMode};
use crate::error::{Error, Result};

/// Bytes copied per step.
const STEP: u64 = 4 << 20;

/// Merge the differencing VHD `child` into its parent (see the module doc).
pub(super) fn merge(child: &Path, mut opts: MergeOptions) -> Result<MergeReport> {
    let view = Disk::open(child, OpenMode::ReadOnly)?;
    let chain: Vec<PathBuf> = view.chain().into_iter().flatten().collect();
    if chain.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "{} is not a differencing disk: there is nothing to merge it into",
            child.display()
        )));
    }
    let dest = chain[1].clone();
    if let Some(into) = &opts.into {
        if std::fs::canonicalize(into).ok() != std::fs::canonicalize(&dest).ok() {
            return Err(Error::Unsupported(
                "a VHD merges into its parent only (merge one layer at a time)".into(),
            ));
        }
    }
    if view.layers[1].file.geo.virtual_size != view.virtual_size() {
        return Err(Error::Unsupported(
            "merging VHD layers of different sizes".into(),
        ));
    }
    drop(view);
    let dirs: Vec<PathBuf> = [child, dest.as_path()]
        .iter()
        .filter_map(|p| {
            std::fs::canonicalize(p)
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        })
        .collect();
    let below = match &opts.descendants {
        Some(d) => d.clone(),
        None => find_children_in(child, &dirs)?,
    };
    if opts.descendants.is_none() && !below.is_empty() {
        return Err(Error::Unsupported(format!(
            "merging a VHD that has children ({}): merge them first",
            below
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let me = std::fs::canonicalize(child)?;
    let siblings: Vec<PathBuf> = find_children_in(&dest, &dirs)?
        .into_iter()
        .filter(|c| std::fs::canonicalize(c).ok().as_ref() != Some(&me))
        .collect();
    if opts.descendants.is_none() && !siblings.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "refusing to merge {}: {} is also the parent of {}, which would be broken",
            child.display(),
            dest.display(),
            siblings
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // The child alone (read-only), the parent's chain read-write.
    let src = Disk::open_single(child)?;
    let ranges = extents::layer_ranges(&src.layers[0].file).map_err(|e| e.in_file(child))?;
    let total: u64 = ranges.iter().map(|r| r.length).sum();
    let d = Disk::open(&dest, OpenMode::ReadWrite)?;
    let mut buf = vec![0u8; STEP as usize];
    let mut done = 0u64;
    for r in &ranges {
        let mut pos = r.offset;
        while pos < r.offset + r.length {
            let n = STEP.min(r.offset + r.length - pos) as usize;
            src.read_at(&mut buf[..n], pos)?;
            d.write_at(&buf[..n], pos)?;
            pos += n as u64;
            done += n as u64;
            if let Some(p) = opts.progress.as_mut() {
                if !p(done, total) {
                    d.flush()?;
                    return Err(Error::Cancelled);
                }
            }
        }
    }
    d.close()?;
    drop(src);
    let repointed = repoint_vhd(&below, &dest)?;
    let removed = if opts.descendants.is_some() {
        Vec::new()
    } else {
        std::fs::remove_file(child).map_err(|e| Error::from(e).in_file(child))?;
        vec![child.to_path_buf()]
    };
    Ok(MergeReport {
        destination: dest,
        removed,
        repointed,
        bytes_copied: total,
    })
}

/// Point each differencing VHD in `descendants` at `dest` (its new header
/// and locators in fresh space, then its footer: `vhd/relink.rs`). A
/// descendant that already names `dest` is left as it is.
pub(crate) fn repoint_vhd(descendants: &[PathBuf], dest: &Path) -> Result<Vec<PathBuf>> {
    let parent = super::merge::open_single(dest, false)?;
    let Some(pv) = parent.as_vhd() else {
        return Err(Error::Unsupported(format!(
            "{}: a VHD's descendants can only be re-pointed at a VHD",
            dest.display()
        )));
    };
    let mut out = Vec::new();
    for x in descendants {
        let f = super::merge::open_single(x, true)?;
        let Some(v) = f.as_vhd() else {
            return Err(Error::Unsupported(format!(
                "{}: a VHDX cannot have a VHD parent (mixed chains are refused)",
                x.display()
            )));
        };
        let spec = super::chain::vhd_parent_spec(x, dest, pv)?;
        v.set_parent(&spec).map_err(|e| e.in_file(x))?;
        f.close().map_err(|e| e.in_file(x))?;
        out.push(x.clone());
    }
    Ok(out)
}
