//! Failures with no HTTP answer, read by the types in their chain of
//! causes ([`classify`]): TLS or identity trouble (`--ping` exit 3) or an
//! unreachable receiver (exit 4).

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
pub(super) fn kernel_timed_out(e: &reqwest::Error) -> bool {
    let timedout = rustix::io::Errno::TIMEDOUT.raw_os_error();
    io_errors(&causes(e)).any(|io| io.raw_os_error() == Some(timedout))
}
