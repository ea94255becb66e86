#![no_main]
//! Fuzz target `open_bytes`: see `harness::open_bytes`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(v) = harness::run("open_bytes", data) {
        panic!("violation: {v}");
    }
});
