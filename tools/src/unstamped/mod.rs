//! `quarantine-unstamped` (CONTRACT §5): one pass over `episodes/` that moves
//! every *finished* episode without a usable code stamp into `quarantine/`
//! with its reason file, and says what it did with every other directory.
//!
//! This module owns the pass ([`run`]); `plan` the decision per directory
//! and the move, `report` how the outcomes read, `dirs` the directories a
//! first quarantine needs. Every rule comes from the shipper, so the two
//! can never disagree: the config loader, "finished" and "settled" and the
//! stamp rule ([`labship_shipper::scan::read_stamp`],
//! [`labship_shipper::scan::newest_mtime`]), the reason ([`labship_shipper::state::unstamped_reason`]) and the durable,
//! never-overwriting move ([`labship_shipper::disk::Layout::quarantine`]).
//!
//! Safe beside a running shipper: it never takes the shipper's lock nor
//! cleans its scratch (no `Layout::prepare`), never writes into a stamped
//! episode, leaves alone an episode with an archive in `outbox/`, and a move
//! that finds the episode already gone (the shipper quarantined it at the
//! same moment) is reported, not failed. A rename moves a directory once, so
//! the two can never both succeed and leave a `<id>.1` duplicate.

mod dirs;
mod plan;
mod report;

use labship_protocol::{Commit, Id, IdError};
use labship_shipper::config::{Config, ConfigError};
use labship_shipper::disk::Layout;
use plan::{Plan, act, judge};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use labship_shipper::state::unstamped_reason;
    use std::path::Path;
    use std::time::SystemTime;

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
