//! The validator of a partial upload, across its appends and across restarts.
//!
//! A [`Session`] is one blocking thread running the same archive check as a
//! PUT (`ingest::check_archive`: zstd, the tar rules, the unpacked-size
//! bound, the stamp) and the SHA-256 over the whole archive. It first reads
//! the spooled prefix back from `data` (a local read: after a restart, or
//! when the in-memory session was dropped, nothing unvalidated is trusted),
//! then takes the appended bytes from a channel. The thread itself appends
//! them to `data` as it takes them, so the file holds exactly the bytes the
//! validator has been given, in order; a [`Session::sync`] request queued
//! behind them fsyncs the file and answers with its length (the checkpoint).
//! Between two appends of one upload the session waits in memory; dropping it
//! ends the thread (the next append rebuilds it from the prefix).

use crate::ingest::{self, IngestError};
use bytes::Bytes;
use labship_protocol::digest::Hasher;
use labship_protocol::{Commit, Sha256Digest};
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

/// Frames queued between the network and the validator (as `ingest`).
const CHANNEL_FRAMES: usize = 4;

enum Msg {
    Data(Bytes),
    /// fsync `data`; answer with the bytes it holds.
    Sync(oneshot::Sender<io::Result<u64>>),
}

/// The whole archive, read to its end and valid.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub(crate) digest: Sha256Digest,
    pub(crate) bytes: u64,
}

/// A running validator (see the module doc).
#[derive(Debug)]
pub(crate) struct Session {
    tx: mpsc::Sender<Msg>,
    thread: tokio::task::JoinHandle<Result<Verdict, IngestError>>,
    /// Bytes in `data` as of the last [`Session::sync`].
    pub(crate) synced: u64,
}

/// The validator stopped early: [`Session::finish`] has its verdict.
#[derive(Debug)]
pub(crate) struct Stopped;

/// What a session checks the archive against.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) episode: String,
    pub(crate) commit: Commit,
    pub(crate) max_unpacked: u64,
}

impl Session {
    /// Starts the validator over `data`, whose first `offset` bytes are the
    /// upload's prefix (the caller has cut the file back to `offset`).
    pub(crate) fn start(data: PathBuf, offset: u64, rules: Rules) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        let thread = tokio::task::spawn_blocking(move || run(data, offset, rx, rules));
        Self {
            tx,
            thread,
            synced: offset,
        }
    }

    /// Queues appended bytes.
    pub(crate) async fn send(&mut self, data: Bytes) -> Result<(), Stopped> {
        self.tx.send(Msg::Data(data)).await.map_err(|_| Stopped)
    }

    /// fsyncs everything sent so far; the bytes `data` holds, durably.
    pub(crate) async fn sync(&mut self) -> Result<io::Result<u64>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Msg::Sync(reply)).await.map_err(|_| Stopped)?;
        let synced = answer.await.map_err(|_| Stopped)?;
        if let Ok(n) = synced {
            self.synced = n;
        }
        Ok(synced)
    }

    /// Ends the input and waits for the verdict over everything sent.
    pub(crate) async fn finish(self) -> Result<Verdict, IngestError> {
        drop(self.tx);
        self.thread
            .await
            .map_err(|e| IngestError::Internal(e.to_string()))?
    }

    /// Stops the thread, waiting for it, so nothing writes `data` any more.
    pub(crate) async fn close(self) {
        let _ = self.finish().await;
    }
}

fn run(
    data: PathBuf,
    offset: u64,
    rx: mpsc::Receiver<Msg>,
    rules: Rules,
) -> Result<Verdict, IngestError> {
    // The spool file is named: this is not a PUT's scratch file.
    let named = |e: io::Error| {
        IngestError::Store(io::Error::new(
            e.kind(),
            format!("partial upload spool file {}: {e}", data.display()),
        ))
    };
    let prefix = File::open(&data).map_err(named)?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&data)
        .map_err(named)?;
    let mut reader = SpoolReader {
        prefix: Some(prefix.take(offset)),
        rx,
        chunk: Bytes::new(),
        file,
        written: offset,
        hasher: Hasher::new(),
        bytes: 0,
        write_error: None,
    };
    let mut unpacked = 0;
    let checked = ingest::check_archive(
        &mut reader,
        &rules.episode,
        &rules.commit,
        rules.max_unpacked,
        &mut unpacked,
    );
    if let Some(e) = reader.write_error.take() {
        return Err(named(e));
    }
    checked?;
    // The archive ended; anything after it still belongs to the digest (and
    // checkpoints still have to be answered until the input ends).
    let copied = io::copy(&mut reader, &mut io::sink());
    if let Some(e) = reader.write_error.take() {
        return Err(named(e));
    }
    copied.map_err(|e| IngestError::Internal(e.to_string()))?;
    Ok(Verdict {
        digest: reader.hasher.finish(),
        bytes: reader.bytes,
    })
}

/// The prefix from disk, then the appends from the channel (written to
/// `data` as they are taken), all through the hasher.
struct SpoolReader {
    prefix: Option<io::Take<File>>,
    rx: mpsc::Receiver<Msg>,
    chunk: Bytes,
    file: File,
    written: u64,
    hasher: Hasher,
    bytes: u64,
    /// A write failure, kept aside so it is not mistaken for a bad archive.
    write_error: Option<io::Error>,
}

impl SpoolReader {
    fn take(&mut self, data: Bytes) -> io::Result<()> {
        if let Err(e) = self.file.write_all(&data) {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(kind, "spool write failed"));
        }
        self.written += data.len() as u64;
        self.chunk = data;
        Ok(())
    }
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(prefix) = &mut self.prefix {
            let n = prefix.read(buf)?;
            if n > 0 {
                self.hasher.update(&buf[..n]);
                self.bytes += n as u64;
                return Ok(n);
            }
            self.prefix = None;
        }
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Msg::Data(data)) => self.take(data)?,
                Some(Msg::Sync(reply)) => {
                    let _ = reply.send(self.file.sync_data().map(|()| self.written));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A valid archive of episode `ep` (a directory, meta.json, a data file).
    fn archive() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], dir: bool| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(if dir {
                tar::EntryType::Directory
            } else {
                tar::EntryType::Regular
            });
            h.set_mode(if dir { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_mtime(1);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        add("ep/", b"", true);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        add("ep/data.bin", &data, false);
        let meta = format!(r#"{{"code_version":{{"commit":"{COMMIT}"}}}}"#);
        add("ep/meta.json", meta.as_bytes(), false);
        zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    }

    fn rules() -> Rules {
        Rules {
            episode: "ep".into(),
            commit: Commit::parse(COMMIT).unwrap(),
            max_unpacked: 1 << 30,
        }
    }

    #[tokio::test]
    async fn a_rebuilt_session_validates_and_hashes_the_whole_archive() {
        let bytes = archive();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, b"").unwrap();
        let half = bytes.len() / 2;
        // The first append, checkpointed; then the session goes (a restart).
        let mut first = Session::start(data.clone(), 0, rules());
        first
            .send(Bytes::copy_from_slice(&bytes[..half]))
            .await
            .unwrap();
        assert_eq!(first.sync().await.unwrap().unwrap(), half as u64);
        first.close().await;
        assert_eq!(std::fs::read(&data).unwrap(), bytes[..half]);
        // A new session reads the prefix back, then takes the rest.
        let mut second = Session::start(data.clone(), half as u64, rules());
        second
            .send(Bytes::copy_from_slice(&bytes[half..]))
            .await
            .unwrap();
        let verdict = second.finish().await.unwrap();
        assert_eq!(verdict.bytes, bytes.len() as u64);
        assert_eq!(verdict.digest, Sha256Digest::of(&bytes));
        assert_eq!(std::fs::read(&data).unwrap(), bytes);
    }

    #[tokio::test]
    async fn bytes_that_are_not_an_archive_stop_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, b"").unwrap();
        let mut s = Session::start(data, 0, rules());
        // The validator refuses the first frame; later sends may fail.
        let _ = s.send(Bytes::from_static(b"not zstd at all")).await;
        let _ = s.sync().await;
        match s.finish().await {
            Err(IngestError::Invalid(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
