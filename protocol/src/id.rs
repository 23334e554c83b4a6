//! Episode and host identifiers.
//!
//! Both are path components on the lab host and in the store, so the rule is
//! strict: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`. That excludes `.`, `..`, slashes,
//! leading dots (hidden files, the receiver's `.scratch/`) and anything that a shell
//! or a URL would need to quote.

use std::fmt;

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A validated episode or host id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong { len: usize },
    #[error("id must start with a letter or digit")]
    BadFirst,
    #[error("id may contain only A-Z a-z 0-9 . _ - (found {found:?})")]
    BadChar { found: char },
}

impl Id {
    /// Validates `s` against the id rule.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks `s` against the id rule without allocating.
pub fn validate(s: &str) -> Result<(), IdError> {
    let first = s.chars().next().ok_or(IdError::Empty)?;
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: s.len() });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::BadFirst);
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(found) => Err(IdError::BadChar { found }),
        None => Ok(()),
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_ids() {
        for ok in [
            "a",
            "ep-0001",
            "2026-11-23T10.00.00_run",
            "A.b_c-d",
            &"x".repeat(128),
        ] {
            assert!(Id::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_path_tricks() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "a\\b",
            "a b",
            "é",
            "a%2fb",
            &"x".repeat(129),
        ] {
            assert!(Id::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn matches_the_regex(s in "\\PC{0,140}") {
            let expected = !s.is_empty()
                && s.len() <= 128
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
            prop_assert_eq!(Id::parse(&s).is_ok(), expected);
        }

        #[test]
        fn valid_ids_are_single_safe_components(s in "[A-Za-z0-9][A-Za-z0-9._-]{0,127}") {
            let id = Id::parse(&s).unwrap();
            prop_assert!(!id.as_str().contains('/'));
            prop_assert!(id.as_str() != "." && id.as_str() != "..");
        }
    }
}
