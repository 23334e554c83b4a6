//! Quarantine cleanup: entries older than `quarantine.keep_days` are removed,
//! checked at most every `quarantine.cleanup_interval_s`, each removal logged.
//! An entry's age is its reason file's `quarantined_at` (the directory's mtime
//! when that is missing or unreadable: mtime survives the rename into
//! `quarantine/` and is the producer's last write, so it errs on keeping).

use crate::disk::{REASON_FILE, ReasonFile};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

fn quarantined_at(entry: &Path) -> Option<SystemTime> {
    let bytes = std::fs::read(entry.join(REASON_FILE)).ok()?;
    let reason: ReasonFile = serde_json::from_slice(&bytes).ok()?;
    humantime::parse_rfc3339_weak(&reason.quarantined_at).ok()
}

/// Removes entries of `dir` quarantined more than `keep` before `now`.
/// Returns what was removed and how old it was.
pub fn sweep(
    dir: &Path,
    keep: Duration,
    now: SystemTime,
) -> std::io::Result<Vec<(PathBuf, Duration)>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(at) = quarantined_at(&path)
            .or_else(|| std::fs::metadata(&path).and_then(|m| m.modified()).ok())
        else {
            continue;
        };
        let age = now.duration_since(at).unwrap_or_default();
        if age > keep {
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            removed.push((path, age));
        }
    }
    if !removed.is_empty() {
        crate::disk::fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Decides when a sweep is due.
#[derive(Debug)]
pub struct Schedule {
    keep: Option<Duration>,
    every: Duration,
    last: Option<Instant>,
}

impl Schedule {
    pub fn new(keep: Option<Duration>, every: Duration) -> Self {
        Self {
            keep,
            every,
            last: None,
        }
    }

    /// `Some(keep)` when a sweep should run now (and records it as run).
    pub fn due(&mut self, now: Instant) -> Option<Duration> {
        let keep = self.keep?;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, name: &str, at: SystemTime) {
        let e = dir.join(name);
        std::fs::create_dir_all(&e).unwrap();
        let r = ReasonFile {
            episode_id: name.into(),
            host_id: "h".into(),
            reason: "stamp_missing".into(),
            http_status: None,
            message: "m".into(),
            remediation: None,
            commit: None,
            quarantined_at: humantime::format_rfc3339_seconds(at).to_string(),
        };
        std::fs::write(e.join(REASON_FILE), serde_json::to_vec(&r).unwrap()).unwrap();
    }

    #[test]
    fn removes_only_what_is_older_than_keep() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        entry(dir.path(), "old", now - 31 * day);
        entry(dir.path(), "young", now - 29 * day);
        let removed = sweep(dir.path(), 30 * day, now).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(removed[0].0.ends_with("old"));
        assert!(dir.path().join("young").exists());
    }

    #[test]
    fn sweeps_are_gated_and_zero_keeps_forever() {
        let t = Instant::now();
        let mut s = Schedule::new(Some(Duration::from_secs(10)), Duration::from_secs(3600));
        assert!(s.due(t).is_some());
        assert!(s.due(t + Duration::from_secs(60)).is_none());
        assert!(s.due(t + Duration::from_secs(3601)).is_some());
        assert!(Schedule::new(None, Duration::from_secs(1)).due(t).is_none());
    }
}
