//! cargo-fuzz binary of the `store_model` target; the target itself is `strata_tests::store_model`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::store_model(data));
