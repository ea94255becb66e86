//! Concurrency stress against a model: many threads read, write, trim,
//! write zeros and flush overlapping and adjacent ranges of one handle, on
//! a dynamic and a differencing disk, on memory and on a real file.
//!
//! Every 256-byte unit the test writes is self-describing: it carries its
//! own virtual offset, the writer, a sequence number and a fill derived
//! from them (so half-sector writes, which a differencing disk must merge
//! with what the chain reads, stay checkable). At every read, each unit
//! must be all zeros or a valid unit for exactly that offset: a write that
//! lands in another block, or a read served from space another block got,
//! shows at once (issue 8, bug 4). (On a host file a read racing a write
//! of the same bytes may see part of it, so there a torn unit is only
//! counted; a complete unit of another offset never is a tear.)
//!
//! Phase 1 races freely (writes against trims of the same block, flushes
//! freeing space, allocations reusing it) and checks validity. Phase 2
//! serialises overlapping operations with per-block locks held by the test
//! (not the engine), logs them into a model in that order, and at the end
//! (all threads stopped, flush, close, reopen) compares every byte with the
//! model. A thread that does not finish in time fails the test as a
//! deadlock.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ckpt::io::{FileStorage, MemStorage, Storage};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

use support::{Ctx, Rng, MIB};

const SIZE: u64 = 48 * MIB;
const BS: u64 = MIB;
const UNIT: u64 = 256;
const THREADS: u32 = 6;

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The unit a writer `w` writes at virtual offset `off` with sequence `seq`.
fn unit(off: u64, w: u32, seq: u32) -> [u8; UNIT as usize] {
    let mut u = [0u8; UNIT as usize];
    u[0..8].copy_from_slice(&off.to_le_bytes());
    u[8..12].copy_from_slice(&w.to_le_bytes());
    u[12..16].copy_from_slice(&seq.to_le_bytes());
    let mut h = mix(off ^ (u64::from(w) << 40) ^ (u64::from(seq) << 8) ^ 0x5eed);
    u[16..24].copy_from_slice(&h.to_le_bytes());
    for c in u[24..].chunks_mut(8) {
        h = mix(h);
        c.copy_from_slice(&h.to_le_bytes()[..c.len()]);
    }
    u
}

/// What a unit read at `off` holds.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Zeros or a unit written for `off`.
    Valid,
    /// A complete, self-consistent unit written for another offset: bytes
    /// that belong elsewhere (no tear of two versions of `off` makes one).
    Foreign(String),
    /// Neither (a tear, or garbage).
    Torn(String),
}

fn classify(off: u64, got: &[u8]) -> Seen {
    if got.iter().all(|&b| b == 0) {
        return Seen::Valid;
    }
    let at = u64::from_le_bytes(got[0..8].try_into().unwrap());
    let w = u32::from_le_bytes(got[8..12].try_into().unwrap());
    let seq = u32::from_le_bytes(got[12..16].try_into().unwrap());
    if got == unit(at, w, seq) {
        if at == off {
            return Seen::Valid;
        }
        return Seen::Foreign(format!(
            "holds the data of virtual offset {at:#x} (writer {w}, seq {seq}): another block's bytes"
        ));
    }
    Seen::Torn(format!(
        "is torn or garbage (header says offset {at:#x}, writer {w}, seq {seq})"
    ))
}

/// Check every unit of `buf` (read at `off`). With `tears_ok`, a torn unit
/// is only counted: a read racing a write of the same bytes of a host file
/// may see part of it (pread/pwrite are not atomic against each other);
/// memory storage is, and a quiescent disk must never show one.
fn check_units(
    ctx: &str,
    buf: &[u8],
    off: u64,
    tears_ok: bool,
    tears: &AtomicU64,
) -> Result<(), String> {
    for (i, u) in buf.chunks(UNIT as usize).enumerate() {
        let o = off + i as u64 * UNIT;
        match classify(o, u) {
            Seen::Valid => {}
            Seen::Torn(_) if tears_ok => {
                tears.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Foreign(why) | Seen::Torn(why) => {
                return Err(format!("{ctx}: the unit at virtual offset {o:#x} {why}"));
            }
        }
    }
    Ok(())
}

fn units(off: u64, len: u64, w: u32, seq: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize);
    let mut o = off;
    while o < off + len {
        v.extend_from_slice(&unit(o, w, seq));
        o += UNIT;
    }
    v
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Read(u64, u64),
    Write(u64, u64, u32),
    Zero(u64, u64),
    Trim(u64, u64),
    Flush,
}

/// A random operation on ranges that overlap and touch block edges.
fn pick(rng: &mut Rng, seq: u32) -> Op {
    let nblocks = SIZE / BS;
    // Mostly a few hot blocks, so that operations collide.
    let block = if rng.below(3) == 0 {
        rng.below(nblocks)
    } else {
        rng.below(6)
    };
    let start = block * BS
        + match rng.below(4) {
            0 => 0,
            1 => BS - UNIT * (1 + rng.below(8)),
            _ => rng.below(BS / UNIT) * UNIT,
        };
    let len = match rng.below(4) {
        0 => UNIT,
        1 => BS,
        _ => UNIT * (1 + rng.below(64)),
    }
    .min(SIZE - start);
    match rng.below(20) {
        0..=6 => Op::Read(start, len),
        7..=12 => Op::Write(start, len, seq),
        13 => Op::Zero(start, len),
        14..=15 => Op::Trim(start, len),
        16..=17 => Op::Trim(block * BS, BS),
        _ => Op::Flush,
    }
}

fn run(disk: &Disk, op: Op, w: u32) -> ckpt::Result<Option<Vec<u8>>> {
    match op {
        Op::Read(off, len) => {
            let mut b = vec![0u8; len as usize];
            disk.read_at(&mut b, off)?;
            Ok(Some(b))
        }
        Op::Write(off, len, seq) => disk.write_at(&units(off, len, w, seq), off).map(|_| None),
        Op::Zero(off, len) => disk.write_at(&vec![0u8; len as usize], off).map(|_| None),
        Op::Trim(off, len) => disk.trim(off, len).map(|_| None),
        Op::Flush => disk.flush().map(|_| None),
    }
}

/// A disk to stress and how to reopen it.
struct Target {
    name: String,
    /// A host file (reads may see a racing write in part).
    file: bool,
    reopen: Box<dyn Fn() -> Disk + Send + Sync>,
}

/// What each thread runs: (disk, writer id, stop flag) -> operations done.
type Body = dyn Fn(&Disk, u32, &AtomicBool) -> Result<u64, String> + Send + Sync;

/// Spawn the threads; wait at most `secs` + a margin for them.
fn threads(ctx: &str, disk: &Arc<Disk>, secs: f64, body: Arc<Body>) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for w in 0..THREADS {
        let (d, stop, tx, body) = (disk.clone(), stop.clone(), tx.clone(), body.clone());
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&d, w, &stop)))
                .unwrap_or_else(|_| Err(format!("thread {w} panicked")));
            let _ = tx.send(r);
        });
    }
    drop(tx);
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ops = 0;
    for _ in 0..THREADS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(n)) => ops += n,
            Ok(Err(e)) => {
                stop.store(true, Ordering::SeqCst);
                panic!("{ctx}: {e}");
            }
            Err(_) => panic!("{ctx}: a thread did not stop within 60 s: deadlock"),
        }
    }
    ops
}

fn stress(t: Target) {
    let _g = Ctx(t.name.clone());
    let disk = Arc::new((t.reopen)());

    // Phase 1: free races; validity at every read.
    let name = t.name.clone();
    let tears = Arc::new(AtomicU64::new(0));
    let (tears1, tears_ok) = (tears.clone(), t.file);
    let n1 = threads(
        &format!("{} phase 1", t.name),
        &disk,
        1.5,
        Arc::new(move |d: &Disk, w: u32, stop: &AtomicBool| {
            let mut rng = Rng::new(0xabc + u64::from(w));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let op = pick(&mut rng, n as u32);
                let r = run(d, op, w).map_err(|e| format!("thread {w}: {op:?} failed: {e}"))?;
                if let (Op::Read(off, _), Some(b)) = (op, r) {
                    check_units(
                        &format!("{name} phase 1, thread {w}, {op:?}"),
                        &b,
                        off,
                        tears_ok,
                        &tears1,
                    )?;
                }
                n += 1;
            }
            Ok(n)
        }),
    );
    // Quiescent: every unit valid, before and after a close and reopen.
    let all = support::read_all(&disk);
    check_units(&format!("{} after phase 1", t.name), &all, 0, false, &tears)
        .unwrap_or_else(|e| panic!("{e}"));
    let disk = Arc::try_unwrap(disk).expect("threads are gone");
    disk.close().expect("close after phase 1");
    let disk = Arc::new((t.reopen)());
    let again = support::read_all(&disk);
    assert!(
        again == all,
        "{}: close + reopen after phase 1 changed the contents: {}",
        t.name,
        support::first_diff(&again, &all)
    );

    // Phase 2: overlapping operations serialised by the test's per-block
    // locks; the model applies them in that order.
    let model = Arc::new(Mutex::new(all));
    let locks: Arc<Vec<Mutex<()>>> = Arc::new((0..SIZE / BS).map(|_| Mutex::new(())).collect());
    let (m2, l2, name) = (model.clone(), locks.clone(), t.name.clone());
    let n2 = threads(
        &format!("{} phase 2", t.name),
        &disk,
        1.0,
        Arc::new(move |d: &Disk, w: u32, stop: &AtomicBool| {
            let mut rng = Rng::new(0xdef + u64::from(w));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let op = pick(&mut rng, 1 << 20 | n as u32);
                let (off, len) = match op {
                    Op::Read(o, l) | Op::Write(o, l, _) | Op::Zero(o, l) | Op::Trim(o, l) => (o, l),
                    Op::Flush => (0, 0),
                };
                let _held: Vec<_> = if len == 0 {
                    Vec::new()
                } else {
                    (off / BS..(off + len).div_ceil(BS))
                        .map(|b| l2[b as usize].lock().unwrap())
                        .collect()
                };
                let r = run(d, op, w).map_err(|e| format!("thread {w}: {op:?} failed: {e}"))?;
                let mut m = m2.lock().unwrap();
                let r0 = off as usize..(off + len) as usize;
                match (op, r) {
                    (Op::Read(..), Some(b)) if b != m[r0.clone()] => {
                        return Err(format!(
                            "{name} phase 2, thread {w}: {op:?} reads other bytes than the \
                             model: {}",
                            support::first_diff(&b, &m[r0])
                        ));
                    }
                    (Op::Write(o, l, seq), _) => m[r0].copy_from_slice(&units(o, l, w, seq)),
                    (Op::Zero(..) | Op::Trim(..), _) => m[r0].fill(0),
                    _ => {}
                }
                n += 1;
            }
            Ok(n)
        }),
    );
    let model = model.lock().unwrap().clone();
    let got = support::read_all(&disk);
    assert!(
        got == model,
        "{}: after phase 2 the disk differs from the model: {}",
        t.name,
        support::first_diff(&got, &model)
    );
    disk.flush().unwrap();
    let disk = Arc::try_unwrap(disk).expect("threads are gone");
    disk.close().expect("close after phase 2");
    let d = (t.reopen)();
    let got = support::read_all(&d);
    assert!(
        got == model,
        "{}: after close + reopen the disk differs from the model: {}",
        t.name,
        support::first_diff(&got, &model)
    );
    drop(d);
    eprintln!(
        "{}: {n1} racing ops ({} units seen torn by a racing read), {n2} serialised ops",
        t.name,
        tears.load(Ordering::Relaxed)
    );
}

fn opts() -> CreateOptions {
    CreateOptions::new(SIZE).block_size(BS as u32)
}

fn mem_dynamic() -> Target {
    let mem = MemStorage::new();
    Disk::create_on(Arc::new(mem.clone()), &opts())
        .unwrap()
        .close()
        .unwrap();
    Target {
        name: "dynamic on memory".into(),
        file: false,
        reopen: Box::new(move || {
            Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadWrite).unwrap()
        }),
    }
}

/// A parent whose every unit is valid (writer 99), so the chain's reads
/// through to the parent are judged too.
fn parent_on(s: Arc<dyn Storage>) -> Disk {
    let p = Disk::create_on(s, &opts()).unwrap();
    for b in (0..SIZE / BS).step_by(2) {
        p.write_at(&units(b * BS, BS, 99, 0), b * BS).unwrap();
    }
    p
}

fn mem_differencing() -> Target {
    let pmem = MemStorage::new();
    let p = parent_on(Arc::new(pmem.clone()));
    let cmem = MemStorage::new();
    Disk::create_child_on(
        Arc::new(cmem.clone()),
        &p,
        &ChildOptions {
            block_size: BS as u32,
            log_size: MIB as u32,
        },
    )
    .unwrap();
    p.close().unwrap();
    Target {
        name: "differencing on memory".into(),
        file: false,
        reopen: Box::new(move || {
            Disk::open_storage_chain(
                vec![Arc::new(cmem.clone()), Arc::new(pmem.clone())],
                OpenMode::ReadWrite,
            )
            .unwrap()
        }),
    }
}

fn file_target(dir: &Path, child: bool) -> Target {
    let base = dir.join("base.vhdx");
    let p = parent_on(Arc::new(FileStorage::create(&base).unwrap()));
    drop(p);
    let top = if child {
        let c = dir.join("child.avhdx");
        Disk::create_child(
            &c,
            &base,
            &ChildOptions {
                block_size: BS as u32,
                log_size: MIB as u32,
            },
        )
        .unwrap()
        .close()
        .unwrap();
        c
    } else {
        base
    };
    Target {
        name: format!(
            "{} on a file in {}",
            if child { "differencing" } else { "dynamic" },
            dir.display()
        ),
        file: true,
        reopen: Box::new(move || Disk::open(&top, OpenMode::ReadWrite).unwrap()),
    }
}

#[test]
fn stress_dynamic_on_memory() {
    stress(mem_dynamic());
}

#[test]
fn stress_differencing_on_memory() {
    stress(mem_differencing());
}

#[test]
fn stress_dynamic_on_a_file() {
    let t = support::fast_tempdir();
    stress(file_target(t.path(), false));
}

#[test]
fn stress_differencing_on_a_file() {
    let t = support::fast_tempdir();
    stress(file_target(t.path(), true));
}
