//! `shipper.toml`: the raw serde form (unknown keys rejected, named defaults)
//! and the validated [`Config`]. Every error names the file and the key; the
//! binaries exit 2 on one (the checks, one per key, are in `judge`). `doctor`
//! reuses this loader.
//!
//! [`Paths`] is the lenient first look at the same file: the paths it names,
//! resolved as [`Config`] resolves them, known as soon as the file is TOML,
//! before anything else is judged. `shipper --check-config --print data_dir`
//! answers from it, so the installer learns `data_dir` from this parser even
//! on a first install, when the certificates are not there yet.

use labship_protocol::Id;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/labship/shipper.toml";

/// The highest zstd level the receiver's decoder window admits (see
/// docs/protocol.md: window ≤ 16 MiB).
pub const MAX_ZSTD_LEVEL: i32 = 19;

/// The most packing threads `limits.zstd_workers` may name: zstd's own
/// ceiling (`ZSTDMT_NBWORKERS_MAX` on 64-bit).
pub const MAX_ZSTD_WORKERS: u32 = 256;

pub use labship_sys::config::ConfigError;
pub use paths::Paths;

mod judge;
mod paths;

use judge::Judge;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    host_id: String,
    #[serde(default = "d_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "d_scan")]
    scan_interval_s: u64,
    #[serde(default = "d_settle")]
    settle_s: u64,
    #[serde(default = "d_level")]
    zstd_level: i32,
    receiver: RawReceiver,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    quarantine: RawQuarantine,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    ops: RawOps,
}

/// `[ops]`: `listen` unset is [`crate::ops::DEFAULT_LISTEN`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiver {
    url: String,
    #[serde(default)]
    ca_file: PathBuf,
    #[serde(default)]
    cert_file: PathBuf,
    #[serde(default)]
    key_file: PathBuf,
    #[serde(default)]
    token_file: PathBuf,
    #[serde(default = "d_connect")]
    connect_timeout_s: u64,
    #[serde(default = "d_stall")]
    stall_timeout_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "d_initial")]
    initial_backoff_s: u64,
    #[serde(default = "d_max_backoff")]
    max_backoff_s: u64,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            initial_backoff_s: d_initial(),
            max_backoff_s: d_max_backoff(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuarantine {
    #[serde(default = "d_keep_days")]
    keep_days: u64,
    #[serde(default = "d_cleanup")]
    cleanup_interval_s: u64,
}

impl Default for RawQuarantine {
    fn default() -> Self {
        Self {
            keep_days: d_keep_days(),
            cleanup_interval_s: d_cleanup(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    bwlimit: String,
    /// Signed, so a negative value is named by this key, not by serde.
    #[serde(default)]
    zstd_workers: i64,
    /// Signed, so a negative value is named by this key, not by serde.
    #[serde(default = "d_resumable_min_bytes")]
    resumable_min_bytes: i64,
}

/// `[limits] resumable_min_bytes` by default: 8 MiB (CONTRACT §10).
pub const DEFAULT_RESUMABLE_MIN_BYTES: u64 = 8 << 20;

fn d_resumable_min_bytes() -> i64 {
    DEFAULT_RESUMABLE_MIN_BYTES as i64
}

/// The defaults of a missing `[limits]` table: the same as of missing keys.
impl Default for RawLimits {
    fn default() -> Self {
        Self {
            bwlimit: String::new(),
            zstd_workers: 0,
            resumable_min_bytes: d_resumable_min_bytes(),
        }
    }
}

fn d_data_dir() -> PathBuf {
    "/var/lib/labship".into()
}
fn d_scan() -> u64 {
    5
}
fn d_settle() -> u64 {
    30
}
fn d_level() -> i32 {
    3
}
fn d_connect() -> u64 {
    10
}
fn d_stall() -> u64 {
    60
}
fn d_initial() -> u64 {
    1
}
fn d_max_backoff() -> u64 {
    300
}
fn d_keep_days() -> u64 {
    30
}
fn d_cleanup() -> u64 {
    3600
}

use labship_sys::config::resolve;

/// [`resolve`] for an optional key: `None` when it is empty (unset).
fn optional(file: &Path, p: &Path) -> Option<PathBuf> {
    (!p.as_os_str().is_empty()).then(|| resolve(file, p))
}

/// How the shipper proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// Client certificate and key (PEM), when configured.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// A bearer token file, when configured (TLS ending at a proxy).
    pub token_file: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub host_id: Id,
    pub data_dir: PathBuf,
    pub scan_interval: Duration,
    pub settle: Duration,
    pub zstd_level: i32,
    pub url: reqwest::Url,
    /// CA bundle for the receiver's certificate; `None` uses the system roots.
    pub ca_file: Option<PathBuf>,
    pub auth: ClientAuth,
    pub connect_timeout: Duration,
    pub stall_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// `None` keeps quarantine forever (`keep_days = 0`).
    pub quarantine_keep: Option<Duration>,
    pub cleanup_interval: Duration,
    /// `[limits] bwlimit`: the upload rate cap (SIGHUP re-reads it).
    pub bwlimit: crate::bwlimit::Bwlimit,
    /// `[ops] listen`: where `/metrics` is served; `None` when `""` (off).
    pub ops_listen: Option<std::net::SocketAddr>,
    /// `limits.zstd_workers`: packing threads, 0 = one per core
    /// ([`Config::packing_threads`] resolves it).
    pub zstd_workers: u32,
    /// `limits.resumable_min_bytes`: archives in `outbox/` of this size and
    /// more go by the resumable upload API (CONTRACT §9), smaller ones by
    /// one PUT.
    pub resumable_min_bytes: u64,
}

impl Config {
    /// The compression threads a pack runs: `limits.zstd_workers`, or one
    /// per core the process may use (its CPU affinity) when 0.
    pub fn packing_threads(&self) -> u32 {
        match self.zstd_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = labship_sys::config::read(path)?;
        Self::parse(path, &text)
    }

    /// Validates `text` as if read from `path`; also checks that the configured
    /// certificate, key, CA and token files are readable. Keys are judged in
    /// a fixed order (not their order in the file); the first bad one is named.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = labship_sys::config::parse_toml(path, text)?;
        let judge = Judge { file: path };
        let host_id = judge.host_id(&raw.host_id)?;
        let zstd_level = judge.zstd_level(raw.zstd_level)?;
        let zstd_workers = judge.zstd_workers(raw.limits.zstd_workers)?;
        let resumable_min_bytes = judge.resumable_min_bytes(raw.limits.resumable_min_bytes)?;
        let r = &raw.receiver;
        let url = judge.receiver_url(&r.url)?;
        let (ca_file, auth) = judge.receiver_files(r)?;
        let (initial_backoff, max_backoff) = judge.backoff(&raw.retry)?;
        let bwlimit = judge.bwlimit(&raw.limits.bwlimit)?;
        Ok(Self {
            bwlimit,
            ops_listen: crate::ops::parse_listen(raw.ops.listen.as_deref())
                .map_err(|why| judge.err("ops.listen", why))?,
            file: path.to_owned(),
            host_id,
            data_dir: resolve(path, &raw.data_dir),
            scan_interval: judge.positive("scan_interval_s", raw.scan_interval_s)?,
            settle: Duration::from_secs(raw.settle_s),
            zstd_level,
            url,
            ca_file,
            auth,
            connect_timeout: judge.positive("receiver.connect_timeout_s", r.connect_timeout_s)?,
            stall_timeout: judge.positive("receiver.stall_timeout_s", r.stall_timeout_s)?,
            initial_backoff,
            max_backoff,
            quarantine_keep: (raw.quarantine.keep_days > 0)
                .then(|| Duration::from_secs(raw.quarantine.keep_days * 86_400)),
            cleanup_interval: judge.positive(
                "quarantine.cleanup_interval_s",
                raw.quarantine.cleanup_interval_s,
            )?,
            zstd_workers,
            resumable_min_bytes,
        })
    }
}

impl Config {
    /// The keys whose values differ in `new`, apart from `limits.bwlimit`
    /// (the one a SIGHUP applies): they need a restart.
    pub fn changed_keys(&self, new: &Self) -> Vec<&'static str> {
        // No `..`: a new field does not compile until it is listed here.
        let Self {
            file: _,
            host_id,
            data_dir,
            scan_interval,
            settle,
            zstd_level,
            url,
            ca_file,
            auth,
            connect_timeout,
            stall_timeout,
            initial_backoff,
            max_backoff,
            quarantine_keep,
            cleanup_interval,
            bwlimit: _,
            zstd_workers,
            ops_listen,
            resumable_min_bytes,
        } = self;
        let mut out = Vec::new();
        let mut diff = |key, same: bool| {
            if !same {
                out.push(key);
            }
        };
        diff("host_id", *host_id == new.host_id);
        diff("data_dir", *data_dir == new.data_dir);
        diff("scan_interval_s", *scan_interval == new.scan_interval);
        diff("settle_s", *settle == new.settle);
        diff("zstd_level", *zstd_level == new.zstd_level);
        diff("receiver.url", *url == new.url);
        diff("receiver.ca_file", *ca_file == new.ca_file);
        diff("receiver.cert_file/key_file/token_file", *auth == new.auth);
        diff(
            "receiver.connect_timeout_s",
            *connect_timeout == new.connect_timeout,
        );
        diff(
            "receiver.stall_timeout_s",
            *stall_timeout == new.stall_timeout,
        );
        diff(
            "retry.initial_backoff_s",
            *initial_backoff == new.initial_backoff,
        );
        diff("retry.max_backoff_s", *max_backoff == new.max_backoff);
        diff(
            "quarantine.keep_days",
            *quarantine_keep == new.quarantine_keep,
        );
        diff(
            "quarantine.cleanup_interval_s",
            *cleanup_interval == new.cleanup_interval,
        );
        diff("limits.zstd_workers", *zstd_workers == new.zstd_workers);
        diff("ops.listen", *ops_listen == new.ops_listen);
        diff(
            "limits.resumable_min_bytes",
            *resumable_min_bytes == new.resumable_min_bytes,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Self {
            let d = tempfile::tempdir().unwrap();
            for f in ["ca.pem", "client.pem", "client.key", "token"] {
                std::fs::write(d.path().join(f), "x").unwrap();
            }
            Self(d)
        }
        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            Config::parse(&self.0.path().join("shipper.toml"), text)
        }
    }

    const OK: &str = "host_id = \"lab-01\"\n[receiver]\nurl = \"https://r.example.org:8443\"\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let d = Dir::new();
        let c = d.parse(OK).unwrap();
        assert_eq!(c.host_id.as_str(), "lab-01");
        assert_eq!(c.data_dir, Path::new("/var/lib/labship"));
        assert_eq!(c.settle, Duration::from_secs(30));
        assert_eq!(c.zstd_level, 3);
        assert_eq!(
            c.ca_file.as_deref(),
            Some(d.0.path().join("ca.pem").as_path())
        );
        assert_eq!(c.quarantine_keep, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.max_backoff, Duration::from_secs(300));
        assert_eq!(
            c.ops_listen,
            Some(crate::ops::DEFAULT_LISTEN.parse().unwrap())
        );
        let off = d.parse(&format!("{OK}[ops]\nlisten = \"\"\n")).unwrap();
        assert_eq!(off.ops_listen, None);
        assert_eq!(c.zstd_workers, 0);
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(c.packing_threads(), cores);
        let c = d
            .parse(&format!("{OK}[limits]\nzstd_workers = 3\n"))
            .unwrap();
        assert_eq!((c.zstd_workers, c.packing_threads()), (3, 3));
    }

    #[test]
    fn the_shipped_example_parses_apart_from_its_files() {
        let d = Dir::new();
        let example = include_str!("../../etc/shipper.toml.example").replace("/etc/labship/", "");
        d.parse(&example).unwrap();
    }

    #[test]
    fn paths_resolve_as_the_config_does_and_ignore_the_rest() {
        let d = Dir::new();
        let file = d.0.path().join("shipper.toml");
        let text = format!("data_dir = \"data\"\n{OK}");
        let (c, p) = (d.parse(&text).unwrap(), Paths::parse(&file, &text).unwrap());
        assert_eq!(p.data_dir, c.data_dir);
        assert_eq!(p.data_dir, d.0.path().join("data"));
        assert_eq!(p.ca_file, c.ca_file);
        assert_eq!(
            (p.cert_file.unwrap(), p.key_file.unwrap()),
            c.auth.cert_and_key.unwrap()
        );
        assert_eq!(p.token_file, None);
        // Lenient: an unknown key or a missing host_id still gives the paths.
        let p = Paths::parse(&file, "bogus = 1\n[receiver]\ncert_file = '/c.pem'\n").unwrap();
        assert_eq!(p.data_dir, Path::new("/var/lib/labship"));
        assert_eq!(p.cert_file.unwrap(), Path::new("/c.pem"));
        assert!(Paths::parse(&file, "data_dir = 3\n").is_err());
    }

    #[test]
    fn errors_name_file_and_key() {
        let d = Dir::new();
        let cases = [
            (OK.replace("lab-01", "lab 01"), "host_id"),
            (format!("zstd_level = 22\n{OK}"), "zstd_level"),
            (
                OK.replace("https://r.example.org:8443", "http://r.example.org"),
                "receiver.url",
            ),
            (
                OK.replace("client.pem", "missing.pem"),
                "receiver.cert_file",
            ),
            (
                OK.replace("cert_file = \"client.pem\"\n", ""),
                "receiver.cert_file",
            ),
            (
                format!("{OK}[retry]\nmax_backoff_s = 0\n"),
                "retry.max_backoff_s",
            ),
            (format!("{OK}[quarantine]\nkeep_dayz = 3\n"), "keep_dayz"),
            (
                format!("{OK}[limits]\nbwlimit = \"10 MB\"\n"),
                "limits.bwlimit",
            ),
            (
                format!("{OK}[limits]\nbwlimit = \"1K\"\n"),
                "limits.bwlimit",
            ),
            (format!("{OK}[ops]\nlisten = \"localhost\"\n"), "ops.listen"),
            (
                format!("{OK}[limits]\nzstd_workers = -1\n"),
                "limits.zstd_workers",
            ),
            (
                format!("{OK}[limits]\nzstd_workers = 100000\n"),
                "limits.zstd_workers",
            ),
            (
                format!("{OK}[limits]\nresumable_min_bytes = -1\n"),
                "limits.resumable_min_bytes",
            ),
        ];
        for (text, key) in cases {
            let e = d.parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("shipper.toml: ") && e.contains(key),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn bwlimit_parses_and_only_other_keys_count_as_changed() {
        let d = Dir::new();
        let a = d.parse(OK).unwrap();
        assert_eq!(a.bwlimit, crate::bwlimit::Bwlimit::Off);
        let b = d
            .parse(&format!("{OK}[limits]\nbwlimit = \"08:00,2M 19:00,off\"\n"))
            .unwrap();
        assert!(matches!(b.bwlimit, crate::bwlimit::Bwlimit::Timetable(_)));
        assert!(a.changed_keys(&b).is_empty());
        assert_eq!(a.resumable_min_bytes, DEFAULT_RESUMABLE_MIN_BYTES);
        assert_eq!(b.resumable_min_bytes, DEFAULT_RESUMABLE_MIN_BYTES);
        let r = d
            .parse(&format!("{OK}[limits]\nresumable_min_bytes = 0\n"))
            .unwrap();
        assert_eq!(r.resumable_min_bytes, 0);
        assert_eq!(a.changed_keys(&r), ["limits.resumable_min_bytes"]);
        let c = d.parse(&format!("zstd_level = 5\n{OK}")).unwrap();
        assert_eq!(a.changed_keys(&c), ["zstd_level"]);
        // Every field is compared (the destructuring in changed_keys).
        let o = d
            .parse(&format!("{OK}[ops]\nlisten = \"127.0.0.1:9999\"\n"))
            .unwrap();
        assert_eq!(a.changed_keys(&o), ["ops.listen"]);
        let e = d
            .parse(&format!("{OK}[limits]\nbwlimit = \"fast\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.bwlimit") && e.contains("\"10M\""), "{e}");
    }

    #[test]
    fn a_token_replaces_the_client_certificate_and_loopback_may_be_plain() {
        let d = Dir::new();
        let c = d
            .parse("host_id = \"h\"\n[receiver]\nurl = \"http://127.0.0.1:8080\"\ntoken_file = \"token\"\n")
            .unwrap();
        assert_eq!(c.auth.cert_and_key, None);
        assert!(c.auth.token_file.is_some());
    }
}
