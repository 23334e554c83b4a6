//! Upload progress (CONTRACT §10): the uploads in flight, `state/status.json`
//! rewritten while their bytes move, `STATUS=` naming the upload, and a
//! journal line for long ones.
//!
//! [`Uploads`] is the registry each PUT joins for its life ([`Tracked`]
//! leaves it on drop). [`Progress`] owns `status.json`: the pass writes its
//! summary through [`Progress::write_status`]; [`Progress::tick`] (once a
//! second, from the daemon's own task, never the watchdog's) rewrites the
//! same document with fresh `updated_at` and `uploading` every
//! [`REWRITE_EVERY`] while bytes have moved since the last write. So an
//! `updated_at` older than the stall timeout with uploads listed means no
//! byte moved (or the process is gone): what doctor reads.

use crate::bwlimit::{Limiter, human};
use crate::status_file::Status;
pub use crate::status_file::{Phase, UploadProgress};
use labship_protocol::Id;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often `status.json` is rewritten while bytes move (the contract
/// says at least every 10 s).
pub const REWRITE_EVERY: Duration = Duration::from_secs(3);
/// How often a long upload logs a progress line (and its first, after
/// this long: short uploads stay quiet).
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// The window over which `bytes_per_s` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Debug)]
struct Entry {
    key: u64,
    id: Id,
    total: u64,
    started_at: SystemTime,
    sent: Arc<AtomicU64>,
    /// (when, bytes sent) once a tick, for the rate.
    samples: VecDeque<(Instant, u64)>,
    logged: Instant,
    phase: Phase,
}

impl Entry {
    fn rate(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                ((b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()) as u64
            }
            _ => 0,
        }
    }
}

/// The uploads in flight, and every body byte any of them sent.
#[derive(Debug, Default)]
pub struct Uploads {
    entries: Mutex<Vec<Entry>>,
    next: AtomicU64,
    moved: AtomicU64,
    /// Bumped whenever the set of uploads or a phase changes, so the
    /// ticker rewrites `status.json` even when no byte moved.
    generation: AtomicU64,
}

/// An upload's place in [`Uploads`]; leaves it when dropped.
#[derive(Debug)]
pub struct Tracked {
    uploads: Arc<Uploads>,
    key: u64,
    sent: Arc<AtomicU64>,
}

impl Tracked {
    /// `n` more body bytes handed to the connection.
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.uploads.moved.fetch_add(n, Ordering::Relaxed);
    }

    /// The whole body is sent: the upload now waits for the answer.
    pub fn awaiting_answer(&self) {
        let mut entries = self.uploads.lock();
        if let Some(e) = entries.iter_mut().find(|e| e.key == self.key)
            && e.phase != Phase::AwaitingAnswer
        {
            e.phase = Phase::AwaitingAnswer;
            self.uploads.generation.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.uploads.lock().retain(|e| e.key != self.key);
        self.uploads.generation.fetch_add(1, Ordering::Relaxed);
    }
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the registry for the upload of `total` bytes of `id`.
    pub fn start(self: &Arc<Self>, id: &Id, total: u64) -> Tracked {
        self.start_at(id, total, 0)
    }

    /// As [`start`](Self::start) for an upload resumed at `offset` (the
    /// bytes the receiver already holds): `bytes_sent` starts there, and the
    /// rate counts only the bytes sent from now on.
    pub fn start_at(self: &Arc<Self>, id: &Id, total: u64, offset: u64) -> Tracked {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let sent = Arc::new(AtomicU64::new(offset));
        let now = Instant::now();
        self.lock().push(Entry {
            key,
            id: id.clone(),
            total,
            started_at: SystemTime::now(),
            sent: sent.clone(),
            samples: VecDeque::from([(now, offset)]),
            logged: now,
            phase: Phase::Sending,
        });
        self.generation.fetch_add(1, Ordering::Relaxed);
        Tracked {
            uploads: self.clone(),
            key,
            sent,
        }
    }

    /// Every body byte sent since start.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Samples each upload's count (for its rate) and logs the long ones
    /// every [`LOG_EVERY`].
    fn sample(&self) {
        let now = Instant::now();
        for e in self.lock().iter_mut() {
            e.samples.push_back((now, e.sent.load(Ordering::Relaxed)));
            while e
                .samples
                .front()
                .is_some_and(|s| now.duration_since(s.0) > RATE_WINDOW)
            {
                e.samples.pop_front();
            }
            if now.duration_since(e.logged) >= LOG_EVERY {
                e.logged = now;
                let sent = e.sent.load(Ordering::Relaxed);
                tracing::info!(episode_id = %e.id, bytes_sent = sent, bytes_total = e.total, bytes_per_s = e.rate(), event = "upload_progress", "uploading {}: {}%", e.id, percent(sent, e.total));
            }
        }
    }

    pub fn snapshot(&self) -> Vec<UploadProgress> {
        self.lock()
            .iter()
            .map(|e| UploadProgress {
                episode_id: e.id.to_string(),
                bytes_sent: e.sent.load(Ordering::Relaxed),
                bytes_total: e.total,
                started_at: rfc3339(e.started_at),
                bytes_per_s: e.rate(),
                phase: e.phase,
            })
            .collect()
    }
}

fn percent(sent: u64, total: u64) -> u64 {
    (sent.saturating_mul(100))
        .checked_div(total)
        .unwrap_or(100)
        .min(100)
}

#[derive(Debug)]
struct Written {
    /// The pass's document, without the progress fields.
    base: Status,
    at: Instant,
    /// [`Uploads::moved`] when last written.
    moved: u64,
    /// [`Uploads::generation`] when last written.
    generation: u64,
    /// [`Progress::alive`]'s stamp when last written.
    alive: u64,
}

/// `state/status.json` and `STATUS=` (see the module doc).
#[derive(Debug)]
pub struct Progress {
    path: PathBuf,
    pub uploads: Arc<Uploads>,
    pub limiter: Arc<Limiter>,
    written: Mutex<Written>,
    /// Unix seconds of the work loop's last sign of life (0: none yet),
    /// stamped by the same closure that feeds the watchdog; `alive_at` in
    /// the file. Never stamped by the ticker.
    alive: AtomicU64,
}

impl Progress {
    /// Until the first pass writes its document, the last process's is
    /// kept (`last_success`, `last_error`, `pending`, …) without its uploads,
    /// which ended with it; with none, a bare one (`time` null: no pass
    /// completed yet). Written at once, so no stale upload outlives a
    /// restart.
    pub fn new(path: PathBuf, uploads: Arc<Uploads>, limiter: Arc<Limiter>, host: &Id) -> Self {
        // The old uploads are dropped before the document is typed: an entry
        // this build cannot read must not cost the rest.
        let old = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|mut v| {
                v.as_object_mut()?.remove("uploading");
                serde_json::from_value::<Status>(v).ok()
            });
        let base = Status {
            // The progress fields are the process's own, written afresh.
            uploading: Vec::new(),
            updated_at: None,
            alive_at: None,
            bwlimit: None,
            host_id: host.as_str().to_owned(),
            ..old.unwrap_or_default()
        };
        let now = Instant::now();
        let written = Written {
            base,
            at: now.checked_sub(REWRITE_EVERY).unwrap_or(now),
            moved: uploads.moved(),
            generation: uploads.generation(),
            alive: 0,
        };
        let progress = Self {
            path,
            uploads,
            limiter,
            written: Mutex::new(written),
            alive: AtomicU64::new(0),
        };
        progress.flush();
        progress
    }

    /// The process stops (SIGTERM): no upload goes on, whatever tasks are
    /// still being torn down.
    pub fn stopped(&self) {
        let w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        self.write_with(w.base.clone(), &[], true);
    }

    /// Writes the document now, with the uploads as they are.
    pub fn flush(&self) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        self.write(w.base.clone());
        w.at = Instant::now();
        w.moved = self.uploads.moved();
        w.generation = self.uploads.generation();
    }

    /// The work loop is alive (called beside the watchdog's ping: scan,
    /// pack, HEAD, bytes moving).
    pub fn alive(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.alive.store(now, Ordering::Relaxed);
    }

    /// Writes the pass's document `base` with the progress fields:
    /// `updated_at`, `uploading`, `bwlimit`, `alive_at`.
    pub fn write_status(&self, base: Status) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        self.write(base.clone());
        *w = Written {
            base,
            at: Instant::now(),
            moved: self.uploads.moved(),
            generation: self.uploads.generation(),
            alive: self.alive.load(Ordering::Relaxed),
        };
    }

    fn write(&self, doc: Status) {
        self.write_with(doc, &self.uploads.snapshot(), true);
    }

    /// `durable`: fsynced (a pass's document, start, stop); the ticker's
    /// rewrites only need the rename's atomicity.
    fn write_with(&self, mut doc: Status, uploading: &[UploadProgress], durable: bool) {
        doc.updated_at = Some(rfc3339(SystemTime::now()));
        doc.uploading = uploading.to_vec();
        doc.bwlimit = self.limiter.current();
        let alive = self.alive.load(Ordering::Relaxed);
        doc.alive_at =
            (alive > 0).then(|| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(alive)));
        let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        let written = if durable {
            crate::disk::write_atomic(&self.path, &bytes)
        } else {
            crate::disk::write_atomic_nosync(&self.path, &bytes)
        };
        if let Err(e) = written {
            tracing::error!(error = %e, path = %self.path.display(), event = "status_write_failed", "cannot write status.json");
        }
    }

    /// Once a second: samples rates, logs long uploads, and rewrites
    /// `status.json` and `STATUS=` every [`REWRITE_EVERY`] while bytes
    /// move, the set of uploads (or a phase) changes, or the work loop
    /// says it is alive.
    pub fn tick(&self) {
        self.uploads.sample();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let (moved, generation) = (self.uploads.moved(), self.uploads.generation());
        let alive = self.alive.load(Ordering::Relaxed);
        let changed =
            moved != written.moved || generation != written.generation || alive != written.alive;
        if !changed || written.at.elapsed() < REWRITE_EVERY {
            return;
        }
        self.write_with(written.base.clone(), &self.uploads.snapshot(), false);
        written.at = Instant::now();
        written.moved = moved;
        written.generation = generation;
        written.alive = alive;
        if let Some(status) = self.uploading_line() {
            crate::systemd::status(&status);
        }
    }

    /// `STATUS=` while uploading: "uploading <id> 42% (…) at 2 MiB/s, cap …".
    pub fn uploading_line(&self) -> Option<String> {
        let ups = self.uploads.snapshot();
        let first = ups.first()?;
        let more = match ups.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        Some(format!(
            "uploading {} {}% ({} of {} bytes) at {}{more}; {}",
            first.episode_id,
            percent(first.bytes_sent, first.bytes_total),
            first.bytes_sent,
            first.bytes_total,
            human(first.bytes_per_s),
            self.cap_text()
        ))
    }

    /// "cap 2 MiB/s" or "no cap".
    pub fn cap_text(&self) -> String {
        match self.limiter.current() {
            Some(r) => format!("cap {}", human(r)),
            None => "no cap".into(),
        }
    }
}

/// Awaits `work`, calling `progress` (the watchdog's sign of life) at
/// each tick of `every` in which `counter` changed: bytes packed or sent.
/// Work that moves is alive; work that is wedged (a blocked read, a hung
/// disk, a silent link) is not.
pub(crate) async fn watch_progress<T>(
    work: impl std::future::Future<Output = T>,
    counter: &AtomicU64,
    every: Duration,
    progress: &(dyn Fn() + Sync),
) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = counter.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                let now = counter.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    progress();
                }
            }
        }
    }
}

/// The daemon's progress task: [`Progress::tick`] once a second, for ever.
pub async fn ticker(progress: Arc<Progress>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // File I/O under a std mutex: on a blocking thread, not a worker.
        let p = progress.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || p.tick()).await {
            tracing::error!(error = %e, "progress tick failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_keeps_the_pass_and_adds_the_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let limiter = Arc::new(Limiter::new(crate::bwlimit::Bwlimit::Fixed(1 << 20)));
        let id = Id::parse("ep-1").unwrap();
        let p = Progress::new(path.clone(), Arc::default(), limiter, &id);
        let t = p.uploads.start(&id, 1000);
        p.write_status(Status {
            time: Some("then".into()),
            pending: Some(3),
            ..Status::default()
        });
        let read = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
        };
        let v = read();
        assert_eq!(
            (v["time"].as_str(), v["pending"].as_u64()),
            (Some("then"), Some(3))
        );
        assert_eq!(v["bwlimit"], 1 << 20);
        assert_eq!(v["uploading"][0]["episode_id"], "ep-1");
        assert_eq!(v["uploading"][0]["bytes_sent"], 0);
        t.sent(400);
        assert_eq!(p.uploads.snapshot()[0].bytes_sent, 400);
        assert!(p.uploading_line().unwrap().contains("ep-1 40%"));
        drop(t);
        assert!(p.uploads.snapshot().is_empty());
        assert_eq!(p.uploads.moved(), 400);
    }

    /// An upload that ends, or waits for its answer, without another byte
    /// moving is written down by the next tick; so is the loop's sign of life.
    #[test]
    fn the_ticker_rewrites_when_the_set_or_the_loop_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let limiter = Arc::new(Limiter::new(crate::bwlimit::Bwlimit::Off));
        let id = Id::parse("ep-1").unwrap();
        let p = Progress::new(path.clone(), Arc::default(), limiter, &id);
        let read = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
        };
        let t = p.uploads.start(&id, 10);
        t.sent(10);
        std::thread::sleep(REWRITE_EVERY);
        p.tick();
        assert_eq!(read()["uploading"][0]["phase"], "sending");
        t.awaiting_answer();
        std::thread::sleep(REWRITE_EVERY);
        p.tick();
        assert_eq!(read()["uploading"][0]["phase"], "awaiting_answer");
        assert!(read().get("alive_at").is_none());
        drop(t);
        std::thread::sleep(REWRITE_EVERY);
        p.tick();
        assert_eq!(read()["uploading"], serde_json::json!([]));
        p.alive();
        std::thread::sleep(REWRITE_EVERY);
        p.tick();
        assert!(read()["alive_at"].is_string(), "{}", read());
        // Nothing changed: no rewrite.
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(REWRITE_EVERY);
        p.tick();
        assert!(!path.exists());
    }

    /// A restarted shipper keeps the last pass's facts and drops the uploads
    /// that ended with the old process, at once; at SIGTERM none is left.
    /// An old upload entry this build cannot read costs only itself.
    #[test]
    fn a_restart_keeps_the_pass_and_drops_the_old_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(
            &path,
            r#"{"time":"then","last_success":"earlier","pending":7,"last_error":{"message":"m"},
                "uploading":[{"episode_id":"ep-old","bytes_sent":"not a number"}],"updated_at":"then"}"#,
        )
        .unwrap();
        let limiter = Arc::new(Limiter::new(crate::bwlimit::Bwlimit::Off));
        let id = Id::parse("ep-1").unwrap();
        let p = Progress::new(path.clone(), Arc::default(), limiter, &id);
        let read = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
        };
        let v = read();
        assert_eq!(v["uploading"], serde_json::json!([]), "{v}");
        assert_eq!(
            (
                &v["last_success"],
                &v["pending"],
                &v["last_error"]["message"]
            ),
            (&"earlier".into(), &7.into(), &"m".into()),
            "{v}"
        );
        assert_ne!(v["updated_at"], "then");
        let t = p.uploads.start(&id, 10);
        p.flush();
        assert_eq!(read()["uploading"][0]["episode_id"], "ep-1");
        p.stopped();
        assert_eq!(read()["uploading"], serde_json::json!([]));
        assert_eq!(read()["pending"], 7);
        drop(t);
    }
}
