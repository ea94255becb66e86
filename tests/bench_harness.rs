//! Smoke test of the side-by-side performance harness of issue 13,
//! `scripts/bench-vs-qemu.py`: `--quick --runs 1` against this build's
//! `ckpt` and nbdkit plugin (the profile directory of this test run, so
//! `cargo test --release` runs it on the release binaries) exits 0, prints
//! a Markdown table row for every workload and writes its raw timings with
//! `--json`. No timing is asserted: it only proves the harness still runs.
//!
//! Without python3, qemu-img, qemu-io, qemu-nbd, nbdkit, a C compiler or
//! nbdkit-plugin.h the test prints a notice and passes, except under
//! `CI=true`, where a missing tool fails it.

#![cfg(feature = "cli")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::plugin::{have_plugin_header, plugin};
use support::{require_tools, tempdir};

/// The workloads of the harness and the first cell of their table rows
/// (a workload with several comparisons prints `name (vs ...)` rows).
const WORKLOADS: &[&str] = &[
    "read",
    "alloc-write",
    "import",
    "export",
    "merge",
    "chain16",
    "nbd-read",
    "nbd-write",
    "nbd-convert",
    "threads",
    "rss-64t",
    "create",
];

#[test]
fn quick_run_prints_every_workload() {
    if !(require_tools(&[
        "python3", "qemu-img", "qemu-io", "qemu-nbd", "nbdkit", "cc", "cp", "stat",
    ]) && have_plugin_header())
    {
        return;
    }
    let ckpt = Path::new(env!("CARGO_BIN_EXE_ckpt"));
    let bin_dir = ckpt.parent().expect("the ckpt binary's directory");
    // Builds nbdkit-ckpt-plugin.so into the profile directory, next to ckpt.
    let so = plugin();
    assert_eq!(
        so.parent(),
        Some(bin_dir),
        "the plugin and the ckpt binary are in different directories"
    );
    let t = tempdir();
    let json = t.path().join("timings.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-vs-qemu.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--quick", "--runs", "1", "--bin-dir"])
        .arg(bin_dir)
        .arg("--dir")
        .arg(t.path().join("scratch"))
        .arg("--json")
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/bench-vs-qemu.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-vs-qemu.py --quick --runs 1 failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(
        rows.iter().any(|r| r.starts_with("| workload |")),
        "no table header in:\n{stdout}"
    );
    for w in WORKLOADS {
        let found = rows.iter().any(|r| {
            r.strip_prefix("| ")
                .and_then(|r| r.strip_prefix(w))
                .is_some_and(|rest| rest.starts_with(" |") || rest.starts_with(" ("))
        });
        assert!(found, "no table row for the workload {w} in:\n{stdout}");
    }
    for r in &rows {
        // workload, libckpt, other, ratio, goal, note: 7 bars.
        assert_eq!(r.matches('|').count(), 7, "malformed table row {r:?}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("read the --json file"))
            .expect("the --json file is JSON");
    for w in WORKLOADS {
        assert!(
            v["groups"][w].is_object(),
            "no raw timings for {w} in the --json file"
        );
    }
}
