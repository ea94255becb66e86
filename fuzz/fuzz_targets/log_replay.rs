#![no_main]
//! Fuzz target `log_replay`: see `harness::log_replay`.
libfuzzer_sys::fuzz_target!(
    init: harness::skip_known_bugs_from_env(),
    |data: &[u8]| {
        if let Err(v) = harness::run("log_replay", data) {
            panic!("violation: {v}");
        }
    }
);
