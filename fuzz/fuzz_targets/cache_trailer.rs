//! cargo-fuzz binary of the `cache_trailer` target; the target itself is `strata_tests::cache_trailer`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::cache_trailer(data));
