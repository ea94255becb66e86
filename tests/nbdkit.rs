//! The nbdkit plugin (`examples/nbdkit/nbdkit-ckpt-plugin.c`), a real C
//! client of `libckpt.h`, built by `examples/nbdkit/build.sh` against the
//! `libckpt.a` of this test run's profile and served by nbdkit on a unix
//! socket. QEMU is the NBD client and the judge:
//!
//! - `qemu-img convert` of a read-only export of a 3-file chain gives the
//!   bytes of the model and of `ckpt convert`; writes to it are refused and
//!   no file changes;
//! - `qemu-io` writes (plain, FUA, write-zeroes with and without unmap,
//!   discard) land in the top file only and read back through libckpt;
//! - SIGKILL of nbdkit during a stream of unflushed writes leaves a disk that
//!   opens, passes `ckpt::check`, and holds every write a completed flush
//!   covered;
//! - a file libckpt cannot open stops nbdkit at start-up with libckpt's
//!   message;
//! - extents: `qemu-img map` of the export shows data exactly where
//!   `ckpt::Disk::extents` does and holes elsewhere; `qemu-img convert`
//!   writes a sparse file with the chain's bytes and never reads a hole;
//!   block status without `REQ_ONE` (which QEMU never sends; a small NBD
//!   client here does) returns every extent, and a disk with more extents
//!   than one call maps is walked in several replies.
//! - VM mode (`vm=DIR`): each disk an export, served live while qemu-io
//!   writes and `ckpt checkpoint create|rename|list|delete` run through the
//!   control channel; every checkpoint and the current state (read by
//!   libckpt and by libvhdi with `set_parent`) hold what was written; a
//!   SIGKILL after a create loses nothing flushed; `readonly=true` and bad
//!   configurations.
//! - SIGKILL of nbdkit during a live create and during a live delete (a
//!   merge), a writer writing meanwhile: the CLI ends with a clear error,
//!   the restarted nbdkit reconciles the VM, and every checkpoint and the
//!   current state equal the model (qemu-img through the exports, libckpt,
//!   libvhdi).
//!
//! Without nbdkit, qemu-img, qemu-io, a C compiler or nbdkit-plugin.h the
//! tests print a notice and pass, except under `CI=true`.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};
use support::plugin::{have_plugin_header, plugin};
use support::{assert_same, pattern, require_tools, run, run_unchecked, show, tempdir, MIB};

/// Virtual size of the test chain.
const SIZE: u64 = 8 * MIB;

// ------------------------------------------------------------ the plugin

/// The tools every test here needs; `false` (with a notice) when one is
/// missing outside CI.
fn tools() -> bool {
    require_tools(&["nbdkit", "qemu-img", "qemu-io", "cc"]) && have_plugin_header()
}

// ------------------------------------------------------------ the server

/// A running `nbdkit -f -U SOCK plugin file=… [readonly=true]`, stopped
/// with SIGTERM (a clean unload: the disk is flushed and closed) when
/// dropped, unless it was killed already.
struct Server {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    /// Started with `-v`: the log has nbdkit's debug lines (one per
    /// request).
    verbose: bool,
}

impl Server {
    fn start(dir: &Path, disk: &Path, readonly: bool) -> Server {
        Server::start_with(dir, disk, readonly, false)
    }

    /// As [`Server::start`]; `verbose` runs nbdkit with `-v`, so that the
    /// log records every request the plugin served.
    fn start_with(dir: &Path, disk: &Path, readonly: bool, verbose: bool) -> Server {
        Server::start_param(dir, &format!("file={}", disk.display()), readonly, verbose)
    }

    /// As [`Server::start`] in VM mode: `vm=DIR`, one export per disk.
    fn start_vm(dir: &Path, vm: &Path, readonly: bool) -> Server {
        Server::start_param(dir, &format!("vm={}", vm.display()), readonly, false)
    }

    /// Start nbdkit with `param` (`file=…` or `vm=…`).
    fn start_param(dir: &Path, param: &str, readonly: bool, verbose: bool) -> Server {
        let socket = dir.join("nbd.sock");
        let log = dir.join("nbdkit.log");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U"]).arg(&socket);
        if verbose {
            cmd.arg("-v");
        }
        cmd.arg(plugin()).arg(param);
        if readonly {
            cmd.arg("readonly=true");
        }
        let err = File::create(&log).expect("create the nbdkit log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", show(&cmd)));
        let mut server = Server {
            child: Some(child),
            socket,
            log,
            verbose,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.socket.exists() {
            if let Some(status) = server.child_mut().try_wait().expect("try_wait") {
                panic!(
                    "nbdkit exited ({status}) before serving:\n{}",
                    server.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nbdkit did not create its socket within 20 s:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the server is running")
    }

    /// The NBD URI of the export.
    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// The NBD URI of the export `name` (VM mode: a disk's index).
    fn export_uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait: nbdkit unloads the plugin, which closes the
    /// disk. Asserts a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().expect("the server is running");
        run(Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null()));
        let status = wait_timeout(&mut child, Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "nbdkit did not stop cleanly ({status:?}):\n{}",
            self.log_text()
        );
        let log = self.log_text();
        // Without -v the log holds only errors; with it, debug lines too.
        let bad = if self.verbose {
            log.lines().any(|l| l.contains("error:"))
        } else {
            log.contains("ckpt:")
        };
        assert!(!bad, "the plugin reported errors:\n{log}");
    }

    /// SIGKILL: the process dies at once, wherever it is.
    fn kill(mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("SIGKILL nbdkit");
        child.wait().expect("reap nbdkit");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `qemu-io -f raw -c CMD… URI`, asserting that every command succeeded.
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(uri);
    let out = run(&mut c);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "`{}` reported a failure:\n{out}",
        show(&c)
    );
    out
}

// ------------------------------------------------------------ the chain

/// The three files of the test chain and the bytes it reads as.
struct Chain {
    base: PathBuf,
    mid: PathBuf,
    top: PathBuf,
    model: Vec<u8>,
}

fn write(disk: &Disk, model: &mut [u8], seed: u64, off: u64, len: usize) {
    let data = pattern(seed, off, len);
    disk.write_at(&data, off).expect("write");
    model[off as usize..off as usize + len].copy_from_slice(&data);
}

/// base.vhdx (dynamic, 1 MiB blocks) ← mid.avhdx ← top.avhdx, each with
/// data of its own, overwrites of its parents' data at unaligned offsets,
/// and a trim in the top file over data of the base.
fn make_chain(dir: &Path) -> Chain {
    let base = dir.join("base.vhdx");
    let mid = dir.join("mid.avhdx");
    let top = dir.join("top.avhdx");
    let mut model = vec![0u8; SIZE as usize];

    let d = Disk::create(&base, &CreateOptions::new(SIZE).block_size(MIB as u32)).expect("base");
    write(&d, &mut model, 1, 0, 3 * MIB as usize);
    write(&d, &mut model, 2, 5 * MIB + 4096, 512 * 1024);
    d.close().expect("close base");

    let d = Disk::create_child(&mid, &base, &ChildOptions::default()).expect("mid");
    write(&d, &mut model, 3, MIB - 1000, 70_000);
    write(&d, &mut model, 4, 6 * MIB + 333, 100_000);
    d.close().expect("close mid");

    let d = Disk::create_child(&top, &mid, &ChildOptions::default()).expect("top");
    write(&d, &mut model, 5, 2 * MIB + 512, 4096 * 3);
    write(&d, &mut model, 6, 7 * MIB, MIB as usize);
    d.trim(1536 * 1024, 64 * 1024).expect("trim");
    model[1536 * 1024..1600 * 1024].fill(0);
    d.close().expect("close top");

    Chain {
        base,
        mid,
        top,
        model,
    }
}

fn read_all(path: &Path) -> Vec<u8> {
    let d = Disk::open(path, OpenMode::ReadOnly).expect("open the chain");
    let mut buf = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut buf, 0).expect("read the chain");
    buf
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn assert_sound(path: &Path) {
    for p in chain_files(path) {
        let report = ckpt::check(&p).expect("check");
        assert!(
            report.is_ok(),
            "{}: {:?} ({})",
            p.display(),
            report.problems,
            report.summary
        );
    }
}

fn chain_files(top: &Path) -> Vec<PathBuf> {
    let d = Disk::open(top, OpenMode::ReadOnly).expect("open the chain");
    d.chain().into_iter().flatten().collect()
}

// ------------------------------------------------------------ the tests

/// A read-only export of the chain reads as the model and as `ckpt
/// convert`; writes are refused; no file of the chain changes.
#[test]
fn readonly_export_reads_the_chain_and_refuses_writes() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let chain = make_chain(dir.path());
    let before: Vec<Vec<u8>> = [&chain.base, &chain.mid, &chain.top]
        .iter()
        .map(|p| file_bytes(p))
        .collect();

    let server = Server::start(dir.path(), &chain.top, true);
    let out = dir.path().join("nbd.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &server.uri()])
        .arg(&out));
    assert_same(
        "qemu-img convert over NBD",
        &file_bytes(&out),
        &chain.model,
        0,
    );

    // Writes are refused, whatever kind.
    for cmd in [
        "write -P 0x5a 0 4096",
        "write -z 0 4096",
        "discard 0 1048576",
    ] {
        let o = run_unchecked(
            Command::new("qemu-io")
                .args(["-f", "raw", "-c", cmd])
                .arg(server.uri()),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.status.success() || text.contains("failed") || text.contains("read-only"),
            "`{cmd}` on a read-only export succeeded:\n{text}"
        );
        assert!(!text.contains("wrote "), "`{cmd}` wrote:\n{text}");
    }
    server.stop();

    for (p, old) in [&chain.base, &chain.mid, &chain.top].iter().zip(&before) {
        assert!(
            file_bytes(p) == *old,
            "{} changed through a read-only export",
            p.display()
        );
    }

    // `ckpt convert` of the chain gives the same bytes.
    #[cfg(feature = "cli")]
    {
        let raw = dir.path().join("ckpt.raw");
        run(Command::new(env!("CARGO_BIN_EXE_ckpt"))
            .args(["convert", "-O", "raw"])
            .arg(&chain.top)
            .arg(&raw));
        assert_same(
            "ckpt convert vs qemu-img convert over NBD",
            &file_bytes(&raw),
            &file_bytes(&out),
            0,
        );
    }
}

/// Writes, FUA writes, write-zeroes (with and without unmap) and discards
/// through NBD reach the top file only, read back through NBD and through
/// libckpt, and leave a sound chain.
#[test]
fn writes_go_to_the_top_file() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let mut chain = make_chain(dir.path());
    let base_before = file_bytes(&chain.base);
    let mid_before = file_bytes(&chain.mid);

    let server = Server::start(dir.path(), &chain.top, false);
    let uri = server.uri();
    // (command, offset, length, byte written); the ranges do not overlap
    // (each is read back with its own pattern below).
    let ops: [(&str, u64, u64, u8); 6] = [
        ("write -P 0x5a", 100_000, 70_000, 0x5a),
        ("write -f -P 0xa5", 3 * MIB - 4096, 8192, 0xa5),
        ("write -P 0x33", 6 * MIB, 2 * MIB, 0x33),
        // zero without unmap (written zeros) over the base's data
        ("write -z", 10_000, 5_000, 0),
        // zero with unmap allowed (a trim) over mid's data
        ("write -z -u", MIB - 512, 4096, 0),
        // discard over the base's data: a whole block of the top file (2 MiB
        // blocks) and a part of the one before
        ("discard", 4 * MIB - 8192, 2 * MIB + 8192, 0),
    ];
    let mut cmds: Vec<String> = Vec::new();
    for (cmd, off, len, byte) in ops {
        cmds.push(format!("{cmd} {off} {len}"));
        chain.model[off as usize..(off + len) as usize].fill(byte);
    }
    cmds.push("flush".into());
    // Read back through NBD, on the same connection.
    for (_, off, len, byte) in ops {
        cmds.push(format!("read -P {byte:#04x} {off} {len}"));
    }
    qemu_io(&uri, &cmds);
    // A second connection (multi-conn: the same shared disk) sees them too.
    let out = dir.path().join("after.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&out));
    assert_same("NBD after writes", &file_bytes(&out), &chain.model, 0);
    server.stop();

    assert_same(
        "libckpt after writes",
        &read_all(&chain.top),
        &chain.model,
        0,
    );
    assert!(file_bytes(&chain.base) == base_before, "base.vhdx changed");
    assert!(file_bytes(&chain.mid) == mid_before, "mid.avhdx changed");
    assert_sound(&chain.top);
}

/// SIGKILL while unflushed writes stream in: the disk opens, passes the
/// check, holds every write a completed flush covered, and every byte the
/// unflushed writes touched is either the old or the new value.
#[test]
fn sigkill_keeps_every_flushed_write() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let mut chain = make_chain(dir.path());
    let server = Server::start(dir.path(), &chain.top, false);
    let uri = server.uri();

    // Phase 1, in the first half of the disk: N writes with distinct
    // patterns, each followed by a flush that completes.
    const N: u64 = 12;
    let mut cmds = Vec::new();
    for i in 0..N {
        let (off, len) = (i * 300_000 + 512 * i + 7, 65_536 + 1000 * i);
        let byte = 0x10 + i as u8;
        cmds.push(format!("write -P {byte:#04x} {off} {len}"));
        cmds.push("flush".into());
        chain.model[off as usize..(off + len) as usize].fill(byte);
    }
    qemu_io(&uri, &cmds);

    // Phase 2, in the second half: a long stream of writes and no flush;
    // nbdkit is killed while it runs.
    let old = chain.model.clone();
    let mut stream = Command::new("qemu-io");
    stream.args(["-f", "raw"]);
    const M: u64 = 2000;
    for i in 0..M {
        let off = 4 * MIB + (i * 2048) % (4 * MIB - 4096);
        stream.arg("-c").arg(format!(
            "write -P {:#04x} {off} 4096",
            0x80 + (i % 64) as u8
        ));
    }
    let mut writer = stream
        .arg(&uri)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-io");
    // Let a part of the stream land (the exact moment does not matter: what
    // is checked holds for any moment).
    let top = chain.top.clone();
    let start_len = std::fs::metadata(&top).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&top).map(|m| m.len()).unwrap_or(0) == start_len
        && Instant::now() < deadline
        && writer.try_wait().expect("try_wait").is_none()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    let still_running = writer.try_wait().expect("try_wait").is_none();
    server.kill();
    let _ = wait_timeout(&mut writer, Duration::from_secs(20));
    if !still_running {
        eprintln!("notice: the write stream finished before the kill");
    }

    // The disk opens (replaying its log), is sound, and holds phase 1.
    assert_sound(&chain.top);
    let got = read_all(&chain.top);
    let half = (4 * MIB) as usize;
    assert_same(
        "flushed writes after SIGKILL",
        &got[..half],
        &chain.model[..half],
        0,
    );
    // Phase 2: each byte is the old value or one of the stream's patterns.
    for (i, (&g, &o)) in got[half..].iter().zip(&old[half..]).enumerate() {
        assert!(
            g == o || (0x80..0xc0).contains(&g),
            "byte {} is {g:#04x}: neither the old value {o:#04x} nor a written pattern",
            half + i
        );
    }
    // And the disk takes new writes after the crash.
    let d = Disk::open(&chain.top, OpenMode::ReadWrite).expect("reopen read-write");
    d.write_at(b"after", 0).expect("write after the crash");
    d.close().expect("close");
    assert_sound(&chain.top);
}

/// A file libckpt cannot open stops nbdkit at start-up, with libckpt's
/// message in nbdkit's error output.
#[test]
fn bad_file_fails_at_start_up() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let bogus = dir.path().join("not-a-disk.vhdx");
    std::fs::write(&bogus, vec![0x42u8; 1 << 20]).expect("write");
    let o = run_unchecked(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(dir.path().join("s.sock"))
            .arg(plugin())
            .arg(format!("file={}", bogus.display())),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "nbdkit served a bogus file:\n{err}");
    assert!(
        err.contains("ckpt:") && err.contains("CKPT_STATUS_CORRUPT"),
        "no libckpt message in:\n{err}"
    );
    // A missing file is refused by the configuration already.
    let o = run_unchecked(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(dir.path().join("s.sock"))
            .arg(plugin())
            .arg(format!(
                "file={}",
                dir.path().join("missing.vhdx").display()
            )),
    );
    assert!(!o.status.success());
}

// ------------------------------------------------------------ locks

/// Every file under `root` with its bytes (the VM's lock file, nbdkit's
/// log and socket left out).
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((p.clone(), b"(a folder)".to_vec()));
                stack.push(p);
            } else if p.is_file()
                && p.file_name()
                    .is_some_and(|n| n != ".lock" && n != "nbdkit.log")
            {
                out.push((p.clone(), file_bytes(&p)));
            }
        }
    }
    out.sort();
    out
}

/// The user scenario of issue 8, bug 9: nbdkit serves a VM's disk
/// read-write; `ckpt checkpoint create VM c1` must fail with busy naming
/// the disk and change nothing (vm.json, the disk, no new file), while the
/// export keeps working; once nbdkit stops the same command succeeds, and
/// serving the new current disk leaves the checkpoint's disk frozen (it can
/// be read beside nbdkit, not written). A second nbdkit on a served file
/// stops at start-up with CKPT_STATUS_BUSY.
#[cfg(feature = "cli")]
#[test]
fn a_served_disk_cannot_be_checkpointed() {
    if !tools() {
        return;
    }
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let disk = root.join("d.vhdx");
    let vm = root.join("vm");
    let ckpt = |args: &[&std::ffi::OsStr]| {
        run_unchecked(Command::new(env!("CARGO_BIN_EXE_ckpt")).args(args))
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let o = ckpt(&[&os("create"), disk.as_os_str(), &os("--size"), &os("8M")]);
    assert!(o.status.success(), "{o:?}");
    let o = ckpt(&[
        &os("vm"),
        &os("create"),
        vm.as_os_str(),
        &os("--name"),
        &os("v"),
        &os("--disk"),
        disk.as_os_str(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let create = [os("checkpoint"), os("create"), vm.clone().into(), os("c1")];
    let create: Vec<&std::ffi::OsStr> = create.iter().map(|a| a.as_os_str()).collect();

    let sockdir = root.join("nbd");
    std::fs::create_dir(&sockdir).expect("mkdir");
    let server = Server::start(&sockdir, &disk, false);
    qemu_io(
        &server.uri(),
        &["write -P 0x11 0 65536".into(), "flush".into()],
    );
    let before = tree(&root);
    let o = ckpt(&create);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "checkpoint of a served disk succeeded");
    assert!(
        err.contains("busy") && err.contains(&disk.display().to_string()),
        "the refusal does not say busy and name the disk: {err}"
    );
    assert!(err.contains("another process"), "{err}");
    assert!(
        tree(&root) == before,
        "the refused checkpoint changed files"
    );
    // The served disk works on, and a second server is refused at start-up.
    qemu_io(
        &server.uri(),
        &["write -P 0x22 4096 4096".into(), "flush".into()],
    );
    let o = run_unchecked(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(root.join("second.sock"))
            .arg(plugin())
            .arg(format!("file={}", disk.display())),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a second nbdkit served the disk:\n{err}"
    );
    assert!(err.contains("CKPT_STATUS_BUSY"), "{err}");
    server.stop();

    let o = ckpt(&create);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let show = ckpt(&[&os("vm"), &os("show"), vm.as_os_str(), &os("--json")]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("vm show --json");
    let current = PathBuf::from(v["disks"][0]["path"].as_str().expect("path"));
    assert_ne!(current, disk);
    let frozen = file_bytes(&disk);

    // Serving the new current disk: writes land in it; the checkpoint's
    // disk reads beside nbdkit and refuses writers.
    let server = Server::start(&sockdir, &current, false);
    qemu_io(
        &server.uri(),
        &["write -P 0x33 0 65536".into(), "flush".into()],
    );
    let o = ckpt(&[&os("read"), disk.as_os_str(), &os("0"), &os("4096")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stdout.iter().all(|&b| b == 0x11),
        "the checkpoint's disk changed"
    );
    let o = ckpt(&[&os("write"), disk.as_os_str(), &os("0")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("busy"), "{err}");
    server.stop();
    assert!(file_bytes(&disk) == frozen, "the checkpoint's disk changed");
}

// ------------------------------------------------------------ extents

/// Virtual size of the sparse chain.
const SPARSE_SIZE: u64 = 32 * MIB;

/// base.vhdx (1 MiB blocks) ← top.avhdx (1 MiB blocks) with data in a few
/// blocks of each, a whole-block trim in the top file over the base's data
/// and the last sector of the disk written; the bytes it reads as and the
/// extents it must have, as (offset, length, data) in MiB.
fn make_sparse_chain(dir: &Path) -> (PathBuf, Vec<u8>, Vec<(u64, u64, bool)>) {
    let base = dir.join("sparse-base.vhdx");
    let top = dir.join("sparse-top.avhdx");
    let mut model = vec![0u8; SPARSE_SIZE as usize];
    let opts = CreateOptions::new(SPARSE_SIZE).block_size(MIB as u32);
    let d = Disk::create(&base, &opts).expect("base");
    write(&d, &mut model, 11, 0, 65_536);
    write(&d, &mut model, 12, 5 * MIB + 100, 4096);
    write(&d, &mut model, 13, 6 * MIB, MIB as usize);
    write(&d, &mut model, 14, 20 * MIB + 512 * 1024, 8192);
    d.close().expect("close base");
    let child = ChildOptions {
        block_size: MIB as u32,
        ..ChildOptions::default()
    };
    let d = Disk::create_child(&top, &base, &child).expect("top");
    write(&d, &mut model, 15, 9 * MIB + 4096, 4096);
    write(&d, &mut model, 16, 20 * MIB, 4096);
    write(&d, &mut model, 17, SPARSE_SIZE - 512, 512);
    d.trim(5 * MIB, MIB)
        .expect("trim a block over the base's data");
    model[5 * MIB as usize..6 * MIB as usize].fill(0);
    d.close().expect("close top");
    let want = vec![
        (0, 1, true),
        (1, 5, false),
        (6, 1, true),
        (7, 2, false),
        (9, 1, true),
        (10, 10, false),
        (20, 1, true),
        (21, 10, false),
        (31, 1, true),
    ];
    (top, model, want)
}

/// `qemu-img map --output=json` of an NBD export as (offset, length, data)
/// runs, neighbours with the same `data` merged. Asserts that every entry
/// without data is reported as reading zeros and every entry with data is
/// not (the plugin reports data as plain data).
fn qemu_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let out = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", uri]));
    let entries: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("qemu-img map JSON ({e}):\n{out}"));
    let entries = entries.as_array().expect("qemu-img map gives an array");
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    for e in entries {
        let num = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("no {k} in {e}"));
        let flag = |k: &str| e[k].as_bool().unwrap_or_else(|| panic!("no {k} in {e}"));
        let (start, length, data, zero) = (num("start"), num("length"), flag("data"), flag("zero"));
        assert_eq!(
            zero, !data,
            "a hole that does not read as zeros, or data that does: {e}"
        );
        match runs.last_mut() {
            Some(r) if r.2 == data && r.0 + r.1 == start => r.1 += length,
            _ => runs.push((start, length, data)),
        }
    }
    runs
}

/// The (offset, count) of every pread the plugin served, from nbdkit's
/// `-v` log.
fn preads(log: &str) -> Vec<(u64, u64)> {
    let field = |line: &str, key: &str| -> u64 {
        let rest = line
            .split(key)
            .nth(1)
            .unwrap_or_else(|| panic!("no {key} in {line:?}"));
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("bad {key} in {line:?}"))
    };
    log.lines()
        .filter(|l| l.contains(": pread count="))
        .map(|l| (field(l, "offset="), field(l, "count=")))
        .collect()
}

/// Extents through NBD: `qemu-img map` of the export shows data exactly
/// where libckpt's extents of the chain say some file holds data (holes
/// elsewhere, a trimmed block over the parent's data included); `qemu-img
/// convert` gives the chain's bytes in a sparse file and never reads a
/// hole.
#[test]
fn extents_map_the_chain_and_convert_skips_holes() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let (top, model, want) = make_sparse_chain(dir.path());
    let want: Vec<(u64, u64, bool)> = want
        .into_iter()
        .map(|(o, l, d)| (o * MIB, l * MIB, d))
        .collect();

    // libckpt's own map of the chain is the expected one.
    let d = Disk::open(&top, OpenMode::ReadOnly).expect("open the chain");
    let ours: Vec<(u64, u64, bool)> = d
        .extents()
        .expect("extents")
        .iter()
        .map(|e| (e.offset, e.length, e.allocated))
        .collect();
    drop(d);
    assert_eq!(ours, want, "ckpt::Disk::extents of the chain");

    let server = Server::start_with(dir.path(), &top, true, true);
    let uri = server.uri();
    assert_eq!(qemu_map(&uri), want, "qemu-img map over NBD");

    let out = dir.path().join("sparse.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&out));
    let log = server.log_text();
    server.stop();
    assert_same("qemu-img convert over NBD", &file_bytes(&out), &model, 0);

    // The plugin answered block-status requests, and no read touched a
    // hole: qemu-img skipped them because of the extents.
    assert!(
        log.contains(": extents count="),
        "no extents request reached the plugin:\n{log}"
    );
    let reads = preads(&log);
    assert!(!reads.is_empty(), "no pread in the nbdkit log:\n{log}");
    for &(off, count) in &reads {
        for &(h, hl, data) in &want {
            assert!(
                data || off + count <= h || h + hl <= off,
                "pread [{off}, +{count}) reads the hole [{h}, +{hl})"
            );
        }
    }
    // A sparse output: at most the data extents take space.
    use std::os::unix::fs::MetadataExt;
    let used = std::fs::metadata(&out).expect("stat").blocks() * 512;
    let data: u64 = want.iter().filter(|e| e.2).map(|e| e.1).sum();
    assert!(
        used <= data,
        "{} uses {used} bytes, more than the {data} bytes of data extents",
        out.display()
    );
}

/// A minimal NBD client (fixed newstyle handshake, structured replies,
/// the `base:allocation` meta context) for what QEMU never sends: a
/// block-status request without `REQ_ONE`.
mod nbd {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
    const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    const OPT_GO: u32 = 7;
    const OPT_STRUCTURED_REPLY: u32 = 8;
    const OPT_SET_META_CONTEXT: u32 = 10;
    const REP_ACK: u32 = 1;
    const REP_META_CONTEXT: u32 = 4;
    const REQUEST_MAGIC: u32 = 0x2560_9513;
    const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
    const CMD_DISC: u16 = 2;
    const CMD_BLOCK_STATUS: u16 = 7;
    const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
    const REPLY_FLAG_DONE: u16 = 1;
    const REPLY_TYPE_BLOCK_STATUS: u16 = 5;

    /// A connection in the transmission phase.
    pub struct Client {
        s: UnixStream,
        context: u32,
    }

    fn u16_of(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }
    fn u32_of(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
    }
    fn u64_of(b: &[u8]) -> u64 {
        u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
    }

    impl Client {
        fn read(&mut self, n: usize) -> Vec<u8> {
            let mut b = vec![0u8; n];
            self.s.read_exact(&mut b).expect("read from the NBD server");
            b
        }

        fn option(&mut self, opt: u32, data: &[u8]) {
            let mut m = IHAVEOPT.to_be_bytes().to_vec();
            m.extend(opt.to_be_bytes());
            m.extend((data.len() as u32).to_be_bytes());
            m.extend(data);
            self.s.write_all(&m).expect("send an option");
        }

        /// One option reply: (type, data).
        fn option_reply(&mut self, opt: u32) -> (u32, Vec<u8>) {
            let h = self.read(20);
            assert_eq!(u64_of(&h), OPT_REPLY_MAGIC, "option reply magic");
            assert_eq!(u32_of(&h[8..]), opt, "reply to another option");
            let (kind, len) = (u32_of(&h[12..]), u32_of(&h[16..]) as usize);
            assert!(kind < 1 << 31, "option {opt} refused: reply type {kind:#x}");
            (kind, self.read(len))
        }

        /// Connect, negotiate structured replies and `base:allocation`, and
        /// enter the transmission phase of the default export.
        pub fn connect(socket: &Path) -> Client {
            let s = UnixStream::connect(socket).expect("connect to nbdkit");
            let mut c = Client { s, context: 0 };
            let h = c.read(18);
            assert_eq!(&h[..8], b"NBDMAGIC");
            assert_eq!(u64_of(&h[8..]), IHAVEOPT, "not a newstyle server");
            assert!(u16_of(&h[16..]) & 3 == 3, "no fixed newstyle / no zeroes");
            c.s.write_all(&3u32.to_be_bytes()).expect("client flags");
            c.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(c.option_reply(OPT_STRUCTURED_REPLY).0, REP_ACK);
            let query = b"base:allocation";
            let mut d = 0u32.to_be_bytes().to_vec(); // export name ""
            d.extend(1u32.to_be_bytes());
            d.extend((query.len() as u32).to_be_bytes());
            d.extend(query);
            c.option(OPT_SET_META_CONTEXT, &d);
            let mut got = None;
            loop {
                let (kind, data) = c.option_reply(OPT_SET_META_CONTEXT);
                if kind == REP_ACK {
                    break;
                }
                assert_eq!(kind, REP_META_CONTEXT);
                assert_eq!(&data[4..], query);
                got = Some(u32_of(&data));
            }
            c.context = got.expect("the server has no base:allocation context");
            let mut d = 0u32.to_be_bytes().to_vec(); // export name ""
            d.extend(0u16.to_be_bytes()); // no information requests
            c.option(OPT_GO, &d);
            while c.option_reply(OPT_GO).0 != REP_ACK {}
            c
        }

        /// NBD_CMD_BLOCK_STATUS of `[offset, offset + len)`: the
        /// (length, flags) descriptors of the `base:allocation` chunk.
        pub fn block_status(&mut self, offset: u64, len: u32, req_one: bool) -> Vec<(u32, u32)> {
            let flags = if req_one { CMD_FLAG_REQ_ONE } else { 0 };
            let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
            r.extend(flags.to_be_bytes());
            r.extend(CMD_BLOCK_STATUS.to_be_bytes());
            r.extend(7u64.to_be_bytes()); // handle
            r.extend(offset.to_be_bytes());
            r.extend(len.to_be_bytes());
            self.s.write_all(&r).expect("send a block-status request");
            let mut out = Vec::new();
            loop {
                let h = self.read(20);
                assert_eq!(u32_of(&h), STRUCTURED_REPLY_MAGIC, "structured reply magic");
                let (flags, kind) = (u16_of(&h[4..]), u16_of(&h[6..]));
                assert_eq!(u64_of(&h[8..]), 7, "reply to another handle");
                let data = self.read(u32_of(&h[16..]) as usize);
                if kind == REPLY_TYPE_BLOCK_STATUS {
                    assert_eq!(u32_of(&data), self.context, "another meta context");
                    for d in data[4..].chunks_exact(8) {
                        out.push((u32_of(d), u32_of(&d[4..])));
                    }
                } else {
                    assert_eq!(kind, 0, "error reply {kind:#x}: {data:?}");
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    return out;
                }
            }
        }

        /// NBD_CMD_DISC: a clean disconnect.
        pub fn disconnect(mut self) {
            let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
            r.extend(0u16.to_be_bytes());
            r.extend(CMD_DISC.to_be_bytes());
            r.extend([0u8; 20]);
            self.s.write_all(&r).expect("send NBD_CMD_DISC");
        }
    }
}

/// Block status without and with `REQ_ONE` (QEMU always sets it), from
/// the start and from inside an extent: all the chain's extents as NBD
/// holes (`HOLE | ZERO` = 3) and data (0), or just the first one.
#[test]
fn block_status_with_and_without_req_one() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let (top, _, want) = make_sparse_chain(dir.path());
    let as_nbd = |from: u64| -> Vec<(u32, u32)> {
        want.iter()
            .map(|&(o, l, d)| (o * MIB, (o + l) * MIB, d))
            .filter(|&(_, end, _)| end > from)
            .map(|(o, end, d)| ((end - o.max(from)) as u32, if d { 0 } else { 3 }))
            .collect()
    };
    let server = Server::start(dir.path(), &top, true);
    let mut c = nbd::Client::connect(&server.socket);
    let size = SPARSE_SIZE as u32;
    assert_eq!(c.block_status(0, size, false), as_nbd(0), "whole disk");
    assert_eq!(c.block_status(0, size, true), as_nbd(0)[..1], "REQ_ONE");
    let mid = 12 * MIB + 4096; // inside the hole [10, 20) MiB
    let rest = (SPARSE_SIZE - mid) as u32;
    assert_eq!(c.block_status(mid, rest, false), as_nbd(mid), "from {mid}");
    // With REQ_ONE the one extent is cut to the request (nbdkit does that).
    assert_eq!(
        c.block_status(mid, 4096, true),
        [(4096, 3)],
        "REQ_ONE from {mid}"
    );
    assert_eq!(
        c.block_status(0, 4096, true),
        [(4096, 0)],
        "REQ_ONE in data"
    );
    c.disconnect();
    server.stop();
}

/// A disk with more extents than one `.extents` call returns (300 data
/// blocks alternating with holes) and more than the 1 GiB one call maps:
/// each block-status reply covers a prefix of what was asked, and asking
/// again from where it ends walks the whole disk through exactly the
/// extents libckpt reports.
#[test]
fn block_status_of_a_disk_with_many_extents() {
    if !tools() {
        return;
    }
    const BIG: u64 = 2048 * MIB;
    let dir = tempdir();
    let path = dir.path().join("many.vhdx");
    let d = Disk::create(&path, &CreateOptions::new(BIG).block_size(MIB as u32)).expect("create");
    for i in 0..300 {
        d.write_at(&[0x42; 512], 2 * i * MIB + 4096).expect("write");
    }
    let want: Vec<(u64, u64, u32)> = d
        .extents()
        .expect("extents")
        .iter()
        .map(|e| (e.offset, e.length, if e.allocated { 0 } else { 3 }))
        .collect();
    d.close().expect("close");
    assert_eq!(want.len(), 600, "libckpt's extents of the disk");

    let server = Server::start(dir.path(), &path, true);
    let mut c = nbd::Client::connect(&server.socket);
    let mut got: Vec<(u64, u64, u32)> = Vec::new();
    let mut replies = 0;
    let mut pos = 0u64;
    while pos < BIG {
        let len = (BIG - pos).min(u32::MAX as u64 & !4095) as u32;
        let reply = c.block_status(pos, len, false);
        replies += 1;
        assert!(!reply.is_empty(), "an empty reply at {pos}");
        let covered: u64 = reply.iter().map(|r| r.0 as u64).sum();
        assert!(
            covered <= 1 << 30,
            "one reply covers {covered} bytes at {pos}"
        );
        for (l, f) in reply {
            match got.last_mut() {
                Some(g) if g.2 == f => g.1 += l as u64,
                _ => got.push((pos, l as u64, f)),
            }
            pos += l as u64;
        }
    }
    c.disconnect();
    server.stop();
    assert_eq!(got, want, "the disk walked through NBD block status");
    // 600 extents do not fit in one reply; the trailing 1448 MiB hole
    // takes two (1 GiB at most each).
    assert!(replies >= 4, "only {replies} replies");
}

// ------------------------------------------------------------ VM mode

/// Bytes of one write qemu-io makes in the VM tests.
const REGION: u64 = 64 * 1024;

/// Regions each disk's writes cycle through (so later writes overwrite
/// earlier ones, also across checkpoints).
const REGIONS: u64 = 16;

/// The `k`-th write of a VM test: (disk, offset, fill byte). Disks
/// alternate; each disk's regions are visited in a stride coprime to
/// [`REGIONS`]; the byte is never 0.
fn vm_put(k: usize) -> (usize, u64, u8) {
    let disk = k % 2;
    let region = ((k / 2) as u64 * 5) % REGIONS;
    (disk, region * REGION * 3, (k % 251 + 1) as u8)
}

/// The two disks after the writes `0..n`.
fn vm_model(n: usize) -> [Vec<u8>; 2] {
    let mut m = [vec![0u8; SIZE as usize], vec![0u8; SIZE as usize]];
    for k in 0..n {
        let (d, off, b) = vm_put(k);
        m[d][off as usize..(off + REGION) as usize].fill(b);
    }
    m
}

/// Make write `k` through the server's export of its disk (one qemu-io
/// process: the write is flushed when it exits).
fn vm_write(server_uri: &dyn Fn(&str) -> String, k: usize) {
    let (d, off, b) = vm_put(k);
    qemu_io(
        &server_uri(&d.to_string()),
        &[format!("write -P {b:#x} {off} {REGION}"), "flush".into()],
    );
}

/// `ckpt ARGS…`, asserting success; its standard output.
fn ckpt_ok(args: &[&str]) -> Vec<u8> {
    let o = run_unchecked(Command::new(env!("CARGO_BIN_EXE_ckpt")).args(args));
    assert!(
        o.status.success(),
        "`ckpt {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// A 2-disk VM `root/vm` over `root/d0.vhdx` and `root/d1.vhdx`.
fn make_vm(root: &Path) -> PathBuf {
    make_vm_as(root, "vhdx")
}

/// [`make_vm`] with disks of `format` ("vhdx" or "vhd").
fn make_vm_as(root: &Path, format: &str) -> PathBuf {
    let vm = root.join("vm");
    for d in ["d0", "d1"] {
        let p = root.join(format!("{d}.{format}"));
        ckpt_ok(&[
            "create",
            p.to_str().unwrap(),
            "--size",
            "8M",
            "--format",
            format,
        ]);
    }
    let (d0, d1) = (
        root.join(format!("d0.{format}")),
        root.join(format!("d1.{format}")),
    );
    ckpt_ok(&[
        "vm",
        "create",
        vm.to_str().unwrap(),
        "--name",
        "v",
        "--disk",
        d0.to_str().unwrap(),
        "--disk",
        d1.to_str().unwrap(),
    ]);
    vm
}

/// `ckpt checkpoint list VM --json`.
fn vm_list(vm: &Path) -> serde_json::Value {
    let out = ckpt_ok(&["checkpoint", "list", vm.to_str().unwrap(), "--json"]);
    serde_json::from_slice(&out).expect("checkpoint list --json")
}

/// The disks (top files) of checkpoint `name`, from `checkpoint list`.
fn vm_checkpoint_disks(vm: &Path, name: &str) -> Vec<PathBuf> {
    let v = vm_list(vm);
    let c = v["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no checkpoint {name} in {v}"));
    c["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|p| PathBuf::from(p.as_str().expect("a path")))
        .collect()
}

/// The current disks, from `checkpoint list`.
fn vm_current_disks(vm: &Path) -> Vec<PathBuf> {
    vm_list(vm)["current"]["disks"]
        .as_array()
        .expect("current disks")
        .iter()
        .map(|p| PathBuf::from(p.as_str().expect("a path")))
        .collect()
}

/// Reads the whole virtual disk of a chain given base first with libvhdi
/// (`set_parent`) and writes it to standard output.
const PYVHDI_READ: &str = r#"
import sys
import pyvhdi
files = []
for p in sys.argv[1:]:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(1, len(files)):
    files[i].set_parent(files[i - 1])
top = files[-1]
size = top.get_media_size()
off = 0
while off < size:
    n = min(1 << 20, size - off)
    data = top.read_buffer_at_offset(n, off)
    if len(data) != n:
        sys.exit("short read at %d" % off)
    sys.stdout.buffer.write(data)
    off += n
for f in reversed(files):
    f.close()
"#;

/// Disk `top` (with its chain) reads as `want`, through libckpt and, when
/// pyvhdi is at hand (always under CI), through libvhdi.
fn vm_disk_reads(what: &str, top: &Path, want: &[u8]) {
    assert_same(&format!("{what} (libckpt)"), &read_all(top), want, 0);
    if support::oracle::have_pyvhdi() {
        let mut files = chain_files(top);
        files.reverse();
        let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
        let got = support::oracle::python(PYVHDI_READ, &args);
        assert_same(&format!("{what} (libvhdi)"), &got, want, 0);
    } else {
        support::missing("pyvhdi");
    }
}

/// The disks of `top` equal the model after the writes `0..n` for some
/// `n` in `lo..=hi` (a single writer: the cut of a checkpoint taken while
/// it wrote is a prefix of its writes). Returns that `n`.
fn vm_disks_read_a_prefix(what: &str, tops: &[PathBuf], lo: usize, hi: usize) -> usize {
    let got: Vec<Vec<u8>> = tops.iter().map(|p| read_all(p)).collect();
    let n = (lo..=hi)
        .find(|&n| {
            let m = vm_model(n);
            got[0] == m[0] && got[1] == m[1]
        })
        .unwrap_or_else(|| {
            let m = vm_model(lo);
            assert_same(&format!("{what}: disk 0"), &got[0], &m[0], 0);
            assert_same(&format!("{what}: disk 1"), &got[1], &m[1], 0);
            unreachable!("{what}: no prefix of writes {lo}..={hi} matches")
        });
    let m = vm_model(n);
    for (i, top) in tops.iter().enumerate() {
        vm_disk_reads(&format!("{what}: disk {i}"), top, &m[i]);
    }
    n
}

/// Wait (no time limit of its own; the writer's qemu-io calls end) until
/// the writer has completed `n` writes.
fn wait_done(done: &std::sync::atomic::AtomicUsize, n: usize) {
    while done.load(std::sync::atomic::Ordering::SeqCst) < n {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 11, "Across processes": nbdkit serves a 2-disk VM (`vm=DIR`, one
/// export per disk) while a qemu-io writer keeps writing to both exports
/// and `ckpt checkpoint create|rename|list|delete` run from other processes
/// through the VM's control channel. Every checkpoint holds a prefix of the
/// writes between those completed before its create began and those
/// started before it returned; the current state holds every write; a
/// refused delete changes nothing. Then SIGKILL of nbdkit right after a
/// create returned: the restarted nbdkit reopens the VM reconciled, and
/// every checkpoint and the current state hold what qemu-io flushed.
#[cfg(feature = "cli")]
#[test]
fn vm_mode_serves_every_disk_live_through_checkpoints() {
    vm_mode_serves("vhdx");
}

/// The same with VHD disks (`.avhd` children, VHD live merges).
#[cfg(feature = "cli")]
#[test]
fn vm_mode_serves_every_vhd_disk_live_through_checkpoints() {
    vm_mode_serves("vhd");
}

#[cfg(feature = "cli")]
fn vm_mode_serves(format: &str) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    if !tools() {
        return;
    }
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let vm = make_vm_as(&root, format);
    let vms = vm.to_str().unwrap().to_string();
    let sockdir = root.join("nbd");
    std::fs::create_dir(&sockdir).expect("mkdir");
    let server = Server::start_vm(&sockdir, &vm, false);
    assert!(
        vm.join("ckpt-control.sock").exists(),
        "the plugin does not offer the control channel"
    );
    // The default export is disk 0.
    qemu_io(
        &server.uri(),
        &["write -P 0xee 0 4096".into(), "flush".into()],
    );
    qemu_io(&server.export_uri("0"), &["read -P 0xee 0 4096".into()]);
    qemu_io(&server.export_uri("0"), &["write -P 0 0 4096".into()]);

    let started = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let socket = server.socket.clone();
    let writer = {
        let (started, done, stop) = (started.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || {
            let uri = |name: &str| format!("nbd+unix:///{name}?socket={}", socket.display());
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                started.store(k + 1, Ordering::SeqCst);
                vm_write(&uri, k);
                done.store(k + 1, Ordering::SeqCst);
                k += 1;
            }
            k
        })
    };
    let mut cuts = Vec::new();
    for name in ["c1", "c2"] {
        wait_done(&done, started.load(Ordering::SeqCst) + 4);
        let lo = done.load(Ordering::SeqCst);
        ckpt_ok(&["checkpoint", "create", &vms, name]);
        let hi = started.load(Ordering::SeqCst);
        cuts.push((name, lo, hi));
    }
    ckpt_ok(&["checkpoint", "rename", &vms, "c1", "first"]);
    let names: Vec<String> = vm_list(&vm)["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["first", "c2"]);
    cuts[0].0 = "first";
    wait_done(&done, started.load(Ordering::SeqCst) + 4);
    stop.store(true, Ordering::SeqCst);
    let total = writer.join().expect("the writer failed");

    // A delete through the channel: refused (the layer is in the live
    // chain) and nothing changed, or done.
    let before = tree(&root);
    let o = run_unchecked(Command::new(env!("CARGO_BIN_EXE_ckpt")).args([
        "checkpoint",
        "delete",
        &vms,
        "first",
    ]));
    let deleted = o.status.success();
    if !deleted {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("busy"), "the refusal does not say busy: {err}");
        assert!(tree(&root) == before, "the refused delete changed files");
    }
    // The exports work on.
    let (d, off, b) = vm_put(total - 1);
    qemu_io(
        &server.export_uri(&d.to_string()),
        &[format!("read -P {b:#x} {off} {REGION}")],
    );
    server.stop();

    for &(name, lo, hi) in &cuts {
        if name == "first" && deleted {
            continue;
        }
        let tops = vm_checkpoint_disks(&vm, name);
        vm_disks_read_a_prefix(&format!("checkpoint {name}"), &tops, lo, hi);
    }
    let current = vm_current_disks(&vm);
    vm_disks_read_a_prefix("current", &current, total, total);

    // SIGKILL right after a create returned: everything qemu-io flushed
    // survives, the checkpoint included.
    let server = Server::start_vm(&sockdir, &vm, false);
    let uri = |name: &str| server.export_uri(name);
    for k in total..total + 6 {
        vm_write(&uri, k);
    }
    ckpt_ok(&["checkpoint", "create", &vms, "c3"]);
    server.kill();
    let total = total + 6;
    let server = Server::start_vm(&sockdir, &vm, false);
    let uri = |name: &str| server.export_uri(name);
    for k in total..total + 4 {
        vm_write(&uri, k);
    }
    server.stop();
    let tops = vm_checkpoint_disks(&vm, "c3");
    vm_disks_read_a_prefix("checkpoint c3 after SIGKILL", &tops, total, total);
    let tops = vm_checkpoint_disks(&vm, "c2");
    vm_disks_read_a_prefix("checkpoint c2 after SIGKILL", &tops, cuts[1].1, cuts[1].2);
    let current = vm_current_disks(&vm);
    vm_disks_read_a_prefix("current after SIGKILL", &current, total + 4, total + 4);
}

/// `readonly=true` in VM mode: both exports read, are advertised read-only
/// (writes refused) and no disk changes; checkpoints through the channel still work.
/// `file=` and `vm=` together stop nbdkit at start-up with a clear message.
#[cfg(feature = "cli")]
#[test]
fn vm_mode_readonly_and_config_errors() {
    if !tools() {
        return;
    }
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let vm = make_vm(&root);
    let vms = vm.to_str().unwrap().to_string();
    let sockdir = root.join("nbd");
    std::fs::create_dir(&sockdir).expect("mkdir");
    let server = Server::start_vm(&sockdir, &vm, false);
    vm_write(&|n: &str| server.export_uri(n), 0);
    vm_write(&|n: &str| server.export_uri(n), 1);
    server.stop();

    let server = Server::start_vm(&sockdir, &vm, true);
    let before = tree(&root);
    for d in ["0", "1"] {
        let o = run_unchecked(
            Command::new("qemu-io")
                .args(["-f", "raw", "-c", "write -P 0x99 0 4096"])
                .arg(server.export_uri(d)),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.status.success() || text.contains("failed") || text.contains("error"),
            "a write to read-only export {d} succeeded: {text}"
        );
        // The export is advertised read-only: QEMU refuses to open it for
        // writing (EACCES), or nbdkit refuses the write (EROFS).
        assert!(
            text.contains("read-only") || text.contains("Permission denied"),
            "the refusal does not say read-only: {text}"
        );
    }
    assert!(tree(&root) == before, "a refused write changed files");
    for k in 0..2 {
        let (d, off, b) = vm_put(k);
        run(Command::new("qemu-io")
            .args(["-r", "-f", "raw", "-c"])
            .arg(format!("read -P {b:#x} {off} {REGION}"))
            .arg(server.export_uri(&d.to_string())));
    }
    ckpt_ok(&["checkpoint", "create", &vms, "ro"]);
    server.stop();
    let tops = vm_checkpoint_disks(&vm, "ro");
    vm_disks_read_a_prefix("checkpoint ro", &tops, 2, 2);

    // An export past the last disk, or not a disk index, is refused with
    // the plugin's message.
    let server = Server::start_vm(&sockdir, &vm, false);
    for name in ["2", "01", "x"] {
        let o = run_unchecked(
            Command::new("qemu-io")
                .args(["-r", "-f", "raw", "-c", "read 0 512"])
                .arg(server.export_uri(name)),
        );
        assert!(
            !o.status.success(),
            "export {name:?} of a 2-disk VM was served"
        );
    }
    let log = server.log_text();
    assert!(
        log.contains("no export '2': the VM's exports are \"0\" .. \"1\""),
        "{log}"
    );
    server.kill();

    let disk = root.join("d0.vhdx");
    let o = run_unchecked(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(root.join("both.sock"))
            .arg(plugin())
            .arg(format!("file={}", disk.display()))
            .arg(format!("vm={}", vm.display())),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "nbdkit started with file= and vm=");
    assert!(
        err.contains("file= and vm= cannot be used together"),
        "{err}"
    );
}

// ------------------------------------------------------------ VM mode: SIGKILL mid-operation

/// One write of the SIGKILL tests: `len` bytes of `byte` at `off` of disk
/// `disk`.
#[derive(Clone, Copy, Debug)]
struct Put {
    disk: usize,
    off: u64,
    len: u64,
    byte: u8,
}

/// The writer thread's `k`-th write: those of [`vm_put`] (64 KiB each, in
/// the first 3 MiB of each disk).
fn small_put(k: usize) -> Put {
    let (disk, off, byte) = vm_put(k);
    Put {
        disk,
        off,
        len: REGION,
        byte,
    }
}

/// Where the big writes of the delete test go: the last 5 MiB of each
/// disk (past every [`small_put`]), so that a merge has that much to copy.
const BIG_OFF: u64 = 3 * MIB;

/// How long a client process (qemu-io, qemu-img, the CLI) may take before
/// the test fails as hung.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// Run `cmd` (standard input closed) and return its output; the test
/// fails when it has not ended within `limit` (it is killed).
fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", show(cmd)));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_timeout(&mut child, limit);
    let (stdout, stderr) = (out.join().expect("stdout"), err.join().expect("stderr"));
    let status = status.unwrap_or_else(|| {
        panic!(
            "`{}` did not end within {limit:?}:\n{}",
            show(cmd),
            String::from_utf8_lossy(&stderr)
        )
    });
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// qemu-io makes `p` and flushes, through the export of its disk on
/// `socket`: whether it reported both done. A server killed meanwhile
/// makes it fail (never hang: [`CLIENT_LIMIT`]).
fn qemu_put(socket: &Path, p: Put) -> bool {
    let o = output_within(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c"])
            .arg(format!("write -P {:#x} {} {}", p.byte, p.off, p.len))
            .args(["-c", "flush"])
            .arg(format!(
                "nbd+unix:///{}?socket={}",
                p.disk,
                socket.display()
            )),
        CLIENT_LIMIT,
    );
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    o.status.success() && !text.contains("failed") && !text.contains("error")
}

/// Every write of a SIGKILL test in the order made (one writer at a time)
/// and how many of them completed: qemu-io reported the write and its
/// flush done. A write past `done` was cut by a kill: each of its bytes may
/// read old or new until [`Log::redo`] makes it again.
#[derive(Default)]
struct Log {
    puts: std::sync::Mutex<Vec<Put>>,
    done: std::sync::atomic::AtomicUsize,
}

impl Log {
    fn started(&self) -> usize {
        self.puts.lock().expect("the log").len()
    }

    fn done(&self) -> usize {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The two disks after the writes `0..n`.
    fn model(&self, n: usize) -> [Vec<u8>; 2] {
        let mut m = [vec![0u8; SIZE as usize], vec![0u8; SIZE as usize]];
        for p in &self.puts.lock().expect("the log")[..n] {
            m[p.disk][p.off as usize..(p.off + p.len) as usize].fill(p.byte);
        }
        m
    }

    /// The `n` in `lo..=hi` for which `got` (both disks) holds exactly the
    /// writes `0..n`, if one does.
    fn prefix_of(&self, got: &[Vec<u8>], lo: usize, hi: usize) -> Option<usize> {
        let mut m = self.model(lo);
        let puts = self.puts.lock().expect("the log").clone();
        for n in lo..=hi {
            if got[0] == m[0] && got[1] == m[1] {
                return Some(n);
            }
            if let Some(p) = puts.get(n) {
                m[p.disk][p.off as usize..(p.off + p.len) as usize].fill(p.byte);
            }
        }
        None
    }

    /// Make `p` through `socket`; whether it completed.
    fn put(&self, socket: &Path, p: Put) -> bool {
        let n = {
            let mut puts = self.puts.lock().expect("the log");
            puts.push(p);
            puts.len()
        };
        let ok = qemu_put(socket, p);
        if ok {
            self.done.store(n, std::sync::atomic::Ordering::SeqCst);
        }
        ok
    }

    /// Make the writes a kill cut again (through the restarted server), so
    /// that every write of the log is done.
    fn redo(&self, socket: &Path) {
        let cut: Vec<Put> = self.puts.lock().expect("the log")[self.done()..].to_vec();
        for p in cut {
            assert!(
                qemu_put(socket, p),
                "a write through the restarted nbdkit failed: {p:?}"
            );
        }
        self.done
            .store(self.started(), std::sync::atomic::Ordering::SeqCst);
    }
}

/// A thread making [`small_put`] writes through a server's socket, one
/// after another, until stopped or until one fails (the server was
/// killed); it returns the write that failed.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<Put>>,
}

impl Writer {
    fn start(log: &std::sync::Arc<Log>, socket: &Path) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, socket, flag) = (log.clone(), socket.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let p = small_put(log.started());
                if !log.put(&socket, p) {
                    return Some(p);
                }
            }
            None
        });
        Writer { stop, thread }
    }

    /// Wait until it has completed `n` more writes (while the server runs).
    fn wait(&self, log: &Log, n: usize) {
        let want = log.done() + n;
        while log.done() < want {
            assert!(
                !self.thread.is_finished(),
                "the writer stopped: a write failed while nbdkit ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop it while the server runs: every write it made completed.
    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = self.thread.join().expect("the writer panicked");
        assert!(
            failed.is_none(),
            "a write failed while nbdkit ran: {failed:?}"
        );
    }

    /// After the server was killed: it ends at its next write, which fails.
    fn cut(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().expect("the writer panicked");
    }
}

/// `ckpt ARGS…` running in the background.
struct Background {
    child: Child,
    args: String,
}

impl Background {
    fn start(args: &[&str]) -> Background {
        let child = Command::new(env!("CARGO_BIN_EXE_ckpt"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ckpt");
        Background {
            child,
            args: args.join(" "),
        }
    }

    /// Wait until `seen()` holds or the command ended, then `extra` more;
    /// whether `seen()` held. Polls every 200 µs, for at most
    /// [`CLIENT_LIMIT`].
    fn wait_until(&mut self, mut seen: impl FnMut() -> bool, extra: Duration) -> bool {
        let deadline = Instant::now() + CLIENT_LIMIT;
        let held = loop {
            if seen() {
                break true;
            }
            if self.child.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        std::thread::sleep(extra);
        held
    }

    /// [`Background::wait_until`] the holder has written the VM's journal
    /// (it began the operation).
    fn wait_journal(&mut self, vm: &Path, extra: Duration) -> bool {
        let journal = vm.join("journal.json");
        self.wait_until(|| journal.exists(), extra)
    }

    /// Its exit (within [`CLIENT_LIMIT`], else the test fails: the CLI
    /// must not hang when the VM's holder dies): success, stdout, stderr.
    fn finish(mut self) -> (bool, String, String) {
        use std::io::Read;
        let status = wait_timeout(&mut self.child, CLIENT_LIMIT).unwrap_or_else(|| {
            panic!(
                "`ckpt {}` hung after nbdkit, the VM's holder, was killed",
                self.args
            )
        });
        let (mut out, mut err) = (String::new(), String::new());
        let _ = self
            .child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out);
        let _ = self
            .child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err);
        (status.success(), out, err)
    }
}

/// The CLI's report when the VM's holder died during its request: one
/// line `error: …` that says the holder went away and that the request may
/// or may not have been carried out.
fn assert_holder_died(args: &str, err: &str) {
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1
            && lines[0].starts_with("error: ")
            && lines[0].contains("holder closed its control channel during the request")
            && lines[0].contains("may or may not have been carried out"),
        "`ckpt {args}` after nbdkit was killed: not one clear error line:\n{err}"
    );
}

/// Each export of the served VM read with `qemu-img convert` (raw, into
/// `dir`).
fn nbd_disks(server: &Server, dir: &Path) -> Vec<Vec<u8>> {
    (0..2)
        .map(|d| {
            let raw = dir.join(format!("export{d}.raw"));
            let o = output_within(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "raw"])
                    .arg(server.export_uri(&d.to_string()))
                    .arg(&raw),
                CLIENT_LIMIT,
            );
            assert!(
                o.status.success(),
                "qemu-img convert of export {d}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let b = file_bytes(&raw);
            std::fs::remove_file(&raw).expect("remove the raw copy");
            b
        })
        .collect()
}

/// After a kill and the restart: the current state, read through each
/// export by `qemu-img`, holds every completed write; a byte the write
/// the kill cut touched reads old or new. Then that write is made again.
fn assert_current_after_kill(what: &str, server: &Server, log: &Log, dir: &Path) {
    let got = nbd_disks(server, dir);
    let (done, started) = (log.model(log.done()), log.model(log.started()));
    for d in 0..2 {
        let bad =
            (0..got[d].len()).find(|&i| got[d][i] != done[d][i] && got[d][i] != started[d][i]);
        if let Some(i) = bad {
            panic!(
                "{what}: export {d} at {i}: {:#04x}, expected {:#04x} (every completed write) \
                 or {:#04x} (with the write the kill cut)",
                got[d][i], done[d][i], started[d][i]
            );
        }
    }
    log.redo(&server.socket);
}

/// After a restart: the journal is gone and no checkpoint is left being
/// deleted. Returns `checkpoint list --json`.
fn assert_reconciled(what: &str, vm: &Path) -> serde_json::Value {
    assert!(
        !vm.join("journal.json").exists(),
        "{what}: the journal is left after the restart"
    );
    let list = vm_list(vm);
    let checkpoints = list["checkpoints"].as_array().expect("checkpoints");
    assert!(
        checkpoints.iter().all(|c| c["deleting"] == false),
        "{what}: a checkpoint is still being deleted: {list}"
    );
    list
}

/// The disks of the visible checkpoint `name` in `list` (`checkpoint list
/// --json`), if it is there.
fn find_in(list: &serde_json::Value, name: &str) -> Option<Vec<PathBuf>> {
    let c = list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .find(|c| c["name"] == name && c["hidden"] == false)?;
    Some(
        c["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .map(|p| PathBuf::from(p.as_str().expect("a path")))
            .collect(),
    )
}

/// The writes (`0..n`, `n` in `lo..=hi`) that checkpoint `name` holds, its
/// disks `tops` read by libckpt beside the server.
fn checkpoint_prefix(log: &Log, name: &str, tops: &[PathBuf], lo: usize, hi: usize) -> usize {
    let got: Vec<Vec<u8>> = tops.iter().map(|p| read_all(p)).collect();
    log.prefix_of(&got, lo, hi).unwrap_or_else(|| {
        let m = log.model(lo);
        assert_same(&format!("checkpoint {name}: disk 0"), &got[0], &m[0], 0);
        assert_same(&format!("checkpoint {name}: disk 1"), &got[1], &m[1], 0);
        panic!("checkpoint {name}: no prefix of the writes {lo}..={hi} matches")
    })
}

/// The server stopped: the visible checkpoints are exactly `expected`
/// (name, writes `0..n` it holds) and, like the current state (every
/// write), read as their model through libckpt and libvhdi; `vm show`
/// names no stray file (nothing a kill cut is left half made).
fn assert_vm_holds(vm: &Path, log: &Log, expected: &[(String, usize)]) {
    let show = ckpt_ok(&["vm", "show", vm.to_str().unwrap(), "--json"]);
    let show: serde_json::Value = serde_json::from_slice(&show).expect("vm show --json");
    assert_eq!(show["strays"], serde_json::json!([]), "stray files");
    let list = vm_list(vm);
    let mut names: Vec<&str> = list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .filter(|c| c["hidden"] == false)
        .map(|c| c["name"].as_str().expect("a name"))
        .collect();
    let mut want: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want, "the visible checkpoints");
    for (name, n) in expected {
        let m = log.model(*n);
        for (d, top) in vm_checkpoint_disks(vm, name).iter().enumerate() {
            vm_disk_reads(&format!("checkpoint {name}: disk {d}"), top, &m[d]);
        }
    }
    let m = log.model(log.done());
    assert_eq!(log.done(), log.started(), "a write was left cut");
    for (d, top) in vm_current_disks(vm).iter().enumerate() {
        vm_disk_reads(&format!("current: disk {d}"), top, &m[d]);
    }
}

/// Issue 11: SIGKILL of nbdkit (`vm=DIR`) while `ckpt checkpoint create`
/// runs through its control channel and a qemu-io writer keeps writing to
/// both exports, at several points: a delay after the CLI started (before,
/// during or after its request) or just after the holder wrote the journal
/// (at least one kill must cut the create half way). The CLI ends with a
/// clear error or its success; nbdkit restarted on the VM reconciles it: no
/// journal, no stray file; a create the CLI reported exists; one that
/// exists holds the writes completed before the CLI started and nothing
/// written after it ended; the current state holds every completed write.
/// Finally every checkpoint and the current state equal the model through
/// libckpt and libvhdi.
#[cfg(feature = "cli")]
#[test]
fn vm_mode_sigkill_during_a_live_create() {
    use std::sync::Arc;
    if !tools() {
        return;
    }
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let vm = make_vm(&root);
    let vms = vm.to_str().unwrap().to_string();
    let sockdir = root.join("nbd");
    std::fs::create_dir(&sockdir).expect("mkdir");
    let log = Arc::new(Log::default());
    let mut expected: Vec<(String, usize)> = Vec::new();
    let mut server = Server::start_vm(&sockdir, &vm, false);
    let (mut cut_mid, mut reported) = (0, 0);
    let mut i = 0;
    while i < 4 || (cut_mid == 0 && i < 8) {
        let what = format!("kill {i} during a create");
        let writer = Writer::start(&log, &server.socket);
        writer.wait(&log, 2);
        let lo = log.done();
        let name = format!("c{i}");
        let mut cli = Background::start(&["checkpoint", "create", &vms, &name]);
        if i % 2 == 0 {
            cli.wait_journal(&vm, Duration::from_millis([0, 2][i / 2 % 2]));
        } else {
            std::thread::sleep(Duration::from_millis([60, 2000][i / 2 % 2]));
        }
        server.kill();
        writer.cut();
        let (ok, _, err) = cli.finish();
        let hi = log.started();
        // A journal left: the kill cut the create half way.
        let pending = vm.join("journal.json").exists();
        if pending {
            cut_mid += 1;
        }
        eprintln!(
            "{what}: journal left {pending}, CLI ok {ok}: {}",
            err.trim()
        );
        if ok {
            reported += 1;
        } else {
            assert_holder_died(&format!("checkpoint create {name}"), &err);
        }
        server = Server::start_vm(&sockdir, &vm, false);
        let list = assert_reconciled(&what, &vm);
        assert_current_after_kill(&what, &server, &log, &root);
        match find_in(&list, &name) {
            Some(tops) => {
                let n = checkpoint_prefix(&log, &name, &tops, lo, hi);
                expected.push((name, n));
            }
            None => assert!(
                !ok,
                "{what}: the CLI reported {name} created, it is not there"
            ),
        }
        i += 1;
    }
    assert!(cut_mid > 0, "no kill cut a create half way ({i} kills)");
    let writer = Writer::start(&log, &server.socket);
    writer.wait(&log, 2);
    writer.stop();
    server.stop();
    assert_vm_holds(&vm, &log, &expected);
    eprintln!("{i} kills: {cut_mid} cut a create half way, {reported} creates reported done");
}

/// The DataWriteGuid fields of both headers of each VHDX file in `files`,
/// read as raw bytes (beside the holder's lock; a merge into a file writes
/// a header with a new DataWriteGuid before it changes any data).
fn raw_write_guids(files: &[PathBuf]) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut v = Vec::new();
    for p in files {
        let f = File::open(p).expect("open a checkpoint's disk");
        // Headers at 64 KiB and 128 KiB; DataWriteGuid at offset 32.
        for h in [64 * 1024u64, 128 * 1024] {
            let mut g = [0u8; 16];
            f.read_exact_at(&mut g, h + 32).expect("read a header");
            v.extend_from_slice(&g);
        }
    }
    v
}

/// The DataWriteGuid of each disk file in `files` (a merge into a file
/// changes it before it changes the first byte the file reads as).
fn write_guids(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|p| {
            let d = Disk::open(p, OpenMode::ReadOnly).expect("open a checkpoint's disk");
            d.info().data_write_guid.to_string()
        })
        .collect()
}

/// Issue 11: SIGKILL of nbdkit (`vm=DIR`) during a live merge. Each round
/// creates checkpoint `mI` through the control channel while a qemu-io
/// writer writes, writes 5 MiB to each disk above it, then runs `ckpt
/// checkpoint delete mI` (the checkpoint the current state hangs under:
/// the guest's layer is merged live) while the writer keeps writing, and
/// kills nbdkit just after the holder wrote the delete's journal, after a
/// varying delay; at least one kill must land once the merge changed
/// `mI`'s disks (the journal and `"deleting": true` are left, read from the
/// folder before the restart). The CLI ends with a clear error or its
/// success; nbdkit restarted on the VM reconciles it (no journal, nothing
/// left being deleted); `mI` is gone or there intact (holding what it held
/// when it was created), gone whenever the merge had begun; the current
/// state (through the exports, by qemu-img) holds every completed write.
/// Finally every checkpoint and the current state equal the model through
/// libckpt and libvhdi, and no stray file is left.
#[cfg(feature = "cli")]
#[test]
fn vm_mode_sigkill_during_a_live_delete() {
    use std::sync::Arc;
    if !tools() {
        return;
    }
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let vm = make_vm(&root);
    let vms = vm.to_str().unwrap().to_string();
    let sockdir = root.join("nbd");
    std::fs::create_dir(&sockdir).expect("mkdir");
    let log = Arc::new(Log::default());
    let mut server = Server::start_vm(&sockdir, &vm, false);
    for k in 0..4 {
        assert!(log.put(&server.socket, small_put(k)), "write {k}");
    }
    ckpt_ok(&["checkpoint", "create", &vms, "base"]);
    let mut expected: Vec<(String, usize)> = vec![("base".into(), log.done())];
    let (mut cut_merge, mut reported) = (0, 0);
    let mut i = 0;
    while i < 5 || (cut_merge == 0 && i < 8) {
        let what = format!("kill {i} during a delete");
        let t0 = Instant::now();
        let name = format!("m{i}");
        let writer = Writer::start(&log, &server.socket);
        writer.wait(&log, 1);
        let lo = log.done();
        ckpt_ok(&["checkpoint", "create", &vms, &name]);
        let hi = log.started();
        writer.stop();
        let tops = vm_checkpoint_disks(&vm, &name);
        let n = checkpoint_prefix(&log, &name, &tops, lo, hi);
        // What the delete merges: 5 MiB on each disk (and the writer's).
        for disk in 0..2 {
            let big = Put {
                disk,
                off: BIG_OFF,
                len: SIZE - BIG_OFF,
                byte: 0x80 + (2 * i + disk) as u8,
            };
            assert!(log.put(&server.socket, big), "{what}: {big:?}");
        }
        let (guids, raw) = (write_guids(&tops), raw_write_guids(&tops));
        let writer = Writer::start(&log, &server.socket);
        writer.wait(&log, 1);
        let mut cli = Background::start(&["checkpoint", "delete", &vms, &name]);
        // Kill once the holder journaled the delete, or once the merge
        // changed the checkpoint's disks (then a little later each time),
        // or (most likely) after the delete was done.
        match i % 5 {
            0 => {
                cli.wait_journal(&vm, Duration::ZERO);
            }
            4 => {
                cli.wait_journal(&vm, Duration::from_secs(3));
            }
            k => {
                let extra = Duration::from_millis([0, 0, 20, 60][k]);
                cli.wait_until(|| raw_write_guids(&tops) != raw, extra);
            }
        }
        server.kill();
        writer.cut();
        let (ok, _, err) = cli.finish();
        if ok {
            reported += 1;
        } else {
            assert_holder_died(&format!("checkpoint delete {name}"), &err);
        }
        // Before the restart: a kill after the merge began leaves the
        // journal, the checkpoint marked as being deleted, and its disks
        // changed.
        let pending = vm.join("journal.json").exists();
        let listed = vm_list(&vm);
        let deleting = listed["checkpoints"]
            .as_array()
            .expect("checkpoints")
            .iter()
            .any(|c| c["name"] == name.as_str() && c["deleting"] == true);
        let merging = pending && deleting && write_guids(&tops) != guids;
        if merging {
            cut_merge += 1;
        }
        server = Server::start_vm(&sockdir, &vm, false);
        let list = assert_reconciled(&what, &vm);
        assert_current_after_kill(&what, &server, &log, &root);
        // Gone, or there intact: what it held when it was created.
        if let Some(now) = find_in(&list, &name) {
            assert!(!ok, "{what}: the CLI reported {name} deleted, it is there");
            assert!(!merging, "{what}: {name} is there after its merge began");
            assert_eq!(now, tops, "{what}: the disks of {name}");
            let hi = log.started();
            assert_eq!(checkpoint_prefix(&log, &name, &now, n, hi), n, "{what}");
            expected.push((name, n));
        }
        eprintln!(
            "{what}: journal left {pending}, merge begun {merging}, CLI ok {ok} ({:?})",
            t0.elapsed()
        );
        i += 1;
    }
    assert!(cut_merge > 0, "no kill landed during a merge ({i} kills)");
    let writer = Writer::start(&log, &server.socket);
    writer.wait(&log, 2);
    writer.stop();
    server.stop();
    assert_vm_holds(&vm, &log, &expected);
    eprintln!("{i} kills: {cut_merge} during a merge, {reported} deletes reported done");
}

/// The whole virtual disk behind an NBD URI, read by `qemu-img convert`.
fn nbd_bytes(uri: &str, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("nbd-read.raw");
    let _ = std::fs::remove_file(&out);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(&out));
    let b = file_bytes(&out);
    std::fs::remove_file(&out).expect("rm");
    b
}

/// Issue 11: apply and revert on a VM that nbdkit serves (`vm=DIR`), run
/// by the CLI through the control channel: new NBD connections to the
/// same exports read the applied checkpoint's data (by qemu-img), writes
/// after the apply go to the new current state and leave the checkpoint
/// as it was, and a revert goes back to the checkpoint again; all the
/// while nbdkit keeps serving (no restart).
#[cfg(feature = "cli")]
#[test]
fn vm_mode_apply_and_revert_switch_what_new_connections_read() {
    if !tools() {
        return;
    }
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let vm = make_vm(&root);
    let vms = vm.to_str().unwrap().to_string();
    let sockdir = root.join("nbd");
    std::fs::create_dir(&sockdir).expect("mkdir");
    let server = Server::start_vm(&sockdir, &vm, false);
    let uri = |name: &str| server.export_uri(name);
    let exports_read = |what: &str, want: &[Vec<u8>; 2]| {
        for (d, w) in want.iter().enumerate() {
            let got = nbd_bytes(&uri(&d.to_string()), &root);
            assert_same(&format!("{what}: export {d} (qemu-img)"), &got, w, 0);
        }
    };
    for k in 0..6 {
        vm_write(&uri, k);
    }
    ckpt_ok(&["checkpoint", "create", &vms, "c1"]);
    for k in 6..12 {
        vm_write(&uri, k);
    }
    exports_read("before the apply", &vm_model(12));
    ckpt_ok(&["checkpoint", "apply", &vms, "c1"]);
    exports_read("after applying c1", &vm_model(6));
    // Writes after the apply land in the new current state only.
    qemu_io(&uri("0"), &["write -P 0x77 0 4096".into(), "flush".into()]);
    let mut changed = vm_model(6);
    changed[0][..4096].fill(0x77);
    exports_read("written after the apply", &changed);
    let tops = vm_checkpoint_disks(&vm, "c1");
    vm_disks_read_a_prefix("checkpoint c1 after the apply", &tops, 6, 6);
    ckpt_ok(&["checkpoint", "revert", &vms]);
    exports_read("after the revert", &vm_model(6));
    let current = vm_current_disks(&vm);
    vm_disks_read_a_prefix("checkpoint c1 at the end", &tops, 6, 6);
    // Deleting the checkpoint the served disks hang under: merged live,
    // its layer left hidden under the running disks, and the CLI says so.
    let out = String::from_utf8(ckpt_ok(&["checkpoint", "delete", &vms, "c1"])).unwrap();
    assert!(
        out.contains("hidden, under the running VM's disks"),
        "the delete does not say where its disks stay: {out}"
    );
    let left = vm_list(&vm);
    assert!(
        left["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["hidden"] == true),
        "a visible checkpoint is left: {left}"
    );
    exports_read("after deleting c1", &vm_model(6));
    server.stop();
    vm_disks_read_a_prefix("current after the revert", &vm_current_disks(&vm), 6, 6);
    drop(current);
}

/// A chain whose top is larger than its parent (a resized differencing
/// disk): the plugin serves the top's size, the parent's data under its
/// end and zeros past it; `qemu-img convert` over NBD reads the model, and
/// a write past the parent's end lands in the top.
#[test]
fn a_chain_whose_top_is_larger_than_its_parent() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.vhdx");
    let top = dir.path().join("top.avhdx");
    let b = Disk::create(&base, &CreateOptions::new(4 * MIB)).unwrap();
    let mut model = vec![0u8; 4 * MIB as usize];
    write(&b, &mut model, 91, 0, 4 * MIB as usize);
    b.close().unwrap();
    let mut t = Disk::create_child(&top, &base, &ChildOptions::default()).unwrap();
    t.resize(6 * MIB, ckpt::ResizeOptions::default()).unwrap();
    model.resize(6 * MIB as usize, 0);
    write(&t, &mut model, 92, 5 * MIB, 4096);
    t.close().unwrap();

    let server = Server::start(dir.path(), &top, false);
    let out = dir.path().join("nbd.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &server.uri()])
        .arg(&out));
    assert_same("a larger top over NBD", &file_bytes(&out), &model, 0);
    qemu_io(&server.uri(), &["write -P 0x3c 4194304 65536".to_string()]);
    server.stop();
    model[4 * MIB as usize..4 * MIB as usize + 65536].fill(0x3c);
    let d = Disk::open(&top, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.virtual_size(), 6 * MIB);
    assert_same("after a write over NBD", &support::read_all(&d), &model, 0);
}

/// `qemu-img map --output=json` of a changed-since export as (offset,
/// length) of its data runs; asserts that no run is said to read as zeros
/// (unchanged ranges are holes of unknown content, not zeros).
fn changed_map(uri: &str) -> Vec<(u64, u64)> {
    let out = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", uri]));
    let entries: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("qemu-img map JSON ({e}):\n{out}"));
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for e in entries.as_array().expect("an array") {
        let (start, length) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        assert_eq!(
            e["zero"], false,
            "an unchanged range said to read as zeros: {e}"
        );
        if e["data"] == true {
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == start => r.1 += length,
                _ => runs.push((start, length)),
            }
        }
    }
    runs
}

/// Issue 15: the export `ckpt:changed-since:REF` (and `K:…` for disk K)
/// maps as data exactly the ranges `ckpt changes DIR --since REF` gives,
/// for a checkpoint and for a reference point, reads as the disk does, is
/// read-only, and a write through the disk's export shows in the next
/// connection's map. An unknown REF or disk fails the connection.
#[cfg(feature = "cli")]
#[test]
fn vm_mode_serves_the_changes_since_a_point_as_block_status() {
    if !tools() {
        return;
    }
    let tmp = tempdir();
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let vm = make_vm(&root);
    let vms = vm.to_str().unwrap();
    for k in 0..4 {
        let (d, off, b) = vm_put(k);
        let top = ckpt::checkpoint::Vm::load(&vm).unwrap().current.disks[d].clone();
        let disk = Disk::open(&top, OpenMode::ReadWrite).unwrap();
        disk.write_at(&vec![b; REGION as usize], off).unwrap();
        disk.close().unwrap();
    }
    ckpt_ok(&["checkpoint", "create", vms, "r"]);
    ckpt_ok(&["checkpoint", "create", vms, "c"]);
    for k in 4..10 {
        let (d, off, b) = vm_put(k);
        let top = ckpt::checkpoint::Vm::load(&vm).unwrap().current.disks[d].clone();
        let disk = Disk::open(&top, OpenMode::ReadWrite).unwrap();
        disk.write_at(&vec![b; REGION as usize], off).unwrap();
        disk.close().unwrap();
    }
    ckpt_ok(&["checkpoint", "reference", vms, "r"]);
    let want = |since: &str, k: usize| -> Vec<(u64, u64)> {
        let out = ckpt_ok(&[
            "changes",
            vms,
            "--since",
            since,
            "--disk",
            &k.to_string(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
            .collect()
    };
    let (since_r, since_c) = ([want("r", 0), want("r", 1)], [want("c", 0), want("c", 1)]);
    assert!(!since_r[0].is_empty() && !since_c[1].is_empty());
    let sockdir = root.join("nbd");
    std::fs::create_dir(&sockdir).expect("mkdir");
    let server = Server::start_vm(&sockdir, &vm, false);
    for k in 0..2 {
        assert_eq!(
            changed_map(&server.export_uri(&format!("{k}:ckpt:changed-since:r"))),
            since_r[k],
            "disk {k} since reference point r"
        );
        assert_eq!(
            changed_map(&server.export_uri(&format!("{k}:ckpt:changed-since:c"))),
            since_c[k],
            "disk {k} since checkpoint c"
        );
    }
    assert_eq!(
        changed_map(&server.export_uri("ckpt:changed-since:r")),
        since_r[0],
        "no K: disk 0"
    );
    // It reads as the disk does, and refuses writes.
    let model = vm_model(10);
    let (_, off, b) = vm_put(8);
    let out = run(Command::new("qemu-io").args([
        "-r",
        "-f",
        "raw",
        "-c",
        &format!("read -P {b:#x} {off} {REGION}"),
        &server.export_uri("ckpt:changed-since:r"),
    ]));
    assert!(!out.contains("fail") && !out.contains("error"), "{out}");
    assert_eq!(model[0][off as usize], b);
    let o = run_unchecked(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x11 0 4096",
        &server.export_uri("ckpt:changed-since:r"),
    ]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success() || text.contains("failed") || text.contains("read-only"),
        "a write to a changed-since export: {text}"
    );
    // A write through disk 0's export: the next connection maps it too.
    qemu_io(
        &server.export_uri("0"),
        &["write -P 0x5a 7340032 65536".into(), "flush".into()],
    );
    let after = changed_map(&server.export_uri("ckpt:changed-since:r"));
    assert!(
        after
            .iter()
            .any(|&(o, l)| o <= 7 << 20 && (7 << 20) + 65536 <= o + l),
        "the new write is not in {after:?}"
    );
    // Unknown REF, disk past the end: the connection fails.
    for bad in [
        "ckpt:changed-since:nope",
        "5:ckpt:changed-since:r",
        "ckpt:changed-since:",
    ] {
        let o = run_unchecked(Command::new("qemu-img").args([
            "map",
            "--output=json",
            "-f",
            "raw",
            &server.export_uri(bad),
        ]));
        assert!(!o.status.success(), "export {bad} was served");
    }
    let log = server.log_text();
    assert!(
        log.contains("nope"),
        "the log names the unknown REF:\n{log}"
    );
    drop(server);
}

/// A VHD chain (dynamic base, differencing top) served: qemu-img reads the
/// chain's bytes, qemu-io writes, zeroes and discards land in the top
/// file (the base unchanged), and libckpt reads them back after the stop.
#[test]
fn a_vhd_chain_is_served_like_a_vhdx_one() {
    if !tools() {
        return;
    }
    let dir = tempdir();
    let base = dir.path().join("base.vhd");
    let top = dir.path().join("top.avhd");
    let mut model = vec![0u8; SIZE as usize];
    let d = Disk::create_vhd(&base, &ckpt::VhdOptions::new(SIZE)).unwrap();
    write(&d, &mut model, 1, 0, 3 * MIB as usize);
    d.close().unwrap();
    let d = Disk::create_child(&top, &base, &ChildOptions::default()).unwrap();
    write(&d, &mut model, 2, 2 * MIB + 777, 100_000);
    d.close().unwrap();
    let base_before = file_bytes(&base);
    let server = Server::start(dir.path(), &top, false);
    let uri = server.uri();
    let got = dir.path().join("served.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &uri])
        .arg(&got));
    assert_same("NBD reads the VHD chain", &file_bytes(&got), &model, 0);
    let ops: [(&str, u64, u64, u8); 3] = [
        ("write -P 0x5a", 100_000, 70_000, 0x5a),
        ("write -z", MIB - 512, 4096, 0),
        ("discard", 2 * MIB, 2 * MIB, 0),
    ];
    let mut cmds: Vec<String> = Vec::new();
    for (cmd, off, len, byte) in ops {
        cmds.push(format!("{cmd} {off} {len}"));
        model[off as usize..(off + len) as usize].fill(byte);
    }
    cmds.push("flush".into());
    qemu_io(&uri, &cmds);
    server.stop();
    assert_same("libckpt after NBD writes", &read_all(&top), &model, 0);
    assert!(file_bytes(&base) == base_before, "base.vhd changed");
}
