//! Helpers for the crash, corruption and model tests (tests/crash.rs,
//! tests/corrupt.rs, tests/model.rs): a deterministic random generator,
//! panic context, the QEMU oracle, opens under a timeout, a storage that
//! counts writes, and (in [`raw`]) an independent raw VHDX parser used to
//! damage images one field at a time. For the fault suites of issue 8
//! (tests/transient.rs, tests/crash_big.rs, tests/disk_full.rs,
//! tests/stress.rs): a byte model of operations with the old-or-new
//! judgement ([`ops`]), a storage that loses any subset of unsynced writes
//! ([`lossy`]), a sparse crashing storage for huge mostly-empty images
//! ([`sparse`]), and temporary folders on tmpfs ([`fast_tempdir`]).
//!
//! Not every test file uses every helper, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod lossy;
pub mod ops;
pub mod raw;
pub mod sparse;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use ckpt::io::Storage;
use ckpt::{Disk, OpenMode};

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;

/// Whether the suite runs under CI (`CI=true`/`1`/`yes`): a missing oracle
/// is then a failure instead of a notice.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .ok()
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("true") | Some("1") | Some("yes")
    )
}

/// Path of `qemu-img` when it runs. Without it: `None` with a notice, or a
/// panic under CI.
pub fn qemu_img() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let ok = Command::new("qemu-img")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then(|| PathBuf::from("qemu-img"))
    });
    match found {
        Some(p) => Some(p.as_path()),
        None => {
            assert!(
                !in_ci(),
                "CI=true but qemu-img is missing: the QEMU cross-checks cannot run"
            );
            eprintln!("NOTICE: qemu-img is missing; skipping the QEMU cross-check (required under CI=true)");
            None
        }
    }
}

/// `qemu-io` next to `qemu-img` (same rules as [`qemu_img`]).
pub fn qemu_io() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let ok = Command::new("qemu-io")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then(|| PathBuf::from("qemu-io"))
    });
    match found {
        Some(p) => Some(p.as_path()),
        None => {
            assert!(!in_ci(), "CI=true but qemu-io is missing");
            eprintln!("NOTICE: qemu-io is missing; skipping the QEMU cross-check (required under CI=true)");
            None
        }
    }
}

/// Run a command; panic with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A small deterministic generator (xorshift64*), so that every run of a
/// test does the same thing.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// `len` deterministic bytes for `seed` (different seeds give different
/// bytes; zero bytes are rare so that "reads as zeros" is visible).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed.wrapping_add(0x5151)).fill(&mut v);
    for b in v.iter_mut() {
        if *b == 0 {
            *b = 0x5a;
        }
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
