//! Operations on chains: merge, flatten and re-parent (changed ranges:
//! [`Disk::changed_ranges`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::chain::{self, locator_of};
use crate::disk::extents::CHUNK;
pub use crate::disk::extents::{coalesce, Range};
use crate::disk::image::Image;
use crate::disk::span::spans;
use crate::disk::vhdx::{Src, Vhdx};
use crate::disk::{open_file, CreateOptions, Disk, Layer, OpenMode};
use crate::error::{Error, Result};
use crate::format::locator;

/// Progress callback: `(bytes done, bytes total)`; return `false` to cancel.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64) -> bool;

/// Flatten the chain under `src` into a new standalone VHDX at `dst` (which
/// must not exist). `opts.virtual_size` is ignored (the source's is used).
pub fn flatten(
    src: &Path,
    dst: &Path,
    opts: &CreateOptions,
    progress: Option<Progress>,
) -> Result<()> {
    let s = Disk::open(src, OpenMode::ReadOnly)?;
    let mut o = opts.clone();
    o.virtual_size = s.virtual_size();
    o.logical_sector_size = s.logical_sector_size();
    o.physical_sector_size = s.info().physical_sector_size;
    let d = Disk::create(dst, &o)?;
    let r = s.copy_to(&d, progress).and_then(|_| d.close());
    if r.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    r
}

/// Whether the file at `path` is a VHD (from its content).
fn is_vhd(path: &Path) -> bool {
    super::Format::of_file(path) == Some(super::Format::Vhd)
}

/// Open one file of a chain alone (no parents).
pub(crate) fn open_single(path: &Path, writable: bool) -> Result<Image> {
    let s = open_file(path, writable)?;
    Image::open(Arc::new(s), !writable).map_err(|e| e.in_file(path))
}

/// Open one file alone, read-only, to look at it even while a writer
/// holds it: locked when it can be; a file held for writing (by another
/// process, or by this one: then without the lock's wait, which could not
/// succeed) is read unlocked (`FileStorage::peek`: what it reads may be
/// mid-update, so only for facts a writer does not change, such as the
/// parent locator or a user item). When that fails too, the writer's
/// refusal stands.
pub(crate) fn look_at(path: &Path) -> Result<Image> {
    let peek = || {
        crate::io::FileStorage::peek(path)
            .map_err(Error::from)
            .and_then(|s| Image::open(Arc::new(s), true))
    };
    if crate::io::held_exclusive_here(path) {
        if let Ok(f) = peek() {
            return Ok(f);
        }
    }
    match open_single(path, false) {
        Err(e) if e.kind() == crate::ErrorKind::Busy => peek().map_err(|_| e),
        r => r,
    }
}

/// Point `child` at `new_parent` (like `Set-VHD -ParentPath`). Refuses when
/// the new parent's DataWriteGuid matches neither linkage of the child
/// (for a VHD: its unique id and timestamp do not match the child's
/// record), unless `force` is set (then the linkage is rewritten to the
/// new parent). A VHD child and a VHDX parent (or the reverse) are refused.
pub fn reparent(child: &Path, new_parent: &Path, force: bool) -> Result<()> {
    let me = std::fs::canonicalize(child).map_err(|e| Error::from(e).in_file(child))?;
    // The new parent's chain first (locked shared while the child is
    // changed): a child inside it is refused before it is opened for writing.
    let p = Disk::open(new_parent, OpenMode::ReadOnly)?;
    if p.chain()
        .iter()
        .flatten()
        .any(|q| std::fs::canonicalize(q).ok().as_ref() == Some(&me))
    {
        return Err(Error::InvalidArgument(format!(
            "{} is in the chain of {}: making it the parent would make a cycle",
            child.display(),
            new_parent.display()
        )));
    }
    let c = open_single(child, true)?;
    if !c.has_parent() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a differencing disk",
            child.display()
        )));
    }
    if let (Some(v), Some(pv)) = (c.as_vhd(), p.top().as_vhd()) {
        // A VHD: its record of the parent (unique id, timestamp) is
        // rewritten only with `force` when it does not match.
        match chain::check_linkage(&c, p.top(), Some(child), Some(new_parent)) {
            Ok(()) => {}
            Err(Error::ParentStale { .. }) if force => {}
            Err(e) => return Err(e),
        }
        let spec = chain::vhd_parent_spec(child, new_parent, pv)?;
        return v.set_parent(&spec).map_err(|e| e.in_file(child));
    }
    match chain::check_linkage(&c, p.top(), Some(child), Some(new_parent)) {
        Ok(()) => {}
        Err(Error::ParentMismatch { .. }) if force => {
            let (cm, pm) = (c.vhdx()?.metadata(), p.top().vhdx()?.metadata());
            if cm.logical_sector_size != pm.logical_sector_size {
                return Err(Error::InvalidArgument(format!(
                    "{} has another logical sector size than {}",
                    new_parent.display(),
                    child.display()
                )));
            }
        }
        Err(e) => return Err(e),
    }
    let loc = chain::locator_for(child, new_parent, &p.top().vhdx()?.header().data_write_guid)?;
    c.set_parent_locator(loc.to_bytes())
        .map_err(|e| e.in_file(child))?;
    c.close().map_err(|e| e.in_file(child))
}

/// What [`merge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// The file the data was merged into.
    pub destination: PathBuf,
    /// Files removed (the merged layers).
    pub removed: Vec<PathBuf>,
    /// Descendants re-pointed at the destination.
    pub repointed: Vec<PathBuf>,
    /// Bytes of virtual disk copied.
    pub bytes_copied: u64,
}

/// Options of [`merge`].
#[derive(Default)]
pub struct MergeOptions<'a> {
    /// Merge into this ancestor instead of the immediate parent.
    pub into: Option<PathBuf>,
    /// Differencing disks whose parent is the merged child, to re-point at
    /// the destination. `None`: search for them, and for siblings the merge
    /// would break (other children of the destination or of a removed
    /// layer, which make it refuse), in the folders of every file of the
    /// chain. A differencing disk in any other folder cannot be known: a
    /// caller that knows the tree (as the checkpoint tree does) passes the
    /// list, and is then responsible for there being no siblings. A merged
    /// VHD child is then kept, for the caller to remove once it has
    /// recorded the merge (a VHD has no DataWriteGuid to show it later).
    pub descendants: Option<Vec<PathBuf>>,
    /// Progress of the copy.
    pub progress: Option<Progress<'a>>,
    /// Skip the free-space check.
    pub skip_space_check: bool,
    /// Refuse when the merge needs more than this many bytes, even if the
    /// volume has them (a quota the caller keeps).
    pub space_limit: Option<u64>,
}

impl std::fmt::Debug for MergeOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeOptions")
            .field("into", &self.into)
            .field("descendants", &self.descendants)
            .field("skip_space_check", &self.skip_space_check)
            .field("space_limit", &self.space_limit)
            .finish()
    }
}

/// The differencing disks in `child`'s folder whose parent is `child`.
pub fn find_children(child: &Path) -> Result<Vec<PathBuf>> {
    let want = std::fs::canonicalize(child).map_err(|e| Error::from(e).in_file(child))?;
    let dir = want.parent().unwrap_or(Path::new("/")).to_path_buf();
    find_children_in(child, &[dir])
}

/// The folders of the files of a chain (each once, in chain order).
fn folders_of(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let d = p.parent().unwrap_or(Path::new("/")).to_path_buf();
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// The differencing disks in any of the folders `dirs` whose parent is `child`.
/// A folder that cannot be listed, or a VHDX or VHD file in it (by its
/// name: `.vhdx`, `.avhdx`, `.vhd`, `.avhd`) that cannot be read
/// (unreadable, corrupt, held by a writer while `child` is held too), is an
/// error naming it: whether it is a child cannot be known.
pub fn find_children_in(child: &Path, dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    find_children_except(child, dirs, &[])
}

/// [`find_children_in`], never looking at the files `known` (the caller's
/// own, such as the live tops its handles write: a file being written may
/// read inconsistently without its lock, and the caller knows what depends
/// on what among its own files).
pub(crate) fn find_children_except(
    child: &Path,
    dirs: &[PathBuf],
    known: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let want = std::fs::canonicalize(child).map_err(|e| Error::from(e).in_file(child))?;
    let known: Vec<PathBuf> = known
        .iter()
        .filter_map(|k| std::fs::canonicalize(k).ok())
        .collect();
    let mut out = Vec::new();
    for dir in dirs {
        out.extend(children_in(&want, dir, &known)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The differencing disks in `dir` whose parent is the file `want` (canonical).
/// Files in `known` (canonical) are skipped.
fn children_in(want: &Path, dir: &Path, known: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::from(e).in_file(dir))? {
        let p = entry.map_err(|e| Error::from(e).in_file(dir))?.path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("vhdx" | "avhdx" | "vhd" | "avhd")) || p == want {
            continue;
        }
        if !known.is_empty() && std::fs::canonicalize(&p).is_ok_and(|c| known.contains(&c)) {
            continue;
        }
        // A file that cannot be read may be a child: an error, never "none".
        // One held by a writer is looked at without its lock (its parent
        // locator does not change while it is written).
        let f = look_at(&p)?;
        if !f.has_parent() {
            continue;
        }
        let loc = locator_of(&f).map_err(|e| e.in_file(&p))?;
        let found = chain::parent_candidates(&loc, &p)
            .into_iter()
            .find(|c| c.is_file())
            .and_then(|c| std::fs::canonicalize(c).ok());
        if found.as_deref() == Some(want) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The bytes a merge copying `ranges` into `d` may allocate there: every
/// block the copy touches that is not yet fully present.
fn space_needed(d: &Image, ranges: &[Range]) -> u64 {
    let bs = d.geo.block_size as u64;
    let mut need = 0u64;
    let mut last_block = u64::MAX;
    for r in ranges {
        for b in r.offset / bs..(r.offset + r.length).div_ceil(bs) {
            if b == last_block {
                continue;
            }
            last_block = b;
            use crate::format::bat::PayloadState;
            // Blocks past the destination's end come with its growth.
            if b >= d.geo.data_blocks
                || d.as_vhdx().is_none_or(|d| {
                    d.block_entry(b).payload_state() != Some(PayloadState::FullyPresent)
                })
            {
                need += bs;
            }
        }
    }
    need
}

/// What merging `child` into its ancestor `into` would take, without
/// changing anything: `(bytes copied, bytes it may allocate in into)` (the
/// estimate [`merge`] refuses with `NoSpace` when the file system has less).
pub fn merge_estimate(child: &Path, into: &Path) -> Result<(u64, u64)> {
    merge_estimate_in(&Disk::open(child, OpenMode::ReadOnly)?, into)
}

/// [`merge_estimate`] of the chain `view` (opened from the child) into its
/// layer `into`: for a child already open (a live chain's writable top).
pub fn merge_estimate_in(view: &Disk, into: &Path) -> Result<(u64, u64)> {
    let k = view.level_of(into)?;
    let ranges = view.changed_ranges(k)?;
    let copied = ranges.iter().map(|r| r.length).sum();
    Ok((copied, space_needed(&view.layers[k].file, &ranges)))
}

/// Merge the differencing disk `child` into its parent (or into the ancestor
/// `opts.into`), like deleting a checkpoint: only data present in the merged
/// layers is copied; zeroed ranges propagate; descendants of `child` are
/// re-pointed at the destination; the merged files are removed on success.
///
/// Interrupted merges (a crash, an error, a cancel) leave a chain that
/// reads the same data; running the same merge again finishes it.
pub fn merge(child: &Path, mut opts: MergeOptions) -> Result<MergeReport> {
    if is_vhd(child) {
        return super::vhd_merge::merge(child, opts);
    }
    let plan = plan_merge(child, &mut opts)?;
    let dest_guid = copy_merged(&plan, &mut opts.progress, &open_single)?;
    let repointed = repoint(&plan.descendants, &plan.dest, &dest_guid)?;
    let removed = remove_merged(&plan.paths[..plan.k])?;
    Ok(MergeReport {
        destination: plan.dest,
        removed,
        repointed,
        bytes_copied: plan.total,
    })
}

/// How a merge opens a file of the chain it works on (`path`, writable or
/// not): [`open_single`] for a merge of files nobody holds, the live
/// merge's own opener for files its live chain holds (see
/// [`crate::disk::live`]).
pub(crate) type Opener<'a> = &'a dyn Fn(&Path, bool) -> Result<Image>;

/// What a merge does, decided before anything changes.
pub(crate) struct MergePlan {
    /// The chain of the merged child, top first.
    pub(crate) paths: Vec<PathBuf>,
    /// The destination's level in `paths` (at least 1).
    pub(crate) k: usize,
    /// The destination (`paths[k]`).
    pub(crate) dest: PathBuf,
    /// What the layers above the destination change.
    pub(crate) ranges: Vec<Range>,
    /// Their total length in bytes.
    pub(crate) total: u64,
    /// The disks to re-point at the destination.
    pub(crate) descendants: Vec<PathBuf>,
    /// The merged child's virtual size: the destination's after the merge.
    pub(crate) size: u64,
}

/// Step 1, plan: what merges into what, the refusals (nothing to merge
/// into, a merge into itself, too little space, siblings it would break)
/// and the ranges to copy. Changes nothing.
pub(crate) fn plan_merge(child: &Path, opts: &mut MergeOptions) -> Result<MergePlan> {
    let view = Disk::open(child, OpenMode::ReadOnly)?;
    if view.depth() < 2 {
        return Err(Error::InvalidArgument(format!(
            "{} has no parent to merge into",
            child.display()
        )));
    }
    let k = match &opts.into {
        Some(p) => view.level_of(p)?,
        None => 1,
    };
    if k == 0 {
        return Err(Error::InvalidArgument(
            "cannot merge a disk into itself".into(),
        ));
    }
    let paths: Vec<PathBuf> = view
        .chain()
        .into_iter()
        .map(|p| p.unwrap_or_default())
        .collect();
    let dest = paths[k].clone();
    let ranges = view.changed_ranges(k)?;
    let total: u64 = ranges.iter().map(|r| r.length).sum();

    // Space: every destination block the copy touches that is not yet allocated.
    if !opts.skip_space_check {
        let need = space_needed(&view.layers[k].file, &ranges);
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let free = crate::io::free_space(dir).map_err(|e| Error::from(e).in_file(dir))?;
        let free = free.min(opts.space_limit.unwrap_or(u64::MAX));
        if need > free {
            return Err(Error::NoSpace(format!(
                "merging {} into {} needs up to {need} bytes, but only {free} are free there",
                child.display(),
                dest.display()
            )));
        }
    }
    let descendants = match opts.descendants.take() {
        Some(d) => d,
        None => {
            // The caller did not say which disks depend on what: refuse
            // when the merge would break a sibling (another child of the
            // destination, or of a layer removed on the way).
            // Siblings may sit in the folder of any file of the chain.
            let dirs = folders_of(&paths);
            refuse_breaking_siblings(child, &paths, k, &dirs)?;
            find_children_in(child, &dirs)?
        }
    };
    Ok(MergePlan {
        paths,
        k,
        dest,
        ranges,
        total,
        descendants,
        size: view.virtual_size(),
    })
}

/// Step 2, copy: the layers above the destination into it, through a chain
/// whose bottom is the live, writable destination; then the destination
/// takes the child's virtual-disk items and is closed. Returns the
/// destination's new DataWriteGuid. The destination and the layers above it
/// are opened with `open`.
pub(crate) fn copy_merged(
    plan: &MergePlan,
    progress: &mut Option<Progress>,
    open: Opener,
) -> Result<uuid::Uuid> {
    let (paths, k, dest) = (&plan.paths, plan.k, &plan.dest);
    // The destination is locked (opened for writing) before anything
    // changes and stays so to the end: a merge into a file another handle
    // or process has open fails here, with nothing written.
    let mut dest_img = open(dest, true)?;
    let dest_file = dest_img.vhdx_for("merging")?;
    let new_guid = announce_new_guid(&paths[k - 1], dest_file, open)?;

    dest_file.set_next_data_write_guid(new_guid);
    // A child larger than the destination: the destination grows to its
    // size first (the new space reads zeros, as the child saw past the
    // destination's end), under the announced DataWriteGuid.
    let size = plan.size;
    if size > dest_file.geo.virtual_size {
        let below = chain::open_parents(&dest_img, dest)?
            .first()
            .map(|l| l.file.geo.virtual_size)
            .unwrap_or(0);
        let r = dest_file.resize_file(size, below);
        let closed = dest_file.close();
        r.and(closed).map_err(|e| e.in_file(dest))?;
        drop(dest_img);
        dest_img = open(dest, true)?;
        dest_img.vhdx()?.set_next_data_write_guid(new_guid);
    }
    let mut layers = Vec::new();
    for p in &paths[..k] {
        layers.push(Layer {
            path: Some(p.clone()),
            file: open(p, false)?,
        });
    }
    layers.push(Layer {
        path: Some(dest.clone()),
        file: dest_img,
    });
    // The destination's own parents, when it is a differencing disk too
    // (the destination itself is open for writing above: not again).
    let below = chain::open_parents(&layers[k].file, dest)?;
    layers.extend(below);
    let work = Disk::from_layers_uncached(layers);
    let d = work.layers[k].file.vhdx()?;
    // A bulk copy: written back as it goes, and out of the page cache.
    work.layers[k].file.set_write_behind(true);
    let mut done = 0u64;
    for r in &plan.ranges {
        let mut pos = r.offset;
        while pos < r.offset + r.length {
            let n = CHUNK.min(r.offset + r.length - pos);
            copy_down(&work, 0, k, pos, n).map_err(|e| e.in_file(dest))?;
            pos += n;
            done += n;
            if let Some(p) = progress.as_mut() {
                if !p(done, plan.total) {
                    d.flush()?;
                    return Err(Error::Cancelled);
                }
            }
        }
    }
    // The destination takes the merged child's virtual-disk items (the disk
    // ID and physical sector size; the logical one is equal in any chain).
    let (cm, mut dm) = (work.layers[0].file.vhdx()?.metadata(), d.metadata());
    if (cm.disk_id, cm.physical_sector_size) != (dm.disk_id, dm.physical_sector_size) {
        dm.disk_id = cm.disk_id;
        dm.physical_sector_size = cm.physical_sector_size;
        d.set_metadata(dm).map_err(|e| e.in_file(dest))?;
    }
    // A child smaller than the destination: the destination shrinks to
    // its size (what lies past it, the child never showed). The space of
    // the dropped blocks is reused when the file is next opened for
    // writing, or given back by a compaction.
    if size < d.geo.virtual_size {
        let r = d.resize_file(size, 0);
        let closed = d.close();
        return r
            .and(closed)
            .map(|_| d.header().data_write_guid)
            .map_err(|e| e.in_file(dest));
    }
    d.close().map_err(|e| e.in_file(dest))?;
    Ok(d.header().data_write_guid)
}

/// Before the destination changes, let the layer `above` it accept the
/// destination's new DataWriteGuid (its parent_linkage2), so that the chain
/// reads the same at every point of the merge. Returns that GUID (the one
/// an interrupted run of this merge already chose, if any).
fn announce_new_guid(above: &Path, dest_file: &Vhdx, open: Opener) -> Result<uuid::Uuid> {
    let a = open(above, true)?;
    let a = a.vhdx_for("merging")?;
    let mut loc = chain::vhdx_locator_of(a).map_err(|e| e.in_file(above))?;
    let current = dest_file.header().data_write_guid;
    let pending = loc
        .linkage(locator::PARENT_LINKAGE2)
        .filter(|g| !g.is_nil());
    match pending {
        // A merge was interrupted after the destination changed: keep its GUID.
        Some(g) if g == current => Ok(g),
        _ => {
            let g = uuid::Uuid::new_v4();
            loc.set(locator::PARENT_LINKAGE2, locator::linkage_string(&g));
            a.set_parent_locator(loc.to_bytes())
                .map_err(|e| e.in_file(above))?;
            a.close().map_err(|e| e.in_file(above))?;
            Ok(g)
        }
    }
}

/// Step 3, re-point: each descendant's parent locator names the destination
/// (one atomic metadata update each).
pub(crate) fn repoint(
    descendants: &[PathBuf],
    dest: &Path,
    dest_guid: &uuid::Uuid,
) -> Result<Vec<PathBuf>> {
    let mut repointed = Vec::new();
    for x in descendants {
        let f = open_single(x, true)?;
        let loc = chain::locator_for(x, dest, dest_guid)?;
        f.set_parent_locator(loc.to_bytes())
            .map_err(|e| e.in_file(x))?;
        f.close().map_err(|e| e.in_file(x))?;
        repointed.push(x.clone());
    }
    Ok(repointed)
}

/// Step 4, remove: the merged layers, top first.
fn remove_merged(merged: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for p in merged {
        crate::io::remove_file(p).map_err(|e| Error::from(e).in_file(p))?;
        removed.push(p.clone());
    }
    Ok(removed)
}

/// The one policy for a merge that would break another differencing disk
/// (the CLI's `ckpt merge` relies on it too): the layers at levels `1..=k`
/// of `paths` (top first) change (level `k`, the destination) or are
/// removed, so none of them may have a live child (one whose linkage
/// matches it) other than the layer right above it. Descendants an
/// interrupted run of this same merge already re-pointed at the destination
/// link to the destination's pending new DataWriteGuid (kept as
/// `parent_linkage2` by the layer above it) and are exempt, so running the
/// merge again finishes it. Children are looked for in the folders `dirs`.
fn refuse_breaking_siblings(
    child: &Path,
    paths: &[PathBuf],
    k: usize,
    dirs: &[PathBuf],
) -> Result<()> {
    let pending = open_single(&paths[k - 1], false)
        .ok()
        .and_then(|f| locator_of(&f).ok())
        .and_then(|l| l.linkage(locator::PARENT_LINKAGE2))
        .filter(|g| !g.is_nil());
    for i in 1..=k {
        let guid = open_single(&paths[i], false)?
            .vhdx_for("merging")?
            .header()
            .data_write_guid;
        let above = std::fs::canonicalize(&paths[i - 1]).unwrap_or(paths[i - 1].clone());
        let mut others = Vec::new();
        for c in find_children_in(&paths[i], dirs)? {
            let c = std::fs::canonicalize(&c).unwrap_or(c);
            let link = open_single(&c, false)
                .ok()
                .and_then(|f| locator_of(&f).ok())
                .and_then(|l| l.linkage(locator::PARENT_LINKAGE));
            let live = link == Some(guid);
            let ours = i == k && pending.is_some() && link == pending;
            if c != above && live && !ours {
                others.push(c.display().to_string());
            }
        }
        if !others.is_empty() {
            let fate = if i == k { "changes" } else { "is removed" };
            return Err(Error::InvalidArgument(format!(
                "refusing to merge {}: {} {fate} in this merge, but it is also the parent of {}, \
                 which would be broken (merge or remove {} first)",
                child.display(),
                paths[i].display(),
                others.join(", "),
                if others.len() == 1 { "it" } else { "them" },
            )));
        }
    }
    Ok(())
}

/// Copy what layers `level..k` of `work` hold in `[pos, pos+len)` into
/// layer `k` (the destination), run by run: data straight from the layer's
/// file, zeroed ranges as zeros; what they leave to the destination stays.
fn copy_down(work: &Disk, level: usize, k: usize, pos: u64, len: u64) -> Result<()> {
    let layer = work.layers[level].file.vhdx()?;
    let d = work.layers[k].file.vhdx()?;
    let mut done = 0u64;
    while done < len {
        let p = pos + done;
        let (l, src) = layer.map_first(p, len - done)?;
        match src {
            Src::Data(f) => d.copy_in(p, l, layer.storage(), f)?,
            Src::Zero => zero_range(d, p, l)?,
            Src::Parent if level + 1 < k => copy_down(work, level + 1, k, p, l)?,
            Src::Parent => {}
        }
        done += l;
    }
    Ok(())
}

/// Make `[pos, pos+len)` of `d` read as zeros.
fn zero_range(d: &Vhdx, pos: u64, len: u64) -> Result<()> {
    let bs = d.geo.block_size as u64;
    for s in spans(pos, len, bs) {
        let whole = s.is_whole(bs, d.geo.virtual_size);
        if !(whole && d.trim_block(s.block)?) {
            if d.has_parent() {
                d.write_at(&vec![0u8; s.len as usize], s.pos)?;
            } else {
                d.trim(s.pos, s.len)?;
            }
        }
    }
    Ok(())
}
