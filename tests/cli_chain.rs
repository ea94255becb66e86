//! The `ckpt` command-line tool on differencing chains, driven as scripts
//! drive it: `create --parent`, `info` (parent and chain), `read`, `write`,
//! `convert` and `bench` through a chain, `merge`, `changes`, `reparent`,
//! and the errors of broken chains. Content is judged against a plain byte
//! vector (the model), libvhdi (which reads differencing chains) and QEMU
//! (which reads the flattened and merged results).

#![cfg(feature = "cli")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::cli::{
    fail, fails, info_json, json, ok, ok_in, ok_text, run, run_with_input, s, stdout, write_at,
};
use support::{have_pyvhdi, have_qemu, pattern, python, qemu_reads, tempdir as tmp, MIB};

/// Virtual size of every test disk.
const SIZE: u64 = 8 * MIB;

/// The canonical path, as `info` reports it.
fn canon(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|e| panic!("canonicalize {p:?}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// `ckpt write FILE OFFSET` with `data`, and the same into the model.
#[track_caller]
fn write(path: &Path, model: &mut [u8], offset: u64, data: &[u8]) {
    write_at(path, offset, data);
    model[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// A VHDX without a parent reads as `model` through `ckpt read` and QEMU,
/// and `ckpt check` finds it sound.
#[track_caller]
fn assert_standalone(path: &Path, model: &[u8], dir: &Path) {
    assert_reads(path, model);
    ok(&["check", s(path)]);
    if have_qemu() {
        qemu_reads(path, model, dir);
    }
}

/// The whole virtual disk, through `ckpt read`.
#[track_caller]
fn read_all(path: &Path) -> Vec<u8> {
    ok(&["read", s(path), "0", &SIZE.to_string()]).stdout
}

/// `ckpt read` gives exactly `model` for the whole disk.
#[track_caller]
fn assert_reads(path: &Path, model: &[u8]) {
    support::assert_same(&format!("{path:?}"), &read_all(path), model, 0);
}

/// The virtual disk of the chain `top` (top first: each file then its
/// parent) as libvhdi reads it.
fn libvhdi_read(chain: &[&Path]) -> Vec<u8> {
    let script = "import pyvhdi, sys\n\
                  files = []\n\
                  for p in sys.argv[1:]:\n\
                  \x20   f = pyvhdi.file(); f.open(p); files.append(f)\n\
                  for child, parent in zip(files, files[1:]):\n\
                  \x20   child.set_parent(parent)\n\
                  top = files[0]\n\
                  sys.stdout.buffer.write(top.read_buffer_at_offset(top.get_media_size(), 0))\n";
    let args: Vec<&str> = chain.iter().map(|p| s(p)).collect();
    python(script, &args)
}

/// A base disk (1 MiB blocks) with data at a few places; returns its model.
fn make_base(path: &Path) -> Vec<u8> {
    ok(&["create", s(path), "--size", "8M", "--block-size", "1M"]);
    let mut model = vec![0u8; SIZE as usize];
    write(path, &mut model, 0, &pattern(1, 0, 3 * MIB as usize + 100));
    write(path, &mut model, 6 * MIB - 7, &pattern(2, 0, 5000));
    model
}

/// `ckpt create CHILD --parent PARENT`, with the `extra` options.
#[track_caller]
fn create_child_with(child: &Path, parent: &Path, extra: &[&str]) {
    let mut args = vec!["create", s(child), "--parent", s(parent)];
    args.extend_from_slice(extra);
    let out = ok_text(&args);
    assert!(out.contains("differencing"), "{out}");
}

#[track_caller]
fn create_child(child: &Path, parent: &Path) {
    create_child_with(child, parent, &[]);
}

/// A new temporary folder with `base.vhdx` (see [`make_base`]) and a fresh
/// child of it, `child.avhdx`: (folder, base, child, what both read).
fn base_and_child() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    let dir = tmp();
    let base = dir.path().join("base.vhdx");
    let model = make_base(&base);
    let child = dir.path().join("child.avhdx");
    create_child(&child, &base);
    (dir, base, child, model)
}

#[test]
fn create_child_and_info() {
    let (dir, base, child, _) = base_and_child();
    let grand = dir.path().join("grand.avhdx");
    create_child_with(&grand, &child, &["--block-size", "1M", "--log-size", "2M"]);

    let v = info_json(&base);
    assert_eq!(v["kind"], "dynamic");
    assert!(v["parent"].is_null(), "{v}");
    assert_eq!(v["chain"], serde_json::json!([canon(&base)]));

    let v = info_json(&child);
    assert_eq!(v["kind"], "differencing");
    assert_eq!(v["virtual_size"], SIZE);
    assert_eq!(v["block_size"], 2 * MIB, "default child block size");
    assert_eq!(v["logical_sector_size"], 512);
    assert_eq!(v["allocated_bytes"], 0);
    assert_eq!(v["parent"], canon(&base));
    assert_eq!(v["chain"], serde_json::json!([canon(&child), canon(&base)]));

    let v = info_json(&grand);
    assert_eq!(v["kind"], "differencing");
    assert_eq!(v["block_size"], MIB);
    assert_eq!(v["parent"], canon(&child));
    assert_eq!(
        v["chain"],
        serde_json::json!([canon(&grand), canon(&child), canon(&base)])
    );
    // The 2 MiB log makes the grandchild 1 MiB bigger than the child.
    let (g, c) = (
        std::fs::metadata(&grand).unwrap().len(),
        std::fs::metadata(&child).unwrap().len(),
    );
    assert!(g >= c + MIB, "--log-size ignored: {g} vs {c}");

    // Relative paths on the command line: still absolute in the output.
    let o = ok_in(dir.path(), &["info", "--json", "grand.avhdx"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parent"], canon(&child));
    assert_eq!(v["chain"][2], canon(&base));

    // Human output shows the parent and the whole chain.
    let text = ok_text(&["info", s(&grand)]);
    assert!(text.contains("differencing"), "{text}");
    for p in [&grand, &child, &base] {
        assert!(text.contains(&canon(p)), "{p:?} missing from:\n{text}");
    }
    let base_text = ok_text(&["info", s(&base)]);
    assert!(!base_text.contains("chain"), "{base_text}");

    // check on a child checks that one file.
    ok(&["check", s(&child)]);
    ok(&["check", s(&grand)]);

    // Hyper-V copies the virtual disk id from parent to child.
    assert_eq!(info_json(&child)["disk_id"], info_json(&base)["disk_id"]);
    // libvhdi agrees on the linkage: the child names the base's DataWriteGuid.
    if have_pyvhdi() {
        let out = python(
            "import pyvhdi,sys; f=pyvhdi.file(); f.open(sys.argv[1]); \
             print(f.get_disk_type(), f.get_parent_identifier(), f.get_media_size())",
            &[s(&child)],
        );
        let base_id = info_json(&base)["data_write_guid"]
            .as_str()
            .unwrap()
            .to_string();
        // Disk type 4 is "differential" in libvhdi.
        assert_eq!(
            String::from_utf8_lossy(&out).trim(),
            format!("4 {base_id} {SIZE}")
        );
    }
}

#[test]
fn create_child_refuses_base_options_and_bad_parents() {
    let dir = tmp();
    let base = dir.path().join("base.vhdx");
    ok(&["create", s(&base), "--size", "4M"]);
    let child = dir.path().join("c.avhdx");
    for extra in [
        &["--size", "4M"][..],
        &["--fixed"],
        &["--logical-sector", "512"],
        &["--physical-sector", "4096"],
    ] {
        let mut args = vec!["create", s(&child), "--parent", s(&base)];
        args.extend_from_slice(extra);
        let e = fail(&args);
        assert!(
            e.contains(extra[0]) && e.contains("--parent"),
            "{args:?}: {e}"
        );
        assert!(!child.exists(), "{args:?} created the file");
    }
    // Neither --size nor --parent.
    let e = fail(&["create", s(&child)]);
    assert!(e.contains("--size"), "{e}");
    // A missing parent, a parent that is not a VHDX, a bad block size.
    let missing = dir.path().join("missing.vhdx");
    let e = fail(&["create", s(&child), "--parent", s(&missing)]);
    assert!(e.contains("missing.vhdx"), "{e}");
    let raw = dir.path().join("plain.raw");
    std::fs::write(&raw, vec![7u8; 8192]).unwrap();
    let e = fail(&["create", s(&child), "--parent", s(&raw)]);
    assert!(e.contains("plain.raw"), "{e}");
    fail(&[
        "create",
        s(&child),
        "--parent",
        s(&base),
        "--block-size",
        "3M",
    ]);
    assert!(!child.exists(), "a failed create left {child:?}");
    // An existing file is never overwritten.
    create_child(&child, &base);
    let before = std::fs::read(&child).unwrap();
    let e = fail(&["create", s(&child), "--parent", s(&base)]);
    assert!(e.contains("c.avhdx") && e.contains("exists"), "{e}");
    assert!(std::fs::read(&child).unwrap() == before);
}

#[test]
fn read_write_bench_through_a_chain() {
    let (dir, base, child, mut model) = base_and_child();
    let base_model = model.clone();
    // A fresh child reads as its parent.
    assert_reads(&child, &model);
    let base_bytes = std::fs::read(&base).unwrap();
    // Unaligned writes: inside one sector, across a sector and the 2 MiB
    // block boundary, over parent data and over unallocated space.
    write(&child, &mut model, 1_000_000, b"x");
    write(&child, &mut model, 2 * MIB - 300, &pattern(3, 0, 1000));
    write(
        &child,
        &mut model,
        4 * MIB + 17,
        &pattern(4, 0, MIB as usize + 5),
    );
    let grand = dir.path().join("grand.avhdx");
    create_child_with(&grand, &child, &["--block-size", "1M"]);
    write(&grand, &mut model, 511, &pattern(5, 0, 2));
    write(&grand, &mut model, 3 * MIB - 1, &pattern(6, 0, 600));
    // A write of zeros hides the parents' data.
    write(&grand, &mut model, 100 * 1024, &vec![0u8; 64 * 1024]);
    assert_reads(&grand, &model);
    // Parents are opened read-only: their bytes do not change.
    assert!(std::fs::read(&base).unwrap() == base_bytes, "base changed");
    assert_reads(&base, &base_model);
    // Unaligned reads of parts, too.
    let o = ok(&["read", s(&grand), "3145727", "601"]);
    assert_eq!(
        o.stdout,
        &model[3 * MIB as usize - 1..3 * MIB as usize + 600]
    );
    ok(&["check", s(&grand)]);
    ok(&["check", s(&child)]);

    // A bench write on the grandchild changes only it; a read bench works.
    let child_bytes = std::fs::read(&child).unwrap();
    let out = ok_text(&[
        "bench",
        s(&grand),
        "-w",
        "-c",
        "16",
        "-s",
        "64K",
        "-o",
        "5M",
        "--pattern",
        "9",
        "-t",
        "2",
    ]);
    assert!(out.contains("16 write requests"), "{out}");
    model[5 * MIB as usize..6 * MIB as usize].fill(9);
    assert_reads(&grand, &model);
    assert!(
        std::fs::read(&child).unwrap() == child_bytes,
        "child changed"
    );
    ok(&["bench", s(&grand), "-c", "500", "-s", "16K"]);
    ok(&["check", s(&grand)]);

    // libvhdi reads the same chain.
    if have_pyvhdi() {
        let got = libvhdi_read(&[&grand, &child, &base]);
        assert!(got == model, "libvhdi reads other bytes through the chain");
    }
}

#[test]
fn convert_flattens_a_chain() {
    let (dir, base, child, mut model) = base_and_child();
    write(&child, &mut model, 5 * MIB, &pattern(7, 0, 70_000));
    write(&child, &mut model, MIB, &vec![0u8; MIB as usize]);

    let flat = dir.path().join("flat.vhdx");
    let raw = dir.path().join("flat.raw");
    ok(&["convert", s(&child), s(&flat), "--block-size", "1M"]);
    ok(&["convert", s(&child), s(&raw)]);
    let v = info_json(&flat);
    assert_eq!(v["kind"], "dynamic");
    assert!(v["parent"].is_null(), "{v}");
    assert_eq!(v["chain"], serde_json::json!([canon(&flat)]));
    assert_eq!(v["virtual_size"], SIZE);
    assert_reads(&flat, &model);
    assert!(std::fs::read(&raw).unwrap() == model, "raw output differs");
    // The zeroed MiB hides the base's data: its block is not allocated in
    // the output (the blocks of MiB 0, 2, 3, 5 and 6 are).
    assert_eq!(v["block_size"], MIB);
    assert_eq!(v["allocated_bytes"], 5 * MIB);
    let d = json(&["changes", s(&flat), "--json"]);
    for r in d["ranges"].as_array().unwrap() {
        let (o, l) = (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap());
        assert!(o + l <= MIB || o >= 2 * MIB, "zeroed range copied: {d}");
    }
    // The output stands alone: it reads the same without the chain.
    std::fs::remove_file(&child).unwrap();
    std::fs::remove_file(&base).unwrap();
    assert_standalone(&flat, &model, dir.path());
}

#[test]
fn merge_into_parent_then_into_ancestor() {
    let dir = tmp();
    let base = dir.path().join("base.vhdx");
    let mut model = make_base(&base);
    let a = dir.path().join("a.avhdx");
    let b = dir.path().join("b.avhdx");
    let c = dir.path().join("c.avhdx");
    create_child(&a, &base);
    write(&a, &mut model, 7 * MIB, &pattern(8, 0, 4096));
    create_child(&b, &a);
    write(&b, &mut model, 2 * MIB - 512, &pattern(9, 0, 1024));
    write(&b, &mut model, 10, &[0u8; 100]);
    create_child(&c, &b);
    write(&c, &mut model, 3 * MIB, &pattern(10, 0, 512));
    assert_reads(&c, &model);
    let b_changed: u64 = json(&["changes", s(&b), "--json"])["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["length"].as_u64().unwrap())
        .sum();
    assert_eq!(b_changed, 1024 + 512);

    // Into the immediate parent: b goes, c is re-pointed at a.
    let line = ok_text(&["merge", s(&b)]);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains(&canon(&a)), "{line}");
    assert!(line.contains(&format!("{b_changed} bytes")), "{line}");
    assert!(line.contains("re-pointed 1 descendant"), "{line}");
    assert!(line.contains(&canon(&c)), "{line}");
    assert!(!b.exists(), "the merged child is still there");
    assert_eq!(
        info_json(&c)["chain"],
        serde_json::json!([canon(&c), canon(&a), canon(&base)])
    );
    assert_reads(&c, &model);
    ok(&["check", s(&a)]);
    ok(&["check", s(&c)]);
    if have_pyvhdi() {
        assert!(
            libvhdi_read(&[&c, &a, &base]) == model,
            "libvhdi after merge"
        );
    }

    // Into the base, two levels down: c and a go, base holds everything.
    let line = ok_text(&["merge", s(&c), "--into", s(&base)]);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains(&canon(&base)), "{line}");
    assert!(line.contains("re-pointed 0 descendants"), "{line}");
    assert!(!c.exists() && !a.exists(), "merged layers left behind");
    let v = info_json(&base);
    assert_eq!(v["chain"], serde_json::json!([canon(&base)]));
    assert!(v["parent"].is_null());
    assert_standalone(&base, &model, dir.path());
}

#[test]
fn merge_errors() {
    let dir = tmp();
    let base = dir.path().join("base.vhdx");
    let model = make_base(&base);
    // A base disk has nothing to merge into.
    let e = fail(&["merge", s(&base)]);
    assert!(
        e.contains("base.vhdx") && e.contains("not a differencing disk"),
        "{e}"
    );
    let child = dir.path().join("child.avhdx");
    create_child(&child, &base);
    let grand = dir.path().join("grand.avhdx");
    create_child(&grand, &child);
    let other = dir.path().join("other.vhdx");
    ok(&["create", s(&other), "--size", "8M"]);
    // --into: not in the chain, the child itself, missing.
    let e = fail(&["merge", s(&grand), "--into", s(&other)]);
    assert!(
        e.contains("other.vhdx") && e.contains("not in the chain"),
        "{e}"
    );
    let e = fail(&["merge", s(&grand), "--into", s(&grand)]);
    assert!(e.contains("itself"), "{e}");
    let e = fail(&["merge", s(&grand), "--into", "nowhere.vhdx"]);
    assert!(e.contains("nowhere.vhdx"), "{e}");
    // A sibling would be broken when the base changes: refused.
    let sibling = dir.path().join("sibling.avhdx");
    create_child(&sibling, &base);
    let contents = || -> Vec<Vec<u8>> {
        [&base, &child, &grand]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    };
    let before = contents();
    for args in [
        vec!["merge", s(&child)],
        vec!["merge", s(&grand), "--into", s(&base)],
    ] {
        let e = fail(&args);
        assert!(e.contains("sibling.avhdx"), "{args:?}: {e}");
    }
    assert!(before == contents(), "a refused merge changed a file");
    assert_reads(&sibling, &model);
    // Merging the grandchild into the child does not touch the base.
    ok(&["merge", s(&grand)]);
    assert_reads(&sibling, &model);
}

/// `ckpt changes … --json` as (offset, length) pairs, checking the shape.
fn changes(args: &[&str]) -> Vec<(u64, u64)> {
    let v = json(args);
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "only \"ranges\": {v}");
    v["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            assert_eq!(r.as_object().unwrap().len(), 2, "{r}");
            (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn changes_are_exactly_the_sectors_written() {
    let (dir, base, child, _) = base_and_child();
    let mut model = read_all(&child);
    assert!(changes(&["changes", s(&child), "--json"]).is_empty());
    let text = ok_text(&["changes", s(&child)]);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("total: 0 bytes in 0 ranges"), "{text}");

    // One byte: one sector.
    write(&child, &mut model, 1_000_000, b"y");
    let c = |args: &[&str]| changes(args);
    assert_eq!(c(&["changes", s(&child), "--json"]), [(999_936, 512)]);
    // The sector after it: coalesced. One across the 2 MiB block boundary
    // (2 sectors), and one across a sector boundary far away (2 sectors).
    write(&child, &mut model, 1_000_448, b"z");
    write(&child, &mut model, 2 * MIB - 10, &[1u8; 520]);
    write(&child, &mut model, 7 * MIB + 511, &[2u8; 2]);
    let want = vec![(999_936, 1024), (2 * MIB - 512, 1024), (7 * MIB, 1024)];
    assert_eq!(c(&["changes", s(&child), "--json"]), want);
    // Human output: "offset length" lines, then the total.
    let text = ok_text(&["changes", s(&child)]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), want.len() + 1, "{text}");
    for (line, (o, l)) in lines.iter().zip(&want) {
        assert_eq!(*line, format!("{o} {l}"));
    }
    assert!(
        lines[3].starts_with("total: 3 KiB (3072 bytes) in 3 ranges"),
        "{text}"
    );

    // A grandchild: its own changes, and since the base (the union).
    let grand = dir.path().join("grand.avhdx");
    create_child(&grand, &child);
    write(&grand, &mut model, 999_999, &[3u8; 600]);
    write(&grand, &mut model, 5 * MIB, &[0u8; 4096]);
    let own = vec![(999_936, 1024), (5 * MIB, 4096)];
    assert_eq!(c(&["changes", s(&grand), "--json"]), own);
    assert_eq!(
        c(&["changes", s(&grand), "--base", s(&child), "--json"]),
        own
    );
    assert_eq!(
        c(&["changes", s(&grand), "--base", s(&base), "--json"]),
        vec![
            (999_936, 1024),
            (2 * MIB - 512, 1024),
            (5 * MIB, 4096),
            (7 * MIB, 1024)
        ]
    );
    // Every byte that differs from the base lies inside the reported ranges.
    let base_bytes = read_all(&base);
    let ranges = c(&["changes", s(&grand), "--base", s(&base), "--json"]);
    for (i, (x, y)) in base_bytes.iter().zip(&model).enumerate() {
        if x != y {
            let i = i as u64;
            assert!(
                ranges.iter().any(|&(o, l)| o <= i && i < o + l),
                "byte {i} changed but is not reported"
            );
        }
    }
    assert_reads(&grand, &model);

    // --base must be a strict ancestor.
    let e = fail(&["changes", s(&grand), "--base", s(&grand)]);
    assert!(e.contains("itself") && e.contains("base.vhdx"), "{e}");
    let other = dir.path().join("other.vhdx");
    ok(&["create", s(&other), "--size", "8M"]);
    let e = fail(&["changes", s(&grand), "--base", s(&other), "--json"]);
    assert!(
        e.contains("other.vhdx") && e.contains("not in the chain"),
        "{e}"
    );
    let e = fail(&["changes", s(&grand), "--base", "nowhere.vhdx"]);
    assert!(e.contains("nowhere.vhdx"), "{e}");
    let e = fail(&["changes", s(&base), "--base", s(&base)]);
    assert!(e.contains("itself"), "{e}");
}

#[test]
fn changes_follow_the_logical_sector_size() {
    let dir = tmp();
    let base = dir.path().join("base4k.vhdx");
    ok(&[
        "create",
        s(&base),
        "--size",
        "4M",
        "--logical-sector",
        "4096",
    ]);
    let child = dir.path().join("child4k.avhdx");
    create_child(&child, &base);
    assert_eq!(info_json(&child)["logical_sector_size"], 4096);
    write_at(&child, 5000, b"!");
    assert_eq!(changes(&["changes", s(&child), "--json"]), [(4096, 4096)]);
}

#[test]
fn reparent_after_moving_the_parent() {
    let dir = tmp();
    let old = dir.path().join("old");
    let new = dir.path().join("new");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    let base = old.join("base.vhdx");
    let mut model = make_base(&base);
    let child = dir.path().join("child.avhdx");
    create_child(&child, &base);
    write(&child, &mut model, 12345, &pattern(11, 0, 777));
    let base_abs = canon(&base);

    // Move the parent: both the relative and the absolute path break, and
    // the error names both.
    let moved = new.join("base.vhdx");
    std::fs::rename(&base, &moved).unwrap();
    for args in [
        vec!["read", s(&child), "0", "1"],
        vec!["info", s(&child), "--json"],
        vec!["changes", s(&child)],
        vec!["merge", s(&child)],
        vec!["convert", s(&child), s(&dir.path().join("out.raw"))],
        vec!["bench", s(&child), "-c", "1"],
    ] {
        let e = fail(&args);
        assert!(
            e.contains("child.avhdx") && e.contains("not found"),
            "{args:?}: {e}"
        );
        assert!(
            e.contains(&base_abs) && e.contains("old/base.vhdx"),
            "{args:?}: the tried paths are missing: {e}"
        );
    }
    assert!(!dir.path().join("out.raw").exists());
    let o = run_with_input(&["write", s(&child), "0"], b"w");
    let e = fails(&["write", "child"], &o);
    assert!(e.contains("not found"), "{e}");
    // check looks at the child alone: fine without its parent.
    ok(&["check", s(&child)]);

    // A parent of another disk is refused without --force, and so is a
    // disk of another logical sector size even with it.
    let other = new.join("other.vhdx");
    ok(&["create", s(&other), "--size", "8M"]);
    let before = std::fs::read(&child).unwrap();
    let e = fail(&["reparent", s(&child), s(&other)]);
    assert!(e.contains("does not match") && e.contains("--force"), "{e}");
    let small = new.join("small.vhdx");
    ok(&[
        "create",
        s(&small),
        "--size",
        "8M",
        "--logical-sector",
        "4096",
    ]);
    let e = fail(&["reparent", s(&child), s(&small), "--force"]);
    assert!(e.contains("small.vhdx"), "{e}");
    assert!(
        std::fs::read(&child).unwrap() == before,
        "a refused reparent wrote"
    );
    // Not a differencing disk; a missing new parent.
    let e = fail(&["reparent", s(&other), s(&moved)]);
    assert!(e.contains("not a differencing disk"), "{e}");
    let e = fail(&["reparent", s(&child), s(&new.join("nope.vhdx"))]);
    assert!(e.contains("nope.vhdx"), "{e}");

    // The real parent at its new place: accepted, and the chain reads again.
    let out = ok_text(&["reparent", s(&child), s(&moved)]);
    assert!(out.contains(&canon(&moved)), "{out}");
    assert_eq!(info_json(&child)["parent"], canon(&moved));
    assert_reads(&child, &model);
    if have_pyvhdi() {
        assert!(
            libvhdi_read(&[&child, &moved]) == model,
            "libvhdi after reparent"
        );
    }

    // Moving child and parent together keeps the relative path working.
    let together = dir.path().join("together");
    std::fs::create_dir_all(&together).unwrap();
    std::fs::rename(&new, together.join("new")).unwrap();
    let child2 = together.join("child.avhdx");
    std::fs::rename(&child, &child2).unwrap();
    assert_eq!(
        info_json(&child2)["parent"],
        canon(&together.join("new/base.vhdx"))
    );
    assert_reads(&child2, &model);

    // --force re-points at the other disk: the child's own data over it.
    let other2 = together.join("new/other.vhdx");
    let out = ok_text(&["reparent", s(&child2), s(&other2), "--force"]);
    assert!(out.contains(&canon(&other2)), "{out}");
    // The child holds whole sectors (24 and 25, with the base's bytes
    // around the write): those read as before, the rest as the zeros of
    // the other disk.
    let got = read_all(&child2);
    assert!(
        got[..12288].iter().all(|&b| b == 0),
        "other's zeros expected"
    );
    assert!(
        got[12288..13312] == model[12288..13312],
        "the child's sectors"
    );
    assert!(
        got[13312..].iter().all(|&b| b == 0),
        "other's zeros expected"
    );
}

#[test]
fn a_parent_modified_by_qemu_is_refused() {
    if !have_qemu() {
        return;
    }
    let (dir, base, child, _) = base_and_child();
    let guid = info_json(&base)["data_write_guid"].clone();
    // A read-only QEMU open changes nothing.
    support::run(Command::new("qemu-io").args(["-r", "-f", "vhdx", "-c", "read 0 4k", s(&base)]));
    ok(&["read", s(&child), "0", "1"]);
    // A write through QEMU gives the base a new DataWriteGuid.
    support::run(Command::new("qemu-io").args([
        "-f",
        "vhdx",
        "-c",
        "write -P 0x42 0 4k",
        s(&base),
    ]));
    assert_ne!(info_json(&base)["data_write_guid"], guid);
    assert_mismatch_refused(&child, dir.path());
}

#[test]
fn a_parent_modified_by_ckpt_is_refused() {
    let (dir, base, child, _) = base_and_child();
    // Opening the base read-write without writing keeps the linkage.
    write_at(&base, 0, b"");
    ok(&["read", s(&child), "0", "1"]);
    // A write does not.
    let mut scratch = vec![0u8; SIZE as usize];
    write(&base, &mut scratch, 0, b"changed");
    assert_mismatch_refused(&child, dir.path());
}

/// Every command that opens `child`'s chain fails with the mismatch error,
/// and none of them changes the child.
#[track_caller]
fn assert_mismatch_refused(child: &Path, dir: &Path) {
    let child_bytes = std::fs::read(child).unwrap();
    let out: PathBuf = dir.join("out.vhdx");
    for args in [
        vec!["read", s(child), "0", "1"],
        vec!["info", s(child), "--json"],
        vec!["info", s(child)],
        vec!["changes", s(child), "--json"],
        vec!["merge", s(child)],
        vec!["convert", s(child), s(&out)],
        vec!["bench", s(child), "-c", "1"],
        vec!["create", s(&dir.join("grand.avhdx")), "--parent", s(child)],
    ] {
        let o = run(&args);
        assert!(o.stdout.is_empty(), "{args:?} printed: {}", stdout(&o));
        let e = fails(&args, &o);
        assert!(
            e.contains("child.avhdx") && e.contains("base.vhdx") && e.contains("does not match"),
            "{args:?}: {e}"
        );
    }
    let o = run_with_input(&["write", s(child), "0"], b"w");
    let e = fails(&["write", "child"], &o);
    assert!(e.contains("does not match"), "{e}");
    assert!(!out.exists() && !dir.join("grand.avhdx").exists());
    // The child itself is sound.
    ok(&["check", s(child)]);
    assert!(
        std::fs::read(child).unwrap() == child_bytes,
        "the child changed"
    );
}
