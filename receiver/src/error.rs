//! The one place where receiver errors become HTTP answers.
//!
//! Every handler returns `Result<_, ApiError>`; [`ApiError`] carries an
//! [`ErrorCode`] (which fixes the status, see `labship_protocol::error`), a
//! message for the client, an optional remediation command and `Retry-After`.
//! Client faults are not logged here (the audit log has them); internal faults
//! are logged once, with detail, and the client gets a generic message.

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
