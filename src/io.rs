//! Storage: the only way the engine touches bytes.
//!
//! Every read, write, resize and sync of an image goes through [`Storage`],
//! so that tests can run the engine on memory ([`MemStorage`]) and cut the
//! write stream at any point ([`FaultStorage`]) to prove crash safety.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

mod lock;
pub use lock::{lock_conflict, lock_file, FileLock, Holder, LockConflict, LockKind};

/// Random-access storage under a virtual disk file.
///
/// Implementations must be safe to call from many threads at once.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the storage holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fill `buf` from `offset`. Bytes past the end read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`, extending the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncate or extend (with zeros) to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// Give back the space of a range; afterwards it reads as zeros.
    /// The default writes zeros.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zeros(self, offset, len)
    }
    /// Reserve space for `[offset, offset+len)` (grows the storage if
    /// needed); the range reads as zeros if it was past the end.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?;
        if end > self.len()? {
            self.set_len(end)?;
        }
        Ok(())
    }
    /// Whether this storage can be written.
    fn is_writable(&self) -> bool {
        true
    }
    /// The host file descriptor, for storages that are plain files
    /// (lets [`copy_range`] copy inside the kernel).
    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }
    /// Whether a `sync` that failed may simply be retried: true only for a
    /// storage that keeps every write it accepted until a sync succeeds
    /// (memory; a network client that keeps its buffers). The default is
    /// false, as for files: after a failed `fsync` the kernel may have
    /// dropped the unwritten pages, so what was written since the last
    /// successful sync is unknown, and a disk on such a storage refuses
    /// every later write and flush until it is reopened.
    fn sync_retry_is_safe(&self) -> bool {
        false
    }
    /// The next range `(start, end)` at or after `offset` that may hold
    /// data, or `None` when only holes (or the end) follow: lets a scan skip
    /// the holes of a sparse file. The default says every byte up to the
    /// end may hold data.
    fn data_after(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        let len = self.len()?;
        Ok((offset < len).then_some((offset, len)))
    }
}

/// Copy `len` bytes from `src` at `src_offset` to `dst` at `dst_offset`:
/// inside the kernel (`copy_file_range`) when both are files, else through
/// a bounded buffer.
pub fn copy_range<S: Storage + ?Sized, D: Storage + ?Sized>(
    src: &S,
    src_offset: u64,
    dst: &D,
    dst_offset: u64,
    len: u64,
) -> io::Result<()> {
    let (mut done, mut kernel) = (0u64, true);
    if let (Some(sfd), Some(dfd)) = (src.raw_fd(), dst.raw_fd()) {
        if dst.is_writable() {
            if faults::event()?.is_some() {
                return Err(faults::crash());
            }
            while done < len && kernel {
                let (Ok(mut so), Ok(mut doff)) = (
                    i64::try_from(src_offset + done),
                    i64::try_from(dst_offset + done),
                ) else {
                    break;
                };
                let want = (len - done).min(1 << 30) as usize;
                // SAFETY: both descriptors are open files we own for the
                // duration of the call; the offsets are plain integers the
                // kernel reads and updates.
                let n = unsafe { libc::copy_file_range(sfd, &mut so, dfd, &mut doff, want, 0) };
                match n {
                    n if n > 0 => done += n as u64,
                    0 => kernel = false, // past the source's end: zeros below
                    _ => {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        // Not supported between these files: copy by hand.
                        kernel = false;
                    }
                }
            }
        }
    }
    let mut buf = vec![0u8; (len - done).min(1 << 20) as usize];
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_at(&mut buf[..n], src_offset + done)?;
        dst.write_at(&buf[..n], dst_offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Write `len` zero bytes at `offset` in bounded chunks.
pub fn write_zeros<S: Storage + ?Sized>(s: &S, mut offset: u64, mut len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    while len > 0 {
        let n = (len as usize).min(CHUNK);
        s.write_at(&zeros[..n], offset)?;
        offset += n as u64;
        len -= n as u64;
    }
    Ok(())
}

fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "storage is read-only")
}

/// Crash simulation for code that works on files by path (merges, the
/// checkpoint tree): while armed on a thread, every mutating operation that
/// thread makes through [`FileStorage`] (and [`remove_file`]) counts as an
/// event, and the event numbered `crash_at` and all after it fail, as if
/// the machine had stopped there ([`arm`]); or only that one event fails,
/// with a transient error, and everything after it works again
/// ([`arm_transient`]). Disarmed, it costs one thread-local read per
/// operation.
pub mod faults {
    use std::cell::Cell;
    use std::io;

    use super::{Cut, Transient};

    #[derive(Clone, Copy)]
    enum Plan {
        Crash(u64, Cut),
        Once(u64, Transient),
    }

    thread_local! {
        static PLAN: Cell<Option<Plan>> = const { Cell::new(None) };
        static EVENTS: Cell<u64> = const { Cell::new(0) };
    }

    /// Start counting on this thread; crash at event `crash_at` (`u64::MAX`: only count).
    pub fn arm(crash_at: u64, cut: Cut) {
        PLAN.with(|p| p.set(Some(Plan::Crash(crash_at, cut))));
        EVENTS.with(|e| e.set(0));
    }

    /// Start counting on this thread; event `fail_at` (0-based) fails once
    /// with the error of `kind` and has no effect; every other event works.
    pub fn arm_transient(fail_at: u64, kind: Transient) {
        PLAN.with(|p| p.set(Some(Plan::Once(fail_at, kind))));
        EVENTS.with(|e| e.set(0));
    }

    /// Events seen so far on this thread since the last [`arm`] or
    /// [`arm_transient`] (still armed).
    pub fn events() -> u64 {
        EVENTS.with(|e| e.get())
    }

    /// Stop; returns the number of events seen.
    pub fn disarm() -> u64 {
        PLAN.with(|p| p.set(None));
        EVENTS.with(|e| e.get())
    }

    /// Count one event. `Ok(None)`: go ahead; `Ok(Some(cut))`: this is the
    /// crash point (a write may land torn); `Err`: already crashed.
    pub(crate) fn event() -> io::Result<Option<Cut>> {
        let Some(plan) = PLAN.with(|p| p.get()) else {
            return Ok(None);
        };
        let n = EVENTS.with(|e| {
            let n = e.get();
            e.set(n + 1);
            n
        });
        let (crash_at, cut) = match plan {
            Plan::Crash(at, cut) => (at, cut),
            Plan::Once(at, kind) if n == at => return Err(kind.error()),
            Plan::Once(..) => return Ok(None),
        };
        if n > crash_at {
            return Err(io::Error::other("simulated crash: storage is gone"));
        }
        Ok((n == crash_at).then_some(cut))
    }

    /// The error of the operation at the crash point.
    pub(crate) fn crash() -> io::Error {
        io::Error::other("simulated crash")
    }
}

/// Remove a file (counted as one event by [`faults`]).
pub fn remove_file(path: &Path) -> io::Result<()> {
    if faults::event()?.is_some() {
        return Err(faults::crash());
    }
    std::fs::remove_file(path)
}

/// A file on the host file system (positional I/O, safe to share between threads).
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    writable: bool,
    /// Dropped after `file` (whose closing releases the lock).
    _lock: FileLock,
}

impl FileStorage {
    /// Open an existing file and lock it (`flock`, see [`lock_file`]): a
    /// writable open takes an exclusive lock, a read-only open a shared
    /// one, so that nobody writes a file another handle or process reads or
    /// writes. A refused lock is an error of kind `WouldBlock` that
    /// carries a [`LockConflict`] (who holds the file).
    pub fn open(path: &Path, writable: bool) -> io::Result<FileStorage> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let kind = if writable {
            LockKind::Exclusive
        } else {
            LockKind::Shared
        };
        let lock = lock_file(&file, kind)?;
        Ok(FileStorage {
            file,
            writable,
            _lock: lock,
        })
    }

    /// Create a new file (locked exclusively); fails if it already exists.
    pub fn create(path: &Path) -> io::Result<FileStorage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let lock = match lock_file(&file, LockKind::Exclusive) {
            Ok(l) => l,
            Err(e) => {
                // Someone opened the new, empty file already: it is ours to remove.
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(FileStorage {
            file,
            writable: true,
            _lock: lock,
        })
    }
}

impl Storage for FileStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        if let Some(cut) = faults::event()? {
            if cut == Cut::Torn && !buf.is_empty() {
                let last = if buf.len() > 512 { buf.len() - 512 } else { 0 };
                let keep = last + (buf.len() - last) / 2;
                self.file.write_all_at(&buf[..keep], offset)?;
            }
            return Err(faults::crash());
        }
        self.file.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        if faults::event()?.is_some() {
            return Err(faults::crash());
        }
        self.file.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        if faults::event()?.is_some() {
            return Err(faults::crash());
        }
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        if faults::event()?.is_some() {
            return Err(faults::crash());
        }
        use std::os::unix::io::AsRawFd;
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        // SAFETY: fallocate on a descriptor we own; no memory is involved.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // File systems without hole punching: write zeros instead.
        write_zeros(self, offset, len)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        if faults::event()?.is_some() {
            return Err(faults::crash());
        }
        use std::os::unix::io::AsRawFd;
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        // SAFETY: posix_fallocate on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), off, l) };
        if rc == 0 {
            return Ok(());
        }
        let end = offset + len;
        if end > self.len()? {
            self.file.set_len(end)?;
        }
        Ok(())
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        use std::os::unix::io::AsRawFd;
        Some(self.file.as_raw_fd())
    }

    fn data_after(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        use std::os::unix::io::AsRawFd;
        let len = self.len()?;
        let Ok(off) = i64::try_from(offset) else {
            return Ok(None);
        };
        if offset >= len {
            return Ok(None);
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on a descriptor we own; no memory is involved. All
        // I/O here is positional, so moving the file offset is harmless.
        let start = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if start < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                // No SEEK_DATA on this file system: all of it may be data.
                _ => Ok(Some((offset, len))),
            };
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 { len } else { end as u64 };
        Ok(Some((start as u64, end.max(start as u64))))
    }
}

/// Storage in memory. Clones share the same bytes.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    data: Arc<RwLock<Vec<u8>>>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }
    /// Storage holding `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> MemStorage {
        MemStorage {
            data: Arc::new(RwLock::new(bytes)),
        }
    }
    /// A copy of the current bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

const MAX_MEM: u64 = 1 << 40;

impl Storage for MemStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let len = d.len() as u64;
        if offset >= len {
            buf.fill(0);
            return Ok(());
        }
        let start = offset as usize;
        let n = ((len - offset) as usize).min(buf.len());
        buf[..n].copy_from_slice(&d[start..start + n]);
        buf[n..].fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= MAX_MEM)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write too large"))?;
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        if (d.len() as u64) < end {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > MAX_MEM {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too large"));
        }
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_retry_is_safe(&self) -> bool {
        // Memory never loses a write it accepted.
        true
    }
}

/// What a [`FaultStorage`] does at its cut point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The operation at the cut point does not happen at all.
    Clean,
    /// A write at the cut point lands only partly: its last 512-byte sector
    /// is half old, half new (or, for a one-sector write, only its first half lands).
    Torn,
}

/// The error of a transient fault ([`FaultStorage::transient`],
/// [`faults::arm_transient`]): the failing operation has no effect, and the
/// storage works again afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// An I/O error (`EIO`).
    Eio,
    /// No space left on the device (`ENOSPC`, [`io::ErrorKind::StorageFull`]).
    NoSpace,
}

impl Transient {
    /// The error the failing operation returns.
    pub fn error(self) -> io::Error {
        let code = match self {
            Transient::Eio => libc::EIO,
            Transient::NoSpace => libc::ENOSPC,
        };
        io::Error::from_raw_os_error(code)
    }
}

/// A storage that "crashes" after a number of mutating operations, or
/// fails one of them once.
///
/// Every `write_at`, `set_len`, `discard`, `allocate` and `sync` counts as
/// one event. Made with [`FaultStorage::new`], the event numbered
/// `crash_at` (0-based) and everything after it fails with an error, as if
/// the machine had lost power; what had happened before it stays in the
/// inner [`MemStorage`], which the test then reopens. Made with
/// [`FaultStorage::transient`], only the event numbered `fail_at` fails
/// (without effect) and the storage goes on working. Reads keep working.
#[derive(Debug)]
pub struct FaultStorage {
    inner: MemStorage,
    crash_at: u64,
    cut: Cut,
    /// Fail only event `crash_at`, with this error.
    once: Option<Transient>,
    events: AtomicU64,
    /// Whether the failing event was a `discard`.
    discard_failed: std::sync::atomic::AtomicBool,
}

impl FaultStorage {
    /// Wrap `inner`; crash at event `crash_at` (use `u64::MAX` to only count).
    pub fn new(inner: MemStorage, crash_at: u64, cut: Cut) -> FaultStorage {
        FaultStorage {
            inner,
            crash_at,
            cut,
            once: None,
            events: AtomicU64::new(0),
            discard_failed: Default::default(),
        }
    }
    /// Wrap `inner`; event `fail_at` fails once with the error of `kind`
    /// and has no effect; all other events (before and after) work.
    pub fn transient(inner: MemStorage, fail_at: u64, kind: Transient) -> FaultStorage {
        FaultStorage {
            inner,
            crash_at: fail_at,
            cut: Cut::Clean,
            once: Some(kind),
            events: AtomicU64::new(0),
            discard_failed: Default::default(),
        }
    }
    /// Events seen so far (including refused ones).
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }
    /// Whether the crash point (or, for a transient fault, the failing
    /// event) has been reached.
    pub fn crashed(&self) -> bool {
        self.events() > self.crash_at
    }
    /// Whether the injected transient fault has happened (always false for
    /// a crashing storage).
    pub fn fault_injected(&self) -> bool {
        self.once.is_some() && self.crashed()
    }
    /// Whether the event that failed was a `discard` (giving space back:
    /// a disk may go on without it, so no operation need report it).
    pub fn failed_a_discard(&self) -> bool {
        self.discard_failed.load(Ordering::SeqCst)
    }
    /// The underlying memory (what survived the crash).
    pub fn inner(&self) -> &MemStorage {
        &self.inner
    }
    fn event(&self) -> io::Result<u64> {
        let n = self.events.fetch_add(1, Ordering::SeqCst);
        if let Some(kind) = self.once {
            if n == self.crash_at {
                return Err(kind.error());
            }
            // `n` differs from the failing event: the operation goes ahead.
            return Ok(n);
        }
        if n > self.crash_at {
            return Err(io::Error::other("simulated crash: storage is gone"));
        }
        Ok(n)
    }
    fn crash_error() -> io::Error {
        io::Error::other("simulated crash")
    }
}

impl Storage for FaultStorage {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let n = self.event()?;
        if n == self.crash_at {
            if self.cut == Cut::Torn && !buf.is_empty() {
                // Everything but the last sector lands; the last sector
                // lands half.
                let last = if buf.len() > 512 { buf.len() - 512 } else { 0 };
                let keep = last + (buf.len() - last) / 2;
                self.inner.write_at(&buf[..keep], offset)?;
            }
            return Err(Self::crash_error());
        }
        self.inner.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.event()? == self.crash_at {
            return Err(Self::crash_error());
        }
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        if self.event()? == self.crash_at {
            return Err(Self::crash_error());
        }
        Ok(())
    }
    fn sync_retry_is_safe(&self) -> bool {
        // Memory never loses a write it accepted.
        true
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        // A transient fault is the only error `event` gives before a crash.
        let n = self.event().inspect_err(|_| {
            if self.once.is_some() {
                self.discard_failed.store(true, Ordering::SeqCst);
            }
        })?;
        if n == self.crash_at {
            self.discard_failed.store(true, Ordering::SeqCst);
            return Err(Self::crash_error());
        }
        write_zeros(&self.inner, offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.event()? == self.crash_at {
            return Err(Self::crash_error());
        }
        self.inner.allocate(offset, len)
    }
}

/// Free bytes available to this process on the file system holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to
    // writable memory of the right size; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_range_between_memory_and_files_reads_zeros_past_the_end() {
        let src = MemStorage::from_vec((0..5000u32).map(|i| i as u8).collect());
        let dst = MemStorage::new();
        copy_range(&src, 100, &dst, 7, 6000).unwrap();
        let got = dst.snapshot();
        assert_eq!(got.len(), 6007);
        assert_eq!(&got[7..7 + 4900], &src.snapshot()[100..5000]);
        assert!(got[7 + 4900..].iter().all(|&b| b == 0));

        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, src.snapshot()).unwrap();
        std::fs::write(&b, b"").unwrap();
        let (fa, fb) = (
            FileStorage::open(&a, false).unwrap(),
            FileStorage::open(&b, true).unwrap(),
        );
        copy_range(&fa, 100, &fb, 7, 6000).unwrap();
        let mut back = vec![0u8; 6007];
        fb.read_at(&mut back, 0).unwrap();
        assert_eq!(back, got);
    }

    #[test]
    fn a_transient_fault_fails_one_event_and_nothing_after_it() {
        let f = FaultStorage::transient(MemStorage::new(), 1, Transient::NoSpace);
        f.write_at(b"a", 0).unwrap();
        assert!(!f.fault_injected());
        let e = f.write_at(b"b", 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(f.fault_injected());
        f.write_at(b"c", 2).unwrap();
        f.sync().unwrap();
        assert_eq!(f.inner().snapshot(), b"a\0c");

        faults::arm_transient(0, Transient::Eio);
        let e = faults::event().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(faults::event().unwrap(), None);
        assert_eq!(faults::disarm(), 2);
    }
}
