//! Generates the C header from `src/ffi/` with cbindgen into
//! `$OUT_DIR/libckpt.h`.
//!
//! `tests/c_api.rs` compares it with the checked-in `include/libckpt.h`.
//! The build never fails because of the header: if cbindgen has trouble,
//! a `cargo:warning` says so and the generated file holds an `#error` line
//! (so the header test fails with the reason).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    set_soname();

    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo:warning=OUT_DIR is not set; libckpt.h not generated");
        return;
    };
    let crate_dir = match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("."),
    };
    let header = out_dir.join("libckpt.h");
    // cbindgen may panic on input it does not understand; never let that
    // fail the build.
    let result = std::panic::catch_unwind(|| generate(&crate_dir, &header))
        .unwrap_or_else(|_| Err("cbindgen panicked".to_string()));
    if let Err(e) = result {
        let e = e.replace('\n', " ");
        println!("cargo:warning=libckpt.h was not generated: {e}");
        let text = format!(
            "#error \"libckpt.h generation failed: {}\"\n",
            e.replace('"', "'")
        );
        if let Err(w) = std::fs::write(&header, text) {
            println!("cargo:warning=cannot write {}: {w}", header.display());
        }
    }
}

fn generate(crate_dir: &Path, header: &Path) -> Result<(), String> {
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))?;
    config.after_includes = Some(version_macros()?);
    // Parse only src/ffi (it follows its `mod` declarations): no
    // `cargo metadata`, and nothing outside the C boundary can leak in.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .generate()
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    bindings.write(&mut text);
    std::fs::write(header, text).map_err(|e| format!("{}: {e}", header.display()))
}

/// The compile-time version macros of the header, from the crate version
/// (`CARGO_PKG_VERSION_*`), so that the header and the library it was
/// made with always agree.
fn version_macros() -> Result<String, String> {
    let var = |name: &str| std::env::var(name).map_err(|e| format!("{name}: {e}"));
    let (major, minor, patch) = (
        var("CARGO_PKG_VERSION_MAJOR")?,
        var("CARGO_PKG_VERSION_MINOR")?,
        var("CARGO_PKG_VERSION_PATCH")?,
    );
    let version = var("CARGO_PKG_VERSION")?;
    Ok(format!(
        r#"
/*
 * The version of libckpt this header belongs to (semantic versioning).
 * ckpt_version_major/minor/patch() and ckpt_version() give the version of
 * the library actually linked; CKPT_VERSION_CHECK() compares the two.
 */
#define CKPT_VERSION_MAJOR {major}
#define CKPT_VERSION_MINOR {minor}
#define CKPT_VERSION_PATCH {patch}
#define CKPT_VERSION_STRING "{version}"

/*
 * CKPT_VERSION_CHECK(): CKPT_STATUS_OK when the linked library can be used
 * by a program compiled with this header, otherwise
 * CKPT_STATUS_UNSUPPORTED (see ckpt_version_check). Call it once at start-up.
 */
#define CKPT_VERSION_CHECK() ckpt_version_check(CKPT_VERSION_MAJOR, CKPT_VERSION_MINOR)
"#
    ))
}

/// Give `libckpt.so` a soname that changes with the ABI (what
/// `scripts/install.sh` installs the links under): `libckpt.so.0.MINOR`
/// before 1.0, where every minor version may break the ABI, then
/// `libckpt.so.MAJOR`. Only for Linux / ELF targets.
fn set_soname() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if !matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd"
    ) {
        return;
    }
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let abi = if major == "0" {
        format!("0.{minor}")
    } else {
        major
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libckpt.so.{abi}");
}
