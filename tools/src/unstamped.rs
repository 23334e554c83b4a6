//! quarantine-unstamped (in progress).
