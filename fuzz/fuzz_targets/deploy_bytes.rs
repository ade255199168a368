//! cargo-fuzz binary of the `deploy_bytes` target; the target itself is `strata_tests::deploy_bytes`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::deploy_bytes(data));
