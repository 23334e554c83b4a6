//! The code stamp: which commit of the producing code made an episode.
//!
//! It lives in the episode's top-level `meta.json` as `code_version.commit`
//! (exactly 40 lowercase hex characters) with an optional `code_version.dirty`
//! bool. The shipper reads it to fill `X-Labship-Commit`; the receiver reads it
//! again from inside the archive and insists the two agree.

use std::fmt;

/// The largest `meta.json` either side will parse. A metadata file is small; a
/// bigger one is a mistake (or an attack) and is refused rather than buffered.
pub const META_MAX_BYTES: u64 = 1024 * 1024;

/// File name of the metadata file at an episode's top level.
pub const META_FILE: &str = "meta.json";

/// A validated 40-hex-character git commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Commit(String);

impl Commit {
    /// Accepts exactly 40 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Self, StampError> {
        if s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(StampError::Malformed {
                found: s.chars().take(64).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parsed `code_version` of an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeStamp {
    pub commit: Commit,
    pub dirty: Option<bool>,
}

/// Why a `meta.json` carries no usable stamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    #[error("meta.json is not valid JSON: {detail}")]
    NotJson { detail: String },
    #[error("meta.json is not a JSON object")]
    NotObject,
    #[error("meta.json has no code_version.commit")]
    Missing,
    #[error("code_version.commit is not 40 lowercase hex characters (found {found:?})")]
    Malformed { found: String },
}

impl StampError {
    /// The local quarantine reason / receiver error code family this belongs to:
    /// `true` when the metadata itself is broken rather than merely unstamped.
    pub fn is_meta_invalid(&self) -> bool {
        matches!(self, Self::NotJson { .. } | Self::NotObject)
    }
}

/// Parses `meta.json` bytes into a JSON object (the shipper's readiness rule).
pub fn parse_meta_object(
    bytes: &[u8],
) -> Result<serde_json::Map<String, serde_json::Value>, StampError> {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(StampError::NotObject),
        Err(e) => Err(StampError::NotJson {
            detail: e.to_string(),
        }),
    }
}

/// Extracts the code stamp from `meta.json` bytes.
pub fn parse_meta(bytes: &[u8]) -> Result<CodeStamp, StampError> {
    let meta = parse_meta_object(bytes)?;
    let version = meta.get("code_version").ok_or(StampError::Missing)?;
    let commit = match version.get("commit") {
        None | Some(serde_json::Value::Null) => return Err(StampError::Missing),
        Some(serde_json::Value::String(s)) => Commit::parse(s)?,
        Some(other) => {
            return Err(StampError::Malformed {
                found: other.to_string().chars().take(64).collect(),
            });
        }
    };
    let dirty = version.get("dirty").and_then(serde_json::Value::as_bool);
    Ok(CodeStamp { commit, dirty })
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn parses_a_stamp() {
        let s = parse_meta(
            format!(r#"{{"code_version":{{"commit":"{C}","dirty":true}},"x":1}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(s.commit.as_str(), C);
        assert_eq!(s.dirty, Some(true));
    }

    #[test]
    fn classifies_failures() {
        assert!(matches!(
            parse_meta(b"nope"),
            Err(StampError::NotJson { .. })
        ));
        assert_eq!(parse_meta(b"[1,2]"), Err(StampError::NotObject));
        assert_eq!(parse_meta(b"{}"), Err(StampError::Missing));
        assert_eq!(
            parse_meta(br#"{"code_version":{}}"#),
            Err(StampError::Missing)
        );
        assert_eq!(
            parse_meta(br#"{"code_version":"abc"}"#),
            Err(StampError::Missing)
        );
        assert!(matches!(
            parse_meta(br#"{"code_version":{"commit":"ABC"}}"#),
            Err(StampError::Malformed { .. })
        ));
        assert!(matches!(
            parse_meta(br#"{"code_version":{"commit":7}}"#),
            Err(StampError::Malformed { .. })
        ));
        let upper = C.to_uppercase();
        assert!(Commit::parse(&upper).is_err());
        assert!(Commit::parse(&C[..39]).is_err());
    }
}
