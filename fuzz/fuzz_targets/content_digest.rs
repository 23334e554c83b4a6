#![no_main]
//! See `labship_tests::fuzz::content_digest` for the input and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| labship_tests::fuzz::content_digest(data));
