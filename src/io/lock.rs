//! Advisory file locks (`flock`) on images and VM folders, and the registry
//! of the locks this process holds.
//!
//! A writable open takes an exclusive lock, a read-only open a shared one,
//! both non-blocking: readers coexist, a writer excludes everyone. `flock`
//! locks belong to the open file description, so two opens of one file in
//! one process conflict exactly as two processes would; the registry (files
//! by device and inode, with how many shared and exclusive locks this
//! process holds on each) only serves to say who holds a file when a lock
//! is refused.
//!
//! Depends on nothing but `libc` and `std`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::Duration;

/// The kind of an advisory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders at once, no exclusive one (read-only opens).
    Shared,
    /// One holder, nobody else (writable opens, VM folders).
    Exclusive,
}

/// Who holds a file whose lock was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Another open handle of this process.
    ThisProcess,
    /// Some other process.
    OtherProcess,
}

/// A lock that could not be taken: carried inside the [`io::Error`]
/// (of kind [`io::ErrorKind::WouldBlock`]) that [`lock_file`] returns; find
/// it with [`lock_conflict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConflict {
    /// The lock that was asked for.
    pub wanted: LockKind,
    /// Who holds the file.
    pub holder: Holder,
    /// Whether the holder has it open for writing (else only read-only
    /// handles, such as the parents of an open chain, are in the way).
    pub held_for_writing: bool,
}

impl LockConflict {
    /// "another handle in this process" or "another process".
    pub fn holder_name(&self) -> &'static str {
        match self.holder {
            Holder::ThisProcess => "another handle in this process",
            Holder::OtherProcess => "another process",
        }
    }
}

impl fmt::Display for LockConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.held_for_writing {
            write!(f, "the file is open for writing by {}", self.holder_name())
        } else {
            write!(
                f,
                "the file is open read-only by {} (for example as the parent of a disk in use), \
                 so it cannot be opened for writing",
                self.holder_name()
            )
        }
    }
}

impl std::error::Error for LockConflict {}

/// The lock conflict an error from [`lock_file`] (or from opening a
/// [`super::FileStorage`]) carries, if it is one.
pub fn lock_conflict(e: &io::Error) -> Option<&LockConflict> {
    e.get_ref()?.downcast_ref::<LockConflict>()
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    shared: usize,
    exclusive: usize,
}

/// The locks this process holds, by (device, inode).
static HELD: Mutex<BTreeMap<(u64, u64), Held>> = Mutex::new(BTreeMap::new());

fn held() -> std::sync::MutexGuard<'static, BTreeMap<(u64, u64), Held>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process's record of a lock it holds. The lock itself belongs to
/// the file's open description and goes when the file is closed; drop this
/// record after (or with) the [`File`] it was taken on.
#[derive(Debug)]
pub struct FileLock {
    key: (u64, u64),
    kind: LockKind,
}

impl FileLock {
    /// The kind of lock held.
    pub fn kind(&self) -> LockKind {
        self.kind
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let mut map = held();
        if let Some(h) = map.get_mut(&self.key) {
            match self.kind {
                LockKind::Shared => h.shared = h.shared.saturating_sub(1),
                LockKind::Exclusive => h.exclusive = h.exclusive.saturating_sub(1),
            }
            if h.shared == 0 && h.exclusive == 0 {
                map.remove(&self.key);
            }
        }
    }
}

use super::platform::{flock, would_block, FlockOp};

/// How often, and how long apart, a refused lock is tried again.
const ATTEMPTS: u32 = 50;
const PAUSE: Duration = Duration::from_millis(10);

/// Lock `file` (non-blocking). A refused lock is retried for about 0.5 s:
/// a descriptor this process closed stays open in a child that another
/// thread is forking until the child execs (every descriptor libckpt opens
/// is close-on-exec), so a lock can look taken for a moment. Then the
/// error (kind `WouldBlock`) carries a [`LockConflict`] saying who holds
/// the file.
pub fn lock_file(file: &File, kind: LockKind) -> io::Result<FileLock> {
    let meta = file.metadata()?;
    let key = (meta.dev(), meta.ino());
    let op = match kind {
        LockKind::Shared => FlockOp::Shared,
        LockKind::Exclusive => FlockOp::Exclusive,
    };
    let mut attempt = 0;
    loop {
        match flock(file, op) {
            Ok(()) => {
                let mut map = held();
                let h = map.entry(key).or_default();
                match kind {
                    LockKind::Shared => h.shared += 1,
                    LockKind::Exclusive => h.exclusive += 1,
                }
                return Ok(FileLock { key, kind });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if !would_block(&e) => return Err(e),
            Err(_) => {}
        }
        attempt += 1;
        if attempt >= ATTEMPTS {
            break;
        }
        std::thread::sleep(PAUSE);
    }
    let conflict = who_holds(file, key, kind);
    Err(io::Error::new(io::ErrorKind::WouldBlock, conflict))
}

/// Why `kind` was refused on `file`: this process's registry first, then
/// (for an exclusive lock) a shared probe tells a writer from readers.
fn who_holds(file: &File, key: (u64, u64), kind: LockKind) -> LockConflict {
    let mine = held().get(&key).copied().unwrap_or_default();
    let (holder, held_for_writing) = match kind {
        LockKind::Shared if mine.exclusive > 0 => (Holder::ThisProcess, true),
        LockKind::Shared => (Holder::OtherProcess, true),
        LockKind::Exclusive if mine.exclusive > 0 => (Holder::ThisProcess, true),
        LockKind::Exclusive if mine.shared > 0 => (Holder::ThisProcess, false),
        LockKind::Exclusive => {
            // Only a writer refuses a shared lock too.
            let readers_only = flock(file, FlockOp::Shared).is_ok();
            if readers_only {
                let _ = flock(file, FlockOp::Unlock);
            }
            (Holder::OtherProcess, !readers_only)
        }
    };
    LockConflict {
        wanted: kind,
        holder,
        held_for_writing,
    }
}

/// Whether someone (another process, or another open of the file in this
/// one) holds the file at `path` locked exclusively, found with one
/// non-blocking shared lock taken and at once released: never waits, and
/// never makes a holder wait (a lock refused meanwhile is retried by
/// [`lock_file`]). A missing file is not locked. For monitoring, which
/// reads a VM without taking its lock.
pub fn held_exclusive(path: &std::path::Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    loop {
        match flock(&file, FlockOp::Shared) {
            Ok(()) => {
                let _ = flock(&file, FlockOp::Unlock);
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if would_block(&e) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// Whether this process holds the file at `path` locked exclusively (as
/// far as its own record knows: a lock shared by [`share_lock`] still
/// counts). A caller that only peeks at such a file can skip the wait of
/// [`lock_file`], which cannot succeed before the holder lets go.
pub(crate) fn held_exclusive_here(path: &std::path::Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => held()
            .get(&(m.dev(), m.ino()))
            .is_some_and(|h| h.exclusive > 0),
        Err(_) => false,
    }
}

/// Turn the exclusive lock held on the open file description `fd` into a
/// shared one (a live switch freezes a disk's top this way, so that others
/// may open it read-only while this process keeps it open). This process's
/// registry keeps counting it as exclusive until the file is closed (that
/// only words the error of a later refusal).
pub(crate) fn share_lock(fd: std::os::unix::io::RawFd) -> io::Result<()> {
    super::platform::flock_fd(fd, FlockOp::Shared)
}

/// Turn the shared lock held on the open file description `fd` into an
/// exclusive one, for a live merge that must change a file its own chain
/// holds read-only (see [`super::FileStorage::open_beside`]). Retried as
/// [`lock_file`] is (a handle of this process closed a moment ago may live
/// on in a child being forked). Refused (kind `WouldBlock`, carrying a
/// [`LockConflict`]) when anyone else holds the file, even read-only; the
/// shared lock is then taken again (`flock` may drop it while it converts).
pub(crate) fn exclusive_lock(fd: std::os::unix::io::RawFd) -> io::Result<()> {
    let mut attempt = 0;
    loop {
        match super::platform::flock_fd(fd, FlockOp::Exclusive) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if !would_block(&e) => return Err(e),
            Err(_) => {}
        }
        let _ = super::platform::flock_fd(fd, FlockOp::Shared);
        attempt += 1;
        if attempt >= ATTEMPTS {
            break;
        }
        std::thread::sleep(PAUSE);
    }
    let key = super::platform::fd_identity(fd)?;
    let mine = held().get(&key).copied().unwrap_or_default();
    let holder = if mine.shared + mine.exclusive > 1 {
        Holder::ThisProcess
    } else {
        Holder::OtherProcess
    };
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        LockConflict {
            wanted: LockKind::Exclusive,
            holder,
            held_for_writing: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_opens_in_one_process_conflict_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let (a, b, c) = (
            File::open(&p).unwrap(),
            File::open(&p).unwrap(),
            File::open(&p).unwrap(),
        );
        let la = lock_file(&a, LockKind::Shared).unwrap();
        let lb = lock_file(&b, LockKind::Shared).unwrap();
        let e = lock_file(&c, LockKind::Exclusive).unwrap_err();
        let k = lock_conflict(&e).copied().unwrap();
        assert_eq!(k.holder, Holder::ThisProcess);
        assert!(!k.held_for_writing);
        assert!(e
            .to_string()
            .contains("read-only by another handle in this process"));
        drop((a, la, b, lb));
        let lc = lock_file(&c, LockKind::Exclusive).unwrap();
        let d = File::open(&p).unwrap();
        let e = lock_file(&d, LockKind::Shared).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the file is open for writing by another handle in this process"
        );
        drop((c, lc));
        let _ld = lock_file(&d, LockKind::Shared).unwrap();
    }
}
