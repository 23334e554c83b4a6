//! One episode driven through [`state::step`]: where it starts from what
//! the scan found, then one method per [`Action`] ([`Shipper::run`]
//! dispatches), each answering with the [`Event`] the state machine
//! observes next. Everything done for an episode runs in its span
//! ([`episode_span`]), which gives its events their `episode_id`.

use super::backoff::{failure_reason, host_wide};
use super::in_flight::keep_unanswered;
use super::packing::{Sealing, pack_event};
use super::{PassCtx, Shipper, Summary};
use crate::disk::Outbox;
use crate::journal;
use crate::metrics::{FailureReason, Outcome};
use crate::scan::Found;
use crate::state::{self, Action, Archive, Event, State};
use labship_protocol::{ErrorCode, Id};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// One episode being driven through [`state::step`].
#[derive(Debug)]
pub(super) struct Episode {
    pub(super) id: Id,
    pub(super) state: State,
    /// The receiver held it before this upload (HEAD found it, or PUT
    /// answered 200).
    pub(super) already_present: bool,
    /// The last answer's `Retry-After`: the least the next backoff waits.
    retry_after: Option<Duration>,
    /// Whether the last event was the receiver's or the link's failure.
    whole_host: bool,
    /// The archive it holds in memory, once sent: kept in `outbox/` when
    /// the receiver's answer is not a final one ([`keep_unanswered`]).
    pub(super) inline: Option<Archive>,
    /// When its last request (HEAD or PUT) was sent.
    asked: Instant,
    /// The seal of its freshly packed outbox archive, if still running:
    /// awaited once its upload ends, before anything else touches the
    /// episode's outbox files ([`Shipper::seal`]).
    pub(super) sealing: Option<Sealing>,
    /// Its [`episode_span`].
    pub(super) span: tracing::Span,
}

/// The span of everything done for episode `id`: its events carry
/// `episode_id` from here (in the journal, `EPISODE_ID`, which doctor
/// reads). A root span, so that an episode taken on while another one
/// waits for its turn never carries the other's id too; at the error level,
/// so that no `LABSHIP_LOG` lets an event through without it.
pub(super) fn episode_span(id: &Id) -> tracing::Span {
    tracing::error_span!(parent: None, "episode", episode_id = %id)
}

/// What an action left the episode with.
enum Flow {
    /// An event for the state machine, with any `Retry-After`.
    Observe(Episode, Event, Option<Duration>),
    /// Final, or waiting for a later pass.
    Stop(Episode),
    /// Uploading beside the pass, which takes it on from the answer.
    Away,
}

impl Shipper {
    /// Takes one episode the scan found as far as it goes in this pass.
    pub(super) async fn drive(&mut self, id: Id, found: Found, cx: &mut PassCtx<'_>) {
        let span = episode_span(&id);
        let (summary, newest) = (&mut cx.summary, cx.settled.get(&id).map(|s| s.newest));
        let Some(state) = span.in_scope(|| self.initial_state(&id, found, newest, summary)) else {
            return;
        };
        let action = match &state {
            State::Quarantined(_) => Some(Action::Quarantine),
            s => state::start(s),
        };
        let ep = Episode {
            id,
            state,
            already_present: false,
            retry_after: None,
            whole_host: false,
            inline: None,
            asked: Instant::now(),
            sealing: None,
            span,
        };
        self.run(ep, action, cx).await;
    }

    /// The state an episode starts from, by what the scan found and what
    /// `outbox/` holds for it; `None` when there is nothing more to do
    /// (an interrupted quarantine finished here, or a failure recorded).
    fn initial_state(
        &mut self,
        id: &Id,
        found: Found,
        newest: Option<std::time::SystemTime>,
        summary: &mut Summary,
    ) -> Option<State> {
        let commit = match found {
            Found::QuarantinePending => {
                self.finish_quarantine(id, summary);
                return None;
            }
            Found::Unstamped(e) => return Some(State::Quarantined(state::unstamped_reason(&e))),
            Found::Ready(commit) => commit,
        };
        // Its look-ahead pack is ours, finished or not: collect it.
        if self.prefetched(id) {
            return Some(State::Ready { commit });
        }
        match self.changed_since_packed(id, self.layout.outbox(id), newest) {
            Outbox::Ours(archive) => {
                let recovered = self.verified.insert(id.clone());
                Some(State::Packed { archive, recovered })
            }
            Outbox::Empty => Some(State::Ready { commit }),
            Outbox::Stale { why } => {
                // Asking HEAD about it would find the earlier episode's
                // digest and retire this one unsent. This one is packed
                // and sent on its own: the receiver answers 409 if it
                // holds the earlier one under the id (quarantined, with
                // its reason), else stores it.
                let path = self.layout.archive_path(id);
                tracing::warn!(path = %path.display(), "dropping the outbox archive: {why}; the episode queued under this id is packed and sent on its own");
                self.verified.remove(id);
                if let Err(e) = self.layout.drop_outbox(id) {
                    self.io_failure(id, "dropping a stale outbox archive", &e, summary);
                    return None;
                }
                Some(State::Ready { commit })
            }
        }
    }

    /// `outbox`, judged stale when the episode's tree (its newest mtime,
    /// `newest`, as this pass walked it) changed after the archive was
    /// written: a file a late writer added or rewrote since would never be
    /// shipped, and the tree moved to `shipped/` as if it had been.
    fn changed_since_packed(
        &self,
        id: &Id,
        outbox: Outbox,
        newest: Option<std::time::SystemTime>,
    ) -> Outbox {
        let (Outbox::Ours(_), Some(newest)) = (&outbox, newest) else {
            return outbox;
        };
        let packed = std::fs::metadata(self.layout.archive_path(id)).and_then(|m| m.modified());
        match packed {
            Ok(packed) if newest > packed => Outbox::Stale {
                why: format!(
                    "the episode changed after it was packed (a file dated {} in its tree, the archive {})",
                    humantime::format_rfc3339_millis(newest),
                    humantime::format_rfc3339_millis(packed)
                ),
            },
            _ => outbox,
        }
    }

    /// A quarantine decided before a crash: finished without asking anyone.
    fn finish_quarantine(&mut self, id: &Id, summary: &mut Summary) {
        match self.layout.finish_quarantine(id) {
            Ok(dest) => {
                journal::quarantine_finished(&dest);
                summary.quarantined += 1;
                self.left.insert(id.clone());
                crate::metrics::get().episode(Outcome::Quarantined);
            }
            Err(e) => self.io_failure(id, "finishing quarantine", &e, summary),
        }
    }

    /// Performs `action` and the ones that follow (in the episode's span)
    /// until the episode is final, must wait, or its upload was started
    /// beside the pass.
    pub(super) async fn run(&mut self, ep: Episode, action: Option<Action>, cx: &mut PassCtx<'_>) {
        let span = ep.span.clone();
        self.steps(ep, action, cx).instrument(span).await;
    }

    async fn steps(&mut self, mut ep: Episode, mut action: Option<Action>, cx: &mut PassCtx<'_>) {
        while let Some(a) = action.take() {
            let flow = match a {
                Action::Pack => self.pack_action(ep, cx).await,
                Action::Head => self.head(ep, cx).await,
                Action::Upload => self.upload(ep, cx).await,
                Action::Retire => self.retire(ep, cx).await,
                Action::Quarantine => self.quarantine(ep, cx),
                Action::RetryLater {
                    loud,
                    code,
                    status,
                    message,
                } => {
                    self.retry_later(ep, (loud, code, status, &message), cx)
                        .await
                }
            };
            match flow {
                Flow::Observe(e, event, retry_after) => {
                    ep = e;
                    action = Some(self.observe(&mut ep, event, retry_after));
                }
                // Every path that stops after a pack has sealed already;
                // this keeps a seal from ever running on unawaited past its
                // episode.
                Flow::Stop(mut e) => return self.seal(&mut e).await,
                Flow::Away => return,
            }
        }
    }

    async fn pack_action(&mut self, mut ep: Episode, cx: &PassCtx<'_>) -> Flow {
        let event = self.pack(&mut ep, cx.progress).await;
        Flow::Observe(ep, event, None)
    }

    async fn head(&mut self, mut ep: Episode, cx: &mut PassCtx<'_>) -> Flow {
        // Like a large upload: alone, after the answers already in.
        if !self.take_turn(false, cx).await {
            return Flow::Stop(ep);
        }
        ep.asked = Instant::now();
        let (event, retry_after) = self.uploader.head(&ep.id).await;
        Flow::Observe(ep, event, retry_after)
    }

    /// Uploads the archive: refused locally over the receiver's limit;
    /// beside the pass when it is held in memory; else from `outbox/` while
    /// the next packs go on.
    async fn upload(&mut self, mut ep: Episode, cx: &mut PassCtx<'_>) -> Flow {
        let State::Packed { archive, .. } = &ep.state else {
            return Flow::Stop(ep);
        };
        let (bytes, small) = (archive.bytes, archive.inline.is_some());
        if let Some(limit) = self.receiver_limit().await.filter(|&limit| bytes > limit) {
            self.seal(&mut ep).await;
            return Flow::Observe(ep, Event::OverLimit { bytes, limit }, None);
        }
        if !self.take_turn(small, cx).await {
            return Flow::Stop(ep);
        }
        let State::Packed { archive, .. } = &ep.state else {
            return Flow::Stop(ep);
        };
        let archive = archive.clone();
        self.start_prefetch(&cx.upcoming);
        ep.asked = Instant::now();
        if small {
            self.upload_beside(ep, archive);
            return Flow::Away;
        }
        let (event, retry_after) = self.upload_outbox(&ep.id, &archive, cx).await;
        self.seal(&mut ep).await;
        Flow::Observe(ep, event, retry_after)
    }

    /// Uploads an archive in `outbox/` (by the upload API or PUT); the
    /// pack's thread seals it meanwhile, and the next packs go on as each
    /// one is done.
    async fn upload_outbox(
        &mut self,
        id: &Id,
        archive: &Archive,
        cx: &PassCtx<'_>,
    ) -> (Event, Option<Duration>) {
        let path = self.layout.archive_path(id);
        let (uploader, layout) = (self.uploader.clone(), self.layout.clone());
        let put =
            crate::upload::resumable::send(&uploader, &layout, id, &path, archive, cx.progress);
        tokio::pin!(put);
        loop {
            let Some(p) = self.prefetch.iter_mut().find(|p| p.packed.is_none()) else {
                break put.await;
            };
            tokio::select! {
                answer = &mut put => break answer,
                r = &mut p.packing.ready => {
                    p.packed = Some(pack_event(r));
                    self.start_prefetch(&cx.upcoming);
                }
            }
        }
    }

    async fn retire(&mut self, mut ep: Episode, cx: &mut PassCtx<'_>) -> Flow {
        // The move's fsyncs overlap the next episodes' uploads.
        self.start_retire(&mut ep, &mut cx.summary).await;
        Flow::Stop(ep)
    }

    fn quarantine(&mut self, ep: Episode, cx: &mut PassCtx<'_>) -> Flow {
        let State::Quarantined(reason) = &ep.state else {
            return Flow::Stop(ep);
        };
        let id = &ep.id;
        match self.layout.quarantine(id, &self.config.host_id, reason) {
            Ok(dest) => {
                cx.summary.quarantined += 1;
                self.left.insert(id.clone());
                crate::metrics::get().episode(Outcome::Quarantined);
                self.backoff.remove(id);
                self.record_error(id, Some(reason.code), reason.http_status, &reason.message);
                journal::quarantined(id, reason, &dest);
            }
            Err(e) => self.io_failure(id, "moving to quarantine/", &e, &mut cx.summary),
        }
        Flow::Stop(ep)
    }

    /// A transient failure: the episode, or the whole host, waits.
    async fn retry_later(
        &mut self,
        mut ep: Episode,
        (loud, code, status, message): (bool, Option<ErrorCode>, Option<u16>, &str),
        cx: &mut PassCtx<'_>,
    ) -> Flow {
        cx.summary.transient += 1;
        cx.summary.pending += 1;
        if let Some(archive) = ep.inline.take() {
            // Sent, with no final answer: the receiver may hold it already.
            // Keep these bytes for the retry.
            let (layout, id) = (self.layout.clone(), ep.id.clone());
            let _ =
                tokio::task::spawn_blocking(move || keep_unanswered(&layout, &id, Some(&archive)))
                    .await;
        }
        self.last_upload_ok = false;
        let (scope, wait) = if ep.whole_host {
            ("host", self.hold_host(ep.asked, ep.retry_after))
        } else {
            if self.layout.archive_path(&ep.id).is_file() {
                self.waiting_packed.insert(ep.id.clone());
            }
            ("episode", self.schedule(&ep.id, ep.retry_after))
        };
        self.record_error(&ep.id, code, status, message);
        let receiver = &self.config.url;
        journal::retry(loud, (code, status), wait, (scope, receiver), message);
        Flow::Stop(ep)
    }

    /// Records what `event` says of the receiver and takes the episode's
    /// state machine one step; returns what to do next.
    pub(super) fn observe(
        &mut self,
        ep: &mut Episode,
        event: Event,
        retry_after: Option<Duration>,
    ) -> Action {
        if matches!(event, Event::Head(Some(_)) | Event::Stored { status: 200 }) {
            ep.already_present = true;
        }
        ep.retry_after = retry_after;
        ep.whole_host = host_wide(&event);
        let verdict = matches!(
            event,
            Event::Stored { .. } | Event::Answer { .. } | Event::Head(_)
        );
        if verdict && !ep.whole_host {
            self.heard_verdict(ep.asked);
        }
        if let (
            State::Packed { archive, .. },
            Event::Stored { .. }
            | Event::NotReceiver { .. }
            | Event::Answer { .. }
            | Event::NoAnswer { .. },
        ) = (&ep.state, &event)
        {
            ep.inline = archive.inline.is_some().then(|| archive.clone());
        }
        let reason = failure_reason(&event);
        let (next, act) = state::step(&ep.state, event);
        if matches!(act, Action::RetryLater { .. }) {
            // Counted where it happens, once per failed attempt.
            crate::metrics::get().upload_failure(reason);
        }
        ep.state = next;
        act
    }

    /// A failed disk step of `id` (`what`): retried after its backoff,
    /// unless the episode left `episodes/` by other hands meanwhile.
    pub(super) fn io_failure(
        &mut self,
        id: &Id,
        what: &str,
        e: &std::io::Error,
        summary: &mut Summary,
    ) {
        if e.kind() == std::io::ErrorKind::NotFound
            && !self.layout.episodes.join(id.as_str()).exists()
        {
            // Moved away meanwhile by other hands (quarantine-unstamped
            // beside us, or an operator): nothing is lost, nothing to retry.
            self.backoff.remove(id);
            self.left.insert(id.clone());
            if let Err(e) = self.layout.drop_outbox(id) {
                tracing::warn!(error = %e, "cannot clear the outbox copy of an episode that left the queue");
            }
            journal::left_queue(what);
            return;
        }
        summary.transient += 1;
        summary.pending += 1;
        crate::metrics::get().upload_failure(FailureReason::Disk);
        let wait = self.schedule(id, None);
        self.record_error(id, None, None, &format!("{what}: {e}"));
        journal::io_failed(what, e, wait);
    }
}
