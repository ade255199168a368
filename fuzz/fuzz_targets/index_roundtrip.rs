//! cargo-fuzz binary of the `index_roundtrip` target; the target itself is `strata_tests::index_roundtrip`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::index_roundtrip(data));
