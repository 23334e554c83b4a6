//! The shipper's ops listener (`[ops] listen`, default `127.0.0.1:9465`,
//! `""` off): plain HTTP, `/metrics` ([`crate::metrics`]: OpenMetrics to a
//! scraper that asks for it, as Prometheus does, else the classic text
//! format) and `/healthz`.
//! It is an extra: `main` binds it, and an address that cannot be bound is
//! logged there, naming the address and the key, and shipping goes on
//! without it.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use std::net::SocketAddr;
use std::time::SystemTime;

/// `[ops] listen` when the key is absent.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9465";

/// `[ops] listen` (`None`: absent, the default): an address and port, or
/// `""` for no listener; the error says why, for the key `ops.listen`.
pub fn parse_listen(listen: Option<&str>) -> Result<Option<SocketAddr>, String> {
    match listen.unwrap_or(DEFAULT_LISTEN).trim() {
        "" => Ok(None),
        a => a.parse().map(Some).map_err(|e| {
            format!("{a:?}: {e}; give an address and port such as \"{DEFAULT_LISTEN}\", or \"\" for no ops listener")
        }),
    }
}

/// Serves [`app`] on `listener` (bound by `main`) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    let at = listener.local_addr().ok();
    if let Err(e) = axum::serve(listener, app()).await {
        tracing::error!(event = "ops_listener_failed", listen = ?at, error = %e, "ops listener stopped");
    }
}

/// The ops routes. `/metrics` reads memory only: the queue publishes its
/// backlog after each scan pass, so a scrape (or a hundred) walks nothing.
pub fn app() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| async move {
                let metrics = crate::metrics::get();
                metrics.refresh(SystemTime::now());
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (content_type, body) = metrics.negotiate(accept);
                ([(header::CONTENT_TYPE, content_type)], body)
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// A scrape walks no episode tree, however often it comes (a big host
    /// has millions of files in its queue).
    #[tokio::test]
    async fn a_scrape_walks_no_tree() {
        let data = tempfile::tempdir().unwrap();
        let ep = data.path().join("episodes/ep-1");
        std::fs::create_dir_all(&ep).unwrap();
        std::fs::write(ep.join("meta.json"), "{}").unwrap();
        let before = crate::scan::tree_walks();
        for _ in 0..20 {
            let resp = app()
                .oneshot(
                    axum::http::Request::get("/metrics")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(crate::scan::tree_walks(), before);
    }
}
