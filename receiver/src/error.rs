//! The one place where receiver errors become HTTP answers.
//!
//! Every handler returns `Result<_, ApiError>`; [`ApiError`] carries an
//! [`ErrorCode`] (which fixes the status, see `labship_protocol::error`), a
//! message for the client, an optional remediation command and `Retry-After`.
//! Client faults are not logged here (the audit log has them); internal faults
//! are logged once, with detail, and the client gets a generic message.
//! The store's ([`StoreError`], `io::Error`) and validation's ([`IngestError`])
//! failures become answers here too: 503 while the object store is
//! unavailable, 507 when the disk is full, 413/400 for a refused body.

use crate::ingest::IngestError;
use crate::metrics::Metrics;
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use labship_protocol::{ErrorBody, ErrorCode};

/// Seconds a client should wait after a 503 or 507.
pub const RETRY_AFTER_BUSY: u32 = 5;
pub const RETRY_AFTER_FULL: u32 = 60;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub remediation: Option<String>,
    pub retry_after: Option<u32>,
    /// `Upload-Offset` to send with the error (a resumable upload's
    /// `offset_mismatch`, or an interrupted append): where to continue.
    pub upload_offset: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry_after = match code {
            ErrorCode::Busy | ErrorCode::ShuttingDown | ErrorCode::EpisodeBusy => {
                Some(RETRY_AFTER_BUSY)
            }
            ErrorCode::InsufficientStorage => Some(RETRY_AFTER_FULL),
            _ => None,
        };
        Self {
            code,
            message: message.into(),
            remediation: None,
            retry_after,
            upload_offset: None,
        }
    }

    pub fn with_remediation(mut self, remediation: Option<String>) -> Self {
        self.remediation = remediation;
        self
    }

    pub fn with_upload_offset(mut self, offset: u64) -> Self {
        self.upload_offset = Some(offset);
        self
    }

    /// An internal fault: logged here with `detail`, answered generically.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; see the receiver's log",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.code
            .http_status()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after;
        let upload_offset = self.upload_offset;
        let body = ErrorBody {
            error: self.code,
            message: self.message,
            remediation: self.remediation,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(offset) = upload_offset {
            response.headers_mut().insert(
                labship_protocol::upload::UPLOAD_OFFSET,
                HeaderValue::from(offset),
            );
        }
        response
    }
}

/// A failed store read (HEAD, or the existing-archive check of a PUT).
pub(crate) fn read_error(metrics: &Metrics, e: StoreError) -> ApiError {
    metrics.storage_errors.inc();
    if e.is_unavailable() {
        unavailable(e)
    } else {
        ApiError::internal(e)
    }
}

/// A failed commit to the store: 503 while the object store is unavailable,
/// 507 when the disk is full.
pub(crate) fn storage_error(metrics: &Metrics, e: StoreError) -> ApiError {
    metrics.storage_errors.inc();
    if e.is_unavailable() {
        unavailable(e)
    } else if e.is_full() {
        store_full(&e)
    } else {
        ApiError::internal(e)
    }
}

/// A failed local write of the upload spool: 507 when the disk is full.
pub(crate) fn storage_io_error(metrics: &Metrics, what: &str, e: std::io::Error) -> ApiError {
    metrics.storage_errors.inc();
    if crate::store::is_full(&e) {
        store_full(&e)
    } else {
        ApiError::internal(format!("{what}: {e}"))
    }
}

/// What a body that failed validation or its scratch write is answered.
pub(crate) fn ingest_error(metrics: &Metrics, e: IngestError) -> ApiError {
    match e {
        IngestError::TooLarge { .. } | IngestError::TooLargeUnpacked { .. } => {
            ApiError::new(ErrorCode::TooLarge, e.to_string())
        }
        IngestError::Invalid(m) => ApiError::new(ErrorCode::ArchiveInvalid, m),
        IngestError::StampMismatch(m) => ApiError::new(ErrorCode::StampMismatch, m),
        IngestError::Store(io) => storage_io_error(metrics, "storage write", io),
        IngestError::ClientGone(m) => {
            ApiError::new(ErrorCode::Busy, format!("upload interrupted: {m}"))
        }
        IngestError::Internal(m) => ApiError::internal(m),
    }
}

/// The object store throttles, fails (5xx) or cannot be reached: transient.
fn unavailable(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "object store unavailable");
    ApiError::new(
        ErrorCode::Busy,
        "the receiver's object store is unavailable; retry shortly",
    )
}

fn store_full(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "store is full");
    ApiError::new(
        ErrorCode::InsufficientStorage,
        "the receiver's store is full; retry later",
    )
}
