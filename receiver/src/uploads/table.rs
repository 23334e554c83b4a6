//! The partial uploads this receiver holds, in memory: one [`Slot`] per
//! upload token, mirroring its spooled [`Record`], with the lock that lets one
//! append at a time write it and the signal a newer append uses to take over
//! from an older one whose client may be gone (a shipper killed with -9 and
//! restarted must not wait for `limits.body_idle_timeout_s`). Expiry and the
//! `labship_partial_uploads` gauge are kept here too.

use super::session::Session;
use super::spool::{Record, Removed, Spool, unix_now};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedMutexGuard, watch};

/// How long a validator session waits in memory for the next append of its
/// upload before it is dropped (and rebuilt from the spooled prefix if that
/// append ever comes): a cut connection usually resumes within seconds.
const SESSION_KEEP: Duration = Duration::from_secs(120);

/// One partial upload.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) host_id: String,
    pub(crate) episode_id: String,
    pub(crate) token: String,
    pub(crate) length: u64,
    /// `Content-Digest` and commit of the archive (a `POST` of the same
    /// archive resumes this upload).
    pub(crate) digest: String,
    pub(crate) commit: String,
    /// The durable offset (mirrors the record, for `HEAD` without the lock).
    pub(crate) offset: AtomicU64,
    pub(crate) last_append_at: AtomicU64,
    /// Set once the upload is removed: a request that waited for the lock
    /// answers 404.
    pub(crate) gone: AtomicBool,
    /// Held by the append (or completion, or delete) in progress.
    pub(crate) state: Arc<tokio::sync::Mutex<SlotState>>,
    /// Bumped by a request that wants the lock: the append holding it stops
    /// at its next frame, checkpoints and lets go.
    pub(crate) takeover: watch::Sender<u64>,
}

/// What only the lock holder touches.
#[derive(Debug)]
pub(crate) struct SlotState {
    pub(crate) record: Record,
    pub(crate) session: Option<Session>,
    /// When the session last finished an append.
    pub(crate) idle_since: Instant,
}

impl Slot {
    fn new(record: Record) -> Self {
        Self {
            host_id: record.host_id.clone(),
            episode_id: record.episode_id.clone(),
            token: record.token.clone(),
            length: record.length,
            digest: record.digest.clone(),
            commit: record.commit.clone(),
            offset: AtomicU64::new(record.offset),
            last_append_at: AtomicU64::new(record.last_append_at),
            gone: AtomicBool::new(false),
            state: Arc::new(tokio::sync::Mutex::new(SlotState {
                record,
                session: None,
                idle_since: Instant::now(),
            })),
            takeover: watch::Sender::new(0),
        }
    }

    pub(crate) fn expired(&self, expiry_s: u64) -> bool {
        unix_now()
            >= self
                .last_append_at
                .load(Ordering::Relaxed)
                .saturating_add(expiry_s)
    }

    /// Mirrors a new durable record.
    pub(crate) fn recorded(&self, record: &Record) {
        self.offset.store(record.offset, Ordering::Relaxed);
        self.last_append_at
            .store(record.last_append_at, Ordering::Relaxed);
    }
}

/// The table of partial uploads.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) spool: Spool,
    /// `limits.upload_expiry_s`.
    pub(crate) expiry_s: u64,
    /// `limits.max_partial_uploads`.
    pub(crate) max: usize,
    /// How many idle validator sessions are kept (`limits.max_concurrent_uploads`):
    /// each holds a blocking thread, a zstd window (up to 16 MiB) and its
    /// buffers, so one per upload held would escape every bound.
    keep_sessions: usize,
    inner: Mutex<Inner>,
    gauge: Gauge,
    /// Turned true when shutdown starts: appends in progress checkpoint and
    /// answer 503 `shutting_down` at once rather than hold the drain.
    stopping: watch::Sender<bool>,
}

impl Table {
    /// Loads the spool (start-up): live uploads are kept, the rest removed.
    pub(crate) fn open(
        spool: Spool,
        expiry_s: u64,
        max: usize,
        keep_sessions: usize,
        gauge: Gauge,
    ) -> std::io::Result<Self> {
        let (live, removed) = spool.load(expiry_s)?;
        for (dir, why) in &removed {
            match why {
                Removed::Expired => {
                    tracing::info!(dir = %dir.display(), "removed an expired partial upload")
                }
                Removed::Finished => {
                    tracing::info!(dir = %dir.display(), "removed a partial upload completed before a restart")
                }
                Removed::Broken => {
                    tracing::warn!(dir = %dir.display(), "removed a broken partial upload (no record, an unusable one: offset past its length, a bad digest, commit or id; or fewer bytes than recorded)")
                }
            }
        }
        if !live.is_empty() {
            tracing::info!(
                uploads = live.len(),
                "partial uploads resumed from the spool"
            );
        }
        let slots = live
            .into_iter()
            .map(|r| (r.token.clone(), Arc::new(Slot::new(r))))
            .collect::<HashMap<_, _>>();
        gauge.set(slots.len() as i64);
        Ok(Self {
            spool,
            expiry_s,
            max,
            keep_sessions,
            inner: Mutex::new(Inner {
                slots,
                reserved: HashSet::new(),
            }),
            gauge,
            stopping: watch::Sender::new(false),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shutdown starts: every append in progress stops at once.
    pub(crate) fn stop_appends(&self) {
        self.stopping.send_replace(true);
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Slot>> {
        self.inner().slots.values().cloned().collect()
    }

    pub(crate) fn get(&self, token: &str) -> Option<Arc<Slot>> {
        self.inner().slots.get(token).cloned()
    }

    /// What a `POST` of `archive` for an episode does, decided at once
    /// under the table's lock (two `POST`s racing cannot both create, nor
    /// exceed `limits.max_partial_uploads`): resume the live upload of the
    /// same archive, or reserve a new one replacing the idle older ones.
    pub(crate) fn claim(&self, archive: &Record) -> Result<Claim<'_>, Refusal> {
        let (host, episode) = (&archive.host_id, &archive.episode_id);
        let mut inner = self.inner();
        let key = (host.clone(), episode.clone());
        if inner.reserved.contains(&key) {
            return Err(Refusal::EpisodeBusy);
        }
        let older: Vec<Arc<Slot>> = inner
            .slots
            .values()
            .filter(|s| &s.host_id == host && &s.episode_id == episode)
            .filter(|s| !s.gone.load(Ordering::Relaxed))
            .cloned()
            .collect();
        if let Some(same) = older.iter().find(|s| {
            s.digest == archive.digest
                && s.commit == archive.commit
                && s.length == archive.length
                && !s.expired(self.expiry_s)
        }) {
            return Ok(Claim::Resume(same.clone()));
        }
        let mut replaced = Vec::new();
        for slot in older {
            match slot.state.clone().try_lock_owned() {
                Ok(held) => replaced.push((slot, held)),
                Err(_) => return Err(Refusal::EpisodeBusy),
            }
        }
        if inner.slots.len() - replaced.len() + inner.reserved.len() >= self.max {
            return Err(Refusal::Full);
        }
        inner.reserved.insert(key.clone());
        Ok(Claim::New {
            replaced,
            reservation: Reservation { table: self, key },
        })
    }

    /// Registers an upload whose spool entry exists, ending its reservation.
    pub(crate) fn insert(&self, record: Record, reservation: Reservation<'_>) -> Arc<Slot> {
        let slot = Arc::new(Slot::new(record));
        {
            let mut inner = self.inner();
            inner.slots.insert(slot.token.clone(), slot.clone());
            self.gauge.set(inner.slots.len() as i64);
        }
        drop(reservation);
        slot
    }

    /// Removes an upload whose lock the caller holds: its session stops, its
    /// spool entry goes, later requests get 404.
    pub(crate) async fn remove(&self, slot: &Slot, state: &mut SlotState) {
        slot.gone.store(true, Ordering::Relaxed);
        if let Some(session) = state.session.take() {
            session.close().await;
        }
        {
            let mut inner = self.inner();
            inner.slots.remove(&slot.token);
            self.gauge.set(inner.slots.len() as i64);
        }
        let (spool, host, token) = (self.spool.clone(), slot.host_id.clone(), slot.token.clone());
        let removed = tokio::task::spawn_blocking(move || spool.remove(&host, &token)).await;
        if let Err(e) = removed.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::error!(host = slot.host_id, token = slot.token, error = %e, "cannot remove a partial upload's spool directory");
        }
    }

    /// The periodic sweep: expired uploads removed, idle sessions dropped.
    /// Uploads busy with an append are left for the next sweep.
    pub(crate) async fn sweep(&self) {
        let all: Vec<Arc<Slot>> = self.inner().slots.values().cloned().collect();
        for slot in all {
            let Ok(mut state) = slot.state.clone().try_lock_owned() else {
                continue;
            };
            if slot.expired(self.expiry_s) {
                tracing::info!(
                    host = slot.host_id,
                    episode = slot.episode_id,
                    offset = slot.offset.load(Ordering::Relaxed),
                    length = slot.length,
                    "partial upload expired (limits.upload_expiry_s); removed"
                );
                self.remove(&slot, &mut state).await;
            } else if state.session.is_some() && state.idle_since.elapsed() >= SESSION_KEEP {
                if let Some(session) = state.session.take() {
                    session.close().await;
                }
            }
        }
    }

    /// Keeps at most `keep_sessions` idle validator sessions, dropping the
    /// least recently used beyond them (a dropped one is rebuilt from the
    /// spooled prefix if its upload continues). Runs after every append, so
    /// idle sessions never outnumber it by more than the appends running.
    pub(crate) async fn trim_sessions(&self) {
        let all: Vec<Arc<Slot>> = self.inner().slots.values().cloned().collect();
        let mut idle: Vec<OwnedMutexGuard<SlotState>> = all
            .iter()
            .filter_map(|slot| slot.state.clone().try_lock_owned().ok())
            .filter(|state| state.session.is_some())
            .collect();
        if idle.len() <= self.keep_sessions {
            return;
        }
        idle.sort_by_key(|state| std::cmp::Reverse(state.idle_since));
        for mut state in idle.drain(..).skip(self.keep_sessions) {
            if let Some(session) = state.session.take() {
                session.close().await;
            }
        }
    }

    /// How often [`Table::sweep`] runs: a quarter of the expiry, between 1 s
    /// and a minute.
    pub(crate) fn sweep_every(&self) -> Duration {
        Duration::from_secs((self.expiry_s / 4).clamp(1, 60))
    }
}

/// The slots, and the `(host, episode)` of each `POST` creating an upload.
#[derive(Debug)]
struct Inner {
    slots: HashMap<String, Arc<Slot>>,
    reserved: HashSet<(String, String)>,
}

/// What [`Table::claim`] decided.
#[derive(Debug)]
pub(crate) enum Claim<'a> {
    /// The live upload of the same archive: answer with its location.
    Resume(Arc<Slot>),
    /// Create one; the idle older uploads of the episode (locked) go first.
    New {
        replaced: Vec<(Arc<Slot>, OwnedMutexGuard<SlotState>)>,
        reservation: Reservation<'a>,
    },
}

/// Why [`Table::claim`] refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// An append to another upload of the episode, or another `POST` of it.
    EpisodeBusy,
    /// `limits.max_partial_uploads` are held or being created.
    Full,
}

/// A place taken for an upload being created; dropped unused, it frees it.
#[derive(Debug)]
pub(crate) struct Reservation<'a> {
    table: &'a Table,
    key: (String, String),
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.table.inner().reserved.remove(&self.key);
    }
}

/// Takes an upload's lock for a new request. When an append holds it, asks
/// that append to stop (it checkpoints and lets go) and waits up to `wait`.
/// Also returns the takeover generation this request holds the lock at: it
/// is read before the lock is tried, so a takeover asked for by a request
/// arriving while this one takes the lock is never mistaken as seen.
pub(crate) async fn take_over(
    slot: &Slot,
    wait: Duration,
) -> Option<(OwnedMutexGuard<SlotState>, u64)> {
    let seen = *slot.takeover.borrow();
    if let Ok(guard) = slot.state.clone().try_lock_owned() {
        return Some((guard, seen));
    }
    let mut mine = seen;
    slot.takeover.send_modify(|g| {
        *g += 1;
        mine = *g;
    });
    tokio::time::timeout(wait, slot.state.clone().lock_owned())
        .await
        .ok()
        .map(|guard| (guard, mine))
}
