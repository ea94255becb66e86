//! The tiny QEMU guest of `examples/qemu/build-guest.sh` and the plumbing to
//! drive it: the built kernel and initramfs ([`artifacts`]), an ext4 VHDX
//! ([`ext4_vhdx`]), the accelerator ([`accel`]), the serial console
//! ([`Console`]) and JSON clients for QMP and the guest agent ([`Json`]).
//! Every wait has a timeout; its panic shows what was last received.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{in_ci, missing, require_tools, run};

/// Build the guest once per test run into `<target>/guest/` and return its
/// kernel and initramfs; `None` (with a notice) outside CI when a tool is
/// missing or the build fails, a panic under `CI=true`.
pub fn artifacts() -> Option<(PathBuf, PathBuf)> {
    static BUILT: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

/// Run the builder (idempotent: a no-op when its outputs are current).
fn build() -> Option<(PathBuf, PathBuf)> {
    if !require_tools(&["apt-get", "apt-cache", "dpkg-deb", "gzip", "ldd"]) {
        return None;
    }
    let out = super::plugin::profile_dir()
        .parent()
        .expect("target directory")
        .join("guest");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/qemu/build-guest.sh");
    let res = Command::new("sh").arg(&script).arg(&out).output();
    match res {
        Ok(o) if o.status.success() => Some((out.join("vmlinuz"), out.join("initrd.img"))),
        Ok(o) => {
            let msg = format!(
                "{} failed ({}): {}",
                script.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(!in_ci(), "{msg}");
            eprintln!("note: no test guest: {msg}");
            None
        }
        Err(e) => {
            assert!(!in_ci(), "cannot run {}: {e}", script.display());
            missing("sh");
            None
        }
    }
}

/// Make `path`, a VHDX holding an empty ext4 file system of `size_mib` MiB
/// (mkfs.ext4 on a raw file, then `ckpt convert`).
pub fn ext4_vhdx(path: &Path, size_mib: u64) {
    let raw = path.with_extension("raw");
    let f = std::fs::File::create(&raw).expect("create the raw file");
    f.set_len(size_mib << 20).expect("size the raw file");
    drop(f);
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&raw));
    let (raw_s, path_s) = (
        raw.to_str().expect("UTF-8 path"),
        path.to_str().expect("UTF-8 path"),
    );
    super::cli::ok(&["convert", raw_s, path_s]);
    std::fs::remove_file(&raw).expect("remove the raw file");
}

/// The QEMU accelerator: `CKPT_GUEST_ACCEL` when set (`kvm`, `tcg`, or
/// any `-accel` value), else `tcg,thread=multi` (software). KVM is not the
/// default: on a host whose `/dev/kvm` opens but whose (nested) KVM does
/// not run the guest, the kernel hangs at boot (seen on the project's CI
/// machines), while software emulation always works.
pub fn accel() -> String {
    match std::env::var("CKPT_GUEST_ACCEL") {
        Ok(a) if a != "tcg" => a,
        _ => "tcg,thread=multi".into(),
    }
}

/// Connect to a Unix socket QEMU creates, retrying until `timeout`.
fn connect(path: &Path, timeout: Duration) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if start.elapsed() > timeout => {
                panic!(
                    "cannot connect to {} within {timeout:?}: {e}",
                    path.display()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// QEMU's serial port (a `-chardev socket,server=on` Unix socket): the
/// guest's console with its shell.
pub struct Console {
    stream: UnixStream,
    /// Everything received so far (`\r` removed).
    seen: String,
    /// Where the next wait starts looking in `seen`.
    pos: usize,
    /// Numbers the markers of [`Console::run`].
    next: u64,
}

impl Console {
    /// Connect to the serial socket at `path` (retrying while QEMU starts).
    pub fn connect(path: &Path) -> Console {
        Console {
            stream: connect(path, Duration::from_secs(10)),
            seen: String::new(),
            pos: 0,
            next: 0,
        }
    }

    /// The last 2000 characters received (for failure messages).
    pub fn tail(&self) -> &str {
        let mut start = self.seen.len().saturating_sub(2000);
        while !self.seen.is_char_boundary(start) {
            start += 1;
        }
        &self.seen[start..]
    }

    /// Read until `text` appears after what earlier waits consumed; return
    /// what came before it and consume through it. Panics after `timeout`.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen[self.pos..].find(text) {
                let before = self.seen[self.pos..self.pos + i].to_string();
                self.pos += i + text.len();
                return before;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {text:?} on the console within {timeout:?}; last output:\n{}",
                self.tail()
            );
            self.stream
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("set the console's read timeout");
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("the console closed; last output:\n{}", self.tail()),
                Ok(n) => self
                    .seen
                    .push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', "")),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("console read failed: {e}; last output:\n{}", self.tail()),
            }
        }
    }

    /// Send one line to the guest's shell.
    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the console");
    }

    /// Run `cmd` in the guest's shell and return its output and exit
    /// status. The output is read between markers the shell prints; they
    /// are typed split by quotes (`"@@""B1"`), so the echo of the typed
    /// line never matches them.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> (String, i32) {
        self.next += 1;
        let n = self.next;
        self.send(&format!(
            "echo \"@@\"\"B{n}\"; {cmd}; echo \"@@\"\"E{n} $?\""
        ));
        self.wait_for(&format!("@@B{n}\n"), timeout);
        let out = self.wait_for(&format!("@@E{n} "), timeout);
        let status = self.wait_for("\n", timeout);
        let status = status
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad status {status:?} of {cmd:?}"));
        (out, status)
    }
}

/// A JSON line protocol over a Unix socket: QMP ([`Json::qmp`]) or the
/// guest agent ([`Json::qga`]).
pub struct Json {
    reader: BufReader<UnixStream>,
    what: &'static str,
}

impl Json {
    /// Connect to QMP at `path`, read the greeting and enter command mode.
    pub fn qmp(path: &Path) -> Json {
        let stream = connect(path, Duration::from_secs(10));
        let mut j = Json {
            reader: BufReader::new(stream),
            what: "QMP",
        };
        let greeting = j.read_line(Duration::from_secs(10)).expect("QMP greeting");
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        j.call(
            "qmp_capabilities",
            serde_json::json!({}),
            Duration::from_secs(10),
        )
        .expect("qmp_capabilities");
        j
    }

    /// Connect to the guest agent's host side at `path` (QEMU's chardev).
    pub fn qga(path: &Path) -> Json {
        Json {
            reader: BufReader::new(connect(path, Duration::from_secs(10))),
            what: "QGA",
        }
    }

    /// Read one JSON message, or `Err` after `timeout`.
    fn read_line(&mut self, timeout: Duration) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + timeout;
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{}: no answer within {timeout:?}", self.what));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("set the read timeout");
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(format!("{}: connection closed", self.what)),
                Ok(_) if line.trim().is_empty() => line.clear(),
                Ok(_) => {
                    return serde_json::from_str(line.trim_start_matches('\u{ff}'))
                        .map_err(|e| format!("{}: bad JSON {line:?}: {e}", self.what))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("{}: read failed: {e}", self.what)),
            }
        }
    }

    /// Run `command` with `args`; its `return` value, or `Err` with the
    /// error or the timeout. QMP events read meanwhile are skipped.
    pub fn call(
        &mut self,
        command: &str,
        args: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let msg = serde_json::json!({"execute": command, "arguments": args});
        self.reader
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("{}: write failed: {e}", self.what))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.read_line(left)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("{} {command}: {e}", self.what));
            }
        }
    }

    /// The agent's `guest-sync`: the agent echoes `id` back once the
    /// channel is clean (stale answers of earlier timed-out calls skipped).
    pub fn sync(&mut self, id: u64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut left = timeout;
        loop {
            let r = self.call("guest-sync", serde_json::json!({"id": id}), left)?;
            if r.as_u64() == Some(id) {
                return Ok(());
            }
            left = deadline.saturating_duration_since(Instant::now());
        }
    }
}
