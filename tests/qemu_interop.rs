//! Interoperability with QEMU, the independent implementation of fixed and
//! dynamic VHDX: images QEMU made and wrote must read identically through
//! libckpt, images libckpt made and wrote must pass `qemu-img check` and
//! `qemu-img compare` against the raw data they came from, and the two may
//! take turns writing the same image.
//!
//! Every image is also judged against a sparse reference model
//! ([`support::Model`]) and must pass `ckpt::check`.

mod support;

use std::path::{Path, PathBuf};

use ckpt::{CreateOptions, Disk, DiskKind, ErrorKind, OpenMode};
use support::*;

fn have_qemu() -> bool {
    require_tools(&["qemu-img", "qemu-io"])
}

/// One `qemu-io` write: `len` bytes of `byte` at `off` (`byte == 0` uses
/// `write -z`, QEMU's zero write).
#[derive(Debug, Clone, Copy)]
struct Fill {
    off: u64,
    len: u64,
    byte: u8,
}

/// Shorthand for a [`Fill`].
fn fl(off: u64, len: u64, byte: u8) -> Fill {
    Fill { off, len, byte }
}

/// Apply fills with one `qemu-io` run and record them in the model.
fn qemu_fill(path: &Path, model: &mut Model, fills: &[Fill]) {
    let cmds: Vec<String> = fills
        .iter()
        .map(|f| {
            if f.byte == 0 {
                format!("write -z {} {}", f.off, f.len)
            } else {
                format!("write -P {:#04x} {} {}", f.byte, f.off, f.len)
            }
        })
        .collect();
    qemu_io("vhdx", path, &cmds);
    for f in fills {
        model.fill(f.off, f.len, f.byte);
    }
}

/// A set of fills for a disk of `size` bytes with `block`-byte blocks:
/// sector-aligned and unaligned, overlapping, spanning block boundaries,
/// whole blocks (small blocks only), zero writes and the very end of the
/// disk. Everything is clipped to the disk.
fn qemu_fills(size: u64, block: u64, salt: u8) -> Vec<Fill> {
    let b = |x: u8| x.wrapping_add(salt) | 1; // never 0: 0 means write -z
    let mut v = vec![
        fl(0, 512, b(0x10)),
        fl(100, 5000, b(0x22)),
        fl(2100, 100, b(0x34)),
        fl(size / 2 + 123, MIB + 7, b(0x46)),
        fl(size / 3, 4096, 0),
        fl(size - 777, 777, b(0x58)),
        fl(size - 512, 512, b(0x6a)),
        fl(size - 1, 1, b(0x7c)),
    ];
    // Across block boundaries (the first two and the last one).
    for k in [1, 2] {
        let bound = block * k;
        if bound < size {
            v.push(fl(bound - 3000, 7000, b(0x80 + k as u8)));
            v.push(fl(bound - 1, 2, b(0x90 + k as u8)));
        }
    }
    let last = (size - 1) / block * block;
    if last > 0 {
        v.push(fl(last - 10, 20, b(0xa2)));
    }
    // A whole block, then a zero write inside it.
    if block <= 8 * MIB && 2 * block <= size {
        v.push(fl(block, block, b(0xb4)));
        v.push(fl(block + 4096, 8192, 0));
    }
    // Clip to the disk (small disks).
    v.into_iter()
        .filter(|f| f.off < size)
        .map(|f| Fill {
            len: f.len.min(size - f.off),
            ..f
        })
        .collect()
}

/// Read the disk at random unaligned places and compare with the model.
fn random_reads(disk: &Disk, model: &Model, seed: u64, count: usize) {
    let mut rng = Rng::new(seed);
    for _ in 0..count {
        let off = rng.below(model.size);
        let len = rng.range(1, (model.size - off).min(3 * MIB));
        let mut got = vec![0u8; len as usize];
        let mut want = vec![0u8; len as usize];
        disk.read_at(&mut got, off)
            .unwrap_or_else(|e| panic!("read {off}+{len}: {e}"));
        model.read(&mut want, off);
        assert_same(&format!("random read {off}+{len}"), &got, &want, off);
    }
}

/// Everything that must hold for a VHDX whose contents are `model`:
/// QEMU sees exactly the model, both checkers find nothing, and libckpt
/// reads the model.
fn assert_image(path: &Path, model: &Model, what: &str) {
    qemu_check(path);
    let raw = path.with_extension("model.raw");
    model.write_raw(&raw);
    qemu_compare_raw(path, &raw);
    std::fs::remove_file(&raw).ok();
    assert_ckpt_check(path);
    let disk = Disk::open(path, OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("{what}: open read-only: {e}"));
    assert_disk_matches(what, &disk, model);
}

// ------------------------------------------------------------ QEMU → libckpt

#[derive(Debug, Clone, Copy)]
struct QemuMade {
    fixed: bool,
    block_mib: u64,
    log_mib: u64,
    /// `block_state_zero=on/off`; None: QEMU's default.
    zero_state: Option<bool>,
    size: u64,
}

fn qemu_to_ckpt(c: QemuMade) {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("qemu.vhdx");
    let block = c.block_mib * MIB;
    let mut opts = format!(
        "subformat={},block_size={},log_size={}",
        if c.fixed { "fixed" } else { "dynamic" },
        block,
        c.log_mib * MIB
    );
    if let Some(z) = c.zero_state {
        opts.push_str(if z {
            ",block_state_zero=on"
        } else {
            ",block_state_zero=off"
        });
    }
    qemu_create_vhdx(&path, c.size, &opts);
    let mut model = Model::new(c.size);
    qemu_fill(
        &path,
        &mut model,
        &qemu_fills(c.size, block, c.block_mib as u8),
    );
    qemu_check(&path);

    // The oracle agrees with the model (this checks the helpers too).
    let raw = dir.path().join("qemu.raw");
    qemu_convert_raw(&path, &raw);
    let rawf = std::fs::File::open(&raw).expect("raw");
    assert_eq!(rawf.metadata().expect("stat").len(), c.size, "raw size");
    compare_ranges(
        "qemu-img convert vs model",
        c.size,
        4 << 20,
        |b, o| read_file_at(&rawf, b, o),
        |b, o| model.read(b, o),
    );

    // libckpt reads what QEMU wrote.
    let orig = dir.path().join("orig.vhdx");
    snapshot(&path, &orig);
    assert_ckpt_check(&path);
    let what = format!("{c:?}");
    {
        let disk = Disk::open(&path, OpenMode::ReadOnly)
            .unwrap_or_else(|e| panic!("{what}: open read-only: {e}"));
        let info = disk.info();
        assert_eq!(info.virtual_size, c.size, "{what}: virtual size");
        assert_eq!(info.block_size as u64, block, "{what}: block size");
        assert_eq!(info.logical_sector_size, 512, "{what}: logical sector");
        let kind = if c.fixed {
            DiskKind::Fixed
        } else {
            DiskKind::Dynamic
        };
        assert_eq!(info.kind, kind, "{what}: kind");
        assert!(!info.log_dirty, "{what}: QEMU left a clean log");
        assert!(info.read_only);
        assert_eq!(info.parent, None);
        compare_ranges(
            &format!("{what}: libckpt vs qemu-img convert"),
            c.size,
            4 << 20,
            |b, o| {
                disk.read_at(b, o)
                    .unwrap_or_else(|e| panic!("read {o}: {e}"))
            },
            |b, o| read_file_at(&rawf, b, o),
        );
        random_reads(&disk, &model, c.size ^ block, 40);
        // Reading past the end fails, and so does writing.
        let mut one = [0u8; 1];
        assert_eq!(
            disk.read_at(&mut one, c.size)
                .expect_err("read past the end")
                .kind(),
            ErrorKind::OutOfRange
        );
        assert_eq!(
            disk.write_at(&[1], 0)
                .expect_err("write to a read-only disk")
                .kind(),
            ErrorKind::ReadOnly
        );
    }

    assert_files_identical(
        &format!("{what}: ckpt::check and a read-only open must not write"),
        &path,
        &orig,
    );

    // A read-write open and close that writes nothing leaves it unchanged.
    open_rw(&path)
        .close()
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert_files_identical(
        &format!("{what}: a read-write open and close without writes"),
        &path,
        &orig,
    );
    assert_image(&path, &model, &what);
}

#[test]
fn qemu_dynamic_1m_blocks_zero_on() {
    qemu_to_ckpt(QemuMade {
        fixed: false,
        block_mib: 1,
        log_mib: 1,
        zero_state: Some(true),
        size: 100 * MIB + 512,
    });
}

#[test]
fn qemu_dynamic_1m_blocks_log8_zero_off() {
    qemu_to_ckpt(QemuMade {
        fixed: false,
        block_mib: 1,
        log_mib: 8,
        zero_state: Some(false),
        size: 33 * MIB,
    });
}

#[test]
fn qemu_dynamic_8m_blocks_zero_off() {
    qemu_to_ckpt(QemuMade {
        fixed: false,
        block_mib: 8,
        log_mib: 1,
        zero_state: Some(false),
        size: 100 * MIB + 512,
    });
}

#[test]
fn qemu_dynamic_8m_blocks_log8_zero_on() {
    qemu_to_ckpt(QemuMade {
        fixed: false,
        block_mib: 8,
        log_mib: 8,
        zero_state: Some(true),
        size: 33 * MIB,
    });
}

#[test]
fn qemu_dynamic_32m_blocks_default_state() {
    qemu_to_ckpt(QemuMade {
        fixed: false,
        block_mib: 32,
        log_mib: 1,
        zero_state: None,
        size: 100 * MIB + 512,
    });
}

#[test]
fn qemu_dynamic_256m_blocks_zero_off() {
    qemu_to_ckpt(QemuMade {
        fixed: false,
        block_mib: 256,
        log_mib: 1,
        zero_state: Some(false),
        size: 260 * MIB + 512,
    });
}

#[test]
fn qemu_dynamic_256m_blocks_log8_zero_on() {
    qemu_to_ckpt(QemuMade {
        fixed: false,
        block_mib: 256,
        log_mib: 8,
        zero_state: Some(true),
        size: 33 * MIB,
    });
}

#[test]
fn qemu_fixed_1m_blocks() {
    qemu_to_ckpt(QemuMade {
        fixed: true,
        block_mib: 1,
        log_mib: 1,
        zero_state: None,
        size: 33 * MIB,
    });
}

#[test]
fn qemu_fixed_8m_blocks_log8() {
    qemu_to_ckpt(QemuMade {
        fixed: true,
        block_mib: 8,
        log_mib: 8,
        zero_state: Some(false),
        size: 50 * MIB + 512,
    });
}

#[test]
fn qemu_fixed_32m_blocks() {
    qemu_to_ckpt(QemuMade {
        fixed: true,
        block_mib: 32,
        log_mib: 1,
        zero_state: Some(true),
        size: 100 * MIB + 512,
    });
}

#[test]
fn qemu_fixed_256m_blocks() {
    qemu_to_ckpt(QemuMade {
        fixed: true,
        block_mib: 256,
        log_mib: 1,
        zero_state: None,
        size: 33 * MIB,
    });
}

#[test]
fn qemu_fixed_256m_blocks_log8_odd_size() {
    qemu_to_ckpt(QemuMade {
        fixed: true,
        block_mib: 256,
        log_mib: 8,
        zero_state: None,
        size: 5 * MIB + 512,
    });
}

// ------------------------------------------------------------ libckpt → QEMU

#[derive(Debug, Clone, Copy)]
struct CkptMade {
    fixed: bool,
    block_mib: u32,
    physical: u32,
    log_mib: u32,
    size: u64,
}

impl CkptMade {
    fn options(&self) -> CreateOptions {
        CreateOptions::new(self.size)
            .fixed(self.fixed)
            .block_size(self.block_mib << 20)
            .logical_sector_size(512)
            .physical_sector_size(self.physical)
            .log_size(self.log_mib << 20)
    }
}

/// Write random data through libckpt at the same kind of places
/// [`qemu_fills`] uses, plus random ones, recording it in the model.
fn ckpt_random_writes(disk: &Disk, model: &mut Model, block: u64, seed: u64, count: usize) {
    let size = model.size;
    let mut rng = Rng::new(seed);
    let mut places: Vec<(u64, u64)> = qemu_fills(size, block, 0)
        .iter()
        .map(|f| (f.off, f.len))
        .collect();
    for _ in 0..count {
        let off = rng.below(size);
        places.push((off, rng.range(1, (size - off).min(3 * MIB))));
    }
    for (i, (off, len)) in places.into_iter().enumerate() {
        let data = rng.bytes(len as usize);
        disk.write_at(&data, off)
            .unwrap_or_else(|e| panic!("write {off}+{len}: {e}"));
        model.write(off, &data);
        if i % 5 == 4 {
            disk.flush().unwrap_or_else(|e| panic!("flush: {e}"));
        }
    }
}

fn ckpt_to_qemu(c: CkptMade) {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("ckpt.vhdx");
    let what = format!("{c:?}");
    let block = (c.block_mib as u64) << 20;
    let mut model = Model::new(c.size);
    {
        let disk =
            Disk::create(&path, &c.options()).unwrap_or_else(|e| panic!("{what}: create: {e}"));
        assert_eq!(disk.virtual_size(), c.size);
        let info = disk.info();
        assert_eq!(info.block_size as u64, block, "{what}: block size");
        assert_eq!(
            info.physical_sector_size, c.physical,
            "{what}: physical sector"
        );
        assert_eq!(info.logical_sector_size, 512, "{what}: logical sector");
        ckpt_random_writes(&disk, &mut model, block, c.size.rotate_left(7) ^ block, 8);
        assert_disk_matches(&format!("{what} before close"), &disk, &model);
        disk.close()
            .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    }
    // QEMU sees the same geometry and the same bytes.
    let json = qemu_img(&[
        "info".as_ref(),
        "-f".as_ref(),
        "vhdx".as_ref(),
        "--output=json".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(
        json_u64(&json, "virtual-size"),
        Some(c.size),
        "{what}: {json}"
    );
    assert_eq!(
        json_u64(&json, "cluster-size"),
        Some(block),
        "{what}: {json}"
    );
    assert_image(&path, &model, &what);
    let disk = Disk::open(&path, OpenMode::ReadOnly).expect("reopen");
    let kind = if c.fixed {
        DiskKind::Fixed
    } else {
        DiskKind::Dynamic
    };
    assert_eq!(disk.info().kind, kind, "{what}: kind");
    assert!(!disk.info().log_dirty, "{what}: close left a dirty log");
    assert_eq!(
        disk.info().physical_sector_size,
        c.physical,
        "{what}: physical sector"
    );
    random_reads(&disk, &model, 99, 20);
}

#[test]
fn ckpt_dynamic_1m_blocks_p512() {
    ckpt_to_qemu(CkptMade {
        fixed: false,
        block_mib: 1,
        physical: 512,
        log_mib: 1,
        size: 33 * MIB,
    });
}

#[test]
fn ckpt_dynamic_8m_blocks_log8() {
    ckpt_to_qemu(CkptMade {
        fixed: false,
        block_mib: 8,
        physical: 4096,
        log_mib: 8,
        size: 100 * MIB + 512,
    });
}

#[test]
fn ckpt_dynamic_32m_blocks_defaults() {
    ckpt_to_qemu(CkptMade {
        fixed: false,
        block_mib: 32,
        physical: 4096,
        log_mib: 1,
        size: 100 * MIB + 512,
    });
}

#[test]
fn ckpt_dynamic_256m_blocks_p512() {
    ckpt_to_qemu(CkptMade {
        fixed: false,
        block_mib: 256,
        physical: 512,
        log_mib: 1,
        size: 260 * MIB + 512,
    });
}

#[test]
fn ckpt_dynamic_tiny() {
    ckpt_to_qemu(CkptMade {
        fixed: false,
        block_mib: 1,
        physical: 4096,
        log_mib: 1,
        size: 3 * 512,
    });
}

#[test]
fn ckpt_fixed_1m_blocks_odd_size() {
    ckpt_to_qemu(CkptMade {
        fixed: true,
        block_mib: 1,
        physical: 4096,
        log_mib: 1,
        size: 33 * MIB + 3 * 512,
    });
}

#[test]
fn ckpt_fixed_8m_blocks_p512_log8() {
    ckpt_to_qemu(CkptMade {
        fixed: true,
        block_mib: 8,
        physical: 512,
        log_mib: 8,
        size: 33 * MIB,
    });
}

#[test]
fn ckpt_fixed_32m_blocks() {
    ckpt_to_qemu(CkptMade {
        fixed: true,
        block_mib: 32,
        physical: 4096,
        log_mib: 1,
        size: 65 * MIB + 512,
    });
}

#[test]
fn ckpt_fixed_256m_blocks_log8() {
    ckpt_to_qemu(CkptMade {
        fixed: true,
        block_mib: 256,
        physical: 4096,
        log_mib: 8,
        size: 5 * MIB + 512,
    });
}

// ---------------------------------------------------------------- mixed

/// libckpt writes, then QEMU, then libckpt again: each sees the other's data.
fn ckpt_then_qemu(fixed: bool) {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("mixed.vhdx");
    let size = 20 * MIB + 512;
    let block = MIB;
    let mut model = Model::new(size);
    let opts = CreateOptions::new(size)
        .fixed(fixed)
        .block_size(block as u32);
    {
        let disk = Disk::create(&path, &opts).expect("create");
        // Only the first half, so QEMU has blocks to allocate.
        let mut rng = Rng::new(7);
        for _ in 0..6 {
            let off = rng.below(10 * MIB);
            let len = rng.range(1, 2 * MIB) as usize;
            let data = rng.bytes(len);
            disk.write_at(&data, off).expect("write");
            model.write(off, &data);
        }
        disk.close().expect("close");
    }
    assert_image(&path, &model, "after libckpt");

    // QEMU overwrites some of it and fills new blocks.
    qemu_fill(&path, &mut model, &qemu_fills(size, block, 0x40));
    qemu_fill(
        &path,
        &mut model,
        &[
            fl(3 * MIB + 17, 5 * MIB, 0x3c),
            fl(14 * MIB - 5, 3 * MIB, 0xc3),
        ],
    );
    assert_image(&path, &model, "after qemu-io");

    // libckpt again, read-write.
    {
        let disk = open_rw(&path);
        assert_disk_matches("libckpt sees qemu's writes", &disk, &model);
        let data = pattern(11, 5 * MIB - 100, 6 << 20);
        disk.write_at(&data, 5 * MIB - 100).expect("write");
        model.write(5 * MIB - 100, &data);
        disk.close().expect("close");
    }
    assert_image(&path, &model, "after libckpt again");
}

/// QEMU writes, libckpt opens read-write and writes more, then QEMU again.
fn qemu_then_ckpt(fixed: bool, zero_state: bool) {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("mixed.vhdx");
    let size = 24 * MIB + 1024;
    let block = 2 * MIB;
    qemu_create_vhdx(
        &path,
        size,
        &format!(
            "subformat={},block_size={block},block_state_zero={}",
            if fixed { "fixed" } else { "dynamic" },
            if zero_state { "on" } else { "off" }
        ),
    );
    let mut model = Model::new(size);
    qemu_fill(&path, &mut model, &qemu_fills(size, block, 0x11));
    {
        let disk = open_rw(&path);
        assert_disk_matches("libckpt reads qemu's writes", &disk, &model);
        // Over QEMU's data, into never-written blocks, across boundaries,
        // and at the end.
        let places = [
            (50, 1000),
            (block - 700, 1400),
            (5 * block + 3, 3 * block),
            (size / 2 - 4096, 8192),
            (size - 3000, 3000),
        ];
        for (off, len) in places {
            let data = pattern(off, off, len as usize);
            disk.write_at(&data, off).expect("write");
            model.write(off, &data);
        }
        disk.flush().expect("flush");
        assert_disk_matches("libckpt after its writes", &disk, &model);
        disk.close().expect("close");
    }
    assert_image(&path, &model, "after libckpt over qemu");
    qemu_fill(
        &path,
        &mut model,
        &[fl(4 * block - 1, 2 * block + 2, 0xee), fl(60, 10, 0x01)],
    );
    assert_image(&path, &model, "qemu again");
}

#[test]
fn mixed_ckpt_then_qemu_dynamic() {
    ckpt_then_qemu(false);
}

#[test]
fn mixed_ckpt_then_qemu_fixed() {
    ckpt_then_qemu(true);
}

#[test]
fn mixed_qemu_then_ckpt_dynamic_zero_on() {
    qemu_then_ckpt(false, true);
}

#[test]
fn mixed_qemu_then_ckpt_dynamic_zero_off() {
    qemu_then_ckpt(false, false);
}

#[test]
fn mixed_qemu_then_ckpt_fixed() {
    qemu_then_ckpt(true, false);
}

/// Random rounds: libckpt writes and trims, then QEMU writes, again and
/// again on one image, each side checking the other's result.
fn mixed_random_rounds(qemu_creates: bool, fixed: bool, seed: u64) {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("rounds.vhdx");
    let size = 24 * MIB + 512;
    let block = MIB;
    if qemu_creates {
        qemu_create_vhdx(
            &path,
            size,
            &format!(
                "subformat={},block_size={block}",
                if fixed { "fixed" } else { "dynamic" }
            ),
        );
    } else {
        let opts = CreateOptions::new(size)
            .fixed(fixed)
            .block_size(block as u32);
        Disk::create(&path, &opts)
            .expect("create")
            .close()
            .expect("close");
    }
    let mut model = Model::new(size);
    let mut rng = Rng::new(seed);
    for round in 0..5 {
        {
            let disk = open_rw(&path);
            assert_disk_matches(&format!("round {round}: libckpt reads"), &disk, &model);
            for _ in 0..6 {
                let off = rng.below(size);
                let len = rng.range(1, (size - off).min(2 * MIB));
                match rng.below(4) {
                    0 => {
                        // Whole blocks (and a ragged edge when unaligned).
                        let start = off / block * block;
                        let len = (rng.range(1, 3) * block).min(size - start);
                        disk.trim(start, len).expect("trim");
                        model.zero(start, len);
                    }
                    1 => {
                        disk.trim(off, len).expect("trim");
                        model.zero(off, len);
                    }
                    _ => {
                        let data = rng.bytes(len as usize);
                        disk.write_at(&data, off).expect("write");
                        model.write(off, &data);
                    }
                }
            }
            disk.close().expect("close");
        }
        assert_image(&path, &model, &format!("round {round} after libckpt"));
        let fills: Vec<Fill> = (0..4)
            .map(|i| {
                let off = rng.below(size);
                let len = rng.range(1, (size - off).min(2 * MIB));
                fl(
                    off,
                    len,
                    if i == 3 {
                        0
                    } else {
                        (rng.below(255) + 1) as u8
                    },
                )
            })
            .collect();
        qemu_fill(&path, &mut model, &fills);
    }
    assert_image(&path, &model, "after the last round");
}

#[test]
fn mixed_random_rounds_ckpt_made_dynamic() {
    mixed_random_rounds(false, false, 1);
}

#[test]
fn mixed_random_rounds_qemu_made_dynamic() {
    mixed_random_rounds(true, false, 2);
}

#[test]
fn mixed_random_rounds_qemu_made_fixed() {
    mixed_random_rounds(true, true, 3);
}

// ---------------------------------------------------------------- trim

fn allocated_bytes(path: &Path) -> u64 {
    Disk::open(path, OpenMode::ReadOnly)
        .expect("open")
        .info()
        .allocated_bytes
}

/// The extents of `[off, off+len)` are all unallocated.
fn assert_unallocated(path: &Path, off: u64, len: u64) {
    let disk = Disk::open(path, OpenMode::ReadOnly).expect("open");
    let extents = disk.extents().expect("extents");
    let mut pos = 0;
    for e in &extents {
        assert_eq!(e.offset, pos, "extents must be contiguous: {extents:?}");
        pos += e.length;
        if e.allocated && e.offset < off + len && off < e.offset + e.length {
            panic!("[{off}, {}) was trimmed but {e:?} is allocated", off + len);
        }
    }
    assert_eq!(
        pos,
        disk.virtual_size(),
        "extents must cover the disk: {extents:?}"
    );
}

/// Trim through libckpt: whole blocks, a partial range, a range reaching
/// the end. QEMU must read zeros there, both checkers must pass and the
/// allocated bytes must go down by at least the whole blocks trimmed.
fn trim_case(path: &Path, model: &mut Model, block: u64, expect_shrink: bool) {
    let size = model.size;
    let before = allocated_bytes(path);
    let whole = (2 * block, 3 * block);
    {
        let disk = open_rw(path);
        disk.trim(whole.0, whole.1).expect("trim whole blocks");
        model.zero(whole.0, whole.1);
        disk.trim(6 * block + 100, 5000)
            .expect("trim part of a block");
        model.zero(6 * block + 100, 5000);
        disk.trim(size - 4096, 4096).expect("trim at the end");
        model.zero(size - 4096, 4096);
        assert_disk_matches("after trim, before close", &disk, model);
        disk.close().expect("close");
    }
    assert_image(path, model, "after trim");
    qemu_io(
        "vhdx",
        path,
        &[format!("read -P 0 {} {}", whole.0, whole.1)],
    );
    if expect_shrink {
        let after = allocated_bytes(path);
        assert!(
            after + whole.1 <= before,
            "allocated bytes {before} -> {after}: trimming {} whole bytes of blocks should free them",
            whole.1
        );
        assert_unallocated(path, whole.0, whole.1);
    }
}

#[test]
fn trim_ckpt_made_dynamic() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("trim.vhdx");
    let size = 16 * MIB + 512;
    let mut model = Model::new(size);
    {
        let disk =
            Disk::create(&path, &CreateOptions::new(size).block_size(MIB as u32)).expect("create");
        let data = pattern(1, 0, size as usize);
        disk.write_at(&data, 0).expect("write");
        model.write(0, &data);
        disk.close().expect("close");
    }
    assert!(allocated_bytes(&path) >= 16 * MIB);
    trim_case(&path, &mut model, MIB, true);
    // QEMU writes into the trimmed blocks again; libckpt reads them.
    qemu_fill(&path, &mut model, &[fl(2 * MIB + 5, 2 * MIB, 0x5e)]);
    assert_image(&path, &model, "qemu writes into trimmed blocks");
}

fn trim_qemu_made(zero_state: bool) {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("trim.vhdx");
    let size = 12 * MIB;
    qemu_create_vhdx(
        &path,
        size,
        &format!(
            "block_size={MIB},block_state_zero={}",
            if zero_state { "on" } else { "off" }
        ),
    );
    let mut model = Model::new(size);
    qemu_fill(&path, &mut model, &[fl(0, size, 0xd7)]);
    trim_case(&path, &mut model, MIB, true);
}

#[test]
fn trim_qemu_made_dynamic_zero_on() {
    trim_qemu_made(true);
}

#[test]
fn trim_qemu_made_dynamic_zero_off() {
    trim_qemu_made(false);
}

#[test]
fn trim_fixed() {
    if !have_qemu() {
        return;
    }
    let dir = tempdir();
    let path: PathBuf = dir.path().join("trim.vhdx");
    let size = 10 * MIB;
    let mut model = Model::new(size);
    {
        let disk = Disk::create(
            &path,
            &CreateOptions::new(size).fixed(true).block_size(MIB as u32),
        )
        .expect("create");
        let data = pattern(3, 0, size as usize);
        disk.write_at(&data, 0).expect("write");
        model.write(0, &data);
        disk.close().expect("close");
    }
    // A fixed disk may keep its blocks; it must still read zeros.
    trim_case(&path, &mut model, MIB, false);
}
