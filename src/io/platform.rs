//! Every system call the storage layer makes beyond `std`, behind safe
//! functions: the only file under `io/` allowed `unsafe` (each block with
//! its reason). Linux / Unix only.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Which `flock` lock to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlockOp {
    Shared,
    Exclusive,
    Unlock,
}

/// `flock(fd, op | LOCK_NB)`: never blocks.
pub(crate) fn flock(file: &File, op: FlockOp) -> io::Result<()> {
    let op = match op {
        FlockOp::Shared => libc::LOCK_SH,
        FlockOp::Exclusive => libc::LOCK_EX,
        FlockOp::Unlock => libc::LOCK_UN,
    };
    // SAFETY: flock on a descriptor `file` owns for the duration of the
    // call; no memory is involved.
    check(unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) })
}

/// Whether `e` says a non-blocking lock is held by someone else.
pub(crate) fn would_block(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// One `copy_file_range` call: bytes copied (0 at the source's end).
pub(crate) fn copy_file_range(
    src: RawFd,
    src_offset: &mut i64,
    dst: RawFd,
    dst_offset: &mut i64,
    len: usize,
) -> io::Result<usize> {
    // SAFETY: the caller's descriptors are open files it owns for the
    // duration of the call; the offsets are plain integers the kernel
    // reads and updates through valid references.
    let n = unsafe { libc::copy_file_range(src, src_offset, dst, dst_offset, len, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: give back the space of a range.
pub(crate) fn punch_hole(file: &File, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory is involved.
    check(unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    })
}

/// `posix_fallocate`: reserve space for a range (growing the file).
pub(crate) fn reserve(file: &File, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: posix_fallocate on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Where `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)` lands.
pub(crate) enum Seek {
    Data,
    Hole,
}

/// `lseek(fd, offset, SEEK_DATA | SEEK_HOLE)`. `Ok(None)`: no data after
/// `offset` (`ENXIO`). All I/O here is positional, so moving the file
/// offset is harmless.
pub(crate) fn seek(file: &File, offset: i64, whence: Seek) -> io::Result<Option<u64>> {
    let whence = match whence {
        Seek::Data => libc::SEEK_DATA,
        Seek::Hole => libc::SEEK_HOLE,
    };
    // SAFETY: lseek on a descriptor we own; no memory is involved.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

/// Free bytes available to this process on the file system holding `path`.
pub(crate) fn free_space(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to
    // writable memory of the right size; statvfs fills it on success.
    check(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The error numbers the fault injection hands out.
#[cfg(feature = "fault-injection")]
pub(crate) const EIO: i32 = libc::EIO;
#[cfg(feature = "fault-injection")]
pub(crate) const ENOSPC: i32 = libc::ENOSPC;

/// [`flock`] on a raw descriptor the caller keeps open for the call.
pub(crate) fn flock_fd(fd: std::os::unix::io::RawFd, op: FlockOp) -> io::Result<()> {
    let op = match op {
        FlockOp::Shared => libc::LOCK_SH,
        FlockOp::Exclusive => libc::LOCK_EX,
        FlockOp::Unlock => libc::LOCK_UN,
    };
    // SAFETY: flock on a descriptor the caller owns for the duration of the
    // call (an invalid one is EBADF, not undefined behaviour); no memory is
    // involved.
    check(unsafe { libc::flock(fd, op | libc::LOCK_NB) })
}

/// The (device, inode) of the open descriptor `fd`.
pub(crate) fn fd_identity(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on a descriptor the caller keeps open for the call (an
    // invalid one is EBADF); `st` points to writable memory of the right
    // size, filled on success.
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // dev_t and ino_t are not u64 on every Unix.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// The user id of the process at the other end of a connected Unix socket
/// (`getsockopt(SO_PEERCRED)`), as the kernel recorded it at `connect`.
pub(crate) fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt on a descriptor the caller keeps open for the
    // call; `cred` and `len` are valid writable memory of the sizes given,
    // and the kernel writes at most `len` bytes into `cred`.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short credential",
        ));
    }
    Ok(cred.uid)
}

/// The effective user id of this process (`geteuid`).
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// `shutdown(fd, SHUT_RDWR)` on a listening socket: on Linux a thread
/// blocked in `accept` on it returns (with `EINVAL`).
pub(crate) fn shutdown_listener(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor the caller keeps open for the call;
    // no memory is involved.
    check(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) })
}

/// `sync_file_range(WRITE)`: start writing back the dirty pages of a range
/// (a hint: nothing becomes durable, metadata is not written).
pub(crate) fn start_writeback(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: sync_file_range on a descriptor the caller keeps open for the
    // call; no memory is involved.
    check(unsafe { libc::sync_file_range(fd, off, n, libc::SYNC_FILE_RANGE_WRITE) })
}

/// Wait until the pages of a range are written back (reporting a write-back
/// error), then drop them from the page cache (`POSIX_FADV_DONTNEED`; a
/// hint: pages dirtied again meanwhile stay).
pub(crate) fn settle_writeback(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a descriptor the caller keeps open for the
    // call; no memory is involved.
    check(unsafe { libc::sync_file_range(fd, off, n, all) })?;
    // SAFETY: posix_fadvise on the same descriptor; no memory is involved.
    // Its result is only advice taken or not: ignored.
    let _ = unsafe { libc::posix_fadvise(fd, off, n, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}
