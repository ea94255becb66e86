//! Real VHDX images made by other tools (Hyper-V, QEMU 1.6, Disk2vhd), from
//! `../shared/testdata` or `$CKPT_TESTDATA`: they must open, read the
//! documented contents, stay untouched by opens that write nothing, and
//! pass `ckpt::check`.

mod support;

use ckpt::{Disk, DiskKind, OpenMode};
use support::*;

const DYNAMIC_1G: &str = "iotest-dynamic-1G.vhdx.bz2";
const DIRTY_LOG: &str = "iotest-dirtylog-10G-4M.vhdx.bz2";
const DISK2VHD: &str = "test-disk2vhd.vhdx.bz2";

/// Read the whole disk in 1 MiB chunks and check each chunk against
/// `expect(offset)`, the byte every position of that MiB must hold.
fn assert_mib_fills(what: &str, disk: &Disk, expect: impl Fn(u64) -> u8) {
    let size = disk.virtual_size();
    assert_eq!(size % MIB, 0);
    let mut buf = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    for mib in 0..size / MIB {
        let off = mib * MIB;
        disk.read_at(&mut buf, off)
            .unwrap_or_else(|e| panic!("{what}: read MiB {mib}: {e}"));
        want.fill(expect(off));
        // Slice comparison is a memcmp: cheap even for 10 GiB.
        if buf != want {
            assert_same(&format!("{what}, MiB {mib}"), &buf, &want, off);
        }
    }
}

/// A raw model: `fills` of (start, end, byte), zeros elsewhere.
fn raw_model(size: u64, fills: &[(u64, u64, u8)]) -> Model {
    let mut m = Model::new(size);
    for &(s, e, b) in fills {
        m.fill(s, e - s, b);
    }
    m
}

// ------------------------------------------------------- Hyper-V dynamic 1G

fn dynamic_1g_contents(off: u64) -> u8 {
    match off {
        o if o < 33 * MIB => 0xa5,
        o if o < 66 * MIB => 0x96,
        _ => 0,
    }
}

fn check_dynamic_1g(what: &str, disk: &Disk) {
    let info = disk.info();
    assert_eq!(info.kind, DiskKind::Dynamic, "{what}");
    assert_eq!(info.virtual_size, GIB, "{what}");
    assert_eq!(info.block_size, 32 << 20, "{what}");
    assert_eq!(info.logical_sector_size, 512, "{what}");
    assert_eq!(info.physical_sector_size, 4096, "{what}");
    assert_eq!(info.parent, None, "{what}");
    assert!(
        !info.log_dirty,
        "{what}: the stale log entries (foreign LogGuid) must be ignored"
    );
    // 3 FULLY_PRESENT blocks of 32 MiB, the rest PAYLOAD_BLOCK_ZERO.
    assert_eq!(
        info.allocated_bytes,
        3 * 32 * MIB,
        "{what}: allocated bytes"
    );
    assert_mib_fills(what, disk, dynamic_1g_contents);
    // Unaligned reads across the pattern boundaries.
    for (off, len) in [(33 * MIB - 3, 6), (66 * MIB - 511, 1022), (32 * MIB - 1, 2)] {
        let mut buf = vec![0u8; len];
        disk.read_at(&mut buf, off).expect("read");
        let want: Vec<u8> = (0..len as u64)
            .map(|i| dynamic_1g_contents(off + i))
            .collect();
        assert_same(what, &buf, &want, off);
    }
}

#[test]
fn hyperv_dynamic_1g_read_only() {
    let dir = tempdir();
    let Some(img) = testdata_image(DYNAMIC_1G, dir.path()) else {
        return;
    };
    let orig = dir.path().join("orig.vhdx");
    snapshot(&img, &orig);
    {
        let disk = Disk::open(&img, OpenMode::ReadOnly).expect("open read-only");
        check_dynamic_1g("Hyper-V 1G, read-only", &disk);
        assert!(disk.info().read_only);
        assert!(
            disk.info().creator.contains("Microsoft"),
            "{}",
            disk.info().creator
        );
    }
    assert_files_identical("a read-only open must not write", &img, &orig);
    assert_ckpt_check(&img);
    assert_files_identical("ckpt::check must not write", &img, &orig);
}

#[test]
fn hyperv_dynamic_1g_read_write_no_writes() {
    let dir = tempdir();
    let Some(img) = testdata_image(DYNAMIC_1G, dir.path()) else {
        return;
    };
    let orig = dir.path().join("orig.vhdx");
    snapshot(&img, &orig);
    {
        let disk = open_rw(&img);
        check_dynamic_1g("Hyper-V 1G, read-write", &disk);
        assert!(!disk.info().read_only);
        disk.close().expect("close");
    }
    assert_files_identical(
        "a read-write open and close that writes nothing must not change the file",
        &img,
        &orig,
    );
    let disk = Disk::open(&img, OpenMode::ReadOnly).expect("reopen");
    check_dynamic_1g("Hyper-V 1G, reopened", &disk);
    assert_ckpt_check(&img);
}

#[test]
fn hyperv_dynamic_1g_matches_qemu() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempdir();
    let Some(img) = testdata_image(DYNAMIC_1G, dir.path()) else {
        return;
    };
    let raw = dir.path().join("model.raw");
    raw_model(GIB, &[(0, 33 * MIB, 0xa5), (33 * MIB, 66 * MIB, 0x96)]).write_raw(&raw);
    qemu_compare_raw(&img, &raw);
    qemu_check(&img);
}

// ------------------------------------------------------- QEMU 1.6 dirty log

const DIRTY_SIZE: u64 = 10 * GIB;

fn dirty_contents(off: u64) -> u8 {
    if off < 18 * MIB {
        0xa5
    } else {
        0
    }
}

fn check_dirty_contents(what: &str, disk: &Disk) {
    let info = disk.info();
    assert_eq!(info.kind, DiskKind::Dynamic, "{what}");
    assert_eq!(info.virtual_size, DIRTY_SIZE, "{what}");
    assert_eq!(info.block_size, 1 << 20, "{what}");
    assert_eq!(
        info.allocated_bytes,
        18 * MIB,
        "{what}: 18 blocks after replay"
    );
    // MiB 17 is the block the log entry adds.
    let mut buf = vec![0u8; MIB as usize];
    disk.read_at(&mut buf, 17 * MIB).expect("read MiB 17");
    assert!(
        buf.iter().all(|&b| b == 0xa5),
        "{what}: MiB 17 must read 0xa5 (the log was not replayed?)"
    );
    assert_mib_fills(what, disk, dirty_contents);
}

#[test]
fn qemu16_dirty_log_read_only_replays_in_memory() {
    let dir = tempdir();
    let Some(img) = testdata_image(DIRTY_LOG, dir.path()) else {
        return;
    };
    let orig = dir.path().join("orig.vhdx");
    snapshot(&img, &orig);
    {
        let disk = Disk::open(&img, OpenMode::ReadOnly).expect("open read-only");
        assert!(disk.info().log_dirty, "info must report the dirty log");
        assert!(disk.info().read_only);
        check_dirty_contents("dirty log, read-only", &disk);
    }
    assert_files_identical(
        "a read-only open must not replay into the file",
        &img,
        &orig,
    );
    let report = assert_ckpt_check(&img);
    assert!(
        !report.notes.is_empty(),
        "ckpt::check should note the dirty log: {report:?}"
    );
    assert_files_identical("ckpt::check must not write", &img, &orig);
    // A second read-only open still finds the log dirty (nothing was written).
    let disk = Disk::open(&img, OpenMode::ReadOnly).expect("open read-only again");
    assert!(disk.info().log_dirty);
}

#[test]
fn qemu16_dirty_log_read_write_replays_into_file() {
    let dir = tempdir();
    let Some(img) = testdata_image(DIRTY_LOG, dir.path()) else {
        return;
    };
    let orig = dir.path().join("orig.vhdx");
    snapshot(&img, &orig);
    {
        let disk = open_rw(&img);
        assert!(
            disk.info().log_dirty,
            "info must report the log it replayed"
        );
        check_dirty_contents("dirty log, read-write", &disk);
        disk.close().expect("close");
    }
    assert!(
        first_file_difference(&img, &orig).is_some(),
        "a read-write open must replay the log into the file"
    );
    {
        let disk = Disk::open(&img, OpenMode::ReadOnly).expect("second open");
        assert!(
            !disk.info().log_dirty,
            "the second open must find a clean log"
        );
        check_dirty_contents("after replay", &disk);
    }
    assert_ckpt_check(&img);
    // QEMU refuses a dirty image read-only; after our replay it must accept it.
    // (A whole `qemu-img compare` would read 10 GiB; QEMU reads the
    // interesting parts instead.)
    if require_tools(&["qemu-img", "qemu-io"]) {
        qemu_check(&img);
        assert_eq!(qemu_virtual_size(&img), DIRTY_SIZE);
        let end = DIRTY_SIZE - MIB;
        qemu_io(
            "vhdx",
            &img,
            &[
                format!("read -P 0xa5 0 {}", 18 * MIB),
                format!("read -P 0 {} {}", 18 * MIB, 46 * MIB),
                format!("read -P 0 {end} {MIB}"),
            ],
        );
    }
}

// ---------------------------------------------------------------- Disk2vhd

#[test]
fn disk2vhd_identical_headers() {
    if !require_tool("qemu-img") {
        return;
    }
    let dir = tempdir();
    let Some(img) = testdata_image(DISK2VHD, dir.path()) else {
        return;
    };
    let orig = dir.path().join("orig.vhdx");
    snapshot(&img, &orig);
    let raw = dir.path().join("qemu.raw");
    qemu_convert_raw(&img, &raw);
    let rawf = std::fs::File::open(&raw).expect("raw");
    let size = rawf.metadata().expect("stat").len();
    assert_eq!(size, 256 * MIB);
    {
        let disk = Disk::open(&img, OpenMode::ReadOnly).expect("open read-only");
        let info = disk.info();
        assert_eq!(info.virtual_size, size);
        assert_eq!(info.block_size, 2 << 20);
        assert_eq!(info.kind, DiskKind::Dynamic);
        assert!(!info.log_dirty);
        compare_ranges(
            "Disk2vhd: libckpt vs qemu-img convert",
            size,
            4 << 20,
            |b, o| {
                disk.read_at(b, o)
                    .unwrap_or_else(|e| panic!("read {o}: {e}"))
            },
            |b, o| read_file_at(&rawf, b, o),
        );
        // Odd-sized reads across block boundaries.
        let mut rng = Rng::new(2);
        for _ in 0..50 {
            let off = rng.below(size);
            let len = rng.range(1, (size - off).min(5 * MIB)) as usize;
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            disk.read_at(&mut a, off).expect("read");
            read_file_at(&rawf, &mut b, off);
            assert_same("Disk2vhd random read", &a, &b, off);
        }
    }
    assert_files_identical("a read-only open must not write", &img, &orig);
    assert_ckpt_check(&img);
}

/// The decompressed test images are what the README says (guards the
/// helpers and the test data themselves).
#[test]
fn testdata_decompresses() {
    let dir = tempdir();
    for (name, len) in [
        (DYNAMIC_1G, 100 * MIB),
        (DIRTY_LOG, 30 * MIB),
        (DISK2VHD, 260 * MIB + 512),
    ] {
        let Some(img) = testdata_image(name, dir.path()) else {
            return;
        };
        let got = std::fs::metadata(&img).expect("stat").len();
        assert_eq!(got, len, "{name}: decompressed length");
        let mut sig = [0u8; 8];
        read_file_at(&std::fs::File::open(&img).expect("open"), &mut sig, 0);
        assert_eq!(&sig, b"vhdxfile", "{name}: file signature");
    }
}
