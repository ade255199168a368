//! cargo-fuzz binary of the `cache_file` target; the target itself is `strata_tests::cache_file`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::cache_file(data));
