//! Hidden branch points always collapse (issue 9, item 7): a crash at
//! every file event of a delete or apply that ends with a collapse (the
//! hidden node left with one dependant is merged away) leaves, after
//! reopen, no hidden node with fewer than two dependants, no journal, no
//! stray file, and every state reading as before or after the operation.
//! And a collapse that fails after the operation committed does not report
//! the operation as failed.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ckpt::checkpoint::{CheckpointType, NoHooks, Vm, VmSpec};
use ckpt::io::{faults, Cut};
use ckpt::{CreateOptions, Disk, OpenMode};
use support::marked::{get, put, SIZE};

/// A (0x11) hidden, with B (0x22, and C 0x33 under it with `c`) and the
/// current state (0x44) under it.
fn build(root: &Path, c: bool) -> PathBuf {
    let disk = root.join("disks").join("os.vhdx");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    Disk::create(&disk, &CreateOptions::new(SIZE).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let mut spec = VmSpec::new("collapse", vec![disk]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    let dir = root.join("vm");
    let mut vm = Vm::create(&dir, &spec).unwrap();
    put(&vm.data().current.disks[0], 0x11);
    vm.create_checkpoint("A", None, &mut NoHooks).unwrap();
    put(&vm.data().current.disks[0], 0x22);
    vm.create_checkpoint("B", None, &mut NoHooks).unwrap();
    if c {
        put(&vm.data().current.disks[0], 0x33);
        vm.create_checkpoint("C", None, &mut NoHooks).unwrap();
    }
    vm.apply("A", None, &mut NoHooks).unwrap();
    put(&vm.data().current.disks[0], 0x44);
    vm.delete("A", false, &mut NoHooks).unwrap();
    let a = vm
        .data()
        .checkpoints
        .iter()
        .find(|x| x.name == "A")
        .unwrap();
    assert!(a.hidden, "A is a hidden branch point");
    dir
}

type State = (BTreeMap<String, u8>, u8);

fn state(vm: &Vm) -> State {
    let m = vm
        .data()
        .checkpoints
        .iter()
        .filter(|c| !c.hidden)
        .map(|c| (c.name.clone(), get(&c.disks[0])))
        .collect();
    (m, get(&vm.data().current.disks[0]))
}

/// Hidden nodes with fewer than two dependants.
fn uncollapsed(vm: &Vm) -> Vec<String> {
    let d = vm.data();
    d.checkpoints
        .iter()
        .filter(|h| h.hidden)
        .filter(|h| {
            let n = d
                .checkpoints
                .iter()
                .filter(|c| c.parent.as_deref() == Some(&h.id))
                .count()
                + usize::from(d.current.parent.as_deref() == Some(&h.id));
            n < 2
        })
        .map(|h| h.id.clone())
        .collect()
}

fn do_op(vm: &mut Vm, op: &str) -> ckpt::Result<()> {
    match op {
        "leaf-delete" => vm.delete("B", false, &mut NoHooks),
        "apply" => vm.apply("B", None, &mut NoHooks),
        "subtree" => vm.delete("B", true, &mut NoHooks),
        _ => unreachable!(),
    }
}

fn sweep(op: &str, c: bool) {
    let t = tempfile::tempdir().unwrap();
    let dir = build(t.path(), c);
    let mut vm = Vm::open(&dir).unwrap();
    let before = state(&vm);
    faults::arm(u64::MAX, Cut::Clean);
    do_op(&mut vm, op).unwrap();
    let events = faults::disarm();
    let after = state(&vm);
    assert!(uncollapsed(&vm).is_empty(), "{op}: not collapsed");
    drop(vm);
    assert!(events > 3, "{op}: {events} events");
    for n in 0..events {
        let t = tempfile::tempdir().unwrap();
        let dir = build(t.path(), c);
        let mut vm = Vm::open(&dir).unwrap();
        faults::arm(n, Cut::Clean);
        let _ = do_op(&mut vm, op);
        faults::disarm();
        drop(vm);
        let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{op}: cut at {n}: reopen: {e}"));
        assert!(
            !dir.join("journal.json").exists(),
            "{op}: cut at {n}: journal left"
        );
        let left = uncollapsed(&vm);
        assert!(
            left.is_empty(),
            "{op}: cut at {n} of {events}: hidden nodes never collapsed: {left:?}"
        );
        let s = state(&vm);
        // A subtree delete is one delete after another, deepest first.
        let mid = (op == "subtree").then(|| {
            let mut m = before.clone();
            m.0.remove("C");
            m
        });
        assert!(
            s == before || s == after || Some(&s) == mid.as_ref(),
            "{op}: cut at {n}: state {s:?}\nbefore {before:?}\nafter {after:?}"
        );
        let strays = vm.strays().unwrap();
        assert!(
            strays.is_empty(),
            "{op}: cut at {n}: orphan files {strays:?}"
        );
    }
}

#[test]
fn a_crash_in_a_leaf_delete_with_collapse_leaves_no_hidden_node_behind() {
    sweep("leaf-delete", false);
}

#[test]
fn a_crash_in_an_apply_with_collapse_leaves_no_hidden_node_behind() {
    sweep("apply", false);
}

#[test]
fn a_crash_in_a_subtree_delete_leaves_no_hidden_node_behind() {
    sweep("subtree", true);
}

/// The delete of B is committed when its collapse (merging the current
/// state into hidden A) is refused because the current disk is held: the
/// delete reports success, A stays hidden until the VM is next opened with
/// the disk free, and then collapses.
#[test]
fn a_collapse_refused_after_commit_does_not_fail_the_delete() {
    let t = tempfile::tempdir().unwrap();
    let dir = build(t.path(), false);
    let mut vm = Vm::open(&dir).unwrap();
    let now = vm.data().current.disks[0].clone();
    let holder = Disk::open(&now, OpenMode::ReadOnly).unwrap();
    vm.delete("B", false, &mut NoHooks)
        .expect("the delete committed; its collapse is not its failure");
    assert!(vm.find("B").is_err());
    assert!(!dir.join("journal.json").exists());
    assert_eq!(uncollapsed(&vm).len(), 1, "the collapse was refused");
    drop(vm);
    drop(holder);
    let vm = Vm::open(&dir).unwrap();
    assert!(uncollapsed(&vm).is_empty(), "collapsed on the next open");
    assert_eq!(get(&vm.data().current.disks[0]), 0x44);
    assert!(vm.strays().unwrap().is_empty());
}

/// A transient failure at every file event of a delete (and of an apply)
/// that ends with a collapse: once the operation is committed (the deleted
/// checkpoint is gone, or the current state hangs under the applied one),
/// a failure of what follows — the collapse, removing old files — is not
/// its failure: it reports success with a warning, and the next open
/// tidies up (no journal, nothing left uncollapsed, no stray file).
#[test]
fn a_collapse_failing_after_commit_reports_the_operation_done() {
    use ckpt::io::Transient;
    for op in ["leaf-delete", "apply"] {
        let t = tempfile::tempdir().unwrap();
        let dir = build(t.path(), false);
        let mut vm = Vm::open(&dir).unwrap();
        faults::arm(u64::MAX, Cut::Clean);
        do_op(&mut vm, op).unwrap();
        let events = faults::disarm();
        drop(vm);
        let mut committed_failures = 0;
        for n in 0..events {
            let t = tempfile::tempdir().unwrap();
            let dir = build(t.path(), false);
            let mut vm = Vm::open(&dir).unwrap();
            let b = vm.find("B").unwrap().id.clone();
            faults::arm_transient(n, Transient::Eio);
            let r = do_op(&mut vm, op);
            faults::disarm();
            // Committed: what the VM file says.
            let d = Vm::load(&dir).unwrap();
            let committed = match op {
                "leaf-delete" => d.checkpoints.iter().all(|c| c.id != b),
                _ => d.current.parent.as_deref() == Some(b.as_str()),
            };
            if committed {
                let warned = !vm.take_warnings().is_empty();
                assert!(
                    r.is_ok(),
                    "{op}: failure at {n} after commit reported as failure: {:?}",
                    r.err()
                );
                if warned {
                    committed_failures += 1;
                }
            }
            drop(vm);
            let vm = Vm::open(&dir).unwrap_or_else(|e| panic!("{op}: at {n}: reopen: {e}"));
            assert!(!dir.join("journal.json").exists(), "{op}: at {n}: journal");
            assert!(uncollapsed(&vm).is_empty(), "{op}: at {n}: not collapsed");
            assert!(vm.strays().unwrap().is_empty(), "{op}: at {n}: strays");
        }
        assert!(
            committed_failures > 0,
            "{op}: no failure after commit was seen"
        );
    }
}
