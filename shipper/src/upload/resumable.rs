//! The shipper's side of resumable uploads (CONTRACT §9): `POST` to create,
//! `HEAD` to learn the receiver's offset, one `PATCH` with the rest.
//!
//! Archives in `outbox/` of `[limits] resumable_min_bytes` and more go this
//! way ([`send`]); smaller ones (and those held in memory, at most 1 MiB) go
//! by one `PUT`. The creation request carries every header the receiver
//! judges (digest, commit, `Upload-Length`), so a refused episode (412, 409,
//! 413, 400) costs no archive byte. Its `Location` is checked
//! ([`outbox_upload::ours`]: this receiver's upload path for this host and
//! episode, nothing else is ever followed) and saved beside the archive
//! before the first append, so a shipper restarted after `kill -9` resumes.
//!
//! The happy path is `POST` then one `PATCH` with the whole archive and
//! `Upload-Complete: ?1`: one extra round trip, the same stream (bwlimit,
//! stall cut, progress and metrics: [`Uploader::send_body`]). A cut append
//! asks the receiver's offset with an empty append ([`settle`]) and, when it
//! moved, goes on at once from there; when it did not, the failure goes to
//! the queue's backoff and the next attempt asks `HEAD`, then [`settle`]s. `404` (expired, or another receiver in S3
//! mode) starts a new upload; `409 offset_mismatch` follows the receiver's
//! `Upload-Offset`. Only the completion answer retires an episode, and only
//! when it is the receiver's own word (a `PUT`'s [`Uploader::confirm`]).

use super::location as outbox_upload;
use super::{Body, NoAnswer, Uploader, answer, classify, no_answer, not_receiver, redirect_text};
use crate::disk::Layout;
use crate::state::{Archive, Event};
use labship_protocol::headers::{CONTENT_DIGEST, LABSHIP_COMMIT};
use labship_protocol::upload::{
    PARTIAL_UPLOAD_CONTENT_TYPE, UPLOAD_COMPLETE, UPLOAD_LENGTH, UPLOAD_OFFSET, creation_path,
    format_complete, parse_offset,
};
use labship_protocol::{ErrorCode, Id};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// An answer for the state machine, with any `Retry-After`.
type Answer = (Event, Option<Duration>);

/// New uploads one attempt may create: the receiver may lose one (expired,
/// or another receiver behind the same name in S3 mode), not every one.
const CREATE_MAX: u32 = 2;

/// `409 offset_mismatch` answers in a row one attempt follows.
const MISMATCH_MAX: u32 = 3;

/// Uploads `archive` (in `outbox/` at `path`): by the upload API when it is
/// at least `resumable_min_bytes` and not held in memory, else by `PUT`.
pub async fn send(
    up: &Uploader,
    layout: &Layout,
    id: &Id,
    path: &Path,
    archive: &Archive,
    progress: &(dyn Fn() + Sync),
) -> Answer {
    if archive.inline.is_some()
        || archive.bytes < up.resumable_min_bytes
        || NO_UPLOAD_API.load(Ordering::Relaxed)
    {
        return up.put(id, path, archive, progress).await;
    }
    upload(up, layout, id, path, archive, progress).await
}

/// Set once a `POST` met a receiver without the upload API (older than
/// CONTRACT §9): every archive then goes by `PUT`, for the process's
/// lifetime (a new receiver is a restart away: `receiver.url` needs one).
static NO_UPLOAD_API: AtomicBool = AtomicBool::new(false);

/// Remembers (and says once, loudly) that the receiver has no upload API.
fn no_upload_api(up: &Uploader, id: &Id, status: u16) {
    if !NO_UPLOAD_API.swap(true, Ordering::Relaxed) {
        tracing::warn!(episode_id = %id, http_status = status, url = %up.url(""), event = "upload_api_missing", "the receiver answered {status} to POST /v1/uploads/…: it has no resumable-upload API (older than CONTRACT §9); every archive goes by PUT until the shipper restarts (a cut then costs the whole archive)");
    }
}

/// The receiver's offset for an upload.
enum Probe {
    At(u64),
    /// Unknown or expired (`404`), or not this archive's: start over.
    Gone,
    Failed(Answer),
}

enum Created {
    /// `404 not_found` (no such route: a `POST` never 404s for an upload)
    /// or `405`: the receiver has no upload API.
    NoApi(u16),
    /// The upload's location and the bytes the receiver already holds of
    /// it (more than 0: a POST of an archive it partly holds resumes).
    At(String, u64),
    Failed(Answer),
}

enum Appended {
    /// The receiver's final word, or a failure for the queue.
    Done(Answer),
    Mismatch(u64),
    Gone,
    /// No answer: cut, reset, stalled.
    Cut(Event),
}

async fn upload(
    up: &Uploader,
    layout: &Layout,
    id: &Id,
    path: &Path,
    archive: &Archive,
    progress: &(dyn Fn() + Sync),
) -> Answer {
    let mut saved = outbox_upload::load(layout, &up.host, id, archive);
    let mut known: Option<u64> = None;
    let (mut created, mut mismatches) = (0, 0);
    let mut saving = None;
    // What the requests without a body may still take in this send().
    let mut budget = PROBING_MAX;
    let result = loop {
        // Every answer is progress for the watchdog: a chain of requests
        // with no body byte moving must not look like a hung shipper.
        progress();
        let location = match &saved {
            Some(l) => l.clone(),
            None if created == CREATE_MAX => {
                break given_up(format!(
                    "the receiver lost {id}'s upload {created} times in one attempt (expired, or another receiver answers); retrying later"
                ));
            }
            None => {
                created += 1;
                let (loc, held) = match create(up, id, archive).await {
                    Created::At(loc, held) => (loc, held),
                    Created::NoApi(status) => {
                        no_upload_api(up, id, status);
                        break up.put(id, path, archive, progress).await;
                    }
                    Created::Failed(answer) => break answer,
                };
                crate::crash_point("resume:created");
                // Saved on a blocking thread beside the first append: its
                // fsyncs can wait seconds behind the archive's own seal on
                // the same filesystem, and nothing needs them first (a crash
                // before they end costs a new upload, never an episode).
                let (l, i, a, at) = (layout.clone(), id.clone(), archive.clone(), loc.clone());
                saving = Some(tokio::task::spawn_blocking(move || {
                    if let Err(e) = outbox_upload::save(&l, &i, &a, &at) {
                        tracing::warn!(episode_id = %i, error = %e, event = "io_error", "cannot save the upload location in outbox/; a shipper restart would upload from byte 0");
                    }
                }));
                saved = Some(loc.clone());
                if held > 0 {
                    tracing::info!(episode_id = %id, offset = held, bytes_total = archive.bytes, event = "upload_resumed", "the receiver already holds {held} bytes of {id}'s upload; resuming there");
                }
                // More than 0: an earlier append to it may still be
                // stopping, so ask (`known` unset), then settle.
                known = (held == 0).then_some(0);
                loc
            }
        };
        let offset = match known.take() {
            Some(o) => o,
            // A saved location: the receiver's offset, once any earlier
            // append to it has stopped.
            None => match probe(up, &location, archive, &mut budget).await {
                Probe::At(o) => match settle(up, &location, archive, o, &mut budget).await {
                    Probe::At(o) => o,
                    Probe::Gone => {
                        forget(layout, id);
                        saved = None;
                        continue;
                    }
                    Probe::Failed(answer) => break answer,
                },
                Probe::Gone => {
                    forget(layout, id);
                    saved = None;
                    continue;
                }
                Probe::Failed(answer) => break answer,
            },
        };
        match append(up, id, &location, path, archive, offset, progress).await {
            Appended::Done(answer) => break answer,
            Appended::Gone => {
                forget(layout, id);
                saved = None;
            }
            Appended::Mismatch(o) if mismatches < MISMATCH_MAX && o <= archive.bytes => {
                mismatches += 1;
                tracing::info!(episode_id = %id, offset = o, sent_at = offset, event = "upload_offset_mismatch", "the receiver holds {o} bytes of {id}, not {offset}: going on from there");
                known = Some(o);
            }
            Appended::Mismatch(o) => {
                break given_up(format!(
                    "the receiver keeps answering offset_mismatch for {id} (last: it holds {o} of {} bytes); retrying later",
                    archive.bytes
                ));
            }
            Appended::Cut(event) => match settle(up, &location, archive, offset, &mut budget).await
            {
                // The receiver kept what arrived: go on from there at once.
                Probe::At(o) if o > offset => {
                    tracing::info!(episode_id = %id, offset = o, bytes_total = archive.bytes, event = "upload_resumed", "the append of {id} was cut; resuming at byte {o}");
                    mismatches = 0;
                    known = Some(o);
                }
                Probe::Gone => {
                    forget(layout, id);
                    saved = None;
                }
                // No byte moved, or the receiver is not there: the queue's
                // backoff, then HEAD again.
                Probe::At(o) => {
                    tracing::info!(episode_id = %id, offset = o, event = "upload_cut", "the append of {id} was cut and the receiver holds no more than before ({o} bytes)");
                    break (event, None);
                }
                Probe::Failed((after, _)) => {
                    tracing::info!(episode_id = %id, event = "upload_cut", "the append of {id} was cut, and asking the receiver's offset failed too: {after:?}");
                    break (event, None);
                }
            },
        }
    };
    // Done before the caller retires or drops the outbox files.
    if let Some(saving) = saving {
        let _ = saving.await;
    }
    result
}

/// This upload's trouble alone (the receiver keeps losing or disputing it,
/// the archive cannot be read): loud, and only this episode waits.
fn given_up(message: String) -> Answer {
    let event = Event::NoAnswer {
        auth: false,
        message,
        episode: true,
    };
    (event, None)
}

/// Drops a location the receiver no longer knows; the next step creates a
/// new upload.
fn forget(layout: &Layout, id: &Id) {
    tracing::info!(episode_id = %id, event = "upload_restarted", "the receiver does not know {id}'s upload (expired, restarted without it, or another receiver); starting a new upload");
    if let Err(e) = outbox_upload::remove(layout, id) {
        tracing::warn!(episode_id = %id, error = %e, event = "io_error", "cannot remove the old upload location from outbox/");
    }
}

/// `POST /v1/uploads/{host}/{episode}`: the receiver's admission, before
/// any archive byte.
async fn create(up: &Uploader, id: &Id, archive: &Archive) -> Created {
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
            if status == 201
                && held <= archive.bytes
                && outbox_upload::ours(&loc, &up.host, id) =>
        {
            Created::At(loc, held)
        }
        (Some(loc), held) if status == 201 && outbox_upload::ours(&loc, &up.host, id) => {
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

/// All of one send()'s `HEAD`s and empty `PATCH`es together: with the
/// appends feeding the watchdog as their bytes move, no send() goes
/// `WatchdogSec=180` without progress.
const PROBING_MAX: Duration = Duration::from_secs(60);

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
async fn probe(up: &Uploader, location: &str, archive: &Archive, budget: &mut Duration) -> Probe {
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
async fn settle(
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
async fn append(
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
