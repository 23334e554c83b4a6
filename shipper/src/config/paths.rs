//! [`Paths`]: only the path keys of a shipper config, read leniently, so
//! `shipper --check-config --print data_dir` answers the installer even for a
//! config that does not fully validate.

use super::{ConfigError, d_data_dir, optional};
use labship_sys::config::resolve;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The paths a config names, resolved against its directory as [`Config`]
/// resolves them: the same keys and defaults, other keys ignored and no file
/// checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

/// Just the path keys of [`Raw`](super::Raw), without `deny_unknown_fields` (which serde
/// cannot combine with `flatten`, hence the second list of the same keys).
#[derive(Debug, Deserialize)]
struct RawPaths {
    #[serde(default = "d_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    receiver: RawReceiverPaths,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawReceiverPaths {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    token_file: PathBuf,
}

impl Paths {
    /// The paths in `text` (read from `path`); an error only when it is not
    /// TOML or a path key has the wrong type.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawPaths = labship_sys::config::parse_toml(path, text)?;
        let r = &raw.receiver;
        Ok(Self {
            data_dir: resolve(path, &raw.data_dir),
            ca_file: optional(path, &r.ca_file),
            cert_file: optional(path, &r.cert_file),
            key_file: optional(path, &r.key_file),
            token_file: optional(path, &r.token_file),
        })
    }
}
