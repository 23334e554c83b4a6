#![no_main]
//! See `labship_tests::fuzz::archive_tar` for the input and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| labship_tests::fuzz::archive_tar(data));
