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

/// Run `f` on its own thread; panic if it takes more than 60 s (a loop
/// over a damaged tree must never hang).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: still running after 60 s (a loop?)"))
}

/// A VM with checkpoints A and B (B under A, the current state under B),
/// closed; returns its folder.
fn a_and_b(root: &Path) -> PathBuf {
    let mut vm = new_vm(root);
    vm.create_checkpoint("A", None, &mut NoHooks).unwrap();
    vm.create_checkpoint("B", None, &mut NoHooks).unwrap();
    vm.dir().to_path_buf()
}

/// Rewrite `dir/vm.json` through `edit`.
fn edit_vm_json(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("vm.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Opening (and loading, and deleting through) the VM in `dir` fails as
/// damaged, with a message naming vm.json and containing `says`, and
/// changes nothing.
#[track_caller]
fn refused_on_open(dir: &Path, says: &str) {
    let before = files_of(dir);
    for (what, r) in [
        (
            "open",
            bounded("open", {
                let d = dir.to_path_buf();
                move || Vm::open(&d).map(|_| ())
            }),
        ),
        ("load", Vm::load(dir).map(|_| ())),
        (
            "delete",
            bounded("delete", {
                let d = dir.to_path_buf();
                move || Vm::open(&d).and_then(|mut vm| vm.delete("A", true, &mut NoHooks))
            }),
        ),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{what}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("vm.json") && text.contains(says),
            "{what}: {text}"
        );
        assert!(text.contains("edited by hand or damaged"), "{what}: {text}");
    }
    assert_eq!(files_of(dir), before, "a refused open changed something");
}

fn checkpoint_mut<'a>(v: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    v["checkpoints"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap()
}

/// Item 11: a parent cycle (with or without the current state in it), a
/// parent that does not exist, a duplicate id or name, a disk added by
/// hand: a clear error on open, never a hang.
#[test]
fn a_hand_edited_vm_file_is_refused_on_open() {
    let t = tempfile::tempdir().unwrap();

    let dir = a_and_b(&t.path().join("cycle"));
    edit_vm_json(&dir, |v| {
        let b = checkpoint_mut(v, "B")["id"].clone();
        checkpoint_mut(v, "A")["parent"] = b;
    });
    refused_on_open(&dir, "form a cycle");

    let dir = a_and_b(&t.path().join("self"));
    edit_vm_json(&dir, |v| {
        let a = checkpoint_mut(v, "A")["id"].clone();
        checkpoint_mut(v, "A")["parent"] = a;
    });
    refused_on_open(&dir, "form a cycle");

    let dir = a_and_b(&t.path().join("dangling"));
    edit_vm_json(&dir, |v| {
        checkpoint_mut(v, "B")["parent"] = "no-such-id".into()
    });
    refused_on_open(&dir, "checkpoint \"B\"");
    refused_on_open(&dir, "parent no-such-id does not exist");

    let dir = a_and_b(&t.path().join("current"));
    edit_vm_json(&dir, |v| v["current"]["parent"] = "gone".into());
    refused_on_open(
        &dir,
        "the current state's parent checkpoint gone does not exist",
    );

    let dir = a_and_b(&t.path().join("id"));
    edit_vm_json(&dir, |v| {
        let a = checkpoint_mut(v, "A")["id"].clone();
        checkpoint_mut(v, "B")["id"] = a;
    });
    refused_on_open(&dir, "two checkpoints have the id");

    let dir = a_and_b(&t.path().join("name"));
    edit_vm_json(&dir, |v| checkpoint_mut(v, "B")["name"] = "a".into());
    refused_on_open(&dir, "have the same name");

    let dir = a_and_b(&t.path().join("disks"));
    let extra = t.path().join("extra.vhdx");
    make_disk(&extra);
    edit_vm_json(&dir, |v| {
        v["disks"]
            .as_array_mut()
            .unwrap()
            .push(extra.display().to_string().into())
    });
    refused_on_open(
        &dir,
        "the VM has 2 disk(s) in \"disks\" but the current state has 1",
    );

    let dir = a_and_b(&t.path().join("ckdisks"));
    edit_vm_json(&dir, |v| {
        let d = v["disks"][0].clone();
        v["disks"].as_array_mut().unwrap().push(d.clone());
        v["current"]["disks"].as_array_mut().unwrap().push(d);
    });
    refused_on_open(&dir, "checkpoint \"A\"");
    refused_on_open(&dir, "has 1 disk(s) but the VM has 2");

    let dir = t.path().join("garbage").join("vm");
    let _ = a_and_b(&t.path().join("garbage"));
    std::fs::write(dir.join("vm.json"), b"{\"version\": 1, \"config\": ").unwrap();
    refused_on_open(&dir, "not a valid VM file");
}

/// Item 11: a disk file the committed tree names that is gone is a clear
/// error on open (naming the file), which changes nothing.
#[test]
fn a_missing_disk_file_is_refused_on_open() {
    let t = tempfile::tempdir().unwrap();
    let dir = a_and_b(t.path());
    let current = Vm::load(&dir).unwrap().current.disks[0].clone();
    let aside = t.path().join("aside.avhdx");
    std::fs::rename(&current, &aside).unwrap();
    let before = files_of(t.path());
    let e = Vm::open(&dir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let text = e.to_string();
    assert!(text.contains(&current.display().to_string()), "{text}");
    assert!(text.contains("the current state"), "{text}");
    assert_eq!(files_of(t.path()), before);
    std::fs::rename(&aside, &current).unwrap();
    let mut vm = Vm::open(&dir).unwrap();
    vm.delete("B", false, &mut NoHooks).unwrap();
}

/// Item 11: a truncated journal is an error naming journal.json that says
/// what it means and how to recover; removing it as told gives the VM back.
#[test]
fn a_truncated_journal_says_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let dir = a_and_b(t.path());
    let journal = dir.join("journal.json");
    let full = br#"{"op": "remove", "id": "x", "hide": false, "files": []}"#;
    for cut in [0, 1, full.len() / 2, full.len() - 1] {
        std::fs::write(&journal, &full[..cut]).unwrap();
        let before = files_of(t.path());
        let e = Vm::open(&dir).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        let text = e.to_string();
        for says in ["journal.json", "interrupted", "restore", "remove it"] {
            assert!(text.contains(says), "{says:?} missing: {text}");
        }
        assert!(!text.contains("corrupt image"), "{text}");
        assert_eq!(files_of(t.path()), before, "cut {cut}");
    }
    std::fs::remove_file(&journal).unwrap();
    let mut vm = Vm::open(&dir).unwrap();
    assert_eq!(vm.data().checkpoints.len(), 2);
    vm.delete("A", false, &mut NoHooks).unwrap();
}

/// Item 9: with the checkpoint location set to the VM folder, the VM's own
/// files (vm.json, the lock file, a journal) and files the tree could not
/// have made are never strays; a file named as the tree names them is.
#[test]
fn strays_never_name_the_vm_itself() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("disks").join("os.vhdx");
    make_disk(&disk);
    let mut spec = VmSpec::new("here", vec![disk]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    let dir = t.path().join("vm");
    spec.settings.checkpoint_location = Some(dir.clone());
    let mut vm = Vm::create(&dir, &spec).unwrap();
    vm.create_checkpoint("A", None, &mut NoHooks).unwrap();
    assert!(vm.data().checkpoints[0]
        .config_file
        .as_ref()
        .unwrap()
        .starts_with(vm.dir()));
    std::fs::write(vm.dir().join("notes.json"), b"{}").unwrap();
    std::fs::write(vm.dir().join("memory.vmrs"), b"x").unwrap();
    assert_eq!(vm.strays().unwrap(), Vec::<PathBuf>::new());
    let stray = vm.dir().join("6f1c2d4e-8a3b-4c5d-9e7f-0a1b2c3d4e5f.vmrs");
    std::fs::write(&stray, b"x").unwrap();
    assert_eq!(vm.strays().unwrap(), vec![stray]);
}

/// Item 9: a location the VM used before is remembered (in vm.json), and
/// strays left there are still reported; moving back forgets it again.
#[test]
fn strays_in_a_past_checkpoint_location_are_found() {
    let t = tempfile::tempdir().unwrap();
    let mut vm = new_vm(t.path());
    vm.create_checkpoint("A", None, &mut NoHooks).unwrap();
    let old = vm.checkpoint_location();
    let mut s = vm.data().settings.clone();
    s.checkpoint_location = Some(t.path().join("elsewhere"));
    vm.set_settings(s).unwrap();
    vm.create_checkpoint("B", None, &mut NoHooks).unwrap();
    assert_eq!(vm.strays().unwrap(), Vec::<PathBuf>::new());
    let stray = old.join("0d9b5c1e-2f3a-4b6c-8d7e-9f0a1b2c3d4e.json");
    std::fs::write(&stray, b"{}").unwrap();
    assert_eq!(vm.strays().unwrap(), vec![stray.clone()]);
    drop(vm);
    let mut vm = Vm::open(&t.path().join("vm")).unwrap();
    assert_eq!(vm.data().past_checkpoint_locations, vec![old.clone()]);
    assert_eq!(vm.strays().unwrap(), vec![stray.clone()]);
    let mut s = vm.data().settings.clone();
    s.checkpoint_location = None;
    vm.set_settings(s).unwrap();
    assert_eq!(vm.checkpoint_location(), old);
    assert_eq!(
        vm.data().past_checkpoint_locations,
        vec![t.path().join("elsewhere")]
    );
    assert_eq!(vm.strays().unwrap(), vec![stray]);
}

/// A setting whose `vm.json` write fails (at any of its steps, once) is
/// refused and the handle keeps showing what the file holds; a retry works.
#[test]
fn a_failed_save_of_a_setting_leaves_the_handle_as_the_file() {
    use ckpt::checkpoint::VmState;
    use ckpt::io::{faults, Transient};
    type Change = fn(&mut Vm) -> ckpt::Result<()>;
    let changes: [(&str, Change); 3] = [
        ("set_state", |vm| vm.set_state(VmState::Running)),
        ("set_resources", |vm| vm.set_resources(Some(3000), Some(3))),
        ("set_hypervisor_settings", |vm| {
            vm.set_hypervisor_settings(serde_json::json!({"machine": "q35"}))
        }),
    ];
    for (what, change) in changes {
        let t = tempfile::tempdir().unwrap();
        let mut vm = new_vm(t.path());
        faults::arm(u64::MAX, ckpt::io::Cut::Clean);
        change(&mut vm).unwrap();
        let events = faults::disarm();
        assert!(
            events > 0,
            "{what}: the save writes through the storage layer"
        );
        drop(vm);
        for n in 0..events {
            let t = tempfile::tempdir().unwrap();
            let mut vm = new_vm(t.path());
            let before = vm.data().clone();
            faults::arm_transient(n, Transient::Eio);
            let r = change(&mut vm);
            faults::disarm();
            let file = Vm::load(vm.dir()).unwrap();
            assert_eq!(
                vm.data(),
                &file,
                "{what}, failure at {n}: handle and file differ"
            );
            match r {
                Err(_) => assert_eq!(vm.data(), &before, "{what}, failure at {n}"),
                Ok(()) => assert_ne!(vm.data(), &before, "{what}, failure at {n}"),
            }
            change(&mut vm).unwrap();
            assert_eq!(
                vm.data(),
                &Vm::load(vm.dir()).unwrap(),
                "{what}: retry at {n}"
            );
        }
    }
}
