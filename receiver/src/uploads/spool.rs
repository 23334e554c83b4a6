//! The durable state of partial uploads: `<storage.dir>/.uploads/<host_id>/<token>/`
//! holding `data` (the archive's bytes so far) and `upload.json` (a [`Record`]:
//! episode, digest, commit, declared length, the durable offset, times).
//!
//! The recorded offset is always bytes that were fsynced in `data` first
//! (checkpoint: fsync `data`, then write `upload.json` to a temp name, fsync,
//! rename, fsync the directory), so `HEAD` after a `kill -9` or a power cut
//! never reports bytes the disk does not hold. Bytes past the recorded offset
//! (written after the last checkpoint) are cut off when the upload is loaded
//! or its validator rebuilt. The spool sits beside the store's `.scratch/`,
//! which start-up empties; the spool is swept by [`Spool::load`] instead, which
//! keeps every live upload and removes expired, broken and finished ones.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Name of the spool under the storage dir (host ids cannot start with a dot).
pub(crate) const UPLOADS_DIR: &str = ".uploads";
/// The archive's bytes so far.
pub(crate) const DATA: &str = "data";
/// The upload's [`Record`].
pub(crate) const RECORD: &str = "upload.json";

/// What `upload.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) host_id: String,
    pub(crate) episode_id: String,
    pub(crate) token: String,
    /// `Content-Digest` form of the whole archive's digest.
    pub(crate) digest: String,
    pub(crate) commit: String,
    /// `Upload-Length`.
    pub(crate) length: u64,
    /// Bytes durably held: fsynced in `data` before this was written.
    pub(crate) offset: u64,
    /// Unix seconds.
    pub(crate) created_at: u64,
    /// Unix seconds of the last append (creation until the first one); the
    /// upload expires `limits.upload_expiry_s` after it.
    pub(crate) last_append_at: u64,
}

impl Record {
    pub(crate) fn expired(&self, now: u64, expiry_s: u64) -> bool {
        now >= self.last_append_at.saturating_add(expiry_s)
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// The spool directory.
#[derive(Debug, Clone)]
pub(crate) struct Spool {
    root: PathBuf,
}

/// Why [`Spool::load`] removed an upload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removed {
    Expired,
    /// Completed just before a crash: its data file is gone, or is a second
    /// name of the archive in the fs store.
    Finished,
    /// An unreadable record, a creation cut short, or a data file shorter
    /// than the recorded offset (the disk lost fsynced bytes).
    Broken,
}

/// What [`Spool::load`] found: the live records, and what it removed.
pub(crate) type Loaded = (Vec<Record>, Vec<(PathBuf, Removed)>);

impl Spool {
    /// `<storage_dir>/.uploads`, created when missing.
    pub(crate) fn open(storage_dir: &Path) -> io::Result<Self> {
        let root = storage_dir.join(UPLOADS_DIR);
        fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, host: &str, token: &str) -> PathBuf {
        self.root.join(host).join(token)
    }

    pub(crate) fn data_path(&self, host: &str, token: &str) -> PathBuf {
        self.dir(host, token).join(DATA)
    }

    /// Creates the upload's directory, an empty `data` and its record, all
    /// durable before the `201` is sent.
    pub(crate) fn create(&self, record: &Record) -> io::Result<()> {
        let host_dir = self.root.join(&record.host_id);
        fs::create_dir_all(&host_dir)?;
        fsync_dir(&self.root)?;
        let dir = host_dir.join(&record.token);
        fs::create_dir(&dir)?;
        File::create(dir.join(DATA))?.sync_all()?;
        self.write_record(record)?;
        fsync_dir(&host_dir)?;
        crate::crash_point("upload:created");
        Ok(())
    }

    /// Replaces `upload.json` atomically and durably.
    pub(crate) fn write_record(&self, record: &Record) -> io::Result<()> {
        let dir = self.dir(&record.host_id, &record.token);
        let mut tmp = tempfile::Builder::new()
            .prefix(".upload-")
            .suffix(".tmp")
            .tempfile_in(&dir)?;
        let mut json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        json.push(b'\n');
        tmp.write_all(&json)?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(RECORD)).map_err(|e| e.error)?;
        fsync_dir(&dir)
    }

    /// Removes the upload's directory (whatever is left in it).
    pub(crate) fn remove(&self, host: &str, token: &str) -> io::Result<()> {
        let dir = self.dir(host, token);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        fsync_dir(&self.root.join(host))
    }

    /// Cuts `data` back to the recorded offset (bytes written after the last
    /// checkpoint were never promised to anyone). An error when `data` holds
    /// less than the offset: the disk lost bytes it had acknowledged.
    pub(crate) fn truncate_to(&self, record: &Record) -> io::Result<()> {
        let path = self.data_path(&record.host_id, &record.token);
        let file = fs::OpenOptions::new().write(true).open(&path)?;
        let len = file.metadata()?.len();
        if len < record.offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} holds {len} bytes but {RECORD} says {} are durable",
                    path.display(),
                    record.offset
                ),
            ));
        }
        if len > record.offset {
            file.set_len(record.offset)?;
            file.sync_all()?;
        }
        Ok(())
    }

    /// Start-up: every live upload's record (its data cut back to the
    /// recorded offset), and what was removed, with why.
    pub(crate) fn load(&self, expiry_s: u64) -> io::Result<Loaded> {
        let (mut live, mut removed) = (Vec::new(), Vec::new());
        let now = unix_now();
        for host in fs::read_dir(&self.root)? {
            let host = host?;
            if !host.file_type()?.is_dir() {
                continue;
            }
            for upload in fs::read_dir(host.path())? {
                let dir = upload?.path();
                match self.load_one(&dir, now, expiry_s) {
                    Ok(record) => live.push(record),
                    Err(why) => {
                        let gone = fs::remove_dir_all(&dir)
                            .or_else(|e| match e.kind() {
                                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                                    fs::remove_file(&dir)
                                }
                                _ => Err(e),
                            })
                            .and_then(|()| fsync_dir(&host.path()));
                        // One entry that cannot go must not keep the
                        // receiver from starting: it is skipped (never
                        // served) and removed at the next start.
                        if let Err(e) = gone {
                            tracing::error!(dir = %dir.display(), error = %e, "cannot remove a partial upload's spool directory; skipped (check its permissions, then restart)");
                            continue;
                        }
                        removed.push((dir, why));
                    }
                }
            }
        }
        Ok((live, removed))
    }

    fn load_one(&self, dir: &Path, now: u64, expiry_s: u64) -> Result<Record, Removed> {
        let text = fs::read(dir.join(RECORD)).map_err(|_| Removed::Broken)?;
        let record: Record = serde_json::from_slice(&text).map_err(|_| Removed::Broken)?;
        if self.dir(&record.host_id, &record.token) != dir {
            return Err(Removed::Broken);
        }
        // A record no append could use (edited, or written by a bug).
        let usable = record.offset <= record.length
            && labship_protocol::Sha256Digest::parse_header(&record.digest).is_ok()
            && labship_protocol::Commit::parse(&record.commit).is_ok()
            && labship_protocol::Id::parse(&record.episode_id).is_ok();
        if !usable {
            return Err(Removed::Broken);
        }
        if record.expired(now, expiry_s) {
            return Err(Removed::Expired);
        }
        match fs::symlink_metadata(dir.join(DATA)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Removed::Finished),
            Err(_) => return Err(Removed::Broken),
            // A second name: the fs store's archive, committed (through a
            // hard link, renamed into place) just before a crash. The store
            // opened first and emptied `.scratch/`, so no other name exists.
            Ok(meta) if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 => {
                return Err(Removed::Finished);
            }
            Ok(_) => {}
        }
        self.truncate_to(&record).map_err(|_| Removed::Broken)?;
        // Temp records a crash left behind.
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".upload-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn record(token: &str, offset: u64, last_append_at: u64) -> Record {
        Record {
            host_id: "lab-01".into(),
            episode_id: "ep".into(),
            token: token.into(),
            digest: labship_protocol::Sha256Digest::of(b"").header_value(),
            commit: "a".repeat(40),
            length: 100,
            offset,
            created_at: last_append_at,
            last_append_at,
        }
    }

    #[test]
    fn load_keeps_live_uploads_and_sweeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path()).unwrap();
        let now = unix_now();
        // Live, with bytes past its durable offset: cut back.
        let live = record(&"1".repeat(32), 3, now);
        spool.create(&live).unwrap();
        fs::write(spool.data_path("lab-01", &live.token), b"abcdef").unwrap();
        // Expired.
        let old = record(&"2".repeat(32), 0, now - 100);
        spool.create(&old).unwrap();
        // Finished: its data moved into the store before a crash.
        let done = record(&"3".repeat(32), 0, now);
        spool.create(&done).unwrap();
        fs::remove_file(spool.data_path("lab-01", &done.token)).unwrap();
        // Committed into an fs store (a hard link renamed into place).
        let linked = record(&"6".repeat(32), 0, now);
        spool.create(&linked).unwrap();
        fs::hard_link(
            spool.data_path("lab-01", &linked.token),
            tmp.path().join("stored.tar.zst"),
        )
        .unwrap();
        // Lost bytes it had recorded as durable.
        let lost = record(&"4".repeat(32), 9, now);
        spool.create(&lost).unwrap();
        // A creation cut short: no record.
        fs::create_dir_all(spool.dir("lab-01", &"5".repeat(32))).unwrap();
        // Unusable records: an offset past the length, a digest that is not one.
        let past = record(&"7".repeat(32), 101, now);
        spool.create(&past).unwrap();
        fs::write(spool.data_path("lab-01", &past.token), [0u8; 101]).unwrap();
        let mut bad = record(&"8".repeat(32), 0, now);
        bad.digest = "sha-256=:x:".into();
        spool.create(&bad).unwrap();

        let (kept, removed) = spool.load(50).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0], live);
        assert_eq!(
            fs::read(spool.data_path("lab-01", &live.token)).unwrap(),
            b"abc"
        );
        let mut why: Vec<_> = removed.iter().map(|(_, w)| *w).collect();
        why.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(
            why,
            [
                Removed::Broken,
                Removed::Broken,
                Removed::Broken,
                Removed::Broken,
                Removed::Expired,
                Removed::Finished,
                Removed::Finished
            ]
        );
        let left: Vec<_> = fs::read_dir(spool.root().join("lab-01"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(&live.token)]);
    }
}
