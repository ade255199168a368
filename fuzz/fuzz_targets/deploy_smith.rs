//! cargo-fuzz binary of the `deploy_smith` target; the target itself is `strata_tests::deploy_smith`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::deploy_smith(data));
