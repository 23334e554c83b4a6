//! systemd notifications for both daemons' `Type=notify` units. Every call is
//! a no-op without `NOTIFY_SOCKET`, so a binary behaves the same on a
//! terminal. Watchdog pings come from each daemon's work loop, never from a
//! timer of their own, so a wedged loop stops pinging and systemd restarts it.

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

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
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
/// which).
pub fn reloaded() {
    send(&[NotifyState::Ready]);
}

/// Proof of life with no rate limit (the caller paces it).
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The unit's `WatchdogSec`, when the watchdog is on.
pub fn watchdog_sec() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Half the unit's `WatchdogSec`, when the watchdog is on.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Rate-limits `WATCHDOG=1` to a few per watchdog interval, for a loop that
/// proves it is alive far more often than systemd needs to hear it.
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
