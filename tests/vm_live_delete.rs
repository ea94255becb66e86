//! Deleting checkpoints of an attached VM (`Vm::disk`) while writer
//! threads keep writing self-describing units through its live handles:
//! the merge runs live (`LiveDisk::merge_down`), a delete of the checkpoint
//! the current state hangs under first switches each handle to a fresh
//! child. Checked by libckpt and by libvhdi (`pyvhdi` with `set_parent`);
//! a cancel then a retry; a crash cut at every write, flush and unlink of
//! the deleting thread (`ckpt::io::faults`, armed on the main thread only).
//! At a branch point too: the live chain merged live, the other branch's
//! disks re-pointed (the same sweeps, and a transient error then a retry).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use ckpt::checkpoint::{CheckpointType, Hooks, NoHooks, Vm, VmSpec};
use ckpt::io::{faults, Cut, Transient};
use ckpt::{CreateOptions, Disk, ErrorKind, LiveDisk, OpenMode};

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
/// model at its creation (libckpt and libvhdi), the
/// current state holds every write (live, then from the files once
/// detached; libckpt and libvhdi).
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
                let what = format!("{name} (libvhdi)");
                check_frozen(log, d, &vhdi_units(p), *begin, *end, &what);
            }
        }
    }
    for (d, p) in vm.data().current.disks.iter().enumerate() {
        let mut views = vec![("current (libckpt)", read_units(p))];
        if vhdi {
            views.push(("current (libvhdi)", vhdi_units(p)));
        }
        for (what, units) in views {
            for u in 0..UNITS {
                assert_eq!(
                    decode(d, u, &units[u as usize], what),
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
    delete_middle_then_current_parent(false);
}

/// The same with VHD disks (a VHD live merge: no DataWriteGuid; the layer
/// above re-pointed through a new header in fresh space).
#[test]
fn delete_middle_then_current_parent_while_writers_write_on_vhd() {
    delete_middle_then_current_parent(true);
}

fn delete_middle_then_current_parent(vhd: bool) {
    let t = support::tempdir();
    let (dir, mut vm, disks) = attached_as(t.path(), CheckpointType::Standard, vhd);
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
    cancel_half_way_then_retry(false);
}

#[test]
fn cancel_half_way_then_retry_while_writers_write_on_vhd() {
    cancel_half_way_then_retry(true);
}

fn cancel_half_way_then_retry(vhd: bool) {
    let t = support::tempdir();
    let (dir, mut vm, disks) = attached_as(t.path(), CheckpointType::Standard, vhd);
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
fn crash_sweep(victim: &str, vhd: bool) {
    let mut events = None;
    let mut n = 0u64;
    loop {
        if events.is_some_and(|e| n >= e) {
            break;
        }
        let t = support::fast_tempdir();
        let (dir, mut vm, disks) = attached_as(t.path(), CheckpointType::Standard, vhd);
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
    crash_sweep("a", false);
}

#[test]
fn crash_at_every_step_of_a_live_delete_of_the_current_parent() {
    crash_sweep("b", false);
}

#[test]
fn crash_at_every_step_of_a_live_delete_of_a_middle_checkpoint_on_vhd() {
    crash_sweep("a", true);
}

#[test]
fn crash_at_every_step_of_a_live_delete_of_the_current_parent_on_vhd() {
    crash_sweep("b", true);
}

// ------------------------------------------------------------ branch point

/// Every disk of checkpoint `name` as it reads now (libckpt).
fn snapshot(vm: &Vm, name: &str) -> Vec<Vec<Vec<u8>>> {
    let c = vm.find(name).unwrap();
    c.disks.iter().map(|p| read_units(p)).collect()
}

/// The sequence number of each unit of every disk in `units`.
fn seqs(units: &[Vec<Vec<u8>>], what: &str) -> Vec<Vec<u64>> {
    units
        .iter()
        .enumerate()
        .map(|(d, us)| {
            (0..UNITS)
                .map(|u| decode(d, u, &us[u as usize], what))
                .collect()
        })
        .collect()
}

/// An attached VM with `n` disks whose tree has a branch point right under the
/// checkpoint `first`: `first` ← `a` ← {`b`, `c` ← current} (without
/// `with_c`: `a` ← {`b`, current}); the live chains run through `a`'s
/// disks, `b`'s are off them. Writers write while `first`, `a`, `b` are
/// taken; they stop for the apply of `a` (the guest is stopped) and write
/// again, from the applied state, while `c` is taken and after.
struct Branch {
    vm: Vm,
    disks: Vec<Arc<LiveDisk>>,
    clock: Arc<AtomicU64>,
    writers: Writers,
    /// What each checkpoint read right after it was taken.
    held: Vec<(String, Vec<Vec<Vec<u8>>>)>,
    /// The sequence numbers `a` holds (where the applied state began).
    base: Vec<Vec<u64>>,
    /// `c` and its create's stamps, checked once the writers stop.
    c: Option<(u64, u64)>,
}

fn branch(root: &Path, n: usize, with_c: bool, gap: u64) -> (PathBuf, Branch) {
    branch_as(root, n, with_c, gap, false)
}

/// [`branch`], the disks VHDs when `vhd`.
fn branch_as(root: &Path, n: usize, with_c: bool, gap: u64, vhd: bool) -> (PathBuf, Branch) {
    let dir = build_as(root, n, CheckpointType::Standard, vhd);
    let mut vm = Vm::open(&dir).unwrap();
    let disks: Vec<Arc<LiveDisk>> = (0..n).map(|i| vm.disk(i).unwrap()).collect();
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 4, &clock);
    let mut made = Vec::new();
    let mut held = Vec::new();
    for name in ["first", "a", "b"] {
        let_write(&clock, gap);
        made.push(stamped(&mut vm, &clock, name));
        held.push((name.to_string(), snapshot(&vm, name)));
    }
    let_write(&clock, gap);
    let log1 = writers.finish();
    assert!(log1.error.is_none(), "the guest saw {:?}", log1.error);
    for ((name, begin, end), (_, units)) in made.iter().zip(&held) {
        for (d, us) in units.iter().enumerate() {
            check_frozen(&log1, d, us, *begin, *end, name);
        }
    }
    // The hypervisor stopped the guest: apply a; the handles read it.
    vm.apply("a", None, &mut NoHooks).unwrap();
    let a_units = held[1].1.clone();
    for (d, disk) in disks.iter().enumerate() {
        assert_eq!(live_units(disk), a_units[d], "disk {d} after apply");
    }
    let base = seqs(&a_units, "a");
    let writers = Writers::start_after(&disks, 4, &clock, &log1);
    let mut c = None;
    if with_c {
        let_write(&clock, gap);
        let (_, begin, end) = stamped(&mut vm, &clock, "c");
        held.push(("c".to_string(), snapshot(&vm, "c")));
        c = Some((begin, end));
    }
    let_write(&clock, gap);
    let br = Branch {
        vm,
        disks,
        clock,
        writers,
        held,
        base,
        c,
    };
    (dir, br)
}

/// `c`'s units (taken from the applied state) hold `a`'s write or one of
/// the writes after the apply allowed in a state frozen at `[begin, end]`.
fn check_c(log: &Log, base: &[Vec<u64>], units: &[Vec<Vec<u8>>], begin: u64, end: u64) {
    for (d, us) in units.iter().enumerate() {
        for u in 0..UNITS {
            let seq = decode(d, u, &us[u as usize], "c");
            let (lo, hi) = allowed(&log.recs, d, u, begin, end);
            let from_a = lo == 0 && seq == base[d][u as usize];
            assert!(
                from_a || (lo <= seq && seq <= hi && seq > 0),
                "c: disk {d} unit {u}: seq {seq} not a's nor in [{lo}, {hi}]"
            );
        }
    }
}

/// What unit `u` of disk `d` of the current state holds once the writers
/// (started after the apply, `log`) stopped.
fn current_seq(log: &Log, base: &[Vec<u64>], d: usize, u: u64) -> u64 {
    match last_seq(&log.recs, d, u) {
        0 => base[d][u as usize],
        s => s,
    }
}

/// The parent file of disk file `p` (its chain's layer 1).
fn parent_of(p: &Path) -> PathBuf {
    let d = Disk::open(p, OpenMode::ReadOnly).unwrap();
    d.chain()[1].clone().unwrap()
}

/// Delete `first`, whose only dependant `a` is a branch point the live
/// chains run through, while the writers write: `a`'s disks merge live
/// into `first`'s, `b`'s disks are re-pointed at them; every checkpoint of
/// both branches reads what it held (libckpt and libvhdi), the current
/// state equals the model, the guest saw no error.
fn delete_at_a_branch_point(with_c: bool) {
    let t = support::tempdir();
    let (dir, br) = branch(t.path(), 2, with_c, 200);
    let Branch {
        mut vm,
        disks,
        clock,
        writers,
        held,
        base,
        c,
    } = br;
    let first = vm.find("first").unwrap().clone();
    let a = vm.find("a").unwrap().clone();
    let mut p = Progress::default();
    vm.delete("first", false, &mut p).unwrap();
    assert!(p.calls > 1 && p.last.0 == p.last.1, "{} calls", p.calls);
    assert!(vm.find("first").is_err());
    assert!(!dir.join("journal.json").exists());
    let a_now = vm.find("a").unwrap().clone();
    assert_eq!(a_now.disks, first.disks);
    assert_eq!(a_now.parent, None);
    assert!(!a_now.hidden && !a_now.deleting);
    for f in &a.disks {
        assert!(!f.exists(), "{}: merged, left", f.display());
    }
    // The other branch, re-pointed (the live chain's: below).
    let mut under = vec![vm.find("b").unwrap().disks.clone()];
    if with_c {
        under.push(vm.find("c").unwrap().disks.clone());
    }
    for files in &under {
        for (d, f) in files.iter().enumerate() {
            assert_eq!(parent_of(f), first.disks[d], "{}", f.display());
        }
    }
    for (d, disk) in disks.iter().enumerate() {
        let chain: Vec<PathBuf> = disk.chain().into_iter().map(Option::unwrap).collect();
        let mut want = vec![vm.data().current.disks[d].clone()];
        if with_c {
            want.push(vm.find("c").unwrap().disks[d].clone());
        }
        want.push(first.disks[d].clone());
        assert_eq!(chain, want, "live chain of disk {d}");
    }
    let_write(&clock, 200);
    let log = writers.finish();
    assert!(log.error.is_none(), "the guest saw {:?}", log.error);
    if let Some((begin, end)) = c {
        check_c(&log, &base, &held[3].1, begin, end);
    }
    for (d, disk) in disks.iter().enumerate() {
        let units = live_units(disk);
        for u in 0..UNITS {
            assert_eq!(
                decode(d, u, &units[u as usize], "live"),
                current_seq(&log, &base, d, u),
                "live disk {d} unit {u}"
            );
        }
    }
    drop(disks);
    vm.detach().unwrap();
    let vhdi = pyvhdi();
    for (name, units) in held.iter().filter(|h| h.0 != "first") {
        let c = vm.find(name).unwrap().clone();
        for (d, p) in c.disks.iter().enumerate() {
            assert!(read_units(p) == units[d], "{name}: disk {d} changed");
            if vhdi {
                assert!(vhdi_units(p) == units[d], "{name}: disk {d} (libvhdi)");
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
                    current_seq(&log, &base, d, u),
                    "current disk {d} unit {u}"
                );
            }
        }
    }
    let strays = vm.strays().unwrap();
    assert!(strays.is_empty(), "strays {strays:?} in {:#?}", vm.data());
    drop(vm);
    let vm = Vm::open(&dir).unwrap();
    assert_eq!(vm.data().checkpoints.len(), if with_c { 3 } else { 2 });
    assert!(!dir.join("journal.json").exists());
}

#[test]
fn delete_above_a_branch_point_the_live_chain_runs_through_a_checkpoint() {
    delete_at_a_branch_point(true);
}

#[test]
fn delete_above_a_branch_point_the_current_state_hangs_under() {
    delete_at_a_branch_point(false);
}

/// After a delete that stopped (crash or error) and the VM reopened, or
/// after its retry: every checkpoint but the victim `first` reads what it
/// held, `first` intact or gone, and the current state holds every write
/// flushed before `cut` (`log`: the writes after the apply) and at least
/// what `a` held.
fn check_branch_after(
    vm: &Vm,
    br_held: &[(String, Vec<Vec<Vec<u8>>>)],
    base: &[Vec<u64>],
    log: &Log,
    cut: u64,
    ctx: &str,
) {
    assert!(
        !vm.dir().join("journal.json").exists(),
        "{ctx}: journal left"
    );
    assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
    for (name, units) in br_held {
        match vm.find(name) {
            Ok(c) => {
                assert!(!c.deleting, "{ctx}: {name} pending");
                for (d, p) in c.disks.iter().enumerate() {
                    assert!(read_units(p) == units[d], "{ctx}: {name}: disk {d} changed");
                }
            }
            Err(_) => assert_eq!(name, "first", "{ctx}: {name} lost"),
        }
    }
    for (d, p) in vm.data().current.disks.iter().enumerate() {
        let units = read_units(p);
        for u in 0..UNITS {
            let seq = decode(d, u, &units[u as usize], ctx);
            let want = log.flushed_seq(d, u, cut).max(base[d][u as usize]);
            assert!(
                seq >= want,
                "{ctx}: disk {d} unit {u}: seq {seq}, flushed {want}"
            );
        }
    }
}

/// The delete of `first` above the branch point `a` cut at every write,
/// flush and unlink of the main thread while writers write: the VM
/// reopens reconciled, both branches intact, every flushed write there.
/// One disk (and one writer): every run of the delete looks for other
/// disks' children in each disk's folder, and a lock probe of each live top
/// it meets there waits about 0.2 s, so two disks make each run ~4x slower.
#[test]
fn crash_at_every_step_of_a_live_delete_above_a_branch_point() {
    crash_above_a_branch_point(false);
}

/// The same with a VHD disk (the other branch re-pointed through new
/// VHD headers).
#[test]
fn crash_at_every_step_of_a_live_delete_above_a_branch_point_on_vhd() {
    crash_above_a_branch_point(true);
}

fn crash_above_a_branch_point(vhd: bool) {
    let mut events = None;
    let mut n = 0u64;
    loop {
        if events.is_some_and(|e| n >= e) {
            break;
        }
        let t = support::fast_tempdir();
        let (dir, br) = branch_as(t.path(), 1, true, 12, vhd);
        let Branch {
            mut vm,
            disks,
            clock,
            writers,
            held,
            base,
            ..
        } = br;
        faults::arm(events.map_or(u64::MAX, |_| n), Cut::Clean);
        let r = vm.delete("first", false, &mut NoHooks);
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
        let ctx = format!("cut at {n} of {events:?} ({:?})", r.as_ref().err());
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        check_branch_after(&vm, &held, &base, &log, cut, &ctx);
        n += 1;
    }
}

/// A transient error at each step of the delete of `first` above the
/// branch point `a`, while writers write: refused cleanly or left pending;
/// the retry on the attached VM finishes it (also the re-pointing of the
/// other branch after a live merge that succeeded), and everything holds.
#[test]
fn transient_error_then_retry_of_a_live_delete_above_a_branch_point() {
    transient_above_a_branch_point(false);
}

#[test]
fn transient_error_then_retry_of_a_live_delete_above_a_branch_point_on_vhd() {
    transient_above_a_branch_point(true);
}

fn transient_above_a_branch_point(vhd: bool) {
    let mut n = 0u64;
    loop {
        let t = support::fast_tempdir();
        let (dir, br) = branch_as(t.path(), 1, true, 12, vhd);
        let Branch {
            mut vm,
            mut disks,
            clock,
            writers,
            held,
            base,
            ..
        } = br;
        faults::arm_transient(n, Transient::Eio);
        let r = vm.delete("first", false, &mut NoHooks);
        let seen = faults::disarm();
        let ctx = format!("fail at {n} of {seen} ({:?})", r.as_ref().err());
        if r.is_err() || vm.find("first").is_ok() {
            let retry = vm.delete("first", false, &mut NoHooks);
            // An error of the VM file's last sync can come after the
            // commit landed: then nothing is left to delete.
            let retry = match retry {
                Err(e) if e.kind() == ErrorKind::NotFound && r.is_err() => Ok(()),
                other => other,
            };
            if let Err(e) = retry {
                // A failed sync poisons the file it hit: the hypervisor
                // opens the VM again, and the reopen finishes the delete.
                assert_eq!(e.kind(), ErrorKind::Io, "{ctx}: retry: {e}");
                let log = writers.finish();
                drop(disks);
                drop(vm);
                vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                disks = vec![vm.disk(0).unwrap()];
                assert!(vm.find("first").is_err(), "{ctx}: not finished");
                let cut = clock.fetch_add(1, Ordering::SeqCst);
                drop(disks);
                vm.detach().unwrap();
                check_branch_after(&vm, &held, &base, &log, cut, &ctx);
                n += 1;
                continue;
            }
        }
        assert!(vm.find("first").is_err(), "{ctx}: not deleted");
        let_write(&clock, 12);
        let log = writers.finish();
        assert!(log.error.is_none(), "{ctx}: the guest saw {:?}", log.error);
        for (d, disk) in disks.iter().enumerate() {
            let units = live_units(disk);
            for u in 0..UNITS {
                assert_eq!(
                    decode(d, u, &units[u as usize], &ctx),
                    current_seq(&log, &base, d, u),
                    "{ctx}: live disk {d} unit {u}"
                );
            }
        }
        let cut = clock.fetch_add(1, Ordering::SeqCst);
        drop(disks);
        vm.detach().unwrap();
        // A delete done but for its clean-up (a failure after the commit
        // is a warning), or whose commit failed to save (an error), leaves
        // its journal to the next operation.
        if dir.join("journal.json").exists() {
            assert!(
                r.is_err() || !vm.take_warnings().is_empty(),
                "{ctx}: journal left, no warning"
            );
            vm.reconcile()
                .unwrap_or_else(|e| panic!("{ctx}: finishing the clean-up: {e}"));
        }
        check_branch_after(&vm, &held, &base, &log, cut, &ctx);
        drop(vm);
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        check_branch_after(&vm, &held, &base, &log, cut, &ctx);
        if n >= seen {
            break;
        }
        n += 1;
    }
}

/// A disk of the other branch held by someone else refuses the delete
/// above the branch point with `Busy` naming it, changing nothing; once it
/// is free, the delete goes through.
#[test]
fn a_held_branch_disk_refuses_the_delete_above_a_branch_point() {
    let t = support::tempdir();
    let (dir, br) = branch(t.path(), 1, true, 12);
    let Branch {
        mut vm,
        disks,
        clock,
        writers,
        held,
        base,
        ..
    } = br;
    let b = vm.find("b").unwrap().clone();
    let before = std::fs::read(dir.join("vm.json")).unwrap();
    let holder = Disk::open(&b.disks[0], OpenMode::ReadOnly).unwrap();
    let e = vm.delete("first", false, &mut NoHooks).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let name = b.disks[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(e.to_string().contains(&name), "{e}");
    assert_eq!(std::fs::read(dir.join("vm.json")).unwrap(), before);
    assert!(!dir.join("journal.json").exists());
    drop(holder);
    vm.delete("first", false, &mut NoHooks).unwrap();
    let_write(&clock, 12);
    let log = writers.finish();
    assert!(log.error.is_none(), "the guest saw {:?}", log.error);
    let cut = clock.fetch_add(1, Ordering::SeqCst);
    drop(disks);
    vm.detach().unwrap();
    check_branch_after(&vm, &held, &base, &log, cut, "after the retry");
    assert!(vm.find("first").is_err());
}

// -------------------------------------------------------- transient errors

/// At most this many fault points per sweep: the events of one delete,
/// sampled evenly (the first and the last always among them).
const TRANSIENT_POINTS: u64 = 14;
/// The last events of a delete, always tried (see [`transient_sweep`]).
const TAIL_POINTS: u64 = 6;

/// A storage error that heals: the error event `i` of `n` injects (EIO
/// and ENOSPC in turn).
fn transient_kind(i: usize) -> Transient {
    if i % 2 == 0 {
        Transient::Eio
    } else {
        Transient::NoSpace
    }
}

/// What [`live_three`] sets up: (dir, vm, handles, clock, writers, the
/// stamped checkpoints).
type LiveThree = (
    PathBuf,
    Vm,
    Vec<Arc<LiveDisk>>,
    Arc<AtomicU64>,
    Writers,
    Vec<(String, u64, u64)>,
);

/// A VM with checkpoints first, a, b taken while writers write.
fn live_three(root: &Path) -> LiveThree {
    let dir = build(root, 2, CheckpointType::Standard);
    let mut vm = Vm::open(&dir).unwrap();
    let disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 4, &clock);
    let mut made = Vec::new();
    for name in ["first", "a", "b"] {
        let_write(&clock, 12);
        made.push(stamped(&mut vm, &clock, name));
    }
    let_write(&clock, 12);
    (dir, vm, disks, clock, writers, made)
}

/// Whether `e` is the refusal of a handle whose sync failed (a failed
/// sync poisons the live handle it hit, as on any disk: nothing written
/// since the last good flush can be claimed durable; reopening recovers).
fn poisoned(e: &ckpt::Error) -> bool {
    e.kind() == ErrorKind::Io && e.to_string().contains("earlier sync")
}

/// A live delete of `victim` ("a": a middle checkpoint, "b": the current
/// state's parent) whose storage fails once, at event N of the deleting
/// thread (EIO or ENOSPC in turn), then works again, while writers write
/// and flush through the live handles; N runs over the delete's events,
/// sampled evenly (at most TRANSIENT_POINTS, the first and the last
/// TAIL_POINTS always).
///
/// The delete returns Ok (the tree is then right) or the injected error.
/// After an error the delete is retried: with `reopen == false` on the
/// same handle, in the same process, while the writers go on, and it
/// succeeds; only when the failed event was a sync of a live handle (the
/// handle is poisoned, see [`poisoned`]) is the retry refused, with that
/// error and nothing changed, and the guest's flushes fail from then on;
/// then, as with `reopen == true` at once: the writers stop, the VM is
/// dropped and opened again (every checkpoint intact, every flush that
/// returned Ok present), attached again, and the retry succeeds. At the
/// end every unit is written once more, and every remaining checkpoint
/// holds what it held at its creation, the current state every write
/// (libckpt and libvhdi, live and from the files, reopened).
fn transient_sweep(victim: &str, reopen: bool) {
    let total = {
        let t = support::fast_tempdir();
        let (_, mut vm, disks, _, writers, _) = live_three(t.path());
        faults::arm(u64::MAX, Cut::Clean);
        let r = vm.delete(victim, false, &mut NoHooks);
        let total = faults::disarm();
        r.unwrap();
        let log = writers.finish();
        assert!(log.error.is_none(), "{:?}", log.error);
        drop(disks);
        total
    };
    assert!(total > 5, "{total} events");
    // The commit and its tidy-up are the last events, and a run's count
    // varies by one or two: the last few are always tried, with each error.
    let sampled = support::ops::sample(total, TRANSIENT_POINTS);
    let tail = total.saturating_sub(TAIL_POINTS)..total;
    let mut points: Vec<(u64, Transient)> = sampled
        .iter()
        .enumerate()
        .filter(|(_, n)| !tail.contains(n))
        .map(|(i, &n)| (n, transient_kind(i)))
        .collect();
    for n in tail {
        points.extend([(n, Transient::Eio), (n, Transient::NoSpace)]);
    }
    let mut refused = 0;
    for &(n, kind) in &points {
        let t = support::fast_tempdir();
        let (dir, mut vm, mut disks, clock, writers, mut made) = live_three(t.path());
        faults::arm_transient(n, kind);
        let r = vm.delete(victim, false, &mut NoHooks);
        faults::disarm();
        let mut ctx = format!(
            "{victim} reopen={reopen}: {kind:?} at {n} of {total} ({:?})",
            r.as_ref().err()
        );
        let_write(&clock, 12);
        let mut writers = Some(writers);
        let mut log = None;
        if let Err(e) = &r {
            let want = match kind {
                Transient::Eio => ErrorKind::Io,
                Transient::NoSpace => ErrorKind::NoSpace,
            };
            // Or the refusal of a handle an injected sync error poisoned
            // (the frozen top's seal, retried before the merge opens it).
            assert!(
                e.kind() == want || poisoned(e),
                "{ctx}: not the injected error: {e}"
            );
            // A switch that could not be undone says so: the VM is to be
            // detached and opened again (the handles keep refusing flushes).
            let mut again = reopen || e.to_string().contains("could not be switched back");
            if again && !reopen {
                refused += 1;
            }
            if !again && vm.find(victim).is_ok() {
                if let Err(e) = vm.delete(victim, false, &mut NoHooks) {
                    assert!(poisoned(&e), "{ctx}: the retry on the same handle: {e}");
                    ctx = format!("{ctx}; retry refused: {e}");
                    refused += 1;
                    again = true;
                }
            }
            if again {
                let mut l = writers.take().unwrap().finish();
                let cut = clock.fetch_add(1, Ordering::SeqCst);
                // The guest is told when a failed sync poisoned its handle.
                if let Some(e) = l.error.take() {
                    assert!(e.contains("earlier sync"), "{ctx}: the guest saw {e}");
                }
                drop(disks);
                drop(vm);
                vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
                for (name, begin, end) in &made {
                    let Ok(c) = vm.find(name) else {
                        assert_eq!(name, victim, "{ctx}: {name} lost");
                        continue;
                    };
                    for (d, p) in c.disks.iter().enumerate() {
                        check_frozen(&l, d, &read_units(p), *begin, *end, &ctx);
                    }
                }
                for (d, p) in vm.data().current.disks.iter().enumerate() {
                    let units = read_units(p);
                    for u in 0..UNITS {
                        let seq = decode(d, u, &units[u as usize], &ctx);
                        let want = l.flushed_seq(d, u, cut);
                        assert!(
                            seq >= want,
                            "{ctx}: disk {d} unit {u}: {seq} < flushed {want}"
                        );
                    }
                }
                disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
                if vm.find(victim).is_ok() {
                    vm.delete(victim, false, &mut NoHooks)
                        .unwrap_or_else(|e| panic!("{ctx}: retry after the reopen: {e}"));
                }
                log = Some(l);
            }
        }
        assert!(vm.find(victim).is_err(), "{ctx}: {victim} still there");
        if let Some(w) = writers {
            let_write(&clock, 12);
            log = Some(w.finish());
        }
        let log = log.unwrap();
        assert!(log.error.is_none(), "{ctx}: the guest saw {:?}", log.error);
        // A delete done but for its clean-up (a failure after the commit
        // is a warning), or whose commit failed to save (an error), leaves
        // its journal to the next operation.
        if dir.join("journal.json").exists() {
            assert!(
                r.is_err() || !vm.take_warnings().is_empty(),
                "{ctx}: journal left, no warning"
            );
            vm.reconcile()
                .unwrap_or_else(|e| panic!("{ctx}: finishing the clean-up: {e}"));
        }
        made.retain(|m| m.0 != victim);
        check_all(vm, disks, &log, &made);
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: final reopen: {e}"));
        let visible = vm.data().checkpoints.iter().filter(|c| !c.hidden).count();
        assert_eq!(visible, made.len(), "{ctx}");
        for (d, p) in vm.data().current.disks.iter().enumerate() {
            let units = read_units(p);
            for u in 0..UNITS {
                let seq = decode(d, u, &units[u as usize], &ctx);
                assert_eq!(
                    seq,
                    last_seq(&log.recs, d, u),
                    "{ctx}: reopened: disk {d} unit {u}"
                );
            }
        }
    }
    eprintln!(
        "{victim} reopen={reopen}: {total} events, {} points, {refused} same-handle retries \
         refused (a poisoned handle)",
        points.len()
    );
}

#[test]
fn transient_error_then_retry_of_a_live_delete_of_a_middle_checkpoint() {
    transient_sweep("a", false);
}

#[test]
fn transient_error_then_retry_of_a_live_delete_of_the_current_parent() {
    transient_sweep("b", false);
}

#[test]
fn transient_error_then_reopen_and_retry_of_a_live_delete_of_a_middle_checkpoint() {
    transient_sweep("a", true);
}

#[test]
fn transient_error_then_reopen_and_retry_of_a_live_delete_of_the_current_parent() {
    transient_sweep("b", true);
}
