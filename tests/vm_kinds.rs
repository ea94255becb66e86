//! Issue 9, "decide and document": the kind a checkpoint gets (an off VM's
//! checkpoint is consistent by definition; a running VM's standard
//! checkpoint without memory is recorded as such), names with control
//! characters in text output, the order of the hooks, the current state
//! never writing into a checkpoint's memory file, and old disks a reopen
//! must not delete while someone holds them.

#[cfg(feature = "cli")]
mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ckpt::checkpoint::{CheckpointType, Hooks, Settings, TakenType, Vm, VmSpec, VmState};
use ckpt::io::{faults, Transient};
use ckpt::{CreateOptions, Disk, OpenMode};

const SIZE: u64 = 4 << 20;

fn vm_with(dir: &Path, t: CheckpointType) -> Vm {
    let disk = dir.join("os.vhdx");
    Disk::create(&disk, &CreateOptions::new(SIZE).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let mut spec = VmSpec::new("kinds", vec![disk]);
    spec.settings = Settings {
        checkpoint_type: t,
        ..Default::default()
    };
    Vm::create(&dir.join("vm"), &spec).unwrap()
}

/// Records every call; `quiesce_ok` and `memory` say what the guest does.
#[derive(Default)]
struct Rec {
    calls: Arc<Mutex<Vec<String>>>,
    quiesce_ok: bool,
    memory: Option<Vec<u8>>,
    /// Fail the disk switch: the storage event after quiesce/save fails once.
    fail_switch: bool,
    /// The VM folder: each hook notes whether the switch was committed.
    vm_dir: PathBuf,
}

impl Rec {
    fn note(&self, what: &str) {
        let committed = std::fs::read_to_string(self.vm_dir.join("vm.json"))
            .map(|s| s.matches("\"taken\"").count())
            .unwrap_or(0);
        self.calls
            .lock()
            .unwrap()
            .push(format!("{what}@{committed}"));
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Hooks for Rec {
    fn quiesce(&mut self) -> Result<(), String> {
        self.note("quiesce");
        if self.fail_switch {
            faults::arm_transient(0, Transient::Eio);
        }
        if self.quiesce_ok {
            Ok(())
        } else {
            Err("no agent".into())
        }
    }
    fn thaw(&mut self) {
        faults::disarm();
        self.note("thaw");
    }
    fn save_memory(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        self.note("save");
        if self.fail_switch {
            faults::arm_transient(0, Transient::Eio);
        }
        match &self.memory {
            Some(m) => out.write_all(m).map(|_| true),
            None => Ok(false),
        }
    }
    fn resume(&mut self) {
        faults::disarm();
        self.note("resume");
    }
}

fn rec(vm: &Vm, quiesce_ok: bool, memory: Option<&[u8]>) -> Rec {
    Rec {
        quiesce_ok,
        memory: memory.map(<[u8]>::to_vec),
        vm_dir: vm.dir().to_path_buf(),
        ..Default::default()
    }
}

#[test]
fn an_off_vm_takes_production_checkpoints_without_quiescing() {
    for t in [CheckpointType::Production, CheckpointType::ProductionOnly] {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = vm_with(dir.path(), t);
        let mut h = rec(&vm, false, Some(b"MEM"));
        let c = vm.create_checkpoint("a", None, &mut h).unwrap();
        assert_eq!(c.taken, TakenType::Production, "{t}");
        assert_eq!(c.fallback_reason, None, "{t}: no fallback, no warning");
        assert!(!c.memory_kept());
        assert_eq!(c.vm_state, Some(VmState::Off));
        assert!(
            h.calls().is_empty(),
            "{t}: nothing to quiesce: {:?}",
            h.calls()
        );
    }
}

#[test]
fn a_running_vms_standard_checkpoint_without_memory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with(dir.path(), CheckpointType::Standard);
    vm.set_state(VmState::Running).unwrap();
    let mut h = rec(&vm, true, None);
    let c = vm.create_checkpoint("nomem", None, &mut h).unwrap();
    assert_eq!(c.taken, TakenType::Standard);
    assert!(!c.memory_kept() && c.saved_state.is_none());
    assert_eq!(c.vm_state, Some(VmState::Running));
    assert!(c.crash_consistent_warning().is_some());
    let mut h = rec(&vm, true, Some(b"MEM"));
    let m = vm.create_checkpoint("mem", None, &mut h).unwrap();
    assert!(m.memory_kept() && m.crash_consistent_warning().is_none());
    // Production that falls back on a running VM, with and without memory.
    vm.set_settings(Settings::default()).unwrap();
    let f = vm
        .create_checkpoint("fb", None, &mut rec(&vm, false, None))
        .unwrap();
    assert_eq!(f.taken, TakenType::Standard);
    assert!(f.fallback_reason.as_deref().unwrap().contains("no agent"));
    assert!(!f.memory_kept() && f.vm_state == Some(VmState::Running));
    // Production-only on a running VM still refuses when quiescing fails.
    vm.set_settings(Settings {
        checkpoint_type: CheckpointType::ProductionOnly,
        ..Default::default()
    })
    .unwrap();
    assert!(vm
        .create_checkpoint("x", None, &mut rec(&vm, false, None))
        .is_err());
    // Recorded in vm.json for the next reader.
    let data = Vm::load(vm.dir()).unwrap();
    let nomem = data.checkpoints.iter().find(|c| c.name == "nomem").unwrap();
    assert_eq!(nomem.vm_state, Some(VmState::Running));
}

#[test]
fn hooks_run_in_order_around_the_switch() {
    // Standard: save -> switch -> resume.
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with(dir.path(), CheckpointType::Standard);
    vm.set_state(VmState::Running).unwrap();
    let mut h = rec(&vm, true, Some(b"MEM"));
    vm.create_checkpoint("s", None, &mut h).unwrap();
    assert_eq!(h.calls(), ["save@0", "resume@1"]);
    // Without memory handed over, resume still follows the save.
    let mut h = rec(&vm, true, None);
    vm.create_checkpoint("s2", None, &mut h).unwrap();
    assert_eq!(h.calls(), ["save@1", "resume@2"]);
    // The switch fails: resume still comes, and nothing was taken.
    let mut h = rec(&vm, true, Some(b"MEM"));
    h.fail_switch = true;
    assert!(vm.create_checkpoint("s3", None, &mut h).is_err());
    assert_eq!(h.calls(), ["save@2", "resume@2"]);
    assert_eq!(vm.data().checkpoints.len(), 2);

    // Production: quiesce -> switch -> thaw, no resume.
    vm.set_settings(Settings::default()).unwrap();
    let mut h = rec(&vm, true, Some(b"MEM"));
    vm.create_checkpoint("p", None, &mut h).unwrap();
    assert_eq!(h.calls(), ["quiesce@2", "thaw@3"]);
    let mut h = rec(&vm, true, None);
    h.fail_switch = true;
    assert!(vm.create_checkpoint("p2", None, &mut h).is_err());
    assert_eq!(h.calls(), ["quiesce@3", "thaw@3"]);
    // Production falling back: quiesce fails, then save -> switch -> resume.
    let mut h = rec(&vm, false, Some(b"MEM"));
    vm.create_checkpoint("f", None, &mut h).unwrap();
    assert_eq!(h.calls(), ["quiesce@3", "save@3", "resume@4"]);
    assert_eq!(vm.data().checkpoints.len(), 4);
    assert!(vm.strays().unwrap().is_empty());
}

#[test]
fn saving_after_an_apply_never_writes_into_the_checkpoints_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with(dir.path(), CheckpointType::Standard);
    vm.set_state(VmState::Running).unwrap();
    let s = vm
        .create_checkpoint("s", None, &mut rec(&vm, true, Some(b"CHECKPOINT MEMORY")))
        .unwrap();
    let mem = s.saved_state.clone().unwrap();
    let before = std::fs::read(&mem).unwrap();
    vm.set_state(VmState::Off).unwrap();
    vm.apply("s", None, &mut rec(&vm, true, None)).unwrap();
    assert_eq!(vm.data().state, VmState::Saved);
    assert_eq!(vm.data().current.saved_state.as_ref(), Some(&mem));
    // A checkpoint of the saved VM shares the file; nothing is written.
    let mut h = rec(&vm, true, Some(b"OVERWRITTEN"));
    let t = vm.create_checkpoint("t", None, &mut h).unwrap();
    assert_eq!(t.saved_state.as_ref(), Some(&mem));
    // A memory state given by file goes to a new file.
    let given = dir.path().join("given.bin");
    std::fs::write(&given, b"GIVEN").unwrap();
    let g = vm.create_checkpoint("g", Some(&given), &mut h).unwrap();
    assert_ne!(g.saved_state.as_ref(), Some(&mem));
    // The guest resumes and is saved again: a new file.
    vm.set_state(VmState::Running).unwrap();
    let n = vm
        .create_checkpoint("n", None, &mut rec(&vm, true, Some(b"NEW SAVE")))
        .unwrap();
    assert_ne!(n.saved_state.as_ref(), Some(&mem));
    vm.set_state(VmState::Saved).unwrap();
    // Applying again and keeping the current state.
    vm.set_state(VmState::Off).unwrap();
    vm.apply("s", Some("kept"), &mut rec(&vm, true, Some(b"KEPT")))
        .unwrap();
    vm.export(None, &dir.path().join("exp"), &mut rec(&vm, true, None))
        .unwrap();
    assert_eq!(
        std::fs::read(&mem).unwrap(),
        before,
        "the checkpoint's memory changed"
    );
    assert_eq!(vm.find("s").unwrap().saved_state.as_ref(), Some(&mem));
}

#[test]
fn reopen_never_removes_an_old_disk_someone_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with(dir.path(), CheckpointType::Production);
    let a = vm
        .create_checkpoint("a", None, &mut rec(&vm, true, None))
        .unwrap();
    let old = vm.data().current.disks[0].clone();
    let backup = dir.path().join("old.bak");
    std::fs::copy(&old, &backup).unwrap();
    vm.apply("a", None, &mut rec(&vm, true, None)).unwrap();
    let new = vm.data().current.disks[0].clone();
    let vmdir = vm.dir().to_path_buf();
    drop(vm);
    // As a crash right after the apply's commit leaves it.
    std::fs::copy(&backup, &old).unwrap();
    let journal = serde_json::json!({
        "op": "apply", "target": a.id, "new_files": [new], "old_files": [old],
    });
    std::fs::write(vmdir.join("journal.json"), journal.to_string()).unwrap();
    let holder = Disk::open(&old, OpenMode::ReadOnly).unwrap();
    let mut vm = Vm::open(&vmdir).unwrap();
    assert!(old.exists(), "a held disk was deleted");
    assert!(!vmdir.join("journal.json").exists(), "the journal stays");
    assert_eq!(vm.data().pending_removals, vec![old.clone()]);
    let w = vm.take_warnings();
    assert!(w.iter().any(|w| w.contains("held")), "{w:?}");
    // The next operation writes its own journal: nothing is lost.
    vm.create_checkpoint("b", None, &mut rec(&vm, true, None))
        .unwrap();
    drop(vm);
    // Still held: still pending, reported again.
    let mut vm = Vm::open(&vmdir).unwrap();
    assert!(old.exists());
    assert!(!vm.take_warnings().is_empty());
    drop(vm);
    drop(holder);
    let vm = Vm::open(&vmdir).unwrap();
    assert!(!old.exists(), "a free pending disk is removed on open");
    assert!(vm.data().pending_removals.is_empty());
    assert!(Vm::load(&vmdir).unwrap().pending_removals.is_empty());
}

/// Names with control characters (from an older version's vm.json) stay on
/// their line in `list` and `vm show`; the JSON and kinds are there too.
#[cfg(feature = "cli")]
#[test]
fn cli_escapes_names_and_reports_kinds() {
    use support::cli::{ok, stdout};
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_with(dir.path(), CheckpointType::Production);
    vm.create_checkpoint("a", None, &mut rec(&vm, true, None))
        .unwrap();
    vm.set_state(VmState::Running).unwrap();
    vm.set_settings(Settings {
        checkpoint_type: CheckpointType::Standard,
        ..Default::default()
    })
    .unwrap();
    vm.create_checkpoint("b", None, &mut rec(&vm, true, None))
        .unwrap();
    vm.set_state(VmState::Off).unwrap();
    let vmdir = vm.dir().to_path_buf();
    drop(vm);
    // Hand-made names an older version accepted.
    let p = vmdir.join("vm.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text
        .replace(
            "\"name\": \"a\"",
            "\"name\": \"x\\nfake  standard, 0 s old\"",
        )
        .replace("\"name\": \"b\"", "\"name\": \"tab\\there\\u001b[31m\"")
        .replace("\"name\": \"kinds\"", "\"name\": \"vm\\r\\nname\"");
    std::fs::write(&p, text).unwrap();
    let d = vmdir.to_str().unwrap();
    let list = stdout(&ok(&["checkpoint", "list", d]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "header, 2 checkpoints, now:\n{list}");
    assert!(lines[0].contains("vm\\r\\nname"), "{list}");
    assert!(
        lines[1].starts_with("x\\nfake  standard, 0 s old  production"),
        "{list}"
    );
    assert!(lines[2].contains("tab\\there\\u{1b}[31m"), "{list}");
    assert!(!list.contains('\u{1b}') && !list.contains('\t'), "{list}");
    assert!(lines[2].contains("crash-consistent"), "{list}");
    assert!(!lines[1].contains("warning"), "{list}");
    let show = stdout(&ok(&["vm", "show", d]));
    assert!(show.lines().any(|l| l.ends_with("vm\\r\\nname")), "{show}");
    assert!(show.contains("\"tab\\there\\u{1b}[31m\""), "{show}");
    assert!(!show.contains('\u{1b}') && !show.contains('\r'), "{show}");

    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["checkpoint", "list", d, "--json"]).stdout).unwrap();
    let a = &v["checkpoints"][0];
    assert_eq!(a["type"], "production");
    assert_eq!(a["fallback_reason"], serde_json::Value::Null);
    assert_eq!(a["memory_kept"], false);
    assert_eq!(a["vm_state"], "off");
    let b = &v["checkpoints"][1];
    assert_eq!(b["type"], "standard");
    assert_eq!(b["memory_kept"], false);
    assert_eq!(b["vm_state"], "running");
}

/// `ckpt checkpoint create` on an off VM with the default (production)
/// type and no quiesce command: production, no fallback, no warning.
#[cfg(feature = "cli")]
#[test]
fn cli_production_on_an_off_vm_is_no_fallback() {
    use support::cli::{ok, stdout};
    let dir = tempfile::tempdir().unwrap();
    let vm = vm_with(dir.path(), CheckpointType::ProductionOnly);
    let d = vm.dir().to_str().unwrap().to_string();
    drop(vm);
    let out = stdout(&ok(&["checkpoint", "create", &d, "a"]));
    assert!(
        out.contains(": production") && !out.contains("fell back"),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["checkpoint", "list", &d, "--json"]).stdout).unwrap();
    let a = &v["checkpoints"][0];
    assert_eq!(a["type"], "production");
    assert_eq!(a["requested_type"], "production-only");
    assert_eq!(a["vm_state"], "off");
    assert_eq!(a["memory_kept"], false);
    // Capturing the current state of the off VM needs no quiesce either.
    ok(&["checkpoint", "apply", &d, "a", "--save-current", "b"]);
    let v: serde_json::Value =
        serde_json::from_slice(&ok(&["checkpoint", "list", &d, "--json"]).stdout).unwrap();
    let b = &v["checkpoints"][1];
    assert_eq!(
        (b["name"].as_str(), b["type"].as_str()),
        (Some("b"), Some("production"))
    );
    assert_eq!(b["fallback_reason"], serde_json::Value::Null);
}
