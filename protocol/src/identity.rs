//! Which host a client certificate names (CONTRACT §4): its subject CN, or
//! without one its first DNS subjectAltName. The receiver authenticates by
//! it; the shipper's `--check-config` checks `host_id` against it.
//!
//! And when a certificate expires ([`expiry`]): the one verdict (expired,
//! expiring within [`EXPIRY_WARNING`], valid) both daemons' checks give.

use std::time::{Duration, SystemTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// How close to its notAfter a certificate is worth a warning (CONTRACT
/// §11: 14 days).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// What a certificate's notAfter means at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// Within [`EXPIRY_WARNING`]: worth a warning; `left` until notAfter.
    ExpiresSoon {
        left: Duration,
    },
    Expired,
}

/// A certificate's expiry: who it is, when it ends, what that means now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The subject DN, for messages (`CN=lab-01`).
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    pub verdict: Verdict,
}

impl Expiry {
    /// notAfter as RFC 3339 (`2031-06-01T00:00:00Z`).
    pub fn until(&self) -> String {
        rfc3339(self.not_after)
    }
}

/// The expiry of `cert` at `now`.
pub fn expiry(cert: &X509Certificate<'_>, now: SystemTime) -> Expiry {
    let not_after = cert.validity().not_after.timestamp();
    let left = not_after - unix_seconds(now);
    let verdict = if left <= 0 {
        Verdict::Expired
    } else if (left as u64) < EXPIRY_WARNING.as_secs() {
        Verdict::ExpiresSoon {
            left: Duration::from_secs(left as u64),
        }
    } else {
        Verdict::Valid
    };
    Expiry {
        subject: cert.subject().to_string(),
        not_after,
        verdict,
    }
}

/// [`expiry`] of a DER certificate; `Err` when it does not parse.
pub fn expiry_of_der(der: &[u8], now: SystemTime) -> Result<Expiry, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| expiry(&cert, now))
        .map_err(|e| format!("unparsable certificate: {e}"))
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as RFC 3339 (the epoch for a negative time).
pub fn rfc3339(s: i64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64))
        .to_string()
}

/// The host id `cert` names; `Err` says why none can be read.
pub fn host_id(cert: &X509Certificate<'_>) -> Result<String, String> {
    if let Some(cn) = cert.subject().iter_common_name().next() {
        return cn
            .as_str()
            .map(str::to_owned)
            .map_err(|e| format!("client certificate CN is not a string: {e}"));
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return Ok((*dns).to_owned());
            }
        }
    }
    Err("client certificate has neither a subject CN nor a DNS subjectAltName".into())
}
