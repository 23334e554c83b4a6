//! The resumable upload API of CONTRACT §9, shared by both sides.
//!
//! Modeled on draft-ietf-httpbis-resumable-upload-12: its header names and their
//! structured-field values (`Upload-Offset: 42`, `Upload-Complete: ?1`,
//! `Upload-Limit: max-size=N, expires=S`), without the 104 informational
//! response (see docs/protocol.md for why). The routes are
//! `POST /v1/uploads/{host_id}/{episode_id}` to create an upload and
//! `HEAD`/`PATCH`/`DELETE` on the `Location` it answers,
//! `/v1/uploads/{host_id}/{episode_id}/{token}`.

use std::fmt;

/// Bytes the receiver durably holds (on `HEAD`, `201` and `204`), or the offset
/// an append starts at (on `PATCH`). An sf-integer.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// The archive's total size, declared on creation. An sf-integer.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// `?1` on the append that ends the archive, `?0` otherwise. An sf-boolean.
pub const UPLOAD_COMPLETE: &str = "upload-complete";
/// The receiver's limits for this upload: `max-size=N, expires=S`.
pub const UPLOAD_LIMIT: &str = "upload-limit";
/// Content type of an append (`PATCH`) body.
pub const PARTIAL_UPLOAD_CONTENT_TYPE: &str = "application/partial-upload";
/// Path prefix of the upload API.
pub const UPLOADS_PREFIX: &str = "/v1/uploads";

/// An upload token: 32 lowercase hex digits (128 random bits), unguessable
/// and bound to the host that created it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

/// Length of a token in hex digits.
pub const TOKEN_HEX_LEN: usize = 32;

impl Token {
    /// Builds a token from 16 random bytes (the caller supplies the randomness:
    /// this crate does no I/O).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        let mut s = String::with_capacity(TOKEN_HEX_LEN);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Token(s)
    }

    /// Accepts exactly 32 lowercase hex digits; anything else is not a token
    /// this receiver could have issued.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == TOKEN_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Token(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The creation path: `/v1/uploads/{host_id}/{episode_id}`.
pub fn creation_path(host_id: &str, episode_id: &str) -> String {
    format!("{UPLOADS_PREFIX}/{host_id}/{episode_id}")
}

/// The upload's `Location`: `/v1/uploads/{host_id}/{episode_id}/{token}`.
pub fn location(host_id: &str, episode_id: &str, token: &Token) -> String {
    format!("{UPLOADS_PREFIX}/{host_id}/{episode_id}/{token}")
}

/// The parts of a `Location` this API issued, or `None` when it is not one.
pub fn parse_location(location: &str) -> Option<(String, String, Token)> {
    let rest = location.strip_prefix(UPLOADS_PREFIX)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (host, episode, token) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || host.is_empty() || episode.is_empty() {
        return None;
    }
    Some((host.to_owned(), episode.to_owned(), Token::parse(token)?))
}

/// Parses an sf-integer offset or length: ASCII digits only, at most 15 of
/// them (RFC 8941), no sign, no spaces.
pub fn parse_offset(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an sf-boolean: `?1` or `?0`.
pub fn parse_complete(s: &str) -> Option<bool> {
    match s {
        "?1" => Some(true),
        "?0" => Some(false),
        _ => None,
    }
}

/// Formats an sf-boolean for `Upload-Complete`.
pub fn format_complete(complete: bool) -> &'static str {
    if complete { "?1" } else { "?0" }
}

/// The `Upload-Limit` dictionary: the largest archive this receiver takes and
/// how long an idle partial upload lives, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimit {
    pub max_size: u64,
    pub expires_s: u64,
}

impl fmt::Display for UploadLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "max-size={}, expires={}", self.max_size, self.expires_s)
    }
}

impl UploadLimit {
    /// Parses the dictionary; unknown members are ignored, as RFC 8941 asks.
    /// Both `max-size` and `expires` are required here.
    pub fn parse(s: &str) -> Option<Self> {
        let (mut max_size, mut expires_s) = (None, None);
        for member in s.split(',') {
            let (k, v) = member.trim().split_once('=')?;
            match k {
                "max-size" => max_size = Some(parse_offset(v)?),
                "expires" => expires_s = Some(parse_offset(v)?),
                _ => {}
            }
        }
        Some(UploadLimit {
            max_size: max_size?,
            expires_s: expires_s?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_lowercase_hex() {
        let t = Token::from_random([0xab; 16]);
        assert_eq!(t.as_str().len(), TOKEN_HEX_LEN);
        assert_eq!(Token::parse(t.as_str()), Some(t.clone()));
        assert_eq!(Token::parse(&t.as_str().to_uppercase()), None);
        assert_eq!(Token::parse("ab"), None);
        assert_eq!(Token::parse(&"g".repeat(32)), None);
    }

    #[test]
    fn locations_round_trip() {
        let t = Token::from_random([7; 16]);
        let loc = location("rig-01", "ep-1", &t);
        assert_eq!(
            parse_location(&loc),
            Some(("rig-01".into(), "ep-1".into(), t))
        );
        assert_eq!(parse_location("/v1/uploads/rig-01/ep-1"), None);
        assert_eq!(parse_location(&format!("{loc}/x")), None);
        assert_eq!(parse_location("/v1/episodes/a/b/c"), None);
    }

    #[test]
    fn structured_fields() {
        assert_eq!(parse_offset("0"), Some(0));
        assert_eq!(parse_offset("123456789012345"), Some(123456789012345));
        for bad in ["", "-1", "+1", " 1", "1.0", "1234567890123456"] {
            assert_eq!(parse_offset(bad), None, "{bad:?}");
        }
        assert_eq!(parse_complete("?1"), Some(true));
        assert_eq!(parse_complete("?0"), Some(false));
        assert_eq!(parse_complete("1"), None);
        let l = UploadLimit {
            max_size: 10,
            expires_s: 86400,
        };
        assert_eq!(l.to_string(), "max-size=10, expires=86400");
        assert_eq!(UploadLimit::parse(&l.to_string()), Some(l));
        assert_eq!(
            UploadLimit::parse("min-size=1, max-size=10,expires=86400"),
            Some(l)
        );
        assert_eq!(UploadLimit::parse("max-size=10"), None);
    }
}
