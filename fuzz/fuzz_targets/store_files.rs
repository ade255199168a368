//! cargo-fuzz binary of the `store_files` target; the target itself is `strata_tests::store_files`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::store_files(data));
