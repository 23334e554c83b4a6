//! Talking to the receiver: `POST /v1/ping`, `HEAD` and `PUT` of an archive.
//!
//! One reqwest client (rustls, connection reuse) per process, rebuilt when
//! the TLS files on disk are renewed ([`crate::client`]). Uploads stream
//! from the outbox file; there is no total timeout (a long upload that moves is
//! never killed), but one whose body moves no byte for `stall_timeout_s` is
//! aborted. Once the last body byte is handed to the socket, what is left in
//! flight sits in kernel buffers where no progress is visible: there the
//! kernel cuts a link that stops acknowledging (`TCP_USER_TIMEOUT` =
//! `stall_timeout_s`), and the answer must come within `stall_timeout_s` +
//! [`ANSWER_GRACE`] (buffers draining over a slow link, the receiver's last
//! checks and fsync).
//! Failures with no answer are classified by the types in their chain of
//! causes ([`classify`]): a refused client certificate under TLS 1.3 surfaces
//! only on the first request as a closed connection, so it is reported as an
//! authentication problem, not as "unreachable".
//!
//! Only the receiver's own word retires an episode: redirects are never
//! followed (a 3xx is an answer from something other than the receiver), and
//! a 200/201 counts only when its body is the receiver's
//! [`StoredBody`](labship_protocol::StoredBody) naming this host, this
//! episode and the digest and size that were sent. Anything else is
//! [`Event::NotReceiver`]: loud, transient, the episode stays queued.
//!
//! Here: the [`Uploader`], its `HEAD` and `PUT` and the body stream every
//! upload shares ([`Uploader::send_body`]). Beside it: the ping
//! ([`PingVerdict`]), how answers are read (`answer`), failures with no
//! answer (`unanswered`), and the upload API for large archives
//! ([`resumable`], its location kept by [`location`]).

mod answer;
pub mod location;
mod ping;
pub mod resumable;
mod unanswered;

pub use answer::retry_after;
use answer::{ANSWER_BODY_CAP, not_receiver_text, read_capped};
pub(crate) use answer::{answer, given_up, no_answer, not_receiver, redirect_text};
pub use ping::{PingVerdict, Pong, PongLimits};
pub use unanswered::NoAnswer;
pub(crate) use unanswered::classify;
use unanswered::kernel_timed_out;

use crate::client::TlsClient;
use crate::config::Config;
use crate::state::{Archive, Event};
use labship_protocol::headers::{ARCHIVE_CONTENT_TYPE, CONTENT_DIGEST, LABSHIP_COMMIT};
use labship_protocol::{Id, Sha256Digest, StoredBody};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much longer than `stall_timeout_s` the answer may take after the last
/// body byte left. Kept well under the unit's `WatchdogSec=180` with the
/// default 60 s stall timeout.
pub const ANSWER_GRACE: Duration = Duration::from_secs(60);

/// The longest wait a `Retry-After` imposes, in either form (seconds or an
/// HTTP-date). The receiver asks for at most 300 s; a proxy's far-off date
/// or an absurd number of seconds must not park the host for days (nor
/// overflow the clock arithmetic of the backoff).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// Why the client could not be built: a configuration problem (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {why}")]
pub struct SetupError {
    pub file: String,
    pub key: &'static str,
    pub why: String,
}

/// A request body: `len` bytes of an archive of `total`, from `offset`.
pub(crate) struct Body {
    pub reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub len: u64,
    pub offset: u64,
    pub total: u64,
}

#[derive(Debug)]
pub struct Uploader {
    client: TlsClient,
    base: reqwest::Url,
    pub(crate) host: Id,
    token: Option<String>,
    pub(crate) stall: Duration,
    /// `[limits] resumable_min_bytes`: outbox archives this large go by
    /// the upload API ([`resumable`]), smaller ones by PUT.
    pub resumable_min_bytes: u64,
    /// The shared `bwlimit` bucket and the uploads in flight (progress.rs).
    pub limiter: Arc<crate::bwlimit::Limiter>,
    pub uploads: Arc<crate::progress::Uploads>,
}

impl Uploader {
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let file = config.file.display().to_string();
        let setup = |key: &'static str, why: String| SetupError {
            file: file.clone(),
            key,
            why,
        };
        let client = TlsClient::new(config)?;
        let token =
            match &config.auth.token_file {
                Some(p) => Some(
                    String::from_utf8(std::fs::read(p).map_err(|e| {
                        setup("receiver.token_file", format!("{}: {e}", p.display()))
                    })?)
                    .map_err(|_| setup("receiver.token_file", "is not UTF-8".into()))?
                    .trim()
                    .to_owned(),
                ),
                None => None,
            };
        Ok(Self {
            client,
            base: config.url.clone(),
            host: config.host_id.clone(),
            token,
            stall: config.stall_timeout,
            resumable_min_bytes: config.resumable_min_bytes,
            limiter: Arc::new(crate::bwlimit::Limiter::new(config.bwlimit.clone())),
            uploads: Arc::default(),
        })
    }

    /// The client for the next request (renewed TLS files picked up: [`TlsClient`]).
    pub(crate) fn client(&self) -> reqwest::Client {
        self.client.current()
    }

    /// Looks at the TLS files without a request (each pass does): a renewal
    /// is taken up, or an unusable one said, on an idle host too, and on a
    /// host on hold because its certificate was refused.
    pub fn look_at_tls(&self) {
        let _ = self.client.current();
    }

    pub(crate) fn url(&self, tail: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let path = format!("{}/{tail}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    pub(crate) fn authorize(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// HEAD: the stored digest, `None` when absent. Only a 200 carries one
    /// (compared with the archive's by the state machine); another success
    /// or a redirect is not the receiver's answer. Returns the event and
    /// any `Retry-After` (a busy receiver's 503).
    pub async fn head(&self, id: &Id) -> (Event, Option<Duration>) {
        let req = self
            .authorize(
                self.client()
                    .head(self.url(&format!("v1/episodes/{}/{id}", self.host))),
            )
            .timeout(self.stall);
        let event = match req.send().await {
            Err(e) => no_answer(classify(&e)),
            Ok(r) if r.status() == 404 => Event::Head(None),
            Ok(r) if r.status() == 200 => Event::Head(
                r.headers()
                    .get(CONTENT_DIGEST)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| Sha256Digest::parse_header(v).ok()),
            ),
            Ok(r) if r.status().is_redirection() => not_receiver("HEAD", &r, redirect_text(&r)),
            Ok(r) if r.status().is_success() => not_receiver(
                "HEAD",
                &r,
                "a success the receiver never gives to a HEAD (200 or 404)".into(),
            ),
            Ok(r) => return answer(r).await,
        };
        (event, None)
    }

    /// PUT the archive: from memory when it is held there
    /// (`archive.inline`), else from `path` in the outbox. `progress` is
    /// called as bytes move (for the watchdog). Returns the event and any
    /// `Retry-After`.
    pub async fn put(
        &self,
        id: &Id,
        path: &Path,
        archive: &Archive,
        progress: &(dyn Fn() + Sync),
    ) -> (Event, Option<Duration>) {
        // A small archive is in memory; a larger one is read from the outbox.
        let body: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match &archive.inline {
            Some(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
            None => match tokio::fs::File::open(path).await {
                Ok(f) => Box::new(f),
                // This episode's trouble (its archive unreadable: EIO,
                // permissions), not the receiver's: the host goes on.
                Err(e) => {
                    return given_up(format!(
                        "cannot read the archive {} to upload it: {e}",
                        path.display()
                    ));
                }
            },
        };
        let req = self
            .authorize(
                self.client()
                    .put(self.url(&format!("v1/episodes/{}/{id}", self.host))),
            )
            .header(CONTENT_DIGEST, archive.digest.header_value())
            .header(LABSHIP_COMMIT, archive.commit.as_str())
            .header(reqwest::header::CONTENT_TYPE, ARCHIVE_CONTENT_TYPE);
        let body = Body {
            reader: body,
            len: archive.bytes,
            offset: 0,
            total: archive.bytes,
        };
        match self.send_body(id, req, body, progress).await {
            Err(event) => (event, None),
            Ok(r) if r.status().is_success() => (self.confirm(r, id, archive).await, None),
            Ok(r) if r.status().is_redirection() => {
                let why = redirect_text(&r);
                (not_receiver("PUT", &r, why), None)
            }
            Ok(r) => answer(r).await,
        }
    }

    /// Sends `req` with `body` (its `len` bytes from `offset` of an archive
    /// of `total`), throttled by `bwlimit`, listed in `status.json`'s
    /// `uploading`, counted in the metrics, and cut when it stalls
    /// (`stall_timeout_s`, then [`ANSWER_GRACE`] for the answer). `Err` is
    /// the event of a failure with no answer.
    pub(crate) async fn send_body(
        &self,
        id: &Id,
        req: reqwest::RequestBuilder,
        body: Body,
        progress: &(dyn Fn() + Sync),
    ) -> Result<reqwest::Response, Event> {
        let Body {
            reader,
            len,
            offset,
            total,
        } = body;
        let started = Instant::now();
        let moved_at = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let (stamp, count) = (moved_at.clone(), sent.clone());
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
        let stream = crate::bwlimit::throttle(stream, self.limiter.clone());
        // Listed until the answer is in (not until the body stream is
        // dropped): waiting for the answer is part of the upload.
        let tracked = Arc::new(self.uploads.start_at(id, total, offset));
        // Counts the body bytes as they go and observes the duration when
        // the upload ends, whichever return below ends it (a stall cut
        // included) or if it is cancelled.
        let timer = Arc::new(crate::metrics::get().upload_started());
        let (progress_of, counted) = (tracked.clone(), timer.clone());
        let stream = inspect_chunks(stream, move |n| {
            progress_of.sent(n as u64);
            counted.sent(n as u64);
            count.fetch_add(n as u64, Ordering::Relaxed);
            stamp.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        });
        let send = req
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        let every = Duration::from_millis(500).min(self.stall);
        let watched = crate::progress::watch_progress(send, &moved_at, every, progress);
        let resp = tokio::select! {
            r = watched => r,
            cut = self.stalled(started, &moved_at, &sent, len, &tracked) => return Err(cut),
        };
        drop(timer);
        // ETIMEDOUT mid-upload is TCP_USER_TIMEOUT: sent bytes went
        // unacknowledged for stall_timeout_s.
        resp.map_err(|e| match classify(&e) {
            NoAnswer::Unreachable(m) if kernel_timed_out(&e) => no_answer(NoAnswer::Unreachable(format!(
                "upload stalled: the receiver acknowledged no byte for {}s (receiver.stall_timeout_s): {m}",
                self.stall.as_secs()
            ))),
            n => no_answer(n),
        })
    }

    /// Returns the failure once an upload stalls: its body moving no byte
    /// for `stall_timeout_s` (`moved_at`: milliseconds after `started` of
    /// the last byte), or the answer not there [`ANSWER_GRACE`] after that
    /// once the whole body (`len`) is sent. Marks the upload as awaiting
    /// its answer then.
    async fn stalled(
        &self,
        started: Instant,
        moved_at: &AtomicU64,
        sent: &AtomicU64,
        len: u64,
        tracked: &crate::progress::Tracked,
    ) -> Event {
        let mut tick = tokio::time::interval(Duration::from_millis(500).min(self.stall));
        loop {
            tick.tick().await;
            let at = moved_at.load(Ordering::Relaxed);
            let idle = started.elapsed().saturating_sub(Duration::from_millis(at));
            let body_done = sent.load(Ordering::Relaxed) >= len;
            if body_done {
                tracked.awaiting_answer();
            }
            if !body_done && idle > self.stall {
                return no_answer(NoAnswer::Unreachable(format!(
                    "upload stalled: no progress for {}s (receiver.stall_timeout_s)",
                    self.stall.as_secs()
                )));
            }
            if body_done && idle > self.stall + ANSWER_GRACE {
                return no_answer(NoAnswer::Unreachable(format!(
                    "no answer {}s after the whole archive was sent (receiver.stall_timeout_s + {}s)",
                    idle.as_secs(),
                    ANSWER_GRACE.as_secs()
                )));
            }
        }
    }

    /// A success answer to the PUT of `archive` as `id`: stored only when
    /// its body is the receiver's, naming this host and episode with the
    /// digest and size that were sent.
    pub(crate) async fn confirm(&self, r: reqwest::Response, id: &Id, archive: &Archive) -> Event {
        let status = r.status().as_u16();
        if !matches!(status, 200 | 201) {
            return not_receiver(
                "PUT",
                &r,
                "a success the receiver never gives to a PUT (200 or 201)".into(),
            );
        }
        let url = r.url().clone();
        let (text, whole) = read_capped(r, ANSWER_BODY_CAP).await;
        if !whole {
            // The receiver's answer, perhaps, cut on the way: not a
            // confirmation, and not a reason to call it an impostor.
            return no_answer(NoAnswer::Unreachable(format!(
                "PUT {url} answered {status}, but its body did not arrive whole; retrying (a stored archive answers 200 next time)"
            )));
        }
        match StoredBody::parse(&text).and_then(|body| {
            body.confirms(
                self.host.as_str(),
                id.as_str(),
                &archive.digest,
                archive.bytes,
            )
        }) {
            Ok(()) => Event::Stored { status },
            Err(why) => Event::NotReceiver {
                status,
                message: not_receiver_text("PUT", &url, status, &why.to_string()),
            },
        }
    }
}

/// Calls `on_chunk` with the size of every chunk that passes (a tiny
/// `inspect`; futures-util would bring a lot for one combinator).
fn inspect_chunks<S>(
    stream: S,
    on_chunk: impl Fn(usize) + Send + Sync + 'static,
) -> InspectStream<S> {
    InspectStream {
        inner: stream,
        on_chunk: Box::new(on_chunk),
    }
}

struct InspectStream<S> {
    inner: S,
    on_chunk: Box<dyn Fn(usize) + Send + Sync>,
}

impl<S, E> futures_core::Stream for InspectStream<S>
where
    S: futures_core::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            (self.on_chunk)(chunk.len());
        }
        polled
    }
}
