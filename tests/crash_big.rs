//! Crash sweeps over flushes that span many log entries.
//!
//! Second scenario: 1200 allocating writes into a 256 GiB dynamic disk (a
//! 2 MiB BAT) plus trims that feed the free list, in one flush, then
//! allocations that reuse the freed space — on a sparse storage, cut at
//! every event near a sync and every 37th other one, clean and torn.
//!
//! A differencing disk of 128 GiB with 1 MiB blocks has a 1 MiB BAT (256
//! sectors of 4 KiB, 32 chunks with their sector-bitmap entries), while a
//! 1 MiB log entry holds ~126 sectors. The scenario trims the whole disk
//! except one block per chunk (every BAT sector becomes dirty), writes a
//! few sectors into the spared block of every chunk (new PARTIALLY_PRESENT
//! entries and a new SB_PRESENT entry per chunk), flushes — one flush of
//! hundreds of metadata sectors — then changes a few blocks more and closes.
//!
//! The run is cut at a deterministic dense sample of its storage events
//! (every event near a sync or a write into the log, every 9th elsewhere; torn cuts at the writes among them),
//! with clean and torn cuts, and on the lossy storage of
//! `support::lossy` (any subset of the writes since the last sync may be
//! lost). After each cut the file must open, pass the structural check,
//! and every probed block must read, as a whole block, one of the states
//! the model gives it between the last completed flush and the cut (old or
//! new — never half a flush, never a block another flush left behind).
//! The same run with one event failing once (EIO or ENOSPC) and the
//! failing operation retried must end, when all says Ok, with every block
//! in its final state.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use ckpt::disk::check::check_storage;
use ckpt::io::{Cut, FaultStorage, MemStorage, Storage};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

use support::lossy::LossyStorage;
use support::ops::{read_window, Op};
use support::sparse::SparseStorage;
use support::{first_diff, Ctx, Event, Recorder, Rng, MIB};

const SIZE: u64 = 128 << 30;
const BS: u64 = MIB;
/// Blocks per chunk (512-byte sectors, 1 MiB blocks).
const CHUNK: u64 = 4096;
const CHUNKS: u64 = SIZE / BS / CHUNK;

struct Scenario {
    parent: Vec<u8>,
    child: Vec<u8>,
    /// Ops that built the parent's and the child's contents (already in the images).
    initial: Vec<Op>,
    ops: Vec<Op>,
    /// Blocks whose contents are judged.
    probes: Vec<u64>,
}

fn kept(c: u64) -> u64 {
    c * CHUNK + 7
}

fn hidden(c: u64) -> u64 {
    c * CHUNK + 100
}

fn scenario() -> Scenario {
    let pmem = MemStorage::new();
    let parent = Disk::create_on(
        Arc::new(pmem.clone()),
        &CreateOptions::new(SIZE).block_size(BS as u32),
    )
    .unwrap();
    let mut initial = Vec::new();
    for c in 0..CHUNKS {
        // Parent data under the spared block and under a block the trim hides.
        for b in [kept(c), hidden(c)] {
            if c % 2 == 0 || b == kept(c) {
                initial.push(Op::Write {
                    off: b * BS,
                    len: BS,
                    seed: 1000 + b,
                });
            }
        }
    }
    for op in &initial {
        op.run(&parent).unwrap();
    }
    parent.flush().unwrap();
    let cmem = MemStorage::new();
    Disk::create_child_on(
        Arc::new(cmem.clone()),
        &parent,
        &ChildOptions {
            block_size: BS as u32,
            log_size: MIB as u32,
        },
    )
    .unwrap();
    parent.close().unwrap();
    let pbytes = pmem.snapshot();
    // The child's own data before the run: a partial block in chunk 1.
    let child = Disk::open_storage_chain(
        vec![
            Arc::new(cmem.clone()),
            Arc::new(MemStorage::from_vec(pbytes.clone())),
        ],
        OpenMode::ReadWrite,
    )
    .unwrap();
    let own = Op::Write {
        off: (CHUNK + 20) * BS + 4096,
        len: 8192,
        seed: 5,
    };
    own.run(&child).unwrap();
    child.close().unwrap();
    initial.push(own);

    let mut ops = Vec::new();
    // 1. Trim all but the spared block of each chunk.
    let mut pos = 0;
    for c in 0..CHUNKS {
        let k = kept(c) * BS;
        ops.push(Op::Trim {
            off: pos,
            len: k - pos,
        });
        pos = k + BS;
    }
    ops.push(Op::Trim {
        off: pos,
        len: SIZE - pos,
    });
    // 2. A few unaligned sectors into every spared block (partially present).
    for c in 0..CHUNKS {
        ops.push(Op::Write {
            off: kept(c) * BS + 1000,
            len: 3000,
            seed: 2000 + c,
        });
    }
    ops.push(Op::Flush);
    // 3. More changes after the big flush, then close.
    for c in (0..CHUNKS).step_by(4) {
        ops.push(Op::Write {
            off: hidden(c) * BS + 512,
            len: 4096,
            seed: 3000 + c,
        });
    }
    for c in (0..CHUNKS).step_by(3) {
        ops.push(Op::Trim {
            off: kept(c) * BS,
            len: BS,
        });
    }
    ops.push(Op::Close);

    let mut probes: Vec<u64> = (0..CHUNKS)
        .flat_map(|c| [kept(c), hidden(c), kept(c) + 1, c * CHUNK])
        .collect();
    probes.push(CHUNK + 20);
    let mut rng = Rng::new(8);
    for _ in 0..16 {
        probes.push(rng.below(SIZE / BS));
    }
    probes.sort_unstable();
    probes.dedup();
    Scenario {
        parent: pbytes,
        child: cmem.snapshot(),
        initial,
        ops,
        probes,
    }
}

fn open_chain(sc: &Scenario, top: Arc<dyn Storage>, mode: OpenMode) -> ckpt::Result<Disk> {
    Disk::open_storage_chain(
        vec![top, Arc::new(MemStorage::from_vec(sc.parent.clone()))],
        mode,
    )
}

/// Run the operations on `top` until the first error; returns how many
/// completed and the failed one.
fn run_on(sc: &Scenario, top: Arc<dyn Storage>) -> (usize, Option<usize>) {
    let Ok(disk) = open_chain(sc, top, OpenMode::ReadWrite) else {
        return (0, Some(0));
    };
    let mut disk = Some(disk);
    for (i, op) in sc.ops.iter().enumerate() {
        let r = match op {
            Op::Close => disk.take().unwrap().close(),
            op => op.run(disk.as_ref().unwrap()),
        };
        if r.is_err() {
            return (i, Some(i));
        }
    }
    (sc.ops.len(), None)
}

/// Cut points: every event within 3 of a sync or a write into the log,
/// every 9th other one, and the last; also the events that are writes.
fn cut_points(sc: &Scenario) -> (Vec<u64>, u64, std::collections::HashSet<u64>) {
    let layout = support::raw::Layout::parse(&sc.child);
    let log = layout.log_offset..layout.log_offset + layout.log_length as u64;
    let rec = Recorder::new(MemStorage::from_vec(sc.child.clone()));
    let (done, failed) = run_on(sc, rec.clone());
    assert_eq!((done, failed), (sc.ops.len(), None), "the uncut run failed");
    let events = rec.events();
    let total = events.len() as u64;
    let near: Vec<u64> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| match e {
            Event::Sync => true,
            Event::Write { offset, .. } => log.contains(offset),
            _ => false,
        })
        .map(|(i, _)| i as u64)
        .collect();
    let mut points: Vec<u64> = (0..=total)
        .filter(|&n| n % 9 == 0 || n == total || near.iter().any(|&s| s.abs_diff(n) <= 3))
        .collect();
    points.dedup();
    let log_writes = events
        .iter()
        .filter(|e| matches!(e, Event::Write { offset, .. } if log.contains(offset)))
        .count();
    eprintln!(
        "{total} events, {log_writes} writes into the log, {} syncs; {} cut points",
        events.iter().filter(|e| **e == Event::Sync).count(),
        points.len()
    );
    let writes = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Write { .. }))
        .map(|(i, _)| i as u64)
        .collect();
    (points, total, writes)
}

/// Judge the bytes left by a cut (with `replay`, also replay the log by a
/// read-write open and check the result).
fn judge(
    sc: &Scenario,
    ctx: &str,
    surviving: MemStorage,
    completed: usize,
    failed: Option<usize>,
    replay: bool,
) {
    let _g = Ctx(ctx.to_string());
    // Clones of a MemStorage share its bytes: the read-only uses need no copy.
    let report = check_storage(Arc::new(surviving.clone()));
    assert!(
        report.is_ok(),
        "{ctx}: structural check of the surviving file: {:?}",
        report.problems
    );
    let disk = open_chain(sc, Arc::new(surviving.clone()), OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("{ctx}: the surviving file does not open: {e}"));
    // Durable = initial + ops up to the last completed barrier; pending = the
    // rest of the completed ones plus the one in flight.
    let last_barrier = sc.ops[..completed].iter().rposition(|o| o.is_barrier());
    let split = last_barrier.map_or(0, |i| i + 1);
    let mut pending: Vec<Op> = sc.ops[split..completed].to_vec();
    if let Some(i) = failed {
        if !sc.ops[i].is_barrier() || i == completed {
            pending.push(sc.ops[i]);
        }
    }
    pending.retain(|o| !o.is_barrier());
    let probes: Vec<(u64, u64)> = sc
        .probes
        .iter()
        .flat_map(|&b| [(b * BS, 8192), (b * BS + BS - 512, 512)])
        .collect();
    judge_probes(ctx, &disk, &sc.initial, &sc.ops[..split], &pending, &probes);
    drop(disk);
    if !replay {
        return;
    }
    // A read-write open replays the log; the result is clean.
    let mem = MemStorage::from_vec(surviving.snapshot());
    let rw = open_chain(sc, Arc::new(mem.clone()), OpenMode::ReadWrite)
        .unwrap_or_else(|e| panic!("{ctx}: read-write open: {e}"));
    rw.close()
        .unwrap_or_else(|e| panic!("{ctx}: close after replay: {e}"));
    let report = check_storage(Arc::new(mem));
    assert!(
        report.is_ok(),
        "{ctx}: structural check after replay: {:?}",
        report.problems
    );
}

fn sweep(cut: Cut) {
    let sc = scenario();
    let (points, total, writes) = cut_points(&sc);
    // A torn cut differs from a clean one only at a write.
    let points: Vec<u64> = points
        .into_iter()
        .filter(|n| cut == Cut::Clean || writes.contains(n))
        .collect();
    for (i, &n) in points.iter().enumerate() {
        let f = Arc::new(FaultStorage::new(
            MemStorage::from_vec(sc.child.clone()),
            n,
            cut,
        ));
        let (done, failed) = run_on(&sc, f.clone());
        if n < total {
            assert!(
                failed.is_some(),
                "cut at {n} of {total}: the run did not fail"
            );
        }
        judge(
            &sc,
            &format!("{cut:?} cut at {n} of {total} (ops done {done}, failed {failed:?})"),
            f.inner().clone(),
            done,
            failed,
            i % 4 == 0,
        );
    }
}

#[test]
fn big_flush_clean_cuts() {
    sweep(Cut::Clean);
}

#[test]
fn big_flush_torn_cuts() {
    sweep(Cut::Torn);
}

#[test]
fn big_flush_lossy_cache() {
    let sc = scenario();
    let (points, total, _) = cut_points(&sc);
    // Every 4th point, two survivors each.
    for (i, &n) in points.iter().step_by(4).enumerate() {
        let st = Arc::new(LossyStorage::new(sc.child.clone(), n));
        let (done, failed) = run_on(&sc, st.clone());
        let k = st.unsynced();
        let mut rng = Rng::new(n + 17);
        let masks: [Vec<bool>; 2] = [vec![false; k], (0..k).map(|_| rng.below(2) == 0).collect()];
        for (m, mask) in masks.iter().enumerate() {
            judge(
                &sc,
                &format!(
                    "lossy cut at {n} of {total} (ops done {done}, failed {failed:?}), survivor \
                     #{m} of {k} unsynced writes"
                ),
                MemStorage::from_vec(st.survivor(|j| mask[j])),
                done,
                failed,
                i % 4 == 0,
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Thousands of allocations in one flush, on a sparse storage.

/// A 256 GiB dynamic disk (2 MiB BAT: 512 sectors, five log entries).
const BIG: u64 = 256 << 30;
const ALLOCS: u64 = 1200;

struct Many {
    image: SparseStorage,
    initial: Vec<Op>,
    ops: Vec<Op>,
    /// Probed ranges: (offset, length), each inside one block.
    probes: Vec<(u64, u64)>,
}

fn many_block(i: u64) -> u64 {
    i * (BIG / BS / ALLOCS)
}

fn many_scenario() -> Many {
    let image = SparseStorage::new(u64::MAX, Cut::Clean);
    let image = Arc::new(image);
    let d = Disk::create_on(
        image.clone(),
        &CreateOptions::new(BIG).block_size(BS as u32),
    )
    .unwrap();
    // Data before the run in 64 blocks, which the run trims (their space
    // goes to the free list and is given to later allocations).
    let initial: Vec<Op> = (0..64)
        .map(|j| Op::Write {
            off: (many_block(j * 31 % ALLOCS) + 1) * BS,
            len: 4096,
            seed: 50 + j,
        })
        .collect();
    for op in &initial {
        op.run(&d).unwrap();
    }
    d.close().unwrap();
    let mut ops: Vec<Op> = Vec::new();
    for i in 0..ALLOCS {
        ops.push(Op::Write {
            off: many_block(i) * BS + (i * 4096) % BS,
            len: 512,
            seed: 10_000 + i,
        });
    }
    for op in &initial {
        let (off, _) = op.range().unwrap();
        ops.push(Op::Trim {
            off: off / BS * BS,
            len: BS,
        });
    }
    ops.push(Op::Flush);
    // Allocations that reuse the freed space, more trims, close.
    for i in 0..64 {
        ops.push(Op::Write {
            off: (many_block(i * 29 % ALLOCS) + 2) * BS + 512,
            len: 1024,
            seed: 20_000 + i,
        });
    }
    for i in (0..ALLOCS).step_by(59) {
        ops.push(Op::Trim {
            off: many_block(i) * BS,
            len: BS,
        });
    }
    ops.push(Op::Close);
    let mut probes: Vec<(u64, u64)> = ops
        .iter()
        .chain(&initial)
        .filter_map(|o| match *o {
            Op::Write { off, len, .. } => Some((off, len)),
            _ => None,
        })
        .collect();
    // The first and last sector of a few blocks too.
    for i in (0..ALLOCS).step_by(50) {
        let b = many_block(i) * BS;
        probes.push((b, 512));
        probes.push((b + BS - 512, 512));
    }
    probes.sort_unstable();
    probes.dedup();
    let image = Arc::try_unwrap(image).unwrap();
    Many {
        image,
        initial,
        ops,
        probes,
    }
}

fn many_run(sc: &Many, top: Arc<dyn Storage>) -> (usize, Option<usize>) {
    let Ok(disk) = Disk::open_storage(top, OpenMode::ReadWrite) else {
        return (0, Some(0));
    };
    let mut disk = Some(disk);
    for (i, op) in sc.ops.iter().enumerate() {
        let r = match op {
            Op::Close => disk.take().unwrap().close(),
            op => op.run(disk.as_ref().unwrap()),
        };
        if r.is_err() {
            return (i, Some(i));
        }
    }
    (sc.ops.len(), None)
}

fn many_judge(sc: &Many, ctx: &str, st: SparseStorage, completed: usize) {
    let _g = Ctx(ctx.to_string());
    let st = Arc::new(st);
    let report = check_storage(st.clone());
    assert!(
        report.is_ok(),
        "{ctx}: structural check of the surviving file: {:?}",
        report.problems
    );
    let disk = Disk::open_storage(st.clone(), OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("{ctx}: the surviving file does not open: {e}"));
    let split = sc.ops[..completed]
        .iter()
        .rposition(|o| o.is_barrier())
        .map_or(0, |i| i + 1);
    let pending: Vec<Op> = sc.ops[split..(completed + 1).min(sc.ops.len())]
        .iter()
        .copied()
        .filter(|o| !o.is_barrier())
        .collect();
    judge_probes(
        ctx,
        &disk,
        &sc.initial,
        &sc.ops[..split],
        &pending,
        &sc.probes,
    );
}

/// Per block: the probed ranges `(offset, len)` must all come from one
/// state of the block: the one after `done` (on top of `initial`), or one
/// after each operation of `pending` that touches the block.
fn judge_probes(
    ctx: &str,
    disk: &Disk,
    initial: &[Op],
    done: &[Op],
    pending: &[Op],
    probes: &[(u64, u64)],
) {
    // Per block: the probed sectors must all come from one state of the block.
    let mut by_block: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for &(o, l) in probes {
        by_block.entry(o / BS).or_default().push((o, l));
    }
    for (b, ranges) in by_block {
        let (base, end) = (b * BS, (b + 1) * BS);
        let touches = |op: &Op| op.range().is_some_and(|(o, l)| o < end && base < o + l);
        // The block's states since the last flush, each as the bytes of the
        // probed ranges.
        let mut cur: Vec<Vec<u8>> = ranges
            .iter()
            .map(|&(o, l)| {
                let mut v = vec![0u8; l as usize];
                for op in initial.iter().chain(done).filter(|o| touches(o)) {
                    op.apply(&mut v, o);
                }
                v
            })
            .collect();
        let mut states = vec![cur.clone()];
        for op in pending.iter().filter(|o| touches(o)) {
            for (v, &(o, _)) in cur.iter_mut().zip(&ranges) {
                op.apply(v, o);
            }
            states.push(cur.clone());
        }
        let got: Vec<Vec<u8>> = ranges
            .iter()
            .map(|&(o, l)| read_window(disk, o, l))
            .collect();
        assert!(
            states.contains(&got),
            "{ctx}: block {b} reads none of its {} states since the last completed flush \
             (probed {ranges:?}; first probe vs old: {})",
            states.len(),
            first_diff(&got[0], &states[0][0])
        );
    }
}

fn many_sweep(cut: Cut) {
    let sc = many_scenario();
    let rec = Recorder::new(sc.image.copy(u64::MAX, Cut::Clean));
    assert_eq!(many_run(&sc, rec.clone()), (sc.ops.len(), None));
    let events = rec.events();
    let total = events.len() as u64;
    let syncs: Vec<u64> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| **e == Event::Sync)
        .map(|(i, _)| i as u64)
        .collect();
    let points: Vec<u64> = (0..=total)
        .filter(|&n| n % 37 == 0 || n == total || syncs.iter().any(|&s| s.abs_diff(n) <= 3))
        .collect();
    eprintln!(
        "{ALLOCS} allocations: {total} events, {} syncs, {} cut points ({cut:?})",
        syncs.len(),
        points.len()
    );
    for (i, &n) in points.iter().enumerate() {
        let st = Arc::new(sc.image.copy(n, cut));
        let (done, failed) = many_run(&sc, st.clone());
        if n < total {
            assert!(
                failed.is_some(),
                "cut at {n} of {total}: the run did not fail"
            );
        }
        let ctx = format!("{ALLOCS} allocations, {cut:?} cut at {n} of {total} (ops done {done})");
        many_judge(&sc, &ctx, st.copy(u64::MAX, Cut::Clean), done);
        if i % 40 == 0 {
            qemu_check_sparse(&ctx, &st);
        }
    }
}

/// `qemu-img check` on the cut image (written as a sparse file), after
/// replaying its log by a read-write open and close.
fn qemu_check_sparse(ctx: &str, st: &SparseStorage) {
    let Some(q) = support::qemu_img_bin() else {
        return;
    };
    let st = Arc::new(st.copy(u64::MAX, Cut::Clean));
    Disk::open_storage(st.clone(), OpenMode::ReadWrite)
        .and_then(|d| d.close())
        .unwrap_or_else(|e| panic!("{ctx}: replay: {e}"));
    let dir = support::fast_tempdir();
    let p = dir.path().join("cut.vhdx");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(st.len().unwrap()).unwrap();
    use std::os::unix::fs::FileExt;
    st.for_each_page(|off, page| f.write_all_at(page, off).unwrap());
    drop(f);
    let out = std::process::Command::new(q)
        .args(["check", "-f", "vhdx"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{ctx}: qemu-img check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn thousands_of_allocations_clean_cuts() {
    many_sweep(Cut::Clean);
}

#[test]
fn thousands_of_allocations_torn_cuts() {
    many_sweep(Cut::Torn);
}

/// The big flush with one event failing once (EIO, then ENOSPC in turn), at
/// a sample of its events, and the failing operation retried on the same
/// handle: once everything, the close included, says Ok, every probed block
/// must hold its final state after a reopen — a retried flush must finish
/// the entries the failed one did not write.
#[test]
fn big_flush_transient_errors_then_retry() {
    use ckpt::io::Transient;
    let sc = scenario();
    let (_, total, _) = cut_points(&sc);
    let probes: Vec<(u64, u64)> = sc
        .probes
        .iter()
        .flat_map(|&b| [(b * BS, 8192), (b * BS + BS - 512, 512)])
        .collect();
    for (i, k) in support::ops::sample(total, 48).into_iter().enumerate() {
        let kind = if i % 2 == 0 {
            Transient::Eio
        } else {
            Transient::NoSpace
        };
        let ctx = format!("{kind:?} once at event {k} of {total}, retried");
        let _g = Ctx(ctx.clone());
        let mem = MemStorage::from_vec(sc.child.clone());
        let f = Arc::new(FaultStorage::transient(mem.clone(), k, kind));
        let mut disk = Some(open_chain(&sc, f.clone(), OpenMode::ReadWrite).unwrap());
        let mut claimed = true;
        for op in &sc.ops {
            let r = match op {
                Op::Close => disk.take().unwrap().close(),
                op => op.run(disk.as_ref().unwrap()),
            };
            if let Err(e) = r {
                assert!(f.fault_injected(), "{ctx}: {op:?} failed: {e}");
                match op {
                    Op::Close => claimed = false,
                    op => {
                        if let Err(e) = op.run(disk.as_ref().unwrap()) {
                            // A handle that refuses everything until reopened
                            // claims nothing more.
                            eprintln!("{ctx}: NOTICE: the retry of {op:?} is refused: {e}");
                            claimed = false;
                            break;
                        }
                    }
                }
            }
        }
        drop(disk);
        let report = check_storage(Arc::new(mem.clone()));
        assert!(
            report.is_ok(),
            "{ctx}: structural check: {:?}",
            report.problems
        );
        let d = open_chain(&sc, Arc::new(mem.clone()), OpenMode::ReadOnly)
            .unwrap_or_else(|e| panic!("{ctx}: the file does not open: {e}"));
        if claimed {
            // Everything said Ok: exactly the final state.
            judge_probes(&ctx, &d, &sc.initial, &sc.ops, &[], &probes);
        }
    }
}
