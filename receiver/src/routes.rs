//! The HTTP API of CONTRACT §4: `POST /v1/ping`, `HEAD` and `PUT
//! /v1/episodes/{host_id}/{episode_id}` (the ops routes are in `ops`).
//!
//! A PUT is decided in two phases. From the headers alone: identity (401/403),
//! ids (400), stamp and digest headers (400), declared size (413), the gate
//! (412) and an existing archive (200 same digest / 409 other digest). Only then
//! is the body read, so a client using `Expect: 100-continue` never uploads a
//! doomed archive. The body phase validates while streaming (see `ingest`) and
//! commits through the store (see `store`).

use crate::accept::{Checked, LengthHeader, PutFacts, check_headers, receive_and_commit};
use crate::audit::{Audit, AuditRecord};
use crate::auth::{self, ConnInfo, Identity, Tokens};
use crate::error::{ApiError, read_error};
use crate::gate::Gate;
use crate::ingest;
use crate::metrics::{Metrics, RequestLabels};
use crate::store::Store;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use labship_protocol::headers::CONTENT_DIGEST;
use labship_protocol::{ErrorCode, Id, StoredBody};
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

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
    /// The partial uploads of the resumable upload API (CONTRACT §9).
    pub(crate) resumable: crate::uploads::Table,
}

/// The API router. Connection facts arrive as a [`ConnInfo`] request extension.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ping", post(ping))
        .route(
            "/v1/episodes/{host_id}/{episode_id}",
            put(put_episode).head(head_episode),
        )
        .merge(crate::uploads::routes())
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

pub(crate) fn authenticate(
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
pub(crate) fn authorize(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(Identity, Id), ApiError> {
    let identity = authenticate(state, conn, headers)?;
    let Path((host, episode)) = path
        .map_err(|e| ApiError::new(ErrorCode::InvalidEpisodeId, format!("unusable path: {e}")))?;
    check_host(&identity, &host)?;
    let episode = Id::parse(&episode).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidEpisodeId,
            format!("episode id {episode:?}: {e}"),
        )
    })?;
    Ok((identity, episode))
}

/// A host may only name itself in a path: another host's is 403.
pub(crate) fn check_host(identity: &Identity, host: &str) -> Result<(), ApiError> {
    if host != identity.host_id {
        return Err(ApiError::new(
            ErrorCode::HostMismatch,
            format!(
                "authenticated as host {:?} but the path names host {host:?}",
                identity.host_id
            ),
        ));
    }
    Ok(())
}

/// Whether a request answered before its body was read may read (and
/// discard) some of it, so that an HTTP/1 client still writing sees the
/// answer: not when the client waits for `100 Continue` (it never sends the
/// body, and polling it would invite the upload), nor for a stranger (401:
/// reading would only hand out free bandwidth; the connection closes).
pub(crate) fn may_drain_unread_body(headers: &HeaderMap, error: Option<&ApiError>) -> bool {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let stranger = error.is_some_and(|e| e.code == ErrorCode::Unauthenticated);
    !expects_continue && !stranger
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
        Err(e) => Err(read_error(&state.metrics, e)),
    }
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
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let conn = conn.map(|c| c.0);
    in_own_task(
        "put",
        &episode,
        put_decided(state, conn, headers, path, body),
    )
    .await
}

/// The span a request's work runs in: its operation and the episode of its
/// path, and its host once authenticated ([`note_host`]), so that an error
/// logged anywhere below (an internal one, whose answer says only "see the
/// receiver's log") names the request it failed.
pub(crate) fn request_span(op: &'static str, episode: &str) -> tracing::Span {
    tracing::info_span!("request", op, episode, host = tracing::field::Empty)
}

/// Runs a request's work `fut` in its own task, in its span ([`request_span`]):
/// hyper drops a handler whose client went away, and a request must not stop
/// halfway through a commit, a checkpoint, a creation or a removal.
pub(crate) async fn in_own_task(
    op: &'static str,
    episode: &str,
    fut: impl std::future::Future<Output = Response> + Send + 'static,
) -> Response {
    tokio::spawn(fut.instrument(request_span(op, episode)))
        .await
        .unwrap_or_else(|e| ApiError::internal(format!("{op} task: {e}")).into_response())
}

/// Records the authenticated host on the current request's span.
pub(crate) fn note_host(host: &str) {
    tracing::Span::current().record("host", host);
}

async fn put_decided(
    state: Arc<AppState>,
    conn: Option<ConnInfo>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    mut body: Body,
) -> Response {
    let episode = path.as_ref().map(|p| p.1.clone()).unwrap_or_default();
    let call = ApiCall::begin(None, conn, episode);
    let mut facts = PutFacts::default();
    let conn = call.conn.as_ref();
    let result = put_inner(&state, conn, &headers, path, &mut body, &mut facts).await;
    // A declared size refused from the headers (413 over the limit, 507 no
    // room on disk): an HTTP/1 client still writing does not read the early
    // answer and sees a broken pipe, so read (and discard) a bounded amount,
    // enough for a modest body to get its answer; a huge body is cut after that.
    let budget = match &result {
        Err(e)
            if matches!(e.code, ErrorCode::TooLarge | ErrorCode::InsufficientStorage)
                && !facts.body_started =>
        {
            EARLY_ANSWER_DRAIN
        }
        _ => state.limits.max_bytes,
    };
    let episode_raw = &call.episode;
    // After a successful body phase the body is at its end and this is free.
    if (facts.body_started || may_drain_unread_body(&headers, result.as_ref().err()))
        && !ingest::drain(&mut body, budget, state.limits).await
    {
        tracing::debug!(episode = %episode_raw, "body not drained; the connection will close");
    }
    let (status, error) = match &result {
        Ok((status, _)) => (*status, None),
        Err(e) => (e.status(), Some(e)),
    };
    let host = facts.identity.as_ref().map(|i| i.host_id.as_str());
    let (peer, duration_ms) = call.audit(&state, &facts, status, error);
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

/// One call of the episode API (a PUT) or of the upload API, as its audit
/// line sees it: begun when the request comes in, written with its answer.
#[derive(Debug)]
pub(crate) struct ApiCall {
    /// `None` for a PUT; for the upload API `upload_create` (POST),
    /// `upload_append` (PATCH) or `upload_delete`.
    pub(crate) op: Option<&'static str>,
    pub(crate) conn: Option<ConnInfo>,
    /// The path's episode id as sent (valid or not).
    pub(crate) episode: String,
    started: Instant,
}

impl ApiCall {
    pub(crate) fn begin(op: Option<&'static str>, conn: Option<ConnInfo>, episode: String) -> Self {
        Self {
            op,
            conn,
            episode,
            started: Instant::now(),
        }
    }

    /// Writes the call's audit line; returns the peer and the duration in
    /// milliseconds, for the log line.
    pub(crate) fn audit(
        &self,
        state: &AppState,
        facts: &PutFacts,
        status: StatusCode,
        error: Option<&ApiError>,
    ) -> (String, u64) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let peer = self
            .conn
            .as_ref()
            .map(|c| c.peer.to_string())
            .unwrap_or_default();
        state.audit.record(&AuditRecord {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            host_id: facts.identity.as_ref().map(|i| i.host_id.as_str()),
            episode_id: &self.episode,
            status: status.as_u16(),
            error: error.map(|e| e.code.as_str()),
            bytes: facts.bytes,
            digest: facts.digest.map(|d| d.header_value()),
            duration_ms,
            peer: peer.clone(),
            auth: facts.identity.as_ref().map(|i| i.method),
            op: self.op,
        });
        (peer, duration_ms)
    }
}

/// How much of a body answered from its headers (a declared size refused,
/// any refusal of a PUT, a POST or a PATCH before its body) is read and
/// discarded first, so that a client still writing it can read the answer.
pub(crate) const EARLY_ANSWER_DRAIN: u64 = 4 << 20;

async fn put_inner(
    state: &AppState,
    conn: Option<&ConnInfo>,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: &mut Body,
    facts: &mut PutFacts,
) -> Result<(StatusCode, StoredBody), ApiError> {
    match check_headers(
        state,
        conn,
        headers,
        path,
        LengthHeader::ContentLength,
        facts,
    )
    .await?
    {
        Checked::Stored(stored) => Ok((StatusCode::OK, stored)),
        Checked::Plan(plan) => receive_and_commit(state, conn, plan, body, facts).await,
    }
}
