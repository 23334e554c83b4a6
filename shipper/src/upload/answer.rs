//! Reading the receiver's answers: an error body with its `Retry-After`
//! ([`answer`]), an answer that is not the receiver's ([`not_receiver`]: a
//! redirect, a success it never gives), a body read with a cap.

use super::{NoAnswer, RETRY_AFTER_MAX};
use crate::state::Event;
use labship_protocol::ErrorBody;
use std::time::{Duration, SystemTime};

/// Error bodies are small JSON; anything longer is cut (a misrouted request
/// can meet an HTML page of any size).
pub(super) const ANSWER_BODY_CAP: usize = 64 * 1024;

/// What a redirect says: where it points. It is never followed.
pub(crate) fn redirect_text(r: &reqwest::Response) -> String {
    let to = r
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match to {
        Some(to) => format!("a redirect to {to}, which the shipper does not follow"),
        None => "a redirect (without a Location), which the shipper does not follow".into(),
    }
}

pub(super) fn not_receiver_text(
    method: &str,
    url: &reqwest::Url,
    status: u16,
    why: &str,
) -> String {
    format!(
        "{method} {url} answered {status}, but not as the receiver: {why}; nothing is known to be stored and the episode stays queued: check that receiver.url names the receiver itself (no redirect, no proxy or other server answering in its place)"
    )
}

/// An answer from something other than the receiver (see [`Event::NotReceiver`]).
pub(crate) fn not_receiver(method: &str, r: &reqwest::Response, why: String) -> Event {
    let status = r.status().as_u16();
    Event::NotReceiver {
        status,
        message: not_receiver_text(method, r.url(), status, &why),
    }
}

/// A `Retry-After` value, as seconds or as an HTTP-date (what a proxy or a
/// load balancer in front of the receiver may send), at most
/// [`RETRY_AFTER_MAX`]; a date already past is no wait. `None` when it is
/// neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(RETRY_AFTER_MAX))
}

pub(crate) fn no_answer(n: NoAnswer) -> Event {
    let auth = matches!(n, NoAnswer::Auth(_));
    Event::NoAnswer {
        auth,
        message: n.message().to_owned(),
        episode: false,
    }
}

/// This upload's trouble alone (the receiver keeps losing or disputing it,
/// the archive in `outbox/` cannot be read): loud, and only this episode
/// waits, never the host.
pub(crate) fn given_up(message: String) -> (Event, Option<Duration>) {
    let event = Event::NoAnswer {
        auth: false,
        message,
        episode: true,
    };
    (event, None)
}

pub(crate) async fn answer(r: reqwest::Response) -> (Event, Option<Duration>) {
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, SystemTime::now()));
    let (text, _) = read_capped(r, ANSWER_BODY_CAP).await;
    let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
    let message = match &body {
        Some(b) => b.message.clone(),
        None if text.trim().is_empty() => format!("HTTP {status} without a body"),
        None => text.chars().take(300).collect(),
    };
    let event = Event::Answer {
        status,
        error: body.as_ref().map(|b| b.error),
        message,
        remediation: body.and_then(|b| b.remediation),
    };
    (event, retry_after)
}

/// The answer's body, at most `cap` bytes, given up after 10 s without a
/// chunk: for an error the status is what matters, the text only explains
/// it. The flag says whether the body arrived whole (it ended, within `cap`).
pub(super) async fn read_capped(mut r: reqwest::Response, cap: usize) -> (String, bool) {
    let mut buf = Vec::new();
    let whole = loop {
        match tokio::time::timeout(Duration::from_secs(10), r.chunk()).await {
            Ok(Ok(Some(chunk))) if buf.len() + chunk.len() <= cap => buf.extend_from_slice(&chunk),
            Ok(Ok(Some(chunk))) => {
                buf.extend_from_slice(&chunk[..cap - buf.len()]);
                break false;
            }
            Ok(Ok(None)) => break true,
            _ => break false,
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let date = |t: SystemTime| httpdate::fmt_http_date(t);
        for (value, wait) in [
            ("5", Some(5)),
            (" 120 ", Some(120)),
            ("0", Some(0)),
            ("86400", Some(3600)),
            ("18446744073709551615", Some(3600)),
            (&date(now + Duration::from_secs(30)), Some(30)),
            (&date(now + Duration::from_secs(30 * 86_400)), Some(3600)),
            (&date(now - Duration::from_secs(60)), Some(0)),
            // The two obsolete HTTP-date forms RFC 9110 says to accept.
            ("Friday, 15-Jan-27 08:00:30 GMT", Some(30)),
            ("Fri Jan 15 08:00:30 2027", Some(30)),
            ("-5", None),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(
                retry_after(value, now),
                wait.map(Duration::from_secs),
                "{value:?}"
            );
        }
    }
}
