//! Shared helpers for the integration tests: temporary folders, the real
//! test images (`$CKPT_TESTDATA` or `../shared/testdata`), the external
//! oracles (`qemu-img`, `qemu-io`, `bzip2`), deterministic patterns, and a
//! small sparse reference model of a virtual disk.
//!
//! Every test file that uses it says `mod common;`. Not every test file uses
//! every helper, hence the `dead_code` allowance. The CLI tests also use
//! [`cli`]: running the `ckpt` tool (only with the `cli` feature).
//!
//! Oracles: [`require_tool`] and [`testdata_image`] return `false`/`None`
//! with a notice when something is missing, so that a developer without
//! QEMU can still run the suite; under `CI=true` a missing oracle panics
//! instead, so that CI never passes by skipping.

#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------- environment

/// Whether the suite runs under CI (`CI=true` or `CI=1`): then a missing
/// oracle is a failure, not a notice.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .ok()
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("true") | Some("1") | Some("yes")
    )
}

/// Report that something a test needs is missing: a notice normally, a
/// panic under CI.
pub fn missing(what: &str) {
    if in_ci() {
        panic!("CI=true but {what} is missing: this test cannot run");
    }
    eprintln!("NOTICE: {what} is missing; skipping this check (it is required under CI=true)");
}

/// Find an executable by name on `$PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `true` when `name` is on `$PATH`. Otherwise prints a notice and returns
/// `false`, or panics under `CI=true`.
pub fn require_tool(name: &str) -> bool {
    if find_tool(name).is_some() {
        true
    } else {
        missing(&format!("the tool `{name}`"));
        false
    }
}

/// `true` when every tool is present (see [`require_tool`]).
pub fn require_tools(names: &[&str]) -> bool {
    names.iter().all(|n| require_tool(n))
}

/// A fresh temporary folder, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ckpt-test-")
        .tempdir()
        .expect("create a temporary folder")
}

// ------------------------------------------------------------------ test data

/// The folder holding the real test images: `$CKPT_TESTDATA`, or
/// `../shared/testdata` beside the crate. `None` when it does not exist.
pub fn testdata_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("CKPT_TESTDATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"),
    };
    dir.is_dir().then_some(dir)
}

/// The path of one file of the test data (for example
/// `iotest-dynamic-1G.vhdx.bz2`). `None` with a notice (panic under CI)
/// when it is not there.
pub fn testdata_file(name: &str) -> Option<PathBuf> {
    let found = testdata_dir().map(|d| d.join(name)).filter(|p| p.is_file());
    if found.is_none() {
        missing(&format!(
            "the test image `{name}` (set CKPT_TESTDATA or put ../shared/testdata beside the crate)"
        ));
    }
    found
}

/// Decompress the test image `name` (a `.bz2` file of the test data) into
/// `dir` and return the path of the decompressed file (its name without
/// `.bz2`). `None` when the image or `bzip2` is missing (see [`missing`]).
pub fn testdata_image(name: &str, dir: &Path) -> Option<PathBuf> {
    let src = testdata_file(name)?;
    if !require_tool("bzip2") {
        return None;
    }
    let stem = name.strip_suffix(".bz2").unwrap_or(name);
    let dst = dir.join(stem);
    bunzip2(&src, &dst);
    Some(dst)
}

/// Decompress `src` into `dst` with `bzip2 -dc`, leaving holes where whole
/// 64 KiB runs are zero (the images are mostly zeros).
pub fn bunzip2(src: &Path, dst: &Path) {
    let mut child = Command::new("bzip2")
        .arg("-dc")
        .arg(src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bzip2");
    let mut out = File::create(dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    let mut stdout = child.stdout.take().expect("bzip2 stdout");
    const CHUNK: usize = 64 << 10;
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = read_full(&mut stdout, &mut buf);
        if n == 0 {
            break;
        }
        if buf[..n] != zeros[..n] {
            out.seek(SeekFrom::Start(len)).expect("seek");
            out.write_all(&buf[..n]).expect("write decompressed image");
        }
        len += n as u64;
    }
    out.set_len(len)
        .expect("set the length of the decompressed image");
    let status = child.wait_with_output().expect("wait for bzip2");
    assert!(
        status.status.success(),
        "bzip2 -dc {} failed: {}",
        src.display(),
        String::from_utf8_lossy(&status.stderr)
    );
}

/// Read until `buf` is full or the end of the stream; returns the count.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

// ------------------------------------------------------------ running tools

/// Render a command for messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command, returning its output whatever the exit status.
pub fn run_unchecked(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", show(cmd)))
}

/// Run a command and assert that it succeeds; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = run_unchecked(cmd);
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        show(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img ARGS…`, asserting success; returns stdout.
pub fn qemu_img<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    run(Command::new("qemu-img").args(args))
}

/// `qemu-io -f FORMAT -c CMD… PATH`, asserting success (qemu-io exits
/// non-zero when any command fails, e.g. a pattern mismatch in
/// `read -P`); returns stdout.
pub fn qemu_io<S: AsRef<str>>(format: &str, path: &Path, cmds: &[S]) -> String {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg(format);
    for cmd in cmds {
        c.arg("-c").arg(cmd.as_ref());
    }
    c.arg(path);
    let out = run(&mut c);
    // Belt and braces: older qemu-io versions exit 0 after a failed command.
    for bad in ["failed", "error", "Error"] {
        assert!(
            !out.contains(bad),
            "`{}` reported a failure:\n{out}",
            show(&c)
        );
    }
    out
}

/// `qemu-img create -f vhdx -o OPTS PATH SIZE`.
pub fn qemu_create_vhdx(path: &Path, size: u64, opts: &str) {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "vhdx"]);
    if !opts.is_empty() {
        c.arg("-o").arg(opts);
    }
    c.arg(path).arg(size.to_string());
    run(&mut c);
}

/// `qemu-img check -f vhdx PATH` must find no errors.
pub fn qemu_check(path: &Path) {
    let out = qemu_img(&[
        "check".as_ref(),
        "-f".as_ref(),
        "vhdx".as_ref(),
        path.as_os_str(),
    ]);
    assert!(
        out.contains("No errors were found"),
        "qemu-img check {}: {out}",
        path.display()
    );
}

/// `qemu-img convert -O raw` of a VHDX into `raw`.
pub fn qemu_convert_raw(vhdx: &Path, raw: &Path) {
    qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "vhdx".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        vhdx.as_os_str(),
        raw.as_os_str(),
    ]);
}

/// `qemu-img compare -f vhdx -F raw VHDX RAW` must report identical
/// contents, and QEMU must see the same virtual size as the raw file.
pub fn qemu_compare_raw(vhdx: &Path, raw: &Path) {
    let raw_len = std::fs::metadata(raw).expect("raw file").len();
    assert_eq!(
        qemu_virtual_size(vhdx),
        raw_len,
        "QEMU's virtual size of {} differs from the raw model",
        vhdx.display()
    );
    let out = qemu_img(&[
        "compare".as_ref(),
        "-f".as_ref(),
        "vhdx".as_ref(),
        "-F".as_ref(),
        "raw".as_ref(),
        vhdx.as_os_str(),
        raw.as_os_str(),
    ]);
    assert!(
        out.contains("Images are identical"),
        "qemu-img compare: {out}"
    );
}

/// The virtual size QEMU reads from a VHDX (`qemu-img info --output=json`).
pub fn qemu_virtual_size(vhdx: &Path) -> u64 {
    let out = qemu_img(&[
        "info".as_ref(),
        "-f".as_ref(),
        "vhdx".as_ref(),
        "--output=json".as_ref(),
        vhdx.as_os_str(),
    ]);
    json_u64(&out, "virtual-size")
        .unwrap_or_else(|| panic!("no virtual-size in qemu-img info output:\n{out}"))
}

/// The number under `"key"` at the top level of a JSON object (enough for
/// `qemu-img info`, whose child nodes repeat the same keys).
pub fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\"");
    let bytes = json.as_bytes();
    let (mut depth, mut in_str, mut i) = (0i32, false, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_str => i += 1,
            b'"' if !in_str && depth == 1 && json[i..].starts_with(&pat) => {
                let rest = json[i + pat.len()..].trim_start().strip_prefix(':')?;
                let digits: String = rest
                    .trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                return digits.parse().ok();
            }
            b'"' => in_str = !in_str,
            b'{' | b'[' if !in_str => depth += 1,
            b'}' | b']' if !in_str => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

// ------------------------------------------------------------------ patterns

/// SplitMix64: a tiny deterministic generator for reproducible tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A position-dependent pattern: the byte at absolute offset `p` depends
/// only on `seed` and `p`, so any range can be regenerated and misplaced
/// data is caught.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut p = offset;
    let end = offset + len as u64;
    while p < end {
        let word = mix64(seed.wrapping_mul(0x1000_0000_01B3) ^ (p >> 3)).to_le_bytes();
        let i = (p & 7) as usize;
        let take = (8 - i).min((end - p) as usize);
        v.extend_from_slice(&word[i..i + take]);
        p += take as u64;
    }
    v
}

// ------------------------------------------------------------- the model

/// A sparse reference model of a virtual disk: the writes in order (later
/// ones win), zeros elsewhere. Cheap for large, mostly empty disks.
#[derive(Debug, Clone)]
pub struct Model {
    /// Virtual size in bytes.
    pub size: u64,
    writes: Vec<(u64, Fill)>,
}

#[derive(Debug, Clone)]
enum Fill {
    Byte(u8, u64),
    Data(Vec<u8>),
}

impl Fill {
    fn len(&self) -> u64 {
        match self {
            Fill::Byte(_, n) => *n,
            Fill::Data(d) => d.len() as u64,
        }
    }
}

impl Model {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> Model {
        Model {
            size,
            writes: Vec::new(),
        }
    }
    fn check(&self, off: u64, len: u64) {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.size),
            "model write {off}+{len} outside {} bytes",
            self.size
        );
    }
    /// `len` bytes of `byte` at `off` (like `qemu-io write -P`).
    pub fn fill(&mut self, off: u64, len: u64, byte: u8) {
        self.check(off, len);
        self.writes.push((off, Fill::Byte(byte, len)));
    }
    /// Zeros over `[off, off+len)` (a trim, or `write -z`).
    pub fn zero(&mut self, off: u64, len: u64) {
        self.fill(off, len, 0);
    }
    /// `data` at `off`.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        self.check(off, data.len() as u64);
        self.writes.push((off, Fill::Data(data.to_vec())));
    }
    /// The expected contents of `[off, off+buf.len())`.
    pub fn read(&self, buf: &mut [u8], off: u64) {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (woff, fill) in &self.writes {
            let wend = woff + fill.len();
            let (s, e) = ((*woff).max(off), wend.min(end));
            if s >= e {
                continue;
            }
            let dst = &mut buf[(s - off) as usize..(e - off) as usize];
            match fill {
                Fill::Byte(b, _) => dst.fill(*b),
                Fill::Data(d) => dst.copy_from_slice(&d[(s - woff) as usize..(e - woff) as usize]),
            }
        }
    }
    /// Write the model as a raw image file of `size` bytes (sparse).
    pub fn write_raw(&self, path: &Path) {
        let mut f = File::create(path).expect("create raw model");
        f.set_len(self.size).expect("size raw model");
        for (off, fill) in &self.writes {
            f.seek(SeekFrom::Start(*off)).expect("seek");
            match fill {
                Fill::Byte(b, n) => f.write_all(&vec![*b; *n as usize]),
                Fill::Data(d) => f.write_all(d),
            }
            .expect("write raw model");
        }
    }
}

// --------------------------------------------------------- comparisons

/// Assert two byte slices are equal, naming the first differing offset
/// (`base` is the absolute offset of the slices) instead of dumping them.
pub fn assert_same(what: &str, got: &[u8], want: &[u8], base: u64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        let n = got[i..]
            .iter()
            .zip(&want[i..])
            .take_while(|(a, b)| a != b)
            .count();
        panic!(
            "{what}: first difference at offset {} ({:#x}): got {:#04x}, expected {:#04x} ({} differing bytes in a row)",
            base + i as u64,
            base + i as u64,
            got[i],
            want[i],
            n
        );
    }
}

/// Compare `len` bytes produced by two readers in `chunk`-sized pieces.
/// Each closure fills its buffer with the bytes at the given offset.
pub fn compare_ranges(
    what: &str,
    len: u64,
    chunk: usize,
    mut got: impl FnMut(&mut [u8], u64),
    mut want: impl FnMut(&mut [u8], u64),
) {
    let mut a = vec![0u8; chunk];
    let mut b = vec![0u8; chunk];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk as u64) as usize;
        got(&mut a[..n], off);
        want(&mut b[..n], off);
        assert_same(what, &a[..n], &b[..n], off);
        off += n as u64;
    }
}

/// Read `buf.len()` bytes of a file at `off` (zeros past its end).
pub fn read_file_at(f: &File, buf: &mut [u8], off: u64) {
    use std::os::unix::fs::FileExt;
    buf.fill(0);
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The first offset where two files differ (length included), or `None`.
pub fn first_file_difference(a: &Path, b: &Path) -> Option<u64> {
    let fa = File::open(a).expect("open file");
    let fb = File::open(b).expect("open file");
    let (la, lb) = (
        fa.metadata().expect("stat").len(),
        fb.metadata().expect("stat").len(),
    );
    const CHUNK: usize = 1 << 20;
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut off = 0;
    while off < la.min(lb) {
        read_file_at(&fa, &mut x, off);
        read_file_at(&fb, &mut y, off);
        if x != y {
            let i = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(0);
            return Some(off + i as u64);
        }
        off += CHUNK as u64;
    }
    (la != lb).then_some(la.min(lb))
}

/// Assert that two files hold the same bytes.
pub fn assert_files_identical(what: &str, a: &Path, b: &Path) {
    if let Some(off) = first_file_difference(a, b) {
        panic!(
            "{what}: {} and {} differ at offset {off} ({off:#x})",
            a.display(),
            b.display()
        );
    }
}

/// Copy a file (for a before/after comparison).
pub fn snapshot(path: &Path, to: &Path) {
    std::fs::copy(path, to).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
}

// ------------------------------------------------------------- ckpt helpers

/// Compare the whole of an open disk against a model, in 4 MiB reads.
pub fn assert_disk_matches(what: &str, disk: &ckpt::Disk, model: &Model) {
    assert_eq!(disk.virtual_size(), model.size, "{what}: virtual size");
    compare_ranges(
        what,
        model.size,
        4 << 20,
        |b, o| {
            disk.read_at(b, o)
                .unwrap_or_else(|e| panic!("{what}: read {}+{}: {e}", o, b.len()))
        },
        |b, o| model.read(b, o),
    );
}

/// Open a disk read-write, panicking with the path and the error.
pub fn open_rw(path: &Path) -> ckpt::Disk {
    ckpt::Disk::open(path, ckpt::OpenMode::ReadWrite)
        .unwrap_or_else(|e| panic!("open {} read-write: {e}", path.display()))
}

/// `ckpt::check` must find no problems.
pub fn assert_ckpt_check(path: &Path) -> ckpt::CheckReport {
    let report =
        ckpt::check(path).unwrap_or_else(|e| panic!("ckpt::check {}: {e}", path.display()));
    assert!(
        report.is_ok(),
        "ckpt::check {}: problems {:?} (notes {:?}, {})",
        path.display(),
        report.problems,
        report.notes,
        report.summary
    );
    report
}
