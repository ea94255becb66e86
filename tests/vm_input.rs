//! What a VM accepts from people and from its own folder (issue 9, items 9
//! to 11): checkpoint names (a length limit, no control characters, no
//! blank at either end, compared ignoring case), a hand-edited or damaged
//! `vm.json` or `journal.json` (a clear error on open, never a hang), and
//! the stray report (only files the tree could have made and does not own).

use std::path::{Path, PathBuf};

use ckpt::checkpoint::{CheckpointType, NoHooks, Vm, VmSpec, MAX_NAME_CHARS};
use ckpt::{CreateOptions, Disk, ErrorKind};

fn make_disk(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    Disk::create(p, &CreateOptions::new(4 << 20).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
}

/// A standard VM in `root/vm` on `root/disks/os.vhdx`.
fn new_vm(root: &Path) -> Vm {
    let disk = root.join("disks").join("os.vhdx");
    make_disk(&disk);
    let mut spec = VmSpec::new("input", vec![disk]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    Vm::create(&root.join("vm"), &spec).unwrap()
}

/// Every file under `dir` with its bytes (to show a refusal changed nothing).
fn files_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[track_caller]
fn invalid(r: ckpt::Result<impl std::fmt::Debug>, says: &str) {
    match r {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

/// Item 10: at most 100 characters (counted as characters, not bytes), no
/// control characters, no blank at either end; a refusal changes nothing.
#[test]
fn checkpoint_names_follow_one_rule() {
    let t = tempfile::tempdir().unwrap();
    let mut vm = new_vm(t.path());
    vm.create_checkpoint("A", None, &mut NoHooks).unwrap();
    let before = files_of(t.path());

    let long = "n".repeat(MAX_NAME_CHARS + 1);
    invalid(
        vm.create_checkpoint(&long, None, &mut NoHooks),
        "at most 100 characters",
    );
    for bad in ["two\nlines", "tab\there", "bell\u{7}", "line\u{2028}sep"] {
        invalid(
            vm.create_checkpoint(bad, None, &mut NoHooks),
            "control characters",
        );
        invalid(vm.rename("A", bad), "control characters");
        invalid(vm.apply("A", Some(bad), &mut NoHooks), "control characters");
    }
    for bad in ["B ", " B", "B\u{a0}", "\u{3000}B"] {
        invalid(vm.create_checkpoint(bad, None, &mut NoHooks), "blank");
        invalid(vm.rename("A", bad), "blank");
    }
    assert_eq!(
        files_of(t.path()),
        before,
        "a refused name changed something"
    );
    assert_eq!(vm.data().checkpoints.len(), 1);
    assert_eq!(Vm::load(vm.dir()).unwrap(), *vm.data());

    // 100 characters of 3 bytes each are fine: characters are counted.
    let wide = "é".repeat(MAX_NAME_CHARS / 2) + &"€".repeat(MAX_NAME_CHARS / 2);
    assert_eq!(wide.chars().count(), MAX_NAME_CHARS);
    vm.create_checkpoint(&wide, None, &mut NoHooks).unwrap();
    vm.create_checkpoint("inner blanks are fine", None, &mut NoHooks)
        .unwrap();
    assert_eq!(vm.find(&wide).unwrap().name, wide);
}

/// Item 10: names compare ignoring case, as Windows does; a rename may
/// change only the case.
#[test]
fn checkpoint_names_compare_ignoring_case() {
    let t = tempfile::tempdir().unwrap();
    let mut vm = new_vm(t.path());
    vm.create_checkpoint("Before-Upgrade", None, &mut NoHooks)
        .unwrap();
    let e = vm
        .create_checkpoint("before-upgrade", None, &mut NoHooks)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    vm.create_checkpoint("Ärger", None, &mut NoHooks).unwrap();
    assert_eq!(vm.find("ärger").unwrap().name, "Ärger");
    assert_eq!(vm.find("BEFORE-UPGRADE").unwrap().name, "Before-Upgrade");
    let e = vm.rename("ärger", "before-UPGRADE").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    vm.rename("before-upgrade", "BEFORE-upgrade").unwrap();
    assert_eq!(vm.find("before-upgrade").unwrap().name, "BEFORE-upgrade");
    assert_eq!(vm.data().checkpoints.len(), 2);
}
