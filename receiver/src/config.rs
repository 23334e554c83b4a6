//! `receiver.toml`: the raw serde form (unknown keys rejected, named defaults) and
//! the validated runtime [`Config`]. Every error names the file and the key.
//!
//! Keys beyond CONTRACT §8 (all optional, documented in docs/protocol.md):
//! `tls.crl_file`, `limits.max_connections`,
//! `limits.max_connections_per_address`, `limits.client_hello_timeout_s`,
//! `limits.handshake_timeout_s`, `limits.header_timeout_s`,
//! `limits.body_idle_timeout_s`, `limits.min_upload_rate_bytes_per_s`,
//! `limits.min_upload_rate_window_s`, `limits.upload_expiry_s`,
//! `limits.max_partial_uploads`.
//!
//! The `[limits]` keys and their checks are in `limits`, the `[storage]`
//! ones in `storage`. [`Config::warnings`] lists what is valid but risky
//! (said at start and by `receiver --check-config`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/labship/receiver.toml";

pub use labship_sys::config::ConfigError;
use limits::RawLimits;
use storage::RawStorage;
pub use storage::S3Config;

mod limits;
mod storage;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "d_listen")]
    listen: String,
    tls: Option<RawTls>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    gate: RawGate,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    ops: RawOps,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: PathBuf,
    #[serde(default)]
    crl_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    tokens_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    #[serde(default = "d_allowed_commits")]
    allowed_commits_file: PathBuf,
    #[serde(default = "d_remediation")]
    remediation: String,
}

impl Default for RawGate {
    fn default() -> Self {
        Self {
            allowed_commits_file: d_allowed_commits(),
            remediation: d_remediation(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    #[serde(default = "d_ops_listen")]
    listen: String,
    #[serde(default = "d_audit")]
    audit_log: PathBuf,
}

impl Default for RawOps {
    fn default() -> Self {
        Self {
            listen: d_ops_listen(),
            audit_log: d_audit(),
        }
    }
}

fn d_listen() -> String {
    "0.0.0.0:8443".into()
}
fn d_allowed_commits() -> PathBuf {
    "/etc/labship/allowed-commits".into()
}
fn d_remediation() -> String {
    "cd /opt/labship && git pull && sudo ./scripts/install-lab-host.sh".into()
}
fn d_ops_listen() -> String {
    "127.0.0.1:9464".into()
}
fn d_audit() -> PathBuf {
    "/var/lib/labship-receiver/audit.jsonl".into()
}

/// TLS material, paths resolved; the files are read by [`crate::tls`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `None` only when bearer tokens are configured (TLS then authenticates the
    /// server only and hosts present tokens).
    pub client_ca_file: Option<PathBuf>,
    /// PEM CRLs for the client CAs (`tls.crl_file`); needs `client_ca_file`.
    pub crl_file: Option<PathBuf>,
}

/// The slowest a request body may arrive: at least `bytes_per_s` on average
/// over every `window` of waiting for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFloor {
    pub bytes_per_s: u64,
    pub window: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub file: PathBuf,
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub tokens_file: Option<PathBuf>,
    /// The fs store's directory; with `s3`, the local scratch spool's parent.
    pub storage_dir: PathBuf,
    /// `Some` when `storage.kind = "s3"`.
    pub s3: Option<S3Config>,
    pub allowed_commits_file: PathBuf,
    pub remediation: Option<String>,
    pub max_episode_bytes: u64,
    pub max_unpacked_bytes: u64,
    pub max_concurrent_uploads: usize,
    pub max_connections: usize,
    /// Open connections from one source: an IPv4 address, an IPv6 /64.
    pub max_connections_per_address: usize,
    /// From accept until the TLS ClientHello is read.
    pub client_hello_timeout: Duration,
    /// From accept until the TLS handshake is done (the ClientHello included).
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
    /// `None` when `limits.min_upload_rate_bytes_per_s = 0`.
    pub min_upload_rate: Option<RateFloor>,
    /// `limits.upload_expiry_s`: a partial upload is removed this long after
    /// its last append (CONTRACT §9).
    pub upload_expiry_s: u64,
    /// `limits.max_partial_uploads`: more get 503 `busy`.
    pub max_partial_uploads: usize,
    pub ops_listen: SocketAddr,
    pub audit_log: PathBuf,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = labship_sys::config::read(path)?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against
    /// `path`'s directory). Keys are judged in a fixed order (not their order
    /// in the file); the first bad one is named.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = labship_sys::config::parse_toml(path, text)?;
        let resolve = |p: &Path| labship_sys::config::resolve(path, p);
        let err = |key: &str, why: String| ConfigError::new(path, key, why);
        let addr = |key: &str, s: &str| {
            s.parse::<SocketAddr>().map_err(|_| {
                err(
                    key,
                    format!("{s:?} is not an address:port such as 0.0.0.0:8443"),
                )
            })
        };

        let listen = addr("listen", &raw.listen)?;
        let tokens_file =
            (!raw.auth.tokens_file.as_os_str().is_empty()).then(|| resolve(&raw.auth.tokens_file));
        let tls = tls_files(raw.tls, listen, tokens_file.is_some(), &resolve, &err)?;
        let s3 = storage::s3_if_chosen(&raw.storage, &err)?;
        let l = &raw.limits;
        limits::check_upload_sizes(l, &err)?;
        let front_door = limits::front_door(l, &err)?;
        let min_upload_rate = limits::min_upload_rate(l, &err)?;
        let ops_listen = addr("ops.listen", &raw.ops.listen)?;
        let (header_timeout, body_idle_timeout) = limits::request_timeouts(l, &err)?;
        let (upload_expiry_s, max_partial_uploads) = limits::partial_uploads(l, &err)?;
        let remediation = raw.gate.remediation.trim();
        Ok(Self {
            file: path.to_owned(),
            listen,
            tls,
            tokens_file,
            storage_dir: resolve(&raw.storage.dir),
            s3,
            allowed_commits_file: resolve(&raw.gate.allowed_commits_file),
            remediation: (!remediation.is_empty()).then(|| remediation.to_owned()),
            max_episode_bytes: l.max_episode_bytes,
            max_unpacked_bytes: l.max_unpacked_bytes,
            max_concurrent_uploads: l.max_concurrent_uploads,
            max_connections: l.max_connections,
            max_connections_per_address: front_door.max_connections_per_address,
            client_hello_timeout: front_door.client_hello_timeout,
            handshake_timeout: front_door.handshake_timeout,
            header_timeout,
            body_idle_timeout,
            min_upload_rate,
            upload_expiry_s,
            max_partial_uploads,
            ops_listen,
            audit_log: resolve(&raw.ops.audit_log),
        })
    }
}

impl Config {
    /// What is valid but risky, each naming the file and the key. The daemon
    /// logs them at start; `receiver --check-config` prints them.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if !self.ops_listen.ip().to_canonical().is_loopback() {
            out.push(ConfigError::new(
                &self.file,
                "ops.listen",
                format!(
                    "{} is not a loopback address: /healthz and /metrics are plain HTTP without authentication, so anyone who can reach it reads the receiver's metrics; keep it on 127.0.0.1 or behind a firewall that admits only the monitoring hosts",
                    self.ops_listen
                ),
            ));
        }
        out
    }
}

/// The `[tls]` table, paths resolved: none is plain HTTP, allowed on loopback
/// only; hosts authenticate by client certificate unless bearer tokens are
/// configured.
fn tls_files(
    raw: Option<RawTls>,
    listen: SocketAddr,
    has_tokens: bool,
    resolve: &impl Fn(&Path) -> PathBuf,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<TlsFiles>, ConfigError> {
    Ok(match raw {
        None => {
            if !listen.ip().is_loopback() {
                return Err(err(
                    "listen",
                    format!(
                        "{listen} is not a loopback address, and plain HTTP (no [tls] table) is only allowed on loopback; add a [tls] table or listen on 127.0.0.1"
                    ),
                ));
            }
            None
        }
        Some(t) => {
            let client_ca_file =
                (!t.client_ca_file.as_os_str().is_empty()).then(|| resolve(&t.client_ca_file));
            if client_ca_file.is_none() && !has_tokens {
                return Err(err(
                    "tls.client_ca_file",
                    "is required (hosts authenticate by client certificate) unless auth.tokens_file is set".into(),
                ));
            }
            let crl_file = (!t.crl_file.as_os_str().is_empty()).then(|| resolve(&t.crl_file));
            if crl_file.is_some() && client_ca_file.is_none() {
                return Err(err(
                    "tls.crl_file",
                    "needs tls.client_ca_file: CRLs revoke client certificates, and none are verified without a client CA".into(),
                ));
            }
            Some(TlsFiles {
                cert_file: resolve(&t.cert_file),
                key_file: resolve(&t.key_file),
                client_ca_file,
                crl_file,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/labship/receiver.toml"), text)
    }

    const TLS: &str =
        "[tls]\ncert_file = \"r.pem\"\nkey_file = \"r.key\"\nclient_ca_file = \"/x/ca.pem\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(TLS).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/labship/r.pem"));
        assert_eq!(tls.client_ca_file.unwrap(), Path::new("/x/ca.pem"));
        assert_eq!(c.max_concurrent_uploads, 16);
        assert_eq!(c.ops_listen.to_string(), "127.0.0.1:9464");
        assert!(c.remediation.unwrap().contains("install-lab-host.sh"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = parse(&format!("{TLS}[limits]\nmax_concurent_uploads = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/labship/receiver.toml: "), "{e}");
        assert!(e.contains("max_concurent_uploads"), "{e}");
        let e = parse("listen = \"0.0.0.0:80\"\n").unwrap_err().to_string();
        assert!(e.contains(": listen: ") && e.contains("loopback"), "{e}");
        let e = parse(&format!("{TLS}[storage]\nkind = \"nfs\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.kind"), "{e}");
        let e = parse("[tls]\ncert_file = \"a\"\nkey_file = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.client_ca_file"), "{e}");
        let e = parse(&format!("{TLS}[limits]\nmax_concurrent_uploads = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.max_concurrent_uploads: must be greater than 0"),
            "{e}"
        );
        let e = parse(&format!("{TLS}[limits]\nmax_concurrent_uploads = 300\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.max_concurrent_uploads: 300 is more than 128"),
            "{e}"
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse(include_str!("../../etc/receiver.toml.example")).unwrap();
        assert_eq!(c.max_episode_bytes, 64 << 30);
        assert_eq!(
            c.tls.unwrap().client_ca_file.unwrap(),
            Path::new("/etc/labship/ca.pem")
        );
    }

    #[test]
    fn s3_storage() {
        let c = parse(&format!(
            "{TLS}[storage]\nkind = \"s3\"\nbucket = \"episodes\"\nprefix = \"lab/\"\nendpoint = \"http://127.0.0.1:8333\"\nallow_http = true\n"
        ))
        .unwrap();
        let s3 = c.s3.unwrap();
        assert_eq!(s3.bucket, "episodes");
        assert_eq!(s3.prefix, "lab/");
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        for (extra, key) in [
            ("", "storage.bucket"),
            (
                "bucket = \"b\"\nendpoint = \"http://s3:8333\"\n",
                "storage.allow_http",
            ),
            ("bucket = \"b\"\nprefix = \"/x\"\n", "storage.prefix"),
            ("bucket = \"b\"\nendpont = \"https://s3\"\n", "endpont"),
        ] {
            let e = parse(&format!("{TLS}[storage]\nkind = \"s3\"\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        assert!(parse(TLS).unwrap().s3.is_none());
    }

    #[test]
    fn plain_http_on_loopback_is_allowed() {
        let c = parse("listen = \"127.0.0.1:0\"\n").unwrap();
        assert!(c.tls.is_none());
    }

    #[test]
    fn front_door_limits_defaults_and_validation() {
        let c = parse(TLS).unwrap();
        assert_eq!(c.max_connections_per_address, 256);
        assert_eq!(c.client_hello_timeout, Duration::from_secs(5));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(
            c.min_upload_rate,
            Some(RateFloor {
                bytes_per_s: 512,
                window: Duration::from_secs(60)
            })
        );
        assert!(c.tls.unwrap().crl_file.is_none());
        // Defaults shrink to fit smaller enclosing limits set explicitly.
        let c = parse(&format!(
            "{TLS}[limits]\nmax_connections = 4\nhandshake_timeout_s = 1\n"
        ))
        .unwrap();
        assert_eq!(c.max_connections_per_address, 4);
        assert_eq!(c.client_hello_timeout, Duration::from_secs(1));
        let c = parse(&format!("{TLS}[limits]\nmax_connections_per_address = 0\n")).unwrap();
        assert_eq!(c.max_connections_per_address, 1024, "0 turns the cap off");
        let c = parse(&format!("{TLS}[limits]\nmin_upload_rate_bytes_per_s = 0\n")).unwrap();
        assert_eq!(c.min_upload_rate, None, "0 turns the floor off");
        for (limits, key) in [
            (
                "min_upload_rate_window_s = 5",
                "limits.min_upload_rate_window_s: 5 is shorter than limits.body_idle_timeout_s",
            ),
            (
                "max_connections_per_address = 2000",
                "limits.max_connections_per_address: 2000 is more than limits.max_connections (1024)",
            ),
            (
                "client_hello_timeout_s = 0",
                "limits.client_hello_timeout_s: must be greater than 0",
            ),
            (
                "client_hello_timeout_s = 11",
                "limits.client_hello_timeout_s: 11 is longer than limits.handshake_timeout_s (10)",
            ),
            (
                "min_upload_rate_window_s = 0",
                "limits.min_upload_rate_window_s: 0 is shorter than",
            ),
            (
                "min_upload_rate_bytes_per_s = -1",
                "min_upload_rate_bytes_per_s",
            ),
        ] {
            let e = parse(&format!("{TLS}[limits]\n{limits}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{limits}: {e}");
        }
    }

    #[test]
    fn resumable_upload_limits() {
        let c = parse(TLS).unwrap();
        assert_eq!((c.upload_expiry_s, c.max_partial_uploads), (86_400, 256));
        let c = parse(&format!(
            "{TLS}[limits]\nupload_expiry_s = 60\nmax_partial_uploads = 3\n"
        ))
        .unwrap();
        assert_eq!((c.upload_expiry_s, c.max_partial_uploads), (60, 3));
        for (limits, key) in [
            (
                "upload_expiry_s = 0",
                "limits.upload_expiry_s: must be greater than 0",
            ),
            (
                "max_partial_uploads = 0",
                "limits.max_partial_uploads: must be greater than 0",
            ),
            ("upload_expiry = 5", "unknown field `upload_expiry`"),
            (
                "upload_expiry_s = 9223372036854775807",
                "limits.upload_expiry_s: 9223372036854775807 is more than 2592000 (30 days)",
            ),
        ] {
            let e = parse(&format!("{TLS}[limits]\n{limits}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{limits}: {e}");
        }
    }

    #[test]
    fn crl_file_resolves_and_needs_a_client_ca() {
        let c = parse(&format!("{TLS}crl_file = \"crl.pem\"\n")).unwrap();
        assert_eq!(
            c.tls.unwrap().crl_file.unwrap(),
            Path::new("/etc/labship/crl.pem")
        );
        let e = parse(
            "[tls]\ncert_file = \"a\"\nkey_file = \"b\"\ncrl_file = \"crl.pem\"\n[auth]\ntokens_file = \"t\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls.crl_file: needs tls.client_ca_file"), "{e}");
    }

    #[test]
    fn a_non_loopback_ops_listener_is_a_warning_naming_the_key() {
        assert!(parse(TLS).unwrap().warnings().is_empty());
        for listen in ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464"] {
            let c = parse(&format!("{TLS}[ops]\nlisten = \"{listen}\"\n")).unwrap();
            let w: Vec<String> = c.warnings().iter().map(|w| w.to_string()).collect();
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(
                w[0].starts_with("/etc/labship/receiver.toml: ops.listen: ")
                    && w[0].contains("not a loopback address")
                    && w[0].contains("without authentication"),
                "{w:?}"
            );
        }
        for listen in ["127.0.0.1:9464", "[::1]:9464", "[::ffff:127.0.0.1]:9464"] {
            let c = parse(&format!("{TLS}[ops]\nlisten = \"{listen}\"\n")).unwrap();
            assert!(c.warnings().is_empty(), "{listen}");
        }
    }
}
