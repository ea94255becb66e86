//! `ckpt vm …` and `ckpt checkpoint …` on bad input (issue 9, items 9 to
//! 11): names the rule refuses, a hand-edited or damaged `vm.json` or
//! `journal.json` (exit 1 with one `error:` line, never a hang), and the
//! stray report.

#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};

use common::cli::{fail, json, ok, ok_text, s};

/// A VM in `root/vm` on a 4 MiB disk `root/os.vhdx`, standard checkpoints.
fn new_vm(root: &Path) -> PathBuf {
    let disk = root.join("os.vhdx");
    ok(&["create", s(&disk), "--size", "4M"]);
    let vm = root.join("vm");
    ok(&[
        "vm",
        "create",
        s(&vm),
        "--name",
        "input",
        "--disk",
        s(&disk),
        "--checkpoint-type",
        "standard",
    ]);
    vm
}

/// Item 10: a name with a newline, one too long or one with a trailing
/// blank is refused with the rule; names compare ignoring case.
#[test]
fn names_the_rule_refuses() {
    let t = tempfile::tempdir().unwrap();
    let vm = new_vm(t.path());
    ok(&["checkpoint", "create", s(&vm), "B"]);
    let vm_json = std::fs::read(vm.join("vm.json")).unwrap();
    let e = fail(&["checkpoint", "create", s(&vm), "fake\n└── line"]);
    assert!(e.contains("control characters"), "{e}");
    let long = "x".repeat(101);
    let e = fail(&["checkpoint", "create", s(&vm), &long]);
    assert!(e.contains("at most 100 characters"), "{e}");
    let e = fail(&["checkpoint", "create", s(&vm), "B "]);
    assert!(e.contains("must not begin or end with a blank"), "{e}");
    let e = fail(&["checkpoint", "rename", s(&vm), "B", "C\n"]);
    assert!(e.contains("control characters"), "{e}");
    let e = fail(&["checkpoint", "create", s(&vm), "b"]);
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(vm.join("vm.json")).unwrap(), vm_json);
    let list = json(&["checkpoint", "list", s(&vm), "--json"]);
    assert_eq!(list["checkpoints"].as_array().unwrap().len(), 1);
    ok(&["checkpoint", "rename", s(&vm), "b", "Base"]);
    let text = ok_text(&["checkpoint", "list", s(&vm)]);
    assert!(text.contains("Base"), "{text}");
}
