//! Crash at every step of checkpoint create, apply, delete and export:
//! reopening the VM reconciles, nothing is lost, no orphan files remain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt::checkpoint::{Hooks, NoHooks, Vm, VmSpec};
use ckpt::io::{faults, Cut};
use ckpt::{CreateOptions, Disk, OpenMode};

const SIZE: u64 = 4 << 20;

struct Mem;
impl Hooks for Mem {
    fn save_memory(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        out.write_all(&[7u8; 1000])?;
        Ok(true)
    }
}

fn head(p: &Path) -> Vec<u8> {
    let d = Disk::open(p, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{e}"));
    let mut b = vec![0u8; 16];
    d.read_at(&mut b, 3 << 20).unwrap();
    b
}

fn put(p: &Path, tag: &str) {
    let d = Disk::open(p, OpenMode::ReadWrite).unwrap();
    let mut b = tag.as_bytes().to_vec();
    b.resize(16, b'.');
    d.write_at(&b, 3 << 20).unwrap();
    d.close().unwrap();
}

/// a -> b -> now, two disks; returns the VM dir.
fn build(root: &Path, leaf: bool) -> PathBuf {
    let mut disks = Vec::new();
    for i in 0..2 {
        let p = root.join(format!("d{i}")).join(format!("disk{i}.vhdx"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        Disk::create(&p, &CreateOptions::new(SIZE).block_size(1 << 20))
            .unwrap()
            .close()
            .unwrap();
        disks.push(p);
    }
    let dir = root.join("vm");
    let mut spec = VmSpec::new("crashy", disks);
    spec.settings.checkpoint_type = ckpt::checkpoint::CheckpointType::Standard;
    let mut vm = Vm::create(&dir, &spec).unwrap();
    for (i, d) in vm.data().current.disks.clone().iter().enumerate() {
        put(d, &format!("s0-{i}"));
    }
    vm.create_checkpoint("a", None, &mut Mem).unwrap();
    for (i, d) in vm.data().current.disks.clone().iter().enumerate() {
        put(d, &format!("s1-{i}"));
    }
    vm.create_checkpoint("b", None, &mut Mem).unwrap();
    for (i, d) in vm.data().current.disks.clone().iter().enumerate() {
        put(d, &format!("s2-{i}"));
    }
    if leaf {
        vm.apply("a", None, &mut NoHooks).unwrap();
    }
    dir
}

type State = (BTreeMap<String, Vec<Vec<u8>>>, Vec<Vec<u8>>);

fn state(vm: &Vm) -> State {
    let mut m = BTreeMap::new();
    for c in vm.data().checkpoints.iter().filter(|c| !c.hidden) {
        m.insert(c.name.clone(), c.disks.iter().map(|d| head(d)).collect());
    }
    let cur = vm.data().current.disks.iter().map(|d| head(d)).collect();
    (m, cur)
}

fn run(op: &str, leaf: bool, cut: Cut) {
    let t = tempfile::tempdir().unwrap();
    let dir = build(t.path(), leaf);
    let mut vm = Vm::open(&dir).unwrap();
    prepare(&mut vm, op);
    let before = state(&vm);
    faults::arm(u64::MAX, cut);
    do_op(&mut vm, op, t.path()).unwrap();
    let events = faults::disarm();
    let after = state(&vm);
    drop(vm);
    assert!(events > 3, "{op}: {events} events");
    for n in 0..events {
        let t = tempfile::tempdir().unwrap();
        let dir = build(t.path(), leaf);
        let mut vm = Vm::open(&dir).unwrap();
        prepare(&mut vm, op);
        faults::arm(n, cut);
        let r = do_op(&mut vm, op, t.path());
        faults::disarm();
        // A cut after the commit may report success (the tidy-up is left
        // for the next open); then the reopened state must be the new one.
        let committed = r.is_ok();
        drop(vm);
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{op}: cut at {n}: reopen: {e}"));
        assert!(
            !dir.join("journal.json").exists(),
            "{op}: cut at {n}: journal left"
        );
        let s = state(&vm);
        assert!(
            s == after || (!committed && s == before),
            "{op}: cut at {n} (reported {}): state {s:?}\nbefore {before:?}\nafter {after:?}",
            if committed { "Ok" } else { "Err" }
        );
        let strays = vm.strays().unwrap();
        assert!(
            strays.is_empty(),
            "{op}: cut at {n}: orphan files {strays:?}"
        );
        let temps = temp_files(t.path());
        assert!(
            temps.is_empty(),
            "{op}: cut at {n}: temporary files {temps:?}"
        );
        let memory = memory_files(&vm.checkpoint_location());
        let referred: Vec<PathBuf> = vm
            .data()
            .checkpoints
            .iter()
            .filter_map(|c| c.saved_state.clone())
            .chain(vm.data().current.saved_state.clone())
            .collect();
        for m in &memory {
            assert!(
                referred.contains(m),
                "{op}: cut at {n}: orphan memory state {}",
                m.display()
            );
        }
        if op == "export" {
            let out = t.path().join("export");
            let files: Vec<_> = std::fs::read_dir(&out)
                .map(|d| d.flatten().collect())
                .unwrap_or_default();
            assert!(
                files.is_empty(),
                "{op}: cut at {n}: partial export left {files:?}"
            );
        }
    }
}

/// Every `*.tmp` file under `root`.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temp_files(&p));
        } else if p.extension().is_some_and(|x| x == "tmp") {
            out.push(p);
        }
    }
    out
}

/// Every `*.vmrs` file in `dir`.
fn memory_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "vmrs"))
                .collect()
        })
        .unwrap_or_default()
}

/// What an operation's sweep starts from, beyond [`build`].
fn prepare(vm: &mut Vm, op: &str) {
    if op == "apply-resumed" {
        // The VM resumes from b's memory state, which only it still uses
        // once b is deleted: applying another checkpoint releases it.
        vm.apply("b", None, &mut NoHooks).unwrap();
        vm.delete("b", false, &mut NoHooks).unwrap();
        assert!(vm.data().current.saved_state.is_some());
    }
}

fn do_op(vm: &mut Vm, op: &str, root: &Path) -> ckpt::Result<()> {
    match op {
        "apply-resumed" => vm.apply("a", None, &mut NoHooks),
        "create" => vm.create_checkpoint("c", None, &mut Mem).map(|_| ()),
        "apply" => vm.apply("a", Some("keep"), &mut Mem),
        "revert" => vm.revert(),
        "delete" => vm.delete("b", false, &mut NoHooks),
        "delete-root" => vm.delete("a", false, &mut NoHooks),
        "export" => vm
            .export(Some("b"), &root.join("export"), &mut NoHooks)
            .map(|_| ()),
        _ => unreachable!(),
    }
}

#[test]
fn crash_during_create() {
    run("create", false, Cut::Clean);
}

#[test]
fn crash_during_apply_with_capture() {
    run("apply", false, Cut::Torn);
}

#[test]
fn crash_during_revert() {
    run("revert", false, Cut::Clean);
}

#[test]
fn crash_during_delete_of_a_middle_checkpoint() {
    run("delete", false, Cut::Clean);
}

#[test]
fn crash_during_delete_of_the_root() {
    run("delete-root", false, Cut::Torn);
}

#[test]
fn crash_during_delete_of_a_leaf() {
    run("delete", true, Cut::Clean);
}

#[test]
fn crash_during_export() {
    run("export", false, Cut::Clean);
}

#[test]
fn crash_during_an_apply_that_releases_the_memory_state() {
    run("apply-resumed", false, Cut::Clean);
}

/// An export folder holding only the temporary file an interrupted export
/// left is accepted (and cleaned); anything else in it is still refused.
#[test]
fn export_into_a_folder_with_a_leftover_temporary_file() {
    let t = tempfile::tempdir().unwrap();
    let dir = build(t.path(), false);
    let mut vm = Vm::open(&dir).unwrap();
    let out = t.path().join("export");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join(".config.json.tmp"), b"{").unwrap();
    let files = vm.export(Some("b"), &out, &mut NoHooks).unwrap();
    assert!(!out.join(".config.json.tmp").exists());
    assert!(temp_files(t.path()).is_empty());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), files.len());
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), b"x").unwrap();
    std::fs::write(other.join(".config.json.tmp"), b"{").unwrap();
    assert!(vm.export(Some("b"), &other, &mut NoHooks).is_err());
    assert!(other.join(".config.json.tmp").exists());
}
