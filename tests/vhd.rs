//! The legacy VHD format behind the `Disk` API, judged by independent
//! implementations: QEMU (`qemu-img` / `qemu-io -f vpc`) for fixed and
//! dynamic disks in both directions (with and without `force_size`, CHS
//! rounded sizes and not), libvhdi (`pyvhdi` with `set_parent`) for
//! differencing chains; plus linkage checks, mixed chains, format
//! detection by content and a corruption corpus (each damage a clear
//! error, never a panic, never a write). `qemu-img check` has no check
//! for vpc images, so QEMU judges by `compare` and `info`.

mod support;

use std::path::Path;
use std::process::Command;

use ckpt::{ChildOptions, Disk, ErrorKind, OpenMode, VhdOptions};
use support::{
    assert_same, have_pyvhdi, have_qemu, missing, pattern, read_all, run, tempdir, Rng, MIB,
};

fn qemu_or_skip() -> bool {
    if have_qemu() {
        true
    } else {
        missing("qemu-img / qemu-io");
        false
    }
}

/// QEMU's virtual size of a vpc image.
fn qemu_vpc_size(p: &Path) -> u64 {
    let out = run(Command::new("qemu-img")
        .args(["info", "-f", "vpc", "--output=json"])
        .arg(p));
    support::json_u64(&out, "virtual-size").expect("virtual-size")
}

/// QEMU reads the vpc image `p` as exactly `model`.
fn qemu_reads_vpc(p: &Path, model: &[u8]) {
    assert_eq!(
        qemu_vpc_size(p),
        model.len() as u64,
        "QEMU's size of {}",
        p.display()
    );
    let raw = p.with_extension("model.raw");
    std::fs::write(&raw, model).unwrap();
    let out = run(Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(p)
        .arg(&raw));
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare {}: {out}",
        p.display()
    );
    std::fs::remove_file(&raw).unwrap();
}

/// What QEMU reads from the vpc image `p`, as raw bytes.
fn qemu_raw(p: &Path) -> Vec<u8> {
    let raw = p.with_extension("qemu.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "vpc", "-O", "raw"])
        .arg(p)
        .arg(&raw));
    let b = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    b
}

/// Random writes and trims into `disk` and `model` alike.
fn scribble(disk: &Disk, model: &mut [u8], seed: u64, n: usize) {
    let mut rng = Rng::new(seed);
    let size = model.len() as u64;
    for i in 0..n {
        let len = rng.range(1, 300 * 1024).min(size);
        let off = rng.below(size - len + 1);
        if i % 7 == 6 {
            disk.trim(off, len).unwrap();
            model[off as usize..(off + len) as usize].fill(0);
        } else {
            let data = pattern(seed * 1000 + i as u64, off, len as usize);
            disk.write_at(&data, off).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        if i % 5 == 4 {
            disk.flush().unwrap();
        }
    }
}

#[test]
fn qemu_made_images_read_and_write_right() {
    if !qemu_or_skip() {
        return;
    }
    let t = tempdir();
    // 5 MiB is not a CHS product: without force_size QEMU rounds it up.
    for (sub, force) in [
        ("dynamic", false),
        ("dynamic", true),
        ("fixed", false),
        ("fixed", true),
    ] {
        let p = t.path().join(format!("q-{sub}-{force}.vhd"));
        let mut o = format!("subformat={sub}");
        if force {
            o.push_str(",force_size=on");
        }
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "vpc", "-o", &o])
            .arg(&p)
            .arg("5M"));
        run(Command::new("qemu-io")
            .args([
                "-f",
                "vpc",
                "-c",
                "write -P 0xa5 0 64k",
                "-c",
                "write -P 0x3c 2049k 1536k",
                "-c",
                "write -P 0x11 4m 7k",
            ])
            .arg(&p));
        let want = qemu_raw(&p);
        if force {
            assert_eq!(want.len() as u64, 5 * MIB, "{sub} force_size");
        } else {
            assert!(
                want.len() as u64 >= 5 * MIB,
                "{sub}: QEMU rounds the size up to CHS"
            );
        }
        {
            let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
            assert_eq!(
                d.virtual_size(),
                want.len() as u64,
                "{sub} force={force}: size"
            );
            assert_same(
                &format!("{sub} force={force}: content"),
                &read_all(&d),
                &want,
                0,
            );
        }
        // libckpt writes into QEMU's layout; QEMU reads the result.
        let mut model = want.clone();
        {
            let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
            scribble(&d, &mut model, 3, 30);
            d.close().unwrap();
        }
        qemu_reads_vpc(&p, &model);
        let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
        assert_same("content", &read_all(&d), &model, 0);
    }
}

#[test]
fn libckpt_made_images_read_right_by_qemu() {
    if !qemu_or_skip() {
        return;
    }
    let t = tempdir();
    // A whole MiB (not a CHS product), a CHS product, and an odd sector count.
    let chs_size = 302 * 4 * 17 * 512;
    for (i, size) in [5 * MIB, chs_size, 3 * MIB + 512 * 7]
        .into_iter()
        .enumerate()
    {
        for fixed in [false, true] {
            let p = t.path().join(format!("c{i}-{fixed}.vhd"));
            let d = Disk::create_vhd(&p, &VhdOptions::new(size).fixed(fixed)).unwrap();
            let mut model = vec![0u8; size as usize];
            scribble(&d, &mut model, i as u64 + 10, 25);
            assert_same("content", &read_all(&d), &model, 0);
            d.close().unwrap();
            qemu_reads_vpc(&p, &model);
            // QEMU writes into libckpt's layout; libckpt reads the result.
            run(Command::new("qemu-io")
                .args(["-f", "vpc", "-c", "write -P 0x77 1m 100k"])
                .arg(&p));
            model[MIB as usize..(MIB + 100 * 1024) as usize].fill(0x77);
            let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
            assert_same(
                &format!("size {size} fixed {fixed}"),
                &read_all(&d),
                &model,
                0,
            );
            let info = d.info();
            assert_eq!(info.format, ckpt::Format::Vhd);
            assert_eq!(info.virtual_size, size);
            if fixed {
                assert_eq!(std::fs::metadata(&p).unwrap().len(), size + 512);
            }
        }
    }
}

/// pyvhdi's reading of the chain `top` → `parents` (each set as the
/// parent of the one before).
fn pyvhdi_chain(chain: &[&Path]) -> Vec<u8> {
    let script = r#"
import sys, pyvhdi
files = []
for p in sys.argv[1:]:
    f = pyvhdi.file(); f.open(p); files.append(f)
for c, p in zip(files, files[1:]):
    c.set_parent(p)
top = files[0]
size = top.get_media_size()
out = sys.stdout.buffer
pos = 0
while pos < size:
    n = min(1 << 20, size - pos)
    out.write(top.read_buffer_at_offset(n, pos))
    pos += n
"#;
    let args: Vec<&str> = chain.iter().map(|p| p.to_str().unwrap()).collect();
    support::python(script, &args)
}

#[test]
fn differencing_chains_read_the_same_in_libvhdi() {
    let t = tempdir();
    let size = 6 * MIB + 512 * 3;
    let base = t.path().join("base.vhd");
    let mid = t.path().join("mid.avhd");
    let top = t.path().join("top.avhd");
    let mut model = vec![0u8; size as usize];
    {
        let d = Disk::create_vhd(&base, &VhdOptions::new(size)).unwrap();
        scribble(&d, &mut model, 1, 20);
        d.close().unwrap();
    }
    let base_model = model.clone();
    {
        let d = Disk::create_child(&mid, &base, &ChildOptions::default()).unwrap();
        assert_eq!(d.format(), ckpt::Format::Vhd);
        assert_eq!(d.depth(), 2);
        scribble(&d, &mut model, 2, 20);
        assert_same("content", &read_all(&d), &model, 0);
        d.close().unwrap();
    }
    let mid_model = model.clone();
    {
        let d = Disk::create_child(&top, &mid, &ChildOptions::default()).unwrap();
        // Unaligned writes: read-modify-write of partial sectors through the chain.
        for (i, off) in [3u64, 2 * MIB - 100, 5 * MIB + 17].into_iter().enumerate() {
            let data = pattern(50 + i as u64, off, 1000);
            d.write_at(&data, off).unwrap();
            model[off as usize..off as usize + 1000].copy_from_slice(&data);
        }
        scribble(&d, &mut model, 3, 15);
        d.close().unwrap();
    }
    let d = Disk::open(&top, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.depth(), 3);
    assert_same("content", &read_all(&d), &model, 0);
    drop(d);
    if !have_pyvhdi() {
        missing("pyvhdi");
        return;
    }
    assert_same("libvhdi: base", &pyvhdi_chain(&[&base]), &base_model, 0);
    assert_same(
        "libvhdi: mid → base",
        &pyvhdi_chain(&[&mid, &base]),
        &mid_model,
        0,
    );
    assert_same(
        "libvhdi: top → mid → base",
        &pyvhdi_chain(&[&top, &mid, &base]),
        &model,
        0,
    );
}

#[test]
fn a_replaced_parent_or_a_mixed_chain_is_refused() {
    let t = tempdir();
    let base = t.path().join("base.vhd");
    let child = t.path().join("child.avhd");
    Disk::create_vhd(&base, &VhdOptions::new(4 * MIB))
        .unwrap()
        .close()
        .unwrap();
    Disk::create_child(&child, &base, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    Disk::open(&child, OpenMode::ReadOnly).unwrap();
    // Another VHD in the parent's place: another unique id.
    std::fs::remove_file(&base).unwrap();
    Disk::create_vhd(&base, &VhdOptions::new(4 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let e = Disk::open(&child, OpenMode::ReadOnly).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    assert!(e.to_string().contains("unique id"), "{e}");
    // A VHDX in the parent's place: a mixed chain.
    std::fs::remove_file(&base).unwrap();
    Disk::create(&base, &ckpt::CreateOptions::new(4 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let e = Disk::open(&child, OpenMode::ReadOnly).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("mixes VHD and VHDX"), "{e}");
}

#[test]
fn a_parent_with_another_timestamp_is_refused() {
    let t = tempdir();
    let base = t.path().join("base.vhd");
    let child = t.path().join("child.avhd");
    Disk::create_vhd(&base, &VhdOptions::new(4 * MIB))
        .unwrap()
        .close()
        .unwrap();
    Disk::create_child(&child, &base, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    // The parent's footer timestamp changed (both copies, checksums fixed).
    let mut b = std::fs::read(&base).unwrap();
    let n = b.len();
    for at in [0, n - 512] {
        let f = &mut b[at..at + 512];
        let ts = u32::from_be_bytes(f[24..28].try_into().unwrap()) - 1000;
        f[24..28].copy_from_slice(&ts.to_be_bytes());
        fix_checksum(f, 64);
    }
    std::fs::write(&base, &b).unwrap();
    // Nor does the file time match (the other tools' convention).
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_200_000_000);
    std::fs::File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let e = Disk::open(&child, OpenMode::ReadOnly).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    assert!(e.to_string().contains("timestamp"), "{e}");
}

#[test]
fn the_format_comes_from_the_content_not_the_name() {
    let t = tempdir();
    let a = t.path().join("really-a-vhd.vhdx");
    let b = t.path().join("really-a-vhdx.vhd");
    let d = Disk::create_vhd(&a, &VhdOptions::new(2 * MIB).fixed(true)).unwrap();
    d.write_at(b"hello", 100).unwrap();
    d.close().unwrap();
    Disk::create(&b, &ckpt::CreateOptions::new(2 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let d = Disk::open(&a, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.format(), ckpt::Format::Vhd);
    let mut buf = [0u8; 5];
    d.read_at(&mut buf, 100).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(
        Disk::open(&b, OpenMode::ReadOnly).unwrap().format(),
        ckpt::Format::Vhdx
    );
}

#[test]
fn vhdx_only_operations_are_unsupported_for_vhd() {
    let t = tempdir();
    let p = t.path().join("d.vhd");
    let mut d = Disk::create_vhd(&p, &VhdOptions::new(4 * MIB)).unwrap();
    let e = d.resize(8 * MIB, Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let e = d.compact(Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

#[test]
fn create_refuses_sizes_a_vhd_cannot_have() {
    let t = tempdir();
    for size in [0, 1000, ckpt::disk::vhd_max_size() + 512] {
        let p = t.path().join(format!("s{size}.vhd"));
        let e = Disk::create_vhd(&p, &VhdOptions::new(size)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{size}: {e}");
        assert!(!p.exists());
    }
}

// ------------------------------------------------------------ corruption

fn fix_checksum(b: &mut [u8], at: usize) {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(x as u32));
    b[at..at + 4].copy_from_slice(&(!sum).to_be_bytes());
}

/// A small differencing chain's child, its bytes, and the base's path.
fn child_bytes(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let base = dir.join("base.vhd");
    let child = dir.join("child.avhd");
    let d = Disk::create_vhd(&base, &VhdOptions::new(4 * MIB)).unwrap();
    d.write_at(&[1u8; 4096], 0).unwrap();
    d.close().unwrap();
    let c = Disk::create_child(&child, &base, &ChildOptions::default()).unwrap();
    c.write_at(&[2u8; 8192], MIB).unwrap();
    c.write_at(&[3u8; 512], 3 * MIB).unwrap();
    c.close().unwrap();
    let b = std::fs::read(&child).unwrap();
    (child, b)
}

#[test]
fn each_damage_is_a_clear_error_and_nothing_is_written() {
    let t = tempdir();
    let (child, good) = child_bytes(t.path());
    let n = good.len();
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    const BAT: usize = 1536;
    // Block 0 holds the write at 1 MiB, block 1 the one at 3 MiB.
    let b1 = be32(&good, BAT) as usize * 512;
    assert!(
        be32(&good, BAT + 4) != u32::MAX,
        "block 1 of the child is allocated"
    );
    type Damage = (&'static str, Box<dyn Fn(&mut Vec<u8>)>, &'static str);
    let cases: Vec<Damage> = vec![
        (
            "both footers' checksums",
            Box::new(move |b| {
                b[n - 512 + 70] ^= 1;
                b[70] ^= 1;
            }),
            "checksum",
        ),
        (
            "both cookies",
            Box::new(move |b| {
                b[n - 512] = b'X';
                b[0] = b'X';
            }),
            "signature",
        ),
        (
            "the header checksum",
            Box::new(|b| b[512 + 100] ^= 1),
            "checksum",
        ),
        (
            "the header cookie",
            Box::new(|b| {
                b[512] = b'Y';
                fix_checksum(&mut b[512..1536], 36)
            }),
            "signature",
        ),
        (
            "the block size",
            Box::new(|b| {
                b[512 + 32..512 + 36].copy_from_slice(&3000u32.to_be_bytes());
                fix_checksum(&mut b[512..1536], 36)
            }),
            "block size",
        ),
        (
            "max table entries",
            Box::new(|b| {
                b[512 + 28..512 + 32].copy_from_slice(&1u32.to_be_bytes());
                fix_checksum(&mut b[512..1536], 36)
            }),
            "max table entries",
        ),
        (
            "the table offset",
            Box::new(|b| {
                b[512 + 16..512 + 24].copy_from_slice(&(1u64 << 40).to_be_bytes());
                fix_checksum(&mut b[512..1536], 36)
            }),
            "BAT",
        ),
        (
            "a BAT entry past the end",
            Box::new(|b| b[BAT + 4..BAT + 8].copy_from_slice(&0x00ff_0000u32.to_be_bytes())),
            "past the footer",
        ),
        (
            "a BAT entry on the header",
            Box::new(|b| b[BAT + 4..BAT + 8].copy_from_slice(&1u32.to_be_bytes())),
            "overlaps",
        ),
        (
            "two BAT entries on one block",
            Box::new(move |b| {
                let v = b[BAT..BAT + 4].to_vec();
                b[BAT + 4..BAT + 8].copy_from_slice(&v)
            }),
            "overlaps",
        ),
        (
            "a locator past the end",
            Box::new(|b| {
                b[512 + 576 + 16..512 + 576 + 24].copy_from_slice(&(1u64 << 33).to_be_bytes());
                fix_checksum(&mut b[512..1536], 36)
            }),
            "parent locator",
        ),
        (
            "a locator's length",
            Box::new(|b| {
                b[512 + 576 + 8..512 + 576 + 12].copy_from_slice(&u32::MAX.to_be_bytes());
                fix_checksum(&mut b[512..1536], 36)
            }),
            "parent locator",
        ),
        (
            "the disk type",
            Box::new(move |b| {
                for at in [0, n - 512] {
                    b[at + 63] = 9;
                    fix_checksum(&mut b[at..at + 512], 64)
                }
            }),
            "disk type",
        ),
        (
            "the size",
            Box::new(move |b| {
                for at in [0, n - 512] {
                    b[at + 48..at + 56].copy_from_slice(&1000u64.to_be_bytes());
                    fix_checksum(&mut b[at..at + 512], 64)
                }
            }),
            "current size",
        ),
        ("truncated", Box::new(|b| b.truncate(300)), "truncated"),
    ];
    for (what, damage, says) in cases {
        let mut b = good.clone();
        damage(&mut b);
        std::fs::write(&child, &b).unwrap();
        for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
            let e = match Disk::open(&child, mode) {
                Ok(_) => panic!("{what}: opened"),
                Err(e) => e,
            };
            assert!(
                e.to_string().contains(says),
                "{what}: the error does not say {says:?}: {e}"
            );
            assert_eq!(
                std::fs::read(&child).unwrap(),
                b,
                "{what}: the file was written"
            );
        }
        // The lone file too (no parent involved).
        assert!(Disk::open_single(&child).is_err(), "{what}: open_single");
    }
    // A damaged bitmap is not detectable (any bits are valid): it reads the
    // parent or the child's data, never fails.
    let mut b = good.clone();
    b[b1..b1 + 512].fill(0xff);
    std::fs::write(&child, &b).unwrap();
    let d = Disk::open(&child, OpenMode::ReadOnly).unwrap();
    read_all(&d);
    drop(d);
    // A lost trailing footer: the copy at offset 0 stands in; a read-write
    // open writes the trailing footer again.
    let mut b = good.clone();
    b[n - 512..].fill(0);
    std::fs::write(&child, &b).unwrap();
    let d = Disk::open(&child, OpenMode::ReadOnly).unwrap();
    assert!(d.info().log_dirty);
    drop(d);
    Disk::open(&child, OpenMode::ReadWrite)
        .unwrap()
        .close()
        .unwrap();
    let d = Disk::open(&child, OpenMode::ReadOnly).unwrap();
    assert!(!d.info().log_dirty);
    let mut buf = vec![0u8; 8192];
    d.read_at(&mut buf, MIB).unwrap();
    assert_eq!(buf, vec![2u8; 8192]);
}

// ------------------------------------------------------------ merge

/// base ← mid ← top, each with data; returns the paths and the content
/// of mid's and top's chains.
fn three_layers(dir: &Path) -> ([std::path::PathBuf; 3], Vec<u8>, Vec<u8>) {
    let size = 5 * MIB;
    let p = [
        dir.join("base.vhd"),
        dir.join("mid.avhd"),
        dir.join("top.avhd"),
    ];
    let mut model = vec![0u8; size as usize];
    let d = Disk::create_vhd(&p[0], &VhdOptions::new(size)).unwrap();
    scribble(&d, &mut model, 7, 12);
    d.close().unwrap();
    let d = Disk::create_child(&p[1], &p[0], &ChildOptions::default()).unwrap();
    scribble(&d, &mut model, 8, 12);
    d.close().unwrap();
    let mid = model.clone();
    let d = Disk::create_child(&p[2], &p[1], &ChildOptions::default()).unwrap();
    scribble(&d, &mut model, 9, 12);
    d.close().unwrap();
    (p, mid, model)
}

#[test]
fn merges_fold_a_vhd_chain_into_its_base() {
    let t = tempdir();
    let (p, mid, model) = three_layers(t.path());
    // mid has a child: refused without the list of its children, and
    // nothing changes; with it (as the checkpoint tree passes it), merged
    // into base, the child re-pointed at base, mid kept for the caller.
    let before: Vec<Vec<u8>> = p.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let e = ckpt::disk::merge::merge(&p[1], Default::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    for (f, b) in p.iter().zip(&before) {
        assert!(std::fs::read(f).unwrap() == *b, "{} changed", f.display());
    }
    let t2 = tempdir();
    let q: Vec<_> = p
        .iter()
        .map(|f| t2.path().join(f.file_name().unwrap()))
        .collect();
    for (a, b) in p.iter().zip(&q) {
        std::fs::copy(a, b).unwrap();
    }
    let opts = ckpt::disk::merge::MergeOptions {
        descendants: Some(vec![q[2].clone()]),
        ..Default::default()
    };
    let r = ckpt::disk::merge::merge(&q[1], opts).unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert!(q[1].exists());
    assert_eq!(r.repointed, vec![q[2].clone()]);
    let d = Disk::open(&q[0], OpenMode::ReadOnly).unwrap();
    assert_same("base after merging mid", &read_all(&d), &mid, 0);
    drop(d);
    let d = Disk::open(&q[2], OpenMode::ReadOnly).unwrap();
    assert_eq!(d.depth(), 2);
    assert_same("top re-pointed at base", &read_all(&d), &model, 0);
    drop(d);
    if have_pyvhdi() {
        assert_same(
            "top re-pointed (libvhdi)",
            &pyvhdi_chain(&[&q[2], &q[0]]),
            &model,
            0,
        );
    }
    // Top first, then mid.
    let r = ckpt::disk::merge::merge(&p[2], Default::default()).unwrap();
    assert_eq!(r.removed, vec![p[2].clone()]);
    assert!(!p[2].exists());
    let d = Disk::open(&p[1], OpenMode::ReadOnly).unwrap();
    assert_same("mid after merge", &read_all(&d), &model, 0);
    drop(d);
    ckpt::disk::merge::merge(&p[1], Default::default()).unwrap();
    let d = Disk::open(&p[0], OpenMode::ReadOnly).unwrap();
    assert_eq!(d.depth(), 1);
    assert_same("base after merges", &read_all(&d), &model, 0);
    drop(d);
    if qemu_or_skip() {
        qemu_reads_vpc(&p[0], &model);
    }
}

#[test]
fn an_interrupted_merge_reads_the_same_and_finishes_when_run_again() {
    use ckpt::io::{faults, Cut};
    let t = tempdir();
    let (p, _, _) = three_layers(t.path());
    std::fs::remove_file(&p[2]).unwrap();
    let d = Disk::open(&p[1], OpenMode::ReadOnly).unwrap();
    let model = read_all(&d);
    drop(d);
    let saved: Vec<Vec<u8>> = p[..2].iter().map(|f| std::fs::read(f).unwrap()).collect();
    let restore = || {
        for (f, b) in p[..2].iter().zip(&saved) {
            std::fs::write(f, b).unwrap();
        }
    };
    faults::arm(u64::MAX, Cut::Clean);
    ckpt::disk::merge::merge(&p[1], Default::default()).unwrap();
    let events = faults::disarm();
    assert!(events > 3, "{events} events");
    for cut in [Cut::Clean, Cut::Torn] {
        for n in 0..events {
            restore();
            faults::arm(n, cut);
            let r = ckpt::disk::merge::merge(&p[1], Default::default());
            faults::disarm();
            let ctx = format!("{cut:?} cut at {n} of {events} ({r:?})");
            let top = if p[1].exists() { &p[1] } else { &p[0] };
            let d = Disk::open(top, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_same(&ctx, &read_all(&d), &model, 0);
            drop(d);
            if p[1].exists() {
                ckpt::disk::merge::merge(&p[1], Default::default())
                    .unwrap_or_else(|e| panic!("{ctx}: merge again: {e}"));
            }
            let d = Disk::open(&p[0], OpenMode::ReadOnly).unwrap();
            assert_same(&format!("{ctx}, finished"), &read_all(&d), &model, 0);
        }
    }
    restore();
}

// ------------------------------------------------------------ CLI

#[cfg(feature = "cli")]
#[test]
fn the_cli_creates_inspects_converts_and_merges_vhd() {
    use support::cli::{fail, ok, ok_text, s};
    let t = tempdir();
    let base = t.path().join("base.vhd");
    let child = t.path().join("child.avhd");
    ok(&[
        "create",
        "--format",
        "vhd",
        s(&base),
        "--size",
        "3M",
        "--dynamic",
    ]);
    ok(&["create", s(&child), "--parent", s(&base)]);
    let e = fail(&[
        "create",
        "--format",
        "vhdx",
        s(&t.path().join("x.avhdx")),
        "--parent",
        s(&base),
    ]);
    assert!(e.contains("mixing VHD and VHDX"), "{e}");
    support::cli::write_at(&child, MIB + 5, b"hello");
    let info = support::cli::info_json(&child);
    assert_eq!(info["format"], "vhd");
    assert_eq!(info["kind"], "differencing");
    assert!(ok_text(&["check", s(&child)]).contains("ok"));
    // A whole-chain conversion to VHDX (flattened) and back to raw.
    let flat = t.path().join("flat.vhdx");
    ok(&["convert", s(&child), s(&flat)]);
    let raw = t.path().join("flat.raw");
    ok(&["convert", s(&flat), s(&raw)]);
    let bytes = std::fs::read(&raw).unwrap();
    assert_eq!(&bytes[MIB as usize + 5..MIB as usize + 10], b"hello");
    // Azure: a raw image of an odd size becomes a fixed VHD of whole MiB.
    let odd = t.path().join("odd.raw");
    std::fs::write(&odd, vec![7u8; 1536 * 1024 + 100]).unwrap();
    let az = t.path().join("az.vhd");
    ok(&["convert", "--azure", s(&odd), s(&az)]);
    assert_eq!(std::fs::metadata(&az).unwrap().len(), 2 * MIB + 512);
    let info = support::cli::info_json(&az);
    assert_eq!(info["kind"], "fixed");
    assert_eq!(info["virtual_size"], 2 * MIB);
    if qemu_or_skip() {
        let mut want = vec![7u8; 1536 * 1024 + 100];
        want.resize(2 * MIB as usize, 0);
        qemu_reads_vpc(&az, &want);
    }
    ok(&["merge", s(&child)]);
    assert!(!child.exists());
    let mut buf = [0u8; 5];
    Disk::open(&base, OpenMode::ReadOnly)
        .unwrap()
        .read_at(&mut buf, MIB + 5)
        .unwrap();
    assert_eq!(&buf, b"hello");
}

#[test]
fn reparent_points_a_vhd_child_at_a_moved_or_another_parent() {
    let t = tempdir();
    let base = t.path().join("base.vhd");
    let child = t.path().join("child.avhd");
    let d = Disk::create_vhd(&base, &VhdOptions::new(4 * MIB)).unwrap();
    d.write_at(&[1u8; 8192], 0).unwrap();
    d.close().unwrap();
    let c = Disk::create_child(&child, &base, &ChildOptions::default()).unwrap();
    c.write_at(&[2u8; 4096], 4096).unwrap();
    c.close().unwrap();
    // The parent moved to another folder (a copy: the same unique id).
    let sub = t.path().join("moved");
    std::fs::create_dir(&sub).unwrap();
    let moved = sub.join("base-with-a-longer-name.vhd");
    std::fs::copy(&base, &moved).unwrap();
    std::fs::remove_file(&base).unwrap();
    assert_eq!(
        Disk::open(&child, OpenMode::ReadOnly).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    ckpt::disk::merge::reparent(&child, &moved, false).unwrap();
    let d = Disk::open(&child, OpenMode::ReadOnly).unwrap();
    assert_eq!(
        d.chain()[1].as_deref(),
        Some(moved.canonicalize().unwrap().as_path())
    );
    let mut buf = vec![0u8; 8192];
    d.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..4096], &[1u8; 4096][..]);
    assert_eq!(&buf[4096..], &[2u8; 4096][..]);
    drop(d);
    // Another disk: refused, then forced.
    let other = t.path().join("other.vhd");
    let o = Disk::create_vhd(&other, &VhdOptions::new(4 * MIB)).unwrap();
    o.write_at(&[9u8; 4096], 0).unwrap();
    o.close().unwrap();
    let e = ckpt::disk::merge::reparent(&child, &other, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    ckpt::disk::merge::reparent(&child, &other, true).unwrap();
    let d = Disk::open(&child, OpenMode::ReadOnly).unwrap();
    d.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..4096], &[9u8; 4096][..]);
    assert_eq!(&buf[4096..], &[2u8; 4096][..]);
    drop(d);
    if have_pyvhdi() {
        let got = pyvhdi_chain(&[&child, &other]);
        assert_eq!(&got[..4096], &[9u8; 4096][..]);
        assert_eq!(&got[4096..8192], &[2u8; 4096][..]);
    }
}

/// QEMU's creator rule: a Virtual PC image ("vpc ") takes its size from
/// the CHS geometry (smaller than the current size here), a Hyper-V one
/// ("win ") from the current size; libckpt and QEMU agree on both.
#[test]
fn the_creator_decides_between_chs_and_current_size() {
    let t = tempdir();
    // 10240 sectors: the CHS product (150 × 4 × 17 = 10200) is smaller.
    let size = 5 * MIB;
    let p = t.path().join("vpc.vhd");
    Disk::create_vhd(&p, &VhdOptions::new(size))
        .unwrap()
        .close()
        .unwrap();
    let chs_size = {
        let b = std::fs::read(&p).unwrap();
        let f = &b[b.len() - 512..];
        let c = u16::from_be_bytes([f[56], f[57]]) as u64;
        c * f[58] as u64 * f[59] as u64 * 512
    };
    assert!(chs_size < size, "{chs_size}");
    assert_eq!(
        Disk::open(&p, OpenMode::ReadOnly).unwrap().virtual_size(),
        size
    );
    if have_qemu() {
        assert_eq!(qemu_vpc_size(&p), size);
    }
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    for at in [0, n - 512] {
        b[at + 28..at + 32].copy_from_slice(b"vpc ");
        fix_checksum(&mut b[at..at + 512], 64);
    }
    std::fs::write(&p, &b).unwrap();
    assert_eq!(
        Disk::open(&p, OpenMode::ReadOnly).unwrap().virtual_size(),
        chs_size
    );
    if qemu_or_skip() {
        assert_eq!(qemu_vpc_size(&p), chs_size);
    }
}

/// The sector bitmap is read most significant bit first (bit 7 of byte 0
/// is sector 0), as the specification and libvhdi have it: a hand-set
/// byte 0x40 shows the child's sector 1 and the parent's sector 0.
#[test]
fn bitmap_bits_count_from_the_most_significant() {
    let t = tempdir();
    let base = t.path().join("base.vhd");
    let child = t.path().join("child.avhd");
    let d = Disk::create_vhd(&base, &VhdOptions::new(2 * MIB)).unwrap();
    d.write_at(&[1u8; 4096], 0).unwrap();
    d.close().unwrap();
    let c = Disk::create_child(&child, &base, &ChildOptions::default()).unwrap();
    c.write_at(&[2u8; 4096], 0).unwrap();
    c.close().unwrap();
    let mut b = std::fs::read(&child).unwrap();
    let block0 = u32::from_be_bytes(b[1536..1540].try_into().unwrap()) as usize * 512;
    assert_eq!(b[block0], 0xff);
    b[block0] = 0x40;
    std::fs::write(&child, &b).unwrap();
    let d = Disk::open(&child, OpenMode::ReadOnly).unwrap();
    let mut buf = vec![0u8; 1024];
    d.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..512], &[1u8; 512][..], "sector 0: the parent's");
    assert_eq!(&buf[512..], &[2u8; 512][..], "sector 1: the child's");
    drop(d);
    if have_pyvhdi() {
        let got = pyvhdi_chain(&[&child, &base]);
        assert_eq!(
            &got[..1024],
            &buf[..],
            "libvhdi reads the bits the same way"
        );
    }
}

/// A model run: random writes (any alignment), trims, flushes, reopens
/// and new children on a VHD chain, every read against a byte model; the
/// final chain read by libvhdi too.
#[test]
fn a_model_run_of_a_growing_vhd_chain() {
    for seed in 1..=3u64 {
        let t = tempdir();
        let size = 3 * MIB + 512 * 5;
        let mut rng = Rng::new(seed);
        let mut model = vec![0u8; size as usize];
        let mut files = vec![t.path().join("base.vhd")];
        let mut d =
            Disk::create_vhd(&files[0], &VhdOptions::new(size).block_size(64 * 1024)).unwrap();
        for step in 0..60u64 {
            match rng.below(10) {
                0..=5 => {
                    let len = rng.range(1, 200 * 1024).min(size);
                    let off = rng.below(size - len + 1);
                    let data = pattern(seed * 1000 + step, off, len as usize);
                    d.write_at(&data, off).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
                6 => {
                    let len = rng.range(1, 300 * 1024).min(size);
                    let off = rng.below(size - len + 1);
                    d.trim(off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                7 => d.flush().unwrap(),
                8 => {
                    let top = files.last().unwrap().clone();
                    d.close().unwrap();
                    d = Disk::open(&top, OpenMode::ReadWrite).unwrap();
                    assert_same(
                        &format!("seed {seed} step {step} reopen"),
                        &read_all(&d),
                        &model,
                        0,
                    );
                }
                _ if files.len() < 4 => {
                    d.close().unwrap();
                    let next = t.path().join(format!("c{}.avhd", files.len()));
                    d = Disk::create_child(&next, files.last().unwrap(), &ChildOptions::default())
                        .unwrap();
                    files.push(next);
                }
                _ => {}
            }
        }
        assert_same(&format!("seed {seed} end"), &read_all(&d), &model, 0);
        d.close().unwrap();
        if have_pyvhdi() {
            let chain: Vec<&Path> = files.iter().rev().map(|p| p.as_path()).collect();
            assert_same(
                &format!("seed {seed}: libvhdi"),
                &pyvhdi_chain(&chain),
                &model,
                0,
            );
        }
    }
}

/// A cut at every file event of a re-parent, clean and torn (and an EIO
/// at each, then a retry), with both
/// parents present (the old one, and a copy of it under a longer name, so
/// the locator data changes length): the child always opens, reads the
/// same, and names the old parent or the new one; running the re-parent
/// again finishes it. The new header is written to fresh space and named
/// by the footer last (`src/disk/vhd/relink.rs`), so even a header torn in
/// its first sector never reaches a reader: the sweep also damages, at
/// each cut, the bytes past the old footer (where the new header goes).
#[test]
fn a_cut_at_every_event_of_a_vhd_reparent_keeps_the_child_whole() {
    use ckpt::io::{faults, Cut};
    let t = tempdir();
    let base = t.path().join("base.vhd");
    let child = t.path().join("child.avhd");
    let d = Disk::create_vhd(&base, &VhdOptions::new(4 * MIB)).unwrap();
    let mut model = vec![0u8; 4 * MIB as usize];
    scribble(&d, &mut model, 3, 6);
    d.close().unwrap();
    let c = Disk::create_child(&child, &base, &ChildOptions::default()).unwrap();
    scribble(&c, &mut model, 4, 6);
    c.close().unwrap();
    let sub = t.path().join("moved");
    std::fs::create_dir(&sub).unwrap();
    let moved = sub.join("the-same-base-under-a-much-longer-name.vhd");
    std::fs::copy(&base, &moved).unwrap();
    let saved = std::fs::read(&child).unwrap();
    faults::arm(u64::MAX, Cut::Clean);
    ckpt::disk::merge::reparent(&child, &moved, false).unwrap();
    let events = faults::disarm();
    assert!(events >= 3, "{events} events");
    let (old_p, new_p) = (base.canonicalize().unwrap(), moved.canonicalize().unwrap());
    for cut in [Cut::Clean, Cut::Torn] {
        for n in 0..events {
            std::fs::write(&child, &saved).unwrap();
            faults::arm(n, cut);
            let r = ckpt::disk::merge::reparent(&child, &moved, false);
            faults::disarm();
            let ctx = format!("{cut:?} cut at {n} of {events} ({r:?})");
            // Until a trailing footer names the new header, whatever lies
            // past the old end is garbage to every reader, and a cut
            // before the header's sync may have torn it anywhere: tear
            // its first sector too.
            let bytes = std::fs::read(&child).unwrap();
            let tail = &bytes[bytes.len() - 512..];
            let data_offset = u64::from_be_bytes(tail[16..24].try_into().unwrap());
            let names_new = &tail[..8] == b"conectix" && data_offset != 512;
            if r.is_err() && !names_new && bytes.len() > saved.len() {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&child)
                    .unwrap();
                f.write_all_at(&[0xA5u8; 100], saved.len() as u64 - 512 + 200)
                    .unwrap();
            }
            let d = Disk::open(&child, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let parent = d.chain()[1].clone().unwrap();
            assert!(
                parent == old_p || parent == new_p,
                "{ctx}: {}",
                parent.display()
            );
            assert_same(&ctx, &read_all(&d), &model, 0);
            drop(d);
            ckpt::disk::merge::reparent(&child, &moved, false)
                .unwrap_or_else(|e| panic!("{ctx}: again: {e}"));
            let d = Disk::open(&child, OpenMode::ReadOnly).unwrap();
            assert_eq!(d.chain()[1].as_deref(), Some(new_p.as_path()), "{ctx}");
            assert_same(&format!("{ctx}, again"), &read_all(&d), &model, 0);
        }
    }
    if have_pyvhdi() {
        assert_same("libvhdi", &pyvhdi_chain(&[&child, &moved]), &model, 0);
    }
    // An EIO at each event, then a retry: the retry finishes.
    for n in 0..events {
        std::fs::write(&child, &saved).unwrap();
        faults::arm_transient(n, ckpt::io::Transient::Eio);
        let r = ckpt::disk::merge::reparent(&child, &moved, false);
        faults::disarm();
        let ctx = format!("EIO at {n} of {events} ({r:?})");
        ckpt::disk::merge::reparent(&child, &moved, false)
            .unwrap_or_else(|e| panic!("{ctx}: retry: {e}"));
        let d = Disk::open(&child, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(d.chain()[1].as_deref(), Some(new_p.as_path()), "{ctx}");
        assert_same(&ctx, &read_all(&d), &model, 0);
    }
    // Pointing it at the parent it already names writes nothing.
    let before = std::fs::read(&child).unwrap();
    ckpt::disk::merge::reparent(&child, &moved, false).unwrap();
    assert!(
        std::fs::read(&child).unwrap() == before,
        "a re-parent to the same parent wrote"
    );
}
