//! What runs beside the pass: uploads of small archives (held in memory)
//! and retires, up to [`IN_FLIGHT`] of each; the turn every request to the
//! receiver waits for; and the receiver's advertised limits, which bound
//! both the archive's size and those slots.

use super::episode::Episode;
use super::{PassCtx, Shipper, Summary, WATCH_EVERY};
use crate::disk::Layout;
use crate::metrics::{FailureReason, Outcome};
use crate::progress::watch_progress;
use crate::state::{Archive, Event};
use labship_protocol::Id;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument as _;

/// How many small uploads (archives held in memory) and retires may run at
/// once. One at a time, a small episode waits mostly for fsyncs: the
/// receiver's before it answers, ours when it retires. Several in flight let
/// the filesystems commit those together (docs/performance.md). Archives in
/// `outbox/` upload one at a time, the next one packing meanwhile: they are
/// bound by the CPU and the link, not by latency.
pub(super) const IN_FLIGHT: usize = 4;

/// An upload beside the pass, ended: its episode, the event and any
/// `Retry-After`.
pub(super) type Answered = (Episode, Event, Option<Duration>);

/// A retire (the move to `shipped/` and its fsyncs, then dropping the outbox
/// copy) running on a blocking thread while the next episode uploads. The
/// receiver already holds the archive, so nothing waits on it but the
/// bookkeeping; a crash before it ends leaves a recovered archive that HEAD
/// confirms, as for any crash between the answer and the move.
#[derive(Debug)]
pub(super) struct Retiring {
    pub(super) id: Id,
    /// The receiver held it before this upload (counted already present).
    pub(super) already_present: bool,
    pub(super) task: tokio::task::JoinHandle<std::io::Result<PathBuf>>,
    /// Its episode's span, for what its outcome logs.
    span: tracing::Span,
}

impl Shipper {
    /// Waits until a request to the receiver may start: answers already in
    /// take their episodes on first (one may have put the host on hold); a
    /// large upload or a HEAD goes alone; a small upload waits for a free
    /// slot (one until the receiver has given a verdict in this pass).
    /// False when the host is now on hold: the episode waits like the rest
    /// (counted pending).
    pub(super) async fn take_turn(&mut self, small: bool, cx: &mut PassCtx<'_>) -> bool {
        while let Some(joined) = self.uploading.try_join_next() {
            self.take_on(joined, cx).await;
        }
        let limit = if self.receiver_answered {
            self.slots
        } else {
            1
        };
        let room = |n: usize| if small { n < limit } else { n == 0 };
        while !room(self.uploading.len()) {
            self.collect_upload(cx).await;
        }
        if self.host_held() {
            cx.summary.pending += 1;
            return false;
        }
        true
    }

    /// Uploads `ep`'s archive (held in memory) beside the pass;
    /// [`Shipper::collect_upload`] takes the episode on from the answer.
    pub(super) fn upload_beside(&mut self, ep: Episode, archive: Archive) {
        let (uploader, moved) = (self.uploader.clone(), self.uploads_moved.clone());
        let span = ep.span.clone();
        let upload = async move {
            let (event, retry_after) = uploader
                .put(&ep.id, &PathBuf::new(), &archive, &|| {
                    moved.fetch_add(1, Ordering::Relaxed);
                })
                .await;
            (ep, event, retry_after)
        };
        self.uploading.spawn(upload.instrument(span));
    }

    /// Waits for one upload running beside the pass and takes its episode on
    /// from the answer. Nothing to wait for: returns at once. While it waits,
    /// the watchdog hears of every second in which the uploads moved bytes.
    pub(super) async fn collect_upload(&mut self, cx: &mut PassCtx<'_>) {
        let next = self.uploading.join_next();
        let joined = watch_progress(next, &self.uploads_moved, WATCH_EVERY, cx.progress).await;
        let Some(joined) = joined else {
            return;
        };
        (cx.progress)();
        self.take_on(joined, cx).await;
    }

    /// Takes an episode on from its upload's answer.
    async fn take_on(
        &mut self,
        joined: Result<Answered, tokio::task::JoinError>,
        cx: &mut PassCtx<'_>,
    ) {
        match joined {
            Ok((mut ep, event, retry_after)) => {
                let action = self.observe(&mut ep, event, retry_after);
                Box::pin(self.run(ep, Some(action), cx)).await;
            }
            // The task panicked (the workspace aborts on panic, so this is
            // a cancellation at shutdown): the episode is still in
            // episodes/ and the next pass takes it again. Which episode is
            // unknown: logged outside the span of the one waiting here.
            Err(e) => {
                crate::metrics::get().upload_failure(FailureReason::Other);
                tracing::error_span!(parent: None, "pass").in_scope(|| {
                    crate::journal::upload_task_failed(&e);
                });
                cx.summary.transient += 1;
                cx.summary.pending += 1;
            }
        }
    }

    /// Moves `ep` to `shipped/` on a blocking thread, once fewer than
    /// [`IN_FLIGHT`] retires run; [`Shipper::finish_retire`] collects it.
    pub(super) async fn start_retire(&mut self, ep: &mut Episode, summary: &mut Summary) {
        while self.retiring.len() >= IN_FLIGHT {
            self.finish_retire(summary).await;
        }
        let (layout, moving, inline) = (self.layout.clone(), ep.id.clone(), ep.inline.take());
        let task = tokio::task::spawn_blocking(move || {
            let moved = layout.retire(&moving);
            if moved.is_err() {
                // The retry finds the archive in outbox/ and confirms it
                // with HEAD (see `Layout::keep`).
                keep_unanswered(&layout, &moving, inline.as_ref());
            }
            moved
        });
        self.retiring.push_back(Retiring {
            id: ep.id.clone(),
            already_present: ep.already_present,
            task,
            span: ep.span.clone(),
        });
    }

    /// Waits for the oldest retire in flight, if any, and records its outcome.
    pub(super) async fn finish_retire(&mut self, summary: &mut Summary) {
        let Some(mut retiring) = self.retiring.pop_front() else {
            return;
        };
        let moved = match (&mut retiring.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(format!(
                "the retire task failed: {e}"
            ))),
        };
        let span = retiring.span.clone();
        span.in_scope(|| self.retired(retiring, moved, summary));
    }

    /// Records the outcome of a retire.
    fn retired(
        &mut self,
        retiring: Retiring,
        moved: std::io::Result<PathBuf>,
        summary: &mut Summary,
    ) {
        let Retiring {
            id,
            already_present,
            ..
        } = retiring;
        let dest = match moved {
            Ok(dest) => dest,
            Err(e) => return self.io_failure(&id, "moving to shipped/", &e, summary),
        };
        if already_present {
            summary.already_present += 1;
        } else {
            summary.shipped += 1;
        }
        self.backoff.remove(&id);
        self.waiting_packed.remove(&id);
        self.last_upload_ok = true;
        self.last_success = Some(SystemTime::now());
        self.left.insert(id.clone());
        crate::metrics::get().episode(if already_present {
            Outcome::AlreadyPresent
        } else {
            Outcome::Stored
        });
        crate::journal::shipped(&dest, already_present);
    }

    /// The receiver's `max_episode_bytes`, from its ping, asked at most every
    /// ten minutes (which also sets [`Shipper::slots`]). An archive over it
    /// is refused locally: the receiver would answer 413 from the headers,
    /// but an HTTP/1 client still writing the body does not read that early
    /// answer and sees only a broken pipe.
    pub(super) async fn receiver_limit(&mut self) -> Option<u64> {
        const FRESH: Duration = Duration::from_secs(600);
        if let Some((limit, at)) = self.receiver_limit
            && at.elapsed() < FRESH
        {
            return limit;
        }
        let timeout = self.config.connect_timeout + Duration::from_secs(10);
        // Failed: the upload that follows meets the same trouble and
        // reports it; ask again next time.
        let limits = self.uploader.ping(timeout).await.ok()?.limits;
        let limit = limits.and_then(|l| l.max_episode_bytes);
        self.receiver_limit = Some((limit, Instant::now()));
        // An older receiver does not say: one at a time.
        self.slots = limits
            .and_then(|l| l.max_concurrent_uploads)
            .unwrap_or(1)
            .clamp(1, IN_FLIGHT);
        limit
    }
}

/// Puts an archive that was held in memory and sent without a final answer
/// into `outbox/` (blocking), if its episode is still queued: the receiver
/// may hold it already, and the retry confirms it with HEAD. Logs when it
/// cannot (the retry packs again).
pub(super) fn keep_unanswered(layout: &Layout, id: &Id, archive: Option<&Archive>) {
    let Some(archive) = archive else {
        return;
    };
    if !layout.episodes.join(id.as_str()).is_dir() {
        return;
    }
    if let Err(e) = layout.keep(id, archive) {
        tracing::warn!(episode_id = %id, error = %e, "cannot keep the archive in outbox/; the episode will be packed again");
    }
}
