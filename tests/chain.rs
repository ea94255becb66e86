//! Differencing chains: linkage errors, lookups of the parent, layout.
//!
//! - a parent changed behind its child's back (by QEMU, or by libckpt) makes
//!   opening the child fail with `ParentMismatch` naming the files and both
//!   GUIDs, and nothing is written to either file;
//! - a missing parent gives `ParentNotFound` with every path tried;
//! - moving the folder of a chain keeps it working (relative path), moving
//!   only the child falls back to the absolute path;
//! - a cycle of parents and a chain deeper than `MAX_CHAIN_DEPTH` are clear
//!   errors, never a hang;
//! - parents are never written through a child;
//! - re-parenting refuses what it must;
//! - a Hyper-V-style parent locator (`.\parent.vhdx`, `C:\…`, a volume path,
//!   an all-zero `parent_linkage2`) opens; the locator item is rewritten
//!   here byte by byte, independently of the library's own locator code;
//! - `changed_ranges` reports exactly the sectors written, for random sets
//!   of writes and trims (whole blocks where the layer holds a whole block).

mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ckpt::disk::merge::{reparent, Range};
use ckpt::disk::MAX_CHAIN_DEPTH;
use ckpt::io::{MemStorage, Storage};
use ckpt::{ChildOptions, CreateOptions, Disk, Error, ErrorKind, OpenMode};
use support::{assert_same, Rng, KIB, MIB};
use uuid::Uuid;

const SIZE: u64 = 16 * MIB;

// ------------------------------------------------------------------ helpers

/// A dynamic base disk of `size` bytes with a few patterns written, closed.
/// Returns the expected content.
fn make_base(path: &Path, size: u64, lss: u32, seed: u64) -> Vec<u8> {
    let opts = CreateOptions::new(size)
        .block_size(4 << 20)
        .logical_sector_size(lss)
        .physical_sector_size(4096);
    let disk =
        Disk::create(path, &opts).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut model = vec![0u8; size as usize];
    let mut rng = Rng::new(seed);
    for _ in 0..6 {
        let len = rng.range(1, 512 * KIB);
        let off = rng.below(size - len);
        let data = rng.bytes(len as usize);
        disk.write_at(&data, off).expect("write the base");
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    disk.close().expect("close the base");
    model
}

/// A child of `parent` with a few writes of its own, closed. Updates `model`.
fn make_child(path: &Path, parent: &Path, model: &mut [u8], seed: u64) {
    let disk = Disk::create_child(path, parent, &ChildOptions::default()).unwrap_or_else(|e| {
        panic!(
            "create child {} of {}: {e}",
            path.display(),
            parent.display()
        )
    });
    let mut rng = Rng::new(seed);
    for _ in 0..4 {
        let len = rng.range(1, 300 * KIB);
        let off = rng.below(model.len() as u64 - len);
        let data = rng.bytes(len as usize);
        disk.write_at(&data, off).expect("write the child");
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    disk.close().expect("close the child");
}

/// The whole virtual disk.
fn read_all(disk: &Disk) -> Vec<u8> {
    let mut v = vec![0u8; disk.virtual_size() as usize];
    disk.read_at(&mut v, 0).expect("read the whole disk");
    v
}

/// The file's bytes (the files here are a few MiB).
fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_unchanged(what: &str, path: &Path, before: &[u8]) {
    let after = file_bytes(path);
    assert_eq!(
        after.len(),
        before.len(),
        "{what}: {} changed length",
        path.display()
    );
    assert_same(
        &format!("{what}: {} must not be written", path.display()),
        &after,
        before,
        0,
    );
}

fn data_write_guid(path: &Path) -> Uuid {
    let disk = Disk::open(path, OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    disk.info().data_write_guid
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
}

/// The error of `f`, run on a thread that must finish within `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s (a hang?)"))
}

// ------------------------------------------- raw parent locator editing

/// GUIDs from MS-VHDX (FORMAT-NOTES.md §2.2).
const METADATA_REGION: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
const PARENT_LOCATOR_ITEM: &str = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C";
const VHDX_LOCATOR_TYPE: &str = "B04AEFB7-D19E-4A81-B789-25B8E9445913";

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
fn guid_le(s: &str) -> [u8; 16] {
    Uuid::parse_str(s).expect("a GUID").to_bytes_le()
}

/// A parent locator item: header (type GUID, reserved, count), the 12-byte
/// key/value entries with offsets relative to the item, then the UTF-16LE
/// strings (FORMAT-NOTES.md, "Parent Locator item").
fn locator_item(entries: &[(&str, &str)]) -> Vec<u8> {
    let table = 20 + 12 * entries.len();
    let mut b = vec![0u8; table];
    b[..16].copy_from_slice(&guid_le(VHDX_LOCATOR_TYPE));
    b[18..20].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    let utf16 = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    for (i, (k, v)) in entries.iter().enumerate() {
        let (k, v) = (utf16(k), utf16(v));
        let o = 20 + 12 * i;
        let ko = b.len() as u32;
        b.extend_from_slice(&k);
        let vo = b.len() as u32;
        b.extend_from_slice(&v);
        b[o..o + 4].copy_from_slice(&ko.to_le_bytes());
        b[o + 4..o + 8].copy_from_slice(&vo.to_le_bytes());
        b[o + 8..o + 10].copy_from_slice(&(k.len() as u16).to_le_bytes());
        b[o + 10..o + 12].copy_from_slice(&(v.len() as u16).to_le_bytes());
    }
    b
}

/// Where the metadata region of a (cleanly closed) VHDX lives, and its
/// table: `(region offset, region length, table bytes)`.
fn metadata_region(f: &File) -> (u64, u64, Vec<u8>) {
    let mut rt = vec![0u8; 64 * 1024];
    f.read_exact_at(&mut rt, 192 * 1024)
        .expect("read the region table");
    assert_eq!(le32(&rt, 0), 0x6967_6572, "region table signature");
    let count = le32(&rt, 8) as usize;
    let want = guid_le(METADATA_REGION);
    let (off, len) = (0..count)
        .map(|i| 16 + 32 * i)
        .find(|&o| rt[o..o + 16] == want)
        .map(|o| (le64(&rt, o + 16), le32(&rt, o + 24) as u64))
        .expect("a metadata region");
    let mut table = vec![0u8; 64 * 1024];
    f.read_exact_at(&mut table, off)
        .expect("read the metadata table");
    assert_eq!(
        le64(&table, 0),
        0x6174_6164_6174_656D,
        "metadata table signature"
    );
    (off, len, table)
}

/// Replace the parent locator item of the closed differencing disk at
/// `path` with `entries`: the new item goes after the last item of the
/// region and the table entry is pointed at it. (Metadata has no checksum;
/// the file's log is empty after a clean close, so nothing replays over it.)
fn set_locator(path: &Path, entries: &[(&str, &str)]) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let (region, region_len, mut table) = metadata_region(&f);
    let count = u16::from_le_bytes([table[10], table[11]]) as usize;
    let want = guid_le(PARENT_LOCATOR_ITEM);
    let mut end = 0u64;
    let mut slot = None;
    for i in 0..count {
        let o = 32 + 32 * i;
        end = end.max(le32(&table, o + 16) as u64 + le32(&table, o + 20) as u64);
        if table[o..o + 16] == want {
            slot = Some(o);
        }
    }
    let slot = slot.expect("the file has a parent locator item");
    let item = locator_item(entries);
    let at = end.div_ceil(8) * 8;
    assert!(
        at + item.len() as u64 <= region_len,
        "the new locator fits the metadata region"
    );
    f.write_all_at(&item, region + at)
        .expect("write the locator item");
    table[slot + 16..slot + 20].copy_from_slice(&(at as u32).to_le_bytes());
    table[slot + 20..slot + 24].copy_from_slice(&(item.len() as u32).to_le_bytes());
    f.write_all_at(&table, region)
        .expect("write the metadata table");
    f.sync_all().expect("sync");
}

/// The parent locator of the differencing disk at `path`, read raw.
fn get_locator(path: &Path) -> Vec<(String, String)> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let (region, _, table) = metadata_region(&f);
    let count = u16::from_le_bytes([table[10], table[11]]) as usize;
    let want = guid_le(PARENT_LOCATOR_ITEM);
    let o = (0..count)
        .map(|i| 32 + 32 * i)
        .find(|&o| table[o..o + 16] == want)
        .expect("a parent locator item");
    let mut item = vec![0u8; le32(&table, o + 20) as usize];
    f.read_exact_at(&mut item, region + le32(&table, o + 16) as u64)
        .expect("read the locator item");
    let n = u16::from_le_bytes([item[18], item[19]]) as usize;
    let s = |off: u32, len: u16| {
        let b = &item[off as usize..off as usize + len as usize];
        let units: Vec<u16> = b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).expect("UTF-16")
    };
    (0..n)
        .map(|i| {
            let e = 20 + 12 * i;
            let (ko, vo) = (le32(&item, e), le32(&item, e + 4));
            let (kl, vl) = (
                u16::from_le_bytes([item[e + 8], item[e + 9]]),
                u16::from_le_bytes([item[e + 10], item[e + 11]]),
            );
            (s(ko, kl), s(vo, vl))
        })
        .collect()
}

fn linkage(g: &Uuid) -> String {
    format!("{{{}}}", g.hyphenated())
}

// ------------------------------------------------------ linkage mismatch

/// Opening the child must fail with `ParentMismatch` naming both files and
/// GUIDs, read-only and read-write, without writing either file.
fn assert_mismatch(child: &Path, parent: &Path, expected: Uuid, found: Uuid) {
    let child_before = file_bytes(child);
    let parent_before = file_bytes(parent);
    for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
        let err = Disk::open(child, mode).expect_err("a child of a changed parent must not open");
        assert_eq!(err.kind(), ErrorKind::ParentMismatch, "{mode:?}: {err}");
        match &err {
            Error::ParentMismatch {
                child: c,
                parent: p,
                expected: e,
                found: f,
            } => {
                assert_eq!(canon(c), canon(child), "{mode:?}: the child named");
                assert_eq!(canon(p), canon(parent), "{mode:?}: the parent named");
                assert_eq!(*e, expected, "{mode:?}: the linkage the child records");
                assert_eq!(*f, found, "{mode:?}: the parent's DataWriteGuid");
            }
            other => panic!("{mode:?}: expected ParentMismatch, got {other:?}"),
        }
        let msg = err.to_string();
        for needle in [
            child
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a file name")
                .to_string(),
            parent
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a file name")
                .to_string(),
            expected.to_string(),
            found.to_string(),
        ] {
            assert!(
                msg.contains(&needle),
                "{mode:?}: the message {msg:?} names {needle}"
            );
        }
    }
    assert_unchanged("after the refused opens", child, &child_before);
    assert_unchanged("after the refused opens", parent, &parent_before);
}

#[test]
fn parent_changed_by_qemu_is_refused_and_nothing_is_written() {
    if !support::require_tool("qemu-io") {
        return;
    }
    let dir = support::tempdir();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.avhdx"));
    let mut model = make_base(&base, SIZE, 512, 1);
    make_child(&child, &base, &mut model, 2);
    let linked = data_write_guid(&base);
    // QEMU writes one sector of the parent (and gives it a new DataWriteGuid).
    support::qemu_io("vhdx", &base, &["write -P 1 0 512"]);
    let now = data_write_guid(&base);
    assert_ne!(
        now, linked,
        "QEMU's write gave the parent a new DataWriteGuid"
    );
    assert_mismatch(&child, &base, linked, now);
}

#[test]
fn parent_changed_by_libckpt_is_refused() {
    let dir = support::tempdir();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.avhdx"));
    let mut model = make_base(&base, SIZE, 512, 3);
    make_child(&child, &base, &mut model, 4);
    let linked = data_write_guid(&base);
    // Opening and closing the parent read-write without writing keeps the link.
    support::open_rw(&base).close().expect("close the parent");
    assert_eq!(
        data_write_guid(&base),
        linked,
        "an open without writes keeps the DataWriteGuid"
    );
    let disk = Disk::open(&child, OpenMode::ReadOnly).expect("the chain still opens");
    assert_same(
        "chain after a no-op open of the parent",
        &read_all(&disk),
        &model,
        0,
    );
    drop(disk);
    // A write into the parent breaks it.
    let p = support::open_rw(&base);
    p.write_at(&[7u8; 100], 12345).expect("write the parent");
    p.close().expect("close the parent");
    let now = data_write_guid(&base);
    assert_ne!(now, linked, "a write gives the parent a new DataWriteGuid");
    assert_mismatch(&child, &base, linked, now);
}

#[test]
fn middle_of_a_chain_changed_is_refused() {
    let dir = support::tempdir();
    let base = dir.path().join("base.vhdx");
    let mid = dir.path().join("mid.avhdx");
    let top = dir.path().join("top.avhdx");
    let mut model = make_base(&base, SIZE, 512, 5);
    make_child(&mid, &base, &mut model, 6);
    make_child(&top, &mid, &mut model, 7);
    let linked = data_write_guid(&mid);
    // Write into the middle layer as the top of its own chain.
    let d = support::open_rw(&mid);
    d.write_at(b"changed", 4096)
        .expect("write the middle layer");
    d.close().expect("close");
    let now = data_write_guid(&mid);
    assert_mismatch(&top, &mid, linked, now);
    // The middle layer still opens on its own parent.
    Disk::open(&mid, OpenMode::ReadOnly).expect("the middle layer's own chain is intact");
}

// -------------------------------------------------------- finding parents

#[test]
fn missing_parent_lists_the_paths_tried() {
    let dir = support::tempdir();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.avhdx"));
    let mut model = make_base(&base, SIZE, 512, 8);
    make_child(&child, &base, &mut model, 9);
    let abs = canon(&base);
    std::fs::remove_file(&base).expect("remove the parent");
    let before = file_bytes(&child);
    for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
        let err = Disk::open(&child, mode).expect_err("a child without its parent must not open");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        match &err {
            Error::ParentNotFound { child: c, tried } => {
                assert_eq!(c, &child, "the child named");
                // The relative path (beside the child) and the absolute
                // path, which name the same file here.
                assert!(
                    tried.contains(&base) || tried.contains(&abs),
                    "{mode:?}: tried {tried:?} includes {}",
                    base.display()
                );
                let msg = err.to_string();
                for t in tried {
                    assert_eq!(
                        msg.matches(&t.display().to_string()).count(),
                        1,
                        "the message {msg:?} lists {} once",
                        t.display()
                    );
                }
                // Both locator paths name the same file: it is tried once.
                let canon_dir = |p: &Path| canon(p.parent().unwrap()).join(p.file_name().unwrap());
                let mut keys: Vec<PathBuf> = tried.iter().map(|t| canon_dir(t)).collect();
                keys.dedup();
                assert_eq!(
                    keys.len(),
                    tried.len(),
                    "{mode:?}: a path tried twice: {tried:?}"
                );
                assert_eq!(tried.len(), 1, "{mode:?}: {tried:?}");
            }
            other => panic!("expected ParentNotFound, got {other:?}"),
        }
    }
    assert_unchanged("after the refused opens", &child, &before);
}

#[test]
fn a_moved_folder_keeps_its_chain() {
    let dir = support::tempdir();
    let a = dir.path().join("a");
    std::fs::create_dir(&a).expect("mkdir");
    let base = a.join("base.vhdx");
    let mid = a.join("mid.avhdx");
    let top = a.join("top.avhdx");
    let mut model = make_base(&base, SIZE, 512, 10);
    make_child(&mid, &base, &mut model, 11);
    make_child(&top, &mid, &mut model, 12);

    let b = dir.path().join("b");
    std::fs::rename(&a, &b).expect("move the folder");
    let disk = Disk::open(b.join("top.avhdx"), OpenMode::ReadOnly).expect("the moved chain opens");
    let want: Vec<Option<PathBuf>> = ["top.avhdx", "mid.avhdx", "base.vhdx"]
        .iter()
        .map(|n| Some(b.join(n)))
        .collect();
    assert_eq!(disk.chain(), want, "the chain is found in the new folder");
    assert_same("moved chain", &read_all(&disk), &model, 0);
    drop(disk);
    // Writable too, and it reads the same after writing.
    let disk = support::open_rw(&b.join("top.avhdx"));
    disk.write_at(b"after the move", 777).expect("write");
    model[777..777 + 14].copy_from_slice(b"after the move");
    disk.close().expect("close");
    let disk = Disk::open(b.join("top.avhdx"), OpenMode::ReadOnly).expect("reopen");
    assert_same("moved chain after a write", &read_all(&disk), &model, 0);
}

#[test]
fn a_moved_child_falls_back_to_the_absolute_path() {
    let dir = support::tempdir();
    let (base, child) = (dir.path().join("base.vhdx"), dir.path().join("child.avhdx"));
    let mut model = make_base(&base, SIZE, 512, 13);
    make_child(&child, &base, &mut model, 14);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let moved = elsewhere.join("child.avhdx");
    std::fs::rename(&child, &moved).expect("move the child");
    let disk = Disk::open(&moved, OpenMode::ReadOnly).expect("found through the absolute path");
    assert_eq!(disk.depth(), 2);
    assert_eq!(
        disk.chain()[1].as_deref().map(canon),
        Some(canon(&base)),
        "the parent found"
    );
    assert_same("moved child", &read_all(&disk), &model, 0);
}

// ------------------------------------------------------ cycles and depth

#[test]
fn a_cycle_of_parents_is_an_error_not_a_hang() {
    let dir = support::tempdir();
    let base = dir.path().join("base.vhdx");
    let a = dir.path().join("a.avhdx");
    let b = dir.path().join("b.avhdx");
    let model = make_base(&base, SIZE, 512, 15);
    make_child(&a, &base, &mut model.clone(), 16);
    make_child(&b, &base, &mut model.clone(), 17);
    // A's parent becomes B and B's parent becomes A, with matching
    // linkages (rewritten raw, whatever re-parent would allow).
    let (ga, gb) = (data_write_guid(&a), data_write_guid(&b));
    set_locator(
        &a,
        &[
            ("parent_linkage", &linkage(&gb)),
            ("relative_path", ".\\b.avhdx"),
        ],
    );
    set_locator(
        &b,
        &[
            ("parent_linkage", &linkage(&ga)),
            ("relative_path", ".\\a.avhdx"),
        ],
    );
    for (start, other) in [(&a, &b), (&b, &a)] {
        let p = start.clone();
        let err = within(30, "opening a cycle", move || {
            Disk::open(&p, OpenMode::ReadOnly)
        })
        .expect_err("a cycle must not open");
        let msg = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{msg}");
        assert!(
            msg.contains("loop"),
            "the message says the chain loops: {msg}"
        );
        let names = [start, other].map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_string()
        });
        assert!(
            names.iter().any(|n| msg.contains(n)),
            "the message names a file of the cycle: {msg}"
        );
    }
    // A self-loop too, read-write.
    let c = dir.path().join("c.avhdx");
    make_child(&c, &base, &mut model.clone(), 19);
    let gc = data_write_guid(&c);
    set_locator(
        &c,
        &[
            ("parent_linkage", &linkage(&gc)),
            ("relative_path", ".\\c.avhdx"),
        ],
    );
    let p = c.clone();
    let err = within(30, "opening a self-loop", move || {
        Disk::open(&p, OpenMode::ReadWrite)
    })
    .expect_err("a self-loop must not open");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

#[test]
fn a_chain_deeper_than_the_limit_is_refused() {
    let dir = support::tempdir();
    let small = 4 * MIB;
    let mut files = vec![dir.path().join("d00.vhdx")];
    let opts = CreateOptions::new(small).block_size(1 << 20);
    let base = Disk::create(&files[0], &opts).expect("create the base");
    base.write_at(b"base", 0).expect("write");
    base.close().expect("close");
    let copts = ChildOptions {
        block_size: 1 << 20,
        ..Default::default()
    };
    for i in 1..MAX_CHAIN_DEPTH {
        let p = dir.path().join(format!("d{i:02}.avhdx"));
        let d = Disk::create_child(&p, files.last().expect("parent"), &copts)
            .unwrap_or_else(|e| panic!("create layer {i}: {e}"));
        d.write_at(&[i as u8], i as u64 * 512)
            .expect("write a layer");
        d.close().expect("close a layer");
        files.push(p);
    }
    // Exactly MAX_CHAIN_DEPTH layers open.
    let top = files.last().expect("top").clone();
    let disk = Disk::open(&top, OpenMode::ReadOnly).expect("a chain of the maximum depth opens");
    assert_eq!(disk.depth(), MAX_CHAIN_DEPTH);
    let mut b = vec![0u8; MAX_CHAIN_DEPTH * 512];
    disk.read_at(&mut b, 0).expect("read");
    assert_eq!(&b[..4], b"base");
    for i in 1..MAX_CHAIN_DEPTH {
        assert_eq!(b[i * 512], i as u8, "layer {i}'s byte");
    }
    drop(disk);
    // One more layer is refused, by the create or by any open of it.
    let deep = dir.path().join("too-deep.avhdx");
    let p = deep.clone();
    let t = top.clone();
    let r = within(60, "creating a layer past the limit", move || {
        Disk::create_child(&p, &t, &copts).map(|_| ())
    });
    let err = match r {
        Err(e) => e,
        Ok(()) => within(60, "opening a chain past the limit", move || {
            Disk::open(&deep, OpenMode::ReadOnly).map(|_| ())
        })
        .expect_err("a chain deeper than the limit must not open"),
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&MAX_CHAIN_DEPTH.to_string()),
        "the message names the limit: {msg}"
    );
    let deep = dir.path().join("too-deep.avhdx");
    if deep.exists() {
        let err = Disk::open(&deep, OpenMode::ReadWrite)
            .map(|_| ())
            .expect_err("past the limit");
        assert!(
            err.to_string().contains(&MAX_CHAIN_DEPTH.to_string()),
            "{err}"
        );
    }
    // The same limit for in-memory chains.
    let storages: Vec<std::sync::Arc<dyn Storage>> = (0..=MAX_CHAIN_DEPTH)
        .map(|_| std::sync::Arc::new(MemStorage::new()) as std::sync::Arc<dyn Storage>)
        .collect();
    let err = Disk::open_storage_chain(storages, OpenMode::ReadOnly)
        .map(|_| ())
        .expect_err("too deep");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

// ------------------------------------------------- parents are read-only

#[test]
fn parents_are_never_written() {
    let dir = support::tempdir();
    let base = dir.path().join("base.vhdx");
    let mid = dir.path().join("mid.avhdx");
    let top = dir.path().join("top.avhdx");
    let mut model = make_base(&base, SIZE, 512, 20);
    make_child(&mid, &base, &mut model, 21);
    make_child(&top, &mid, &mut model, 22);
    let base_before = file_bytes(&base);
    let mid_before = file_bytes(&mid);
    let mut rng = Rng::new(23);
    for round in 0..3 {
        let disk = support::open_rw(&top);
        for _ in 0..20 {
            let len = rng.range(1, 700 * KIB);
            let off = rng.below(SIZE - len);
            let data = rng.bytes(len as usize);
            disk.write_at(&data, off).expect("write");
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        // A whole block, a whole-block trim and a partial trim.
        disk.write_at(&vec![0xAB; 2 << 20], 4 << 20)
            .expect("whole block");
        model[4 << 20..6 << 20].fill(0xAB);
        disk.trim(8 << 20, 2 << 20).expect("trim a block");
        model[8 << 20..10 << 20].fill(0);
        disk.trim(1000 + round, 5000).expect("partial trim");
        model[1000 + round as usize..6000 + round as usize].fill(0);
        disk.flush().expect("flush");
        assert_same("through the child", &read_all(&disk), &model, 0);
        if round == 1 {
            drop(disk); // dropped without close
        } else {
            disk.close().expect("close");
        }
        assert_unchanged(&format!("round {round}"), &base, &base_before);
        assert_unchanged(&format!("round {round}"), &mid, &mid_before);
    }
    let disk = Disk::open(&top, OpenMode::ReadOnly).expect("reopen");
    assert_same("after reopening", &read_all(&disk), &model, 0);
    // Writes to a read-only chain are refused.
    assert_eq!(
        disk.write_at(b"x", 0).map_err(|e| e.kind()),
        Err(ErrorKind::ReadOnly)
    );
    assert_eq!(
        disk.trim(0, 512).map_err(|e| e.kind()),
        Err(ErrorKind::ReadOnly)
    );
}

// ------------------------------------------------------------ re-parent

#[test]
fn reparent_refuses_what_it_must() {
    let dir = support::tempdir();
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.avhdx");
    let mut model = make_base(&base, SIZE, 512, 30);
    make_child(&child, &base, &mut model, 31);
    let other = dir.path().join("other.vhdx");
    make_base(&other, SIZE, 512, 32);
    let bigger = dir.path().join("bigger.vhdx");
    make_base(&bigger, 2 * SIZE, 512, 33);
    let sectors4k = dir.path().join("4k.vhdx");
    make_base(&sectors4k, SIZE, 4096, 34);
    let before = file_bytes(&child);

    // Another disk with an unrelated DataWriteGuid, without force.
    let err = reparent(&child, &other, false).expect_err("an unrelated parent without force");
    assert_eq!(err.kind(), ErrorKind::ParentMismatch, "{err}");
    assert_unchanged("refused re-parent (mismatch)", &child, &before);
    // Another sector size, even with force.
    let bad = &sectors4k;
    let err = reparent(&child, bad, true).expect_err("another geometry, even with force");
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArgument,
        "{}: {err}",
        bad.display()
    );
    assert_unchanged(
        &format!("refused re-parent onto {}", bad.display()),
        &child,
        &before,
    );
    // A base disk has no parent to change.
    let other_before = file_bytes(&other);
    let err = reparent(&other, &base, true).expect_err("a base disk");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_unchanged("refused re-parent of a base disk", &other, &other_before);
    // A parent that does not exist.
    let err =
        reparent(&child, &dir.path().join("nowhere.vhdx"), true).expect_err("a missing parent");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_unchanged("refused re-parent onto a missing file", &child, &before);
    // The chain is intact after all that.
    let disk = Disk::open(&child, OpenMode::ReadOnly).expect("still opens");
    assert_same("after refusals", &read_all(&disk), &model, 0);
    drop(disk);

    // Accepted: a byte copy of the parent elsewhere (same DataWriteGuid).
    let sub = dir.path().join("copies");
    std::fs::create_dir(&sub).expect("mkdir");
    let copy = sub.join("base-copy.vhdx");
    std::fs::copy(&base, &copy).expect("copy the parent");
    reparent(&child, &copy, false).expect("a copy of the parent is accepted");
    let disk = Disk::open(&child, OpenMode::ReadOnly).expect("opens on the copy");
    assert_eq!(disk.chain()[1].as_deref().map(canon), Some(canon(&copy)));
    assert_same("on the copy", &read_all(&disk), &model, 0);
    drop(disk);
    let loc = get_locator(&child);
    let rel = loc
        .iter()
        .find(|(k, _)| k == "relative_path")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        rel,
        Some(".\\copies\\base-copy.vhdx"),
        "relative path, Windows style: {loc:?}"
    );
    // The original parent can be deleted now.
    std::fs::remove_file(&base).expect("remove the original");
    Disk::open(&child, OpenMode::ReadOnly).expect("still opens on the copy");

    // Forced onto an unrelated disk: its data shows under the child's own.
    let child_ranges = Disk::open(&child, OpenMode::ReadOnly)
        .and_then(|d| d.changed_ranges(1))
        .expect("the child's own ranges");
    reparent(&child, &other, true).expect("forced re-parent");
    let disk = Disk::open(&child, OpenMode::ReadOnly).expect("opens on the new parent");
    let mut want = read_all(&Disk::open(&other, OpenMode::ReadOnly).expect("open other"));
    let mine = read_all(&disk);
    for r in &child_ranges {
        let (s, e) = (r.offset as usize, (r.offset + r.length) as usize);
        want[s..e].copy_from_slice(&model[s..e]);
    }
    assert_same("forced onto another parent", &mine, &want, 0);
    drop(disk);

    // Forced onto a larger disk (Hyper-V's chains may differ in size): the
    // child keeps its size and shows the new parent under its own data.
    reparent(&child, &bigger, true).expect("forced onto another size");
    let disk = Disk::open(&child, OpenMode::ReadOnly).expect("opens on the larger parent");
    assert_eq!(disk.virtual_size(), SIZE);
    let mut want = read_all(&Disk::open(&bigger, OpenMode::ReadOnly).expect("open bigger"));
    want.truncate(SIZE as usize);
    for r in &child_ranges {
        let (s, e) = (r.offset as usize, (r.offset + r.length) as usize);
        want[s..e].copy_from_slice(&model[s..e]);
    }
    assert_same("forced onto a larger parent", &read_all(&disk), &want, 0);
}

// ------------------------------------------------ Hyper-V style locators

#[test]
fn hyper_v_style_locators_open() {
    let dir = support::tempdir();
    let vms = dir.path().join("Virtual Hard Disks");
    std::fs::create_dir(&vms).expect("mkdir");
    let base = vms.join("parent.vhdx");
    let child = vms.join("child_8A1B.avhdx");
    let mut model = make_base(&base, SIZE, 512, 40);
    make_child(&child, &base, &mut model, 41);
    let guid = linkage(&data_write_guid(&base));
    let zero = linkage(&Uuid::nil());
    let volume = "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\Hyper-V\\Virtual Hard Disks\\parent.vhdx";
    let abs = "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V\\Virtual Hard Disks\\parent.vhdx";

    let open_ok = |what: &str| {
        for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
            let disk =
                Disk::open(&child, mode).unwrap_or_else(|e| panic!("{what} ({mode:?}): {e}"));
            assert_eq!(disk.depth(), 2, "{what}");
            assert_eq!(
                disk.chain()[1].as_deref().map(canon),
                Some(canon(&base)),
                "{what}"
            );
            assert_same(what, &read_all(&disk), &model, 0);
        }
    };

    // Hyper-V's order and values: linkage, C:\ path, .\ path, volume path, zero linkage2.
    set_locator(
        &child,
        &[
            ("parent_linkage", &guid),
            ("absolute_win32_path", abs),
            ("relative_path", ".\\parent.vhdx"),
            ("volume_path", volume),
            ("parent_linkage2", &zero),
        ],
    );
    assert_eq!(
        get_locator(&child)[2],
        ("relative_path".into(), ".\\parent.vhdx".into())
    );
    open_ok("Hyper-V locator");

    // Only a relative path, up and down again.
    let other_dir = dir.path().join("Snapshots");
    std::fs::create_dir(&other_dir).expect("mkdir");
    let moved = other_dir.join("child_8A1B.avhdx");
    std::fs::rename(&child, &moved).expect("move the child");
    set_locator(
        &moved,
        &[
            ("parent_linkage", &guid),
            ("relative_path", "..\\Virtual Hard Disks\\parent.vhdx"),
        ],
    );
    let disk = Disk::open(&moved, OpenMode::ReadOnly).expect("..\\ relative path");
    assert_same("..\\ relative path", &read_all(&disk), &model, 0);
    drop(disk);
    std::fs::rename(&moved, &child).expect("move it back");

    // A merge in progress: parent_linkage is stale, parent_linkage2 matches.
    set_locator(
        &child,
        &[
            ("parent_linkage", &linkage(&Uuid::new_v4())),
            ("relative_path", ".\\parent.vhdx"),
            ("parent_linkage2", &guid),
        ],
    );
    open_ok("parent_linkage2 matching");

    // Neither matches (linkage2 all zero): a mismatch naming the recorded GUID.
    let stale = Uuid::new_v4();
    set_locator(
        &child,
        &[
            ("parent_linkage", &linkage(&stale)),
            ("relative_path", ".\\parent.vhdx"),
            ("parent_linkage2", &zero),
        ],
    );
    match Disk::open(&child, OpenMode::ReadOnly) {
        Err(Error::ParentMismatch {
            expected, found, ..
        }) => {
            assert_eq!(expected, stale);
            assert_eq!(linkage(&found), guid);
        }
        other => panic!("expected ParentMismatch, got {other:?}"),
    }

    // The relative path leads nowhere and the C:\ path does not exist here.
    set_locator(
        &child,
        &[
            ("parent_linkage", &guid),
            ("absolute_win32_path", abs),
            ("relative_path", ".\\gone.vhdx"),
        ],
    );
    match Disk::open(&child, OpenMode::ReadOnly) {
        Err(Error::ParentNotFound { child: c, tried }) => {
            assert_eq!(c, child);
            assert!(tried.contains(&vms.join("gone.vhdx")), "tried {tried:?}");
            assert!(
                tried
                    .iter()
                    .any(|t| t.to_string_lossy().contains("ProgramData")),
                "the absolute path was tried too: {tried:?}"
            );
        }
        other => panic!("expected ParentNotFound, got {other:?}"),
    }
}

// ------------------------------------------------------- changed ranges

/// What one layer holds: the sectors it defines and the blocks it zeroed
/// whole; a write into a zeroed block allocates the whole block.
struct Track {
    size: u64,
    bs: u64,
    lss: u64,
    defined: Vec<bool>,
    zero: Vec<bool>,
}

impl Track {
    fn new(disk: &Disk) -> Track {
        let (size, bs, lss) = (
            disk.virtual_size(),
            disk.block_size() as u64,
            disk.logical_sector_size() as u64,
        );
        Track {
            size,
            bs,
            lss,
            defined: vec![false; (size / lss) as usize],
            zero: vec![false; size.div_ceil(bs) as usize],
        }
    }
    fn define(&mut self, off: u64, len: u64) {
        self.defined[(off / self.lss) as usize..(off + len).div_ceil(self.lss) as usize].fill(true);
    }
    fn write(&mut self, off: u64, len: u64) {
        for b in off / self.bs..(off + len).div_ceil(self.bs) {
            if std::mem::take(&mut self.zero[b as usize]) {
                let end = ((b + 1) * self.bs).min(self.size);
                self.define(b * self.bs, end - b * self.bs);
            }
        }
        self.define(off, len);
    }
    fn trim(&mut self, off: u64, len: u64) {
        let mut pos = off;
        while pos < off + len {
            let b = pos / self.bs;
            let (bs, be) = (b * self.bs, ((b + 1) * self.bs).min(self.size));
            let n = (be - pos).min(off + len - pos);
            if pos == bs && pos + n == be {
                self.zero[b as usize] = true;
            } else {
                self.write(pos, n);
            }
            pos += n;
        }
    }
    /// The ranges this layer holds, as byte ranges.
    fn ranges(&self) -> Vec<Range> {
        let mut v = Vec::new();
        for (i, d) in self.defined.iter().enumerate() {
            if *d {
                v.push(Range {
                    offset: i as u64 * self.lss,
                    length: self.lss,
                });
            }
        }
        for (b, z) in self.zero.iter().enumerate() {
            if *z {
                let s = b as u64 * self.bs;
                v.push(Range {
                    offset: s,
                    length: self.bs.min(self.size - s),
                });
            }
        }
        v
    }
}

/// Sort and coalesce (an independent version of the library's).
fn coalesce(mut v: Vec<Range>) -> Vec<Range> {
    v.sort();
    let mut out: Vec<Range> = Vec::new();
    for r in v {
        match out.last_mut() {
            Some(l) if l.offset + l.length >= r.offset => {
                l.length = l.length.max(r.offset + r.length - l.offset);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Random writes (1 byte to 300 KiB, some whole blocks) and trims into the
/// top of `disk`, applied to `track`.
fn random_changes(disk: &Disk, track: &mut Track, rng: &mut Rng, n: usize) {
    let size = disk.virtual_size();
    let bs = disk.block_size() as u64;
    for _ in 0..n {
        match rng.below(10) {
            0 => {
                let b = rng.below(size.div_ceil(bs));
                let len = bs.min(size - b * bs);
                disk.write_at(&rng.bytes(len as usize), b * bs)
                    .expect("whole-block write");
                track.write(b * bs, len);
            }
            1 => {
                let b = rng.below(size.div_ceil(bs));
                let len = bs.min(size - b * bs);
                disk.trim(b * bs, len).expect("whole-block trim");
                track.trim(b * bs, len);
            }
            2 => {
                let len = rng.range(1, 100 * KIB);
                let off = rng.below(size - len + 1);
                disk.trim(off, len).expect("trim");
                track.trim(off, len);
            }
            3 => {
                let len = rng.range(1, 511);
                let off = rng.below(size - len + 1);
                disk.write_at(&rng.bytes(len as usize), off)
                    .expect("small write");
                track.write(off, len);
            }
            _ => {
                let len = rng.range(1, 300 * KIB);
                let off = rng.below(size - len + 1);
                disk.write_at(&rng.bytes(len as usize), off).expect("write");
                track.write(off, len);
            }
        }
    }
}

fn changed_ranges_case(seed: u64, lss: u32, child_block: u32) {
    let dir = support::tempdir();
    let base = dir.path().join("base.vhdx");
    let mid = dir.path().join("mid.avhdx");
    let top = dir.path().join("top.avhdx");
    let model = make_base(&base, SIZE, lss, seed);
    let mut rng = Rng::new(seed ^ 0xC4A7);
    let opts = ChildOptions {
        block_size: child_block,
        ..Default::default()
    };
    let what = format!(
        "seed {seed}, {lss}-byte sectors, {} MiB blocks",
        child_block >> 20
    );

    let disk = Disk::create_child(&mid, &base, &opts).expect("create mid");
    let mut t_mid = Track::new(&disk);
    assert_eq!(
        disk.changed_ranges(1).expect("ranges"),
        vec![],
        "{what}: a new child changed nothing"
    );
    random_changes(&disk, &mut t_mid, &mut rng, 12);
    let want_mid = coalesce(t_mid.ranges());
    assert_eq!(
        disk.changed_ranges(1).expect("ranges"),
        want_mid,
        "{what}: mid, while open"
    );
    disk.close().expect("close");

    let disk = Disk::create_child(
        &top,
        &mid,
        &ChildOptions {
            block_size: 1 << 20,
            ..Default::default()
        },
    )
    .expect("create top");
    let mut t_top = Track::new(&disk);
    random_changes(&disk, &mut t_top, &mut rng, 12);
    disk.close().expect("close");

    let disk = Disk::open(&top, OpenMode::ReadOnly).expect("open");
    let want_top = coalesce(t_top.ranges());
    assert_eq!(
        disk.changed_ranges(1).expect("ranges"),
        want_top,
        "{what}: top"
    );
    let mut both = t_top.ranges();
    both.extend(t_mid.ranges());
    assert_eq!(
        disk.changed_ranges(2).expect("ranges"),
        coalesce(both.clone()),
        "{what}: top and mid"
    );
    // Against an empty disk: also every byte the base holds.
    let all = disk.changed_ranges(3).expect("ranges");
    let covered = |o: u64| all.iter().any(|r| r.offset <= o && o < r.offset + r.length);
    for r in coalesce(both) {
        assert!(
            covered(r.offset) && covered(r.offset + r.length - 1),
            "{what}: levels 3 covers {r:?}"
        );
    }
    for (i, sector) in model.chunks(lss as usize).enumerate() {
        let at = i as u64 * lss as u64;
        if sector.iter().any(|b| *b != 0) {
            assert!(
                covered(at),
                "{what}: levels 3 covers the base's data at {at}"
            );
        }
    }
    for w in all.windows(2) {
        assert!(
            w[0].offset + w[0].length < w[1].offset,
            "{what}: sorted and coalesced: {w:?}"
        );
    }
    for bad in [0, 4] {
        let err = disk.changed_ranges(bad).expect_err("levels out of range");
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidArgument,
            "{what}: levels {bad}"
        );
    }
    // The mid layer opened on its own reports its changes as the top.
    let m = Disk::open(&mid, OpenMode::ReadOnly).expect("open mid");
    assert_eq!(
        m.changed_ranges(1).expect("ranges"),
        want_mid,
        "{what}: mid reopened"
    );
    assert_eq!(disk.level_of(&mid).expect("level"), 1);
    assert_eq!(disk.level_of(&base).expect("level"), 2);
    assert_eq!(disk.level_of(&top).expect("level"), 0);
}

#[test]
fn changed_ranges_are_the_sectors_written() {
    for seed in 0..6 {
        let block = [1u32 << 20, 2 << 20, 4 << 20][seed as usize % 3];
        changed_ranges_case(seed, 512, block);
    }
}

#[test]
fn changed_ranges_are_the_sectors_written_4k() {
    for seed in 100..103 {
        changed_ranges_case(seed, 4096, 2 << 20);
    }
}

#[test]
fn changed_ranges_in_memory() {
    // The same through MemStorage chains (no files).
    let base_s: std::sync::Arc<dyn Storage> = std::sync::Arc::new(MemStorage::new());
    let base = Disk::create_on(
        base_s.clone(),
        &CreateOptions::new(SIZE).block_size(2 << 20),
    )
    .expect("base");
    base.write_at(&[1u8; 10000], 5000).expect("write base");
    base.close().expect("close");
    let base = Disk::open_storage(base_s.clone(), OpenMode::ReadOnly).expect("open base");
    let top_s: std::sync::Arc<dyn Storage> = std::sync::Arc::new(MemStorage::new());
    Disk::create_child_on(top_s.clone(), &base, &ChildOptions::default()).expect("child");
    drop(base);
    let disk = Disk::open_storage_chain(vec![top_s, base_s], OpenMode::ReadWrite).expect("chain");
    assert_eq!(disk.depth(), 2);
    let mut t = Track::new(&disk);
    let mut rng = Rng::new(77);
    random_changes(&disk, &mut t, &mut rng, 30);
    assert_eq!(
        disk.changed_ranges(1).expect("ranges"),
        coalesce(t.ranges())
    );
}

#[test]
fn in_memory_chains_check_their_linkage() {
    type S = std::sync::Arc<dyn Storage>;
    let mem = || -> S { std::sync::Arc::new(MemStorage::new()) };
    let base_s = mem();
    let base = Disk::create_on(
        base_s.clone(),
        &CreateOptions::new(SIZE).block_size(2 << 20),
    )
    .expect("base");
    base.write_at(b"base data", 0).expect("write");
    base.close().expect("close");
    let base = Disk::open_storage(base_s.clone(), OpenMode::ReadOnly).expect("open base");
    let child_m = std::sync::Arc::new(MemStorage::new());
    let child_s: S = child_m.clone();
    Disk::create_child_on(child_s.clone(), &base, &ChildOptions::default()).expect("child");
    let linked = base.info().data_write_guid;
    drop(base);

    let chain =
        Disk::open_storage_chain(vec![child_s.clone(), base_s.clone()], OpenMode::ReadWrite)
            .expect("the chain opens");
    chain.write_at(b"child", 5).expect("write the child");
    let mut b = [0u8; 10];
    chain.read_at(&mut b, 0).expect("read");
    assert_eq!(&b, b"base child");
    chain.close().expect("close");

    // Wrong order, or a missing base: refused.
    let err = Disk::open_storage_chain(vec![base_s.clone(), child_s.clone()], OpenMode::ReadOnly)
        .map(|_| ())
        .expect_err("base first");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidArgument | ErrorKind::Corrupt | ErrorKind::ParentMismatch
        ),
        "{err}"
    );
    let err = Disk::open_storage_chain(vec![child_s.clone()], OpenMode::ReadOnly)
        .map(|_| ())
        .expect_err("no base");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // The base changed behind the child's back.
    let base = Disk::open_storage(base_s.clone(), OpenMode::ReadWrite).expect("open base rw");
    base.write_at(b"X", 100).expect("write the base");
    base.close().expect("close");
    let child_before = child_m.snapshot();
    match Disk::open_storage_chain(vec![child_s.clone(), base_s.clone()], OpenMode::ReadWrite) {
        Err(Error::ParentMismatch {
            expected, found, ..
        }) => {
            assert_eq!(expected, linked);
            assert_ne!(found, linked);
        }
        other => panic!("expected ParentMismatch, got {:?}", other.map(|_| ())),
    }
    assert!(
        child_m.snapshot() == child_before,
        "a refused open writes nothing"
    );
}
