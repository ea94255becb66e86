//! Checkpoints by stable id (`Vm::find_id`, `delete_by_id`, `rename_by_id`,
//! `apply_by_id`, `export_by_id`; C: the `ckpt_vm_checkpoint_*_by_id`
//! calls), composed with crashes and retries: a cut at every write and
//! flush of the operation, then a reopen and the same call again with the
//! same id. The id names the same checkpoint across the crash, the
//! operation is done once (or not at all before the retry), and nothing
//! else changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt::checkpoint::{CheckpointType, NoHooks, Vm, VmSpec};
use ckpt::io::{faults, Cut};
use ckpt::{CreateOptions, Disk, ErrorKind, OpenMode};

const SIZE: u64 = 4 << 20;

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

/// a -> b -> now on two disks; returns the VM folder.
fn build(root: &Path) -> PathBuf {
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
    let mut spec = VmSpec::new("by-id", disks);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    let mut vm = Vm::create(&dir, &spec).unwrap();
    for (name, tag) in [("a", "s0"), ("b", "s1")] {
        for (i, d) in vm.data().current.disks.clone().iter().enumerate() {
            put(d, &format!("{tag}-{i}"));
        }
        vm.create_checkpoint(name, None, &mut NoHooks).unwrap();
    }
    for (i, d) in vm.data().current.disks.clone().iter().enumerate() {
        put(d, &format!("s2-{i}"));
    }
    dir
}

/// Each visible checkpoint (its name and its disks' tags, keyed by its
/// first disk's tag, which a rename keeps; ids differ between builds); and
/// the current state's tags.
type State = (BTreeMap<Vec<u8>, (String, Vec<Vec<u8>>)>, Vec<Vec<u8>>);

fn state(vm: &Vm) -> State {
    let mut m = BTreeMap::new();
    for c in vm.data().checkpoints.iter().filter(|c| !c.hidden) {
        let tags: Vec<Vec<u8>> = c.disks.iter().map(|d| head(d)).collect();
        m.insert(tags[0].clone(), (c.name.clone(), tags));
    }
    let cur = vm.data().current.disks.iter().map(|d| head(d)).collect();
    (m, cur)
}

fn op(vm: &mut Vm, what: &str, id: &str, root: &Path) -> ckpt::Result<()> {
    match what {
        "delete" => vm.delete_by_id(id, false, &mut NoHooks),
        "rename" => vm.rename_by_id(id, "renamed"),
        "apply" => vm.apply_by_id(id, None, &mut NoHooks),
        "export" => {
            let out = root.join("export");
            // A cut export leaves none of its files; the retry starts clean.
            let _ = std::fs::remove_dir_all(&out);
            vm.export_by_id(id, &out, &mut NoHooks).map(|_| ())
        }
        _ => unreachable!(),
    }
}

/// Cut `what` on checkpoint `target` at every event; reopen; check the
/// state is the one before or after; retry with the same id; check the
/// state after.
fn sweep(what: &str, target: &str, cut: Cut) {
    let t = tempfile::tempdir().unwrap();
    let dir = build(t.path());
    let mut vm = Vm::open(&dir).unwrap();
    let id = vm.find(target).unwrap().id.clone();
    assert_eq!(vm.find_id(&id).unwrap().name, target);
    let before = state(&vm);
    faults::arm(u64::MAX, cut);
    op(&mut vm, what, &id, t.path()).unwrap();
    let events = faults::disarm();
    let after = state(&vm);
    if what != "export" {
        assert_ne!(before, after, "{what} changed nothing");
    }
    drop(vm);
    assert!(events >= 1, "{what}: {events} events");
    for n in 0..events {
        let t = tempfile::tempdir().unwrap();
        let dir = build(t.path());
        let mut vm = Vm::open(&dir).unwrap();
        let id = vm.find(target).unwrap().id.clone();
        faults::arm(n, cut);
        let r = op(&mut vm, what, &id, t.path());
        faults::disarm();
        drop(vm);
        let mut vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{what}: cut at {n}: reopen: {e}"));
        // The open finished or undid the operation: nothing is pending.
        assert!(
            !vm.delete_pending(),
            "{what}: cut at {n}: a delete is pending"
        );
        let s = state(&vm);
        let done = s == after;
        assert!(
            done || (r.is_err() && s == before),
            "{what}: cut at {n}: state {s:?}\nbefore {before:?}\nafter {after:?}"
        );
        // The id still names the same checkpoint, or (deleted) none.
        match vm.find_id(&id) {
            Ok(c) => {
                let name = if done && what == "rename" {
                    "renamed"
                } else {
                    target
                };
                assert!(
                    !(done && what == "delete"),
                    "{what}: cut at {n}: still there"
                );
                assert_eq!(c.name, name, "{what}: cut at {n}");
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NotFound);
                assert!(done && what == "delete", "{what}: cut at {n}: id lost");
            }
        }
        // The retry with the same id: done once.
        let again = op(&mut vm, what, &id, t.path());
        match (what, done) {
            ("delete", true) => {
                assert_eq!(again.unwrap_err().kind(), ErrorKind::NotFound)
            }
            _ => again.unwrap_or_else(|e| panic!("{what}: cut at {n}: retry: {e}")),
        }
        assert_eq!(state(&vm), after, "{what}: cut at {n}: after the retry");
        if what == "export" {
            let made = std::fs::read_dir(t.path().join("export")).unwrap().count();
            assert_eq!(made, 3, "{what}: cut at {n}: two disks and config.json");
        }
        assert!(
            !dir.join("journal.json").exists(),
            "{what}: cut at {n}: journal left"
        );
    }
}

#[test]
fn delete_by_id_cut_at_every_step_then_retried() {
    sweep("delete", "a", Cut::Clean);
}

#[test]
fn delete_by_id_of_the_current_parent_cut_torn_then_retried() {
    sweep("delete", "b", Cut::Torn);
}

#[test]
fn rename_by_id_cut_at_every_step_then_retried() {
    sweep("rename", "a", Cut::Torn);
}

#[test]
fn apply_by_id_cut_at_every_step_then_retried() {
    sweep("apply", "a", Cut::Clean);
}

#[test]
fn export_by_id_cut_at_every_step_then_retried() {
    sweep("export", "b", Cut::Clean);
}

/// A name deleted and taken again, and a hidden branch point: the ids keep
/// them apart, and no by-id operation touches a hidden node.
#[test]
fn ids_tell_reused_names_and_hidden_branch_points_apart() {
    let t = tempfile::tempdir().unwrap();
    let dir = build(t.path());
    let mut vm = Vm::open(&dir).unwrap();
    let a = vm.find("a").unwrap().id.clone();
    let b = vm.find("b").unwrap().id.clone();
    // b gets a second dependant, then is deleted: a hidden branch point.
    vm.apply_by_id(&b, Some("kept"), &mut NoHooks).unwrap();
    vm.delete_by_id(&b, false, &mut NoHooks).unwrap();
    assert!(vm.find_id(&b).unwrap().hidden);
    assert_eq!(vm.find("b").unwrap_err().kind(), ErrorKind::NotFound);
    let before = state(&vm);
    for r in [
        vm.delete_by_id(&b, false, &mut NoHooks),
        vm.apply_by_id(&b, None, &mut NoHooks),
        vm.rename_by_id(&b, "x"),
        vm.export_by_id(&b, &t.path().join("x"), &mut NoHooks)
            .map(|_| ()),
    ] {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
    assert_eq!(state(&vm), before, "a refused call changed something");
    assert!(!t.path().join("x").exists());
    // The name is free again; the new b has another id.
    vm.create_checkpoint("b", None, &mut NoHooks).unwrap();
    let b2 = vm.find("b").unwrap().id.clone();
    assert_ne!(b, b2);
    assert!(vm.find_id(&b).unwrap().hidden);
    vm.rename_by_id(&b2, "B two").unwrap();
    assert_eq!(vm.find_id(&b2).unwrap().name, "B two");
    assert_eq!(vm.find_id(&a).unwrap().name, "a");
    assert_eq!(
        vm.find_id("").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(vm.find_id("nope").unwrap_err().kind(), ErrorKind::NotFound);
}
