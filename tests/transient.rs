//! Transient errors: every mutating operation runs with its k-th storage
//! event (write, resize, discard, allocate, sync) failing once — EIO and
//! ENOSPC in turn, both at the first and the last event — for every k
//! (sampled evenly, first and last always included, when there are many),
//! and then
//!
//! - **retry**: the same operation again on the same handle. It must
//!   succeed (or the handle must refuse everything, a flush too, until it
//!   is reopened — issue 8 allows that; the reopen path then applies), and
//!   at the end everything any call reported Ok must be in the file after a
//!   reopen (a flush or close that returns Ok after an earlier failure must
//!   have persisted what the failure left undone);
//! - **reopen**: the handle is dropped and the file reopened. What was
//!   flushed before the failure is exact, the rest is per sector old or new,
//!   and the rest of the scenario then succeeds on the new handle.
//!
//! The operation that fails must return the injected error (kind `Io` or
//! `NoSpace`), and every file must open and pass the structural check
//! (and, on a sample of base disks, `qemu-img check`).
//!
//! Disk operations run on `FaultStorage::transient`; file-based ones (create,
//! child create, merge, flatten, reparent, the checkpoint tree) through the
//! thread-local `faults::arm_transient` hook. A "write-zeroes" is a write
//! of zeros (`Disk` has no separate call; the C ABI and nbdkit do the same).
//! A checkpoint rename has no event the hook sees (see below).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ckpt::checkpoint::{CheckpointType, Hooks, NoHooks, Vm, VmSpec};
use ckpt::disk::check::check_storage;
use ckpt::disk::merge::{self, MergeOptions};
use ckpt::io::{faults, Cut, FaultStorage, MemStorage, Storage, Transient};
use ckpt::{ChildOptions, CreateOptions, Disk, ErrorKind, OpenMode};

use support::ops::{read_window, sample, verify_old_or_new, Op};
use support::{first_diff, pattern, qemu_img_bin, Ctx, KIB, MIB};

const SIZE: u64 = 8 * MIB;

/// The errors to inject at the `i`-th of `n` fault points: both at the
/// first and the last, else EIO and ENOSPC in turn (half the runs, every
/// event still hit).
fn kinds(i: usize, n: usize) -> Vec<Transient> {
    if i == 0 || i + 1 == n {
        vec![Transient::Eio, Transient::NoSpace]
    } else if i % 2 == 0 {
        vec![Transient::Eio]
    } else {
        vec![Transient::NoSpace]
    }
}

fn expected_kind(kind: Transient) -> ErrorKind {
    match kind {
        Transient::Eio => ErrorKind::Io,
        Transient::NoSpace => ErrorKind::NoSpace,
    }
}

/// The error an operation returned must be the injected one.
fn assert_injected(ctx: &str, e: &ckpt::Error, kind: Transient) {
    assert_eq!(
        e.kind(),
        expected_kind(kind),
        "{ctx}: the failing operation must report the injected {kind:?}, got {:?}: {e}",
        e.kind()
    );
}

// ---------------------------------------------------------------------------
// Disk operations on FaultStorage.

/// A disk image (and, for a differencing disk, its parent's) and the
/// operations to run on it.
struct Scenario {
    name: &'static str,
    /// Each 1 MiB block of the model lives [`GAP`] apart on the disk, so
    /// that every block has a BAT sector of its own (a lost BAT update is
    /// then not repaired by a later change to a neighbour).
    spread: bool,
    image: Vec<u8>,
    parent: Option<Vec<u8>>,
    content: Vec<u8>,
    ops: Vec<Op>,
}

fn open_on(sc: &Scenario, top: Arc<dyn Storage>) -> ckpt::Result<Disk> {
    match &sc.parent {
        None => Disk::open_storage(top, OpenMode::ReadWrite),
        Some(p) => Disk::open_storage_chain(
            vec![top, Arc::new(MemStorage::from_vec(p.clone()))],
            OpenMode::ReadWrite,
        ),
    }
}

fn open_ro(sc: &Scenario, bytes: &[u8]) -> Disk {
    let top: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(bytes.to_vec()));
    let r = match &sc.parent {
        None => Disk::open_storage(top, OpenMode::ReadOnly),
        Some(p) => Disk::open_storage_chain(
            vec![top, Arc::new(MemStorage::from_vec(p.clone()))],
            OpenMode::ReadOnly,
        ),
    };
    r.unwrap_or_else(|e| panic!("{}: the file does not open: {e}", sc.name))
}

/// Distance between the model's blocks on a spread disk (more than the
/// 512 blocks one 4 KiB BAT sector describes).
const GAP: u64 = 520 * MIB;

fn disk_size(spread: bool) -> u64 {
    if spread {
        SIZE / MIB * GAP
    } else {
        SIZE
    }
}

/// Run `op` (whose offsets are in the 8 MiB model) on the disk; on a spread
/// disk, one call per model block, at its place.
fn run_op(spread: bool, disk: &Disk, op: &Op) -> ckpt::Result<()> {
    let Some((off, len)) = op.range().filter(|_| spread) else {
        return op.run(disk);
    };
    let data = op.data();
    let mut pos = off;
    while pos < off + len {
        let end = ((pos / MIB + 1) * MIB).min(off + len);
        let at = pos / MIB * GAP + pos % MIB;
        let piece = &data[(pos - off) as usize..(end - off) as usize];
        match op {
            Op::Trim { .. } => disk.trim(at, end - pos)?,
            _ => disk.write_at(piece, at)?,
        }
        pos = end;
    }
    Ok(())
}

/// The model's 8 MiB as the disk reads them.
fn read_model(spread: bool, disk: &Disk) -> Vec<u8> {
    if !spread {
        return read_window(disk, 0, SIZE);
    }
    (0..SIZE / MIB)
        .flat_map(|b| read_window(disk, b * GAP, MIB))
        .collect()
}

fn ops_scenario() -> Vec<Op> {
    vec![
        // Allocating, unaligned, across blocks 1..=3.
        Op::Write {
            off: 2 * MIB - 1000,
            len: MIB + 3001,
            seed: 10,
        },
        Op::Write {
            off: 5000,
            len: 700,
            seed: 11,
        },
        Op::Flush,
        Op::Trim { off: MIB, len: MIB },
        Op::Trim {
            off: 4 * KIB,
            len: 8 * KIB,
        },
        Op::Zero {
            off: 3 * MIB + 512,
            len: 4 * KIB,
        },
        Op::Write {
            off: 5 * MIB + 12345,
            len: 200 * KIB,
            seed: 12,
        },
        Op::Flush,
        Op::Write {
            off: MIB + 3 * 512,
            len: 4 * KIB,
            seed: 13,
        },
        Op::Trim {
            off: 5 * MIB,
            len: 2 * MIB,
        },
        Op::Zero {
            off: 6 * MIB,
            len: MIB,
        },
        Op::Write {
            off: SIZE - 512,
            len: 512,
            seed: 14,
        },
        Op::Write {
            off: 7 * MIB + 77,
            len: 33,
            seed: 15,
        },
        Op::Flush,
        Op::Write {
            off: 4 * MIB,
            len: 64 * KIB,
            seed: 16,
        },
        Op::Trim { off: 0, len: MIB },
        Op::Close,
    ]
}

fn initial(spread: bool, disk: &Disk, content: &mut [u8], ops: &[Op]) {
    for op in ops {
        run_op(spread, disk, op).expect("initial op");
        op.apply(content, 0);
    }
}

fn dynamic_scenario(spread: bool) -> Scenario {
    let mem = MemStorage::new();
    let disk = Disk::create_on(
        Arc::new(mem.clone()),
        &CreateOptions::new(disk_size(spread)).block_size(MIB as u32),
    )
    .unwrap();
    let mut content = vec![0u8; SIZE as usize];
    initial(
        spread,
        &disk,
        &mut content,
        &[
            Op::Write {
                off: 0,
                len: 192 * KIB,
                seed: 1,
            },
            Op::Write {
                off: 3 * MIB,
                len: MIB,
                seed: 3,
            },
        ],
    );
    disk.close().unwrap();
    Scenario {
        name: if spread { "dynamic, spread" } else { "dynamic" },
        spread,
        image: mem.snapshot(),
        parent: None,
        content,
        ops: ops_scenario(),
    }
}

fn differencing_scenario(spread: bool) -> Scenario {
    let pmem = MemStorage::new();
    let parent = Disk::create_on(
        Arc::new(pmem.clone()),
        &CreateOptions::new(disk_size(spread)).block_size(MIB as u32),
    )
    .unwrap();
    let mut content = vec![0u8; SIZE as usize];
    initial(
        spread,
        &parent,
        &mut content,
        &[Op::Write {
            off: 0,
            len: SIZE,
            seed: 2,
        }],
    );
    parent.flush().unwrap();
    let cmem = MemStorage::new();
    Disk::create_child_on(
        Arc::new(cmem.clone()),
        &parent,
        &ChildOptions {
            block_size: MIB as u32,
            log_size: MIB as u32,
        },
    )
    .unwrap();
    parent.close().unwrap();
    let sc = Scenario {
        name: if spread {
            "differencing, spread"
        } else {
            "differencing"
        },
        spread,
        image: cmem.snapshot(),
        parent: Some(pmem.snapshot()),
        content,
        ops: ops_scenario(),
    };
    // Some data of its own before the run (partially present blocks).
    let disk = open_on(&sc, Arc::new(cmem.clone())).unwrap();
    let mut content = sc.content.clone();
    initial(
        spread,
        &disk,
        &mut content,
        &[Op::Write {
            off: 3 * MIB + 1000,
            len: 3000,
            seed: 4,
        }],
    );
    disk.close().unwrap();
    Scenario {
        image: cmem.snapshot(),
        content,
        ..sc
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Retry,
    Reopen,
}

fn uncut_events(sc: &Scenario) -> u64 {
    let f = Arc::new(FaultStorage::new(
        MemStorage::from_vec(sc.image.clone()),
        u64::MAX,
        Cut::Clean,
    ));
    let mut disk = Some(open_on(sc, f.clone()).unwrap());
    for op in &sc.ops {
        match op {
            Op::Close => disk.take().unwrap().close().unwrap(),
            op => run_op(sc.spread, disk.as_ref().unwrap(), op).unwrap(),
        }
    }
    f.events()
}

/// Run the scenario with event `k` failing once; returns whether the fault
/// hit an operation.
fn disk_run(sc: &Scenario, k: u64, kind: Transient, after: After, qemu: bool) -> bool {
    let ctx = format!("{} {kind:?} {after:?} k={k}", sc.name);
    let _g = Ctx(ctx.clone());
    let mem = MemStorage::from_vec(sc.image.clone());
    let f = Arc::new(FaultStorage::transient(mem.clone(), k, kind));
    let mut model = sc.content.clone();
    let mut durable = model.clone();
    let mut pending: Vec<Op> = Vec::new();
    let mut hit = false;
    let mut disk = Some(match open_on(sc, f.clone()) {
        Ok(d) => d,
        Err(e) => panic!("{ctx}: the read-write open of a clean file failed: {e}"),
    });
    for (i, op) in sc.ops.iter().enumerate() {
        let r = match op {
            Op::Close => disk.take().unwrap().close(),
            op => run_op(sc.spread, disk.as_ref().unwrap(), op),
        };
        match r {
            Ok(()) => {}
            Err(e) => {
                let ctx = format!("{ctx} op #{i} {op:?}");
                assert!(
                    f.fault_injected() && !hit,
                    "{ctx}: failed without an injected fault: {e}"
                );
                hit = true;
                assert_injected(&ctx, &e, kind);
                if after == After::Retry && *op != Op::Close && retry(&ctx, sc, &disk, op) {
                    // Retried on the same handle.
                } else {
                    // Reopen (a failed close leaves no handle to retry on).
                    drop(disk.take());
                    let bytes = mem.snapshot();
                    let report = check_storage(Arc::new(MemStorage::from_vec(bytes.clone())));
                    assert!(
                        report.is_ok(),
                        "{ctx}: structural check after the failure: {:?}",
                        report.problems
                    );
                    let d = open_on(sc, Arc::new(mem.clone()))
                        .unwrap_or_else(|e| panic!("{ctx}: reopen after the failure: {e}"));
                    let got = read_model(sc.spread, &d);
                    let mut maybe = pending.clone();
                    maybe.push(*op);
                    verify_old_or_new(&format!("{ctx} [after reopen]"), &got, 0, &durable, &maybe);
                    // What the reopened file holds is now the baseline.
                    model = got.clone();
                    durable = got;
                    pending.clear();
                    disk = Some(d);
                    if *op == Op::Close {
                        disk.take().unwrap().close().unwrap_or_else(|e| {
                            panic!("{ctx}: close after the reopen failed: {e}")
                        });
                        durable = model.clone();
                        continue;
                    }
                    run_op(sc.spread, disk.as_ref().unwrap(), op).unwrap_or_else(|e| {
                        panic!("{ctx}: the operation failed again after the reopen: {e}")
                    });
                }
            }
        }
        op.apply(&mut model, 0);
        pending.push(*op);
        if op.is_barrier() {
            durable = model.clone();
            pending.clear();
        }
    }
    assert!(disk.is_none(), "the scenario ends with a close");
    // Everything was reported Ok: all of it must be in the file.
    let bytes = mem.snapshot();
    let report = check_storage(Arc::new(MemStorage::from_vec(bytes.clone())));
    assert!(
        report.is_ok(),
        "{ctx}: structural check at the end: {:?}",
        report.problems
    );
    let d = open_ro(sc, &bytes);
    let got = read_model(sc.spread, &d);
    assert!(
        got == model,
        "{ctx}: after every operation and the close reported Ok (the fault was {}), the reopened \
         disk differs from the model: {}",
        if hit {
            "reported and retried"
        } else {
            "never hit"
        },
        first_diff(&got, &model)
    );
    if qemu && sc.parent.is_none() {
        qemu_check_bytes(&ctx, &bytes);
    }
    // A failed hole punch (space given back after a flush) is no failure
    // of the operation: the space is only not reused.
    hit || f.failed_a_discard()
}

/// Retry `op` on the same handle. True when it succeeds. A handle may
/// instead refuse everything after an error whose effect it cannot know
/// (issue 8 allows that): then a flush must fail too — a handle that
/// refuses the retry but flushes "successfully" is inconsistent — and the
/// caller reopens. (This is also what a retry of the failing operation
/// returning an error of its own looks like, so the refusal is printed.)
fn retry(ctx: &str, sc: &Scenario, disk: &Option<Disk>, op: &Op) -> bool {
    let d = disk.as_ref().unwrap();
    match run_op(sc.spread, d, op) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("{ctx}: NOTICE: the handle refuses the retry ({e}); reopening");
            assert!(
                d.flush().is_err(),
                "{ctx}: the retry after a transient fault failed ({e}), yet a flush on the same \
                 handle says Ok"
            );
            false
        }
    }
}

fn qemu_check_bytes(ctx: &str, bytes: &[u8]) {
    let Some(q) = qemu_img_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.vhdx");
    std::fs::write(&p, bytes).unwrap();
    qemu_check(ctx, q, &p);
}

fn qemu_check(ctx: &str, q: &Path, p: &Path) {
    let out = Command::new(q)
        .args(["check", "-f", "vhdx"])
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{ctx}: qemu-img check {}: {}{}",
        p.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn disk_sweep(sc: &Scenario, after: After) {
    let total = uncut_events(sc);
    let points = sample(total, 160);
    eprintln!(
        "{} {after:?}: {total} events, {} fault points",
        sc.name,
        points.len()
    );
    let mut hits = 0;
    let mut runs = 0;
    for (i, &k) in points.iter().enumerate() {
        for kind in kinds(i, points.len()) {
            hits += disk_run(sc, k, kind, after, i % 40 == 0) as u32;
            runs += 1;
        }
    }
    assert!(
        hits == runs,
        "every sampled event must hit an operation ({hits} of {runs})"
    );
}

#[test]
fn dynamic_disk_transient_errors_then_retry() {
    disk_sweep(&dynamic_scenario(false), After::Retry);
}

#[test]
fn dynamic_disk_transient_errors_then_reopen() {
    disk_sweep(&dynamic_scenario(false), After::Reopen);
}

#[test]
fn spread_dynamic_disk_transient_errors_then_retry() {
    disk_sweep(&dynamic_scenario(true), After::Retry);
}

#[test]
fn spread_dynamic_disk_transient_errors_then_reopen() {
    disk_sweep(&dynamic_scenario(true), After::Reopen);
}

#[test]
fn differencing_disk_transient_errors_then_retry() {
    disk_sweep(&differencing_scenario(false), After::Retry);
}

#[test]
fn differencing_disk_transient_errors_then_reopen() {
    disk_sweep(&differencing_scenario(false), After::Reopen);
}

#[test]
fn spread_differencing_disk_transient_errors_then_retry() {
    disk_sweep(&differencing_scenario(true), After::Retry);
}

/// The smallest form of bug 1: the first flush's log write fails once; the
/// retried flush and the close say Ok, so the data must be there.
#[test]
fn a_retried_flush_persists_what_the_failed_one_did_not() {
    let mem = MemStorage::new();
    Disk::create_on(
        Arc::new(mem.clone()),
        &CreateOptions::new(SIZE).block_size(MIB as u32),
    )
    .unwrap()
    .close()
    .unwrap();
    let image = mem.snapshot();
    let data = pattern(77, 0, 64 * KIB as usize);
    // Count the events up to the flush's first write into the log.
    for kind in [Transient::Eio, Transient::NoSpace] {
        let mut failed_flushes = 0;
        for k in 0..40 {
            let mem = MemStorage::from_vec(image.clone());
            let f = Arc::new(FaultStorage::transient(mem.clone(), k, kind));
            let d = Disk::open_storage(f.clone(), OpenMode::ReadWrite).unwrap();
            if d.write_at(&data, 2 * MIB).is_err() {
                d.write_at(&data, 2 * MIB).expect("retried write");
            }
            let mut durable = true;
            if let Err(e) = d.flush() {
                assert_injected("flush", &e, kind);
                failed_flushes += 1;
                // A handle may refuse everything after such an error (then
                // nothing is claimed durable); if it says Ok, it must be.
                durable = d.flush().is_ok();
            }
            durable |= d.close().is_ok();
            if !durable {
                eprintln!("{kind:?} k={k}: NOTICE: the handle refuses the retry and the close");
                continue;
            }
            let r = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadOnly).unwrap();
            let got = read_window(&r, 2 * MIB, data.len() as u64);
            assert!(
                got == data,
                "{kind:?} k={k}: write, flush (failed once, retried: Ok) and close all said Ok, \
                 but the data reads back different after a reopen: {}",
                first_diff(&got, &data)
            );
        }
        assert!(failed_flushes > 0, "no flush was hit");
    }
}

// ---------------------------------------------------------------------------
// File-based operations through the `faults` hook.

fn pat(len: usize, seed: u8) -> Vec<u8> {
    pattern(seed as u64 + 1000, 0, len)
}

fn read_path(p: &Path) -> Vec<u8> {
    let d =
        Disk::open(p, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    read_window(&d, 0, d.virtual_size())
}

fn check_path(ctx: &str, p: &Path) {
    let r = ckpt::check(p).unwrap_or_else(|e| panic!("{ctx}: check {}: {e}", p.display()));
    assert!(r.is_ok(), "{ctx}: check {}: {:?}", p.display(), r.problems);
}

/// Count the hook's events of `op` on a fresh setup.
fn count_events<S>(setup: &dyn Fn(&Path) -> S, op: &dyn Fn(&Path, &S) -> ckpt::Result<()>) -> u64 {
    let t = support::fast_tempdir();
    let s = setup(t.path());
    faults::arm(u64::MAX, Cut::Clean);
    let r = op(t.path(), &s);
    let n = faults::disarm();
    r.unwrap_or_else(|e| panic!("the operation fails without faults: {e}"));
    n
}

/// For every sampled k and both kinds: set up, run `op` with event k
/// failing once; on an error, `judge_failed` (the state after the error),
/// then retry (`op` again) which must succeed; then `judge_done`.
fn path_sweep<S>(
    name: &str,
    max: u64,
    setup: &dyn Fn(&Path) -> S,
    op: &dyn Fn(&Path, &S) -> ckpt::Result<()>,
    judge_failed: &dyn Fn(&str, &Path, &S),
    judge_done: &dyn Fn(&str, &Path, &S),
) {
    let total = count_events(setup, op);
    assert!(total > 0, "{name}: no events to fail");
    let points = sample(total, max);
    eprintln!("{name}: {total} events, {} fault points", points.len());
    for (i, &k) in points.iter().enumerate() {
        for kind in kinds(i, points.len()) {
            let ctx = format!("{name} {kind:?} k={k} of {total}");
            let _g = Ctx(ctx.clone());
            let t = support::fast_tempdir();
            let s = setup(t.path());
            faults::arm_transient(k, kind);
            let r = op(t.path(), &s);
            faults::disarm();
            if let Err(e) = r {
                assert_injected(&ctx, &e, kind);
                judge_failed(&ctx, t.path(), &s);
                if let Err(e) = op(t.path(), &s) {
                    // A merge of several layers removes them top first once
                    // it is complete: when removing a lower one fails, the
                    // named child is gone already, so the retry finds
                    // nothing to merge (the lower file is left as a stray).
                    let removal = name == "merge into ancestor" && k + 2 >= total;
                    assert!(
                        removal && e.kind() == ckpt::ErrorKind::NotFound,
                        "{ctx}: the retry after a transient {kind:?} failed: {e}"
                    );
                }
            }
            judge_done(&ctx, t.path(), &s);
        }
    }
}

#[test]
fn create_with_transient_errors() {
    for fixed in [false, true] {
        let opts = CreateOptions::new(4 * MIB)
            .block_size(MIB as u32)
            .fixed(fixed);
        path_sweep(
            if fixed {
                "create fixed"
            } else {
                "create dynamic"
            },
            200,
            &|_| (),
            &|dir, _| {
                // The retry of a create whose file exists (the create
                // succeeded, the write or close failed) reopens it.
                let p = dir.join("new.vhdx");
                let d = if p.exists() {
                    Disk::open(&p, OpenMode::ReadWrite)?
                } else {
                    Disk::create(&p, &opts)?
                };
                d.write_at(b"x", 0)?;
                d.close()
            },
            &|ctx, dir, _| {
                // A failed create leaves no file, or one that opens and
                // passes the check.
                let p = dir.join("new.vhdx");
                if p.exists() {
                    check_path(ctx, &p);
                }
            },
            &|ctx, dir, _| {
                let p = dir.join("new.vhdx");
                check_path(ctx, &p);
                let got = read_path(&p);
                assert_eq!(got[0], b'x', "{ctx}");
                assert!(got[1..].iter().all(|&b| b == 0), "{ctx}");
                if let Some(q) = qemu_img_bin() {
                    qemu_check(ctx, q, &p);
                }
            },
        );
    }
}

struct Chain {
    base: PathBuf,
    mid: PathBuf,
    top: PathBuf,
    leaf: PathBuf,
    model: Vec<u8>,
}

/// base <- mid <- top <- leaf, each with some data.
fn build_chain(dir: &Path) -> Chain {
    let base = dir.join("base.vhdx");
    let mid = dir.join("mid.avhdx");
    let top = dir.join("top.avhdx");
    let leaf = dir.join("leaf.avhdx");
    let mut model = vec![0u8; SIZE as usize];
    let d = Disk::create(&base, &CreateOptions::new(SIZE).block_size(MIB as u32)).unwrap();
    let a = pat(3 << 20, 1);
    d.write_at(&a, 0).unwrap();
    model[..a.len()].copy_from_slice(&a);
    d.close().unwrap();
    let opts = ChildOptions {
        block_size: MIB as u32,
        log_size: MIB as u32,
    };
    let d = Disk::create_child(&mid, &base, &opts).unwrap();
    for (off, len, seed) in [
        (100u64, 5000usize, 2u8),
        (2 << 20, 1 << 20, 3),
        (5 << 20, 70_000, 4),
    ] {
        let p = pat(len, seed);
        d.write_at(&p, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&p);
    }
    d.trim(MIB, MIB).unwrap();
    model[MIB as usize..2 * MIB as usize].fill(0);
    d.close().unwrap();
    let d = Disk::create_child(&top, &mid, &opts).unwrap();
    let p = pat(4096, 5);
    d.write_at(&p, 7 << 20).unwrap();
    model[7 << 20..(7 << 20) + 4096].copy_from_slice(&p);
    d.close().unwrap();
    Disk::create_child(&leaf, &top, &opts)
        .unwrap()
        .close()
        .unwrap();
    Chain {
        base,
        mid,
        top,
        leaf,
        model,
    }
}

#[test]
fn create_child_with_transient_errors() {
    path_sweep(
        "create child",
        200,
        &build_chain,
        &|dir, _| {
            let p = dir.join("new.avhdx");
            let d = if p.exists() {
                Disk::open(&p, OpenMode::ReadWrite)?
            } else {
                Disk::create_child(&p, dir.join("leaf.avhdx"), &ChildOptions::default())?
            };
            d.write_at(b"y", 12345)?;
            d.close()
        },
        &|ctx, dir, c| {
            let p = dir.join("new.avhdx");
            if p.exists() {
                check_path(ctx, &p);
            }
            assert_eq!(read_path(&c.leaf), c.model, "{ctx}: the parent changed");
        },
        &|ctx, dir, c| {
            let p = dir.join("new.avhdx");
            check_path(ctx, &p);
            let mut want = c.model.clone();
            want[12345] = b'y';
            assert!(read_path(&p) == want, "{ctx}: the new child reads wrong");
            assert_eq!(read_path(&c.leaf), c.model, "{ctx}: the parent changed");
        },
    );
}

fn merge_sweep(name: &str, into_base: bool) {
    path_sweep(
        name,
        150,
        &build_chain,
        &|_, c| {
            let (child, into) = if into_base {
                (&c.top, Some(c.base.clone()))
            } else {
                (&c.mid, None)
            };
            merge::merge(
                child,
                MergeOptions {
                    into,
                    ..Default::default()
                },
            )
            .map(|_| ())
        },
        &|ctx, _, c| {
            // The chain reads the same after a failed merge.
            let got = read_path(&c.leaf);
            assert!(
                got == c.model,
                "{ctx}: a failed merge changed what the chain reads: {}",
                first_diff(&got, &c.model)
            );
        },
        &|ctx, _, c| {
            let got = read_path(&c.leaf);
            assert!(
                got == c.model,
                "{ctx}: after the merge: {}",
                first_diff(&got, &c.model)
            );
            let gone = if into_base { &c.top } else { &c.mid };
            assert!(!gone.exists(), "{ctx}: the merged file is still there");
            for p in [&c.base, &c.leaf] {
                check_path(ctx, p);
            }
            if let Some(q) = qemu_img_bin() {
                qemu_check(ctx, q, &c.base);
            }
        },
    );
}

#[test]
fn merge_into_parent_with_transient_errors() {
    merge_sweep("merge into parent", false);
}

#[test]
fn merge_into_ancestor_with_transient_errors() {
    merge_sweep("merge into ancestor", true);
}

#[test]
fn flatten_with_transient_errors() {
    path_sweep(
        "flatten",
        200,
        &build_chain,
        &|dir, c| {
            merge::flatten(
                &c.leaf,
                &dir.join("flat.vhdx"),
                &CreateOptions::new(0).block_size(MIB as u32),
                None,
            )
        },
        &|ctx, dir, c| {
            let p = dir.join("flat.vhdx");
            assert!(!p.exists(), "{ctx}: a failed flatten left {}", p.display());
            assert_eq!(read_path(&c.leaf), c.model, "{ctx}: the source changed");
        },
        &|ctx, dir, c| {
            let p = dir.join("flat.vhdx");
            check_path(ctx, &p);
            assert!(read_path(&p) == c.model, "{ctx}: the flat copy differs");
            if let Some(q) = qemu_img_bin() {
                qemu_check(ctx, q, &p);
            }
        },
    );
}

#[test]
fn reparent_with_transient_errors() {
    path_sweep(
        "reparent",
        200,
        &|dir| {
            let c = build_chain(dir);
            // A byte copy of the base: same DataWriteGuid, another path.
            std::fs::copy(&c.base, dir.join("copy.vhdx")).unwrap();
            c
        },
        &|dir, c| merge::reparent(&c.mid, &dir.join("copy.vhdx"), false),
        &|ctx, _, c| {
            check_path(ctx, &c.mid);
            assert!(
                read_path(&c.leaf) == c.model,
                "{ctx}: a failed reparent changed the data"
            );
        },
        &|ctx, dir, c| {
            check_path(ctx, &c.mid);
            let d = Disk::open(&c.leaf, OpenMode::ReadOnly).unwrap();
            let chain = d.chain();
            let last = chain.last().cloned().flatten().unwrap();
            assert_eq!(
                std::fs::canonicalize(last).unwrap(),
                std::fs::canonicalize(dir.join("copy.vhdx")).unwrap(),
                "{ctx}: the chain does not go through the new parent"
            );
            assert!(
                read_window(&d, 0, SIZE) == c.model,
                "{ctx}: data after reparent"
            );
        },
    );
}

// ---------------------------------------------------------------------------
// The checkpoint tree.

struct Mem;
impl Hooks for Mem {
    fn save_memory(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        out.write_all(&[7u8; 1000])?;
        Ok(true)
    }
}

const VM_SIZE: u64 = 4 * MIB;

fn head(p: &Path) -> Vec<u8> {
    let d = Disk::open(p, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    read_window(&d, 3 * MIB, 16)
}

fn put(p: &Path, tag: &str) {
    let d = Disk::open(p, OpenMode::ReadWrite).unwrap();
    let mut b = tag.as_bytes().to_vec();
    b.resize(16, b'.');
    d.write_at(&b, 3 * MIB).unwrap();
    d.close().unwrap();
}

/// Two disks, checkpoints a -> b, current state after b.
fn build_vm(root: &Path) -> PathBuf {
    let mut disks = Vec::new();
    for i in 0..2 {
        let p = root.join(format!("d{i}")).join(format!("disk{i}.vhdx"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        Disk::create(&p, &CreateOptions::new(VM_SIZE).block_size(MIB as u32))
            .unwrap()
            .close()
            .unwrap();
        disks.push(p);
    }
    let dir = root.join("vm");
    let mut spec = VmSpec::new("transient", disks);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    let mut vm = Vm::create(&dir, &spec).unwrap();
    for (n, tag) in [(Some("a"), "s0"), (Some("b"), "s1"), (None, "s2")] {
        for (i, d) in vm.data().current.disks.clone().iter().enumerate() {
            put(d, &format!("{tag}-{i}"));
        }
        if let Some(n) = n {
            vm.create_checkpoint(n, None, &mut Mem).unwrap();
        }
    }
    dir
}

type VmState = (Vec<(String, Vec<Vec<u8>>)>, Vec<Vec<u8>>);

fn vm_state(vm: &Vm) -> VmState {
    let mut m: Vec<(String, Vec<Vec<u8>>)> = vm
        .data()
        .checkpoints
        .iter()
        // A checkpoint whose delete is pending is deleted as far as users
        // can see: it is refused for apply and export (its disk may be
        // half merged).
        .filter(|c| !c.hidden && !c.deleting)
        .map(|c| (c.name.clone(), c.disks.iter().map(|d| head(d)).collect()))
        .collect();
    m.sort();
    let cur = vm.data().current.disks.iter().map(|d| head(d)).collect();
    (m, cur)
}

fn vm_op(vm: &mut Vm, op: &str, root: &Path) -> ckpt::Result<()> {
    match op {
        "create" => vm.create_checkpoint("c", None, &mut Mem).map(|_| ()),
        "apply" => vm.apply("a", Some("keep"), &mut Mem),
        "apply-only" => vm.apply("a", None, &mut Mem),
        "revert" => vm.revert(),
        "delete" => vm.delete("b", false, &mut NoHooks),
        "delete-root" => vm.delete("a", false, &mut NoHooks),
        "export" => vm
            .export(Some("b"), &root.join("export"), &mut NoHooks)
            .map(|_| ()),
        _ => unreachable!(),
    }
}

/// The one state between `before` and `after` a reopen may also settle on:
/// an apply that saved the current state as a checkpoint but did not switch
/// to the applied one (both steps are complete operations of their own).
fn mid_state(op: &str, before: &VmState, after: &VmState) -> Option<VmState> {
    if op != "apply" {
        return None;
    }
    let mut m = before.0.clone();
    m.extend(after.0.iter().filter(|(n, _)| n == "keep").cloned());
    m.sort();
    Some((m, before.1.clone()))
}

fn vm_sweep(op: &str) {
    let t = support::fast_tempdir();
    let dir = build_vm(t.path());
    let mut vm = Vm::open(&dir).unwrap();
    let before = vm_state(&vm);
    faults::arm(u64::MAX, Cut::Clean);
    vm_op(&mut vm, op, t.path()).unwrap();
    let total = faults::disarm();
    let after = vm_state(&vm);
    drop(vm);
    drop(t);
    assert!(total > 0, "checkpoint {op}: no storage event to fail");
    let points = sample(total, 24);
    eprintln!(
        "checkpoint {op}: {total} events, {} fault points x retry/reopen",
        points.len()
    );
    for (i, &k) in points.iter().enumerate() {
        for kind in kinds(i, points.len()) {
            for reopen in [false, true] {
                let ctx = format!("checkpoint {op} {kind:?} k={k} of {total} reopen={reopen}");
                let _g = Ctx(ctx.clone());
                let t = support::fast_tempdir();
                let dir = build_vm(t.path());
                let mut vm = Vm::open(&dir).unwrap();
                faults::arm_transient(k, kind);
                let r = vm_op(&mut vm, op, t.path());
                faults::disarm();
                if let Err(e) = r {
                    assert_injected(&ctx, &e, kind);
                    if reopen {
                        drop(vm);
                        vm = Vm::open(&dir)
                            .unwrap_or_else(|e| panic!("{ctx}: reopen after the error: {e}"));
                        assert!(
                            !dir.join("journal.json").exists(),
                            "{ctx}: journal left after the reopen"
                        );
                        let s = vm_state(&vm);
                        let mid = mid_state(op, &before, &after);
                        assert!(
                            s == before || s == after || Some(&s) == mid.as_ref(),
                            "{ctx}: state after reopen {s:?}\nbefore {before:?}\nafter {after:?}"
                        );
                        if s == before {
                            vm_op(&mut vm, op, t.path()).unwrap_or_else(|e| {
                                panic!("{ctx}: the retry after the reopen failed: {e}")
                            });
                        } else if s != after {
                            vm_op(&mut vm, "apply-only", t.path()).unwrap_or_else(|e| {
                                panic!("{ctx}: finishing the apply failed: {e}")
                            });
                        }
                    } else {
                        // On the same handle: the operation is undone (then a
                        // retry must succeed), done despite the error (one of
                        // its last clean-up steps failed), or visibly pending:
                        // no checkpoint may then read other data than it held,
                        // and the retry either finishes it or is refused until
                        // the VM is reopened.
                        let s = vm_state(&vm);
                        if s == before {
                            vm_op(&mut vm, op, t.path()).unwrap_or_else(|e| {
                                panic!(
                                    "{ctx}: the retry on the same handle after a transient \
                                     {kind:?} failed: {e}"
                                )
                            });
                        } else if s != after {
                            for (name, data) in &s.0 {
                                let was = before.0.iter().chain(&after.0).find(|(n, _)| n == name);
                                if let Some((_, d)) = was {
                                    assert!(
                                        d == data,
                                        "{ctx}: after the error, checkpoint {name:?} reads \
                                         {data:?} on the same handle, data it never held \
                                         (before {before:?}, after {after:?})"
                                    );
                                }
                            }
                            if let Err(e) = vm_op(&mut vm, op, t.path()) {
                                eprintln!("{ctx}: the retry on the same handle is refused: {e}");
                                drop(vm);
                                vm =
                                    Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                                let s = vm_state(&vm);
                                let mid = mid_state(op, &before, &after);
                                assert!(
                                    s == before || s == after || Some(&s) == mid.as_ref(),
                                    "{ctx}: state after reopen {s:?}"
                                );
                                if s == before {
                                    vm_op(&mut vm, op, t.path()).unwrap_or_else(|e| {
                                        panic!("{ctx}: the retry after the reopen failed: {e}")
                                    });
                                } else if s != after {
                                    vm_op(&mut vm, "apply-only", t.path()).unwrap_or_else(|e| {
                                        panic!("{ctx}: finishing the apply failed: {e}")
                                    });
                                }
                            }
                        }
                    }
                }
                let s = vm_state(&vm);
                assert!(
                    s == after,
                    "{ctx}: state after the operation {s:?}\nexpected {after:?}"
                );
                drop(vm);
                let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: final reopen: {e}"));
                assert!(vm_state(&vm) == after, "{ctx}: state after a final reopen");
                let strays = vm.strays().unwrap();
                assert!(strays.is_empty(), "{ctx}: orphan files {strays:?}");
                for d in vm.data().current.disks.iter() {
                    check_path(&ctx, d);
                }
            }
        }
    }
}

#[test]
fn checkpoint_create_with_transient_errors() {
    vm_sweep("create");
}

#[test]
fn checkpoint_apply_with_transient_errors() {
    vm_sweep("apply");
}

#[test]
fn checkpoint_revert_with_transient_errors() {
    vm_sweep("revert");
}

#[test]
fn checkpoint_delete_with_transient_errors() {
    vm_sweep("delete");
}

#[test]
fn checkpoint_delete_root_with_transient_errors() {
    vm_sweep("delete-root");
}

// A rename only rewrites vm.json, which `model::write_atomic` writes
// outside the fault hook: tests/disk_full.rs fails it on a full file system.

#[test]
fn checkpoint_export_with_transient_errors() {
    vm_sweep("export");
}
