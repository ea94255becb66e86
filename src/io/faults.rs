//! Crash simulation for code that works on files by path (merges, the
//! checkpoint tree): while armed on a thread, every mutating operation that
//! thread makes through [`FileStorage`](super::FileStorage) (and
//! [`remove_file`](super::remove_file)) counts as an event, and the event
//! numbered `crash_at` and all after it fail, as if the machine had stopped
//! there (`arm`); or only that one event fails, with a transient error, and
//! everything after it works again (`arm_transient`). Disarmed, it costs one
//! thread-local read per operation.
//!
//! The arming functions exist only with the `fault-injection` feature;
//! without it `event` always says "go ahead" and compiles to nothing.

use std::io;

#[cfg(not(feature = "fault-injection"))]
use super::Cut;

#[cfg(feature = "fault-injection")]
pub use armed::{arm, arm_transient, disarm, events};
#[cfg(feature = "fault-injection")]
pub(crate) use armed::{event, is_armed};

#[cfg(feature = "fault-injection")]
mod armed {
    use std::cell::Cell;
    use std::io;

    use super::super::{Cut, Transient};

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

    /// Whether this thread counts events (work spread over helper threads
    /// stays on this one then, so that every event is counted, in order).
    pub(crate) fn is_armed() -> bool {
        PLAN.with(|p| p.get()).is_some()
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
}

/// Without the `fault-injection` feature nothing is counted: go ahead.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn event() -> io::Result<Option<Cut>> {
    Ok(None)
}

/// Without the `fault-injection` feature no thread counts events.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn is_armed() -> bool {
    false
}

/// The error of the operation at the crash point.
pub(crate) fn crash() -> io::Error {
    io::Error::other("simulated crash")
}
