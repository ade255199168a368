//! cargo-fuzz binary of the `index_decode` target; the target itself is `strata_tests::index_decode`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::index_decode(data));
