//! The requests of the upload API (CONTRACT §9), each read into what
//! [`super::Attempt`] does next: `POST` ([`create`]), `HEAD` ([`probe`]),
//! the empty `PATCH` that settles an offset ([`settle`]) and the `PATCH`
//! that appends the rest ([`append`]).

use super::{Answer, PROBING_MAX};
use crate::state::{Archive, Event};
use crate::upload::given_up;
use crate::upload::{
    Body, NoAnswer, Uploader, answer, classify, location, no_answer, not_receiver, redirect_text,
};
use labship_protocol::headers::{CONTENT_DIGEST, LABSHIP_COMMIT};
use labship_protocol::upload::{
    PARTIAL_UPLOAD_CONTENT_TYPE, UPLOAD_COMPLETE, UPLOAD_LENGTH, UPLOAD_OFFSET, creation_path,
    format_complete, parse_offset,
};
use labship_protocol::{ErrorCode, Id};
use std::path::Path;
use std::time::Duration;

/// The receiver's offset for an upload.
pub(super) enum Probe {
    At(u64),
    /// Unknown or expired (`404`), or not this archive's: start over.
    Gone,
    Failed(Answer),
}

pub(super) enum Created {
    /// `404 not_found` (no such route: a `POST` never 404s for an upload)
    /// or `405`: the receiver has no upload API.
    NoApi(u16),
    /// The upload's location and the bytes the receiver already holds of
    /// it (more than 0: a POST of an archive it partly holds resumes).
    At(String, u64),
    Failed(Answer),
}

pub(super) enum Appended {
    /// The receiver's final word, or a failure for the queue.
    Done(Answer),
    Mismatch(u64),
    Gone,
    /// No answer: cut, reset, stalled.
    Cut(Event),
}

/// `POST /v1/uploads/{host}/{episode}`: the receiver's admission, before
/// any archive byte.
pub(super) async fn create(up: &Uploader, id: &Id, archive: &Archive) -> Created {
    let url = up.url(creation_path(up.host.as_str(), id.as_str()).trim_start_matches('/'));
    let req = up
        .authorize(up.client().post(url))
        .header(CONTENT_DIGEST, archive.digest.header_value())
        .header(LABSHIP_COMMIT, archive.commit.as_str())
        .header(UPLOAD_LENGTH, archive.bytes)
        .header(reqwest::header::CONTENT_LENGTH, 0)
        .timeout(up.stall);
    let r = match req.send().await {
        Ok(r) => r,
        Err(e) => return Created::Failed((no_answer(classify(&e)), None)),
    };
    let status = r.status().as_u16();
    if status == 200 {
        // Already stored: the receiver's body says so, or it is not it.
        return Created::Failed((up.confirm(r, id, archive).await, None));
    }
    if r.status().is_redirection() {
        let why = redirect_text(&r);
        return Created::Failed((not_receiver("POST", &r, why), None));
    }
    if !r.status().is_success() {
        return match answer(r).await {
            (Event::Answer { status: 405, .. }, _) => Created::NoApi(405),
            (
                Event::Answer {
                    status: 404,
                    error: Some(ErrorCode::NotFound),
                    ..
                },
                _,
            ) => Created::NoApi(404),
            other => Created::Failed(other),
        };
    }
    let location = r
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let held = offset_header(&r, UPLOAD_OFFSET);
    match (location, held) {
        (Some(loc), Some(held))
            if status == 201 && held <= archive.bytes && location::ours(&loc, &up.host, id) =>
        {
            Created::At(loc, held)
        }
        (Some(loc), held) if status == 201 && location::ours(&loc, &up.host, id) => {
            let why = format!(
                "a 201 whose Upload-Offset ({held:?}) is not an offset within the archive's {} bytes; its upload is not followed",
                archive.bytes
            );
            Created::Failed((not_receiver("POST", &r, why), None))
        }
        (other, _) => {
            let why = format!(
                "a {status} whose Location ({other:?}) is not this receiver's upload path for host {}, episode {id}; it is not followed",
                up.host
            );
            Created::Failed((not_receiver("POST", &r, why), None))
        }
    }
}

/// One `HEAD` or empty `PATCH` may take this long (and at most the stall
/// timeout).
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `req` (no body) within `timeout` and what is left of `budget`,
/// taking the time it took from `budget`.
async fn ask(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    budget: &mut Duration,
) -> Result<reqwest::Response, Answer> {
    if budget.is_zero() {
        let why = format!(
            "asking the receiver an upload's offset took over {PROBING_MAX:?} in one attempt; retrying later"
        );
        return Err((no_answer(NoAnswer::Unreachable(why)), None));
    }
    let started = std::time::Instant::now();
    let r = req.timeout(timeout.min(*budget)).send().await;
    *budget = budget.saturating_sub(started.elapsed());
    r.map_err(|e| (no_answer(classify(&e)), None))
}

/// `HEAD {location}`: how many bytes the receiver durably holds.
pub(super) async fn probe(
    up: &Uploader,
    location: &str,
    archive: &Archive,
    budget: &mut Duration,
) -> Probe {
    let req = up.authorize(up.client().head(up.url(location.trim_start_matches('/'))));
    let r = match ask(req, up.stall.min(PROBE_TIMEOUT), budget).await {
        Ok(r) => r,
        Err(failed) => return Probe::Failed(failed),
    };
    let header = |name: &str| offset_header(&r, name);
    match r.status().as_u16() {
        404 => Probe::Gone,
        204 => match (header(UPLOAD_OFFSET), header(UPLOAD_LENGTH)) {
            (Some(o), Some(len)) if len == archive.bytes && o <= len => Probe::At(o),
            // Another length: not this archive's upload.
            (Some(_), Some(_)) => Probe::Gone,
            _ => Probe::Failed((
                not_receiver(
                    "HEAD",
                    &r,
                    "a 204 without a valid Upload-Offset and Upload-Length".into(),
                ),
                None,
            )),
        },
        _ => Probe::Failed(
            unexpected(
                "HEAD",
                r,
                "a success the receiver never gives to an upload's HEAD (204)",
            )
            .await,
        ),
    }
}

/// An sf-integer header of the receiver's answer (`Upload-Offset`,
/// `Upload-Length`); `None` when absent or malformed.
fn offset_header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_offset)
}

/// An answer the upload exchange did not expect: a redirect or another
/// success (`success_why`) is not the receiver's word; any other status is
/// read as the receiver's error answer.
async fn unexpected(method: &str, r: reqwest::Response, success_why: &str) -> Answer {
    if r.status().is_redirection() {
        let why = redirect_text(&r);
        (not_receiver(method, &r, why), None)
    } else if r.status().is_success() {
        (not_receiver(method, &r, success_why.to_owned()), None)
    } else {
        answer(r).await
    }
}

/// How long the receiver may take to stop an earlier append to the upload
/// before it answers an empty one (its takeover wait is 10 s).
const TAKEOVER: Duration = Duration::from_secs(15);

/// An empty, non-final `PATCH` at `offset`: the receiver first makes any
/// earlier append to the upload stop and keep what it took (one cut a moment
/// ago, which the receiver may not have noticed yet), then answers with the
/// offset it holds (`204`, or `409 offset_mismatch`). A `HEAD` alone can
/// answer before that last checkpoint, and an append sent at such an offset
/// would be refused after its first megabytes went for nothing.
pub(super) async fn settle(
    up: &Uploader,
    location: &str,
    archive: &Archive,
    offset: u64,
    budget: &mut Duration,
) -> Probe {
    let req = up
        .authorize(up.client().patch(up.url(location.trim_start_matches('/'))))
        .header(reqwest::header::CONTENT_TYPE, PARTIAL_UPLOAD_CONTENT_TYPE)
        .header(UPLOAD_OFFSET, offset)
        .header(UPLOAD_COMPLETE, format_complete(false))
        .header(reqwest::header::CONTENT_LENGTH, 0);
    let r = match ask(req, TAKEOVER, budget).await {
        Ok(r) => r,
        Err(failed) => return Probe::Failed(failed),
    };
    let held = offset_header(&r, UPLOAD_OFFSET);
    match (r.status().as_u16(), held) {
        (404, _) => Probe::Gone,
        (_, Some(o)) if o > archive.bytes => Probe::Gone,
        (204, Some(o)) => Probe::At(o),
        (409, Some(o)) => match answer(r).await {
            (
                Event::Answer {
                    error: Some(ErrorCode::OffsetMismatch),
                    ..
                },
                _,
            ) => Probe::At(o),
            other => Probe::Failed(other),
        },
        _ => Probe::Failed(
            unexpected(
                "PATCH",
                r,
                "a success other than 204 with Upload-Offset to an empty append",
            )
            .await,
        ),
    }
}

/// `PATCH {location}` with the archive from `offset` to its end and
/// `Upload-Complete: ?1`.
pub(super) async fn append(
    up: &Uploader,
    id: &Id,
    location: &str,
    path: &Path,
    archive: &Archive,
    offset: u64,
    progress: &(dyn Fn() + Sync),
) -> Appended {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return Appended::Done(given_up(format!("{}: {e}", path.display()))),
    };
    if let Err(e) = file.seek(std::io::SeekFrom::Start(offset)).await {
        return Appended::Done(given_up(format!("{}: {e}", path.display())));
    }
    let len = archive.bytes - offset;
    let req = up
        .authorize(up.client().patch(up.url(location.trim_start_matches('/'))))
        .header(reqwest::header::CONTENT_TYPE, PARTIAL_UPLOAD_CONTENT_TYPE)
        .header(UPLOAD_OFFSET, offset)
        .header(UPLOAD_COMPLETE, format_complete(true));
    let body = Body {
        reader: Box::new(file.take(len)),
        len,
        offset,
        total: archive.bytes,
    };
    let r = match up.send_body(id, req, body, progress).await {
        Ok(r) => r,
        Err(event) => return Appended::Cut(event),
    };
    match r.status().as_u16() {
        200 | 201 => Appended::Done((up.confirm(r, id, archive).await, None)),
        404 => Appended::Gone,
        409 => {
            let held = offset_header(&r, UPLOAD_OFFSET);
            match (answer(r).await, held) {
                // Read by its code first: a 409 is otherwise fatal.
                (
                    (
                        Event::Answer {
                            error: Some(ErrorCode::OffsetMismatch),
                            ..
                        },
                        _,
                    ),
                    Some(held),
                ) => Appended::Mismatch(held),
                (answer, _) => Appended::Done(answer),
            }
        }
        _ => Appended::Done(
            unexpected(
                "PATCH",
                r,
                "a success other than the stored archive's (200, 201) to the append that ends it",
            )
            .await,
        ),
    }
}
