//! The receiver's success answer to a PUT, and the shipper's test of it.
//!
//! A 200 or 201 retires an episode, so the shipper must know the answer is
//! the receiver's and about this very upload: a misrouted URL or a proxy
//! answering `200 {"ok":true}` itself stored nothing, and believing it would
//! lose the episode once `shipped/` is pruned. The receiver answers
//! [`StoredBody`]; the shipper accepts a success only when
//! [`StoredBody::confirms`] the host, episode, digest and size it sent.

use crate::Sha256Digest;
use serde::{Deserialize, Serialize};

/// The JSON body of `201` (stored) and `200` (the same bytes were already
/// stored): `{"host_id","episode_id","digest","bytes"}`, describing what the
/// receiver holds. Unknown fields are ignored (a later receiver may add some).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBody {
    pub host_id: String,
    pub episode_id: String,
    /// The stored archive's digest, as a `Content-Digest` value (`sha-256=:…:`).
    pub digest: String,
    pub bytes: u64,
}

/// Why a success answer does not confirm the upload it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotConfirmed {
    #[error("the body is not the receiver's answer ({why}): {body:?}")]
    NotStoredBody { why: String, body: String },
    #[error("it names host {found:?}, not {sent:?}")]
    Host { sent: String, found: String },
    #[error("it names episode {found:?}, not {sent:?}")]
    Episode { sent: String, found: String },
    #[error("it names digest {found:?}, not the {sent} that was sent")]
    Digest { sent: String, found: String },
    #[error("it says {found} bytes, not the {sent} that were sent")]
    Bytes { sent: u64, found: u64 },
}

impl StoredBody {
    pub fn new(host_id: &str, episode_id: &str, digest: &Sha256Digest, bytes: u64) -> Self {
        Self {
            host_id: host_id.to_owned(),
            episode_id: episode_id.to_owned(),
            digest: digest.header_value(),
            bytes,
        }
    }

    /// Reads a success answer's body; the error quotes the start of it.
    pub fn parse(body: &str) -> Result<Self, NotConfirmed> {
        serde_json::from_str(body).map_err(|e| NotConfirmed::NotStoredBody {
            why: e.to_string(),
            body: body.chars().take(200).collect(),
        })
    }

    /// Whether this answer says the receiver holds `host`'s `episode` as
    /// exactly `digest` (`bytes` long): every field must match.
    pub fn confirms(
        &self,
        host: &str,
        episode: &str,
        digest: &Sha256Digest,
        bytes: u64,
    ) -> Result<(), NotConfirmed> {
        if self.host_id != host {
            return Err(NotConfirmed::Host {
                sent: host.to_owned(),
                found: self.host_id.clone(),
            });
        }
        if self.episode_id != episode {
            return Err(NotConfirmed::Episode {
                sent: episode.to_owned(),
                found: self.episode_id.clone(),
            });
        }
        if Sha256Digest::parse_header(&self.digest).ok() != Some(*digest) {
            return Err(NotConfirmed::Digest {
                sent: digest.header_value(),
                found: self.digest.clone(),
            });
        }
        if self.bytes != bytes {
            return Err(NotConfirmed::Bytes {
                sent: bytes,
                found: self.bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_receivers_answer_for_this_upload_confirms_it() {
        let d = Sha256Digest::of(b"archive");
        let ok = StoredBody::new("lab-01", "ep", &d, 7);
        let wire = serde_json::to_string(&ok).unwrap();
        assert_eq!(
            wire,
            format!(
                r#"{{"host_id":"lab-01","episode_id":"ep","digest":"{}","bytes":7}}"#,
                d.header_value()
            )
        );
        let back = StoredBody::parse(&wire).unwrap();
        assert_eq!(back.confirms("lab-01", "ep", &d, 7), Ok(()));
        // A later receiver may add fields.
        let more = wire.replace("\"bytes\":7", "\"bytes\":7,\"stored_at\":\"x\"");
        assert_eq!(
            StoredBody::parse(&more)
                .unwrap()
                .confirms("lab-01", "ep", &d, 7),
            Ok(())
        );

        for (body, expect) in [
            (r#"{"ok":true}"#, "not the receiver's answer"),
            ("<html>hi</html>", "not the receiver's answer"),
            ("", "not the receiver's answer"),
        ] {
            let e = StoredBody::parse(body).unwrap_err();
            assert!(e.to_string().contains(expect), "{body}: {e}");
        }
        let other = Sha256Digest::of(b"other");
        let cases = [
            (StoredBody::new("lab-02", "ep", &d, 7), "host \"lab-02\""),
            (StoredBody::new("lab-01", "ep2", &d, 7), "episode \"ep2\""),
            (StoredBody::new("lab-01", "ep", &other, 7), "digest"),
            (StoredBody::new("lab-01", "ep", &d, 8), "8 bytes"),
            (
                StoredBody {
                    digest: "md5=abc".into(),
                    ..ok.clone()
                },
                "digest \"md5=abc\"",
            ),
        ];
        for (body, expect) in cases {
            let e = body.confirms("lab-01", "ep", &d, 7).unwrap_err();
            assert!(e.to_string().contains(expect), "{body:?}: {e}");
        }
    }
}
