//! The C API seen from C: the checked-in header matches the generated one,
//! compiles as C11 and C++, and the C tests (`tests/c/*.c`) and the C
//! example (`examples/c/example.c`) build with
//! `-std=c11 -Wall -Wextra -Werror -pedantic` against `libckpt.a` and pass.
//!
//! `CKPT_UPDATE_HEADER=1 cargo test --test c_api` rewrites
//! `include/libckpt.h` from the generated header.
//!
//! Without a C compiler the C tests print a notice and pass, except under
//! `CI=true`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

use support::plugin::staticlib;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn root() -> &'static Path {
    Path::new(MANIFEST_DIR)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `tool` runs; under CI a missing tool is a failure.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!in_ci(), "{tool} is required under CI=true");
        eprintln!("notice: {tool} not found; skipping this C API check");
    }
    ok
}

fn c_compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_string())
}

fn cxx_compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "g++".to_string())
}

fn generated_header() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("libckpt.h")
}

fn checked_in_header() -> PathBuf {
    root().join("include/libckpt.h")
}

#[test]
fn header_is_up_to_date() {
    let generated = std::fs::read_to_string(generated_header())
        .expect("build.rs did not write $OUT_DIR/libckpt.h");
    assert!(
        !generated.starts_with("#error"),
        "cbindgen failed in build.rs: {generated}"
    );
    let path = checked_in_header();
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current == generated {
        return;
    }
    if std::env::var("CKPT_UPDATE_HEADER").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write include/libckpt.h");
        eprintln!("notice: rewrote {}", path.display());
        return;
    }
    let first_diff = current
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| current.lines().count().min(generated.lines().count()));
    panic!(
        "include/libckpt.h is out of date (first difference at line {}); \
         run `CKPT_UPDATE_HEADER=1 cargo test --test c_api header_is_up_to_date` and commit it",
        first_diff + 1
    );
}

#[test]
fn header_compiles_as_c11_and_cpp() {
    let header = checked_in_header();
    if have(&c_compiler()) {
        run_ok(
            Command::new(c_compiler())
                .args([
                    "-fsyntax-only",
                    "-x",
                    "c",
                    "-std=c11",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-pedantic",
                ])
                .arg(&header),
        );
    }
    if have(&cxx_compiler()) {
        run_ok(
            Command::new(cxx_compiler())
                .args([
                    "-fsyntax-only",
                    "-x",
                    "c++",
                    "-std=c++11",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-pedantic",
                ])
                .arg(&header),
        );
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// Compile one C file against include/libckpt.h and libckpt.a into `out`.
fn compile_c(source: &Path, out: &Path) {
    compile_c_with(source, out, &[]);
}

/// As [`compile_c`], with extra compiler flags.
fn compile_c_with(source: &Path, out: &Path, extra: &[&str]) {
    let mut cmd = Command::new(c_compiler());
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .args(extra)
        .arg("-I")
        .arg(root().join("include"))
        .arg(source)
        .arg(staticlib())
        .args(["-lpthread", "-ldl", "-lm"])
        .arg("-o")
        .arg(out);
    run_ok(&mut cmd);
}

/// Compile `source`, run it with a fresh scratch directory as its argument,
/// and fail with its output unless it exits 0.
fn run_c_program(source: &str) {
    if !have(&c_compiler()) {
        return;
    }
    let source = root().join(source);
    let scratch = tempfile::tempdir().expect("tempdir");
    let exe = scratch.path().join("prog");
    compile_c(&source, &exe);
    let data = scratch.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let stdout = run_ok(Command::new(&exe).arg(&data));
    eprint!("{stdout}");
}

#[test]
fn c_null_arguments() {
    run_c_program("tests/c/test_null_args.c");
}

#[test]
fn c_errors_and_last_error() {
    run_c_program("tests/c/test_errors.c");
}

#[test]
fn c_disk_io() {
    run_c_program("tests/c/test_disk_io.c");
}

#[test]
fn c_chains() {
    run_c_program("tests/c/test_chain.c");
}

#[test]
fn c_vm_checkpoints() {
    run_c_program("tests/c/test_vm.c");
}

#[test]
fn c_extents() {
    run_c_program("tests/c/test_extents.c");
}

#[test]
fn c_vm_live_disks() {
    run_c_program("tests/c/test_vm_live.c");
}

/// Live deletes (a middle checkpoint, then the current state's parent,
/// cancelled half way and retried) while two C threads write and flush.
#[test]
fn c_vm_live_delete() {
    run_c_program("tests/c/test_vm_live_delete.c");
}

/// The additions of 0.2 (issue 11): typed getters, checkpoints by id, the
/// pending delete, absolute chain paths, vectored I/O, one file without
/// its parents, paths that are not UTF-8.
#[test]
fn c_hypervisor_api() {
    run_c_program("tests/c/test_hypervisor.c");
}

/// Compaction (issue 14): a trimmed disk shrinks and reads the same; the
/// report, NULL and bad arguments, a cancel, read-only and fixed disks.
#[test]
fn c_compact() {
    run_c_program("tests/c/test_compact.c");
}

/// Resize (issue 14, part 2): grow and shrink, the report, NULL and bad
/// arguments, data past a smaller size, a read-only handle.
#[test]
fn c_resize() {
    run_c_program("tests/c/test_resize.c");
}

/// Convert in place (issue 14, convert): dynamic -> fixed -> dynamic with
/// the same data, the reports, the same kind, NULL and bad arguments, a
/// cancel, read-only and differencing disks.
#[test]
fn c_convert_in_place() {
    run_c_program("tests/c/test_in_place.c");
}

/// Incremental backup (issue 15, part 1): the changes iterator and the
/// incremental export, their refusals and NULL arguments.
#[test]
fn c_backup() {
    run_c_program("tests/c/test_backup.c");
}

/// Legacy VHD (issue 16): `CKPT_CREATE_VHD` makes fixed and dynamic
/// VHDs that read back after a reopen; VHDX-only fields are refused.
#[test]
fn c_vhd() {
    run_c_program("tests/c/test_vhd.c");
}

/// RBD diff streams (issue 17): `ckpt_vm_write_rbd_diff` into a file
/// descriptor, parsed byte by byte; its refusals.
#[test]
fn c_rbd() {
    run_c_program("tests/c/test_rbd.c");
}

/// `ckpt_vm_export_rbd` / `ckpt_vm_import_rbd` against the Ceph test
/// cluster (`support::ceph`); the images it made are removed after.
#[test]
fn c_rbd_export_and_import_through_a_cluster() {
    if !have(&c_compiler()) {
        return;
    }
    let Some(cluster) = support::ceph::cluster() else {
        return;
    };
    struct Remove<'a>(&'a support::ceph::Cluster, String);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            self.0.remove_images(&self.1);
        }
    }
    let prefix = format!("c-api-{}", std::process::id());
    let _remove = Remove(cluster, prefix.clone());
    let scratch = tempfile::tempdir().expect("tempdir");
    let exe = scratch.path().join("prog");
    compile_c(&root().join("tests/c/test_rbd_cluster.c"), &exe);
    let data = scratch.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let stdout = run_ok(
        Command::new(&exe)
            .arg(&data)
            .arg(&cluster.conf)
            .arg(&cluster.pool)
            .arg(&prefix),
    );
    eprint!("{stdout}");
    // rbd itself imports the export-format 2 stream: the same snapshots,
    // each reading as export-rbd's.
    let made = format!("{}/{prefix}-v2", cluster.pool);
    cluster.rbd_ok(&[
        "import",
        "--no-progress",
        "--export-format",
        "2",
        data.join("image.rbd").to_str().unwrap(),
        &made,
    ]);
    assert_eq!(cluster.snaps(&made), ["one", "two"]);
    let main = format!("{}/{prefix}-disk0", cluster.pool);
    for s in ["one", "two"] {
        assert!(
            cluster.export(&format!("{made}@{s}")) == cluster.export(&format!("{main}@{s}")),
            "snapshot {s} of the imported stream"
        );
    }
    assert!(cluster.export(&made) == cluster.export(&main), "the head");
}

/// The flags of the sanitizer builds: AddressSanitizer (with leak
/// detection, so a handle that is never freed fails the test) and
/// UndefinedBehaviorSanitizer, both fatal.
const SANITIZE: &[&str] = &[
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
];

/// Whether the C compiler can build and run a sanitized program; under CI
/// that is required.
fn have_sanitizers(scratch: &Path) -> bool {
    let src = scratch.join("probe.c");
    let exe = scratch.join("probe");
    std::fs::write(&src, "int main(void) { return 0; }\n").expect("write probe");
    let ok = Command::new(c_compiler())
        .args(SANITIZE)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new(&exe)
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!in_ci(), "ASan/UBSan are required under CI=true");
        eprintln!("notice: the C compiler cannot build sanitized programs; skipping");
    }
    ok
}

/// Every C test again, built with AddressSanitizer and
/// UndefinedBehaviorSanitizer: no invalid access, no undefined behaviour
/// and no leak on the C side of the boundary (the Rust allocations go
/// through the same intercepted `malloc`, so a handle that is never freed
/// is a leak too), also with several threads on one disk handle.
#[test]
fn c_tests_under_sanitizers() {
    if !have(&c_compiler()) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    if !have_sanitizers(scratch.path()) {
        return;
    }
    for test in [
        "tests/c/test_chain.c",
        "tests/c/test_vm.c",
        "tests/c/test_null_args.c",
        "tests/c/test_disk_io.c",
        "tests/c/test_errors.c",
        "tests/c/test_extents.c",
        "tests/c/test_vm_live.c",
        "tests/c/test_vm_live_delete.c",
        "tests/c/test_hypervisor.c",
        "tests/c/test_compact.c",
        "tests/c/test_resize.c",
        "tests/c/test_in_place.c",
        "tests/c/test_backup.c",
        "tests/c/test_rbd.c",
    ] {
        let name = Path::new(test).file_stem().expect("file name");
        let exe = scratch.path().join(name);
        compile_c_with(&root().join(test), &exe, SANITIZE);
        let data = scratch.path().join(name).with_extension("data");
        std::fs::create_dir(&data).expect("mkdir");
        let stdout = run_ok(
            Command::new(&exe)
                .arg(&data)
                .env(
                    "ASAN_OPTIONS",
                    "detect_leaks=1:abort_on_error=0:exitcode=23",
                )
                .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1"),
        );
        eprint!("{stdout}");
    }
}

#[test]
fn c_example() {
    if !have(&c_compiler()) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let exe = scratch.path().join("example");
    compile_c(&root().join("examples/c/example.c"), &exe);
    let disk = scratch.path().join("example.vhdx");
    let stdout = run_ok(Command::new(&exe).arg(&disk));
    assert!(stdout.contains("read back: \"hello from C\""), "{stdout}");
    assert!(stdout.contains("kind: dynamic"), "{stdout}");
    assert!(stdout.contains("virtual size: 67108864 bytes"), "{stdout}");
    // QEMU, an independent implementation, reads what the C program wrote.
    if have("qemu-img") {
        let raw = scratch.path().join("example.raw");
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "vhdx", "-O", "raw"])
                .arg(&disk)
                .arg(&raw),
        );
        let bytes = std::fs::read(&raw).expect("read raw image");
        assert_eq!(bytes.len(), 64 << 20);
        assert_eq!(&bytes[1_000_000..1_000_013], b"hello from C\0");
        assert!(bytes[..1_000_000].iter().all(|&b| b == 0));
        assert!(bytes[1_000_013..].iter().all(|&b| b == 0));
    }
}

#[test]
fn c_checkpoint_example() {
    if !have(&c_compiler()) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let exe = scratch.path().join("checkpoints");
    compile_c(&root().join("examples/c/checkpoints.c"), &exe);
    let demo = scratch.path().join("demo");
    let stdout = run_ok(Command::new(&exe).arg(&demo));
    for want in [
        "quiesce: guest demo",
        "thaw: guest demo",
        "checkpoint 0: \"clean install\", production, parent -1, no memory state",
        "checkpoint 1: \"after upgrade\", standard, parent 0, with memory state (the VM runs on it)",
        "after apply: the disk says \"installed\"",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

/// Every `extern "C"` function in src/ffi is `#[no_mangle]`, named
/// `ckpt_*`, documented with a `# Safety` section, declared in the header,
/// and runs its whole body inside `ffi_boundary!` (the one panic boundary).
#[test]
fn every_export_is_documented_and_inside_the_panic_boundary() {
    let header = std::fs::read_to_string(checked_in_header()).unwrap_or_default();
    let mut count = 0;
    // src/ffi and its sub-folders (src/ffi/vm/); a `tests.rs` holds unit
    // tests only and exports nothing.
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![root().join("src/ffi")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("src/ffi") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs")
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        // The unit tests at the end of a file (which may define callbacks
        // of their own) export nothing.
        let end = lines
            .windows(2)
            .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod tests"))
            .unwrap_or(lines.len());
        for (i, line) in lines[..end].iter().enumerate() {
            let Some(rest) = line.split("extern \"C\" fn ").nth(1) else {
                continue;
            };
            let name = rest.split('(').next().unwrap_or_default();
            let at = format!("{}:{}", file.display(), i + 1);
            count += 1;
            assert!(
                name.starts_with("ckpt_"),
                "{at}: {name} is not named ckpt_*"
            );
            assert!(
                i > 0 && lines[i - 1].trim() == "#[no_mangle]",
                "{at}: {name} is not #[no_mangle]"
            );
            let docs: Vec<&str> = lines[..i - 1]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("///"))
                .copied()
                .collect();
            assert!(
                docs.iter().any(|l| l.trim() == "/// # Safety"),
                "{at}: {name} has no `# Safety` section"
            );
            // The first statement of the body is the boundary for this name.
            let body_start = lines[i..]
                .iter()
                .position(|l| l.trim_end().ends_with('{'))
                .expect("function body");
            let first: String = lines[i + body_start + 1..]
                .iter()
                .take(2)
                .flat_map(|l| l.chars())
                .filter(|c| !c.is_whitespace())
                .collect();
            assert!(
                first.starts_with(&format!("ffi_boundary!(\"{name}\",")),
                "{at}: the body of {name} does not start with the panic boundary"
            );
            assert!(
                header.contains(&format!(" {name}(")) || header.contains(&format!("*{name}(")),
                "{at}: {name} is not declared in include/libckpt.h"
            );
        }
    }
    assert!(count >= 50, "found only {count} exported functions");
}

/// The C tests of NULL arguments, too-small buffers and the last error
/// (with a second thread), and of the 0.2 additions, under valgrind's memcheck: no invalid read or
/// write, no use of uninitialised memory, no leak. Runs where valgrind is
/// installed (a notice otherwise, also under CI: the sanitizer builds above
/// are the required memory check).
#[test]
fn c_tests_under_valgrind() {
    if !have(&c_compiler()) {
        return;
    }
    let found = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("notice: valgrind not found; skipping the valgrind run");
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    for test in [
        "tests/c/test_null_args.c",
        "tests/c/test_errors.c",
        "tests/c/test_hypervisor.c",
    ] {
        let name = Path::new(test).file_stem().expect("file name");
        let exe = scratch.path().join(name);
        compile_c(&root().join(test), &exe);
        let data = scratch.path().join(name).with_extension("data");
        std::fs::create_dir(&data).expect("mkdir");
        let stdout = run_ok(
            Command::new("valgrind")
                .args([
                    "--quiet",
                    "--error-exitcode=99",
                    "--leak-check=full",
                    "--errors-for-leak-kinds=definite,indirect",
                    "--show-leak-kinds=definite,indirect",
                    "--track-origins=yes",
                ])
                .arg(&exe)
                .arg(&data),
        );
        eprint!("{stdout}");
    }
}

/// `scripts/install.sh` into a temporary prefix installs the header, both
/// libraries (with the soname links) and `libckpt.pc`; a C program then
/// builds with `pkg-config --cflags --libs libckpt` against the shared
/// library and, with the static flags, against `libckpt.a`, and both run.
#[test]
fn install_and_pkg_config() {
    if !have(&c_compiler()) || !have("pkg-config") {
        return;
    }
    // Make sure this profile's libckpt.a and libckpt.so exist and are current.
    let from = staticlib().parent().expect("profile dir").to_path_buf();
    let tmp = tempfile::tempdir().expect("tempdir");
    let prefix = tmp.path().join("prefix");
    run_ok(
        Command::new("sh")
            .arg(root().join("scripts/install.sh"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--from")
            .arg(&from),
    );
    let lib = prefix.join("lib");
    let version = env!("CARGO_PKG_VERSION");
    for f in [
        "include/libckpt.h".to_string(),
        "lib/libckpt.a".to_string(),
        format!("lib/libckpt.so.{version}"),
        "lib/libckpt.so".to_string(),
        "lib/pkgconfig/libckpt.pc".to_string(),
    ] {
        assert!(prefix.join(&f).exists(), "{f} was not installed");
    }
    let installed_header =
        std::fs::read_to_string(prefix.join("include/libckpt.h")).expect("installed header");
    let header = std::fs::read_to_string(checked_in_header()).expect("header");
    assert_eq!(installed_header, header, "the installed header differs");

    let pkg = |args: &[&str]| -> String {
        run_ok(
            Command::new("pkg-config")
                .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
                .env_remove("PKG_CONFIG_LIBDIR")
                .args(args)
                .arg("libckpt"),
        )
        .trim()
        .to_string()
    };
    assert_eq!(pkg(&["--modversion"]), version);
    let cflags = pkg(&["--cflags"]);
    let libs = pkg(&["--libs"]);
    let static_libs = pkg(&["--static", "--libs"]);
    assert!(libs.contains("-lckpt"), "{libs}");
    for l in ["-lckpt", "-lpthread", "-ldl", "-lm"] {
        assert!(static_libs.contains(l), "{l} missing in {static_libs}");
    }
    let split =
        |flags: &str| -> Vec<String> { flags.split_whitespace().map(str::to_string).collect() };

    let example = root().join("examples/c/example.c");
    // Shared: found at run time through an rpath to the install's libdir.
    let shared = tmp.path().join("example-shared");
    let mut cmd = Command::new(c_compiler());
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .args(split(&cflags))
        .arg(&example)
        .args(split(&libs))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&shared);
    run_ok(&mut cmd);
    let out = run_ok(Command::new(&shared).arg(tmp.path().join("shared.vhdx")));
    assert!(out.contains("read back: \"hello from C\""), "{out}");
    if have("ldd") {
        let ldd = run_ok(Command::new("ldd").arg(&shared));
        let soname = match env!("CARGO_PKG_VERSION_MAJOR") {
            "0" => format!("libckpt.so.0.{}", env!("CARGO_PKG_VERSION_MINOR")),
            major => format!("libckpt.so.{major}"),
        };
        assert!(
            ldd.contains(&soname) && ldd.contains(&lib.display().to_string()),
            "not linked to the installed {soname}:\n{ldd}"
        );
    }

    // Static: -lckpt taken from libckpt.a, the private libraries after it.
    let stat = tmp.path().join("example-static");
    let mut cmd = Command::new(c_compiler());
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .args(split(&cflags))
        .arg(&example);
    for flag in split(&static_libs) {
        if flag == "-lckpt" {
            cmd.args(["-Wl,-Bstatic", "-lckpt", "-Wl,-Bdynamic"]);
        } else {
            cmd.arg(flag);
        }
    }
    cmd.arg("-o").arg(&stat);
    run_ok(&mut cmd);
    let out = run_ok(Command::new(&stat).arg(tmp.path().join("static.vhdx")));
    assert!(out.contains("read back: \"hello from C\""), "{out}");
}
