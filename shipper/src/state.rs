//! The episode lifecycle as one explicit state machine (docs/transport.md).
//!
//! [`step`] is pure: given where an episode stands and what just happened, it
//! says where it stands now and what the driver must do next. The driver
//! (`queue`) performs the I/O; every durable state is a place on disk, so a
//! restart rebuilds the machine from the directories alone.

use labship_protocol::{Commit, Disposition, ErrorCode, Sha256Digest, StampError, disposition};

/// A packed archive: in `outbox/`, or held in memory when it is small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub digest: Sha256Digest,
    pub bytes: u64,
    pub commit: Commit,
    /// The bytes themselves for an archive of at most
    /// [`crate::disk::INLINE_MAX`]: never written to `outbox/`, uploaded from
    /// memory. `None`: the archive is `outbox/<id>.tar.zst`.
    pub inline: Option<bytes::Bytes>,
    /// The episode directory it was packed from: an archive is only ever
    /// sent or confirmed for that directory, not for a later episode that
    /// reuses the id.
    pub origin: crate::disk::Origin,
}

/// Why an episode is quarantined (becomes `quarantine_reason.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: ErrorCode,
    pub http_status: Option<u16>,
    pub message: String,
    pub remediation: Option<String>,
    pub commit: Option<String>,
}

/// The local quarantine reason for a settled `meta.json` without a usable
/// stamp (the shipper's and `quarantine-unstamped`'s). No remediation: no
/// shell command fixes an episode recorded without its commit; the message
/// says what the producer must do for the next ones.
pub fn unstamped_reason(e: &StampError) -> Reason {
    let code = match e {
        StampError::NotJson { .. } | StampError::NotObject => ErrorCode::MetaInvalid,
        StampError::Missing => ErrorCode::StampMissing,
        StampError::Malformed { .. } => ErrorCode::StampMalformed,
    };
    Reason {
        code,
        http_status: None,
        message: format!(
            "{e}; the receiver refuses unstamped episodes: the producer must record code_version.commit (40 lowercase hex) in meta.json"
        ),
        remediation: None,
        commit: None,
    }
}

/// Where an episode stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// In `episodes/`, settled, stamped: to be packed.
    Ready { commit: Commit },
    /// Archive packed (in `outbox/`, or in memory when small). `recovered`
    /// when found in `outbox/` at start-up: the
    /// receiver may already hold it, so ask (HEAD) before uploading.
    Packed { archive: Archive, recovered: bool },
    /// Final: moved to `shipped/`.
    Shipped,
    /// Final: moved to `quarantine/` with its reason.
    Quarantined(Reason),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Packed(Archive),
    /// Packing failed; `fatal` for symlinks and special files.
    PackFailed {
        fatal: bool,
        message: String,
    },
    /// HEAD answered: `Some(digest)` when something is stored, `None` for 404.
    Head(Option<Sha256Digest>),
    /// PUT answered 200 or 201 with the receiver's confirmation that it
    /// holds this host's episode with the digest and size that were sent
    /// (`labship_protocol::StoredBody::confirms`).
    Stored {
        status: u16,
    },
    /// An answer that cannot be the receiver's verdict on this upload: a
    /// success without its confirmation (a misrouted URL, a proxy answering
    /// for itself) or a redirect (never followed). Nothing is known to be
    /// stored; something other than the receiver answers at `receiver.url`.
    NotReceiver {
        status: u16,
        message: String,
    },
    /// PUT answered with `status` and, for errors, the receiver's body. Never
    /// a success: those are [`Event::Stored`] or [`Event::NotReceiver`].
    Answer {
        status: u16,
        error: Option<ErrorCode>,
        message: String,
        remediation: Option<String>,
    },
    /// The archive is over the receiver's advertised `max_episode_bytes`:
    /// refused locally, never uploaded.
    OverLimit {
        bytes: u64,
        limit: u64,
    },
    /// No answer (connect failure, reset, stall, timeout). `auth` when the
    /// failure looks like a refused client certificate.
    NoAnswer {
        auth: bool,
        message: String,
        /// This episode's failure alone (an upload the receiver keeps
        /// losing or disputing): loud, and it defers only this episode,
        /// never the host.
        episode: bool,
    },
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pack,
    Head,
    Upload,
    /// Move to `shipped/`, then drop the outbox archive.
    Retire,
    /// Move to `quarantine/` with the reason, then drop the outbox archive.
    Quarantine,
    /// Keep the state; try again after backoff. `loud` for problems an operator
    /// must fix (certificates, 401/403, unexpected answers).
    RetryLater {
        loud: bool,
        code: Option<ErrorCode>,
        status: Option<u16>,
        message: String,
    },
}

/// One transition.
pub fn step(state: &State, event: Event) -> (State, Action) {
    let retry = |loud, code, status, message| {
        (
            state.clone(),
            Action::RetryLater {
                loud,
                code,
                status,
                message,
            },
        )
    };
    match (state, event) {
        (State::Ready { .. }, Event::Packed(archive)) => (
            State::Packed {
                archive,
                recovered: false,
            },
            Action::Upload,
        ),
        (
            State::Ready { commit },
            Event::PackFailed {
                fatal: true,
                message,
            },
        ) => (
            State::Quarantined(Reason {
                code: ErrorCode::ArchiveFailed,
                http_status: None,
                message,
                remediation: None,
                commit: Some(commit.to_string()),
            }),
            Action::Quarantine,
        ),
        (
            State::Ready { .. },
            Event::PackFailed {
                fatal: false,
                message,
            },
        ) => retry(false, None, None, message),
        (State::Packed { archive, .. }, Event::Head(Some(stored))) if stored == archive.digest => {
            (State::Shipped, Action::Retire)
        }
        (State::Packed { archive, .. }, Event::Head(_)) => (
            // Absent, or another digest (the PUT will then answer 409).
            State::Packed {
                archive: archive.clone(),
                recovered: false,
            },
            Action::Upload,
        ),
        (State::Packed { .. }, Event::Stored { .. }) => (State::Shipped, Action::Retire),
        (State::Packed { .. }, Event::NotReceiver { status, message }) => {
            retry(true, None, Some(status), message)
        }
        (
            State::Packed { archive, .. },
            Event::Answer {
                status,
                error,
                message,
                remediation,
            },
        ) => match (disposition(status), error) {
            // A 409 read by its code first: the receiver holds another
            // offset of a resumable upload, never the episode's fault
            // (crate::upload::resumable follows it; one that reaches here retries).
            (_, Some(ErrorCode::OffsetMismatch)) => retry(false, error, Some(status), message),
            // Only a confirmed success retires (`Event::Stored`).
            (Disposition::Stored, error) => retry(
                true,
                error,
                Some(status),
                format!("HTTP {status} without the receiver's confirmation: {message}"),
            ),
            // Fatal only on the receiver's own word: a labship error code that
            // belongs to this status. A bare 400/409/412/413 from a proxy or a
            // misrouted URL is an operator's problem, not the episode's.
            (Disposition::Fatal, Some(code)) if code.http_status() == Some(status) => (
                State::Quarantined(Reason {
                    code,
                    http_status: Some(status),
                    message,
                    remediation,
                    commit: Some(archive.commit.to_string()),
                }),
                Action::Quarantine,
            ),
            (Disposition::Fatal, error) => retry(
                true,
                error,
                Some(status),
                format!(
                    "HTTP {status} without a matching labship error code (is something \
                     other than the receiver answering?): {message}"
                ),
            ),
            (Disposition::Transient { loud }, error) => retry(loud, error, Some(status), message),
        },
        (State::Packed { archive, .. }, Event::OverLimit { bytes, limit }) => (
            State::Quarantined(Reason {
                code: ErrorCode::TooLarge,
                http_status: None,
                message: format!(
                    "the archive is {bytes} bytes, over the receiver's limits.max_episode_bytes = {limit} (advertised by its ping); not uploaded"
                ),
                remediation: None,
                commit: Some(archive.commit.to_string()),
            }),
            Action::Quarantine,
        ),
        (
            State::Packed { .. },
            Event::NoAnswer {
                auth,
                message,
                episode,
            },
        ) => retry(
            auth || episode,
            auth.then_some(ErrorCode::Unauthenticated),
            None,
            message,
        ),
        // Anything else is a driver bug; staying put and retrying is safe.
        (s, e) => (
            s.clone(),
            Action::RetryLater {
                loud: true,
                code: None,
                status: None,
                message: format!("unexpected event {e:?}"),
            },
        ),
    }
}

/// The first action for a state found on disk.
pub fn start(state: &State) -> Option<Action> {
    match state {
        State::Ready { .. } => Some(Action::Pack),
        State::Packed {
            recovered: true, ..
        } => Some(Action::Head),
        State::Packed {
            recovered: false, ..
        } => Some(Action::Upload),
        State::Shipped | State::Quarantined(_) => None,
    }
}

/// An archive of `data` for tests: its digest and size, no file behind it.
#[cfg(test)]
pub(crate) fn test_archive(data: &[u8]) -> Archive {
    Archive {
        digest: Sha256Digest::of(data),
        bytes: data.len() as u64,
        commit: Commit::parse("1111111111111111111111111111111111111111").unwrap(),
        inline: None,
        origin: crate::disk::Origin {
            dev: 1,
            ino: 2,
            btime_ns: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Archive {
        test_archive(b"a")
    }

    fn packed(recovered: bool) -> State {
        State::Packed {
            archive: archive(),
            recovered,
        }
    }

    fn answer(status: u16, error: Option<ErrorCode>) -> Event {
        Event::Answer {
            status,
            error,
            message: "m".into(),
            remediation: Some("fix".into()),
        }
    }

    #[test]
    fn the_happy_path() {
        let ready = State::Ready {
            commit: archive().commit,
        };
        assert_eq!(start(&ready), Some(Action::Pack));
        let (s, a) = step(&ready, Event::Packed(archive()));
        assert_eq!((s.clone(), a), (packed(false), Action::Upload));
        assert_eq!(
            step(&s, Event::Stored { status: 201 }),
            (State::Shipped, Action::Retire)
        );
        assert_eq!(step(&s, Event::Stored { status: 200 }).1, Action::Retire);
    }

    /// A 409 `offset_mismatch` (a resumable upload's offset) is never the
    /// episode's fault: a quiet retry, while a 409 `conflict` quarantines;
    /// a 503 `episode_busy` is a quiet retry like any 503.
    #[test]
    fn offset_mismatch_retries_and_conflict_quarantines() {
        let (s, a) = step(&packed(false), answer(409, Some(ErrorCode::OffsetMismatch)));
        assert_eq!(s, packed(false));
        assert!(matches!(a, Action::RetryLater { loud: false, .. }), "{a:?}");
        let (_, a) = step(&packed(false), answer(409, Some(ErrorCode::Conflict)));
        assert_eq!(a, Action::Quarantine);
        let (_, a) = step(&packed(false), answer(503, Some(ErrorCode::EpisodeBusy)));
        assert!(matches!(a, Action::RetryLater { loud: false, .. }), "{a:?}");
    }

    /// A success the receiver did not confirm, or a redirect, retires
    /// nothing: it is loud and the episode stays packed.
    #[test]
    fn an_unconfirmed_success_is_loud_and_keeps_the_episode() {
        for event in [
            Event::NotReceiver {
                status: 200,
                message: "PUT https://x/ answered 200 but not as the receiver".into(),
            },
            Event::NotReceiver {
                status: 301,
                message: "redirected".into(),
            },
            answer(200, None),
            answer(201, None),
        ] {
            let (s, a) = step(&packed(false), event.clone());
            assert_eq!(s, packed(false), "{event:?}");
            assert!(
                matches!(
                    a,
                    Action::RetryLater {
                        loud: true,
                        code: None,
                        status: Some(200 | 201 | 301),
                        ..
                    }
                ),
                "{event:?}: {a:?}"
            );
        }
    }

    #[test]
    fn every_row_of_the_answer_table() {
        for (status, code) in [
            (400, ErrorCode::StampMismatch),
            (409, ErrorCode::Conflict),
            (412, ErrorCode::CommitOutOfWindow),
            (413, ErrorCode::TooLarge),
        ] {
            let (s, a) = step(&packed(false), answer(status, Some(code)));
            assert_eq!(a, Action::Quarantine, "{status}");
            let State::Quarantined(r) = s else {
                panic!("{status}")
            };
            assert_eq!(
                (r.code, r.http_status, r.remediation.as_deref()),
                (code, Some(status), Some("fix"))
            );
        }
        for (status, loud) in [
            (401, true),
            (403, true),
            (404, true),
            (503, false),
            (507, false),
            (500, false),
        ] {
            let (s, a) = step(&packed(false), answer(status, None));
            assert_eq!(s, packed(false), "{status}: stays packed");
            assert!(
                matches!(a, Action::RetryLater { loud: l, .. } if l == loud),
                "{status}: {a:?}"
            );
        }
        let (_, a) = step(
            &packed(false),
            Event::NoAnswer {
                auth: true,
                message: "closed".into(),
                episode: false,
            },
        );
        assert!(matches!(
            a,
            Action::RetryLater {
                loud: true,
                code: Some(ErrorCode::Unauthenticated),
                ..
            }
        ));
    }

    #[test]
    fn a_fatal_status_without_the_receivers_code_is_not_fatal() {
        for (status, error) in [
            (400, None),
            (413, None),
            (412, Some(ErrorCode::TooLarge)),
            (409, Some(ErrorCode::Internal)),
        ] {
            let (s, a) = step(&packed(false), answer(status, error));
            assert_eq!(s, packed(false), "{status} {error:?}: stays packed");
            assert!(
                matches!(&a, Action::RetryLater { loud: true, status: Some(st), message, .. }
                    if *st == status && message.contains("without a matching labship error code")),
                "{status}: {a:?}"
            );
        }
    }

    #[test]
    fn over_the_advertised_limit_is_a_local_too_large() {
        let (s, a) = step(
            &packed(false),
            Event::OverLimit {
                bytes: 20,
                limit: 10,
            },
        );
        assert_eq!(a, Action::Quarantine);
        let State::Quarantined(r) = s else { panic!() };
        assert_eq!((r.code, r.http_status), (ErrorCode::TooLarge, None));
        assert!(
            r.message.contains("max_episode_bytes = 10"),
            "{}",
            r.message
        );
    }

    #[test]
    fn recovery_asks_before_uploading() {
        assert_eq!(start(&packed(true)), Some(Action::Head));
        assert_eq!(
            step(&packed(true), Event::Head(Some(archive().digest))),
            (State::Shipped, Action::Retire)
        );
        assert_eq!(
            step(&packed(true), Event::Head(None)),
            (packed(false), Action::Upload)
        );
        assert_eq!(
            step(&packed(true), Event::Head(Some(Sha256Digest::of(b"other")))).1,
            Action::Upload
        );
    }

    #[test]
    fn pack_failures() {
        let ready = State::Ready {
            commit: archive().commit,
        };
        let (s, a) = step(
            &ready,
            Event::PackFailed {
                fatal: true,
                message: "symlink".into(),
            },
        );
        assert_eq!(a, Action::Quarantine);
        assert!(matches!(
            s,
            State::Quarantined(Reason {
                code: ErrorCode::ArchiveFailed,
                http_status: None,
                ..
            })
        ));
        assert_eq!(
            step(
                &ready,
                Event::PackFailed {
                    fatal: false,
                    message: "changed".into()
                }
            )
            .0,
            ready
        );
    }
}
