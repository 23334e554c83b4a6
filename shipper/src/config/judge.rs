//! The checks behind [`Config::parse`](super::Config::parse): one method per
//! key (or per group of keys valid only together) turning its raw value into
//! the validated one, or into the error that names the file and the key.

use super::{
    ClientAuth, ConfigError, DEFAULT_RESUMABLE_MIN_BYTES, MAX_ZSTD_LEVEL, MAX_ZSTD_WORKERS,
    RawReceiver, RawRetry, optional,
};
use labship_protocol::Id;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Judges the raw keys of one file: each method turns one key (or a group
/// that is only valid together) into its validated form, or the error that
/// names the file and the key.
pub(super) struct Judge<'a> {
    pub(super) file: &'a Path,
}

impl Judge<'_> {
    pub(super) fn err(&self, key: &str, why: String) -> ConfigError {
        ConfigError::new(self.file, key, why)
    }

    fn readable(&self, key: &str, p: &Path) -> Result<(), ConfigError> {
        std::fs::File::open(p)
            .map(drop)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", p.display())))
    }

    /// `key` unset (empty), or set to a readable file.
    fn optional_readable(&self, key: &str, p: &Path) -> Result<Option<PathBuf>, ConfigError> {
        let p = optional(self.file, p);
        if let Some(p) = &p {
            self.readable(key, p)?;
        }
        Ok(p)
    }

    pub(super) fn positive(&self, key: &str, v: u64) -> Result<Duration, ConfigError> {
        if v == 0 {
            Err(self.err(key, "must be greater than 0".into()))
        } else {
            Ok(Duration::from_secs(v))
        }
    }

    pub(super) fn host_id(&self, raw: &str) -> Result<Id, ConfigError> {
        Id::parse(raw).map_err(|e| {
            self.err(
                "host_id",
                format!(
                    "{raw:?} is not a valid host id ({e}); it must equal the client certificate's CN"
                ),
            )
        })
    }

    pub(super) fn zstd_level(&self, level: i32) -> Result<i32, ConfigError> {
        if !(1..=MAX_ZSTD_LEVEL).contains(&level) {
            return Err(self.err(
                "zstd_level",
                format!("{level} is outside 1..={MAX_ZSTD_LEVEL}"),
            ));
        }
        Ok(level)
    }

    pub(super) fn zstd_workers(&self, raw: i64) -> Result<u32, ConfigError> {
        u32::try_from(raw)
            .ok()
            .filter(|n| *n <= MAX_ZSTD_WORKERS)
            .ok_or_else(|| {
                self.err(
                    "limits.zstd_workers",
                    format!(
                        "{raw} is outside 0..={MAX_ZSTD_WORKERS} (0 = one packing thread per core)"
                    ),
                )
            })
    }

    pub(super) fn resumable_min_bytes(&self, raw: i64) -> Result<u64, ConfigError> {
        u64::try_from(raw).map_err(|_| {
            self.err(
                "limits.resumable_min_bytes",
                format!(
                    "{raw} is negative: it is a size in bytes (0 = every archive in outbox/ goes by resumable upload; default {DEFAULT_RESUMABLE_MIN_BYTES})"
                ),
            )
        })
    }

    /// `receiver.url`: https, or plain http to a loopback receiver.
    pub(super) fn receiver_url(&self, raw: &str) -> Result<reqwest::Url, ConfigError> {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| self.err("receiver.url", format!("{raw:?}: {e}")))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        match url.scheme() {
            "https" => Ok(url),
            "http" if loopback => Ok(url),
            other => Err(self.err(
                "receiver.url",
                format!("scheme {other:?}: use https:// (plain http only to a loopback receiver)"),
            )),
        }
    }

    /// The CA bundle and the client's identity: a certificate with its key,
    /// a token file, or both; every file named must be readable.
    pub(super) fn receiver_files(
        &self,
        r: &RawReceiver,
    ) -> Result<(Option<PathBuf>, ClientAuth), ConfigError> {
        let ca_file = self.optional_readable("receiver.ca_file", &r.ca_file)?;
        let token_file = self.optional_readable("receiver.token_file", &r.token_file)?;
        let cert_and_key = match (
            optional(self.file, &r.cert_file),
            optional(self.file, &r.key_file),
        ) {
            (Some(c), Some(k)) => {
                self.readable("receiver.cert_file", &c)?;
                self.readable("receiver.key_file", &k)?;
                Some((c, k))
            }
            (None, None) if token_file.is_some() => None,
            (None, None) => {
                return Err(self.err(
                    "receiver.cert_file",
                    "is required (with receiver.key_file) unless receiver.token_file is set".into(),
                ));
            }
            (Some(_), None) => {
                return Err(self.err(
                    "receiver.key_file",
                    "is required with receiver.cert_file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(self.err(
                    "receiver.cert_file",
                    "is required with receiver.key_file".into(),
                ));
            }
        };
        let auth = ClientAuth {
            cert_and_key,
            token_file,
        };
        Ok((ca_file, auth))
    }

    /// `[retry]`: both positive, the ceiling no lower than the start.
    pub(super) fn backoff(&self, retry: &RawRetry) -> Result<(Duration, Duration), ConfigError> {
        let initial = self.positive("retry.initial_backoff_s", retry.initial_backoff_s)?;
        let max = self.positive("retry.max_backoff_s", retry.max_backoff_s)?;
        if max < initial {
            return Err(self.err(
                "retry.max_backoff_s",
                "must not be less than retry.initial_backoff_s".into(),
            ));
        }
        Ok((initial, max))
    }

    pub(super) fn bwlimit(&self, raw: &str) -> Result<crate::bwlimit::Bwlimit, ConfigError> {
        crate::bwlimit::Bwlimit::parse(raw).map_err(|why| {
            self.err(
                "limits.bwlimit",
                format!("{why}; examples: \"10M\" (10 MiB/s), \"512K\", \"08:00,2M 19:00,off\" (a daily timetable), \"off\""),
            )
        })
    }
}
