//! cargo-fuzz binary of the `delta_decode` target; the target itself is `strata_tests::delta_decode`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::delta_decode(data));
