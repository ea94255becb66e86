//! The fast switch of a live create ([`Pause::switch_children`] and
//! [`Switch`]): the pause only swaps the tops in memory; the old tops are
//! made durable, and the caller commits, after the gate is released, while
//! every flush on the disks waits until the switch is settled (see the
//! module doc of [`super`], "A fast switch").

use super::*;

/// A switch whose pause is over (made by [`Pause::switch_children`]): each
/// disk writes into its new child, its old top still open read-write below
/// it, not yet known durable, and every flush on the disks waits until this
/// is settled: [`Switch::done`] once the caller committed, or
/// [`Switch::undo`] (also what dropping it unsettled does).
#[derive(Debug)]
pub struct Switch<'a> {
    disks: Vec<&'a LiveDisk>,
    barriers: Vec<Arc<Barrier>>,
    /// Each disk's old top and new child.
    tops: Vec<PathBuf>,
    children: Vec<PathBuf>,
    settled: bool,
}

impl<'a> Pause<'a> {
    /// The exclusive part of a fast switch (step 2 of the module doc): each
    /// paused disk `i` gets `children[i]` (made by [`LiveDisk::prepare_child`]
    /// of that disk) as its top, in memory; the old top stays below it,
    /// open read-write but written no more. No file is written unless a
    /// top's DataWriteGuid moved since [`LiveDisk::prepare_child`] (then the
    /// child is re-linked here, before anything is written into it). All or
    /// nothing: on an error every child is removed and every disk keeps its
    /// chain. Drop the pause next, then settle the returned [`Switch`].
    pub fn switch_children(&mut self, mut children: Vec<NewChild>) -> Result<Switch<'a>> {
        if children.len() != self.guards.len() {
            return Err(Error::InvalidArgument(format!(
                "{} new children for {} paused disks",
                children.len(),
                self.guards.len()
            )));
        }
        for (g, c) in self.guards.iter().zip(children.iter()) {
            // On error `children` is dropped: their files are removed.
            check_child(g, c)?;
            super::relink_if_moved(g.top(), c, c.file.as_ref().expect("checked"))?;
        }
        let mut sw = Switch {
            disks: Vec::with_capacity(children.len()),
            barriers: Vec::with_capacity(children.len()),
            tops: Vec::with_capacity(children.len()),
            children: Vec::with_capacity(children.len()),
            settled: false,
        };
        for ((g, c), owner) in self
            .guards
            .iter_mut()
            .zip(children.iter_mut())
            .zip(self.owners.iter())
        {
            let file = c.file.take().expect("checked");
            let mut layers = std::mem::take(&mut g.layers);
            layers.insert(
                0,
                Layer {
                    path: Some(c.path.clone()),
                    file,
                },
            );
            **g = Disk::from_layers(layers);
            let b = Arc::new(Barrier::default());
            *owner.barrier.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
            sw.disks.push(*owner);
            sw.barriers.push(b);
            sw.tops.push(c.parent.clone());
            sw.children.push(c.path.clone());
        }
        Ok(sw)
    }
}

impl Switch<'_> {
    /// Step 3, while I/O goes on: flush every old top (the writes made
    /// before the pause become durable), all disks in parallel. On an
    /// error (the first disk's that failed), undo the switch.
    pub fn flush_frozen(&self) -> Result<()> {
        let pairs: Vec<(&LiveDisk, &PathBuf)> =
            self.disks.iter().copied().zip(&self.tops).collect();
        par_map(&pairs, |(d, top)| {
            d.with_disk(|disk| match disk.layers.get(1) {
                Some(l) if l.path.as_deref() == Some(top.as_path()) => {
                    l.file.flush().map_err(|e| e.in_file(top))
                }
                _ => Err(Error::InvalidArgument(format!(
                    "{} is no longer the layer below the new child",
                    top.display()
                ))),
            })
        })
        .into_iter()
        .collect()
    }

    /// Step 5, once [`Switch::flush_frozen`] and the caller's commit
    /// succeeded: the waiting flushes return; then each old top is closed
    /// (an empty log, both headers), reopened read-only in a pause with no
    /// I/O in it, and its lock shared. An error there changes no data and
    /// leaves the old top open read-write below the child (its log replays
    /// on open): the first one is returned after all disks were tried.
    pub fn done(mut self) -> Result<()> {
        self.settled = true;
        for (d, b) in self.disks.iter().zip(&self.barriers) {
            *d.barrier.lock().unwrap_or_else(|e| e.into_inner()) = None;
            b.set(Settled::Done);
        }
        let mut first = Ok(());
        for (d, top) in self.disks.iter().zip(&self.tops) {
            let r = seal(d, top);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Undo the switch (its steps or the caller's commit failed): in a
    /// pause, each disk's child's own data is written into the old top,
    /// which is flushed and becomes the top again; the child is closed and
    /// removed. The waiting flushes then flush the restored chain. A disk
    /// whose undo fails keeps the child on top and refuses every later
    /// flush (nothing is lost, nothing claimed durable); the first error
    /// is returned after every disk was tried.
    pub fn undo(mut self) -> Result<()> {
        self.undo_inner()
    }

    fn undo_inner(&mut self) -> Result<()> {
        self.settled = true;
        let mut first = Ok(());
        let disks = std::mem::take(&mut self.disks);
        let Ok(mut pause) = pause_all(&disks) else {
            unreachable!("a switch names each disk once")
        };
        for (i, ((g, b), child)) in pause
            .guards
            .iter_mut()
            .zip(&self.barriers)
            .zip(&self.children)
            .enumerate()
        {
            let r = restore(g, child);
            let owner = pause.owners[i];
            match &r {
                Ok(()) => {
                    *owner.barrier.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    b.set(Settled::Undone);
                    let _ = std::fs::remove_file(child);
                }
                Err(e) => b.set(Settled::Failed(e.to_string())),
            }
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Switch<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.undo_inner();
        }
    }
}

/// The checks of a prepared child against the disk it is for.
fn check_child(disk: &Disk, child: &NewChild) -> Result<()> {
    if disk.path() != Some(child.parent.as_path()) {
        return Err(Error::InvalidArgument(format!(
            "the new child {} was made for {}, not for this disk's top",
            child.path.display(),
            child.parent.display()
        )));
    }
    if child.file.is_none() {
        return Err(Error::InvalidArgument(
            "the new child was used already".into(),
        ));
    }
    Ok(())
}

impl LiveDisk {
    /// Seal every layer below the top that a switch left open read-write
    /// (its seal in [`Switch::done`] failed, a warning then; later switches
    /// may have pushed it further down): closed (an empty log) and reopened
    /// read-only, its lock shared, so that a merge may open it. Nothing to
    /// do when they are all read-only.
    pub(crate) fn seal_frozen(&self) -> Result<()> {
        // After a failed undo the layer below may hold writes never flushed.
        if let Some(b) = self.barrier_now() {
            if let Settled::Failed(why) = &*b.state.lock().unwrap_or_else(|e| e.into_inner()) {
                return Err(failed_error(why));
            }
        }
        let open: Vec<PathBuf> = self.with_disk(|disk| {
            disk.layers
                .iter()
                .skip(1)
                .filter(|l| !l.file.is_read_only())
                .filter_map(|l| l.path.clone())
                .collect()
        });
        open.iter().try_for_each(|t| seal(self, t))
    }
}

/// Close the old top `top` (a layer below the top of `d`) and reopen it
/// read-only.
///
/// Its last flush succeeded and nothing wrote into it since, so when the
/// close fails in a sync (the handle is then poisoned for good, and closing
/// again can never succeed), it is reopened read-only all the same: either
/// header on disk is consistent with the applied log, and a read-only open
/// replays whatever log is left in memory. Any other failure leaves it
/// open read-write, to be closed by a later seal.
fn seal(d: &LiveDisk, top: &Path) -> Result<()> {
    let below = |l: &Layer| l.path.as_deref() == Some(top);
    let ro = d.with_disk(|disk| match disk.layers.iter().skip(1).find(|l| below(l)) {
        Some(l) if !l.file.is_read_only() => {
            if let Err(e) = l.file.close() {
                if !l.file.is_poisoned() {
                    return Err(e.in_file(top));
                }
            }
            Image::open(l.file.storage_arc(), true)
                .map(Some)
                .map_err(|e| e.in_file(top))
        }
        _ => Ok(None),
    })?;
    let Some(ro) = ro else { return Ok(()) };
    // The file's own descriptor: a read-only open of a file whose log a
    // failed close left dirty reads through a replayed view, which has none.
    let storage = ro.host_storage();
    let mut p = d.pause();
    let g = &mut p.guards[0];
    match g.layers.iter_mut().skip(1).find(|l| below(l)) {
        Some(l) => {
            // Its session is over: dropping the writable handle writes nothing.
            drop(std::mem::replace(&mut l.file, ro));
        }
        _ => return Ok(()),
    }
    drop(p);
    if let Some(fd) = storage.raw_fd() {
        // Best effort: a refusal only keeps the lock exclusive.
        let _ = crate::io::share_lock(fd);
    }
    Ok(())
}

/// Undo one disk's switch in its pause: the chain `[child, old top, …]`
/// becomes `[old top, …]` with the child's data written into the old top
/// and flushed. On error the chain is left as it was (reads unchanged).
fn restore(g: &mut Disk, child: &Path) -> Result<()> {
    if g.layers.len() < 2 || g.layers[0].path.as_deref() != Some(child) {
        return Err(Error::InvalidArgument(format!(
            "{} is no longer the top of the disk",
            child.display()
        )));
    }
    let mut layers = std::mem::take(&mut g.layers);
    let new = layers.remove(0);
    let mut rest = Disk::from_layers(layers);
    let r = copy_own(&new.file, &rest).and_then(|_| rest.flush());
    match r {
        Ok(()) => {
            *g = rest;
            // The child's file is removed by the caller; closing it first
            // ends its session (dropping does it too).
            let _ = new.file.close();
            Ok(())
        }
        Err(e) => {
            let mut layers = std::mem::take(&mut rest.layers);
            layers.insert(0, new);
            *g = Disk::from_layers(layers);
            Err(e)
        }
    }
}

/// Write every sector that `layer` holds itself (data, or zeros where it
/// says so) into `to` at the same place.
fn copy_own(layer: &Image, to: &Disk) -> Result<()> {
    let bs = layer.geo.block_size as u64;
    let size = layer.geo.virtual_size;
    let mut runs = Vec::new();
    let mut buf = Vec::new();
    let mut off = 0u64;
    while off < size {
        let len = bs.min(size - off);
        runs.clear();
        layer.map(off, len, &mut runs)?;
        let mut at = off;
        for &(n, src) in &runs {
            if src != crate::disk::vhdx::Src::Parent {
                buf.resize(n as usize, 0);
                // Zero runs read as zeros.
                layer.read_at(&mut buf, at)?;
                to.write_at(&buf, at)?;
            }
            at += n;
        }
        off += len;
    }
    Ok(())
}
