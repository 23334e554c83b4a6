//! Who is asking: the host identity of a request.
//!
//! A connection that presented a verified client certificate is that
//! certificate's host. Otherwise a `Authorization: Bearer …` token is looked up in
//! `auth.tokens_file` (lines of `host_id sha256-hex-of-token`); the presented
//! token is hashed and compared against every entry in constant time, so
//! neither the match nor its position leaks through timing.

use labship_protocol::Id;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq as _;

/// What the connection layer learned about the peer, attached to every request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `Some(Ok(host))` for a verified client certificate, `Some(Err(why))` when
    /// one was verified but names no usable host, `None` without one.
    pub cert_host: Option<Result<String, String>>,
    /// The verified client certificate's notAfter, Unix seconds.
    pub cert_not_after: Option<i64>,
}

/// How a request was authenticated (recorded in manifests and the audit log).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub host_id: String,
    /// `"certificate"` or `"token"`.
    pub method: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: expected \"host_id sha256-hex-of-token\"")]
    Syntax { path: PathBuf, line: usize },
}

/// The bearer-token table.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    entries: Vec<(String, [u8; 32])>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut entries = Vec::new();
        for (line_no, line) in labship_sys::config::entries(&text) {
            let syntax = || TokensError::Syntax {
                path: path.to_owned(),
                line: line_no,
            };
            let mut parts = line.split_whitespace();
            let (Some(host), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(syntax());
            };
            Id::parse(host).map_err(|_| syntax())?;
            entries.push((host.to_owned(), decode_hex32(hex).ok_or_else(syntax)?));
        }
        Ok(Self { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The host a token belongs to. Every entry is compared, match or not.
    pub fn host_for(&self, token: &str) -> Option<String> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (host, hash) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(host.clone());
            }
        }
        found
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Resolves the identity of a request, or says why there is none.
pub fn identify(
    conn: &ConnInfo,
    authorization: Option<&str>,
    tokens: &Tokens,
) -> Result<Identity, String> {
    match &conn.cert_host {
        Some(Ok(host)) => {
            return match Id::parse(host) {
                Ok(_) => Ok(Identity {
                    host_id: host.clone(),
                    method: "certificate",
                }),
                Err(e) => Err(format!(
                    "client certificate names host {host:?}, which is not a valid host id: {e}"
                )),
            };
        }
        Some(Err(why)) => return Err(why.clone()),
        None => {}
    }
    let Some(header) = authorization else {
        return Err("no client certificate and no bearer token".into());
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or("Authorization header is not \"Bearer <token>\"")?;
    tokens
        .host_for(token)
        .map(|host_id| Identity {
            host_id,
            method: "token",
        })
        .ok_or_else(|| "bearer token is not listed in auth.tokens_file".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let hash: String = Sha256::digest(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("# hosts\nlab-01 {hash}\n\n")).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.host_for("s3cret").as_deref(), Some("lab-01"));
        assert_eq!(tokens.host_for("s3cret "), None);
        std::fs::write(&path, "lab-01 nothex\n").unwrap();
        assert!(
            Tokens::load(&path)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }
}
