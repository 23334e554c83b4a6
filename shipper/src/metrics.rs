//! The shipper's Prometheus metrics (CONTRACT §11), served by [`crate::ops`]
//! at `/metrics`. One process-wide registry ([`get`]), so the places that
//! count (the queue, the uploader, the TLS client) each add one line.
//!
//! The queue's state (`backlog_*`, `oldest_pending_age_seconds`,
//! `quarantined_episodes`) is read from `data_dir` when scraped
//! ([`Metrics::observe_disk`]): always the truth on disk, and no cost
//! when nobody scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

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

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    episodes: Family<ResultLabels, Counter>,
    upload_bytes: Counter,
    upload_seconds: Histogram,
    archive_bytes: Histogram,
    backlog_episodes: Gauge,
    backlog_bytes: Gauge,
    oldest_pending_age: FloatGauge,
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

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("labship");
        let build = Family::<BuildLabels, Gauge>::default();
        let info = labship_sys::build_info();
        build
            .get_or_create(&BuildLabels {
                version: info.version,
                commit: info.commit,
            })
            .set(1);
        r.register(
            "build_info",
            "The running build: version and git commit",
            build,
        );
        let m = Self {
            episodes: Family::default(),
            upload_bytes: Counter::default(),
            // 50 ms .. about 27 min.
            upload_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            // 4 KiB .. 64 GiB.
            archive_bytes: Histogram::new(exponential_buckets(4096.0, 4.0, 13)),
            backlog_episodes: Gauge::default(),
            backlog_bytes: Gauge::default(),
            oldest_pending_age: FloatGauge::default(),
            last_success: FloatGauge::default(),
            quarantined: Gauge::default(),
            client_cert_expiry: Gauge::default(),
            tls_reload_failures: Counter::default(),
            registry: Registry::default(),
        };
        for result in ["stored", "already_present", "quarantined", "failed"] {
            // Present from the start, at 0: a rate over a fresh process works.
            let _ = m.episodes.get_or_create(&ResultLabels { result });
        }
        r.register("shipper_episodes", "Episodes that left the queue by result (stored, already_present, quarantined), and transient failures (failed)", m.episodes.clone());
        r.register(
            "shipper_upload_bytes",
            "Archive bytes sent in PUT bodies",
            m.upload_bytes.clone(),
        );
        r.register(
            "shipper_upload_duration_seconds",
            "Duration of archive uploads (PUT), whatever their answer",
            m.upload_seconds.clone(),
        );
        r.register(
            "shipper_archive_size_bytes",
            "Size of the archives uploaded",
            m.archive_bytes.clone(),
        );
        r.register(
            "shipper_backlog_episodes",
            "Episodes in episodes/ not yet shipped (settling, waiting or failing)",
            m.backlog_episodes.clone(),
        );
        r.register(
            "shipper_backlog_bytes",
            "Bytes of the episodes in episodes/",
            m.backlog_bytes.clone(),
        );
        r.register(
            "shipper_oldest_pending_age_seconds",
            "Seconds since the oldest episode in episodes/ last changed (0 when none)",
            m.oldest_pending_age.clone(),
        );
        r.register("shipper_last_success_timestamp_seconds", "When an episode was last stored (or found already present), seconds since the epoch; at start, when the newest entry of shipped/ got there (0: none)", m.last_success.clone());
        r.register(
            "shipper_quarantined_episodes",
            "Episodes in quarantine/ now",
            m.quarantined.clone(),
        );
        r.register(
            "shipper_client_cert_expiry_timestamp_seconds",
            "notAfter of the client certificate in use, seconds since the epoch",
            m.client_cert_expiry.clone(),
        );
        r.register(
            "shipper_client_tls_reload_failures",
            "Renewed TLS files on disk that could not be used (the previous ones stay in use)",
            m.tls_reload_failures.clone(),
        );
        Self { registry: r, ..m }
    }

    /// An episode left the queue: `stored` or `already_present` (a success)
    /// or `quarantined`.
    pub fn episode(&self, result: &'static str) {
        self.episodes.get_or_create(&ResultLabels { result }).inc();
        if result != "quarantined" {
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

    /// Transient failures of a pass (they stay queued and are retried).
    pub fn failed(&self, n: usize) {
        self.episodes
            .get_or_create(&ResultLabels { result: "failed" })
            .inc_by(n as u64);
    }

    /// One PUT ended (any answer): `sent` body bytes of an archive of `size`.
    pub fn upload(&self, sent: u64, size: u64, took: Duration) {
        self.upload_bytes.inc_by(sent);
        self.archive_bytes.observe(size as f64);
        self.upload_seconds.observe(took.as_secs_f64());
    }

    pub fn client_certificate(&self, not_after: Option<i64>) {
        if let Some(t) = not_after {
            self.client_cert_expiry.set(t);
        }
    }

    pub fn client_tls_reload_failed(&self) {
        self.tls_reload_failures.inc();
    }

    /// Reads the queue's state from `data_dir` (blocking: a walk of
    /// `episodes/`).
    pub fn observe_disk(&self, data_dir: &Path, now: SystemTime) {
        let (mut count, mut bytes, mut oldest) = (0i64, 0u64, None::<SystemTime>);
        for entry in dirs(&data_dir.join("episodes")) {
            count += 1;
            let mut newest = entry.metadata().ok().and_then(|m| m.modified().ok());
            for f in walkdir::WalkDir::new(entry.path())
                .into_iter()
                .filter_map(Result::ok)
            {
                let Ok(meta) = f.metadata() else { continue };
                if meta.is_file() {
                    bytes += meta.len();
                }
                newest = newest.max(meta.modified().ok());
            }
            if let Some(t) = newest {
                oldest = Some(oldest.map_or(t, |o: SystemTime| o.min(t)));
            }
        }
        self.backlog_episodes.set(count);
        self.backlog_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.oldest_pending_age.set(oldest.map_or(0.0, |t| {
            now.duration_since(t).unwrap_or_default().as_secs_f64()
        }));
        self.quarantined
            .set(dirs(&data_dir.join("quarantine")).count() as i64);
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
        m.episode("stored");
        m.upload(10, 10, Duration::from_millis(3));
        let text = m.render();
        for name in [
            "labship_build_info{",
            "labship_shipper_episodes_total{result=\"stored\"} ",
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
