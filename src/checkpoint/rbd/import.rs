//! [`import_rbd`]: RBD images with snapshots back into a new VM, one disk
//! per image and one checkpoint per snapshot.
//!
//! Each image's first snapshot fills a new base VHDX (`rbd export-diff
//! IMAGE@SNAP`); the VM is created on these disks and a checkpoint taken,
//! named after the snapshot; each later snapshot is applied to the
//! current disks (`rbd export-diff --from-snap PREV IMAGE@SNAP`, a new
//! AVHDX per checkpoint) and checkpointed in turn; the image's head
//! becomes the current state. The images must have the same snapshots,
//! in the same order (they are the disks of one VM). Clones are imported
//! as the images they read as (their parents' data included in the first
//! snapshot); the tree built is one line.

use std::path::{Path, PathBuf};

use super::tool::RbdTool;
use crate::checkpoint::create::NoHooks;
use crate::checkpoint::vm::{Vm, VmSpec};
use crate::disk::resize::ResizeOptions;
use crate::disk::{CreateOptions, Disk, OpenMode};
use crate::error::{Error, Result};
use crate::rbd::stream::apply_diff;

/// What [`import_rbd`] is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RbdImportOptions {
    /// The new VM's name.
    pub name: String,
    /// The `rbd` tool and the cluster it talks to.
    pub tool: RbdTool,
}

/// Import `images` (each POOL/IMAGE) as the disks of a new VM in folder
/// `dir` (see the module's documentation). The base disks go into `dir`,
/// named after the images. A failure leaves what was made in `dir`:
/// remove it and import again.
pub fn import_rbd(
    images: &[String],
    dir: &Path,
    opts: &RbdImportOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vm> {
    let tool = &opts.tool;
    if images.is_empty() {
        return Err(Error::InvalidArgument(
            "name at least one POOL/IMAGE".into(),
        ));
    }
    let mut snaps: Option<Vec<String>> = None;
    for img in images {
        if img.contains('@') || !img.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "{img:?}: give images as POOL/IMAGE (without a snapshot)"
            )));
        }
        let s: Vec<String> = tool
            .snaps(img)?
            .ok_or_else(|| Error::NotFound(format!("there is no image {img}")))?
            .into_iter()
            .map(|s| s.name)
            .collect();
        match &snaps {
            None => snaps = Some(s),
            Some(first) if *first != s => {
                return Err(Error::InvalidArgument(format!(
                    "{img} has the snapshots {s:?}, {} has {first:?}: the disks of one VM must \
                     have the same snapshots",
                    images[0]
                )))
            }
            Some(_) => {}
        }
    }
    let snaps = snaps.unwrap_or_default();
    std::fs::create_dir_all(dir).map_err(|e| Error::from(e).in_file(dir))?;
    // The base disks, filled with the first snapshot (or the head).
    let mut disks: Vec<PathBuf> = Vec::with_capacity(images.len());
    for img in images {
        let leaf = img.rsplit('/').next().unwrap_or(img);
        let path = dir.join(format!("{leaf}.vhdx"));
        if path.exists() {
            return Err(Error::AlreadyExists(format!("{} exists", path.display())));
        }
        let spec = match snaps.first() {
            Some(s) => format!("{img}@{s}"),
            None => img.clone(),
        };
        let size = tool
            .info(&spec)?
            .ok_or_else(|| Error::NotFound(format!("there is no image {spec}")))?
            .size;
        progress(&format!(
            "{spec}: base disk {} ({size} bytes)",
            path.display()
        ));
        let d = Disk::create(&path, &CreateOptions::new(size))?;
        tool.export_diff(&spec, None, |r| apply_diff(&d, r))?;
        d.close()?;
        disks.push(path);
    }
    let mut vm = Vm::create(dir, &VmSpec::new(&opts.name, disks))?;
    for (i, snap) in snaps.iter().enumerate() {
        if i > 0 {
            fill(
                &mut vm,
                tool,
                images,
                Some(&snaps[i - 1]),
                Some(snap),
                progress,
            )?;
        }
        vm.create_checkpoint(snap, None, &mut NoHooks)?;
        progress(&format!("checkpoint {snap:?} taken"));
    }
    if let Some(last) = snaps.last() {
        fill(&mut vm, tool, images, Some(last), None, progress)?;
    }
    Ok(vm)
}

/// Apply each image's diff from snapshot `from` to `to` (None: the head)
/// to the VM's current disks, resizing a disk first when the size changed.
fn fill(
    vm: &mut Vm,
    tool: &RbdTool,
    images: &[String],
    from: Option<&str>,
    to: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    for (k, img) in images.iter().enumerate() {
        let spec = match to {
            Some(s) => format!("{img}@{s}"),
            None => img.clone(),
        };
        let size = tool
            .info(&spec)?
            .ok_or_else(|| Error::NotFound(format!("there is no image {spec}")))?
            .size;
        let cur = vm.data().current.disks[k].clone();
        let have = Disk::open(&cur, OpenMode::ReadOnly)?.virtual_size();
        if have != size {
            vm.resize_disk(k, size, ResizeOptions { allow_shrink: true })?;
        }
        progress(&format!("{spec}: applying the changes since {from:?}"));
        let d = Disk::open(&cur, OpenMode::ReadWrite)?;
        tool.export_diff(&spec, from, |r| apply_diff(&d, r))?;
        d.close()?;
    }
    Ok(())
}
