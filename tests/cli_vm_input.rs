//! `ckpt vm …` and `ckpt checkpoint …` on bad input (issue 9, items 9 to
//! 11): names the rule refuses, a hand-edited or damaged `vm.json` or
//! `journal.json` (exit 1 with one `error:` line, never a hang), and the
//! stray report.

#![cfg(feature = "cli")]

mod support;

use std::path::{Path, PathBuf};

use support::cli::{fail, json, ok, ok_text, s};

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

/// Run `ckpt args…`, killing it (and failing) after 60 s: a damaged tree
/// must never make the tool loop.
fn run_bounded(args: &[&str]) -> std::process::Output {
    use std::io::Read;
    let mut child = support::cli::ckpt()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("ckpt {args:?} still running after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// Rewrite `vm/vm.json` through `edit`.
fn edit_vm_json(vm: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = vm.join("vm.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn id_of(v: &serde_json::Value, name: &str) -> serde_json::Value {
    v["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()["id"]
        .clone()
}

/// Item 11: a parent cycle, a dangling parent, a duplicate id or name, a
/// disk added by hand: every command fails with one `error:` line naming
/// vm.json and what is wrong, never hangs, and changes nothing.
#[test]
fn a_hand_edited_vm_file_fails_every_command() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "cycle",
            Box::new(|v| {
                let b = id_of(v, "B");
                let a = id_of(v, "A");
                for c in v["checkpoints"].as_array_mut().unwrap() {
                    c["parent"] = if c["name"] == "A" {
                        b.clone()
                    } else {
                        a.clone()
                    };
                }
            }),
            "form a cycle",
        ),
        (
            "dangling",
            Box::new(|v| {
                for c in v["checkpoints"].as_array_mut().unwrap() {
                    if c["name"] == "B" {
                        c["parent"] = "no-such-id".into();
                    }
                }
            }),
            "checkpoint \"B\" (id ",
        ),
        (
            "id",
            Box::new(|v| {
                let a = id_of(v, "A");
                for c in v["checkpoints"].as_array_mut().unwrap() {
                    c["id"] = a.clone();
                }
            }),
            "two checkpoints have the id",
        ),
        (
            "name",
            Box::new(|v| {
                for c in v["checkpoints"].as_array_mut().unwrap() {
                    c["name"] = "same".into();
                }
            }),
            "have the same name",
        ),
        (
            "disk",
            Box::new(|v| {
                let d = v["disks"][0].clone();
                v["disks"].as_array_mut().unwrap().push(d);
            }),
            "2 disk(s) in \"disks\"",
        ),
    ];
    for (tag, edit, says) in cases {
        let t = tempfile::tempdir().unwrap();
        let vm = new_vm(t.path());
        ok(&["checkpoint", "create", s(&vm), "A"]);
        ok(&["checkpoint", "create", s(&vm), "B"]);
        edit_vm_json(&vm, edit);
        let vm_json = std::fs::read(vm.join("vm.json")).unwrap();
        for args in [
            vec!["checkpoint", "delete", s(&vm), "A"],
            vec!["checkpoint", "delete", s(&vm), "A", "--subtree"],
            vec!["checkpoint", "list", s(&vm)],
            vec!["checkpoint", "list", s(&vm), "--json"],
            vec!["checkpoint", "create", s(&vm), "C"],
            vec!["vm", "show", s(&vm)],
            vec!["vm", "set", s(&vm), "--state", "off"],
        ] {
            let e = support::cli::fails(&args, &run_bounded(&args));
            assert!(
                e.contains("vm.json") && e.contains(says) && e.contains("edited by hand"),
                "{tag}: {args:?}: {e}"
            );
        }
        assert_eq!(std::fs::read(vm.join("vm.json")).unwrap(), vm_json, "{tag}");
        assert!(!vm.join("journal.json").exists(), "{tag}");
    }
}

/// Item 11: a truncated journal: one `error:` line naming journal.json and
/// how to recover.
#[test]
fn a_truncated_journal_fails_with_a_hint() {
    let t = tempfile::tempdir().unwrap();
    let vm = new_vm(t.path());
    ok(&["checkpoint", "create", s(&vm), "A"]);
    std::fs::write(vm.join("journal.json"), b"{\"op\": \"mer").unwrap();
    let e = fail(&["checkpoint", "create", s(&vm), "B"]);
    assert!(
        e.contains("journal.json") && e.contains("interrupted") && e.contains("remove it"),
        "{e}"
    );
    std::fs::remove_file(vm.join("journal.json")).unwrap();
    ok(&["checkpoint", "create", s(&vm), "B"]);
}

/// Item 9: `vm set --checkpoint-location` to the VM folder itself: `vm show`
/// names no stray (never vm.json); a stray left in the old location is
/// still reported.
#[test]
fn show_never_calls_the_vm_a_stray() {
    let t = tempfile::tempdir().unwrap();
    let vm = new_vm(t.path());
    ok(&["checkpoint", "create", s(&vm), "A"]);
    let old = vm.canonicalize().unwrap().join("checkpoints");
    ok(&["vm", "set", s(&vm), "--checkpoint-location", s(&vm)]);
    ok(&["checkpoint", "create", s(&vm), "B"]);
    let v = json(&["vm", "show", s(&vm), "--json"]);
    assert_eq!(v["strays"], serde_json::json!([]), "{v}");
    let stray = old.join("1e2d3c4b-5a69-4786-95a4-b3c2d1e0f9a8.vmrs");
    std::fs::write(&stray, b"x").unwrap();
    let v = json(&["vm", "show", s(&vm), "--json"]);
    assert_eq!(
        v["strays"],
        serde_json::json!([stray.display().to_string()]),
        "{v}"
    );
}
