//! Error codes, the JSON error body, and what the shipper does with each status.
//!
//! This is the single mapping table of CONTRACT §4: every receiver error is one
//! [`ErrorCode`], which fixes its HTTP status; [`disposition`] is the shipper's
//! reading of a status. Both sides use these definitions, so a new code cannot be
//! added on one side only.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every error code the receiver sends, plus the local quarantine reasons the
/// shipper and tools write into `quarantine_reason.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // 400: the request or archive is wrong.
    InvalidEpisodeId,
    StampMissing,
    StampMalformed,
    StampMismatch,
    DigestMissing,
    DigestMismatch,
    ArchiveInvalid,
    /// An append would pass the declared `Upload-Length`, or the upload was
    /// completed short of it (CONTRACT §9).
    UploadLengthMismatch,
    /// A required header of the upload API is missing or malformed
    /// (`Upload-Length`, `Upload-Offset`, `Upload-Complete`, `Content-Length`):
    /// a client bug. Added after the first resumable receiver (additive).
    HeaderInvalid,
    // 401 / 403: identity problems (transient for the shipper, but loud).
    Unauthenticated,
    HostMismatch,
    // 404: HEAD of an absent episode, or an unknown route.
    NotFound,
    // 409 / 412 / 413.
    Conflict,
    /// A `PATCH` whose `Upload-Offset` is not the offset the receiver holds;
    /// the answer carries the right one. Not fatal: the client continues there.
    OffsetMismatch,
    CommitOutOfWindow,
    TooLarge,
    // 500 / 503 / 507.
    Internal,
    Busy,
    ShuttingDown,
    /// Another upload of this very episode is in progress: defer this episode
    /// only, never the host's queue (CONTRACT §9).
    EpisodeBusy,
    InsufficientStorage,
    // Local reasons, never sent by the receiver.
    MetaMissing,
    MetaInvalid,
    ArchiveFailed,
}

impl ErrorCode {
    /// The snake_case code as it appears on the wire and in reason files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidEpisodeId => "invalid_episode_id",
            Self::StampMissing => "stamp_missing",
            Self::StampMalformed => "stamp_malformed",
            Self::StampMismatch => "stamp_mismatch",
            Self::DigestMissing => "digest_missing",
            Self::DigestMismatch => "digest_mismatch",
            Self::ArchiveInvalid => "archive_invalid",
            Self::UploadLengthMismatch => "upload_length_mismatch",
            Self::HeaderInvalid => "header_invalid",
            Self::Unauthenticated => "unauthenticated",
            Self::HostMismatch => "host_mismatch",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::OffsetMismatch => "offset_mismatch",
            Self::CommitOutOfWindow => "commit_out_of_window",
            Self::TooLarge => "too_large",
            Self::Internal => "internal",
            Self::Busy => "busy",
            Self::ShuttingDown => "shutting_down",
            Self::EpisodeBusy => "episode_busy",
            Self::InsufficientStorage => "insufficient_storage",
            Self::MetaMissing => "meta_missing",
            Self::MetaInvalid => "meta_invalid",
            Self::ArchiveFailed => "archive_failed",
        }
    }

    /// The HTTP status the receiver answers with; `None` for local-only reasons.
    pub fn http_status(self) -> Option<u16> {
        Some(match self {
            Self::InvalidEpisodeId
            | Self::StampMissing
            | Self::StampMalformed
            | Self::StampMismatch
            | Self::DigestMissing
            | Self::DigestMismatch
            | Self::ArchiveInvalid
            | Self::UploadLengthMismatch
            | Self::HeaderInvalid => 400,
            Self::Unauthenticated => 401,
            Self::HostMismatch => 403,
            Self::NotFound => 404,
            Self::Conflict | Self::OffsetMismatch => 409,
            Self::CommitOutOfWindow => 412,
            Self::TooLarge => 413,
            Self::Internal => 500,
            Self::Busy | Self::ShuttingDown | Self::EpisodeBusy => 503,
            Self::InsufficientStorage => 507,
            Self::MetaMissing | Self::MetaInvalid | Self::ArchiveFailed => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every receiver error: `{"error", "message", "remediation"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
    pub remediation: Option<String>,
}

/// What the shipper does with a receiver's answer (CONTRACT §4, last column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// 200 or 201: the receiver holds these bytes; retire the episode.
    Stored,
    /// Retrying cannot help: quarantine with the receiver's reason.
    Fatal,
    /// Retry with backoff. `loud` marks configuration or certificate problems
    /// (401/403 and unexpected answers) that an operator must fix.
    Transient { loud: bool },
}

/// Classifies a PUT answer's status.
pub fn disposition(status: u16) -> Disposition {
    match status {
        200 | 201 => Disposition::Stored,
        400 | 409 | 412 | 413 => Disposition::Fatal,
        503 | 507 | 500..=599 | 408 | 429 => Disposition::Transient { loud: false },
        _ => Disposition::Transient { loud: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::CommitOutOfWindow,
            ErrorCode::InsufficientStorage,
            ErrorCode::MetaInvalid,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn the_contract_table() {
        assert_eq!(disposition(201), Disposition::Stored);
        assert_eq!(disposition(200), Disposition::Stored);
        for s in [400, 409, 412, 413] {
            assert_eq!(disposition(s), Disposition::Fatal, "{s}");
        }
        for s in [401, 403, 404] {
            assert_eq!(disposition(s), Disposition::Transient { loud: true }, "{s}");
        }
        for s in [503, 507, 502] {
            assert_eq!(
                disposition(s),
                Disposition::Transient { loud: false },
                "{s}"
            );
        }
        assert_eq!(ErrorCode::CommitOutOfWindow.http_status(), Some(412));
        assert_eq!(ErrorCode::ArchiveFailed.http_status(), None);
    }
}
