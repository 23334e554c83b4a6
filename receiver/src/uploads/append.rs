//! `PATCH {location}`: one append to a partial upload, and its completion.
//!
//! The append holds the upload's lock and an upload permit
//! (`limits.max_concurrent_uploads`, as a PUT does). Every frame goes to the
//! upload's validator session, which writes it to the spool; every
//! [`CHECKPOINT_BYTES`] or [`CHECKPOINT_EVERY`], and when the body ends or is
//! cut (idle timeout, rate floor, reset, another append taking over), the
//! session fsyncs the data and the new offset is recorded. The append that
//! ends the archive (`Upload-Complete: ?1`) waits for the validator's verdict
//! over the whole archive, checks the digest and commits through the store
//! as a PUT does. An answer that ends the episode's upload for good (400,
//! 413, 409 `conflict`) discards it; a transient one (503, 507, 500) keeps
//! it for the client to continue.

use super::complete::{complete, discard, settle};
use super::session::{Rules, Session, Stopped};
use super::spool::{Record, unix_now};
use super::table::{Slot, SlotState, take_over};
use super::{Answer, Decision, TAKEOVER_WAIT, episode_busy, length_mismatch, locate, not_found};
use crate::accept::{PutFacts, PutPlan, header_str};
use crate::auth::{ConnInfo, Identity};
use crate::error::ApiError;
use crate::error::{ingest_error, storage_io_error};
use crate::routes::{AppState, may_drain_unread_body};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use labship_protocol::upload::{UPLOAD_COMPLETE, UPLOAD_OFFSET, parse_complete, parse_offset};
use labship_protocol::{Commit, ErrorCode, Id, Sha256Digest};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checkpoint after this many appended bytes...
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// ...or this long after the last one when bytes are pending (whether more
/// arrive or the client has gone quiet), whichever comes first.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// How an append's body ended.
enum End {
    /// The body is complete.
    Done,
    /// The client stopped sending (idle, too slow, reset): what arrived is kept.
    Cut(String),
    /// A newer request for this upload asked for the lock.
    TakenOver,
    /// The receiver is shutting down.
    Stopping,
    /// More bytes than `Upload-Length`.
    TooLong,
    /// The validator refused the archive, or the spool failed.
    Failed(ApiError),
    /// The validator stopped early; its verdict is the answer.
    Stopped,
}

pub(super) async fn patch(
    State(state): State<Arc<AppState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Body,
) -> Response {
    // As a PUT: in its own task, so a client going away never drops an
    // append halfway through a checkpoint or a commit.
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let conn = conn.map(|c| c.0);
    let work = patch_decided(state, conn, headers, path, body);
    crate::routes::in_own_task("upload_append", &episode, work).await
}

async fn patch_decided(
    state: Arc<AppState>,
    conn: Option<ConnInfo>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
    mut body: Body,
) -> Response {
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let decision = Decision::begin("upload_append", conn, episode);
    let mut facts = PutFacts::default();
    let conn = decision.conn();
    let result = append(&state, conn, &headers, path, &mut body, &mut facts).await;
    // This append may have left one more idle session behind.
    state.resumable.trim_sessions().await;
    // An answer from the headers: read (and discard) a bounded amount so
    // that an HTTP/1 client still writing can read it. A verdict on the
    // archive found while the body streamed (a 4xx: 413 past
    // max_unpacked_bytes, 400): read the rest of it, as a PUT does, so the
    // client reads that final answer instead of a reset it would take for a
    // cut and send the archive again. A transient answer (503 at shutdown,
    // 507, 500) is not worth the wait: read as a cut, it is retried anyway.
    let verdict = result
        .as_ref()
        .err()
        .is_some_and(|e| e.status().is_client_error());
    let budget = if facts.body_started {
        verdict.then_some(state.limits.max_bytes)
    } else {
        may_drain_unread_body(&headers, result.as_ref().err())
            .then_some(crate::routes::EARLY_ANSWER_DRAIN)
    };
    if let Some(budget) = budget {
        let _ = crate::ingest::drain(&mut body, budget, state.limits).await;
    }
    decision.record(&state, &facts, &result);
    result.into_response()
}

async fn append(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: &mut Body,
    facts: &mut PutFacts,
) -> Result<Answer, ApiError> {
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "receiver is shutting down; retry shortly",
        ));
    }
    let (identity, slot) = locate(state, conn, headers, path)?;
    crate::routes::note_host(&identity.host_id);
    facts.identity = Some(identity.clone());
    let request = AppendHeaders::parse(headers, &slot)?;
    let Some((mut held, generation)) = take_over(&slot, TAKEOVER_WAIT).await else {
        return Err(episode_busy(
            "an earlier append to this upload does not stop",
        ));
    };
    if slot.gone.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(not_found());
    }
    let plan = plan_of(&identity, &held)?;
    facts.digest = Some(plan.digest);
    let at = held.record.offset;
    if request.offset != at {
        return Err(ApiError::new(
            ErrorCode::OffsetMismatch,
            format!(
                "Upload-Offset is {} but the receiver holds {at} bytes of this upload; continue from {at}",
                request.offset
            ),
        )
        .with_upload_offset(at));
    }
    if let Some(n) = request.content_length {
        let end = at.saturating_add(n);
        if end > slot.length || (request.complete && end != slot.length) {
            let e = length_mismatch(&slot, end, request.complete);
            return discard(state, &slot, &mut held, e).await;
        }
    }
    let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            ErrorCode::Busy,
            "too many uploads in progress (limits.max_concurrent_uploads); retry shortly",
        )
        .with_upload_offset(at));
    };
    ensure_session(state, &mut held, &plan).await?;
    facts.body_started = true;
    state.metrics.uploads_in_flight.inc();
    let end = receive(state, &slot, &mut held, generation, body, facts).await;
    state.metrics.uploads_in_flight.dec();
    held.idle_since = Instant::now();
    let now_at = held.record.offset;
    match end {
        End::Done if request.complete => complete(state, conn, &slot, held, &plan).await,
        End::Done => Ok(Answer::Appended(now_at)),
        End::Cut(why) => Err(ApiError::new(
            ErrorCode::Busy,
            format!("append interrupted ({why}); {now_at} bytes are held: continue from there"),
        )
        .with_upload_offset(now_at)),
        End::TakenOver => Err(ApiError::new(
            ErrorCode::OffsetMismatch,
            format!("another append to this upload took over; {now_at} bytes are held"),
        )
        .with_upload_offset(now_at)),
        End::Stopping => Err(ApiError::new(
            ErrorCode::ShuttingDown,
            format!(
                "receiver is shutting down; {now_at} bytes are held: continue from there shortly"
            ),
        )
        .with_upload_offset(now_at)),
        End::TooLong => {
            let e = length_mismatch(&slot, slot.length + 1, false);
            discard(state, &slot, &mut held, e).await
        }
        End::Failed(e) => settle(state, &slot, &mut held, e).await,
        End::Stopped => Err(ApiError::internal("validator stopped without a verdict")),
    }
}

/// The headers of an append.
struct AppendHeaders {
    offset: u64,
    complete: bool,
    content_length: Option<u64>,
}

impl AppendHeaders {
    fn parse(headers: &HeaderMap, slot: &Slot) -> Result<Self, ApiError> {
        let held = slot.offset.load(std::sync::atomic::Ordering::Relaxed);
        let offset = header_str(headers, UPLOAD_OFFSET)
            .and_then(parse_offset)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::HeaderInvalid,
                    format!("Upload-Offset (an integer) is required; the receiver holds {held} bytes of this upload"),
                )
                .with_upload_offset(held)
            })?;
        let complete = match header_str(headers, UPLOAD_COMPLETE) {
            None => false,
            Some(v) => parse_complete(v).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::HeaderInvalid,
                    format!("Upload-Complete is {v:?}; it must be ?1 (the last append) or ?0"),
                )
            })?,
        };
        let content_length = match header_str(headers, header::CONTENT_LENGTH.as_str()) {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::HeaderInvalid,
                    format!("Content-Length {v:?} is not a number"),
                )
            })?),
        };
        Ok(Self {
            offset,
            complete,
            content_length,
        })
    }
}

/// The plan the upload was created with, for the validator and the commit.
fn plan_of(identity: &Identity, held: &SlotState) -> Result<PutPlan, ApiError> {
    let r = &held.record;
    let broken = |what: &str| ApiError::internal(format!("upload record {}: {what}", r.token));
    Ok(PutPlan {
        identity: identity.clone(),
        episode: Id::parse(&r.episode_id).map_err(|_| broken("episode id"))?,
        commit: Commit::parse(&r.commit).map_err(|_| broken("commit"))?,
        digest: Sha256Digest::parse_header(&r.digest).map_err(|_| broken("digest"))?,
        length: Some(r.length),
    })
}

/// A session whose input is exactly the durable prefix: the one in memory
/// when it is, else a new one reading the prefix back from the spool.
async fn ensure_session(
    state: &AppState,
    held: &mut SlotState,
    plan: &PutPlan,
) -> Result<(), ApiError> {
    if held
        .session
        .as_ref()
        .is_some_and(|s| s.synced == held.record.offset)
    {
        return Ok(());
    }
    if let Some(old) = held.session.take() {
        old.close().await;
    }
    let (spool, record) = (state.resumable.spool.clone(), held.record.clone());
    let data = spool.data_path(&record.host_id, &record.token);
    let cut = tokio::task::spawn_blocking(move || spool.truncate_to(&record)).await;
    cut.map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| {
            storage_io_error(&state.metrics, "cut a partial upload back to its offset", e)
        })?;
    let rules = Rules {
        episode: plan.episode.to_string(),
        commit: plan.commit.clone(),
        max_unpacked: state.limits.max_unpacked,
    };
    held.session = Some(Session::start(data, held.record.offset, rules));
    Ok(())
}

/// Streams the body into the session, checkpointing as it goes and at the end.
async fn receive(
    state: &AppState,
    slot: &Slot,
    held: &mut SlotState,
    generation: u64,
    body: &mut Body,
    facts: &mut PutFacts,
) -> End {
    let SlotState {
        record, session, ..
    } = held;
    let Some(live) = session.as_mut() else {
        return End::Failed(ApiError::internal("append without a validator session"));
    };
    let mut pace = crate::pace::Pace::new(state.limits);
    let mut takeover = slot.takeover.subscribe();
    let mut stopping = state.resumable.stopping();
    let (mut at, mut pending, mut last) = (record.offset, 0u64, Instant::now());
    let end = loop {
        let frame = tokio::select! {
            frame = pace.frame(body) => frame,
            // Any takeover asked for since this append took the lock.
            () = async { let _ = takeover.wait_for(|g| *g != generation).await; } => break End::TakenOver,
            // (The guard `wait_for` returns is not Send: drop it inside.)
            () = async { let _ = stopping.wait_for(|s| *s).await; } => break End::Stopping,
            // A client gone quiet: what arrived is made durable without
            // waiting for the idle timeout (a kill -9 meanwhile keeps it).
            _ = tokio::time::sleep_until((last + CHECKPOINT_EVERY).into()), if pending > 0 => {
                if let Err(end) = checkpoint(state, slot, record, live).await {
                    break end;
                }
                (pending, last) = (0, Instant::now());
                continue;
            }
        };
        let data = match frame {
            Err(cut) => break End::Cut(cut.to_string()),
            Ok(None) => break End::Done,
            Ok(Some(Err(e))) => break End::Cut(e.to_string()),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        let n = data.len() as u64;
        if at + n > slot.length {
            break End::TooLong;
        }
        (at, pending, facts.bytes) = (at + n, pending + n, facts.bytes + n);
        state.metrics.received_bytes.inc_by(n);
        if live.send(data).await.is_err() {
            break End::Stopped;
        }
        if pending >= CHECKPOINT_BYTES || last.elapsed() >= CHECKPOINT_EVERY {
            if let Err(end) = checkpoint(state, slot, record, live).await {
                break end;
            }
            (pending, last) = (0, Instant::now());
        }
    };
    // What arrived is kept, however the body ended (unless the upload goes).
    // An append that brought nothing new (a client probing for the offset
    // with an empty append) does not wait for a session still re-reading
    // its prefix.
    let end = match end {
        End::Failed(_) | End::TooLong | End::Stopped => end,
        _ if pending == 0 => end,
        _ => checkpoint(state, slot, record, live)
            .await
            .err()
            .unwrap_or(end),
    };
    match end {
        End::Stopped => match session.take() {
            Some(stopped) => match stopped.finish().await {
                Err(e) => End::Failed(ingest_error(&state.metrics, e)),
                Ok(_) => End::Failed(ApiError::internal("validator ended before its input")),
            },
            None => End::Failed(ApiError::internal("validator session vanished")),
        },
        end => end,
    }
}

/// fsync what was sent, then record the new durable offset.
async fn checkpoint(
    state: &AppState,
    slot: &Slot,
    record: &mut Record,
    session: &mut Session,
) -> Result<(), End> {
    let synced = match session.sync().await {
        Err(Stopped) => return Err(End::Stopped),
        Ok(Err(e)) => {
            return Err(End::Failed(storage_io_error(
                &state.metrics,
                "fsync a partial upload",
                e,
            )));
        }
        Ok(Ok(n)) => n,
    };
    crate::crash_point("upload:data-synced");
    if synced == record.offset {
        return Ok(());
    }
    let mut next = record.clone();
    (next.offset, next.last_append_at) = (synced, unix_now());
    let (spool, staged) = (state.resumable.spool.clone(), next.clone());
    let written = tokio::task::spawn_blocking(move || spool.write_record(&staged)).await;
    written
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| {
            End::Failed(storage_io_error(
                &state.metrics,
                "record a partial upload's offset",
                e,
            ))
        })?;
    crate::crash_point("upload:offset-recorded");
    slot.recorded(&next);
    *record = next;
    Ok(())
}
