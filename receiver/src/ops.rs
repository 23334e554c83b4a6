//! The ops listener (plain HTTP, loopback by default; CONTRACT §4, §11):
//! `/healthz` (the process is alive), `/readyz` (it can take uploads: the
//! store is writable and it is not draining; else 503 naming why) and
//! `/metrics`. The gate needs no check: the receiver does not start without
//! one, and a reload keeps the last good set.
//!
//! `/metrics` answers in the format the scraper asks for, with its
//! Content-Type (`labship_sys::metrics`, shared with the shipper).
//!
//! The listener serves on through the drain (so `/readyz` can say
//! `draining`) and stops when the caller's `stop` turns true.

use crate::routes::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a store probe's verdict is reused: a scraper or a load balancer
/// polling `/readyz` must not turn into a stream of fsyncs.
const PROBE_TTL: Duration = Duration::from_secs(2);
/// The same on S3 (a PUT and a DELETE per probe).
const PROBE_TTL_S3: Duration = Duration::from_secs(15);
/// A store that does not answer within this is not ready (a hung disk).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The store probe's shared state. A probe runs as a detached task that
/// writes its verdict here: a `/readyz` request that gives up waiting (or
/// whose client goes away) does not throw the work away, and a hung store
/// holds one blocking thread, not one more per poll.
#[derive(Debug, Default)]
struct Probe {
    /// The last verdict and when it was reached.
    last: Option<(Instant, Result<(), String>)>,
    /// When the probe now running started (`None`: none is running). While
    /// it is set no other probe starts.
    running_since: Option<Instant>,
    /// The running probe was reported hung (logged once, not at every poll).
    hung_logged: bool,
}

#[derive(Debug)]
struct Ops {
    state: Arc<AppState>,
    probe: std::sync::Mutex<Probe>,
    /// Ticks when a probe finishes, waking the requests waiting for it.
    probed: watch::Sender<u64>,
}

/// The ops router.
pub fn app(state: Arc<AppState>) -> Router {
    let ops = Arc::new(Ops {
        state,
        probe: std::sync::Mutex::new(Probe::default()),
        probed: watch::channel(0).0,
    });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

/// Serves the ops router until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app(state))
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "ops listener failed");
    }
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    match ops.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

impl Ops {
    fn probe_state(&self) -> std::sync::MutexGuard<'_, Probe> {
        // The state stays consistent across a panic (plain assignments).
        self.probe.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ready(self: &Arc<Self>) -> Result<(), String> {
        if self.state.shutting_down.load(Ordering::SeqCst) {
            return Err("draining".into());
        }
        // Subscribed before looking, so a probe finishing in between wakes us.
        let mut probed = self.probed.subscribe();
        let since = {
            let mut probe = self.probe_state();
            if let Some((at, verdict)) = &probe.last
                && at.elapsed() < self.probe_ttl()
            {
                return verdict.clone();
            }
            match probe.running_since {
                Some(since) => since,
                None => {
                    let now = Instant::now();
                    probe.running_since = Some(now);
                    probe.hung_logged = false;
                    tokio::spawn(self.clone().probe());
                    now
                }
            }
        };
        let left = PROBE_TIMEOUT.saturating_sub(since.elapsed());
        if tokio::time::timeout(left, probed.changed()).await.is_ok()
            && let Some((_, verdict)) = &self.probe_state().last
        {
            return verdict.clone();
        }
        let why = format!("store probe hung for {} s", since.elapsed().as_secs());
        let mut probe = self.probe_state();
        if probe.running_since == Some(since) && !probe.hung_logged {
            probe.hung_logged = true;
            tracing::warn!(why, "not ready");
        }
        Err(why)
    }

    /// One probe, detached from the request that started it: its verdict
    /// is recorded whenever it comes.
    async fn probe(self: Arc<Self>) {
        let verdict = self.probe_store().await;
        {
            let mut probe = self.probe_state();
            // Logged when the verdict changes, not at every poll.
            let before = probe.last.as_ref().map(|(_, v)| v);
            if before != Some(&verdict) || probe.hung_logged {
                match &verdict {
                    Err(why) => tracing::warn!(why, "not ready"),
                    Ok(()) if before.is_some() || probe.hung_logged => {
                        tracing::info!("ready again")
                    }
                    Ok(()) => {}
                }
            }
            probe.last = Some((Instant::now(), verdict));
            probe.running_since = None;
        }
        self.probed.send_modify(|n| *n += 1);
    }

    /// A real write: a small file created, fsynced and removed in the
    /// store's scratch dir (the S3 store's local spool), and for S3 an
    /// object written and deleted in the bucket.
    async fn probe_store(&self) -> Result<(), String> {
        let scratch = self.state.store.scratch_dir();
        let dir = scratch.clone();
        tokio::task::spawn_blocking(move || write_probe(&dir))
            .await
            .map_err(|e| format!("store probe task failed: {e}"))?
            .map_err(|e| format!("store not writable: {}: {e}", scratch.display()))?;
        if let crate::store::Store::S3(s3) = &self.state.store {
            s3.probe_writable().await?;
        }
        Ok(())
    }

    /// How long a verdict is reused: longer on S3, where every probe is
    /// two billed requests.
    fn probe_ttl(&self) -> Duration {
        match &self.state.store {
            crate::store::Store::Fs(_) => PROBE_TTL,
            crate::store::Store::S3(_) => PROBE_TTL_S3,
        }
    }
}

fn write_probe(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = tempfile::Builder::new()
        .prefix(".readyz-")
        .tempfile_in(dir)?;
    f.write_all(b"ready\n")?;
    f.as_file().sync_all()?;
    f.close()
}

async fn metrics(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> impl IntoResponse {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = accept.join(",");
    let (content_type, body) = ops.state.metrics.negotiate(Some(&accept));
    ([(header::CONTENT_TYPE, content_type)], body)
}
