//! [`LiveDisk`]: a disk handle whose identity never changes while the chain
//! behind it is switched — to a new differencing child (a checkpoint's
//! "create" step) or to another chain altogether (apply, revert, the end of
//! a live merge) — while other threads keep reading and writing through it.
//!
//! Depends on the rest of `disk` (it is a child module and sees [`Disk`]'s
//! layers), never on `checkpoint`.
//!
//! # The gate
//!
//! Every call (read, write, flush, trim, extents, info, …) holds the
//! handle's gate shared for its whole duration, so requests run in parallel
//! exactly as on a [`Disk`]. A switch takes the gate exclusively: it waits
//! for the requests in flight to complete, new ones wait for the switch to
//! end, and no request ever sees half a switch. [`pause_all`] takes the
//! gates of several handles, always in one order (by address), so two
//! pauses over overlapping sets cannot deadlock. A pause waiting for the
//! gate is counted (`LiveDisk::exclusive`): a live compaction, the one
//! request that holds the gate shared for long, sees it between two steps
//! and gives the gate up (see `live/space.rs`).
//!
//! # A switch to a new child, step by step
//!
//! Before the pause ([`LiveDisk::prepare_child`], gate shared for a moment
//! only to read the top's facts):
//!
//! 1. the child file is created (must not exist), linked to the top's
//!    current DataWriteGuid, opened read-write, and its write session is
//!    started (so the first write after the switch costs no header update);
//!    then ([`LiveDisk::preflush`], which [`LiveDisk::push_child`] calls)
//!    the top is flushed while writers go on (again while a flush took
//!    long, a few times at most), so that the flush in the pause has little
//!    left to write.
//!
//! In the pause (gate exclusive, [`Pause::push_children`]), for each disk:
//!
//! 2. the top is flushed and its write session ended ([`Disk::close`]'s
//!    protocol: an empty log, both headers written and synced): the file is
//!    clean;
//! 3. if the top's DataWriteGuid changed since step 1 (its first write of a
//!    session changes it), the child's parent linkage is rewritten (through
//!    the child's log, flushed);
//! 4. the top is opened again read-only on the same open file (no path is
//!    reopened, the parents are not touched).
//!
//! Then, once every disk of the pause got through steps 2–4:
//!
//! 5. each chain becomes [child, old top (read-only), old parents…], reusing
//!    the open parent handles, and the old top's file lock is downgraded from
//!    exclusive to shared, so others may open it read-only.
//!
//! An error in steps 2–4 on any disk undoes the steps made on every disk of
//! the pause: the read-only reopenings are dropped, the new children
//! removed; each top stays the writable top (its session ended, the next
//! write starts a new one). A refused switch changes no data. One caveat:
//! a failed *sync* of a top poisons its handle, as it does on any [`Disk`].
//!
//! # What a writer sees
//!
//! A write that returned before the switch began is in the frozen layer; a
//! write that starts after the switch returned goes to the child; a write
//! that overlaps the switch lands wholly in one of them. Nothing is written
//! into a layer after it was frozen. The writer's only cost is the wait for
//! the pause (steps 2–5: a few syncs of the top, more if step 3 runs).
//!
//! # What a crash leaves
//!
//! - during step 1: at most a partial child file nobody links to (the old
//!   chain opens as before; the stray child either fails to open or opens
//!   as an empty child of the top);
//! - during step 2: the top with its log replayed on open: the old chain,
//!   with every flushed write; the child opens as the new chain only while
//!   its linkage still matches;
//! - during step 3: the child's log is replayed on open; it then links to
//!   the top (new chain) or to the old DataWriteGuid (refused with
//!   `ParentMismatch`: the old chain is the state);
//! - after step 4 nothing is written any more by the switch.
//!
//! Which chain is "current" after a crash is for the caller (the VM's
//! journal) to decide; the disk layer guarantees that both open.
//!
//! # The fast switch: only memory in the pause
//!
//! [`Pause::push_children`] above does steps 2–4 in the pause, so a writer
//! waits for several syncs per disk. [`Pause::switch_children`] (what a
//! VM's live create uses) keeps in the exclusive section only what must be
//! atomic with respect to guest I/O:
//!
//! - in the pause: each child becomes the top **in memory**, the old top
//!   stays below it, still open read-write but never written again, and a
//!   *barrier* is set on the handle. No file is written (the child's
//!   linkage is right from step 1: [`LiveDisk::prepare_child`] starts the
//!   top's write session first, and a session keeps its DataWriteGuid until
//!   it ends; should it have moved anyway, the re-link is done here, in the
//!   pause, because it must reach the child before any write does);
//! - the pause ends: writes go on at once, into the children;
//! - [`Switch::flush_frozen`]: each old top is flushed (what was written
//!   before the pause becomes durable); then the caller commits (the VM
//!   saves `vm.json` naming the children);
//! - [`Switch::done`]: the barrier is lifted; then each old top is closed
//!   (empty log, headers), reopened read-only in a pause with no I/O in it,
//!   and its lock shared. A failure here is only a warning: the file is
//!   durable already, its log replays on open.
//! - [`Switch::undo`] (the flush or the commit failed, or the [`Switch`]
//!   was dropped unsettled): in a pause, every sector the child holds is
//!   written into the old top, the old top is flushed and becomes the top
//!   again, the child is removed. When that cannot be done (the old top's
//!   handle was poisoned by a failed sync), the handle keeps the child on
//!   top and every later flush fails: nothing is claimed durable.
//!
//! Every **flush** on the handle (the only durability promise a guest
//! gets; there is no FUA path apart from it) reads the barrier under the
//! gate, flushes the current chain, and then waits until the switch is
//! settled: after `done` it returns Ok (its writes are in a child the
//! caller's tree names, on top of a durable old top); after `undo` it
//! flushes the restored chain; after a failed undo it fails. So no flush
//! ever returns while a write it covers is in a file the tree does not
//! name yet. Writes, reads and trims never wait.
//!
//! What a crash leaves (the VM's journal names the children until the
//! commit, and removes them on recovery when the commit did not land):
//!
//! - in the pause: nothing was written; the old chain, every flushed write
//!   in it;
//! - during the old tops' flush, before the commit: the old tops with their
//!   logs replayed — every write flushed before the switch; the children
//!   are removed, with the writes made into them, none of which a flush
//!   reported durable (those flushes were waiting);
//! - during the commit: `vm.json` names the children or not (it is
//!   replaced atomically); if it does, the old tops are durable already
//!   (flushed before the commit) and the children link to their
//!   DataWriteGuid; if not, as above;
//! - during `done`'s close of an old top: the checkpoint is committed; the
//!   old top's log (all applied) replays on open, a no-op;
//! - during an undo: the commit did not land, the children are removed;
//!   the old tops hold every flushed write and maybe a part of the copied,
//!   never-flushed ones (whole sectors, each as the guest wrote it).
//!
//! In every case the VM reopens with every checkpoint intact and every
//! write a returned flush covered present (`tests/vm_live.rs` cuts at
//! every write and sync of the main thread while writers write and flush).
//!
//! # Live merge
//!
//! [`LiveDisk::merge_down`] (in `live/merge.rs`, with its own doc) merges a
//! frozen layer into the one below it while I/O goes on, and drops it from
//! the chain in one short pause.
//!
//! # Space
//!
//! [`LiveDisk::compact`] and [`LiveDisk::resize`] (in `live/space.rs`, with
//! its own doc) compact the top while I/O goes on, and resize it in one
//! pause.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::chain;
use super::image::Image;
use super::vhdx::Vhdx;
use super::{child_create_options, create_file, ChildOptions, Disk, DiskInfo, Extent, Layer};
use crate::error::{Error, Result};
use crate::version::creator;

mod merge;
mod space;
mod switch;
pub use merge::{LiveMergeOptions, LiveMergeReport};
pub use switch::Switch;

/// Most flushes of the top before a slow switch (see [`LiveDisk::preflush`]).
const PREFLUSHES: usize = 4;
/// A flush this quick leaves little for the pause's flush.
const QUICK_FLUSH: Duration = Duration::from_millis(2);

/// A disk handle for a running guest: the same I/O surface as [`Disk`], on
/// a chain that [`LiveDisk::push_child`] and [`LiveDisk::replace`] switch
/// under it. `Send + Sync`; share it by reference or in an `Arc`.
#[derive(Debug)]
pub struct LiveDisk {
    disk: RwLock<Disk>,
    /// Held by the live merge running on this handle, if any.
    merging: Mutex<()>,
    /// Held by the live compaction running on this handle, if any.
    compacting: Mutex<()>,
    /// How many pauses are waiting for the gate (see
    /// [`LiveDisk::exclusive`]): a live compaction, which holds the gate
    /// shared for long, steps aside when it sees one (`live/space.rs`).
    pausing: AtomicUsize,
    /// Set while a [`Switch`] is not settled (and after one that could not
    /// be undone): every flush waits for it (see the module doc).
    barrier: Mutex<Option<Arc<Barrier>>>,
    /// The pauses this handle's requests saw (see [`LiveDisk::pause_stats`]).
    pauses: Mutex<PauseStats>,
}

/// The pauses a [`LiveDisk`]'s requests have seen: each from the moment its
/// gate began to hold new requests (the wait for the ones in flight
/// included) until it opened again. Every pause counts: a checkpoint's
/// switch, the steps of a live merge, an apply's replace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PauseStats {
    /// How many pauses.
    pub count: u64,
    /// The longest.
    pub max: Duration,
    /// The latest.
    pub last: Duration,
    /// All of them together.
    pub total: Duration,
}

impl PauseStats {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.max = self.max.max(d);
        self.last = d;
        self.total += d;
    }
}

/// What a flush issued after a switch waits for: the switch settled.
#[derive(Debug, Default)]
struct Barrier {
    state: Mutex<Settled>,
    cv: Condvar,
}

#[derive(Debug, Clone, Default)]
enum Settled {
    /// The post-pause steps are running.
    #[default]
    Pending,
    /// The old top is durable and the caller committed: the child is named.
    Done,
    /// The switch was undone: the child's writes are back in the old top.
    Undone,
    /// The switch could neither be completed nor undone: no flush on this
    /// handle can succeed any more.
    Failed(String),
}

impl Barrier {
    fn set(&self, s: Settled) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
        self.cv.notify_all();
    }

    fn wait(&self) -> Settled {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*st, Settled::Pending) {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.clone()
    }
}

/// The error of every flush on a handle whose switch failed.
fn failed_error(why: &str) -> Error {
    Error::Io(std::io::Error::other(format!(
        "a live checkpoint switch of this disk could neither be completed nor undone ({why}): \
         nothing written since is known durable; detach and open the VM again"
    )))
}

/// A new differencing child made ready by [`LiveDisk::prepare_child`],
/// waiting for the pause that switches to it. Dropped unused, its file is
/// removed.
#[derive(Debug)]
pub struct NewChild {
    path: PathBuf,
    /// The top it was made for.
    parent: PathBuf,
    /// The DataWriteGuid it links to (None for a VHD: it links to the
    /// top's unique id and timestamp, which writes never change).
    linked: Option<Uuid>,
    file: Option<Image>,
}

impl NewChild {
    /// Where the child's file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NewChild {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            drop(f);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The gates of one or more [`LiveDisk`]s held exclusively: no request
/// runs on them until this is dropped. Made by [`pause_all`] or
/// [`LiveDisk::pause`]; the disks are addressed by their index in the
/// slice given there.
#[derive(Debug)]
pub struct Pause<'a> {
    /// Guards in the caller's order.
    guards: Vec<RwLockWriteGuard<'a, Disk>>,
    /// The handles, in the same order.
    owners: Vec<&'a LiveDisk>,
    /// When the first gate began to hold new requests.
    started: Instant,
}

impl Drop for Pause<'_> {
    fn drop(&mut self) {
        let d = self.started.elapsed();
        for o in &self.owners {
            o.pauses.lock().unwrap_or_else(|e| e.into_inner()).add(d);
        }
    }
}

/// `f` on every item, on one thread per item when there are several (the
/// disks of a VM flush in parallel: their syncs overlap on the device);
/// results in the items' order. On this thread alone while it simulates
/// crashes (the fault plan counts one thread's events).
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 || crate::io::faults::is_armed() {
        return items.iter().map(f).collect();
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = items.iter().map(|t| s.spawn(|| f(t))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Pause every disk of `disks` together: wait for the requests in flight on
/// each to complete and hold new ones until the guard is dropped. The gates
/// are taken in address order, so concurrent pauses never deadlock. A disk
/// named twice is refused.
pub fn pause_all<'a>(disks: &[&'a LiveDisk]) -> Result<Pause<'a>> {
    let mut order: Vec<usize> = (0..disks.len()).collect();
    order.sort_by_key(|&i| disks[i] as *const LiveDisk as usize);
    if order
        .windows(2)
        .any(|w| std::ptr::eq(disks[w[0]], disks[w[1]]))
    {
        return Err(Error::InvalidArgument(
            "a disk is named twice in one pause".into(),
        ));
    }
    let mut taken: Vec<Option<RwLockWriteGuard<'a, Disk>>> =
        (0..disks.len()).map(|_| None).collect();
    let started = Instant::now();
    for i in order {
        taken[i] = Some(disks[i].exclusive());
    }
    Ok(Pause {
        guards: taken.into_iter().flatten().collect(),
        owners: disks.to_vec(),
        started,
    })
}

impl LiveDisk {
    /// Make `disk` live.
    pub fn new(disk: Disk) -> LiveDisk {
        LiveDisk {
            disk: RwLock::new(disk),
            merging: Mutex::new(()),
            compacting: Mutex::new(()),
            pausing: AtomicUsize::new(0),
            barrier: Mutex::new(None),
            pauses: Mutex::new(PauseStats::default()),
        }
    }

    /// The pauses this handle's requests have seen so far (what a guest
    /// waits for during a checkpoint's switch, a live merge's steps, an
    /// apply).
    pub fn pause_stats(&self) -> PauseStats {
        *self.pauses.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self) -> RwLockReadGuard<'_, Disk> {
        self.disk.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the gate exclusively (every pause goes through here). While it
    /// waits for the requests in flight, the count of waiting pauses says
    /// so, which a live compaction polls between its steps: it gives the
    /// gate up at its next step instead of making the pause (and every
    /// request queued behind it) wait for the whole compaction.
    fn exclusive(&self) -> RwLockWriteGuard<'_, Disk> {
        self.pausing.fetch_add(1, Ordering::AcqRel);
        let g = self.disk.write().unwrap_or_else(|e| e.into_inner());
        self.pausing.fetch_sub(1, Ordering::AcqRel);
        g
    }

    /// Whether a pause is waiting for the gate.
    fn pause_waiting(&self) -> bool {
        self.pausing.load(Ordering::Acquire) > 0
    }

    /// Run `f` on the current chain, with the gate held shared.
    pub fn with_disk<R>(&self, f: impl FnOnce(&Disk) -> R) -> R {
        f(&self.get())
    }

    /// See [`Disk::read_at`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.get().read_at(buf, offset)
    }

    /// See [`Disk::write_at`].
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.get().write_at(buf, offset)
    }

    /// See [`Disk::flush`]. After a [`Pause::switch_children`], and until
    /// its [`Switch`] is settled, a flush also waits for the old top to be
    /// durable and the switch committed (or undone), so that it never
    /// returns with a write in a file the caller's tree does not name yet.
    pub fn flush(&self) -> Result<()> {
        let barrier = {
            let d = self.get();
            // Read under the gate: a switch sets it in its pause.
            let b = self.barrier_now();
            if let Some(b) = &b {
                if let Settled::Failed(why) = &*b.state.lock().unwrap_or_else(|e| e.into_inner()) {
                    return Err(failed_error(why));
                }
            }
            d.flush()?;
            b
        };
        match barrier.map(|b| b.wait()) {
            None | Some(Settled::Done) => Ok(()),
            // The chain changed back: flush what is there now.
            Some(Settled::Undone) => self.flush(),
            Some(Settled::Failed(why)) => Err(failed_error(&why)),
            Some(Settled::Pending) => unreachable!("waited until settled"),
        }
    }

    fn barrier_now(&self) -> Option<Arc<Barrier>> {
        self.barrier
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// See [`Disk::trim`].
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.get().trim(offset, len)
    }

    /// See [`Disk::extents`].
    pub fn extents(&self) -> Result<Vec<Extent>> {
        self.get().extents()
    }

    /// See [`Disk::extents_in`].
    pub fn extents_in(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.get().extents_in(offset, len)
    }

    /// See [`Disk::info`] (of the current top).
    pub fn info(&self) -> DiskInfo {
        self.get().info()
    }

    /// See [`Disk::virtual_size`].
    pub fn virtual_size(&self) -> u64 {
        self.get().virtual_size()
    }

    /// See [`Disk::logical_sector_size`].
    pub fn logical_sector_size(&self) -> u32 {
        self.get().logical_sector_size()
    }

    /// See [`Disk::block_size`] (of the current top).
    pub fn block_size(&self) -> u32 {
        self.get().block_size()
    }

    /// The current top file's path.
    pub fn path(&self) -> Option<PathBuf> {
        self.get().path().map(Path::to_path_buf)
    }

    /// The current chain's files, top first (see [`Disk::chain`]).
    pub fn chain(&self) -> Vec<Option<PathBuf>> {
        self.get().chain()
    }

    /// Number of layers of the current chain.
    pub fn depth(&self) -> usize {
        self.get().depth()
    }

    /// Pause this disk alone (see [`pause_all`]).
    pub fn pause(&self) -> Pause<'_> {
        let started = Instant::now();
        Pause {
            guards: vec![self.exclusive()],
            owners: vec![self],
            started,
        }
    }

    /// Step 1 of a switch (see the module doc): create the differencing
    /// child `path` (which must not exist) of the current top and make it
    /// ready, without pausing anyone. The top must have been opened from a
    /// path and be writable.
    pub fn prepare_child(&self, path: impl AsRef<Path>, opts: &ChildOptions) -> Result<NewChild> {
        let path = path.as_ref();
        // A switch that could not be settled leaves the handle refusing
        // every flush: no new child over it either (nor over one not yet
        // settled).
        if let Some(b) = self.barrier_now() {
            match &*b.state.lock().unwrap_or_else(|e| e.into_inner()) {
                Settled::Failed(why) => return Err(failed_error(why)),
                Settled::Pending => {
                    return Err(Error::Busy(
                        "a checkpoint switch of this disk is not settled yet".into(),
                    ))
                }
                Settled::Done | Settled::Undone => {}
            }
        }
        let (parent, spec, copts) = {
            let d = self.get();
            let parent = d
                .path()
                .ok_or_else(|| {
                    Error::InvalidArgument(
                        "a live disk's top must be opened from a path to get a child".into(),
                    )
                })?
                .to_path_buf();
            if d.top().is_read_only() {
                return Err(Error::ReadOnly);
            }
            if let Some(v) = d.top().as_vhd() {
                // A VHD child links to the top's unique id and timestamp.
                let spec = chain::vhd_parent_spec(path, &parent, v)?;
                let size = d.virtual_size();
                drop(d);
                let storage = super::vhd_api::create_vhd_child_file(path, &spec, size, opts)?;
                return match Image::open(storage, false) {
                    Ok(file) => Ok(NewChild {
                        path: path.to_path_buf(),
                        parent,
                        linked: None,
                        file: Some(file),
                    }),
                    Err(e) => {
                        let _ = std::fs::remove_file(path);
                        Err(e.in_file(path))
                    }
                };
            }
            // The top's DataWriteGuid is fixed for the whole session: once
            // it runs, the child links to the guid the top keeps until the
            // switch (no re-link in the pause).
            d.ctx(d.top().vhdx().and_then(|v| v.start_session()))?;
            let spec = chain::parent_spec(path, &parent, d.top())?;
            (parent, spec, child_create_options(&d, opts))
        };
        let linked = match spec.locator.linkage(crate::format::locator::PARENT_LINKAGE) {
            Some(g) => Some(g),
            None => {
                return Err(Error::corrupt(
                    crate::error::Structure::ParentLocator,
                    None,
                    crate::error::Reason::Missing("parent_linkage"),
                ))
            }
        };
        let storage = create_file(path, |s| {
            Vhdx::create(s, &copts, &creator(), Some(&spec), &[])
        })?;
        let ready = Vhdx::open(storage, false)
            .and_then(|f| f.start_session().map(|_| f))
            .map(Image::from);
        match ready {
            Ok(file) => Ok(NewChild {
                path: path.to_path_buf(),
                parent,
                linked,
                file: Some(file),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e.in_file(path))
            }
        }
    }

    /// Before a slow switch ([`Pause::push_children`], which flushes the
    /// tops in its pause): flush the top while writers go on, so that the
    /// flush in the pause has little left to write; again while a flush
    /// took long (writers dirtied much meanwhile), at most `PREFLUSHES`
    /// times. A fast switch ([`Pause::switch_children`]) needs none: it
    /// flushes the old tops after its pause.
    pub fn preflush(&self) -> Result<()> {
        for _ in 0..PREFLUSHES {
            let t = Instant::now();
            self.flush()?;
            if t.elapsed() < QUICK_FLUSH {
                break;
            }
        }
        Ok(())
    }

    /// Switch to a new differencing child at `path` (the checkpoint
    /// "create" step): [`LiveDisk::prepare_child`], then a pause of this
    /// disk in which [`Pause::push_children`] runs. On error nothing changed.
    pub fn push_child(&self, path: impl AsRef<Path>, opts: &ChildOptions) -> Result<()> {
        let child = self.prepare_child(path, opts)?;
        // On error the child is dropped: its file is removed.
        self.preflush()?;
        self.pause().push_children(vec![child])
    }

    /// Swap in `disk` as this handle's chain (under the exclusive gate) and
    /// hand back the old one, for the caller to close. `disk` must have the
    /// same logical sector size; else nothing changes. Its virtual size may
    /// differ (a checkpoint applied from before a resize): the guest sees
    /// it from its next size query on ([`LiveDisk::virtual_size`]), and an
    /// I/O past the new end gets [`Error::InvalidArgument`].
    pub fn replace(&self, disk: Disk) -> Result<Disk> {
        self.pause().replace(0, disk)
    }

    /// The chain behind the handle.
    pub fn into_disk(self) -> Disk {
        self.disk.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Close the current chain (see [`Disk::close`]).
    pub fn close(self) -> Result<()> {
        self.into_disk().close()
    }
}

/// What steps 2–4 leave for step 5.
struct Frozen {
    top: Image,
}

impl Pause<'_> {
    /// The current chain of disk `i` of the pause.
    pub fn disk(&self, i: usize) -> Option<&Disk> {
        self.guards.get(i).map(|g| &**g)
    }

    /// Number of disks paused.
    pub fn len(&self) -> usize {
        self.guards.len()
    }

    /// Whether no disk is paused.
    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// Switch every paused disk to its new child (`children[i]` for disk
    /// `i`, each made by [`LiveDisk::prepare_child`] of that disk): steps
    /// 2–5 of the module doc. All or nothing: on an error every child is
    /// removed and every disk keeps its chain.
    pub fn push_children(&mut self, mut children: Vec<NewChild>) -> Result<()> {
        if children.len() != self.guards.len() {
            return Err(Error::InvalidArgument(format!(
                "{} new children for {} paused disks",
                children.len(),
                self.guards.len()
            )));
        }
        let mut frozen: Vec<Frozen> = Vec::with_capacity(children.len());
        for (g, c) in self.guards.iter().zip(children.iter_mut()) {
            // On error, `frozen` and `children` are dropped: the read-only
            // reopenings go, the children's files are removed.
            frozen.push(freeze(g, c)?);
        }
        for ((g, c), f) in self.guards.iter_mut().zip(children.iter_mut()).zip(frozen) {
            let file = c.file.take().expect("a prepared child has its file");
            let mut layers = std::mem::take(&mut g.layers);
            let old_top = layers.remove(0);
            let top_path = old_top.path.clone();
            let storage = f.top.storage_arc();
            let mut new = Vec::with_capacity(layers.len() + 2);
            new.push(Layer {
                path: Some(c.path.clone()),
                file,
            });
            new.push(Layer {
                path: top_path,
                file: f.top,
            });
            new.extend(layers);
            // The old writable handle's session is over: dropping it writes nothing.
            drop(old_top);
            **g = Disk::from_layers(new);
            if let Some(fd) = storage.raw_fd() {
                // Best effort: a refusal only keeps the lock exclusive.
                let _ = crate::io::share_lock(fd);
            }
        }
        Ok(())
    }

    /// Swap `disk` in as the chain of paused disk `i` and hand back the old
    /// chain (see [`LiveDisk::replace`]).
    pub fn replace(&mut self, i: usize, disk: Disk) -> Result<Disk> {
        let g = self
            .guards
            .get_mut(i)
            .ok_or_else(|| Error::InvalidArgument(format!("no paused disk {i}")))?;
        if disk.logical_sector_size() != g.logical_sector_size() {
            return Err(Error::InvalidArgument(format!(
                "a live disk of {}-byte sectors cannot switch to a chain of {}-byte sectors",
                g.logical_sector_size(),
                disk.logical_sector_size()
            )));
        }
        Ok(std::mem::replace(&mut **g, disk))
    }
}

/// Steps 2–4 for one disk: end the top's session, fix the child's linkage
/// if the top's DataWriteGuid moved, reopen the top read-only.
fn freeze(disk: &Disk, child: &NewChild) -> Result<Frozen> {
    if disk.path() != Some(child.parent.as_path()) {
        return Err(Error::InvalidArgument(format!(
            "the new child {} was made for {}, not for this disk's top",
            child.path.display(),
            child.parent.display()
        )));
    }
    let Some(file) = child.file.as_ref() else {
        return Err(Error::InvalidArgument(
            "the new child was used already".into(),
        ));
    };
    let top = disk.top();
    disk.ctx(top.close())?;
    relink_if_moved(top, child, file)?;
    let ro = Image::open(top.storage_arc(), true).map_err(|e| e.in_file(&child.parent))?;
    Ok(Frozen { top: ro })
}

/// A VHDX child made for a top whose DataWriteGuid moved since (a write
/// path that had to change it) is pointed at the new one; a VHD child
/// links to what never moves.
fn relink_if_moved(top: &Image, child: &NewChild, file: &Image) -> Result<()> {
    let Some(linked) = child.linked else {
        return Ok(());
    };
    let guid = top.vhdx()?.header().data_write_guid;
    if guid != linked {
        let loc = chain::locator_for(&child.path, &child.parent, &guid)?;
        file.set_parent_locator(loc.to_bytes())
            .map_err(|e| e.in_file(&child.path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CreateOptions;

    /// What a VM's live create does with its disks' new children: made in
    /// parallel; when one fails, the others' files are removed.
    #[test]
    fn parallel_children_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let disks: Vec<LiveDisk> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("d{i}.vhdx"));
                LiveDisk::new(Disk::create(&p, &CreateOptions::new(64 << 20)).unwrap())
            })
            .collect();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("c{i}.avhdx")))
            .collect();
        // The second child's path is taken: its creation fails.
        std::fs::write(&paths[1], b"taken").unwrap();
        let pairs: Vec<(&LiveDisk, &PathBuf)> = disks.iter().zip(&paths).collect();
        let r = par_map(&pairs, |(d, p)| {
            d.prepare_child(p, &ChildOptions::default())
        })
        .into_iter()
        .collect::<Result<Vec<_>>>();
        assert!(r.is_err());
        assert!(!paths[0].exists() && !paths[2].exists());
        assert_eq!(std::fs::read(&paths[1]).unwrap(), b"taken");
        // And all succeed once the path is free, in order.
        std::fs::remove_file(&paths[1]).unwrap();
        let made = par_map(&pairs, |(d, p)| {
            d.prepare_child(p, &ChildOptions::default())
        })
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .unwrap();
        for (c, p) in made.iter().zip(&paths) {
            assert_eq!(c.path(), p.as_path());
            assert!(p.exists());
        }
        drop(made);
        assert!(paths.iter().all(|p| !p.exists()));
    }
}
