//! The decisions a `PUT` and a resumable upload share (CONTRACT §4, §9).
//!
//! [`check_headers`] decides from the headers alone: identity (401/403), ids
//! (400), stamp and digest headers (400), an existing archive (200 same digest
//! / 409 other digest / 503 `episode_busy` for an S3 claim in progress), the
//! declared size (413, from `Content-Length` for a PUT, `Upload-Length` for a
//! `POST /v1/uploads`) and the gate (412), then the room on disk for that size
//! (507). [`receive_and_commit`] is the PUT's
//! body phase; [`commit_archive`] its commit half, which a resumable upload's
//! completing `PATCH` reuses. The error mappings (store and validator errors to
//! the contract's codes) live here too, in one place.

use crate::auth::{ConnInfo, Identity};
use crate::error::{ApiError, ingest_error, read_error, storage_error};
use crate::ingest;
use crate::routes::{AppState, authorize};
use crate::store::{Client, CommitOutcome, Lookup, Manifest};
use axum::body::Body;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, StatusCode, header};
use labship_protocol::headers::{CONTENT_DIGEST, LABSHIP_COMMIT};
use labship_protocol::upload::{UPLOAD_LENGTH, parse_offset};
use labship_protocol::{Commit, ErrorCode, Id, Sha256Digest, StoredBody};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

/// What the audit line of a PUT records, filled in as the request progresses.
#[derive(Debug, Default)]
pub(crate) struct PutFacts {
    pub(crate) identity: Option<Identity>,
    /// Body bytes read (all of them on success).
    pub(crate) bytes: u64,
    /// Whether the body phase started (the body has been polled).
    pub(crate) body_started: bool,
    pub(crate) digest: Option<Sha256Digest>,
}

/// A header's single value. One that is not text, or that appears more than
/// once with different values, reads as U+FFFD so it fails to parse (400):
/// an ambiguous stamp or digest must never be settled by picking one.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.any(|v| v != first) {
        return Some("\u{fffd}");
    }
    Some(first.to_str().unwrap_or("\u{fffd}"))
}

/// What the headers decided an upload may go ahead with.
#[derive(Debug, Clone)]
pub(crate) struct PutPlan {
    pub(crate) identity: Identity,
    pub(crate) episode: Id,
    pub(crate) commit: Commit,
    pub(crate) digest: Sha256Digest,
    /// The declared size (`Content-Length` of a PUT, which may be absent for
    /// a chunked body; `Upload-Length` of a POST, always present).
    pub(crate) length: Option<u64>,
}

/// The outcome of the header phase that is not an error.
#[derive(Debug)]
pub(crate) enum Checked {
    /// The same digest is stored already: 200, nothing to receive.
    Stored(StoredBody),
    Plan(PutPlan),
}

/// Which header declares the archive's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LengthHeader {
    /// A PUT: `Content-Length`, optional (chunked bodies are counted instead).
    ContentLength,
    /// `POST /v1/uploads`: `Upload-Length`, required.
    UploadLength,
}

/// Phase 1 of a PUT, and all of a `POST /v1/uploads`: every decision the
/// headers allow, before any archive byte is read.
pub(crate) async fn check_headers(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    length_header: LengthHeader,
    facts: &mut PutFacts,
) -> Result<Checked, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "receiver is shutting down; retry shortly",
        ));
    }
    let (identity, episode) = authorize(state, conn, headers, path)?;
    crate::routes::note_host(&identity.host_id);
    facts.identity = Some(identity.clone());
    let host = identity.host_id.as_str();
    let commit = match header_str(headers, LABSHIP_COMMIT) {
        None => {
            return Err(ApiError::new(
                ErrorCode::StampMissing,
                "X-Labship-Commit header is required",
            ));
        }
        Some(v) => Commit::parse(v.trim()).map_err(|e| {
            ApiError::new(ErrorCode::StampMalformed, format!("X-Labship-Commit: {e}"))
        })?,
    };
    let digest = match header_str(headers, CONTENT_DIGEST) {
        None => {
            return Err(ApiError::new(
                ErrorCode::DigestMissing,
                "Content-Digest: sha-256=:<base64>: is required",
            ));
        }
        Some(v) => Sha256Digest::parse_header(v)
            .map_err(|e| ApiError::new(ErrorCode::DigestMissing, e.to_string()))?,
    };
    facts.digest = Some(digest);
    // An archive already stored answers first: a retry whose 201 was lost must
    // get its 200 even if the gate or the limits have moved since.
    // S3: the same bytes claimed moments ago by an upload still going up to
    // the store (a big archive whose shipper gave up waiting) are answered
    // episode_busy here, before a possibly huge body is sent again for nothing.
    match state.store.lookup(host, episode.as_str()).await {
        Ok(Lookup::Stored(stored)) => {
            return existing(&stored, &digest).map(|(_, body)| Checked::Stored(body));
        }
        Ok(Lookup::Uploading {
            claim,
            retry_after_s,
        }) if claim.digest() == Some(digest) => {
            return Err(being_uploaded(&claim, retry_after_s));
        }
        Ok(Lookup::Uploading { .. } | Lookup::Absent) => {}
        Err(e) => return Err(read_error(&state.metrics, e)),
    }
    let length = declared_length(headers, length_header)?;
    if let Some(len) = length
        && len > state.limits.max_bytes
    {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "archive is {len} bytes; limits.max_episode_bytes is {}",
                state.limits.max_bytes
            ),
        ));
    }
    if !state.gate.allows(&commit) {
        return Err(ApiError::new(
            ErrorCode::CommitOutOfWindow,
            format!("commit {commit} is not in the receiver's accepted window; update the code on host {host} and re-run its installer"),
        )
        .with_remediation(state.gate.remediation.clone()));
    }
    if let Some(len) = length {
        let archive = (&digest, &commit, len);
        check_room(state, length_header, host, episode.as_str(), archive)?;
    }
    Ok(Checked::Plan(PutPlan {
        identity,
        episode,
        commit,
        digest,
        length,
    }))
}

/// How recently an upload must have been created or appended to for the
/// bytes it still needs to be set aside for it: an abandoned upload (its
/// shipper gone for good) holds no room for the day until it expires, so one
/// host cannot keep every other one out by declaring big uploads it never
/// sends.
const RESERVE_WHILE_ACTIVE_S: u64 = 600;

/// 507 before any archive byte (CONTRACT §4, §9) when the receiver's disk
/// cannot hold `length` more bytes beside what the resumable uploads in
/// progress (active in the last [`RESERVE_WHILE_ACTIVE_S`]) still need. One
/// filesystem holds the spool, the local store and the scratch files (S3: the
/// spool and the scratch files). A disk that cannot be asked is let through:
/// its writes still answer 507 when it fills.
///
/// A `POST` resumes or replaces this episode's uploads, so they are left out
/// of the sum; one resuming the same archive needs only what that upload
/// still lacks, against the free space alone (an upload already accepted is
/// never refused for the others'). A PUT writes a whole new copy beside them
/// all.
fn check_room(
    state: &AppState,
    which: LengthHeader,
    host: &str,
    episode: &str,
    (digest, commit, length): (&Sha256Digest, &Commit, u64),
) -> Result<(), ApiError> {
    let Ok(st) = rustix::fs::statvfs(state.resumable.spool.root()) else {
        return Ok(());
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let post = which == LengthHeader::UploadLength;
    let (digest, commit) = (digest.header_value(), commit.to_string());
    let active_since = crate::uploads::spool::unix_now().saturating_sub(RESERVE_WHILE_ACTIVE_S);
    let (mut due, mut resumed) = (0u64, None);
    for slot in state.resumable.all() {
        if slot.gone.load(Ordering::Relaxed) {
            continue;
        }
        let offset = slot.offset.load(Ordering::Relaxed);
        if post && slot.host_id == host && slot.episode_id == episode {
            if slot.digest == digest && slot.commit == commit && slot.length == length {
                resumed = Some(resumed.unwrap_or(0).max(offset));
            }
            continue;
        }
        if slot.last_append_at.load(Ordering::Relaxed) >= active_since {
            due = due.saturating_add(slot.length.saturating_sub(offset));
        }
    }
    let (need, due) = match resumed {
        Some(held) => (length.saturating_sub(held), 0),
        None => (length, due),
    };
    if free >= due.saturating_add(need) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::InsufficientStorage,
        format!(
            "the receiver's disk has no room for this archive now: {free} bytes free, it needs {need} beside {due} still due to uploads in progress; retry later (on the receiver: free space in storage.dir)"
        ),
    ))
}

fn declared_length(headers: &HeaderMap, which: LengthHeader) -> Result<Option<u64>, ApiError> {
    match which {
        LengthHeader::ContentLength => match header_str(headers, header::CONTENT_LENGTH.as_str()) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::new(ErrorCode::ArchiveInvalid, "Content-Length is not a number")
            }),
        },
        LengthHeader::UploadLength => match header_str(headers, UPLOAD_LENGTH) {
            None => Err(ApiError::new(
                ErrorCode::HeaderInvalid,
                "Upload-Length (the archive's total size in bytes) is required to create an upload",
            )),
            Some(v) => parse_offset(v).map(Some).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::HeaderInvalid,
                    format!("Upload-Length {v:?} is not a non-negative integer"),
                )
            }),
        },
    }
}

/// Phase 2 of a PUT: takes an upload permit, streams the body through the
/// validator into scratch, checks the digest and commits.
pub(crate) async fn receive_and_commit(
    state: &AppState,
    conn: Option<&ConnInfo>,
    plan: PutPlan,
    body: &mut Body,
    facts: &mut PutFacts,
) -> Result<(StatusCode, StoredBody), ApiError> {
    let Some(_permit) = crate::pace::admit(&state.uploads).await else {
        let mut e = ApiError::new(
            ErrorCode::Busy,
            "too many uploads in progress (limits.max_concurrent_uploads); retry shortly",
        );
        e.retry_after = Some(crate::pace::RETRY_AFTER_ADMISSION);
        return Err(e);
    };
    let scratch = state
        .store
        .scratch_file()
        .map_err(|e| storage_error(&state.metrics, e))?;
    state.metrics.uploads_in_flight.inc();
    facts.body_started = true;
    let started = Instant::now();
    let body_bytes = std::sync::atomic::AtomicU64::new(0);
    let received = ingest::ingest(
        body,
        plan.episode.to_string(),
        plan.commit.clone(),
        scratch,
        state.limits,
        |n| {
            state.metrics.received_bytes.inc_by(n);
            body_bytes.fetch_add(n, Ordering::Relaxed);
        },
    )
    .await;
    // Recorded for the audit line whatever the verdict.
    facts.bytes = body_bytes.load(Ordering::Relaxed);
    state.metrics.uploads_in_flight.dec();
    state
        .metrics
        .upload_seconds
        .observe(started.elapsed().as_secs_f64());
    let ingested = received.map_err(|e| ingest_error(&state.metrics, e))?;
    facts.bytes = ingested.bytes;
    check_digest(&ingested.digest, &plan.digest)?;
    commit_archive(state, conn, &plan, ingested.scratch, ingested.bytes).await
}

/// 400 `digest_mismatch` unless the received bytes hash to the declared digest.
pub(crate) fn check_digest(got: &Sha256Digest, want: &Sha256Digest) -> Result<(), ApiError> {
    if got == want {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::DigestMismatch,
        format!("body digest is {got} but Content-Digest says {want}"),
    ))
}

/// Makes a validated archive (`scratch`, `bytes` long, whose digest is the
/// plan's) visible through the store: the commit half of a PUT, and of the
/// `PATCH` that completes a resumable upload.
pub(crate) async fn commit_archive(
    state: &AppState,
    conn: Option<&ConnInfo>,
    plan: &PutPlan,
    scratch: tempfile::NamedTempFile,
    bytes: u64,
) -> Result<(StatusCode, StoredBody), ApiError> {
    let (identity, digest) = (&plan.identity, &plan.digest);
    let host = identity.host_id.as_str();
    let manifest = Manifest {
        host_id: host.to_owned(),
        episode_id: plan.episode.to_string(),
        digest: digest.header_value(),
        sha256_hex: digest.hex(),
        bytes,
        commit: plan.commit.to_string(),
        received_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        client: Client {
            host_id: identity.host_id.clone(),
            auth: identity.method.to_owned(),
            peer: conn.map(|c| c.peer.to_string()).unwrap_or_default(),
        },
    };
    let body = StoredBody::new(host, plan.episode.as_str(), digest, bytes);
    match state.store.commit(scratch, manifest).await {
        Ok(CommitOutcome::Stored) => Ok((StatusCode::CREATED, body)),
        Ok(CommitOutcome::AlreadyStored) => Ok((StatusCode::OK, body)),
        Ok(CommitOutcome::Conflict(stored)) => existing(&stored, digest),
        Ok(CommitOutcome::ClaimedByOther(claim)) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "episode {}/{} is claimed by an upload with digest {} ({} bytes, received {}) whose archive is not in the store yet (in progress, or its receiver died: docs/scale-out.md); this upload's digest is {}",
                claim.host_id,
                claim.episode_id,
                claim.digest,
                claim.bytes,
                claim.received_at,
                digest
            ),
        )),
        Ok(CommitOutcome::BeingUploaded {
            claim,
            retry_after_s,
        }) => Err(being_uploaded(&claim, retry_after_s)),
        Err(e) => Err(storage_error(&state.metrics, e)),
    }
}

/// S3: 503 `episode_busy` for the same bytes as a fresh claim whose archive
/// is not in the store yet (docs/scale-out.md): this episode only is deferred.
pub(crate) fn being_uploaded(claim: &Manifest, retry_after_s: u32) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::EpisodeBusy,
        format!(
            "episode {}/{} ({} bytes, claimed {}) is still being uploaded to the store by another receiver; retry in {retry_after_s} s",
            claim.host_id, claim.episode_id, claim.bytes, claim.received_at
        ),
    );
    e.retry_after = Some(retry_after_s);
    e
}

/// The answer when an archive is already stored under the id. The 200
/// names the stored archive (the same digest as the upload's): the shipper
/// retires the episode only on a body that confirms what it sent.
pub(crate) fn existing(
    stored: &Manifest,
    digest: &Sha256Digest,
) -> Result<(StatusCode, StoredBody), ApiError> {
    if stored.digest() == Some(*digest) {
        Ok((
            StatusCode::OK,
            StoredBody::new(&stored.host_id, &stored.episode_id, digest, stored.bytes),
        ))
    } else {
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "episode {}/{} is already stored with digest {} ({} bytes, received {}); this upload's digest is {}",
                stored.host_id,
                stored.episode_id,
                stored.digest,
                stored.bytes,
                stored.received_at,
                digest
            ),
        ))
    }
}
