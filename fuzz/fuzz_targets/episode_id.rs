#![no_main]
//! See `labship_tests::fuzz::episode_id` for the input and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| labship_tests::fuzz::episode_id(data));
