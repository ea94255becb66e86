//! Incremental export ([`Vm::export_incremental`]): per disk, a
//! differencing VHDX on the base export's disk holding exactly the ranges
//! that may differ between REF and the point exported
//! ([`changes_between`](super::changes_between)), with NAME's content
//! there.
//!
//! The new file's parent locator names the base export's disk by relative
//! and absolute path, with the base disk's DataWriteGuid as its linkage,
//! so the chain full → inc1 → inc2 opens with any VHDX reader that follows
//! parent locators (libckpt, libvhdi, Hyper-V). Every range is written as
//! data, zeros included (a zero block of a differencing file is not read
//! the same by every reader). The export is journaled as a full export
//! is: a failure, a cancel or a crash leaves none of its files.

use std::path::{Path, PathBuf};

use super::changes::Since;
use super::manifest::check_base;
use super::Point;
use crate::checkpoint::create::Hooks;
use crate::checkpoint::export::check_export_folder;
use crate::checkpoint::model::{read_json, VmConfig};
use crate::checkpoint::vm::Vm;
use crate::disk::merge::{Progress, Range};
use crate::disk::{ChildOptions, Disk, OpenMode};
use crate::error::{Error, Result};

/// Bytes copied per step.
const CHUNK: u64 = 4 << 20;

/// What an incremental export writes: per disk (in the VM's disk order)
/// the base export's disk and the ranges to copy.
#[derive(Debug, Clone)]
pub(crate) struct IncrementalPlan {
    /// The base export's disk files.
    pub bases: Vec<PathBuf>,
    /// The ranges each disk copies.
    pub ranges: Vec<Vec<Range>>,
    /// The point the changes start from (what the base captured).
    pub since: Point,
    /// The base export's folder (absolute).
    pub base_dir: PathBuf,
}

/// An incremental export's REF and base, checked (see
/// [`Vm::export_incremental`]).
#[derive(Debug, Clone)]
pub(crate) struct IncrementalBase {
    /// REF.
    pub since: Since,
    /// The base export's disk files.
    pub bases: Vec<PathBuf>,
    /// The base export's folder (absolute).
    pub base_dir: PathBuf,
}

impl IncrementalBase {
    /// The plan of an incremental of the disks `disks` (frozen: a
    /// checkpoint's) on this base.
    pub(crate) fn plan(&self, disks: &[PathBuf]) -> Result<IncrementalPlan> {
        let mut ranges = Vec::with_capacity(disks.len());
        for (k, t) in disks.iter().enumerate() {
            let to = Disk::open(t, OpenMode::ReadOnly)?;
            ranges.push(self.since.disk_changes(k, &to).map_err(|e| e.in_file(t))?);
        }
        Ok(IncrementalPlan {
            bases: self.bases.clone(),
            ranges,
            since: self.since.point(),
            base_dir: self.base_dir.clone(),
        })
    }
}

impl Vm {
    /// Export checkpoint `name` (None: the current state) into the folder
    /// `dest` as an incremental backup on the export folder `base`: one
    /// differencing VHDX per disk whose parent is `base`'s disk, holding
    /// the ranges that may differ between checkpoint `since` (REF) and the
    /// point exported (see [`Vm::changes`]), plus `config.json` (with its
    /// manifest) and the memory state if any, as [`Vm::export`]. Returns
    /// the files made, disks first.
    ///
    /// REF may be any earlier checkpoint on the path to `name`, or one on
    /// another branch. `base` must be the export (full or incremental) that
    /// captured REF, unchanged since: its manifest says so, and its disks
    /// have the DataWriteGuids, virtual size and sector size recorded.
    /// Refused, changing nothing (`InvalidArgument`): REF not older than
    /// the point exported, a `base` that captured another point, belongs
    /// to another VM, was changed, or has no manifest; `dest` not empty.
    /// `NotFound`: an unknown checkpoint, a missing `base`.
    ///
    /// The current state of an attached VM is exported through a
    /// temporary checkpoint, as [`Vm::export`] does (see
    /// `live_export.rs`). A failure or a cancel removes what was made.
    pub fn export_incremental(
        &mut self,
        name: Option<&str>,
        since: &str,
        dest: &Path,
        base: &Path,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<PathBuf>> {
        self.settle(None)?;
        self.seal_live()?;
        let since = self.since(since)?;
        let point = match name {
            Some(n) => Some(self.usable(n)?.clone()),
            None => None,
        };
        if let Since::Checkpoint(c) = &since {
            self.check_order(c, point.as_ref())?;
        }
        let base_dir = std::fs::canonicalize(base).map_err(|e| Error::from(e).in_file(base))?;
        // Files whose virtual size the base must have (never one the
        // guest writes).
        let point_disks = match &point {
            Some(c) => c.disks.clone(),
            None => self.data.current.disks.clone(),
        };
        let sizes_of: Vec<PathBuf> = match &since {
            Since::Checkpoint(c) => c.disks.clone(),
            Since::Reference(r) => r
                .disks
                .iter()
                .zip(&point_disks)
                .map(|(d, p)| d.anchor.clone().unwrap_or_else(|| p.clone()))
                .collect(),
        };
        let bases = check_base(
            &base_dir,
            self.data.id.as_deref(),
            &since.point(),
            &sizes_of,
        )?;
        check_export_folder(dest)?;
        let inc = IncrementalBase {
            since,
            bases,
            base_dir,
        };
        if point.is_none() && self.attached() {
            return self.export_running(dest, hooks, Some(&inc));
        }
        let (disks, config, saved): (Vec<PathBuf>, VmConfig, Option<PathBuf>) = match &point {
            Some(c) => {
                let config = match &c.config_file {
                    Some(f) => read_json(f)?,
                    None => self.data.config.clone(),
                };
                (c.disks.clone(), config, c.saved_state.clone())
            }
            None => (
                self.data.current.disks.clone(),
                self.data.config.clone(),
                self.data.current.saved_state.clone(),
            ),
        };
        let plan = inc.plan(&disks)?;
        self.export_into(
            &disks,
            &config,
            saved.as_deref(),
            dest,
            hooks,
            point.as_ref().map(Point::of),
            Some(&plan),
        )
    }
}

/// Write the differencing disk `out` (which must not exist) on `base`,
/// holding `src`'s content in `ranges`. `progress` follows the bytes
/// copied and may cancel. On failure `out` is removed.
pub(crate) fn write_incremental(
    src: &Path,
    out: &Path,
    base: &Path,
    ranges: &[Range],
    progress: Progress,
) -> Result<()> {
    let s = Disk::open(src, OpenMode::ReadOnly)?;
    let opts = ChildOptions {
        block_size: s.block_size(),
        ..ChildOptions::default()
    };
    let child = Disk::create_child(out, base, &opts)?;
    let total: u64 = ranges.iter().map(|r| r.length).sum();
    let r = copy_ranges(&s, &child, ranges, total, progress).and_then(|()| child.close());
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r
}

/// Copy `ranges` of `src` into `dst` (zeros written as data).
fn copy_ranges(
    src: &Disk,
    dst: &Disk,
    ranges: &[Range],
    total: u64,
    progress: Progress,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut done = 0u64;
    for r in ranges {
        let mut pos = r.offset;
        let end = r.offset + r.length;
        while pos < end {
            let n = CHUNK.min(end - pos) as usize;
            src.read_at(&mut buf[..n], pos)?;
            dst.write_at(&buf[..n], pos)?;
            pos += n as u64;
            done += n as u64;
            if !progress(done, total) {
                return Err(Error::Cancelled);
            }
        }
    }
    dst.flush()
}
