//! The queue's directories under `data_dir`, one row each: `episodes/`
//! (the backlog, and directories never finished), `outbox/` (archives in
//! flight, leftovers of a crash), `quarantine/` (by reason, recent ones
//! with the receiver's remediation), then `state/status.json`
//! ([`super::status`]).

use super::{Finding, Fix, Level, Rank, UNIT, age};
use labship_shipper::config::Config;
use labship_shipper::disk::Layout;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Episodes waiting longer than this are a backlog worth a warning.
pub(super) const BACKLOG_AGE: Duration = Duration::from_secs(3600);
/// A directory without `meta.json` idle this long was probably abandoned;
/// a quarantine younger than this is news.
const DAY: Duration = Duration::from_secs(86_400);

/// Every row about the queue.
pub(super) fn check(config: &Config, now: SystemTime, running: Option<bool>) -> Vec<Finding> {
    let layout = Layout::new(&config.data_dir);
    let episodes = Episodes::list(&layout.episodes, now);
    let mut out = vec![backlog(&episodes.ready)];
    out.extend(unfinished(episodes.unfinished));
    out.push(outbox(&layout.outbox, now));
    out.push(quarantine(&layout.quarantine, now));
    out.push(super::status::check(
        config,
        now,
        running,
        episodes.ready.len(),
    ));
    out
}

/// The entries of a directory; none when it cannot be read.
fn entries(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir).into_iter().flatten().flatten()
}

/// Age of `path`'s mtime.
fn age_of(path: &Path, now: SystemTime) -> Option<Duration> {
    let t = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(now.duration_since(t).unwrap_or_default())
}

/// The newest mtime in a tree (shallow enough for doctor: the top two levels).
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).ok()?.modified().ok()?;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    Some(newest)
}

/// The episode directories in `episodes/`, by name and age.
#[derive(Debug, Default)]
struct Episodes {
    /// Finished (`meta.json` there), with the age of `meta.json`.
    ready: Vec<(String, Duration)>,
    /// No `meta.json`, nothing changed for a day.
    unfinished: Vec<(String, Duration)>,
}

impl Episodes {
    fn list(dir: &Path, now: SystemTime) -> Self {
        let mut found = Self::default();
        for e in entries(dir) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || labship_protocol::Id::parse(&name).is_err() {
                continue;
            }
            let meta = path.join(labship_protocol::stamp::META_FILE);
            if meta.is_file() {
                found
                    .ready
                    .push((name, age_of(&meta, now).unwrap_or_default()));
                continue;
            }
            let idle = newest(&path).map_or(Duration::ZERO, |t| {
                now.duration_since(t).unwrap_or_default()
            });
            if idle >= DAY {
                found.unfinished.push((name, idle));
            }
        }
        found
    }
}

/// How many episodes wait, and for how long the oldest has.
fn backlog(ready: &[(String, Duration)]) -> Finding {
    let oldest = ready.iter().map(|(_, a)| *a).max();
    let waiting = |a| {
        format!(
            "{} episode(s) waiting, the oldest for {}",
            ready.len(),
            age(a)
        )
    };
    match oldest {
        Some(a) if a >= BACKLOG_AGE => {
            Finding::new(Level::Warn, "backlog", waiting(a), None, Rank::Backlog)
        }
        Some(a) => Finding::ok("backlog", waiting(a)),
        None => Finding::ok("backlog", "no episode waiting"),
    }
    .with_details(json!({"waiting": ready.len(), "oldest_s": oldest.map(|a| a.as_secs())}))
}

/// Directories a producer started and never finished; no row when none.
fn unfinished(mut idle: Vec<(String, Duration)>) -> Option<Finding> {
    if idle.is_empty() {
        return None;
    }
    idle.sort();
    let names: Vec<&str> = idle.iter().take(5).map(|(n, _)| n.as_str()).collect();
    Some(Finding::new(
        Level::Warn,
        "unfinished",
        format!(
            "{} director(ies) in episodes/ without meta.json, idle for over a day: {}{} (never shipped until the producer writes meta.json)",
            idle.len(),
            names.join(", "),
            if idle.len() > names.len() {
                ", …"
            } else {
                ""
            }
        ),
        None,
        Rank::Unfinished,
    ))
}

/// Archives in flight, and files that waited long: archives the receiver
/// has not taken, temp files a crash left.
fn outbox(dir: &Path, now: SystemTime) -> Finding {
    let mut archives = 0;
    let mut stale = Vec::new();
    for e in entries(dir) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tar.zst") && !name.starts_with('.') {
            archives += 1;
        }
        if age_of(&e.path(), now).unwrap_or_default() >= BACKLOG_AGE {
            stale.push(name);
        }
    }
    if stale.is_empty() {
        return Finding::ok("outbox", format!("{archives} archive(s) in flight"));
    }
    Finding::new(
        Level::Warn,
        "outbox",
        format!(
            "{} file(s) in outbox/ older than {}: {} (a restart clears crash leftovers; archives wait for the receiver)",
            stale.len(),
            age(BACKLOG_AGE),
            stale.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
        ),
        Some(Fix::restart(format!("sudo systemctl restart {UNIT}"))),
        Rank::OutboxStale,
    )
}

/// What `quarantine/` holds, by reason code.
#[derive(Debug, Default)]
struct Quarantined {
    by_reason: BTreeMap<String, usize>,
    total: usize,
    /// Moved there within a day.
    recent: usize,
    /// The newest recent remediation (the receiver's shell command) and
    /// its age.
    remediation: Option<(Duration, String)>,
}

impl Quarantined {
    fn list(dir: &Path, now: SystemTime) -> Self {
        let mut q = Self::default();
        for e in entries(dir) {
            q.total += 1;
            let reason: Option<Value> =
                std::fs::read(e.path().join(labship_shipper::disk::REASON_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
            let code = reason
                .as_ref()
                .and_then(|r| r["reason"].as_str())
                .unwrap_or("no reason file");
            *q.by_reason.entry(code.to_owned()).or_default() += 1;
            let Some(a) = age_of(&e.path(), now).filter(|a| *a < DAY) else {
                continue;
            };
            q.recent += 1;
            let remediation = reason.as_ref().and_then(|r| r["remediation"].as_str());
            if let Some(r) = remediation
                && q.remediation.as_ref().is_none_or(|(newest, _)| a < *newest)
            {
                q.remediation = Some((a, r.to_owned()));
            }
        }
        q
    }
}

/// `quarantine/` by reason; recent ones are news.
fn quarantine(dir: &Path, now: SystemTime) -> Finding {
    let q = Quarantined::list(dir, now);
    let counts = q
        .by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (total, recent) = (q.total, q.recent);
    if recent > 0 {
        Finding::new(
            Level::Warn,
            "quarantine",
            format!("{total} quarantined ({counts}), {recent} in the last day"),
            // The receiver's words, kept in the reason file.
            q.remediation.map(|(_, r)| Fix::foreign(r)),
            Rank::QuarantineRecent,
        )
    } else if total > 0 {
        Finding::ok(
            "quarantine",
            format!("{total} quarantined ({counts}), none in the last day"),
        )
    } else {
        Finding::ok("quarantine", "empty")
    }
    .with_details(json!({"total": total, "recent": recent, "by_reason": q.by_reason}))
}
