#![no_main]
//! Fuzz target `vm_ops`: see `harness::vm_ops`.
libfuzzer_sys::fuzz_target!(
    init: harness::skip_known_bugs_from_env(),
    |data: &[u8]| {
        if let Err(v) = harness::run("vm_ops", data) {
            panic!("violation: {v}");
        }
    }
);
