//! Packs, on a blocking thread, one at a time, some ahead of their turn.
//!
//! While one episode uploads, the next ready ones are packed, up to
//! [`LOOK_AHEAD`] archives waiting; a freshly packed archive in `outbox/`
//! is sealed (fsync, sidecar) on the pack's thread beside its own upload:
//! the critical path of a batch of large episodes is packing and the
//! upload, not the seal's fsync (docs/performance.md).

use super::episode::Episode;
use super::{Shipper, WATCH_EVERY};
use crate::archive::ArchiveError;
use crate::disk::Outbox;
use crate::progress::watch_progress;
use crate::scan::Found;
use crate::state::{Archive, Event, State};
use labship_protocol::Id;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tracing::Instrument as _;

/// How many packs may run ahead of the upload: the next pack starts as soon
/// as the previous one is done, with up to this many archives waiting, so
/// the cores keep compressing while an upload finishes. One pack runs at a
/// time (one pack's memory); `outbox/` holds up to this many archives
/// besides the one uploading.
pub(super) const LOOK_AHEAD: usize = 2;

/// Archives kept in `outbox/` for a retry after a failure of their own,
/// from which on new packs are held while no upload succeeds: a receiver
/// that fails every upload with an answer of the episode's scope (500s
/// from a store gone read-only, say) must not have the whole backlog
/// packed into `outbox/`, on the disk the producers write to, one copy per
/// episode. The ones waiting are retried on their own backoff meanwhile,
/// and one new pack per pass still goes (up to twice this many waiting), so
/// episodes failing for reasons of their own never stop the others: the
/// first upload that succeeds lifts the hold.
pub(super) const RETRIES_PACKED_MAX: usize = 8;

/// A pack on a blocking thread. Its archive arrives on `ready` as soon as
/// it can be uploaded; for one in `outbox/` the thread then seals it (fsync,
/// sidecar: [`crate::disk::Layout::seal`]) while the upload runs, and
/// `sealed` ends with that.
#[derive(Debug)]
pub(super) struct Packing {
    /// Compressed bytes written so far: the watchdog's sign of life.
    written: Arc<AtomicU64>,
    pub(super) ready: tokio::sync::oneshot::Receiver<Result<Archive, ArchiveError>>,
    sealed: Sealing,
}

/// The seal of an outbox archive, running on the pack's thread.
pub(super) type Sealing = tokio::task::JoinHandle<std::io::Result<()>>;

/// A pack started ahead of its turn.
#[derive(Debug)]
pub(super) struct Prefetch {
    id: Id,
    pub(super) packing: Packing,
    /// Its outcome, once it arrived while an upload ran.
    pub(super) packed: Option<Event>,
}

impl Shipper {
    /// Whether a look-ahead pack of `id` was started (finished or not).
    pub(super) fn prefetched(&self, id: &Id) -> bool {
        self.prefetch.iter().any(|p| p.id == *id)
    }

    /// Packs the next ready episode in `upcoming` (not yet in the outbox nor
    /// packing) on a blocking thread, unless a look-ahead pack is still
    /// running or [`LOOK_AHEAD`] archives already wait.
    pub(super) fn start_prefetch(&mut self, upcoming: &VecDeque<(Id, Found)>) {
        if self.prefetch.len() >= LOOK_AHEAD
            || self.prefetch.iter().any(|p| p.packed.is_none())
            || self.new_packs_held()
        {
            return;
        }
        let next = upcoming.iter().find_map(|(id, found)| match found {
            // Not one with anything in the outbox: `drive` takes it from there
            // (a stale archive is dropped there, loudly).
            Found::Ready(commit)
                if !self.episode_waits(id)
                    && !self.prefetched(id)
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

    /// The episodes on their own backoff whose archive waits in `outbox/`
    /// (at each pass's start, one stat each; a failure in the pass adds
    /// its own, a ship removes its own).
    pub(super) fn count_waiting_packed(&mut self) {
        let layout = &self.layout;
        self.waiting_packed = self
            .backoff
            .keys()
            .filter(|id| layout.archive_path(id).is_file())
            .cloned()
            .collect();
        self.probe_sent = false;
        if !self.new_packs_held() {
            self.packing_held_said = false;
        }
    }

    /// [`RETRIES_PACKED_MAX`] archives wait for a retry and no upload has
    /// succeeded since.
    fn new_packs_held(&self) -> bool {
        self.waiting_packed.len() >= RETRIES_PACKED_MAX && !self.last_upload_ok
    }

    /// Whether ready episode `id` waits because it would need a new pack
    /// while new packs are held (said once until the hold lifts); the
    /// pass's one new pack goes.
    pub(super) fn packing_held(&mut self, id: &Id) -> bool {
        if !self.new_packs_held() || self.prefetched(id) || self.layout.outbox(id) != Outbox::Empty
        {
            return false;
        }
        if self.waiting_packed.len() < 2 * RETRIES_PACKED_MAX && !self.probe_sent {
            self.probe_sent = true;
            return false;
        }
        if !self.packing_held_said {
            self.packing_held_said = true;
            crate::journal::packing_held(self.waiting_packed.len());
        }
        true
    }

    /// A look-ahead pack whose episode was not driven in this pass (the host
    /// went on hold) is let finish; its archive waits in the outbox, known
    /// to be ours, so the next pass uploads it without asking first.
    pub(super) async fn finish_prefetch(&mut self, progress: &(dyn Fn() + Sync)) {
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
                None => await_pack(&mut packing, progress).await,
            };
            let sealed = seal(packing.sealed)
                .instrument(super::episode::episode_span(&id))
                .await;
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

    /// Packs `ep` (or collects its look-ahead pack). An archive in
    /// `outbox/` comes back before it is sealed; `ep.sealing` is that seal.
    pub(super) async fn pack(&mut self, ep: &mut Episode, progress: &(dyn Fn() + Sync)) -> Event {
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
            None => await_pack(&mut packing, progress).await,
        };
        ep.sealing = Some(packing.sealed);
        event
    }

    /// Waits for the seal of `ep`'s outbox archive, if one is running. A
    /// failed seal leaves an archive without a sidecar: the upload's answer
    /// still stands, and a retry packs again (the next start-up deletes it).
    pub(super) async fn seal(&mut self, ep: &mut Episode) {
        if let Some(sealing) = ep.sealing.take() {
            seal(sealing).await;
        }
    }
}

/// What a pack's outcome, as it arrived from its thread, means. An archive
/// is observed here, once, whatever becomes of its uploads.
pub(super) fn pack_event(
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

/// Awaits the seal of an outbox archive (in its episode's span); true when
/// it is sealed (or there was nothing to seal). A failure is logged: it is
/// the disk's.
async fn seal(sealing: Sealing) -> bool {
    let failed = match sealing.await {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the pack task failed: {e}"),
    };
    crate::journal::seal_failed(&failed);
    false
}

/// Awaits a pack's archive from its blocking thread, telling the watchdog
/// of each second in which it wrote compressed bytes: a long pack is alive,
/// a wedged one (blocked read, hung disk) is not.
async fn await_pack(packing: &mut Packing, progress: &(dyn Fn() + Sync)) -> Event {
    let ready = &mut packing.ready;
    pack_event(watch_progress(ready, &packing.written, WATCH_EVERY, progress).await)
}
