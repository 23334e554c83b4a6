//! Pacing a request body: how long the receiver waits for a client that is
//! sending one. A wait of `limits.body_idle_timeout_s` for the next bytes
//! cuts it, and so does a window of `limits.min_upload_rate_window_s` that
//! brings less than `limits.min_upload_rate_bytes_per_s`: a client dripping a
//! byte a minute (never idle long enough) would otherwise hold an upload
//! permit, or a connection, for ever. Used by uploads and by the drain after
//! an early answer (`ingest`).

use crate::config::RateFloor;
use crate::ingest::{IngestError, Limits};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use std::time::Duration;
use tokio::time::Instant;

type Frame = hyper::body::Frame<Bytes>;

/// Reads a body frame by frame for as long as the client keeps it moving: a
/// wait of [`Limits::body_idle`] for the next frame, or a window of
/// [`RateFloor::window`] that brings less than the floor, cuts it. Only time
/// spent waiting for the client counts towards a window: while the receiver
/// itself holds the body back (a slow disk behind the validator) no window
/// runs, so a busy receiver never cuts an honest client as slow.
#[derive(Debug)]
pub(crate) struct Pace {
    idle: Duration,
    floor: Option<RateFloor>,
    /// Waiting time and bytes of the current window.
    waited: Duration,
    bytes: u64,
}

impl Pace {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            idle: limits.body_idle,
            floor: limits.min_rate,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// The next frame (`None` at the end of the body), or why the client is cut.
    pub(crate) async fn frame(
        &mut self,
        body: &mut axum::body::Body,
    ) -> Result<Option<Result<Frame, axum::Error>>, IngestError> {
        let idle_at = Instant::now() + self.idle;
        let mut next = std::pin::pin!(body.frame());
        loop {
            let started = Instant::now();
            let window_at = self
                .floor
                .map(|f| started + f.window.saturating_sub(self.waited));
            let wait_until = window_at.map_or(idle_at, |w| w.min(idle_at));
            let got = tokio::time::timeout_at(wait_until, &mut next).await;
            self.waited += started.elapsed();
            match got {
                Ok(frame) => {
                    if let Some(Ok(f)) = &frame {
                        self.bytes += f.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    self.end_window()?;
                    return Ok(frame);
                }
                Err(_) if Instant::now() >= idle_at => {
                    return Err(IngestError::ClientGone(format!(
                        "no body bytes for {}s (limits.body_idle_timeout_s)",
                        self.idle.as_secs()
                    )));
                }
                // A window ended while waiting; the wait goes on if it held enough.
                Err(_) => self.end_window()?,
            }
        }
    }

    /// At the end of a window: the client is cut if it sent less than the
    /// floor, else the next window starts.
    fn end_window(&mut self) -> Result<(), IngestError> {
        let Some(floor) = self.floor else {
            return Ok(());
        };
        if self.waited < floor.window {
            return Ok(());
        }
        let needed = u128::from(floor.bytes_per_s) * floor.window.as_millis() / 1000;
        if u128::from(self.bytes) < needed {
            return Err(IngestError::ClientGone(format!(
                "body slower than limits.min_upload_rate_bytes_per_s ({} B/s): {} bytes in limits.min_upload_rate_window_s ({}s)",
                floor.bytes_per_s,
                self.bytes,
                floor.window.as_secs()
            )));
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }
}

/// How long a PUT waits for an upload slot (`limits.max_concurrent_uploads`)
/// before it is answered 503 `busy`. A fleet shipping at once holds more
/// uploads than there are slots, and a small upload frees its slot within
/// milliseconds: waiting that out here costs the client nothing, while a
/// 503 costs it a whole `Retry-After` (docs/performance.md, "A fleet at
/// once"). Bounded well below any client's stall timeout (the shipper's is
/// 60 s by default), and FIFO: the semaphore serves waiters in order.
pub(crate) const ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// The `Retry-After` of a 503 `busy` after [`ADMISSION_WAIT`]: no slot
/// freed in that wait, and the next is as likely to free in a second as
/// later; the shortest wait the header can say.
pub(crate) const RETRY_AFTER_ADMISSION: u32 = 1;

/// An upload slot, waiting up to [`ADMISSION_WAIT`] for one to free;
/// `None` when none did (or the semaphore was closed).
pub(crate) async fn admit(
    slots: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    tokio::time::timeout(ADMISSION_WAIT, slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    /// A body fed by the test, frame by frame; it ends when the sender drops.
    struct Fed(mpsc::Receiver<Bytes>);

    impl hyper::body::Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed() -> (mpsc::Sender<Bytes>, axum::body::Body) {
        let (tx, rx) = mpsc::channel(1024);
        (tx, axum::body::Body::new(Fed(rx)))
    }

    fn limits(idle_ms: u64, floor: Option<(u64, u64)>) -> Limits {
        Limits {
            max_bytes: u64::MAX,
            max_unpacked: u64::MAX,
            body_idle: Duration::from_millis(idle_ms),
            min_rate: floor.map(|(bytes_per_s, window_ms)| RateFloor {
                bytes_per_s,
                window: Duration::from_millis(window_ms),
            }),
        }
    }

    /// Reads `body` to its end or its cut; the cut's message.
    async fn read_all(pace: &mut Pace, body: &mut axum::body::Body) -> Option<String> {
        loop {
            match pace.frame(body).await {
                Ok(None) => return None,
                Ok(Some(_)) => {}
                Err(e) => return Some(e.to_string()),
            }
        }
    }

    #[tokio::test]
    async fn a_drip_is_cut_at_the_end_of_its_first_window() {
        let (tx, mut body) = fed();
        let drip = tokio::spawn(async move {
            // 20 B/s against a floor of 1000 B/s.
            while tx.send(Bytes::from_static(b"x")).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut pace = Pace::new(limits(60_000, Some((1000, 1000))));
        let t = Instant::now();
        let cut = read_all(&mut pace, &mut body).await.expect("cut");
        assert!(
            cut.contains("limits.min_upload_rate_bytes_per_s (1000 B/s)"),
            "{cut}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        drop(body);
        drip.abort();
    }

    #[tokio::test]
    async fn a_body_above_the_floor_is_never_cut() {
        let (tx, mut body) = fed();
        tokio::spawn(async move {
            // About 10 kB/s for 1.5 s (a bad link) against a floor of 500 B/s.
            for _ in 0..150 {
                tx.send(Bytes::from(vec![7u8; 100])).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut pace = Pace::new(limits(60_000, Some((500, 300))));
        assert_eq!(read_all(&mut pace, &mut body).await, None);
    }

    #[tokio::test]
    async fn time_the_receiver_spends_busy_is_not_the_clients() {
        let (tx, mut body) = fed();
        let mut pace = Pace::new(limits(60_000, Some((1000, 200))));
        // The client sends what a window needs, and more right away, but the
        // receiver does not read for three windows (a slow disk).
        tx.send(Bytes::from(vec![0u8; 250])).await.unwrap();
        tx.send(Bytes::from(vec![0u8; 250])).await.unwrap();
        assert!(pace.frame(&mut body).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(pace.frame(&mut body).await.unwrap().is_some());
        drop(tx);
        assert_eq!(read_all(&mut pace, &mut body).await, None);
    }

    #[tokio::test]
    async fn silence_is_still_the_idle_timeout() {
        let (_tx, mut body) = fed();
        for floor in [None, Some((1, 10_000))] {
            let mut pace = Pace::new(limits(300, floor));
            let cut = read_all(&mut pace, &mut body).await.expect("cut");
            assert!(
                cut.contains("limits.body_idle_timeout_s"),
                "{floor:?}: {cut}"
            );
        }
    }
}
