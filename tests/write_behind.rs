//! Write-behind of the bulk streams (merge, convert): the data they write is
//! started on its way to the disk and then dropped from the page cache as
//! they go. These tests shrink its run and window (64 KiB / 256 KiB) so
//! that small images go through every step, then:
//!
//! - cut a merge at every event (its write-behind steps among them), clean
//!   and torn, and fail each event once with `EIO`: every state reads the
//!   model, and running the merge again finishes it;
//! - fail every event of an import and of an export once: the conversion
//!   fails with the destination removed, or succeeds, and a rerun gives the
//!   model, judged by `qemu-img compare` too;
//! - a write-back error reported to a write-behind step makes every later
//!   sync of that file fail, so that nothing is reported durable over
//!   pages the kernel may have dropped.

mod support;

use std::path::{Path, PathBuf};

use ckpt::disk::convert::{convert, ConvertOptions, Format};
use ckpt::disk::merge::{self, MergeOptions};
use ckpt::io::{faults, set_write_behind_sizes, Cut, FileStorage, Storage, Transient};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

const SIZE: u64 = 8 << 20;

/// The sizes are one setting for the whole process: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn small_windows() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    set_write_behind_sizes(64 << 10, 256 << 10);
    g
}

/// A base with data and a child with changes in runs of several sizes
/// (a whole 1 MiB block, runs across blocks, scattered small pieces).
/// Returns (base, child, model of the child).
fn build(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let base = dir.join("base.vhdx");
    let child = dir.join("child.avhdx");
    let mut model = vec![0u8; SIZE as usize];
    let d = Disk::create(&base, &CreateOptions::new(SIZE).block_size(1 << 20)).unwrap();
    let a = support::pattern(1, 0, 5 << 20);
    d.write_at(&a, 1 << 20).unwrap();
    model[1 << 20..6 << 20].copy_from_slice(&a);
    d.close().unwrap();
    let opts = ChildOptions {
        block_size: 1 << 20,
        log_size: 1 << 20,
    };
    let d = Disk::create_child(&child, &base, &opts).unwrap();
    let mut seed = 2u8;
    let mut put = |d: &Disk, off: u64, len: usize| {
        let p = support::pattern(seed as u64, 0, len);
        seed = seed.wrapping_add(1);
        d.write_at(&p, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&p);
    };
    put(&d, 0, 1 << 20);
    put(&d, (2 << 20) - 8192, 3 << 19);
    for k in 0..12u64 {
        put(&d, (5 << 20) + k * 200_704, 12_288);
    }
    put(&d, 7 << 20, 300_000);
    d.close().unwrap();
    (base, child, model)
}

fn read_all(path: &Path) -> Vec<u8> {
    let d = Disk::open(path, OpenMode::ReadOnly).unwrap();
    let mut buf = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut buf, 0).unwrap();
    buf
}

fn merge_events() -> u64 {
    let dir = support::tempdir();
    let (base, child, model) = build(dir.path());
    faults::arm(u64::MAX, Cut::Clean);
    merge::merge(&child, MergeOptions::default()).unwrap();
    let events = faults::disarm();
    assert_eq!(read_all(&base), model);
    events
}

/// Merge again after a failed run, then judge the result.
fn finish_merge(dir: &Path, base: &Path, child: &Path, model: &[u8], what: &str) {
    if child.exists() {
        assert_eq!(read_all(child), model, "{what}: the child changed");
        merge::merge(child, MergeOptions::default())
            .unwrap_or_else(|e| panic!("{what}: re-running the merge: {e}"));
    }
    assert!(!child.exists(), "{what}: the child is still there");
    assert_eq!(read_all(base), model, "{what}: the merged base");
    let _ = dir;
}

#[test]
fn a_merge_cut_or_failed_at_every_event_with_write_behind_steps() {
    let _serial = small_windows();
    let events = merge_events();
    // The write-behind steps are among the events: with the default sizes
    // (runs of 8 MiB) this small merge has fewer.
    set_write_behind_sizes(8 << 20, 32 << 20);
    let fewer = merge_events();
    set_write_behind_sizes(64 << 10, 256 << 10);
    assert!(
        events > fewer + 10,
        "write-behind steps should be events: {events} with small windows, {fewer} without"
    );
    for n in 0..events {
        for cut in [Cut::Clean, Cut::Torn] {
            let dir = support::tempdir();
            let (base, child, model) = build(dir.path());
            faults::arm(n, cut);
            let r = merge::merge(&child, MergeOptions::default());
            faults::disarm();
            assert!(r.is_err(), "cut at {n} of {events}: the merge should fail");
            finish_merge(
                dir.path(),
                &base,
                &child,
                &model,
                &format!("{cut:?} cut at {n}"),
            );
        }
        let dir = support::tempdir();
        let (base, child, model) = build(dir.path());
        faults::arm_transient(n, Transient::Eio);
        let r = merge::merge(&child, MergeOptions::default());
        faults::disarm();
        if r.is_err() {
            finish_merge(dir.path(), &base, &child, &model, &format!("EIO at {n}"));
        } else {
            assert_eq!(
                read_all(&base),
                model,
                "EIO at {n} ignored: the merged base"
            );
        }
    }
}

fn raw_model(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut model = support::pattern(9, 0, 6 << 20);
    // Zero pieces (holes in the outputs) break the runs.
    for k in 0..6usize {
        let at = k * (1 << 20) + 300_000;
        model[at..at + 65_536].fill(0);
    }
    let raw = dir.join("src.raw");
    std::fs::write(&raw, &model).unwrap();
    (raw, model)
}

fn opts(format: Format) -> ConvertOptions {
    ConvertOptions {
        format: Some(format),
        fixed: false,
        block_size: Some(1 << 20),
        no_sync: false,
        azure: false,
    }
}

fn convert_at_every_event(src: &Path, dst: &Path, format: Format, judge: &dyn Fn(&Path)) {
    let o = if format == Format::Raw {
        ConvertOptions {
            block_size: None,
            ..opts(format)
        }
    } else {
        opts(format)
    };
    faults::arm(u64::MAX, Cut::Clean);
    convert(src, dst, &o, &mut |_, _| {}).unwrap();
    let events = faults::disarm();
    judge(dst);
    assert!(events > 20, "{events} events");
    for n in 0..events {
        std::fs::remove_file(dst).unwrap();
        faults::arm_transient(n, Transient::Eio);
        let r = convert(src, dst, &o, &mut |_, _| {});
        faults::disarm();
        match r {
            Ok(_) => judge(dst),
            Err(e) => {
                assert!(!dst.exists(), "EIO at {n} ({e}): the destination was left");
                convert(src, dst, &o, &mut |_, _| {})
                    .unwrap_or_else(|e| panic!("EIO at {n}: the rerun: {e}"));
                judge(dst);
            }
        }
    }
}

#[test]
fn an_import_and_an_export_failed_at_every_event_with_write_behind_steps() {
    let _serial = small_windows();
    let dir = support::tempdir();
    let (raw, model) = raw_model(dir.path());
    let vhdx = dir.path().join("imported.vhdx");
    let qemu = support::have_qemu();
    if !qemu {
        support::missing("qemu-img (to judge the conversions)");
    }
    let judge_vhdx = |p: &Path| {
        assert_eq!(read_all(p), model, "the imported VHDX");
    };
    convert_at_every_event(&raw, &vhdx, Format::Vhdx, &judge_vhdx);
    if qemu {
        support::qemu_compare_raw(&vhdx, &raw);
    }
    let out = dir.path().join("exported.raw");
    let judge_raw = |p: &Path| {
        assert_eq!(std::fs::read(p).unwrap(), model, "the exported raw file");
    };
    convert_at_every_event(&vhdx, &out, Format::Raw, &judge_raw);
    if qemu {
        support::qemu_compare_raw(&vhdx, &out);
    }
}

#[test]
fn a_failed_write_back_fails_every_later_sync_of_that_file() {
    let _serial = small_windows();
    let dir = support::tempdir();
    let path = dir.path().join("f.bin");
    let f = FileStorage::create(&path).unwrap();
    f.set_write_behind(true);
    let chunk = vec![7u8; 64 << 10];
    // Event 0 is the write itself; a whole run is started at event 1.
    faults::arm_transient(1, Transient::Eio);
    let r = f.write_at(&chunk, 0);
    faults::disarm();
    assert!(r.is_err(), "the write-back error must reach the writer");
    f.write_at(&chunk, 1 << 20).unwrap();
    let e = f.sync().expect_err("a sync after a failed write-back");
    assert!(e.to_string().contains("write-back"), "{e}");
    drop(f);
    // A new open of the file starts clean.
    let f = FileStorage::open(&path, true).unwrap();
    f.sync().unwrap();
    // Write-behind never changes what the file holds.
    f.set_write_behind(true);
    let mut want = vec![0u8; 3 << 20];
    for k in 0..48u64 {
        let p = support::pattern(k, 0, 65_536);
        f.write_at(&p, k * 65_536).unwrap();
        want[(k * 65_536) as usize..((k + 1) * 65_536) as usize].copy_from_slice(&p);
    }
    f.sync().unwrap();
    drop(f);
    assert_eq!(std::fs::read(&path).unwrap()[..3 << 20], want[..]);
}
