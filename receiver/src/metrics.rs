//! Prometheus metrics served on the ops listener at `/metrics`.
//!
//! All names start with `labship_`. The registry is built once; handlers hold
//! cheap clones of the individual metric handles.

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
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("labship");
        let requests = Family::<RequestLabels, Counter>::default();
        let received_bytes = Counter::default();
        let upload_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let uploads_in_flight = Gauge::default();
        let gate_commits = Gauge::default();
        let storage_errors = Counter::default();
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        let store_seconds: HistogramFamily<StoreOpLabels> =
            Family::new_with_constructor(store_histogram);
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "store_operation_duration_seconds",
            "Duration of object store operations (storage.kind = \"s3\") by operation",
            store_seconds.clone(),
        );
        registry.register(
            "store_operation_errors",
            "Object store operations that failed, by operation and kind",
            store_errors.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "received_bytes",
            "Archive bytes received in PUT bodies",
            received_bytes.clone(),
        );
        registry.register(
            "upload_duration_seconds",
            "Duration of PUT requests that read a body",
            upload_seconds.clone(),
        );
        registry.register(
            "uploads_in_flight",
            "PUT bodies being received now",
            uploads_in_flight.clone(),
        );
        registry.register(
            "gate_commits",
            "Commits in the loaded allowed-commits set",
            gate_commits.clone(),
        );
        registry.register(
            "storage_errors",
            "Store operations that failed",
            storage_errors.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because limits.max_connections was reached",
            connections_refused.clone(),
        );
        Self {
            registry,
            requests,
            received_bytes,
            upload_seconds,
            uploads_in_flight,
            gate_commits,
            storage_errors,
            connections_open,
            connections_refused,
            store_seconds,
            store_errors,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
