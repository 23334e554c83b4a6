//! The thin async driver of the episode state machine.
//!
//! A pass scans `episodes/`, then takes each ready episode through
//! [`state::step`] until it is final or must wait: packing on a blocking
//! thread, HEAD/PUT through the [`Uploader`], moves through [`Layout`].
//! Transient failures that belong to one episode (a 500, a failed pack, a
//! failed move) put that episode on its own backoff (exponential, full jitter,
//! at least any `Retry-After`), so a failing episode never blocks the others.
//! Failures that belong to the receiver or the link (no answer, 401, 403, 429,
//! 503, 507) put the whole host on hold instead and end the pass: hammering a
//! receiver that is down or full once per episode helps nobody. A 503
//! `episode_busy` (another upload of that episode in progress) is the
//! episode's own.
//!
//! While one episode uploads, the next ready ones are packed on a blocking
//! thread, one pack at a time ([`LOOK_AHEAD`] archives waiting at most); a
//! freshly packed archive is sealed (fsync, sidecar) beside its own upload;
//! and the previous episode's retire (the move to `shipped/` and its fsyncs)
//! finishes on another thread: the critical path is packing and the upload.
//! After every pass `state/status.json` is written atomically.

use crate::archive::ArchiveError;
use crate::config::Config;
use crate::disk::{Layout, Outbox};
use crate::metrics::{Backlog, FailureReason, Outcome};
use crate::scan::{Found, Scanner};
use crate::state::{self, Action, Archive, Event, State};
use crate::upload::Uploader;
use labship_protocol::{ErrorCode, Id};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub shipped: usize,
    pub already_present: usize,
    pub quarantined: usize,
    /// Not ready yet (no `meta.json`, still settling) or waiting for a retry.
    pub pending: usize,
    /// Left by a transient failure in this pass.
    pub transient: usize,
}

#[derive(Debug, Clone, Serialize)]
struct LastError {
    code: Option<String>,
    status: Option<u16>,
    episode: String,
    message: String,
    at: String,
}

#[derive(Debug)]
struct Backoff {
    attempts: u32,
    next: Instant,
    /// When it began: for the host's hold, answers to requests sent before
    /// then do not lift it.
    since: Instant,
}

impl Backoff {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            attempts: 0,
            next: now,
            since: now,
        }
    }

    fn waiting(&self) -> bool {
        Instant::now() < self.next
    }

    /// Exponential backoff with full jitter, never shorter than `floor`;
    /// returns the wait.
    fn bump(
        &mut self,
        rng: &mut u64,
        initial: Duration,
        max: Duration,
        floor: Option<Duration>,
    ) -> Duration {
        let cap = initial
            .saturating_mul(1u32 << self.attempts.min(20))
            .min(max);
        self.attempts += 1;
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let jitter = Duration::from_millis(*rng % (cap.as_millis() as u64 + 1));
        let wait = jitter.max(floor.unwrap_or_default());
        self.next = self.next.max(Instant::now() + wait);
        self.next.saturating_duration_since(Instant::now())
    }
}

/// A pack on a blocking thread. Its archive arrives on `ready` as soon as
/// it can be uploaded; for one in `outbox/` the thread then seals it (fsync,
/// sidecar: [`Layout::seal`]) while the upload runs, and `sealed` ends with
/// that. Packing is the critical path of a batch of large episodes; the
/// seal's fsync of about 10 MB no longer is (docs/performance.md).
#[derive(Debug)]
struct Packing {
    written: Arc<AtomicU64>,
    ready: tokio::sync::oneshot::Receiver<Result<Archive, ArchiveError>>,
    sealed: Sealing,
}

/// The seal of an outbox archive, running on the pack's thread.
type Sealing = tokio::task::JoinHandle<std::io::Result<()>>;

/// A pack started ahead of its turn.
#[derive(Debug)]
struct Prefetch {
    id: Id,
    packing: Packing,
    /// Its outcome, once it arrived while an upload ran.
    packed: Option<Event>,
}

/// How many packs may run ahead of the upload: the next pack starts as soon
/// as the previous one is done, with up to this many archives waiting, so
/// the cores keep compressing while an upload finishes. One pack runs at a
/// time (one pack's memory); `outbox/` holds up to this many archives
/// besides the one uploading.
const LOOK_AHEAD: usize = 2;

/// A retire (the move to `shipped/` and its fsyncs, then dropping the outbox
/// copy) running on a blocking thread while the next episode uploads. The
/// receiver already holds the archive, so nothing waits on it but the
/// bookkeeping; a crash before it ends leaves a recovered archive that HEAD
/// confirms, as for any crash between the answer and the move.
#[derive(Debug)]
struct Retiring {
    id: Id,
    already: bool,
    task: tokio::task::JoinHandle<std::io::Result<std::path::PathBuf>>,
}

/// How many small uploads (archives held in memory) and retires may run at
/// once. One at a time, a small episode waits mostly for fsyncs: the
/// receiver's before it answers, ours when it retires. Several in flight let
/// the filesystems commit those together (docs/performance.md). Archives in
/// `outbox/` upload one at a time, the next one packing meanwhile: they are
/// bound by the CPU and the link, not by latency.
const IN_FLIGHT: usize = 4;

/// One episode being driven through [`state::step`].
#[derive(Debug)]
struct Episode {
    id: Id,
    state: State,
    /// The receiver already held it (HEAD found it, or PUT answered 200).
    already: bool,
    /// The last answer's Retry-After: the floor of the next backoff.
    floor: Option<Duration>,
    /// Whether the last event was the receiver's or the link's failure.
    whole_host: bool,
    /// The archive it holds in memory, once sent: kept in `outbox/` when
    /// the receiver's answer is not a final one (see [`Layout::keep`]).
    inline: Option<Archive>,
    /// When its last request (HEAD or PUT) was sent.
    asked: Instant,
    /// The seal of its freshly packed outbox archive, if still running:
    /// awaited once its upload ends, before anything else touches the
    /// episode's outbox files ([`Shipper::seal`]).
    sealing: Option<Sealing>,
}

/// Does this failure belong to the receiver or the link rather than to the
/// episode? Then every episode would meet it: hold the whole host.
fn host_wide(event: &Event) -> bool {
    match event {
        // Something other than the receiver answers at its URL: so it will
        // for every episode.
        Event::NoAnswer { episode, .. } => !episode,
        Event::NotReceiver { .. } => true,
        // Another upload of this episode is in progress (CONTRACT §9):
        // this episode waits, the others go on.
        Event::Answer {
            error: Some(ErrorCode::EpisodeBusy),
            ..
        } => false,
        Event::Answer { status, .. } => matches!(status, 401 | 403 | 429 | 503 | 507),
        _ => false,
    }
}

#[derive(Debug)]
pub struct Shipper {
    config: Config,
    layout: Layout,
    scanner: Scanner,
    uploader: Arc<Uploader>,
    backoff: HashMap<Id, Backoff>,
    /// Set while the receiver or the link is failing for everyone.
    hold: Option<Backoff>,
    /// Packs started ahead of their turn, oldest first: at most
    /// [`LOOK_AHEAD`], of which only the newest may still be packing.
    prefetch: VecDeque<Prefetch>,
    /// Retires in flight, oldest first: at most [`IN_FLIGHT`]; all are
    /// collected before the pass ends.
    retiring: VecDeque<Retiring>,
    /// Uploads of archives held in memory, running beside the pass: at most
    /// [`IN_FLIGHT`]; all are collected before the pass ends.
    uploading: tokio::task::JoinSet<(Episode, Event, Option<Duration>)>,
    /// The receiver gave a verdict on an episode in this pass: only then
    /// do several uploads go at once. Until it has, one goes alone, so a
    /// receiver that is down or busy meets one request per pass, not four.
    answering: bool,
    /// Bumped whenever an upload beside the pass moves bytes: the watchdog's
    /// sign of life while the pass waits for them.
    moved: Arc<AtomicU64>,
    /// Outbox archives found at start-up are verified with HEAD once.
    verified: std::collections::HashSet<Id>,
    workers: u32,
    last_success: Option<SystemTime>,
    last_error: Option<LastError>,
    rng: u64,
    cleanup: crate::cleanup::Schedule,
    /// The receiver's advertised `max_episode_bytes` and when it was asked.
    limit: Option<(Option<u64>, Instant)>,
    /// How many small uploads may go at once: [`IN_FLIGHT`], or fewer when
    /// the receiver's ping says it takes fewer (`max_concurrent_uploads`).
    slots: usize,
    /// `pending` of the last full pass (reported while the host is on hold).
    last_pending: usize,
    /// Episodes that left `episodes/` in this pass (shipped, quarantined,
    /// moved away by other hands): the rest of the settled ones are the
    /// backlog the pass publishes.
    left: std::collections::HashSet<Id>,
    /// `state/status.json` with the uploads' progress (progress.rs).
    progress: Arc<crate::progress::Progress>,
    /// Held (flock) for the process's life: one shipper per data_dir.
    _lock: std::fs::File,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Shipper {
    /// Prepares the directories (clearing crash leftovers in `outbox/`).
    pub fn new(config: Config, uploader: Uploader) -> std::io::Result<Self> {
        let layout = Layout::new(&config.data_dir);
        let lock = layout.prepare()?;
        // limits.zstd_workers: one pack runs at a time (LOOK_AHEAD), so this
        // bounds the compression threads the shipper runs at all.
        let workers = config.packing_threads();
        let rng = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let progress = Arc::new(crate::progress::Progress::new(
            layout.state.join("status.json"),
            uploader.uploads.clone(),
            uploader.limiter.clone(),
            &config.host_id,
        ));
        Ok(Self {
            progress,
            layout,
            scanner: Scanner::new(),
            uploader: Arc::new(uploader),
            backoff: HashMap::new(),
            hold: None,
            prefetch: VecDeque::new(),
            retiring: VecDeque::new(),
            uploading: tokio::task::JoinSet::new(),
            answering: false,
            moved: Arc::new(AtomicU64::new(0)),
            verified: Default::default(),
            workers,
            last_success: None,
            last_error: None,
            rng,
            cleanup: crate::cleanup::Schedule::new(config.quarantine_keep, config.cleanup_interval),
            limit: None,
            slots: 1,
            last_pending: 0,
            left: Default::default(),
            _lock: lock,
            config,
        })
    }

    pub fn uploader(&self) -> &Uploader {
        &self.uploader
    }

    pub fn progress(&self) -> Arc<crate::progress::Progress> {
        self.progress.clone()
    }

    /// One pass. `progress` is called while work moves (scan, uploads).
    pub async fn pass(&mut self, progress: &(dyn Fn() + Sync)) -> Summary {
        let mut summary = Summary::default();
        self.uploader.look_at_tls();
        if self.hold.as_ref().is_some_and(Backoff::waiting) {
            // The receiver or the link is failing for everyone: no scan, no
            // tree walks, nothing to do until the hold lifts.
            summary.pending = self.last_pending;
            self.write_status(&summary);
            progress();
            return summary;
        }
        let scanned = {
            let (episodes, settle) = (self.layout.episodes.clone(), self.config.settle);
            let mut scanner = std::mem::take(&mut self.scanner);
            let result = tokio::task::spawn_blocking(move || {
                let r = scanner.scan(&episodes, settle, SystemTime::now());
                (scanner, r)
            })
            .await;
            match result {
                Ok((scanner, r)) => {
                    self.scanner = scanner;
                    r
                }
                Err(e) => Err(std::io::Error::other(e)),
            }
        };
        progress();
        let mut pass = match scanned {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, dir = %self.layout.episodes.display(), event = "scan_failed", "cannot scan the queue");
                // The backlog gauges keep the last pass's values: an
                // unreadable episodes/ is not an empty one.
                crate::metrics::get().upload_failure(FailureReason::Scan);
                summary.transient += 1;
                self.last_error = Some(LastError {
                    code: None,
                    status: None,
                    episode: String::new(),
                    message: format!("cannot scan {}: {e}", self.layout.episodes.display()),
                    at: rfc3339(SystemTime::now()),
                });
                self.write_status(&summary);
                return summary;
            }
        };
        summary.pending = pass.pending;
        let (settled, settling) = (std::mem::take(&mut pass.settled), pass.pending);
        self.left.clear();
        // Forget episodes that left the queue by other hands (an operator's
        // mv): these maps must not grow for months.
        let queued: std::collections::HashSet<&Id> = pass.found.iter().map(|(id, _)| id).collect();
        self.backoff.retain(|id, _| queued.contains(id));
        self.verified.retain(|id| queued.contains(id));
        let mut work: VecDeque<(Id, Found)> = pass.found.into();
        self.answering = false;
        while let Some((id, found)) = work.pop_front() {
            // Local work (quarantining unstamped or half-quarantined episodes)
            // goes on while the host is on hold; talking to the receiver waits.
            let remote = matches!(found, Found::Ready(_));
            let held = self.hold.as_ref().is_some_and(Backoff::waiting);
            if remote && (held || self.backoff.get(&id).is_some_and(Backoff::waiting)) {
                summary.pending += 1;
                continue;
            }
            self.drive(id, found, &mut summary, progress, &work).await;
            progress();
        }
        while !self.uploading.is_empty() {
            self.collect_upload(&mut summary, progress, &work).await;
        }
        while !self.retiring.is_empty() {
            self.finish_retire(&mut summary).await;
        }
        self.finish_prefetch(progress).await;
        self.sweep_quarantine().await;
        self.publish(&settled, settling);
        self.last_pending = summary.pending;
        self.write_status(&summary);
        summary
    }

    /// The receiver's `max_episode_bytes`, from its ping, asked at most every
    /// ten minutes. An archive over it is refused locally: the receiver would
    /// answer 413 from the headers, but an HTTP/1 client still writing the
    /// body does not read that early answer and sees only a broken pipe.
    async fn receiver_limit(&mut self) -> Option<u64> {
        const FRESH: Duration = Duration::from_secs(600);
        match self.limit {
            Some((limit, at)) if at.elapsed() < FRESH => limit,
            _ => {
                let timeout = self.config.connect_timeout + Duration::from_secs(10);
                match self.uploader.ping(timeout).await {
                    Ok(pong) => {
                        let limit = pong.limits.and_then(|l| l.max_episode_bytes);
                        self.limit = Some((limit, Instant::now()));
                        // An older receiver does not say: one at a time.
                        self.slots = pong
                            .limits
                            .and_then(|l| l.max_concurrent_uploads)
                            .unwrap_or(1)
                            .clamp(1, IN_FLIGHT);
                        limit
                    }
                    // The upload that follows meets the same trouble and
                    // reports it; ask again next time.
                    Err(_) => None,
                }
            }
        }
    }

    /// Packs the next ready episode in `upcoming` (not yet in the outbox nor
    /// packing) on a blocking thread, unless a look-ahead pack is still
    /// running or [`LOOK_AHEAD`] archives already wait.
    fn start_prefetch(&mut self, upcoming: &VecDeque<(Id, Found)>) {
        if self.prefetch.len() >= LOOK_AHEAD || self.prefetch.iter().any(|p| p.packed.is_none()) {
            return;
        }
        let next = upcoming.iter().find_map(|(id, found)| match found {
            // Not one with anything in the outbox: `drive` takes it from there
            // (a stale archive is dropped there, loudly).
            Found::Ready(commit)
                if !self.backoff.get(id).is_some_and(Backoff::waiting)
                    && !self.prefetch.iter().any(|p| p.id == *id)
                    && self.layout.outbox(id) == Outbox::Empty =>
            {
                Some((id.clone(), commit.clone()))
            }
            _ => None,
        });
        if let Some((id, commit)) = next {
            let packing = self.spawn_pack(&id, commit);
            self.prefetch.push_back(Prefetch {
                id,
                packing,
                packed: None,
            });
        }
    }

    /// A look-ahead pack whose episode was not driven in this pass (the host
    /// went on hold) is let finish; its archive waits in the outbox, known
    /// to be ours, so the next pass uploads it without asking first.
    async fn finish_prefetch(&mut self, progress: &(dyn Fn() + Sync)) {
        while let Some(p) = self.prefetch.pop_front() {
            let Prefetch {
                id,
                mut packing,
                packed,
            } = p;
            // An archive held in memory goes with this pass; the episode
            // packs again next time. One in outbox/ counts once sealed.
            let event = match packed {
                Some(event) => event,
                None => await_pack(&mut packing.ready, &packing.written, progress).await,
            };
            let sealed = seal(&id, packing.sealed).await;
            if sealed && matches!(event, Event::Packed(Archive { inline: None, .. })) {
                self.verified.insert(id);
            }
        }
    }

    fn spawn_pack(&self, id: &Id, commit: labship_protocol::Commit) -> Packing {
        let written = Arc::new(AtomicU64::new(0));
        let (layout, id, level, workers, w) = (
            self.layout.clone(),
            id.clone(),
            self.config.zstd_level,
            self.workers,
            written.clone(),
        );
        let (tx, ready) = tokio::sync::oneshot::channel();
        let sealed = tokio::task::spawn_blocking(move || {
            match layout.pack(&id, &commit, level, workers, &w) {
                Ok((archive, unsealed)) => {
                    let _ = tx.send(Ok(archive));
                    match unsealed {
                        Some(u) => layout.seal(u).map_err(|(path, e)| {
                            std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                        }),
                        None => Ok(()),
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    Ok(())
                }
            }
        });
        Packing {
            written,
            ready,
            sealed,
        }
    }

    async fn sweep_quarantine(&mut self) {
        let Some(keep) = self.cleanup.due(Instant::now()) else {
            return;
        };
        let dir = self.layout.quarantine.clone();
        match tokio::task::spawn_blocking(move || {
            crate::cleanup::sweep(&dir, keep, SystemTime::now())
        })
        .await
        {
            Ok(Ok(removed)) => {
                for (path, age) in removed {
                    tracing::info!(path = %path.display(), age_days = age.as_secs() / 86_400, event = "quarantine_removed", "removed an expired quarantine entry");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, event = "quarantine_cleanup_failed", "quarantine cleanup failed")
            }
            Err(e) => {
                tracing::error!(error = %e, event = "quarantine_cleanup_failed", "quarantine cleanup task failed")
            }
        }
    }

    async fn drive(
        &mut self,
        id: Id,
        found: Found,
        summary: &mut Summary,
        progress: &(dyn Fn() + Sync),
        upcoming: &VecDeque<(Id, Found)>,
    ) {
        let state = match found {
            Found::QuarantinePending => {
                match self.layout.finish_quarantine(&id) {
                    Ok(dest) => {
                        tracing::warn!(episode_id = %id, dest = %dest.display(), event = "quarantined", "finished a quarantine interrupted by a crash");
                        summary.quarantined += 1;
                        self.left.insert(id.clone());
                        crate::metrics::get().episode(Outcome::Quarantined);
                    }
                    Err(e) => self.io_failure(&id, "finishing quarantine", &e, summary),
                }
                return;
            }
            Found::Unstamped(e) => State::Quarantined(state::unstamped_reason(&e)),
            // Its look-ahead pack is ours, finished or not: collect it.
            Found::Ready(commit) if self.prefetch.iter().any(|p| p.id == id) => {
                State::Ready { commit }
            }
            Found::Ready(commit) => match self.layout.outbox(&id) {
                Outbox::Ours(archive) => {
                    let recovered = self.verified.insert(id.clone());
                    State::Packed { archive, recovered }
                }
                Outbox::Empty => State::Ready { commit },
                Outbox::Stale { why } => {
                    // Asking HEAD about it would find the earlier episode's
                    // digest and retire this one unsent. This one is packed
                    // and sent on its own: the receiver answers 409 if it
                    // holds the earlier one under the id (quarantined, with
                    // its reason), else stores it.
                    let path = self.layout.archive_path(&id);
                    tracing::warn!(episode_id = %id, path = %path.display(), "dropping the outbox archive: {why}; the episode queued under this id is packed and sent on its own");
                    self.verified.remove(&id);
                    if let Err(e) = self.layout.drop_outbox(&id) {
                        self.io_failure(&id, "dropping a stale outbox archive", &e, summary);
                        return;
                    }
                    State::Ready { commit }
                }
            },
        };
        let action = match &state {
            State::Quarantined(_) => Some(Action::Quarantine),
            s => state::start(s),
        };
        let ep = Episode {
            id,
            state,
            already: false,
            floor: None,
            whole_host: false,
            inline: None,
            asked: Instant::now(),
            sealing: None,
        };
        self.run(ep, action, summary, progress, upcoming).await;
    }

    /// Performs `action` and the ones that follow until the episode is final,
    /// must wait, or its upload was started beside the pass ([`IN_FLIGHT`]).
    async fn run(
        &mut self,
        mut ep: Episode,
        mut action: Option<Action>,
        summary: &mut Summary,
        progress: &(dyn Fn() + Sync),
        upcoming: &VecDeque<(Id, Found)>,
    ) {
        let id = ep.id.clone();
        while let Some(a) = action.take() {
            let (event, retry_after) = match a {
                Action::Pack => (self.pack(&mut ep, progress).await, None),
                Action::Head => {
                    // Like a large upload: alone, after the answers already in.
                    if !self.take_turn(false, summary, progress, upcoming).await {
                        return;
                    }
                    ep.asked = Instant::now();
                    self.uploader.head(&id).await
                }
                Action::Upload => {
                    let State::Packed { archive, .. } = &ep.state else {
                        break;
                    };
                    let bytes = archive.bytes;
                    match self.receiver_limit().await {
                        Some(limit) if bytes > limit => {
                            self.seal(&mut ep).await;
                            (Event::OverLimit { bytes, limit }, None)
                        }
                        _ => {
                            let small = archive.inline.is_some();
                            if !self.take_turn(small, summary, progress, upcoming).await {
                                self.seal(&mut ep).await;
                                return;
                            }
                            let State::Packed { archive, .. } = &ep.state else {
                                break;
                            };
                            self.start_prefetch(upcoming);
                            ep.asked = Instant::now();
                            if small {
                                // Beside the pass; `collect_upload` takes the
                                // episode on from the answer.
                                let (uploader, archive) = (self.uploader.clone(), archive.clone());
                                let moved = self.moved.clone();
                                self.uploading.spawn(async move {
                                    let (event, retry_after) = uploader
                                        .put(&ep.id, &PathBuf::new(), &archive, &|| {
                                            moved.fetch_add(1, Ordering::Relaxed);
                                        })
                                        .await;
                                    (ep, event, retry_after)
                                });
                                return;
                            }
                            // The pack's thread seals the archive meanwhile,
                            // and the next packs go on as each one is done.
                            let path = self.layout.archive_path(&id);
                            let (uploader, layout) = (self.uploader.clone(), self.layout.clone());
                            let answer = {
                                let put = crate::upload::resumable::send(
                                    &uploader, &layout, &id, &path, archive, progress,
                                );
                                tokio::pin!(put);
                                loop {
                                    let Some(p) =
                                        self.prefetch.iter_mut().find(|p| p.packed.is_none())
                                    else {
                                        break put.await;
                                    };
                                    tokio::select! {
                                        answer = &mut put => break answer,
                                        r = &mut p.packing.ready => {
                                            p.packed = Some(pack_event(r));
                                            self.start_prefetch(upcoming);
                                        }
                                    }
                                }
                            };
                            self.seal(&mut ep).await;
                            answer
                        }
                    }
                }
                Action::Retire => {
                    // The move's fsyncs overlap the next episodes' uploads.
                    while self.retiring.len() >= IN_FLIGHT {
                        self.finish_retire(summary).await;
                    }
                    let (layout, moving, inline) =
                        (self.layout.clone(), id.clone(), ep.inline.take());
                    let task = tokio::task::spawn_blocking(move || {
                        let moved = layout.retire(&moving);
                        if moved.is_err() {
                            // The retry finds the archive in outbox/ and
                            // confirms it with HEAD (see `Layout::keep`).
                            keep(&layout, &moving, inline.as_ref());
                        }
                        moved
                    });
                    self.retiring.push_back(Retiring {
                        id: id.clone(),
                        already: ep.already,
                        task,
                    });
                    break;
                }
                Action::Quarantine => {
                    let State::Quarantined(reason) = &ep.state else {
                        break;
                    };
                    match self.layout.quarantine(&id, &self.config.host_id, reason) {
                        Ok(dest) => {
                            summary.quarantined += 1;
                            self.left.insert(id.clone());
                            crate::metrics::get().episode(Outcome::Quarantined);
                            self.backoff.remove(&id);
                            self.record_error(
                                &id,
                                Some(reason.code),
                                reason.http_status,
                                &reason.message,
                            );
                            tracing::error!(
                                episode_id = %id, error_code = reason.code.as_str(), http_status = reason.http_status,
                                remediation = reason.remediation.as_deref(), dest = %dest.display(),
                                event = "quarantined", "quarantined {id}: {}", reason.message
                            );
                        }
                        Err(e) => self.io_failure(&id, "moving to quarantine/", &e, summary),
                    }
                    break;
                }
                Action::RetryLater {
                    loud,
                    code,
                    status,
                    message,
                } => {
                    summary.transient += 1;
                    summary.pending += 1;
                    if let Some(archive) = ep.inline.take() {
                        // Sent, with no final answer: the receiver may hold
                        // it already. Keep these bytes for the retry.
                        let (layout, id) = (self.layout.clone(), id.clone());
                        let _ =
                            tokio::task::spawn_blocking(move || keep(&layout, &id, Some(&archive)))
                                .await;
                    }
                    let (scope, wait) = if ep.whole_host {
                        ("host", self.hold_host(ep.asked, ep.floor))
                    } else {
                        ("episode", self.schedule(&id, ep.floor))
                    };
                    self.record_error(&id, code, status, &message);
                    if loud {
                        tracing::error!(episode_id = %id, error_code = code.map(|c| c.as_str()), http_status = status, retry_in_ms = wait.as_millis() as u64, scope, event = "retry", "transient failure that needs an operator: {message}");
                    } else {
                        tracing::warn!(episode_id = %id, error_code = code.map(|c| c.as_str()), http_status = status, retry_in_ms = wait.as_millis() as u64, scope, event = "retry", "transient failure, will retry: {message}");
                    }
                    break;
                }
            };
            action = Some(self.observe(&mut ep, event, retry_after));
        }
        // Every path that reaches here after a pack has sealed already; this
        // keeps a seal from ever running on unawaited past its episode.
        self.seal(&mut ep).await;
    }

    /// Waits until a request to the receiver may start: answers already in
    /// take their episodes on first (one may have put the host on hold); a
    /// large upload or a HEAD goes alone; a small upload waits for a free
    /// slot (one until the receiver has given a verdict in this pass).
    /// False when the host is now on hold: the episode waits like the rest
    /// (counted pending).
    async fn take_turn(
        &mut self,
        small: bool,
        summary: &mut Summary,
        progress: &(dyn Fn() + Sync),
        upcoming: &VecDeque<(Id, Found)>,
    ) -> bool {
        self.collect_ready(summary, progress, upcoming).await;
        let limit = if self.answering { self.slots } else { 1 };
        let room = |n: usize| if small { n < limit } else { n == 0 };
        while !room(self.uploading.len()) {
            self.collect_upload(summary, progress, upcoming).await;
        }
        if self.hold.as_ref().is_some_and(Backoff::waiting) {
            summary.pending += 1;
            return false;
        }
        true
    }

    /// Records what `event` says of the receiver and takes the episode's
    /// state machine one step; returns what to do next.
    fn observe(&mut self, ep: &mut Episode, event: Event, retry_after: Option<Duration>) -> Action {
        if matches!(event, Event::Head(Some(_)) | Event::Stored { status: 200 }) {
            ep.already = true;
        }
        ep.floor = retry_after;
        ep.whole_host = host_wide(&event);
        if matches!(
            event,
            Event::Stored { .. } | Event::Answer { .. } | Event::Head(_)
        ) && !ep.whole_host
        {
            // The receiver answered with a verdict on this episode: it is
            // reachable and working, whatever the verdict. Unless the request
            // went before the hold began: an earlier upload in flight says
            // nothing of the failure that started it.
            if self.hold.as_ref().is_none_or(|h| ep.asked >= h.since) {
                self.hold = None;
            }
            self.answering = true;
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

    /// Waits for one upload running beside the pass and takes its episode on
    /// from the answer. Nothing to wait for: returns at once. While it waits,
    /// the watchdog hears of every second in which the uploads moved bytes.
    async fn collect_upload(
        &mut self,
        summary: &mut Summary,
        progress: &(dyn Fn() + Sync),
        upcoming: &VecDeque<(Id, Found)>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = self.moved.load(Ordering::Relaxed);
        let joined = loop {
            tokio::select! {
                j = self.uploading.join_next() => break j,
                _ = tick.tick() => {
                    let now = self.moved.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        progress();
                    }
                }
            }
        };
        let Some(joined) = joined else {
            return;
        };
        progress();
        self.take_on(joined, summary, progress, upcoming).await;
    }

    /// Takes on every upload that has already finished, without waiting.
    async fn collect_ready(
        &mut self,
        summary: &mut Summary,
        progress: &(dyn Fn() + Sync),
        upcoming: &VecDeque<(Id, Found)>,
    ) {
        while let Some(joined) = self.uploading.try_join_next() {
            self.take_on(joined, summary, progress, upcoming).await;
        }
    }

    /// Takes an episode on from its upload's answer.
    async fn take_on(
        &mut self,
        joined: Result<(Episode, Event, Option<Duration>), tokio::task::JoinError>,
        summary: &mut Summary,
        progress: &(dyn Fn() + Sync),
        upcoming: &VecDeque<(Id, Found)>,
    ) {
        match joined {
            Ok((mut ep, event, retry_after)) => {
                let action = self.observe(&mut ep, event, retry_after);
                Box::pin(self.run(ep, Some(action), summary, progress, upcoming)).await;
            }
            // The task panicked (the workspace aborts on panic, so this is
            // a cancellation at shutdown): the episode is still in
            // episodes/ and the next pass takes it again.
            Err(e) => {
                crate::metrics::get().upload_failure(FailureReason::Other);
                tracing::error!(error = %e, event = "upload_task_failed", "an upload task failed");
                summary.transient += 1;
                summary.pending += 1;
            }
        }
    }

    /// Puts the whole host on hold after the receiver's or the link's
    /// failure of a request sent at `asked`; returns the wait. A request
    /// sent before the current hold began (uploads in flight together fail
    /// together, some only after a long timeout) only raises the hold to its
    /// `Retry-After`; a later one lengthens it, starts a new hold period and
    /// sends the next upload alone again.
    fn hold_host(&mut self, asked: Instant, floor: Option<Duration>) -> Duration {
        let (initial, max) = (self.config.initial_backoff, self.config.max_backoff);
        let now = Instant::now();
        match &mut self.hold {
            Some(hold) if asked < hold.since => {
                hold.next = hold.next.max(now + floor.unwrap_or_default());
                hold.next.saturating_duration_since(now)
            }
            hold => {
                let hold = hold.get_or_insert_with(Backoff::new);
                hold.since = now;
                self.answering = false;
                hold.bump(&mut self.rng, initial, max, floor)
            }
        }
    }

    /// Waits for the oldest retire in flight, if any, and records its outcome.
    async fn finish_retire(&mut self, summary: &mut Summary) {
        let Some(Retiring { id, already, task }) = self.retiring.pop_front() else {
            return;
        };
        let moved = match task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(format!(
                "the retire task failed: {e}"
            ))),
        };
        match moved {
            Ok(dest) => {
                if already {
                    summary.already_present += 1;
                } else {
                    summary.shipped += 1;
                }
                self.backoff.remove(&id);
                self.last_success = Some(SystemTime::now());
                self.left.insert(id.clone());
                crate::metrics::get().episode(if already {
                    Outcome::AlreadyPresent
                } else {
                    Outcome::Stored
                });
                tracing::info!(episode_id = %id, dest = %dest.display(), already_present = already, event = "shipped", "shipped");
            }
            Err(e) => self.io_failure(&id, "moving to shipped/", &e, summary),
        }
    }

    /// Packs `ep` (or collects its look-ahead pack). An archive in
    /// `outbox/` comes back before it is sealed; `ep.sealing` is that seal.
    async fn pack(&mut self, ep: &mut Episode, progress: &(dyn Fn() + Sync)) -> Event {
        let State::Ready { commit } = &ep.state else {
            return Event::PackFailed {
                fatal: false,
                message: "pack requested outside Ready".into(),
            };
        };
        let (mut packing, packed) = match self.prefetch.iter().position(|p| p.id == ep.id) {
            Some(at) => {
                let p = self.prefetch.remove(at).expect("found at this position");
                (p.packing, p.packed)
            }
            None => (self.spawn_pack(&ep.id, commit.clone()), None),
        };
        let event = match packed {
            Some(event) => event,
            None => await_pack(&mut packing.ready, &packing.written, progress).await,
        };
        ep.sealing = Some(packing.sealed);
        event
    }

    /// Waits for the seal of `ep`'s outbox archive, if one is running. A
    /// failed seal leaves an archive without a sidecar: the upload's answer
    /// still stands, and a retry packs again (the next start-up deletes it).
    async fn seal(&mut self, ep: &mut Episode) {
        if let Some(sealing) = ep.sealing.take() {
            seal(&ep.id, sealing).await;
        }
    }

    /// This episode's own backoff; returns the wait.
    fn schedule(&mut self, id: &Id, floor: Option<Duration>) -> Duration {
        let (initial, max) = (self.config.initial_backoff, self.config.max_backoff);
        self.backoff
            .entry(id.clone())
            .or_insert_with(Backoff::new)
            .bump(&mut self.rng, initial, max, floor)
    }

    fn record_error(
        &mut self,
        id: &Id,
        code: Option<ErrorCode>,
        status: Option<u16>,
        message: &str,
    ) {
        self.last_error = Some(LastError {
            code: code.map(|c| c.as_str().to_owned()),
            status,
            episode: id.to_string(),
            message: message.chars().take(500).collect(),
            at: rfc3339(SystemTime::now()),
        });
    }

    fn io_failure(&mut self, id: &Id, what: &str, e: &std::io::Error, summary: &mut Summary) {
        if e.kind() == std::io::ErrorKind::NotFound
            && !self.layout.episodes.join(id.as_str()).exists()
        {
            // Moved away meanwhile by other hands (quarantine-unstamped
            // beside us, or an operator): nothing is lost, nothing to retry.
            self.backoff.remove(id);
            self.left.insert(id.clone());
            if let Err(e) = self.layout.drop_outbox(id) {
                tracing::warn!(episode_id = %id, error = %e, "cannot clear the outbox copy of an episode that left the queue");
            }
            tracing::info!(episode_id = %id, event = "left_queue", "the episode left episodes/ by other hands while {what}; nothing to do");
            return;
        }
        summary.transient += 1;
        summary.pending += 1;
        crate::metrics::get().upload_failure(FailureReason::Disk);
        let wait = self.schedule(id, None);
        self.record_error(id, None, None, &format!("{what}: {e}"));
        tracing::error!(episode_id = %id, error = %e, retry_in_ms = wait.as_millis() as u64, event = "io_error", "{what} failed, will retry: {e}");
    }

    /// Publishes the backlog: the settled episodes of this pass that are
    /// still queued (no disk access but the one readdir of `quarantine/`).
    fn publish(&self, settled: &HashMap<Id, crate::scan::Settled>, settling: usize) {
        let mut b = Backlog {
            settling: settling as u64,
            ..Backlog::default()
        };
        for (_, s) in settled.iter().filter(|(id, _)| !self.left.contains(*id)) {
            b.episodes += 1;
            b.bytes += s.bytes;
            b.oldest = Some(b.oldest.map_or(s.newest, |o| o.min(s.newest)));
        }
        let metrics = crate::metrics::get();
        metrics.backlog(b);
        metrics.observe_quarantine(&self.layout.quarantine);
    }

    fn write_status(&self, s: &Summary) {
        let outbox = std::fs::read_dir(&self.layout.outbox)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "zst"))
                    .count()
            })
            .unwrap_or(0);
        let quarantined_total = std::fs::read_dir(&self.layout.quarantine)
            .map(|d| d.count())
            .unwrap_or(0);
        let status = serde_json::json!({
            "time": rfc3339(SystemTime::now()),
            "host_id": self.config.host_id.as_str(),
            "pending": s.pending,
            "outbox": outbox,
            "shipped_this_pass": s.shipped + s.already_present,
            "quarantined_this_pass": s.quarantined,
            "quarantined": quarantined_total,
            "transient_this_pass": s.transient,
            "last_success": self.last_success.map(rfc3339),
            "last_error": self.last_error,
            // Seconds until the whole host retries, while the receiver or
            // the link fails for everyone; null otherwise.
            "hold_s": self.hold.as_ref().filter(|h| h.waiting())
                .map(|h| h.next.saturating_duration_since(Instant::now()).as_secs()),
        });
        self.progress.write_status(status);
    }
}

/// Puts an archive that was held in memory into `outbox/` (blocking), if its
/// episode is still queued; logs when it cannot (the retry packs again).
fn keep(layout: &Layout, id: &Id, archive: Option<&Archive>) {
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

/// Why a failed attempt failed, for `upload_failures_total{reason}`.
fn failure_reason(event: &Event) -> FailureReason {
    match event {
        Event::NoAnswer { auth: true, .. } => FailureReason::Tls,
        Event::NoAnswer { auth: false, .. } => FailureReason::NoAnswer,
        Event::NotReceiver { .. } => FailureReason::NotReceiver,
        Event::PackFailed { .. } => FailureReason::Pack,
        Event::Answer { status, .. } => match status {
            401 | 403 => FailureReason::Refused,
            429 | 503 | 507 => FailureReason::Busy,
            500..=599 => FailureReason::ServerError,
            // A success without confirmation, a bare 4xx: not the
            // receiver's verdict.
            200..=499 => FailureReason::NotReceiver,
            _ => FailureReason::Other,
        },
        _ => FailureReason::Other,
    }
}

/// What a pack's outcome, as it arrived from its thread, means. An archive
/// is observed here, once, whatever becomes of its uploads.
fn pack_event(
    r: Result<Result<Archive, ArchiveError>, tokio::sync::oneshot::error::RecvError>,
) -> Event {
    match r {
        Ok(Ok(archive)) => {
            crate::metrics::get().archive(archive.bytes);
            Event::Packed(archive)
        }
        Ok(Err(e)) => Event::PackFailed {
            fatal: e.is_fatal(),
            message: e.to_string(),
        },
        Err(_) => Event::PackFailed {
            fatal: false,
            message: "the pack task ended without an archive".into(),
        },
    }
}

/// Awaits the seal of `id`'s outbox archive; true when it is sealed (or
/// there was nothing to seal). A failure is logged: it is the disk's.
async fn seal(id: &Id, sealing: Sealing) -> bool {
    let failed = match sealing.await {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the pack task failed: {e}"),
    };
    tracing::error!(episode_id = %id, error = %failed, event = "io_error", "cannot make the archive durable in outbox/ (fsync or sidecar); the upload's answer stands, a retry packs the episode again: {failed}");
    false
}

/// Awaits a pack's archive from its blocking thread, calling `progress`
/// (the watchdog) each second in which it wrote compressed bytes: a long
/// pack is alive, a wedged one (blocked read, hung disk) is not.
async fn await_pack(
    ready: &mut tokio::sync::oneshot::Receiver<Result<Archive, ArchiveError>>,
    written: &AtomicU64,
    progress: &(dyn Fn() + Sync),
) -> Event {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = 0;
    loop {
        tokio::select! {
            r = &mut *ready => return pack_event(r),
            _ = tick.tick() => {
                let now = written.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    progress();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, error: Option<ErrorCode>) -> Event {
        Event::Answer {
            status,
            error,
            message: String::new(),
            remediation: None,
        }
    }

    /// `episode_busy` is the episode's own; a plain 503 `busy` is the host's.
    #[test]
    fn episode_busy_holds_the_episode_not_the_host() {
        assert!(!host_wide(&answer(503, Some(ErrorCode::EpisodeBusy))));
        assert!(host_wide(&answer(503, Some(ErrorCode::Busy))));
        assert!(host_wide(&answer(503, None)));
    }

    /// An upload given up on (lost or disputed again and again) is that
    /// episode's trouble; a request without an answer is the host's.
    #[test]
    fn a_given_up_upload_holds_the_episode_not_the_host() {
        let no_answer = |episode| Event::NoAnswer {
            auth: false,
            message: String::new(),
            episode,
        };
        assert!(!host_wide(&no_answer(true)));
        assert!(host_wide(&no_answer(false)));
    }
}
