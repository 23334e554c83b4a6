//! The shipper's Prometheus metrics (CONTRACT §11), served by [`crate::ops`]
//! at `/metrics`. One process-wide registry ([`get`]), so the places that
//! count (the queue, the uploader, the TLS client) each add one line.
//!
//! The queue's state (`backlog_*`, `oldest_pending_age_seconds`,
//! `quarantined_episodes`) is published by the queue after each scan pass
//! ([`Metrics::backlog`]) from what the pass measured anyway: a scrape
//! reads memory and walks nothing, however many files wait on the host.
//! The backlog is the shippable one: settled episodes (a valid id, a
//! `meta.json`, nothing changed for `settle`) waiting for their upload or
//! its retry; episodes still being written are `settling_episodes`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime};

pub use labship_sys::metrics::{CLASSIC, OPENMETRICS};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// How an episode left the queue (`labship_shipper_episodes_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver stored it (PUT 200/201 confirmed).
    Stored,
    /// The receiver held it already (HEAD or PUT 200).
    AlreadyPresent,
    /// Moved to `quarantine/`.
    Quarantined,
}

impl Outcome {
    pub const ALL: [Self; 3] = [Self::Stored, Self::AlreadyPresent, Self::Quarantined];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::AlreadyPresent => "already_present",
            Self::Quarantined => "quarantined",
        }
    }
}

/// Why an attempt failed and its episode stays queued for a retry
/// (`labship_shipper_upload_failures_total{reason}`): a bounded set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// No answer: connect failure, reset, stall, timeout.
    NoAnswer,
    /// The TLS handshake was refused (the client certificate, most likely).
    Tls,
    /// 401 or 403.
    Refused,
    /// 429, 503 or 507: the receiver is busy, draining or full.
    Busy,
    /// Another 5xx.
    ServerError,
    /// Something other than the receiver answered (redirect, unconfirmed
    /// success, a 4xx without the receiver's error code).
    NotReceiver,
    /// Packing the archive failed (not the episode's fault).
    Pack,
    /// A local move or file operation failed (the disk's).
    Disk,
    /// `episodes/` could not be listed.
    Scan,
    /// Anything else.
    Other,
}

impl FailureReason {
    pub const ALL: [Self; 10] = [
        Self::NoAnswer,
        Self::Tls,
        Self::Refused,
        Self::Busy,
        Self::ServerError,
        Self::NotReceiver,
        Self::Pack,
        Self::Disk,
        Self::Scan,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAnswer => "no_answer",
            Self::Tls => "tls",
            Self::Refused => "refused",
            Self::Busy => "busy",
            Self::ServerError => "server_error",
            Self::NotReceiver => "not_receiver",
            Self::Pack => "pack",
            Self::Disk => "disk",
            Self::Scan => "scan",
            Self::Other => "other",
        }
    }
}

/// The queue's shippable backlog after a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Settled episodes still in `episodes/` (ready, or waiting for a retry).
    pub episodes: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The newest mtime of the one that has waited longest.
    pub oldest: Option<SystemTime>,
    /// Valid episodes not settled yet (being written, no `meta.json`).
    pub settling: u64,
}

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    episodes: Family<ResultLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    upload_bytes: Counter,
    upload_seconds: Histogram,
    archive_bytes: Histogram,
    backlog_episodes: Gauge,
    backlog_bytes: Gauge,
    settling_episodes: Gauge,
    oldest_pending_age: FloatGauge,
    /// Since when the oldest settled episode waits: the age is computed
    /// at each scrape ([`Metrics::refresh`]).
    oldest_pending: Mutex<Option<SystemTime>>,
    last_success: FloatGauge,
    quarantined: Gauge,
    client_cert_expiry: Gauge,
    tls_reload_failures: Counter,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn epoch_s(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `registry.register(name, help, metrics.field.clone())` for each row, in
/// the order of the exposition.
macro_rules! register_fields {
    ($registry:ident, $metrics:ident, $($field:ident: $name:literal, $help:literal;)+) => {
        $($registry.register($name, $help, $metrics.$field.clone());)+
    };
}

/// `labship_build_info{version, commit} 1`.
fn build_info() -> Family<BuildLabels, Gauge> {
    let build = Family::<BuildLabels, Gauge>::default();
    let info = labship_sys::build_info();
    build
        .get_or_create(&BuildLabels {
            version: info.version,
            commit: info.commit,
        })
        .set(1);
    build
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("labship");
        r.register(
            "build_info",
            "The running build: version and git commit",
            build_info(),
        );
        let m = Self {
            episodes: Family::default(),
            failures: Family::default(),
            upload_bytes: Counter::default(),
            // 50 ms .. about 27 min.
            upload_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            // 4 KiB .. 64 GiB.
            archive_bytes: Histogram::new(exponential_buckets(4096.0, 4.0, 13)),
            backlog_episodes: Gauge::default(),
            backlog_bytes: Gauge::default(),
            settling_episodes: Gauge::default(),
            oldest_pending_age: FloatGauge::default(),
            oldest_pending: Mutex::new(None),
            last_success: FloatGauge::default(),
            quarantined: Gauge::default(),
            client_cert_expiry: Gauge::default(),
            tls_reload_failures: Counter::default(),
            registry: Registry::default(),
        };
        m.create_every_label();
        register_fields!(r, m,
            episodes: "shipper_episodes",
                "Episodes that left the queue, by result (stored, already_present, quarantined)";
            failures: "shipper_upload_failures",
                "Failed attempts (the episode stays queued and is retried), by reason";
            upload_bytes: "shipper_upload_bytes",
                "Archive bytes sent in PUT bodies (also of uploads that failed)";
            upload_seconds: "shipper_upload_duration_seconds",
                "Duration of archive uploads (PUT), whatever their end (answer, stall, cancel)";
            archive_bytes: "shipper_archive_size_bytes",
                "Size of the archives packed (once per archive, not per attempt)";
            backlog_episodes: "shipper_backlog_episodes",
                "Settled episodes waiting in episodes/ to be shipped (ready or retrying), as of the last scan pass";
            backlog_bytes: "shipper_backlog_bytes",
                "Bytes of the settled episodes waiting in episodes/, as of the last scan pass";
            settling_episodes: "shipper_settling_episodes",
                "Episodes in episodes/ not settled yet (being written, no meta.json, cannot settle), as of the last scan pass";
            oldest_pending_age: "shipper_oldest_pending_age_seconds",
                "Seconds since the newest change in the settled episode that has waited longest (0 when none)";
            last_success: "shipper_last_success_timestamp_seconds",
                "When an episode was last stored (or found already present), seconds since the epoch; at start, when the newest entry of shipped/ got there (0: none)";
            quarantined: "shipper_quarantined_episodes",
                "Episodes in quarantine/ now";
            client_cert_expiry: "shipper_client_cert_expiry_timestamp_seconds",
                "notAfter of the client certificate in use, seconds since the epoch";
            tls_reload_failures: "shipper_client_tls_reload_failures",
                "Renewed TLS files on disk that could not be used (the previous ones stay in use)";
        );
        Self { registry: r, ..m }
    }

    /// Every label value present from the start, at 0: a rate over a fresh
    /// process works.
    fn create_every_label(&self) {
        for o in Outcome::ALL {
            let _ = self
                .episodes
                .get_or_create(&ResultLabels { result: o.as_str() });
        }
        for f in FailureReason::ALL {
            let _ = self
                .failures
                .get_or_create(&ReasonLabels { reason: f.as_str() });
        }
    }

    /// An episode left the queue.
    pub fn episode(&self, outcome: Outcome) {
        self.episodes
            .get_or_create(&ResultLabels {
                result: outcome.as_str(),
            })
            .inc();
        if outcome != Outcome::Quarantined {
            self.last_success.set(epoch_s(SystemTime::now()));
        }
    }

    /// At start: the last success is when the newest entry of `shipped/`
    /// got there (a rename sets its ctime), so a restart does not read as
    /// "never shipped" to an alert on this gauge.
    pub fn last_success_from_disk(&self, data_dir: &Path) {
        use std::os::unix::fs::MetadataExt as _;
        let newest = dirs(&data_dir.join("shipped"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.ctime() as f64 + f64::from(m.ctime_nsec() as u32) / 1e9)
            .fold(0.0, f64::max);
        if newest > self.last_success.get() {
            self.last_success.set(newest);
        }
    }

    /// An attempt failed where it happened; its episode stays queued.
    pub fn upload_failure(&self, reason: FailureReason) {
        self.failures
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// A pack produced an archive of `size` bytes (observed once, however
    /// many attempts upload it).
    pub fn archive(&self, size: u64) {
        self.archive_bytes.observe(size as f64);
    }

    /// A PUT starts: the guard counts its body bytes as they go and
    /// observes its duration when dropped, however the upload ends (an
    /// answer, a stall cut, a cancellation).
    pub fn upload_started(&'static self) -> UploadTimer {
        UploadTimer {
            metrics: self,
            started: Instant::now(),
        }
    }

    pub fn client_certificate(&self, not_after: Option<i64>) {
        if let Some(t) = not_after {
            self.client_cert_expiry.set(t);
        }
    }

    pub fn client_tls_reload_failed(&self) {
        self.tls_reload_failures.inc();
    }

    /// The queue's backlog as of the pass that just ended.
    pub fn backlog(&self, b: Backlog) {
        self.backlog_episodes.set(as_i64(b.episodes));
        self.backlog_bytes.set(as_i64(b.bytes));
        self.settling_episodes.set(as_i64(b.settling));
        *self
            .oldest_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = b.oldest;
    }

    /// The entries of `quarantine/` now (one readdir, once per pass).
    pub fn observe_quarantine(&self, dir: &Path) {
        self.quarantined.set(dirs(dir).count() as i64);
    }

    /// Before a scrape: the ages that move with the clock (no disk).
    pub fn refresh(&self, now: SystemTime) {
        let oldest = *self
            .oldest_pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.oldest_pending_age.set(oldest.map_or(0.0, |t| {
            now.duration_since(t).unwrap_or_default().as_secs_f64()
        }));
    }

    /// The OpenMetrics text exposition ([`OPENMETRICS`]).
    pub fn render(&self) -> String {
        labship_sys::metrics::encode(&self.registry)
    }

    /// The classic text exposition ([`CLASSIC`]).
    pub fn render_classic(&self) -> String {
        labship_sys::metrics::classic(&self.render())
    }

    /// The exposition a request's `Accept` header asks for, with its
    /// Content-Type ([`labship_sys::metrics::encode_for`]).
    pub fn negotiate(&self, accept: Option<&str>) -> (&'static str, String) {
        labship_sys::metrics::encode_for(&self.registry, accept)
    }
}

/// One upload in flight ([`Metrics::upload_started`]).
#[derive(Debug)]
pub struct UploadTimer {
    metrics: &'static Metrics,
    started: Instant,
}

impl UploadTimer {
    /// `n` more body bytes went out.
    pub fn sent(&self, n: u64) {
        self.metrics.upload_bytes.inc_by(n);
    }
}

impl Drop for UploadTimer {
    fn drop(&mut self) {
        self.metrics
            .upload_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The directories directly in `dir` whose names do not start with `.`.
fn dirs(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_contract_metric() {
        let m = get();
        m.episode(Outcome::Stored);
        m.archive(10);
        m.upload_started().sent(10);
        let text = m.render();
        for name in [
            "labship_build_info{",
            "labship_shipper_episodes_total{result=\"stored\"} ",
            "labship_shipper_episodes_total{result=\"already_present\"} ",
            "labship_shipper_upload_failures_total{reason=\"no_answer\"} ",
            "labship_shipper_upload_bytes_total ",
            "labship_shipper_backlog_episodes ",
            "labship_shipper_backlog_bytes ",
            "labship_shipper_oldest_pending_age_seconds ",
            "labship_shipper_last_success_timestamp_seconds ",
            "labship_shipper_quarantined_episodes ",
            "labship_shipper_upload_duration_seconds_bucket{",
            "labship_shipper_archive_size_bytes_bucket{",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = m.render_classic();
        assert!(
            classic.contains("# TYPE labship_shipper_episodes_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP labship_shipper_upload_bytes_total Archive"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        assert_eq!(
            m.negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            ))
            .0,
            OPENMETRICS
        );
        assert_eq!(m.negotiate(None).0, CLASSIC);
    }
}
