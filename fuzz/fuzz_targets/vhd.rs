#![no_main]
//! Fuzz target `vhd`: see `harness::vhd` (damaged VHD files, every operation).
libfuzzer_sys::fuzz_target!(
    init: harness::skip_known_bugs_from_env(),
    |data: &[u8]| {
        if let Err(v) = harness::run("vhd", data) {
            panic!("violation: {v}");
        }
    }
);
