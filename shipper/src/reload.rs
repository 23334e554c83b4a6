//! SIGHUP (`systemctl reload`): re-reads `shipper.toml` and applies
//! `limits.bwlimit` at once. Other changed keys are logged by name: they
//! need a restart. A file that no longer loads keeps the running config and
//! logs why.

use crate::bwlimit::Limiter;
use crate::config::Config;

/// One reload of `running.file` into `running` and `limiter`.
pub fn reload(running: &mut Config, limiter: &Limiter) {
    let new = match Config::load(&running.file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, event = "reload_failed", "SIGHUP: the config does not load; the running config stays: {e}");
            return;
        }
    };
    let restart = running.changed_keys(&new);
    if !restart.is_empty() {
        let keys = restart.join(", ");
        tracing::warn!(keys = %keys, event = "reload_needs_restart", "SIGHUP: changed keys that take effect only after a restart (sudo systemctl restart labship-shipper.service): {keys}");
    }
    if new.bwlimit != running.bwlimit {
        tracing::info!(bwlimit = %new.bwlimit, was = %running.bwlimit, event = "bwlimit_changed", "SIGHUP: upload cap now {}", new.bwlimit);
        limiter.set(new.bwlimit.clone());
        running.bwlimit = new.bwlimit;
    } else {
        tracing::info!(bwlimit = %new.bwlimit, event = "reloaded", "SIGHUP: config re-read, upload cap unchanged");
    }
}
