//! The commit gate: which code stamps the receiver accepts.
//!
//! `gate.allowed_commits_file` holds one 40-hex commit per line, `#` comments
//! allowed. At start an unreadable, empty or malformed file is a config error
//! (fail closed). At run time the file is read every [`POLL`] and on SIGHUP,
//! and parsed when its bytes changed; a bad file then keeps the last good set
//! and logs why once per version, so a half-written edit never opens or closes
//! the gate by accident.
//!
//! A version is known by the SHA-256 of the bytes actually read (not by a
//! stat taken before or after the read: a write landing in between would pin
//! the wrong version, and mtimes tick too coarsely to tell two quick writes
//! of one size apart). The file is a few kilobytes; reading it every poll
//! costs nothing.

use labship_protocol::Commit;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How often the file is read for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// The largest gate file read (a commit a line is 41 bytes: this is 400,000
/// commits); a bigger file is refused rather than read into memory.
const MAX_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_BYTES} bytes; not a list of commits")]
    TooLarge { path: PathBuf },
    #[error("{path}: holds no commits; the gate would refuse every episode")]
    Empty { path: PathBuf },
    #[error("{path}: line {line}: {found:?} is not a 40-character lowercase hex commit")]
    Syntax {
        path: PathBuf,
        line: usize,
        found: String,
    },
}

/// Which version of the file a read saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// The SHA-256 of the bytes read.
    Bytes([u8; 32]),
    /// The read failed this way (reported once until it changes).
    Unreadable(std::io::ErrorKind),
}

/// One loaded version of the file.
#[derive(Debug)]
pub struct GateSet {
    commits: HashSet<String>,
    pub loaded_at: SystemTime,
    /// The version these commits were parsed from, or after a rejected
    /// version, that one (so it is reported once, not every poll).
    version: Version,
    /// `version` was rejected: a SIGHUP finding the same bytes does not
    /// report (log, count) them again.
    rejected: bool,
}

impl GateSet {
    pub fn len(&self) -> usize {
        self.commits.len()
    }
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }
}

/// Reads the file once: its text and the version of exactly those bytes.
fn read(path: &Path) -> (Version, Result<String, GateError>) {
    let read_error = |source: std::io::Error| GateError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    let got = std::fs::File::open(path).and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes));
    if let Err(e) = got {
        return (Version::Unreadable(e.kind()), Err(read_error(e)));
    }
    let version = Version::Bytes(Sha256::digest(&bytes).into());
    if bytes.len() as u64 > MAX_BYTES {
        return (
            version,
            Err(GateError::TooLarge {
                path: path.to_owned(),
            }),
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
    (version, text)
}

fn parse(path: &Path, text: &str) -> Result<HashSet<String>, GateError> {
    let mut commits = HashSet::new();
    for (line_no, line) in labship_sys::config::entries(text) {
        let commit = Commit::parse(line).map_err(|_| GateError::Syntax {
            path: path.to_owned(),
            line: line_no,
            found: line.chars().take(60).collect(),
        })?;
        commits.insert(commit.as_str().to_owned());
    }
    if commits.is_empty() {
        return Err(GateError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(commits)
}

/// Parses the allowed-commits file.
pub fn load(path: &Path) -> Result<GateSet, GateError> {
    let (version, text) = read(path);
    Ok(GateSet {
        commits: parse(path, &text?)?,
        loaded_at: SystemTime::now(),
        version,
        rejected: false,
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

    /// Reads the file and loads it if its bytes changed (or in any case when
    /// `force`, unless these bytes were already rejected: a bad version is
    /// reported once, whether the poll or a SIGHUP found it first). Returns
    /// the new size on a reload, `Ok(None)` when nothing changed.
    pub fn reload(&self, force: bool) -> Result<Option<usize>, GateError> {
        let (version, text) = read(&self.path);
        let current = self.snapshot();
        if version == current.version && (!force || current.rejected) {
            return Ok(None);
        }
        let commits = text.and_then(|t| parse(&self.path, &t));
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        match commits {
            Ok(commits) => {
                let n = commits.len();
                *current = Arc::new(GateSet {
                    commits,
                    loaded_at: SystemTime::now(),
                    version,
                    rejected: false,
                });
                Ok(Some(n))
            }
            Err(e) => {
                // Remember the bad version (the bytes this read saw) so it is
                // reported once, not every poll.
                *current = Arc::new(GateSet {
                    commits: current.commits.clone(),
                    loaded_at: current.loaded_at,
                    version,
                    rejected: true,
                });
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

    /// Writes `text` to `path` as an editor or `mv` would: a new file renamed over it.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn commit(i: u64) -> String {
        format!("{i:040x}")
    }

    /// Regression (issue 16, item 6): after a rejected version, the next
    /// write must be loaded even when its size, mtime and inode equal the
    /// rejected one's (an in-place rewrite within one clock tick).
    #[test]
    fn a_rewrite_after_a_rejected_version_is_loaded_whatever_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let gate = Gate::open(&path, None).unwrap();
        // A half-written version, the size of the good one.
        let bad = format!("{}\n", "z".repeat(40));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut &file, bad.as_bytes()).unwrap();
        let mtime = file.metadata().unwrap().modified().unwrap();
        assert!(matches!(gate.reload(false), Err(GateError::Syntax { .. })));
        assert_eq!(gate.reload(false).unwrap(), None, "reported once");
        // The finished version, written in place: same inode, same size, and
        // the mtime the bad version had.
        std::fs::write(&path, format!("{B}\n")).unwrap();
        file.set_modified(mtime).unwrap();
        assert_eq!(gate.reload(false).unwrap(), Some(1));
        assert!(gate.allows(&Commit::parse(B).unwrap()));
    }

    /// Regression (issue 16, item 6): a good version that lands while a bad
    /// one is being rejected is loaded by the next poll. A poller reloads as
    /// fast as it can (one at a time, as the receiver's reload loop does)
    /// while a writer alternates bad and good versions; after each good
    /// version, a poll that started after it must have loaded it. With the
    /// old fingerprint (a stat taken after the failed read) this failed
    /// within a few hundred rounds.
    #[test]
    fn a_write_racing_a_rejected_read_is_loaded_by_the_next_poll() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        std::fs::write(&path, format!("{}\n", commit(0))).unwrap();
        let gate = Arc::new(Gate::open(&path, None).unwrap());
        let (stop, polls) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let poller = {
            let (gate, stop, polls) = (gate.clone(), stop.clone(), polls.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let _ = gate.reload(false);
                    polls.fetch_add(1, SeqCst);
                }
            })
        };
        let wait_polls = |n: u64| {
            let until = polls.load(SeqCst) + n;
            while polls.load(SeqCst) < until {
                std::thread::yield_now();
            }
        };
        for i in 1..=500 {
            replace(&path, "not a commit\n");
            // Sometimes let the poller meet the bad version first.
            if i % 2 == 0 {
                wait_polls(1);
            }
            replace(&path, &format!("{}\n", commit(i)));
            // One poll may have been under way during the write; the next
            // one started after it.
            wait_polls(2);
            let loaded = gate.allows(&Commit::parse(&commit(i)).unwrap());
            if !loaded {
                stop.store(true, SeqCst);
            }
            assert!(loaded, "round {i}: written, polled twice, not loaded");
        }
        stop.store(true, SeqCst);
        poller.join().unwrap();
    }
}
