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
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))?;
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
