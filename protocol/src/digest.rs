//! SHA-256 over the compressed archive, carried as an RFC 9530 `Content-Digest`.
//!
//! The header is a structured-field dictionary; we emit exactly one member,
//! `sha-256=:<base64>:`, and accept any dictionary that contains a well-formed
//! `sha-256` member (other algorithms and parameters are ignored, as RFC 9530
//! allows).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;
use std::fmt;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

/// Why a `Content-Digest` value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("Content-Digest has no sha-256 member")]
    NoSha256,
    #[error("Content-Digest sha-256 member is not a :base64: byte sequence")]
    Syntax,
    #[error("Content-Digest sha-256 value decodes to {len} bytes, not 32")]
    Length { len: usize },
}

impl Sha256Digest {
    /// Digest of a byte slice (tests and small inputs; streams use [`Hasher`]).
    pub fn of(bytes: &[u8]) -> Self {
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// The header value: `sha-256=:<base64>:`.
    pub fn header_value(&self) -> String {
        format!("sha-256=:{}:", STANDARD.encode(self.0))
    }

    /// Parses a `Content-Digest` header value.
    pub fn parse_header(value: &str) -> Result<Self, DigestError> {
        for member in value.split(',') {
            let member = member.trim();
            let Some((key, rest)) = member.split_once('=') else {
                continue;
            };
            if !key.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            // Parameters (`;key=value`) may follow the byte sequence.
            let item = rest.split(';').next().unwrap_or_default().trim();
            let b64 = item
                .strip_prefix(':')
                .and_then(|s| s.strip_suffix(':'))
                .ok_or(DigestError::Syntax)?;
            let raw = STANDARD.decode(b64).map_err(|_| DigestError::Syntax)?;
            let bytes: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| DigestError::Length { len: raw.len() })?;
            return Ok(Self(bytes));
        }
        Err(DigestError::NoSha256)
    }

    /// Lowercase hex, for manifests and logs.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.hex())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header_value())
    }
}

/// Incremental SHA-256 for streamed archives.
#[derive(Debug, Default, Clone)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let d = Sha256Digest::of(b"hello");
        let h = d.header_value();
        assert_eq!(h, "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:");
        assert_eq!(Sha256Digest::parse_header(&h), Ok(d));
    }

    #[test]
    fn accepts_dictionaries_and_rejects_junk() {
        let d = Sha256Digest::of(b"x");
        let dict = format!("sha-512=:AAAA:, {};p=1", d.header_value());
        assert_eq!(Sha256Digest::parse_header(&dict), Ok(d));
        assert_eq!(
            Sha256Digest::parse_header("md5=:AAAA:"),
            Err(DigestError::NoSha256)
        );
        assert_eq!(Sha256Digest::parse_header(""), Err(DigestError::NoSha256));
        assert_eq!(
            Sha256Digest::parse_header("sha-256=abc"),
            Err(DigestError::Syntax)
        );
        assert_eq!(
            Sha256Digest::parse_header("sha-256=:!!:"),
            Err(DigestError::Syntax)
        );
        assert_eq!(
            Sha256Digest::parse_header("sha-256=:AAAA:"),
            Err(DigestError::Length { len: 3 })
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = Sha256Digest::parse_header(&s);
        }

        #[test]
        fn any_digest_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let d = Sha256Digest(bytes);
            prop_assert_eq!(Sha256Digest::parse_header(&d.header_value()), Ok(d));
        }
    }
}
