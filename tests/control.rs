//! The control channel (`ckpt::checkpoint::control`): a process holds a VM
//! open and serves it; the `ckpt` tool run from another process carries out
//! its checkpoint and `vm show|set` commands through the holder. Judged
//! against the same commands run offline on a twin VM folder (same output,
//! exit codes and error lines), against QEMU for the exported disks, and
//! with the holder's own handle (the operations really ran there: the VM's
//! lock stays the holder's all along). Also: a user other than the
//! holder's is refused by the channel, a killed holder's stale socket is
//! replaced by the next holder and ignored by the tool, and progress of a
//! delete reaches the client.

#![cfg(feature = "cli")]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use ckpt::checkpoint::control::{self, Client};
use ckpt::checkpoint::{Hooks, Vm};
use ckpt::{Disk, OpenMode};

use support::cli::{ckpt, ok, run, s, stderr, stdout, write_at};
use support::{pattern, qemu_reads, MIB};

/// Virtual sizes of the VM's two disks.
const SIZES: [u64; 2] = [2 * MIB, MIB];

/// A VM folder `vm/` over two disks in `disks/`, with known data.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    vm: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = support::tempdir();
        let root = std::fs::canonicalize(tmp.path()).expect("canonical temp dir");
        std::fs::create_dir(root.join("disks")).expect("mkdir disks");
        let disks = [root.join("disks/os.vhdx"), root.join("disks/data.vhdx")];
        for (d, size) in disks.iter().zip(SIZES) {
            ok(&[
                "create",
                s(d),
                "--size",
                &size.to_string(),
                "--block-size",
                "1M",
            ]);
        }
        write_at(&disks[0], 0, &pattern(1, 0, 64 << 10));
        write_at(&disks[1], 512 << 10, &pattern(2, 512 << 10, 64 << 10));
        let vm = root.join("vm");
        ok(&[
            "vm",
            "create",
            s(&vm),
            "--name",
            "web",
            "--disk",
            s(&disks[0]),
            "--disk",
            s(&disks[1]),
        ]);
        Fixture {
            _tmp: tmp,
            root,
            vm,
        }
    }

    /// The current disk `k` (the file the VM writes to now).
    fn current_disk(&self, k: usize) -> PathBuf {
        Vm::load(&self.vm).expect("load").current.disks[k].clone()
    }

    /// The checkpoint ids (in tree order) and the VM's id.
    fn ids(&self) -> Vec<String> {
        let d = Vm::load(&self.vm).expect("load");
        let mut ids: Vec<String> = d.checkpoints.iter().map(|c| c.id.clone()).collect();
        ids.extend(d.id.clone());
        ids
    }
}

/// A `ckpt vm hold DIR` child process.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    fn start(vm: &Path) -> Holder {
        let mut child = ckpt()
            .args(["vm", "hold", s(vm)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ckpt vm hold");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the holder's first line");
        if !line.starts_with("holding ") {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("the holder did not start: {line:?} {}", stderr(&out));
        }
        assert!(line.contains(control::SOCKET_FILE), "{line}");
        Holder { child, stdin }
    }

    /// End its standard input: it stops and removes its socket.
    fn stop(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().expect("wait for the holder");
        assert!(st.success(), "the holder failed: {st:?}");
    }

    /// `kill -9`.
    fn kill(mut self) {
        self.child.kill().expect("kill -9 the holder");
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `text` with the fixture's root and the ids of `ids` written the same
/// way for both twins, and the ages (which tick) left out.
fn norm(text: &str, root: &Path, ids: &[String]) -> String {
    let mut t = text.replace(s(root), "ROOT");
    for (k, id) in ids.iter().enumerate() {
        t = t.replace(id.as_str(), &format!("ID{k}"));
    }
    // "12s old" → "N old"; JSON ages and creation times → 0.
    let mut out = String::new();
    for line in t.lines() {
        let mut l = line.to_string();
        for key in ["\"age_seconds\": ", "\"created\": "] {
            if let Some(at) = l.find(key) {
                let start = at + key.len();
                let end = l[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(l.len(), |e| start + e);
                l.replace_range(start..end, "0");
            }
        }
        while let Some(at) = l.find(" old,") {
            let start = l[..at].rfind(' ').map_or(0, |p| p + 1);
            l.replace_range(start..at + 4, "N ol_");
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// One command on both twins: through the holder (`live`) and offline
/// (`offline`); `args` with `{vm}` and `{root}` put in for each. Both
/// outcomes must be the same: exit status, stdout and stderr (normalized).
/// Returns the live run's output.
fn both(live: &Fixture, offline: &Fixture, ids: &mut Ids, args: &[&str]) -> Output {
    let fill = |f: &Fixture| -> Vec<String> {
        args.iter()
            .map(|a| a.replace("{vm}", s(&f.vm)).replace("{root}", s(&f.root)))
            .collect()
    };
    let (la, oa) = (fill(live), fill(offline));
    let l = run(&la.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(&oa.iter().map(String::as_str).collect::<Vec<_>>());
    ids.learn(live, offline);
    assert_eq!(
        l.status.code(),
        o.status.code(),
        "{args:?}: exit status\nlive: {}\noffline: {}",
        stderr(&l),
        stderr(&o)
    );
    for (what, lt, ot) in [
        ("stdout", stdout(&l), stdout(&o)),
        ("stderr", stderr(&l), stderr(&o)),
    ] {
        assert_eq!(
            norm(&lt, &live.root, &ids.live),
            norm(&ot, &offline.root, &ids.offline),
            "{args:?}: {what} differs"
        );
    }
    l
}

/// The ids of both twins, matched by their order of appearance.
#[derive(Default)]
struct Ids {
    live: Vec<String>,
    offline: Vec<String>,
}

impl Ids {
    fn learn(&mut self, live: &Fixture, offline: &Fixture) {
        for (a, b) in live.ids().into_iter().zip(offline.ids()) {
            if !self.live.contains(&a) {
                self.live.push(a);
                self.offline.push(b);
            }
        }
    }
}

/// The VM's lock is the holder's: opening it here is refused.
fn assert_held(f: &Fixture) {
    let Err(e) = Vm::open(&f.vm) else {
        panic!("the VM is not held");
    };
    assert_eq!(e.kind(), ckpt::ErrorKind::Busy, "{e}");
}

#[test]
fn cli_through_the_holder_matches_offline() {
    let (live, offline) = (Fixture::new(), Fixture::new());
    let holder = Holder::start(&live.vm);
    assert!(live.vm.join(control::SOCKET_FILE).exists());
    let mut ids = Ids::default();
    ids.learn(&live, &offline);
    let q = ["--quiesce-cmd", "true", "--thaw-cmd", "true"];
    let cmd = |v: &[&'static str]| v.to_vec();
    let mut steps: Vec<Vec<&str>> = vec![
        [&["checkpoint", "create", "{vm}", "c1"][..], &q[..]].concat(),
        cmd(&["checkpoint", "list", "{vm}"]),
    ];
    for step in steps.drain(..) {
        assert_eq!(
            both(&live, &offline, &mut ids, &step).status.code(),
            Some(0)
        );
        assert_held(&live);
    }
    // New data in the current state of both twins.
    for f in [&live, &offline] {
        write_at(&f.current_disk(0), MIB, &pattern(3, MIB, 64 << 10));
    }
    let steps: Vec<Vec<&str>> = vec![
        [&["checkpoint", "create", "{vm}", "c2"][..], &q[..]].concat(),
        // The client's hooks, asked by the holder: a quiesce that fails
        // falls back to standard, a thaw that fails is an error after the
        // checkpoint was taken; both read as offline (a running VM is
        // quiesced, an off one is not).
        cmd(&["vm", "set", "{vm}", "--state", "running"]),
        cmd(&[
            "checkpoint",
            "create",
            "{vm}",
            "noq",
            "--quiesce-cmd",
            "echo frozen-fs >&2; false",
        ]),
        cmd(&[
            "checkpoint",
            "create",
            "{vm}",
            "not",
            "--quiesce-cmd",
            "true",
            "--thaw-cmd",
            "false",
        ]),
        cmd(&["vm", "set", "{vm}", "--state", "off"]),
        cmd(&["checkpoint", "delete", "{vm}", "noq"]),
        cmd(&["checkpoint", "delete", "{vm}", "not"]),
        cmd(&["checkpoint", "list", "{vm}"]),
        cmd(&["checkpoint", "list", "{vm}", "--json"]),
        cmd(&["checkpoint", "rename", "{vm}", "c2", "c2b"]),
        // Refusals: a taken name, an unknown checkpoint, an empty name.
        cmd(&["checkpoint", "rename", "{vm}", "c2b", "c1"]),
        cmd(&["checkpoint", "delete", "{vm}", "nope"]),
        cmd(&["checkpoint", "rename", "{vm}", "", "x"]),
        cmd(&["checkpoint", "export", "{vm}", "c1", "{root}/export-c1"]),
        cmd(&[
            "checkpoint",
            "export",
            "{vm}",
            "--current",
            "{root}/export-now",
        ]),
        cmd(&["checkpoint", "export", "{vm}", "c1", "{root}/export-c1"]),
        cmd(&[
            "vm",
            "set",
            "{vm}",
            "--memory",
            "2048",
            "--cpus",
            "2",
            "--age-warning",
            "1d",
        ]),
        cmd(&["vm", "set", "{vm}", "--state", "running"]),
        cmd(&["checkpoint", "apply", "{vm}", "c1"]),
        cmd(&["checkpoint", "revert", "{vm}"]),
        cmd(&[
            "vm",
            "set",
            "{vm}",
            "--state",
            "off",
            "--checkpoint-type",
            "standard",
        ]),
        [
            &[
                "checkpoint",
                "apply",
                "{vm}",
                "c1",
                "--save-current",
                "kept",
            ][..],
            &q[..2],
        ]
        .concat(),
        cmd(&["checkpoint", "list", "{vm}"]),
        cmd(&["checkpoint", "revert", "{vm}"]),
        cmd(&["checkpoint", "delete", "{vm}", "c2b"]),
        cmd(&["checkpoint", "create", "{vm}", "c3"]),
        cmd(&["checkpoint", "delete", "{vm}", "c1", "--subtree"]),
        cmd(&["checkpoint", "list", "{vm}", "--json"]),
        cmd(&["vm", "show", "{vm}"]),
        cmd(&["vm", "show", "{vm}", "--json"]),
    ];
    // The exit status each step has (the same offline, checked in `both`).
    let expected = [
        0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(steps.len(), expected.len());
    for (step, code) in steps.iter().zip(expected) {
        let o = both(&live, &offline, &mut ids, step);
        assert_eq!(o.status.code(), Some(code), "{step:?}: {}", stderr(&o));
        if code == 1 {
            assert_eq!(stderr(&o).lines().count(), 1, "{step:?}: {}", stderr(&o));
        }
        // The client's hooks really ran, at the holder's request.
        if step.starts_with(&["checkpoint", "create", "{vm}", "noq"]) {
            let out = stdout(&o);
            assert!(
                out.contains("fell back: quiesce failed: command exited with status 1: frozen-fs"),
                "{out}"
            );
        }
        if step.starts_with(&["checkpoint", "create", "{vm}", "not"]) {
            assert!(
                stderr(&o).contains("the thaw command failed"),
                "{}",
                stderr(&o)
            );
        }
        assert_held(&live);
    }
    // The exports, read by QEMU: c1 has only the first data, the current
    // state of then also the write after c1.
    let mut os = vec![0u8; SIZES[0] as usize];
    os[..64 << 10].copy_from_slice(&pattern(1, 0, 64 << 10));
    let mut data = vec![0u8; SIZES[1] as usize];
    data[512 << 10..576 << 10].copy_from_slice(&pattern(2, 512 << 10, 64 << 10));
    qemu_reads(&live.root.join("export-c1/os.vhdx"), &os, &live.root);
    qemu_reads(&live.root.join("export-c1/data.vhdx"), &data, &live.root);
    os[MIB as usize..(MIB as usize + (64 << 10))].copy_from_slice(&pattern(3, MIB, 64 << 10));
    qemu_reads(&live.root.join("export-now/os.vhdx"), &os, &live.root);
    qemu_reads(&live.root.join("export-now/data.vhdx"), &data, &live.root);

    // Busy: a current disk open for writing here refuses a checkpoint the
    // same way through the holder as offline, and changes nothing.
    let before = std::fs::read(live.vm.join("vm.json")).expect("read vm.json");
    let disks: Vec<Disk> = [&live, &offline]
        .iter()
        .map(|f| Disk::open(f.current_disk(0), OpenMode::ReadWrite).expect("open"))
        .collect();
    let o = both(
        &live,
        &offline,
        &mut ids,
        &["checkpoint", "create", "{vm}", "busy"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("busy"), "{}", stderr(&o));
    drop(disks);
    assert_eq!(
        std::fs::read(live.vm.join("vm.json")).expect("read"),
        before
    );
    // The same request again, the disk let go: it goes through.
    let o = both(
        &live,
        &offline,
        &mut ids,
        &["checkpoint", "create", "{vm}", "busy"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    holder.stop();
    assert!(!live.vm.join(control::SOCKET_FILE).exists());
    // The holder gone, the tool works offline.
    ok(&["checkpoint", "create", s(&live.vm), "after"]);
}

/// The holder's own hooks: count the quiesces and thaws.
#[derive(Default)]
struct Counting {
    quiesced: usize,
    thawed: usize,
}

impl Hooks for Counting {
    fn quiesce(&mut self) -> Result<(), String> {
        self.quiesced += 1;
        Ok(())
    }
    fn thaw(&mut self) {
        self.thawed += 1;
    }
}

#[test]
fn the_holders_hooks_quiesce_unless_the_client_brings_its_own() {
    let f = Fixture::new();
    let vm = Arc::new(Mutex::new(Vm::open(&f.vm).expect("open")));
    let hooks = Arc::new(Mutex::new(Counting::default()));
    let shared: control::SharedHooks = hooks.clone();
    let server = control::serve(vm.clone(), Some(shared)).expect("serve");
    // A running VM is quiesced for a production checkpoint.
    vm.lock()
        .unwrap()
        .set_state(ckpt::checkpoint::VmState::Running)
        .expect("running");
    let out = stdout(&ok(&["checkpoint", "create", s(&f.vm), "by-holder"]));
    assert!(out.ends_with(": production\n"), "{out}");
    {
        let h = hooks.lock().unwrap();
        assert_eq!((h.quiesced, h.thawed), (1, 1));
    }
    // The client's command quiesces instead: the holder's hooks are not called.
    let out = stdout(&ok(&[
        "checkpoint",
        "create",
        s(&f.vm),
        "by-client",
        "--quiesce-cmd",
        "true",
    ]));
    assert!(out.ends_with(": production\n"), "{out}");
    {
        let h = hooks.lock().unwrap();
        assert_eq!((h.quiesced, h.thawed), (1, 1));
    }
    // A request waits while the holder uses its VM, then runs.
    let guard = vm.lock().unwrap();
    let child = ckpt()
        .args(["checkpoint", "rename", s(&f.vm), "by-holder", "waited"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ckpt");
    // The holder works on its handle meanwhile (the request cannot run).
    assert!(guard.find("by-holder").is_ok());
    drop(guard);
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(vm.lock().unwrap().find("waited").is_ok());
    drop(server);
}

/// Progress lines and the holder's in-memory `Vm` seen in-process.
struct Recorder(Vec<(u64, u64)>);

impl Hooks for Recorder {
    fn progress(&mut self, done: u64, total: u64) -> bool {
        self.0.push((done, total));
        true
    }
}

#[test]
fn a_thread_of_the_holder_serves_and_stops() {
    let f = Fixture::new();
    let vm = Arc::new(Mutex::new(Vm::open(&f.vm).expect("open")));
    let server = control::serve(vm.clone(), None).expect("serve");
    assert_eq!(server.path(), f.vm.join(control::SOCKET_FILE));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.path())
            .expect("socket")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A second server on the same folder is refused.
    let e = control::serve(vm.clone(), None).expect_err("second server");
    assert_eq!(e.kind(), ckpt::ErrorKind::Busy, "{e}");

    ok(&["checkpoint", "create", s(&f.vm), "a"]);
    // The holder's own handle has it: the operation ran there.
    assert!(vm.lock().unwrap().find("a").is_ok());
    write_at(&f.current_disk(0), 0, &pattern(9, 0, 3 * MIB as usize / 2));
    ok(&["checkpoint", "create", s(&f.vm), "b"]);

    // A client in-process: progress of a delete arrives, errors keep kind.
    let mut c = Client::connect(&f.vm)
        .expect("connect")
        .expect("a live channel");
    assert_eq!(c.vm_name(), "web");
    let e = c
        .call(
            "checkpoint.delete",
            serde_json::json!({"name": "zz"}),
            &mut Recorder(vec![]),
        )
        .expect_err("unknown checkpoint");
    assert_eq!(e.kind(), ckpt::ErrorKind::NotFound);
    let e = c
        .call(
            "checkpoint.frobnicate",
            serde_json::json!({}),
            &mut Recorder(vec![]),
        )
        .expect_err("unknown op");
    assert_eq!(e.kind(), ckpt::ErrorKind::InvalidArgument);
    let mut rec = Recorder(vec![]);
    let r = c
        .call(
            "checkpoint.delete",
            serde_json::json!({"name": "a"}),
            &mut rec,
        )
        .expect("delete a");
    assert!(!rec.0.is_empty(), "no progress reached the client");
    assert!(rec.0.iter().all(|(d, t)| d <= t));
    let names: Vec<&str> = r["vm"]["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["b"]);
    // The holder keeps using its handle between requests.
    vm.lock()
        .unwrap()
        .rename("b", "b2")
        .expect("rename by the holder");
    let list: Value =
        serde_json::from_slice(&ok(&["checkpoint", "list", s(&f.vm), "--json"]).stdout)
            .expect("json");
    assert_eq!(list["checkpoints"][0]["name"], "b2");
    drop(c);

    drop(server);
    assert!(!f.vm.join(control::SOCKET_FILE).exists());
    assert!(Client::connect(&f.vm).expect("connect").is_none());
    drop(vm);
    ok(&["checkpoint", "delete", s(&f.vm), "b2"]);
}

/// Run the tool as uid/gid 65534.
fn run_as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ckpt"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}

#[test]
fn another_user_is_refused() {
    let f = Fixture::new();
    // Let uid 65534 reach and read the folder, so that a refusal comes
    // from the channel, not from file modes.
    for p in [f.root.as_path(), &f.root.join("disks"), &f.vm] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let holder = Holder::start(&f.vm);
    let before = std::fs::read(f.vm.join("vm.json")).expect("read vm.json");
    let sock = f.vm.join(control::SOCKET_FILE);

    // The socket's mode keeps the other user out...
    let o = run_as_nobody(&["checkpoint", "create", s(&f.vm), "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("may not use"), "{}", stderr(&o));
    // ... and with the mode opened, the holder's peer check does.
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod socket");
    for args in [
        vec!["checkpoint", "create", s(&f.vm), "x"],
        vec!["checkpoint", "rename", s(&f.vm), "x", "y"],
        vec!["vm", "set", s(&f.vm), "--cpus", "4"],
    ] {
        let o = run_as_nobody(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: permission denied: the VM's control channel serves only its owner (uid 0); this request came from uid 65534"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(f.vm.join("vm.json")).expect("read"), before);
    // The owner is served.
    ok(&["checkpoint", "create", s(&f.vm), "mine"]);
    holder.stop();
}

#[test]
fn a_killed_holders_socket_is_replaced() {
    let f = Fixture::new();
    let sock = f.vm.join(control::SOCKET_FILE);
    let holder = Holder::start(&f.vm);
    ok(&["checkpoint", "create", s(&f.vm), "one"]);
    holder.kill();
    // The socket stays, dead.
    assert!(
        std::fs::symlink_metadata(&sock).is_ok(),
        "the stale socket is gone"
    );
    assert!(Client::connect(&f.vm).expect("connect").is_none());
    // The tool works offline.
    ok(&["checkpoint", "create", s(&f.vm), "two"]);
    let list = stdout(&ok(&["checkpoint", "list", s(&f.vm)]));
    assert!(list.contains("one") && list.contains("two"), "{list}");
    // The next holder replaces the socket and serves.
    let holder = Holder::start(&f.vm);
    ok(&["checkpoint", "rename", s(&f.vm), "two", "deux"]);
    assert_held(&f);
    holder.stop();
    assert!(std::fs::symlink_metadata(&sock).is_err());
    let list = stdout(&ok(&["checkpoint", "list", s(&f.vm)]));
    assert!(list.contains("deux"), "{list}");
}

#[test]
fn a_holder_without_a_channel_is_busy_and_nothing_changes() {
    let f = Fixture::new();
    // This process holds the VM (its lock) and offers no channel.
    let vm = Vm::open(&f.vm).expect("open");
    let before = std::fs::read(f.vm.join("vm.json")).expect("read vm.json");
    for args in [
        vec!["checkpoint", "create", s(&f.vm), "x"],
        vec!["vm", "set", s(&f.vm), "--cpus", "4"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).starts_with("error: busy"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(f.vm.join("vm.json")).expect("read"), before);
    drop(vm);
}

#[test]
fn the_c_api_serves_until_stopped_or_closed() {
    use ckpt::ffi::ckpt_status;
    use ckpt::ffi::vm::{
        ckpt_vm, ckpt_vm_checkpoint_count, ckpt_vm_close, ckpt_vm_open, ckpt_vm_serve_control,
        ckpt_vm_stop_control,
    };
    let f = Fixture::new();
    let dir = std::ffi::CString::new(s(&f.vm)).expect("C string");
    let mut vm: *mut ckpt_vm = std::ptr::null_mut();
    let sock = f.vm.join(control::SOCKET_FILE);
    // SAFETY: valid C strings and out pointers; the handle is used by this
    // thread only and closed once.
    unsafe {
        assert_eq!(ckpt_vm_open(dir.as_ptr(), &mut vm), ckpt_status::Ok);
        assert_eq!(
            ckpt_vm_serve_control(std::ptr::null_mut(), std::ptr::null()),
            ckpt_status::NullPointer
        );
        assert_eq!(ckpt_vm_serve_control(vm, std::ptr::null()), ckpt_status::Ok);
        assert_eq!(
            ckpt_vm_serve_control(vm, std::ptr::null()),
            ckpt_status::InvalidArgument
        );
        ok(&["checkpoint", "create", s(&f.vm), "from-cli"]);
        // The handle itself sees the new checkpoint.
        let mut n = 0usize;
        assert_eq!(ckpt_vm_checkpoint_count(vm, &mut n), ckpt_status::Ok);
        assert_eq!(n, 1);
        // Stopped: the socket goes, the handle still holds the VM.
        assert_eq!(ckpt_vm_stop_control(vm), ckpt_status::Ok);
        assert!(std::fs::symlink_metadata(&sock).is_err());
        let o = run(&["checkpoint", "create", s(&f.vm), "x"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).starts_with("error: busy"), "{}", stderr(&o));
        // Serving again, then closing stops it.
        assert_eq!(ckpt_vm_serve_control(vm, std::ptr::null()), ckpt_status::Ok);
        ok(&["checkpoint", "rename", s(&f.vm), "from-cli", "renamed"]);
        assert_eq!(ckpt_vm_close(vm), ckpt_status::Ok);
    }
    assert!(std::fs::symlink_metadata(&sock).is_err());
    let list = stdout(&ok(&["checkpoint", "list", s(&f.vm)]));
    assert!(list.contains("renamed"), "{list}");
}

/// Kills the holder at the first progress line of the request.
struct KillAtProgress(Option<Holder>);

impl Hooks for KillAtProgress {
    fn progress(&mut self, _done: u64, _total: u64) -> bool {
        if let Some(h) = self.0.take() {
            h.kill();
        }
        true
    }
}

#[test]
fn a_holder_killed_during_a_delete_leaves_a_vm_that_reconciles() {
    let f = Fixture::new();
    ok(&["checkpoint", "create", s(&f.vm), "a"]);
    write_at(&f.current_disk(0), 0, &pattern(9, 0, 3 * MIB as usize / 2));
    ok(&["checkpoint", "create", s(&f.vm), "b"]);
    let holder = Holder::start(&f.vm);
    let mut c = Client::connect(&f.vm)
        .expect("connect")
        .expect("a live channel");
    let mut hooks = KillAtProgress(Some(holder));
    let r = c.call(
        "checkpoint.delete",
        serde_json::json!({"name": "a"}),
        &mut hooks,
    );
    assert!(hooks.0.is_none(), "no progress came before the end: {r:?}");
    let e = r.expect_err("the holder was killed during the delete");
    assert_eq!(e.kind(), ckpt::ErrorKind::Busy, "{e}");
    // A stale socket; the next open reconciles (finishes or undoes).
    assert!(Client::connect(&f.vm).expect("connect").is_none());
    let vm = Vm::open(&f.vm).expect("reopen and reconcile");
    assert!(vm.find("b").is_ok());
    drop(vm);
    // Then an error and a retry: a retried delete through a new holder.
    let holder = Holder::start(&f.vm);
    let o = run(&["checkpoint", "delete", s(&f.vm), "a"]);
    let err = stderr(&o);
    assert!(
        o.status.success() || err.contains("no checkpoint called \"a\""),
        "{err}"
    );
    holder.stop();
    // Every state still reads as written, judged by QEMU on the exports.
    ok(&[
        "checkpoint",
        "export",
        s(&f.vm),
        "--current",
        s(&f.root.join("now")),
    ]);
    ok(&["checkpoint", "export", s(&f.vm), "b", s(&f.root.join("b"))]);
    let mut os = vec![0u8; SIZES[0] as usize];
    os[..3 * MIB as usize / 2].copy_from_slice(&pattern(9, 0, 3 * MIB as usize / 2));
    let mut data = vec![0u8; SIZES[1] as usize];
    data[512 << 10..576 << 10].copy_from_slice(&pattern(2, 512 << 10, 64 << 10));
    for d in ["now", "b"] {
        qemu_reads(&f.root.join(d).join("os.vhdx"), &os, &f.root);
        qemu_reads(&f.root.join(d).join("data.vhdx"), &data, &f.root);
    }
}

/// A holder whose next request runs with the crash counter armed on the
/// thread that carries it out; after a crash the handle is gone (as with
/// a killed process) until reopened.
struct Armed {
    vm: Mutex<Option<Vm>>,
    plan: Mutex<Option<u64>>,
    /// Events of the last armed request, and whether it crashed.
    seen: Mutex<(u64, bool)>,
}

impl control::HeldVm for Armed {
    fn with_vm(&self, f: &mut dyn FnMut(&mut Vm) -> ckpt::Result<Value>) -> ckpt::Result<Value> {
        let mut g = self.vm.lock().unwrap();
        let vm = g
            .as_mut()
            .ok_or_else(|| ckpt::Error::Busy("crashed".into()))?;
        let plan = self.plan.lock().unwrap().take();
        if let Some(n) = plan {
            ckpt::io::faults::arm(n, ckpt::io::Cut::Torn);
        }
        let r = f(vm);
        if let Some(n) = plan {
            let events = ckpt::io::faults::disarm();
            let crashed = events > n;
            *self.seen.lock().unwrap() = (events, crashed);
            if crashed {
                // The "process" dies here: no more writes through it.
                *g = None;
            }
        }
        r
    }
}

#[test]
fn a_delete_through_the_channel_cut_at_every_write_reopens_intact() {
    let mut os = vec![0u8; SIZES[0] as usize];
    os[..3 * MIB as usize / 2].copy_from_slice(&pattern(9, 0, 3 * MIB as usize / 2));
    let mut data = vec![0u8; SIZES[1] as usize];
    data[512 << 10..576 << 10].copy_from_slice(&pattern(2, 512 << 10, 64 << 10));
    let mut a_os = vec![0u8; SIZES[0] as usize];
    a_os[..64 << 10].copy_from_slice(&pattern(1, 0, 64 << 10));
    for n in 0.. {
        let f = Fixture::new();
        ok(&["checkpoint", "create", s(&f.vm), "a"]);
        write_at(&f.current_disk(0), 0, &pattern(9, 0, 3 * MIB as usize / 2));
        ok(&["checkpoint", "create", s(&f.vm), "b"]);
        let held = Arc::new(Armed {
            vm: Mutex::new(Some(Vm::open(&f.vm).expect("open"))),
            plan: Mutex::new(None),
            seen: Mutex::new((0, false)),
        });
        let server = control::serve_held(held.clone(), None).expect("serve");
        let mut c = Client::connect(&f.vm).expect("connect").expect("live");
        *held.plan.lock().unwrap() = Some(n);
        let r = c.call(
            "checkpoint.delete",
            serde_json::json!({"name": "a"}),
            &mut ckpt::checkpoint::NoHooks,
        );
        let (_, crashed) = *held.seen.lock().unwrap();
        drop(c);
        drop(server);
        drop(held);
        if !crashed {
            r.expect("the delete past its last write");
            assert!(n > 0, "no cut point was tried");
            break;
        }
        match r {
            // Cut after its commit: done, the tidy-up left as a warning.
            Ok(v) => assert!(
                !v["warnings"].as_array().expect("warnings").is_empty(),
                "cut at {n}: a crash after the commit without a warning"
            ),
            Err(e) => assert_ne!(e.kind(), ckpt::ErrorKind::InvalidArgument, "{e}"),
        }
        // Reopened: reconciled, "b" and the current state intact, "a"
        // either still there (undone) with its data or gone (finished).
        let vm = Vm::open(&f.vm).unwrap_or_else(|e| panic!("cut at {n}: reopen: {e}"));
        assert!(vm.find("b").is_ok(), "cut at {n}");
        let a_there = vm.find("a").is_ok_and(|c| !c.deleting);
        drop(vm);
        let now = f.root.join(format!("now{n}"));
        ok(&["checkpoint", "export", s(&f.vm), "--current", s(&now)]);
        qemu_reads(&now.join("os.vhdx"), &os, &f.root);
        qemu_reads(&now.join("data.vhdx"), &data, &f.root);
        let b = f.root.join(format!("b{n}"));
        ok(&["checkpoint", "export", s(&f.vm), "b", s(&b)]);
        qemu_reads(&b.join("os.vhdx"), &os, &f.root);
        if a_there {
            let a = f.root.join(format!("a{n}"));
            ok(&["checkpoint", "export", s(&f.vm), "a", s(&a)]);
            qemu_reads(&a.join("os.vhdx"), &a_os, &f.root);
        }
    }
}

#[test]
fn bad_requests_get_typed_errors_and_change_nothing() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let f = Fixture::new();
    let vm = Arc::new(Mutex::new(Vm::open(&f.vm).expect("open")));
    let server = control::serve(vm.clone(), None).expect("serve");
    let before = std::fs::read(f.vm.join("vm.json")).expect("read vm.json");
    let exchange = |lines: &[&str]| -> Vec<Value> {
        let mut s = UnixStream::connect(server.path()).expect("connect");
        for l in lines {
            s.write_all(l.as_bytes()).expect("write");
            s.write_all(b"\n").expect("write");
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        BufReader::new(s)
            .lines()
            .map(|l| serde_json::from_str(&l.expect("line")).expect("a JSON line"))
            .collect()
    };
    let kind = |v: &Value| {
        (
            v["ok"].clone(),
            v["kind"].as_str().unwrap_or("").to_string(),
        )
    };
    let r = exchange(&[
        r#"{"op": 5}"#,
        r#"{"op": "checkpoint.rename", "args": {"name": 1, "new_name": "x"}}"#,
        r#"{"op": "checkpoint.export", "args": {"name": null, "dest": "relative/dir"}}"#,
        r#"{"op": "checkpoint.create", "args": {"name": "m", "memory_state": "rel.bin"}}"#,
        r#"{"op": "vm.set", "args": {"cpus": -1}}"#,
        r#"{"op": "vm.set", "args": {"state": "paused"}}"#,
        r#"{"op": "nope"}"#,
        "not json",
        r#"{"op": "vm.show"}"#,
    ]);
    assert_eq!(r[0]["ckpt_control"], 1, "{:?}", r[0]);
    // Seven refused requests, then the line that is not JSON, whose
    // refusal ends the connection (the last request is not read).
    assert_eq!(r.len(), 1 + 8, "{r:?}");
    for v in &r[1..] {
        assert_eq!(
            kind(v),
            (Value::Bool(false), "InvalidArgument".into()),
            "{v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    assert!(!std::path::Path::new("relative/dir").exists());
    assert_eq!(std::fs::read(f.vm.join("vm.json")).expect("read"), before);
    // The server still serves.
    let r = exchange(&[r#"{"op": "checkpoint.list", "args": {}}"#]);
    assert_eq!(r[1]["ok"], true, "{:?}", r[1]);
    assert_eq!(
        r[1]["result"]["checkpoints"]["checkpoints"],
        serde_json::json!([])
    );
    drop(server);
}

#[test]
fn the_cli_exports_the_current_state_of_a_running_vm_through_its_holder() {
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    let f = Fixture::new();
    ok(&["checkpoint", "create", s(&f.vm), "a"]);
    let mut vm = Vm::open(&f.vm).expect("open");
    vm.set_state(ckpt::checkpoint::VmState::Running)
        .expect("running");
    let disk = vm.disk(0).expect("attach");
    let ids = f.ids();
    let vm = Arc::new(Mutex::new(vm));
    let server = control::serve(vm.clone(), None).expect("serve");
    // The guest fills 64 KiB at 1 MiB with one byte value after another.
    let (stop, value) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU8::new(0)));
    let guest = {
        let (stop, value, disk) = (stop.clone(), value.clone(), disk.clone());
        std::thread::spawn(move || {
            let mut v = 0u8;
            while !stop.load(Ordering::Acquire) {
                v = v % 250 + 1;
                disk.write_at(&vec![v; 64 << 10], MIB).expect("guest write");
                value.store(v, Ordering::Release);
            }
        })
    };
    while value.load(Ordering::Acquire) == 0 {
        std::thread::yield_now();
    }
    let now = f.root.join("now");
    let out = stdout(&ok(&[
        "checkpoint",
        "export",
        s(&f.vm),
        "--current",
        s(&now),
    ]));
    assert!(
        out.contains("os.vhdx") && out.contains("data.vhdx"),
        "{out}"
    );
    stop.store(true, Ordering::Release);
    guest.join().expect("guest");
    // The tree through the holder: the same checkpoints, no journal.
    let list: Value =
        serde_json::from_slice(&ok(&["checkpoint", "list", s(&f.vm), "--json"]).stdout)
            .expect("json");
    let names: Vec<&str> = list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .filter(|c| c["hidden"] != true)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["a"]);
    assert!(!f.vm.join("journal.json").exists());
    // QEMU reads one whole guest write at 1 MiB (one instant) over the
    // fixture's data.
    let raw = f.root.join("now-os.raw");
    support::qemu_convert_raw(&now.join("os.vhdx"), &raw);
    let bytes = std::fs::read(&raw).expect("raw");
    assert_eq!(bytes[..64 << 10], pattern(1, 0, 64 << 10)[..]);
    let region = &bytes[MIB as usize..MIB as usize + (64 << 10)];
    assert!(
        region[0] != 0 && region.iter().all(|&b| b == region[0]),
        "the export holds a torn or missing guest write"
    );
    let mut data = vec![0u8; SIZES[1] as usize];
    data[512 << 10..576 << 10].copy_from_slice(&pattern(2, 512 << 10, 64 << 10));
    qemu_reads(&now.join("data.vhdx"), &data, &f.root);
    // Closed: the current state has the guest's last write, the tree its
    // checkpoint (the temporary one merged away on reopen).
    let last = value.load(Ordering::Acquire);
    drop(server);
    drop(disk);
    drop(vm);
    let vm = Vm::open(&f.vm).expect("reopen");
    assert_eq!(f.ids(), ids);
    let d = Disk::open(&vm.data().current.disks[0], OpenMode::ReadOnly).expect("open");
    let mut b = vec![0u8; 64 << 10];
    d.read_at(&mut b, MIB).expect("read");
    assert!(b.iter().all(|&x| x == last), "the last guest write is lost");
}
