//! Reads of read-only files through a shared memory mapping, guarded.
//!
//! A 4 KiB read from the page cache through `pread` spends more time in the
//! system call (entry, page-cache lookup, access-time check) than in the
//! copy itself; through a mapping it is one copy in user space, about three
//! times faster here. Reads of read-only opens take this path when the
//! range lies inside the mapping; everything else uses `pread`.
//!
//! A mapping has one danger a `pread` does not: when the page behind an
//! address cannot be read (an I/O error, or the file was cut shorter by
//! someone else) the kernel sends `SIGBUS` instead of returning an error.
//! So every copy runs under a guard:
//!
//! * Before the copy the thread records the mapping it reads (a
//!   thread-local, set and cleared around the copy).
//! * A `SIGBUS` handler, installed once per process when the first mapping
//!   is made, looks at the faulting address. Inside the guarded mapping it
//!   marks the mapping poisoned, puts a page of zeros over the failing page
//!   (`mmap(MAP_FIXED)`), notes the fault for the thread and returns: the
//!   copy finishes, and the read is done again with `pread`, which returns
//!   the real error or, past a shortened end, zeros. A poisoned mapping is
//!   never read again (a concurrent reader that copied the zero page sees
//!   the mark after its copy and reads again too).
//! * Any other `SIGBUS` is not ours: the handler passes it to the handler
//!   that was installed before, or restores the default action and raises
//!   it again (the process ends as it would have without this library).
//!
//! `CKPT_MMAP=0` in the environment turns mapped reads off for the process
//! (for hosts whose own `SIGBUS` handling must not be chained); it is read
//! once, at the first read-only open.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::os::unix::io::RawFd;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// A read-only shared mapping of the first `len` bytes of a file.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: *const u8,
    len: usize,
    /// A page of the mapping failed and was replaced by zeros.
    poisoned: AtomicBool,
}

// SAFETY: the mapping is read-only memory owned by this value until drop;
// every read is a copy out of it, safe from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; the poisoned flag is atomic.
unsafe impl Sync for Mapping {}

thread_local! {
    /// The mapping this thread is copying from: (start, end, &poisoned), 0 when none.
    static GUARD: Cell<(usize, usize, usize)> = const { Cell::new((0, 0, 0)) };
    /// A guarded copy on this thread met a fault.
    static FAULTED: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();
/// Whether the handler is in place (mappings are made only then).
static INSTALLED: AtomicBool = AtomicBool::new(false);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The `SIGBUS` action installed before ours (written once, before the
/// handler that reads it is installed).
static mut OLD_ACTION: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CKPT_MMAP").is_none_or(|v| v != "0"))
}

fn install() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no memory arguments.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: `act` and `old` are plain C structs, zeroed then filled;
        // sigaction reads `act` and writes `old`. OLD_ACTION is written
        // here once, before the handler that reads it can run.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return;
            }
            let slot = &raw mut OLD_ACTION;
            (*slot).write(old);
            if libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) != 0 {
                return;
            }
        }
        INSTALLED.store(true, Ordering::SeqCst);
    });
    INSTALLED.load(Ordering::SeqCst)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, end, poisoned) = GUARD.with(|g| g.get());
    if poisoned != 0 && addr >= start && addr < end {
        // SAFETY: `poisoned` points to the AtomicBool of the Mapping this
        // thread is copying from, alive for the whole copy.
        unsafe { (*(poisoned as *const AtomicBool)).store(true, Ordering::SeqCst) };
        let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
        // SAFETY: the page lies inside the mapping this thread reads
        // (owned by its Mapping until drop); a private anonymous page of
        // zeros replaces it, so the copy can go on. mmap is a plain
        // system call, safe in a signal handler.
        let r = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE.load(Ordering::Relaxed),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            FAULTED.with(|f| f.set(true));
            return;
        }
    }
    // Not ours: as if this library had never installed a handler.
    // SAFETY: OLD_ACTION was written before this handler was installed.
    let slot = &raw const OLD_ACTION;
    let old = unsafe { (*slot).assume_init_ref() };
    let h = old.sa_sigaction;
    if h != libc::SIG_DFL && h != libc::SIG_IGN {
        if old.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous handler was installed as an SA_SIGINFO
            // handler: this is its signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(h) };
            f(sig, info, ctx);
        } else {
            // SAFETY: a plain handler's signature.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
            f(sig);
        }
        return;
    }
    // SAFETY: restoring the default action and raising the signal again
    // (delivered once this handler returns) ends the process as SIGBUS
    // would have; both are async-signal-safe.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        libc::raise(libc::SIGBUS);
    }
}

impl Mapping {
    /// Map the first `len` bytes of `fd` read-only, or `None` when mapped
    /// reads are off, the handler could not be installed, or `mmap` fails
    /// (reads then use `pread`).
    pub(crate) fn new(fd: RawFd, len: u64) -> Option<Mapping> {
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        if !enabled() || !install() {
            return None;
        }
        // SAFETY: a new shared read-only mapping of a descriptor the caller
        // keeps open; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Mapping {
            ptr: p as *const u8,
            len,
            poisoned: AtomicBool::new(false),
        })
    }

    /// Copy `[offset, offset+buf.len())` into `buf`: `true` when done,
    /// `false` when the caller must read with `pread` instead (the range is
    /// not all inside the mapping, or the mapping is poisoned, or became so
    /// during this copy).
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> bool {
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return false;
        };
        if end > self.len as u64 || self.poisoned.load(Ordering::Acquire) {
            return false;
        }
        let start = self.ptr as usize;
        GUARD.with(|g| {
            g.set((
                start,
                start + self.len,
                &self.poisoned as *const AtomicBool as usize,
            ))
        });
        compiler_fence(Ordering::SeqCst);
        // SAFETY: the range is inside the mapping (checked above), which
        // lives as long as `self`; `buf` is a distinct, writable buffer of
        // the same length. A page that fails is replaced by zeros by the
        // guard, and the read is then done again with pread.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        compiler_fence(Ordering::SeqCst);
        GUARD.with(|g| g.set((0, 0, 0)));
        let faulted = FAULTED.with(|f| f.replace(false));
        !faulted && !self.poisoned.load(Ordering::SeqCst)
    }

    /// Whether a page of this mapping failed (tests).
    #[allow(dead_code)]
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range this value mapped; no copy
        // can be running (it borrows self).
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// Tests: a mapping's guard turns a fault into a poisoned mapping.
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn a_file_cut_shorter_under_a_mapping_poisons_it_instead_of_killing_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![5u8; 1 << 20]).unwrap();
        let r = std::fs::File::open(&path).unwrap();
        let Some(m) = Mapping::new(r.as_raw_fd(), 1 << 20) else {
            assert!(!enabled(), "no mapping although mapped reads are on");
            return;
        };
        let mut buf = vec![0u8; 8192];
        assert!(m.read(&mut buf, 4096));
        assert!(buf.iter().all(|&b| b == 5));
        // Someone else cuts the file: the pages past the end are gone.
        f.set_len(65_536).unwrap();
        assert!(m.read(&mut buf, 0), "inside the new end");
        assert!(
            !m.read(&mut buf, 500_000),
            "a read past the new end must not be trusted"
        );
        assert!(m.is_poisoned());
        assert!(!m.read(&mut buf, 0), "a poisoned mapping is not read again");
        // A read outside the mapping is the caller's.
        assert!(!m.read(&mut buf, (1 << 20) - 4096));
    }

    #[test]
    fn a_sigbus_that_is_not_ours_still_reaches_the_old_handler() {
        static SEEN: AtomicBool = AtomicBool::new(false);
        extern "C" fn old(_: libc::c_int) {
            SEEN.store(true, Ordering::SeqCst);
        }
        // Only meaningful when this process has not installed the guard yet
        // with another handler before it; the handler chain is checked by
        // raising a SIGBUS that names no mapping.
        if !install() {
            return;
        }
        // SAFETY: test-only: point the saved old action at `old`.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = old as *const () as usize;
            let slot = &raw mut OLD_ACTION;
            let saved = (*slot).assume_init_read();
            (*slot).write(act);
            libc::raise(libc::SIGBUS);
            (*slot).write(saved);
        }
        assert!(SEEN.load(Ordering::SeqCst));
    }
}
