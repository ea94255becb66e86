//! Regression tests for the flush protocol (issue 8, bugs 1, 2 and 4):
//! a flush that fails is never forgotten, a flush of any size lands whole
//! or not at all, and no I/O racing a trim lands in another block.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ckpt::io::{Cut, FaultStorage, MemStorage, Storage};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

/// What to make fail once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Write,
    Sync,
}

/// A memory storage whose next `write_at` or `sync` fails once, when armed
/// (with EIO or ENOSPC), and that works normally before and after.
#[derive(Debug)]
struct FailOnce {
    inner: MemStorage,
    armed: Mutex<Option<(Fail, u64, io::ErrorKind)>>,
    seen: AtomicU64,
}

impl FailOnce {
    fn new(inner: MemStorage) -> Arc<FailOnce> {
        Arc::new(FailOnce {
            inner,
            armed: Mutex::new(None),
            seen: AtomicU64::new(0),
        })
    }
    /// Fail the `skip`-th next operation of kind `what` (0: the very next).
    fn arm(&self, what: Fail, skip: u64, kind: io::ErrorKind) {
        *self.armed.lock().unwrap() = Some((what, skip, kind));
    }
    fn hit(&self, what: Fail) -> io::Result<()> {
        let mut a = self.armed.lock().unwrap();
        if let Some((w, skip, kind)) = *a {
            if w == what {
                if skip == 0 {
                    *a = None;
                    self.seen.fetch_add(1, Ordering::SeqCst);
                    return Err(io::Error::new(kind, "injected failure"));
                }
                *a = Some((w, skip - 1, kind));
            }
        }
        Ok(())
    }
}

impl Storage for FailOnce {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.hit(Fail::Write)?;
        self.inner.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.hit(Fail::Sync)?;
        self.inner.sync()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
        .collect()
}

/// Compare without printing megabytes.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: differs (lengths {} / {}, first difference at {i:?})",
            got.len(),
            want.len()
        );
    }
}

fn read(d: &Disk, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    d.read_at(&mut b, off).unwrap();
    b
}

fn reopen(mem: &MemStorage) -> Disk {
    Disk::open_storage(
        Arc::new(MemStorage::from_vec(mem.snapshot())),
        OpenMode::ReadWrite,
    )
    .unwrap()
}

/// Bug 1: the k-th write of a flush (the log entry, or a sector applied
/// from it) fails once; the retried flush and the close must make the data
/// durable — before the fix they returned Ok and the data read as zeros.
#[test]
fn a_flush_that_failed_once_is_completed_by_the_retry() {
    // Five BAT sectors dirty: the flush writes the entry, then five sectors.
    for skip in 0..6 {
        for kind in [io::ErrorKind::Other, io::ErrorKind::StorageFull] {
            let mem = MemStorage::new();
            let fs = FailOnce::new(mem.clone());
            let d = Disk::create_on(fs.clone(), &CreateOptions::new(4 << 30).block_size(1 << 20))
                .unwrap();
            let early = pattern(1, 64 << 10);
            d.write_at(&early, 0).unwrap();
            d.flush().unwrap();
            // Allocating writes: BAT sectors become dirty.
            let data: Vec<(u64, Vec<u8>)> = (0..5u64)
                .map(|i| ((i + 1) * (600 << 20) + 4096, pattern(10 + i as u8, 8192)))
                .collect();
            for (off, b) in &data {
                d.write_at(b, *off).unwrap();
            }
            fs.arm(Fail::Write, skip, kind);
            let first = d.flush();
            let failed = fs.seen.load(Ordering::SeqCst) == 1;
            assert!(failed, "skip {skip}: the flush made fewer writes");
            assert!(first.is_err(), "skip {skip}: {first:?}");
            d.flush().unwrap();
            d.close().unwrap();
            let d = reopen(&mem);
            same(&read(&d, 0, early.len()), &early, "early");
            for (off, b) in &data {
                same(
                    &read(&d, *off, b.len()),
                    b,
                    &format!("skip {skip}, {kind:?}, at {off}"),
                );
            }
        }
    }
}

/// Bug 1, sync side: after a failed sync nothing is known about what
/// reached the disk, so the handle refuses every later write, flush and
/// close (never Ok for data that may be lost, never a clean log); a reopen
/// shows everything flushed before.
#[test]
fn a_failed_sync_poisons_the_handle_until_reopened() {
    for skip in 0..3 {
        let mem = MemStorage::new();
        let fs = FailOnce::new(mem.clone());
        let d = Disk::create_on(
            fs.clone(),
            &CreateOptions::new(64 << 20).block_size(1 << 20),
        )
        .unwrap();
        let early = pattern(3, 128 << 10);
        d.write_at(&early, 1 << 20).unwrap();
        d.flush().unwrap();
        d.write_at(&pattern(4, 4096), 9 << 20).unwrap();
        fs.arm(Fail::Sync, skip, io::ErrorKind::Other);
        assert!(d.flush().is_err(), "skip {skip}");
        let e = d.flush().unwrap_err().to_string();
        assert!(e.contains("reopen"), "{e}");
        assert!(d.write_at(&[1u8; 512], 0).is_err());
        assert!(d.trim(0, 1 << 20).is_err());
        assert!(d.close().is_err());
        let d = reopen(&mem);
        same(&read(&d, 1 << 20, early.len()), &early, "flushed before");
        d.write_at(&[7u8; 512], 0).unwrap();
        d.close().unwrap();
    }
}

/// A failed data write into a block that got its space for that write
/// leaves the block as it was (in a differencing disk: the parent's data
/// still shows), and a retry succeeds.
#[test]
fn a_failed_write_into_a_new_block_leaves_the_block_as_it_was() {
    let pmem = MemStorage::new();
    let p = Disk::create_on(
        Arc::new(pmem.clone()),
        &CreateOptions::new(16 << 20).block_size(1 << 20),
    )
    .unwrap();
    let base = pattern(5, 16 << 20);
    p.write_at(&base, 0).unwrap();
    p.close().unwrap();
    let parent = Disk::open_storage(Arc::new(pmem.clone()), OpenMode::ReadOnly).unwrap();
    let cmem = MemStorage::new();
    let fs = FailOnce::new(cmem.clone());
    Disk::create_child_on(
        fs.clone(),
        &parent,
        &ChildOptions {
            block_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let open = || {
        Disk::open_storage_chain(
            vec![fs.clone() as Arc<dyn Storage>, Arc::new(pmem.clone())],
            OpenMode::ReadWrite,
        )
        .unwrap()
    };
    let d = open();
    let whole = pattern(6, 1 << 20);
    // The first writes of a session are the session start; fail the data.
    d.write_at(&[0u8; 512], 15 << 20).unwrap();
    fs.arm(Fail::Write, 0, io::ErrorKind::StorageFull);
    let e = d.write_at(&whole, 3 << 20).unwrap_err();
    assert_eq!(e.kind(), ckpt::ErrorKind::NoSpace, "{e}");
    same(
        &read(&d, 3 << 20, 1 << 20),
        &base[3 << 20..4 << 20],
        "after the failure",
    );
    d.flush().unwrap();
    same(
        &read(&d, 3 << 20, 1 << 20),
        &base[3 << 20..4 << 20],
        "after a flush",
    );
    d.write_at(&whole, 3 << 20).unwrap();
    d.close().unwrap();
    let d = open();
    same(&read(&d, 3 << 20, 1 << 20), &whole, "after the retry");
}

/// Bug 2: a flush far bigger than one log entry (a whole-disk trim of a
/// 70 GiB differencing disk (but one block) dirties ~140 BAT sectors; then partial writes
/// make PARTIALLY_PRESENT blocks in several chunks), cut at every write
/// and sync: every state opens and every block is old or new.
#[test]
fn a_crash_anywhere_in_a_huge_flush_leaves_each_block_old_or_new() {
    const MIB: u64 = 1 << 20;
    let size = 70u64 << 30;
    let pmem = MemStorage::new();
    let p = Disk::create_on(
        Arc::new(pmem.clone()),
        &CreateOptions::new(size).block_size(MIB as u32),
    )
    .unwrap();
    // Parent data in blocks spread over the disk, so that a trimmed
    // (ZERO) block reads differently from one that still shows the parent.
    let parent_blocks: Vec<u64> = (0..70).map(|i| i * 1024 + 7).collect();
    for &b in &parent_blocks {
        p.write_at(&pattern(b as u8, 4096), b * MIB).unwrap();
    }
    p.close().unwrap();
    let parent = Disk::open_storage(Arc::new(pmem.clone()), OpenMode::ReadOnly).unwrap();
    let cmem = MemStorage::new();
    Disk::create_child_on(
        Arc::new(cmem.clone()),
        &parent,
        &ChildOptions {
            block_size: MIB as u32,
            ..Default::default()
        },
    )
    .unwrap();
    drop(parent);
    let open_chain = |child: Arc<dyn Storage>, mode| {
        Disk::open_storage_chain(vec![child, Arc::new(pmem.clone())], mode)
    };
    // Flushed before the cut: a child block of its own.
    let c = open_chain(Arc::new(cmem.clone()), OpenMode::ReadWrite).unwrap();
    let kept = pattern(99, 8192);
    c.write_at(&kept, 5 * MIB).unwrap();
    c.close().unwrap();
    let before = cmem.snapshot();
    // Partial writes into the first block of every chunk (a chunk is
    // 4 GiB): the BAT entry of such a block and its chunk's SB entry lie 8
    // BAT sectors apart, so with ~140 dirty sectors some pair straddles
    // wherever a flush would cut them into several log entries.
    let writes: Vec<(u64, Vec<u8>)> = (0..17u64)
        .map(|c| (c * (4 << 30) + 1024, pattern(50 + c as u8, 2048)))
        .collect();
    let blocks: Vec<u64> = parent_blocks
        .iter()
        .copied()
        .chain(writes.iter().map(|(o, _)| o / MIB))
        .chain([5])
        .collect();
    // Old and new content of each checked block.
    let content = |d: &Disk, b: u64| read(d, b * MIB, MIB as usize);
    let old_state = open_chain(
        Arc::new(MemStorage::from_vec(before.clone())),
        OpenMode::ReadOnly,
    )
    .unwrap();
    let old: Vec<Vec<u8>> = blocks.iter().map(|&b| content(&old_state, b)).collect();
    drop(old_state);
    let run = |child: Arc<dyn Storage>| -> ckpt::Result<()> {
        let d = open_chain(child, OpenMode::ReadWrite)?;
        // Every block but the one flushed before (which must survive) and
        // the ones written below (still NOT_PRESENT: they become
        // PARTIALLY_PRESENT).
        let mut keep: Vec<u64> = writes.iter().map(|(o, _)| o / MIB).collect();
        keep.push(5);
        keep.sort_unstable();
        let mut at = 0;
        for b in keep {
            if b * MIB > at {
                d.trim(at, b * MIB - at)?;
            }
            at = (b + 1) * MIB;
        }
        d.trim(at, size - at)?;
        for (o, b) in &writes {
            d.write_at(b, *o)?;
        }
        d.flush()?;
        std::mem::forget(d); // a crash, not a close
        Ok(())
    };
    let probe = Arc::new(FaultStorage::new(
        MemStorage::from_vec(before.clone()),
        u64::MAX,
        Cut::Clean,
    ));
    run(probe.clone()).unwrap();
    let events = probe.events();
    assert!(events > 150, "only {events} events: the flush is not big");
    let new_state = open_chain(
        Arc::new(MemStorage::from_vec(probe.inner().snapshot())),
        OpenMode::ReadOnly,
    )
    .unwrap();
    let new: Vec<Vec<u8>> = blocks.iter().map(|&b| content(&new_state, b)).collect();
    drop(new_state);
    assert!(new[0].iter().all(|&x| x == 0));
    for cut in [Cut::Clean, Cut::Torn] {
        for k in 0..events {
            let f = Arc::new(FaultStorage::new(
                MemStorage::from_vec(before.clone()),
                k,
                cut,
            ));
            let _ = run(f.clone());
            let image = MemStorage::from_vec(f.inner().snapshot());
            let report = ckpt::disk::check::check_storage(Arc::new(image.clone()));
            assert!(report.is_ok(), "cut {k} ({cut:?}): {report:?}");
            let d = open_chain(Arc::new(image), OpenMode::ReadOnly)
                .unwrap_or_else(|e| panic!("cut {k} ({cut:?}): does not open: {e}"));
            for (i, &b) in blocks.iter().enumerate() {
                let got = content(&d, b);
                assert!(
                    got == old[i] || got == new[i],
                    "cut {k} ({cut:?}): block {b} is neither old nor new"
                );
            }
            same(
                &read(&d, 5 * MIB, kept.len()),
                &kept,
                &format!("cut {k}: flushed data"),
            );
        }
    }
}

/// A memory storage whose writes of whole 64 KiB take a while, to widen
/// the window between looking a block up and writing it.
#[derive(Debug)]
struct Slow(MemStorage);

impl Storage for Slow {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.len() == 64 << 10 {
            std::thread::sleep(std::time::Duration::from_micros(300));
        }
        self.0.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
}

/// Bug 4: writes and reads racing trims of the same blocks, with flushes
/// that make the trimmed space reusable and writers that allocate new
/// blocks: no block may ever hold (or read) another block's bytes.
#[test]
fn io_racing_a_trim_never_touches_another_block() {
    const BS: u64 = 1 << 20;
    let d = Arc::new(
        Disk::create_on(
            Arc::new(Slow(MemStorage::new())),
            &CreateOptions::new(4096 * BS).block_size(BS as u32),
        )
        .unwrap(),
    );
    // Each block's bytes carry its number in every 8-byte word.
    let tag = |block: u64, gen: u64| -> Vec<u8> {
        let mut v = Vec::with_capacity(64 << 10);
        for _ in 0..(64 << 10) / 16 {
            v.extend_from_slice(&block.to_le_bytes());
            v.extend_from_slice(&gen.to_le_bytes());
        }
        v
    };
    let check = |buf: &[u8], block: u64| -> Result<(), String> {
        for w in buf.chunks_exact(16) {
            let b = u64::from_le_bytes(w[..8].try_into().unwrap());
            if b != block && w.iter().any(|&x| x != 0) {
                return Err(format!("block {block} holds bytes of block {b}"));
            }
        }
        Ok(())
    };
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    // Rewriters and readers of blocks 0..8, trimmers of the same blocks.
    for t in 0..2u64 {
        let (d, stop, bad) = (d.clone(), stop.clone(), bad.clone());
        threads.push(std::thread::spawn(move || {
            let mut gen = 0;
            while !stop.load(Ordering::Relaxed) {
                let b = (gen + t) % 8;
                gen += 1;
                d.write_at(&tag(b, gen), b * BS).unwrap();
                let mut r = vec![0u8; 64 << 10];
                d.read_at(&mut r, b * BS).unwrap();
                if let Err(e) = check(&r, b) {
                    bad.lock().unwrap().push(e);
                }
            }
        }));
    }
    {
        let (d, stop) = (d.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                d.trim((i % 8) * BS, BS).unwrap();
                i += 1;
                if i % 4 == 0 {
                    d.flush().unwrap();
                }
            }
        }));
    }
    // An allocator of fresh blocks that get the space trims free.
    let (d2, stop2) = (d.clone(), stop.clone());
    let alloc = std::thread::spawn(move || {
        let mut b = 8;
        while !stop2.load(Ordering::Relaxed) && b < 4096 {
            d2.write_at(&tag(b, 0), b * BS).unwrap();
            b += 1;
        }
        b
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let last = alloc.join().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    d.flush().unwrap();
    let bad = bad.lock().unwrap();
    assert!(bad.is_empty(), "{} bad reads, first: {}", bad.len(), bad[0]);
    for b in 8..last {
        let mut r = vec![0u8; 64 << 10];
        d.read_at(&mut r, b * BS).unwrap();
        check(&r, b).unwrap();
        assert!(r.iter().any(|&x| x != 0), "block {b} lost its data");
    }
}
