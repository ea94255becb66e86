//! Deleting checkpoints of an attached VM (`Vm::disk`) while writer
//! threads keep writing self-describing units through its live handles:
//! the merge runs live (`LiveDisk::merge_down`), a delete of the checkpoint
//! the current state hangs under first switches each handle to a fresh
//! child. Checked by libckpt and by libvhdi (`pyvhdi` with `set_parent`);
//! a cancel then a retry; a crash cut at every write, flush and unlink of
//! the deleting thread (`ckpt::io::faults`, armed on the main thread only).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use ckpt::checkpoint::{CheckpointType, Hooks, NoHooks, Vm, VmSpec};
use ckpt::io::{faults, Cut};
use ckpt::{CreateOptions, Disk, ErrorKind, LiveDisk};

include!("support/live_units.rs");

/// Hooks that count progress calls and cancel at call `cancel_at`.
#[derive(Default)]
struct Progress {
    calls: u64,
    cancel_at: Option<u64>,
    last: (u64, u64),
}

impl Hooks for Progress {
    fn progress(&mut self, done: u64, total: u64) -> bool {
        self.calls += 1;
        self.last = (done, total);
        self.cancel_at != Some(self.calls)
    }
}

/// Let the writers write `n` more units.
fn let_write(clock: &AtomicU64, n: u64) {
    let until = clock.load(Ordering::SeqCst) + 2 * n;
    while clock.load(Ordering::SeqCst) < until {
        thread::yield_now();
    }
}

/// Create checkpoint `name` stamped on the clock: (name, begin, end).
fn stamped(vm: &mut Vm, clock: &AtomicU64, name: &str) -> (String, u64, u64) {
    let begin = clock.fetch_add(1, Ordering::SeqCst);
    vm.create_checkpoint(name, None, &mut NoHooks).unwrap();
    let end = clock.fetch_add(1, Ordering::SeqCst);
    (name.to_string(), begin, end)
}

/// Every unit of `units` (disk `d`) holds a write allowed in a state
/// frozen at `[begin, end]`.
fn check_frozen(log: &Log, d: usize, units: &[Vec<u8>], begin: u64, end: u64, what: &str) {
    for u in 0..UNITS {
        let seq = decode(d, u, &units[u as usize], what);
        let (lo, hi) = allowed(&log.recs, d, u, begin, end);
        assert!(
            lo <= seq && seq <= hi,
            "{what}: disk {d} unit {u}: seq {seq} not in [{lo}, {hi}]"
        );
    }
}

/// The checks after the writers stopped: each kept checkpoint equals the
/// model at its creation (libckpt and libvhdi), the current state holds
/// every write (live, then from the files once detached).
fn check_all(mut vm: Vm, disks: Vec<Arc<LiveDisk>>, log: &Log, kept: &[(String, u64, u64)]) {
    assert!(log.error.is_none(), "the guest saw {:?}", log.error);
    for (d, disk) in disks.iter().enumerate() {
        let units = live_units(disk);
        for u in 0..UNITS {
            assert_eq!(
                decode(d, u, &units[u as usize], "live"),
                last_seq(&log.recs, d, u),
                "live disk {d} unit {u}"
            );
        }
    }
    drop(disks);
    vm.detach().unwrap();
    assert!(!vm.dir().join("journal.json").exists());
    let vhdi = pyvhdi();
    for (name, begin, end) in kept {
        let c = vm.find(name).unwrap().clone();
        assert!(!c.deleting);
        for (d, p) in c.disks.iter().enumerate() {
            check_frozen(log, d, &read_units(p), *begin, *end, name);
            if vhdi {
                check_frozen(log, d, &vhdi_units(p), *begin, *end, name);
            }
        }
    }
    for (d, p) in vm.data().current.disks.iter().enumerate() {
        let mut views = vec![read_units(p)];
        if vhdi {
            views.push(vhdi_units(p));
        }
        for units in views {
            for u in 0..UNITS {
                assert_eq!(
                    decode(d, u, &units[u as usize], "current"),
                    last_seq(&log.recs, d, u),
                    "current disk {d} unit {u}"
                );
            }
        }
    }
    let strays = vm.strays().unwrap();
    assert!(strays.is_empty(), "strays {strays:?} in {:#?}", vm.data());
    drop(vm);
}

#[test]
fn delete_middle_then_current_parent_while_writers_write() {
    let t = support::tempdir();
    let (dir, mut vm, disks) = attached(t.path(), CheckpointType::Standard);
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 4, &clock);
    let mut made = Vec::new();
    for name in ["a", "b", "c"] {
        let_write(&clock, 200);
        made.push(stamped(&mut vm, &clock, name));
    }
    let_write(&clock, 200);
    let b = vm.find("b").unwrap().clone();
    let c = vm.find("c").unwrap().clone();
    let top: Vec<PathBuf> = vm.data().current.disks.clone();
    // b, a middle one: c's disks (frozen, in the live chains) merge into b's.
    let mut p = Progress::default();
    vm.delete("b", false, &mut p).unwrap();
    assert!(p.calls > 1 && p.last.0 == p.last.1, "{} calls", p.calls);
    assert!(vm.find("b").is_err());
    assert_eq!(vm.find("c").unwrap().disks, b.disks);
    let a_id = vm.find("a").unwrap().id.clone();
    assert_eq!(vm.find("c").unwrap().parent, Some(a_id));
    for f in &c.disks {
        assert!(!f.exists(), "{}: merged, left", f.display());
    }
    assert_eq!(vm.data().current.disks, top);
    let_write(&clock, 200);
    // c, the one the current state hangs under: each handle is switched to
    // a fresh child, then its old top merges into c's disks.
    let mut p = Progress::default();
    vm.delete("c", false, &mut p).unwrap();
    assert!(p.calls > 1, "{} calls", p.calls);
    assert!(vm.find("c").is_err());
    for (d, f) in top.iter().enumerate() {
        assert!(!f.exists(), "{}: merged, left", f.display());
        assert_eq!(disks[d].path().unwrap(), vm.data().current.disks[d]);
        assert_eq!(disks[d].chain()[1].as_ref(), Some(&b.disks[d]));
    }
    let_write(&clock, 200);
    let log = writers.finish();
    made.truncate(1);
    check_all(vm, disks, &log, &made);
    let vm = Vm::open(&dir).unwrap();
    assert_eq!(vm.data().checkpoints.len(), 1);
}

#[test]
fn cancel_half_way_then_retry_while_writers_write() {
    let t = support::tempdir();
    let (dir, mut vm, disks) = attached(t.path(), CheckpointType::Standard);
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 4, &clock);
    let mut made = Vec::new();
    for name in ["a", "b", "c"] {
        let_write(&clock, 200);
        made.push(stamped(&mut vm, &clock, name));
    }
    let_write(&clock, 200);
    // A middle one cancelled in its copy: as offline, undone or pending.
    let mut p = Progress {
        cancel_at: Some(2),
        ..Default::default()
    };
    let e = vm.delete("b", false, &mut p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    let_write(&clock, 100);
    let mut p = Progress::default();
    vm.delete("b", false, &mut p).unwrap();
    assert!(vm.find("b").is_err());
    // The current state's parent, cancelled after the switch: left pending.
    let mut p = Progress {
        cancel_at: Some(2),
        ..Default::default()
    };
    let e = vm.delete("c", false, &mut p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(vm.find("c").unwrap().deleting);
    assert!(dir.join("journal.json").exists());
    let_write(&clock, 200);
    // The next operation finishes it, live.
    let mut p = Progress::default();
    vm.delete("c", false, &mut p).unwrap();
    assert!(vm.find("c").is_err());
    assert!(!dir.join("journal.json").exists());
    let_write(&clock, 200);
    let log = writers.finish();
    made.truncate(1);
    check_all(vm, disks, &log, &made);
}

/// A live delete of `victim` (of checkpoints first, a, b; "a": a middle
/// one, "b": the current state's parent) cut at every write, flush and
/// unlink of the main thread while writers write: the VM reopens
/// reconciled, every other checkpoint intact, the victim either intact or
/// gone, every write flushed before the cut present.
fn crash_sweep(victim: &str) {
    let mut events = None;
    let mut n = 0u64;
    loop {
        if events.is_some_and(|e| n >= e) {
            break;
        }
        let t = support::fast_tempdir();
        let (dir, mut vm, disks) = attached(t.path(), CheckpointType::Standard);
        let clock = Arc::new(AtomicU64::new(0));
        let writers = Writers::start(&disks, 4, &clock);
        let mut made = Vec::new();
        for name in ["first", "a", "b"] {
            let_write(&clock, 12);
            made.push(stamped(&mut vm, &clock, name));
        }
        let_write(&clock, 12);
        faults::arm(events.map_or(u64::MAX, |_| n), Cut::Clean);
        let r = vm.delete(victim, false, &mut NoHooks);
        let seen = faults::events();
        if events.is_none() {
            faults::disarm();
            r.unwrap();
            events = Some(seen);
            assert!(seen > 5, "{seen} events");
            let _ = writers.finish();
            continue;
        }
        let log = writers.finish();
        let cut = clock.fetch_add(1, Ordering::SeqCst);
        drop(disks);
        // The process "dies": the VM is dropped while every write fails.
        drop(vm);
        faults::disarm();
        let ctx = format!(
            "{victim}: cut at {n} of {events:?} ({:?})",
            r.as_ref().err()
        );
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
        assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
        for (name, begin, end) in &made {
            match vm.find(name) {
                Ok(c) => {
                    assert!(!c.deleting, "{ctx}: {name} pending");
                    for (d, p) in c.disks.iter().enumerate() {
                        check_frozen(&log, d, &read_units(p), *begin, *end, &ctx);
                    }
                }
                Err(_) => assert_eq!(name, victim, "{ctx}: {name} lost"),
            }
        }
        assert_flushed_kept(&log, &vm.data().current.disks, cut, &ctx);
        n += 1;
    }
}

#[test]
fn crash_at_every_step_of_a_live_delete_of_a_middle_checkpoint() {
    crash_sweep("a");
}

#[test]
fn crash_at_every_step_of_a_live_delete_of_the_current_parent() {
    crash_sweep("b");
}
