//! What the receiver learns about its fleet, as metrics (CONTRACT §11): its
//! own build, each PUT's answer, and per lab host the shipper version it
//! announces (`User-Agent: labship-shipper/VERSION (COMMIT)`), the expiry of
//! the client certificate it authenticates with and when its last archive
//! was stored.

use crate::auth::{ConnInfo, Identity};
use crate::metrics::{HostLabels, Metrics, ShipperInfoLabels, UploadLabels, VersionLabels};
use std::time::{SystemTime, UNIX_EPOCH};

/// The receiver's version and the git commit it was built from (`unknown`
/// when the build did not say: `LABSHIP_COMMIT` is set by the build script).
pub fn build_info() -> (&'static str, &'static str) {
    (
        env!("CARGO_PKG_VERSION"),
        option_env!("LABSHIP_COMMIT").unwrap_or("unknown"),
    )
}

const UNKNOWN: &str = "unknown";

/// The shipper version and commit a `User-Agent` announces; `unknown` for
/// what is absent or not a labship shipper's. Only short, plain tokens are
/// taken: a label value is chosen by the client, and a long or odd one would
/// end up in every scrape.
pub fn shipper_version(user_agent: Option<&str>) -> VersionLabels {
    let token = |s: &str| {
        (!s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+_~".contains(&b)))
        .then(|| s.to_owned())
    };
    let parsed = user_agent
        .and_then(|ua| ua.trim().strip_prefix("labship-shipper/"))
        .map(|rest| match rest.split_once(' ') {
            Some((version, tail)) => {
                let commit = tail
                    .trim()
                    .strip_prefix('(')
                    .and_then(|c| c.strip_suffix(')'))
                    .and_then(token);
                (token(version), commit)
            }
            None => (token(rest), None),
        });
    let (version, commit) = parsed.unwrap_or((None, None));
    VersionLabels {
        version: version.unwrap_or_else(|| UNKNOWN.to_owned()),
        commit: commit.unwrap_or_else(|| UNKNOWN.to_owned()),
    }
}

/// An authenticated request from `identity`: records the shipper version its
/// `User-Agent` names and, for a certificate login, that certificate's
/// expiry.
pub fn seen(metrics: &Metrics, identity: &Identity, conn: &ConnInfo, user_agent: Option<&str>) {
    let host = &identity.host_id;
    if identity.method == "certificate"
        && let Some(not_after) = conn.cert_not_after
    {
        metrics
            .host_cert_expiry
            .get_or_create(&HostLabels {
                host_id: host.clone(),
            })
            .set(not_after);
    }
    let now = shipper_version(user_agent);
    let mut seen = metrics
        .shipper_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let before = seen.insert(host.clone(), now.clone());
    if before.as_ref() == Some(&now) {
        return;
    }
    if let Some(old) = before {
        metrics.host_shipper_info.remove(&ShipperInfoLabels {
            host_id: host.clone(),
            version: old.version,
            commit: old.commit,
        });
    }
    metrics
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
    metrics
        .uploads
        .get_or_create(&UploadLabels {
            status,
            error: error.unwrap_or_default().to_owned(),
        })
        .inc();
    let Some(bytes) = stored else {
        return;
    };
    metrics.upload_bytes.inc_by(bytes);
    metrics.archive_bytes.observe(bytes as f64);
    if let Some(host) = host {
        metrics
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
        let l = shipper_version(ua);
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
        assert_eq!(v(Some("curl/8.0")), s("unknown", "unknown"));
        assert_eq!(v(None), s("unknown", "unknown"));
        assert_eq!(
            v(Some("labship-shipper/0.2\"} 1 (x)")),
            s("unknown", "unknown")
        );
        let long = format!("labship-shipper/{} (ab)", "9".repeat(200));
        assert_eq!(v(Some(&long)), s("unknown", "ab"));
    }

    fn info_series(m: &Metrics) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with("labship_host_shipper_info{"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_new_version_replaces_the_hosts_info_series() {
        let m = Metrics::new();
        let id = Identity {
            host_id: "lab-01".into(),
            method: "certificate",
        };
        let conn = ConnInfo {
            peer: ([127, 0, 0, 1], 1).into(),
            cert_host: None,
            cert_not_after: Some(1_900_000_000),
        };
        seen(&m, &id, &conn, Some("labship-shipper/0.1.0 (aaaaaaaaaaaa)"));
        seen(&m, &id, &conn, Some("labship-shipper/0.2.0 (bbbbbbbbbbbb)"));
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
