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

pub mod location;
pub mod resumable;

use crate::client::TlsClient;
use crate::config::Config;
use crate::state::{Archive, Event};
use labship_protocol::headers::{ARCHIVE_CONTENT_TYPE, CONTENT_DIGEST, LABSHIP_COMMIT};
use labship_protocol::{ErrorBody, Id, Sha256Digest, StoredBody};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How much longer than `stall_timeout_s` the answer may take after the last
/// body byte left. Kept well under the unit's `WatchdogSec=180` with the
/// default 60 s stall timeout.
pub const ANSWER_GRACE: Duration = Duration::from_secs(60);

/// Error bodies are small JSON; anything longer is cut (a misrouted request
/// can meet an HTML page of any size).
const ANSWER_BODY_CAP: usize = 64 * 1024;

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

/// A failure with no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// TLS or client-certificate trouble (`--ping` exit 3).
    Auth(String),
    /// Could not connect, reset, stalled or timed out (`--ping` exit 4).
    Unreachable(String),
}

impl NoAnswer {
    pub fn message(&self) -> &str {
        match self {
            Self::Auth(m) | Self::Unreachable(m) => m,
        }
    }
}

/// The causes of a failed request, outermost first, for reading by type.
/// `io::Error::source()` skips its own payload (it goes on with the
/// payload's source), so the payload is visited here in its place: that is
/// where tokio-rustls puts a `rustls::Error`.
fn causes(e: &reqwest::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        out.push(cause);
        next = match cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(payload) => Some(payload as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
    }
    out
}

/// The failure's I/O errors (OS errors and the ones tokio-rustls and hyper
/// wrap their own in).
fn io_errors<'a>(
    causes: &'a [&'a (dyn std::error::Error + 'static)],
) -> impl Iterator<Item = &'a std::io::Error> {
    causes
        .iter()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
}

/// Classifies a failure with no answer by the types in its chain of causes
/// (never by its text: a host named "tls-gw" is not a TLS failure):
/// - a `rustls::Error` is TLS or identity trouble (a refused or untrusted
///   certificate, an alert, a failed handshake), except bytes that are not
///   intact TLS at all (a plain-HTTP server or the wrong port behind an
///   `https://` URL, a corrupting link): that is where the receiver is;
/// - a connection closed (EOF) inside the connector is the TLS handshake cut
///   short by the server;
/// - RECIPES: under TLS 1.3 a refused client certificate can show only as
///   the connection closing before the first answer (hyper: canceled, or
///   closed before the message completed), on a connection that was made
///   and did not time out;
/// - anything else (refused, reset, timed out, DNS, a broken pipe, an
///   unparsable answer) is the link's: unreachable.
pub(crate) fn classify(e: &reqwest::Error) -> NoAnswer {
    // The causes only: the top-level message carries the URL.
    let mut chain = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let chain = if chain.is_empty() {
        e.to_string()
    } else {
        chain.trim_start_matches(": ").to_owned()
    };
    let causes = causes(e);
    let tls = causes
        .iter()
        .find_map(|c| c.downcast_ref::<rustls::Error>());
    let closed_early = causes
        .iter()
        .filter_map(|c| c.downcast_ref::<hyper::Error>())
        .any(|h| h.is_canceled() || h.is_incomplete_message());
    let auth = match tls {
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::DecryptError
            | rustls::Error::PeerSentOversizedRecord,
        ) => false,
        Some(_) => true,
        None if e.is_connect() => {
            io_errors(&causes).any(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        }
        None => closed_early && !e.is_timeout(),
    };
    // A handshake the receiver cut without an alert is most often a refused
    // certificate, but a receiver also closes a connection over its
    // per-address cap before TLS begins: say both, the operator's journal
    // tells which.
    let chain = if auth && tls.is_none() && e.is_connect() {
        format!(
            "{chain} (the receiver closed the connection during the TLS handshake: a refused client certificate, or its limits.max_connections_per_address for this host's address; its journal says which)"
        )
    } else {
        chain
    };
    if auth {
        NoAnswer::Auth(chain)
    } else {
        NoAnswer::Unreachable(chain)
    }
}

/// Whether the kernel gave up on the connection (`ETIMEDOUT`): mid-upload
/// that is `TCP_USER_TIMEOUT`, sent bytes unacknowledged for
/// `stall_timeout_s`. (A connect timeout is reqwest's own, not this.)
fn kernel_timed_out(e: &reqwest::Error) -> bool {
    let timedout = rustix::io::Errno::TIMEDOUT.raw_os_error();
    io_errors(&causes(e)).any(|io| io.raw_os_error() == Some(timedout))
}

/// A successful ping.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Pong {
    pub host_id: String,
    pub receiver_version: String,
    pub gate: serde_json::Value,
    /// Additive: receivers that advertise their limits.
    #[serde(default)]
    pub limits: Option<PongLimits>,
}

/// The limits a receiver advertises in its ping.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct PongLimits {
    pub max_episode_bytes: Option<u64>,
    /// The most uploads the receiver takes at once, from all hosts.
    pub max_concurrent_uploads: Option<usize>,
}

/// What one authenticated ping says about this host's setup: `shipper
/// --ping` prints it, `doctor` reports it.
#[derive(Debug, Clone)]
pub enum PingVerdict {
    Ok {
        url: String,
        pong: Pong,
    },
    /// The receiver accepts the certificate but knows it as another host:
    /// every upload would answer 403.
    HostMismatch {
        url: String,
        known_as: String,
        host_id: String,
        config: String,
    },
    /// 401/403.
    Refused {
        url: String,
        host_id: String,
        status: u16,
        body: String,
    },
    /// TLS or a refused client certificate.
    TlsRefused {
        url: String,
        host_id: String,
        message: String,
    },
    Unreachable {
        url: String,
        message: String,
    },
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
}

impl PingVerdict {
    /// `shipper --ping`'s exit code (CONTRACT §5).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Ok { .. } => 0,
            Self::HostMismatch { .. } | Self::Refused { .. } | Self::TlsRefused { .. } => 3,
            Self::Unreachable { .. } => 4,
            Self::Unexpected { .. } => 5,
        }
    }
}

impl std::fmt::Display for PingVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok { url, pong } => write!(
                f,
                "ok: receiver {url} (version {}) knows this host as {}; gate {}",
                pong.receiver_version, pong.host_id, pong.gate
            ),
            Self::HostMismatch {
                url,
                known_as,
                host_id,
                config,
            } => write!(
                f,
                "refused: receiver {url} knows this certificate as host {known_as:?}, but {config} says host_id = {host_id:?}; every upload would be refused (403) — fix host_id there, or install this host's own certificate"
            ),
            Self::Refused {
                url,
                host_id,
                status,
                body,
            } => write!(
                f,
                "refused: receiver {url} answered {status} for host {host_id}: {body}"
            ),
            Self::TlsRefused {
                url,
                host_id,
                message,
            } => write!(
                f,
                "refused: TLS with receiver {url} failed for host {host_id} (check receiver.cert_file, receiver.key_file, receiver.ca_file): {message}"
            ),
            Self::Unreachable { url, message } => {
                write!(f, "unreachable: receiver {url}: {message}")
            }
            Self::Unexpected { url, status, body } => {
                write!(f, "unexpected: receiver {url} answered {status}: {body}")
            }
        }
    }
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

    /// One authenticated ping. `Err(Ok(..))` is an HTTP answer other than 200.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, Result<(u16, String), NoAnswer>> {
        let req = self
            .authorize(self.client().post(self.url("v1/ping")))
            .timeout(timeout);
        let resp = req.send().await.map_err(|e| Err(classify(&e)))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(Ok((status, redirect_text(&resp))));
        }
        let text = resp.text().await.map_err(|e| Err(classify(&e)))?;
        if status != 200 {
            return Err(Ok((status, text)));
        }
        serde_json::from_str(&text).map_err(|e| Ok((status, format!("unexpected ping body: {e}"))))
    }

    /// One ping, judged against `config` (host id included).
    pub async fn check(&self, config: &Config, timeout: Duration) -> PingVerdict {
        let url = config.url.to_string();
        let host_id = config.host_id.to_string();
        match self.ping(timeout).await {
            Ok(pong) if pong.host_id != host_id => PingVerdict::HostMismatch {
                url,
                known_as: pong.host_id,
                host_id,
                config: config.file.display().to_string(),
            },
            Ok(pong) => PingVerdict::Ok { url, pong },
            Err(Ok((status, body))) if status == 401 || status == 403 => PingVerdict::Refused {
                url,
                host_id,
                status,
                body,
            },
            Err(Ok((status, body))) => PingVerdict::Unexpected { url, status, body },
            Err(Err(NoAnswer::Auth(message))) => PingVerdict::TlsRefused {
                url,
                host_id,
                message,
            },
            Err(Err(NoAnswer::Unreachable(message))) => PingVerdict::Unreachable { url, message },
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
                Err(e) => {
                    return (
                        no_answer(NoAnswer::Unreachable(format!("{}: {e}", path.display()))),
                        None,
                    );
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

/// What a redirect says: where it points. It is never followed.
pub(crate) fn redirect_text(r: &reqwest::Response) -> String {
    let to = r
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match to {
        Some(to) => format!("a redirect to {to}, which the shipper does not follow"),
        None => "a redirect (without a Location), which the shipper does not follow".into(),
    }
}

fn not_receiver_text(method: &str, url: &reqwest::Url, status: u16, why: &str) -> String {
    format!(
        "{method} {url} answered {status}, but not as the receiver: {why}; nothing is known to be stored and the episode stays queued: check that receiver.url names the receiver itself (no redirect, no proxy or other server answering in its place)"
    )
}

/// An answer from something other than the receiver (see [`Event::NotReceiver`]).
pub(crate) fn not_receiver(method: &str, r: &reqwest::Response, why: String) -> Event {
    let status = r.status().as_u16();
    Event::NotReceiver {
        status,
        message: not_receiver_text(method, r.url(), status, &why),
    }
}

/// A `Retry-After` value, as seconds or as an HTTP-date (what a proxy or a
/// load balancer in front of the receiver may send), at most
/// [`RETRY_AFTER_MAX`]; a date already past is no wait. `None` when it is
/// neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

pub(crate) fn no_answer(n: NoAnswer) -> Event {
    let auth = matches!(n, NoAnswer::Auth(_));
    Event::NoAnswer {
        auth,
        message: n.message().to_owned(),
        episode: false,
    }
}

pub(crate) async fn answer(r: reqwest::Response) -> (Event, Option<Duration>) {
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, SystemTime::now()));
    let (text, _) = read_capped(r, ANSWER_BODY_CAP).await;
    let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
    let message = match &body {
        Some(b) => b.message.clone(),
        None if text.trim().is_empty() => format!("HTTP {status} without a body"),
        None => text.chars().take(300).collect(),
    };
    let event = Event::Answer {
        status,
        error: body.as_ref().map(|b| b.error),
        message,
        remediation: body.and_then(|b| b.remediation),
    };
    (event, retry_after)
}

/// The answer's body, at most `cap` bytes, given up after 10 s without a
/// chunk: for an error the status is what matters, the text only explains
/// it. The flag says whether the body arrived whole (it ended, within `cap`).
async fn read_capped(mut r: reqwest::Response, cap: usize) -> (String, bool) {
    let mut buf = Vec::new();
    let whole = loop {
        match tokio::time::timeout(Duration::from_secs(10), r.chunk()).await {
            Ok(Ok(Some(chunk))) if buf.len() + chunk.len() <= cap => buf.extend_from_slice(&chunk),
            Ok(Ok(Some(chunk))) => {
                buf.extend_from_slice(&chunk[..cap - buf.len()]);
                break false;
            }
            Ok(Ok(None)) => break true,
            _ => break false,
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), whole)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let date = |t: SystemTime| httpdate::fmt_http_date(t);
        for (value, wait) in [
            ("5", Some(5)),
            (" 120 ", Some(120)),
            ("0", Some(0)),
            ("86400", Some(3600)),
            ("18446744073709551615", Some(3600)),
            (&date(now + Duration::from_secs(30)), Some(30)),
            (&date(now + Duration::from_secs(30 * 86_400)), Some(3600)),
            (&date(now - Duration::from_secs(60)), Some(0)),
            // The two obsolete HTTP-date forms RFC 9110 says to accept.
            ("Friday, 15-Jan-27 08:00:30 GMT", Some(30)),
            ("Fri Jan 15 08:00:30 2027", Some(30)),
            ("-5", None),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(
                retry_after(value, now),
                wait.map(Duration::from_secs),
                "{value:?}"
            );
        }
    }
}
