//! `[limits] bwlimit` (CONTRACT §10): the upload rate cap, its parser and the
//! one token bucket every upload in flight draws from.
//!
//! The value is `""` or `"off"` (no cap), a rate (`"10M"`: bytes per second,
//! `K`, `M`, `G` = 1024^n, a plain number is bytes per second, a fraction such
//! as `"1.5M"` is allowed), or a daily timetable in local time, rclone style:
//! `"08:00,10M 19:00,off"`. Timetable entries are `HH:MM,RATE` separated by
//! spaces, in strictly ascending time (a repeated or earlier time is an
//! error). The entry in force is the last one whose time is at or before now;
//! before the first entry of the day, the day's last entry still holds (it
//! began yesterday). Caps under [`MIN_RATE`] are refused: a byte must always
//! move well within `receiver.stall_timeout_s`.
//!
//! The [`Limiter`] is a shared bucket with reservations kept as GCRA keeps
//! them: one instant, `next_free`, when every byte reserved so far has gone
//! at the rate in force when it was reserved. A sender reserves its bytes at
//! once and sleeps until they fall within the burst, so uploads are served in
//! turn and the sum of all of them holds the cap. Debt is time, not bytes: a
//! lower cap (SIGHUP, a timetable boundary) never re-prices what was reserved
//! at the old rate. Bodies are cut into pieces of at most a tenth of a second
//! of the rate ([`Limiter::piece`]), so the bytes reserved at the old rate
//! drain within a second, and a byte moves several times a second even at the
//! lowest cap.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The lowest cap accepted: 4 KiB/s.
pub const MIN_RATE: u64 = 4096;

/// One timetable entry: from `minute` (of the local day) on, `rate`
/// (bytes/s; `None` = no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub minute: u16,
    pub rate: Option<u64>,
}

/// A parsed `bwlimit`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bwlimit {
    #[default]
    Off,
    Fixed(u64),
    /// Ascending by minute, at least one entry.
    Timetable(Vec<Slot>),
}

impl Bwlimit {
    /// Parses the key's value; the error says what is wrong (the caller
    /// names the key and gives examples).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        if !text.contains(',') {
            return Ok(rate(text)?.map_or(Self::Off, Self::Fixed));
        }
        let mut slots: Vec<Slot> = Vec::new();
        for entry in text.split_whitespace() {
            let (time, r) = entry
                .split_once(',')
                .ok_or_else(|| format!("timetable entry {entry:?} is not HH:MM,RATE"))?;
            let minute = hhmm(time).ok_or_else(|| {
                format!("timetable entry {entry:?}: {time:?} is not a time HH:MM (00:00 to 23:59)")
            })?;
            if let Some(prev) = slots.last()
                && prev.minute >= minute
            {
                return Err(format!(
                    "timetable entry {entry:?}: times must be strictly ascending ({time} does not come after {})",
                    fmt_minute(prev.minute)
                ));
            }
            let rate = rate(r).map_err(|e| format!("timetable entry {entry:?}: {e}"))?;
            slots.push(Slot { minute, rate });
        }
        Ok(Self::Timetable(slots))
    }

    /// The cap at `second` of the local day (0..86400).
    pub fn rate_at(&self, second: u32) -> Option<u64> {
        match self {
            Self::Off => None,
            Self::Fixed(r) => Some(*r),
            Self::Timetable(slots) => slots
                .iter()
                .rev()
                .find(|s| u32::from(s.minute) * 60 <= second)
                .or(slots.last())
                .and_then(|s| s.rate),
        }
    }

    /// The cap now, by the local clock.
    pub fn rate_now(&self) -> Option<u64> {
        match self {
            Self::Timetable(_) => self.rate_at(local_second()),
            _ => self.rate_at(0),
        }
    }
}

impl std::fmt::Display for Bwlimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |r: Option<u64>| r.map_or("off".to_owned(), human);
        match self {
            Self::Off => f.write_str("off"),
            Self::Fixed(v) => f.write_str(&human(*v)),
            Self::Timetable(slots) => {
                let parts: Vec<String> = slots
                    .iter()
                    .map(|s| format!("{},{}", fmt_minute(s.minute), r(s.rate)))
                    .collect();
                f.write_str(&parts.join(" "))
            }
        }
    }
}

/// "2 MiB/s", "512 KiB/s", "100 B/s".
pub fn human(rate: u64) -> String {
    let r = rate as f64;
    let (v, unit) = if r >= (1u64 << 30) as f64 {
        (r / (1u64 << 30) as f64, "GiB/s")
    } else if r >= (1u64 << 20) as f64 {
        (r / (1u64 << 20) as f64, "MiB/s")
    } else if r >= 1024.0 {
        (r / 1024.0, "KiB/s")
    } else {
        (r, "B/s")
    };
    if (v - v.round()).abs() < 0.05 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

fn fmt_minute(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn hhmm(t: &str) -> Option<u16> {
    let (h, m) = t.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `off`, or bytes per second with an optional K, M or G (1024^n).
fn rate(text: &str) -> Result<Option<u64>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (num, mul) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&text[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    let value: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| {
            v.is_finite() && *v >= 0.0 && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        })
        .ok_or_else(|| {
            format!("{text:?} is not a rate (bytes/s, with K, M or G = 1024^n) or off")
        })?;
    let bytes = (value * mul as f64).round();
    if bytes < MIN_RATE as f64 {
        return Err(format!(
            "{text:?} is under the lowest cap, 4K (4096 bytes/s); use off for no cap"
        ));
    }
    Ok(Some(bytes.min(u64::MAX as f64) as u64))
}

/// Seconds since local midnight, shifted by the test hook
/// `LABSHIP_TEST_CLOCK_OFFSET_S` (debug builds only: a signed number of
/// seconds added to the clock the timetable reads).
fn local_second() -> u32 {
    use chrono::Timelike as _;
    let now = chrono::Local::now();
    #[cfg(debug_assertions)]
    let now = match std::env::var("LABSHIP_TEST_CLOCK_OFFSET_S")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
    {
        Some(off) => now + chrono::TimeDelta::seconds(off),
        None => now,
    };
    now.num_seconds_from_midnight()
}

/// The bucket's capacity at `rate`: a twentieth of a second of it, but at
/// least a quarter second or 64 KiB, whichever is less.
fn burst(rate: u64) -> f64 {
    let r = rate as f64;
    (r / 20.0).max((r / 4.0).min(64.0 * 1024.0))
}

#[derive(Debug)]
struct Bucket {
    /// When every byte reserved so far has gone (at the rate in force when
    /// each was reserved); earlier than now when the link is idle.
    next_free: Instant,
}

/// The shared token bucket (see the module doc).
#[derive(Debug)]
pub struct Limiter {
    schedule: Mutex<Bwlimit>,
    bucket: Mutex<Bucket>,
}

impl Limiter {
    pub fn new(schedule: Bwlimit) -> Self {
        // Starts empty: no burst saved up before the first byte.
        let now = Instant::now();
        let saved = schedule.rate_now().map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(burst(r) / r as f64)
        });
        Self {
            schedule: Mutex::new(schedule),
            bucket: Mutex::new(Bucket {
                next_free: now + saved,
            }),
        }
    }

    /// Replaces the cap (SIGHUP); in force for the next piece.
    pub fn set(&self, schedule: Bwlimit) {
        *self.schedule.lock().unwrap_or_else(|p| p.into_inner()) = schedule;
    }

    pub fn schedule(&self) -> Bwlimit {
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cap in force now (bytes/s), `None` for none.
    pub fn current(&self) -> Option<u64> {
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rate_now()
    }

    /// The largest piece of body a sender should take at once.
    pub fn piece(&self) -> usize {
        match self.current() {
            None => usize::MAX,
            Some(r) => (burst(r).min(r as f64 / 10.0) as usize).max(1),
        }
    }

    /// Reserves `n` bytes and sleeps off any debt. Returns at once when
    /// there is no cap.
    pub async fn take(&self, n: usize) {
        let wait = {
            let Some(rate) = self.current() else {
                return;
            };
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let r = rate as f64;
            let burst = Duration::from_secs_f64(burst(rate) / r);
            // An idle link saves up at most one burst.
            let from = b.next_free.max(now.checked_sub(burst).unwrap_or(now));
            b.next_free = from + Duration::from_secs_f64(n as f64 / r);
            b.next_free.saturating_duration_since(now + burst)
        };
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// `stream` paced by `limiter`: chunks are cut into [`Limiter::piece`]s and
/// each is yielded once the bucket grants it.
pub fn throttle<S>(stream: S, limiter: std::sync::Arc<Limiter>) -> Throttled<S> {
    Throttled {
        inner: stream,
        limiter,
        held: Bytes::new(),
        pending: None,
    }
}

pub struct Throttled<S> {
    inner: S,
    limiter: std::sync::Arc<Limiter>,
    /// The rest of the chunk being cut.
    held: Bytes,
    pending: Option<(Bytes, Wait)>,
}

impl<S> std::fmt::Debug for Throttled<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttled")
            .field("held", &self.held.len())
            .field("pending", &self.pending.as_ref().map(|p| p.0.len()))
            .finish_non_exhaustive()
    }
}

impl<S, E> futures_core::Stream for Throttled<S>
where
    S: futures_core::Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        loop {
            if let Some((_, wait)) = &mut self.pending {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let (piece, _) = self.pending.take().expect("pending piece");
                return Poll::Ready(Some(Ok(piece)));
            }
            if self.held.is_empty() {
                match Pin::new(&mut self.inner).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => self.held = chunk,
                    other => return other,
                }
                continue;
            }
            let size = self.limiter.piece().min(self.held.len());
            let piece = self.held.split_to(size);
            let limiter = self.limiter.clone();
            self.pending = Some((piece, Box::pin(async move { limiter.take(size).await })));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_off() {
        let ok = |t: &str| Bwlimit::parse(t).unwrap();
        assert_eq!(ok(""), Bwlimit::Off);
        assert_eq!(ok(" off "), Bwlimit::Off);
        assert_eq!(ok("OFF"), Bwlimit::Off);
        assert_eq!(ok("10M"), Bwlimit::Fixed(10 << 20));
        assert_eq!(ok("512k"), Bwlimit::Fixed(512 << 10));
        assert_eq!(ok("1G"), Bwlimit::Fixed(1 << 30));
        assert_eq!(ok("1.5M"), Bwlimit::Fixed(3 << 19));
        assert_eq!(ok("4096"), Bwlimit::Fixed(4096));
        assert_eq!(ok("2000000"), Bwlimit::Fixed(2_000_000));
        assert_eq!(ok("4K"), Bwlimit::Fixed(4096));
    }

    #[test]
    fn garbage_and_tiny_caps_are_refused() {
        for bad in [
            "10 M",
            "10MB",
            "ten",
            "-1M",
            "1e6",
            "0",
            "3K",
            "4095",
            "M",
            "10M,",
            "08:00",
            "8:00,1M",
            "24:00,1M",
            "08:60,1M",
            "08:00,1M 07:00,2M",
            "08:00,1M 08:00,2M",
            "08:00,fast",
            "08:00;1M",
            "08:00,1M,2M",
            "nan",
            "inf",
        ] {
            assert!(Bwlimit::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Bwlimit::parse("08:00,1M 07:30,2M").unwrap_err();
        assert!(e.contains("ascending") && e.contains("07:30"), "{e}");
        assert!(Bwlimit::parse("1K").unwrap_err().contains("lowest cap"));
    }

    #[test]
    fn the_timetable_entry_in_force_wraps_to_yesterdays_last() {
        let t = Bwlimit::parse("08:00,10M 12:30,512K 19:00,off").unwrap();
        let at = |h: u32, m: u32, s: u32| t.rate_at(h * 3600 + m * 60 + s);
        assert_eq!(at(0, 0, 0), None); // 19:00 of yesterday
        assert_eq!(at(7, 59, 59), None);
        assert_eq!(at(8, 0, 0), Some(10 << 20));
        assert_eq!(at(12, 29, 59), Some(10 << 20));
        assert_eq!(at(12, 30, 0), Some(512 << 10));
        assert_eq!(at(18, 59, 59), Some(512 << 10));
        assert_eq!(at(19, 0, 0), None);
        assert_eq!(at(23, 59, 59), None);
        let one = Bwlimit::parse("06:00,1M").unwrap();
        assert_eq!(one.rate_at(0), Some(1 << 20));
        assert_eq!(one.rate_at(23 * 3600), Some(1 << 20));
        assert_eq!(t.to_string(), "08:00,10 MiB/s 12:30,512 KiB/s 19:00,off");
        assert_eq!(Bwlimit::Fixed(3 << 19).to_string(), "1.5 MiB/s");
    }

    #[test]
    fn pieces_are_a_tenth_of_a_second_at_most() {
        let l = Limiter::new(Bwlimit::Fixed(4096));
        assert_eq!(l.piece(), 409);
        l.set(Bwlimit::Fixed(2 << 20));
        assert_eq!(l.piece(), 2 * 1024 * 1024 / 20);
        l.set(Bwlimit::Off);
        assert_eq!(l.piece(), usize::MAX);
    }

    #[tokio::test]
    async fn the_bucket_holds_the_rate_across_senders() {
        let l = std::sync::Arc::new(Limiter::new(Bwlimit::Fixed(1 << 20)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..8 {
                    l.take(l.piece()).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 24 pieces of 64 KiB (1/16 s) each: 1.5 s of the rate (the bucket
        // starts empty).
        assert_eq!(l.piece(), 64 << 10);
        let took = start.elapsed().as_secs_f64();
        assert!((1.4..1.7).contains(&took), "took {took}s");
    }

    /// Debt reserved at a high rate is not re-priced at a far lower one:
    /// after set(), a new piece waits at most what was reserved (a few
    /// pieces of a tenth of a second) plus itself.
    #[tokio::test]
    async fn lowering_the_cap_does_not_reprice_the_debt() {
        let l = std::sync::Arc::new(Limiter::new(Bwlimit::Fixed(10 << 20)));
        let mut senders = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            senders.push(tokio::spawn(async move { l.take(l.piece()).await }));
        }
        for s in senders {
            s.await.unwrap();
        }
        l.set(Bwlimit::Fixed(4096));
        let piece = l.piece();
        let start = Instant::now();
        let took = tokio::time::timeout(Duration::from_secs(5), l.take(piece))
            .await
            .map(|()| start.elapsed().as_secs_f64())
            .ok();
        let most = 0.1 + piece as f64 / 4096.0 + 0.05;
        assert!(
            took.is_some_and(|t| t <= most),
            "a new piece at 4 KiB/s waited {took:?} s (at most {most} s)"
        );
    }
}
