//! What the receiver learns about its fleet, as metrics (CONTRACT §11): its
//! own build, each PUT's answer, and per lab host the shipper version it
//! announces (`User-Agent: labship-shipper/VERSION (COMMIT)`), the expiry of
//! the client certificate it authenticates with and when its last archive
//! was stored.

use crate::auth::{ConnInfo, Identity};
use crate::metrics::{Metrics, reg};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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
    "crl",
    "server_cert_rejected",
    "protocol",
    "timeout",
    "other",
];

/// The metrics of CONTRACT §11 (with `labship_gate_commits`, which
/// predates them, in [`Metrics`]).
#[derive(Debug)]
pub struct FleetMetrics {
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
    /// Only with `[tls]`: a receiver serving plain HTTP (loopback behind a
    /// proxy) has no certificate, and a 0 would make the expiry alert fire
    /// forever.
    pub server_cert_expiry: Option<Gauge>,
    /// Resumable uploads (CONTRACT §9) held open: 0 until they land.
    pub partial_uploads: Gauge,
}

impl FleetMetrics {
    /// `tls`: the receiver serves TLS (the server certificate's expiry is
    /// exported only then).
    pub(crate) fn register(r: &mut Registry, tls: bool) -> Self {
        Self {
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
                // 4 KiB .. 64 GiB (4096 * 4^12).
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
                "The shipper version and commit a host last announced in its User-Agent (1; unknown until a labship shipper is seen from it)",
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
            server_cert_expiry: tls.then(|| {
                reg(
                    r,
                    "server_cert_expiry_timestamp_seconds",
                    "notAfter of the server certificate in force, Unix seconds (only with [tls])",
                    Gauge::default(),
                )
            }),
            partial_uploads: reg(
                r,
                "partial_uploads",
                "Resumable uploads held open (always 0 until resumable uploads exist)",
                Gauge::default(),
            ),
        }
        .initialized()
    }

    /// `labship_build_info` at 1, and every handshake failure reason at 0.
    fn initialized(self) -> Self {
        let build = labship_sys::build_info();
        self.build_info
            .get_or_create(&VersionLabels {
                version: build.version.to_owned(),
                commit: build.commit.to_owned(),
            })
            .set(1);
        for reason in HANDSHAKE_FAILURE_REASONS {
            let _zero = self
                .tls_handshake_failures
                .get_or_create(&ReasonLabels { reason });
        }
        self
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

const UNKNOWN: &str = "unknown";

/// The shipper version and commit a `User-Agent` announces (`unknown` for
/// a part that is absent or odd), or `None` when it is not a labship
/// shipper's (curl, a browser, nothing). Only short, plain tokens are taken:
/// a label value is chosen by the client, and a long or odd one would end up
/// in every scrape.
pub fn shipper_version(user_agent: Option<&str>) -> Option<VersionLabels> {
    let token = |s: &str| {
        (!s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+_~".contains(&b)))
        .then(|| s.to_owned())
    };
    let rest = user_agent?.trim().strip_prefix("labship-shipper/")?;
    let (version, commit) = match rest.split_once(' ') {
        Some((version, tail)) => {
            let commit = tail
                .trim()
                .strip_prefix('(')
                .and_then(|c| c.strip_suffix(')'))
                .and_then(token);
            (token(version), commit)
        }
        None => (token(rest), None),
    };
    Some(VersionLabels {
        version: version.unwrap_or_else(|| UNKNOWN.to_owned()),
        commit: commit.unwrap_or_else(|| UNKNOWN.to_owned()),
    })
}

/// An authenticated request from `identity`: records the shipper version its
/// `User-Agent` names and, for a certificate login, that certificate's
/// expiry (the latest seen; a token login removes it).
///
/// Only a labship shipper's `User-Agent` replaces the host's info series: an
/// operator's `curl --cert` with the host's certificate must not hide the
/// version its shipper runs. Another client is recorded as `unknown` only
/// for a host nothing was seen from yet.
pub fn seen(metrics: &Metrics, identity: &Identity, conn: &ConnInfo, user_agent: Option<&str>) {
    let host = &identity.host_id;
    let fleet = &metrics.fleet;
    let key = HostLabels {
        host_id: host.clone(),
    };
    if identity.method != "certificate" {
        // A host that logs in with a token has no client certificate to
        // renew: a series left from an earlier one would alert forever.
        fleet.host_cert_expiry.remove(&key);
    } else if let Some(not_after) = conn.cert_not_after {
        // The newest notAfter wins: a keep-alive connection opened with
        // the old certificate must not set the expiry back after a renewal.
        fleet
            .host_cert_expiry
            .get_or_create(&key)
            .inner()
            .fetch_max(not_after, std::sync::atomic::Ordering::Relaxed);
    }
    let announced = shipper_version(user_agent);
    let mut seen = fleet.shipper_seen.lock().unwrap_or_else(|p| p.into_inner());
    let now = match announced {
        Some(version) => version,
        None if seen.contains_key(host) => return,
        None => VersionLabels {
            version: UNKNOWN.to_owned(),
            commit: UNKNOWN.to_owned(),
        },
    };
    let before = seen.insert(host.clone(), now.clone());
    if before.as_ref() == Some(&now) {
        return;
    }
    if let Some(old) = before {
        fleet.host_shipper_info.remove(&ShipperInfoLabels {
            host_id: host.clone(),
            version: old.version,
            commit: old.commit,
        });
    }
    fleet
        .host_shipper_info
        .get_or_create(&ShipperInfoLabels {
            host_id: host.clone(),
            version: now.version,
            commit: now.commit,
        })
        .set(1);
}

/// A PUT answered `status` (with the contract's `error` code, if any) for
/// `host` (`None`: not authenticated); `stored` is the size of an archive it
/// stored (201).
pub fn put_answered(
    metrics: &Metrics,
    host: Option<&str>,
    status: u16,
    error: Option<&str>,
    stored: Option<u64>,
) {
    let fleet = &metrics.fleet;
    fleet
        .uploads
        .get_or_create(&UploadLabels {
            status,
            error: error.unwrap_or_default().to_owned(),
        })
        .inc();
    let Some(bytes) = stored else {
        return;
    };
    fleet.upload_bytes.inc_by(bytes);
    fleet.archive_bytes.observe(bytes as f64);
    if let Some(host) = host {
        fleet
            .host_last_stored
            .get_or_create(&HostLabels {
                host_id: host.to_owned(),
            })
            .set(unix_now());
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ua: Option<&str>) -> (String, String) {
        let l = shipper_version(ua).unwrap_or_else(|| VersionLabels {
            version: "none".into(),
            commit: "none".into(),
        });
        (l.version, l.commit)
    }

    #[test]
    fn user_agents_give_version_and_commit_or_unknown() {
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            v(Some("labship-shipper/0.2.0 (0123456789ab)")),
            s("0.2.0", "0123456789ab")
        );
        assert_eq!(
            v(Some("labship-shipper/0.2.0 (unknown)")),
            s("0.2.0", "unknown")
        );
        assert_eq!(v(Some("labship-shipper/0.1.0")), s("0.1.0", "unknown"));
        assert_eq!(v(Some("curl/8.0")), s("none", "none"));
        assert_eq!(v(None), s("none", "none"));
        assert_eq!(
            v(Some("labship-shipper/0.2\"} 1 (x)")),
            s("unknown", "unknown")
        );
        let long = format!("labship-shipper/{} (ab)", "9".repeat(200));
        assert_eq!(v(Some(&long)), s("unknown", "ab"));
    }

    #[test]
    fn the_client_cert_expiry_never_goes_back_and_a_token_login_removes_it() {
        let m = Metrics::new(true);
        let expiry = |m: &Metrics| {
            m.render()
                .lines()
                .find(|l| l.starts_with("labship_host_client_cert_expiry_timestamp_seconds{"))
                .map(str::to_owned)
        };
        let cert = Identity {
            host_id: "lab-01".into(),
            method: "certificate",
        };
        let conn = |not_after| ConnInfo {
            peer: ([127, 0, 0, 1], 1).into(),
            cert_host: None,
            cert_not_after: Some(not_after),
        };
        seen(&m, &cert, &conn(1_900_000_000), None);
        // Renewed, then a keep-alive connection with the old certificate.
        seen(&m, &cert, &conn(1_950_000_000), None);
        seen(&m, &cert, &conn(1_900_000_000), None);
        let line = |v: &str| {
            Some(format!(
                "labship_host_client_cert_expiry_timestamp_seconds{{host_id=\"lab-01\"}} {v}"
            ))
        };
        assert_eq!(expiry(&m), line("1950000000"));
        let token = Identity {
            host_id: "lab-01".into(),
            method: "token",
        };
        let plain = ConnInfo {
            cert_not_after: None,
            ..conn(0)
        };
        seen(&m, &token, &plain, None);
        assert_eq!(expiry(&m), None);
    }

    fn info_series(m: &Metrics) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with("labship_host_shipper_info{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn only_a_shippers_user_agent_replaces_the_hosts_info_series() {
        let m = Metrics::new(true);
        let id = Identity {
            host_id: "lab-01".into(),
            method: "certificate",
        };
        let conn = ConnInfo {
            peer: ([127, 0, 0, 1], 1).into(),
            cert_host: None,
            cert_not_after: Some(1_900_000_000),
        };
        seen(&m, &id, &conn, Some("curl/8.0"));
        assert_eq!(
            info_series(&m),
            [
                "labship_host_shipper_info{host_id=\"lab-01\",version=\"unknown\",commit=\"unknown\"} 1"
            ]
        );
        seen(&m, &id, &conn, Some("labship-shipper/0.1.0 (aaaaaaaaaaaa)"));
        seen(&m, &id, &conn, Some("labship-shipper/0.2.0 (bbbbbbbbbbbb)"));
        // An operator's curl with the host's certificate hides nothing.
        seen(&m, &id, &conn, Some("curl/8.0"));
        seen(&m, &id, &conn, None);
        assert_eq!(
            info_series(&m),
            [
                "labship_host_shipper_info{host_id=\"lab-01\",version=\"0.2.0\",commit=\"bbbbbbbbbbbb\"} 1"
            ]
        );
        assert!(m.render().contains(
            "labship_host_client_cert_expiry_timestamp_seconds{host_id=\"lab-01\"} 1900000000"
        ));
    }
}
