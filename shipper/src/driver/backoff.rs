//! Who waits after a transient failure, and for how long.
//!
//! A failure that belongs to one episode (a 500, a failed pack, a failed
//! move, a 503 `episode_busy`) puts that episode on its own backoff
//! (exponential, full jitter, at least any `Retry-After`), so a failing
//! episode never blocks the others. A failure that belongs to the receiver
//! or the link (no answer, 401, 403, 429, 503, 507) puts the whole host on
//! hold instead and ends the pass: hammering a receiver that is down or
//! full once per episode helps nobody. A verdict from the receiver lifts
//! the hold.

use super::Shipper;
use crate::metrics::FailureReason;
use crate::state::Event;
use labship_protocol::{ErrorCode, Id};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug)]
pub(super) struct Backoff {
    attempts: u32,
    pub(super) next: Instant,
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

    pub(super) fn waiting(&self) -> bool {
        Instant::now() < self.next
    }

    /// Exponential backoff with full jitter, never shorter than
    /// `at_least`; returns the wait.
    fn bump(
        &mut self,
        rng: &mut u64,
        initial: Duration,
        max: Duration,
        at_least: Option<Duration>,
    ) -> Duration {
        let cap = initial
            .saturating_mul(1u32 << self.attempts.min(20))
            .min(max);
        self.attempts += 1;
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let jitter = Duration::from_millis(*rng % (cap.as_millis() as u64 + 1));
        let wait = jitter.max(at_least.unwrap_or_default());
        self.next = self.next.max(Instant::now() + wait);
        self.next.saturating_duration_since(Instant::now())
    }
}

/// The jitter's seed: the clock's nanoseconds (odd, never 0).
pub(super) fn seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// Does this failure belong to the receiver or the link rather than to the
/// episode? Then every episode would meet it: hold the whole host.
pub(super) fn host_wide(event: &Event) -> bool {
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

/// Why a failed attempt failed, for `upload_failures_total{reason}`.
pub(super) fn failure_reason(event: &Event) -> FailureReason {
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

impl Shipper {
    /// The receiver or the link is failing for everyone: nothing talks to
    /// it until the hold lifts.
    pub(super) fn host_held(&self) -> bool {
        self.hold.as_ref().is_some_and(Backoff::waiting)
    }

    /// This episode waits for its own retry.
    pub(super) fn episode_waits(&self, id: &Id) -> bool {
        self.backoff.get(id).is_some_and(Backoff::waiting)
    }

    /// The receiver gave a verdict on a request sent at `asked`: it is
    /// reachable and working, whatever the verdict, and several uploads may
    /// go at once. The hold lifts, unless the request went before it began:
    /// an earlier upload in flight says nothing of the failure that
    /// started it.
    pub(super) fn heard_verdict(&mut self, asked: Instant) {
        if self.hold.as_ref().is_none_or(|h| asked >= h.since) {
            self.hold = None;
        }
        self.receiver_answered = true;
    }

    /// Puts the whole host on hold after the receiver's or the link's
    /// failure of a request sent at `asked`; returns the wait. A request
    /// sent before the current hold began (uploads in flight together fail
    /// together, some only after a long timeout) only raises the hold to its
    /// `Retry-After`; a later one lengthens it, starts a new hold period and
    /// sends the next upload alone again.
    pub(super) fn hold_host(&mut self, asked: Instant, at_least: Option<Duration>) -> Duration {
        let (initial, max) = (self.config.initial_backoff, self.config.max_backoff);
        let now = Instant::now();
        match &mut self.hold {
            Some(hold) if asked < hold.since => {
                hold.next = hold.next.max(now + at_least.unwrap_or_default());
                hold.next.saturating_duration_since(now)
            }
            hold => {
                let hold = hold.get_or_insert_with(Backoff::new);
                hold.since = now;
                self.receiver_answered = false;
                hold.bump(&mut self.rng, initial, max, at_least)
            }
        }
    }

    /// This episode's own backoff; returns the wait.
    pub(super) fn schedule(&mut self, id: &Id, at_least: Option<Duration>) -> Duration {
        let (initial, max) = (self.config.initial_backoff, self.config.max_backoff);
        self.backoff
            .entry(id.clone())
            .or_insert_with(Backoff::new)
            .bump(&mut self.rng, initial, max, at_least)
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
