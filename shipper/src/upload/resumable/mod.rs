//! The shipper's side of resumable uploads (CONTRACT §9): `POST` to create,
//! `HEAD` to learn the receiver's offset, one `PATCH` with the rest.
//!
//! Archives in `outbox/` of `[limits] resumable_min_bytes` and more go this
//! way ([`send`]); smaller ones (and those held in memory, at most 1 MiB) go
//! by one `PUT`. The creation request carries every header the receiver
//! judges (digest, commit, `Upload-Length`), so a refused episode (412, 409,
//! 413, 400) costs no archive byte. Its `Location` is checked
//! ([`location::ours`]: this receiver's upload path for this host and
//! episode, nothing else is ever followed) and saved beside the archive
//! before the first append, so a shipper restarted after `kill -9` resumes.
//!
//! The happy path is `POST` then one `PATCH` with the whole archive and
//! `Upload-Complete: ?1`: one extra round trip, the same stream (bwlimit,
//! stall cut, progress and metrics: [`Uploader::send_body`]). A cut append
//! asks the receiver's offset with an empty append ([`settle`]) and, when it
//! moved, goes on at once from there; when it did not, the failure goes to
//! the queue's backoff and the next attempt asks `HEAD`, then [`settle`]s.
//! `404` (expired, or another receiver in S3 mode) starts a new upload;
//! `409 offset_mismatch` follows the receiver's `Upload-Offset`. Only the
//! completion answer retires an episode, and only when it is the receiver's
//! own word (a `PUT`'s [`Uploader::confirm`]).
//!
//! [`Attempt`] is one such exchange, step by step; [`requests`] sends each
//! request and reads its answer. Its events are [`crate::journal`]'s.

mod requests;

use super::{Uploader, given_up, location};
use crate::disk::Layout;
use crate::journal;
use crate::state::{Archive, Event};
use labship_protocol::{ErrorCode, Id};
use requests::{Appended, Created, Probe, append, create, probe, settle};
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
    let mut attempt = Attempt {
        location: location::load(layout, &up.host, id, archive),
        up,
        layout,
        id,
        path,
        archive,
        progress,
        known: None,
        created: 0,
        mismatches: 0,
        saving: None,
        budget: PROBING_MAX,
    };
    let answer = attempt.run().await;
    // Done before the caller retires or drops the outbox files.
    if let Some(saving) = attempt.saving {
        let _ = saving.await;
    }
    answer
}

/// Set once a `POST` met a receiver without the upload API (older than
/// CONTRACT §9): every archive then goes by `PUT`, for the process's
/// lifetime (a new receiver is a restart away: `receiver.url` needs one).
static NO_UPLOAD_API: AtomicBool = AtomicBool::new(false);

/// Remembers (and says once, loudly) that the receiver has no upload API.
fn no_upload_api(up: &Uploader, status: u16) {
    if !NO_UPLOAD_API.swap(true, Ordering::Relaxed) {
        journal::upload_api_missing(status, &up.url(""));
    }
}

/// One [`send`] by the upload API: the upload it follows, and what it met.
struct Attempt<'a> {
    up: &'a Uploader,
    layout: &'a Layout,
    id: &'a Id,
    path: &'a Path,
    archive: &'a Archive,
    progress: &'a (dyn Fn() + Sync),
    /// The upload's location, saved in `outbox/` (or being saved).
    location: Option<String>,
    /// The receiver's offset, when known without asking.
    known: Option<u64>,
    /// Uploads created so far (at most [`CREATE_MAX`]).
    created: u32,
    /// `409 offset_mismatch` answers in a row (at most [`MISMATCH_MAX`]).
    mismatches: u32,
    /// The location being saved on a blocking thread.
    saving: Option<tokio::task::JoinHandle<()>>,
    /// What the requests without a body may still take.
    budget: Duration,
}

impl Attempt<'_> {
    /// Creates or resumes the upload and appends the rest of the archive,
    /// until the receiver's final word or a failure for the queue.
    async fn run(&mut self) -> Answer {
        loop {
            // Every answer is progress for the watchdog: a chain of requests
            // with no body byte moving must not look like a hung shipper.
            (self.progress)();
            let location = match self.location.clone() {
                Some(l) => l,
                None => match self.create().await {
                    Ok(l) => l,
                    Err(answer) => return answer,
                },
            };
            let offset = match self.known.take() {
                Some(o) => o,
                None => match self.offset(&location).await {
                    Ok(Some(o)) => o,
                    Ok(None) => continue,
                    Err(answer) => return answer,
                },
            };
            let (up, id, path, archive) = (self.up, self.id, self.path, self.archive);
            let done = match append(up, id, &location, path, archive, offset, self.progress).await {
                Appended::Done(answer) => Some(answer),
                Appended::Gone => {
                    self.forget();
                    None
                }
                Appended::Mismatch(held) => self.mismatch(held, offset),
                Appended::Cut(event) => self.cut(&location, offset, event).await,
            };
            if let Some(answer) = done {
                return answer;
            }
        }
    }

    /// A new upload, its location saved beside the archive; `Err` is the
    /// attempt's answer (refused, lost too often, or sent by `PUT` to a
    /// receiver without the upload API).
    async fn create(&mut self) -> Result<String, Answer> {
        let (up, id, archive) = (self.up, self.id, self.archive);
        if self.created == CREATE_MAX {
            return Err(given_up(format!(
                "the receiver lost {id}'s upload {} times in one attempt (expired, or another receiver answers); retrying later",
                self.created
            )));
        }
        self.created += 1;
        let (loc, held) = match create(up, id, archive).await {
            Created::At(loc, held) => (loc, held),
            Created::NoApi(status) => {
                no_upload_api(up, status);
                return Err(up.put(id, self.path, archive, self.progress).await);
            }
            Created::Failed(answer) => return Err(answer),
        };
        crate::crash_point("resume:created");
        // Saved on a blocking thread beside the first append: its fsyncs
        // can wait seconds behind the archive's own seal on the same
        // filesystem, and nothing needs them first (a crash before they
        // end costs a new upload, never an episode).
        let (l, i, a, at) = (
            self.layout.clone(),
            id.clone(),
            archive.clone(),
            loc.clone(),
        );
        self.saving = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = location::save(&l, &i, &a, &at) {
                journal::location_not_saved(&i, &e);
            }
        }));
        self.location = Some(loc.clone());
        if held > 0 {
            journal::upload_resumed(id, held, archive.bytes, false);
        }
        // More than 0: an earlier append to it may still be stopping, so
        // ask (`known` unset), then settle.
        self.known = (held == 0).then_some(0);
        Ok(loc)
    }

    /// The receiver's offset for a saved location, once any earlier append
    /// to it has stopped; `Ok(None)` when it no longer knows the upload.
    async fn offset(&mut self, location: &str) -> Result<Option<u64>, Answer> {
        let (up, archive) = (self.up, self.archive);
        let probed = match probe(up, location, archive, &mut self.budget).await {
            Probe::At(o) => settle(up, location, archive, o, &mut self.budget).await,
            other => other,
        };
        match probed {
            Probe::At(o) => Ok(Some(o)),
            Probe::Gone => {
                self.forget();
                Ok(None)
            }
            Probe::Failed(answer) => Err(answer),
        }
    }

    /// `409 offset_mismatch` to an append sent at `offset`: go on from the
    /// receiver's `held`, a few times; `Some` is the attempt's answer.
    fn mismatch(&mut self, held: u64, offset: u64) -> Option<Answer> {
        let (id, bytes) = (self.id, self.archive.bytes);
        if self.mismatches >= MISMATCH_MAX || held > bytes {
            return Some(given_up(format!(
                "the receiver keeps answering offset_mismatch for {id} (last: it holds {held} of {bytes} bytes); retrying later"
            )));
        }
        self.mismatches += 1;
        journal::upload_offset_mismatch(id, held, offset);
        self.known = Some(held);
        None
    }

    /// The append from `offset` was cut (`event`): when the receiver kept
    /// what arrived, go on from there at once; else `Some`: the queue's
    /// backoff, then HEAD again.
    async fn cut(&mut self, location: &str, offset: u64, event: Event) -> Option<Answer> {
        let (id, archive) = (self.id, self.archive);
        match settle(self.up, location, archive, offset, &mut self.budget).await {
            Probe::At(o) if o > offset => {
                journal::upload_resumed(id, o, archive.bytes, true);
                self.mismatches = 0;
                self.known = Some(o);
                None
            }
            Probe::Gone => {
                self.forget();
                None
            }
            // No byte moved, or the receiver is not there.
            Probe::At(o) => {
                journal::upload_cut(id, Ok(o));
                Some((event, None))
            }
            // The receiver is there and says this episode waits (its
            // earlier append is still stopping): the episode's own wait
            // (CONTRACT §9), not the cut's, which holds the whole host.
            Probe::Failed((
                after @ Event::Answer {
                    error: Some(ErrorCode::EpisodeBusy),
                    ..
                },
                retry_after,
            )) => {
                journal::upload_cut(id, Err(&after));
                Some((after, retry_after))
            }
            Probe::Failed((after, _)) => {
                journal::upload_cut(id, Err(&after));
                Some((event, None))
            }
        }
    }

    /// Drops a location the receiver no longer knows; the next step creates
    /// a new upload.
    fn forget(&mut self) {
        let id = self.id;
        journal::upload_restarted(id);
        if let Err(e) = location::remove(self.layout, id) {
            journal::location_not_removed(&e);
        }
        self.location = None;
    }
}

/// All of one send()'s `HEAD`s and empty `PATCH`es together: with the
/// appends feeding the watchdog as their bytes move, no send() goes
/// `WatchdogSec=180` without progress.
const PROBING_MAX: Duration = Duration::from_secs(60);
