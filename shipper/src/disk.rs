//! The shipper's directories and every durable move between them
//! (docs/transport.md has the table of states and crash windows).
//!
//! `data_dir/episodes/<id>/` is the queue (the producer's), `outbox/` holds
//! archives built but not yet confirmed (`<id>.tar.zst` + `<id>.json` sidecar),
//! `shipped/<id>/` and `quarantine/<name>/` are final. Every move is a rename on
//! one filesystem, made durable by fsyncing both directories; moves into the
//! final places never overwrite (`renameat2(RENAME_NOREPLACE)`).

use crate::archive::{self, ArchiveError};
use crate::state::{Archive, Reason};
use labship_protocol::{Commit, Id, Sha256Digest};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Name of the reason file inside a quarantined episode.
pub const REASON_FILE: &str = "quarantine_reason.json";

#[derive(Debug, Clone)]
pub struct Layout {
    pub episodes: PathBuf,
    pub outbox: PathBuf,
    pub shipped: PathBuf,
    pub quarantine: PathBuf,
    pub state: PathBuf,
}

/// The sidecar of an outbox archive.
#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    digest: String,
    bytes: u64,
    commit: String,
}

/// `quarantine_reason.json` (CONTRACT §2).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReasonFile {
    pub episode_id: String,
    pub host_id: String,
    pub reason: String,
    pub http_status: Option<u16>,
    pub message: String,
    pub remediation: Option<String>,
    pub commit: Option<String>,
    pub quarantined_at: String,
}

pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Mode of the small files labship writes (reason files, sidecars,
/// status.json): readable by the group, so `doctor` run by an operator in the
/// `labship` group sees them; tempfile's default is 0600.
static READABLE: std::sync::LazyLock<std::fs::Permissions> =
    std::sync::LazyLock::new(|| std::os::unix::fs::PermissionsExt::from_mode(0o640));

/// Writes `bytes` to `path` atomically and durably: temp name, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(READABLE.clone())
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fsync_dir(dir)
}

/// As [`write_atomic`], but the temp file lives in `scratch` (same
/// filesystem), so a crash never leaves a stray file next to `path`: used for
/// the reason file, which goes inside an episode that may yet be packed.
pub fn write_atomic_via(scratch: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(READABLE.clone())
        .tempfile_in(scratch)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    match tmp.persist(path) {
        Ok(_) => fsync_dir(dir),
        // EXDEV: `episodes/` on another filesystem than `state/`.
        Err(e) if e.error.raw_os_error() == Some(18) => write_atomic(path, bytes),
        Err(e) => Err(e.error),
    }
}

/// Renames `from` to `to`, failing with `AlreadyExists` rather than replacing.
fn rename_noclobber(from: &Path, to: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(io::Error::from)
}

impl Layout {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            episodes: data_dir.join("episodes"),
            outbox: data_dir.join("outbox"),
            shipped: data_dir.join("shipped"),
            quarantine: data_dir.join("quarantine"),
            state: data_dir.join("state"),
        }
    }

    /// Creates the directories and clears scratch left by a crash: temp files,
    /// archives without a sidecar, and outbox entries whose episode already left
    /// the queue.
    pub fn prepare(&self) -> io::Result<File> {
        for d in [
            &self.episodes,
            &self.outbox,
            &self.shipped,
            &self.quarantine,
            &self.state,
        ] {
            std::fs::create_dir_all(d)?;
        }
        // One shipper per data_dir, locked before anything is cleaned: a
        // second one (`--once` beside the daemon) would otherwise remove the
        // first one's half-written archives and race it on every move.
        let lock_path = self.state.join("shipper.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        if let Err(e) =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            return Err(if e == rustix::io::Errno::WOULDBLOCK {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "another shipper is already running on this data_dir (it holds {}); it ships these episodes — see `systemctl status labship-shipper`, or stop it before running this one",
                        lock_path.display()
                    ),
                )
            } else {
                io::Error::from(e)
            });
        }
        for entry in std::fs::read_dir(&self.outbox)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = name
                .strip_suffix(".tar.zst")
                .or_else(|| name.strip_suffix(".json"));
            let keep = match id {
                Some(id) if !name.starts_with('.') => {
                    self.episodes.join(id).is_dir()
                        && self.outbox.join(format!("{id}.json")).exists()
                }
                _ => false,
            };
            if !keep {
                tracing::info!(path = %path.display(), "removing outbox leftover");
                std::fs::remove_file(&path)?;
            }
        }
        fsync_dir(&self.outbox)?;
        // state/ is shared with quarantine-unstamped, which may run beside
        // us and stage its reason files here for a few milliseconds: only
        // temp files a minute old are crash leftovers.
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for entry in std::fs::read_dir(&self.state)? {
            let entry = entry?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < stale);
            if entry.file_name().to_string_lossy().starts_with(".tmp-") && old {
                tracing::info!(path = %entry.path().display(), "removing state leftover");
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(lock)
    }

    pub fn archive_path(&self, id: &Id) -> PathBuf {
        self.outbox.join(format!("{id}.tar.zst"))
    }

    fn sidecar_path(&self, id: &Id) -> PathBuf {
        self.outbox.join(format!("{id}.json"))
    }

    /// The archive already in the outbox for `id`, if a complete one is there.
    pub fn outbox_archive(&self, id: &Id) -> Option<Archive> {
        let bytes = std::fs::read(self.sidecar_path(id)).ok()?;
        let s: Sidecar = serde_json::from_slice(&bytes).ok()?;
        if !self.archive_path(id).is_file() {
            return None;
        }
        Some(Archive {
            digest: Sha256Digest::parse_header(&s.digest).ok()?,
            bytes: s.bytes,
            commit: Commit::parse(&s.commit).ok()?,
        })
    }

    /// Packs episode `id` into the outbox: archive durable first, then its
    /// sidecar (whose presence marks the archive complete).
    pub fn pack(
        &self,
        id: &Id,
        commit: &Commit,
        level: i32,
        workers: u32,
        written: &std::sync::atomic::AtomicU64,
    ) -> Result<Archive, ArchiveError> {
        let io_at = |path: &Path| {
            let path = path.to_owned();
            move |source: io::Error| ArchiveError::Io { path, source }
        };
        let dir = self.episodes.join(id.as_str());
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.outbox)
            .map_err(io_at(&self.outbox))?;
        let packed = archive::pack(
            &dir,
            id,
            io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()),
            level,
            workers,
            written,
        )?;
        tmp.as_file().sync_all().map_err(io_at(tmp.path()))?;
        crate::crash_point("pack:archive-synced");
        let path = self.archive_path(id);
        tmp.persist(&path).map_err(|e| io_at(&path)(e.error))?;
        crate::crash_point("pack:archive-renamed");
        let sidecar = Sidecar {
            digest: packed.digest.header_value(),
            bytes: packed.bytes,
            commit: commit.to_string(),
        };
        let json = serde_json::to_vec(&sidecar).map_err(|e| io_at(&path)(io::Error::other(e)))?;
        write_atomic(&self.sidecar_path(id), &json).map_err(io_at(&self.outbox))?;
        crate::crash_point("pack:sidecar-written");
        Ok(Archive {
            digest: packed.digest,
            bytes: packed.bytes,
            commit: commit.clone(),
        })
    }

    /// Removes the outbox archive and sidecar of `id`, if any.
    pub fn drop_outbox(&self, id: &Id) -> io::Result<()> {
        for p in [self.sidecar_path(id), self.archive_path(id)] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fsync_dir(&self.outbox)
    }

    /// The receiver holds it: `episodes/<id>` → `shipped/<id>`, then the outbox
    /// copy goes. Returns where it went.
    pub fn retire(&self, id: &Id) -> io::Result<PathBuf> {
        crate::crash_point("retire:before-move");
        let dest = self.move_noclobber(id, &self.shipped)?;
        crate::crash_point("retire:moved");
        self.drop_outbox(id)?;
        Ok(dest)
    }

    /// Fatal: the reason file is written into the episode first (so a crash
    /// right after still knows the decision: see [`Layout::pending_quarantine`]),
    /// then `episodes/<id>` → `quarantine/<name>`, never overwriting.
    pub fn quarantine(&self, id: &Id, host: &Id, reason: &Reason) -> io::Result<PathBuf> {
        let file = ReasonFile {
            episode_id: id.to_string(),
            host_id: host.to_string(),
            reason: reason.code.as_str().to_owned(),
            http_status: reason.http_status,
            message: reason.message.clone(),
            remediation: reason.remediation.clone(),
            commit: reason.commit.clone(),
            quarantined_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        write_atomic_via(
            &self.state,
            &self.episodes.join(id.as_str()).join(REASON_FILE),
            &json,
        )?;
        crate::crash_point("quarantine:reason-written");
        self.finish_quarantine(id)
    }

    /// Completes a quarantine whose reason file is already in the episode.
    pub fn finish_quarantine(&self, id: &Id) -> io::Result<PathBuf> {
        let dest = self.move_noclobber(id, &self.quarantine)?;
        crate::crash_point("quarantine:moved");
        self.drop_outbox(id)?;
        Ok(dest)
    }

    /// True when a quarantine was decided but the move did not happen (crash).
    pub fn pending_quarantine(&self, id: &Id) -> bool {
        self.episodes.join(id.as_str()).join(REASON_FILE).is_file()
    }

    /// Moves `episodes/<id>` into `into/`, as `<id>` or, if taken, `<id>.1`, `<id>.2`…
    fn move_noclobber(&self, id: &Id, into: &Path) -> io::Result<PathBuf> {
        let from = self.episodes.join(id.as_str());
        for n in 0u32.. {
            let name = if n == 0 {
                id.to_string()
            } else {
                format!("{id}.{n}")
            };
            let to = into.join(&name);
            match rename_noclobber(&from, &to) {
                Ok(()) => {
                    fsync_dir(&self.episodes)?;
                    fsync_dir(into)?;
                    return Ok(to);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(39) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("u32 names exhausted")
    }
}
