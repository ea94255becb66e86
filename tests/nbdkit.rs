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
//!   message.
//!
//! Without nbdkit, qemu-img, qemu-io, a C compiler or nbdkit-plugin.h the
//! tests print a notice and pass, except under `CI=true`.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};
use common::{assert_same, pattern, require_tools, run, run_unchecked, show, tempdir, MIB};

/// Virtual size of the test chain.
const SIZE: u64 = 8 * MIB;

// ------------------------------------------------------------ the plugin

/// The profile directory of this test binary (`<target>/<profile>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// Build `libckpt.a` for this profile (a no-op when it is current) and
/// return its path. `cargo test` releases its build lock before it runs
/// the tests, so the nested build does not deadlock.
fn staticlib() -> PathBuf {
    let dir = profile_dir();
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name")
        .to_string();
    let target = dir.parent().expect("target directory").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--lib", "--quiet", "--target-dir"])
        .arg(&target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        p => {
            cmd.args(["--profile", p]);
        }
    }
    if !cfg!(feature = "cli") {
        cmd.arg("--no-default-features");
    }
    run(&mut cmd);
    let lib = dir.join("libckpt.a");
    assert!(lib.is_file(), "{} missing after cargo build", lib.display());
    lib
}

/// Whether the plugin's header is installed (nbdkit-plugin-dev).
fn have_plugin_header() -> bool {
    let ok = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-E", "-x", "c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(b"#include <nbdkit-plugin.h>\n")?;
            c.wait()
        })
        .is_ok_and(|s| s.success());
    if !ok {
        common::missing("nbdkit-plugin.h (nbdkit-plugin-dev)");
    }
    ok
}

/// The tools every test here needs; `false` (with a notice) when one is
/// missing outside CI.
fn tools() -> bool {
    require_tools(&["nbdkit", "qemu-img", "qemu-io", "cc"]) && have_plugin_header()
}

/// Build the plugin once per test run with `examples/nbdkit/build.sh`
/// (written to a temporary name, then renamed, so concurrent runs never
/// load a half-written file).
fn plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let lib = staticlib();
        let out = profile_dir().join("nbdkit-ckpt-plugin.so");
        let tmp = out.with_extension(format!("so.{}.tmp", std::process::id()));
        run(Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nbdkit/build.sh"))
            .env("LIBCKPT_A", &lib)
            .env("OUT", &tmp));
        std::fs::rename(&tmp, &out).expect("rename the plugin into place");
        out
    })
}

// ------------------------------------------------------------ the server

/// A running `nbdkit -f -U SOCK plugin file=… [readonly=true]`, stopped
/// with SIGTERM (a clean unload: the disk is flushed and closed) when
/// dropped, unless it was killed already.
struct Server {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, disk: &Path, readonly: bool) -> Server {
        let socket = dir.join("nbd.sock");
        let log = dir.join("nbdkit.log");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-U"])
            .arg(&socket)
            .arg(plugin())
            .arg(format!("file={}", disk.display()));
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
        assert!(!log.contains("ckpt:"), "the plugin reported errors:\n{log}");
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
