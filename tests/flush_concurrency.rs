//! A flush does not stop writes: while its syncs run, other threads' writes
//! (allocating ones too) go on and land in the next flush (issue 11: the
//! state lock was held through the flush's fdatasyncs, so after a live
//! switch the guest's first writes into the fresh child waited for them).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ckpt::io::{MemStorage, Storage};
use ckpt::{CreateOptions, Disk, OpenMode};

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
