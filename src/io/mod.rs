//! Storage: the only way the engine touches bytes.
//!
//! Every read, write, resize and sync of an image goes through [`Storage`],
//! so that tests can run the engine on memory ([`MemStorage`]) and, with the
//! `fault-injection` feature, cut the write stream at any point
//! (`FaultStorage`) to prove crash safety.
//!
//! Files: `file.rs` (host files), `mem.rs` (memory), `fault.rs` and
//! `faults.rs` (fault injection), `lock.rs` (who holds a file),
//! `behind.rs` (write-behind of bulk streams), `platform.rs` (every system
//! call) and `mapped.rs` (guarded reads through a memory mapping): the only
//! two files with `unsafe` here. Depends on
//! nothing else in the crate.

use std::io;
use std::path::Path;

mod behind;
mod fault;
pub mod faults;
mod file;
mod lock;
mod mapped;
mod mem;
mod platform;

#[cfg(feature = "fault-injection")]
pub use behind::set_write_behind_sizes;
pub use fault::Cut;
#[cfg(feature = "fault-injection")]
pub use fault::{FaultStorage, Transient};
pub use file::FileStorage;
pub(crate) use lock::held_exclusive_here;
pub(crate) use lock::{exclusive_lock, share_lock};
pub use lock::{
    held_exclusive, lock_conflict, lock_file, FileLock, Holder, LockConflict, LockKind,
};
pub use mem::MemStorage;

/// The user id of the peer of a connected Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(fd: std::os::unix::io::RawFd) -> io::Result<u32> {
    platform::peer_uid(fd)
}

/// Wake a thread blocked in `accept` on the listening socket `fd`.
pub(crate) fn shutdown_listener(fd: std::os::unix::io::RawFd) -> io::Result<()> {
    platform::shutdown_listener(fd)
}

/// This process's effective user id.
pub(crate) fn effective_uid() -> u32 {
    platform::effective_uid()
}

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
    /// Bulk streams (convert, merge) switch this on for the file they fill:
    /// what they write is sent to the disk while they go on, and leaves the
    /// page cache once it is there (see `behind.rs`). Durability is
    /// unchanged: only [`Storage::sync`] makes writes durable. The default
    /// does nothing.
    fn set_write_behind(&self, _on: bool) {}
    /// `[offset, offset+len)` was written other than by [`Storage::write_at`]
    /// (inside the kernel, by [`copy_range`]): for the write-behind. An
    /// error is a failed write.
    fn wrote_directly(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
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
                match platform::copy_file_range(sfd, &mut so, dfd, &mut doff, want) {
                    Ok(0) => kernel = false, // past the source's end: zeros below
                    Ok(n) => {
                        dst.wrote_directly(dst_offset + done, n as u64)?;
                        done += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Not supported between these files: copy by hand.
                    Err(_) => kernel = false,
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

pub(crate) fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "storage is read-only")
}

/// Free bytes available to this process on the file system holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    platform::free_space(path)
}

/// Remove a file (counted as one event by [`faults`] with the
/// `fault-injection` feature).
pub fn remove_file(path: &Path) -> io::Result<()> {
    if faults::event()?.is_some() {
        return Err(faults::crash());
    }
    std::fs::remove_file(path)
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

    #[cfg(feature = "fault-injection")]
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
        assert_eq!(e.raw_os_error(), Some(platform::EIO));
        assert_eq!(faults::event().unwrap(), None);
        assert_eq!(faults::disarm(), 2);
    }
}
