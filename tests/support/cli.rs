//! Driving the `ckpt` command-line tool from the CLI tests (tests/cli.rs,
//! tests/cli_chain.rs, tests/cli_vm.rs): running it, the two outcomes a
//! script relies on (exit 0 with nothing on stderr; exit 1 with exactly one
//! `error: ` line) and its JSON output. The external readers the CLI tests
//! judge its files with (QEMU, libvhdi) are in [`super::oracle`].
//!
//! Declared only with the `cli` feature (the binary needs it), so that test
//! files built without it still compile `mod support;`.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A `Command` for the `ckpt` binary of this build.
pub fn ckpt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ckpt"))
}

/// Run `ckpt args…` with nothing on its standard input.
pub fn run(args: &[&str]) -> Output {
    ckpt()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ckpt")
}

/// Run `ckpt args…` with `stdin` on its standard input.
pub fn run_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = ckpt()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ckpt");
    let mut pipe = child.stdin.take().expect("stdin pipe");
    // The tool may stop reading early (an error); a broken pipe is fine.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output().expect("wait for ckpt")
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status 0 and nothing on stderr (so no progress bar either: the
/// tests do not run on a terminal). `args` only names the run in messages.
#[track_caller]
pub fn assert_ok(args: &[&str], o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "ckpt {args:?} failed\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(
        o.stderr.is_empty(),
        "ckpt {args:?} wrote to stderr: {}",
        stderr(o)
    );
}

/// Run `ckpt args…` and assert it succeeds (see [`assert_ok`]).
#[track_caller]
pub fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert_ok(args, &o);
    o
}

/// [`ok`], returning standard output as text.
#[track_caller]
pub fn ok_text(args: &[&str]) -> String {
    stdout(&ok(args))
}

/// [`ok`] with `stdin` on the tool's standard input.
#[track_caller]
pub fn ok_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let o = run_with_input(args, stdin);
    assert_ok(args, &o);
    o
}

/// [`ok`] run from the folder `dir` (for relative paths).
#[track_caller]
pub fn ok_in(dir: &Path, args: &[&str]) -> Output {
    let o = ckpt()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run ckpt");
    assert_ok(args, &o);
    o
}

/// `ckpt write FILE OFFSET` with `data` on its standard input, asserting
/// success.
#[track_caller]
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    ok_with_input(&["write", s(path), &offset.to_string()], data);
}

/// Exit status 1 and exactly one line on stderr, starting with `error: `
/// and not reporting a bug; returns that line. `args` only names the run
/// in messages.
#[track_caller]
pub fn fails(args: &[&str], o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "ckpt {args:?}: want exit 1\nstdout: {}\nstderr: {err}",
        stdout(o)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "ckpt {args:?}: want one stderr line, got: {err:?}"
    );
    assert!(lines[0].starts_with("error: "), "ckpt {args:?}: {err:?}");
    assert!(
        !err.contains("internal error") && !err.contains("panicked"),
        "ckpt {args:?} hit a bug: {err}"
    );
    lines[0].to_string()
}

/// Run `ckpt args…` and assert it fails (see [`fails`]); returns the error
/// line.
#[track_caller]
pub fn fail(args: &[&str]) -> String {
    fails(args, &run(args))
}

/// A path as a command-line argument (the temporary paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Run `ckpt args…`, assert success, and parse standard output as JSON.
#[track_caller]
pub fn json(args: &[&str]) -> serde_json::Value {
    let o = ok(args);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("ckpt {args:?}: not JSON ({e}): {}", stdout(&o)))
}

/// `ckpt info FILE --json`.
#[track_caller]
pub fn info_json(path: &Path) -> serde_json::Value {
    json(&["info", s(path), "--json"])
}
