#![no_main]
//! Fuzz target `structure`: see `harness::structure`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(v) = harness::run("structure", data) {
        panic!("violation: {v}");
    }
});
