//! doctor and quarantine-unstamped (issue 4; not built yet).
