//! The labship shipper as a library; `main.rs` is the thin CLI over it.
//!
//! [`config`] is the validated `shipper.toml` and [`check`] judges it and
//! every file it names (`--check-config`); [`scan`] finds settled episodes;
//! [`state`] is the pure episode state machine and [`driver`] its async driver;
//! [`archive`] packs (deterministic tar+zstd with its SHA-256); [`disk`] owns
//! every durable move; [`upload`] speaks the receiver's HTTP API over the
//! [`client`] (renewed TLS files picked up from disk), its resumable upload
//! API included ([`upload::resumable`], the location kept in `outbox/` by
//! [`upload::location`]); [`progress`] keeps `state/status.json` (typed in [`status_file`], which
//! doctor reads too); [`cleanup`]
//! expires old quarantine entries; `journal` holds the events the driver
//! and the upload log (what doctor reads); [`systemd`] notifies; [`metrics`] counts
//! and [`ops`] serves them (`[ops] listen`). docs/transport.md
//! describes the states and what survives a crash in each.

pub mod archive;
pub mod bwlimit;
pub mod check;
pub mod cleanup;
pub mod client;
pub mod config;
pub mod disk;
pub mod driver;
mod journal;
pub mod metrics;
pub mod ops;
pub mod progress;
pub mod reload;
pub mod scan;
pub mod state;
pub mod status_file;
pub mod upload;

pub use labship_sys::hooks::crash_point;
pub use labship_sys::systemd;
