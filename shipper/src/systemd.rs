//! systemd notifications; all no-ops without `NOTIFY_SOCKET`. Watchdog pings
//! are sent by the work loop (each pass, upload progress), never by a timer of
//! their own, so a wedged loop stops pinging and systemd restarts us.

use sd_notify::NotifyState;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(states)
    {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A reload (SIGHUP) begins: systemd shows the unit `reloading` until
/// [`reloaded`] (with `Type=notify-reload`, systemd ≥ 253, `systemctl
/// reload` also waits for it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING=1"),
    }
}

/// The reload is over, whether the file loaded or not (the journal says
/// which: `reload_failed`, read by doctor).
pub fn reloaded() {
    send(&[NotifyState::Ready]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Rate-limits `WATCHDOG=1` to a few per watchdog interval.
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Mutex<Option<Instant>>,
}

impl Watchdog {
    pub fn from_env() -> Self {
        Self {
            every: sd_notify::watchdog_enabled().map(|d| d / 4),
            last: Mutex::new(None),
        }
    }

    /// Proof of life from the work loop.
    pub fn alive(&self) {
        let Some(every) = self.every else { return };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= every) {
            *last = Some(Instant::now());
            send(&[NotifyState::Watchdog]);
        }
    }
}
