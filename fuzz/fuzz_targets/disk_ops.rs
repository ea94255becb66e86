#![no_main]
//! Fuzz target `disk_ops`: see `harness::disk_ops`.
libfuzzer_sys::fuzz_target!(
    init: harness::skip_known_bugs_from_env(),
    |data: &[u8]| {
        if let Err(v) = harness::run("disk_ops", data) {
            panic!("violation: {v}");
        }
    }
);
