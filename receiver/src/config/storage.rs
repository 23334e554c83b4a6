//! The `[storage]` table: `kind = "fs"` (a directory) or `kind = "s3"`
//! (a bucket shared by several receivers; `dir` then holds only the local
//! spool), and the validation of the S3 keys.

use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// The `[storage]` keys for `kind = "s3"`, validated.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    #[serde(default = "d_kind")]
    pub(super) kind: String,
    #[serde(default = "d_storage_dir")]
    pub(super) dir: PathBuf,
    // kind = "s3" (CONTRACT §8); `dir` then holds only the local scratch spool.
    #[serde(default)]
    pub(super) bucket: String,
    #[serde(default)]
    pub(super) prefix: String,
    #[serde(default)]
    pub(super) endpoint: String,
    #[serde(default = "d_region")]
    pub(super) region: String,
    #[serde(default)]
    pub(super) allow_http: bool,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            kind: d_kind(),
            dir: d_storage_dir(),
            bucket: String::new(),
            prefix: String::new(),
            endpoint: String::new(),
            region: d_region(),
            allow_http: false,
        }
    }
}

fn d_kind() -> String {
    "fs".into()
}
fn d_storage_dir() -> PathBuf {
    "/var/lib/labship-receiver/episodes".into()
}
fn d_region() -> String {
    "us-east-1".into()
}

/// `storage.kind`: `None` for `fs`, the validated S3 keys for `s3`.
pub(super) fn s3_if_chosen(
    raw: &RawStorage,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<S3Config>, ConfigError> {
    match raw.kind.as_str() {
        "fs" => Ok(None),
        "s3" => s3_config(raw, err).map(Some),
        other => Err(err(
            "storage.kind",
            format!("{other:?} is not one of \"fs\", \"s3\""),
        )),
    }
}

/// Validates the `[storage]` keys of `kind = "s3"`.
fn s3_config(
    raw: &RawStorage,
    err: &impl Fn(&str, String) -> ConfigError,
) -> Result<S3Config, ConfigError> {
    let bucket = raw.bucket.trim();
    if bucket.is_empty() {
        return Err(err(
            "storage.bucket",
            "is required when storage.kind = \"s3\"".into(),
        ));
    }
    if bucket.contains('/') {
        return Err(err(
            "storage.bucket",
            format!(
                "{bucket:?} is a bucket name, not a path (use storage.prefix for a key prefix)"
            ),
        ));
    }
    if raw.prefix.starts_with('/') || raw.prefix.contains("//") {
        return Err(err(
            "storage.prefix",
            format!(
                "{:?}: keys must not start with \"/\" nor contain \"//\" (e.g. \"labship/\")",
                raw.prefix
            ),
        ));
    }
    let endpoint = raw.endpoint.trim();
    let endpoint = if endpoint.is_empty() {
        None
    } else if endpoint.starts_with("http://") {
        if !raw.allow_http {
            return Err(err(
                "storage.endpoint",
                format!(
                    "{endpoint:?} is plain HTTP; set storage.allow_http = true to allow it (credentials and archives then cross the network unencrypted)"
                ),
            ));
        }
        Some(endpoint.to_owned())
    } else if endpoint.starts_with("https://") {
        Some(endpoint.to_owned())
    } else {
        return Err(err(
            "storage.endpoint",
            format!("{endpoint:?} is not an http:// or https:// URL"),
        ));
    };
    if raw.region.trim().is_empty() {
        return Err(err("storage.region", "must not be empty".into()));
    }
    Ok(S3Config {
        bucket: bucket.to_owned(),
        prefix: raw.prefix.clone(),
        endpoint,
        region: raw.region.trim().to_owned(),
        allow_http: raw.allow_http,
    })
}
