//! `POST /v1/ping`: the receiver's answer ([`Pong`], with the limits it
//! advertises) and what one ping says about this host's setup
//! ([`PingVerdict`]: `shipper --ping`'s line and exit code, doctor's row).

use super::{NoAnswer, Uploader, classify, redirect_text};
use crate::config::Config;
use std::time::Duration;

/// A successful ping.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Pong {
    pub host_id: String,
    pub receiver_version: String,
    pub gate: serde_json::Value,
    /// Additive: receivers that advertise their limits.
    #[serde(default)]
    pub limits: Option<PongLimits>,
}

/// The limits a receiver advertises in its ping.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct PongLimits {
    pub max_episode_bytes: Option<u64>,
    /// The most uploads the receiver takes at once, from all hosts.
    pub max_concurrent_uploads: Option<usize>,
}

/// What one authenticated ping says about this host's setup: `shipper
/// --ping` prints it, `doctor` reports it.
#[derive(Debug, Clone)]
pub enum PingVerdict {
    Ok {
        url: String,
        pong: Pong,
    },
    /// The receiver accepts the certificate but knows it as another host:
    /// every upload would answer 403.
    HostMismatch {
        url: String,
        known_as: String,
        host_id: String,
        config: String,
    },
    /// 401/403.
    Refused {
        url: String,
        host_id: String,
        status: u16,
        body: String,
    },
    /// TLS or a refused client certificate.
    TlsRefused {
        url: String,
        host_id: String,
        message: String,
    },
    Unreachable {
        url: String,
        message: String,
    },
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
}

impl PingVerdict {
    /// `shipper --ping`'s exit code (CONTRACT §5).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Ok { .. } => 0,
            Self::HostMismatch { .. } | Self::Refused { .. } | Self::TlsRefused { .. } => 3,
            Self::Unreachable { .. } => 4,
            Self::Unexpected { .. } => 5,
        }
    }
}

impl std::fmt::Display for PingVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok { url, pong } => write!(
                f,
                "ok: receiver {url} (version {}) knows this host as {}; gate {}",
                pong.receiver_version, pong.host_id, pong.gate
            ),
            Self::HostMismatch {
                url,
                known_as,
                host_id,
                config,
            } => write!(
                f,
                "refused: receiver {url} knows this certificate as host {known_as:?}, but {config} says host_id = {host_id:?}; every upload would be refused (403) — fix host_id there, or install this host's own certificate"
            ),
            Self::Refused {
                url,
                host_id,
                status,
                body,
            } => write!(
                f,
                "refused: receiver {url} answered {status} for host {host_id}: {body}"
            ),
            Self::TlsRefused {
                url,
                host_id,
                message,
            } => write!(
                f,
                "refused: TLS with receiver {url} failed for host {host_id} (check receiver.cert_file, receiver.key_file, receiver.ca_file): {message}"
            ),
            Self::Unreachable { url, message } => {
                write!(f, "unreachable: receiver {url}: {message}")
            }
            Self::Unexpected { url, status, body } => {
                write!(f, "unexpected: receiver {url} answered {status}: {body}")
            }
        }
    }
}

impl Uploader {
    /// One authenticated ping. `Err(Ok(..))` is an HTTP answer other than 200.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, Result<(u16, String), NoAnswer>> {
        let req = self
            .authorize(self.client().post(self.url("v1/ping")))
            .timeout(timeout);
        let resp = req.send().await.map_err(|e| Err(classify(&e)))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(Ok((status, redirect_text(&resp))));
        }
        let text = resp.text().await.map_err(|e| Err(classify(&e)))?;
        if status != 200 {
            return Err(Ok((status, text)));
        }
        serde_json::from_str(&text).map_err(|e| Ok((status, format!("unexpected ping body: {e}"))))
    }

    /// One ping, judged against `config` (host id included).
    pub async fn check(&self, config: &Config, timeout: Duration) -> PingVerdict {
        let url = config.url.to_string();
        let host_id = config.host_id.to_string();
        match self.ping(timeout).await {
            Ok(pong) if pong.host_id != host_id => PingVerdict::HostMismatch {
                url,
                known_as: pong.host_id,
                host_id,
                config: config.file.display().to_string(),
            },
            Ok(pong) => PingVerdict::Ok { url, pong },
            Err(Ok((status, body))) if status == 401 || status == 403 => PingVerdict::Refused {
                url,
                host_id,
                status,
                body,
            },
            Err(Ok((status, body))) => PingVerdict::Unexpected { url, status, body },
            Err(Err(NoAnswer::Auth(message))) => PingVerdict::TlsRefused {
                url,
                host_id,
                message,
            },
            Err(Err(NoAnswer::Unreachable(message))) => PingVerdict::Unreachable { url, message },
        }
    }
}
