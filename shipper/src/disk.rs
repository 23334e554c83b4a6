//! The shipper's directories and every durable move between them
//! (docs/transport.md has the table of states and crash windows).
//!
//! `data_dir/episodes/<id>/` is the queue (the producer's), `outbox/` holds
//! archives built but not yet confirmed (`<id>.tar.zst` + `<id>.json` sidecar,
//! and `<id>.upload` while a resumable upload of it is open),
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

/// Archives up to this size are packed in memory and uploaded from there:
/// no file in `outbox/`, so no create, fsyncs and unlink per episode, which
/// dominated the cost of shipping small episodes (docs/performance.md). A
/// crash loses only the in-memory copy; the episode is still in `episodes/`
/// and packs again to the same bytes.
pub const INLINE_MAX: usize = 1 << 20;

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
    /// The directory it was packed from; absent in sidecars written before
    /// the shipper recorded it (such an archive is packed again).
    #[serde(default)]
    origin: Option<Origin>,
}

/// Which directory an archive was packed from: `episodes/<id>`'s device,
/// inode and, where the filesystem records it, birth time. An archive left
/// in `outbox/` (a crash after the move to `shipped/`, a failed cleanup)
/// must never be sent or confirmed for a *later* episode that reuses the id:
/// HEAD would find the first episode's digest and retire the new one
/// unsent. The new episode is another directory: while the first one exists
/// (in `shipped/`) its inode cannot be handed out again, and the birth time
/// tells a reused inode apart after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub dev: u64,
    pub ino: u64,
    /// Nanoseconds since the epoch; `None` where the filesystem has none.
    pub btime_ns: Option<u64>,
}

impl Origin {
    /// The identity of the directory at `dir` now.
    pub fn of(dir: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(dir)?;
        let btime_ns = m
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok());
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            btime_ns,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inode {} on device {}", self.ino, self.dev)?;
        match self.btime_ns {
            Some(ns) => write!(f, ", born {}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000),
            None => Ok(()),
        }
    }
}

/// What `outbox/` holds for an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbox {
    /// No complete archive (none, or one without its sidecar).
    Empty,
    /// A complete archive packed from the directory now queued under the id.
    Ours(Archive),
    /// A complete archive packed from another directory under the same id
    /// (or one whose sidecar does not say): never to be sent or confirmed
    /// for this episode. `why` says which.
    Stale { why: String },
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

pub use labship_sys::fs::fsync_dir;

mod atomic;
mod pack;

use atomic::{left_by_the_dead, rename_noclobber};
pub use atomic::{write_atomic, write_atomic_nosync, write_atomic_via};

/// An outbox archive renamed into place but not yet fsynced and without its
/// sidecar: [`Layout::seal`] finishes it. Dropping it unsealed leaves an
/// archive that the next start-up deletes (and a later pass overwrites).
#[derive(Debug)]
pub struct Unsealed {
    id: Id,
    file: File,
    sidecar: Sidecar,
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
    /// archives without a sidecar (and sidecars without an archive), and
    /// outbox entries whose episode already left the queue.
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
        let Some(lock) = labship_sys::fs::try_lock(&lock_path)? else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another shipper is already running on this data_dir (it holds {}); it ships these episodes — see `systemctl status labship-shipper`, or stop it before running this one",
                    lock_path.display()
                ),
            ));
        };
        for entry in std::fs::read_dir(&self.outbox)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = name
                .strip_suffix(".tar.zst")
                .or_else(|| name.strip_suffix(".json"))
                .or_else(|| name.strip_suffix(crate::upload::location::SUFFIX));
            let keep = match id {
                // A complete pair of an episode still queued: an archive
                // alone was never sealed, a sidecar alone describes nothing.
                // The pair's upload location (`<id>.upload`) goes with it.
                Some(id) if !name.starts_with('.') => {
                    self.episodes.join(id).is_dir()
                        && self.outbox.join(format!("{id}.json")).exists()
                        && self.outbox.join(format!("{id}.tar.zst")).exists()
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
        // temp files a minute old, or staged by a process that is gone
        // (the shipper killed mid-pass), are crash leftovers.
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for entry in std::fs::read_dir(&self.state)? {
            let entry = entry?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < stale);
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") && (old || left_by_the_dead(&name)) {
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

    /// The archive already in the outbox for `id`, if a complete one is
    /// there and was packed from the directory queued under `id` now.
    pub fn outbox_archive(&self, id: &Id) -> Option<Archive> {
        match self.outbox(id) {
            Outbox::Ours(archive) => Some(archive),
            Outbox::Empty | Outbox::Stale { .. } => None,
        }
    }

    /// What `outbox/` holds for `id`, judged against the directory queued
    /// under `id` now (see [`Origin`]).
    pub fn outbox(&self, id: &Id) -> Outbox {
        let Ok(bytes) = std::fs::read(self.sidecar_path(id)) else {
            return Outbox::Empty;
        };
        let Ok(s) = serde_json::from_slice::<Sidecar>(&bytes) else {
            return Outbox::Empty;
        };
        if !self.archive_path(id).is_file() {
            return Outbox::Empty;
        }
        let (Ok(digest), Ok(commit)) = (
            Sha256Digest::parse_header(&s.digest),
            Commit::parse(&s.commit),
        ) else {
            return Outbox::Empty;
        };
        let dir = self.episodes.join(id.as_str());
        let here = match Origin::of(&dir) {
            Ok(here) => here,
            // Gone from the queue: nothing to send it for.
            Err(_) => return Outbox::Empty,
        };
        match s.origin {
            Some(origin) if origin == here => Outbox::Ours(Archive {
                digest,
                bytes: s.bytes,
                commit,
                inline: None,
                origin,
            }),
            Some(origin) => Outbox::Stale {
                why: format!(
                    "it was packed from another directory under this id ({origin}) than the one queued now ({here}): an earlier episode with the same id"
                ),
            },
            None => Outbox::Stale {
                why: "its sidecar does not say which directory it was packed from (written by an older shipper)".into(),
            },
        }
    }

    /// Puts an archive held in memory into the outbox after all, as if it
    /// had been packed there: used when its episode could not be retired,
    /// so the retry confirms the receiver's copy with HEAD (row 4 of
    /// docs/transport.md) rather than packing a tree that may have changed.
    pub fn keep(&self, id: &Id, archive: &Archive) -> io::Result<()> {
        let Some(bytes) = &archive.inline else {
            return Ok(());
        };
        let in_place = |(path, e): (PathBuf, io::Error)| {
            io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.outbox)?;
        tmp.write_all(bytes)?;
        let unsealed = self.place(id, tmp, archive).map_err(in_place)?;
        self.seal(unsealed).map_err(in_place)
    }

    /// The first half of an outbox commit: the written archive `tmp` becomes
    /// `<id>.tar.zst`, readable for the upload but neither durable nor
    /// complete (no sidecar): a crash now leaves an archive that `prepare()`
    /// deletes, and the episode packs again to the same bytes.
    fn place(
        &self,
        id: &Id,
        tmp: tempfile::NamedTempFile,
        archive: &Archive,
    ) -> Result<Unsealed, (PathBuf, io::Error)> {
        // A sidecar left from before (one whose archive went, or a stale
        // one) must not describe these bytes for a moment: a crash then
        // would leave a pair that looks complete.
        let sidecar_path = self.sidecar_path(id);
        match std::fs::remove_file(&sidecar_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((sidecar_path, e)),
            _ => {}
        }
        let path = self.archive_path(id);
        let file = tmp.persist(&path).map_err(|e| (path.clone(), e.error))?;
        crate::crash_point("pack:archive-renamed");
        Ok(Unsealed {
            id: id.clone(),
            file,
            sidecar: Sidecar {
                digest: archive.digest.header_value(),
                bytes: archive.bytes,
                commit: archive.commit.to_string(),
                origin: Some(archive.origin),
            },
        })
    }

    /// The second half: fsync the archive, then write its sidecar (whose
    /// presence marks the archive complete and durable; its directory
    /// fsync also makes the archive's rename durable). An error names the
    /// path it concerns.
    pub fn seal(&self, unsealed: Unsealed) -> Result<(), (PathBuf, io::Error)> {
        let Unsealed { id, file, sidecar } = unsealed;
        let path = self.archive_path(&id);
        file.sync_all().map_err(|e| (path.clone(), e))?;
        crate::crash_point("pack:archive-synced");
        let json = serde_json::to_vec(&sidecar).map_err(|e| (path, io::Error::other(e)))?;
        let sidecar_path = self.sidecar_path(&id);
        write_atomic(&sidecar_path, &json).map_err(|e| (sidecar_path, e))?;
        crate::crash_point("pack:sidecar-written");
        Ok(())
    }

    /// Removes the outbox upload location, sidecar and archive of `id`, if
    /// any, in that order (a location is never left without its archive), and
    /// makes the removal durable (with nothing removed there is nothing to sync).
    pub fn drop_outbox(&self, id: &Id) -> io::Result<()> {
        let mut removed = false;
        let upload = crate::upload::location::path(self, id);
        for p in [upload, self.sidecar_path(id), self.archive_path(id)] {
            match std::fs::remove_file(&p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
        }
        if removed {
            fsync_dir(&self.outbox)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use atomic::tmp_prefix;
    use std::sync::atomic::AtomicU64;

    fn episode(layout: &Layout, id: &str, data: &[u8]) -> Id {
        let dir = layout.episodes.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("meta.json"),
            br#"{"code_version":{"commit":"1111111111111111111111111111111111111111"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("d.bin"), data).unwrap();
        Id::parse(id).unwrap()
    }

    /// Incompressible bytes: the archive is about as large as `len`.
    fn noise(len: usize) -> Vec<u8> {
        use std::io::Read as _;
        let mut bytes = vec![0; len];
        File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut bytes)
            .unwrap();
        bytes
    }

    fn outbox(layout: &Layout) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&layout.outbox)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// What a crash can leave in `outbox/`, and what a start keeps: only
    /// sealed pairs (archive and sidecar) of episodes still queued.
    #[test]
    fn a_start_keeps_only_sealed_archives_of_queued_episodes() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        let lock = layout.prepare().unwrap();
        let commit = Commit::parse("1111111111111111111111111111111111111111").unwrap();
        let written = AtomicU64::new(0);
        let pack = |name: &str| {
            let id = episode(&layout, name, &noise(INLINE_MAX + 1000));
            let (_, unsealed) = layout.pack(&id, &commit, 3, 1, &written).unwrap();
            (id, unsealed.unwrap())
        };
        let (_, sealed) = pack("sealed");
        layout.seal(sealed).unwrap();
        // Renamed into place, then the process died before the seal.
        let (_, unsealed) = pack("unsealed");
        drop(unsealed);
        let (lone, sealed) = pack("lone-sidecar");
        layout.seal(sealed).unwrap();
        std::fs::remove_file(layout.archive_path(&lone)).unwrap();
        let (gone, sealed) = pack("gone");
        layout.seal(sealed).unwrap();
        std::fs::rename(layout.episodes.join("gone"), layout.shipped.join("gone")).unwrap();
        std::fs::write(layout.outbox.join(".tmp-half"), b"half").unwrap();
        assert!(layout.archive_path(&gone).is_file());
        // Its episode left the queue: nothing to send it for.
        assert_eq!(layout.outbox(&gone), Outbox::Empty);
        drop(lock);
        let _lock = layout.prepare().unwrap();
        assert_eq!(outbox(&layout), ["sealed.json", "sealed.tar.zst"]);
    }

    /// Temp files in `state/`: a dead writer's go at the next start, a live
    /// one's (quarantine-unstamped beside us) stay until a minute old.
    #[test]
    fn a_start_removes_temp_files_of_dead_writers_only() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        drop(layout.prepare().unwrap());
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let mut alive = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let files = [
            format!(".tmp-p{dead}-reason"),
            format!(".tmp-p{}-reason", alive.id()),
            ".tmp-unknown".to_owned(),
            "status.json".to_owned(),
        ];
        for f in &files {
            std::fs::write(layout.state.join(f), b"x").unwrap();
        }
        let _lock = layout.prepare().unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&layout.state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "shipper.lock")
            .collect();
        left.sort();
        let mut expected = files[1..].to_vec();
        expected.sort();
        assert_eq!(left, expected);
        alive.kill().unwrap();
        alive.wait().unwrap();
        // What this process stages carries its pid.
        write_atomic(&layout.state.join("x.json"), b"{}").unwrap();
        assert!(tmp_prefix().starts_with(&format!(".tmp-p{}-", std::process::id())));
    }

    /// An archive left in the outbox by one episode (a crash right after its
    /// move to `shipped/`) is never taken for a later episode under the same
    /// id, nor is one whose sidecar does not say where it came from.
    #[test]
    fn an_earlier_episodes_archive_is_stale_for_a_new_one_under_its_id() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        let _lock = layout.prepare().unwrap();
        let commit = Commit::parse("1111111111111111111111111111111111111111").unwrap();
        let written = AtomicU64::new(0);
        let id = episode(&layout, "reused", &noise(INLINE_MAX + 1000));
        let (archive, unsealed) = layout.pack(&id, &commit, 3, 1, &written).unwrap();
        layout.seal(unsealed.unwrap()).unwrap();
        assert_eq!(layout.outbox(&id), Outbox::Ours(archive.clone()));
        assert_eq!(
            archive.origin,
            Origin::of(&layout.episodes.join("reused")).unwrap()
        );

        // What `retire` leaves when killed at `retire:moved`, then the
        // producer writes a new episode with the same id.
        std::fs::rename(
            layout.episodes.join("reused"),
            layout.shipped.join("reused"),
        )
        .unwrap();
        episode(&layout, "reused", b"new data");
        match layout.outbox(&id) {
            Outbox::Stale { why } => assert!(why.contains("another directory"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(layout.outbox_archive(&id), None);

        // A sidecar from before the origin was recorded.
        let sidecar = layout.outbox.join("reused.json");
        let mut old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("origin");
        std::fs::write(&sidecar, old.to_string()).unwrap();
        match layout.outbox(&id) {
            Outbox::Stale { why } => assert!(why.contains("older shipper"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// A small archive stays in memory and leaves no file; a large one spills
    /// to `outbox/` with its sidecar. Either way the bytes are exactly the
    /// pack's, so the digest does not depend on where they were kept.
    #[test]
    fn small_archives_stay_in_memory_large_ones_go_to_the_outbox() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        let _lock = layout.prepare().unwrap();
        let commit = Commit::parse("1111111111111111111111111111111111111111").unwrap();
        let written = AtomicU64::new(0);
        for (name, len, inline) in [
            ("small", 200_000, true),
            ("large", INLINE_MAX + 100_000, false),
        ] {
            let id = episode(&layout, name, &noise(len));
            let (archive, unsealed) = layout.pack(&id, &commit, 3, 2, &written).unwrap();
            assert_eq!(unsealed.is_none(), inline, "{name}");
            if let Some(unsealed) = unsealed {
                // In place for the upload, but not complete until sealed.
                assert_eq!(outbox(&layout), ["large.tar.zst"]);
                assert_eq!(layout.outbox_archive(&id), None);
                layout.seal(unsealed).unwrap();
            }
            let mut expected = Vec::new();
            let dir = layout.episodes.join(name);
            archive::pack(&dir, &id, &mut expected, 3, 1, &written).unwrap();
            assert_eq!(archive.bytes, expected.len() as u64, "{name}");
            assert_eq!(archive.digest, Sha256Digest::of(&expected), "{name}");
            if inline {
                assert_eq!(archive.inline.as_deref(), Some(expected.as_slice()));
                assert_eq!(outbox(&layout), Vec::<String>::new(), "{name}");
                assert_eq!(layout.outbox_archive(&id), None);
            } else {
                assert_eq!(archive.inline, None);
                assert_eq!(std::fs::read(layout.archive_path(&id)).unwrap(), expected);
                assert_eq!(layout.outbox_archive(&id), Some(archive));
                assert_eq!(outbox(&layout), ["large.json", "large.tar.zst"]);
            }
        }
        layout.drop_outbox(&Id::parse("large").unwrap()).unwrap();
        assert_eq!(outbox(&layout), Vec::<String>::new());

        // An episode that could not be retired keeps its archive in outbox/.
        let id = Id::parse("small").unwrap();
        let (archive, _) = layout.pack(&id, &commit, 3, 2, &written).unwrap();
        layout.keep(&id, &archive).unwrap();
        assert_eq!(outbox(&layout), ["small.json", "small.tar.zst"]);
        assert_eq!(
            std::fs::read(layout.archive_path(&id)).unwrap(),
            archive.inline.as_deref().unwrap()
        );
        let kept = layout.outbox_archive(&id).unwrap();
        assert_eq!((kept.digest, kept.bytes), (archive.digest, archive.bytes));
    }
}
