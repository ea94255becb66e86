//! Compaction and resize of a live disk (`LiveDisk::compact`,
//! `LiveDisk::resize`) while writer threads keep writing through it.
//!
//! Two writer threads own alternate 1 MiB blocks of the disk and do random
//! 4 KiB writes (self-describing units, see `support::units`), trims of
//! units and of whole blocks, whole-block writes, and reads that must
//! return exactly what their own model holds; each op's latency is
//! measured (the longest is printed, never asserted). A flushing writer
//! also records what each returned flush made durable.
//!
//! Judged by: the writers' reads during the run; libckpt reading the model
//! through the live handle and after a reopen; `qemu-img check` and QEMU
//! reading the model (`qemu-img compare`) on closed base disks; libvhdi
//! (`pyvhdi` with `set_parent`) reading a compacted differencing top
//! through its chain. Under `CI=true` a missing oracle fails.
//!
//! Cases: repeated compactions (quick and full) of a base top and of a
//! differencing top; a checkpoint switch and a resize arriving during a
//! compaction; a cancel then a second compaction; a transient EIO at
//! points of a live compaction (the compacting thread only is armed) then
//! a retry; a grow and a shrink while writers write.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ckpt::io::{faults, Cut, Transient};
use ckpt::{
    ChildOptions, CompactMode, CompactOptions, CreateOptions, Disk, ErrorKind, LiveDisk, OpenMode,
    ResizeOptions,
};
use support::units::{decode, unit_bytes, vhdi_chain_units, UNIT};
use support::{Rng, MIB};

const SIZE: u64 = 32 * MIB;
const BS: u64 = MIB;
const U: u64 = UNIT as u64;
const UNITS: u64 = SIZE / U;
const UPB: u64 = BS / U;

// ------------------------------------------------------------------ model

/// Per 4 KiB unit: every value it was given in order (a sequence number
/// of `support::units`; 0 is zeros), and the index of the first one a
/// returned flush makes durable (what a reopen after a failure may hold:
/// that value or a later one).
#[derive(Debug, Clone)]
struct Model {
    hist: Vec<Vec<u64>>,
    durable: Vec<usize>,
}

impl Model {
    fn new(units: u64) -> Model {
        Model {
            hist: vec![vec![0]; units as usize],
            durable: vec![0; units as usize],
        }
    }

    fn cur(&self, u: u64) -> u64 {
        *self.hist[u as usize].last().unwrap()
    }

    fn set(&mut self, u: u64, v: u64) {
        self.hist[u as usize].push(v);
    }

    /// Everything is durable now (after a close).
    fn all_durable(&mut self) {
        for (d, h) in self.durable.iter_mut().zip(&self.hist) {
            *d = h.len() - 1;
        }
    }

    /// The whole disk as bytes.
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.hist.len() * UNIT);
        for u in 0..self.hist.len() as u64 {
            out.extend(unit_bytes(0, u, self.cur(u)));
        }
        out
    }

    /// Every unit read with `read` holds exactly the model.
    fn check_exact(&self, read: impl Fn(&mut [u8], u64), what: &str) {
        let mut b = vec![0u8; UNIT];
        for u in 0..self.hist.len() as u64 {
            read(&mut b, u * U);
            let got = decode(0, u, &b, what);
            assert_eq!(got, self.cur(u), "{what}: unit {u}");
        }
    }

    /// Every unit holds its durable value or a later one.
    fn check_durable(&self, units: &[Vec<u8>], what: &str) {
        for (u, b) in units.iter().enumerate() {
            let got = decode(0, u as u64, b, what);
            let ok = &self.hist[u][self.durable[u]..];
            assert!(
                ok.contains(&got),
                "{what}: unit {u} holds seq {got}, allowed {ok:?} (a flushed write was lost)"
            );
        }
    }

    /// libvhdi read `units`: every unit the model holds data in must hold
    /// exactly it. Units that read as zeros are left out: libvhdi 20210425
    /// reads a ZERO block of a differencing file (what a whole-block trim
    /// leaves there) as the parent (see `tests/libvhdi.rs`); libckpt's
    /// reads judge them.
    fn check_vhdi(&self, units: &[Vec<u8>], what: &str) {
        let mut judged = 0;
        for (u, b) in units.iter().enumerate() {
            let want = self.cur(u as u64);
            if want != 0 {
                assert_eq!(decode(0, u as u64, b, what), want, "{what}: unit {u}");
                judged += 1;
            }
        }
        assert!(judged > 0, "{what}: no unit holds data");
    }

    /// The units of the blocks of thread `t` of `threads` from `part`.
    fn merge(&mut self, part: &Model, t: u64, threads: u64) {
        for u in 0..self.hist.len() as u64 {
            if (u / UPB) % threads == t {
                self.hist[u as usize] = part.hist[u as usize].clone();
                self.durable[u as usize] = part.durable[u as usize];
            }
        }
    }
}

fn units_of(read: impl Fn(&mut [u8], u64), units: u64) -> Vec<Vec<u8>> {
    (0..units)
        .map(|u| {
            let mut b = vec![0u8; UNIT];
            read(&mut b, u * U);
            b
        })
        .collect()
}

// ---------------------------------------------------------------- writers

/// What one writer thread did.
struct Out {
    model: Model,
    ops: u64,
    /// The longest read, write or trim.
    max_stall: Duration,
    /// The longest flush (a sync: the storage's time more than ours).
    max_flush: Duration,
    error: Option<String>,
}

/// How the writers work.
#[derive(Clone, Copy)]
struct Plan {
    threads: u64,
    /// Blocks `0..blocks` are written (thread `t` owns `b % threads == t`).
    blocks: u64,
    /// Flush after this many ops (0: never).
    flush_every: u64,
    /// Also write whole blocks sometimes.
    block_writes: bool,
}

struct Writers {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    plan: Plan,
    handles: Vec<thread::JoinHandle<Out>>,
}

impl Writers {
    fn start(disk: &Arc<LiveDisk>, model: &Model, plan: Plan, seed: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let handles = (0..plan.threads)
            .map(|t| {
                let (disk, stop, ops) = (disk.clone(), stop.clone(), ops.clone());
                let model = model.clone();
                thread::spawn(move || writer(disk, model, plan, t, seed, &stop, &ops))
            })
            .collect();
        Writers {
            stop,
            ops,
            plan,
            handles,
        }
    }

    /// Wait until the writers did `n` more ops.
    fn wait_ops(&self, n: u64) {
        let want = self.ops.load(Ordering::Acquire) + n;
        let t = Instant::now();
        while self.ops.load(Ordering::Acquire) < want && t.elapsed() < Duration::from_secs(10) {
            if self.handles.iter().all(|h| h.is_finished()) {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stop them; the merged model, the ops done, the longest stall of a
    /// read, write or trim, the first error (the longest flush is printed).
    fn finish(self, base: &Model) -> (Model, u64, Duration, Option<String>) {
        self.stop.store(true, Ordering::Release);
        let mut m = base.clone();
        let (mut ops, mut stall, mut flush, mut err) = (0, Duration::ZERO, Duration::ZERO, None);
        for (t, h) in self.handles.into_iter().enumerate() {
            let o = h.join().expect("a writer panicked");
            m.merge(&o.model, t as u64, self.plan.threads);
            ops += o.ops;
            stall = stall.max(o.max_stall);
            flush = flush.max(o.max_flush);
            err = err.or(o.error);
        }
        println!("longest writer flush: {flush:?}");
        (m, ops, stall, err)
    }
}

fn writer(
    disk: Arc<LiveDisk>,
    mut model: Model,
    plan: Plan,
    t: u64,
    seed: u64,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Out {
    let mut rng = Rng::new(seed * 31 + t);
    let mine: Vec<u64> = (0..plan.blocks).filter(|b| b % plan.threads == t).collect();
    // Sequence numbers of this thread never meet another's or the prefill's.
    let mut seq = (t + 1) << 40;
    let mut touched: Vec<u64> = Vec::new();
    let mut out = Out {
        model: Model::new(0),
        ops: 0,
        max_stall: Duration::ZERO,
        max_flush: Duration::ZERO,
        error: None,
    };
    while !stop.load(Ordering::Acquire) {
        let b = mine[rng.below(mine.len() as u64) as usize];
        let u = b * UPB + rng.below(UPB);
        let r = rng.below(100);
        let t0 = Instant::now();
        let res = if r < 55 {
            seq += 1;
            model.set(u, seq);
            touched.push(u);
            disk.write_at(&unit_bytes(0, u, seq), u * U)
        } else if r < 61 {
            for k in b * UPB..(b + 1) * UPB {
                model.set(k, 0);
                touched.push(k);
            }
            disk.trim(b * BS, BS)
        } else if r < 65 {
            model.set(u, 0);
            touched.push(u);
            disk.trim(u * U, U)
        } else if r < 67 && plan.block_writes {
            let mut buf = Vec::with_capacity(BS as usize);
            for k in b * UPB..(b + 1) * UPB {
                seq += 1;
                buf.extend(unit_bytes(0, k, seq));
                model.set(k, seq);
                touched.push(k);
            }
            disk.write_at(&buf, b * BS)
        } else {
            let mut buf = vec![0u8; UNIT];
            disk.read_at(&mut buf, u * U).map(|()| {
                let got = decode(0, u, &buf, "a writer's read");
                assert_eq!(got, model.cur(u), "a writer read unit {u} back wrong");
            })
        };
        out.max_stall = out.max_stall.max(t0.elapsed());
        if let Err(e) = res {
            out.error = Some(e.to_string());
            break;
        }
        out.ops += 1;
        count.fetch_add(1, Ordering::AcqRel);
        if plan.flush_every > 0 && out.ops % plan.flush_every == 0 {
            let covered: Vec<(u64, usize)> = touched
                .drain(..)
                .map(|k| (k, model.hist[k as usize].len() - 1))
                .collect();
            let t0 = Instant::now();
            if let Err(e) = disk.flush() {
                out.error = Some(e.to_string());
                break;
            }
            out.max_flush = out.max_flush.max(t0.elapsed());
            for (k, i) in covered {
                let d = &mut model.durable[k as usize];
                *d = (*d).max(i);
            }
        }
    }
    out.model = model;
    out
}

// ------------------------------------------------------------------ setup

fn create_base(path: &Path) -> Disk {
    Disk::create(path, &CreateOptions::new(SIZE).block_size(BS as u32)).unwrap()
}

/// Write every unit of `blocks` blocks (seq 1), trim every third block,
/// flush: the model of what the disk holds.
fn prefill(disk: &LiveDisk, blocks: u64) -> Model {
    let mut m = Model::new(UNITS);
    for b in 0..blocks {
        let mut buf = Vec::with_capacity(BS as usize);
        for u in b * UPB..(b + 1) * UPB {
            buf.extend(unit_bytes(0, u, 1));
            m.set(u, 1);
        }
        disk.write_at(&buf, b * BS).unwrap();
    }
    for b in (0..blocks).step_by(3) {
        disk.trim(b * BS, BS).unwrap();
        for u in b * UPB..(b + 1) * UPB {
            m.set(u, 0);
        }
    }
    disk.flush().unwrap();
    m.all_durable();
    m
}

/// Trim every block but one in four (in the model too), so that a
/// compaction has much to give back.
fn trim_most(disk: &LiveDisk, m: &mut Model) {
    for b in 0..SIZE / BS {
        if b % 4 != 0 {
            disk.trim(b * BS, BS).unwrap();
            for u in b * UPB..(b + 1) * UPB {
                m.set(u, 0);
            }
        }
    }
}

fn opts(mode: CompactMode) -> CompactOptions<'static> {
    CompactOptions {
        mode,
        progress: None,
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Compact `disk` again and again (quick and full in turn) until `for_`
/// passed and at least `min` compactions ran; returns how many moved
/// blocks in all.
fn compact_repeatedly(disk: &LiveDisk, for_: Duration, min: usize) -> (usize, u64) {
    let t = Instant::now();
    let (mut n, mut moved) = (0usize, 0u64);
    while n < min || t.elapsed() < for_ {
        let mode = if n % 2 == 0 {
            CompactMode::Quick
        } else {
            CompactMode::Full
        };
        let r = disk
            .compact(opts(mode))
            .unwrap_or_else(|e| panic!("live compaction {n} ({}): {e}", mode.as_str()));
        moved += r.blocks_moved;
        n += 1;
    }
    (n, moved)
}

/// `qemu-img check` passes and QEMU reads `m` (when QEMU is there).
fn qemu_judges(path: &Path, m: &Model, dir: &Path) {
    if support::have_qemu() {
        support::qemu_check(path);
        support::qemu_reads(path, &m.bytes(), dir);
    }
}

/// The writers flush now and then, as a guest does: the space of trimmed
/// blocks is reused only after a flush (without any, every write into a
/// trimmed block takes new space at the end of the file).
const WRITERS: Plan = Plan {
    threads: 2,
    blocks: SIZE / BS,
    flush_every: 64,
    block_writes: true,
};

// ------------------------------------------------------------------ tests

/// Writers write, trim and read while a base top is compacted again and
/// again; then most is trimmed and a last compaction makes the file
/// smaller; the closed file passes `qemu-img check`, QEMU reads the model,
/// and so does a reopen.
#[test]
fn compact_base_top_while_writers_write() {
    let dir = support::tempdir();
    let p = dir.path().join("base.vhdx");
    let disk = Arc::new(LiveDisk::new(create_base(&p)));
    let base = prefill(&disk, 24);
    let w = Writers::start(&disk, &base, WRITERS, 1);
    let (n, moved) = compact_repeatedly(&disk, Duration::from_millis(1500), 6);
    let (mut m, ops, stall, err) = w.finish(&base);
    assert!(err.is_none(), "a writer failed: {err:?}");
    println!(
        "{n} live compactions moved {moved} blocks during {ops} writer ops; longest writer \
         stall {stall:?}; pauses {:?}",
        disk.pause_stats()
    );
    m.check_exact(|b, o| disk.read_at(b, o).unwrap(), "live, after the run");
    trim_most(&disk, &mut m);
    disk.flush().unwrap();
    let before = file_len(&p);
    let r = disk.compact(opts(CompactMode::Quick)).unwrap();
    let after = file_len(&p);
    assert_eq!(r.bytes_after, after);
    assert!(
        after < before,
        "the file did not shrink after most was trimmed: {before} -> {after} ({r:?})"
    );
    m.check_exact(
        |b, o| disk.read_at(b, o).unwrap(),
        "live, after the last compact",
    );
    Arc::try_unwrap(disk).unwrap().close().unwrap();
    qemu_judges(&p, &m, dir.path());
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    m.check_exact(|b, o| d.read_at(b, o).unwrap(), "reopened");
}

/// The same on a differencing top (after a `push_child`): what the chain
/// reads is kept (libckpt through the live handle and after a reopen,
/// libvhdi with `set_parent`); the base is never written.
#[test]
fn compact_differencing_top_while_writers_write() {
    let dir = support::tempdir();
    let bp = dir.path().join("base.vhdx");
    let cp = dir.path().join("child.avhdx");
    let disk = Arc::new(LiveDisk::new(create_base(&bp)));
    let base = prefill(&disk, 28);
    disk.push_child(
        &cp,
        &ChildOptions {
            block_size: BS as u32,
            ..ChildOptions::default()
        },
    )
    .unwrap();
    let base_hash = support::units::file_hash(&bp);
    let w = Writers::start(&disk, &base, WRITERS, 2);
    let (n, moved) = compact_repeatedly(&disk, Duration::from_millis(1500), 6);
    let (mut m, ops, stall, err) = w.finish(&base);
    assert!(err.is_none(), "a writer failed: {err:?}");
    println!(
        "{n} live compactions of a differencing top moved {moved} blocks during {ops} writer \
         ops; longest writer stall {stall:?}"
    );
    m.check_exact(
        |b, o| disk.read_at(b, o).unwrap(),
        "live chain, after the run",
    );
    trim_most(&disk, &mut m);
    disk.flush().unwrap();
    let before = file_len(&cp);
    disk.compact(opts(CompactMode::Full)).unwrap();
    let after = file_len(&cp);
    assert!(
        after < before,
        "the child did not shrink: {before} -> {after}"
    );
    m.check_exact(
        |b, o| disk.read_at(b, o).unwrap(),
        "live chain, after the last compact",
    );
    Arc::try_unwrap(disk).unwrap().close().unwrap();
    assert_eq!(
        support::units::file_hash(&bp),
        base_hash,
        "the base was written"
    );
    let d = Disk::open(&cp, OpenMode::ReadOnly).unwrap();
    m.check_exact(|b, o| d.read_at(b, o).unwrap(), "reopened chain");
    drop(d);
    if support::units::pyvhdi() {
        let units = vhdi_chain_units(&[bp, cp], UNITS, SIZE);
        m.check_vhdi(&units, "libvhdi");
    }
}

/// Compactions run on one thread, slowed down by their progress callback,
/// while writers write; the main thread takes checkpoints (`push_child`)
/// and a resize during them. A compaction whose top was switched ends with
/// `Busy`; one that saw only a resize goes on and finishes; a second
/// compaction at the same time is `Busy`. The chain reads the model all
/// along, and libvhdi reads it at the end.
#[test]
fn switch_and_resize_during_a_compaction() {
    let dir = support::tempdir();
    let bp = dir.path().join("base.vhdx");
    let disk = Arc::new(LiveDisk::new(create_base(&bp)));
    let base = prefill(&disk, 28);
    let plan = Plan {
        blocks: 24,
        ..WRITERS
    };
    let w = Writers::start(&disk, &base, plan, 3);
    let ticks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (disk, ticks, stop) = (disk.clone(), ticks.clone(), stop.clone());
        thread::spawn(move || {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let mut slow = |_: u64, _: u64| {
                    ticks.fetch_add(1, Ordering::AcqRel);
                    thread::sleep(Duration::from_millis(2));
                    true
                };
                let r = disk.compact(CompactOptions {
                    mode: CompactMode::Full,
                    progress: Some(&mut slow),
                });
                outcomes.push(r.map(|_| ()).map_err(|e| (e.kind(), e.to_string())));
            }
            outcomes
        })
    };
    let wait_ticks = |n: u64| {
        let want = ticks.load(Ordering::Acquire) + n;
        while ticks.load(Ordering::Acquire) < want {
            thread::sleep(Duration::from_millis(1));
        }
    };
    wait_ticks(3);
    let e = disk.compact(opts(CompactMode::Quick)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // A resize while a compaction runs (same top: the compaction goes on).
    let t0 = Instant::now();
    disk.resize(SIZE + 8 * MIB, ResizeOptions::default())
        .unwrap();
    println!("resize during a compaction took {:?}", t0.elapsed());
    assert_eq!(disk.virtual_size(), SIZE + 8 * MIB);
    wait_ticks(3);
    // Checkpoints while compactions run.
    let mut chain = vec![bp.clone()];
    for i in 0..3 {
        wait_ticks(3);
        let cp = dir.path().join(format!("c{i}.avhdx"));
        let t0 = Instant::now();
        disk.push_child(
            &cp,
            &ChildOptions {
                block_size: BS as u32,
                ..ChildOptions::default()
            },
        )
        .unwrap();
        println!("push_child during a compaction took {:?}", t0.elapsed());
        chain.push(cp);
    }
    wait_ticks(3);
    stop.store(true, Ordering::Release);
    let outcomes = compactor.join().unwrap();
    let (m, ops, stall, err) = w.finish(&base);
    assert!(err.is_none(), "a writer failed: {err:?}");
    println!(
        "compactions: {outcomes:?}; {ops} writer ops, longest stall {stall:?}; pauses {:?}",
        disk.pause_stats()
    );
    for o in &outcomes {
        if let Err((k, msg)) = o {
            assert_eq!(*k, ErrorKind::Busy, "{msg}");
            assert!(msg.contains("checkpoint switch"), "{msg}");
        }
    }
    let busy = outcomes.iter().filter(|o| o.is_err()).count();
    assert!(
        busy >= 1,
        "no compaction saw its top switched: {outcomes:?}"
    );
    assert!(
        busy < outcomes.len(),
        "no compaction finished: {outcomes:?}"
    );
    // The grown space reads as zeros.
    let mut tail = vec![1u8; UNIT];
    disk.read_at(&mut tail, SIZE).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    m.check_exact(|b, o| disk.read_at(b, o).unwrap(), "live chain");
    disk.compact(opts(CompactMode::Quick)).unwrap();
    m.check_exact(|b, o| disk.read_at(b, o).unwrap(), "live chain, compacted");
    Arc::try_unwrap(disk).unwrap().close().unwrap();
    if support::have_qemu() {
        support::qemu_check(&bp);
    }
    let top = chain.last().unwrap().clone();
    let d = Disk::open(&top, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.depth(), chain.len());
    m.check_exact(|b, o| d.read_at(b, o).unwrap(), "reopened chain");
    drop(d);
    if support::units::pyvhdi() {
        m.check_vhdi(
            &vhdi_chain_units(&chain, UNITS, SIZE + 8 * MIB)[..UNITS as usize],
            "libvhdi",
        );
    }
}

/// A compaction cancelled in the middle (its progress returns false)
/// while writers write: `Cancelled`, the disk reads the same, writes go
/// on; a second compaction finishes and the file passes `qemu-img check`.
#[test]
fn cancel_then_compact_again() {
    let dir = support::tempdir();
    let p = dir.path().join("base.vhdx");
    let disk = Arc::new(LiveDisk::new(create_base(&p)));
    let mut base = prefill(&disk, 32);
    trim_most(&disk, &mut base);
    disk.flush().unwrap();
    base.all_durable();
    let w = Writers::start(
        &disk,
        &base,
        Plan {
            blocks: 12,
            ..WRITERS
        },
        4,
    );
    let mut calls = 0;
    let mut cancel = |_: u64, _: u64| {
        calls += 1;
        calls < 4
    };
    let e = disk
        .compact(CompactOptions {
            mode: CompactMode::Full,
            progress: Some(&mut cancel),
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    w.wait_ops(2000);
    let r = disk.compact(opts(CompactMode::Full)).unwrap();
    w.wait_ops(500);
    let (m, _, stall, err) = w.finish(&base);
    assert!(err.is_none(), "a writer failed: {err:?}");
    println!("after a cancel: {r:?}; longest writer stall {stall:?}");
    m.check_exact(|b, o| disk.read_at(b, o).unwrap(), "live");
    Arc::try_unwrap(disk).unwrap().close().unwrap();
    qemu_judges(&p, &m, dir.path());
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    m.check_exact(|b, o| d.read_at(b, o).unwrap(), "reopened");
}

/// A transient EIO at points of a live compaction (only the compacting
/// thread is armed) while writers write and flush: the compaction fails
/// or not; a retry compacts (on the same handle, or — when the error hit
/// a sync, which poisons the handle — after reopening the file); every
/// write a returned flush covered is there, and the file passes
/// `qemu-img check`.
#[test]
fn transient_eio_during_a_live_compaction_then_retry() {
    let plan = Plan {
        blocks: 16,
        flush_every: 16,
        ..WRITERS
    };
    // How many events one live compaction makes (writers running).
    let total = {
        let dir = support::fast_tempdir();
        let p = dir.path().join("count.vhdx");
        let disk = Arc::new(LiveDisk::new(create_base(&p)));
        let base = prefill(&disk, 32);
        let w = Writers::start(&disk, &base, plan, 5);
        w.wait_ops(200);
        faults::arm(u64::MAX, Cut::Clean);
        disk.compact(opts(CompactMode::Full)).unwrap();
        let n = faults::disarm();
        w.finish(&base);
        n
    };
    assert!(total > 10, "a compaction made only {total} events");
    let points: Vec<u64> = (0..6)
        .chain((6..total).step_by((total / 14).max(1) as usize))
        .collect();
    let (mut failed, mut poisoned) = (0, 0);
    for n in points {
        let dir = support::fast_tempdir();
        let p = dir.path().join("eio.vhdx");
        let disk = Arc::new(LiveDisk::new(create_base(&p)));
        let base = prefill(&disk, 32);
        let w = Writers::start(&disk, &base, plan, 6 + n);
        w.wait_ops(200);
        faults::arm_transient(n, Transient::Eio);
        let r = disk.compact(opts(CompactMode::Full));
        faults::disarm();
        let ctx = format!("EIO at event {n} of {total} ({:?})", r.as_ref().err());
        if r.is_err() {
            failed += 1;
        }
        w.wait_ops(100);
        let retry = if r.is_err() {
            disk.compact(opts(CompactMode::Quick))
        } else {
            Ok(Default::default())
        };
        let (mut m, _, _, err) = w.finish(&base);
        match retry {
            Ok(_) => {
                assert!(err.is_none(), "{ctx}: a writer failed: {err:?}");
                m.check_exact(|b, o| disk.read_at(b, o).unwrap(), &ctx);
                Arc::try_unwrap(disk).unwrap().close().unwrap();
                m.all_durable();
            }
            Err(e) => {
                // A failed sync poisons the handle: everything after it
                // fails; the file is opened again (its log replayed).
                assert!(e.to_string().contains("earlier sync"), "{ctx}: retry: {e}");
                poisoned += 1;
                drop(disk);
                let d = LiveDisk::new(
                    Disk::open(&p, OpenMode::ReadWrite)
                        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}")),
                );
                let units = units_of(|b, o| d.read_at(b, o).unwrap(), UNITS);
                m.check_durable(&units, &ctx);
                d.compact(opts(CompactMode::Quick))
                    .unwrap_or_else(|e| panic!("{ctx}: compact after reopen: {e}"));
                let after = units_of(|b, o| d.read_at(b, o).unwrap(), UNITS);
                assert!(
                    units == after,
                    "{ctx}: the compaction changed what the disk reads"
                );
                d.close().unwrap();
                // From here the reopened contents are the model.
                for (u, b) in units.iter().enumerate() {
                    let v = decode(0, u as u64, b, &ctx);
                    m.hist[u] = vec![v];
                    m.durable[u] = 0;
                }
            }
        }
        if support::have_qemu() {
            support::qemu_check(&p);
        }
        let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
        m.check_exact(|b, o| d.read_at(b, o).unwrap(), &format!("{ctx}: reopened"));
    }
    println!("EIO points: {failed} compactions failed, {poisoned} poisoned the handle");
    assert!(failed > 0, "no injected error made a compaction fail");
}

/// A grow and a shrink of a live base disk while writers write (inside
/// the smaller size): the next `virtual_size()` is the new size; the grown
/// space reads as zeros and takes writes; a write past the new end after
/// the shrink fails with `OutOfRange`; QEMU sees the final size and reads
/// the model, and so does a reopen.
#[test]
fn resize_while_writers_write() {
    let dir = support::tempdir();
    let p = dir.path().join("base.vhdx");
    let disk = Arc::new(LiveDisk::new(create_base(&p)));
    let base = prefill(&disk, 16);
    let plan = Plan {
        blocks: 16,
        ..WRITERS
    };
    let w = Writers::start(&disk, &base, plan, 7);
    w.wait_ops(300);
    let grown = SIZE * 2;
    let r = disk.resize(grown, ResizeOptions::default()).unwrap();
    assert_eq!((r.old_size, r.new_size), (SIZE, grown));
    assert_eq!(disk.virtual_size(), grown);
    let far = grown - BS;
    let mut b = vec![7u8; UNIT];
    disk.read_at(&mut b, far).unwrap();
    assert!(b.iter().all(|&x| x == 0), "grown space must read as zeros");
    disk.write_at(&[9u8; UNIT], far).unwrap();
    w.wait_ops(300);
    // A thread writing past the size the shrink leaves, until refused.
    let shrunk = SIZE - 8 * MIB;
    let past = {
        let disk = disk.clone();
        thread::spawn(move || loop {
            if let Err(e) = disk.write_at(&[5u8; UNIT], shrunk + MIB) {
                return e;
            }
            thread::sleep(Duration::from_micros(200));
        })
    };
    thread::sleep(Duration::from_millis(20));
    let e = disk
        .resize(shrunk, ResizeOptions::default())
        .expect_err("data past the new end: refused without allow_shrink");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let r = disk
        .resize(shrunk, ResizeOptions { allow_shrink: true })
        .unwrap();
    assert!(r.bytes_dropped > 0, "{r:?}");
    assert_eq!(disk.virtual_size(), shrunk);
    let e = past.join().unwrap();
    assert_eq!(e.kind(), ErrorKind::OutOfRange, "{e}");
    assert!(e.to_string().contains(&shrunk.to_string()), "{e}");
    w.wait_ops(300);
    let (m, ops, stall, err) = w.finish(&base);
    assert!(err.is_none(), "a writer failed: {err:?}");
    println!(
        "{ops} writer ops across a grow and a shrink; longest stall {stall:?}; pauses {:?}",
        disk.pause_stats()
    );
    let mut m = m;
    m.hist.truncate((shrunk / U) as usize);
    m.durable.truncate((shrunk / U) as usize);
    m.check_exact(|b, o| disk.read_at(b, o).unwrap(), "live, shrunk");
    Arc::try_unwrap(disk).unwrap().close().unwrap();
    if support::have_qemu() {
        assert_eq!(support::qemu_virtual_size(&p), shrunk);
    }
    qemu_judges(&p, &m, dir.path());
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.virtual_size(), shrunk);
    m.check_exact(|b, o| d.read_at(b, o).unwrap(), "reopened");
}

/// `Vm::compact_disk` and `ckpt vm compact`: offline (the tool opens the
/// VM and compacts the file, `--json`), then live: this process holds the
/// VM attached with writers on its disk and serves the control channel,
/// and `ckpt vm compact DIR 0 --mode full` is carried out by it on the
/// live handle while the writers write. The model is read through the
/// handle and after a reopen; `qemu-img check` and QEMU judge the file.
#[test]
fn vm_compact_offline_and_live_through_the_control_channel() {
    use ckpt::checkpoint::{control, Vm, VmSpec};
    use std::sync::Mutex;
    use support::cli;

    let root = support::tempdir();
    let p = root.path().join("disk0.vhdx");
    let ld = LiveDisk::new(create_base(&p));
    let mut m = prefill(&ld, 32);
    trim_most(&ld, &mut m);
    ld.close().unwrap();
    m.all_durable();
    let dir = root.path().join("vm");
    Vm::create(&dir, &VmSpec::new("space", vec![p.clone()])).unwrap();
    let d = cli::s(&dir);

    // Offline.
    let before = file_len(&p);
    let v = cli::json(&["vm", "compact", d, "0", "--json"]);
    assert_eq!(v["disk"], 0);
    assert_eq!(v["mode"], "quick");
    assert_eq!(v["bytes_before"].as_u64(), Some(before), "{v}");
    let after = file_len(&p);
    assert_eq!(v["bytes_after"].as_u64(), Some(after), "{v}");
    assert!(after < before, "offline: {before} -> {after}");
    let msg = cli::fail(&["vm", "compact", d, "1"]);
    assert!(msg.contains("there is no disk 1"), "{msg}");

    // Live, through the holder.
    let mut vm = Vm::open(&dir).unwrap();
    let disk = vm.disk(0).unwrap();
    let vm = Arc::new(Mutex::new(vm));
    let server = control::serve(vm.clone(), None).expect("serve");
    let w = Writers::start(
        &disk,
        &m,
        Plan {
            blocks: 16,
            ..WRITERS
        },
        8,
    );
    w.wait_ops(500);
    let out = cli::ok_text(&["vm", "compact", d, "0", "--mode", "full"]);
    assert!(out.starts_with("Compacted disk 0 of VM \"space\""), "{out}");
    assert!(out.contains("(full)") || out.contains(", full)"), "{out}");
    w.wait_ops(500);
    // The library call on the attached VM is live too.
    let r = vm
        .lock()
        .unwrap()
        .compact_disk(0, opts(CompactMode::Quick))
        .unwrap();
    assert_eq!(r.mode, CompactMode::Quick);
    let (m, ops, stall, err) = w.finish(&m);
    assert!(err.is_none(), "a writer failed: {err:?}");
    println!("vm compact while {ops} writer ops ran; longest stall {stall:?}");
    m.check_exact(|b, o| disk.read_at(b, o).unwrap(), "live");
    drop(server);
    drop(disk);
    vm.lock().unwrap().detach().unwrap();
    drop(vm);
    qemu_judges(&p, &m, root.path());
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    m.check_exact(|b, o| d.read_at(b, o).unwrap(), "reopened");
}
