//! [`import_rbd`]: RBD images with snapshots back into a new VM, one disk
//! per image and one checkpoint per snapshot.
//!
//! Each image's first snapshot fills a new base VHDX (`rbd export-diff
//! IMAGE@SNAP`); the VM is created on these disks and a checkpoint taken,
//! named after the snapshot; each later snapshot is applied to the
//! current disks (`rbd export-diff --from-snap PREV IMAGE@SNAP`, a new
//! AVHDX per checkpoint) and checkpointed in turn; the image's head
//! becomes the current state. The images must have the same snapshots,
//! in the same order (they are the disks of one VM).
//!
//! Branches: the clones of each snapshot (`rbd children`) become branches
//! of the tree, as `export-rbd` makes them: a clone per disk, image K's
//! named as image 0's with its name in place of image 0's (export-rbd's
//! `PREFIX-diskK--SNAP`; with one disk any clone), with the same
//! snapshots. The branch point is applied, each clone's first snapshot
//! is written over it keeping only what differs (a clone's stream holds
//! its parent's data too), each later one applied in turn, one checkpoint
//! per snapshot; clones of a clone's snapshots likewise. A clone's head is
//! not imported (export-rbd leaves it at its last snapshot). A branch whose
//! clones do not match across the disks is left out, with a message. Given
//! a clone as an image, it is imported as the image it reads as.

use std::path::{Path, PathBuf};

use super::tool::RbdTool;
use crate::checkpoint::create::NoHooks;
use crate::checkpoint::vm::{Vm, VmSpec};
use crate::disk::resize::ResizeOptions;
use crate::disk::{CreateOptions, Disk, OpenMode};
use crate::error::{Error, Result};
use crate::rbd::stream::{apply_diff, apply_diff_over};

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
    line(&mut vm, tool, images, &snaps, false, progress)?;
    let moved = branches(&mut vm, tool, images, &snaps, progress)?;
    if let Some(last) = snaps.last() {
        if moved {
            vm.apply(last, None, &mut NoHooks)?;
        }
        fill(&mut vm, tool, images, Some(last), None, progress)?;
    }
    Ok(vm)
}

/// One checkpoint per snapshot of `images`, each filled from the one
/// before; the first is already in the current disks, or (`over`) is
/// written over them keeping only what differs.
fn line(
    vm: &mut Vm,
    tool: &RbdTool,
    images: &[String],
    snaps: &[String],
    over: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    for (i, snap) in snaps.iter().enumerate() {
        if i > 0 {
            fill(vm, tool, images, Some(&snaps[i - 1]), Some(snap), progress)?;
        } else if over {
            fill_over(vm, tool, images, snap, progress)?;
        }
        vm.create_checkpoint(snap, None, &mut NoHooks)?;
        progress(&format!("checkpoint {snap:?} taken"));
    }
    Ok(())
}

/// The clones of `images`' snapshots `snaps` as branches (see the module
/// documentation); whether any was imported (the current state moved).
fn branches(
    vm: &mut Vm,
    tool: &RbdTool,
    images: &[String],
    snaps: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<bool> {
    let mut moved = false;
    for snap in snaps {
        for clones in clones_of(tool, images, snap, progress)? {
            let csnaps = same_snaps(tool, &clones)?;
            let Some(csnaps) = csnaps.filter(|s| !s.is_empty()) else {
                progress(&format!(
                    "{}: a clone without snapshots (or disks that differ): not imported",
                    clones[0]
                ));
                continue;
            };
            progress(&format!("{}: a branch at {snap:?}", clones[0]));
            vm.apply(snap, None, &mut NoHooks)?;
            moved = true;
            line(vm, tool, &clones, &csnaps, true, progress)?;
            branches(vm, tool, &clones, &csnaps, progress)?;
        }
    }
    Ok(moved)
}

/// The branches at `images[k]@snap`: one clone per disk each.
fn clones_of(
    tool: &RbdTool,
    images: &[String],
    snap: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Vec<String>>> {
    let per_disk: Vec<Vec<String>> = images
        .iter()
        .map(|img| tool.children(&format!("{img}@{snap}")))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for c0 in &per_disk[0] {
        if images.len() == 1 {
            out.push(vec![c0.clone()]);
            continue;
        }
        let Some(suffix) = c0.strip_prefix(images[0].as_str()) else {
            progress(&format!(
                "{c0}: a clone not named after {}: not imported",
                images[0]
            ));
            continue;
        };
        let set: Option<Vec<String>> = images
            .iter()
            .zip(&per_disk)
            .map(|(img, kids)| {
                let want = format!("{img}{suffix}");
                kids.contains(&want).then_some(want)
            })
            .collect();
        match set {
            Some(s) => out.push(s),
            None => progress(&format!(
                "{c0}: not every disk has its clone ({}{suffix}, …): not imported",
                images[1]
            )),
        }
    }
    Ok(out)
}

/// The snapshot names of `images` when they all have the same ones.
fn same_snaps(tool: &RbdTool, images: &[String]) -> Result<Option<Vec<String>>> {
    let mut first: Option<Vec<String>> = None;
    for img in images {
        let s: Vec<String> = tool
            .snaps(img)?
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.name)
            .collect();
        match &first {
            None => first = Some(s),
            Some(f) if *f != s => return Ok(None),
            Some(_) => {}
        }
    }
    Ok(first)
}

/// Write each clone's snapshot `snap` whole over the current disks (a
/// child of its branch point), keeping only what differs.
fn fill_over(
    vm: &mut Vm,
    tool: &RbdTool,
    images: &[String],
    snap: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    for (k, img) in images.iter().enumerate() {
        let spec = format!("{img}@{snap}");
        let size = tool
            .info(&spec)?
            .ok_or_else(|| Error::NotFound(format!("there is no image {spec}")))?
            .size;
        let cur = vm.data().current.disks[k].clone();
        if Disk::open(&cur, OpenMode::ReadOnly)?.virtual_size() != size {
            vm.resize_disk(k, size, ResizeOptions { allow_shrink: true })?;
        }
        progress(&format!(
            "{spec}: writing what differs from its branch point"
        ));
        let d = Disk::open(&cur, OpenMode::ReadWrite)?;
        tool.export_diff(&spec, None, |r| apply_diff_over(&d, r))?;
        d.close()?;
    }
    Ok(())
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
