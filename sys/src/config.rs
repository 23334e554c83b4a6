//! What both daemons' configuration loaders share: the error that names the
//! file and the dotted key at fault, reading the file, the TOML parse, and
//! the "one entry a line, `#` comments" format of the receiver's tokens and
//! gate files.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A configuration problem: the binary exits 2 with this message,
/// `FILE: KEY: WHY` (`FILE: WHY` when the whole file is at fault).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}{sep}{why}", sep = if key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key, or empty when the whole file is at fault.
    pub key: String,
    pub why: String,
}

impl ConfigError {
    pub fn new(file: &Path, key: &str, why: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            key: key.to_owned(),
            why: why.into(),
        }
    }
}

/// Reads a configuration file whole.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read config: {e}")))
}

/// Parses `text` (read from `path`) as TOML into `T`, on one line: toml's
/// message names the key, the line and the column.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text)
        .map_err(|e| ConfigError::new(path, "", e.to_string().trim_end().replace('\n', " ")))
}

/// `p` as written in a config at `file`: relative paths resolve against the
/// file's directory.
pub fn resolve(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// The entries of a line-oriented file: each line with its `#` comment cut
/// and its white space trimmed, numbered from 1; blank lines are skipped.
pub fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let line = line.split('#').next().unwrap_or_default().trim();
        (!line.is_empty()).then_some((n + 1, line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_skip_comments_and_blanks_and_keep_line_numbers() {
        let text = "# header\n\n  a  # trailing\nb\n   # only\n";
        assert_eq!(entries(text).collect::<Vec<_>>(), vec![(3, "a"), (4, "b")]);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = ConfigError::new(Path::new("/etc/x.toml"), "limits.a", "too big");
        assert_eq!(e.to_string(), "/etc/x.toml: limits.a: too big");
        let e = ConfigError::new(Path::new("/etc/x.toml"), "", "cannot read");
        assert_eq!(e.to_string(), "/etc/x.toml: cannot read");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let f = Path::new("/etc/labship/shipper.toml");
        assert_eq!(
            resolve(f, Path::new("a.pem")),
            Path::new("/etc/labship/a.pem")
        );
        assert_eq!(resolve(f, Path::new("/b.pem")), Path::new("/b.pem"));
    }
}
