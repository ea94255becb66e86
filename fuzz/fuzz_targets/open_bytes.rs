#![no_main]
//! Fuzz target `open_bytes`: see `harness::open_bytes`.
libfuzzer_sys::fuzz_target!(
    init: harness::skip_known_bugs_from_env(),
    |data: &[u8]| {
        if let Err(v) = harness::run("open_bytes", data) {
            panic!("violation: {v}");
        }
    }
);
