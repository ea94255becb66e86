//! A VM folder moved or copied (issue 9, item 2): paths inside the folder
//! are stored relative to it, so a moved VM keeps working; a copy gets its
//! own id and never changes a file the original VM still uses.

mod support;

use std::path::{Path, PathBuf};

use ckpt::checkpoint::owner::stamp_of;
use ckpt::checkpoint::{NoHooks, Vm, VmSpec};
use ckpt::io::{faults, Cut};
use ckpt::{Disk, ErrorKind};
use support::marked::{get, make_disk, put};

/// A VM in `dir` with its disk `disk`: A (0x11) -> B (0x22) -> now (0x33).
fn vm_with_two(dir: &Path, disk: &Path) {
    make_disk(disk);
    put(disk, 0x11);
    let mut vm = Vm::create(dir, &VmSpec::new("web", vec![disk.to_path_buf()])).unwrap();
    vm.create_checkpoint("A", None, &mut NoHooks).unwrap();
    put(&vm.data().current.disks[0].clone(), 0x22);
    vm.create_checkpoint("B", None, &mut NoHooks).unwrap();
    put(&vm.data().current.disks[0].clone(), 0x33);
}

fn hashes(root: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if p.is_file() && p.file_name().is_some_and(|n| n != ".lock") {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_moved_folder_keeps_working() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    vm_with_two(&dir, &dir.join("os.vhdx"));
    let text = std::fs::read_to_string(dir.join("vm.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cur = v["current"]["disks"][0].as_str().unwrap();
    assert!(
        !cur.starts_with('/'),
        "absolute path inside the folder: {text}"
    );
    let moved = t.path().join("vm2");
    std::fs::rename(&dir, &moved).unwrap();
    let mut vm = Vm::open(&moved).unwrap();
    assert!(vm.strays().unwrap().is_empty(), "{:?}", vm.strays());
    assert_eq!(vm.list().unwrap().len(), 2);
    assert_eq!(get(&vm.data().current.disks[0]), 0x33);
    // The move re-stamped the disks with the new folder: another VM still
    // cannot be given the moved VM's disk (a stamp naming the old, empty
    // folder would count as no one's).
    let e = Vm::create(
        &t.path().join("other"),
        &VmSpec::new("other", vec![vm.data().current.disks[0].clone()]),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(!t.path().join("other").exists());
    vm.delete("B", false, &mut NoHooks).unwrap();
    assert_eq!(get(&vm.data().current.disks[0]), 0x33);
    vm.apply("A", None, &mut NoHooks).unwrap();
    assert_eq!(get(&vm.data().current.disks[0]), 0x11);
    vm.create_checkpoint("C", None, &mut NoHooks).unwrap();
    assert!(vm.data().current.disks[0].starts_with(std::fs::canonicalize(&moved).unwrap()));
    assert!(vm.strays().unwrap().is_empty());
}

#[test]
fn a_copy_never_changes_the_originals_disks_outside_the_folder() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    // The disks live outside the VM folder: stored absolute, shared by a copy.
    let disks = t.path().join("disks");
    vm_with_two(&dir, &disks.join("os.vhdx"));
    let copy = t.path().join("vm-copy");
    let st = std::process::Command::new("cp")
        .args(["-a", dir.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let before = hashes(&disks);
    {
        let mut c = Vm::open(&copy).unwrap();
        let e = c.delete("B", false, &mut NoHooks).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("belongs to VM"), "{e}");
        let e = c.delete("A", false, &mut NoHooks).unwrap_err();
        assert!(e.to_string().contains("belongs to VM"), "{e}");
        let e = c.apply("A", None, &mut NoHooks).unwrap_err();
        assert!(e.to_string().contains("belongs to VM"), "{e}");
        assert_eq!(hashes(&disks), before);
        assert_ne!(c.data().id, Vm::load(&dir).unwrap().id);
    }
    // The original still works, and its files were never touched.
    let mut vm = Vm::open(&dir).unwrap();
    assert_eq!(get(&vm.data().current.disks[0]), 0x33);
    vm.delete("B", false, &mut NoHooks).unwrap();
    assert_eq!(get(&vm.data().current.disks[0]), 0x33);
}

/// Every disk file of the VM's tree (current and checkpoints).
fn tree_disks(vm: &Vm) -> Vec<PathBuf> {
    let d = vm.data();
    let mut out: Vec<PathBuf> = d.current.disks.clone();
    for c in &d.checkpoints {
        out.extend(c.disks.iter().cloned());
    }
    out.sort();
    out.dedup();
    out
}

/// Every disk of `vm` is stamped with its id and its folder.
fn assert_stamped(vm: &Vm, what: &str) {
    for f in tree_disks(vm) {
        let s = stamp_of(&f)
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", f.display()))
            .unwrap_or_else(|| panic!("{what}: {} has no stamp", f.display()));
        assert_eq!(
            Some(&s.vm_id),
            vm.data().id.as_ref(),
            "{what}: {}",
            f.display()
        );
        assert_eq!(s.folder, vm.dir(), "{what}: {}", f.display());
    }
}

/// A VM in `root/vm` (disks inside it), then moved (`copy` false) or
/// copied to `root/vm2`: the folder to open.
fn moved_or_copied(root: &Path, copy: bool) -> PathBuf {
    let dir = root.join("vm");
    vm_with_two(&dir, &dir.join("os.vhdx"));
    let to = root.join("vm2");
    if copy {
        let st = std::process::Command::new("cp")
            .args(["-a", dir.to_str().unwrap(), to.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
    } else {
        std::fs::rename(&dir, &to).unwrap();
    }
    to
}

/// Cut the first open of a moved or copied VM at every write and flush
/// point: the next open succeeds, every disk ends stamped with the VM's id
/// and folder, and nothing else changes (the data, the tree, the original).
fn crash_sweep_of_the_first_open(copy: bool, cut: Cut) {
    let t = tempfile::tempdir().unwrap();
    let to = moved_or_copied(t.path(), copy);
    faults::arm(u64::MAX, cut);
    let vm = Vm::open(&to).unwrap();
    let events = faults::disarm();
    assert!(events > 3, "{events} events");
    assert_stamped(&vm, "uncut");
    drop(vm);
    for n in 0..events {
        let t = tempfile::tempdir().unwrap();
        let to = moved_or_copied(t.path(), copy);
        let original = if copy {
            hashes(&t.path().join("vm"))
        } else {
            Vec::new()
        };
        faults::arm(n, cut);
        let r = Vm::open(&to);
        faults::disarm();
        drop(r);
        let mut vm = Vm::open(&to).unwrap_or_else(|e| panic!("cut at {n}: reopen: {e}"));
        let what = format!("cut at {n}");
        assert_stamped(&vm, &what);
        assert!(!to.join("journal.json").exists(), "{what}");
        assert_eq!(vm.list().unwrap().len(), 2, "{what}");
        assert_eq!(get(&vm.data().current.disks[0]), 0x33, "{what}");
        assert_eq!(get(&vm.find("B").unwrap().disks[0].clone()), 0x22, "{what}");
        assert_eq!(get(&vm.find("A").unwrap().disks[0].clone()), 0x11, "{what}");
        assert!(vm.strays().unwrap().is_empty(), "{what}: {:?}", vm.strays());
        assert!(vm.take_warnings().is_empty(), "{what}");
        if copy {
            assert_eq!(
                hashes(&t.path().join("vm")),
                original,
                "{what}: the original changed"
            );
            assert_ne!(
                vm.data().id,
                Vm::load(&t.path().join("vm")).unwrap().id,
                "{what}"
            );
        }
    }
}

#[test]
fn a_restamp_cut_at_any_point_of_a_moved_vms_first_open_converges() {
    crash_sweep_of_the_first_open(false, Cut::Clean);
    crash_sweep_of_the_first_open(false, Cut::Torn);
}

#[test]
fn a_restamp_cut_at_any_point_of_a_copied_vms_first_open_converges() {
    crash_sweep_of_the_first_open(true, Cut::Clean);
    crash_sweep_of_the_first_open(true, Cut::Torn);
}

#[test]
fn a_copys_delete_keeps_a_layer_a_disk_in_the_originals_folder_depends_on() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    vm_with_two(&dir, &dir.join("os.vhdx"));
    let copy = t.path().join("vm-copy");
    let st = std::process::Command::new("cp")
        .args(["-a", dir.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut c = Vm::open(&copy).unwrap();
    // A differencing disk in the original's folder over the copy's root
    // layer: deleting A in the copy would merge B into it.
    let a = c.find("A").unwrap().disks[0].clone();
    assert!(a.starts_with(c.dir()), "{}", a.display());
    let hand = dir.join("hand.avhdx");
    Disk::create_child(&hand, &a, &ckpt::ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let a_bytes = std::fs::read(&a).unwrap();
    c.delete("A", false, &mut NoHooks).unwrap();
    let w = c.take_warnings();
    assert!(w.iter().any(|w| w.contains("hand.avhdx")), "{w:?}");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        a_bytes,
        "the layer under hand.avhdx changed"
    );
    assert_eq!(get(&hand), 0x11);
    assert!(c.find("A").is_err());
    assert_eq!(get(&c.data().current.disks[0]), 0x33);
    assert_eq!(get(&c.find("B").unwrap().disks[0].clone()), 0x22);
}
