//! The one support tree of the integration tests (`mod support;` in each
//! test file; not every file uses every helper, hence the `dead_code`
//! allowance):
//!
//! - here: sizes, temporary folders, a deterministic generator ([`Rng`])
//!   and [`pattern`], panic context ([`Ctx`]), whole-disk reads, opens
//!   under a timeout, storages that count or record writes;
//! - [`oracle`]: `qemu-img`, `qemu-io`, `bzip2`, `pyvhdi` and the real test
//!   images, with [`in_ci`] (a missing oracle fails under `CI=true`);
//! - [`model`]: a sparse reference model of a disk and content comparisons;
//! - [`cli`]: running the `ckpt` tool (only with the `cli` feature);
//! - [`raw`]: an independent raw VHDX parser to damage images field by
//!   field; [`ops`]: a byte model of operations with the old-or-new
//!   judgement; [`lossy`]: a storage that loses any subset of unsynced
//!   writes; [`sparse`]: a sparse crashing storage for huge images;
//!   [`marked`]: small VM disks marked with one byte; [`sweep`]: crash
//!   sweeps of VM operations; [`units`]: self-describing
//!   units written by writer threads, for live disks and attached VMs;
//!   [`plugin`]: the nbdkit plugin built for this run; [`guest`]: the tiny
//!   QEMU guest, its serial console and QMP / guest-agent clients.
//!   (`rawlog.rs` is included by path by the files that need it.)

#![allow(dead_code)]

pub mod backup;
pub mod ceph;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod guest;
pub mod lossy;
pub mod marked;
pub mod model;
pub mod ops;
pub mod oracle;
pub mod plugin;
pub mod raw;
pub mod sparse;
pub mod sweep;
pub mod units;

// One flat namespace for the test files (`support::tempdir`, `support::qemu_img`, ...).
#[allow(unused_imports)]
pub use model::*;
#[allow(unused_imports)]
pub use oracle::*;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ckpt::io::Storage;
use ckpt::{Disk, OpenMode};

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// A fresh temporary folder, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ckpt-test-")
        .tempdir()
        .expect("create a temporary folder")
}

// ------------------------------------------------------------------ patterns

/// SplitMix64: a tiny deterministic generator for reproducible tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A position-dependent pattern: the byte at absolute offset `p` depends
/// only on `seed` and `p`, so any range can be regenerated and misplaced
/// data is caught. No byte is zero, so a write of it always allocates and
/// "reads as zeros" is never mistaken for it (`offset` 0 for a plain
/// buffer).
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut p = offset;
    let end = offset + len as u64;
    while p < end {
        let word = mix64(seed.wrapping_mul(0x1000_0000_01B3) ^ (p >> 3)).to_le_bytes();
        let i = (p & 7) as usize;
        let take = (8 - i).min((end - p) as usize);
        v.extend(
            word[i..i + take]
                .iter()
                .map(|&b| if b == 0 { 0x5a } else { b }),
        );
        p += take as u64;
    }
    v
}

/// Prints what the test was doing when a panic unwinds through it.
pub struct Ctx(pub String);

impl Drop for Ctx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- context of the failure: {}", self.0);
        }
    }
}

/// Describe where two byte strings first differ (for failure messages).
pub fn first_diff(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("lengths differ: {} vs {}", a.len(), b.len());
    }
    match a.iter().zip(b).position(|(x, y)| x != y) {
        None => "identical".into(),
        Some(i) => {
            let n = a.iter().zip(b).filter(|(x, y)| x != y).count();
            let end = (i + 16).min(a.len());
            format!(
                "{n} bytes differ, first at {i:#x}: {:02x?} vs {:02x?}",
                &a[i..end],
                &b[i..end]
            )
        }
    }
}

/// Read the whole virtual disk.
pub fn read_all(disk: &Disk) -> Vec<u8> {
    let size = disk.virtual_size();
    let mut buf = vec![0u8; size as usize];
    let mut off = 0usize;
    while off < buf.len() {
        let n = (buf.len() - off).min(4 << 20);
        disk.read_at(&mut buf[off..off + n], off as u64)
            .unwrap_or_else(|e| panic!("read of {n} bytes at {off:#x} failed: {e}"));
        off += n;
    }
    buf
}

/// Open `path` in a helper thread and wait at most `secs` seconds: a hang
/// or a panic inside the engine fails the test with a clear message.
pub fn open_with_timeout(path: &Path, mode: OpenMode, secs: u64) -> ckpt::Result<Disk> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name(format!("open {mode:?}"))
        .spawn(move || {
            let _ = tx.send(Disk::open(&p, mode));
        })
        .expect("spawn opener thread");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "Disk::open({}, {mode:?}) hangs (> {secs} s)",
                path.display()
            )
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!("Disk::open({}, {mode:?}) panicked", path.display())
        }
    }
}

/// A storage wrapper that counts every mutating call (write, resize,
/// discard, allocate, sync), to prove that an open did not write.
#[derive(Debug)]
pub struct Counting<S> {
    /// The wrapped storage.
    pub inner: S,
    /// What `is_writable` answers.
    pub writable: bool,
    mutations: AtomicU64,
}

impl<S: Storage> Counting<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, writable: bool) -> Arc<Counting<S>> {
        Arc::new(Counting {
            inner,
            writable,
            mutations: AtomicU64::new(0),
        })
    }
    /// Mutating calls so far.
    pub fn mutations(&self) -> u64 {
        self.mutations.load(Ordering::SeqCst)
    }
    fn note(&self) -> io::Result<()> {
        self.mutations.fetch_add(1, Ordering::SeqCst);
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "test storage is read-only",
            ))
        }
    }
}

impl<S: Storage> Storage for Counting<S> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.note()?;
        self.inner.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.note()?;
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        if !self.writable {
            // A sync on a read-only storage is harmless; count nothing.
            return Ok(());
        }
        self.note()?;
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.note()?;
        self.inner.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.note()?;
        self.inner.allocate(offset, len)
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
}

/// One mutating call seen by a [`Recorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `write_at(len bytes, offset)`.
    Write { offset: u64, len: u64 },
    /// `set_len`.
    SetLen(u64),
    /// `sync`.
    Sync,
    /// `discard(offset, len)`.
    Discard { offset: u64, len: u64 },
    /// `allocate(offset, len)`.
    Allocate { offset: u64, len: u64 },
}

/// A storage wrapper that records every mutating call, numbered the way
/// `FaultStorage` numbers its events.
#[derive(Debug)]
pub struct Recorder<S> {
    inner: S,
    events: std::sync::Mutex<Vec<Event>>,
}

impl<S: Storage> Recorder<S> {
    /// Wrap `inner`.
    pub fn new(inner: S) -> Arc<Recorder<S>> {
        Arc::new(Recorder {
            inner,
            events: std::sync::Mutex::new(Vec::new()),
        })
    }
    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn push(&self, e: Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }
}

impl<S: Storage> Storage for Recorder<S> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.push(Event::Write {
            offset,
            len: buf.len() as u64,
        });
        self.inner.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.push(Event::SetLen(len));
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.push(Event::Sync);
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.push(Event::Discard { offset, len });
        self.inner.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.push(Event::Allocate { offset, len });
        self.inner.allocate(offset, len)
    }
}

/// A temporary folder on a memory file system (`/dev/shm`) when there is
/// one, else in the default place: for tests that sync a lot and judge the
/// bytes, not the durability of the host's disk.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().expect("tempdir")
}
