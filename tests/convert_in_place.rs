//! Converting a base disk between fixed and dynamic in place
//! (`Disk::convert_in_place`, `ckpt convert --in-place`).
//!
//! - Round trips against a byte model: random writes, zero writes and
//!   trims, then dynamic → fixed → dynamic (more writes between), with
//!   512 and 4096-byte sectors and a partial last block; the data stays
//!   the same, the kind and the allocation are what they should be, the
//!   file is virtual size + metadata when fixed and shrinks when dynamic.
//! - QEMU judges the files: `qemu-img check` passes and `qemu-img compare`
//!   against the raw model finds them identical after each conversion,
//!   also for disks `qemu-img` made (dynamic and fixed) and `qemu-io`
//!   wrote; QEMU still writes the converted files.
//! - Crash sweeps (clean and torn cuts at every event) of both directions:
//!   the survivor passes `check_storage`, opens read-only and read-write,
//!   reads the model, is of the old kind or the new one; converting again
//!   (plus a full compact for an interrupted fixed → dynamic) finishes.
//!   The same cuts on a storage with a volatile write cache (lossy sweeps).
//! - An EIO or ENOSPC at every event, then convert again: it finishes.
//! - A cancel in the middle leaves a usable disk; the space check refuses
//!   with NoSpace and writes nothing; refusals (differencing, read-only,
//!   to differencing); the same kind is a no-op that writes nothing; a
//!   child of the converted base stays linked (the DataWriteGuid stays).
//! - The `ckpt convert --in-place` command: reports, a missing file, a
//!   file in use, a differencing disk, bad arguments.

mod support;

use std::path::Path;
use std::sync::Arc;

use ckpt::disk::check::check_storage;
use ckpt::io::{Cut, FaultStorage, MemStorage, Storage, Transient};
use ckpt::{
    ChildOptions, CompactMode, CompactOptions, CreateOptions, Disk, DiskKind, ErrorKind,
    InPlaceOptions, InPlaceReport, OpenMode,
};

use support::cli::{fail, fails, json, ok_text, run, s};
use support::lossy::LossyStorage;
use support::{first_diff, pattern, read_all, Counting, Ctx, Rng, MIB};

const BS: u64 = MIB;

fn no_opts() -> InPlaceOptions<'static> {
    InPlaceOptions::default()
}

#[track_caller]
fn convert(disk: &mut Disk, to: DiskKind) -> InPlaceReport {
    disk.convert_in_place(to, no_opts())
        .unwrap_or_else(|e| panic!("convert to {} failed: {e}", to.as_str()))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// Random writes (pattern and zeros) and trims on `disk`, kept in `model`.
fn scribble(disk: &Disk, model: &mut [u8], rng: &mut Rng, steps: u64, seed: u64) {
    let size = model.len() as u64;
    let lss = disk.logical_sector_size() as u64;
    for step in 0..steps {
        let off = rng.below(size / lss) * lss;
        let len = (rng.below(3 * BS / lss) * lss + lss).min(size - off);
        let r = off as usize..(off + len) as usize;
        match rng.below(6) {
            0..=2 => {
                let d = pattern(seed * 1000 + step, off, len as usize);
                disk.write_at(&d, off).unwrap();
                model[r].copy_from_slice(&d);
            }
            3 => {
                disk.write_at(&vec![0u8; len as usize], off).unwrap();
                model[r].fill(0);
            }
            _ => {
                disk.trim(off, len).unwrap();
                model[r].fill(0);
            }
        }
    }
}

/// The number of blocks of `model` that hold a byte that is not zero.
fn data_blocks(model: &[u8], bs: u64) -> u64 {
    model
        .chunks(bs as usize)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64
}

/// `disk` is fixed: every block allocated.
#[track_caller]
fn assert_fixed(disk: &Disk) {
    let info = disk.info();
    assert_eq!(info.kind, DiskKind::Fixed);
    let bs = info.block_size as u64;
    let blocks = info.virtual_size.div_ceil(bs);
    assert_eq!(info.allocated_bytes, blocks * bs, "{info:?}");
}

// ------------------------------------------------------ the byte model

#[test]
fn round_trips_against_a_byte_model_and_qemu() {
    let qemu = support::have_qemu();
    if !qemu {
        support::missing("qemu-img and qemu-io");
    }
    // (virtual size, logical sector size), partial last blocks in the
    // last two. QEMU's VHDX driver opens only 512-byte logical sectors.
    for (k, (size, lss)) in [
        (24 * MIB, 512u32),
        (20 * MIB + 12 * 512, 512),
        (16 * MIB + 3 * 4096, 4096),
    ]
    .into_iter()
    .enumerate()
    {
        let qemu = qemu && lss == 512;
        let _c = Ctx(format!("size {size}, sectors {lss}"));
        let t = support::tempdir();
        let path = t.path().join("d.vhdx");
        let mut disk = Disk::create(
            &path,
            &CreateOptions::new(size)
                .block_size(BS as u32)
                .logical_sector_size(lss),
        )
        .unwrap();
        let mut model = vec![0u8; size as usize];
        let mut rng = Rng::new(k as u64);
        scribble(&disk, &mut model, &mut rng, 40, k as u64);
        disk.flush().unwrap();
        let before = disk.info();
        let guid = before.data_write_guid;

        let r = convert(&mut disk, DiskKind::Fixed);
        assert!(r.changed && r.from == DiskKind::Dynamic && r.to == DiskKind::Fixed);
        let blocks = size.div_ceil(BS);
        assert_eq!(
            r.blocks_allocated,
            blocks - before.allocated_bytes / BS,
            "{r:?}"
        );
        assert_eq!(r.bytes_after, file_len(&path));
        assert_fixed(&disk);
        let got = read_all(&disk);
        assert!(got == model, "after to fixed: {}", first_diff(&got, &model));
        disk.close().unwrap();
        // The file: header, log, metadata and BAT (4 MiB) and every block.
        let len = file_len(&path);
        assert!(
            len >= blocks * BS && len <= blocks * BS + 4 * MIB,
            "a fixed file of {len} bytes for {blocks} blocks"
        );
        // Its blocks take space on the volume: reserved, not holes (the
        // space of reused holes is reserved again).
        let on_disk =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap()) * 512;
        assert!(
            on_disk >= blocks * BS,
            "a fixed file of {len} bytes uses only {on_disk} bytes of the volume"
        );
        if qemu {
            support::qemu_check(&path);
            support::qemu_reads(&path, &model, t.path());
        }

        // Reopened: fixed, same DataWriteGuid; trims zero-fill now.
        let mut disk = Disk::open(&path, OpenMode::ReadWrite).unwrap();
        assert_fixed(&disk);
        assert_eq!(disk.info().data_write_guid, guid);
        scribble(&disk, &mut model, &mut rng, 30, 10 + k as u64);
        assert_fixed(&disk);
        assert!(read_all(&disk) == model);
        disk.flush().unwrap();
        let guid = disk.info().data_write_guid;

        let r = convert(&mut disk, DiskKind::Dynamic);
        assert!(r.changed && r.from == DiskKind::Fixed && r.to == DiskKind::Dynamic);
        let info = disk.info();
        assert_eq!(info.kind, DiskKind::Dynamic);
        let live = data_blocks(&model, BS);
        assert_eq!(info.allocated_bytes, live * BS, "{r:?}");
        assert_eq!(r.blocks_freed, blocks - live, "{r:?}");
        let got = read_all(&disk);
        assert!(
            got == model,
            "after to dynamic: {}",
            first_diff(&got, &model)
        );
        disk.close().unwrap();
        let len = file_len(&path);
        assert!(
            len <= live * BS + 5 * MIB,
            "a dynamic file of {len} bytes for {live} blocks of data"
        );
        if qemu {
            support::qemu_check(&path);
            support::qemu_reads(&path, &model, t.path());
        }
        let d = Disk::open(&path, OpenMode::ReadOnly).unwrap();
        assert_eq!(d.info().kind, DiskKind::Dynamic);
        assert_eq!(d.info().data_write_guid, guid);
        assert!(read_all(&d) == model);
        assert!(support::assert_ckpt_check(&path).is_ok());
    }
}

#[test]
fn qemu_made_disks_converted_both_ways() {
    if !support::have_qemu() {
        return support::missing("qemu-img and qemu-io");
    }
    let t = support::tempdir();
    let size = 32 * MIB;
    for sub in ["dynamic", "fixed"] {
        let _c = Ctx(format!("a {sub} disk made by qemu-img"));
        let path = t.path().join(format!("{sub}.vhdx"));
        support::qemu_create_vhdx(&path, size, &format!("block_size=1M,subformat={sub}"));
        let cmds: Vec<String> = (0..8)
            .map(|b| format!("write -P {} {} 1M", 1 + b, b * 3 * MIB + 512 * 1024))
            .collect();
        support::qemu_io("vhdx", &path, &cmds);
        let raw = t.path().join(format!("{sub}.raw"));
        support::qemu_convert_raw(&path, &raw);

        let (first, second) = if sub == "dynamic" {
            (DiskKind::Fixed, DiskKind::Dynamic)
        } else {
            (DiskKind::Dynamic, DiskKind::Fixed)
        };
        for to in [first, second] {
            let mut disk = Disk::open(&path, OpenMode::ReadWrite).unwrap();
            assert_ne!(disk.info().kind, to);
            let r = convert(&mut disk, to);
            assert!(r.changed, "{r:?}");
            if to == DiskKind::Fixed {
                assert_fixed(&disk);
            }
            disk.close().unwrap();
            support::qemu_check(&path);
            support::qemu_compare_raw(&path, &raw);
            let len = file_len(&path);
            if to == DiskKind::Fixed {
                assert!(len >= size, "{len}");
            } else {
                // 8 writes of 1 MiB across block boundaries: 16 blocks.
                assert!(len <= 16 * MIB + 8 * MIB, "{len}");
            }
        }
        // QEMU still writes the converted file.
        support::qemu_io("vhdx", &path, &["write -P 0x77 31M 1M"]);
        support::qemu_check(&path);
        support::qemu_io("vhdx", &path, &["read -P 0x77 31M 1M"]);
    }
}

// ------------------------------------------------------- crash sweeps

/// A dynamic disk (1 MiB blocks, 14 MiB) with data in some blocks, a
/// trimmed block and a block of zeros; closed. Returns the image and its
/// content. Converting it to fixed allocates 9 blocks (two batches).
fn dynamic_image() -> (Vec<u8>, Vec<u8>) {
    let size = 14 * MIB;
    let mem = MemStorage::new();
    let disk = Disk::create_on(
        Arc::new(mem.clone()),
        &CreateOptions::new(size).block_size(BS as u32),
    )
    .unwrap();
    let mut model = vec![0u8; size as usize];
    for b in [0u64, 3, 5, 9, 11, 13] {
        let d = if b == 9 {
            vec![0u8; BS as usize]
        } else {
            pattern(b, b * BS, BS as usize)
        };
        disk.write_at(&d, b * BS).unwrap();
        model[(b * BS) as usize..((b + 1) * BS) as usize].copy_from_slice(&d);
    }
    disk.flush().unwrap();
    disk.trim(5 * BS, BS).unwrap();
    model[(5 * BS) as usize..(6 * BS) as usize].fill(0);
    disk.close().unwrap();
    (mem.snapshot(), model)
}

/// The same content made fixed (the image of the fixed → dynamic sweeps).
fn fixed_image() -> (Vec<u8>, Vec<u8>) {
    let (image, model) = dynamic_image();
    let mem = MemStorage::from_vec(image);
    let mut d = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadWrite).unwrap();
    convert(&mut d, DiskKind::Fixed);
    d.close().unwrap();
    (mem.snapshot(), model)
}

fn open_rw(s: Arc<dyn Storage>) -> Disk {
    Disk::open_storage(s, OpenMode::ReadWrite).unwrap_or_else(|e| panic!("open: {e}"))
}

/// The events of opening `image` and of converting it to `to`.
fn count_events(image: &[u8], to: DiskKind) -> (u64, u64) {
    let f = Arc::new(FaultStorage::new(
        MemStorage::from_vec(image.to_vec()),
        u64::MAX,
        Cut::Clean,
    ));
    let mut disk = open_rw(f.clone());
    let start = f.events();
    let r = convert(&mut disk, to);
    assert!(r.changed, "{r:?}");
    let n = f.events() - start;
    drop(disk);
    (start, n)
}

/// Finish a conversion to `to` that was interrupted: convert again (and
/// compact a disk that is dynamic already but was not compacted).
fn finish(disk: &mut Disk, to: DiskKind) {
    let r = convert(disk, to);
    if to == DiskKind::Dynamic && !r.changed {
        disk.compact(CompactOptions {
            mode: CompactMode::Full,
            progress: None,
        })
        .unwrap();
    }
}

/// `disk` is of kind `to` and as small or as full as that kind is.
#[track_caller]
fn assert_finished(disk: &Disk, to: DiskKind, model: &[u8]) {
    let got = read_all(disk);
    assert!(got == model, "{}", first_diff(&got, model));
    match to {
        DiskKind::Fixed => assert_fixed(disk),
        _ => {
            let info = disk.info();
            assert_eq!(info.kind, DiskKind::Dynamic);
            assert_eq!(
                info.allocated_bytes,
                data_blocks(model, BS) * BS,
                "{info:?}"
            );
        }
    }
}

/// Cut a conversion of `image` to `to` at every event with `cut`.
fn sweep(image: &[u8], model: &[u8], from: DiskKind, to: DiskKind, cut: Cut) {
    let (opening, events) = count_events(image, to);
    eprintln!("{} -> {}: {events} events", from.as_str(), to.as_str());
    assert!(events > 20, "only {events} events");
    let mut kinds = [0u32; 2];
    for n in 0..events {
        let _c = Ctx(format!(
            "{} -> {}: {cut:?} cut at event {n} of {events}",
            from.as_str(),
            to.as_str()
        ));
        let f = Arc::new(FaultStorage::new(
            MemStorage::from_vec(image.to_vec()),
            opening + n,
            cut,
        ));
        let mut disk = open_rw(f.clone());
        assert!(
            disk.convert_in_place(to, no_opts()).is_err(),
            "the cut did not stop the conversion"
        );
        drop(disk);
        let survived = MemStorage::from_vec(f.inner().snapshot());
        let report = check_storage(Arc::new(survived.clone()));
        assert!(report.is_ok(), "check: {:?}", report.problems);
        // Read-only (a dirty log replayed in memory), then read-write (the
        // log replayed into the file): the same kind and data both ways.
        let ro = Disk::open_storage(Arc::new(survived.clone()), OpenMode::ReadOnly)
            .unwrap_or_else(|e| panic!("read-only open: {e}"));
        let kind = ro.info().kind;
        assert!(kind == from || kind == to, "a {kind:?} disk");
        kinds[(kind == to) as usize] += 1;
        let got = read_all(&ro);
        assert!(got == model, "read-only: {}", first_diff(&got, model));
        drop(ro);
        let mut d = open_rw(Arc::new(survived.clone()));
        assert_eq!(d.info().kind, kind, "read-write open");
        let got = read_all(&d);
        assert!(got == model, "read-write: {}", first_diff(&got, model));
        finish(&mut d, to);
        assert_finished(&d, to, model);
        d.close().unwrap();
        let d = Disk::open_storage(Arc::new(survived), OpenMode::ReadOnly).unwrap();
        assert_finished(&d, to, model);
    }
    // Cuts before the flag changed and after it.
    assert!(kinds[0] > 0 && kinds[1] > 0, "{kinds:?}");
}

#[test]
fn crash_sweep_of_dynamic_to_fixed() {
    let (image, model) = dynamic_image();
    for cut in [Cut::Clean, Cut::Torn] {
        sweep(&image, &model, DiskKind::Dynamic, DiskKind::Fixed, cut);
    }
}

#[test]
fn crash_sweep_of_fixed_to_dynamic() {
    let (image, model) = fixed_image();
    for cut in [Cut::Clean, Cut::Torn] {
        sweep(&image, &model, DiskKind::Fixed, DiskKind::Dynamic, cut);
    }
}

/// The same cuts on a storage with a volatile write cache: at each cut,
/// the writes since the last sync are lost or kept in several
/// combinations (none, all, each alone, all but each); every survivor
/// opens, reads the model and is of the old kind or the new one. This
/// proves the order: zeroed space synced before its BAT entry, the flag
/// in its own log entry.
#[test]
fn lossy_crash_sweeps_of_both_directions() {
    for (image, model, from, to) in [
        {
            let (i, m) = dynamic_image();
            (i, m, DiskKind::Dynamic, DiskKind::Fixed)
        },
        {
            let (i, m) = fixed_image();
            (i, m, DiskKind::Fixed, DiskKind::Dynamic)
        },
    ] {
        let (opening, events) = count_events(&image, to);
        let mut judged = 0;
        for n in 0..events {
            let _c = Ctx(format!(
                "to {}: lossy cut at event {n} of {events}",
                to.as_str()
            ));
            let l = Arc::new(LossyStorage::new(image.clone(), opening + n));
            let mut d = open_rw(l.clone());
            assert!(d.convert_in_place(to, no_opts()).is_err());
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
                let kind = d.info().kind;
                assert!(kind == from || kind == to, "a {kind:?} disk");
                let got = read_all(&d);
                assert!(got == model, "{}", first_diff(&got, &model));
                judged += 1;
            }
        }
        assert!(judged > events as usize);
    }
}

#[test]
fn an_error_at_every_event_then_convert_again() {
    for (image, model, to) in [
        {
            let (i, m) = dynamic_image();
            (i, m, DiskKind::Fixed)
        },
        {
            let (i, m) = fixed_image();
            (i, m, DiskKind::Dynamic)
        },
    ] {
        let (opening, events) = count_events(&image, to);
        for kind in [Transient::Eio, Transient::NoSpace] {
            for n in 0..events {
                let _c = Ctx(format!(
                    "to {}: {kind:?} at event {n} of {events}",
                    to.as_str()
                ));
                let f = Arc::new(FaultStorage::transient(
                    MemStorage::from_vec(image.clone()),
                    opening + n,
                    kind,
                ));
                let mut d = open_rw(f.clone());
                let first = d.convert_in_place(to, no_opts());
                match &first {
                    Ok(_) => assert!(
                        f.failed_a_discard(),
                        "the fault was not reported: {first:?}"
                    ),
                    Err(e) if kind == Transient::NoSpace => {
                        assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}")
                    }
                    Err(_) => {}
                }
                let got = read_all(&d);
                assert!(
                    got == model,
                    "after the error: {}",
                    first_diff(&got, &model)
                );
                finish(&mut d, to);
                assert_finished(&d, to, &model);
                d.close().unwrap();
                let m = MemStorage::from_vec(f.inner().snapshot());
                assert!(check_storage(Arc::new(m.clone())).is_ok());
                let d = Disk::open_storage(Arc::new(m), OpenMode::ReadOnly).unwrap();
                assert_finished(&d, to, &model);
            }
        }
    }
}

// ------------------------------------------- cancel, space, refusals

#[test]
fn a_cancel_in_the_middle_leaves_a_usable_disk() {
    for (image, model, from, to) in [
        {
            let (i, m) = dynamic_image();
            (i, m, DiskKind::Dynamic, DiskKind::Fixed)
        },
        {
            let (i, m) = fixed_image();
            (i, m, DiskKind::Fixed, DiskKind::Dynamic)
        },
    ] {
        for stop_at in [1u64, 4, 9] {
            let _c = Ctx(format!("to {}, cancel at call {stop_at}", to.as_str()));
            let mem = MemStorage::from_vec(image.clone());
            let mut d = open_rw(Arc::new(mem.clone()));
            let mut calls = 0;
            let mut cb = |done: u64, total: u64| {
                assert!(done <= total, "{done} > {total}");
                calls += 1;
                calls < stop_at
            };
            let e = d
                .convert_in_place(
                    to,
                    InPlaceOptions {
                        progress: Some(&mut cb),
                        space_limit: None,
                    },
                )
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
            // Dynamic → fixed stays dynamic until the end; fixed → dynamic
            // is dynamic from the first step.
            assert_eq!(d.info().kind, DiskKind::Dynamic);
            let mut model = model.clone();
            assert!(read_all(&d) == model);
            // Usable: it writes, and a reopen reads the same.
            let data = pattern(99, 7 * BS, 4096);
            d.write_at(&data, 7 * BS).unwrap();
            model[(7 * BS) as usize..(7 * BS) as usize + 4096].copy_from_slice(&data);
            d.close().unwrap();
            let mut d = open_rw(Arc::new(mem.clone()));
            assert!(read_all(&d) == model);
            finish(&mut d, to);
            assert_finished(&d, to, &model);
            d.close().unwrap();
            let _ = from;
        }
    }
}

#[test]
fn the_space_check_refuses_and_writes_nothing() {
    let (image, model) = dynamic_image();
    let blocks_missing = 9u64;
    let c = Counting::new(MemStorage::from_vec(image.clone()), true);
    let mut d = open_rw(c.clone());
    let before = c.mutations();
    let e = d
        .convert_in_place(
            DiskKind::Fixed,
            InPlaceOptions {
                progress: None,
                space_limit: Some(blocks_missing * BS - 1),
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{}", blocks_missing * BS)) && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert_eq!(c.mutations(), before, "the refusal wrote");
    assert_eq!(d.info().kind, DiskKind::Dynamic);
    // Exactly enough room: it goes ahead.
    let r = d
        .convert_in_place(
            DiskKind::Fixed,
            InPlaceOptions {
                progress: None,
                space_limit: Some(blocks_missing * BS),
            },
        )
        .unwrap();
    assert_eq!(r.blocks_allocated, blocks_missing);
    assert_finished(&d, DiskKind::Fixed, &model);

    // On a file, the volume's free space is measured too (and the limit
    // still applies).
    let t = support::tempdir();
    let path = t.path().join("d.vhdx");
    std::fs::write(&path, &image).unwrap();
    let mut d = Disk::open(&path, OpenMode::ReadWrite).unwrap();
    let e = d
        .convert_in_place(
            DiskKind::Fixed,
            InPlaceOptions {
                progress: None,
                space_limit: Some(MIB),
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("d.vhdx"), "{e}");
    drop(d);
    assert_eq!(std::fs::read(&path).unwrap(), image, "the refusal wrote");
}

#[test]
fn refusals_and_the_same_kind() {
    let (image, model) = dynamic_image();
    // Read-only.
    let mut ro = Disk::open_storage(
        Arc::new(MemStorage::from_vec(image.clone())),
        OpenMode::ReadOnly,
    )
    .unwrap();
    let e = ro.convert_in_place(DiskKind::Fixed, no_opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    // To differencing.
    let mut d = open_rw(Arc::new(MemStorage::from_vec(image.clone())));
    let e = d
        .convert_in_place(DiskKind::Differencing, no_opts())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // A differencing disk.
    let base = MemStorage::from_vec(image.clone());
    let child = MemStorage::new();
    {
        let b = Disk::open_storage(Arc::new(base.clone()), OpenMode::ReadOnly).unwrap();
        Disk::create_child_on(Arc::new(child.clone()), &b, &ChildOptions::default()).unwrap();
    }
    let mut chain = Disk::open_storage_chain(
        vec![Arc::new(child.clone()), Arc::new(base.clone())],
        OpenMode::ReadWrite,
    )
    .unwrap();
    for to in [DiskKind::Fixed, DiskKind::Dynamic] {
        let e = chain.convert_in_place(to, no_opts()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("differencing"), "{e}");
    }
    assert!(read_all(&chain) == model);
    drop(chain);
    // The same kind: nothing done, nothing written.
    for (image, kind) in [
        (image.clone(), DiskKind::Dynamic),
        (fixed_image().0, DiskKind::Fixed),
    ] {
        let c = Counting::new(MemStorage::from_vec(image), true);
        let mut d = open_rw(c.clone());
        let before = c.mutations();
        let r = convert(&mut d, kind);
        assert!(!r.changed && r.from == kind && r.to == kind, "{r:?}");
        assert_eq!((r.blocks_allocated, r.blocks_freed), (0, 0));
        assert_eq!(r.bytes_after, r.bytes_before);
        assert_eq!(c.mutations(), before, "a no-op wrote");
    }
}

/// What the disk reads does not change, so neither does the DataWriteGuid:
/// a differencing disk made on the base stays linked through both
/// conversions (checked by opening its chain, which compares the linkage).
#[test]
fn a_child_of_the_converted_base_stays_linked() {
    let t = support::tempdir();
    let base = t.path().join("base.vhdx");
    let child = t.path().join("child.avhdx");
    let size = 16 * MIB;
    let b = Disk::create(&base, &CreateOptions::new(size).block_size(BS as u32)).unwrap();
    let mut model = vec![0u8; size as usize];
    let d = pattern(1, 2 * BS, 2 * BS as usize);
    b.write_at(&d, 2 * BS).unwrap();
    model[(2 * BS) as usize..(4 * BS) as usize].copy_from_slice(&d);
    b.close().unwrap();
    let c = Disk::create_child(&child, &base, &ChildOptions::default()).unwrap();
    let d = pattern(2, 3 * BS, 4096);
    c.write_at(&d, 3 * BS).unwrap();
    model[(3 * BS) as usize..(3 * BS) as usize + 4096].copy_from_slice(&d);
    c.close().unwrap();
    for to in [DiskKind::Fixed, DiskKind::Dynamic] {
        let mut b = Disk::open(&base, OpenMode::ReadWrite).unwrap();
        assert!(convert(&mut b, to).changed);
        b.close().unwrap();
        let chain = Disk::open(&child, OpenMode::ReadOnly)
            .unwrap_or_else(|e| panic!("after to {}: {e}", to.as_str()));
        let got = read_all(&chain);
        assert!(got == model, "{}", first_diff(&got, &model));
    }
    if !support::have_pyvhdi() {
        return support::missing("the Python module pyvhdi (python3-libvhdi)");
    }
    // libvhdi reads the chain the same.
    let out = t.path().join("libvhdi.raw");
    let script = r#"
import sys, pyvhdi
b = pyvhdi.file(); b.open(sys.argv[2])
c = pyvhdi.file(); c.open(sys.argv[3]); c.set_parent(b)
n = c.get_media_size()
open(sys.argv[1], "wb").write(c.read_buffer_at_offset(n, 0))
"#;
    support::python(script, &[s(&out), s(&base), s(&child)]);
    let got = std::fs::read(&out).unwrap();
    assert!(got == model, "libvhdi: {}", first_diff(&got, &model));
}

// ------------------------------------------------------------ the CLI

#[test]
fn the_ckpt_convert_in_place_command() {
    let t = support::tempdir();
    let path = t.path().join("c.vhdx");
    let p = s(&path);
    let disk = Disk::create(&path, &CreateOptions::new(16 * MIB).block_size(BS as u32)).unwrap();
    let data = pattern(5, 3 * BS, 4096);
    disk.write_at(&data, 3 * BS).unwrap();
    let model = read_all(&disk);
    disk.close().unwrap();
    let before = file_len(&path);

    let v = json(&["convert", "--in-place", p, "--to", "fixed", "--json"]);
    assert_eq!(v["from"].as_str(), Some("dynamic"));
    assert_eq!(v["to"].as_str(), Some("fixed"));
    assert_eq!(v["changed"].as_bool(), Some(true));
    assert_eq!(v["blocks_allocated"].as_u64(), Some(15));
    assert_eq!(v["bytes_before"].as_u64(), Some(before));
    assert_eq!(v["bytes_after"].as_u64(), Some(file_len(&path)));
    let d = Disk::open(&path, OpenMode::ReadOnly).unwrap();
    assert_fixed(&d);
    assert!(read_all(&d) == model);
    drop(d);
    // Again: nothing to do (text output).
    let text = ok_text(&["convert", "--in-place", p, "--to", "fixed"]);
    assert!(text.contains("fixed disk already"), "{text}");
    // The file in use: one error line, nothing changed.
    let held = Disk::open(&path, OpenMode::ReadWrite).unwrap();
    let err = fail(&["convert", "--in-place", p, "--to", "dynamic"]);
    assert!(err.contains("c.vhdx") && err.contains("busy"), "{err}");
    drop(held);
    // Back to dynamic (text output).
    let text = ok_text(&["convert", "--in-place", p, "--to", "DYNAMIC"]);
    assert!(
        text.contains("Converted")
            && text.contains("fixed -> dynamic")
            && text.contains("15 blocks freed"),
        "{text}"
    );
    assert!(file_len(&path) < before + MIB);
    let d = Disk::open(&path, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.info().kind, DiskKind::Dynamic);
    assert!(read_all(&d) == model);
    drop(d);

    // A missing file, a differencing disk, bad arguments.
    let missing = t.path().join("nope.vhdx");
    let err = fail(&["convert", "--in-place", s(&missing), "--to", "fixed"]);
    assert!(err.contains("nope.vhdx"), "{err}");
    let child = t.path().join("k.avhdx");
    Disk::create_child(&child, &path, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let err = fail(&["convert", "--in-place", s(&child), "--to", "fixed"]);
    assert!(err.contains("differencing"), "{err}");
    for args in [
        vec!["convert", "--in-place", p],
        vec!["convert", "--in-place", p, "--to", "differencing"],
        vec!["convert", "--in-place", p, "--to", "fixed", "--fixed"],
        vec!["convert", "--in-place", p, "other.vhdx", "--to", "fixed"],
        vec!["convert", p, "--to", "fixed"],
    ] {
        let o = run(&args);
        let err = fails(&args, &o);
        assert!(err.starts_with("error: "), "{err}");
    }
    let d = Disk::open(&path, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.info().kind, DiskKind::Dynamic);
    assert!(read_all(&d) == model);
}
