//! Export of the current state of an attached VM (`Vm::export(None, …)`
//! while writer threads keep writing self-describing units through its
//! live handles): a temporary checkpoint taken live, its disks flattened,
//! then merged back live. The exported disks, read by QEMU (`qemu-img
//! convert -O raw`) and by libckpt, must hold one consistent cut: per disk
//! a prefix of its writer's sequence, all disks at one instant between the
//! export's call and its return. Afterwards the tree has the same
//! checkpoints and the current state every write. Also: a cancel half way
//! then a retry, refusals that change nothing, and a crash cut at every
//! write, flush and unlink of the exporting thread (`ckpt::io::faults`,
//! armed on the main thread only).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use ckpt::checkpoint::{CheckpointType, Hooks, Vm, VmSpec, VmState, EXPORT_CHECKPOINT_NAME};
use ckpt::io::{faults, Cut};
use ckpt::{CreateOptions, Disk, ErrorKind, LiveDisk};

include!("support/live_units.rs");

// ------------------------------------------------------------------ setup

/// Hooks that record the calls, cancel at progress call `cancel_at` and
/// fail the quiesce when `refuse` is set.
#[derive(Default)]
struct Recorder {
    calls: Vec<&'static str>,
    progress: u64,
    last: (u64, u64),
    cancel_at: Option<u64>,
    refuse: bool,
}

impl Hooks for Recorder {
    fn quiesce(&mut self) -> Result<(), String> {
        self.calls.push("quiesce");
        if self.refuse {
            Err("the guest agent does not answer".into())
        } else {
            Ok(())
        }
    }
    fn thaw(&mut self) {
        self.calls.push("thaw");
    }
    fn save_memory(&mut self, _out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        self.calls.push("save_memory");
        Ok(false)
    }
    fn resume(&mut self) {
        self.calls.push("resume");
    }
    fn progress(&mut self, done: u64, total: u64) -> bool {
        self.progress += 1;
        self.last = (done, total);
        self.cancel_at != Some(self.progress)
    }
}

/// Let the writers write `n` more units.
fn let_write(clock: &AtomicU64, n: u64) {
    let until = clock.load(Ordering::SeqCst) + 2 * n;
    while clock.load(Ordering::SeqCst) < until {
        thread::yield_now();
    }
}

/// The visible checkpoints: (id, name), in tree order.
fn visible(vm: &Vm) -> Vec<(String, String)> {
    vm.data()
        .checkpoints
        .iter()
        .filter(|c| !c.hidden)
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect()
}

/// The units of an exported VHDX as QEMU reads them (`qemu-img convert -O
/// raw` into `scratch`).
fn qemu_units(vhdx: &Path, scratch: &Path) -> Vec<Vec<u8>> {
    let raw = scratch.join(format!(
        "{}.raw",
        vhdx.file_name().unwrap().to_string_lossy()
    ));
    support::qemu_convert_raw(vhdx, &raw);
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    assert_eq!(bytes.len() as u64, SIZE, "{}", vhdx.display());
    (0..UNITS)
        .map(|u| {
            let at = unit_offset(u) as usize;
            bytes[at..at + UNIT].to_vec()
        })
        .collect()
}

/// `disks[d]` (the units of disk `d` of one export) is one consistent cut
/// of the writers' log: per disk the state after a prefix of its writer's
/// writes, and one instant `t` for all disks with `begin < t < end` (the
/// export's stamps): every write in a prefix started before `t`, the first
/// write left out ended after it.
fn check_cut(log: &Log, disks: &[Vec<Vec<u8>>], begin: u64, end: u64, what: &str) {
    let mut latest_start = begin;
    let mut earliest_end = end;
    for (d, units) in disks.iter().enumerate() {
        let seqs: Vec<u64> = (0..UNITS)
            .map(|u| decode(d, u, &units[u as usize], what))
            .collect();
        let recs: Vec<&Rec> = log.recs.iter().filter(|r| r.disk == d).collect();
        // The prefix: up to the last write the export holds.
        let m = (0..UNITS)
            .filter(|&u| seqs[u as usize] > 0)
            .map(|u| {
                recs.iter()
                    .position(|r| r.unit == u && r.seq == seqs[u as usize])
                    .unwrap_or_else(|| panic!("{what}: disk {d} unit {u}: a write never made"))
                    + 1
            })
            .max()
            .unwrap_or(0);
        let mut state = vec![0u64; UNITS as usize];
        for r in &recs[..m] {
            state[r.unit as usize] = r.seq;
        }
        assert_eq!(
            state, seqs,
            "{what}: disk {d} is not a prefix of its writer's writes (cut after write {m})"
        );
        if m > 0 {
            latest_start = latest_start.max(recs[m - 1].start);
        }
        if let Some(next) = recs.get(m) {
            earliest_end = earliest_end.min(next.end);
        }
    }
    assert!(
        latest_start < earliest_end,
        "{what}: no one instant in ({begin}, {end}) gives every disk's cut: a write \
         started at {latest_start} is in, one that ended at {earliest_end} is out"
    );
}

/// The units of export `files` (disks first), by libckpt and — when QEMU
/// is there — checked to read the same through QEMU.
fn export_units(files: &[PathBuf], n: usize, scratch: &Path, what: &str) -> Vec<Vec<Vec<u8>>> {
    let qemu = support::have_qemu();
    if !qemu {
        support::missing("qemu-img");
    }
    files[..n]
        .iter()
        .map(|f| {
            let ours = read_units(f);
            if qemu {
                assert_eq!(
                    qemu_units(f, scratch),
                    ours,
                    "{what}: QEMU reads {f:?} otherwise"
                );
            }
            ours
        })
        .collect()
}

/// The files of an export of a 2-disk VM without memory state.
fn assert_export_files(files: &[PathBuf], dest: &Path) {
    let dest = std::fs::canonicalize(dest).unwrap();
    let want: Vec<PathBuf> = ["disk0.vhdx", "disk1.vhdx", "config.json"]
        .iter()
        .map(|n| dest.join(n))
        .collect();
    assert_eq!(files, want);
    for f in files {
        assert!(f.is_file(), "{}", f.display());
    }
    assert!(!dest.join("memory.vmrs").exists());
}

/// After the writers stopped: the current state holds every write, live
/// and, once detached and reopened, from its files; the reopened VM has
/// exactly the checkpoints `ids` (the temporary one merged away), no
/// journal and no strays.
fn check_after(mut vm: Vm, disks: Vec<Arc<LiveDisk>>, log: &Log, ids: &[(String, String)]) {
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
    let dir = vm.dir().to_path_buf();
    drop(vm);
    let mut vm = Vm::open(&dir).unwrap();
    assert!(!dir.join("journal.json").exists());
    let all: Vec<(String, String)> = vm
        .data()
        .checkpoints
        .iter()
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    assert_eq!(all, ids, "the reopened tree (hidden nodes included)");
    for (d, p) in vm.data().current.disks.iter().enumerate() {
        let units = read_units(p);
        for u in 0..UNITS {
            assert_eq!(
                decode(d, u, &units[u as usize], "current"),
                last_seq(&log.recs, d, u),
                "current disk {d} unit {u}"
            );
        }
    }
    let strays = vm.strays().unwrap();
    assert!(strays.is_empty(), "strays {strays:?}");
    let _ = vm.take_warnings();
}

// ------------------------------------------------------------------ tests

#[test]
fn export_of_the_running_state_is_one_instant_while_writers_write() {
    let t = support::tempdir();
    let dir = build(t.path(), 2, CheckpointType::Production);
    let mut vm = Vm::open(&dir).unwrap();
    vm.set_state(VmState::Running).unwrap();
    let disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 4, &clock);
    let_write(&clock, 200);
    let a_begin = clock.fetch_add(1, Ordering::SeqCst);
    vm.create_checkpoint("a", None, &mut Recorder::default())
        .unwrap();
    let a_end = clock.fetch_add(1, Ordering::SeqCst);
    let a = vm.find("a").unwrap().clone();
    let ids = visible(&vm);
    let depth = disks[0].chain().len();
    let mut exports = Vec::new();
    for k in 0..3 {
        let_write(&clock, 200);
        let dest = t.path().join(format!("export{k}"));
        let mut hooks = Recorder::default();
        let begin = clock.fetch_add(1, Ordering::SeqCst);
        let files = vm.export(None, &dest, &mut hooks).unwrap();
        let end = clock.fetch_add(1, Ordering::SeqCst);
        // Production semantics, no memory state.
        assert_eq!(hooks.calls, ["quiesce", "thaw"], "export {k}");
        assert!(hooks.progress > 0, "export {k}: no progress");
        assert_eq!(
            hooks.last.0, hooks.last.1,
            "export {k}: progress ends at the total"
        );
        assert_export_files(&files, &dest);
        // The tree: the same checkpoints; the temporary one is no
        // checkpoint anyone sees.
        assert_eq!(visible(&vm), ids, "export {k}");
        assert!(!dir.join("journal.json").exists(), "export {k}");
        let e = vm.find(EXPORT_CHECKPOINT_NAME).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(vm.data().current_checkpoint().unwrap().id, a.id);
        assert!(vm.data().checkpoints.iter().filter(|c| c.hidden).count() <= 1);
        assert!(vm.take_warnings().is_empty(), "export {k}");
        // Export after export, the live chain does not grow.
        assert!(
            disks[0].chain().len() <= depth + 1,
            "export {k}: chain grows"
        );
        exports.push((files, begin, end));
    }
    let_write(&clock, 200);
    let log = writers.finish();
    for (k, (files, begin, end)) in exports.iter().enumerate() {
        let what = format!("export {k}");
        let units = export_units(files, 2, t.path(), &what);
        check_cut(&log, &units, *begin, *end, &what);
    }
    // "a" is untouched by the temporary checkpoints above it.
    for (d, p) in a.disks.iter().enumerate() {
        let units = read_units(p);
        for u in 0..UNITS {
            let seq = decode(d, u, &units[u as usize], "a");
            let (lo, hi) = allowed(&log.recs, d, u, a_begin, a_end);
            assert!((lo..=hi).contains(&seq), "a: disk {d} unit {u}: {seq}");
        }
    }
    check_after(vm, disks, &log, &ids);
}

#[test]
fn refusals_change_nothing_and_a_cancel_then_a_retry_works() {
    let t = support::tempdir();
    let dir = build(t.path(), 2, CheckpointType::ProductionOnly);
    let mut vm = Vm::open(&dir).unwrap();
    vm.set_state(VmState::Running).unwrap();
    let disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 4, &clock);
    let_write(&clock, 200);
    let vm_json = || std::fs::read(dir.join("vm.json")).unwrap();
    let before = vm_json();
    let tops: Vec<Option<PathBuf>> = disks.iter().map(|d| d.path()).collect();
    // A folder that is not empty: refused before anything.
    let full = t.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let mut hooks = Recorder::default();
    let e = vm.export(None, &full, &mut hooks).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(hooks.calls.is_empty(), "{:?}", hooks.calls);
    // Production-only and the quiesce fails: refused, thawed never.
    let dest = t.path().join("export");
    let mut hooks = Recorder {
        refuse: true,
        ..Default::default()
    };
    let e = vm.export(None, &dest, &mut hooks).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("quiesce failed"), "{e}");
    assert_eq!(hooks.calls, ["quiesce"]);
    assert!(!dest.exists());
    assert_eq!(vm_json(), before, "a refusal changed vm.json");
    assert!(!dir.join("journal.json").exists());
    let now: Vec<Option<PathBuf>> = disks.iter().map(|d| d.path()).collect();
    assert_eq!(now, tops, "a refusal switched the live disks");
    // Production: a failed quiesce gives a crash-consistent export, said.
    let mut s = vm.data().settings.clone();
    s.checkpoint_type = CheckpointType::Production;
    vm.set_settings(s).unwrap();
    let ids = visible(&vm);
    let_write(&clock, 100);
    // Cancelled half way through the copy: no export files, no
    // temporary checkpoint, the same tree.
    let mut hooks = Recorder {
        cancel_at: Some(2),
        refuse: true,
        ..Default::default()
    };
    let e = vm.export(None, &dest, &mut hooks).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert_eq!(hooks.progress, 2, "cancelled at the second progress call");
    assert_eq!(hooks.calls, ["quiesce"]);
    let left: Vec<PathBuf> = std::fs::read_dir(&dest)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a cancelled export left {left:?}");
    assert_eq!(visible(&vm), ids);
    assert!(vm.find(EXPORT_CHECKPOINT_NAME).is_err());
    assert!(!dir.join("journal.json").exists());
    let w = vm.take_warnings();
    assert!(
        w.iter().any(|w| w.contains("crash-consistent")),
        "no warning says the copy is crash-consistent: {w:?}"
    );
    // The retry, into the same folder.
    let_write(&clock, 200);
    let mut hooks = Recorder::default();
    let begin = clock.fetch_add(1, Ordering::SeqCst);
    let files = vm.export(None, &dest, &mut hooks).unwrap();
    let end = clock.fetch_add(1, Ordering::SeqCst);
    assert_eq!(hooks.calls, ["quiesce", "thaw"]);
    assert_export_files(&files, &dest);
    assert_eq!(visible(&vm), ids);
    let_write(&clock, 200);
    let log = writers.finish();
    let units = export_units(&files, 2, t.path(), "retry");
    check_cut(&log, &units, begin, end, "retry");
    check_after(vm, disks, &log, &ids);
}

/// An export of the running state cut at every write, flush and unlink
/// point of the exporting thread (a write at every other one torn) while
/// writers write: the VM reopens reconciled,
/// with no temporary checkpoint (visible or hidden), checkpoint "first"
/// intact, every write flushed before the cut present; an export folder
/// left with files holds a whole consistent export.
#[test]
fn crash_at_every_step_of_an_export_of_the_running_state() {
    let mut events = None;
    let mut n = 0u64;
    loop {
        if events.is_some_and(|e| n >= e) {
            break;
        }
        let t = support::fast_tempdir();
        let dir = build(t.path(), 2, CheckpointType::Production);
        let mut vm = Vm::open(&dir).unwrap();
        let disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
        let clock = Arc::new(AtomicU64::new(0));
        let writers = Writers::start(&disks, 4, &clock);
        let_write(&clock, 12);
        let f_begin = clock.fetch_add(1, Ordering::SeqCst);
        vm.create_checkpoint("first", None, &mut Recorder::default())
            .unwrap();
        let f_end = clock.fetch_add(1, Ordering::SeqCst);
        let ids = visible(&vm);
        let_write(&clock, 12);
        let dest = t.path().join("export");
        // Every event is cut; a write at every odd one lands torn.
        let how = if n % 2 == 1 { Cut::Torn } else { Cut::Clean };
        faults::arm(events.map_or(u64::MAX, |_| n), how);
        let begin = clock.fetch_add(1, Ordering::SeqCst);
        let r = vm.export(None, &dest, &mut Recorder::default());
        let end = clock.fetch_add(1, Ordering::SeqCst);
        let seen = faults::events();
        if events.is_none() {
            faults::disarm();
            r.unwrap();
            events = Some(seen);
            assert!(seen > 10, "{seen} events");
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
        assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
        assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
        let all: Vec<(String, String)> = vm
            .data()
            .checkpoints
            .iter()
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
        assert_eq!(all, ids, "{ctx}: the tree");
        let first = vm.find("first").unwrap();
        for (d, p) in first.disks.iter().enumerate() {
            let units = read_units(p);
            for u in 0..UNITS {
                let seq = decode(d, u, &units[u as usize], &ctx);
                let (lo, hi) = allowed(&log.recs, d, u, f_begin, f_end);
                assert!((lo..=hi).contains(&seq), "{ctx}: first disk {d} unit {u}");
            }
        }
        for (d, p) in vm.data().current.disks.iter().enumerate() {
            let units = read_units(p);
            for u in 0..UNITS {
                let seq = decode(d, u, &units[u as usize], &ctx);
                let want = log.flushed_seq(d, u, cut);
                assert!(
                    seq >= want,
                    "{ctx}: disk {d} unit {u}: seq {seq}, flushed {want}"
                );
            }
        }
        // The export: none of it, or all of it and one instant.
        let left: Vec<PathBuf> = std::fs::read_dir(&dest)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            let mut names: Vec<String> = left
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(
                names,
                ["config.json", "disk0.vhdx", "disk1.vhdx"],
                "{ctx}: a partial export"
            );
            let units: Vec<Vec<Vec<u8>>> = ["disk0.vhdx", "disk1.vhdx"]
                .iter()
                .map(|f| read_units(&dest.join(f)))
                .collect();
            check_cut(&log, &units, begin, end, &ctx);
        }
        drop(vm);
        n += 1;
    }
}
