//! Live merge: [`LiveDisk::merge_down`] merges layer `k` of a live chain
//! `[0 = top, 1, 2, …]` into layer `k + 1` while the guest keeps reading
//! and writing through the handle, then drops layer `k` from the chain in
//! one short pause (the disk-level step of deleting a checkpoint of a
//! running VM). The layer merged must be frozen (`k ≥ 1`): to merge the
//! layer the guest writes, switch it to a fresh child first
//! ([`LiveDisk::push_child`], or `prepare_child` + [`super::pause_all`] +
//! [`super::Pause::push_children`] for several disks), then merge layer 1.
//!
//! Depends on [`super`] and on the offline merge's steps
//! ([`crate::disk::merge`]: plan, copy, the DataWriteGuid announcement),
//! which it reuses rather than merging a second way.
//!
//! # Steps
//!
//! 1. **Plan** (nothing changes): the offline merge's plan of layer `k`'s
//!    file into its parent, with no descendant to re-point (the live chain
//!    re-links the layer above itself, step 4) and no search for siblings:
//!    the caller knows the tree (the checkpoint tree does) and must not ask
//!    for a merge that would break another child of layer `k + 1`.
//! 2. **Take the files**: the live chain holds layers `k` and `k + 1`
//!    read-only, with shared locks, so no second read-write open of them
//!    is allowed. The live merge turns the live chain's own locks on them
//!    into exclusive ones (refused with `Busy` when anyone else holds them,
//!    even read-only: another chain sharing the file, another process),
//!    and writes them through a second descriptor of its own that takes no
//!    lock (`FileStorage::open_beside`, only reachable from here), for as
//!    long as the exclusive locks are held. The locks are shared again when
//!    the merge ends, whatever its outcome.
//! 3. **Copy** while I/O goes on (no pause): the offline merge's copy
//!    (layer `k` accepts the destination's next DataWriteGuid as its
//!    `parent_linkage2` first, then every range layer `k` holds is copied
//!    into layer `k + 1`, with progress and cancel).
//! 4. **Re-link** in one pause (the gate exclusive): layer `k - 1`'s parent
//!    locator is pointed at layer `k + 1` and its new DataWriteGuid (through
//!    the top's own log when `k - 1` is the writable top, else through a
//!    second descriptor as in step 2), made durable; layer `k + 1` is opened
//!    again read-only on the live chain's descriptor (and layer `k - 1` too
//!    when it was changed beside it), and the chain becomes
//!    `[0, …, k - 1, k + 1, …]`. Layer `k`'s path is handed back; removing
//!    the file is the caller's (a VM's journal decides when).
//!
//! # Why reads during the copy are never half-merged
//!
//! The live chain keeps layer `k` above layer `k + 1` until step 4, and
//! keeps its own read-only handle of layer `k + 1`, opened before the
//! merge. The copy changes layer `k + 1` only in the ranges layer `k`
//! holds (data or zeros): a read of such a range through the live chain is
//! answered by layer `k` or above and never reaches layer `k + 1`. A read
//! that does reach layer `k + 1` asks about sectors layer `k` does not
//! hold, and everything the stale handle consults for them is unchanged by
//! the copy: its BAT (kept in memory since it opened), the payload it
//! points at (the merge never moves a block, and only frees one that layer
//! `k` covers whole), and the sector-bitmap bits (read lazily from the
//! file, but the copy sets bits only for sectors layer `k` holds). The
//! per-block owner caches of the live chain stay true for the same reason.
//! Step 4 replaces the stale handle by one opened after the copy, under
//! the exclusive gate, so no read sees the switch half made.
//!
//! # Cancel, errors, crashes
//!
//! A cancel (the progress callback returns `false`) or an error before
//! step 4 leaves the live chain as it was: layer `k + 1` may hold some of
//! layer `k`'s data already, identical to what layer `k` reads there, and
//! layer `k` accepts layer `k + 1`'s new DataWriteGuid, so both the live
//! chain and the files (reopened) read the same. Running the merge again
//! copies everything again and finishes (the announcement of step 3 keeps
//! the DataWriteGuid an interrupted run chose). An error in step 4 before
//! the re-link is durable changes nothing either; after it (a failed
//! reopen, very unlikely) the files are the new chain while the handle
//! still reads the old one, which reads the same.
//!
//! A crash at any point leaves files that open from the top as the old
//! chain (before the re-link is durable: layer `k - 1` still names layer
//! `k`, which accepts layer `k + 1`'s old or new DataWriteGuid) or as the
//! new one (after it), reading the same; guest writes go to the top, which
//! the merge changes only through one atomic log entry of its own (the
//! re-link), so every write the guest had flushed is there. After a crash
//! in the old chain, the same live merge run again on the reopened chain
//! finishes (`tests/live_merge.rs` cuts at every write, flush and torn
//! write of the merging thread). After a crash in the new chain, the
//! merged file is left for the caller to remove.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::LiveDisk;
use crate::disk::chain;
use crate::disk::image::Image;
use crate::disk::merge::{self, copy_merged, plan_merge, MergeOptions, Progress};
use crate::disk::vhdx::Vhdx;
use crate::disk::{file_error, Disk, Layer};
use crate::error::{Error, Result};
use crate::io::{exclusive_lock, share_lock, FileStorage, Storage};

/// Options of [`LiveDisk::merge_down`].
#[derive(Default)]
pub struct LiveMergeOptions<'a> {
    /// Progress of the copy, `(bytes done, bytes total)`; returning `false`
    /// cancels (the chain stays as it was).
    pub progress: Option<Progress<'a>>,
    /// Skip the free-space check.
    pub skip_space_check: bool,
    /// Refuse when the merge needs more than this many bytes.
    pub space_limit: Option<u64>,
}

impl std::fmt::Debug for LiveMergeOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveMergeOptions")
            .field("progress", &self.progress.is_some())
            .field("skip_space_check", &self.skip_space_check)
            .field("space_limit", &self.space_limit)
            .finish()
    }
}

/// What [`LiveDisk::merge_down`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMergeReport {
    /// The merged layer's file: no longer in the chain, not removed (the
    /// caller removes it).
    pub merged: PathBuf,
    /// The file it was merged into.
    pub destination: PathBuf,
    /// The layer re-linked to the destination (the one above the merged).
    pub relinked: PathBuf,
    /// Bytes of virtual disk copied.
    pub bytes_copied: u64,
}

/// Exclusive locks taken on live descriptors (step 2), shared again on drop.
struct Exclusive(Vec<Arc<dyn Storage>>);

impl Exclusive {
    fn take(stores: &[&Arc<dyn Storage>], paths: &[&Path]) -> Result<Exclusive> {
        let mut held = Exclusive(Vec::new());
        for (s, p) in stores.iter().zip(paths) {
            let fd = s.raw_fd().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "a live merge needs host files; {} is not one",
                    p.display()
                ))
            })?;
            exclusive_lock(fd).map_err(|e| file_error(e, p))?;
            held.0.push(Arc::clone(s));
        }
        Ok(held)
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        for s in &self.0 {
            if let Some(fd) = s.raw_fd() {
                // Best effort: a refusal only keeps the lock exclusive.
                let _ = share_lock(fd);
            }
        }
    }
}

/// A second, lock-free, writable descriptor of `path` beside the live
/// descriptor `live`, whose lock is held exclusive (see the module doc).
fn beside(path: &Path, live: &Arc<dyn Storage>) -> Result<Arc<dyn Storage>> {
    let fd = live
        .raw_fd()
        .ok_or_else(|| Error::InvalidArgument("a live merge needs host files".into()))?;
    let s = FileStorage::open_beside(path, fd).map_err(|e| Error::from(e).in_file(path))?;
    Ok(Arc::new(s))
}

fn same(a: &Arc<dyn Storage>, b: &Arc<dyn Storage>) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const u8, Arc::as_ptr(b) as *const u8)
}

impl LiveDisk {
    /// A live layer on `host` that reads through a dirty log replayed in
    /// memory (a read-only open after a crash) would read patched sectors
    /// from the log region, which the merge writes anew: replay the log into
    /// the file through `rw` (the same bytes the view reads), then, in a
    /// pause, give the layer a handle opened on the clean file.
    fn settle(&self, path: &Path, host: &Arc<dyn Storage>, rw: &Arc<dyn Storage>) -> Result<()> {
        let viewed = self.with_disk(|d| {
            d.layers
                .iter()
                .any(|l| same(&l.file.host_storage(), host) && l.file.reads_replayed_log())
        });
        if !viewed {
            return Ok(());
        }
        Vhdx::open(Arc::clone(rw), false)
            .and_then(|f| f.close())
            .map_err(|e| e.in_file(path))?;
        let fresh = Vhdx::open(Arc::clone(host), true).map_err(|e| e.in_file(path))?;
        let mut g = self.exclusive();
        if let Some(l) = g
            .layers
            .iter_mut()
            .find(|l| same(&l.file.host_storage(), host))
        {
            l.file = fresh.into();
        }
        Ok(())
    }

    /// Merge layer `k` of the live chain (`0` is the top; `k ≥ 1`, and
    /// layer `k + 1` must exist) into layer `k + 1` while I/O goes on, then
    /// drop layer `k` from the chain in one short pause; see the doc of
    /// `src/disk/live/merge.rs` for the steps, what readers see, cancel and
    /// crashes. Returns the merged file's path for the caller to remove.
    ///
    /// One live merge runs on a handle at a time (a second is refused with
    /// `Busy`); a switch ([`LiveDisk::push_child`]) may run meanwhile. On
    /// any error the chain reads as before and the merge may be run again.
    pub fn merge_down(&self, k: usize, mut opts: LiveMergeOptions) -> Result<LiveMergeReport> {
        let _one = self
            .merging
            .try_lock()
            .map_err(|_| Error::Busy("a live merge is already running on this disk".into()))?;
        // The facts, under the shared gate for a moment.
        let (src, dest, src_live, dest_live) = {
            let d = self.get();
            if k == 0 {
                return Err(Error::InvalidArgument(
                    "layer 0 is the top the guest writes: switch the disk to a new child \
                     first, then merge layer 1"
                        .into(),
                ));
            }
            if k + 1 >= d.depth() {
                return Err(Error::InvalidArgument(format!(
                    "layer {k} of a chain of {} layers has no layer below it to merge into",
                    d.depth()
                )));
            }
            if let Some(i) = [k, k + 1]
                .into_iter()
                .find(|&i| !d.layers[i].file.is_read_only())
            {
                // Its handle would write its stale state when dropped.
                return Err(Error::InvalidArgument(format!(
                    "layer {i} of the live chain is still open read-write below the top \
                     (a switch could not seal it): seal it before merging"
                )));
            }
            let path = |i: usize| {
                d.layers[i].path.clone().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "layer {i} of the live chain was not opened from a path"
                    ))
                })
            };
            (
                path(k)?,
                path(k + 1)?,
                d.layers[k].file.host_storage(),
                d.layers[k + 1].file.host_storage(),
            )
        };

        if self.with_disk(|d| d.layers[k].file.as_vhd().is_some()) {
            return self.merge_down_vhd(k, src, dest, src_live, dest_live, opts);
        }

        // 1. Plan.
        let plan = plan_merge(
            &src,
            &mut MergeOptions {
                descendants: Some(Vec::new()),
                skip_space_check: opts.skip_space_check,
                space_limit: opts.space_limit,
                ..Default::default()
            },
        )?;
        if plan.k != 1 || !same_file(&plan.dest, &dest) {
            return Err(Error::InvalidArgument(format!(
                "{} does not name {} as its parent on disk, as the live chain has it",
                src.display(),
                dest.display()
            )));
        }

        // 2. Take the files.
        let held = Exclusive::take(&[&src_live, &dest_live], &[&src, &dest])?;
        let src_rw = beside(&src, &src_live)?;
        let dest_rw = beside(&dest, &dest_live)?;
        for (p, host, rw) in [(&src, &src_live, &src_rw), (&dest, &dest_live, &dest_rw)] {
            self.settle(p, host, rw)?;
        }
        let open = |p: &Path, writable: bool| -> Result<Image> {
            let s = if p == plan.paths[0] {
                &src_rw
            } else if p == plan.dest {
                &dest_rw
            } else {
                return merge::open_single(p, writable);
            };
            Vhdx::open(Arc::clone(s), !writable)
                .map(Image::from)
                .map_err(|e| e.in_file(p))
        };

        // 3. Copy, while I/O goes on.
        let guid = copy_merged(&plan, &mut opts.progress, &open)?;
        drop((src_rw, dest_rw));

        // 4. Re-link, in one pause.
        let relinked =
            self.relink_in_pause(&src_live, &dest_live, &src, &dest, |f, above, _| {
                f.set_parent_locator(chain::locator_for(above, &dest, &guid)?.to_bytes())
            })?;
        drop(held);
        Ok(LiveMergeReport {
            merged: src,
            destination: dest,
            relinked,
            bytes_copied: plan.total,
        })
    }
}

impl LiveDisk {
    /// [`LiveDisk::merge_down`] of a VHD layer `k` (file `src`) into layer
    /// `k + 1` (`dest`). The same steps without a DataWriteGuid (a VHD child
    /// links to its parent's unique id and timestamp, which writes never
    /// change): take the files exclusively; copy, while I/O goes on, every
    /// 4 KiB unit layer `k` holds any sector of, as the chain from layer
    /// `k` down reads it, into `dest` (whole units: libvhdi misreads
    /// bitmap bytes half set), synced; then in one pause point layer
    /// `k - 1` at `dest` (its new header goes to fresh space and its footer
    /// flips last: `vhd/relink.rs`) and drop layer `k` from the chain.
    /// Until the re-link is durable the files open as the old chain (layer
    /// `k - 1` names `src`, which still holds everything it did, over a
    /// `dest` that gained only what `src` covers); after it as the new one;
    /// both read the same.
    fn merge_down_vhd(
        &self,
        k: usize,
        src: PathBuf,
        dest: PathBuf,
        src_live: Arc<dyn Storage>,
        dest_live: Arc<dyn Storage>,
        mut opts: LiveMergeOptions,
    ) -> Result<LiveMergeReport> {
        let (size, below, fits) = self.with_disk(|d| {
            let (a, b) = (&d.layers[k].file, &d.layers[k + 1].file);
            (
                b.geo.virtual_size,
                d.layers.get(k + 2).and_then(|l| l.path.clone()),
                b.as_vhd().is_some() && a.geo.virtual_size == b.geo.virtual_size,
            )
        });
        if !fits {
            return Err(Error::Unsupported(
                "a live merge of a VHD layer into a layer of another size or format".into(),
            ));
        }
        // 2. Take the files: layer k read through a descriptor of its own,
        // layer k + 1 written through one.
        let held = Exclusive::take(&[&src_live, &dest_live], &[&src, &dest])?;
        let src_img = Image::open(beside(&src, &src_live)?, true).map_err(|e| e.in_file(&src))?;
        let dest_img =
            Image::open(beside(&dest, &dest_live)?, false).map_err(|e| e.in_file(&dest))?;
        let ranges = crate::disk::extents::layer_ranges(&src_img).map_err(|e| e.in_file(&src))?;
        let mut layers = vec![
            Layer {
                path: Some(src.clone()),
                file: src_img,
            },
            Layer {
                path: Some(dest.clone()),
                file: dest_img,
            },
        ];
        if let Some(b) = &below {
            layers.extend(Disk::open(b, crate::disk::OpenMode::ReadOnly)?.layers);
        }
        let view = Disk::from_layers(layers);
        // 3. Copy, unit by unit of 4 KiB, while I/O goes on.
        const UNIT: u64 = 4096;
        const STEP: u64 = 4 << 20;
        let total: u64 = ranges.iter().map(|r| r.length).sum();
        let mut done = 0u64;
        let mut buf = Vec::new();
        for r in &ranges {
            let start = r.offset / UNIT * UNIT;
            let end = (r.offset + r.length).div_ceil(UNIT) * UNIT;
            let end = end.min(size);
            let mut pos = start;
            while pos < end {
                let n = STEP.min(end - pos);
                buf.resize(n as usize, 0);
                view.read_at(&mut buf, pos)?;
                view.layers[1]
                    .file
                    .write_at(&buf, pos)
                    .map_err(|e| e.in_file(&dest))?;
                pos += n;
            }
            done += r.length;
            if let Some(p) = opts.progress.as_mut() {
                if !p(done, total) {
                    view.layers[1].file.flush().map_err(|e| e.in_file(&dest))?;
                    return Err(Error::Cancelled);
                }
            }
        }
        view.layers[1].file.close().map_err(|e| e.in_file(&dest))?;
        drop(view);

        // 4. Re-link, in one pause.
        let relinked =
            self.relink_in_pause(&src_live, &dest_live, &src, &dest, |f, above, d| {
                match (f.as_vhd(), d.as_vhd()) {
                    (Some(v), Some(pv)) => v.set_parent(&chain::vhd_parent_spec(above, &dest, pv)?),
                    _ => Err(Error::Unsupported(
                        "a VHDX layer over a VHD (a mixed chain)".into(),
                    )),
                }
            })?;
        drop(held);
        Ok(LiveMergeReport {
            merged: src,
            destination: dest,
            relinked,
            bytes_copied: total,
        })
    }
}

impl LiveDisk {
    /// Step 4 for both formats, in one pause (the gate exclusive): find the
    /// merged layer, open the destination again on the live descriptor,
    /// point the layer above at it with `relink(file, its path, new
    /// destination)` (through the top's own handle when it is the writable
    /// top, else through a second descriptor of its own, then reopened
    /// read-only), and drop the merged layer from the chain. Returns the
    /// path of the layer re-linked.
    fn relink_in_pause(
        &self,
        src_live: &Arc<dyn Storage>,
        dest_live: &Arc<dyn Storage>,
        src: &Path,
        dest: &Path,
        relink: impl Fn(&Image, &Path, &Image) -> Result<()>,
    ) -> Result<PathBuf> {
        let mut g = self.exclusive();
        let (j, above) = merged_layer(&g, src_live, dest_live, src, dest)?;
        let new_dest = Image::open(Arc::clone(dest_live), true).map_err(|e| e.in_file(dest))?;
        let new_above = {
            let a = &g.layers[j - 1].file;
            if a.is_read_only() {
                let live = a.host_storage();
                let _x = Exclusive::take(&[&live], &[&above])?;
                let f =
                    Image::open(beside(&above, &live)?, false).map_err(|e| e.in_file(&above))?;
                relink(&f, &above, &new_dest)
                    .and_then(|_| f.close())
                    .map_err(|e| e.in_file(&above))?;
                drop(f);
                Some(Image::open(live, true).map_err(|e| e.in_file(&above))?)
            } else {
                relink(a, &above, &new_dest).map_err(|e| e.in_file(&above))?;
                None
            }
        };
        let mut layers = std::mem::take(&mut g.layers);
        let old = layers.remove(j);
        layers[j] = Layer {
            path: Some(dest.to_path_buf()),
            file: new_dest,
        };
        if let Some(f) = new_above {
            layers[j - 1].file = f;
        }
        *g = Disk::from_layers(layers);
        drop(old);
        Ok(above)
    }
}

/// In the pause of step 4: the index of the merged layer (on `src_live`,
/// right above `dest_live`) in the live chain `g`, and the path of the
/// layer above it (the one re-linked).
fn merged_layer(
    g: &Disk,
    src_live: &Arc<dyn Storage>,
    dest_live: &Arc<dyn Storage>,
    src: &Path,
    dest: &Path,
) -> Result<(usize, PathBuf)> {
    let j = g
        .layers
        .iter()
        .position(|l| same(&l.file.host_storage(), src_live))
        .filter(|&j| {
            j >= 1
                && g.layers
                    .get(j + 1)
                    .is_some_and(|l| same(&l.file.host_storage(), dest_live))
        })
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the live chain no longer holds {} above {}: its data is merged, the chain is \
                 unchanged",
                src.display(),
                dest.display()
            ))
        })?;
    let above = g.layers[j - 1].path.clone().ok_or_else(|| {
        Error::InvalidArgument("the layer above the merged one has no path".into())
    })?;
    Ok((j, above))
}

/// Whether two paths name one file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
