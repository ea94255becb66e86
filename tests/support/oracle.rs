//! The external oracles the tests judge the engine's files with, and the
//! test images: finding and running `qemu-img`, `qemu-io`, `bzip2` and
//! libvhdi's Python binding (`pyvhdi`), the real images of
//! `$CKPT_TESTDATA` (or `../shared/testdata`), and [`in_ci`].
//!
//! A missing oracle gives `false`/`None` with a notice, so that a developer
//! without QEMU can still run the suite; under `CI=true` it panics instead,
//! so that CI never passes by skipping.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

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

/// The Python interpreter that has `pyvhdi` (Debian's `python3-libvhdi`).
pub const PYTHON: &str = "/usr/bin/python3";

/// Whether `tool args…` runs and succeeds. Otherwise a notice (a panic
/// under `CI=true`, see [`missing`]) and `false`.
pub fn have(tool: &str, args: &[&str]) -> bool {
    let found = Command::new(tool)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        missing(&format!("a working `{tool} {}`", args.join(" ")));
    }
    found
}

/// Whether `qemu-img` and `qemu-io` work (see [`have`]).
pub fn have_qemu() -> bool {
    have("qemu-img", &["--version"]) && have("qemu-io", &["--version"])
}

/// Whether libvhdi's Python binding works (see [`have`]).
pub fn have_pyvhdi() -> bool {
    have(PYTHON, &["-c", "import pyvhdi"])
}

/// Run the Python program `script` with `args` (with `pyvhdi` at hand),
/// asserting success; returns its standard output.
pub fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let o = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        o.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// QEMU reads the VHDX `vhdx` as exactly `model` (compared with a raw copy
/// of the model written into `dir`, then removed).
pub fn qemu_reads(vhdx: &Path, model: &[u8], dir: &Path) {
    let name = vhdx.file_name().expect("a file name").to_string_lossy();
    let raw = dir.join(format!("{name}.model.raw"));
    std::fs::write(&raw, model).expect("write the raw model");
    qemu_compare_raw(vhdx, &raw);
    std::fs::remove_file(&raw).expect("remove the raw model");
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

/// Path of `qemu-img` when it runs. Without it: `None` with a notice, or a
/// panic under CI.
pub fn qemu_img_bin() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let ok = Command::new("qemu-img")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then(|| PathBuf::from("qemu-img"))
    });
    match found {
        Some(p) => Some(p.as_path()),
        None => {
            assert!(
                !in_ci(),
                "CI=true but qemu-img is missing: the QEMU cross-checks cannot run"
            );
            eprintln!("NOTICE: qemu-img is missing; skipping the QEMU cross-check (required under CI=true)");
            None
        }
    }
}

/// `qemu-io` next to `qemu-img` (same rules as [`qemu_img_bin`]).
pub fn qemu_io_bin() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let ok = Command::new("qemu-io")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then(|| PathBuf::from("qemu-io"))
    });
    match found {
        Some(p) => Some(p.as_path()),
        None => {
            assert!(!in_ci(), "CI=true but qemu-io is missing");
            eprintln!("NOTICE: qemu-io is missing; skipping the QEMU cross-check (required under CI=true)");
            None
        }
    }
}

/// Run a command; panic with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
