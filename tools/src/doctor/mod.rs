//! doctor: what is wrong on this lab host, in one line, with the command that
//! fixes it (CONTRACT §5).
//!
//! Every check produces [`Finding`]s (`OK`, `WARN`, `FAIL`, a check name, what
//! was found, the fix when one exists). The headline is the worst finding
//! (level first, then [`Rank`], which declares the order once: 412 outranks
//! 400, and so on), so an agent acts on the first line alone. Checks never crash the report: a
//! journal it may not read, a missing config or a receiver that does not
//! answer are findings like any other.
//!
//! - [`journal`]: the shipper's own structured events and systemd's messages
//!   about the unit, over `--since`;
//! - [`host`]: service state, config, certificate, receiver ping, disk;
//! - `queue`: the backlog in `episodes/`, unfinished directories, `outbox/`,
//!   `quarantine/`;
//! - [`status`]: `state/status.json`: uploads moving, passes completing;
//! - [`unsettled`]: finished episodes that can never settle (unreadable,
//!   dated in the future), one row each;
//! - [`render`]: aligned human rows (colored on a terminal) and `--json`.
//!
//! A fix that restarts the shipper or deletes files is `disruptive` (in
//! `--json` on every finding). Each check says so where it writes the fix
//! ([`Fix`]): a command's words are never guessed at, and text doctor did not
//! write (the receiver's remediation) counts as disruptive. While an upload
//! is moving none is offered ([`withhold_disruptive`]).

pub mod host;
pub mod journal;
mod queue;
mod rank;
pub mod render;
pub mod status;
pub mod unsettled;

pub use rank::Rank;

use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The shipper's unit.
pub const UNIT: &str = "labship-shipper.service";

/// How bad a finding is. Ordered: `Ok < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }

    /// CONTRACT §5: 0 all OK, 1 warnings, 2 failures.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warn => 1,
            Self::Fail => 2,
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    /// The check's name (`journal`, `service`, `config`, `disk`, …).
    pub check: &'static str,
    /// What was found, in one line.
    pub finding: String,
    /// The exact command that fixes it, when there is one.
    pub fix: Option<String>,
    /// Whether the fix restarts the shipper (cutting an upload) or deletes
    /// files: an agent applies it only when nothing is moving. False when
    /// there is no fix.
    pub disruptive: bool,
    /// Among findings of one level, the first [`Rank`] heads the report.
    #[serde(skip)]
    pub rank: Rank,
    /// Machine-readable details for agents (`--json`).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// A fix and what applying it does, stated by the check that writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    pub cmd: String,
    /// Restarts or stops the shipper (cutting an upload) or deletes files.
    pub disruptive: bool,
}

impl Fix {
    /// Reads, edits config, changes permissions, starts what is stopped:
    /// nothing in flight is cut and nothing is deleted.
    pub fn safe(cmd: impl Into<String>) -> Self {
        Self {
            cmd: cmd.into(),
            disruptive: false,
        }
    }

    /// Restarts or stops the shipper, directly or through the installer.
    pub fn restart(cmd: impl Into<String>) -> Self {
        Self {
            cmd: cmd.into(),
            disruptive: true,
        }
    }

    /// Deletes files.
    pub fn deletes(cmd: impl Into<String>) -> Self {
        Self {
            cmd: cmd.into(),
            disruptive: true,
        }
    }

    /// Text doctor did not write (the receiver's remediation): what it does
    /// is unknown here, so it is treated as disruptive.
    pub fn foreign(cmd: impl Into<String>) -> Self {
        Self {
            cmd: cmd.into(),
            disruptive: true,
        }
    }
}

impl Finding {
    pub fn ok(check: &'static str, finding: impl Into<String>) -> Self {
        Self::new(Level::Ok, check, finding, None, Rank::Ok)
    }

    pub fn new(
        level: Level,
        check: &'static str,
        finding: impl Into<String>,
        fix: Option<Fix>,
        rank: Rank,
    ) -> Self {
        Self {
            level,
            check,
            finding: one_line(&finding.into()),
            disruptive: fix.as_ref().is_some_and(|f| f.disruptive),
            fix: fix.map(|f| f.cmd),
            rank,
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// While an upload moves (the `status` row says `moving`), no finding
/// offers a disruptive fix: it would cut data in flight. The finding
/// stays, saying why its fix is held back.
pub fn withhold_disruptive(findings: &mut [Finding]) {
    let moving = findings
        .iter()
        .any(|f| f.check == "status" && f.details["moving"] == true);
    if !moving {
        return;
    }
    for f in findings.iter_mut().filter(|f| f.disruptive) {
        f.fix = None;
        f.disruptive = false;
        f.finding.push_str(
            " (its fix restarts the shipper or deletes files: held back while an upload is moving; run doctor again when it is done)",
        );
    }
}

/// What to examine.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// How far back the journal is read.
    pub since: Duration,
    /// Captured `journalctl -o json` output instead of the live journal
    /// (read whole: the capture already chose its window; the live service
    /// state is then not checked).
    pub journal_file: Option<PathBuf>,
    /// Skip the receiver ping (offline diagnosis).
    pub no_ping: bool,
    /// "Now", for ages; injectable so reports can be compared in tests.
    pub now: SystemTime,
}

/// The whole diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Level,
    pub headline: String,
    pub exit_code: u8,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Orders the findings worst first and derives the headline.
    pub fn new(mut findings: Vec<Finding>) -> Self {
        // Stable: checks of equal weight keep the order they ran in.
        findings.sort_by_key(|f| (std::cmp::Reverse(f.level), f.rank));
        let worst = findings.first().map_or(Level::Ok, |f| f.level);
        let headline = match findings.first() {
            Some(f) if f.level > Level::Ok => match &f.fix {
                Some(fix) => format!("{} {} — fix: {fix}", f.level.as_str(), f.finding),
                None => format!("{} {}", f.level.as_str(), f.finding),
            },
            _ => {
                let shipped = findings
                    .iter()
                    .find(|f| f.check == "activity")
                    .map(|f| format!(": {}", f.finding))
                    .unwrap_or_default();
                format!("OK labship shipper healthy{shipped}")
            }
        };
        Self {
            status: worst,
            headline,
            exit_code: worst.exit_code(),
            findings,
        }
    }
}

/// Runs every check.
pub async fn run(opts: &Options) -> Report {
    let mut opts = opts.clone();
    // Fixes name the config by its full path: they are pasted elsewhere.
    if let Ok(full) = std::fs::canonicalize(&opts.config) {
        opts.config = full;
    }
    let opts = &opts;
    let mut findings = Vec::new();
    // A captured journal is examined as it is, maybe from another host or
    // another day: this machine's service state is not mixed into it.
    let service = match opts.journal_file {
        Some(_) => None,
        None => host::service(),
    };
    let running = service.as_ref().map(|s| s.running);
    if let Some(s) = &service {
        findings.push(s.finding.clone());
    }
    let config = labship_shipper::config::Config::load(&opts.config);
    let data_dir = config.as_ref().ok().map(|c| c.data_dir.as_path());
    findings.extend(journal::check(opts, running.flatten(), data_dir));
    findings.extend(host::check(opts, &config, running.flatten()).await);
    if let Some(dir) = data_dir {
        findings.extend(unsettled::check(dir, opts.now));
    }
    withhold_disruptive(&mut findings);
    Report::new(findings)
}

/// A finding is one row: whitespace (a TOML error's newlines, a receiver's
/// message) collapsed, and at most 400 characters.
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(400) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// "3h", "12min", "40s", "2d": an age for humans.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}min", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_heads_and_sets_the_exit_code() {
        let r = Report::new(vec![
            Finding::ok("config", "fine"),
            Finding::new(Level::Warn, "disk", "9% free", None, Rank::DiskLow),
            Finding::new(
                Level::Fail,
                "journal",
                "2 unstamped",
                Some(Fix::safe("b")),
                Rank::Unstamped,
            ),
            Finding::new(
                Level::Fail,
                "journal",
                "3 out-of-window (412)",
                Some(Fix::foreign("a")),
                Rank::OutOfWindow,
            ),
        ]);
        assert_eq!(r.headline, "FAIL 3 out-of-window (412) — fix: a");
        assert_eq!(r.exit_code, 2);
        assert_eq!(r.findings[1].finding, "2 unstamped");
        let r = Report::new(vec![Finding::ok("config", "fine")]);
        assert_eq!(
            (r.exit_code, r.headline.as_str()),
            (0, "OK labship shipper healthy")
        );
    }

    #[test]
    fn a_fix_is_disruptive_when_its_check_says_so() {
        let f = |fix| Finding::new(Level::Fail, "x", "y", Some(fix), Rank::Stalled);
        assert!(f(Fix::restart("sudo systemctl stop u")).disruptive);
        assert!(f(Fix::deletes("sudo find /d -delete")).disruptive);
        // The receiver's words: doctor cannot tell what they do.
        assert!(f(Fix::foreign("echo harmless")).disruptive);
        assert!(!f(Fix::safe("sudo systemctl enable --now u")).disruptive);
        assert_eq!(
            f(Fix::safe("cmd")).fix.as_deref(),
            Some("cmd"),
            "the JSON carries the command as text"
        );
        assert!(!Finding::ok("x", "y").disruptive);
    }

    #[test]
    fn no_disruptive_fix_while_an_upload_moves() {
        let restart = || {
            Finding::new(
                Level::Fail,
                "outbox",
                "old",
                Some(Fix::restart("sudo systemctl restart u")),
                Rank::Stalled,
            )
        };
        let status = |moving: bool| {
            Finding::ok("status", "uploading").with_details(serde_json::json!({"moving": moving}))
        };
        let mut idle = vec![restart(), status(false)];
        withhold_disruptive(&mut idle);
        assert!(idle[0].fix.is_some() && idle[0].disruptive);
        let mut busy = vec![restart(), status(true)];
        withhold_disruptive(&mut busy);
        assert_eq!((busy[0].fix.as_deref(), busy[0].disruptive), (None, false));
        assert!(
            busy[0]
                .finding
                .contains("held back while an upload is moving")
        );
    }

    /// Every row doctor can write, in the order its checks run (service,
    /// journal, host, unsettled), with its level and rank: the report puts
    /// them in this order. Pinned with the bare numbers that were the ranks
    /// before [`Rank`] (3 to 90, OK 200): the same order.
    #[test]
    fn the_headline_order_is_pinned() {
        use Level::{Fail, Warn};
        let rows: Vec<(Level, &'static str, Rank)> = vec![
            (Fail, "service not installed", Rank::ServiceMissing),
            (Warn, "service active, not enabled", Rank::NotEnabled),
            (Fail, "service failed", Rank::ServiceFailed),
            (Fail, "service restart loop", Rank::RestartLoop),
            (Warn, "service activating", Rank::Transitioning),
            (Fail, "service stopped", Rank::ServiceStopped),
            (Fail, "journal start failures", Rank::StartFailed),
            (Fail, "journal out of window", Rank::OutOfWindow),
            (Fail, "journal watchdog", Rank::Watchdog),
            (Fail, "journal auth", Rank::AuthRefused),
            (Fail, "journal local io", Rank::LocalIo),
            (Fail, "journal unstamped", Rank::Unstamped),
            (Fail, "journal rejected", Rank::Rejected),
            (Fail, "journal conflict", Rank::Conflict),
            (Fail, "journal too large", Rank::TooLarge),
            (Fail, "journal archive failed", Rank::ArchiveFailed),
            (Warn, "journal unreachable", Rank::Unreachable),
            (Warn, "journal store full", Rank::StoreFull),
            (Warn, "journal reload failed", Rank::ReloadFailed),
            (Warn, "journal restarts", Rank::Restarts),
            (Warn, "journal no lines", Rank::JournalSilent),
            (Warn, "journal denied", Rank::JournalDenied),
            (Warn, "journal unreadable", Rank::JournalUnreadable),
            (Warn, "no journalctl", Rank::NoJournalctl),
            (Fail, "config invalid", Rank::ConfigInvalid),
            (Fail, "cert unreadable", Rank::CertUnreadable),
            (Fail, "cert expired", Rank::CertExpired),
            (Warn, "cert expires soon", Rank::CertExpiring),
            (Fail, "client setup", Rank::ClientSetup),
            (Fail, "ping refused", Rank::PingRefused),
            (Fail, "ping unreachable", Rank::PingFailed),
            (Fail, "disk unstatable", Rank::DataDirMissing),
            (Fail, "disk full", Rank::DiskFull),
            (Warn, "disk low", Rank::DiskLow),
            (Warn, "backlog", Rank::Backlog),
            (Warn, "unfinished", Rank::Unfinished),
            (Warn, "outbox stale", Rank::OutboxStale),
            (Warn, "quarantine recent", Rank::QuarantineRecent),
            (Warn, "status missing", Rank::StatusMissing),
            (Fail, "status hung", Rank::Stalled),
            (Warn, "status no success", Rank::NoRecentShip),
            (Warn, "unsettled", Rank::Unsettled),
        ];
        let findings = rows
            .iter()
            .map(|&(level, label, rank)| Finding::new(level, "x", label, None, rank))
            .collect();
        let order: Vec<String> = Report::new(findings)
            .findings
            .into_iter()
            .map(|f| f.finding)
            .collect();
        let want = [
            "service not installed",
            "config invalid",
            "client setup",
            "journal start failures",
            "service failed",
            "service restart loop",
            "service stopped",
            "disk unstatable",
            "status hung",
            "journal out of window",
            "disk full",
            "journal watchdog",
            "cert expired",
            "cert unreadable",
            "journal auth",
            "ping refused",
            "ping unreachable",
            "journal local io",
            "journal unstamped",
            "journal rejected",
            "journal conflict",
            "journal too large",
            "journal archive failed",
            "journal unreachable",
            "journal store full",
            "journal reload failed",
            "unsettled",
            "status no success",
            "journal denied",
            "backlog",
            "journal unreadable",
            "journal no lines",
            "disk low",
            "service active, not enabled",
            "cert expires soon",
            "quarantine recent",
            "status missing",
            "outbox stale",
            "journal restarts",
            "unfinished",
            "service activating",
            "no journalctl",
        ];
        assert_eq!(order, want);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(Duration::from_secs(40)), "40s");
        assert_eq!(age(Duration::from_secs(600)), "10min");
        assert_eq!(age(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(age(Duration::from_secs(5 * 86_400)), "5d");
    }
}
