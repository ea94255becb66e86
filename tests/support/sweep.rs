//! Crash sweeps of VM operations: an operation runs once on a fresh VM
//! with `ckpt::io::faults` counting its file events (writes, flushes,
//! unlinks of the calling thread), then once more on a fresh VM for every
//! event, cut there; each run is handed to a check.

use std::path::Path;

use ckpt::checkpoint::Vm;
use ckpt::io::{faults, Cut};

/// One run of a sweep.
pub struct Run<'a, T> {
    /// The event the run was cut at; `events` for the run that counted.
    pub n: u64,
    /// The events of the whole operation.
    pub events: u64,
    /// What the operation returned.
    pub result: ckpt::Result<T>,
    /// The handle as the operation left it (the storage works again).
    pub vm: Vm,
    /// The folder the VM was built in.
    pub root: &'a Path,
}

impl<T: std::fmt::Debug> Run<'_, T> {
    /// "cut at N of M" (or "uncut") with the result, for messages.
    pub fn ctx(&self) -> String {
        if self.n < self.events {
            format!("cut at {} of {} ({:?})", self.n, self.events, self.result)
        } else {
            format!("uncut ({:?})", self.result)
        }
    }
}

/// The VM as the next process sees it: the handle `vm` dropped, its
/// folder opened again, which reconciles: no journal is left, nor a stray.
pub fn reopened(vm: Vm, ctx: &str) -> Vm {
    let dir = vm.dir().to_path_buf();
    drop(vm);
    let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
    let strays = vm.strays().unwrap();
    assert!(strays.is_empty(), "{ctx}: strays {strays:?}");
    vm
}

/// Run `op` on a VM `build` makes in a fresh folder: once counting its
/// events, then cut (`cut`) at each of them in turn; `check` judges every
/// run, the counting one first. Returns the number of events.
pub fn every_cut<T>(
    build: impl Fn(&Path) -> Vm,
    cut: Cut,
    op: impl Fn(&mut Vm) -> ckpt::Result<T>,
    mut check: impl FnMut(Run<'_, T>),
) -> u64 {
    let t = tempfile::tempdir().unwrap();
    let mut vm = build(t.path());
    faults::arm(u64::MAX, cut);
    let result = op(&mut vm);
    let events = faults::disarm();
    check(Run {
        n: events,
        events,
        result,
        vm,
        root: t.path(),
    });
    for n in 0..events {
        let t = tempfile::tempdir().unwrap();
        let mut vm = build(t.path());
        faults::arm(n, cut);
        let result = op(&mut vm);
        faults::disarm();
        check(Run {
            n,
            events,
            result,
            vm,
            root: t.path(),
        });
    }
    events
}

/// The events of `op` on a VM `build` makes in a fresh folder (it must
/// succeed).
pub fn events_of<T>(build: impl Fn(&Path) -> Vm, op: impl Fn(&mut Vm) -> ckpt::Result<T>) -> u64 {
    let t = tempfile::tempdir().unwrap();
    let mut vm = build(t.path());
    faults::arm(u64::MAX, Cut::Clean);
    let r = op(&mut vm);
    let events = faults::disarm();
    if let Err(e) = r {
        panic!("the counting run failed: {e}");
    }
    events
}
