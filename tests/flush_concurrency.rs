//! A flush does not stop writes: while its syncs run, other threads' writes
//! (allocating ones too) go on and land in the next flush (issue 11: the
//! state lock was held through the flush's fdatasyncs, so after a live
//! switch the guest's first writes into the fresh child waited for them).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ckpt::io::{FaultStorage, MemStorage, Storage, Transient};
use ckpt::{CreateOptions, Disk, OpenMode};

mod support;

use support::lossy::LossyStorage;

const BS: u64 = 1 << 20;

/// A memory storage whose syncs, once `hold` is set, wait until it is
/// cleared (and say they are waiting).
#[derive(Debug, Default)]
struct HeldSync {
    inner: MemStorage,
    hold: Mutex<bool>,
    changed: Condvar,
    waiting: AtomicBool,
}

impl HeldSync {
    fn set_hold(&self, on: bool) {
        *self.hold.lock().unwrap() = on;
        self.changed.notify_all();
    }
}

impl Storage for HeldSync {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        let mut held = self.hold.lock().unwrap();
        while *held {
            self.waiting.store(true, Ordering::SeqCst);
            held = self.changed.wait(held).unwrap();
        }
        self.waiting.store(false, Ordering::SeqCst);
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(offset, len)
    }
}

fn data(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed | 1)
        .collect()
}

#[test]
fn allocating_writes_go_on_while_a_flush_syncs() {
    let st = Arc::new(HeldSync::default());
    let dyn_st: Arc<dyn Storage> = st.clone();
    let disk = Arc::new(
        Disk::create_on(
            dyn_st.clone(),
            &CreateOptions::new(16 * BS).block_size(BS as u32),
        )
        .unwrap(),
    );
    // The session is started (its syncs done) before syncs are held.
    disk.write_at(&data(1), 0).unwrap();
    st.set_hold(true);
    let flusher = {
        let disk = disk.clone();
        std::thread::spawn(move || disk.flush())
    };
    while !st.waiting.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The flush is inside its sync: writes into new blocks and reads finish.
    let (tx, rx) = mpsc::channel();
    let writer = {
        let disk = disk.clone();
        std::thread::spawn(move || {
            for b in 1..8u64 {
                disk.write_at(&data(b as u8 + 1), b * BS).unwrap();
            }
            let mut got = vec![0u8; 4096];
            disk.read_at(&mut got, 3 * BS).unwrap();
            tx.send(got).unwrap();
        })
    };
    let got = rx.recv_timeout(Duration::from_secs(20));
    let still_held = st.waiting.load(Ordering::SeqCst);
    st.set_hold(false);
    writer.join().unwrap();
    flusher.join().unwrap().unwrap();
    let got = got.expect("the writes waited for the flush's sync");
    assert!(still_held, "the flush was still in its sync");
    assert_eq!(got, data(4));
    // The writes made during the flush are made durable by the next one.
    disk.flush().unwrap();
    let image = st.inner.snapshot();
    drop(disk);
    let back =
        Disk::open_storage(Arc::new(MemStorage::from_vec(image)), OpenMode::ReadOnly).unwrap();
    for b in 0..8u64 {
        let mut got = vec![0u8; 4096];
        back.read_at(&mut got, b * BS).unwrap();
        assert_eq!(got, data(b as u8 + 1), "block {b}");
    }
}

/// The writer's work: `(block, Some(seed))` writes `data(seed)` at the
/// block's start (allocating it when new), `(block, None)` trims the whole
/// block (its space is reused by later writes once the trim is durable).
const OPS: &[(u64, Option<u8>)] = &[
    (0, Some(1)),
    (1, Some(2)),
    (2, Some(3)),
    (3, Some(4)),
    (1, None),
    (4, Some(5)),
    (5, Some(6)),
    (3, None),
    (6, Some(7)),
    (1, Some(8)),
    (0, None),
    (7, Some(9)),
    (2, Some(10)),
    (8, Some(11)),
];

/// What block `block` reads at its start after the first `k` ops.
fn state_after(block: u64, k: usize) -> Vec<u8> {
    OPS[..k]
        .iter()
        .rev()
        .find(|(b, _)| *b == block)
        .and_then(|(_, seed)| seed.map(data))
        .unwrap_or_else(|| vec![0u8; 4096])
}

fn base_image() -> Vec<u8> {
    let st = Arc::new(MemStorage::new());
    let d = Disk::create_on(
        st.clone(),
        &CreateOptions::new(16 * BS).block_size(BS as u32),
    )
    .unwrap();
    d.close().unwrap();
    st.snapshot()
}

/// One writer runs `OPS` while a second thread flushes in a loop (the
/// flusher retries after an error when `retry`). Returns how many ops were
/// durable by the last successful flush (the ops done before it started)
/// and how many the writer finished.
fn write_while_flushing(disk: &Disk, retry: bool) -> (usize, usize) {
    let done = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    let mut durable = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            'ops: for (i, &(block, seed)) in OPS.iter().enumerate() {
                // A failed op is retried (a transient error heals) when `retry`.
                for _ in 0..3 {
                    let r = match seed {
                        Some(seed) => disk.write_at(&data(seed), block * BS),
                        None => disk.trim(block * BS, BS),
                    };
                    match r {
                        Ok(()) => {
                            done.store(i + 1, Ordering::SeqCst);
                            continue 'ops;
                        }
                        Err(e) if retry => eprintln!("op {i} failed, retried: {e}"),
                        Err(_) => break 'ops,
                    }
                }
                panic!("op {i} failed three times");
            }
            finished.store(true, Ordering::SeqCst);
        });
        loop {
            let last = finished.load(Ordering::SeqCst);
            let d = done.load(Ordering::SeqCst);
            match disk.flush() {
                Ok(()) => durable = durable.max(d),
                Err(_) if retry => {}
                Err(_) => break,
            }
            if last {
                break;
            }
        }
    });
    (durable, done.load(Ordering::SeqCst))
}

/// Every block of `image` reads as a state it had after `durable` ops or
/// later (never older than the last flush, never another block's data),
/// and the file opens writable (log replayed) and passes its check.
fn judge(ctx: &str, image: Vec<u8>, durable: usize) {
    let back = Disk::open_storage(Arc::new(MemStorage::from_vec(image)), OpenMode::ReadWrite)
        .unwrap_or_else(|e| panic!("{ctx}: does not open: {e}"));
    for block in 0..9u64 {
        let mut got = vec![0u8; 4096];
        back.read_at(&mut got, block * BS).unwrap();
        let ok = (durable..=OPS.len()).any(|k| state_after(block, k) == got);
        assert!(
            ok,
            "{ctx}: block {block} holds neither its state when flushed nor a later one"
        );
    }
}

/// A crash anywhere while a writer keeps writing (and trimming) during the
/// flushes: with a volatile cache that keeps any of several choices of the
/// writes since the last sync, the file opens and holds at least everything
/// flushed.
#[test]
fn a_crash_while_a_writer_writes_during_flushes_keeps_every_flushed_write() {
    let base = base_image();
    let mut crash_at = 0;
    loop {
        let st = Arc::new(LossyStorage::new(base.clone(), crash_at));
        let disk = Disk::open_storage(st.clone(), OpenMode::ReadWrite).unwrap();
        let (durable, _) = write_while_flushing(&disk, false);
        drop(disk);
        if !st.crashed() {
            assert!(crash_at > 20, "the sweep saw only {crash_at} events");
            break;
        }
        // The cache keeps none, all, every other one, or only the newest
        // (the one a write-back cache in the wrong order favours) of the
        // writes since the last sync.
        let newest = st.unsynced().saturating_sub(1);
        let masks: [&dyn Fn(usize) -> bool; 5] = [
            &|_| false,
            &|_| true,
            &|i| i % 2 == 0,
            &|i| i % 2 == 1,
            &|i| i == newest,
        ];
        for (m, keep) in masks.iter().enumerate() {
            judge(
                &format!("crash at event {crash_at}, survivor {m}"),
                st.survivor(keep),
                durable,
            );
        }
        crash_at += 1;
    }
}

/// One storage error anywhere while a writer keeps writing during the
/// flushes, both retrying (the writer redoes a failed op): the final flush
/// succeeds and every op's result is there, in the right block.
#[test]
fn one_error_while_a_writer_writes_during_flushes_is_healed_by_the_retries() {
    let base = base_image();
    let mut fail_at = 0;
    loop {
        let st = Arc::new(FaultStorage::transient(
            MemStorage::from_vec(base.clone()),
            fail_at,
            Transient::Eio,
        ));
        let disk = Disk::open_storage(st.clone(), OpenMode::ReadWrite).unwrap();
        let (_, done) = write_while_flushing(&disk, true);
        let ctx = format!("error at event {fail_at}");
        assert_eq!(done, OPS.len(), "{ctx}");
        // The error may fall into this flush too: then its retry heals it.
        disk.flush()
            .or_else(|_| disk.flush())
            .unwrap_or_else(|e| panic!("{ctx}: the flush after the writer fails twice: {e}"));
        let injected = st.fault_injected();
        drop(disk);
        let image = st.inner().snapshot();
        let back = Disk::open_storage(Arc::new(MemStorage::from_vec(image)), OpenMode::ReadOnly)
            .unwrap_or_else(|e| panic!("{ctx}: does not open: {e}"));
        for block in 0..9u64 {
            let mut got = vec![0u8; 4096];
            back.read_at(&mut got, block * BS).unwrap();
            assert_eq!(got, state_after(block, OPS.len()), "{ctx}: block {block}");
        }
        if !injected {
            assert!(fail_at > 20, "the sweep saw only {fail_at} events");
            break;
        }
        fail_at += 1;
    }
}
