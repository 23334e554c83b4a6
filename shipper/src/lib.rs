//! The labship shipper as a library (issue 3, in progress).
//!
//! Built so far: [`config`] (the validated `shipper.toml`) and [`archive`] (the
//! contract's deterministic tar+zstd pack with its SHA-256). The scan loop, the
//! state machine, uploads and the daemon are still to come.

pub mod archive;
pub mod cleanup;
pub mod config;
pub mod disk;
pub mod queue;
pub mod scan;
pub mod state;
pub mod systemd;
pub mod upload;
