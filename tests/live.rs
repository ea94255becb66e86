//! Live disks (`ckpt::LiveDisk`): writer threads keep writing while the
//! chain behind the handle is switched to new children or replaced.
//!
//! Every write is a self-describing 4 KiB unit (disk, unit index,
//! sequence number, a pattern derived from them), stamped with a logical clock
//! before it starts and after it returns; a switch is stamped the same way.
//! A frozen layer must hold, for every unit, a value between the last write
//! that returned before the switch began and the last write that started
//! before the switch returned. Frozen layers are read by libckpt and by
//! libvhdi (`pyvhdi`, with `set_parent`); under `CI=true` a missing pyvhdi
//! fails. Crash and fault cases go through `ckpt::io::faults` on the
//! switching thread (writers are not armed).
//!
//! The units, the writers and the libvhdi reads are `support::units`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod support;

use ckpt::disk::live::{pause_all, NewChild};
use ckpt::io::{faults, Cut, Transient};
use ckpt::{ChildOptions, CreateOptions, Disk, LiveDisk, OpenMode};
use support::units::pyvhdi as have_pyvhdi;
use support::units::{
    allowed, decode, file_hash, last_seq, read_units, unit_bytes, unit_offset, vhdi_chain_units,
    Rec, Writers, UNIT,
};

const MIB: u64 = 1 << 20;

fn small_child() -> ChildOptions {
    ChildOptions {
        block_size: MIB as u32,
        ..ChildOptions::default()
    }
}

// ------------------------------------------------------------------- tests

/// A switch's stamps (begin, end), and per disk the layer it froze with
/// the layer file's hash.
type Switch = (u64, u64, Vec<(PathBuf, u64)>);

/// (a) 3 writer threads on 2 disks while the main thread switches both
/// disks together to new children 12 times. The writers never flush: what
/// a frozen layer holds is made durable by the switch.
#[test]
fn writers_keep_writing_across_switches() {
    const DISKS: usize = 2;
    const UNITS: u64 = 96;
    const SWITCHES: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let disks: Vec<Arc<LiveDisk>> = (0..DISKS)
        .map(|d| {
            let p = dir.path().join(format!("d{d}.vhdx"));
            let disk = Disk::create(&p, &CreateOptions::new(size).block_size(MIB as u32)).unwrap();
            Arc::new(LiveDisk::new(disk))
        })
        .collect();
    let clock = Arc::new(AtomicU64::new(1));
    let writers = Writers::sharing(&disks, UNITS, 3, 0, &clock);
    // Per switch: its stamps, and per disk the layer it froze with its hash.
    let mut switches: Vec<Switch> = Vec::new();
    for k in 0..SWITCHES {
        thread::sleep(Duration::from_millis(3));
        let children: Vec<NewChild> = (0..DISKS)
            .map(|d| {
                let p = dir.path().join(format!("d{d}_{k}.avhdx"));
                disks[d].prepare_child(&p, &small_child()).unwrap()
            })
            .collect();
        let tops: Vec<PathBuf> = disks.iter().map(|d| d.path().unwrap()).collect();
        let refs: Vec<&LiveDisk> = disks.iter().map(|d| &**d).collect();
        let begin = clock.fetch_add(1, Ordering::SeqCst);
        {
            let mut pause = pause_all(&refs).unwrap();
            pause.push_children(children).unwrap();
        }
        let end = clock.fetch_add(1, Ordering::SeqCst);
        let frozen = tops
            .into_iter()
            .map(|p| {
                let h = file_hash(&p);
                // Frozen: its lock is shared now, so others may read it
                // (not write it) while the live chain keeps it open.
                Disk::open(&p, OpenMode::ReadOnly).unwrap();
                if k == 0 {
                    let e = Disk::open(&p, OpenMode::ReadWrite).unwrap_err();
                    assert!(matches!(e.kind(), ckpt::ErrorKind::Busy), "{e}");
                }
                (p, h)
            })
            .collect();
        switches.push((begin, end, frozen));
        for d in &disks {
            assert_eq!(d.depth(), k + 2);
        }
    }
    thread::sleep(Duration::from_millis(3));
    let log = writers.finish();
    assert_eq!(log.error, None);
    assert!(
        log.recs.len() > 1000,
        "the writers wrote only {} units",
        log.recs.len()
    );
    // By disk and unit, for the checks below.
    let by_unit: std::collections::HashMap<(usize, u64), Vec<Rec>> =
        log.recs.iter().fold(Default::default(), |mut m, r| {
            m.entry((r.disk, r.unit)).or_default().push(*r);
            m
        });
    let recs_of = |d: usize, u: u64| by_unit.get(&(d, u)).map_or(&[][..], Vec::as_slice);
    let finals: Vec<PathBuf> = disks.iter().map(|d| d.path().unwrap()).collect();
    for d in disks {
        Arc::try_unwrap(d).unwrap().close().unwrap();
    }
    let pyvhdi = have_pyvhdi();
    for (k, (begin, end, frozen)) in switches.iter().enumerate() {
        for (d, (layer, hash)) in frozen.iter().enumerate() {
            assert_eq!(
                file_hash(layer),
                *hash,
                "layer {} changed after it was frozen",
                layer.display()
            );
            let ours = read_units(layer, UNITS);
            for (u, b) in ours.iter().enumerate() {
                let u = u as u64;
                let seq = decode(d, u, b, &format!("switch {k} disk {d}"));
                let (lo, hi) = allowed(recs_of(d, u), d, u, *begin, *end);
                assert!(
                    (lo..=hi).contains(&seq),
                    "switch {k}, disk {d}, unit {u}: holds write {seq}, allowed {lo}..={hi}"
                );
            }
            if pyvhdi {
                // The chain up to this layer, base first.
                let mut chain: Vec<PathBuf> = vec![dir.path().join(format!("d{d}.vhdx"))];
                chain.extend((0..k).map(|j| dir.path().join(format!("d{d}_{j}.avhdx"))));
                assert_eq!(chain.last().unwrap(), layer);
                let theirs = vhdi_chain_units(&chain, UNITS, size);
                assert!(
                    theirs == ours,
                    "libvhdi reads layer {} otherwise",
                    layer.display()
                );
            }
        }
    }
    for (d, top) in finals.iter().enumerate() {
        for (u, b) in read_units(top, UNITS).iter().enumerate() {
            let u = u as u64;
            assert_eq!(
                decode(d, u, b, "final state"),
                last_seq(recs_of(d, u), d, u),
                "disk {d} unit {u}: the current state lacks the last write"
            );
        }
    }
}

/// The top gets its first write (a new DataWriteGuid) between the child's
/// creation and the pause: the child is re-linked in the pause, and both we
/// and libvhdi read the chain.
#[test]
fn child_is_relinked_when_the_top_changes_after_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    Disk::create(&base, &CreateOptions::new(16 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let live = LiveDisk::new(Disk::open(&base, OpenMode::ReadWrite).unwrap());
    let before = live.info().data_write_guid;
    let child = dir.path().join("child.avhdx");
    let c = live.prepare_child(&child, &small_child()).unwrap();
    live.write_at(&unit_bytes(0, 0, 7), 0).unwrap();
    assert_ne!(live.info().data_write_guid, before);
    live.pause().push_children(vec![c]).unwrap();
    live.write_at(&unit_bytes(0, 1, 9), unit_offset(1, 4, 16 * MIB))
        .unwrap();
    live.close().unwrap();
    let units = read_units(&child, 4);
    assert_eq!(decode(0, 0, &units[0], "child"), 7);
    assert_eq!(decode(0, 1, &units[1], "child"), 9);
    assert_eq!(decode(0, 0, &read_units(&base, 4)[0], "base"), 7);
    assert_eq!(decode(0, 1, &read_units(&base, 4)[1], "base"), 0);
    if have_pyvhdi() {
        let theirs = vhdi_chain_units(&[base, child], 4, 16 * MIB);
        assert!(theirs == units);
    }
}

/// (b) A child that cannot be created, and every single failing write or
/// sync of a switch: the switch reports it, no child is left, the chain is
/// as before; a retry works.
#[test]
fn a_failed_switch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let make = |name: &str| {
        let base = dir.path().join(name);
        let d = Disk::create(&base, &CreateOptions::new(size)).unwrap();
        d.write_at(&unit_bytes(0, 0, 1), 0).unwrap();
        d.flush().unwrap();
        // Unflushed metadata too: the switch's flush has a log entry to write.
        d.write_at(&unit_bytes(0, 1, 1), unit_offset(1, 4, size))
            .unwrap();
        (base, LiveDisk::new(d))
    };
    let check_unchanged = |live: &LiveDisk, base: &Path| {
        assert_eq!(live.depth(), 1);
        assert_eq!(live.path().as_deref(), Some(base));
        let mut b = vec![0u8; UNIT];
        live.read_at(&mut b, 0).unwrap();
        assert_eq!(decode(0, 0, &b, "after a refused switch"), 1);
        live.read_at(&mut b, unit_offset(1, 4, size)).unwrap();
        assert_eq!(decode(0, 1, &b, "after a refused switch"), 1);
    };

    // A child that cannot be made: in a missing folder, or over a file.
    let (base, live) = make("a.vhdx");
    let missing = dir.path().join("no/such/dir/c.avhdx");
    live.push_child(&missing, &small_child()).unwrap_err();
    assert!(!missing.exists());
    let taken = dir.path().join("taken.avhdx");
    std::fs::write(&taken, b"keep me").unwrap();
    live.push_child(&taken, &small_child()).unwrap_err();
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    check_unchanged(&live, &base);
    live.write_at(&unit_bytes(0, 2, 1), unit_offset(2, 4, size))
        .unwrap();
    live.flush().unwrap();
    // A child made for another disk is refused by this one.
    let (_, other) = make("other.vhdx");
    let foreign = other
        .prepare_child(dir.path().join("foreign.avhdx"), &small_child())
        .unwrap();
    live.pause().push_children(vec![foreign]).unwrap_err();
    assert!(!dir.path().join("foreign.avhdx").exists());
    check_unchanged(&live, &base);
    drop(other);
    live.close().unwrap();

    // Every event of a switch fails once, in turn.
    let mut writable_after = 0;
    for n in 0.. {
        let name = format!("f{n}.vhdx");
        let (base, live) = make(&name);
        let child = dir.path().join(format!("f{n}.avhdx"));
        faults::arm_transient(n, Transient::Eio);
        let r = live.push_child(&child, &small_child());
        let seen = faults::disarm();
        if seen <= n {
            r.unwrap();
            assert_eq!(live.depth(), 2);
            assert!(writable_after > 0);
            break;
        }
        r.unwrap_err();
        assert!(
            !child.exists(),
            "event {n}: the failed switch left its child"
        );
        check_unchanged(&live, &base);
        // A failed write leaves the top writable; a failed sync poisons the
        // handle as on any disk (nothing more may claim durability).
        let w = live
            .write_at(&unit_bytes(0, 2, 5), unit_offset(2, 4, size))
            .and_then(|_| live.flush());
        if w.is_ok() {
            writable_after += 1;
            live.push_child(&child, &small_child()).unwrap();
            assert_eq!(live.depth(), 2);
            live.write_at(&unit_bytes(0, 3, 1), unit_offset(3, 4, size))
                .unwrap();
            live.close().unwrap();
            let units = read_units(&child, 4);
            assert_eq!(decode(0, 0, &units[0], "retry"), 1);
            assert_eq!(decode(0, 1, &units[1], "retry"), 1);
            assert_eq!(decode(0, 2, &units[2], "retry"), 5);
            assert_eq!(decode(0, 3, &units[3], "retry"), 1);
            assert_eq!(decode(0, 3, &read_units(&base, 4)[3], "retry base"), 0);
        }
    }
}

/// Pausing a disk twice in one pause is refused (it would deadlock).
#[test]
fn a_disk_named_twice_in_a_pause_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.vhdx");
    let live = LiveDisk::new(Disk::create(&p, &CreateOptions::new(16 * MIB)).unwrap());
    pause_all(&[&live, &live]).unwrap_err();
    let mut b = vec![0u8; 512];
    live.read_at(&mut b, 0).unwrap();
}

/// (c) A crash at every write and sync of a switch while a writer writes
/// (the writer starts after the child was made, so that the top's first
/// write moves its DataWriteGuid and the pause re-links the child): the
/// files open as the old chain or the new one, with every flushed write.
#[test]
fn a_crash_anywhere_in_a_switch_leaves_the_old_or_the_new_chain() {
    const UNITS: u64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let mut outcomes = [0usize; 2];
    for n in 0..400 {
        let base = dir.path().join(format!("c{n}.vhdx"));
        let child = dir.path().join(format!("c{n}.avhdx"));
        Disk::create(&base, &CreateOptions::new(size))
            .unwrap()
            .close()
            .unwrap();
        let live = Arc::new(LiveDisk::new(
            Disk::open(&base, OpenMode::ReadWrite).unwrap(),
        ));
        let clock = Arc::new(AtomicU64::new(1));
        faults::arm(n, Cut::Torn);
        let prepared = live.prepare_child(&child, &small_child());
        let writers = Writers::sharing(std::slice::from_ref(&live), UNITS, 1, 64, &clock);
        thread::sleep(Duration::from_millis(2));
        let r = prepared.and_then(|c| live.pause().push_children(vec![c]));
        let crashed = faults::events() > n;
        thread::sleep(Duration::from_millis(1));
        let log = writers.finish();
        // The crash: the handle goes away without another write from here.
        drop(Arc::try_unwrap(live).unwrap());
        faults::disarm();
        if !crashed {
            // Past the last event of a switch: it went through.
            r.unwrap();
            assert_eq!(log.error, None);
            assert!(outcomes[0] > 0, "no crash left the old chain: {outcomes:?}");
            return;
        }
        assert!(
            r.is_err(),
            "crash at event {n}: the switch did not report it"
        );
        let state = match Disk::open(&child, OpenMode::ReadOnly) {
            Ok(_) => {
                outcomes[1] += 1;
                child.clone()
            }
            Err(_) => {
                outcomes[0] += 1;
                base.clone()
            }
        };
        Disk::open(&base, OpenMode::ReadOnly).unwrap();
        for (u, b) in read_units(&state, UNITS).iter().enumerate() {
            let u = u as u64;
            let seq = decode(0, u, b, &format!("crash at event {n}"));
            assert!(
                seq >= log.flushed_seq(0, u, u64::MAX) && seq <= last_seq(&log.recs, 0, u),
                "crash at event {n}, unit {u}: holds write {seq}, flushed {}, last {}",
                log.flushed_seq(0, u, u64::MAX),
                last_seq(&log.recs, 0, u)
            );
        }
    }
    panic!("a switch took more than 400 write and sync events");
}

/// (d) `replace` under writers: the old chain holds every write that
/// returned before the swap began, the new one every write that started
/// after it returned; a chain of another sector size is refused and changes
/// nothing.
#[test]
fn replace_swaps_the_chain_under_writers() {
    const UNITS: u64 = 32;
    let dir = tempfile::tempdir().unwrap();
    let size = 32 * MIB;
    let a = dir.path().join("a.vhdx");
    let b = dir.path().join("b.vhdx");
    let live = Arc::new(LiveDisk::new(
        Disk::create(&a, &CreateOptions::new(size)).unwrap(),
    ));
    let other = Disk::create(&b, &CreateOptions::new(size)).unwrap();
    // Another sector size is refused (another virtual size is allowed:
    // a checkpoint applied from before a resize).
    let wrong = Disk::create(
        dir.path().join("w.vhdx"),
        &CreateOptions::new(size).logical_sector_size(4096),
    )
    .unwrap();
    let clock = Arc::new(AtomicU64::new(1));
    let writers = Writers::sharing(std::slice::from_ref(&live), UNITS, 2, 0, &clock);
    thread::sleep(Duration::from_millis(20));
    let wrong = live.replace(wrong).unwrap_err();
    assert!(matches!(wrong, ckpt::Error::InvalidArgument(_)), "{wrong}");
    assert_eq!(live.path().as_deref(), Some(a.as_path()));
    let begin = clock.fetch_add(1, Ordering::SeqCst);
    let old = live.replace(other).unwrap();
    let end = clock.fetch_add(1, Ordering::SeqCst);
    assert_eq!(old.path(), Some(a.as_path()));
    assert_eq!(live.path().as_deref(), Some(b.as_path()));
    thread::sleep(Duration::from_millis(20));
    let log = writers.finish();
    assert_eq!(log.error, None);
    old.close().unwrap();
    Arc::try_unwrap(live).unwrap().close().unwrap();
    let (in_a, in_b) = (read_units(&a, UNITS), read_units(&b, UNITS));
    for u in 0..UNITS {
        let (lo, hi) = allowed(&log.recs, 0, u, begin, end);
        let sa = decode(0, u, &in_a[u as usize], "old chain");
        assert!(
            (lo..=hi).contains(&sa),
            "unit {u}: old chain holds {sa}, allowed {lo}..={hi}"
        );
        let sb = decode(0, u, &in_b[u as usize], "new chain");
        let last = log
            .recs
            .iter()
            .filter(|r| r.unit == u)
            .max_by_key(|r| r.seq);
        match last {
            Some(r) if r.start > end => assert_eq!(sb, r.seq, "unit {u}: new chain"),
            _ => assert!(sb == 0 || sb > lo, "unit {u}: new chain holds {sb}"),
        }
    }
}

/// A fast switch (`switch_children`, the pause over at once): a flush
/// issued right after it does not return until the switch is settled;
/// `done` lets it return with the write in the named child, `undo` puts the
/// child's writes into the old top (read by us and by libvhdi), which is
/// the top again, and the flush then returns with them durable there.
#[test]
fn a_flush_after_a_fast_switch_waits_until_it_is_settled() {
    for undo in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let size = 16 * MIB;
        let base = dir.path().join("base.vhdx");
        let d = Disk::create(&base, &CreateOptions::new(size)).unwrap();
        d.write_at(&unit_bytes(0, 0, 1), 0).unwrap();
        d.flush().unwrap();
        // Unflushed before the switch: the old top's flush makes it durable.
        d.write_at(&unit_bytes(0, 1, 1), unit_offset(1, 4, size))
            .unwrap();
        let live = Arc::new(LiveDisk::new(d));
        let child = dir.path().join("child.avhdx");
        let c = live.prepare_child(&child, &small_child()).unwrap();
        let sw = live.pause().switch_children(vec![c]).unwrap();
        // The pause is over: writes go to the child at once.
        assert_eq!(live.path().unwrap(), child);
        live.write_at(&unit_bytes(0, 2, 1), unit_offset(2, 4, size))
            .unwrap();
        live.write_at(&unit_bytes(0, 0, 2), 0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let flusher = {
            let live = live.clone();
            thread::spawn(move || {
                let r = live.flush();
                tx.send(()).unwrap();
                r
            })
        };
        thread::sleep(Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "a flush returned before the switch was settled"
        );
        sw.flush_frozen().unwrap();
        // Writes go on while the old top is made durable.
        live.write_at(&unit_bytes(0, 3, 1), unit_offset(3, 4, size))
            .unwrap();
        assert!(rx.try_recv().is_err(), "a flush returned before `done`");
        if undo {
            sw.undo().unwrap();
        } else {
            sw.done().unwrap();
        }
        flusher.join().unwrap().unwrap();
        live.flush().unwrap();
        let want = [2, 1, 1, 1];
        for (u, w) in want.iter().enumerate() {
            let mut b = vec![0u8; UNIT];
            live.read_at(&mut b, unit_offset(u as u64, 4, size))
                .unwrap();
            assert_eq!(decode(0, u as u64, &b, "live"), *w, "undo {undo}");
        }
        let (top, chain) = if undo {
            assert_eq!(live.path().unwrap(), base);
            assert!(!child.exists(), "the undone child is left");
            (base.clone(), vec![base.clone()])
        } else {
            assert_eq!(live.depth(), 2);
            (child.clone(), vec![base.clone(), child.clone()])
        };
        Arc::try_unwrap(live).unwrap().close().unwrap();
        let units = read_units(&top, 4);
        for (u, w) in want.iter().enumerate() {
            assert_eq!(
                decode(0, u as u64, &units[u], "reopened"),
                *w,
                "undo {undo}"
            );
        }
        if !undo {
            let b = read_units(&base, 4);
            assert_eq!(decode(0, 0, &b[0], "frozen"), 1);
            assert_eq!(decode(0, 1, &b[1], "frozen"), 1);
            assert_eq!(decode(0, 2, &b[2], "frozen"), 0);
        }
        if have_pyvhdi() {
            let theirs = vhdi_chain_units(&chain, 4, size);
            assert!(theirs == units, "libvhdi reads another chain (undo {undo})");
        }
    }
}

/// Every single failing write or sync of a fast switch's post-pause steps
/// (the old top's flush, the undo, the close after `done`) while a writer
/// writes and flushes: the writer's flushes that returned Ok hold (in the
/// live handle and after reopening the named top); a failure that cannot
/// be undone makes every later flush fail, never pass.
#[test]
fn a_fast_switch_with_a_failing_post_pause_step() {
    let mut n = 0u64;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let size = 16 * MIB;
        let base = dir.path().join("base.vhdx");
        let d = Disk::create(&base, &CreateOptions::new(size)).unwrap();
        d.write_at(&unit_bytes(0, 0, 1), 0).unwrap();
        d.flush().unwrap();
        let live = Arc::new(LiveDisk::new(d));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let live = live.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                // (unit, seq) of the writes, and how many the last Ok flush covered.
                let mut done: Vec<(u64, u64)> = Vec::new();
                let mut flushed = 0usize;
                let mut seq = 1u64;
                while !stop.load(Ordering::Acquire) {
                    let u = 1 + seq % 3;
                    seq += 1;
                    if live
                        .write_at(&unit_bytes(0, u, seq), unit_offset(u, 4, size))
                        .is_err()
                    {
                        break;
                    }
                    done.push((u, seq));
                    if seq % 2 == 0 {
                        if live.flush().is_err() {
                            break;
                        }
                        flushed = done.len();
                    }
                }
                (done, flushed)
            })
        };
        thread::sleep(Duration::from_millis(5));
        let child = dir.path().join("child.avhdx");
        let c = live.prepare_child(&child, &small_child()).unwrap();
        let sw = live.pause().switch_children(vec![c]).unwrap();
        thread::sleep(Duration::from_millis(2));
        faults::arm_transient(n, Transient::Eio);
        let undone = sw.flush_frozen().is_err();
        let settled = if undone { sw.undo() } else { sw.done() };
        // `done`'s errors (closing the old top) change no data.
        let failed = undone && settled.is_err();
        let seen = faults::disarm();
        thread::sleep(Duration::from_millis(2));
        stop.store(true, Ordering::Release);
        let (done, flushed) = writer.join().unwrap();
        let ctx = format!("fail at {n} of {seen} (undone {undone}: {settled:?})");
        let last = |upto: usize, u: u64| {
            done[..upto]
                .iter()
                .filter(|w| w.0 == u)
                .map(|w| w.1)
                .max()
                .unwrap_or(0)
        };
        // What a reader of the live handle sees: every write.
        for u in 1..4 {
            let mut b = vec![0u8; UNIT];
            live.read_at(&mut b, unit_offset(u, 4, size)).unwrap();
            assert_eq!(
                decode(0, u, &b, &ctx),
                last(done.len(), u),
                "{ctx}: unit {u}"
            );
        }
        let top = live.path().unwrap();
        let later = live.flush();
        if failed {
            assert!(later.is_err(), "{ctx}: a flush passed after a failed undo");
        } else {
            later.unwrap_or_else(|e| panic!("{ctx}: a later flush: {e}"));
        }
        drop(Arc::try_unwrap(live).unwrap().into_disk());
        // A failed undo leaves the child on top, unnamed: the old top is
        // the state (its log replayed on open); otherwise the top is.
        let state = if failed { base.clone() } else { top };
        let units = read_units(&state, 4);
        for u in 1..4 {
            let seq = decode(0, u, &units[u as usize], &ctx);
            assert!(
                seq >= last(flushed, u),
                "{ctx}: unit {u}: {seq} lost a flushed write"
            );
        }
        if n >= seen {
            break;
        }
        n += 1;
    }
}
