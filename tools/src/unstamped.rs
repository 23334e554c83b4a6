//! `quarantine-unstamped` (CONTRACT §5): one pass over `episodes/` that moves
//! every *finished* episode without a usable code stamp into `quarantine/`
//! with its reason file, and says what it did with every other directory.
//!
//! This module owns only the decision per directory and the report. Every
//! rule comes from the shipper, so the two can never disagree: the config
//! loader, "finished" and "settled" and the stamp rule
//! ([`labship_shipper::scan::read_stamp`], [`labship_shipper::scan::newest_mtime`]),
//! the reason ([`labship_shipper::state::unstamped_reason`]) and the durable,
//! never-overwriting move ([`labship_shipper::disk::Layout::quarantine`]).
//!
//! Safe beside a running shipper: it never takes the shipper's lock nor
//! cleans its scratch (no `Layout::prepare`), never writes into a stamped
//! episode, leaves alone an episode with an archive in `outbox/`, and a move
//! that finds the episode already gone (the shipper quarantined it at the
//! same moment) is reported, not failed. A rename moves a directory once, so
//! the two can never both succeed and leave a `<id>.1` duplicate.

mod dirs;

use labship_protocol::stamp::META_FILE;
use labship_protocol::{Commit, Id, IdError};
use labship_shipper::config::{Config, ConfigError};
use labship_shipper::disk::{Layout, REASON_FILE, ReasonFile};
use labship_shipper::scan::{newest_mtime, read_stamp};
use labship_shipper::state::{Reason, unstamped_reason};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The shipper's default `settle_s` (CONTRACT §8), used with `--data-dir`.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);

/// The host id written into reason files with `--data-dir` when the system
/// hostname is not a valid id.
pub const UNKNOWN_HOST: &str = "unknown";

/// Where the data directory comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `shipper.toml`: its `data_dir`, `host_id` and `settle_s`.
    Config(PathBuf),
    /// A data directory given directly: the hostname as host id (or
    /// [`UNKNOWN_HOST`]) and [`DEFAULT_SETTLE`].
    DataDir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: Source,
    /// Decide and report, change nothing.
    pub dry_run: bool,
}

/// What stops the run before any episode is looked at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{origin}: {path}: no such directory (is this the lab host's data_dir?)")]
    NoQueue { origin: String, path: PathBuf },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

impl Error {
    /// 2 for a bad config or argument (CONTRACT §8), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::NoQueue { .. } => 2,
            Self::List { .. } => 1,
        }
    }
}

/// Why an episode stays in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    Stamped(Commit),
    /// No `meta.json`: not finished; never touched.
    Unfinished,
    /// Unstamped so far, but its tree changed within `settle`.
    StillWritten {
        code: &'static str,
        age: Duration,
        settle: Duration,
    },
    /// `outbox/<id>.tar.zst` exists: the shipper is handling it.
    ShipperHandling(PathBuf),
    /// `meta.json` could not be read: the host's fault, not the episode's.
    Unreadable {
        path: PathBuf,
        error: String,
    },
    /// A reason file is in a stamped episode: the shipper decided a
    /// quarantine and was interrupted; it finishes the move itself.
    PendingByShipper(PathBuf),
}

/// What became of one directory in `episodes/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Quarantined {
        dest: PathBuf,
        code: String,
        message: String,
        /// The reason file was already there (an interrupted quarantine).
        finished: bool,
    },
    WouldQuarantine {
        into: PathBuf,
        code: String,
        message: String,
    },
    /// It left `episodes/` between the look and the move: the shipper (or
    /// another run of this tool) quarantined it at the same moment.
    AlreadyQuarantined,
    /// It left `episodes/` before it could be judged (shipped or moved).
    Gone,
    Kept(Kept),
    InvalidName(IdError),
    NotADirectory,
    /// The move failed; the message names the path.
    Failed(String),
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The directory's name (lossy for non-UTF-8 names).
    pub name: String,
    pub outcome: Outcome,
}

/// Every entry, in name order, and whether this was a dry run.
#[derive(Debug, Default)]
pub struct Report {
    pub dry_run: bool,
    pub entries: Vec<Entry>,
    /// `quarantine/` and `state/` when the shipper never ran here: created
    /// for the first move (or, in a dry run, that would be).
    pub created: Vec<PathBuf>,
}

/// The resolved target of a run.
#[derive(Debug)]
struct Target {
    layout: Layout,
    host_id: Id,
    settle: Duration,
    /// What named the data dir, for errors: `<file>: data_dir` or `--data-dir`.
    origin: String,
}

impl Target {
    fn resolve(source: &Source) -> Result<Self, Error> {
        Ok(match source {
            Source::Config(path) => {
                let c = Config::load(path)?;
                Self {
                    layout: Layout::new(&c.data_dir),
                    host_id: c.host_id,
                    settle: c.settle,
                    origin: format!("{}: data_dir", path.display()),
                }
            }
            Source::DataDir(dir) => Self {
                layout: Layout::new(dir),
                host_id: host_id_from(rustix::system::uname().nodename().to_str().ok()),
                settle: DEFAULT_SETTLE,
                origin: "--data-dir".into(),
            },
        })
    }
}

/// The hostname as a host id, or [`UNKNOWN_HOST`] when it is not a valid one.
fn host_id_from(hostname: Option<&str>) -> Id {
    hostname
        .and_then(|h| Id::parse(h).ok())
        // Infallible: UNKNOWN_HOST is a constant valid id (unit-tested).
        .unwrap_or_else(|| Id::parse(UNKNOWN_HOST).expect("UNKNOWN_HOST is a valid id"))
}

/// Runs one pass; `each` sees every entry as soon as it is decided (so a
/// long run prints progressively). Per-episode failures are entries, not
/// errors: the pass goes on.
pub fn run(opts: &Options, each: &mut dyn FnMut(&Entry)) -> Result<Report, Error> {
    let target = Target::resolve(&opts.source)?;
    let episodes = &target.layout.episodes;
    let listing = match std::fs::read_dir(episodes) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NoQueue {
                origin: target.origin,
                path: episodes.clone(),
            });
        }
        Err(source) => {
            return Err(Error::List {
                path: episodes.clone(),
                source,
            });
        }
    };
    let mut dirs = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| Error::List {
            path: episodes.clone(),
            source,
        })?;
        // Never follows a symlink: a link in episodes/ is not a directory.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        dirs.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    dirs.sort();
    let mut report = Report {
        dry_run: opts.dry_run,
        entries: Vec::with_capacity(dirs.len()),
        created: Vec::new(),
    };
    // Made once, before the first move: a data dir where the shipper never
    // ran has only episodes/.
    let mut ready: Option<Result<(), String>> = None;
    for (name, is_dir) in dirs {
        let plan = judge(&target, &name, is_dir);
        let outcome = match (&plan, opts.dry_run) {
            (Plan::Quarantine { .. }, false) => {
                let ready = ready.get_or_insert_with(|| {
                    dirs::ensure(&target.layout).map(|made| report.created = made)
                });
                match ready {
                    Ok(()) => act(&target, plan, false),
                    Err(e) => Outcome::Failed(e.clone()),
                }
            }
            (Plan::Quarantine { .. }, true) if ready.is_none() => {
                report.created = missing_dirs(&target.layout);
                ready = Some(Ok(()));
                act(&target, plan, true)
            }
            _ => act(&target, plan, opts.dry_run),
        };
        let entry = Entry { name, outcome };
        each(&entry);
        report.entries.push(entry);
    }
    Ok(report)
}

/// The directories a move needs that do not exist yet.
fn missing_dirs(layout: &Layout) -> Vec<PathBuf> {
    [&layout.quarantine, &layout.state]
        .into_iter()
        .filter(|d| std::fs::symlink_metadata(d).is_err())
        .cloned()
        .collect()
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The code and message of a reason file already in the episode, if readable.
fn existing_reason(path: &Path) -> Option<(String, String)> {
    let bytes = std::fs::read(path).ok()?;
    let r: ReasonFile = serde_json::from_slice(&bytes).ok()?;
    Some((r.reason, r.message))
}

/// A decision about one directory, before anything is changed.
#[derive(Debug)]
enum Plan {
    Leave(Outcome),
    Quarantine {
        id: Id,
        reason: Reason,
        /// The reason file is already in the episode (an interrupted
        /// quarantine): finish the move with it.
        pending: bool,
        code: String,
        message: String,
    },
}

/// Looks at one directory in `episodes/`; changes nothing.
fn judge(t: &Target, name: &str, is_dir: bool) -> Plan {
    let leave = Plan::Leave;
    if !is_dir {
        return leave(Outcome::NotADirectory);
    }
    let id = match Id::parse(name) {
        Ok(id) => id,
        Err(e) => return leave(Outcome::InvalidName(e)),
    };
    let layout = &t.layout;
    let dir = layout.episodes.join(name);
    let archive = layout.archive_path(&id);
    if archive.exists() {
        return leave(Outcome::Kept(Kept::ShipperHandling(archive)));
    }
    let reason_path = dir.join(REASON_FILE);
    let pending = reason_path.is_file();
    let meta = dir.join(META_FILE);
    let unfinished = || {
        leave(if !exists(&dir) {
            Outcome::Gone
        } else if pending {
            Outcome::Kept(Kept::PendingByShipper(reason_path.clone()))
        } else {
            Outcome::Kept(Kept::Unfinished)
        })
    };
    if !meta.is_file() {
        return unfinished();
    }
    let why = match read_stamp(&meta) {
        Ok(Ok(_)) if pending => return leave(Outcome::Kept(Kept::PendingByShipper(reason_path))),
        Ok(Ok(commit)) => return leave(Outcome::Kept(Kept::Stamped(commit))),
        Ok(Err(why)) => why,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return unfinished(),
        Err(e) => {
            return leave(Outcome::Kept(Kept::Unreadable {
                path: meta,
                error: e.to_string(),
            }));
        }
    };
    let reason = unstamped_reason(&why);
    let code = reason.code.as_str();
    // An interrupted quarantine is finished with the decision already made
    // (its reason file); its write bumped the tree's mtime, so no settle.
    let (code, message) = if pending {
        existing_reason(&reason_path).unwrap_or_else(|| (code.to_owned(), reason.message.clone()))
    } else {
        let newest = newest_mtime(&dir);
        let now = SystemTime::now();
        if now < newest + t.settle {
            return leave(Outcome::Kept(Kept::StillWritten {
                code,
                age: now.duration_since(newest).unwrap_or_default(),
                settle: t.settle,
            }));
        }
        (code.to_owned(), reason.message.clone())
    };
    Plan::Quarantine {
        id,
        reason,
        pending,
        code,
        message,
    }
}

/// Carries out a plan (unless `dry_run`).
fn act(t: &Target, plan: Plan, dry_run: bool) -> Outcome {
    let (id, reason, pending, code, message) = match plan {
        Plan::Leave(outcome) => return outcome,
        Plan::Quarantine {
            id,
            reason,
            pending,
            code,
            message,
        } => (id, reason, pending, code, message),
    };
    let layout = &t.layout;
    if dry_run {
        return Outcome::WouldQuarantine {
            into: layout.quarantine.clone(),
            code,
            message,
        };
    }
    let moved = if pending {
        layout.finish_quarantine(&id)
    } else {
        layout.quarantine(&id, &t.host_id, &reason)
    };
    let dir = layout.episodes.join(id.as_str());
    match moved {
        Ok(dest) => Outcome::Quarantined {
            dest,
            code,
            message,
            finished: pending,
        },
        // Source gone: the shipper moved it between our look and our move.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !exists(&dir) => {
            Outcome::AlreadyQuarantined
        }
        Err(e) => Outcome::Failed(format!(
            "cannot move {} into {}: {e}",
            dir.display(),
            layout.quarantine.display(),
        )),
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.name;
        match &self.outcome {
            Outcome::Quarantined {
                dest,
                code,
                message,
                finished,
            } => {
                let note = if *finished {
                    "finished an interrupted quarantine; "
                } else {
                    ""
                };
                write!(
                    f,
                    "quarantined {n} -> {} ({note}{code}: {message})",
                    dest.display()
                )
            }
            Outcome::WouldQuarantine {
                into,
                code,
                message,
            } => write!(
                f,
                "would quarantine {n} -> {}/ ({code}: {message})",
                into.display()
            ),
            Outcome::AlreadyQuarantined => write!(
                f,
                "already quarantined {n} (by the shipper, or another run, meanwhile)"
            ),
            Outcome::Gone => write!(f, "gone {n} (left episodes/ while this ran)"),
            Outcome::Kept(k) => write!(f, "kept {n} ({k})"),
            Outcome::InvalidName(e) => write!(
                f,
                "skipped {n:?} (not a valid episode id: {e}; never shipped, never touched)"
            ),
            Outcome::NotADirectory => {
                write!(f, "skipped {n:?} (not a directory; never touched)")
            }
            Outcome::Failed(e) => write!(f, "failed {n}: {e}"),
        }
    }
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stamped(c) => write!(f, "stamped {c}"),
            Self::Unfinished => write!(f, "no {META_FILE}: not finished, left alone"),
            Self::StillWritten { code, age, settle } => write!(
                f,
                "still being written: changed {}s ago, settle {}s; {code} so far",
                age.as_secs(),
                settle.as_secs()
            ),
            Self::ShipperHandling(p) => {
                write!(f, "the shipper is handling it: {} exists", p.display())
            }
            Self::Unreadable { path, error } => write!(
                f,
                "cannot read {}: {error}; not the episode's fault, left in the queue (check owner and mode)",
                path.display()
            ),
            Self::PendingByShipper(p) => write!(
                f,
                "a quarantine decided by the shipper is pending ({} present); the shipper finishes it",
                p.display()
            ),
        }
    }
}

impl Report {
    fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.entries.iter().filter(|e| pred(&e.outcome)).count()
    }

    /// Moves that failed (exit 1).
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// The closing line: counts of every kind.
    pub fn summary(&self) -> String {
        let kept =
            |pred: fn(&Kept) -> bool| self.count(|o| matches!(o, Outcome::Kept(k) if pred(k)));
        let (moved, verb) = if self.dry_run {
            (
                self.count(|o| matches!(o, Outcome::WouldQuarantine { .. })),
                "summary (dry run, nothing changed): would quarantine",
            )
        } else {
            (
                self.count(|o| matches!(o, Outcome::Quarantined { .. })),
                "summary: quarantined",
            )
        };
        let details: Vec<String> = [
            (kept(|k| matches!(k, Kept::Stamped(_))), "stamped"),
            (
                kept(|k| matches!(k, Kept::StillWritten { .. })),
                "still being written",
            ),
            (kept(|k| matches!(k, Kept::Unfinished)), "without meta.json"),
            (
                kept(|k| matches!(k, Kept::ShipperHandling(_) | Kept::PendingByShipper(_))),
                "handled by the shipper",
            ),
            (
                kept(|k| matches!(k, Kept::Unreadable { .. })),
                "unreadable meta.json",
            ),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let kept_total = self.count(|o| matches!(o, Outcome::Kept(_)));
        let kept = if details.is_empty() {
            kept_total.to_string()
        } else {
            format!("{kept_total} ({})", details.join(", "))
        };
        let gone = match self.count(|o| matches!(o, Outcome::Gone)) {
            0 => String::new(),
            n => format!(", gone meanwhile {n}"),
        };
        let created = match (self.created.is_empty(), self.dry_run) {
            (true, _) => String::new(),
            (false, dry) => format!(
                "; {} {} (mode 0750, owned like the data dir: the shipper never ran here)",
                if dry { "would create" } else { "created" },
                self.created
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        format!(
            "{verb} {moved}, already quarantined meanwhile {}{gone}, kept {kept}, skipped {}, failed {}{created}",
            self.count(|o| matches!(o, Outcome::AlreadyQuarantined)),
            self.count(|o| matches!(o, Outcome::InvalidName(_) | Outcome::NotADirectory)),
            self.failed()
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const C: &str = "1111111111111111111111111111111111111111";

    fn backdate(root: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        for e in walkdir_all(root) {
            std::fs::File::open(&e).unwrap().set_modified(old).unwrap();
        }
    }

    fn walkdir_all(root: &Path) -> Vec<PathBuf> {
        let mut out = vec![root.to_owned()];
        let mut i = 0;
        while i < out.len() {
            if out[i].is_dir() {
                for e in std::fs::read_dir(&out[i]).unwrap() {
                    out.push(e.unwrap().path());
                }
            }
            i += 1;
        }
        out
    }

    fn data_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for sub in ["episodes", "outbox", "quarantine", "state"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        d
    }

    fn episode(d: &Path, id: &str, meta: Option<&str>) {
        let dir = d.join("episodes").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(m) = meta {
            std::fs::write(dir.join("meta.json"), m).unwrap();
        }
    }

    fn outcomes(d: &Path, dry_run: bool) -> Vec<(String, Outcome)> {
        let opts = Options {
            source: Source::DataDir(d.to_owned()),
            dry_run,
        };
        run(&opts, &mut |_| {})
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.name, e.outcome))
            .collect()
    }

    #[test]
    fn unknown_host_is_a_valid_id_and_the_fallback() {
        assert_eq!(host_id_from(None).as_str(), UNKNOWN_HOST);
        assert_eq!(host_id_from(Some("bad host")).as_str(), UNKNOWN_HOST);
        assert_eq!(
            host_id_from(Some("lab-01.example.org")).as_str(),
            "lab-01.example.org"
        );
    }

    #[test]
    fn classifies_each_directory() {
        let d = data_dir();
        let p = d.path();
        let stamped = format!(r#"{{"code_version":{{"commit":"{C}"}}}}"#);
        episode(p, "a-stamped", Some(&stamped));
        episode(p, "b-missing", Some("{}"));
        episode(p, "c-open", None);
        episode(p, "d-handled", Some("{}"));
        std::fs::write(p.join("outbox/d-handled.tar.zst"), b"").unwrap();
        episode(p, ".hidden", Some("{}"));
        std::fs::write(p.join("episodes/file"), b"").unwrap();
        backdate(&p.join("episodes"));
        episode(p, "e-fresh", Some("[1]"));
        let dry = outcomes(p, true);
        let get = |v: &[(String, Outcome)], n: &str| v.iter().find(|e| e.0 == n).unwrap().1.clone();
        assert_eq!(
            get(&dry, "a-stamped"),
            Outcome::Kept(Kept::Stamped(Commit::parse(C).unwrap()))
        );
        assert!(
            matches!(get(&dry, "b-missing"), Outcome::WouldQuarantine { code, .. } if code == "stamp_missing")
        );
        assert_eq!(get(&dry, "c-open"), Outcome::Kept(Kept::Unfinished));
        assert!(matches!(
            get(&dry, "d-handled"),
            Outcome::Kept(Kept::ShipperHandling(_))
        ));
        assert!(matches!(get(&dry, ".hidden"), Outcome::InvalidName(_)));
        assert_eq!(get(&dry, "file"), Outcome::NotADirectory);
        assert!(matches!(
            get(&dry, "e-fresh"),
            Outcome::Kept(Kept::StillWritten {
                code: "meta_invalid",
                ..
            })
        ));
        assert!(
            p.join("episodes/b-missing").is_dir(),
            "dry run moved nothing"
        );

        let real = outcomes(p, false);
        assert!(
            matches!(get(&real, "b-missing"), Outcome::Quarantined { ref dest, .. } if dest == &p.join("quarantine/b-missing"))
        );
        assert!(
            p.join("quarantine/b-missing/quarantine_reason.json")
                .is_file()
        );
    }

    #[test]
    fn finishes_an_interrupted_quarantine_with_its_recorded_reason() {
        let d = data_dir();
        let p = d.path();
        episode(p, "x", Some("{}"));
        let reason = r#"{"episode_id":"x","host_id":"h","reason":"stamp_missing","http_status":null,"message":"recorded","remediation":null,"commit":null,"quarantined_at":"2024-01-01T00:00:00Z"}"#;
        std::fs::write(p.join("episodes/x/quarantine_reason.json"), reason).unwrap();
        let out = outcomes(p, false);
        assert!(
            matches!(&out[0].1, Outcome::Quarantined { message, finished: true, .. } if message == "recorded")
        );
        assert_eq!(
            std::fs::read_to_string(p.join("quarantine/x/quarantine_reason.json")).unwrap(),
            reason
        );
    }

    #[test]
    fn losing_the_race_to_the_shipper_is_reported_not_failed() {
        let d = data_dir();
        let p = d.path();
        episode(p, "r", Some("{}"));
        backdate(&p.join("episodes"));
        let t = Target::resolve(&Source::DataDir(p.to_owned())).unwrap();
        let plan = judge(&t, "r", true);
        assert!(matches!(plan, Plan::Quarantine { .. }), "{plan:?}");
        // The shipper quarantines it between our look and our move.
        let shipper = t
            .layout
            .quarantine(
                &Id::parse("r").unwrap(),
                &t.host_id,
                &unstamped_reason(&labship_protocol::StampError::Missing),
            )
            .unwrap();
        assert_eq!(shipper, p.join("quarantine/r"));
        assert_eq!(act(&t, plan, false), Outcome::AlreadyQuarantined);
        assert_eq!(
            std::fs::read_dir(p.join("quarantine")).unwrap().count(),
            1,
            "no r.1"
        );
        assert_eq!(
            std::fs::read_dir(p.join("state")).unwrap().count(),
            0,
            "no temp file left"
        );
    }

    #[test]
    fn missing_queue_is_a_config_error() {
        let d = tempfile::tempdir().unwrap();
        let opts = Options {
            source: Source::DataDir(d.path().join("nope")),
            dry_run: false,
        };
        let e = run(&opts, &mut |_| {}).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--data-dir"), "{e}");
    }

    #[test]
    fn summary_counts() {
        let r = Report {
            dry_run: false,
            created: Vec::new(),
            entries: vec![
                Entry {
                    name: "a".into(),
                    outcome: Outcome::Kept(Kept::Unfinished),
                },
                Entry {
                    name: "b".into(),
                    outcome: Outcome::Failed("x".into()),
                },
            ],
        };
        assert_eq!(
            r.summary(),
            "summary: quarantined 0, already quarantined meanwhile 0, kept 1 (1 without meta.json), skipped 0, failed 1"
        );
    }
}
