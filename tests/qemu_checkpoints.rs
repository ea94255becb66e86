//! Hyper-V's checkpoint demonstration on a real running Linux guest, through
//! the launcher `examples/qemu/ckpt-qemu` (nbdkit holds the VM and serves
//! its disk live; checkpoints go through the control channel; the hooks
//! drive QMP and the guest agent):
//!
//! 1. the guest writes a file and syncs, and keeps a value only in its
//!    shell's memory;
//! 2. a standard checkpoint; both change; apply: the guest runs on, the
//!    file is back and so is the in-memory value;
//! 3. production (the agent freezes the file system); both change; apply:
//!    the VM is off; booted, the file holds what was synced before the
//!    checkpoint and the in-memory value is gone;
//! 4. a checkpoint deleted (merged live) while the guest appends to a file
//!    and syncs: every line it wrote is there, in order;
//! 6. checkpoints disabled: refused, the guest runs on unchanged; with
//!    the guest agent gone, production falls back to standard (the reason
//!    recorded, the memory kept) and production-only refuses;
//! 5. a checkpoint exported (while the guest runs) and the export booted as
//!    a VM of its own: the checkpoint's file, nothing written after it.
//!
//! Software emulation unless `CKPT_GUEST_ACCEL` says otherwise. Without the
//! tools it prints a notice and passes, except under `CI=true`.

#![cfg(feature = "cli")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::guest::{accel, artifacts, ext4_vhdx, Console};
use support::plugin::{have_plugin_header, plugin};
use support::{require_tools, tempdir};

const T: Duration = Duration::from_secs(60);

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/qemu/ckpt-qemu")
}

/// Run the launcher; its status and output.
fn ckq(args: &[&str]) -> (bool, String) {
    let accel = accel();
    let accel = accel.split(',').next().unwrap_or("tcg").to_string();
    let out = Command::new(launcher())
        .args(args)
        .env("CKPT", env!("CARGO_BIN_EXE_ckpt"))
        .env("CKPT_NBDKIT_PLUGIN", plugin())
        .env("CKPT_QEMU_ACCEL", accel)
        .output()
        .expect("run ckpt-qemu");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ckq_ok(args: &[&str]) -> String {
    let (ok, text) = ckq(args);
    assert!(ok, "ckpt-qemu {args:?} failed:\n{text}");
    text
}

/// Stops QEMU and nbdkit whatever happens.
struct Shutdown(String);

impl Drop for Shutdown {
    fn drop(&mut self) {
        let _ = ckq(&["shutdown", &self.0]);
    }
}

fn console(vm: &str) -> Console {
    let mut c = Console::connect(&Path::new(vm).join("qemu/console.sock"));
    // A line of its own, so that the next command starts clean.
    c.send("");
    c
}

fn sh(c: &mut Console, cmd: &str) -> String {
    let (out, status) = c.run(cmd, T);
    assert_eq!(status, 0, "{cmd}: {out}");
    out.trim().to_string()
}

fn wait_ready(vm: &str) {
    let log = Path::new(vm).join("qemu/console.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("CKPT-GUEST-READY") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not boot; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// First start of `vm` on the test guest; its console once it is ready.
fn boot(vm: &str, kernel: &Path, initrd: &Path) -> Console {
    let (k, i) = (
        kernel.to_str().expect("UTF-8"),
        initrd.to_str().expect("UTF-8"),
    );
    ckq_ok(&["start", vm, "--kernel", k, "--initrd", i]);
    wait_ready(vm);
    console(vm)
}

fn show(vm: &str) -> serde_json::Value {
    let out = support::cli::ok(&["vm", "show", vm, "--json"]);
    serde_json::from_slice(&out.stdout).expect("vm show --json")
}

fn list(vm: &str) -> serde_json::Value {
    let list = support::cli::ok_text(&["checkpoint", "list", vm, "--json"]);
    serde_json::from_str(&list).expect("list --json")
}

/// The checkpoint `name` in `checkpoint list --json`.
fn checkpoint(vm: &str, name: &str) -> serde_json::Value {
    let list = list(vm);
    list["checkpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
}

#[test]
fn hyper_v_checkpoint_semantics_on_a_running_guest() {
    if !(require_tools(&["qemu-system-x86_64", "nbdkit", "mkfs.ext4", "python3", "cc"])
        && have_plugin_header()
        && artifacts().is_some())
    {
        return;
    }
    let (kernel, initrd) = artifacts().expect("guest artifacts");
    let dir = tempdir();
    let disk = dir.path().join("disk.vhdx");
    ext4_vhdx(&disk, 64);
    let vm_path = dir.path().join("vm");
    let vm = vm_path.to_str().expect("UTF-8 path").to_string();
    let disk_s = disk.to_str().expect("UTF-8 path");
    support::cli::ok(&[
        "vm",
        "create",
        &vm,
        "--name",
        "demo",
        "--disk",
        disk_s,
        "--memory",
        "256",
        "--checkpoint-type",
        "standard",
    ]);
    let _off = Shutdown(vm.clone());
    let mut c = boot(&vm, &kernel, &initrd);

    // 1-2. Standard: the file and the in-memory value come back.
    sh(&mut c, "echo one > /mnt/f && sync && X=mem-one");
    ckq_ok(&["checkpoint", &vm, "standard-1"]);
    sh(&mut c, "echo two > /mnt/f && sync && X=mem-two");
    ckq_ok(&["apply", &vm, "standard-1"]);
    assert_eq!(show(&vm)["state"], "running");
    let mut c = console(&vm);
    assert_eq!(sh(&mut c, "cat /mnt/f; echo \"X=$X\""), "one\nX=mem-one");

    // 3. Production: frozen, no memory; apply leaves the VM off.
    support::cli::ok(&["vm", "set", &vm, "--checkpoint-type", "production"]);
    sh(&mut c, "echo three > /mnt/f && sync && X=mem-three");
    ckq_ok(&["checkpoint", &vm, "production-1"]);
    let p = checkpoint(&vm, "production-1");
    assert_eq!(p["type"], "production", "{p}");
    assert_eq!(p["memory_kept"], false, "{p}");
    sh(&mut c, "echo four > /mnt/f && sync && X=mem-four");
    ckq_ok(&["apply", &vm, "production-1"]);
    assert_eq!(show(&vm)["state"], "off");
    // The launcher appends to the console log: the next boot's ready line
    // is to be waited for, not the first one's.
    std::fs::remove_file(vm_path.join("qemu/console.log")).expect("remove the console log");
    ckq_ok(&["start", &vm]);
    wait_ready(&vm);
    let mut c = console(&vm);
    assert_eq!(sh(&mut c, "cat /mnt/f; echo \"X=$X\""), "three\nX=");

    // 4. A live delete while the guest appends and syncs.
    c.send("i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo line$i >> /mnt/log; sync; done &");
    ckq_ok(&["checkpoint", &vm, "during"]);
    support::cli::ok(&["checkpoint", "delete", &vm, "standard-1"]);
    support::cli::ok(&["checkpoint", "delete", &vm, "during"]);
    sh(&mut c, "wait");
    let lines = sh(&mut c, "cat /mnt/log");
    let want: Vec<String> = (1..=400).map(|i| format!("line{i}")).collect();
    assert_eq!(lines, want.join("\n"));

    // 6. Disabled: refused, the guest runs on unchanged.
    support::cli::ok(&["vm", "set", &vm, "--checkpoint-type", "disabled"]);
    sh(&mut c, "X=mem-six");
    let (ok, text) = ckq(&["checkpoint", &vm, "refused"]);
    assert!(!ok && text.contains("disabled"), "{text}");
    assert_eq!(sh(&mut c, "cat /mnt/f; echo \"X=$X\""), "three\nX=mem-six");
    assert_eq!(show(&vm)["state"], "running");

    // 6b. The agent gone: production falls back to standard (the reason
    // recorded, the memory kept); production-only refuses.
    sh(
        &mut c,
        "killall qemu-ga && while pidof qemu-ga > /dev/null; do sleep 0.1; done",
    );
    support::cli::ok(&["vm", "set", &vm, "--checkpoint-type", "production"]);
    ckq_ok(&["checkpoint", &vm, "fallback"]);
    let f = checkpoint(&vm, "fallback");
    assert_eq!(f["type"], "standard", "{f}");
    assert_eq!(f["requested_type"], "production", "{f}");
    assert_eq!(f["memory_kept"], true, "{f}");
    let reason = f["fallback_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("guest agent does not answer"), "{f}");
    assert_eq!(sh(&mut c, "cat /mnt/f; echo \"X=$X\""), "three\nX=mem-six");
    support::cli::ok(&["vm", "set", &vm, "--checkpoint-type", "production-only"]);
    let (ok, text) = ckq(&["checkpoint", &vm, "refused"]);
    assert!(
        !ok && text.contains("production-only checkpoint refused"),
        "{text}"
    );
    assert!(list(&vm)["checkpoints"]
        .as_array()
        .is_some_and(|a| a.iter().all(|c| c["name"] != "refused")));
    assert_eq!(sh(&mut c, "cat /mnt/f; echo \"X=$X\""), "three\nX=mem-six");
    assert_eq!(show(&vm)["state"], "running");

    // 5. Export a checkpoint (while the guest runs) and boot the export as
    // a VM of its own: the checkpoint's data, nothing written after it.
    let export = dir.path().join("export");
    let text = support::cli::ok_text(&[
        "checkpoint",
        "export",
        &vm,
        "production-1",
        export.to_str().expect("UTF-8 path"),
    ]);
    let exported = export.join("disk.vhdx");
    assert!(exported.is_file(), "no {exported:?}; export said: {text}");
    drop(_off); // the first VM off and nbdkit gone: the CPU for the next
    let vm2 = dir
        .path()
        .join("exported")
        .to_str()
        .expect("UTF-8")
        .to_string();
    support::cli::ok(&[
        "vm",
        "create",
        &vm2,
        "--name",
        "from-export",
        "--disk",
        exported.to_str().expect("UTF-8 path"),
        "--memory",
        "256",
    ]);
    let _off2 = Shutdown(vm2.clone());
    let mut c = boot(&vm2, &kernel, &initrd);
    assert_eq!(
        sh(
            &mut c,
            "cat /mnt/f; [ -e /mnt/log ] && echo log || echo no-log"
        ),
        "three\nno-log"
    );
}
