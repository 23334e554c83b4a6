//! The receiver's runtime: the API accept loop (counting failed handshakes
//! by reason) and the watchdog, stopped by one shutdown signal (the ops
//! listener is in `ops`, the reload loop in `lib`).
//!
//! The accept loop is ours (not `axum::serve`) because that is where the TLS
//! handshake happens and the peer certificate, hence the host id, is read. Each
//! connection runs in its own task, so slow or idle clients never hold up the
//! loop. Before any byte is read, a connection takes a slot of its source
//! (`limits.max_connections_per_address`: one address never holds every slot)
//! and one of `limits.max_connections`; without either it is closed at once.
//! The ClientHello must arrive within `limits.client_hello_timeout_s` and the
//! whole handshake finish within `limits.handshake_timeout_s` of the accept;
//! header reads are timed out, and bodies have an idle timeout and a rate
//! floor (see `ingest`).

use crate::auth::ConnInfo;
use crate::routes::{self, AppState};
use crate::{systemd, tls};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tower::ServiceExt as _;

/// How long in-flight requests may run on after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// How often a refusal of the same kind (and the same source) is logged: a
/// flood must not turn into a flood of log lines. Each line carries the
/// number of refusals since the previous one.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub client_hello: Duration,
    pub handshake: Duration,
    pub header: Duration,
}

/// Counts refusals and says when one should be logged: the first at once,
/// then at most one line per [`REFUSAL_LOG_EVERY`].
#[derive(Debug, Default)]
struct LogThrottle {
    /// Refusals not yet reported in a log line.
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl LogThrottle {
    /// Records one refusal; `Some(n)` when a line reporting `n` refusals is due.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Where a connection comes from, as far as the per-address limit goes: an
/// IPv4 address, or an IPv6 /64 (one site's allocation, which a single
/// attacker typically holds whole). IPv4-mapped IPv6 counts as IPv4.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Open connections per source.
#[derive(Debug)]
struct Sources {
    limit: usize,
    table: Mutex<HashMap<IpAddr, Source>>,
}

#[derive(Debug, Default)]
struct Source {
    open: usize,
    refusals: LogThrottle,
}

/// One open connection of a source; dropping it gives the slot back.
#[derive(Debug)]
struct SourceSlot {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Sources {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `source`, or `Err(Some(n))` when it has `limit` open
    /// already and a log line about `n` refusals is due (`Err(None)`: not yet).
    fn open(self: &Arc<Self>, source: IpAddr) -> Result<SourceSlot, Option<u64>> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let entry = table.entry(source).or_default();
        if entry.open >= self.limit {
            return Err(entry.refusals.refused(Instant::now()));
        }
        entry.open += 1;
        Ok(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut table = self.sources.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = table.get_mut(&self.source) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        if entry.open == 0 {
            // Forget the source (the table holds only sources with open
            // connections), reporting refusals no line has counted yet.
            let unlogged = entry.refusals.unlogged;
            table.remove(&self.source);
            drop(table);
            if unlogged > 0 {
                tracing::warn!(source = %self.source, refused = unlogged, limit = self.sources.limit,
                    "connections refused: limits.max_connections_per_address reached");
            }
        }
    }
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<tls::LiveTls>>,
    state: Arc<AppState>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = routes::app(state.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Sources::new(limits.max_connections_per_address);
    let mut global_refusals = LogThrottle::default();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let source = source_of(peer.ip());
        let source_slot = match sources.open(source) {
            Ok(slot) => slot,
            Err(due) => {
                state.metrics.connections_refused.inc();
                if let Some(refused) = due {
                    tracing::warn!(%peer, %source, refused, limit = limits.max_connections_per_address,
                        "connections refused: limits.max_connections_per_address reached");
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.connections_refused.inc();
            if let Some(refused) = global_refusals.refused(Instant::now()) {
                tracing::warn!(%peer, refused, limit = limits.max_connections,
                    "connections refused: limits.max_connections reached");
            }
            continue;
        };
        let conn = Connection {
            tls: tls.clone(),
            app: app.clone(),
            state: state.clone(),
            limits: limits.clone(),
            watcher: graceful.watcher(),
            _slots: (slot, source_slot),
        };
        tokio::spawn(conn.serve(tcp, peer));
    }
    state.shutting_down.store(true, Ordering::SeqCst);
    state.resumable.stop_appends();
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            "drain timed out; closing remaining connections"
        );
    }
}

struct Connection {
    tls: Option<Arc<tls::LiveTls>>,
    app: axum::Router,
    state: Arc<AppState>,
    limits: ConnLimits,
    watcher: Watcher,
    /// Held for the connection's life: its `max_connections` slot and its
    /// source's slot.
    _slots: (OwnedSemaphorePermit, SourceSlot),
}

impl Connection {
    async fn serve(self, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let open = self.state.metrics.connections_open.clone();
        open.inc();
        match self.tls.clone() {
            None => {
                self.http(
                    tcp,
                    ConnInfo {
                        peer,
                        cert_host: None,
                        cert_not_after: None,
                    },
                )
                .await;
            }
            Some(live) => {
                if let Some(stream) = self.handshake(&live, tcp, peer).await {
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first());
                    let (cert_host, cert_not_after) = match cert.map(tls::peer_identity) {
                        Some((host, not_after)) => (Some(host), not_after),
                        None => (None, None),
                    };
                    let info = ConnInfo {
                        peer,
                        cert_host,
                        cert_not_after,
                    };
                    self.http(stream, info).await;
                }
            }
        }
        open.dec();
    }

    /// The TLS handshake: the ClientHello within `client_hello`, all of it
    /// within `handshake`, both from now. The config is the one live when
    /// the ClientHello is in, so a SIGHUP reload applies to the next
    /// handshake. `None` (logged) when it fails.
    async fn handshake(
        &self,
        live: &tls::LiveTls,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let metrics = &self.state.metrics;
        let now = Instant::now();
        let done_by = now + self.limits.handshake;
        let hello_by = (now + self.limits.client_hello).min(done_by);
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match tokio::time::timeout_at(hello_by, hello).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                // A bare connect-and-close (a port probe) is no handshake.
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    metrics.fleet.handshake_failed(tls::classify(&e).reason);
                }
                tracing::debug!(%peer, error = %e, "no usable tls client hello");
                return None;
            }
            Err(_) => {
                metrics.fleet.handshake_failed("timeout");
                tracing::debug!(%peer, "no tls client hello within limits.client_hello_timeout_s");
                return None;
            }
        };
        let rest = start.into_stream(live.current());
        let (result, cert) = tls::noting_refusals(tokio::time::timeout_at(done_by, rest)).await;
        match result {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                let failure = tls::classify(&e);
                metrics.fleet.handshake_failed(failure.reason);
                match failure {
                    tls::Failure {
                        refusal: Some(reason),
                        ..
                    } => tracing::warn!(
                        %peer,
                        reason,
                        host = cert.as_ref().map(|c| c.host.as_str()),
                        serial = cert.as_ref().map(|c| c.serial.as_str()),
                        error = %e,
                        "tls handshake refused a client certificate"
                    ),
                    tls::Failure {
                        reason: "server_cert_rejected",
                        ..
                    } => tracing::warn!(
                        %peer,
                        error = %e,
                        "a client refused the server certificate (check the rotation: its CA, its names, its dates)"
                    ),
                    _ => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                }
                None
            }
            Err(_) => {
                metrics.fleet.handshake_failed("timeout");
                tracing::debug!(%peer, "tls handshake timed out");
                None
            }
        }
    }

    async fn http<S>(self, io: S, info: ConnInfo)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header)
            .serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(connection).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Pings the systemd watchdog while the store answers; a store that hangs
/// (dead disk, stuck NFS) stops the pings and systemd restarts us.
pub(crate) async fn watchdog_loop(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let Some(every) = systemd::watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let probe = tokio::fs::metadata(state.store.scratch_dir());
        match tokio::time::timeout(every, probe).await {
            Ok(Ok(_)) => systemd::watchdog(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "store health check failed; withholding watchdog ping")
            }
            Err(_) => tracing::error!("store health check hung; withholding watchdog ping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_of(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2::2"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_source_gets_its_limit_and_its_slots_back() {
        let sources = Sources::new(2);
        let a = source_of("127.0.0.2".parse().unwrap());
        let b = source_of("127.0.0.1".parse().unwrap());
        let held = [sources.open(a).unwrap(), sources.open(a).unwrap()];
        assert_eq!(
            sources.open(a).unwrap_err(),
            Some(1),
            "the first refusal is logged"
        );
        assert_eq!(
            sources.open(a).unwrap_err(),
            None,
            "the next ones are counted"
        );
        let _other = sources.open(b).expect("another source is not affected");
        drop(held);
        assert!(
            !sources.table.lock().unwrap().contains_key(&a),
            "forgotten when idle"
        );
        let _again = sources.open(a).expect("slots come back");
    }

    #[tokio::test]
    async fn refusal_lines_are_throttled_and_carry_the_count() {
        let mut t = LogThrottle::default();
        let now = Instant::now();
        assert_eq!(t.refused(now), Some(1));
        assert_eq!(t.refused(now + Duration::from_secs(1)), None);
        assert_eq!(t.refused(now + Duration::from_secs(2)), None);
        assert_eq!(t.refused(now + REFUSAL_LOG_EVERY), Some(3));
    }
}
