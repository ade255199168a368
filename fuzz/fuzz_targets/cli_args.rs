//! cargo-fuzz binary of the `cli_args` target; the target itself is `strata_tests::cli_args`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_tests::cli_args(data));
