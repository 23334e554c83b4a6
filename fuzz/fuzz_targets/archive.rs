#![no_main]
//! See `labship_tests::fuzz::archive` for the input and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| labship_tests::fuzz::archive(data));
