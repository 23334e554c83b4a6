//! The shipper's ops listener (`[ops] listen`, default `127.0.0.1:9465`,
//! `""` off): plain HTTP, `/metrics` ([`crate::metrics`]: OpenMetrics to a
//! scraper that asks for it, as Prometheus does, else the classic text
//! format) and `/healthz`: `200` while the work loop shows signs of life
//! (the same ones that feed the systemd watchdog: a pass, bytes moving),
//! `503` once it has shown none for longer than the stall window, each
//! answer naming the age of the last one.
//! It is an extra: `main` binds it, and an address that cannot be bound is
//! logged there, naming the address and the key, and shipping goes on
//! without it.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Milliseconds since the epoch of the work loop's last sign of life
/// (0: none yet).
static ALIVE_MS: AtomicU64 = AtomicU64::new(0);

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The work loop is alive (called where the watchdog is fed).
pub fn alive() {
    ALIVE_MS.store(epoch_ms(SystemTime::now()), Ordering::Relaxed);
}

/// `/healthz`: the status and the line naming the age of the last sign of
/// life of the work loop; `503` past `stall`.
fn health(stall: Duration, now: SystemTime) -> (axum::http::StatusCode, String) {
    let at = ALIVE_MS.load(Ordering::Relaxed);
    if at == 0 {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "starting: the work loop has not run yet\n".into(),
        );
    }
    let age = Duration::from_millis(epoch_ms(now).saturating_sub(at)).as_secs();
    if age > stall.as_secs() {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: the work loop last showed progress {age} s ago (over {} s)\n",
                stall.as_secs()
            ),
        )
    } else {
        (
            axum::http::StatusCode::OK,
            format!("ok: the work loop last showed progress {age} s ago\n"),
        )
    }
}

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
pub async fn serve(listener: tokio::net::TcpListener, stall: Duration) {
    let at = listener.local_addr().ok();
    if let Err(e) = axum::serve(listener, app(stall)).await {
        tracing::error!(event = "ops_listener_failed", listen = ?at, error = %e, "ops listener stopped");
    }
}

/// The ops routes. `/metrics` reads memory only: the queue publishes its
/// backlog after each scan pass, so a scrape (or a hundred) walks nothing.
/// `/healthz` answers `503` once the work loop has shown no sign of life
/// for `stall`.
pub fn app(stall: Duration) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(move || async move { health(stall, SystemTime::now()) }),
        )
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
            let resp = app(Duration::from_secs(60))
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

    #[test]
    fn healthz_names_the_age_and_fails_past_the_stall_window() {
        let stall = Duration::from_secs(300);
        assert_eq!(
            health(stall, SystemTime::now()).0,
            503,
            "before the first pass"
        );
        alive();
        // Taken after alive(), so `now + 5 s` is at least 5 s past it
        // (taken before, a millisecond boundary between the two read 4 s).
        let now = SystemTime::now();
        let (code, body) = health(stall, now + Duration::from_secs(5));
        assert_eq!(code, 200);
        assert!(body.contains("5 s ago"), "{body}");
        let (code, body) = health(stall, now + Duration::from_secs(400));
        assert_eq!(code, 503);
        assert!(
            body.starts_with("stalled") && body.contains("over 300 s"),
            "{body}"
        );
    }
}
