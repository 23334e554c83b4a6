//! The HTTP API of CONTRACT §4: `POST /v1/ping`, `HEAD` and `PUT
//! /v1/episodes/{host_id}/{episode_id}` (the ops routes are in `ops`).
//!
//! A PUT is decided in two phases. From the headers alone: identity (401/403),
//! ids (400), stamp and digest headers (400), declared size (413), the gate
//! (412) and an existing archive (200 same digest / 409 other digest). Only then
//! is the body read, so a client using `Expect: 100-continue` never uploads a
//! doomed archive. The body phase validates while streaming (see `ingest`) and
//! commits through the store (see `store`).

use crate::audit::{Audit, AuditRecord};
use crate::auth::{self, ConnInfo, Identity, Tokens};
use crate::error::ApiError;
use crate::gate::Gate;
use crate::ingest::{self, IngestError};
use crate::metrics::{Metrics, RequestLabels};
use crate::store::{Client, CommitOutcome, Lookup, Manifest, Store};
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use labship_protocol::headers::{CONTENT_DIGEST, LABSHIP_COMMIT};
use labship_protocol::{Commit, ErrorCode, Id, Sha256Digest, StoredBody};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};
use tokio::sync::Semaphore;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a request handler needs, shared across connections.
#[derive(Debug)]
pub struct AppState {
    pub gate: Arc<Gate>,
    /// Replaced wholesale on SIGHUP.
    pub tokens: RwLock<Arc<Tokens>>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub audit: Audit,
    /// One permit per body being received (`limits.max_concurrent_uploads`).
    pub uploads: Arc<Semaphore>,
    /// `limits.max_concurrent_uploads`, as advertised by ping.
    pub max_uploads: usize,
    /// Set when shutdown starts: new PUTs get 503 `shutting_down`.
    pub shutting_down: AtomicBool,
    pub limits: ingest::Limits,
}

/// The API router. Connection facts arrive as a [`ConnInfo`] request extension.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ping", post(ping))
        .route(
            "/v1/episodes/{host_id}/{episode_id}",
            put(put_episode).head(head_episode),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let route = format!("{} {route}", request.method());
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see docs/protocol.md")
}

fn authenticate(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
) -> Result<Identity, ApiError> {
    let fallback = ConnInfo {
        peer: ([0, 0, 0, 0], 0).into(),
        cert_host: None,
        cert_not_after: None,
    };
    let tokens = state
        .tokens
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let conn = conn.unwrap_or(&fallback);
    let identity = auth::identify(conn, authorization, &tokens)
        .map_err(|why| ApiError::new(ErrorCode::Unauthenticated, why))?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    crate::fleet::seen(&state.metrics, &identity, conn, user_agent);
    Ok(identity)
}

/// Identity, host match and id validation, shared by HEAD and PUT.
fn authorize(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(Identity, Id), ApiError> {
    let identity = authenticate(state, conn, headers)?;
    let Path((host, episode)) = path
        .map_err(|e| ApiError::new(ErrorCode::InvalidEpisodeId, format!("unusable path: {e}")))?;
    if host != identity.host_id {
        return Err(ApiError::new(
            ErrorCode::HostMismatch,
            format!(
                "authenticated as host {:?} but the path names host {host:?}",
                identity.host_id
            ),
        ));
    }
    let episode = Id::parse(&episode).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidEpisodeId,
            format!("episode id {episode:?}: {e}"),
        )
    })?;
    Ok((identity, episode))
}

async fn ping(
    State(state): State<Arc<AppState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let identity = authenticate(&state, conn.as_deref(), &headers)?;
    let gate = state.gate.snapshot();
    Ok(axum::Json(json!({
        "ok": true,
        "host_id": identity.host_id,
        "receiver_version": VERSION,
        "gate": {
            "commits": gate.len(),
            "loaded_at": humantime::format_rfc3339_seconds(gate.loaded_at).to_string(),
        },
        // Additive to the contract: lets a shipper refuse an oversize archive
        // before uploading it (a declared-oversize body is not drained), and
        // not send more uploads at once than the receiver takes.
        "limits": {
            "max_episode_bytes": state.limits.max_bytes,
            "max_concurrent_uploads": state.max_uploads,
        },
    })))
}

async fn head_episode(
    State(state): State<Arc<AppState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (identity, episode) = authorize(&state, conn.as_deref(), &headers, path)?;
    match state.store.head(&identity.host_id, episode.as_str()).await {
        Ok(Some(manifest)) => {
            let mut response = StatusCode::OK.into_response();
            let h = response.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(manifest.bytes));
            if let Ok(v) = HeaderValue::from_str(&manifest.digest) {
                h.insert(CONTENT_DIGEST, v);
            }
            Ok(response)
        }
        Ok(None) => Err(ApiError::new(
            ErrorCode::NotFound,
            "no archive stored under this id",
        )),
        Err(e) => Err(read_error(&state, e)),
    }
}

/// What the audit line of a PUT records, filled in as the request progresses.
#[derive(Debug, Default)]
struct PutFacts {
    identity: Option<Identity>,
    /// Body bytes read (all of them on success).
    bytes: u64,
    /// Whether the body phase started (the body has been polled).
    body_started: bool,
    digest: Option<Sha256Digest>,
}

async fn put_episode(
    State(state): State<Arc<AppState>>,
    conn: Option<axum::Extension<ConnInfo>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Response {
    // hyper drops a handler whose client went away. A PUT runs in its own task
    // instead, so a commit in progress keeps its per-episode lock, its upload
    // permit and its audit line whatever the connection does.
    let conn = conn.map(|c| c.0);
    let task = tokio::spawn(put_decided(state, conn, headers, path, body));
    task.await
        .unwrap_or_else(|e| ApiError::internal(format!("put task: {e}")).into_response())
}

async fn put_decided(
    state: Arc<AppState>,
    conn: Option<ConnInfo>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    mut body: Body,
) -> Response {
    let started = Instant::now();
    let episode_raw = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let mut facts = PutFacts::default();
    let result = put_inner(&state, conn.as_ref(), &headers, path, &mut body, &mut facts).await;
    // A client that asked `Expect: 100-continue` and got an answer from the
    // headers never sends the body; polling it would invite the upload.
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // Not for a stranger (401): reading would only hand out free bandwidth;
    // the connection closes.
    let stranger = matches!(&result, Err(e) if e.code == ErrorCode::Unauthenticated);
    // A declared size over the limit (413 from the headers): an HTTP/1
    // client still writing does not read the early answer and sees a broken
    // pipe, so read (and discard) a bounded amount, enough for a modest
    // overshoot to get its 413; a huge body is cut after that.
    let budget = match &result {
        Err(e) if e.code == ErrorCode::TooLarge && !facts.body_started => EARLY_REFUSAL_DRAIN,
        _ => state.limits.max_bytes,
    };
    // After a successful body phase the body is at its end and this is free.
    if (facts.body_started || (!expects_continue && !stranger))
        && !ingest::drain(&mut body, budget, state.limits).await
    {
        tracing::debug!(episode = %episode_raw, "body not drained; the connection will close");
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let (status, error) = match &result {
        Ok((status, _)) => (*status, None),
        Err(e) => (e.status(), Some(e)),
    };
    let host = facts.identity.as_ref().map(|i| i.host_id.as_str());
    let peer = conn
        .as_ref()
        .map(|c| c.peer.to_string())
        .unwrap_or_default();
    state.audit.record(&AuditRecord {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        host_id: host,
        episode_id: &episode_raw,
        status: status.as_u16(),
        error: error.map(|e| e.code.as_str()),
        bytes: facts.bytes,
        digest: facts.digest.map(|d| d.header_value()),
        duration_ms,
        peer: peer.clone(),
        auth: facts.identity.as_ref().map(|i| i.method),
    });
    let stored = (status == StatusCode::CREATED).then_some(facts.bytes);
    let code = error.map(|e| e.code.as_str());
    crate::fleet::put_answered(&state.metrics, host, status.as_u16(), code, stored);
    match error {
        None => {
            tracing::info!(host, episode = %episode_raw, status = status.as_u16(), bytes = facts.bytes, duration_ms, "put")
        }
        Some(e) if e.code == ErrorCode::Internal => {}
        Some(e) => tracing::warn!(
            host, episode = %episode_raw, status = status.as_u16(), error_code = e.code.as_str(),
            peer, "put rejected: {}", e.message
        ),
    }
    match result {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// How much of a body declared too large is read and discarded before the
/// 413 is sent, so that a client still writing it can read the answer.
const EARLY_REFUSAL_DRAIN: u64 = 4 << 20;

/// A header's single value. One that is not text, or that appears more than
/// once with different values, reads as U+FFFD so it fails to parse (400):
/// an ambiguous stamp or digest must never be settled by picking one.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.any(|v| v != first) {
        return Some("\u{fffd}");
    }
    Some(first.to_str().unwrap_or("\u{fffd}"))
}

async fn put_inner(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: &mut Body,
    facts: &mut PutFacts,
) -> Result<(StatusCode, StoredBody), ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "receiver is shutting down; retry shortly",
        ));
    }
    let (identity, episode) = authorize(state, conn, headers, path)?;
    facts.identity = Some(identity.clone());
    let host = identity.host_id.as_str();

    // Phase 1: decide from the headers.
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
    // busy here, before a possibly huge body is sent again for nothing.
    match state.store.lookup(host, episode.as_str()).await {
        Ok(Lookup::Stored(stored)) => return existing(&stored, &digest),
        Ok(Lookup::Uploading {
            claim,
            retry_after_s,
        }) if claim.digest() == Some(digest) => {
            return Err(being_uploaded(&claim, retry_after_s));
        }
        Ok(Lookup::Uploading { .. } | Lookup::Absent) => {}
        Err(e) => return Err(read_error(state, e)),
    }
    let declared = match header_str(headers, header::CONTENT_LENGTH.as_str()) {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::new(ErrorCode::ArchiveInvalid, "Content-Length is not a number")
        })?),
    };
    if let Some(len) = declared
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
    let Some(_permit) = crate::pace::admit(&state.uploads).await else {
        let mut e = ApiError::new(
            ErrorCode::Busy,
            "too many uploads in progress (limits.max_concurrent_uploads); retry shortly",
        );
        e.retry_after = Some(crate::pace::RETRY_AFTER_ADMISSION);
        return Err(e);
    };

    // Phase 2: stream, validate, commit.
    let scratch = state
        .store
        .scratch_file()
        .map_err(|e| storage_error(state, e))?;
    state.metrics.uploads_in_flight.inc();
    facts.body_started = true;
    let started = Instant::now();
    let body_bytes = std::sync::atomic::AtomicU64::new(0);
    let received = ingest::ingest(
        body,
        episode.to_string(),
        commit.clone(),
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
    let ingested = received.map_err(|e| ingest_error(state, e))?;
    facts.bytes = ingested.bytes;
    if ingested.digest != digest {
        return Err(ApiError::new(
            ErrorCode::DigestMismatch,
            format!(
                "body digest is {} but Content-Digest says {}",
                ingested.digest, digest
            ),
        ));
    }
    let conn_peer = conn.map(|c| c.peer.to_string()).unwrap_or_default();
    let manifest = Manifest {
        host_id: host.to_owned(),
        episode_id: episode.to_string(),
        digest: digest.header_value(),
        sha256_hex: digest.hex(),
        bytes: ingested.bytes,
        commit: commit.to_string(),
        received_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        client: Client {
            host_id: identity.host_id.clone(),
            auth: identity.method.to_owned(),
            peer: conn_peer,
        },
    };
    let body = StoredBody::new(host, episode.as_str(), &digest, ingested.bytes);
    match state.store.commit(ingested.scratch, manifest).await {
        Ok(CommitOutcome::Stored) => Ok((StatusCode::CREATED, body)),
        Ok(CommitOutcome::AlreadyStored) => Ok((StatusCode::OK, body)),
        Ok(CommitOutcome::Conflict(stored)) => existing(&stored, &digest),
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
        Err(e) => Err(storage_error(state, e)),
    }
}

/// S3: 503 `busy` for the same bytes as a fresh claim whose archive is not in
/// the store yet (docs/scale-out.md).
fn being_uploaded(claim: &Manifest, retry_after_s: u32) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::Busy,
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
fn existing(
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

/// A failed store read (HEAD, or the existing-archive check of a PUT).
fn read_error(state: &AppState, e: crate::store::StoreError) -> ApiError {
    state.metrics.storage_errors.inc();
    if e.is_unavailable() {
        unavailable(e)
    } else {
        ApiError::internal(e)
    }
}

/// The object store throttles, fails (5xx) or cannot be reached: transient.
fn unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "object store unavailable");
    ApiError::new(
        ErrorCode::Busy,
        "the receiver's object store is unavailable; retry shortly",
    )
}

fn storage_error(state: &AppState, e: crate::store::StoreError) -> ApiError {
    state.metrics.storage_errors.inc();
    if e.is_unavailable() {
        unavailable(e)
    } else if e.is_full() {
        tracing::error!(error = %e, "store is full");
        ApiError::new(
            ErrorCode::InsufficientStorage,
            "the receiver's store is full; retry later",
        )
    } else {
        ApiError::internal(e)
    }
}

fn ingest_error(state: &AppState, e: IngestError) -> ApiError {
    match e {
        IngestError::TooLarge { .. } | IngestError::TooLargeUnpacked { .. } => {
            ApiError::new(ErrorCode::TooLarge, e.to_string())
        }
        IngestError::Invalid(m) => ApiError::new(ErrorCode::ArchiveInvalid, m),
        IngestError::StampMismatch(m) => ApiError::new(ErrorCode::StampMismatch, m),
        IngestError::Store(io) if crate::store::is_full(&io) => {
            state.metrics.storage_errors.inc();
            tracing::error!(error = %io, "store is full");
            ApiError::new(
                ErrorCode::InsufficientStorage,
                "the receiver's store is full; retry later",
            )
        }
        IngestError::Store(io) => {
            state.metrics.storage_errors.inc();
            ApiError::internal(format!("scratch write: {io}"))
        }
        IngestError::ClientGone(m) => {
            ApiError::new(ErrorCode::Busy, format!("upload interrupted: {m}"))
        }
        IngestError::Internal(m) => ApiError::internal(m),
    }
}
