//! Crash safety of VHD allocation writes (VHD has no log): a scenario of
//! writes that allocate blocks (dynamic and differencing), writes into
//! allocated blocks, zeroing trims and flushes is cut at every event of
//! its storage, clean and torn (`FaultStorage`), and on a storage that
//! loses any subset of the writes since the last sync (`LossyStorage`).
//! What survives must open read-only (without a write) and read-write,
//! hold every byte flushed before the cut, each sector written after it
//! old or new, and take new writes that read back after a reopen.

mod support;

use std::sync::Arc;

use ckpt::io::{Cut, FaultStorage, MemStorage, Storage};
use ckpt::{ChildOptions, Disk, OpenMode, VhdOptions};

use support::first_diff;
use support::lossy::LossyStorage;
use support::ops::{read_window, Op, SECTOR};
use support::KIB;

/// Which unsynced writes survive a lossy crash.
type Keep = fn(usize) -> bool;

const SIZE: u64 = 1 << 20;
const BLOCK: u32 = 64 * 1024;

fn ops() -> Vec<Op> {
    vec![
        Op::Write {
            off: 0,
            len: 8 * KIB,
            seed: 1,
        },
        Op::Write {
            off: 200 * KIB,
            len: 100 * KIB,
            seed: 2,
        },
        Op::Flush,
        Op::Write {
            off: 4 * KIB,
            len: 2 * KIB,
            seed: 3,
        },
        Op::Write {
            off: 600 * KIB + 512,
            len: 3 * KIB,
            seed: 4,
        },
        Op::Trim {
            off: 210 * KIB,
            len: 20 * KIB,
        },
        Op::Flush,
        Op::Write {
            off: 900 * KIB,
            len: 70 * KIB,
            seed: 5,
        },
        Op::Write {
            off: 1000 * KIB,
            len: 24 * KIB,
            seed: 6,
        },
        Op::Flush,
    ]
}

/// The image bytes a scenario starts from: a dynamic VHD, or a
/// differencing VHD over `base` (returned too) with data of its own.
fn start(diff: bool) -> (Vec<u8>, Option<Arc<MemStorage>>) {
    let opts = VhdOptions::new(SIZE).block_size(BLOCK);
    if !diff {
        let m = Arc::new(MemStorage::new());
        Disk::create_vhd_on(m.clone(), &opts)
            .unwrap()
            .close()
            .unwrap();
        return (m.snapshot(), None);
    }
    let base = Arc::new(MemStorage::new());
    let b = Disk::create_vhd_on(base.clone(), &opts).unwrap();
    b.write_at(&vec![0x5au8; SIZE as usize], 0).unwrap();
    b.close().unwrap();
    let b = Disk::open_storage(base.clone(), OpenMode::ReadOnly).unwrap();
    let child = Arc::new(MemStorage::new());
    Disk::create_child_on(
        child.clone(),
        &b,
        &ChildOptions {
            block_size: BLOCK,
            ..Default::default()
        },
    )
    .unwrap();
    drop(b);
    (child.snapshot(), Some(base))
}

fn open(
    top: Arc<dyn Storage>,
    base: &Option<Arc<MemStorage>>,
    mode: OpenMode,
) -> ckpt::Result<Disk> {
    match base {
        None => Disk::open_storage(top, mode),
        Some(b) => Disk::open_storage_chain(vec![top, b.clone() as Arc<dyn Storage>], mode),
    }
}

/// Run the scenario on `top`; returns (durable model, pending ops).
fn run(
    top: Arc<dyn Storage>,
    base: &Option<Arc<MemStorage>>,
    initial: &[u8],
) -> (Vec<u8>, Vec<Op>) {
    let mut durable = initial.to_vec();
    let mut pending: Vec<Op> = Vec::new();
    let Ok(d) = open(top, base, OpenMode::ReadWrite) else {
        return (durable, pending);
    };
    for op in ops() {
        pending.push(op);
        if op.run(&d).is_err() {
            break;
        }
        if op.is_barrier() {
            for p in pending.drain(..) {
                p.apply(&mut durable, 0);
            }
        }
    }
    drop(d);
    (durable, pending)
}

/// Each sector of `got` is durable, untouched by `pending` otherwise; or
/// in a state the pending operations passed through; or (`torn`) a byte
/// by byte mix of the last operation's before and after (a torn sector).
fn old_or_new(ctx: &str, got: &[u8], durable: &[u8], pending: &[Op], torn: bool) {
    let n = SECTOR as usize;
    for (s, (g, d)) in got.chunks(n).zip(durable.chunks(n)).enumerate() {
        if g == d {
            continue;
        }
        let at = s as u64 * SECTOR;
        assert!(
            pending.iter().any(|op| op
                .range()
                .is_some_and(|(o, l)| o < at + SECTOR && at < o + l)),
            "{ctx}: sector at {at:#x} changed though nothing pending touched it: {}",
            first_diff(g, d)
        );
        let mut state = d.to_vec();
        let mut last = (state.clone(), state.clone());
        let mut ok = false;
        for op in pending {
            let before = state.clone();
            op.apply(&mut state, at);
            last = (before, state.clone());
            ok |= state == g;
        }
        if !ok && torn {
            ok = g
                .iter()
                .zip(last.0.iter().zip(&last.1))
                .all(|(b, (o, n))| b == o || b == n);
        }
        assert!(
            ok,
            "{ctx}: sector at {at:#x} matches none of its states (pending {pending:?}): vs durable {}",
            first_diff(g, d)
        );
    }
}

/// Judge the bytes that survived.
fn judge(
    ctx: &str,
    bytes: Vec<u8>,
    base: &Option<Arc<MemStorage>>,
    durable: &[u8],
    pending: &[Op],
    torn: bool,
) {
    let m = Arc::new(MemStorage::from_vec(bytes.clone()));
    let d =
        open(m.clone(), base, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{ctx}: open ro: {e}"));
    let got = read_window(&d, 0, SIZE);
    old_or_new(ctx, &got, durable, pending, torn);
    drop(d);
    assert_eq!(m.snapshot(), bytes, "{ctx}: a read-only open wrote");
    // Read-write: the same content, and new writes stick.
    let d = open(m.clone(), base, OpenMode::ReadWrite)
        .unwrap_or_else(|e| panic!("{ctx}: open rw: {e}"));
    assert_eq!(
        read_window(&d, 0, SIZE),
        got,
        "{ctx}: read-write open reads otherwise"
    );
    let mut want = got.clone();
    for (i, off) in [100 * KIB, 700 * KIB].into_iter().enumerate() {
        let data = support::pattern(90 + i as u64, 0, 8192);
        d.write_at(&data, off).unwrap();
        want[off as usize..off as usize + 8192].copy_from_slice(&data);
    }
    d.close().unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
    let d = open(m, base, OpenMode::ReadOnly).unwrap();
    assert_eq!(read_window(&d, 0, SIZE), want, "{ctx}: after new writes");
}

fn initial(base: &Option<Arc<MemStorage>>) -> Vec<u8> {
    match base {
        None => vec![0u8; SIZE as usize],
        Some(_) => vec![0x5au8; SIZE as usize],
    }
}

#[test]
fn every_cut_leaves_the_old_or_the_new_state() {
    for diff in [false, true] {
        let (bytes, base) = start(diff);
        let init = initial(&base);
        let count = Arc::new(FaultStorage::new(
            MemStorage::from_vec(bytes.clone()),
            u64::MAX,
            Cut::Clean,
        ));
        let (durable, pending) = run(count.clone(), &base, &init);
        assert!(pending.is_empty(), "the uncut run completes");
        let events = count.events();
        assert!(events > 10, "{events} events");
        judge(
            "uncut",
            count.inner().snapshot(),
            &base,
            &durable,
            &pending,
            false,
        );
        for cut in [Cut::Clean, Cut::Torn] {
            for n in 0..events {
                let f = Arc::new(FaultStorage::new(
                    MemStorage::from_vec(bytes.clone()),
                    n,
                    cut,
                ));
                let (durable, pending) = run(f.clone(), &base, &init);
                let ctx = format!("diff={diff} {cut:?} cut at {n} of {events}");
                judge(
                    &ctx,
                    f.inner().snapshot(),
                    &base,
                    &durable,
                    &pending,
                    cut == Cut::Torn,
                );
            }
        }
    }
}

#[test]
fn a_lost_cache_leaves_the_old_or_the_new_state() {
    for diff in [false, true] {
        let (bytes, base) = start(diff);
        let init = initial(&base);
        let count = Arc::new(LossyStorage::new(bytes.clone(), u64::MAX));
        run(count.clone(), &base, &init);
        let events = count.events();
        for n in 0..events {
            let l = Arc::new(LossyStorage::new(bytes.clone(), n));
            let (durable, pending) = run(l.clone(), &base, &init);
            let keeps: [(&str, Keep); 4] = [
                ("all", |_| true),
                ("none", |_| false),
                ("even", |i| i % 2 == 0),
                ("odd", |i| i % 2 == 1),
            ];
            for (name, keep) in keeps {
                let ctx = format!("diff={diff} lossy cut at {n} of {events}, kept {name}");
                judge(&ctx, l.survivor(keep), &base, &durable, &pending, false);
            }
        }
    }
}
