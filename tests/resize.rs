//! Offline resize (`Disk::resize`, Resize-VHD) of a base disk.
//!
//! - Grow within the BAT region's room and grow that moves the BAT to a
//!   larger region (dynamic 8 GiB -> 200 GiB with 1 MiB blocks: the chunk
//!   count changes too), fixed and dynamic, 512 and 4096-byte sectors;
//!   shrink with and without `allow_shrink`, a partial last block; each
//!   reopened and read back against a byte model.
//! - QEMU judges the bytes: `qemu-img info` sees the new size, `qemu-img
//!   check` passes, `qemu-img compare` against a raw model is identical;
//!   also for files `qemu-img` made and `qemu-io` wrote.
//! - Crash sweeps (clean and torn cuts at every event) of a grow that
//!   moves the BAT and of a shrink: the survivor opens with the old or the
//!   new size and reads the model; the same on a storage with a volatile
//!   write cache (lossy sweeps).
//! - A transient error at every event, then resize again succeeds.
//! - Refusals (read-only, bad sizes, data past the end), and
//!   the `ckpt resize` command.

mod support;

use std::path::Path;
use std::sync::Arc;

use ckpt::io::{Cut, FaultStorage, MemStorage, Storage, Transient};
use ckpt::{ChildOptions, CreateOptions, Disk, ErrorKind, OpenMode, ResizeOptions, ResizeReport};

use support::{first_diff, pattern, read_all, Ctx, MIB};

const GIB: u64 = 1 << 30;

fn grow() -> ResizeOptions {
    ResizeOptions::default()
}

fn lossy() -> ResizeOptions {
    ResizeOptions { allow_shrink: true }
}

/// A disk on `mem` with `pattern` data written at `writes` (offset, len).
fn disk_with(
    mem: &MemStorage,
    opts: &CreateOptions,
    writes: &[(u64, usize)],
) -> Vec<(u64, Vec<u8>)> {
    let disk = Disk::create_on(Arc::new(mem.clone()), opts).unwrap();
    let mut out = Vec::new();
    for (k, &(off, len)) in writes.iter().enumerate() {
        let d = pattern(k as u64 + 1, off, len);
        disk.write_at(&d, off).unwrap();
        out.push((off, d));
    }
    disk.close().unwrap();
    out
}

/// The written ranges read back, and `probes` (offset, len) read zeros.
#[track_caller]
fn assert_sparse(disk: &Disk, data: &[(u64, Vec<u8>)], zeros: &[(u64, usize)]) {
    for (off, d) in data {
        if *off >= disk.virtual_size() {
            continue;
        }
        let n = d.len().min((disk.virtual_size() - off) as usize);
        let mut got = vec![0u8; n];
        disk.read_at(&mut got, *off).unwrap();
        assert!(got == d[..n], "at {off}: {}", first_diff(&got, &d[..n]));
    }
    for &(off, len) in zeros {
        if off >= disk.virtual_size() {
            continue;
        }
        let n = len.min((disk.virtual_size() - off) as usize);
        let mut got = vec![1u8; n];
        disk.read_at(&mut got, off).unwrap();
        assert!(got.iter().all(|&b| b == 0), "not zeros at {off}");
    }
}

fn model_of(size: u64, data: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0u8; size as usize];
    for (off, d) in data {
        let o = *off as usize;
        if o < m.len() {
            let n = d.len().min(m.len() - o);
            m[o..o + n].copy_from_slice(&d[..n]);
        }
    }
    m
}

// ------------------------------------------------------------ grow

#[test]
fn grow_within_the_bat_room_fixed_and_dynamic_both_sector_sizes() {
    for lss in [512u32, 4096] {
        for fixed in [false, true] {
            let _c = Ctx(format!("lss {lss} fixed {fixed}"));
            let mem = MemStorage::new();
            let opts = CreateOptions::new(24 * MIB + lss as u64)
                .block_size(MIB as u32)
                .logical_sector_size(lss)
                .fixed(fixed);
            let data = disk_with(
                &mem,
                &opts,
                &[(0, 4096), (5 * MIB + 100, 70000), (24 * MIB, lss as usize)],
            );
            let mut disk = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadWrite).unwrap();
            let before = disk.info();
            let r = disk.resize(40 * MIB, grow()).unwrap();
            assert_eq!(
                (r.old_size, r.new_size, r.bat_relocated),
                (24 * MIB + lss as u64, 40 * MIB, false)
            );
            assert_eq!(disk.virtual_size(), 40 * MIB);
            assert_ne!(disk.info().data_write_guid, before.data_write_guid);
            let model = model_of(40 * MIB, &data);
            assert!(read_all(&disk) == model);
            // The new space takes writes.
            disk.write_at(&[9u8; 4096], 39 * MIB).unwrap();
            disk.close().unwrap();
            let d = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadOnly).unwrap();
            let mut model = model;
            model[(39 * MIB) as usize..(39 * MIB) as usize + 4096].fill(9);
            let got = read_all(&d);
            assert!(got == model, "{}", first_diff(&got, &model));
            let alloc = d.info().allocated_bytes;
            if fixed {
                assert_eq!(alloc, 40 * MIB);
            } else {
                assert_eq!(alloc, 4 * MIB, "dynamic: only the written blocks");
            }
        }
    }
}

/// 8 GiB -> 200 GiB with 1 MiB blocks: 1 MiB of BAT holds 128 Ki entries,
/// so the BAT moves; 2 chunks become 50.
fn relocating_image() -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let mem = MemStorage::new();
    let opts = CreateOptions::new(8 * GIB).block_size(MIB as u32);
    let data = disk_with(
        &mem,
        &opts,
        &[
            (0, 8192),
            (4 * GIB - 4096, 8192),
            (8 * GIB - MIB, MIB as usize),
        ],
    );
    (mem.snapshot(), data)
}

const ZERO_PROBES: &[(u64, usize)] = &[
    (MIB, 4096),
    (8 * GIB, 8192),
    (100 * GIB + 12345 * 512, 4096),
    (200 * GIB - 4096, 4096),
];

#[test]
fn grow_that_moves_the_bat() {
    let (image, data) = relocating_image();
    let mem = MemStorage::from_vec(image);
    let mut disk = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadWrite).unwrap();
    let r = disk.resize(200 * GIB, grow()).unwrap();
    assert!(r.bat_relocated, "{r:?}");
    assert_sparse(&disk, &data, ZERO_PROBES);
    disk.write_at(&[7u8; 512], 200 * GIB - 512).unwrap();
    disk.close().unwrap();
    let d = Disk::open_storage(Arc::new(mem), OpenMode::ReadOnly).unwrap();
    assert_eq!(d.virtual_size(), 200 * GIB);
    assert_sparse(&d, &data, &ZERO_PROBES[..3]);
    let alloc: u64 = d
        .extents()
        .unwrap()
        .iter()
        .filter(|e| e.allocated)
        .map(|e| e.length)
        .sum();
    assert_eq!(alloc, 5 * MIB);
}

#[test]
fn grow_of_a_fixed_disk_that_moves_the_bat_on_a_sparse_file() {
    let t = support::tempdir();
    let p = t.path().join("f.vhdx");
    let disk = Disk::create(
        &p,
        &CreateOptions::new(64 * MIB)
            .block_size(MIB as u32)
            .fixed(true),
    )
    .unwrap();
    disk.write_at(&pattern(3, 0, 65536), 64 * MIB - 65536)
        .unwrap();
    disk.close().unwrap();
    let mut disk = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    let r = disk.resize(130 * GIB, grow()).unwrap();
    assert!(r.bat_relocated);
    assert_eq!(disk.info().allocated_bytes, 130 * GIB);
    assert_sparse(
        &disk,
        &[(64 * MIB - 65536, pattern(3, 0, 65536))],
        &[(64 * MIB, 8192), (130 * GIB - 4096, 4096)],
    );
    disk.close().unwrap();
    if support::have_qemu() {
        assert_eq!(support::qemu_virtual_size(&p), 130 * GIB);
        support::qemu_check(&p);
        support::qemu_io("vhdx", &p, &["read -P 0 64M 1M", "read -P 0 129G 1M"]);
    } else {
        support::missing("qemu-img and qemu-io");
    }
}

// ------------------------------------------------------------ shrink

#[test]
fn shrink_refused_with_data_beyond_then_allowed() {
    for fixed in [false, true] {
        let _c = Ctx(format!("fixed {fixed}"));
        let mem = MemStorage::new();
        let opts = CreateOptions::new(64 * MIB)
            .block_size(MIB as u32)
            .fixed(fixed);
        let data = disk_with(
            &mem,
            &opts,
            &[
                (MIB, 4096),
                (40 * MIB + 1024, 3000),
                (60 * MIB, MIB as usize),
            ],
        );
        let mut disk = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadWrite).unwrap();
        // Nothing past 48 MiB but the last write: refused, naming the bytes.
        let e = disk.resize(48 * MIB, grow()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.to_string().contains(&format!("{} bytes of data", MIB)),
            "{e}"
        );
        assert_eq!(disk.virtual_size(), 64 * MIB);
        // Past 41 MiB + 512 nothing but zeros... except the tail of the
        // block at 40 MiB: refused too.
        let e = disk.resize(40 * MIB + 2048, grow()).unwrap_err();
        assert!(e.to_string().contains("bytes of data lie beyond"), "{e}");
        // Free space past the end only: allowed without the flag.
        disk.trim(60 * MIB, MIB).unwrap();
        let r = disk.resize(48 * MIB, grow()).unwrap();
        assert_eq!(r.bytes_dropped, 0);
        // Dropping data needs the flag; the partial block's tail is zero
        // when the disk grows again.
        let r = disk.resize(40 * MIB + 2048, lossy()).unwrap();
        // The write ends at 40 MiB + 4024: 4 sectors past 40 MiB + 2048.
        assert_eq!(r.bytes_dropped, 2048);
        let r2 = disk.resize(50 * MIB, grow()).unwrap();
        assert!(r2.file_size_after >= r.file_size_after);
        let mut model = model_of(40 * MIB + 2048, &data);
        model.resize((50 * MIB) as usize, 0);
        let got = read_all(&disk);
        assert!(got == model, "{}", first_diff(&got, &model));
        disk.close().unwrap();
        let d = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadOnly).unwrap();
        assert!(read_all(&d) == model);
        let rep = ckpt::disk::check::check_storage(Arc::new(mem.clone()));
        assert!(rep.is_ok(), "{:?}", rep.problems);
    }
}

#[test]
fn a_shrink_gives_the_space_back() {
    let mem = MemStorage::new();
    let opts = CreateOptions::new(64 * MIB)
        .block_size(MIB as u32)
        .fixed(true);
    disk_with(&mem, &opts, &[(0, 4096)]);
    let before = mem.len().unwrap();
    let mut disk = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadWrite).unwrap();
    let r = disk.resize(16 * MIB, grow()).unwrap();
    assert_eq!(r.file_size_after, mem.len().unwrap());
    assert_eq!(before - r.file_size_after, 48 * MIB, "{r:?}");
    assert_eq!(disk.info().allocated_bytes, 16 * MIB);
}

// ------------------------------------------------------------ refusals

#[test]
fn refusals() {
    let base = MemStorage::new();
    let b = Disk::create_on(
        Arc::new(base.clone()),
        &CreateOptions::new(16 * MIB).logical_sector_size(4096),
    )
    .unwrap();
    let child = MemStorage::new();
    Disk::create_child_on(Arc::new(child.clone()), &b, &ChildOptions::default()).unwrap();
    b.close().unwrap();
    let mut chain = Disk::open_storage_chain(
        vec![Arc::new(child), Arc::new(base.clone())],
        OpenMode::ReadWrite,
    )
    .unwrap();
    // A differencing top resizes (tests/chain_sizes.rs); not by a bad size.
    assert_eq!(
        chain.resize(32 * MIB + 512, grow()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(chain.resize(32 * MIB, grow()).unwrap().new_size, 32 * MIB);
    drop(chain);

    let mut ro = Disk::open_storage(Arc::new(base.clone()), OpenMode::ReadOnly).unwrap();
    assert_eq!(
        ro.resize(32 * MIB, grow()).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    drop(ro);
    let mut d = Disk::open_storage(Arc::new(base.clone()), OpenMode::ReadWrite).unwrap();
    for bad in [0, 32 * MIB + 512, 65 << 40] {
        let e = d.resize(bad, grow()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
    }
    let r = d.resize(16 * MIB, grow()).unwrap();
    assert_eq!(r.old_size, r.new_size);
    assert_eq!(d.virtual_size(), 16 * MIB);
}

// ------------------------------------------------------------ crashes

fn count_events(image: &[u8], size: u64, opts: ResizeOptions) -> (u64, u64) {
    let f = Arc::new(FaultStorage::new(
        MemStorage::from_vec(image.to_vec()),
        u64::MAX,
        Cut::Clean,
    ));
    let mut d = Disk::open_storage(f.clone(), OpenMode::ReadWrite).unwrap();
    let start = f.events();
    d.resize(size, opts).unwrap();
    let n = f.events() - start;
    drop(d);
    (start, n)
}

/// Cut a resize of `image` to `size` at every event; the survivor opens
/// with the old or the new size and `judge` accepts it.
fn sweep(name: &str, image: &[u8], size: u64, opts: ResizeOptions, judge: &dyn Fn(&Disk)) {
    let (opening, events) = count_events(image, size, opts);
    assert!(events > 10, "{name}: only {events} events");
    let old = Disk::open_storage(
        Arc::new(MemStorage::from_vec(image.to_vec())),
        OpenMode::ReadOnly,
    )
    .unwrap()
    .virtual_size();
    let mut seen = [false; 2];
    for cut in [Cut::Clean, Cut::Torn] {
        for n in 0..events {
            let _c = Ctx(format!("{name}: {cut:?} cut at event {n} of {events}"));
            let f = Arc::new(FaultStorage::new(
                MemStorage::from_vec(image.to_vec()),
                opening + n,
                cut,
            ));
            let mut d = Disk::open_storage(f.clone(), OpenMode::ReadWrite).unwrap();
            let _ = d.resize(size, opts);
            drop(d);
            let survived = f.inner().snapshot();
            for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
                let d = Disk::open_storage(Arc::new(MemStorage::from_vec(survived.clone())), mode)
                    .unwrap_or_else(|e| panic!("{mode:?} open: {e}"));
                let s = d.virtual_size();
                assert!(s == old || s == size, "size {s}");
                seen[(s == size) as usize] = true;
                judge(&d);
            }
            // Resizing what survived finishes the job.
            let m = MemStorage::from_vec(survived);
            let mut d = Disk::open_storage(Arc::new(m.clone()), OpenMode::ReadWrite).unwrap();
            d.resize(size, opts).unwrap();
            assert_eq!(d.virtual_size(), size);
            judge(&d);
            d.close().unwrap();
            let rep = ckpt::disk::check::check_storage(Arc::new(m));
            assert!(rep.is_ok(), "check: {:?}", rep.problems);
        }
    }
    assert!(seen[0] && seen[1], "{name}: the sweep saw only one size");
}

#[test]
fn crash_sweep_of_a_grow_that_moves_the_bat() {
    let (image, data) = relocating_image();
    sweep("grow", &image, 200 * GIB, grow(), &|d: &Disk| {
        assert_sparse(d, &data, ZERO_PROBES)
    });
}

fn shrink_image() -> (Vec<u8>, Vec<u8>) {
    let mem = MemStorage::new();
    let opts = CreateOptions::new(32 * MIB).block_size(MIB as u32);
    let data = disk_with(
        &mem,
        &opts,
        &[
            (0, 3 * MIB as usize),
            (20 * MIB - 512, 4096),
            (30 * MIB, 2 * MIB as usize),
        ],
    );
    (mem.snapshot(), model_of(32 * MIB, &data))
}

#[test]
fn crash_sweep_of_a_shrink() {
    let (image, model) = shrink_image();
    let new = 20 * MIB + 1024;
    sweep("shrink", &image, new, lossy(), &|d: &Disk| {
        let got = read_all(d);
        let want = &model[..d.virtual_size() as usize];
        assert!(got == want, "{}", first_diff(&got, want));
    });
}

/// A resize to judge: name, image, size, options, judge.
type Case<'a> = (&'a str, &'a Vec<u8>, u64, ResizeOptions, &'a dyn Fn(&Disk));

/// The sweeps on a storage with a volatile write cache: at each cut the
/// writes since the last sync are lost or kept in several combinations
/// (none, all, each alone, all but each); every survivor opens with the
/// old or the new size and reads the model. This proves the order: new
/// BAT, sync, then the log entry that switches the size and the region
/// tables.
#[test]
fn lossy_crash_sweeps_of_a_grow_and_a_shrink() {
    let (image, data) = relocating_image();
    let (simage, model) = shrink_image();
    let new = 20 * MIB + 1024;
    let grow_judge = |d: &Disk| assert_sparse(d, &data, ZERO_PROBES);
    let shrink_judge = |d: &Disk| {
        let got = read_all(d);
        let want = &model[..d.virtual_size() as usize];
        assert!(got == want, "{}", first_diff(&got, want));
    };
    let cases: [Case<'_>; 2] = [
        ("grow", &image, 200 * GIB, grow(), &grow_judge),
        ("shrink", &simage, new, lossy(), &shrink_judge),
    ];
    for (name, img, size, opts, judge) in cases {
        let (opening, events) = count_events(img, size, opts);
        let old = Disk::open_storage(
            Arc::new(MemStorage::from_vec(img.to_vec())),
            OpenMode::ReadOnly,
        )
        .unwrap()
        .virtual_size();
        let mut judged = 0;
        for n in 0..events {
            let _c = Ctx(format!("{name}: lossy cut at event {n} of {events}"));
            let l = Arc::new(support::lossy::LossyStorage::new(img.to_vec(), opening + n));
            let mut d = Disk::open_storage(l.clone(), OpenMode::ReadWrite).unwrap();
            let _ = d.resize(size, opts);
            drop(d);
            let k = l.unsynced();
            let mut keeps: Vec<Box<dyn Fn(usize) -> bool>> =
                vec![Box::new(|_| false), Box::new(|_| true)];
            for j in 0..k {
                keeps.push(Box::new(move |i| i == j));
                keeps.push(Box::new(move |i| i != j));
            }
            for keep in keeps {
                let m = MemStorage::from_vec(l.survivor(keep));
                let d = Disk::open_storage(Arc::new(m), OpenMode::ReadOnly)
                    .unwrap_or_else(|e| panic!("open: {e}"));
                let s = d.virtual_size();
                assert!(s == old || s == size, "size {s}");
                judge(&d);
                judged += 1;
            }
        }
        assert!(judged > events as usize, "{name}");
    }
}

#[test]
fn a_transient_error_at_every_event_then_resize_again() {
    let (image, data) = relocating_image();
    let (g_open, g_events) = count_events(&image, 200 * GIB, grow());
    let (simage, model) = shrink_image();
    let new = 20 * MIB + 1024;
    let (s_open, s_events) = count_events(&simage, new, lossy());
    for kind in [Transient::Eio, Transient::NoSpace] {
        for (img, opening, events, size, opts) in [
            (&image, g_open, g_events, 200 * GIB, grow()),
            (&simage, s_open, s_events, new, lossy()),
        ] {
            for n in 0..events {
                let _c = Ctx(format!(
                    "{kind:?} at event {n} of {events} resizing to {size}"
                ));
                let f = Arc::new(FaultStorage::transient(
                    MemStorage::from_vec(img.clone()),
                    opening + n,
                    kind,
                ));
                let mut d = Disk::open_storage(f.clone(), OpenMode::ReadWrite).unwrap();
                let _ = d.resize(size, opts);
                let r: ResizeReport = d.resize(size, opts).unwrap();
                assert_eq!(r.new_size, size);
                if size > 32 * MIB {
                    assert_sparse(&d, &data, ZERO_PROBES);
                } else {
                    let got = read_all(&d);
                    assert!(
                        got == model[..size as usize],
                        "{}",
                        first_diff(&got, &model[..size as usize])
                    );
                }
                d.close().unwrap();
                let m = MemStorage::from_vec(f.inner().snapshot());
                let rep = ckpt::disk::check::check_storage(Arc::new(m.clone()));
                assert!(rep.is_ok(), "check: {:?}", rep.problems);
                assert_eq!(
                    Disk::open_storage(Arc::new(m), OpenMode::ReadOnly)
                        .unwrap()
                        .virtual_size(),
                    size
                );
            }
        }
    }
}

// ------------------------------------------------------------ QEMU

fn raw_model(path: &Path, model: &[(u64, Vec<u8>)], size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, d) in model {
        if *off < size {
            let n = d.len().min((size - off) as usize);
            f.write_all_at(&d[..n], *off).unwrap();
        }
    }
}

#[test]
fn libckpt_disks_resized_and_qemu_reads_them() {
    if !support::require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = support::tempdir();
    // QEMU reads only 512-byte logical sectors (4096 is judged by the
    // model tests above).
    for lss in [512u32] {
        for fixed in [false, true] {
            let _c = Ctx(format!("lss {lss} fixed {fixed}"));
            let p = t.path().join(format!("d{lss}{fixed}.vhdx"));
            let size = 40 * MIB + lss as u64;
            let disk = Disk::create(
                &p,
                &CreateOptions::new(size)
                    .block_size(MIB as u32)
                    .logical_sector_size(lss)
                    .fixed(fixed),
            )
            .unwrap();
            let mut data = Vec::new();
            for (k, off) in [0, 7 * MIB + 512, 40 * MIB].into_iter().enumerate() {
                let d = pattern(k as u64 + 10, off, lss as usize);
                disk.write_at(&d, off).unwrap();
                data.push((off, d));
            }
            drop(disk);
            let mut disk = Disk::open(&p, OpenMode::ReadWrite).unwrap();
            let raw = t.path().join("m.raw");
            for (size, opts) in [(100 * MIB, grow()), (20 * MIB, lossy()), (60 * MIB, grow())] {
                disk.resize(size, opts).unwrap();
                disk.flush().unwrap();
                let keep: Vec<(u64, Vec<u8>)> = data
                    .iter()
                    .filter(|(o, _)| *o < size)
                    .map(|(o, d)| (*o, d[..d.len().min((size - o) as usize)].to_vec()))
                    .collect();
                data = keep;
                drop(disk);
                raw_model(&raw, &data, size);
                assert_eq!(support::qemu_virtual_size(&p), size);
                support::qemu_check(&p);
                support::qemu_compare_raw(&p, &raw);
                disk = Disk::open(&p, OpenMode::ReadWrite).unwrap();
            }
            drop(disk);
        }
    }
    // The BAT moved: QEMU follows the region table.
    let p = t.path().join("big.vhdx");
    let disk = Disk::create(&p, &CreateOptions::new(8 * GIB).block_size(MIB as u32)).unwrap();
    disk.write_at(&[0xab; 4096], 8 * GIB - 4096).unwrap();
    drop(disk);
    let mut disk = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    assert!(disk.resize(200 * GIB, grow()).unwrap().bat_relocated);
    drop(disk);
    // (`qemu-img compare` of 200 GiB takes minutes: QEMU reads ranges.)
    assert_eq!(support::qemu_virtual_size(&p), 200 * GIB);
    support::qemu_check(&p);
    support::qemu_io(
        "vhdx",
        &p,
        &[
            format!("read -P 0xab {} 4096", 8 * GIB - 4096),
            "read -P 0 8G 1M".into(),
            "read -P 0 199G 1M".into(),
            "write -P 0x66 150G 64k".into(),
            "read -P 0x66 150G 64k".into(),
        ],
    );
    support::qemu_check(&p);
}

#[test]
fn qemu_made_disks_resized_by_libckpt() {
    if !support::require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = support::tempdir();
    for (bs, sub) in [
        ("1M", "dynamic"),
        ("8M", "dynamic"),
        ("32M", "dynamic"),
        ("8M", "fixed"),
    ] {
        let _c = Ctx(format!("block {bs} {sub}"));
        let p = t.path().join(format!("q{bs}{sub}.vhdx"));
        support::qemu_create_vhdx(&p, 100 * MIB, &format!("block_size={bs},subformat={sub}"));
        support::qemu_io(
            "vhdx",
            &p,
            &[
                "write -P 0x11 0 1M",
                "write -P 0x22 33M 64k",
                "write -P 0x33 99M 1M",
            ],
        );
        let raw = t.path().join("q.raw");
        support::qemu_convert_raw(&p, &raw);
        for (size, opts) in [
            (300 * MIB, grow()),
            (34 * MIB + 4096, lossy()),
            (130 * MIB, grow()),
        ] {
            let mut d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
            d.resize(size, opts).unwrap();
            d.close().unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
            f.set_len(size).unwrap();
            drop(f);
            support::qemu_check(&p);
            support::qemu_compare_raw(&p, &raw);
        }
        // QEMU writes the resized file.
        support::qemu_io("vhdx", &p, &["write -P 0x44 129M 1M"]);
        support::qemu_check(&p);
        let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
        let mut b = vec![0u8; MIB as usize];
        d.read_at(&mut b, 129 * MIB).unwrap();
        assert!(b.iter().all(|&x| x == 0x44));
    }
}

// ------------------------------------------------------------ CLI

#[test]
fn the_ckpt_resize_command() {
    use std::process::Command;
    let t = support::tempdir();
    let path = t.path().join("c.vhdx");
    let disk = Disk::create(&path, &CreateOptions::new(32 * MIB).block_size(MIB as u32)).unwrap();
    disk.write_at(&[3u8; 4096], 20 * MIB).unwrap();
    disk.close().unwrap();
    let bin = env!("CARGO_BIN_EXE_ckpt");
    let p = path.to_str().unwrap();
    let out = Command::new(bin)
        .args(["resize", p, "64M", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["old_size"].as_u64(), Some(32 * MIB));
    assert_eq!(v["new_size"].as_u64(), Some(64 * MIB));
    assert_eq!(v["bat_relocated"].as_bool(), Some(false));
    // A shrink over data: one error line, status 1, nothing changed.
    let out = Command::new(bin)
        .args(["resize", p, "16M"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("4096 bytes of data lie beyond"),
        "{err}"
    );
    assert_eq!(
        Disk::open(&path, OpenMode::ReadOnly)
            .unwrap()
            .virtual_size(),
        64 * MIB
    );
    let out = Command::new(bin)
        .args(["resize", p, "16M", "--allow-shrink"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Resized") && text.contains("dropped"),
        "{text}"
    );
    let d = Disk::open(&path, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.virtual_size(), 16 * MIB);
    assert!(read_all(&d).iter().all(|&b| b == 0));
}

/// A shrink cuts the file after its last used block; the holes the open
/// before it found past the new end must not be given to a new block
/// (its data would lie past the end of the file: QEMU calls such a file
/// truncated). Found by `chain_sizes`' model run.
#[test]
fn a_block_allocated_after_a_shrink_lies_inside_the_file() {
    let dir = support::tempdir();
    let p = dir.path().join("s.vhdx");
    let d = Disk::create(
        &p,
        &CreateOptions::new(6 * MIB + 1536).block_size(MIB as u32),
    )
    .unwrap();
    let mut model = vec![0u8; 6 * MIB as usize + 1536];
    for (k, (off, len)) in [(3 * MIB + 512, 8192usize), (6 * MIB - 4096, 4608)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(k as u64 + 1, off, len);
        d.write_at(&data, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    d.close().unwrap();
    // Reopened (the open finds no hole yet), shrunk: the last block goes.
    let mut d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    d.resize(4 * MIB + 1536, lossy()).unwrap();
    d.close().unwrap();
    model.truncate(4 * MIB as usize + 1536);
    // Reopened: its hole list is of the cut file. Grow it back, shrink
    // again (the holes past the new end), then a block is written.
    let mut d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    d.resize(6 * MIB, grow()).unwrap();
    model.resize(6 * MIB as usize, 0);
    let data = pattern(9, 5 * MIB, 4096);
    d.write_at(&data, 5 * MIB).unwrap();
    d.close().unwrap();
    model[5 * MIB as usize..5 * MIB as usize + 4096].copy_from_slice(&data);
    let mut d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    d.resize(4 * MIB + 1536, lossy()).unwrap();
    model.truncate(4 * MIB as usize + 1536);
    let data = pattern(10, 512, 4608);
    d.write_at(&data, 512).unwrap();
    model[512..512 + 4608].copy_from_slice(&data);
    d.close().unwrap();
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    let got = read_all(&d);
    assert!(got == model, "{}", first_diff(&got, &model));
    drop(d);
    if support::oracle::have_qemu() {
        support::oracle::qemu_check(&p);
    } else {
        support::oracle::missing("qemu-img");
    }
}
