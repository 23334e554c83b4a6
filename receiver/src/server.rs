//! The receiver's runtime: the API accept loop, the ops listener, the reload
//! loop (gate and tokens) and the watchdog, all stopped by one shutdown signal.
//!
//! The accept loop is ours (not `axum::serve`) because that is where the TLS
//! handshake happens and the peer certificate, hence the host id, is read. Each
//! connection runs in its own task, so slow or idle clients never hold up the
//! loop; `limits.max_connections` caps them, the handshake and header reads are
//! timed out, and bodies have an idle timeout (see `ingest`).

use crate::auth::ConnInfo;
use crate::routes::{self, AppState};
use crate::{systemd, tls};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// How long in-flight requests may run on after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub handshake: Duration,
    pub header: Duration,
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<AppState>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = routes::app(state.clone());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.connections_refused.inc();
            tracing::warn!(%peer, limit = limits.max_connections, "connection refused: limits.max_connections reached");
            continue;
        };
        let conn = Connection {
            tls: tls.clone(),
            app: app.clone(),
            state: state.clone(),
            limits: limits.clone(),
            watcher: graceful.watcher(),
            _slot: slot,
        };
        tokio::spawn(conn.serve(tcp, peer));
    }
    state.shutting_down.store(true, Ordering::SeqCst);
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
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    state: Arc<AppState>,
    limits: ConnLimits,
    watcher: Watcher,
    _slot: OwnedSemaphorePermit,
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
                    },
                )
                .await;
            }
            Some(acceptor) => {
                match tokio::time::timeout(self.limits.handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let cert_host = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(tls::host_from_certificate);
                        self.http(stream, ConnInfo { peer, cert_host }).await;
                    }
                    Ok(Err(e)) => {
                        let e = e.to_string();
                        if e.contains("certificate") {
                            tracing::warn!(%peer, error = %e, "tls handshake refused a client certificate");
                        } else {
                            tracing::debug!(%peer, error = %e, "tls handshake failed");
                        }
                    }
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            }
        }
        open.dec();
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

/// Serves `/healthz` and `/metrics` until shutdown.
pub(crate) async fn ops_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = routes::ops_app(state.metrics.clone());
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "ops listener failed");
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
