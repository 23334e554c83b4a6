//! The commit gate: which code stamps the receiver accepts.
//!
//! `gate.allowed_commits_file` holds one 40-hex commit per line, `#` comments
//! allowed. At start an unreadable, empty or malformed file is a config error
//! (fail closed). At run time the file is re-read when its identity (inode, size,
//! mtime) changes, checked every [`POLL`], and on SIGHUP; a bad file then keeps
//! the last good set and logs why, so a half-written edit never opens or closes
//! the gate by accident.

use labship_protocol::Commit;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often the file's identity is checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: holds no commits; the gate would refuse every episode")]
    Empty { path: PathBuf },
    #[error("{path}: line {line}: {found:?} is not a 40-character lowercase hex commit")]
    Syntax {
        path: PathBuf,
        line: usize,
        found: String,
    },
}

/// One loaded version of the file.
#[derive(Debug)]
pub struct GateSet {
    commits: HashSet<String>,
    pub loaded_at: SystemTime,
    fingerprint: Option<(u64, u64, i64, i64)>,
}

impl GateSet {
    pub fn len(&self) -> usize {
        self.commits.len()
    }
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }
}

fn fingerprint(path: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// Parses the allowed-commits file.
pub fn load(path: &Path) -> Result<GateSet, GateError> {
    let before = fingerprint(path);
    let text = std::fs::read_to_string(path).map_err(|source| GateError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut commits = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let commit = Commit::parse(line).map_err(|_| GateError::Syntax {
            path: path.to_owned(),
            line: n + 1,
            found: line.chars().take(60).collect(),
        })?;
        commits.insert(commit.as_str().to_owned());
    }
    if commits.is_empty() {
        return Err(GateError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(GateSet {
        commits,
        loaded_at: SystemTime::now(),
        fingerprint: before,
    })
}

/// The live gate, shared by every request.
#[derive(Debug)]
pub struct Gate {
    path: PathBuf,
    current: RwLock<Arc<GateSet>>,
    /// The command put in 412 bodies (`gate.remediation`).
    pub remediation: Option<String>,
}

impl Gate {
    /// Loads the file once; an error here is a start-up config error.
    pub fn open(path: &Path, remediation: Option<String>) -> Result<Self, GateError> {
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(load(path)?)),
            remediation,
        })
    }

    pub fn snapshot(&self) -> Arc<GateSet> {
        // A poisoned lock only means a reader panicked; the set itself is intact.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn allows(&self, commit: &Commit) -> bool {
        self.snapshot().commits.contains(commit.as_str())
    }

    /// Re-reads the file if it changed (or unconditionally when `force`).
    /// Returns the new size on a reload, `Ok(None)` when nothing changed.
    pub fn reload(&self, force: bool) -> Result<Option<usize>, GateError> {
        if !force && fingerprint(&self.path) == self.snapshot().fingerprint {
            return Ok(None);
        }
        let set = load(&self.path);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        match set {
            Ok(set) => {
                let n = set.len();
                *current = Arc::new(set);
                Ok(Some(n))
            }
            Err(e) => {
                // Remember the bad version so it is reported once, not every poll.
                let kept = Arc::new(GateSet {
                    commits: current.commits.clone(),
                    loaded_at: current.loaded_at,
                    fingerprint: fingerprint(&self.path),
                });
                *current = kept;
                Err(e)
            }
        }
    }

    /// Keeps the gate current until `shutdown`: polls the file and reloads on
    /// every `hup` notification.
    pub async fn watch(
        self: Arc<Self>,
        hup: Arc<tokio::sync::Notify>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        on_reload: impl Fn(usize) + Send + 'static,
    ) {
        let mut tick = tokio::time::interval(POLL);
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                () = hup.notified() => true,
                _ = shutdown.changed() => return,
            };
            let gate = self.clone();
            let result = tokio::task::spawn_blocking(move || gate.reload(force)).await;
            match result {
                Ok(Ok(Some(n))) => {
                    tracing::info!(commits = n, path = %self.path.display(), forced = force, "gate reloaded");
                    on_reload(n);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    kept = self.snapshot().len(),
                    "gate file rejected; keeping the last good set"
                ),
                Err(e) => tracing::error!(error = %e, "gate reload task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn start_fails_closed_and_runtime_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        assert!(Gate::open(&path, None).is_err(), "missing file");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(matches!(
            Gate::open(&path, None),
            Err(GateError::Empty { .. })
        ));
        std::fs::write(&path, format!("{A} # current\n")).unwrap();
        let gate = Gate::open(&path, None).unwrap();
        let a = Commit::parse(A).unwrap();
        let b = Commit::parse(B).unwrap();
        assert!(gate.allows(&a) && !gate.allows(&b));
        assert_eq!(gate.reload(false).unwrap(), None, "unchanged");
        std::fs::write(&path, "garbage garbage\n").unwrap();
        assert!(matches!(
            gate.reload(true),
            Err(GateError::Syntax { line: 1, .. })
        ));
        assert!(gate.allows(&a), "last good set kept");
        std::fs::write(&path, format!("{A}\n{B}\n")).unwrap();
        assert_eq!(gate.reload(true).unwrap(), Some(2));
        assert!(gate.allows(&b));
    }
}
