//! [`FileStorage`]: an image file on the host, locked while open. Every
//! mutating call counts as one event of [`super::faults`] (compiled out
//! without the `fault-injection` feature); system calls go through
//! [`super::platform`]. A read-only open reads through a guarded mapping
//! (`mapped.rs`); a bulk stream can switch on write-behind (`behind.rs`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::behind::WriteBehind;
use super::mapped::Mapping;
use super::platform::{self, Seek};
#[allow(unused_imports)] // named in the docs
use super::LockConflict;
use super::{faults, lock_file, read_only_error, write_zeros, Cut, FileLock, LockKind, Storage};

/// A file on the host file system (positional I/O, safe to share between threads).
#[derive(Debug)]
pub struct FileStorage {
    /// Reads of a read-only open go through this mapping of the file as it
    /// was at open (see `mapped.rs`); `None`: all through `pread`. Unmapped
    /// before the file is closed and its lock released.
    map: Option<Mapping>,
    file: File,
    writable: bool,
    /// Write-behind ([`Storage::set_write_behind`]): on, its state, and
    /// whether a write-back it waited for failed (then every later sync
    /// fails: the kernel reported that error here, not to the sync).
    behind_on: AtomicBool,
    behind: Mutex<WriteBehind>,
    behind_failed: AtomicBool,
    /// Dropped after `file` (whose closing releases the lock). `None` only
    /// for [`FileStorage::peek`] and [`FileStorage::open_beside`].
    _lock: Option<FileLock>,
}

impl FileStorage {
    fn new(file: File, writable: bool, lock: Option<FileLock>) -> FileStorage {
        FileStorage {
            file,
            writable,
            behind_on: AtomicBool::new(false),
            behind: Mutex::new(WriteBehind::default()),
            behind_failed: AtomicBool::new(false),
            map: None,
            _lock: lock,
        }
    }

    /// The write-behind's part of a write of `[offset, offset+len)`.
    fn behind(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.behind_on.load(Ordering::Relaxed) {
            return Ok(());
        }
        use std::os::unix::io::AsRawFd;
        let mut wb = self.behind.lock().unwrap_or_else(|e| e.into_inner());
        wb.wrote(self.file.as_raw_fd(), offset, len)
            .inspect_err(|_| self.behind_failed.store(true, Ordering::SeqCst))
    }

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
        let mut s = FileStorage::new(file, writable, Some(lock));
        if !writable {
            use std::os::unix::io::AsRawFd;
            let len = s.file.metadata()?.len();
            s.map = Mapping::new(s.file.as_raw_fd(), len);
        }
        Ok(s)
    }

    /// Open an existing file read-only **without** locking it, to look at a
    /// file another process holds (e.g. which parent a held differencing
    /// disk names). What it reads may be mid-update: callers use it only
    /// for facts that do not change while a file is written (the parent
    /// locator), and treat a failure as "cannot tell".
    pub(crate) fn peek(path: &Path) -> io::Result<FileStorage> {
        let file = OpenOptions::new().read(true).open(path)?;
        Ok(FileStorage::new(file, false, None))
    }

    /// Open `path` for writing without a lock of its own, beside the open
    /// description `held` of the same file, on which the caller holds the
    /// exclusive lock (taken with `exclusive_lock`) for as long as this
    /// storage lives. The one way through the locks for a live merge, which
    /// must change files its own live chain keeps open read-only; the file
    /// behind `path` must be the one `held` has open, else nothing is opened.
    pub(crate) fn open_beside(
        path: &Path,
        held: std::os::unix::io::RawFd,
    ) -> io::Result<FileStorage> {
        use std::os::unix::fs::MetadataExt;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let meta = file.metadata()?;
        if platform::fd_identity(held)? != (meta.dev(), meta.ino()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is no longer the file the live chain has open",
                    path.display()
                ),
            ));
        }
        Ok(FileStorage::new(file, true, None))
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
        Ok(FileStorage::new(file, true, Some(lock)))
    }
}

impl Storage for FileStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(m) = &self.map {
            if m.read(buf, offset) {
                return Ok(());
            }
        }
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
        self.file.write_all_at(buf, offset)?;
        self.behind(offset, buf.len() as u64)
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
        if self.behind_failed.load(Ordering::SeqCst) {
            return Err(io::Error::other(
                "an earlier write-back of this file failed: what was written since the last sync may be lost",
            ));
        }
        self.file.sync_data()
    }

    fn set_write_behind(&self, on: bool) {
        if self.writable {
            self.behind_on.store(on, Ordering::Relaxed);
        }
    }

    fn wrote_directly(&self, offset: u64, len: u64) -> io::Result<()> {
        self.behind(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only_error());
        }
        if faults::event()?.is_some() {
            return Err(faults::crash());
        }
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        if platform::punch_hole(&self.file, off, l).is_ok() {
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
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        if platform::reserve(&self.file, off, l).is_ok() {
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
        let len = self.len()?;
        let Ok(off) = i64::try_from(offset) else {
            return Ok(None);
        };
        if offset >= len {
            return Ok(None);
        }
        let start = match platform::seek(&self.file, off, Seek::Data) {
            Ok(Some(start)) => start,
            Ok(None) => return Ok(None),
            // No SEEK_DATA on this file system: all of it may be data.
            Err(_) => return Ok(Some((offset, len))),
        };
        let end = match platform::seek(&self.file, start as i64, Seek::Hole) {
            Ok(Some(end)) => end,
            _ => len,
        };
        Ok(Some((start, end.max(start))))
    }
}
