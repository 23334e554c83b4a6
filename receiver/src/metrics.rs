//! Prometheus metrics served on the ops listener at `/metrics`.
//!
//! All names start with `labship_`; CONTRACT §11 lists the ones operators and
//! the alert rules (`etc/prometheus/`) rely on, docs/operations.md all of
//! them. The registry is built once; handlers hold cheap clones of the
//! individual metric handles. What is learned per lab host (its shipper's
//! version, its certificate's expiry) is recorded by `fleet`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

/// One object store operation (`storage.kind = "s3"`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub op: &'static str,
    /// `unavailable` (throttled, 5xx, unreachable), `denied`, `other`.
    pub kind: &'static str,
}

/// `labship_build_info`, and one host's `labship_host_shipper_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
    pub commit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShipperInfoLabels {
    pub host_id: String,
    pub version: String,
    pub commit: String,
}

/// Every PUT answer: the status and the contract's error code (`""` for
/// 200/201).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadLabels {
    pub status: u16,
    pub error: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The bounded set of `labship_tls_handshake_failures_total{reason}`, all
/// exported from the start (at 0) so a rate is defined before the first one.
pub const HANDSHAKE_FAILURE_REASONS: &[&str] = &[
    "no_client_cert",
    "bad_certificate",
    "expired",
    "revoked",
    "protocol",
    "timeout",
    "other",
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn store_histogram() -> Histogram {
    // 1 ms .. about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub received_bytes: Counter,
    pub upload_seconds: Histogram,
    pub uploads_in_flight: Gauge,
    pub gate_commits: Gauge,
    pub storage_errors: Counter,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub store_seconds: HistogramFamily<StoreOpLabels>,
    pub store_errors: Family<StoreErrorLabels, Counter>,
    pub build_info: Family<VersionLabels, Gauge>,
    pub uploads: Family<UploadLabels, Counter>,
    /// Bytes of archives stored (201).
    pub upload_bytes: Counter,
    /// Sizes of archives stored (201).
    pub archive_bytes: Histogram,
    pub host_last_stored: Family<HostLabels, Gauge>,
    pub host_cert_expiry: Family<HostLabels, Gauge>,
    pub host_shipper_info: Family<ShipperInfoLabels, Gauge>,
    /// The version each host was last seen with, so that a new one replaces
    /// its series (one host, one info series at 1).
    pub(crate) shipper_seen: Mutex<HashMap<String, VersionLabels>>,
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    pub gate_reload_failures: Counter,
    pub tls_reload_failures: Counter,
    pub tokens_reload_failures: Counter,
    pub server_cert_expiry: Gauge,
    /// Resumable uploads (CONTRACT §9) held open: 0 until they land.
    pub partial_uploads: Gauge,
}

/// Registers `metric` under `name` and hands it back.
fn reg<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("labship");
        let r = &mut r;
        let store_seconds: HistogramFamily<StoreOpLabels> =
            Family::new_with_constructor(store_histogram);
        let metrics = Self {
            store_seconds: reg(
                r,
                "store_operation_duration_seconds",
                "Duration of object store operations (storage.kind = \"s3\") by operation",
                store_seconds,
            ),
            store_errors: reg(
                r,
                "store_operation_errors",
                "Object store operations that failed, by operation and kind",
                Family::default(),
            ),
            requests: reg(
                r,
                "requests",
                "HTTP requests by route and status",
                Family::default(),
            ),
            received_bytes: reg(
                r,
                "received_bytes",
                "Archive bytes received in PUT bodies",
                Counter::default(),
            ),
            upload_seconds: reg(
                r,
                "upload_duration_seconds",
                "Duration of PUT requests that read a body",
                Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            ),
            uploads_in_flight: reg(
                r,
                "uploads_in_flight",
                "PUT bodies being received now",
                Gauge::default(),
            ),
            gate_commits: reg(
                r,
                "gate_commits",
                "Commits in the loaded allowed-commits set",
                Gauge::default(),
            ),
            storage_errors: reg(
                r,
                "storage_errors",
                "Store operations that failed",
                Counter::default(),
            ),
            connections_open: reg(
                r,
                "connections_open",
                "Client connections open now",
                Gauge::default(),
            ),
            connections_refused: reg(
                r,
                "connections_refused",
                "Connections closed at once because limits.max_connections was reached",
                Counter::default(),
            ),
            build_info: reg(
                r,
                "build_info",
                "The receiver's version and the git commit it was built from (always 1)",
                Family::default(),
            ),
            uploads: reg(
                r,
                "uploads",
                "PUT answers by status and error code (\"\" for 200 and 201)",
                Family::default(),
            ),
            upload_bytes: reg(
                r,
                "upload_bytes",
                "Bytes of archives stored (201)",
                Counter::default(),
            ),
            archive_bytes: reg(
                r,
                "archive_size_bytes",
                "Sizes of archives stored (201)",
                // 4 KiB .. 128 GiB.
                Histogram::new(exponential_buckets(4096.0, 4.0, 13)),
            ),
            host_last_stored: reg(
                r,
                "host_last_stored_timestamp_seconds",
                "When the host's last archive was stored (201), Unix seconds",
                Family::default(),
            ),
            host_cert_expiry: reg(
                r,
                "host_client_cert_expiry_timestamp_seconds",
                "notAfter of the client certificate the host last authenticated with, Unix seconds",
                Family::default(),
            ),
            host_shipper_info: reg(
                r,
                "host_shipper_info",
                "The shipper version and commit a host last sent in its User-Agent (1; unknown when absent)",
                Family::default(),
            ),
            shipper_seen: Mutex::new(HashMap::new()),
            tls_handshake_failures: reg(
                r,
                "tls_handshake_failures",
                "TLS handshakes that failed, by reason",
                Family::default(),
            ),
            gate_reload_failures: reg(
                r,
                "gate_reload_failures",
                "Gate file re-reads rejected (the last good set is kept)",
                Counter::default(),
            ),
            tls_reload_failures: reg(
                r,
                "tls_reload_failures",
                "SIGHUP reloads of the TLS certificate, key, client CA or CRLs rejected (the material in force is kept)",
                Counter::default(),
            ),
            tokens_reload_failures: reg(
                r,
                "tokens_reload_failures",
                "SIGHUP reloads of auth.tokens_file rejected (the previous table is kept)",
                Counter::default(),
            ),
            server_cert_expiry: reg(
                r,
                "server_cert_expiry_timestamp_seconds",
                "notAfter of the server certificate in force, Unix seconds",
                Gauge::default(),
            ),
            partial_uploads: reg(
                r,
                "partial_uploads",
                "Resumable uploads held open (always 0 until resumable uploads exist)",
                Gauge::default(),
            ),
            // The prefix is applied when encoding: keep it with the metrics.
            registry: std::mem::replace(r, Registry::with_prefix("labship")),
        };
        let (version, commit) = crate::fleet::build_info();
        metrics
            .build_info
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
                commit: commit.to_owned(),
            })
            .set(1);
        for reason in HANDSHAKE_FAILURE_REASONS {
            let _zero = metrics
                .tls_handshake_failures
                .get_or_create(&ReasonLabels { reason });
        }
        metrics
    }

    /// The OpenMetrics text exposition (what prometheus_client writes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a handshake failure; `reason` outside
    /// [`HANDSHAKE_FAILURE_REASONS`] counts as `other`.
    pub fn handshake_failed(&self, reason: &'static str) {
        let reason = if HANDSHAKE_FAILURE_REASONS.contains(&reason) {
            reason
        } else {
            "other"
        };
        self.tls_handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
