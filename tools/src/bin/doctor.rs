//! `doctor`: see `labship_tools::doctor`.
fn main() {}
