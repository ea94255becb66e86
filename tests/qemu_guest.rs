//! Smoke test of the tiny QEMU guest (`examples/qemu/build-guest.sh`)
//! booted from a libckpt VM served by the nbdkit plugin (`vm=DIR`):
//!
//! - the guest writes a file on its ext4 disk and syncs; the guest agent
//!   freezes the file system (a write in the guest waits meanwhile), reports
//!   "frozen", thaws; after `poweroff -f` and nbdkit's exit the host reads
//!   the file from the VM's disk with `ckpt convert` and `debugfs`;
//! - booted with `ckpt.agent=0`, nothing answers `guest-sync`.
//!
//! Prints the boot time (`CKPT_GUEST_ACCEL=tcg` forces software emulation).
//! Without QEMU, nbdkit, e2fsprogs or the guest's build tools it prints a
//! notice and passes, except under `CI=true`.

#![cfg(feature = "cli")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::guest::{accel, artifacts, ext4_vhdx, Console, Json};
use support::plugin::{have_plugin_header, plugin};
use support::{require_tools, run, tempdir};

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A VM folder with one 64 MiB ext4 disk, served by nbdkit, booted by QEMU.
struct Guest {
    qemu: Proc,
    nbdkit: Option<Proc>,
    console: Console,
    qga: PathBuf,
    disk: PathBuf,
}

/// Start nbdkit on `vm` and QEMU on its export "0"; wait for the guest's
/// ready line and print the boot time.
fn boot(dir: &Path, append: &str) -> Guest {
    let (kernel, initrd) = artifacts().expect("guest artifacts");
    let disk = dir.join("disk.vhdx");
    ext4_vhdx(&disk, 64);
    let vm = dir.join("vm");
    support::cli::ok(&[
        "vm",
        "create",
        vm.to_str().expect("UTF-8 path"),
        "--name",
        "guest",
        "--disk",
        disk.to_str().expect("UTF-8 path"),
    ]);
    let nbd = dir.join("nbd.sock");
    let nbdkit = Command::new("nbdkit")
        .arg("-f")
        .arg("-U")
        .arg(&nbd)
        .arg(plugin())
        .arg(format!("vm={}", vm.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start nbdkit");
    let nbdkit = Proc(nbdkit);
    let start = Instant::now();
    while !nbd.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nbdkit did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (serial, qga, qmp) = (
        dir.join("serial.sock"),
        dir.join("qga.sock"),
        dir.join("qmp.sock"),
    );
    let accel = accel();
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            &accel,
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet {append}"))
        .arg("-drive")
        .arg(format!(
            "file=nbd+unix:///0?socket={},format=raw,if=virtio,cache=none",
            nbd.display()
        ))
        .arg("-chardev")
        .arg(format!(
            "socket,id=ser0,path={},server=on,wait=off",
            serial.display()
        ))
        .args(["-serial", "chardev:ser0"])
        .arg("-chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=qga0",
            qga.display()
        ))
        .args([
            "-device",
            "virtio-serial",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let qemu = Proc(qemu);
    let t0 = Instant::now();
    let mut console = Console::connect(&serial);
    Json::qmp(&qmp)
        .call("query-status", json!({}), Duration::from_secs(10))
        .expect("QMP query-status");
    console.wait_for("CKPT-GUEST-READY", Duration::from_secs(90));
    eprintln!(
        "guest booted in {:.1} s (accel {accel})",
        t0.elapsed().as_secs_f64()
    );
    Guest {
        qemu,
        nbdkit: Some(nbdkit),
        console,
        qga,
        disk,
    }
}

impl Guest {
    /// `poweroff -f` in the guest; wait for QEMU to exit, then stop nbdkit
    /// (SIGTERM: the plugin flushes and closes the VM).
    fn poweroff(&mut self) {
        self.console.send("poweroff -f");
        let start = Instant::now();
        while self.qemu.0.try_wait().expect("wait for qemu").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "QEMU still runs after poweroff -f"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut nbdkit = self.nbdkit.take().expect("nbdkit runs");
        run(Command::new("kill").arg(nbdkit.0.id().to_string()));
        let status = nbdkit.0.wait().expect("wait for nbdkit");
        assert!(status.success(), "nbdkit exited with {status}");
    }
}

/// The tools this file needs; `false` (with a notice) outside CI.
fn tools() -> bool {
    require_tools(&["qemu-system-x86_64", "nbdkit", "mkfs.ext4", "debugfs", "cc"])
        && have_plugin_header()
        && artifacts().is_some()
}

const T: Duration = Duration::from_secs(20);

#[test]
fn guest_writes_freezes_and_the_host_reads_its_file() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let mut g = boot(dir.path(), "");
    let (out, st) = g.console.run("grep ' /mnt ' /proc/mounts", T);
    assert_eq!(st, 0, "/mnt is not mounted: {out}");
    let (_, st) = g
        .console
        .run("echo hello-from-the-guest > /mnt/hello.txt && sync", T);
    assert_eq!(st, 0);

    let mut qga = Json::qga(&g.qga);
    qga.sync(7, Duration::from_secs(30))
        .expect("the agent answers guest-sync");
    qga.call("guest-ping", json!({}), T).expect("guest-ping");
    let frozen = qga
        .call("guest-fsfreeze-freeze", json!({}), T)
        .expect("freeze");
    assert!(
        frozen.as_u64().unwrap_or(0) >= 1,
        "froze {frozen} file systems"
    );
    let status = qga
        .call("guest-fsfreeze-status", json!({}), T)
        .expect("status");
    assert_eq!(status, json!("frozen"));
    // A write to the frozen file system waits until the thaw.
    g.console
        .run("(echo late > /mnt/late.txt; touch /tmp/wrote) & true", T);
    let (_, st) = g.console.run("sleep 1; test -e /tmp/wrote", T);
    assert_eq!(st, 1, "a write landed on a frozen file system");
    let thawed = qga.call("guest-fsfreeze-thaw", json!({}), T).expect("thaw");
    assert!(thawed.as_u64().unwrap_or(0) >= 1, "thawed {thawed}");
    let status = qga
        .call("guest-fsfreeze-status", json!({}), T)
        .expect("status");
    assert_eq!(status, json!("thawed"));
    let (_, st) = g.console.run("wait; test -e /tmp/wrote && sync", T);
    assert_eq!(
        st, 0,
        "the write waiting on the freeze did not finish after the thaw"
    );
    g.poweroff();

    let raw = dir.path().join("disk.img");
    support::cli::ok(&[
        "convert",
        g.disk.to_str().expect("UTF-8"),
        raw.to_str().expect("UTF-8"),
    ]);
    for (file, want) in [
        ("/hello.txt", "hello-from-the-guest\n"),
        ("/late.txt", "late\n"),
    ] {
        let got = run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {file}"))
            .arg(&raw));
        assert_eq!(got, want, "{file} on the VM's disk");
    }
}

#[test]
fn without_the_agent_guest_sync_times_out() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let mut g = boot(dir.path(), "ckpt.agent=0");
    let mut qga = Json::qga(&g.qga);
    let err = qga
        .sync(1, Duration::from_secs(3))
        .expect_err("guest-sync answered without an agent");
    assert!(err.contains("no answer"), "unexpected error: {err}");
    let (out, _) = g.console.run("ps", T);
    assert!(
        !out.contains("qemu-ga"),
        "qemu-ga runs with ckpt.agent=0:\n{out}"
    );
    g.poweroff();
}
