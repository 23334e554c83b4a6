//! `quarantine-unstamped`: see `labship_tools::unstamped`.
fn main() {}
