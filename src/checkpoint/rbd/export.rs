//! [`Vm::export_rbd`]: the VM's checkpoint tree into RBD images, one
//! snapshot per checkpoint, incrementally and resumably.
//!
//! For each line of the plan (`plan.rs`) and each disk, the image is made
//! if missing (created, or cloned from the branch point's snapshot, which
//! is protected first), then every checkpoint whose snapshot it lacks is
//! sent, oldest first, and finally the head (the current state). One step:
//!
//! 1. the ranges: what changed between the newest state the image has as a
//!    snapshot and the state to send (`changes_between`; every allocated
//!    range for a first state; the whole disk when the size changed),
//!    plus what the image's head holds beyond that snapshot (`rbd diff
//!    --from-snap`: an earlier head, or what an interrupted import wrote);
//! 2. `rbd import-diff` of a stream of those ranges into the head, without
//!    a `t` record, so that no snapshot appears yet;
//! 3. verification: `rbd export-diff --from-snap` of the head, read back
//!    with our reader: its size, every data and zero record it reports
//!    matches the state, and where it reports nothing, the state equals
//!    the snapshot's (read from the local disks);
//! 4. only then `rbd snap create`.
//!
//! A failure at any point leaves only complete snapshots; running the
//! export again starts each image from its newest snapshot and finishes
//! (an image without any snapshot yet gets its first state sent again,
//! over whatever its head holds; a clone whose parent is no longer its
//! branch point is made again). Every image made
//! carries its VM's id in the image-meta [`OWNER_KEY`]; an existing image
//! without it is refused, never written.

use std::path::{Path, PathBuf};

use super::names::{clone_name, default_prefix, image_name, valid_prefix};
use super::plan::{plan_of, Line};
use super::tool::RbdTool;
use crate::checkpoint::backup::changes_between;
use crate::checkpoint::vm::Vm;
use crate::disk::merge::{coalesce, Range};
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};
use crate::rbd::diff::{DiffReader, DiffRecord, DiffStats};
use crate::rbd::stream::{allocated_ranges, write_disk_diff, DiffNames};

/// The image-meta key that names the VM (its id) an image was made for:
/// export-rbd writes only into images that carry its VM's id.
pub const OWNER_KEY: &str = "ckpt.vm";

/// What [`Vm::export_rbd`] is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RbdExportOptions {
    /// The pool the images go to.
    pub pool: String,
    /// The image name prefix (None: the VM's name, see
    /// [`default_prefix`](super::names::default_prefix)).
    pub prefix: Option<String>,
    /// Remove the snapshots of checkpoints deleted locally since an
    /// earlier export (kept otherwise).
    pub prune: bool,
    /// The `rbd` tool and the cluster it talks to.
    pub tool: RbdTool,
}

/// What happened to one image.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RbdImageReport {
    /// The image (POOL/NAME).
    pub image: String,
    /// The disk it holds (its index in the VM's disk order).
    pub disk: usize,
    /// The clone's parent (POOL/NAME@SNAP), if it is a clone.
    pub parent: Option<String>,
    /// Whether the image was made by this run.
    pub created: bool,
    /// The snapshots made by this run, oldest first.
    pub sent: Vec<String>,
    /// The snapshots it already had, kept.
    pub kept: Vec<String>,
    /// The snapshots removed (`prune`).
    pub pruned: Vec<String>,
    /// Whether the head was written (the current state).
    pub head_sent: bool,
    /// Data bytes sent to this image.
    pub data_bytes: u64,
    /// Bytes of the streams sent to this image.
    pub stream_bytes: u64,
}

/// What [`Vm::export_rbd`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RbdExportReport {
    /// The images, main line first, disk by disk.
    pub images: Vec<RbdImageReport>,
    /// Data bytes sent in all (the `w` records).
    pub data_bytes: u64,
    /// Bytes of all streams sent.
    pub stream_bytes: u64,
    /// Clones removed (`prune`): branches deleted locally (POOL/NAME).
    pub pruned_images: Vec<String>,
}

/// The states of one image's head: which snapshot it has last, and that
/// state's local disk (None: an empty image).
struct Base {
    snap: Option<String>,
    disk: Option<PathBuf>,
    /// Whether the head may hold more than `snap` (an earlier head, a cut
    /// import): then its extents beyond `snap` are sent again.
    dirty: bool,
}

impl Vm {
    /// Export the checkpoint tree into RBD images (see the module's
    /// documentation): per disk K an image `PREFIX-diskK` with one snapshot
    /// per checkpoint from the root to the current state and the current
    /// state as its head; branches as clones `PREFIX-diskK--SNAP`. Sends
    /// only what the images lack. `progress` gets one line per step.
    ///
    /// Refused for an attached VM (its current state changes while it is
    /// sent: take a checkpoint and detach, or export it later).
    pub fn export_rbd(
        &mut self,
        opts: &RbdExportOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<RbdExportReport> {
        self.settle(None)?;
        if self.attached() {
            return Err(Error::Busy(
                "the VM is attached: export-rbd sends the current state, which must not change \
                 meanwhile (detach first)"
                    .into(),
            ));
        }
        if opts.pool.is_empty() || opts.pool.contains(['/', '@']) {
            return Err(Error::InvalidArgument(format!(
                "{:?} is not a pool name",
                opts.pool
            )));
        }
        let prefix = match &opts.prefix {
            Some(p) if !valid_prefix(p) => {
                return Err(Error::InvalidArgument(format!(
                    "{p:?} cannot start an image name: use ASCII letters, digits, '.', '_', \
                     '-' and '+' (not first)"
                )))
            }
            Some(p) => p.clone(),
            None => default_prefix(&self.data.config.name),
        };
        let plan = plan_of(&self.data);
        let vm_id = self
            .data
            .id
            .clone()
            .unwrap_or_else(|| self.data.config.name.clone());
        let mut report = RbdExportReport::default();
        if opts.prune {
            let wanted: Vec<String> = (0..self.data.disks.len())
                .flat_map(|k| plan.lines.iter().map(move |l| (k, l)))
                .map(|(k, l)| line_image(&opts.pool, &prefix, k, l))
                .collect();
            let disks = self.data.disks.len();
            report.pruned_images = prune_clones(opts, &prefix, disks, &wanted, &vm_id, progress)?;
        }
        for k in 0..self.data.disks.len() {
            for (li, line) in plan.lines.iter().enumerate() {
                if line.steps.is_empty() && line.head.is_none() {
                    continue;
                }
                let name = line_image(&opts.pool, &prefix, k, line);
                let parent = line.parent.as_ref().map(|bp| {
                    (
                        line_image(&opts.pool, &prefix, k, &plan.lines[bp.line]),
                        bp.step.clone(),
                    )
                });
                let r = export_line(opts, &vm_id, k, &name, line, parent, progress)
                    .map_err(|e| context(e, &name))?;
                let _ = li;
                report.data_bytes += r.data_bytes;
                report.stream_bytes += r.stream_bytes;
                report.images.push(r);
            }
        }
        Ok(report)
    }
}

/// `prune`: remove this VM's clones whose branch is gone locally (images
/// `PREFIX-diskK--…` carrying this VM's id, not in `wanted`), each with its
/// snapshots, clones of clones first; before the lines are sent, so that
/// their branch-point snapshots can be pruned too. A clone that cannot be
/// removed (a clone of it made by someone else) is kept, with a message.
fn prune_clones(
    opts: &RbdExportOptions,
    prefix: &str,
    disks: usize,
    wanted: &[String],
    vm_id: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<String>> {
    let tool = &opts.tool;
    let mut todo = Vec::new();
    for n in tool.list(&opts.pool)? {
        let spec = format!("{}/{n}", opts.pool);
        let ours = (0..disks).any(|k| n.starts_with(&format!("{}--", image_name(prefix, k))));
        if ours
            && !wanted.contains(&spec)
            && tool.meta_get(&spec, OWNER_KEY)?.as_deref() == Some(vm_id)
        {
            todo.push(spec);
        }
    }
    let mut removed = Vec::new();
    // A clone with clones of its own fails this round and goes in a later one.
    loop {
        let n = todo.len();
        let mut left = Vec::new();
        let mut why = String::new();
        for img in std::mem::take(&mut todo) {
            let r = (|| -> Result<()> {
                for s in tool.snaps(&img)?.unwrap_or_default().iter().rev() {
                    tool.snap_remove(&img, &s.name, s.protected)?;
                }
                tool.remove(&img)
            })();
            match r {
                Ok(()) => {
                    progress(&format!("{img}: pruned (its branch is gone)"));
                    removed.push(img);
                }
                Err(e) => {
                    why = e.to_string();
                    left.push(img);
                }
            }
        }
        if left.len() == n {
            // Nothing moved this round (or nothing was left).
            for img in &left {
                progress(&format!("{img}: not pruned ({why})"));
            }
            return Ok(removed);
        }
        todo = left;
    }
}

fn context(e: Error, image: &str) -> Error {
    match e {
        Error::Io(io) if !io.to_string().contains(image) => {
            Error::Io(std::io::Error::new(io.kind(), format!("{image}: {io}")))
        }
        e => e,
    }
}

/// The image of `line` for disk `k` (POOL/NAME).
fn line_image(pool: &str, prefix: &str, k: usize, line: &Line) -> String {
    match &line.branch {
        None => format!("{pool}/{}", image_name(prefix, k)),
        Some(b) => format!("{pool}/{}", clone_name(prefix, k, b)),
    }
}

/// Bring image `name` up to `line` for disk `k`.
fn export_line(
    opts: &RbdExportOptions,
    vm_id: &str,
    k: usize,
    name: &str,
    line: &Line,
    parent: Option<(String, super::plan::Step)>,
    progress: &mut dyn FnMut(&str),
) -> Result<RbdImageReport> {
    let tool = &opts.tool;
    let mut rep = RbdImageReport {
        image: name.to_string(),
        disk: k,
        parent: parent.as_ref().map(|(img, s)| format!("{img}@{}", s.snap)),
        ..RbdImageReport::default()
    };
    let mut base = Base {
        snap: None,
        disk: parent.as_ref().map(|(_, s)| s.disks[k].clone()),
        dirty: true,
    };
    let existing = match tool.snaps(name)? {
        Some(s) => {
            let owner = tool.meta_get(name, OWNER_KEY)?;
            if owner.as_deref() != Some(vm_id) {
                return Err(Error::AlreadyExists(format!(
                    "{name} exists and was not made by export-rbd of this VM (its image-meta \
                     {OWNER_KEY} is {owner:?}, not {vm_id:?}): remove it or choose another \
                     --prefix"
                )));
            }
            if s.is_empty() && !same_parent(tool, name, parent.as_ref())? {
                // A clone of another snapshot than its branch point's
                // now: start it over.
                progress(&format!("{name}: removing an incomplete clone"));
                tool.remove(name)?;
                None
            } else {
                // An image without snapshots holds a first state that
                // never completed: kept (its head is sent again whole; a
                // killed `rbd` can leave a watcher that forbids removing
                // the image for a while).
                Some(s)
            }
        }
        None => None,
    };
    let snaps = match existing {
        Some(s) => s,
        None => {
            match &parent {
                Some((pimg, step)) => {
                    let psnaps = tool.snaps(pimg)?.unwrap_or_default();
                    let Some(ps) = psnaps.iter().find(|s| s.name == step.snap) else {
                        return Err(Error::NotFound(format!(
                            "the branch point {pimg}@{} is missing",
                            step.snap
                        )));
                    };
                    if !ps.protected {
                        tool.snap_protect(pimg, &step.snap)?;
                    }
                    progress(&format!("{name}: clone of {pimg}@{}", step.snap));
                    tool.clone_image(pimg, &step.snap, name)?;
                }
                None => {
                    let first = line
                        .steps
                        .first()
                        .map(|s| s.disks[k].clone())
                        .or_else(|| line.head.as_ref().map(|h| h[k].clone()))
                        .ok_or_else(|| Error::InvalidArgument("an empty line".into()))?;
                    let size = Disk::open(&first, OpenMode::ReadOnly)?.virtual_size();
                    progress(&format!("{name}: created ({size} bytes)"));
                    tool.create(name, size)?;
                }
            }
            tool.meta_set(name, OWNER_KEY, vm_id)?;
            rep.created = true;
            // A new image's head is exactly its parent's snapshot (or empty).
            base.dirty = false;
            Vec::new()
        }
    };
    for step in &line.steps {
        if snaps.iter().any(|s| s.name == step.snap) {
            rep.kept.push(step.snap.clone());
            base = Base {
                snap: Some(step.snap.clone()),
                disk: Some(step.disks[k].clone()),
                dirty: true,
            };
            continue;
        }
        progress(&format!(
            "{name}@{}: sending checkpoint {:?}",
            step.snap, step.name
        ));
        let st = send_state(tool, name, &base, &step.disks[k])?;
        tool.snap_create(name, &step.snap)?;
        progress(&format!(
            "{name}@{}: done ({} data bytes)",
            step.snap, st.data_bytes
        ));
        rep.sent.push(step.snap.clone());
        rep.data_bytes += st.data_bytes;
        rep.stream_bytes += st.stream_bytes;
        base = Base {
            snap: Some(step.snap.clone()),
            disk: Some(step.disks[k].clone()),
            dirty: false,
        };
    }
    if let Some(head) = &line.head {
        progress(&format!("{name}: sending the current state"));
        let st = send_state(tool, name, &base, &head[k])?;
        progress(&format!("{name}: head done ({} data bytes)", st.data_bytes));
        rep.head_sent = true;
        rep.data_bytes += st.data_bytes;
        rep.stream_bytes += st.stream_bytes;
    }
    if opts.prune {
        for s in &snaps {
            if !line.steps.iter().any(|st| st.snap == s.name) {
                match tool.snap_remove(name, &s.name, s.protected) {
                    Ok(()) => {
                        progress(&format!("{name}@{}: pruned", s.name));
                        rep.pruned.push(s.name.clone());
                    }
                    Err(e) => progress(&format!(
                        "{name}@{}: not pruned (it may have clones): {e}",
                        s.name
                    )),
                }
            }
        }
    }
    Ok(rep)
}

/// Whether `image` has the parent a new image of its line would have (none,
/// or the clone's branch-point snapshot).
fn same_parent(
    tool: &RbdTool,
    image: &str,
    parent: Option<&(String, super::plan::Step)>,
) -> Result<bool> {
    let have = tool.info(image)?.and_then(|i| i.parent);
    Ok(match (have, parent) {
        (None, None) => true,
        (Some(h), Some((pimg, step))) => {
            format!("{}/{}", h.pool, h.image) == *pimg && h.snapshot == step.snap
        }
        _ => false,
    })
}

/// Make `image`'s head hold the disk state `to` (steps 1 to 3 of the
/// module's documentation); returns what was sent.
fn send_state(tool: &RbdTool, image: &str, base: &Base, to: &Path) -> Result<DiffStats> {
    let to_disk = Disk::open(to, OpenMode::ReadOnly)?;
    let from_disk = match &base.disk {
        Some(p) => Some(Disk::open(p, OpenMode::ReadOnly)?),
        None => None,
    };
    let mut ranges = match &from_disk {
        Some(f) if f.virtual_size() == to_disk.virtual_size() => {
            changes_between(f, &to_disk).map_err(|e| e.in_file(to))?
        }
        Some(_) => vec![Range {
            offset: 0,
            length: to_disk.virtual_size(),
        }],
        None => allocated_ranges(&to_disk)?,
    };
    if base.dirty {
        for e in tool.diff_extents(image, base.snap.as_deref())? {
            ranges.push(Range {
                offset: e.offset,
                length: e.length,
            });
        }
    }
    let ranges = coalesce(ranges);
    let names = DiffNames {
        from_snap: base.snap.as_deref(),
        to_snap: None,
    };
    let st = tool.import_diff(image, |w| {
        write_disk_diff(&to_disk, &ranges, names, w, &mut |_, _| true)
    })?;
    verify_head(
        tool,
        image,
        base.snap.as_deref(),
        from_disk.as_ref(),
        &to_disk,
    )?;
    Ok(st)
}

fn mismatch(image: &str, what: String) -> Error {
    Error::Io(std::io::Error::other(format!(
        "{image}: the image's head does not hold the state just sent ({what}); no snapshot \
         was made, run the export again"
    )))
}

/// Step 3: the head of `image` equals `to` (see the module's
/// documentation), judged from `rbd export-diff --from-snap`.
fn verify_head(
    tool: &RbdTool,
    image: &str,
    from_snap: Option<&str>,
    from: Option<&Disk>,
    to: &Disk,
) -> Result<()> {
    let size = to.virtual_size();
    let covered = tool.export_diff(image, from_snap, |r| {
        let mut rd = DiffReader::new(r)?;
        let mut covered = Vec::new();
        let mut buf = Vec::new();
        loop {
            match rd.next_record()? {
                DiffRecord::Size(s) if s != size => {
                    return Err(mismatch(image, format!("size {s}, not {size}")))
                }
                DiffRecord::Write { offset, data } => {
                    let len = data.len() as u64;
                    if offset + len > size {
                        return Err(mismatch(image, format!("data past the end at {offset}")));
                    }
                    buf.resize(data.len(), 0);
                    to.read_at(&mut buf, offset)?;
                    if buf != data {
                        return Err(mismatch(
                            image,
                            format!("data differs in [{offset}, +{len})"),
                        ));
                    }
                    covered.push(Range {
                        offset,
                        length: len,
                    });
                }
                DiffRecord::Zero { offset, length } => {
                    let end = (offset + length).min(size);
                    let mut pos = offset;
                    while pos < end {
                        let n = (end - pos).min(1 << 20);
                        buf.resize(n as usize, 0);
                        to.read_at(&mut buf, pos)?;
                        if buf.iter().any(|&b| b != 0) {
                            return Err(mismatch(
                                image,
                                format!("zeros where the state has data in [{pos}, +{n})"),
                            ));
                        }
                        pos += n;
                    }
                    covered.push(Range { offset, length });
                }
                DiffRecord::End => return Ok(covered),
                _ => {}
            }
        }
    })?;
    // Where rbd reports no change, the head is the snapshot's state: the
    // state sent must equal it there, wherever the two local states differ.
    let covered = coalesce(covered);
    let differs = match from {
        Some(f) if f.virtual_size() == size => changes_between(f, to)?,
        Some(_) => vec![Range {
            offset: 0,
            length: size,
        }],
        None => allocated_ranges(to)?,
    };
    let mut a = vec![0u8; 0];
    let mut b = vec![0u8; 0];
    for gap in subtract(&differs, &covered) {
        let mut pos = gap.offset;
        let end = gap.offset + gap.length;
        while pos < end {
            let n = (end - pos).min(1 << 20) as usize;
            a.resize(n, 0);
            b.resize(n, 0);
            to.read_at(&mut a, pos)?;
            match from {
                Some(f) if pos + n as u64 <= f.virtual_size() => f.read_at(&mut b, pos)?,
                _ => b.iter_mut().for_each(|x| *x = 0),
            }
            if a != b {
                return Err(mismatch(image, format!("[{pos}, +{n}) was not written")));
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// The parts of the sorted, coalesced `a` outside the sorted, coalesced `b`.
fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    for r in a {
        let mut pos = r.offset;
        let end = r.offset + r.length;
        for x in b {
            let (xs, xe) = (x.offset, x.offset + x.length);
            if xe <= pos || xs >= end {
                continue;
            }
            if xs > pos {
                out.push(Range {
                    offset: pos,
                    length: xs - pos,
                });
            }
            pos = pos.max(xe);
        }
        if pos < end {
            out.push(Range {
                offset: pos,
                length: end - pos,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(o: u64, l: u64) -> Range {
        Range {
            offset: o,
            length: l,
        }
    }

    #[test]
    fn subtract_leaves_the_gaps() {
        assert_eq!(
            subtract(&[r(0, 100)], &[r(10, 10), r(50, 60)]),
            vec![r(0, 10), r(20, 30)]
        );
        assert_eq!(subtract(&[r(0, 10)], &[]), vec![r(0, 10)]);
        assert!(subtract(&[r(5, 5)], &[r(0, 20)]).is_empty());
    }
}
