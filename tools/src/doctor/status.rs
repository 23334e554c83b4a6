//! `state/status.json`: is the loop alive, what is it uploading, when did it
//! last ship (CONTRACT §10).
//!
//! The shipper rewrites the file after every pass (`time`) and, every few
//! seconds while anything changes, `updated_at`, `uploading` (each with its
//! `phase`) and `alive_at`: the work loop's last sign of life, stamped where
//! the watchdog is fed (scan, pack, HEAD, bytes moving). So:
//! - `alive_at` (older files: `updated_at`) within the loop's window: it is
//!   alive. The window is what the shipper itself allows before giving up:
//!   `receiver.stall_timeout_s` while a body is going out, plus
//!   `upload::ANSWER_GRACE` when every listed upload has sent its body and
//!   awaits the answer (and when none is listed: a pass packing or asking
//!   HEAD), plus [`REWRITE_EVERY`] and `SLACK`;
//! - uploads listed and alive: an OK row says what, how far, how fast and
//!   the ETA, however long ago the last pass ended, and `moving` in its
//!   details makes [`super::run`] withhold every disruptive fix;
//! - uploads listed and not alive: the shipper would have given up on the
//!   upload itself, so it is hung: FAIL, restart;
//! - nothing uploading: the last completed pass must be recent, or the loop
//!   alive (a long pass through a large backlog, episodes completing).
//!
//! Test hook (debug builds only): `LABSHIP_DOCTOR_STALE_S` replaces the
//! window after which a pass is overdue (default: three scan intervals, at
//! least 5 minutes).

use super::queue::BACKLOG_AGE;
use super::{Finding, Fix, Level, Rank, UNIT, age};
use labship_shipper::bwlimit::human;
use labship_shipper::config::Config;
use labship_shipper::disk::Layout;
use labship_shipper::progress::REWRITE_EVERY;
use labship_shipper::status_file::{Phase, Status, UploadProgress};
use labship_shipper::upload::ANSWER_GRACE;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// Beyond the stall timeout and the rewrite interval: scheduling, fsync.
const SLACK: Duration = Duration::from_secs(5);
/// A stamp at most this far ahead of doctor's clock is "now"; further ahead
/// it says nothing about freshness (a clock stepped back, a file copied).
const AHEAD_OK: Duration = Duration::from_secs(5);

/// The `status` row.
pub fn check(config: &Config, now: SystemTime, running: Option<bool>, waiting: usize) -> Finding {
    let status = match read(config, running) {
        Ok(s) => s,
        Err(f) => return f,
    };
    let at = |k: Option<&str>| {
        k.and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| match now.duration_since(t) {
                Ok(age) => Some(age),
                Err(e) if e.duration() <= AHEAD_OK => Some(Duration::ZERO),
                Err(_) => None,
            })
    };
    let (pass, success, updated) = (
        at(status.time.as_deref()),
        at(status.last_success.clone().flatten().as_deref()),
        at(status.updated_at.as_deref()),
    );
    let uploading = &status.uploading;
    let last_error = status.last_error.clone().flatten();
    let awaiting = uploading.iter().all(|u| u.phase == Phase::AwaitingAnswer);
    let window = alive_window(config, awaiting);
    // The work loop's last sign of life (files from before `alive_at`:
    // the last rewrite).
    let beat = at(status.alive_at.as_deref()).or(updated);
    let fresh = beat.is_some_and(|a| a <= window);
    let mut details = json!({
        "last_pass_s": pass.map(|a| a.as_secs()),
        "last_success_s": success.map(|a| a.as_secs()),
        "updated_s": updated.map(|a| a.as_secs()),
        "alive_s": beat.map(|a| a.as_secs()),
        "window_s": window.as_secs(),
        "last_error": last_error,
        "hold_s": status.hold_s.flatten(),
        "bwlimit": status.bwlimit,
        "uploading": uploading,
        // A dead process moves nothing: its restart is not held back.
        "moving": running != Some(false) && !uploading.is_empty() && fresh,
    });
    if !uploading.is_empty() && running != Some(false) {
        let finding = if fresh {
            moving(uploading, status.bwlimit, &mut details)
        } else {
            hung(
                uploading,
                beat.or(pass).unwrap_or_default(),
                awaiting,
                window,
            )
        };
        return finding.with_details(details);
    }
    let last = success.map_or("never".to_owned(), |a| format!("{} ago", age(a)));
    let stale_after = stale_window(config);
    match pass {
        Some(a) if a > stale_after && fresh => Finding::ok(
            "status",
            format!(
                "a long pass is under way (last completed {} ago; the shipper was alive {} ago); last successful ship {last}",
                age(a),
                age(beat.unwrap_or_default())
            ),
        ),
        Some(a) if a > stale_after && running != Some(false) => Finding::new(
            Level::Fail,
            "status",
            format!(
                "the shipper's last completed pass was {} ago (expected every {}) and no upload is moving: stalled or stopped",
                age(a),
                age(config.scan_interval)
            ),
            Some(Fix::restart(format!("sudo systemctl restart {UNIT}"))),
            Rank::Stalled,
        ),
        _ if waiting > 0 && success.is_none_or(|a| a > BACKLOG_AGE) => Finding::new(
            Level::Warn,
            "status",
            format!(
                "last successful ship {last} while {waiting} episode(s) wait; last error: {}",
                last_error.as_ref().map_or("none", |e| e.message.as_str())
            ),
            None,
            Rank::NoRecentShip,
        ),
        _ => Finding::ok(
            "status",
            format!(
                "last successful ship {last}{}",
                status
                    .bwlimit
                    .map_or(String::new(), |c| format!("; upload cap {}", human(c)))
            ),
        ),
    }
    .with_details(details)
}

/// How long the work loop may go without a sign of life: what the shipper
/// allows before it gives up (shipper/src/upload/): a body moving no byte for
/// `stall_timeout_s`; an answer not come `stall_timeout_s` +
/// [`ANSWER_GRACE`] after the body ended. A pass without uploads (packing,
/// HEAD) is held to the longer one.
fn alive_window(config: &Config, awaiting: bool) -> Duration {
    let grace = if awaiting {
        ANSWER_GRACE
    } else {
        Duration::ZERO
    };
    config.stall_timeout + grace + REWRITE_EVERY + SLACK
}

/// Uploads listed, no sign of life for `idle`, beyond what the shipper
/// itself allows.
fn hung(uploading: &[UploadProgress], idle: Duration, awaiting: bool, window: Duration) -> Finding {
    Finding::new(
        Level::Fail,
        "status",
        format!(
            "the upload of {} has shown no sign of life for {} ({}; the shipper gives up on its own after {}s): the shipper is hung",
            names(uploading),
            age(idle),
            if awaiting {
                "its whole body was sent and the answer is awaited"
            } else {
                "no byte moved"
            },
            window.saturating_sub(REWRITE_EVERY + SLACK).as_secs()
        ),
        Some(Fix::restart(format!("sudo systemctl restart {UNIT}"))),
        Rank::Stalled,
    )
}

/// The file, or the finding that says why there is none (or none that
/// reads as a [`Status`]).
fn read(config: &Config, running: Option<bool>) -> Result<Status, Finding> {
    let path = Layout::new(&config.data_dir).state.join("status.json");
    if let Ok(bytes) = std::fs::read(&path) {
        match serde_json::from_slice::<Status>(&bytes) {
            Ok(status) => return Ok(status),
            Err(e) => {
                return Err(Finding::new(
                    Level::Warn,
                    "status",
                    format!(
                        "{} does not read as the shipper's status ({e}); the shipper rewrites it after its next pass",
                        path.display()
                    ),
                    None,
                    Rank::StatusMissing,
                ));
            }
        }
    }
    Err(if running == Some(false) {
        Finding::ok(
            "status",
            "no state/status.json (the shipper is not running)",
        )
    } else {
        Finding::new(
            Level::Warn,
            "status",
            format!(
                "no {}: the shipper has not completed a pass",
                path.display()
            ),
            Some(Fix::restart(format!("sudo systemctl restart {UNIT}"))),
            Rank::StatusMissing,
        )
    })
}

/// Three scan intervals, at least 5 minutes; or `LABSHIP_DOCTOR_STALE_S`.
/// The hook exists in debug builds only (as `LABSHIP_TEST_CLOCK_OFFSET_S`):
/// a release doctor on a lab host never reads it from a stray environment.
fn stale_window(config: &Config) -> Duration {
    let default = (config.scan_interval * 3).max(Duration::from_secs(300));
    #[cfg(debug_assertions)]
    if let Some(s) = std::env::var("LABSHIP_DOCTOR_STALE_S")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Duration::from_secs(s);
    }
    default
}

fn names(uploading: &[UploadProgress]) -> String {
    uploading
        .iter()
        .map(|u| u.episode_id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// The OK row of uploads that move: the first named with its share, rate
/// and ETA; `details` gains `eta_s` (of the first upload).
fn moving(uploading: &[UploadProgress], cap: Option<u64>, details: &mut Value) -> Finding {
    let u = &uploading[0];
    let (sent, total, rate) = (u.bytes_sent, u.bytes_total, u.bytes_per_s);
    if uploading.iter().all(|u| u.phase == Phase::AwaitingAnswer) {
        details["eta_s"] = 0.into();
        return Finding::ok(
            "status",
            format!(
                "uploading {}: all {} sent, awaiting the receiver's answer (it verifies the archive first)",
                names(uploading),
                mib(uploading.iter().map(|u| u.bytes_total).sum())
            ),
        );
    }
    let eta = (rate > 0).then(|| Duration::from_secs(total.saturating_sub(sent) / rate));
    details["eta_s"] = eta.map(|e| e.as_secs()).into();
    let percent = (sent.saturating_mul(100)).checked_div(total).unwrap_or(100);
    let more = match uploading.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    Finding::ok(
        "status",
        format!(
            "uploading {}{more}: {} of {} ({percent}%) at {}, ETA {}; {}",
            u.episode_id,
            mib(sent),
            mib(total),
            human(rate),
            eta.map_or("unknown".into(), age),
            cap.map_or("no cap".into(), |c| format!("cap {}", human(c)))
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_upload_reads_with_its_eta() {
        let ups = vec![UploadProgress {
            episode_id: "ep-1".into(),
            bytes_sent: 10 << 20,
            bytes_total: 30 << 20,
            bytes_per_s: 2 << 20,
            started_at: "x".into(),
            phase: Phase::Sending,
        }];
        let mut d = json!({});
        let f = moving(&ups, Some(2 << 20), &mut d);
        assert_eq!(f.level, Level::Ok);
        assert_eq!(
            f.finding,
            "uploading ep-1: 10.0 MiB of 30.0 MiB (33%) at 2 MiB/s, ETA 10s; cap 2 MiB/s"
        );
        assert_eq!(d["eta_s"], 10);
    }

    /// A data_dir with this status.json, and its config.
    fn host(status: &Value) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lab/state")).unwrap();
        std::fs::write(dir.path().join("lab/state/status.json"), status.to_string()).unwrap();
        std::fs::write(dir.path().join("token"), "t\n").unwrap();
        let cfg = dir.path().join("shipper.toml");
        std::fs::write(
            &cfg,
            "host_id = \"lab-01\"\ndata_dir = \"lab\"\n[receiver]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let config = Config::load(&cfg).unwrap();
        (dir, config)
    }

    fn stamp(t: SystemTime) -> String {
        humantime::format_rfc3339_seconds(t).to_string()
    }

    #[test]
    fn a_dead_process_is_not_moving() {
        let now = SystemTime::now();
        let (_dir, config) = host(&json!({"time": stamp(now), "updated_at": stamp(now),
            "alive_at": stamp(now), "uploading": [{"episode_id": "ep-1", "bytes_sent": 1,
            "bytes_total": 9, "bytes_per_s": 1, "phase": "sending"}]}));
        assert_eq!(check(&config, now, None, 0).details["moving"], true);
        assert_eq!(check(&config, now, Some(false), 0).details["moving"], false);
    }

    #[test]
    fn a_stamp_from_the_future_is_not_fresh() {
        let now = SystemTime::now();
        let doc = |ahead: u64| {
            let t = stamp(now + Duration::from_secs(ahead));
            json!({"time": stamp(now - Duration::from_secs(3600)), "updated_at": t,
                "alive_at": t, "uploading": [{"episode_id": "ep-1", "bytes_sent": 1,
                "bytes_total": 9, "bytes_per_s": 1, "phase": "sending"}]})
        };
        let (_dir, config) = host(&doc(2));
        assert_eq!(check(&config, now, None, 0).level, Level::Ok);
        let (_dir, config) = host(&doc(3600));
        let f = check(&config, now, None, 0);
        assert_eq!(
            (f.level, &f.details["moving"]),
            (Level::Fail, &json!(false))
        );
    }
}
