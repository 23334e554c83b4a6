//! The resumable upload API of CONTRACT §9 (draft-ietf-httpbis-resumable-upload-12
//! without its 104; docs/protocol.md, "Resumable uploads"):
//! `POST /v1/uploads/{host_id}/{episode_id}` creates an upload after every
//! header decision of a PUT (`accept::check_headers`, with `Upload-Length`);
//! `HEAD`, `PATCH` and `DELETE` on its `Location` report the durable offset,
//! append (and complete), and discard it.
//!
//! The pieces: `spool` (the durable state on disk), `session` (the validator
//! across appends and restarts), `table` (the uploads in memory, one append
//! at a time, expiry) and `append` (the PATCH). A completed archive is
//! committed by `accept::commit_archive`, the PUT's own commit, so it becomes
//! visible exactly as a PUT's does (fs and S3).

mod append;
mod complete;
pub(crate) mod session;
pub(crate) mod spool;
pub(crate) mod table;

use crate::accept::{Checked, LengthHeader, PutFacts, PutPlan, check_headers};
use crate::auth::{ConnInfo, Identity};
use crate::error::ApiError;
use crate::error::storage_io_error;
use crate::routes::{ApiCall, AppState, authenticate, check_host, may_drain_unread_body};
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{head, post};
use labship_protocol::upload::{
    self, Token, UPLOAD_COMPLETE, UPLOAD_LENGTH, UPLOAD_LIMIT, UPLOAD_OFFSET, UploadLimit,
    format_complete,
};
use labship_protocol::{ErrorCode, StoredBody};
use spool::{Record, unix_now};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use table::{Claim, Refusal, Slot, take_over};

pub(crate) use table::Table;

/// How long a request waits for an append of the same upload to stop and
/// let go ([`table::take_over`]) before answering 503 `episode_busy`.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// The upload API's routes (merged into `routes::app`).
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/uploads/{host_id}/{episode_id}", post(create))
        .route(
            "/v1/uploads/{host_id}/{episode_id}/{token}",
            head(offset).patch(append::patch).delete(discard),
        )
}

/// A successful answer of the upload API.
#[derive(Debug)]
pub(crate) enum Answer {
    /// 200 or 201 with the PUT's body: the archive is stored.
    Stored(StatusCode, StoredBody),
    /// 201 from `POST`.
    Created {
        location: String,
        /// 0 for a new upload; the durable offset of one resumed.
        offset: u64,
        limit: UploadLimit,
    },
    /// 204 from `HEAD`.
    Offset { offset: u64, length: u64 },
    /// 204 after an append that does not complete the upload.
    Appended(u64),
    /// 204 from `DELETE`.
    Deleted,
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Self::Stored(status, _) => *status,
            Self::Created { .. } => StatusCode::CREATED,
            Self::Offset { .. } | Self::Appended(_) | Self::Deleted => StatusCode::NO_CONTENT,
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = match &self {
            Self::Stored(_, body) => (status, axum::Json(body.clone())).into_response(),
            _ => status.into_response(),
        };
        let h = response.headers_mut();
        match self {
            Self::Created {
                location,
                offset,
                limit,
            } => {
                if let Ok(v) = HeaderValue::from_str(&location) {
                    h.insert(header::LOCATION, v);
                }
                h.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
                if let Ok(v) = HeaderValue::from_str(&limit.to_string()) {
                    h.insert(UPLOAD_LIMIT, v);
                }
            }
            Self::Offset { offset, length } => {
                h.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
                h.insert(UPLOAD_LENGTH, HeaderValue::from(length));
                h.insert(
                    UPLOAD_COMPLETE,
                    HeaderValue::from_static(format_complete(false)),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            Self::Appended(offset) => {
                h.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
            }
            Self::Stored(..) | Self::Deleted => {}
        }
        response
    }
}

/// What one request of the upload API leaves in the audit log, the metrics
/// and the log.
struct Decision(ApiCall);

impl Decision {
    fn begin(op: &'static str, conn: Option<ConnInfo>, episode: String) -> Self {
        Self(ApiCall::begin(Some(op), conn, episode))
    }

    fn conn(&self) -> Option<&ConnInfo> {
        self.0.conn.as_ref()
    }

    /// Audits the answer, counts it in `labship_uploads_total` when it is
    /// the episode's verdict (what a PUT would have answered), and logs
    /// refusals.
    fn record(&self, state: &AppState, facts: &PutFacts, result: &Result<Answer, ApiError>) {
        let (status, error) = match result {
            Ok(a) => (a.status(), None),
            Err(e) => (e.status(), Some(e)),
        };
        let host = facts.identity.as_ref().map(|i| i.host_id.as_str());
        let (peer, duration_ms) = self.0.audit(state, facts, status, error);
        let verdict = match (result, error) {
            (Ok(Answer::Stored(..)), _) => true,
            (_, Some(e)) => {
                matches!(e.status().as_u16(), 400 | 409 | 412 | 413 | 507)
                    && e.code != ErrorCode::OffsetMismatch
            }
            _ => false,
        };
        if verdict {
            let code = error.map(|e| e.code.as_str());
            // The archive's size, not this request's body (the last append).
            let stored = match result {
                Ok(Answer::Stored(StatusCode::CREATED, body)) => Some(body.bytes),
                _ => None,
            };
            crate::fleet::put_answered(&state.metrics, host, status.as_u16(), code, stored);
        }
        match error {
            None => {
                tracing::info!(op = self.0.op, host, episode = %self.0.episode, status = status.as_u16(), bytes = facts.bytes, duration_ms, "upload")
            }
            Some(e) if e.code == ErrorCode::Internal => {}
            Some(e) => tracing::warn!(
                op = self.0.op, host, episode = %self.0.episode, status = status.as_u16(),
                error_code = e.code.as_str(), peer, "upload request refused: {}", e.message
            ),
        }
    }
}

pub(crate) fn length_mismatch(slot: &Slot, end: u64, complete: bool) -> ApiError {
    let why = if complete && end < slot.length {
        format!("the append completing the upload ends at byte {end}")
    } else {
        format!("the append runs past byte {}", slot.length)
    };
    ApiError::new(
        ErrorCode::UploadLengthMismatch,
        format!(
            "{why}, but Upload-Length was {} when upload {}/{} was created; the upload is discarded",
            slot.length, slot.host_id, slot.episode_id
        ),
    )
}

fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such upload: unknown, expired, completed or discarded, or held by another receiver; start again with POST",
    )
}

pub(crate) fn episode_busy(what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::EpisodeBusy,
        format!("{what}; retry this episode shortly"),
    )
}

async fn create(
    State(state): State<Arc<AppState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Body,
) -> Response {
    // In its own task, as a PUT or a PATCH: a client going away never drops
    // a creation between its spool directory and its table entry, or a
    // replaced upload halfway through its removal.
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let conn = conn.map(|c| c.0);
    let work = create_decided(state, conn, headers, path, body);
    crate::routes::in_own_task("upload_create", &episode, work).await
}

async fn create_decided(
    state: Arc<AppState>,
    conn: Option<ConnInfo>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    mut body: axum::body::Body,
) -> Response {
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let decision = Decision::begin("upload_create", conn, episode);
    let mut facts = PutFacts::default();
    let conn = decision.conn();
    let result = create_inner(&state, conn, &headers, path, &mut facts).await;
    // A POST carries no archive bytes; one that does anyway has a bounded
    // amount read (and discarded) so that the client sees the answer rather
    // than a reset.
    if may_drain_unread_body(&headers, result.as_ref().err()) {
        let _ =
            crate::ingest::drain(&mut body, crate::routes::EARLY_ANSWER_DRAIN, state.limits).await;
    }
    decision.record(&state, &facts, &result);
    result.into_response()
}

async fn create_inner(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    facts: &mut PutFacts,
) -> Result<Answer, ApiError> {
    let plan = match check_headers(
        state,
        conn,
        headers,
        path,
        LengthHeader::UploadLength,
        facts,
    )
    .await?
    {
        Checked::Stored(body) => {
            drop_uploads_of_stored(state, facts, &body.episode_id).await;
            return Ok(Answer::Stored(StatusCode::OK, body));
        }
        Checked::Plan(plan) => plan,
    };
    let table = &state.resumable;
    let (host, episode) = (plan.identity.host_id.as_str(), plan.episode.as_str());
    let mut record = new_record(&plan);
    let limit = UploadLimit {
        max_size: state.limits.max_bytes,
        expires_s: table.expiry_s,
    };
    // A new POST for an episode means its client lost the older upload's
    // location (a host runs one shipper): the same archive resumes where the
    // receiver holds it (CONTRACT §9: never from byte 0 while it holds the
    // bytes); another one replaces an idle older upload, and one still
    // receiving an append is this episode being busy.
    let (replaced, reservation) = match table.claim(&record) {
        Ok(Claim::Resume(same)) => return resumed(host, episode, &same, limit),
        Ok(Claim::New {
            replaced,
            reservation,
        }) => (replaced, reservation),
        Err(refusal) => return Err(claim_refused(refusal, host, episode, table.max)),
    };
    for (older, mut held) in replaced {
        tracing::info!(
            host,
            episode,
            offset = older.offset.load(Ordering::Relaxed),
            "a new upload replaces an idle one of the same episode"
        );
        table.remove(&older, &mut held).await;
    }
    let token = new_token()?;
    record.token = token.to_string();
    spool_new_upload(state, &record).await?;
    table.insert(record, reservation);
    Ok(Answer::Created {
        location: upload::location(host, episode, &token),
        offset: 0,
        limit,
    })
}

/// A crash after the commit may have left the stored archive's upload:
/// removes the uploads of this host, episode and digest.
async fn drop_uploads_of_stored(state: &AppState, facts: &PutFacts, episode: &str) {
    let (Some(identity), Some(digest)) = (&facts.identity, &facts.digest) else {
        return;
    };
    let digest = digest.header_value();
    let stale =
        state.resumable.all().into_iter().filter(|s| {
            s.host_id == identity.host_id && s.episode_id == episode && s.digest == digest
        });
    for slot in stale.collect::<Vec<_>>() {
        complete::drop_stored_upload(state, &slot).await;
    }
}

/// The record of a new upload of `plan`, its token still to be drawn.
fn new_record(plan: &PutPlan) -> Record {
    let now = unix_now();
    Record {
        host_id: plan.identity.host_id.as_str().to_owned(),
        episode_id: plan.episode.as_str().to_owned(),
        token: String::new(),
        digest: plan.digest.header_value(),
        commit: plan.commit.to_string(),
        length: plan.length.unwrap_or(0),
        offset: 0,
        created_at: now,
        last_append_at: now,
    }
}

/// The answer to a POST of the archive an upload already receives: its
/// location and durable offset.
fn resumed(host: &str, episode: &str, same: &Slot, limit: UploadLimit) -> Result<Answer, ApiError> {
    let offset = same.offset.load(Ordering::Relaxed);
    tracing::info!(
        host,
        episode,
        offset,
        "a POST of the same archive resumes its upload"
    );
    let token = Token::parse(&same.token).ok_or_else(|| ApiError::internal("upload token"))?;
    Ok(Answer::Created {
        location: upload::location(host, episode, &token),
        offset,
        limit,
    })
}

fn claim_refused(refusal: Refusal, host: &str, episode: &str, max: usize) -> ApiError {
    match refusal {
        Refusal::EpisodeBusy => episode_busy(&format!(
            "another upload of episode {host}/{episode} is receiving an append or being created"
        )),
        Refusal::Full => ApiError::new(
            ErrorCode::Busy,
            format!(
                "the receiver holds {max} partial uploads (limits.max_partial_uploads); retry shortly"
            ),
        ),
    }
}

/// Creates the upload's durable state in the spool, or nothing of it.
async fn spool_new_upload(state: &AppState, record: &Record) -> Result<(), ApiError> {
    let (spool, staged) = (state.resumable.spool.clone(), record.clone());
    let created = tokio::task::spawn_blocking(move || {
        let made = spool.create(&staged);
        if made.is_err() {
            let _ = spool.remove(&staged.host_id, &staged.token);
        }
        made
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    created.map_err(|e| storage_io_error(&state.metrics, "create a partial upload", e))
}

/// 128 bits from the operating system's CSPRNG.
fn new_token() -> Result<Token, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("getrandom: {e}")))?;
    Ok(Token::from_random(bytes))
}

/// The upload a request names, for its own host only: another host's path
/// is 403 (as a PUT's); an unknown, expired or removed token, or one issued
/// for another episode, is 404.
pub(crate) fn locate(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<(Identity, Arc<Slot>), ApiError> {
    let identity = authenticate(state, conn, headers)?;
    let Ok(Path((host, episode, token))) = path else {
        return Err(not_found());
    };
    check_host(&identity, &host)?;
    let table = &state.resumable;
    let slot = Token::parse(&token)
        .and_then(|t| table.get(t.as_str()))
        .filter(|s| s.host_id == host && s.episode_id == episode)
        .filter(|s| !s.gone.load(Ordering::Relaxed) && !s.expired(table.expiry_s))
        .ok_or_else(not_found)?;
    Ok((identity, slot))
}

async fn offset(
    State(state): State<Arc<AppState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Answer, ApiError> {
    let (_, slot) = locate(&state, conn.as_deref(), &headers, path)?;
    Ok(Answer::Offset {
        offset: slot.offset.load(Ordering::Relaxed),
        length: slot.length,
    })
}

async fn discard(
    State(state): State<Arc<AppState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Response {
    // In its own task: a client going away never leaves the upload marked
    // gone with its files still on disk.
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let conn = conn.map(|c| c.0);
    let work = discard_decided(state, conn, headers, path);
    crate::routes::in_own_task("upload_delete", &episode, work).await
}

async fn discard_decided(
    state: Arc<AppState>,
    conn: Option<ConnInfo>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Response {
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let decision = Decision::begin("upload_delete", conn, episode);
    let mut facts = PutFacts::default();
    let result = async {
        let (identity, slot) = locate(&state, decision.conn(), &headers, path)?;
        crate::routes::note_host(&identity.host_id);
        facts.identity = Some(identity);
        let Some((mut held, _)) = take_over(&slot, TAKEOVER_WAIT).await else {
            return Err(episode_busy("an append to this upload does not stop"));
        };
        if slot.gone.load(Ordering::Relaxed) {
            return Err(not_found());
        }
        state.resumable.remove(&slot, &mut held).await;
        Ok(Answer::Deleted)
    }
    .await;
    decision.record(&state, &facts, &result);
    result.into_response()
}

/// Sweeps expired partial uploads and idle validator sessions until shutdown.
pub async fn sweep_loop(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    complete::drop_committed(&state).await;
    let mut tick = tokio::time::interval(state.resumable.sweep_every());
    loop {
        tokio::select! {
            _ = tick.tick() => state.resumable.sweep().await,
            _ = shutdown.changed() => return,
        }
    }
}
