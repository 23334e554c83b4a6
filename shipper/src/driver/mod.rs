//! The async driver of the episode state machine ([`state::step`]).
//!
//! A pass ([`Shipper::pass`]) scans `episodes/`, then takes each ready
//! episode through the state machine until it is final or must wait,
//! performing each [`state::Action`] it returns ([`episode`]: one method
//! per action). Around that:
//! - [`backoff`]: who waits after a transient failure, and how long: the
//!   episode alone, or the whole host when the receiver or the link fails
//!   for everyone;
//! - [`packing`]: packs on a blocking thread, up to [`packing::LOOK_AHEAD`]
//!   of them ahead of the upload, each outbox archive sealed beside its
//!   own upload;
//! - [`in_flight`]: what runs beside the pass: small uploads and retires,
//!   up to [`in_flight::IN_FLIGHT`] of each, the turn a request waits for,
//!   and the receiver's advertised limits;
//! - [`status`]: what a pass reports: `state/status.json`, the backlog
//!   gauges, the last error; and the quarantine's cleanup.

mod backoff;
mod episode;
mod in_flight;
mod packing;
mod status;

use crate::config::Config;
use crate::disk::Layout;
use crate::scan::{Found, Scanner};
use crate::upload::Uploader;
use backoff::Backoff;
use in_flight::Retiring;
use labship_protocol::Id;
use packing::Prefetch;
use serde::Serialize;
use status::LastError;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
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

/// What travels through every step of one pass: its tally, the watchdog's
/// sign of life, and the episodes still to come (the look-ahead packs pick
/// theirs there).
struct PassCtx<'a> {
    summary: Summary,
    progress: &'a (dyn Fn() + Sync),
    upcoming: VecDeque<(Id, Found)>,
    /// What this pass's walks measured of each settled episode.
    settled: HashMap<Id, crate::scan::Settled>,
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
    /// [`packing::LOOK_AHEAD`], of which only the newest may still be packing.
    prefetch: VecDeque<Prefetch>,
    /// Retires in flight, oldest first: at most [`in_flight::IN_FLIGHT`];
    /// all are collected before the pass ends.
    retiring: VecDeque<Retiring>,
    /// Uploads of archives held in memory, running beside the pass: at most
    /// [`in_flight::IN_FLIGHT`]; all are collected before the pass ends.
    uploading: tokio::task::JoinSet<in_flight::Answered>,
    /// The receiver gave a verdict on an episode in this pass: only then
    /// do several uploads go at once. Until it has, one goes alone, so a
    /// receiver that is down or busy meets one request per pass, not four.
    receiver_answered: bool,
    /// Bumped whenever an upload beside the pass moves bytes: the watchdog's
    /// sign of life while the pass waits for them.
    uploads_moved: Arc<AtomicU64>,
    /// Outbox archives found at start-up are verified with HEAD once.
    verified: HashSet<Id>,
    /// Episodes on their own backoff with an archive in `outbox/`: at
    /// [`packing::RETRIES_PACKED_MAX`] of them, new packs are held
    /// ([`Shipper::packing_held`]).
    waiting_packed: HashSet<Id>,
    /// The last upload that ended did so with the episode shipped: the
    /// receiver takes uploads, so those waiting fail for reasons of their
    /// own and hold nothing.
    last_upload_ok: bool,
    /// This pass's one new pack while new packs are held went.
    probe_sent: bool,
    /// The hold on new packs was said (once until it lifts).
    packing_held_said: bool,
    workers: u32,
    last_success: Option<SystemTime>,
    last_error: Option<LastError>,
    /// The backoffs' jitter (xorshift; no need for a better one).
    rng: u64,
    cleanup: crate::cleanup::Schedule,
    /// The receiver's advertised `max_episode_bytes` and when it was asked.
    receiver_limit: Option<(Option<u64>, Instant)>,
    /// How many small uploads may go at once: [`in_flight::IN_FLIGHT`], or
    /// fewer when the receiver's ping says it takes fewer
    /// (`max_concurrent_uploads`).
    slots: usize,
    /// `pending` of the last full pass (reported while the host is on hold).
    last_pending: usize,
    /// Episodes that left `episodes/` in this pass (shipped, quarantined,
    /// moved away by other hands): the rest of the settled ones are the
    /// backlog the pass publishes.
    left: HashSet<Id>,
    /// `state/status.json` with the uploads' progress (progress.rs).
    progress: Arc<crate::progress::Progress>,
    /// Held (flock) for the process's life: one shipper per data_dir.
    _lock: std::fs::File,
}

impl Shipper {
    /// Prepares the directories (clearing crash leftovers in `outbox/`).
    pub fn new(config: Config, uploader: Uploader) -> std::io::Result<Self> {
        let layout = Layout::new(&config.data_dir);
        let lock = layout.prepare()?;
        // limits.zstd_workers: one pack runs at a time (LOOK_AHEAD), so this
        // bounds the compression threads the shipper runs at all.
        let workers = config.packing_threads();
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
            receiver_answered: false,
            uploads_moved: Arc::new(AtomicU64::new(0)),
            verified: HashSet::new(),
            waiting_packed: HashSet::new(),
            last_upload_ok: true,
            probe_sent: false,
            packing_held_said: false,
            workers,
            last_success: None,
            last_error: None,
            rng: backoff::seed(),
            cleanup: crate::cleanup::Schedule::new(config.quarantine_keep, config.cleanup_interval),
            receiver_limit: None,
            slots: 1,
            last_pending: 0,
            left: HashSet::new(),
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
        self.uploader.look_at_tls();
        if self.host_held() {
            // The receiver or the link is failing for everyone: no scan, no
            // tree walks, nothing to do until the hold lifts.
            let summary = Summary {
                pending: self.last_pending,
                ..Summary::default()
            };
            self.write_status(&summary);
            progress();
            return summary;
        }
        let scanned = self.scan().await;
        progress();
        let mut scan = match scanned {
            Ok(scan) => scan,
            Err(e) => return self.scan_failed(&e),
        };
        self.left.clear();
        self.forget_unqueued(&scan.found);
        self.count_waiting_packed();
        let mut cx = PassCtx {
            summary: Summary {
                pending: scan.pending,
                ..Summary::default()
            },
            progress,
            upcoming: scan.found.into(),
            settled: std::mem::take(&mut scan.settled),
        };
        self.receiver_answered = false;
        while let Some((id, found)) = cx.upcoming.pop_front() {
            // Local work (quarantining unstamped or half-quarantined episodes)
            // goes on while the host is on hold; talking to the receiver waits.
            if matches!(found, Found::Ready(_))
                && (self.host_held() || self.episode_waits(&id) || self.packing_held(&id))
            {
                cx.summary.pending += 1;
                continue;
            }
            self.drive(id, found, &mut cx).await;
            progress();
        }
        self.drain(&mut cx).await;
        self.publish(&cx.settled, scan.pending);
        self.last_pending = cx.summary.pending;
        self.write_status(&cx.summary);
        cx.summary
    }

    /// Scans `episodes/` on a blocking thread.
    async fn scan(&mut self) -> std::io::Result<crate::scan::Pass> {
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
    }

    /// Forgets episodes that left the queue by other hands (an operator's
    /// mv) or are being written again: these maps must not grow for months,
    /// and the archives waiting for them in `outbox/` go too (nothing else
    /// would remove them before a restart; one whose episode settles again
    /// would hold a tree that changed since).
    fn forget_unqueued(&mut self, found: &[(Id, Found)]) {
        let queued: HashSet<&Id> = found.iter().map(|(id, _)| id).collect();
        let gone: HashSet<Id> = self
            .backoff
            .keys()
            .chain(&self.verified)
            .filter(|id| !queued.contains(id))
            .cloned()
            .collect();
        self.backoff.retain(|id, _| queued.contains(id));
        self.verified.retain(|id| queued.contains(id));
        for id in gone {
            if let Err(e) = self.layout.drop_outbox(&id) {
                tracing::warn!(episode_id = %id, error = %e, "cannot clear the outbox copy of an episode that left the queue or is being written again");
            }
        }
    }

    /// Collects everything still running beside the pass, then sweeps the
    /// quarantine when its time has come.
    async fn drain(&mut self, cx: &mut PassCtx<'_>) {
        while !self.uploading.is_empty() {
            self.collect_upload(cx).await;
        }
        while !self.retiring.is_empty() {
            self.finish_retire(&mut cx.summary).await;
        }
        self.finish_prefetch(cx.progress).await;
        self.sweep_quarantine().await;
    }
}

/// How often the driver looks whether a pack or an upload beside the pass
/// moved, to tell the watchdog.
const WATCH_EVERY: Duration = Duration::from_secs(1);
