//! Prometheus metrics served on the ops listener at `/metrics`.
//!
//! All names start with `labship_`; CONTRACT §11 lists the ones operators and
//! the alert rules (`etc/prometheus/`) rely on, docs/operations.md all of
//! them. The registry is built once; handlers hold cheap clones of the
//! individual metric handles. The fleet's metrics (CONTRACT §11: builds,
//! PUT answers, per-host facts, TLS and reload failures) are in `fleet`.

use crate::fleet::FleetMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// What CONTRACT §11 names (see `fleet`).
    pub fleet: FleetMetrics,
}

/// Registers `metric` under `name` and hands it back.
pub(crate) fn reg<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// `tls`: the receiver serves TLS (see
    /// [`FleetMetrics::server_cert_expiry`]).
    pub fn new(tls: bool) -> Self {
        let mut r = Registry::with_prefix("labship");
        let r = &mut r;
        let store_seconds: HistogramFamily<StoreOpLabels> =
            Family::new_with_constructor(store_histogram);
        Self {
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
            fleet: FleetMetrics::register(r, tls),
            // The prefix is applied when encoding: keep it with the metrics.
            registry: std::mem::replace(r, Registry::with_prefix("labship")),
        }
    }

    /// The OpenMetrics text exposition (what prometheus_client writes).
    pub fn render(&self) -> String {
        labship_sys::metrics::encode(&self.registry)
    }

    /// The exposition a request's `Accept` header asks for, with its
    /// Content-Type ([`labship_sys::metrics::encode_for`]).
    pub fn negotiate(&self, accept: Option<&str>) -> (&'static str, String) {
        labship_sys::metrics::encode_for(&self.registry, accept)
    }
}
