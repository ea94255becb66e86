//! Crash consistency: run a fixed sequence of disk operations on a
//! [`FaultStorage`] that "loses power" at event N, for every N the uncut run
//! produces, with clean and torn cuts; then prove that what survived opens
//! (read-only and read-write), passes `check_storage`, holds every byte that
//! was flushed, and holds, for everything written after the last completed
//! flush, each sector either in an old or in a new state. A subset of cut
//! points is also checked with `qemu-img check` and `qemu-img convert`.
//!
//! Beyond `FaultStorage` (a clean or torn cut of an in-order write stream),
//! the same scenarios run on `support::lossy::LossyStorage`, a storage with
//! a volatile write cache: at the crash any subset of the writes since the
//! last sync may be lost. A longer scenario goes round the 1 MiB log and is
//! cut around the wrap.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ckpt::disk::check::check_storage;
use ckpt::io::{Cut, FaultStorage, MemStorage, Storage};
use ckpt::{CreateOptions, Disk, ErrorKind, OpenMode};

use support::lossy::LossyStorage;
use support::{first_diff, pattern, qemu_img_bin, read_all, run_ok, Ctx, KIB, MIB};

const SECTOR: usize = 512;

/// One step of a scenario.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Write `pattern(seed, 0, len)` at `off`.
    Write { off: u64, len: u64, seed: u64 },
    /// Trim `[off, off+len)`: reads as zeros afterwards.
    Trim { off: u64, len: u64 },
    /// Flush: everything before it is durable once it returns Ok.
    Flush,
    /// Close (flush + clean log); always the last step.
    Close,
}

impl Op {
    fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Write { off, len, .. } | Op::Trim { off, len } => Some((off, len)),
            Op::Flush | Op::Close => None,
        }
    }
    /// The bytes a write writes (empty for the other operations).
    fn data(&self) -> Vec<u8> {
        match *self {
            Op::Write { len, seed, .. } => pattern(seed, 0, len as usize),
            _ => Vec::new(),
        }
    }
    /// Apply to a byte range of the model that starts at virtual offset
    /// `base` (only the overlapping part changes).
    fn apply(&self, model: &mut [u8], base: u64) {
        self.apply_data(&self.data(), model, base)
    }
    /// Like [`Op::apply`], with the write's bytes already made.
    fn apply_data(&self, data: &[u8], model: &mut [u8], base: u64) {
        let Some((off, len)) = self.range() else {
            return;
        };
        let lo = off.max(base);
        let hi = (off + len).min(base + model.len() as u64);
        if lo >= hi {
            return;
        }
        let dst = &mut model[(lo - base) as usize..(hi - base) as usize];
        match *self {
            Op::Write { .. } => {
                dst.copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
            }
            Op::Trim { .. } => dst.fill(0),
            _ => unreachable!(),
        }
    }
    fn is_barrier(&self) -> bool {
        matches!(self, Op::Flush | Op::Close)
    }
}

/// A disk image to start from and the operations to run on it.
struct Scenario {
    name: &'static str,
    /// The image after create + initial writes + close.
    image: Vec<u8>,
    /// Its virtual contents.
    content: Vec<u8>,
    ops: Vec<Op>,
}

fn make_scenario(
    name: &'static str,
    opts: &CreateOptions,
    initial: &[Op],
    ops: Vec<Op>,
) -> Scenario {
    let mem = MemStorage::new();
    let disk = Disk::create_on(Arc::new(mem.clone()), opts)
        .unwrap_or_else(|e| panic!("{name}: create failed: {e}"));
    let mut content = vec![0u8; opts.virtual_size as usize];
    for op in initial {
        run_op(Some(&disk), op).unwrap_or_else(|e| panic!("{name}: initial {op:?} failed: {e}"));
        op.apply(&mut content, 0);
    }
    disk.close()
        .unwrap_or_else(|e| panic!("{name}: close failed: {e}"));
    assert!(matches!(ops.last(), Some(Op::Close)));
    Scenario {
        name,
        image: mem.snapshot(),
        content,
        ops,
    }
}

fn run_op(disk: Option<&Disk>, op: &Op) -> ckpt::Result<()> {
    let disk = disk.expect("disk is open");
    match *op {
        Op::Write { off, len, seed } => disk.write_at(&pattern(seed, 0, len as usize), off),
        Op::Trim { off, len } => disk.trim(off, len),
        Op::Flush => disk.flush(),
        Op::Close => unreachable!("close is handled by the caller"),
    }
}

/// What happened in one (possibly cut) run.
struct Outcome {
    /// The open itself failed (crash during the header update).
    open_failed: bool,
    /// How many operations returned Ok.
    completed: usize,
    /// The operation that failed (the one in flight at the crash).
    failed: Option<usize>,
    /// Events the storage saw.
    events: u64,
    /// The bytes that survived.
    bytes: Vec<u8>,
}

fn run(sc: &Scenario, crash_at: u64, cut: Cut) -> Outcome {
    let fault = Arc::new(FaultStorage::new(
        MemStorage::from_vec(sc.image.clone()),
        crash_at,
        cut,
    ));
    let mut out = run_on(sc, fault.clone(), &|| fault.crashed(), crash_at);
    out.events = fault.events();
    out.bytes = fault.inner().snapshot();
    out
}

/// Open read-write on `storage` and run the operations until the first
/// error (which must come from the crash).
fn run_on(
    sc: &Scenario,
    storage: Arc<dyn Storage>,
    crashed: &dyn Fn() -> bool,
    crash_at: u64,
) -> Outcome {
    let mut out = Outcome {
        open_failed: false,
        completed: 0,
        failed: None,
        events: 0,
        bytes: Vec::new(),
    };
    match Disk::open_storage(storage, OpenMode::ReadWrite) {
        Err(e) => {
            assert!(
                crashed(),
                "{}: open failed before the crash point {crash_at}: {e}",
                sc.name
            );
            out.open_failed = true;
        }
        Ok(disk) => {
            let mut disk = Some(disk);
            for (i, op) in sc.ops.iter().enumerate() {
                let r = match op {
                    Op::Close => disk.take().expect("open").close(),
                    op => run_op(disk.as_ref(), op),
                };
                if let Err(e) = r {
                    assert!(
                        crashed(),
                        "{}: op #{i} {op:?} failed before the crash point {crash_at}: {e}",
                        sc.name
                    );
                    out.failed = Some(i);
                    break;
                }
                out.completed = i + 1;
            }
            drop(disk);
        }
    }
    out
}

/// The model's view after a run: the content as of the last completed flush
/// and the operations after it whose effect may or may not have survived.
struct Expect {
    durable: Vec<u8>,
    /// With each write's bytes.
    pending: Vec<(Op, Vec<u8>)>,
    /// The operation in flight at the crash (also the last of `pending`).
    in_flight: Option<Op>,
}

fn expectation(sc: &Scenario, out: &Outcome) -> Expect {
    let mut durable = sc.content.clone();
    let mut pending: Vec<Op> = Vec::new();
    for op in &sc.ops[..out.completed] {
        pending.push(*op);
        if op.is_barrier() {
            for p in pending.drain(..) {
                p.apply(&mut durable, 0);
            }
        }
    }
    let mut in_flight = None;
    if let Some(i) = out.failed {
        let op = sc.ops[i];
        if !op.is_barrier() {
            pending.push(op);
            in_flight = Some(op);
        }
    }
    let pending = pending.into_iter().map(|op| (op, op.data())).collect();
    Expect {
        durable,
        pending,
        in_flight,
    }
}

/// Check the read-back contents against the model: outside the pending
/// operations' sectors, exactly the durable bytes; inside, each sector in one
/// of the states the pending operations passed through. With a torn cut, a
/// sector of the in-flight operation may also mix its last two states byte
/// by byte (a torn sector write).
fn verify(ctx: &str, got: &[u8], exp: &Expect, cut: Cut) {
    assert_eq!(got.len(), exp.durable.len(), "{ctx}: virtual size");
    let nsec = got.len() / SECTOR;
    let mut touched = vec![false; nsec];
    for (op, _) in &exp.pending {
        if let Some((off, len)) = op.range() {
            let first = (off / SECTOR as u64) as usize;
            let last = ((off + len - 1) / SECTOR as u64) as usize;
            touched[first..=last].iter_mut().for_each(|t| *t = true);
        }
    }
    for (s, &was_touched) in touched.iter().enumerate() {
        let r = s * SECTOR..(s + 1) * SECTOR;
        let g = &got[r.clone()];
        let durable = &exp.durable[r.clone()];
        if g == durable {
            continue;
        }
        assert!(
            was_touched,
            "{ctx}: sector {s} (virtual offset {:#x}) changed although nothing after the last \
             completed flush touched it: {}",
            s * SECTOR,
            first_diff(g, durable)
        );
        let base = (s * SECTOR) as u64;
        let mut states = vec![durable.to_vec()];
        let mut state = durable.to_vec();
        let mut last_in_flight: Option<(Vec<u8>, Vec<u8>)> = None;
        for (i, (op, data)) in exp.pending.iter().enumerate() {
            let before = state.clone();
            op.apply_data(data, &mut state, base);
            if exp.in_flight.is_some() && i + 1 == exp.pending.len() {
                last_in_flight = Some((before, state.clone()));
            }
            states.push(state.clone());
        }
        if states.iter().any(|st| st == g) {
            continue;
        }
        if cut == Cut::Torn {
            if let Some((old, new)) = &last_in_flight {
                if g.iter()
                    .zip(old.iter().zip(new))
                    .all(|(b, (o, n))| b == o || b == n)
                {
                    continue;
                }
            }
        }
        panic!(
            "{ctx}: sector {s} (virtual offset {:#x}) matches none of its {} possible states \
             (pending ops {:?}); vs durable: {}; vs newest: {}",
            s * SECTOR,
            states.len(),
            exp.pending.iter().map(|(op, _)| op).collect::<Vec<_>>(),
            first_diff(g, durable),
            first_diff(g, states.last().expect("states"))
        );
    }
}

/// Check one cut point: open both ways, check, verify, replay, re-check.
fn check_cut(sc: &Scenario, label: &str, crash_at: u64, cut: Cut, out: &Outcome, qemu: bool) {
    let ctx = format!(
        "{} {label} crash_at={crash_at} (events {}, ops completed {}, failed op {:?}, open failed {})",
        sc.name,
        out.events,
        out.completed,
        out.failed.map(|i| (i, sc.ops[i])),
        out.open_failed
    );
    let _guard = Ctx(ctx.clone());
    let exp = expectation(sc, out);

    // (b) the structural check on the surviving bytes.
    let report = check_storage(Arc::new(MemStorage::from_vec(out.bytes.clone())));
    assert!(
        report.is_ok(),
        "{ctx}: check_storage problems: {:?}",
        report.problems
    );

    // (a) + (c) read-only open: never writes, contents follow the model.
    let ro_mem = MemStorage::from_vec(out.bytes.clone());
    let ro = Disk::open_storage(Arc::new(ro_mem.clone()), OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("{ctx}: read-only open failed: {e}"));
    assert_eq!(ro.virtual_size(), sc.content.len() as u64, "{ctx}");
    let got = read_all(&ro);
    drop(ro);
    verify(&format!("{ctx} [read-only]"), &got, &exp, cut);
    assert!(
        ro_mem.snapshot() == out.bytes,
        "{ctx}: the read-only open wrote to the image: {}",
        first_diff(&ro_mem.snapshot(), &out.bytes)
    );

    // Read-write open replays the log into the file; same contents.
    let rw_mem = MemStorage::from_vec(out.bytes.clone());
    let rw = Disk::open_storage(Arc::new(rw_mem.clone()), OpenMode::ReadWrite)
        .unwrap_or_else(|e| panic!("{ctx}: read-write open failed: {e}"));
    let got_rw = read_all(&rw);
    assert!(
        got_rw == got,
        "{ctx}: read-write open reads differently from read-only: {}",
        first_diff(&got_rw, &got)
    );
    rw.close()
        .unwrap_or_else(|e| panic!("{ctx}: close after the read-write open failed: {e}"));
    let after = rw_mem.snapshot();
    let report = check_storage(Arc::new(MemStorage::from_vec(after.clone())));
    assert!(
        report.is_ok(),
        "{ctx}: check_storage problems after replay + close: {:?}",
        report.problems
    );
    let again = Disk::open_storage(
        Arc::new(MemStorage::from_vec(after.clone())),
        OpenMode::ReadOnly,
    )
    .unwrap_or_else(|e| panic!("{ctx}: reopen after replay failed: {e}"));
    let got_again = read_all(&again);
    assert!(
        got_again == got,
        "{ctx}: contents changed across replay + close: {}",
        first_diff(&got_again, &got)
    );
    drop(again);

    // (d) QEMU as the independent judge, on a subset of cut points.
    if qemu {
        if let Some(qemu_img) = qemu_img_bin() {
            qemu_judge(&ctx, qemu_img, &after, &got);
        }
    }
}

/// `qemu-img check` must find the replayed image clean, and `qemu-img
/// convert` must read the same virtual contents as we do.
fn qemu_judge(ctx: &str, qemu_img: &Path, image: &[u8], contents: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("cut.vhdx");
    let raw = dir.path().join("cut.raw");
    std::fs::write(&img, image).expect("write image");
    let out = Command::new(qemu_img)
        .args(["check", "-f", "vhdx"])
        .arg(&img)
        .output()
        .expect("run qemu-img check");
    assert!(
        out.status.success(),
        "{ctx}: qemu-img check fails ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(
        Command::new(qemu_img)
            .args(["convert", "-f", "vhdx", "-O", "raw"])
            .arg(&img)
            .arg(&raw),
    );
    let q = std::fs::read(&raw).expect("read raw");
    assert!(
        q == contents,
        "{ctx}: QEMU reads other contents than we do: {}",
        first_diff(&q, contents)
    );
}

/// Run the scenario uncut to count events, then cut at every event.
fn crash_everywhere(sc: &Scenario, cut: Cut) {
    let total = uncut_events(sc, cut);
    eprintln!("{}: {total} events, cutting at each ({cut:?})", sc.name);
    crash_at_points(sc, cut, 0..=total, total, 7);
}

/// The uncut run (judged like the others: everything is durable); returns
/// the number of events it made.
fn uncut_events(sc: &Scenario, cut: Cut) -> u64 {
    let full = run(sc, u64::MAX, cut);
    assert!(
        !full.open_failed && full.failed.is_none() && full.completed == sc.ops.len(),
        "{}: the uncut run failed at op {:?}",
        sc.name,
        full.failed.map(|i| sc.ops[i])
    );
    check_cut(sc, &format!("cut={cut:?}"), u64::MAX, cut, &full, true);
    full.events
}

/// Cut at each of `points` (`total`: the uncut run's event count).
/// QEMU judges every `qemu_every`-th point.
fn crash_at_points(
    sc: &Scenario,
    cut: Cut,
    points: impl IntoIterator<Item = u64>,
    total: u64,
    qemu_every: u64,
) {
    for n in points {
        let out = run(sc, n, cut);
        if n < total {
            assert!(
                out.open_failed || out.failed.is_some(),
                "{} crash_at={n}: the run completed although the storage crashed",
                sc.name
            );
        }
        check_cut(
            sc,
            &format!("cut={cut:?}"),
            n,
            cut,
            &out,
            n % qemu_every == 0,
        );
    }
}

const DYN_SIZE: u64 = 8 * MIB;

fn dynamic_scenario() -> Scenario {
    let opts = CreateOptions::new(DYN_SIZE).block_size(MIB as u32);
    // Blocks 0, 1 and 3 hold data before the run starts.
    let initial = [
        Op::Write {
            off: 0,
            len: 192 * KIB,
            seed: 1,
        },
        Op::Write {
            off: MIB + 100 * KIB,
            len: 64 * KIB,
            seed: 2,
        },
        Op::Write {
            off: 3 * MIB,
            len: MIB,
            seed: 3,
        },
    ];
    let ops = vec![
        // Allocating, unaligned write across blocks 1..=4 (2 and 4 are new).
        Op::Write {
            off: 2 * MIB - 1000,
            len: 2 * MIB + 3001,
            seed: 10,
        },
        // Small unaligned overwrite in block 0.
        Op::Write {
            off: 5000,
            len: 700,
            seed: 11,
        },
        Op::Flush,
        // Whole-block trim of block 2, partial trim inside block 1.
        Op::Trim {
            off: 2 * MIB,
            len: MIB,
        },
        Op::Trim {
            off: MIB + 4 * KIB,
            len: 8 * KIB,
        },
        // Allocate block 5 with an unaligned write.
        Op::Write {
            off: 5 * MIB + 12345,
            len: 300 * KIB,
            seed: 12,
        },
        Op::Flush,
        // Re-allocate the trimmed block 2, partly.
        Op::Write {
            off: 2 * MIB + 3 * 512,
            len: 4 * KIB,
            seed: 13,
        },
        // Trim blocks 5 and 6 (6 was never allocated).
        Op::Trim {
            off: 5 * MIB,
            len: 2 * MIB,
        },
        // The very last sector (allocates block 7).
        Op::Write {
            off: DYN_SIZE - 512,
            len: 512,
            seed: 14,
        },
        // A sub-sector overwrite.
        Op::Write {
            off: 7 * MIB + 77,
            len: 33,
            seed: 15,
        },
        Op::Flush,
        // Overwrite across the 2/3 boundary, a whole-block overwrite, and a
        // trim that ends mid-block, with no flush before the close.
        Op::Write {
            off: 3 * MIB - 100,
            len: 200,
            seed: 16,
        },
        Op::Write {
            off: 0,
            len: MIB,
            seed: 17,
        },
        Op::Trim {
            off: 3 * MIB,
            len: MIB + 64 * KIB,
        },
        Op::Write {
            off: 6 * MIB + 512,
            len: 1536,
            seed: 18,
        },
        Op::Close,
    ];
    make_scenario("dynamic", &opts, &initial, ops)
}

const FIXED_SIZE: u64 = 4 * MIB;

fn fixed_scenario() -> Scenario {
    let opts = CreateOptions::new(FIXED_SIZE)
        .block_size(MIB as u32)
        .fixed(true);
    let initial = [Op::Write {
        off: MIB,
        len: MIB,
        seed: 21,
    }];
    let ops = vec![
        Op::Write {
            off: 1234,
            len: 2 * MIB,
            seed: 30,
        },
        Op::Flush,
        Op::Trim { off: MIB, len: MIB },
        Op::Write {
            off: 3 * MIB + 999,
            len: 5000,
            seed: 31,
        },
        Op::Flush,
        Op::Trim {
            off: 512,
            len: 4096,
        },
        Op::Write {
            off: FIXED_SIZE - 4096,
            len: 4096,
            seed: 32,
        },
        Op::Close,
    ];
    make_scenario("fixed", &opts, &initial, ops)
}

#[test]
fn dynamic_disk_clean_cuts() {
    crash_everywhere(&dynamic_scenario(), Cut::Clean);
}

#[test]
fn dynamic_disk_torn_cuts() {
    crash_everywhere(&dynamic_scenario(), Cut::Torn);
}

#[test]
fn fixed_disk_clean_cuts() {
    crash_everywhere(&fixed_scenario(), Cut::Clean);
}

#[test]
fn fixed_disk_torn_cuts() {
    crash_everywhere(&fixed_scenario(), Cut::Torn);
}

/// A crash while the file is being created leaves either a file that fails
/// to open with a clear error, or a valid empty disk. Never a panic.
fn crash_during_create(opts: &CreateOptions, cut: Cut) {
    let count = {
        let fault = Arc::new(FaultStorage::new(MemStorage::new(), u64::MAX, cut));
        let disk = Disk::create_on(fault.clone(), opts).expect("uncut create");
        disk.close().expect("close after create");
        fault.events()
    };
    let mut opened = 0;
    for n in 0..=count {
        let _guard = Ctx(format!(
            "create {opts:?} cut={cut:?} crash_at={n} of {count}"
        ));
        let fault = Arc::new(FaultStorage::new(MemStorage::new(), n, cut));
        let finished = match Disk::create_on(fault.clone(), opts) {
            Ok(d) => d.close().is_ok(),
            Err(e) => {
                assert!(
                    fault.crashed(),
                    "create failed before the crash point {n}: {e}"
                );
                false
            }
        };
        assert_eq!(finished, n >= count, "crash_at={n}: create/close outcome");
        let bytes = fault.inner().snapshot();
        for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
            let mem = MemStorage::from_vec(bytes.clone());
            match Disk::open_storage(Arc::new(mem.clone()), mode) {
                Err(e) => {
                    assert!(n < count, "the complete file fails to open: {e}");
                    let msg = e.to_string();
                    assert!(
                        matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
                        "crash_at={n} {mode:?}: unexpected error kind {:?}: {msg}",
                        e.kind()
                    );
                    assert!(
                        msg.len() > 10,
                        "crash_at={n}: unclear error message {msg:?}"
                    );
                    if mode == OpenMode::ReadWrite {
                        assert!(
                            mem.snapshot() == bytes,
                            "crash_at={n}: a failed read-write open wrote to the file"
                        );
                    }
                }
                Ok(d) => {
                    opened += 1;
                    assert_eq!(d.virtual_size(), opts.virtual_size, "crash_at={n}");
                    let all = read_all(&d);
                    assert!(
                        all.iter().all(|&b| b == 0),
                        "crash_at={n} {mode:?}: a new disk does not read as zeros"
                    );
                    if mode == OpenMode::ReadWrite {
                        d.write_at(b"still usable", 4096)
                            .unwrap_or_else(|e| panic!("crash_at={n}: write failed: {e}"));
                        d.close()
                            .unwrap_or_else(|e| panic!("crash_at={n}: close failed: {e}"));
                        let report = check_storage(Arc::new(mem.clone()));
                        assert!(report.is_ok(), "crash_at={n}: {:?}", report.problems);
                    } else {
                        drop(d);
                        let report = check_storage(Arc::new(MemStorage::from_vec(bytes.clone())));
                        assert!(report.is_ok(), "crash_at={n}: {:?}", report.problems);
                    }
                }
            }
        }
    }
    assert!(opened >= 2, "the completed create must open");
    eprintln!(
        "create {cut:?}: {count} events, {opened} of {} opens succeeded",
        2 * (count + 1)
    );
}

#[test]
fn crash_during_create_dynamic() {
    let opts = CreateOptions::new(DYN_SIZE).block_size(MIB as u32);
    crash_during_create(&opts, Cut::Clean);
    crash_during_create(&opts, Cut::Torn);
}

#[test]
fn crash_during_create_fixed() {
    let opts = CreateOptions::new(FIXED_SIZE)
        .block_size(MIB as u32)
        .fixed(true);
    crash_during_create(&opts, Cut::Clean);
    crash_during_create(&opts, Cut::Torn);
}

/// Harsher than a cut: at the crash, every write since the last completed
/// sync may or may not have reached the media, in any combination. Checked
/// with three survivors per cut point: none of the unsynced writes, and two
/// pseudo-random subsets. The model's promise is the same: flushed data is
/// exact, the rest is per sector old or new.
fn lossy_everywhere(sc: &Scenario) {
    let total = lossy_events(sc);
    eprintln!("{}: {total} events, lossy crash at each", sc.name);
    lossy_at_points(sc, 0..=total, 7);
}

/// Events of the uncut run on a [`LossyStorage`].
fn lossy_events(sc: &Scenario) -> u64 {
    let st = Arc::new(LossyStorage::new(sc.image.clone(), u64::MAX));
    let out = run_on(sc, st.clone(), &|| st.crashed(), u64::MAX);
    assert_eq!(
        out.completed,
        sc.ops.len(),
        "{}: the uncut run failed",
        sc.name
    );
    st.events()
}

fn lossy_at_points(sc: &Scenario, points: impl IntoIterator<Item = u64>, qemu_every: u64) {
    for n in points {
        let st = Arc::new(LossyStorage::new(sc.image.clone(), n));
        let mut out = run_on(sc, st.clone(), &|| st.crashed(), n);
        out.events = st.events();
        let k = st.unsynced();
        let mut rng = support::Rng::new(n * 7919 + 1);
        let masks: [Vec<bool>; 3] = [
            vec![false; k],
            (0..k).map(|_| rng.below(2) == 0).collect(),
            (0..k).map(|_| rng.below(4) != 0).collect(),
        ];
        for (m, mask) in masks.iter().enumerate() {
            if m > 0 && k == 0 {
                break;
            }
            out.bytes = st.survivor(|i| mask[i]);
            let label = format!("lossy cache, survivor #{m} (kept unsynced writes {mask:?})");
            // Torn tolerance is not needed: whole writes survive or not.
            check_cut(
                sc,
                &label,
                n,
                Cut::Clean,
                &out,
                m == 0 && n % qemu_every == 3,
            );
        }
    }
}

#[test]
fn dynamic_disk_lossy_cache() {
    lossy_everywhere(&dynamic_scenario());
}

#[test]
fn fixed_disk_lossy_cache() {
    lossy_everywhere(&fixed_scenario());
}

/// Enough allocations, trims and flushes to go round the 1 MiB log more
/// than once.
fn log_wrap_scenario() -> Scenario {
    let opts = CreateOptions::new(DYN_SIZE).block_size(MIB as u32);
    let mut ops = Vec::new();
    for i in 0..300u64 {
        let block = i % 8;
        ops.push(Op::Write {
            off: block * MIB + (i * 4096 + 512 * (i % 3)) % MIB,
            len: 512 + 100 * (i % 5),
            seed: 100 + i,
        });
        if i % 3 != 2 {
            ops.push(Op::Trim {
                off: ((i + 3) % 8) * MIB,
                len: MIB,
            });
        }
        if i % 2 == 1 {
            ops.push(Op::Flush);
        }
    }
    ops.push(Op::Close);
    make_scenario(
        "log-wrap",
        &opts,
        &[Op::Write {
            off: 0,
            len: 4096,
            seed: 99,
        }],
        ops,
    )
}

/// The events around the points where the log goes round: the first write
/// into the log below the previous one. Cut points: 20 events either side
/// of each of the first two wraps.
fn log_wrap_points(sc: &Scenario) -> (Vec<u64>, u64) {
    let layout = support::raw::Layout::parse(&sc.image);
    let log = layout.log_offset..layout.log_offset + layout.log_length as u64;
    let rec = support::Recorder::new(MemStorage::from_vec(sc.image.clone()));
    let out = run_on(sc, rec.clone(), &|| false, u64::MAX);
    assert_eq!(out.completed, sc.ops.len());
    let events = rec.events();
    let mut last: Option<u64> = None;
    let mut wraps = Vec::new();
    let mut log_writes = 0;
    for (i, e) in events.iter().enumerate() {
        if let support::Event::Write { offset, .. } = *e {
            if log.contains(&offset) {
                log_writes += 1;
                if last.is_some_and(|l| offset < l) {
                    wraps.push(i as u64);
                }
                last = Some(offset);
            }
        }
    }
    assert!(
        !wraps.is_empty(),
        "the scenario never went round the log ({} events, {log_writes} log writes, last at {last:?}); \
         make it longer",
        events.len()
    );
    let mut points: Vec<u64> = wraps
        .iter()
        .take(2)
        .flat_map(|&w| w.saturating_sub(20)..=w + 20)
        .filter(|&n| n <= events.len() as u64)
        .collect();
    points.sort_unstable();
    points.dedup();
    eprintln!(
        "log-wrap: {} events, log wraps at events {:?}; cutting at {} points",
        events.len(),
        wraps,
        points.len()
    );
    (points, events.len() as u64)
}

#[test]
fn log_wraparound_cuts() {
    let sc = log_wrap_scenario();
    let (points, total) = log_wrap_points(&sc);
    for cut in [Cut::Clean, Cut::Torn] {
        assert_eq!(
            uncut_events(&sc, cut),
            total,
            "event count differs from the recorded run"
        );
        crash_at_points(&sc, cut, points.iter().copied(), total, 20);
    }
}

#[test]
fn log_wraparound_lossy_cache() {
    let sc = log_wrap_scenario();
    let (points, total) = log_wrap_points(&sc);
    assert_eq!(lossy_events(&sc), total);
    lossy_at_points(&sc, points, 20);
}

/// The dynamic scenario's operations on a disk that QEMU made and wrote
/// (its layout, its BAT states, its log area), cut at every event.
fn qemu_scenario() -> Option<Scenario> {
    let (qimg, qio) = (qemu_img_bin()?, support::qemu_io_bin()?);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("q.vhdx");
    run_ok(
        Command::new(qimg)
            .args(["create", "-q", "-f", "vhdx"])
            .args(["-o", "subformat=dynamic,block_size=1M,log_size=1M"])
            .arg(&p)
            .arg("8M"),
    );
    run_ok(
        Command::new(qio)
            .args(["-f", "vhdx"])
            .args(["-c", "write -P 0x11 0 192k"])
            .args(["-c", "write -P 0x22 1124k 64k"])
            .args(["-c", "write -P 0x33 3M 1M"])
            .arg(&p),
    );
    let mut content = vec![0u8; DYN_SIZE as usize];
    content[..192 * KIB as usize].fill(0x11);
    content[1124 * KIB as usize..1188 * KIB as usize].fill(0x22);
    content[3 * MIB as usize..4 * MIB as usize].fill(0x33);
    Some(Scenario {
        name: "qemu-made dynamic",
        image: std::fs::read(&p).expect("read qemu image"),
        content,
        ops: dynamic_scenario().ops,
    })
}

#[test]
fn qemu_made_disk_cuts() {
    let Some(sc) = qemu_scenario() else {
        return;
    };
    crash_everywhere(&sc, Cut::Clean);
    crash_everywhere(&sc, Cut::Torn);
}
