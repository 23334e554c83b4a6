//! `state/status.json` as a type (CONTRACT §10): what the shipper writes
//! ([`crate::progress::Progress`]) and doctor reads.
//!
//! The file is the same bytes it was when it was built as a `serde_json`
//! map: the fields are declared in alphabetical order (the map's order), a
//! field the map left out is skipped, one it wrote as `null` is `null`.
//! - Before this process's first pass: `time` null, or the last process's
//!   document carried over; the pass's fields (`pending` …) are absent then
//!   unless carried over.
//! - After every pass: all of them; `last_success`, `last_error` and
//!   `hold_s` are `null` when there is none (hence `Option<Option<_>>`:
//!   absent, null, a value).
//! - At every write: `host_id`, `updated_at`, `uploading`, `bwlimit` (null:
//!   no cap), and `alive_at` once the work loop has shown a sign of life.
//!
//! Reading takes every field as optional (`default`) and ignores unknown
//! ones, so an older shipper's file and a newer one's both read.

use serde::{Deserialize, Deserializer, Serialize};

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The work loop's last sign of life (RFC 3339), where the watchdog is
    /// fed; absent until there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alive_at: Option<String>,
    /// The upload cap in bytes/s; null: none.
    pub bwlimit: Option<u64>,
    /// Seconds until the whole host retries, while the receiver or the link
    /// fails for everyone; null otherwise.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub hold_s: Option<Option<u64>>,
    pub host_id: String,
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub last_error: Option<Option<LastError>>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub last_success: Option<Option<String>>,
    /// Archives (`*.zst`) in `outbox/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Entries in `quarantine/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined_this_pass: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipped_this_pass: Option<u64>,
    /// When the last pass ended (RFC 3339); null: none completed yet.
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transient_this_pass: Option<u64>,
    /// The last rewrite (RFC 3339).
    pub updated_at: Option<String>,
    pub uploading: Vec<UploadProgress>,
}

/// `last_error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastError {
    /// RFC 3339.
    pub at: String,
    /// The receiver's error code, if it sent one.
    pub code: Option<String>,
    pub episode: String,
    pub message: String,
    /// The HTTP status, if there was an answer.
    pub status: Option<u16>,
}

/// One upload in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadProgress {
    pub bytes_per_s: u64,
    pub bytes_sent: u64,
    pub bytes_total: u64,
    pub episode_id: String,
    pub phase: Phase,
    pub started_at: String,
}

/// Where an upload is: its body still going out, or all of it sent and the
/// receiver's answer awaited (which may take `stall_timeout_s` +
/// `upload::ANSWER_GRACE`: the receiver verifies the whole archive first).
/// Files from before phases were written read as `sending`; a phase this
/// build does not know (a newer shipper's, read after a downgrade) reads as
/// `other`, so the rest of the file still reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Sending,
    AwaitingAnswer,
    /// Never written; only read.
    #[serde(other)]
    Other,
}

/// A field that is there, `null` or not: `Some(None)`; absent stays `None`
/// (the field's default).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass's document as the shipper wrote it with `serde_json::json!`
    /// (keys sorted, pretty), before this type existed.
    const PASS: &str = r#"{
  "alive_at": "2026-12-06T16:20:03Z",
  "bwlimit": 2097152,
  "hold_s": null,
  "host_id": "lab-01",
  "last_error": {
    "at": "2026-12-06T16:19:58Z",
    "code": "digest_mismatch",
    "episode": "ep-2",
    "message": "the receiver refused it",
    "status": 422
  },
  "last_success": null,
  "outbox": 1,
  "pending": 3,
  "quarantined": 2,
  "quarantined_this_pass": 1,
  "shipped_this_pass": 0,
  "time": "2026-12-06T16:20:00Z",
  "transient_this_pass": 1,
  "updated_at": "2026-12-06T16:20:04Z",
  "uploading": [
    {
      "bytes_per_s": 1048576,
      "bytes_sent": 4194304,
      "bytes_total": 10485760,
      "episode_id": "ep-1",
      "phase": "awaiting_answer",
      "started_at": "2026-12-06T16:19:59Z"
    }
  ]
}"#;

    /// Before the first pass, with no earlier file.
    const BARE: &str = r#"{
  "bwlimit": null,
  "host_id": "lab-01",
  "time": null,
  "updated_at": "2026-12-06T16:20:04Z",
  "uploading": []
}"#;

    #[test]
    fn the_documents_written_before_the_type_read_and_write_back_byte_for_byte() {
        for doc in [PASS, BARE] {
            let s: Status = serde_json::from_str(doc).unwrap();
            assert_eq!(
                String::from_utf8(serde_json::to_vec_pretty(&s).unwrap()).unwrap(),
                doc
            );
        }
        let s: Status = serde_json::from_str(PASS).unwrap();
        assert_eq!(s.hold_s, Some(None));
        assert_eq!(s.last_success, Some(None));
        assert_eq!(s.last_error.flatten().unwrap().status, Some(422));
        assert_eq!(s.uploading[0].phase, Phase::AwaitingAnswer);
        let s: Status = serde_json::from_str(BARE).unwrap();
        assert_eq!((s.hold_s, s.last_success, s.pending), (None, None, None));
    }

    /// A phase from a newer shipper (read after a downgrade) does not make
    /// the whole file unreadable.
    #[test]
    fn an_unknown_phase_reads_as_other_and_the_rest_still_reads() {
        let doc = PASS.replace("\"awaiting_answer\"", "\"verifying_elsewhere\"");
        assert_ne!(doc, PASS);
        let s: Status = serde_json::from_str(&doc).unwrap();
        assert_eq!(s.uploading[0].phase, Phase::Other);
        assert_eq!(s.last_error.flatten().unwrap().status, Some(422));
    }

    /// The type writes the bytes the `json!` map did (the code it replaced,
    /// shipper/src/driver/status.rs and progress.rs), for a pass with every
    /// nullable field null and with each set, and for the bare document.
    #[test]
    fn the_type_writes_what_the_json_map_wrote() {
        let up = UploadProgress {
            episode_id: "ep-1".into(),
            bytes_sent: 7,
            bytes_total: 9,
            started_at: "s".into(),
            bytes_per_s: 3,
            phase: Phase::AwaitingAnswer,
        };
        let err = LastError {
            code: None,
            status: Some(503),
            episode: "ep-2".into(),
            message: "m".into(),
            at: "a".into(),
        };
        let progress = |mut m: serde_json::Map<String, serde_json::Value>, alive: bool| {
            m.insert("updated_at".into(), "u".into());
            m.insert("uploading".into(), serde_json::to_value([&up]).unwrap());
            m.insert("bwlimit".into(), Some(5u64).into());
            if alive {
                m.insert("alive_at".into(), "l".into());
            }
            serde_json::to_vec_pretty(&m).unwrap()
        };
        let typed = |mut s: Status, alive: bool| {
            s.updated_at = Some("u".into());
            s.uploading = vec![up.clone()];
            s.bwlimit = Some(5);
            s.alive_at = alive.then(|| "l".into());
            serde_json::to_vec_pretty(&s).unwrap()
        };
        for (success, error, hold) in [
            (None, None, None),
            (Some("t0".to_owned()), Some(err), Some(42u64)),
        ] {
            let old = serde_json::json!({
                "time": "t", "host_id": "lab-01", "pending": 1, "outbox": 2,
                "shipped_this_pass": 3, "quarantined_this_pass": 4, "quarantined": 5,
                "transient_this_pass": 6, "last_success": success, "last_error": error,
                "hold_s": hold,
            });
            let serde_json::Value::Object(old) = old else {
                unreachable!()
            };
            let new = Status {
                time: Some("t".into()),
                host_id: "lab-01".into(),
                pending: Some(1),
                outbox: Some(2),
                shipped_this_pass: Some(3),
                quarantined_this_pass: Some(4),
                quarantined: Some(5),
                transient_this_pass: Some(6),
                last_success: Some(success),
                last_error: Some(error),
                hold_s: Some(hold),
                ..Status::default()
            };
            for alive in [false, true] {
                assert_eq!(
                    String::from_utf8(typed(new.clone(), alive)).unwrap(),
                    String::from_utf8(progress(old.clone(), alive)).unwrap()
                );
            }
        }
        let mut bare = serde_json::Map::new();
        bare.insert("time".into(), serde_json::Value::Null);
        bare.insert("host_id".into(), "lab-01".into());
        let new = Status {
            host_id: "lab-01".into(),
            ..Status::default()
        };
        assert_eq!(
            String::from_utf8(typed(new, false)).unwrap(),
            String::from_utf8(progress(bare, false)).unwrap()
        );
    }

    /// An older file (no `phase`, no `alive_at`, fields missing) and a newer
    /// one (fields this shipper does not know) both read.
    #[test]
    fn older_and_newer_files_read() {
        let s: Status = serde_json::from_str(
            r#"{"time":"t","uploading":[{"episode_id":"ep-1","bytes_sent":5}],
                "last_error":{"message":"m"},"from_the_future":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(s.time.as_deref(), Some("t"));
        assert_eq!(s.uploading[0].phase, Phase::Sending);
        assert_eq!(s.uploading[0].bytes_sent, 5);
        assert_eq!(s.last_error.flatten().unwrap().message, "m");
        assert_eq!(s.alive_at, None);
    }
}
