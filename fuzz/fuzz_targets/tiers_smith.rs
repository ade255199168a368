//! cargo-fuzz binary of the `tiers_smith` target; the target itself is `strata_tests::tiers_smith`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::tiers_smith(data));
