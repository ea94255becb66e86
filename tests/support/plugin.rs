//! The nbdkit plugin of `examples/nbdkit/`, built once per test run
//! against this profile's `libckpt.a` (for every test file that serves a
//! disk or a VM with nbdkit).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::run;

/// The profile directory of this test binary
/// (`<target-dir>/[<triple>/]<profile>`), from `<that>/deps/<test>-<hash>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// Build `libckpt.a` for the profile, target and features of this test
/// run (a no-op when `cargo test` already built it, as it does for every
/// crate-type of the library) and return its path. This runs a nested
/// `cargo build --lib`; it does not deadlock: `cargo test` releases its
/// build lock before it runs the test binaries.
pub fn staticlib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = profile_dir();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name")
            .to_string();
        let mut target = dir.parent().expect("target directory").to_path_buf();
        let mut triple = None;
        // `<target-dir>/<triple>/<profile>` when built with --target.
        if !target.join("CACHEDIR.TAG").exists()
            && target
                .parent()
                .is_some_and(|p| p.join("CACHEDIR.TAG").exists())
        {
            triple = target
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string);
            target = target.parent().expect("checked above").to_path_buf();
        }
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
        if let Some(t) = &triple {
            cmd.args(["--target", t]);
        }
        if !cfg!(feature = "cli") {
            cmd.arg("--no-default-features");
        }
        run(&mut cmd);
        let lib = dir.join("libckpt.a");
        assert!(lib.is_file(), "{} missing after cargo build", lib.display());
        lib
    })
}

/// Whether the plugin's header is installed (nbdkit-plugin-dev).
pub fn have_plugin_header() -> bool {
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
        super::missing("nbdkit-plugin.h (nbdkit-plugin-dev)");
    }
    ok
}

/// Build the plugin once per test run with `examples/nbdkit/build.sh`
/// (written to a temporary name, then renamed, so concurrent runs never
/// load a half-written file).
pub fn plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let lib = staticlib();
        let out = profile_dir().join("nbdkit-ckpt-plugin.so");
        let tmp = out.with_extension(format!("so.{}.tmp", std::process::id()));
        run(Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nbdkit/build.sh"))
            .env("LIBCKPT_A", lib)
            .env("OUT", &tmp));
        std::fs::rename(&tmp, &out).expect("rename the plugin into place");
        out
    })
}
