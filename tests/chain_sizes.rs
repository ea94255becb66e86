//! Chains whose layers differ in size (Hyper-V resizes a differencing
//! disk: past a parent's end its child reads zeros).
//!
//! - A child grown past its parent, a child shrunk below it and grown
//!   again (the space it gets back reads zeros, not the parent's data
//!   that was there), with partial last blocks in every state (not
//!   present, partly present, fully present); each read against a byte
//!   model, reopened, and read by libvhdi (`pyvhdi` with `set_parent`).
//! - Three layers of three sizes: reads, extents, changed ranges (never
//!   missing a differing sector), flatten.
//! - Merges: a larger child into a smaller parent grows the parent, a
//!   smaller child shrinks it; a merge through a smaller middle layer
//!   zeroes what it hid; QEMU checks and compares the merged base.
//! - Refusal: resizing a disk that has a child.
//! - Crash sweep of a differencing resize (clean and torn cuts at every
//!   event): the survivor opens with the old or the new size and reads
//!   the model of that size; resizing again finishes. A transient EIO or
//!   ENOSPC at every event, then the same handle resizes again.
//! - A model run: random writes, trims, resizes, compactions (quick and
//!   full), new children and merges against a byte vector.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ckpt::disk::merge::{self, MergeOptions};
use ckpt::io::{Cut, FaultStorage, MemStorage, Transient};
use ckpt::{ChildOptions, CreateOptions, Disk, ErrorKind, OpenMode, ResizeOptions};

use support::oracle::{self, have_pyvhdi};
use support::{first_diff, read_all, Ctx, Rng, MIB};

const SHRINK: ResizeOptions = ResizeOptions { allow_shrink: true };
const GROW: ResizeOptions = ResizeOptions {
    allow_shrink: false,
};

fn child_opts() -> ChildOptions {
    ChildOptions {
        block_size: MIB as u32,
        ..ChildOptions::default()
    }
}

/// Write `data` at `off` into `disk` and into `model`.
fn put(disk: &Disk, model: &mut [u8], off: u64, data: &[u8]) {
    disk.write_at(data, off).unwrap();
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

/// A base of `size` bytes (1 MiB blocks) full of data.
fn full_base(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let d = Disk::create(path, &CreateOptions::new(size).block_size(MIB as u32)).unwrap();
    let mut model = vec![0u8; size as usize];
    Rng::new(seed).fill(&mut model);
    d.write_at(&model, 0).unwrap();
    d.close().unwrap();
    model
}

#[track_caller]
fn assert_reads(disk: &Disk, model: &[u8]) {
    assert_eq!(disk.virtual_size(), model.len() as u64);
    let got = read_all(disk);
    assert!(got == model, "{}", first_diff(&got, model));
}

/// libvhdi reads the chain `base_first` (paths, base first) as `model`,
/// where it can: libvhdi 20210425 fails a read that reaches past a
/// parent's end, and reads a PAYLOAD_BLOCK_ZERO block of a differencing
/// file from the parent (tests/libvhdi.rs). So it reads `[0, upto)` with
/// `upto` the smallest layer's size (where no layer hides another), and
/// the caller keeps ZERO blocks out of that range.
fn libvhdi_reads(base_first: &[PathBuf], model: &[u8], limit: u64) {
    if !have_pyvhdi() {
        oracle::missing("python3-libvhdi (pyvhdi)");
        return;
    }
    let upto = base_first
        .iter()
        .map(|p| Disk::open_single(p).unwrap().virtual_size())
        .min()
        .unwrap()
        .min(limit);
    let script = r#"
import sys
import pyvhdi
files = []
upto = int(sys.argv[1])
for p in sys.argv[2:]:
    f = pyvhdi.file(); f.open(p)
    if files:
        f.set_parent(files[-1])
    files.append(f)
top = files[-1]
print(top.get_media_size(), file=sys.stderr)
out = sys.stdout.buffer
off = 0
while off < upto:
    n = min(1 << 20, upto - off)
    out.write(top.read_buffer_at_offset(n, off))
    off += n
"#;
    let mut args: Vec<String> = vec![upto.to_string()];
    args.extend(base_first.iter().map(|p| p.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let got = oracle::python(script, &args);
    let want = &model[..upto as usize];
    assert!(got == want, "libvhdi: {}", first_diff(&got, want));
}

// ------------------------------------------------------------ two layers

#[test]
fn a_child_grown_past_its_parent_reads_zeros_there() {
    let dir = support::tempdir();
    let (base, top) = (dir.path().join("b.vhdx"), dir.path().join("c.avhdx"));
    let mut model = full_base(&base, 8 * MIB, 1);
    let mut c = Disk::create_child(&top, &base, &child_opts()).unwrap();
    let r = c.resize(12 * MIB + 4096, GROW).unwrap();
    assert_eq!((r.old_size, r.new_size), (8 * MIB, 12 * MIB + 4096));
    model.resize(12 * MIB as usize + 4096, 0);
    assert_reads(&c, &model);
    // Writes past the parent's end, across it, and a sector in the tail.
    put(&c, &mut model, 8 * MIB - 512, &[7u8; 1024]);
    put(&c, &mut model, 10 * MIB + 512, &[9u8; 4096]);
    put(&c, &mut model, 12 * MIB, &[3u8; 512]);
    assert_reads(&c, &model);
    c.close().unwrap();
    let c = Disk::open(&top, OpenMode::ReadOnly).unwrap();
    assert_reads(&c, &model);
    let ext = c.extents().unwrap();
    assert!(ext.iter().any(|e| !e.allocated && e.offset >= 8 * MIB));
    drop(c);
    libvhdi_reads(&[base, top], &model, u64::MAX);
}

/// Shrink a child of a full base to `small`, then grow it back to `big`:
/// the space between reads zeros. `prep` writes into the child first (to
/// put its tail block in a given state).
fn shrink_then_grow(small: u64, big: u64, prep: &[(u64, u8, usize)]) {
    let dir = support::tempdir();
    let (base, top) = (dir.path().join("b.vhdx"), dir.path().join("c.avhdx"));
    let mut model = full_base(&base, 8 * MIB, 2);
    let mut c = Disk::create_child(&top, &base, &child_opts()).unwrap();
    for &(off, v, n) in prep {
        put(&c, &mut model, off, &vec![v; n]);
    }
    // The parent's data past the new end counts as data the shrink drops.
    let e = c.resize(small, GROW).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("beyond the new end"), "{e}");
    let r = c.resize(small, SHRINK).unwrap();
    assert!(r.bytes_dropped > 0);
    model.truncate(small as usize);
    assert_reads(&c, &model);
    c.resize(big, GROW).unwrap();
    model.resize(big as usize, 0);
    assert_reads(&c, &model);
    c.close().unwrap();
    let c = Disk::open(&top, OpenMode::ReadWrite).unwrap();
    assert_reads(&c, &model);
    // Still an ordinary disk: writes over what was hidden.
    put(&c, &mut model, small - 512, &[0x5au8; 2048]);
    assert_reads(&c, &model);
    c.close().unwrap();
    let bytes = std::fs::read(&top).unwrap();
    let rep = ckpt::disk::check::check_storage(Arc::new(MemStorage::from_vec(bytes)));
    assert!(rep.is_ok(), "check: {:?}", rep.problems);
    // Past `small` the child holds ZERO blocks, which libvhdi misreads.
    libvhdi_reads(&[base, top], &model, small);
}

#[test]
fn shrink_then_grow_with_the_tail_block_not_present() {
    // 5 MiB + 3 sectors: block 5 is partial and the child holds none of it.
    shrink_then_grow(5 * MIB + 1536, 8 * MIB, &[]);
}

#[test]
fn shrink_then_grow_with_the_tail_block_partly_present() {
    shrink_then_grow(5 * MIB + 1536, 8 * MIB, &[(5 * MIB, 0x11, 512)]);
}

#[test]
fn shrink_then_grow_with_the_tail_block_fully_present() {
    shrink_then_grow(5 * MIB + 1536, 8 * MIB, &[(5 * MIB, 0x22, MIB as usize)]);
}

#[test]
fn shrink_then_grow_on_block_boundaries_and_past_the_parent() {
    shrink_then_grow(3 * MIB, 11 * MIB, &[(2 * MIB, 0x33, 4096)]);
}

// ------------------------------------------------------------ three layers

/// base 8 MiB full, mid shrunk to 4 MiB + 1 KiB, top grown to 10 MiB.
fn three_sizes(dir: &Path) -> (Vec<PathBuf>, Vec<u8>) {
    let base = dir.join("b.vhdx");
    let mid = dir.join("m.avhdx");
    let top = dir.join("t.avhdx");
    let mut model = full_base(&base, 8 * MIB, 3);
    let mut m = Disk::create_child(&mid, &base, &child_opts()).unwrap();
    put(&m, &mut model, MIB, &[0x44u8; 8192]);
    m.resize(4 * MIB + 1024, SHRINK).unwrap();
    model.truncate(4 * MIB as usize + 1024);
    m.close().unwrap();
    let mut t = Disk::create_child(&top, &mid, &child_opts()).unwrap();
    t.resize(10 * MIB, GROW).unwrap();
    model.resize(10 * MIB as usize, 0);
    put(&t, &mut model, 3 * MIB, &[0x55u8; 4096]);
    put(&t, &mut model, 9 * MIB, &[0x66u8; 4096]);
    t.close().unwrap();
    (vec![base, mid, top], model)
}

#[test]
fn three_layers_of_three_sizes() {
    let dir = support::tempdir();
    let (paths, model) = three_sizes(dir.path());
    let t = Disk::open(&paths[2], OpenMode::ReadOnly).unwrap();
    assert_reads(&t, &model);
    // Extents: nothing allocated past the middle's end but the top's write.
    for e in t.extents().unwrap() {
        if e.allocated && e.offset >= 4 * MIB + 1024 {
            assert!(
                e.offset < 9 * MIB + 4096 && e.offset + e.length > 9 * MIB,
                "{e:?}"
            );
        }
    }
    // Changed ranges against the base cover every sector that differs.
    let base = Disk::open(&paths[0], OpenMode::ReadOnly).unwrap();
    let mut old = read_all(&base);
    old.resize(model.len(), 0);
    let ranges = t.changed_ranges(2).unwrap();
    let covered = |o: usize| {
        ranges
            .iter()
            .any(|r| (r.offset as usize..(r.offset + r.length) as usize).contains(&o))
    };
    let missed = (0..model.len())
        .step_by(512)
        .find(|&o| old[o..o + 512] != model[o..o + 512] && !covered(o));
    assert_eq!(missed, None, "a changed sector missing from {ranges:?}");
    assert!(ranges.iter().all(|r| r.offset + r.length <= 10 * MIB));
    // Flatten.
    let flat = dir.path().join("flat.vhdx");
    merge::flatten(&paths[2], &flat, &CreateOptions::new(0), None).unwrap();
    assert_reads(&Disk::open(&flat, OpenMode::ReadOnly).unwrap(), &model);
    drop((t, base));
    libvhdi_reads(&paths, &model, u64::MAX);
}

// ------------------------------------------------------------ merges

fn qemu_checks(vhdx: &Path, model: &[u8], dir: &Path) {
    if !oracle::have_qemu() {
        oracle::missing("qemu-img");
        return;
    }
    oracle::qemu_check(vhdx);
    assert_eq!(oracle::qemu_virtual_size(vhdx), model.len() as u64);
    oracle::qemu_reads(vhdx, model, dir);
}

#[test]
fn merging_a_larger_child_grows_the_parent() {
    let dir = support::tempdir();
    let (base, top) = (dir.path().join("b.vhdx"), dir.path().join("c.avhdx"));
    let mut model = full_base(&base, 6 * MIB + 512, 4);
    let mut c = Disk::create_child(&top, &base, &child_opts()).unwrap();
    c.resize(9 * MIB, GROW).unwrap();
    model.resize(9 * MIB as usize, 0);
    put(&c, &mut model, 6 * MIB, &[1u8; 4096]);
    put(&c, &mut model, 8 * MIB + 4096, &[2u8; 512]);
    c.close().unwrap();
    let r = merge::merge(&top, MergeOptions::default()).unwrap();
    assert_eq!(r.removed, vec![top.clone()]);
    let b = Disk::open(&base, OpenMode::ReadOnly).unwrap();
    assert_reads(&b, &model);
    drop(b);
    qemu_checks(&base, &model, dir.path());
}

#[test]
fn merging_a_smaller_child_shrinks_the_parent() {
    let dir = support::tempdir();
    let (base, top) = (dir.path().join("b.vhdx"), dir.path().join("c.avhdx"));
    let mut model = full_base(&base, 8 * MIB, 5);
    let mut c = Disk::create_child(&top, &base, &child_opts()).unwrap();
    put(&c, &mut model, 512, &[1u8; 4096]);
    c.resize(5 * MIB + 2048, SHRINK).unwrap();
    model.truncate(5 * MIB as usize + 2048);
    c.close().unwrap();
    merge::merge(&top, MergeOptions::default()).unwrap();
    let b = Disk::open(&base, OpenMode::ReadOnly).unwrap();
    assert_reads(&b, &model);
    drop(b);
    qemu_checks(&base, &model, dir.path());
    // Grown again, the dropped space reads zeros.
    let mut b = Disk::open(&base, OpenMode::ReadWrite).unwrap();
    b.resize(8 * MIB, GROW).unwrap();
    model.resize(8 * MIB as usize, 0);
    assert_reads(&b, &model);
}

#[test]
fn merging_through_a_smaller_middle_layer_zeroes_what_it_hid() {
    let dir = support::tempdir();
    let (paths, model) = three_sizes(dir.path());
    let opts = MergeOptions {
        into: Some(paths[0].clone()),
        ..MergeOptions::default()
    };
    merge::merge(&paths[2], opts).unwrap();
    assert!(!paths[1].exists() && !paths[2].exists());
    let b = Disk::open(&paths[0], OpenMode::ReadOnly).unwrap();
    assert_reads(&b, &model);
    drop(b);
    qemu_checks(&paths[0], &model, dir.path());
}

#[test]
fn merging_the_middle_into_a_larger_base_keeps_the_top_reading_the_same() {
    let dir = support::tempdir();
    let (paths, model) = three_sizes(dir.path());
    // The middle (4 MiB + 1 KiB) into the base (8 MiB): the base shrinks
    // to the middle's size; the top is re-pointed and reads the same.
    let r = merge::merge(&paths[1], MergeOptions::default()).unwrap();
    assert_eq!(r.repointed, vec![paths[2].clone()]);
    let t = Disk::open(&paths[2], OpenMode::ReadOnly).unwrap();
    assert_reads(&t, &model);
    assert_eq!(t.depth(), 2);
    drop(t);
    libvhdi_reads(&[paths[0].clone(), paths[2].clone()], &model, u64::MAX);
}

#[test]
fn resizing_a_disk_that_has_a_child_is_refused() {
    let dir = support::tempdir();
    let (base, top) = (dir.path().join("b.vhdx"), dir.path().join("c.avhdx"));
    let model = full_base(&base, 4 * MIB, 6);
    Disk::create_child(&top, &base, &child_opts())
        .unwrap()
        .close()
        .unwrap();
    let mut b = Disk::open(&base, OpenMode::ReadWrite).unwrap();
    let e = b.resize(8 * MIB, GROW).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("c.avhdx"), "{e}");
    assert_reads(&b, &model);
    drop(b);
    assert_reads(&Disk::open(&top, OpenMode::ReadOnly).unwrap(), &model);
}

// ------------------------------------------------------------ crashes

/// A base (8 MiB, full) and a child holding a few sectors, on memory.
fn mem_chain() -> (MemStorage, Vec<u8>, Vec<u8>) {
    let base = MemStorage::new();
    let b = Disk::create_on(
        Arc::new(base.clone()),
        &CreateOptions::new(8 * MIB).block_size(MIB as u32),
    )
    .unwrap();
    let mut model = vec![0u8; 8 * MIB as usize];
    Rng::new(7).fill(&mut model);
    b.write_at(&model, 0).unwrap();
    let child = MemStorage::new();
    Disk::create_child_on(Arc::new(child.clone()), &b, &child_opts()).unwrap();
    b.close().unwrap();
    let c = Disk::open_storage_chain(
        vec![Arc::new(child.clone()), Arc::new(base.clone())],
        OpenMode::ReadWrite,
    )
    .unwrap();
    put(&c, &mut model, 3 * MIB + 512, &[0x77u8; 1024]);
    put(&c, &mut model, 5 * MIB, &[0x78u8; 512]);
    c.close().unwrap();
    (base, child.snapshot(), model)
}

fn open_chain(child: Vec<u8>, base: &MemStorage, mode: OpenMode) -> ckpt::Result<Disk> {
    Disk::open_storage_chain(
        vec![
            Arc::new(MemStorage::from_vec(child)),
            Arc::new(base.clone()),
        ],
        mode,
    )
}

/// Cut `first` (then `second`) resizes of the child at every event.
fn sweep_child_resize(sizes: &[u64]) {
    let (base, image, model) = mem_chain();
    let model_at = |size: u64| {
        // Every size the sweep visits was reached by the same steps: the
        // model of the chain at that size.
        let mut m = model.clone();
        let mut cur = 8 * MIB;
        if size == cur {
            return m;
        }
        for &s in sizes {
            if s < cur {
                m.truncate(s as usize);
            } else {
                m.resize(s as usize, 0);
            }
            cur = s;
            if s == size {
                break;
            }
        }
        m
    };
    // Start from the state after all steps but the last.
    let mut start = image.clone();
    for &s in &sizes[..sizes.len() - 1] {
        let m = MemStorage::from_vec(start);
        let mut d = Disk::open_storage_chain(
            vec![Arc::new(m.clone()), Arc::new(base.clone())],
            OpenMode::ReadWrite,
        )
        .unwrap();
        d.resize(s, SHRINK).unwrap();
        d.close().unwrap();
        start = m.snapshot();
    }
    let old = *sizes.iter().rev().nth(1).unwrap_or(&(8 * MIB));
    let new = *sizes.last().unwrap();
    let (old_model, new_model) = (model_at(old), model_at(new));
    let events = {
        let f = Arc::new(FaultStorage::new(
            MemStorage::from_vec(start.clone()),
            u64::MAX,
            Cut::Clean,
        ));
        let mut d =
            Disk::open_storage_chain(vec![f.clone(), Arc::new(base.clone())], OpenMode::ReadWrite)
                .unwrap();
        let s = f.events();
        d.resize(new, SHRINK).unwrap();
        (s, f.events() - s)
    };
    assert!(events.1 > 5, "only {} events", events.1);
    let mut seen = [false; 2];
    for cut in [Cut::Clean, Cut::Torn] {
        for n in 0..events.1 {
            let _c = Ctx(format!(
                "{sizes:?}: {cut:?} cut at event {n} of {}",
                events.1
            ));
            let f = Arc::new(FaultStorage::new(
                MemStorage::from_vec(start.clone()),
                events.0 + n,
                cut,
            ));
            let mut d = Disk::open_storage_chain(
                vec![f.clone(), Arc::new(base.clone())],
                OpenMode::ReadWrite,
            )
            .unwrap();
            let _ = d.resize(new, SHRINK);
            drop(d);
            let survived = f.inner().snapshot();
            for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
                let d = open_chain(survived.clone(), &base, mode)
                    .unwrap_or_else(|e| panic!("{mode:?} open: {e}"));
                let s = d.virtual_size();
                assert!(s == old || s == new, "size {s}");
                seen[(s == new) as usize] = true;
                assert_reads(&d, if s == new { &new_model } else { &old_model });
            }
            let mut d = open_chain(survived, &base, OpenMode::ReadWrite).unwrap();
            d.resize(new, SHRINK).unwrap();
            assert_reads(&d, &new_model);
            d.close().unwrap();
        }
    }
    assert!(seen[0] && seen[1], "the sweep saw only one size");
    // One EIO or ENOSPC at every event, then the same handle resizes again.
    for kind in [Transient::Eio, Transient::NoSpace] {
        for n in 0..events.1 {
            let _c = Ctx(format!("{sizes:?}: {kind:?} at event {n} of {}", events.1));
            let f = Arc::new(FaultStorage::transient(
                MemStorage::from_vec(start.clone()),
                events.0 + n,
                kind,
            ));
            let mut d = Disk::open_storage_chain(
                vec![f.clone(), Arc::new(base.clone())],
                OpenMode::ReadWrite,
            )
            .unwrap();
            let _ = d.resize(new, SHRINK);
            d.resize(new, SHRINK).unwrap();
            assert_reads(&d, &new_model);
            d.close().unwrap();
            let d = open_chain(f.inner().snapshot(), &base, OpenMode::ReadOnly).unwrap();
            assert_reads(&d, &new_model);
        }
    }
}

#[test]
fn crash_sweep_of_a_child_grown_back_over_its_parent() {
    // The grow gives the not-present tail block space first (a flush of
    // its own), then sets its tail bits with the size.
    sweep_child_resize(&[4 * MIB + 1536, 7 * MIB]);
}

#[test]
fn crash_sweep_of_a_child_shrunk_and_grown_past_its_parent() {
    sweep_child_resize(&[5 * MIB + 512]);
    sweep_child_resize(&[2 * MIB, 10 * MIB + 4096]);
}

// ------------------------------------------------------------ model

#[test]
fn model_of_writes_trims_resizes_children_and_merges() {
    let dir = support::tempdir();
    for seed in 0..4u64 {
        let mut rng = Rng::new(100 + seed);
        let base = dir.path().join(format!("s{seed}-0.vhdx"));
        let size0 = (rng.range(2, 8) * MIB) + rng.below(4) * 512;
        let d = Disk::create(&base, &CreateOptions::new(size0).block_size(MIB as u32)).unwrap();
        d.close().unwrap();
        let mut model = vec![0u8; size0 as usize];
        let mut chain = vec![base];
        let mut top = Disk::open(&chain[0], OpenMode::ReadWrite).unwrap();
        // libvhdi misreads the ZERO blocks a trim leaves in a child.
        let mut zero_blocks = false;
        for step in 0..40 {
            let _c = Ctx(format!("seed {seed} step {step}"));
            let size = model.len() as u64;
            let op = rng.below(12);
            if std::env::var("TRACE").is_ok() {
                eprintln!("op {op}");
            }
            match op {
                0..=3 => {
                    let len = rng.range(1, 16) as usize * 512;
                    let off = rng.below(size / 512) * 512;
                    let len = len.min((size - off) as usize);
                    let data = rng.bytes(len);
                    if std::env::var("TRACE").is_ok() {
                        eprintln!("write {off} {len}");
                    }
                    put(&top, &mut model, off, &data);
                }
                4 => {
                    let off = rng.below(size / 512) * 512;
                    let len = (rng.range(1, 4096) * 512).min(size - off);
                    top.trim(off, len).unwrap();
                    zero_blocks |= chain.len() > 1;
                    model[off as usize..(off + len) as usize].fill(0);
                }
                5 | 6 => {
                    let new = rng.range(1, 12) * MIB + rng.below(8) * 512;
                    let r = top.resize(new, SHRINK).unwrap();
                    if std::env::var("TRACE").is_ok() {
                        eprintln!("{r:?}");
                    }
                    model.resize(new as usize, 0);
                }
                7 | 8 if chain.len() < 5 => {
                    top.close().unwrap();
                    let p = dir.path().join(format!("s{seed}-{step}.avhdx"));
                    top = Disk::create_child(&p, chain.last().unwrap(), &child_opts()).unwrap();
                    chain.push(p);
                }
                10 | 11 => {
                    let mode = if op == 10 {
                        ckpt::CompactMode::Quick
                    } else {
                        ckpt::CompactMode::Full
                    };
                    top.compact(ckpt::CompactOptions {
                        mode,
                        ..Default::default()
                    })
                    .unwrap();
                }
                9 if chain.len() > 1 => {
                    top.close().unwrap();
                    let child = chain.pop().unwrap();
                    merge::merge(&child, MergeOptions::default()).unwrap();
                    top = Disk::open(chain.last().unwrap(), OpenMode::ReadWrite).unwrap();
                }
                _ => {}
            }
            if std::env::var("TRACE").is_ok() {
                let i = top.info();
                eprintln!(
                    "step {step}: depth {} size {} file {}",
                    chain.len(),
                    i.virtual_size,
                    i.file_size
                );
            }
            assert_reads(&top, &model);
        }
        top.close().unwrap();
        let t = Disk::open(chain.last().unwrap(), OpenMode::ReadOnly).unwrap();
        assert_reads(&t, &model);
        drop(t);
        if chain.len() > 1 && !zero_blocks {
            libvhdi_reads(&chain, &model, u64::MAX);
        }
        // The chain flattened by libckpt, read by QEMU.
        let flat = dir.path().join(format!("s{seed}-flat.vhdx"));
        merge::flatten(chain.last().unwrap(), &flat, &CreateOptions::new(0), None).unwrap();
        qemu_checks(&flat, &model, dir.path());
        if chain.len() == 1 {
            qemu_checks(&chain[0], &model, dir.path());
        }
    }
}
