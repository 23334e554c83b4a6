//! Which object_store errors a retry may cure, and their short labels.

/// A short label for an object_store error (metrics and logs).
pub(super) fn error_kind(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::NotFound { .. } => "not_found",
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            "already_exists"
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => "denied",
        _ if is_transient(e) => "unavailable",
        _ => "other",
    }
}

/// Errors a retry may cure: throttling (429, `SlowDown`), 5xx but 501, timeouts and
/// transport failures (refused, reset, DNS). Everything else (400, 501, a
/// 301 for a wrong region, …) is a configuration or protocol fault: a 500,
/// logged with the store's message, not a 503 the shipper would retry forever.
///
/// object_store 0.14 reports HTTP failures as `Generic` around a private
/// `RetryError`, so the status is read from the error chain: a public
/// `HttpError` is a transport failure; otherwise the status is taken from the
/// text ("non-2xx status code: 503 …") or, for an error document in a 200
/// (CompleteMultipartUpload), from S3's error code in it. A `Generic` error
/// in which neither is found counts as permanent.
pub fn is_transient(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::JoinError { .. } => true,
        object_store::Error::Generic { .. } => {
            let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
            while let Some(level) = current {
                if let Some(http) = level.downcast_ref::<object_store::client::HttpError>() {
                    use object_store::client::HttpErrorKind as K;
                    return matches!(
                        http.kind(),
                        K::Connect | K::Request | K::Timeout | K::Interrupted
                    );
                }
                if let Some(transient) = transient_by_text(&level.to_string()) {
                    return transient;
                }
                current = level.source();
            }
            false
        }
        _ => false,
    }
}

/// `Some(true)` for a 5xx, a 429 or a throttling/unavailable S3 error code
/// in `text`, `Some(false)` for another status, `None` when it names none.
fn transient_by_text(text: &str) -> Option<bool> {
    const TRANSIENT_CODES: &[&str] = &[
        "<Code>SlowDown</Code>",
        "<Code>InternalError</Code>",
        "<Code>ServiceUnavailable</Code>",
        "<Code>RequestTimeout</Code>",
    ];
    if let Some(at) = text.find("status code: ") {
        let digits: String = text[at + 13..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(status) = digits.parse::<u16>() {
            // 501: the store lacks a feature the receiver needs; permanent.
            return Some(status == 429 || ((500..600).contains(&status) && status != 501));
        }
    }
    if TRANSIENT_CODES.iter().any(|code| text.contains(code)) {
        return Some(true);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::transient_by_text;

    #[test]
    fn statuses_in_error_text() {
        let status = |s: &str| {
            transient_by_text(&format!(
                "Error performing PUT http://x/b/k in 3ms - Server returned non-2xx status code: {s}: <Error/>"
            ))
        };
        assert_eq!(status("503 Service Unavailable"), Some(true));
        assert_eq!(status("500 Internal Server Error"), Some(true));
        assert_eq!(status("429 Too Many Requests"), Some(true));
        assert_eq!(status("400 Bad Request"), Some(false));
        assert_eq!(status("501 Not Implemented"), Some(false));
        assert_eq!(status("301 Moved Permanently"), Some(false));
        assert_eq!(
            transient_by_text(
                "Server returned error response: <Error><Code>SlowDown</Code></Error>"
            ),
            Some(true)
        );
        assert_eq!(transient_by_text("Generic S3 error: builder error"), None);
    }
}
