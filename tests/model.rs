//! The engine against a reference model: random sequences of writes (any
//! offset, 1 byte to a few hundred KiB), trims of random ranges, flushes,
//! reopens and reads, compared after every step with a plain `Vec<u8>`;
//! plus several threads writing disjoint byte ranges of one disk while
//! others read.
//!
//! Trim semantics of this engine: a trimmed range reads as zeros afterwards.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ckpt::disk::check::check_storage;
use ckpt::io::MemStorage;
use ckpt::{CreateOptions, Disk, OpenMode};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use support::{first_diff, pattern, read_all, Rng, KIB, MIB};

const SIZE: u64 = 16 * MIB;
const BLOCK: u64 = MIB;

#[derive(Debug, Clone)]
enum Op {
    /// Write `pattern(seed, 0, len)` at `off` (clamped to the disk).
    Write { off: u64, len: usize, seed: u64 },
    /// Trim `[off, off+len)` (clamped).
    Trim { off: u64, len: u64 },
    /// Flush.
    Flush,
    /// Close and open again read-write.
    Reopen,
    /// Read and compare `[off, off+len)` (clamped).
    Read { off: u64, len: usize },
}

/// Offsets: anywhere, or near a block boundary (where the bugs live).
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..SIZE,
        (0..=SIZE / BLOCK, -1536i64..1536)
            .prop_map(|(b, d)| { (b as i64 * BLOCK as i64 + d).clamp(0, SIZE as i64 - 1) as u64 }),
        (0..SIZE / 512).prop_map(|s| s * 512),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (offset(), 1usize..=300 * 1024, any::<u64>())
            .prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        2 => (offset(), 1usize..=1100, any::<u64>())
            .prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        2 => (offset(), prop_oneof![1u64..8192, 1u64..=3 * MIB])
            .prop_map(|(off, len)| Op::Trim { off, len }),
        1 => (0..SIZE / BLOCK, 1..=3u64)
            .prop_map(|(b, n)| Op::Trim { off: b * BLOCK, len: n * BLOCK }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        2 => (offset(), 1usize..=256 * 1024).prop_map(|(off, len)| Op::Read { off, len }),
    ]
}

/// Where the disk lives.
enum Backend {
    Mem(MemStorage),
    File {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
}

impl Backend {
    fn create(file: bool, opts: &CreateOptions) -> (Backend, Disk) {
        if file {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("model.vhdx");
            let disk = Disk::create(&path, opts).expect("create");
            (Backend::File { _dir: dir, path }, disk)
        } else {
            let mem = MemStorage::new();
            let disk = Disk::create_on(Arc::new(mem.clone()), opts).expect("create");
            (Backend::Mem(mem), disk)
        }
    }
    fn open(&self, mode: OpenMode) -> ckpt::Result<Disk> {
        match self {
            Backend::Mem(m) => Disk::open_storage(Arc::new(m.clone()), mode),
            Backend::File { path, .. } => Disk::open(path, mode),
        }
    }
    fn check(&self) -> ckpt::CheckReport {
        match self {
            Backend::Mem(m) => check_storage(Arc::new(m.clone())),
            Backend::File { path, .. } => ckpt::check(path).expect("check"),
        }
    }
}

fn clamp(off: u64, len: u64) -> (u64, u64) {
    let off = off.min(SIZE - 1);
    (off, len.clamp(1, SIZE - off))
}

fn compare(disk: &Disk, model: &[u8], off: u64, len: u64, what: &str) -> Result<(), TestCaseError> {
    let mut buf = vec![0u8; len as usize];
    disk.read_at(&mut buf, off)
        .map_err(|e| TestCaseError::fail(format!("{what}: read {off:#x}+{len} failed: {e}")))?;
    let want = &model[off as usize..(off + len) as usize];
    prop_assert!(
        buf == want,
        "{what}: read {off:#x}+{len:#x} differs from the model: {}",
        first_diff(&buf, want)
    );
    Ok(())
}

fn run_model(opts: &CreateOptions, file: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let (backend, disk) = Backend::create(file, opts);
    let mut disk = Some(disk);
    let mut model = vec![0u8; SIZE as usize];
    for (i, op) in ops.iter().enumerate() {
        let d = disk.as_ref().expect("open");
        let what = format!("step {i} {op:?}");
        match *op {
            Op::Write { off, len, seed } => {
                let (off, len) = clamp(off, len as u64);
                let data = pattern(seed, 0, len as usize);
                d.write_at(&data, off)
                    .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
                let (lo, hi) = (off.saturating_sub(600), (off + len + 600).min(SIZE));
                compare(d, &model, lo, hi - lo, &what)?;
            }
            Op::Trim { off, len } => {
                let (off, len) = clamp(off, len);
                d.trim(off, len)
                    .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
                model[off as usize..(off + len) as usize].fill(0);
                let (lo, hi) = (off.saturating_sub(600), (off + len + 600).min(SIZE));
                compare(d, &model, lo, hi - lo, &what)?;
            }
            Op::Flush => d
                .flush()
                .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?,
            Op::Reopen => {
                disk.take()
                    .expect("open")
                    .close()
                    .map_err(|e| TestCaseError::fail(format!("{what}: close: {e}")))?;
                disk = Some(
                    backend
                        .open(OpenMode::ReadWrite)
                        .map_err(|e| TestCaseError::fail(format!("{what}: open: {e}")))?,
                );
            }
            Op::Read { off, len } => {
                let (off, len) = clamp(off, len as u64);
                compare(d, &model, off, len, &what)?;
            }
        }
    }
    let d = disk.take().expect("open");
    let all = read_all(&d);
    prop_assert!(
        all == model,
        "whole disk before close: {}",
        first_diff(&all, &model)
    );
    d.close()
        .map_err(|e| TestCaseError::fail(format!("final close: {e}")))?;
    let report = backend.check();
    prop_assert!(report.is_ok(), "check after close: {:?}", report.problems);
    let d = backend
        .open(OpenMode::ReadOnly)
        .map_err(|e| TestCaseError::fail(format!("final read-only open: {e}")))?;
    let all = read_all(&d);
    prop_assert!(
        all == model,
        "whole disk after reopen: {}",
        first_diff(&all, &model)
    );
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

fn dynamic() -> CreateOptions {
    CreateOptions::new(SIZE).block_size(BLOCK as u32)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn dynamic_disk_in_memory(ops in prop::collection::vec(op(), 1..40)) {
        run_model(&dynamic(), false, &ops)?;
    }

    #[test]
    fn dynamic_disk_in_a_file(ops in prop::collection::vec(op(), 1..40)) {
        run_model(&dynamic(), true, &ops)?;
    }

    #[test]
    fn dynamic_disk_4k_sectors(ops in prop::collection::vec(op(), 1..30)) {
        run_model(&dynamic().logical_sector_size(4096), false, &ops)?;
    }

    #[test]
    fn fixed_disk_in_memory(ops in prop::collection::vec(op(), 1..30)) {
        run_model(&dynamic().fixed(true), false, &ops)?;
    }

    #[test]
    fn fixed_disk_in_a_file(ops in prop::collection::vec(op(), 1..30)) {
        run_model(&dynamic().fixed(true), true, &ops)?;
    }
}

/// A fixed sequence that hits the classic edges, run on every variant even
/// when proptest draws nothing like it.
#[test]
fn edge_sequence() {
    let ops = vec![
        Op::Write {
            off: BLOCK - 1,
            len: 2,
            seed: 1,
        },
        Op::Write {
            off: SIZE - 1,
            len: 1,
            seed: 2,
        },
        Op::Write {
            off: 0,
            len: 1,
            seed: 3,
        },
        Op::Trim { off: 1, len: 1 },
        Op::Write {
            off: 3 * BLOCK + 5,
            len: 2 * BLOCK as usize,
            seed: 4,
        },
        Op::Trim {
            off: 4 * BLOCK,
            len: BLOCK,
        },
        Op::Read {
            off: 3 * BLOCK,
            len: 3 * BLOCK as usize,
        },
        Op::Reopen,
        Op::Trim {
            off: 3 * BLOCK + 100,
            len: 3 * BLOCK,
        },
        Op::Write {
            off: 4 * BLOCK + 7,
            len: 7,
            seed: 5,
        },
        Op::Flush,
        Op::Trim { off: 0, len: SIZE },
        Op::Write {
            off: 10 * BLOCK - 300,
            len: 600,
            seed: 6,
        },
        Op::Reopen,
        Op::Read {
            off: 0,
            len: SIZE as usize,
        },
    ];
    for (opts, file) in [
        (dynamic(), false),
        (dynamic(), true),
        (dynamic().logical_sector_size(4096), false),
        (dynamic().fixed(true), false),
    ] {
        if let Err(e) = run_model(&opts, file, &ops) {
            panic!("{opts:?} file={file}: {e}");
        }
    }
}

/// Chunks written by the striped writers; their boundaries are not sector
/// aligned, so neighbouring writers share sectors.
const CHUNK: u64 = 40 * KIB + 100;
const STRIPED_END: u64 = 12 * MIB;
const WRITERS: u64 = 3;

fn chunk_data(k: u64) -> Vec<u8> {
    pattern(1000 + k, 0, CHUNK as usize)
}

/// Several threads write disjoint byte ranges of one disk (sharing blocks
/// and even sectors) while others read; one more thread allocates, trims
/// and rewrites whole blocks of its own. Reads of finished chunks must be
/// exact at all times; at the end the whole disk must match.
fn concurrent(file: bool) {
    let (backend, disk) = Backend::create(file, &dynamic());
    let nchunks = STRIPED_END / CHUNK;
    let done: Vec<AtomicBool> = (0..nchunks).map(|_| AtomicBool::new(false)).collect();
    let writers_left = AtomicUsize::new(WRITERS as usize + 1);
    let own_start = STRIPED_END;
    let own_len = SIZE - STRIPED_END;

    let own_model = std::thread::scope(|s| {
        let disk = &disk;
        let done = &done;
        let writers_left = &writers_left;
        for t in 0..WRITERS {
            s.spawn(move || {
                let mut rng = Rng::new(77 + t);
                let mut mine: Vec<u64> = (0..nchunks).filter(|k| k % WRITERS == t).collect();
                for i in (1..mine.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    mine.swap(i, j);
                }
                for (n, &k) in mine.iter().enumerate() {
                    let data = chunk_data(k);
                    // One to three pieces, split at odd places.
                    let a = rng.below(CHUNK);
                    let b = rng.below(CHUNK);
                    let (a, b) = (a.min(b), a.max(b));
                    for (lo, hi) in [(0, a), (a, b), (b, CHUNK)] {
                        if lo < hi {
                            disk.write_at(&data[lo as usize..hi as usize], k * CHUNK + lo)
                                .unwrap_or_else(|e| panic!("writer {t}: chunk {k}: {e}"));
                        }
                    }
                    done[k as usize].store(true, Ordering::Release);
                    if n % 16 == 15 {
                        disk.flush()
                            .unwrap_or_else(|e| panic!("writer {t}: flush: {e}"));
                    }
                }
                writers_left.fetch_sub(1, Ordering::AcqRel);
            });
        }
        let owner = s.spawn(move || {
            let mut rng = Rng::new(4242);
            let mut model = vec![0u8; own_len as usize];
            for i in 0..40u64 {
                let b = rng.below(own_len / BLOCK);
                let base = own_start + b * BLOCK;
                let m = &mut model[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
                match rng.below(4) {
                    0 => {
                        let data = pattern(5000 + i, 0, BLOCK as usize);
                        disk.write_at(&data, base).expect("owner: write block");
                        m.copy_from_slice(&data);
                    }
                    1 => {
                        let off = rng.below(BLOCK - 1);
                        let len = 1 + rng.below((BLOCK - off).min(100 * KIB));
                        let data = pattern(6000 + i, 0, len as usize);
                        disk.write_at(&data, base + off).expect("owner: write part");
                        m[off as usize..(off + len) as usize].copy_from_slice(&data);
                    }
                    2 => {
                        disk.trim(base, BLOCK).expect("owner: trim block");
                        m.fill(0);
                    }
                    _ => {
                        let off = rng.below(BLOCK - 1);
                        let len = 1 + rng.below(BLOCK - off);
                        disk.trim(base + off, len).expect("owner: trim part");
                        m[off as usize..(off + len) as usize].fill(0);
                    }
                }
                let mut got = vec![0u8; BLOCK as usize];
                disk.read_at(&mut got, base).expect("owner: read");
                assert!(
                    got == *m,
                    "owner: block {b} after step {i}: {}",
                    first_diff(&got, m)
                );
            }
            writers_left.fetch_sub(1, Ordering::AcqRel);
            model
        });
        for r in 0..2u64 {
            s.spawn(move || {
                let mut rng = Rng::new(999 + r);
                let mut buf = vec![0u8; CHUNK as usize];
                let mut checked = 0u64;
                while writers_left.load(Ordering::Acquire) > 0 || checked < 50 {
                    let k = rng.below(nchunks);
                    let finished = done[k as usize].load(Ordering::Acquire);
                    disk.read_at(&mut buf, k * CHUNK)
                        .unwrap_or_else(|e| panic!("reader {r}: chunk {k}: {e}"));
                    let want = chunk_data(k);
                    if finished {
                        assert!(
                            buf == want,
                            "reader {r}: finished chunk {k} reads wrong: {}",
                            first_diff(&buf, &want)
                        );
                        checked += 1;
                    } else {
                        // Mid-write: every byte is either still zero or new.
                        if let Some(i) = buf.iter().zip(&want).position(|(g, w)| *g != 0 && g != w)
                        {
                            panic!(
                                "reader {r}: chunk {k} (being written) has a foreign byte at +{i}"
                            );
                        }
                    }
                }
            });
        }
        owner.join().expect("owner thread")
    });

    let mut model = vec![0u8; SIZE as usize];
    for k in 0..nchunks {
        model[(k * CHUNK) as usize..((k + 1) * CHUNK) as usize].copy_from_slice(&chunk_data(k));
    }
    model[own_start as usize..].copy_from_slice(&own_model);
    disk.flush().expect("flush");
    let all = read_all(&disk);
    assert!(
        all == model,
        "after the threads: {}",
        first_diff(&all, &model)
    );
    disk.close().expect("close");
    let report = backend.check();
    assert!(report.is_ok(), "check: {:?}", report.problems);
    let d = backend.open(OpenMode::ReadOnly).expect("reopen");
    let all = read_all(&d);
    assert!(all == model, "after reopen: {}", first_diff(&all, &model));
}

#[test]
fn concurrent_writers_and_readers_in_memory() {
    concurrent(false);
}

#[test]
fn concurrent_writers_and_readers_in_a_file() {
    concurrent(true);
}
