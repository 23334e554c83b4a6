//! The lab host's tools, over the shipper's own config loader, layout and
//! stamp rules (nothing is written twice):
//! - [`doctor`]: one headline with the worst finding and its fix, then one
//!   row per check (CONTRACT §5);
//! - [`unstamped`]: `quarantine-unstamped`, which drains a backlog of
//!   episodes without a usable code stamp.

pub mod doctor;
pub mod unstamped;
