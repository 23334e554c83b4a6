//! The filesystem store: `<dir>/<host_id>/<episode_id>.tar.zst` beside
//! `<episode_id>.json` (the manifest), with upload scratch in `<dir>/.scratch/`.
//!
//! Commit protocol, per episode, under a per-episode lock (see docs/protocol.md):
//! 1. the scratch file (already written and verified) is fsynced;
//! 2. the manifest is written to scratch, fsynced, renamed to `<id>.json`,
//!    and the host directory fsynced;
//! 3. the archive is renamed into place with no-clobber semantics
//!    (`renameat2(RENAME_NOREPLACE)`, or link+unlink), and the host directory is
//!    fsynced.
//!
//! The archive's presence is the commit point: an archive is never visible
//! without its manifest, and never visible before it is complete and durable.
//! A crash between 2 and 3 leaves a manifest with no archive; it is invisible
//! (every read starts from the archive) and is replaced when the shipper retries,
//! which it must, because it never got a success answer. Scratch files left by a
//! crash are removed at start-up ([`FsStore::open`]). The S3 store keeps one of
//! these as its local scratch spool.

use super::{CommitOutcome, Manifest, StoreError};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the scratch directory under the storage dir. Host ids cannot start
/// with a dot, so it never collides with a host directory.
const SCRATCH: &str = ".scratch";

/// Mode of stored archives and manifests: readable by the store's group (the
/// people and jobs that read episodes), never world-readable.
const STORED_MODE: u32 = 0o640;

/// Number of lock stripes serialising commits of the same episode.
const STRIPES: usize = 64;

#[derive(Debug, Clone)]
pub struct FsStore {
    dir: PathBuf,
    stripes: Arc<[tokio::sync::Mutex<()>]>,
}

/// Runs filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io {
            op: "join",
            path: PathBuf::new(),
            source: io::Error::other(e),
        })?
}

fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    labship_sys::fs::fsync_dir(path).map_err(StoreError::io("fsync directory", path))
}

impl FsStore {
    /// Creates the directories and removes scratch left by a crash.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let scratch = dir.join(SCRATCH);
        std::fs::create_dir_all(&scratch).map_err(StoreError::io("create", &scratch))?;
        let mut removed = 0usize;
        for entry in std::fs::read_dir(&scratch).map_err(StoreError::io("read", &scratch))? {
            let path = entry.map_err(StoreError::io("read", &scratch))?.path();
            std::fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            removed += 1;
        }
        if removed > 0 {
            tracing::warn!(removed, dir = %scratch.display(), "removed scratch left by an interrupted run");
            fsync_dir(&scratch)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.join(SCRATCH)
    }

    /// A new scratch file for an upload; removed on drop unless committed.
    pub fn scratch_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.scratch_dir();
        tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(StoreError::io("create scratch in", &dir))
    }

    pub fn archive_path(&self, host: &str, episode: &str) -> PathBuf {
        self.dir.join(host).join(format!("{episode}.tar.zst"))
    }

    pub fn manifest_path(&self, host: &str, episode: &str) -> PathBuf {
        self.dir.join(host).join(format!("{episode}.json"))
    }

    /// The manifest of a stored (visible) archive, or `None`.
    pub fn head_blocking(&self, host: &str, episode: &str) -> Result<Option<Manifest>, StoreError> {
        let archive = self.archive_path(host, episode);
        match std::fs::symlink_metadata(&archive) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("stat", &archive)(e)),
        }
        let path = self.manifest_path(host, episode);
        let bytes = std::fs::read(&path).map_err(|e| StoreError::Manifest {
            path: path.clone(),
            why: e.to_string(),
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Manifest {
                path,
                why: e.to_string(),
            })
    }

    pub async fn head(&self, host: &str, episode: &str) -> Result<Option<Manifest>, StoreError> {
        let (store, host, episode) = (self.clone(), host.to_owned(), episode.to_owned());
        blocking(move || store.head_blocking(&host, &episode)).await
    }

    fn stripe(&self, host: &str, episode: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::hash::DefaultHasher::new();
        (host, episode).hash(&mut h);
        &self.stripes[(h.finish() as usize) % self.stripes.len()]
    }

    /// Makes `scratch` visible as the archive of `manifest`, unless an archive
    /// is already stored under that id.
    pub async fn commit(
        &self,
        scratch: tempfile::NamedTempFile,
        manifest: Manifest,
    ) -> Result<CommitOutcome, StoreError> {
        let _guard = self
            .stripe(&manifest.host_id, &manifest.episode_id)
            .lock()
            .await;
        let store = self.clone();
        blocking(move || store.commit_blocking(scratch, manifest)).await
    }

    fn commit_blocking(
        &self,
        scratch: tempfile::NamedTempFile,
        manifest: Manifest,
    ) -> Result<CommitOutcome, StoreError> {
        let (host, episode) = (manifest.host_id.as_str(), manifest.episode_id.as_str());
        if let Some(existing) = self.head_blocking(host, episode)? {
            return Ok(if existing.digest == manifest.digest {
                CommitOutcome::AlreadyStored
            } else {
                CommitOutcome::Conflict(Box::new(existing))
            });
        }
        use std::os::unix::fs::PermissionsExt as _;
        let mode = || std::fs::Permissions::from_mode(STORED_MODE);
        scratch
            .as_file()
            .set_permissions(mode())
            .and_then(|()| scratch.as_file().sync_all())
            .map_err(StoreError::io("fsync", scratch.path()))?;
        crate::crash_point("store:scratch-synced");

        // Always fsync the parent: another commit may have just created the
        // host directory without having made its entry durable yet.
        let host_dir = self.dir.join(host);
        std::fs::create_dir_all(&host_dir).map_err(StoreError::io("create", &host_dir))?;
        fsync_dir(&self.dir)?;

        // Manifest first: durable before the archive can be seen.
        let manifest_path = self.manifest_path(host, episode);
        let mut tmp = tempfile::Builder::new()
            .prefix("manifest-")
            .tempfile_in(self.scratch_dir())
            .map_err(StoreError::io("create scratch in", &self.scratch_dir()))?;
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Io {
            op: "serialize manifest",
            path: manifest_path.clone(),
            source: io::Error::other(e),
        })?;
        tmp.write_all(&json)
            .and_then(|()| tmp.write_all(b"\n"))
            .and_then(|()| tmp.as_file().set_permissions(mode()))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(StoreError::io("write", tmp.path()))?;
        tmp.persist(&manifest_path)
            .map_err(|e| StoreError::io("rename into", &manifest_path)(e.error))?;
        // Renames are not ordered by POSIX: make the manifest's durable before
        // the archive's, so no crash leaves an archive without its manifest.
        fsync_dir(&host_dir)?;
        crate::crash_point("store:manifest-renamed");

        // The commit point: no-clobber rename, then make it durable.
        let archive_path = self.archive_path(host, episode);
        scratch
            .persist_noclobber(&archive_path)
            .map_err(|e| StoreError::io("rename into", &archive_path)(e.error))?;
        crate::crash_point("store:archive-renamed");
        fsync_dir(&host_dir)?;
        crate::crash_point("store:committed");
        Ok(CommitOutcome::Stored)
    }
}
