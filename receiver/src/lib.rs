//! The labship receiver as a library: [`Receiver::prepare`] turns a validated
//! [`config::Config`] into everything the server needs (TLS, gate, tokens,
//! store, audit log), failing with a [`config::ConfigError`] (exit 2) on any
//! problem an operator must fix; [`Receiver::run`] serves on listeners and a
//! shutdown signal that the caller (the binary, or a test) owns.

mod accept;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod expiry;
pub mod fleet;
pub mod gate;
pub mod ingest;
pub mod metrics;
pub mod ops;
mod pace;
pub mod routes;
pub mod server;
pub mod store;
pub mod tls;
pub mod uploads;

pub use labship_sys::hooks::{crash_point, pause_point};
pub use labship_sys::systemd;

use config::{Config, ConfigError};
use routes::AppState;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How long shutdown waits for multipart uploads to abort after the drain.
const STOP_UPLOADS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the ops listener may take to finish its requests once the drain
/// is over: scrapes and probes answer in milliseconds.
const OPS_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A receiver ready to serve.
#[derive(Debug)]
pub struct Receiver {
    config: Config,
    state: Arc<AppState>,
    tls: Option<Arc<tls::LiveTls>>,
}

/// What the configuration names, read and checked: the token table, the TLS
/// material and the gate. Loading it touches nothing.
struct Material {
    tokens: auth::Tokens,
    tls: Option<tls::LiveTls>,
    gate: gate::Gate,
    /// Valid but risky: the config's own and the TLS material's.
    warnings: Vec<ConfigError>,
}

impl Material {
    fn load(config: &Config) -> Result<Self, ConfigError> {
        let file = &config.file;
        let tokens = match &config.tokens_file {
            Some(path) => auth::Tokens::load(path)
                .map_err(|e| ConfigError::new(file, "auth.tokens_file", e.to_string()))?,
            None => auth::Tokens::default(),
        };
        let mut warnings = config.warnings();
        let tls = match &config.tls {
            Some(files) => {
                let (live, tls_warnings) =
                    tls::LiveTls::load(file, files, config.tokens_file.is_some())?;
                warnings.extend(tls_warnings);
                Some(live)
            }
            None => None,
        };
        let gate = gate::Gate::open(&config.allowed_commits_file, config.remediation.clone())
            .map_err(|e| ConfigError::new(file, "gate.allowed_commits_file", e.to_string()))?;
        Ok(Self {
            tokens,
            tls,
            gate,
            warnings,
        })
    }
}

/// The lock file in `storage.dir` that one receiver holds while it runs.
pub const STORAGE_LOCK: &str = ".receiver.lock";

/// Takes `storage.dir`'s lock ([`STORAGE_LOCK`]) for the process's life,
/// creating the directory first. Another receiver on the same directory
/// (one started by hand beside the unit) would remove this one's scratch
/// files and cut its partial uploads back to their last checkpoint while
/// they are written: it is refused, naming the lock. With `kind = "s3"`
/// each receiver needs a `storage.dir` of its own for the same reason.
pub fn lock_storage(config: &Config) -> Result<std::fs::File, String> {
    let dir = &config.storage_dir;
    let path = dir.join(STORAGE_LOCK);
    let locked = std::fs::create_dir_all(dir).and_then(|()| labship_sys::fs::try_lock(&path));
    match locked {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(format!(
            "{}: storage.dir {} is in use by another receiver (it holds {}): stop it first (`systemctl status labship-receiver`), or give this one a storage.dir of its own",
            config.file.display(),
            dir.display(),
            path.display()
        )),
        Err(e) => Err(format!(
            "{}: storage.dir: cannot lock {}: {e}",
            config.file.display(),
            path.display()
        )),
    }
}

impl Receiver {
    /// `receiver --check-config`: reads and checks what the daemon would at
    /// start (the token table, certificates, key, client CA, CRLs, the gate)
    /// without opening the store, the audit log or any socket. Returns the
    /// warnings.
    pub fn check(config: &Config) -> Result<Vec<ConfigError>, ConfigError> {
        Material::load(config).map(|m| m.warnings)
    }

    /// Loads certificates, the token table and the gate, opens the store (removing
    /// scratch left by a crash) and the audit log. Warnings are logged.
    pub fn prepare(config: Config) -> Result<Self, ConfigError> {
        let file = config.file.clone();
        let Material {
            tokens,
            tls,
            gate,
            warnings,
        } = Material::load(&config)?;
        for w in &warnings {
            tracing::warn!(key = %w.key, file = %w.file.display(), "{}", w.why);
        }
        let metrics = Arc::new(metrics::Metrics::new(tls.is_some()));
        let store = match &config.s3 {
            None => store::FsStore::open(&config.storage_dir).map(store::Store::Fs),
            Some(s3) => store::s3::S3Store::open(s3, &config.storage_dir, metrics.clone())
                .map(store::Store::S3),
        }
        .map_err(|e| {
            // The S3 client's own settings, or the local dir (the spool).
            let key = if matches!(e, store::StoreError::S3 { .. }) {
                "storage.endpoint/storage.bucket"
            } else {
                "storage.dir"
            };
            ConfigError::new(&file, key, e.to_string())
        })?;
        let audit = audit::Audit::open(&config.audit_log).map_err(|e| {
            ConfigError::new(
                &file,
                "ops.audit_log",
                format!("cannot open {}: {e}", config.audit_log.display()),
            )
        })?;
        metrics.gate_commits.set(gate.snapshot().len() as i64);
        let resumable = uploads::spool::Spool::open(&config.storage_dir)
            .and_then(|spool| {
                uploads::Table::open(
                    spool,
                    config.upload_expiry_s,
                    config.max_partial_uploads,
                    config.max_concurrent_uploads,
                    metrics.fleet.partial_uploads.clone(),
                )
            })
            .map_err(|e| {
                ConfigError::new(
                    &file,
                    "storage.dir",
                    format!(
                        "cannot open the partial upload spool {}: {e}",
                        config
                            .storage_dir
                            .join(uploads::spool::UPLOADS_DIR)
                            .display()
                    ),
                )
            })?;
        if let (Some(live), Some(expiry)) = (&tls, &metrics.fleet.server_cert_expiry) {
            expiry.set(live.server_not_after());
        }
        let state = Arc::new(AppState {
            gate: Arc::new(gate),
            tokens: RwLock::new(Arc::new(tokens)),
            store,
            metrics,
            audit,
            uploads: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            max_uploads: config.max_concurrent_uploads,
            shutting_down: AtomicBool::new(false),
            limits: ingest::Limits {
                max_bytes: config.max_episode_bytes,
                max_unpacked: config.max_unpacked_bytes,
                body_idle: config.body_idle_timeout,
                min_rate: config.min_upload_rate,
            },
            resumable,
        });
        Ok(Self {
            config,
            state,
            tls: tls.map(Arc::new),
        })
    }

    /// Serves until `shutdown` turns true, then drains (bounded by
    /// [`server::DRAIN_TIMEOUT`]). `hup` ticks on every SIGHUP.
    pub async fn run(
        self,
        api: TcpListener,
        ops: TcpListener,
        shutdown: watch::Receiver<bool>,
        hup: watch::Receiver<u64>,
    ) {
        let state = self.state;
        let reload = tokio::spawn(reload_loop(
            state.clone(),
            self.config.clone(),
            self.tls.clone(),
            hup,
            shutdown.clone(),
        ));
        let watchdog = tokio::spawn(server::watchdog_loop(state.clone(), shutdown.clone()));
        let sweeper = tokio::spawn(uploads::sweep_loop(state.clone(), shutdown.clone()));
        // The ops listener outlives the drain, so /readyz can say so.
        let (ops_stop, ops_stopped) = watch::channel(false);
        let ops = tokio::spawn(ops::serve(ops, state.clone(), ops_stopped));
        let api_addr = api.local_addr().ok();
        tracing::info!(
            listen = ?api_addr,
            tls = self.tls.is_some(),
            store = %state.store.describe(),
            gate_commits = state.gate.snapshot().len(),
            version = routes::VERSION,
            "receiver ready"
        );
        systemd::ready(&format!(
            "serving on {}",
            api_addr.map(|a| a.to_string()).unwrap_or_default()
        ));
        let limits = server::ConnLimits {
            max_connections: self.config.max_connections,
            max_connections_per_address: self.config.max_connections_per_address,
            client_hello: self.config.client_hello_timeout,
            handshake: self.config.handshake_timeout,
            header: self.config.header_timeout,
        };
        let mut stopping = shutdown.clone();
        let accept = tokio::spawn(server::accept_loop(
            api,
            self.tls,
            state.clone(),
            limits,
            shutdown,
        ));
        let _ = stopping.wait_for(|s| *s).await;
        systemd::stopping();
        tracing::info!("shutting down: draining in-flight requests");
        let _ = accept.await;
        // Requests still running after the drain are cut when this returns:
        // abort their multipart uploads rather than leave parts in the bucket.
        state.store.stop_uploads(STOP_UPLOADS_WAIT).await;
        let _ = ops_stop.send(true);
        // The ops listener has no header timeout; a stuck local client
        // (a half-sent request, a slow scrape) must not hold up the exit
        // after the drain has already used most of TimeoutStopSec.
        let mut ops = ops;
        if tokio::time::timeout(OPS_GRACE, &mut ops).await.is_err() {
            tracing::warn!(
                grace_s = OPS_GRACE.as_secs(),
                "ops listener did not stop in time; closing it"
            );
            ops.abort();
        }
        reload.abort();
        watchdog.abort();
        sweeper.abort();
        tracing::info!("receiver stopped");
    }
}

/// Re-reads the gate when its file changes and, on SIGHUP, the gate, the
/// token table and the TLS material (certificate, key, client CA, CRLs).
async fn reload_loop(
    state: Arc<AppState>,
    config: Config,
    tls: Option<Arc<tls::LiveTls>>,
    mut hup: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(gate::POLL);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            changed = hup.changed() => changed.is_ok(),
            _ = shutdown.changed() => return,
        };
        let gate = state.gate.clone();
        match tokio::task::spawn_blocking(move || gate.reload(forced)).await {
            Ok(Ok(Some(n))) => {
                tracing::info!(commits = n, forced, "gate reloaded");
                state.metrics.gate_commits.set(n as i64);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                state.metrics.fleet.gate_reload_failures.inc();
                tracing::error!(error = %e, kept = state.gate.snapshot().len(), "gate file rejected; keeping the last good set")
            }
            Err(e) => tracing::error!(error = %e, "gate reload task failed"),
        }
        if forced && let Some(path) = &config.tokens_file {
            match auth::Tokens::load(path) {
                Ok(tokens) => {
                    tracing::info!(tokens = tokens.len(), "tokens reloaded");
                    *state.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tokens);
                }
                Err(e) => {
                    state.metrics.fleet.tokens_reload_failures.inc();
                    tracing::error!(error = %e, "tokens file rejected; keeping the previous table")
                }
            }
        }
        if forced && let Some(live) = &tls {
            let reloading = live.clone();
            match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(Ok(warnings)) => {
                    if let Some(expiry) = &state.metrics.fleet.server_cert_expiry {
                        expiry.set(live.server_not_after());
                    }
                    tracing::info!("tls material reloaded");
                    for w in &warnings {
                        tracing::warn!(key = %w.key, file = %w.file.display(), "{}", w.why);
                    }
                }
                Ok(Err(e)) => {
                    state.metrics.fleet.tls_reload_failures.inc();
                    tracing::error!(
                        error = %e,
                        "tls material rejected; new handshakes keep the previous certificate, key, client CA and CRLs"
                    )
                }
                Err(e) => {
                    state.metrics.fleet.tls_reload_failures.inc();
                    tracing::error!(error = %e, "tls reload task failed")
                }
            }
        }
    }
}
