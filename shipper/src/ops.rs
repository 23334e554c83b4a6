//! The shipper's ops listener (`[ops] listen`, default `127.0.0.1:9465`,
//! `""` off): plain HTTP, `/metrics` ([`crate::metrics`]: OpenMetrics to a
//! scraper that asks for it, as Prometheus does, else the classic text
//! format) and `/healthz`.
//! It is an extra: an address that cannot be bound is logged, naming the
//! address and the key, and shipping goes on without it.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

/// Binds `listen` and serves on the current runtime; `None` (logged) when
/// the address cannot be bound.
pub async fn start(
    listen: SocketAddr,
    data_dir: PathBuf,
    file: &std::path::Path,
) -> Option<SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                event = "ops_listen_failed", listen = %listen, config = %file.display(), error = %e,
                "cannot serve /metrics on {listen} ([ops] listen in {}): {e}; shipping goes on without it: free the port or set another address (\"\" turns it off)",
                file.display()
            );
            return None;
        }
    };
    let bound = listener.local_addr().ok();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(data_dir)).await {
            tracing::error!(event = "ops_listener_failed", listen = %listen, error = %e, "the ops listener stopped: {e}");
        }
    });
    tracing::debug!(listen = ?bound, "ops listener up");
    bound
}

fn router(data_dir: PathBuf) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let data_dir = data_dir.clone();
                async move {
                    let metrics = crate::metrics::get();
                    // A walk of episodes/: off the async threads.
                    let _ = tokio::task::spawn_blocking(move || {
                        metrics.observe_disk(&data_dir, SystemTime::now());
                    })
                    .await;
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    let (content_type, body) = metrics.negotiate(accept);
                    ([(header::CONTENT_TYPE, content_type)], body)
                }
            }),
        )
}
