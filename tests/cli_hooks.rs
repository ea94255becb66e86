//! The memory-state hooks of `ckpt checkpoint create|apply`
//! (`--save-memory-cmd`, `--resume-cmd`) and the quiesce hooks, offline
//! and with the VM held by a control server in this process: each command
//! records into a log what it saw (how many child disks exist, the mode and
//! size of its file), which proves the order save → switch → resume and
//! quiesce → switch → thaw, and the checkpoint's memory file is compared
//! byte for byte with what the save command wrote.

#![cfg(feature = "cli")]

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use ckpt::checkpoint::control;
use ckpt::checkpoint::{Hooks, Vm, VmState};

use support::cli::{fails, json, ok, run, s, stdout};
use support::MIB;

/// The bytes the save command writes.
const MEMORY: &str = "memory-state-of-the-guest\n";

/// A VM folder `vm/` over one disk, running, and a log file for the hooks.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    vm: PathBuf,
    log: PathBuf,
}

impl Fixture {
    /// No temporary memory-state file is left in the VM folder.
    fn assert_no_memory_temp(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.vm)
            .expect("vm folder")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("memory"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn new(checkpoint_type: &str) -> Fixture {
        let tmp = support::tempdir();
        let root = std::fs::canonicalize(tmp.path()).expect("canonical temp dir");
        let disk = root.join("os.vhdx");
        ok(&["create", s(&disk), "--size", &MIB.to_string()]);
        let vm = root.join("vm");
        ok(&[
            "vm",
            "create",
            s(&vm),
            "--name",
            "g",
            "--disk",
            s(&disk),
            "--checkpoint-type",
            checkpoint_type,
        ]);
        ok(&["vm", "set", s(&vm), "--state", "running"]);
        Fixture {
            _tmp: tmp,
            log: root.join("hooks.log"),
            root,
            vm,
        }
    }

    fn vm(&self) -> &str {
        s(&self.vm)
    }

    /// A shell command that appends `WORD N` to the log, N being the
    /// number of child disks (`*.avhdx`) that exist when it runs, then
    /// runs `then`.
    fn rec(&self, word: &str, then: &str) -> String {
        format!(
            "echo \"{word} $(find '{}' -name '*.avhdx' | wc -l)\" >> '{}'; {then}",
            self.root.display(),
            self.log.display()
        )
    }

    /// A save command: records, then the mode, size and path of its file,
    /// then runs `then` (which may write the file or fail).
    fn save(&self, then: &str) -> String {
        self.rec(
            "save",
            &format!(
                "stat -c '%a %s %n' \"$CKPT_MEMORY_STATE\" >> '{}'; {then}",
                self.log.display()
            ),
        )
    }

    /// The log's lines.
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The checkpoint `name` as `checkpoint list --json` shows it.
    fn entry(&self, name: &str) -> Value {
        let list = json(&["checkpoint", "list", self.vm(), "--json"]);
        list["checkpoints"]
            .as_array()
            .expect("checkpoints")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no checkpoint {name}: {list}"))
            .clone()
    }

    /// The number of checkpoints.
    fn count(&self) -> usize {
        let list = json(&["checkpoint", "list", self.vm(), "--json"]);
        list["checkpoints"].as_array().expect("checkpoints").len()
    }
}

/// The save command's log lines ("save N", "MODE SIZE PATH"): its file was
/// fresh, empty, mode 0600, with an absolute path now removed.
#[track_caller]
fn check_save_lines(save: &str, file: &str, children: usize) {
    assert_eq!(
        save,
        format!("save {children}"),
        "the save ran after the switch"
    );
    let parts: Vec<&str> = file.splitn(3, ' ').collect();
    assert_eq!(parts[..2], ["600", "0"], "the save command's file: {file}");
    let p = Path::new(parts[2]);
    assert!(p.is_absolute(), "{file}");
    assert!(!p.exists(), "the temporary file {} was left", p.display());
}

/// `checkpoint create` with a save command writing `MEMORY` and a resume
/// command, offline or through a holder: the bytes are kept, save runs
/// before the switch and resume after.
fn create_saves_memory(f: &Fixture, name: &str, children_before: usize) {
    let save = f.save(&format!(
        "printf '{}' > \"$CKPT_MEMORY_STATE\"",
        MEMORY.trim_end()
    ));
    let out = stdout(&ok(&[
        "checkpoint",
        "create",
        f.vm(),
        name,
        "--save-memory-cmd",
        &save,
        "--resume-cmd",
        &f.rec("resume", "true"),
    ]));
    assert!(out.contains(": standard, memory state "), "{out}");
    let c = f.entry(name);
    assert_eq!(c["memory_kept"], true);
    let mem = std::fs::read(c["saved_state"].as_str().expect("saved_state")).expect("memory");
    assert_eq!(mem, MEMORY.trim_end().as_bytes());
    let log = f.log_lines();
    assert_eq!(log.len(), 3, "{log:?}");
    check_save_lines(&log[0], &log[1], children_before);
    assert_eq!(log[2], format!("resume {}", children_before + 1));
}

#[test]
fn offline_save_command_gives_the_memory_state() {
    let f = Fixture::new("standard");
    create_saves_memory(&f, "a", 0);
    assert_eq!(
        json(&["vm", "show", f.vm(), "--json"])["strays"],
        Value::Array(vec![])
    );
}

#[test]
fn offline_save_command_writing_nothing_keeps_no_memory() {
    let f = Fixture::new("standard");
    let out = stdout(&ok(&[
        "checkpoint",
        "create",
        f.vm(),
        "a",
        "--save-memory-cmd",
        &f.save("true"),
        "--resume-cmd",
        &f.rec("resume", "true"),
    ]));
    assert!(out.contains("memory state not kept"), "{out}");
    let c = f.entry("a");
    assert_eq!(c["memory_kept"], false);
    assert_eq!(c["saved_state"], Value::Null);
    let log = f.log_lines();
    assert_eq!(log.len(), 3, "{log:?}");
    check_save_lines(&log[0], &log[1], 0);
    assert_eq!(log[2], "resume 1");
}

#[test]
fn offline_failing_save_command_fails_the_create() {
    let f = Fixture::new("standard");
    let args = [
        "checkpoint",
        "create",
        f.vm(),
        "a",
        "--save-memory-cmd",
        &f.save("echo no-guest >&2; exit 7"),
        "--resume-cmd",
        &f.rec("resume", "true"),
    ];
    let o = run(&args);
    let line = fails(&args, &o);
    assert!(line.contains("save-memory command"), "{line}");
    assert!(
        line.contains("status 7") && line.contains("no-guest"),
        "{line}"
    );
    assert_eq!(f.count(), 0, "a checkpoint was made");
    let log = f.log_lines();
    assert_eq!(log.len(), 3, "{log:?}");
    check_save_lines(&log[0], &log[1], 0);
    assert_eq!(log[2], "resume 0", "the resume command did not run");
    // Nothing left: no child disk, no memory file, no temporary file.
    let v = json(&["vm", "show", f.vm(), "--json"]);
    assert_eq!(v["strays"], Value::Array(vec![]), "{v}");
    f.assert_no_memory_temp();
}

#[test]
fn offline_resume_failure_is_a_warning() {
    let f = Fixture::new("standard");
    let o = run(&[
        "checkpoint",
        "create",
        f.vm(),
        "a",
        "--save-memory-cmd",
        "printf x > \"$CKPT_MEMORY_STATE\"",
        "--resume-cmd",
        "exit 5",
    ]);
    assert!(
        o.status.success(),
        "a failing resume command failed the create"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: ") && l.contains("resume") && l.contains("5")),
        "{err}"
    );
    assert_eq!(f.entry("a")["memory_kept"], true);
}

#[test]
fn production_quiesces_or_falls_back_to_the_save_command() {
    let f = Fixture::new("production");
    // Quiesced: production, the save command does not run.
    ok(&[
        "checkpoint",
        "create",
        f.vm(),
        "p",
        "--quiesce-cmd",
        &f.rec("quiesce", "true"),
        "--thaw-cmd",
        &f.rec("thaw", "true"),
        "--save-memory-cmd",
        &f.rec("save", "true"),
        "--resume-cmd",
        &f.rec("resume", "true"),
    ]);
    assert_eq!(f.entry("p")["type"], "production");
    assert_eq!(f.log_lines(), ["quiesce 0", "thaw 1"]);
    std::fs::remove_file(&f.log).expect("rm log");
    // The quiesce fails: standard, with the memory the save command wrote.
    let out = stdout(&ok(&[
        "checkpoint",
        "create",
        f.vm(),
        "s",
        "--quiesce-cmd",
        &f.rec("quiesce", "exit 1"),
        "--save-memory-cmd",
        &f.save(&format!(
            "printf '{}' > \"$CKPT_MEMORY_STATE\"",
            MEMORY.trim_end()
        )),
        "--resume-cmd",
        &f.rec("resume", "true"),
    ]));
    assert!(
        out.contains("standard (production fell back: quiesce failed"),
        "{out}"
    );
    let c = f.entry("s");
    assert_eq!(c["type"], "standard");
    assert!(
        c["fallback_reason"]
            .as_str()
            .expect("reason")
            .contains("quiesce failed"),
        "{c}"
    );
    let mem = std::fs::read(c["saved_state"].as_str().expect("saved_state")).expect("memory");
    assert_eq!(mem, MEMORY.trim_end().as_bytes());
    let log = f.log_lines();
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(log[0], "quiesce 1");
    check_save_lines(&log[1], &log[2], 1);
    assert_eq!(log[3], "resume 2");
}

#[test]
fn apply_save_current_runs_the_save_command() {
    let f = Fixture::new("standard");
    // Apply refuses a running VM: the current state is off.
    ok(&["vm", "set", f.vm(), "--state", "off"]);
    ok(&["checkpoint", "create", f.vm(), "base"]);
    ok(&[
        "checkpoint",
        "apply",
        f.vm(),
        "base",
        "--save-current",
        "kept",
        "--save-memory-cmd",
        &f.save(&format!(
            "printf '{}' > \"$CKPT_MEMORY_STATE\"",
            MEMORY.trim_end()
        )),
        "--resume-cmd",
        &f.rec("resume", "true"),
    ]);
    let c = f.entry("kept");
    let mem = std::fs::read(c["saved_state"].as_str().expect("saved_state")).expect("memory");
    assert_eq!(mem, MEMORY.trim_end().as_bytes());
    let log = f.log_lines();
    assert_eq!(log.len(), 3, "{log:?}");
    check_save_lines(&log[0], &log[1], 1);
    assert_eq!(log[2], "resume 2");
}

/// The holder's own memory hooks: a fixed memory state, counted.
#[derive(Default)]
struct HolderMemory {
    saved: usize,
    resumed: usize,
}

impl Hooks for HolderMemory {
    fn save_memory(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        self.saved += 1;
        out.write_all(b"HOLDER")?;
        Ok(true)
    }
    fn resume(&mut self) {
        self.resumed += 1;
    }
}

#[test]
fn held_vm_runs_the_clients_save_command_or_the_holders_hooks() {
    let f = Fixture::new("standard");
    let vm = Arc::new(Mutex::new(Vm::open(&f.vm).expect("open")));
    let hooks = Arc::new(Mutex::new(HolderMemory::default()));
    let shared: control::SharedHooks = hooks.clone();
    let server = control::serve(vm.clone(), Some(shared)).expect("serve");
    assert_eq!(vm.lock().unwrap().data().state, VmState::Running);

    // The client's commands: run here, at the holder's request.
    create_saves_memory(&f, "by-client", 0);
    {
        let h = hooks.lock().unwrap();
        assert_eq!((h.saved, h.resumed), (0, 0), "the holder's hooks ran");
    }
    // The holder's handle took it.
    assert!(vm.lock().unwrap().find("by-client").is_ok());

    // A failing save command: refused, resume ran, nothing left.
    std::fs::remove_file(&f.log).expect("rm log");
    let args = [
        "checkpoint",
        "create",
        f.vm(),
        "bad",
        "--save-memory-cmd",
        &f.save("exit 9"),
        "--resume-cmd",
        &f.rec("resume", "true"),
    ];
    let line = fails(&args, &run(&args));
    assert!(
        line.contains("save-memory command") && line.contains("status 9"),
        "{line}"
    );
    let log = f.log_lines();
    assert_eq!(log.len(), 3, "{log:?}");
    check_save_lines(&log[0], &log[1], 1);
    assert_eq!(log[2], "resume 1");
    assert_eq!(f.count(), 1);

    // No save command: the holder's hooks give the memory state.
    std::fs::remove_file(&f.log).expect("rm log");
    ok(&["checkpoint", "create", f.vm(), "by-holder"]);
    {
        let h = hooks.lock().unwrap();
        assert_eq!((h.saved, h.resumed), (1, 1));
    }
    let c = f.entry("by-holder");
    let mem = std::fs::read(c["saved_state"].as_str().expect("saved_state")).expect("memory");
    assert_eq!(mem, b"HOLDER");
    assert!(f.log_lines().is_empty());
    drop(server);
    f.assert_no_memory_temp();
}
