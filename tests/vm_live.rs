//! An attached VM (`Vm::disk`): writer threads keep writing through the
//! VM's live handles while checkpoints are created (standard and
//! production), renamed, listed, applied, reverted and deleted.
//!
//! Every write is a self-describing 4 KiB unit (unit index, sequence
//! number, a pattern of both), stamped with a logical clock before it
//! starts and after it returns; each create is stamped the same way. A
//! checkpoint's disks must hold, for every unit, a value between the last
//! write that returned before the create began and the last one that
//! started before it returned; read by libckpt and by libvhdi (`pyvhdi`
//! with `set_parent`). Crash and fault cases arm `ckpt::io::faults` on the
//! main thread only (the writers are not armed).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use ckpt::checkpoint::{CheckpointType, Hooks, NoHooks, Vm, VmSpec, VmState};
use ckpt::io::{faults, Cut, Transient};
use ckpt::{CreateOptions, Disk, ErrorKind, LiveDisk, OpenMode};

include!("support/live_units.rs");

/// Hooks that record their calls, each with the top file of disk 0 at
/// that moment (the order around the switch).
struct Recording {
    disk: Arc<LiveDisk>,
    calls: Arc<Mutex<Vec<(&'static str, PathBuf)>>>,
}

impl Recording {
    fn note(&self, what: &'static str) {
        self.calls
            .lock()
            .unwrap()
            .push((what, self.disk.path().unwrap()));
    }
}

impl Hooks for Recording {
    fn quiesce(&mut self) -> Result<(), String> {
        self.note("quiesce");
        Ok(())
    }
    fn thaw(&mut self) {
        self.note("thaw");
    }
    fn save_memory(&mut self, out: &mut dyn Write) -> std::io::Result<bool> {
        self.note("save_memory");
        out.write_all(&[9u8; 512])?;
        Ok(true)
    }
    fn resume(&mut self) {
        self.note("resume");
    }
}

// ------------------------------------------------------------------ tests

/// A create: (name, begin, end, the checkpoint's disks with their hashes).
type Made = (String, u64, u64, Vec<(PathBuf, u64)>);

#[test]
fn attach_gives_one_handle_per_disk_and_detach_waits_for_holders() {
    let t = support::tempdir();
    let dir = build(t.path(), 2, CheckpointType::Standard);
    let mut vm = Vm::open(&dir).unwrap();
    assert!(!vm.attached());
    let e = vm.disk(2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(!vm.attached(), "a bad index attaches nothing");
    let a = vm.disk(0).unwrap();
    assert!(vm.attached());
    assert!(Arc::ptr_eq(&a, &vm.disk(0).unwrap()));
    let b = vm.disk(1).unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    // Another handle on a current disk is refused while attached.
    let cur = vm.data().current.disks[0].clone();
    let e = Disk::open(&cur, OpenMode::ReadOnly).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    a.write_at(&unit_bytes(0, 1, 1), unit_offset(1)).unwrap();
    let e = vm.detach().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(vm.attached(), "a refused detach changes nothing");
    drop((a, b));
    vm.detach().unwrap();
    assert!(!vm.attached());
    assert_eq!(decode(0, 1, &read_units(&cur)[1], "after detach"), 1);
    // Closing the VM detaches too.
    vm.disk(1).unwrap();
    drop(vm);
    Disk::open(&cur, OpenMode::ReadWrite)
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn creates_while_writers_write_then_rename_list_apply_revert() {
    let t = support::tempdir();
    let dir = build(t.path(), 2, CheckpointType::Standard);
    let mut vm = Vm::open(&dir).unwrap();
    vm.set_state(VmState::Running).unwrap();
    let disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 16, &clock);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut made: Vec<Made> = Vec::new();
    for k in 0..5 {
        let kind = if k % 2 == 0 {
            CheckpointType::Standard
        } else {
            CheckpointType::Production
        };
        let mut s = vm.data().settings.clone();
        s.checkpoint_type = kind;
        vm.set_settings(s).unwrap();
        // Let the writers get ahead.
        let until = clock.load(Ordering::SeqCst) + 400;
        while clock.load(Ordering::SeqCst) < until {
            thread::yield_now();
        }
        calls.lock().unwrap().clear();
        let mut hooks = Recording {
            disk: disks[0].clone(),
            calls: calls.clone(),
        };
        let top_before = disks[0].path().unwrap();
        let begin = clock.fetch_add(1, Ordering::SeqCst);
        let ck = vm
            .create_checkpoint(&format!("c{k}"), None, &mut hooks)
            .unwrap();
        let end = clock.fetch_add(1, Ordering::SeqCst);
        let top_after = disks[0].path().unwrap();
        assert_eq!(ck.disks[0], top_before, "the frozen layer is the old top");
        assert_eq!(vm.data().current.disks[0], top_after);
        let c = calls.lock().unwrap().clone();
        let names: Vec<&str> = c.iter().map(|x| x.0).collect();
        match kind {
            CheckpointType::Standard => assert_eq!(names, ["save_memory", "resume"]),
            _ => assert_eq!(names, ["quiesce", "thaw"]),
        }
        // The switch is between the two calls.
        assert_eq!(c[0].1, top_before, "{names:?}: before the switch");
        assert_eq!(c[1].1, top_after, "{names:?}: after the switch");
        let frozen = ck.disks.iter().map(|p| (p.clone(), file_hash(p))).collect();
        made.push((ck.name.clone(), begin, end, frozen));
    }
    vm.rename("c2", "middle").unwrap();
    made[2].0 = "middle".into();
    let list = vm.list().unwrap();
    assert_eq!(list.len(), 5);
    assert_eq!(list[2].checkpoint.name, "middle");
    // Export of a checkpoint works while attached, and of the current
    // state too, through a temporary checkpoint merged back live
    // (tests/vm_live_export.rs): the tree keeps its checkpoints.
    let out = t.path().join("export");
    let files = vm.export(Some("c1"), &out, &mut NoHooks).unwrap();
    assert_eq!(
        files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "vhdx"))
            .count(),
        2
    );
    let names: Vec<String> = vm
        .list()
        .unwrap()
        .iter()
        .map(|c| c.checkpoint.name.clone())
        .collect();
    let now = vm
        .export(None, &t.path().join("export2"), &mut NoHooks)
        .unwrap();
    assert_eq!(now.len(), 3, "{now:?}");
    // NoHooks cannot quiesce the running guest: a crash-consistent copy, said.
    let w = vm.take_warnings();
    assert!(w.iter().any(|w| w.contains("crash-consistent")), "{w:?}");
    let visible: Vec<String> = vm
        .list()
        .unwrap()
        .iter()
        .filter(|c| !c.checkpoint.hidden)
        .map(|c| c.checkpoint.name.clone())
        .collect();
    assert_eq!(visible, names);
    assert!(!dir.join("journal.json").exists());
    let log = writers.finish();
    assert!(log.error.is_none(), "a writer failed: {:?}", log.error);
    assert!(log.recs.len() > 200, "writers wrote {}", log.recs.len());
    let py = pyvhdi();
    for (name, begin, end, frozen) in &made {
        let ck = vm.find(name).unwrap().clone();
        if name == "c1" {
            // The export is a flat copy of c1's disks.
            for (d, p) in ck.disks.iter().enumerate() {
                let flat = files
                    .iter()
                    .find(|f| f.file_name().unwrap().to_string_lossy() == format!("disk{d}.vhdx"));
                assert_eq!(read_units(flat.unwrap()), read_units(p), "export disk {d}");
            }
        }
        for (d, (p, h)) in frozen.iter().enumerate() {
            assert_eq!(&ck.disks[d], p);
            assert_eq!(file_hash(p), *h, "{name}: frozen disk {d} changed");
            let ours = read_units(p);
            let theirs = if py { Some(vhdi_units(p)) } else { None };
            for u in 0..UNITS {
                let what = format!("checkpoint {name} disk {d}");
                let seq = decode(d, u, &ours[u as usize], &what);
                let (lo, hi) = allowed(&log.recs, d, u, *begin, *end);
                assert!(
                    (lo..=hi).contains(&seq),
                    "{what} unit {u}: seq {seq} not in {lo}..={hi}"
                );
                if let Some(v) = &theirs {
                    assert_eq!(v[u as usize], ours[u as usize], "{what} unit {u}: libvhdi");
                }
            }
        }
    }
    // The current state holds every write.
    for (d, disk) in disks.iter().enumerate() {
        let units = live_units(disk);
        for u in 0..UNITS {
            let seq = decode(d, u, &units[u as usize], "current");
            assert_eq!(seq, last_seq(&log.recs, d, u), "current disk {d} unit {u}");
        }
    }

    // Apply (the hypervisor stopped the guest): the same handles read c1.
    vm.set_state(VmState::Off).unwrap();
    let old_current = vm.data().current.disks.clone();
    vm.apply("c1", None, &mut NoHooks).unwrap();
    assert!(vm.take_warnings().is_empty());
    for p in &old_current {
        assert!(!p.exists(), "{}: discarded disk left", p.display());
    }
    assert!(vm.data().pending_removals.is_empty());
    let c1 = vm.find("c1").unwrap().clone();
    for (d, disk) in disks.iter().enumerate() {
        assert_eq!(disk.path().unwrap(), vm.data().current.disks[d]);
        assert_eq!(
            live_units(disk),
            read_units(&c1.disks[d]),
            "disk {d} after apply"
        );
    }
    // Write, then revert: the write is gone, the handles read c1 again.
    disks[0]
        .write_at(&unit_bytes(0, 3, 999), unit_offset(3))
        .unwrap();
    let discarded = vm.data().current.disks.clone();
    vm.revert().unwrap();
    assert_eq!(live_units(&disks[0]), read_units(&c1.disks[0]));
    for p in &discarded {
        assert!(!p.exists(), "{}: discarded disk left", p.display());
    }
    // Apply with the current state kept: the capture is a live create
    // (the VM is off), then the handles follow the applied state.
    disks[1]
        .write_at(&unit_bytes(1, 5, 777), unit_offset(5))
        .unwrap();
    let c0 = vm.find("c0").unwrap().clone();
    vm.apply("c0", Some("kept"), &mut NoHooks).unwrap();
    let kept = vm.find("kept").unwrap().clone();
    let k = read_units(&kept.disks[1]);
    assert_eq!(decode(1, 5, &k[5], "kept"), 777);
    for (d, disk) in disks.iter().enumerate() {
        assert_eq!(disk.path().unwrap(), vm.data().current.disks[d]);
        assert_eq!(
            live_units(disk),
            read_units(&c0.disks[d]),
            "disk {d} after apply"
        );
    }
    for (name, _, _, frozen) in &made {
        for (p, h) in frozen {
            assert_eq!(
                file_hash(p),
                *h,
                "{name}: frozen disk changed by apply/revert"
            );
        }
    }
    drop(disks);
    vm.detach().unwrap();
    // The disks live creates made are stamped as this VM's once detached.
    for c in &vm.data().checkpoints {
        for p in c.disks.iter().chain(&vm.data().current.disks) {
            let s = ckpt::checkpoint::owner::stamp_of(p).unwrap();
            assert_eq!(
                s.map(|s| s.folder),
                Some(vm.dir().to_path_buf()),
                "{}",
                p.display()
            );
        }
    }
    drop(vm);
    // Reopened: the tree is the same.
    let vm = Vm::open(&dir).unwrap();
    assert_eq!(vm.list().unwrap().len(), 6);
    assert!(vm.strays().unwrap().is_empty());
    assert!(vm.data().pending_removals.is_empty());
}

#[test]
fn delete_off_the_live_chain_works_on_it_runs_live() {
    let t = support::tempdir();
    let dir = build(t.path(), 2, CheckpointType::Standard);
    let mut vm = Vm::open(&dir).unwrap();
    let d0 = vm.disk(0).unwrap();
    d0.write_at(&unit_bytes(0, 0, 1), 0).unwrap();
    vm.create_checkpoint("a", None, &mut NoHooks).unwrap();
    d0.write_at(&unit_bytes(0, 0, 2), 0).unwrap();
    vm.create_checkpoint("b", None, &mut NoHooks).unwrap();
    vm.apply("a", None, &mut NoHooks).unwrap();
    // b is off the live chains: deleted as offline.
    let b = vm.find("b").unwrap().clone();
    vm.delete("b", false, &mut NoHooks).unwrap();
    assert!(vm.find("b").is_err());
    for p in &b.disks {
        assert!(!p.exists(), "{}: left", p.display());
    }
    // Deleting a merges the live current state into a's disks: done live
    // (the handle switched to a fresh child first), the data kept.
    let a = vm.find("a").unwrap().clone();
    vm.delete("a", false, &mut NoHooks).unwrap();
    assert!(vm.find("a").is_err());
    assert!(!dir.join("journal.json").exists());
    assert_eq!(decode(0, 0, &live_units(&d0)[0], "after live delete"), 1);
    assert_eq!(d0.path().unwrap(), vm.data().current.disks[0]);
    for p in &a.disks {
        assert!(p.exists(), "{}: the merged file is gone", p.display());
    }
    // So is a delete that merges a frozen layer of the live chains.
    vm.create_checkpoint("c", None, &mut NoHooks).unwrap();
    d0.write_at(&unit_bytes(0, 0, 2), 0).unwrap();
    vm.create_checkpoint("d", None, &mut NoHooks).unwrap();
    let d = vm.find("d").unwrap().clone();
    vm.delete("c", false, &mut NoHooks).unwrap();
    assert!(vm.find("c").is_err());
    for p in &d.disks {
        assert!(!p.exists(), "{}: merged, left", p.display());
    }
    assert_eq!(
        decode(0, 0, &read_units(&vm.find("d").unwrap().disks[0])[0], "d"),
        2
    );
    d0.write_at(&unit_bytes(0, 0, 3), 0).unwrap();
    assert_eq!(decode(0, 0, &live_units(&d0)[0], "after delete"), 3);
    drop(d0);
    drop(vm);
    let vm = Vm::open(&dir).unwrap();
    assert_eq!(
        decode(
            0,
            0,
            &read_units(&vm.data().current.disks[0])[0],
            "reopened"
        ),
        3
    );
}

/// A live create cut at every write, flush and unlink of the main thread
/// while writers write: the VM reopens reconciled, the checkpoints before
/// intact, every write flushed before the create began present (in the
/// current state, and in the new checkpoint when it was committed).
#[test]
fn crash_at_every_step_of_a_live_create() {
    crash_live_create(false);
}

/// The same with VHD disks (`.avhd` children).
#[test]
fn crash_at_every_step_of_a_live_create_of_vhd_disks() {
    crash_live_create(true);
}

fn crash_live_create(vhd: bool) {
    let mut events = None;
    let mut n = 0u64;
    loop {
        if events.is_some_and(|e| n >= e) {
            break;
        }
        let t = support::fast_tempdir();
        let (dir, mut vm, disks) = attached_as(t.path(), CheckpointType::Standard, vhd);
        for (d, disk) in disks.iter().enumerate() {
            disk.write_at(&unit_bytes(d, 0, 1), 0).unwrap();
        }
        let first = vm.create_checkpoint("first", None, &mut NoHooks).unwrap();
        let ext = if vhd { "avhd" } else { "avhdx" };
        assert_eq!(vm.data().current.disks[0].extension().unwrap(), ext);
        let kept: Vec<u64> = first.disks.iter().map(|p| file_hash(p)).collect();
        let clock = Arc::new(AtomicU64::new(0));
        let writers = Writers::start(&disks, 4, &clock);
        let until = clock.load(Ordering::SeqCst) + 100;
        while clock.load(Ordering::SeqCst) < until {
            thread::yield_now();
        }
        let begin = clock.fetch_add(1, Ordering::SeqCst);
        faults::arm(events.map_or(u64::MAX, |_| n), Cut::Clean);
        let r = vm.create_checkpoint("c", None, &mut NoHooks);
        let seen = faults::events();
        if events.is_none() {
            faults::disarm();
            r.unwrap();
            events = Some(seen);
            assert!(seen > 5, "{seen} events");
            eprintln!("a live create (vhd: {vhd}): {seen} events");
            let _ = writers.finish();
            continue;
        }
        let log = writers.finish();
        drop(disks);
        // The process "dies": the VM is dropped while every write fails.
        drop(vm);
        faults::disarm();
        let ctx = format!("cut at {n} of {events:?} ({:?})", r.as_ref().err());
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
        assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
        let f = vm.find("first").unwrap();
        for (p, h) in f.disks.iter().zip(&kept) {
            assert_eq!(file_hash(p), *h, "{ctx}: first changed");
        }
        let mut states = vec![vm.data().current.disks.clone()];
        if let Ok(c) = vm.find("c") {
            states.push(c.disks.clone());
        }
        for disks in &states {
            assert_flushed_kept(&log, disks, begin, &ctx);
        }
        n += 1;
    }
}

/// A transient error at each step of a live create: refused cleanly (the
/// handles keep working on the current state) or done; a retry succeeds.
#[test]
fn transient_error_then_retry_of_a_live_create() {
    transient_live_create(false);
}

/// The same with VHD disks.
#[test]
fn transient_error_then_retry_of_a_live_create_of_vhd_disks() {
    transient_live_create(true);
}

fn transient_live_create(vhd: bool) {
    let mut n = 0u64;
    loop {
        let t = support::fast_tempdir();
        let (dir, mut vm, disks) = attached_as(t.path(), CheckpointType::Standard, vhd);
        let mut disks = disks;
        for (d, disk) in disks.iter().enumerate() {
            disk.write_at(&unit_bytes(d, 0, 1), 0).unwrap();
            disk.flush().unwrap();
        }
        faults::arm_transient(n, Transient::Eio);
        let r = vm.create_checkpoint("c", None, &mut NoHooks);
        let seen = faults::disarm();
        let ctx = format!("fail at {n} ({:?})", r.as_ref().err());
        // An error after the commit (ending the journal) is a warning:
        // the create reports success exactly when the checkpoint is taken.
        assert_eq!(r.is_ok(), vm.find("c").is_ok(), "{ctx}");
        if r.is_err() {
            if let Err(e) = vm.create_checkpoint("c", None, &mut NoHooks) {
                // A failed sync poisons the disk it hit (as any disk
                // handle): the retry says so and changes nothing; the
                // hypervisor opens the VM again (the log is replayed) and
                // retries there.
                assert_eq!(e.kind(), ErrorKind::Io, "{ctx}: retry: {e}");
                assert!(e.to_string().contains("earlier sync"), "{ctx}: retry: {e}");
                assert!(vm.find("c").is_err(), "{ctx}");
                drop(disks);
                drop(vm);
                vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
                vm.create_checkpoint("c", None, &mut NoHooks)
                    .unwrap_or_else(|e| panic!("{ctx}: retry after reopen: {e}"));
            }
        }
        for (d, disk) in disks.iter().enumerate() {
            assert_eq!(disk.path().unwrap(), vm.data().current.disks[d], "{ctx}");
            disk.write_at(&unit_bytes(d, 0, 2), 0).unwrap();
            disk.flush().unwrap();
        }
        let c = vm.find("c").unwrap().clone();
        drop(disks);
        drop(vm);
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
        for d in 0..2 {
            let cur = &vm.data().current.disks[d];
            assert_eq!(decode(d, 0, &read_units(cur)[0], &ctx), 2, "{ctx}");
            assert_eq!(decode(d, 0, &read_units(&c.disks[d])[0], &ctx), 1, "{ctx}");
        }
        if n >= seen {
            break;
        }
        n += 1;
    }
}

/// Revert and apply on an attached (stopped) VM cut at every write, flush
/// and unlink: the VM reopens reconciled, the checkpoint intact, the
/// current state the old one or the applied one, never anything else.
#[test]
fn crash_at_every_step_of_a_live_revert_and_apply() {
    for op in ["revert", "apply"] {
        let mut events = None;
        let mut n = 0u64;
        loop {
            if events.is_some_and(|e| n >= e) {
                break;
            }
            let t = support::fast_tempdir();
            let (dir, mut vm, disks) = attached(t.path(), CheckpointType::Standard);
            for (d, disk) in disks.iter().enumerate() {
                disk.write_at(&unit_bytes(d, 0, 1), 0).unwrap();
            }
            let a = vm.create_checkpoint("a", None, &mut NoHooks).unwrap();
            let kept: Vec<u64> = a.disks.iter().map(|p| file_hash(p)).collect();
            for (d, disk) in disks.iter().enumerate() {
                disk.write_at(&unit_bytes(d, 0, 2), 0).unwrap();
                disk.flush().unwrap();
            }
            vm.set_state(VmState::Off).unwrap();
            faults::arm(events.map_or(u64::MAX, |_| n), Cut::Torn);
            let r = match op {
                "revert" => vm.revert(),
                _ => vm.apply("a", Some("b"), &mut NoHooks),
            };
            let seen = faults::events();
            if events.is_none() {
                faults::disarm();
                r.unwrap();
                for (d, disk) in disks.iter().enumerate() {
                    assert_eq!(decode(d, 0, &live_units(disk)[0], op), 1);
                }
                events = Some(seen);
                assert!(seen > 3, "{op}: {seen} events");
                continue;
            }
            drop(disks);
            drop(vm);
            faults::disarm();
            let ctx = format!("{op}: cut at {n} of {events:?} ({:?})", r.as_ref().err());
            let mut vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
            assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
            let a = vm.find("a").unwrap().clone();
            for (p, h) in a.disks.iter().zip(&kept) {
                assert_eq!(file_hash(p), *h, "{ctx}: a changed");
            }
            let disks = [vm.disk(0).unwrap(), vm.disk(1).unwrap()];
            let now: Vec<u64> = disks
                .iter()
                .enumerate()
                .map(|(d, disk)| decode(d, 0, &live_units(disk)[0], &ctx))
                .collect();
            assert!(
                now == [1, 1] || (r.is_err() && now == [2, 2]),
                "{ctx}: current holds {now:?}"
            );
            if let Ok(b) = vm.find("b") {
                for (d, p) in b.disks.iter().enumerate() {
                    assert_eq!(decode(d, 0, &read_units(p)[0], &ctx), 2, "{ctx}: b");
                }
            }
            n += 1;
        }
    }
}

/// A live create cut at every write, flush and unlink of the main thread
/// (the post-pause steps among them: the old tops' flush, the commit, the
/// undo, the old tops' close) while writers write and flush all along: the
/// VM reopens reconciled with its checkpoints intact, and the current state
/// holds every write that a flush returning Ok covered, before the switch
/// or after it (a flush after the switch returns only once the checkpoint
/// is committed, so its writes are in a file the tree names).
#[test]
fn crash_at_every_post_pause_step_keeps_every_returned_flush() {
    let mut events = None;
    let mut n = 0u64;
    loop {
        if events.is_some_and(|e| n >= e) {
            break;
        }
        let t = support::fast_tempdir();
        let (dir, mut vm, disks) = attached(t.path(), CheckpointType::Production);
        let first = vm.create_checkpoint("first", None, &mut NoHooks).unwrap();
        let kept: Vec<u64> = first.disks.iter().map(|p| file_hash(p)).collect();
        let clock = Arc::new(AtomicU64::new(0));
        let writers = Writers::start(&disks, 2, &clock);
        let until = clock.load(Ordering::SeqCst) + 100;
        while clock.load(Ordering::SeqCst) < until {
            thread::yield_now();
        }
        let begin = clock.fetch_add(1, Ordering::SeqCst);
        faults::arm(events.map_or(u64::MAX, |_| n), Cut::Torn);
        let r = vm.create_checkpoint("c", None, &mut NoHooks);
        let seen = faults::events();
        // Writers go on (their flushes wait, pass or fail) for a while.
        let until = clock.load(Ordering::SeqCst) + 100;
        while clock.load(Ordering::SeqCst) < until
            && !writers.handles.iter().all(|h| h.is_finished())
        {
            thread::yield_now();
        }
        if events.is_none() {
            faults::disarm();
            r.unwrap();
            events = Some(seen);
            assert!(seen > 5, "{seen} events");
            let log = writers.finish();
            assert!(log.error.is_none(), "{:?}", log.error);
            continue;
        }
        let log = writers.finish();
        drop(disks);
        drop(vm);
        faults::disarm();
        let ctx = format!("cut at {n} of {events:?} ({:?})", r.as_ref().err());
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
        assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
        let f = vm.find("first").unwrap();
        for (p, h) in f.disks.iter().zip(&kept) {
            assert_eq!(file_hash(p), *h, "{ctx}: first changed");
        }
        assert_flushed_kept(&log, &vm.data().current.disks, u64::MAX, &ctx);
        if let Ok(c) = vm.find("c") {
            assert_flushed_kept(&log, &c.disks, begin, &format!("{ctx}: c"));
        }
        n += 1;
    }
}

/// A transient error at each step of a live create while writers write
/// and flush: a create that fails before its commit is undone under the
/// writers (their waiting flushes then pass on the old disks, or, when the
/// undo itself cannot write, fail, as does every later flush); every write
/// stays readable through the handles; reopened, every flushed write is
/// in the current state, and a retry works.
#[test]
fn transient_error_of_a_live_create_while_writers_flush() {
    let mut n = 0u64;
    loop {
        let t = support::fast_tempdir();
        let (dir, mut vm, disks) = attached(t.path(), CheckpointType::Production);
        let clock = Arc::new(AtomicU64::new(0));
        let writers = Writers::start(&disks, 2, &clock);
        let until = clock.load(Ordering::SeqCst) + 100;
        while clock.load(Ordering::SeqCst) < until {
            thread::yield_now();
        }
        faults::arm_transient(n, Transient::Eio);
        let r = vm.create_checkpoint("c", None, &mut NoHooks);
        let seen = faults::disarm();
        let until = clock.load(Ordering::SeqCst) + 100;
        while clock.load(Ordering::SeqCst) < until
            && !writers.handles.iter().all(|h| h.is_finished())
        {
            thread::yield_now();
        }
        let log = writers.finish();
        let ctx = format!(
            "fail at {n} of {seen} ({:?}; writer {:?})",
            r.as_ref().err(),
            log.error
        );
        let taken = vm.find("c").is_ok();
        assert_eq!(r.is_ok(), taken, "{ctx}: reported {r:?}");
        if log.error.is_some() {
            assert!(
                r.is_err() && !taken,
                "{ctx}: a flush failed on a taken checkpoint"
            );
        }
        for (d, disk) in disks.iter().enumerate() {
            let units = live_units(disk);
            for u in 0..UNITS {
                let seq = decode(d, u, &units[u as usize], &ctx);
                assert_eq!(seq, last_seq(&log.recs, d, u), "{ctx}: disk {d} unit {u}");
            }
            match disk.flush() {
                // Undone or taken: the handle is on the current disk.
                Ok(()) => assert_eq!(disk.path().unwrap(), vm.data().current.disks[d], "{ctx}"),
                // A failed sync poisons the disk it hit (as on any disk
                // handle), and an undo that cannot write leaves the handle
                // refusing flushes: only on a create that is not taken;
                // reopening recovers.
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Io, "{ctx}: a later flush: {e}");
                    assert!(!taken, "{ctx}: a later flush: {e}");
                }
            }
        }
        drop(disks);
        drop(vm);
        let mut vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
        assert_flushed_kept(&log, &vm.data().current.disks, u64::MAX, &ctx);
        if !taken {
            vm.create_checkpoint("c", None, &mut NoHooks)
                .unwrap_or_else(|e| panic!("{ctx}: retry after reopen: {e}"));
        }
        if n >= seen {
            break;
        }
        n += 1;
    }
}

/// A sync that fails while a live create seals the old tops (after the
/// commit: a warning) poisons only that frozen handle, left open
/// read-write below the new child. The checkpoint is taken and the guest
/// goes on; then, without reopening, while writers write and flush:
/// deleting the checkpoint live (the current state's parent: a switch, the
/// seal of the poisoned layer now one further down, a merge into it), or
/// first a second checkpoint and then the first (a merge of a frozen
/// layer into the poisoned one), works; everything flushed is there after
/// a reopen.
#[test]
fn a_failed_seal_then_live_deletes_without_reopening() {
    let mut hits = 0;
    for second in [false, true] {
        let mut n = 0u64;
        loop {
            let t = support::fast_tempdir();
            let (dir, mut vm, disks) = attached(t.path(), CheckpointType::Standard);
            for (d, disk) in disks.iter().enumerate() {
                disk.write_at(&unit_bytes(d, 0, 1), 0).unwrap();
                disk.flush().unwrap();
            }
            let _ = vm.take_warnings();
            faults::arm_transient(n, Transient::Eio);
            let r = vm.create_checkpoint("c", None, &mut NoHooks);
            let seen = faults::disarm();
            let warned = vm
                .take_warnings()
                .iter()
                .any(|w| w.contains("closing a frozen disk"));
            let ctx = format!(
                "second {second}, fail at {n} of {seen} ({:?})",
                r.as_ref().err()
            );
            if r.is_ok() {
                // The frozen layers are sealed (read-only, locked shared) at
                // once or, after a failed seal, when an operation needs them;
                // a reader may then open them, even one whose seal failed in
                // a sync (no warning then) and whose log is read through a
                // replayed view.
                vm.export(Some("c"), &t.path().join("exported"), &mut NoHooks)
                    .unwrap_or_else(|e| panic!("{ctx}: export: {e}"));
                for p in vm.find("c").unwrap().disks.clone() {
                    Disk::open(&p, OpenMode::ReadOnly)
                        .unwrap_or_else(|e| panic!("{ctx}: a reader opens {}: {e}", p.display()));
                }
            }
            if r.is_ok() && warned {
                hits += 1;
                let clock = Arc::new(AtomicU64::new(0));
                let writers = Writers::start(&disks, 3, &clock);
                let until = clock.load(Ordering::SeqCst) + 40;
                while clock.load(Ordering::SeqCst) < until {
                    thread::yield_now();
                }
                if second {
                    vm.create_checkpoint("d", None, &mut NoHooks)
                        .unwrap_or_else(|e| panic!("{ctx}: create d: {e}"));
                }
                vm.delete("c", false, &mut NoHooks)
                    .unwrap_or_else(|e| panic!("{ctx}: live delete: {e}"));
                let until = clock.load(Ordering::SeqCst) + 40;
                while clock.load(Ordering::SeqCst) < until {
                    thread::yield_now();
                }
                let log = writers.finish();
                assert!(log.error.is_none(), "{ctx}: writer: {:?}", log.error);
                assert!(vm.find("c").is_err(), "{ctx}");
                drop(disks);
                drop(vm);
                let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                assert!(vm.strays().unwrap().is_empty(), "{ctx}: strays");
                assert!(!dir.join("journal.json").exists(), "{ctx}: journal left");
                assert_flushed_kept(&log, &vm.data().current.disks, u64::MAX, &ctx);
                if second {
                    let d = vm.find("d").unwrap();
                    for (k, p) in d.disks.iter().enumerate() {
                        let units = read_units(p);
                        assert!(decode(k, 0, &units[0], &ctx) >= 1, "{ctx}: d disk {k}");
                    }
                }
            }
            if n >= seen {
                break;
            }
            n += 1;
        }
    }
    assert!(hits >= 2, "no failed seal was reached ({hits})");
}

#[test]
fn pause_stats_count_each_pause_and_the_wait_for_requests_in_flight() {
    use std::time::Duration;
    let t = support::tempdir();
    let dir = build(t.path(), 2, CheckpointType::Standard);
    let mut vm = Vm::open(&dir).unwrap();
    vm.set_state(VmState::Running).unwrap();
    let disks = [vm.disk(0).unwrap(), vm.disk(1).unwrap()];
    for d in &disks {
        assert_eq!(d.pause_stats(), ckpt::disk::live::PauseStats::default());
    }
    vm.create_checkpoint("a", None, &mut NoHooks).unwrap();
    let before: Vec<_> = disks.iter().map(|d| d.pause_stats()).collect();
    for s in &before {
        assert!(s.count >= 1, "{s:?}");
        assert!(s.max >= s.last && s.total >= s.max, "{s:?}");
    }
    // A request in flight on disk 1 (the gate held shared for 1.5 s) holds
    // the next create's pause of both disks until it completes.
    let d1 = disks[1].clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = thread::spawn(move || {
        d1.with_disk(|_| {
            tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(1500));
        })
    });
    rx.recv().unwrap();
    vm.create_checkpoint("b", None, &mut NoHooks).unwrap();
    holder.join().unwrap();
    for (d, b) in disks.iter().zip(&before) {
        let s = d.pause_stats();
        assert!(s.count > b.count, "{s:?} after {b:?}");
        assert!(s.max >= Duration::from_millis(20), "{s:?}");
        assert!(s.total >= b.total + Duration::from_millis(20), "{s:?}");
    }
    drop(disks);
    vm.detach().unwrap();
}
