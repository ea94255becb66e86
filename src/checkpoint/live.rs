//! An attached VM: the live disk handles of its current state
//! ([`Vm::disk`]) and the switches that checkpoint operations make on them
//! while a guest keeps doing I/O through them.
//!
//! # Attaching
//!
//! The first [`Vm::disk`] opens every current disk read-write as a
//! [`LiveDisk`] (all of them or none) and the VM stays attached until
//! [`Vm::detach`] or until the [`Vm`] is dropped. The handles keep their
//! identity through every operation; what they read and write follows the
//! current state:
//!
//! - create: each handle is switched to its new differencing disk, all
//!   disks in one short pause that writes no file (see the fast switch in
//!   [`crate::disk::live`]); the old tops' flush and the `vm.json` commit
//!   follow while the guest writes into the new disks, and every guest
//!   flush waits for them, so no flush returns while a write it covers is
//!   in a disk the tree does not name; none reaches a frozen one after;
//! - apply and revert (the guest is off or saved): the new current disks
//!   are opened before the commit, and each handle's chain is replaced by
//!   its new one after it; the old chain is closed before its files go.
//!
//! While attached, the VM's own handles never make its operations fail
//! with `Busy`: they are the current disks, which the operations know are
//! held (by this VM). A disk or frozen layer held by anything else still
//! refuses as before. A delete whose merge writes or removes a file of a
//! live chain merges live, also above a branch point (see `delete.rs`,
//! which also says why the hidden node a delete of the current state's
//! parent leaves stays until the VM is detached and opened again).
//!
//! # Stamps
//!
//! A live create's new disks are open from the moment they exist, so their
//! ownership stamp is written when the VM detaches (a crash before that
//! leaves them unstamped: still the VM's, only less guarded).

use std::path::PathBuf;
use std::sync::Arc;

use super::vm::*;
use crate::checkpoint::owner;
use crate::disk::live::{par_map, pause_all, LiveDisk, NewChild};
use crate::disk::{ChildOptions, Disk, OpenMode};
use crate::error::{Error, ErrorKind, Result};

impl Vm {
    /// The live handle of disk `i` of the current state (the order of
    /// [`VmFile::disks`](crate::checkpoint::VmFile::disks); pass-through
    /// devices are not disks). The first call attaches the VM: every current disk is opened read-write (all
    /// or none: a disk another handle or process holds is `Busy`, and then
    /// none stays open); later calls hand out the same handle. An index
    /// past the last disk is `InvalidArgument`, and attaches nothing; so is
    /// a current disk that another VM uses (see [`owner::refuse_foreign`]).
    pub fn disk(&mut self, i: usize) -> Result<Arc<LiveDisk>> {
        let n = self.data.current.disks.len();
        if i >= n {
            return Err(Error::InvalidArgument(format!(
                "VM {:?} has {n} disk(s): there is no disk {i}",
                self.data.config.name
            )));
        }
        if self.live.is_none() {
            self.settle(None)?;
            // The guest writes them: never a disk another VM uses.
            owner::refuse_foreign(
                &self.data,
                &self.data.current.disks,
                "attaching the VM (its guest writes it)",
            )?;
            let opened = self
                .data
                .current
                .disks
                .iter()
                .map(|d| Disk::open(d, OpenMode::ReadWrite).map(|d| Arc::new(LiveDisk::new(d))))
                .collect::<Result<Vec<_>>>()?;
            self.live = Some(opened);
        }
        let live = self.live.as_ref().expect("attached just now");
        Ok(live[i].clone())
    }

    /// Whether the VM is attached (a [`Vm::disk`] handle was taken).
    pub fn attached(&self) -> bool {
        self.live.is_some()
    }

    /// Flush and close the live handles. Refused (`Busy`, changing
    /// nothing) while a handle from [`Vm::disk`] is still held elsewhere:
    /// drop those first. Not attached: nothing to do. Dropping the [`Vm`]
    /// detaches too (best effort: a handle still held elsewhere then stays
    /// open until its last holder drops it).
    pub fn detach(&mut self) -> Result<()> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        if let Some(i) = live.iter().position(|d| Arc::strong_count(d) > 1) {
            return Err(Error::Busy(format!(
                "disk {i} of VM {:?} is still held by another handle: drop it before detaching",
                self.data.config.name
            )));
        }
        let mut first = Ok(());
        for d in self.live.take().unwrap_or_default() {
            let r = match Arc::try_unwrap(d) {
                Ok(d) => d.close(),
                Err(_) => Ok(()),
            };
            if first.is_ok() {
                first = r;
            }
        }
        for f in std::mem::take(&mut self.unstamped) {
            if let Err(e) = owner::stamp(&f, &self.dir, &self.data) {
                self.warnings.push(format!(
                    "{}: could not stamp it as this VM's ({e}): another VM could be given \
                     it too",
                    f.display()
                ));
            }
        }
        first
    }

    /// Seal every frozen layer of the live chains that a switch left open
    /// read-write (a warning then): before an operation opens such files
    /// itself (a delete's merge, an export), which the read-write handle
    /// would refuse (`Busy`). Writes no data; an error refuses the
    /// operation before it changed anything.
    pub(super) fn seal_live(&self) -> Result<()> {
        self.live.iter().flatten().try_for_each(|d| d.seal_frozen())
    }

    /// Step 1 of a live create: a new child for every live handle at
    /// `new_disks` (none when the VM is not attached), made in parallel.
    /// On an error the children made are dropped (their files removed).
    pub(super) fn prepare_live(&self, new_disks: &[PathBuf]) -> Result<Option<Vec<NewChild>>> {
        let Some(live) = &self.live else {
            return Ok(None);
        };
        let pairs: Vec<(&LiveDisk, &PathBuf)> = live.iter().map(|d| &**d).zip(new_disks).collect();
        par_map(&pairs, |(d, p)| {
            d.prepare_child(p, &ChildOptions::default())
        })
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .map(Some)
    }

    /// The switch of a live create: pause every handle, make the children
    /// the tops (in memory only) and end the pause; then, while the guest
    /// writes into the children, flush the old tops and run `commit` (which
    /// saves `vm.json`); only then do the guest's flushes return (see
    /// [`crate::disk::live`]). When a step fails and `vm.json` does not
    /// name checkpoint `id`, the switch is undone (the children's writes go
    /// back into the old tops, which are the tops again; the children are
    /// removed). After the commit, closing the old tops is best effort (a
    /// failure is a warning: their logs replay on open).
    pub(super) fn switch_live(
        &mut self,
        children: Vec<NewChild>,
        id: &str,
        commit: impl FnOnce(&mut Vm) -> Result<()>,
    ) -> Result<()> {
        let live = self.live.clone().unwrap_or_default();
        let refs: Vec<&LiveDisk> = live.iter().map(|d| d.as_ref()).collect();
        let made: Vec<PathBuf> = children.iter().map(|c| c.path().to_path_buf()).collect();
        let switch = pause_all(&refs)?.switch_children(children)?;
        // The pause is over: the guest writes into the children. Only a
        // commit that ran can have landed (a delete's `id` is in `vm.json`
        // all along: a failed flush of the old tops is never committed).
        let r = match switch.flush_frozen() {
            Ok(()) => commit(self).map_err(|e| (e, true)),
            Err(e) => Err((e, false)),
        };
        if let Err((e, ran)) = r {
            let committed = ran && self.stored_holds(|d| d.checkpoints.iter().any(|c| c.id == id));
            if !committed {
                if let Err(u) = switch.undo() {
                    // Still the storage's failure, as the caller asked.
                    let msg = format!(
                        "{e}; and the live disks could not be switched back ({u}): detach \
                         and open the VM again"
                    );
                    return Err(match e.kind() {
                        ErrorKind::Io => Error::Io(std::io::Error::other(msg)),
                        ErrorKind::NoSpace => Error::NoSpace(msg),
                        _ => Error::InvalidArgument(msg),
                    });
                }
                return Err(e);
            }
            self.after_commit(&format!("the live create of checkpoint {id}"), Err(e));
        }
        if let Err(e) = switch.done() {
            self.warnings.push(format!(
                "closing a frozen disk after the live create of checkpoint {id}: {e} (its log \
                 is replayed when it is opened)"
            ));
        }
        self.unstamped.extend(made);
        Ok(())
    }

    /// Before an apply's commit: the new current disks `files`, opened
    /// read-write for the live handles (none when not attached).
    pub(super) fn open_live(&self, files: &[PathBuf]) -> Result<Option<Vec<Disk>>> {
        if self.live.is_none() {
            return Ok(None);
        }
        files
            .iter()
            .map(|f| Disk::open(f, OpenMode::ReadWrite))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// After an apply's commit: each live handle takes its new chain; the
    /// old chains are closed (a failure is a warning: the data they held is
    /// being discarded).
    pub(super) fn replace_live(&mut self, new: Vec<Disk>) {
        let live = self.live.clone().unwrap_or_default();
        for (i, (l, d)) in live.iter().zip(new).enumerate() {
            let r = l.replace(d).and_then(|old| old.close());
            if let Err(e) = r {
                self.warnings.push(format!(
                    "disk {i}: switching its live handle to the applied state: {e}"
                ));
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.live.is_some() {
            // Handles still held elsewhere stay open with their holders.
            if self.detach().is_err() {
                self.live = None;
            }
        }
    }
}
