//! The storage shared by both backends: the [`Manifest`] stored beside each
//! archive, [`StoreError`], what a lookup finds ([`Lookup`]) and what a commit
//! did ([`CommitOutcome`]), and [`Store`], what the routes hold: the
//! filesystem store ([`FsStore`]) or the S3 store of [`s3`] (several receivers on
//! one bucket), chosen by `storage.kind`. Both validate an upload into a local
//! scratch file first; they differ in how a validated archive is committed.

use labship_protocol::Sha256Digest;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

mod fs;
pub mod s3;

pub use fs::FsStore;

/// The manifest stored beside each archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub host_id: String,
    pub episode_id: String,
    /// The `Content-Digest` form: `sha-256=:<base64>:`.
    pub digest: String,
    pub sha256_hex: String,
    pub bytes: u64,
    pub commit: String,
    pub received_at: String,
    pub client: Client,
}

/// Who sent the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub host_id: String,
    pub auth: String,
    pub peer: String,
}

impl Manifest {
    pub fn digest(&self) -> Option<Sha256Digest> {
        Sha256Digest::parse_header(&self.digest).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: manifest unreadable: {why}")]
    Manifest { path: PathBuf, why: String },
    /// An object store operation on `key` (`storage.kind = "s3"`).
    #[error("object store {op} {key}: {source}")]
    S3 {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    /// `storage.kind = "s3"`: a multipart upload was aborted because the
    /// receiver is stopping ([`Store::stop_uploads`]).
    #[error("upload to the object store aborted: the receiver is stopping")]
    Stopping,
}

impl StoreError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| Self::Io { op, path, source }
    }

    /// True when the store is out of space or quota (answered with 507).
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if is_full(source))
    }

    /// True when the object store is throttling, failing (5xx) or unreachable:
    /// answered with 503 and `Retry-After`.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::S3 { source, .. } if s3::is_transient(source))
    }

    pub(crate) fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::S3 {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }

    pub(crate) fn is_already_exists(&self) -> bool {
        matches!(
            self,
            Self::S3 {
                source: object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ..
            }
        )
    }
}

/// ENOSPC or EDQUOT.
pub fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// What the store holds under an id ([`Store::lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Stored(Box<Manifest>),
    /// `storage.kind = "s3"`: claimed (manifest) without its archive, and
    /// the claim is fresh: most likely another receiver is uploading it.
    Uploading {
        claim: Box<Manifest>,
        retry_after_s: u32,
    },
    /// Nothing, or a claim too old to be an upload in progress.
    Absent,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Stored,
    /// The same digest was already stored (a retry, or a racing twin).
    AlreadyStored,
    /// Another digest is stored under this id; carries the stored manifest.
    Conflict(Box<Manifest>),
    /// `storage.kind = "s3"`: another digest has claimed this id (its
    /// manifest exists) but its archive is not in the bucket yet: an upload
    /// in progress, or one whose receiver died. Also a 409: the claim is final.
    ClaimedByOther(Box<Manifest>),
    /// `storage.kind = "s3"`: the same digest has claimed this id, its
    /// archive is not in the bucket yet and the claim is fresh: another
    /// receiver is most likely still uploading it. Answered 503 `busy` with
    /// `Retry-After: retry_after_s` rather than uploading a second copy.
    BeingUploaded {
        claim: Box<Manifest>,
        retry_after_s: u32,
    },
}

/// The configured store (`storage.kind`). Both validate uploads into a local
/// scratch file first; they differ in how a validated archive is committed.
#[derive(Debug, Clone)]
pub enum Store {
    Fs(FsStore),
    S3(s3::S3Store),
}

impl Store {
    /// The local scratch spool (the watchdog's health probe looks at it too).
    pub fn scratch_dir(&self) -> PathBuf {
        self.local().scratch_dir()
    }

    pub fn scratch_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        self.local().scratch_file()
    }

    fn local(&self) -> &FsStore {
        match self {
            Self::Fs(fs) => fs,
            Self::S3(s3) => s3.local(),
        }
    }

    /// Where episodes go, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Fs(fs) => fs.dir().display().to_string(),
            Self::S3(s3) => s3.describe(),
        }
    }

    pub async fn head(&self, host: &str, episode: &str) -> Result<Option<Manifest>, StoreError> {
        match self {
            Self::Fs(fs) => fs.head(host, episode).await,
            Self::S3(s3) => s3.head(host, episode).await,
        }
    }

    /// At shutdown, once the drain is over: aborts the multipart uploads
    /// still running (S3) and waits up to `wait` for the aborts.
    pub async fn stop_uploads(&self, wait: std::time::Duration) {
        if let Self::S3(s3) = self {
            s3.stop_uploads(wait).await;
        }
    }

    /// [`Self::head`], and for S3 also whether a claim is in progress.
    pub async fn lookup(&self, host: &str, episode: &str) -> Result<Lookup, StoreError> {
        match self {
            Self::Fs(fs) => Ok(match fs.head(host, episode).await? {
                Some(manifest) => Lookup::Stored(Box::new(manifest)),
                None => Lookup::Absent,
            }),
            Self::S3(s3) => s3.lookup(host, episode).await,
        }
    }

    pub async fn commit(
        &self,
        scratch: tempfile::NamedTempFile,
        manifest: Manifest,
    ) -> Result<CommitOutcome, StoreError> {
        match self {
            Self::Fs(fs) => fs.commit(scratch, manifest).await,
            Self::S3(s3) => s3.commit(scratch, manifest).await,
        }
    }
}
