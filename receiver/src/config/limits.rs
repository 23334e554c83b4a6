//! The `[limits]` table: its keys and defaults, and the checks that hold
//! them to each other (a per-source cap under the total, the ClientHello
//! inside the handshake, a rate window no shorter than the idle timeout).

use super::{ConfigError, RateFloor};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "d_max_episode")]
    pub(super) max_episode_bytes: u64,
    #[serde(default = "d_max_unpacked")]
    pub(super) max_unpacked_bytes: u64,
    #[serde(default = "d_max_uploads")]
    pub(super) max_concurrent_uploads: usize,
    #[serde(default = "d_max_connections")]
    pub(super) max_connections: usize,
    /// `None`: the default, capped at `max_connections`.
    #[serde(default)]
    pub(super) max_connections_per_address: Option<usize>,
    /// `None`: the default, capped at `handshake_timeout_s`.
    #[serde(default)]
    pub(super) client_hello_timeout_s: Option<u64>,
    #[serde(default = "d_handshake")]
    pub(super) handshake_timeout_s: u64,
    #[serde(default = "d_header")]
    pub(super) header_timeout_s: u64,
    #[serde(default = "d_body_idle")]
    pub(super) body_idle_timeout_s: u64,
    #[serde(default = "d_min_rate")]
    pub(super) min_upload_rate_bytes_per_s: u64,
    #[serde(default = "d_min_rate_window")]
    pub(super) min_upload_rate_window_s: u64,
    #[serde(default = "d_upload_expiry")]
    pub(super) upload_expiry_s: u64,
    #[serde(default = "d_max_partial_uploads")]
    pub(super) max_partial_uploads: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_episode_bytes: d_max_episode(),
            max_unpacked_bytes: d_max_unpacked(),
            max_concurrent_uploads: d_max_uploads(),
            max_connections: d_max_connections(),
            max_connections_per_address: None,
            client_hello_timeout_s: None,
            handshake_timeout_s: d_handshake(),
            header_timeout_s: d_header(),
            body_idle_timeout_s: d_body_idle(),
            min_upload_rate_bytes_per_s: d_min_rate(),
            min_upload_rate_window_s: d_min_rate_window(),
            upload_expiry_s: d_upload_expiry(),
            max_partial_uploads: d_max_partial_uploads(),
        }
    }
}

fn d_max_episode() -> u64 {
    64 << 30
}
fn d_max_unpacked() -> u64 {
    256 << 30
}
fn d_max_uploads() -> usize {
    16
}
fn d_max_connections() -> usize {
    1024
}
/// A quarter of `max_connections`: one address (a flood, a runaway client)
/// can never hold every slot, and a lab behind one NAT address or in one
/// IPv6 /64 still fits (a shipper holds about six connections at most, so
/// some forty hosts). Behind a load balancer every connection comes from it:
/// set 0 (off) there and limit per source in the balancer.
fn d_max_connections_per_address() -> usize {
    256
}
/// How long a new TCP connection may sit before its TLS ClientHello is in:
/// a ClientHello is one small flight, so a few seconds cover a lossy link
/// with retransmits, and a silent socket frees its slot soon.
fn d_client_hello() -> u64 {
    5
}
fn d_handshake() -> u64 {
    10
}
fn d_header() -> u64 {
    30
}
fn d_body_idle() -> u64 {
    60
}
/// Far below any real link (a lab on a bad 10 kB/s link, shared by four
/// uploads, still sends 2.5 kB/s each) and far above a byte a minute.
fn d_min_rate() -> u64 {
    512
}
fn d_min_rate_window() -> u64 {
    60
}
/// A day: a lab link down overnight still resumes in the morning.
fn d_upload_expiry() -> u64 {
    86_400
}
/// The longest a partial upload may wait for its next append: 30 days.
const MAX_UPLOAD_EXPIRY_S: u64 = 30 * 86_400;
/// The most `limits.max_concurrent_uploads` may be (see its check).
const MAX_CONCURRENT_UPLOADS: usize = 128;
fn d_max_partial_uploads() -> usize {
    256
}

/// `Err` naming `key` when `v` is 0.
fn positive(
    err: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    v: u64,
) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(err(key, "must be greater than 0".into()))
    } else {
        Ok(v)
    }
}

/// `max_episode_bytes`, `max_unpacked_bytes`, `max_concurrent_uploads`.
pub(super) fn check_upload_sizes(
    l: &RawLimits,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    positive(err, "limits.max_episode_bytes", l.max_episode_bytes)?;
    positive(err, "limits.max_unpacked_bytes", l.max_unpacked_bytes)?;
    positive(
        err,
        "limits.max_concurrent_uploads",
        l.max_concurrent_uploads as u64,
    )?;
    // Each upload in flight holds a blocking thread (its validator) and
    // may leave one idle behind it (a resumable upload's session, kept
    // for its next append): both must fit well under tokio's pool of 512.
    if l.max_concurrent_uploads > MAX_CONCURRENT_UPLOADS {
        return Err(err(
            "limits.max_concurrent_uploads",
            format!(
                "{} is more than {MAX_CONCURRENT_UPLOADS} (each upload holds a validator thread and may keep one for its next append); lower it",
                l.max_concurrent_uploads
            ),
        ));
    }
    Ok(())
}

/// What a connection may hold and how long it may take before a request.
pub(super) struct FrontDoor {
    pub(super) max_connections_per_address: usize,
    pub(super) client_hello_timeout: Duration,
    pub(super) handshake_timeout: Duration,
}

/// `max_connections`, `max_connections_per_address`, `handshake_timeout_s`,
/// `client_hello_timeout_s`.
pub(super) fn front_door(
    l: &RawLimits,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<FrontDoor, ConfigError> {
    positive(err, "limits.max_connections", l.max_connections as u64)?;
    // An explicit value must fit under its enclosing limit; the default
    // shrinks to fit a small one; 0 turns the per-source cap off.
    let max_connections_per_address = match l.max_connections_per_address {
        None => d_max_connections_per_address().min(l.max_connections),
        Some(0) => l.max_connections,
        Some(n) if n > l.max_connections => {
            return Err(err(
                "limits.max_connections_per_address",
                format!(
                    "{n} is more than limits.max_connections ({})",
                    l.max_connections
                ),
            ));
        }
        Some(n) => n,
    };
    let handshake_s = positive(err, "limits.handshake_timeout_s", l.handshake_timeout_s)?;
    let client_hello_s = match l.client_hello_timeout_s {
        None => d_client_hello().min(handshake_s),
        Some(s) if s > handshake_s => {
            return Err(err(
                "limits.client_hello_timeout_s",
                format!(
                    "{s} is longer than limits.handshake_timeout_s ({handshake_s}), which includes it"
                ),
            ));
        }
        Some(s) => positive(err, "limits.client_hello_timeout_s", s)?,
    };
    Ok(FrontDoor {
        max_connections_per_address,
        client_hello_timeout: Duration::from_secs(client_hello_s),
        handshake_timeout: Duration::from_secs(handshake_s),
    })
}

/// `min_upload_rate_bytes_per_s` (0 = no floor) over
/// `min_upload_rate_window_s`.
pub(super) fn min_upload_rate(
    l: &RawLimits,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<RateFloor>, ConfigError> {
    Ok(match l.min_upload_rate_bytes_per_s {
        0 => None,
        // A window shorter than the idle timeout would cut an ordinary
        // stall (retransmits on a lossy link) that the idle timeout
        // exists to allow.
        _ if l.min_upload_rate_window_s < l.body_idle_timeout_s => {
            return Err(err(
                "limits.min_upload_rate_window_s",
                format!(
                    "{} is shorter than limits.body_idle_timeout_s ({}): a stall the idle timeout allows would be cut",
                    l.min_upload_rate_window_s, l.body_idle_timeout_s
                ),
            ));
        }
        bytes_per_s => Some(RateFloor {
            bytes_per_s,
            window: Duration::from_secs(positive(
                err,
                "limits.min_upload_rate_window_s",
                l.min_upload_rate_window_s,
            )?),
        }),
    })
}

/// `header_timeout_s` and `body_idle_timeout_s`.
pub(super) fn request_timeouts(
    l: &RawLimits,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<(Duration, Duration), ConfigError> {
    let header = positive(err, "limits.header_timeout_s", l.header_timeout_s)?;
    let body_idle = positive(err, "limits.body_idle_timeout_s", l.body_idle_timeout_s)?;
    Ok((Duration::from_secs(header), Duration::from_secs(body_idle)))
}

/// `upload_expiry_s` (at most [`MAX_UPLOAD_EXPIRY_S`]) and
/// `max_partial_uploads`.
pub(super) fn partial_uploads(
    l: &RawLimits,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<(u64, usize), ConfigError> {
    let expiry_s = match positive(err, "limits.upload_expiry_s", l.upload_expiry_s)? {
        s if s > MAX_UPLOAD_EXPIRY_S => {
            return Err(err(
                "limits.upload_expiry_s",
                format!("{s} is more than {MAX_UPLOAD_EXPIRY_S} (30 days); lower it"),
            ));
        }
        s => s,
    };
    let max_partial = positive(
        err,
        "limits.max_partial_uploads",
        l.max_partial_uploads as u64,
    )? as usize;
    Ok((expiry_s, max_partial))
}
