//! The `ckpt` command-line tool, driven as scripts drive it: every
//! subcommand, the JSON of `info`, the exit codes and the one-line errors,
//! and converted images judged by `qemu-img compare`.

#![cfg(feature = "cli")]

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use support::cli::{
    ckpt, fail, fails, info_json, ok, ok_text, run, run_with_input, s, stderr, stdout, write_at,
};
use support::{have_pyvhdi, pattern, python, require_tool, tempdir as tmp, MIB};

/// `qemu-img compare` of two images (formats given) must find them equal.
#[track_caller]
fn qemu_compare(a: &Path, fa: &str, b: &Path, fb: &str) {
    support::qemu_img(&["compare", "-f", fa, "-F", fb, s(a), s(b)]);
}

/// A raw image of `size` bytes: zeros, with data at a few places.
fn make_raw(path: &Path, size: u64) -> Vec<u8> {
    let mut img = vec![0u8; size as usize];
    for (at, len, seed) in [
        (0u64, 4096usize, 1u8),
        (MIB + 512, 70_000, 2),
        (3 * MIB - 1000, 3000, 3),
        (size - 512, 512, 4),
    ] {
        img[at as usize..at as usize + len].copy_from_slice(&pattern(seed.into(), 0, len));
    }
    std::fs::write(path, &img).expect("write raw image");
    img
}

#[test]
fn create_defaults_and_info_json() {
    let dir = tmp();
    let f = dir.path().join("a.vhdx");
    let o = ok(&["create", s(&f), "--size", "8M"]);
    assert!(!o.stdout.is_empty());
    let v = info_json(&f);
    assert_eq!(v["format"], "vhdx");
    assert_eq!(v["kind"], "dynamic");
    assert_eq!(v["virtual_size"], 8 * MIB);
    assert_eq!(v["block_size"], 32 * MIB);
    assert_eq!(v["logical_sector_size"], 512);
    assert_eq!(v["physical_sector_size"], 4096);
    assert_eq!(v["file_size"], std::fs::metadata(&f).unwrap().len());
    assert_eq!(v["allocated_bytes"], 0);
    assert!(v["parent"].is_null());
    assert_eq!(v["log_dirty"], false);
    assert!(v["creator"].is_string());
    for k in ["disk_id", "data_write_guid"] {
        let g = v[k].as_str().unwrap_or_else(|| panic!("{k} missing: {v}"));
        assert_eq!(g.len(), 36, "{k} = {g}");
    }
    // Human output names the kind and the size.
    let text = ok_text(&["info", s(&f)]);
    assert!(text.contains("dynamic"), "{text}");
    assert!(text.contains("8388608"), "{text}");
    // An existing file is never overwritten.
    let e = fail(&["create", s(&f), "--size", "8M"]);
    assert!(e.contains("a.vhdx"), "{e}");
}

#[test]
fn create_every_option() {
    let dir = tmp();
    let f = dir.path().join("fixed.vhdx");
    let create = |path: &Path, logical: &str| {
        ok(&[
            "create",
            s(path),
            "--size",
            "4M",
            "--fixed",
            "--block-size",
            "1M",
            "--logical-sector",
            logical,
            "--physical-sector",
            "512",
            "--log-size",
            "2M",
        ]);
    };
    create(&f, "4096");
    let v = info_json(&f);
    assert_eq!(v["kind"], "fixed");
    assert_eq!(v["virtual_size"], 4 * MIB);
    assert_eq!(v["block_size"], MIB);
    assert_eq!(v["logical_sector_size"], 4096);
    assert_eq!(v["physical_sector_size"], 512);
    assert_eq!(v["allocated_bytes"], 4 * MIB);
    ok(&["check", s(&f)]);
    // QEMU cannot open 4 KiB logical sectors ("Operation not supported");
    // libvhdi can.
    if have_pyvhdi() {
        let out = python(
            "import pyvhdi,sys; f=pyvhdi.file(); f.open(sys.argv[1]); \
             print(f.get_media_size(), f.get_bytes_per_sector())",
            &[s(&f)],
        );
        assert_eq!(
            String::from_utf8_lossy(&out).trim(),
            format!("{} 4096", 4 * MIB)
        );
    }
    // The same with 512-byte logical sectors, judged by QEMU.
    let g = dir.path().join("fixed512.vhdx");
    create(&g, "512");
    let v = info_json(&g);
    assert_eq!(v["logical_sector_size"], 512);
    assert_eq!(v["physical_sector_size"], 512);
    if require_tool("qemu-img") {
        let out = support::qemu_img(&["info", "--output=json", "-f", "vhdx", s(&g)]);
        let q: serde_json::Value = serde_json::from_str(&out).expect("qemu JSON");
        assert_eq!(q["virtual-size"], 4 * MIB);
        assert_eq!(q["cluster-size"], MIB);
        support::qemu_check(&g);
    }
    // The 2 MiB log makes the file 1 MiB bigger than with the default log.
    let h = dir.path().join("log1.vhdx");
    ok(&[
        "create",
        s(&h),
        "--size",
        "4M",
        "--fixed",
        "--block-size",
        "1M",
    ]);
    let (big, small) = (
        std::fs::metadata(&g).unwrap().len(),
        std::fs::metadata(&h).unwrap().len(),
    );
    assert!(big >= small + MIB, "log size ignored: {big} vs {small}");
}

#[test]
fn check_ok() {
    let dir = tmp();
    let f = dir.path().join("c.vhdx");
    ok(&["create", s(&f), "--size", "16M", "--block-size", "1M"]);
    let o = ok(&["check", s(&f)]);
    assert_eq!(
        stdout(&o)
            .lines()
            .filter(|l| !l.starts_with("note:"))
            .count(),
        1,
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_reports_damage() {
    let dir = tmp();
    let f = dir.path().join("bad.vhdx");
    ok(&["create", s(&f), "--size", "16M", "--block-size", "1M"]);
    // Spoil both region tables (64 KiB copies at 192 KiB and 256 KiB).
    let mut bytes = std::fs::read(&f).unwrap();
    for at in [0x30000usize, 0x40000] {
        for b in &mut bytes[at + 16..at + 48] {
            *b ^= 0xff;
        }
    }
    std::fs::write(&f, &bytes).unwrap();
    let o = run(&["check", s(&f)]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(!err.is_empty());
    for l in err.lines() {
        assert!(l.starts_with("error: "), "{err}");
    }
    assert!(!err.contains("internal error"), "{err}");
    // info refuses the file too, naming it.
    let e = fail(&["info", s(&f)]);
    assert!(e.contains("bad.vhdx"), "{e}");
}

#[test]
fn write_read_round_trip() {
    let dir = tmp();
    let f = dir.path().join("rw.vhdx");
    ok(&["create", s(&f), "--size", "8M", "--block-size", "1M"]);
    // Unaligned, crossing a block boundary, longer than the 1 MiB chunk.
    let data = pattern(7, 0, MIB as usize + 12345);
    let off = MIB / 2 + 3;
    write_at(&f, off, &data);
    let o = ok(&["read", s(&f), &off.to_string(), &data.len().to_string()]);
    assert!(o.stdout == data, "read back differs");
    // Around it: zeros. SIZE suffixes work for offset and length.
    let o = ok(&["read", s(&f), "0", "512K"]);
    assert_eq!(o.stdout.len(), 512 * 1024);
    assert!(o.stdout.iter().all(|&b| b == 0));
    let o = ok(&["read", s(&f), "0", "8M"]);
    assert_eq!(o.stdout.len() as u64, 8 * MIB);
    let mut want = vec![0u8; 8 * MIB as usize];
    want[off as usize..off as usize + data.len()].copy_from_slice(&data);
    assert!(o.stdout == want, "whole disk differs");
    // Zero bytes are fine, at the very end too.
    assert!(ok(&["read", s(&f), "8M", "0"]).stdout.is_empty());
    ok(&["check", s(&f)]);
    let v = info_json(&f);
    assert_eq!(v["allocated_bytes"], 2 * MIB);

    if require_tool("qemu-img") {
        // QEMU reads the same bytes.
        let raw = dir.path().join("rw.raw");
        support::qemu_convert_raw(&f, &raw);
        assert!(
            std::fs::read(&raw).unwrap() == want,
            "QEMU reads other bytes"
        );
    }
}

#[test]
fn write_from_a_file_past_the_end_writes_nothing() {
    let dir = tmp();
    let f = dir.path().join("w.vhdx");
    ok(&["create", s(&f), "--size", "1M", "--block-size", "1M"]);
    let input = dir.path().join("input");
    std::fs::write(&input, pattern(9, 0, 8192)).unwrap();
    let o = ckpt()
        .args(["write", s(&f), "1020K"])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    fails(&["write", "w.vhdx", "1020K", "< input"], &o);
    assert_eq!(info_json(&f)["allocated_bytes"], 0);
    // From a pipe the error comes when the input runs past the end.
    let args = ["write", s(&f), "1020K"];
    let o = run_with_input(&args, &pattern(9, 0, 8192));
    fails(&args, &o);
    ok(&["check", s(&f)]);
}

#[test]
fn convert_round_trip_is_exact_and_sparse() {
    let dir = tmp();
    let raw = dir.path().join("orig.raw");
    let size = 6 * MIB;
    let img = make_raw(&raw, size);
    let vhdx = dir.path().join("conv.vhdx");
    let back = dir.path().join("back.img");
    ok(&["convert", s(&raw), s(&vhdx), "--block-size", "1M"]);
    let v = info_json(&vhdx);
    assert_eq!(v["virtual_size"], size);
    assert_eq!(v["kind"], "dynamic");
    assert_eq!(v["block_size"], MIB);
    // Data in blocks 0, 1, 2, 3 and 5: the all-zero block 4 stays unallocated.
    assert_eq!(v["allocated_bytes"], 5 * MIB);
    ok(&["check", s(&vhdx)]);
    ok(&["convert", s(&vhdx), s(&back)]);
    let got = std::fs::read(&back).unwrap();
    assert!(got == img, "raw → vhdx → raw changed the bytes");
    let meta = std::fs::metadata(&back).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len(),
        "raw output not sparse: {} blocks for {} bytes",
        meta.blocks(),
        meta.len()
    );
    // vhdx → vhdx, fixed, explicit -O with an extension that says raw.
    let fixed = dir.path().join("fixed.img");
    ok(&["convert", "-O", "vhdx", "--fixed", s(&vhdx), s(&fixed)]);
    let v = info_json(&fixed);
    assert_eq!(v["kind"], "fixed");
    assert_eq!(v["virtual_size"], size);
    assert_eq!(v["block_size"], MIB);
    let o = ok(&["read", s(&fixed), "0", &size.to_string()]);
    assert!(o.stdout == img, "vhdx → fixed vhdx changed the bytes");
    // -O raw into a .vhdx name gives raw bytes.
    let raw2 = dir.path().join("raw2.vhdx");
    ok(&["convert", "-O", "raw", s(&fixed), s(&raw2)]);
    assert!(std::fs::read(&raw2).unwrap() == img);

    if require_tool("qemu-img") {
        qemu_compare(&vhdx, "vhdx", &raw, "raw");
        qemu_compare(&fixed, "vhdx", &raw, "raw");
        qemu_compare(&back, "raw", &raw, "raw");
    }
}

/// `--no-sync` keeps every promise but durability: the image is complete
/// and sound for every reader when the command ends (raw → VHDX → raw,
/// multi-chunk so the read-ahead thread hands over several buffers), and
/// no sync reaches the new file (counted with strace when it is there).
#[test]
fn convert_no_sync_gives_the_same_images() {
    let dir = tmp();
    let raw = dir.path().join("orig.raw");
    let size = 6 * MIB;
    let img = make_raw(&raw, size);
    let vhdx = dir.path().join("conv.vhdx");
    let back = dir.path().join("back.img");
    ok(&[
        "convert",
        "--no-sync",
        s(&raw),
        s(&vhdx),
        "--block-size",
        "1M",
    ]);
    ok(&["check", s(&vhdx)]);
    ok(&["convert", "--no-sync", s(&vhdx), s(&back)]);
    assert!(
        std::fs::read(&back).unwrap() == img,
        "no-sync round trip changed the bytes"
    );
    if require_tool("qemu-img") {
        qemu_compare(&vhdx, "vhdx", &raw, "raw");
    }
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok()
    {
        let trace = dir.path().join("trace");
        let again = dir.path().join("again.vhdx");
        let st = std::process::Command::new("strace")
            .args(["-f", "-e", "trace=fsync,fdatasync,sync_file_range", "-o"])
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_ckpt"))
            .args(["convert", "--no-sync", s(&raw), s(&again)])
            .status()
            .unwrap();
        assert!(st.success());
        let t = std::fs::read_to_string(&trace).unwrap();
        assert!(!t.contains("sync("), "a sync with --no-sync:\n{t}");
        // And without it the image is synced.
        let synced = dir.path().join("synced.vhdx");
        std::process::Command::new("strace")
            .args(["-f", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_ckpt"))
            .args(["convert", s(&raw), s(&synced)])
            .status()
            .unwrap();
        assert!(std::fs::read_to_string(&trace).unwrap().contains("sync("));
    }
}

#[test]
fn convert_rounds_up_odd_raw_sizes() {
    let dir = tmp();
    let raw = dir.path().join("odd.raw");
    let data = pattern(5, 0, 1000);
    std::fs::write(&raw, &data).unwrap();
    let vhdx = dir.path().join("odd.vhdx");
    let o = ok(&["convert", s(&raw), s(&vhdx)]);
    assert!(stdout(&o).contains("rounded up"), "{}", stdout(&o));
    assert_eq!(info_json(&vhdx)["virtual_size"], 1024);
    let o = ok(&["read", s(&vhdx), "0", "1024"]);
    assert_eq!(&o.stdout[..1000], &data[..]);
    assert!(o.stdout[1000..].iter().all(|&b| b == 0));
}

#[test]
fn convert_errors() {
    let dir = tmp();
    let raw = dir.path().join("r.raw");
    make_raw(&raw, 4 * MIB);
    let vhdx = dir.path().join("r.vhdx");
    ok(&["convert", s(&raw), s(&vhdx)]);
    // Never overwrite; the existing file is left alone.
    let before = std::fs::read(&vhdx).unwrap();
    let e = fail(&["convert", s(&raw), s(&vhdx)]);
    assert!(e.contains("r.vhdx") && e.contains("exists"), "{e}");
    assert!(std::fs::read(&vhdx).unwrap() == before);
    // A missing source, a bad format, a bad block size (the partial
    // destination is removed).
    let out = dir.path().join("out.vhdx");
    let e = fail(&["convert", s(&dir.path().join("nope.raw")), s(&out)]);
    assert!(e.contains("nope.raw"), "{e}");
    fail(&["convert", "-O", "qcow2", s(&raw), s(&out)]);
    fail(&["convert", s(&raw), s(&out), "--block-size", "3M"]);
    assert!(!out.exists(), "a failed convert left {out:?}");
    // A damaged VHDX source: the error names it and no output is left.
    let mut bytes = std::fs::read(&vhdx).unwrap();
    for at in [0x10000usize, 0x20000] {
        bytes[at + 100] ^= 0xff;
    }
    let damaged = dir.path().join("damaged.vhdx");
    std::fs::write(&damaged, &bytes).unwrap();
    let out2 = dir.path().join("out2.raw");
    let e = fail(&["convert", s(&damaged), s(&out2)]);
    assert!(e.contains("damaged.vhdx"), "{e}");
    assert!(!out2.exists());
}

#[test]
fn errors_are_one_line_with_status_1() {
    let dir = tmp();
    let f = dir.path().join("e.vhdx");
    let missing = dir.path().join("missing.vhdx");
    ok(&["create", s(&f), "--size", "2M", "--block-size", "1M"]);
    // A missing file, for every command that opens one.
    for args in [
        vec!["info", s(&missing)],
        vec!["info", s(&missing), "--json"],
        vec!["check", s(&missing)],
        vec!["read", s(&missing), "0", "1"],
        vec!["bench", s(&missing), "-c", "1"],
        vec!["merge", s(&missing)],
        vec!["changes", s(&missing)],
        vec!["changes", s(&missing), "--json"],
        vec!["reparent", s(&missing), s(&f)],
        vec![
            "create",
            s(&dir.path().join("c.avhdx")),
            "--parent",
            s(&missing),
        ],
    ] {
        let e = fail(&args);
        assert!(e.contains("missing.vhdx"), "{args:?}: {e}");
    }
    let o = run_with_input(&["write", s(&missing), "0"], b"x");
    let e = fails(&["write", "missing"], &o);
    assert!(e.contains("missing.vhdx"), "{e}");
    // Bad sizes.
    for bad in ["12X", "", "1.5G", "M", "99999999T"] {
        let e = fail(&["create", s(&dir.path().join("x.vhdx")), "--size", bad]);
        assert!(e.contains("size"), "{e}");
    }
    fail(&["create", s(&dir.path().join("x.vhdx")), "--size", "-5"]);
    fail(&["read", s(&f), "0", "lots"]);
    // Reading past the end: nothing on stdout.
    for (off, len) in [
        ("2M", "1"),
        ("0", "3M"),
        ("1M", "1M1"),
        ("18446744073709551615", "2"),
    ] {
        let o = run(&["read", s(&f), off, len]);
        fails(&["read", off, len], &o);
        assert!(o.stdout.is_empty(), "read {off} {len} printed data");
    }
    // Bad sector sizes.
    for flag in ["--logical-sector", "--physical-sector"] {
        for v in ["1024", "0", "abc"] {
            let e = fail(&[
                "create",
                s(&dir.path().join("y.vhdx")),
                "--size",
                "1M",
                flag,
                v,
            ]);
            assert!(e.contains("sector") || e.contains("size"), "{e}");
        }
    }
    assert!(!dir.path().join("y.vhdx").exists());
    // Values the engine refuses: the file is not created (or is removed).
    let z = dir.path().join("z.vhdx");
    fail(&["create", s(&z), "--size", "1M", "--block-size", "3M"]);
    fail(&["create", s(&z), "--size", "1000"]);
    fail(&["create", s(&z), "--size", "1M", "--log-size", "1000K"]);
    assert!(!z.exists(), "a failed create left {z:?}");
    // Usage errors: status 1 (not clap's 2), one line.
    fail(&[]);
    fail(&["frobnicate"]);
    fail(&["create", s(&z)]);
    fail(&["info"]);
    fail(&["info", s(&f), "--bogus"]);
    fail(&["convert", s(&f)]);
    fail(&["merge"]);
    fail(&["reparent", s(&f)]);
    fail(&["changes", s(&f), "--base"]);
    // Not a VHDX.
    let raw = dir.path().join("plain.raw");
    std::fs::write(&raw, vec![1u8; 4096]).unwrap();
    let e = fail(&["info", s(&raw)]);
    assert!(e.contains("plain.raw"), "{e}");
    // Help and version are not errors.
    let o = ok(&["--help"]);
    assert!(stdout(&o).contains("convert"));
    ok(&["--version"]);
    ok(&["bench", "--help"]);
}

#[test]
fn bench_reads_and_writes() {
    let dir = tmp();
    let f = dir.path().join("b.vhdx");
    ok(&["create", s(&f), "--size", "4M", "--block-size", "1M"]);
    let o = ok(&["bench", s(&f), "-c", "2000"]);
    let text = stdout(&o);
    assert!(
        text.starts_with("Sending 2000 read requests, 4096 bytes each, 1 in parallel (starting at offset 0, step size 4096)"),
        "{text}"
    );
    assert!(text.contains("Run completed in "), "{text}");
    // A write test wraps around before the end (4 MiB / 64 KiB = 64 requests
    // per lap) and writes the pattern everywhere, like qemu-img bench.
    let o = ok(&[
        "bench",
        s(&f),
        "-w",
        "-c",
        "200",
        "-s",
        "64K",
        "-t",
        "2",
        "--pattern",
        "165",
        "--flush-interval",
        "50",
    ]);
    assert!(stdout(&o).contains("200 write requests, 65536 bytes each, 2 in parallel"));
    ok(&["check", s(&f)]);
    // Offsets 0, 64K, … wrap modulo (4M - 64K): the last 64 KiB is never written.
    let o = ok(&["read", s(&f), "0", "4M"]);
    let split = (4 * MIB - 64 * 1024) as usize;
    assert!(
        o.stdout[..split].iter().all(|&b| b == 165),
        "pattern missing"
    );
    assert!(
        o.stdout[split..].iter().all(|&b| b == 0),
        "wrote past the wrap point"
    );
    // Step and offset, with suffixes; an offset that does not fit is an error.
    ok(&[
        "bench",
        s(&f),
        "-c",
        "100",
        "-S",
        "8K",
        "-o",
        "1M",
        "-s",
        "512",
    ]);
    fail(&["bench", s(&f), "-c", "1", "-o", "4M"]);
    fail(&["bench", s(&f), "-t", "0"]);
    fail(&["bench", s(&f), "--flush-interval", "5"]);
}

#[test]
fn real_images_read_like_qemu() {
    let tmp = tmp();
    let Some(img) = support::testdata_image("iotest-dynamic-1G.vhdx.bz2", tmp.path()) else {
        return;
    };
    let v = info_json(&img);
    assert_eq!(v["virtual_size"], 1u64 << 30);
    assert_eq!(v["block_size"], 32 * MIB);
    ok(&["check", s(&img)]);
    // 0xa5 over [0, 33 MiB), 0x96 over [33 MiB, 66 MiB), zeros after.
    let o = ok(&["read", s(&img), "33M", "1M"]);
    assert!(o.stdout.iter().all(|&b| b == 0x96));
    let o = ok(&["read", s(&img), "32M", "1M"]);
    assert!(o.stdout.iter().all(|&b| b == 0xa5));
    // Converted to raw, sparse: the 1 GiB image holds 66 MiB of data.
    let raw = tmp.path().join("dyn.raw");
    ok(&["convert", s(&img), s(&raw)]);
    let meta = std::fs::metadata(&raw).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 128 * MIB,
        "not sparse: {} blocks",
        meta.blocks()
    );
    if require_tool("qemu-img") {
        qemu_compare(&img, "vhdx", &raw, "raw");
        // And back to VHDX, judged by QEMU against the original.
        let again = tmp.path().join("again.vhdx");
        ok(&["convert", s(&raw), s(&again)]);
        qemu_compare(&again, "vhdx", &img, "vhdx");
    }
}

#[test]
fn dirty_log_is_replayed_in_memory_by_readers_and_into_the_file_by_write() {
    let dir = tmp();
    let Some(img) = support::testdata_image("iotest-dirtylog-10G-4M.vhdx.bz2", dir.path()) else {
        return;
    };
    let before = std::fs::read(&img).unwrap();
    let v = info_json(&img);
    assert_eq!(v["log_dirty"], true);
    assert_eq!(v["kind"], "dynamic");
    assert_eq!(v["virtual_size"], 10u64 << 30);
    assert_eq!(v["block_size"], MIB);
    // MiB 17 only holds 0xa5 once the log is replayed.
    let o = ok(&["read", s(&img), "17M", "1M"]);
    assert!(o.stdout.iter().all(|&b| b == 0xa5), "log not replayed");
    let o = ok(&["check", s(&img)]);
    assert!(stdout(&o).contains("note:"), "{}", stdout(&o));
    let raw = dir.path().join("dirty.raw");
    ok(&["convert", s(&img), s(&raw)]);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "info/read/check/convert wrote to the image"
    );
    let meta = std::fs::metadata(&raw).unwrap();
    assert_eq!(meta.len(), 10 << 30);
    assert!(meta.blocks() * 512 <= 32 * MIB, "not sparse");
    // A read-write open (an empty write) replays the log into the file.
    write_at(&img, 0, b"");
    assert_eq!(info_json(&img)["log_dirty"], false);
    let o = ok(&["read", s(&img), "0", "20M"]);
    let (data, zeros) = o.stdout.split_at(18 * MIB as usize);
    assert!(data.iter().all(|&b| b == 0xa5) && zeros.iter().all(|&b| b == 0));
    // The raw output holds the same bytes (its first 20 MiB; zeros after).
    let mut head = vec![0u8; 20 * MIB as usize];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&raw).unwrap(), &mut head, 0)
        .unwrap();
    assert!(head == o.stdout, "raw output differs");
    if require_tool("qemu-io") {
        // QEMU refuses a dirty log read-only; after the replay it reads the
        // file as we do (qemu-io exits 1 when a pattern does not match).
        let out = support::run(
            Command::new("qemu-io")
                .args([
                    "-r",
                    "-f",
                    "vhdx",
                    "-c",
                    "read -P 0xa5 0 18M",
                    "-c",
                    "read -P 0 18M 2M",
                ])
                .arg(&img),
        );
        assert!(!out.contains("failed"), "{out}");
    }
}
