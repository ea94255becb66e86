//! Fault injection for tests: `FaultStorage`, a memory storage that
//! "crashes" or fails once after a number of events, and `Transient`.
//! Compiled only with the `fault-injection` feature (tests and fuzzing
//! enable it), except [`Cut`], which [`super::faults`] also names.

#[cfg(feature = "fault-injection")]
use std::io;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "fault-injection")]
use super::{platform, write_zeros, MemStorage, Storage};

/// What a `FaultStorage` (`fault-injection` feature) or an armed
/// [`super::faults`] counter does at its cut point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The operation at the cut point does not happen at all.
    Clean,
    /// A write at the cut point lands only partly: its last 512-byte sector
    /// is half old, half new (or, for a one-sector write, only its first half lands).
    Torn,
}

#[cfg(feature = "fault-injection")]
mod inject {
    use super::*;
    /// The error of a transient fault ([`FaultStorage::transient`],
    /// [`faults::arm_transient`](crate::io::faults::arm_transient)): the
    /// failing operation has no effect, and the storage works again
    /// afterwards.
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
                Transient::Eio => platform::EIO,
                Transient::NoSpace => platform::ENOSPC,
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
}
#[cfg(feature = "fault-injection")]
pub use inject::{FaultStorage, Transient};
