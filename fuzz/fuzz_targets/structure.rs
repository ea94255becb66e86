#![no_main]
//! Fuzz target `structure`: see `harness::structure`.
libfuzzer_sys::fuzz_target!(
    init: harness::skip_known_bugs_from_env(),
    |data: &[u8]| {
        if let Err(v) = harness::run("structure", data) {
            panic!("violation: {v}");
        }
    }
);
