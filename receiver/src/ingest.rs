//! Streaming validation of a PUT body.
//!
//! The async side reads body frames (each with an idle timeout), counts them
//! against `limits.max_episode_bytes`, and hands them over a small bounded
//! channel to a blocking thread. That thread tees every byte into the SHA-256
//! hasher and the scratch file, and at the same time decompresses (zstd) and
//! parses (tar) the stream, checking every header and entry against the archive
//! rules of the protocol crate (so that every tar reader unpacks what was
//! checked), the `meta.json` stamp against `X-Labship-Commit`, and the
//! unpacked size against `limits.max_unpacked_bytes`. Memory per upload is the
//! channel (a few frames), zstd's window and tar's header buffer; nothing is
//! unpacked to disk.

use bytes::Bytes;
use labship_protocol::digest::Hasher;
use labship_protocol::{Commit, Sha256Digest};
use std::io::{self, BufWriter, Read, Write};
use std::time::Duration;
use tokio::sync::mpsc;

mod check;

pub use check::{CheckedEntry, check_archive, list_archive};

/// Frames queued between the network and the validator. A frame is up to
/// hyper's read buffer (about 400 KiB), so this bounds an upload's queue to
/// about 1.6 MiB: 16 concurrent uploads must fit the receiver's memory
/// budget (docs/performance.md), and more frames bought no throughput.
const CHANNEL_FRAMES: usize = 4;

/// Scratch writes are batched this much: big enough that writes are few,
/// small enough that 16 concurrent uploads hold 4 MiB between them.
const SCRATCH_BUFFER: usize = 256 * 1024;

/// What a fully received, valid upload produced.
#[derive(Debug)]
pub struct Ingested {
    pub scratch: tempfile::NamedTempFile,
    pub digest: Sha256Digest,
    pub bytes: u64,
    pub unpacked: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("archive is larger than limits.max_episode_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("archive unpacks past limits.max_unpacked_bytes ({limit} bytes)")]
    TooLargeUnpacked { limit: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    StampMismatch(String),
    #[error("writing scratch: {0}")]
    Store(io::Error),
    #[error("client stopped sending: {0}")]
    ClientGone(String),
    #[error("validator failed: {0}")]
    Internal(String),
}

/// Reads and discards what is left of `body`, at most `budget` bytes, paced
/// as an upload is ([`Limits::body_idle`], [`Limits::min_rate`]). An HTTP/1.1
/// client that is still sending when the server answers and closes sees a
/// broken pipe instead of the answer; draining first makes early answers
/// (200, 409, 412, a mid-stream 400) reach the client. Returns false when the
/// budget, the idle timeout or the rate floor cut the drain short.
pub async fn drain(body: &mut axum::body::Body, mut budget: u64, limits: Limits) -> bool {
    let mut pace = crate::pace::Pace::new(limits);
    loop {
        match pace.frame(body).await {
            Ok(None) => return true,
            Ok(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                match budget.checked_sub(n) {
                    Some(left) => budget = left,
                    None => return false,
                }
            }
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// Limits for one upload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_unpacked: u64,
    /// The longest wait for the next body bytes.
    pub body_idle: Duration,
    /// The slowest a body may arrive (`None`: no floor).
    pub min_rate: Option<crate::config::RateFloor>,
}

/// Receives `body` for episode `episode`, validating as it streams.
/// `on_bytes` is called with the size of every frame (for metrics).
pub async fn ingest(
    body: &mut axum::body::Body,
    episode: String,
    commit: Commit,
    scratch: tempfile::NamedTempFile,
    limits: Limits,
    on_bytes: impl Fn(u64),
) -> Result<Ingested, IngestError> {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_FRAMES);
    let validator = tokio::task::spawn_blocking(move || {
        validate(
            ChannelReader {
                rx,
                chunk: Bytes::new(),
            },
            scratch,
            &episode,
            &commit,
            limits.max_unpacked,
        )
    });

    let mut received = 0u64;
    let mut network_error = None;
    let mut pace = crate::pace::Pace::new(limits);
    loop {
        let frame = match pace.frame(body).await {
            Err(cut) => {
                network_error = Some(cut);
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                network_error = Some(IngestError::ClientGone(e.to_string()));
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        on_bytes(data.len() as u64);
        if received > limits.max_bytes {
            network_error = Some(IngestError::TooLarge {
                limit: limits.max_bytes,
            });
            break;
        }
        if tx.send(data).await.is_err() {
            // The validator stopped early: its verdict is the answer.
            break;
        }
    }
    drop(tx);
    let verdict = validator
        .await
        .map_err(|e| IngestError::Internal(e.to_string()))?;
    match network_error {
        Some(e) => Err(e),
        None => verdict,
    }
}

/// Reads the frames the async side sends; EOF when the sender is dropped.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Tees the compressed stream into the hasher and the scratch file.
struct Tee<R> {
    inner: R,
    hasher: Hasher,
    file: BufWriter<tempfile::NamedTempFile>,
    bytes: u64,
    /// A scratch write failure, kept aside so it is not mistaken for a bad archive.
    write_error: Option<io::Error>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if let Err(e) = self.file.write_all(&buf[..n]) {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(kind, "scratch write failed"));
        }
        Ok(n)
    }
}

fn validate(
    reader: ChannelReader,
    scratch: tempfile::NamedTempFile,
    episode: &str,
    commit: &Commit,
    max_unpacked: u64,
) -> Result<Ingested, IngestError> {
    let mut tee = Tee {
        inner: reader,
        hasher: Hasher::new(),
        file: BufWriter::with_capacity(SCRATCH_BUFFER, scratch),
        bytes: 0,
        write_error: None,
    };
    let mut unpacked = 0;
    let checked = check_archive(&mut tee, episode, commit, max_unpacked, &mut unpacked);
    if let Some(e) = tee.write_error.take() {
        return Err(IngestError::Store(e));
    }
    checked?;
    // The archive ended; anything the client still sends belongs to the digest.
    io::copy(&mut tee, &mut io::sink()).map_err(|e| match tee.write_error.take() {
        Some(w) => IngestError::Store(w),
        None => IngestError::Internal(e.to_string()),
    })?;
    let Tee {
        hasher,
        file,
        bytes,
        ..
    } = tee;
    let scratch = file
        .into_inner()
        .map_err(|e| IngestError::Store(e.into_error()))?;
    Ok(Ingested {
        scratch,
        digest: hasher.finish(),
        bytes,
        unpacked,
    })
}
