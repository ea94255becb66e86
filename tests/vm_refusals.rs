//! Checkpoint deletes that must be refused before anything changes
//! (issue 9, items 1 and 6): a disk file that should exist and does not
//! (absence is never taken for "already merged"), and a disk the delete
//! re-points held by someone else. A refusal leaves the VM exactly as it
//! was (vm.json, no journal, every file), later opens do nothing, and the
//! delete runs only when asked again. A delete interrupted by a crash after
//! its merge really removed a source is still finished on reopen.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt::checkpoint::{CheckpointType, NoHooks, Vm, VmSpec};
use ckpt::io::Cut;
use ckpt::{Disk, ErrorKind, OpenMode};
use support::marked::{get, make_disk, put};
use support::sweep::{every_cut, reopened};

/// Every file under `root` (path → bytes), the lock file left out.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != ".lock") {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A (0x11) -> B (0x22) -> now (0x33), or only A -> now (0x22) without `b`.
fn build(root: &Path, b: bool) -> Vm {
    let disk = root.join("disks").join("os.vhdx");
    make_disk(&disk);
    let mut spec = VmSpec::new("refusals", vec![disk]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    let mut vm = Vm::create(&root.join("vm"), &spec).unwrap();
    put(&vm.data().current.disks[0], 0x11);
    vm.create_checkpoint("A", None, &mut NoHooks).unwrap();
    put(&vm.data().current.disks[0], 0x22);
    if b {
        vm.create_checkpoint("B", None, &mut NoHooks).unwrap();
        put(&vm.data().current.disks[0], 0x33);
    }
    vm
}

/// `missing` (a disk of the dependant of A) is moved away: deleting A is
/// refused with NotFound naming it and nothing changes, not even after a
/// reopen; once it is back, the delete works and no data is lost.
fn missing_disk_refuses(dependant_is_checkpoint: bool) {
    let t = tempfile::tempdir().unwrap();
    let mut vm = build(t.path(), dependant_is_checkpoint);
    let missing = if dependant_is_checkpoint {
        vm.find("B").unwrap().disks[0].clone()
    } else {
        vm.data().current.disks[0].clone()
    };
    let aside = t.path().join("aside.avhdx");
    std::fs::rename(&missing, &aside).unwrap();
    let before = snapshot(t.path());
    let e = vm.delete("A", false, &mut NoHooks).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let name = missing.file_name().unwrap().to_str().unwrap();
    assert!(e.to_string().contains(name), "{e} does not name {name}");
    assert!(
        !vm.dir().join("journal.json").exists(),
        "a journal was left"
    );
    assert_eq!(snapshot(t.path()), before, "a refused delete changed files");
    assert!(!vm.find("A").unwrap().deleting);
    drop(vm);
    // A reopen does nothing either: it refuses the VM while a disk file
    // it names is missing (NotFound naming it), changing nothing.
    match Vm::open(&t.path().join("vm")) {
        Ok(vm) => assert!(vm.find("A").is_ok()),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains(name), "{e} does not name {name}");
        }
    }
    assert_eq!(snapshot(t.path()), before, "a reopen changed files");

    std::fs::rename(&aside, &missing).unwrap();
    let mut vm = Vm::open(&t.path().join("vm")).unwrap();
    assert!(
        vm.find("A").is_ok(),
        "the refused delete happened by itself"
    );
    vm.delete("A", false, &mut NoHooks).unwrap();
    assert!(vm.find("A").is_err());
    let now = vm.data().current.disks[0].clone();
    if dependant_is_checkpoint {
        assert_eq!(get(&vm.find("B").unwrap().disks[0]), 0x22, "B lost data");
        assert_eq!(get(&now), 0x33, "the current state lost data");
    } else {
        assert_eq!(get(&now), 0x22, "the current state lost data");
    }
    assert!(vm.strays().unwrap().is_empty());
}

#[test]
fn a_missing_current_disk_refuses_the_delete_and_changes_nothing() {
    missing_disk_refuses(false);
}

#[test]
fn a_missing_disk_of_a_dependant_checkpoint_refuses_the_delete() {
    missing_disk_refuses(true);
}

/// A pending delete whose source is gone without proof that it was merged
/// (the journal's DataWriteGuid of the destination is unchanged and the
/// source had data to merge) is refused on reopen, not committed.
#[test]
fn a_pending_delete_never_takes_a_missing_source_for_merged() {
    let t = tempfile::tempdir().unwrap();
    let vm = build(t.path(), false);
    let a = vm.find("A").unwrap().clone();
    let now = vm.data().current.disks[0].clone();
    let guid = Disk::open(&a.disks[0], OpenMode::ReadOnly)
        .unwrap()
        .info()
        .data_write_guid
        .to_string();
    drop(vm);
    // The journal a delete writes before its merge (then a crash), and
    // the current disk moved away afterwards.
    let journal = serde_json::json!({
        "op": "merge", "id": a.id, "dependant": null, "files": [], "guids": [guid], "sizes": [4096]
    });
    let dir = t.path().join("vm");
    std::fs::write(dir.join("journal.json"), journal.to_string()).unwrap();
    let aside = t.path().join("aside.avhdx");
    std::fs::rename(&now, &aside).unwrap();
    if let Ok(vm) = Vm::open(&dir) {
        // Undone (nothing was merged) is fine; committed is not.
        assert!(
            vm.find("A").is_ok(),
            "A deleted without its dependant's data"
        );
        assert_eq!(vm.data().current.disks[0], now);
    }
    std::fs::rename(&aside, &now).unwrap();
    let mut vm = Vm::open(&dir).unwrap();
    vm.delete("A", false, &mut NoHooks).unwrap();
    assert_eq!(get(&vm.data().current.disks[0]), 0x22);
}

/// A crash at every step of deleting a checkpoint the current state never
/// wrote under (nothing to merge: the destination keeps its GUID): reopen
/// recognises the removed source as merged and finishes the delete.
#[test]
fn a_crash_in_the_delete_of_an_empty_dependant_is_finished() {
    let build_empty = |root: &Path| {
        let mut vm = build(root, false);
        vm.create_checkpoint("E", None, &mut NoHooks).unwrap();
        vm
    };
    let events = every_cut(
        build_empty,
        Cut::Clean,
        |vm| vm.delete("E", false, &mut NoHooks),
        |run| {
            let ctx = run.ctx();
            // A cut after the commit may report success (the tidy-up is left
            // for the next open): then E must be gone after the reopen.
            let committed = run.result.is_ok();
            let vm = reopened(run.vm, &ctx);
            assert!(!committed || vm.find("E").is_err(), "{ctx}: Ok but E kept");
            assert_eq!(get(&vm.data().current.disks[0]), 0x22, "{ctx}");
            assert_eq!(get(&vm.find("A").unwrap().disks[0]), 0x11, "{ctx}");
            if let Ok(e) = vm.find("E") {
                assert_eq!(get(&e.disks[0]), 0x22, "{ctx}");
            }
        },
    );
    assert!(events > 3);
}

/// Deleting A merges B into A and re-points the current disk at A: while
/// someone holds the current disk (and so its chain) the delete is refused
/// (Busy) before anything changes, no journal is left, and nothing happens
/// by itself once the holder is gone. (A guard: the chain's locks already
/// refused this before the merge's checks moved ahead of its journal.)
#[test]
fn a_delete_that_must_repoint_a_held_disk_is_refused_and_never_replayed() {
    let t = tempfile::tempdir().unwrap();
    let mut vm = build(t.path(), true);
    let now = vm.data().current.disks[0].clone();
    let holder = Disk::open(&now, OpenMode::ReadWrite).unwrap();
    let before = snapshot(t.path());
    let e = vm.delete("A", false, &mut NoHooks).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(
        !vm.dir().join("journal.json").exists(),
        "a journal was left"
    );
    assert!(!vm.find("A").unwrap().deleting);
    drop(vm);
    let vm = Vm::open(&t.path().join("vm")).unwrap();
    assert!(vm.find("A").is_ok());
    drop(vm);
    drop(holder);
    assert_eq!(snapshot(t.path()), before, "a refused delete changed files");
    let mut vm = Vm::open(&t.path().join("vm")).unwrap();
    assert!(
        vm.find("A").is_ok(),
        "the refused delete happened by itself"
    );
    assert_eq!(snapshot(t.path()), before);
    vm.delete("A", false, &mut NoHooks).unwrap();
    assert_eq!(get(&vm.find("B").unwrap().disks[0]), 0x22);
    assert_eq!(get(&vm.data().current.disks[0]), 0x33);
}

/// The same refusal for a missing current disk, through `ckpt checkpoint delete`.
#[cfg(feature = "cli")]
#[test]
fn cli_delete_with_a_missing_current_disk_is_refused_and_changes_nothing() {
    use support::cli::{fail, ok, s};
    let t = tempfile::tempdir().unwrap();
    let vm = build(t.path(), false);
    let now = vm.data().current.disks[0].clone();
    drop(vm);
    let dir = t.path().join("vm");
    let aside = t.path().join("aside.avhdx");
    std::fs::rename(&now, &aside).unwrap();
    let before = snapshot(t.path());
    let err = fail(&["checkpoint", "delete", s(&dir), "A"]);
    let name = now.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "{err} does not name {name}");
    assert_eq!(snapshot(t.path()), before, "a refused delete changed files");
    assert!(!dir.join("journal.json").exists());
    // Showing and listing the VM changes nothing either.
    ok(&["checkpoint", "list", s(&dir)]);
    assert_eq!(snapshot(t.path()), before);
    std::fs::rename(&aside, &now).unwrap();
    ok(&["checkpoint", "delete", s(&dir), "A"]);
    let vm = Vm::open(&dir).unwrap();
    assert!(vm.find("A").is_err());
    assert_eq!(get(&vm.data().current.disks[0]), 0x22, "data lost");
}
