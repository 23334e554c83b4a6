//! A TCP fault proxy between a client and a real server, for wire-fault tests.
//!
//! - `StallAfter(n)` black-holes the client→server direction of the first
//!   connection to carry `n` bytes that way, from there on (the connection stays open, nothing moves,
//!   until the proxy is dropped: then both sides get a FIN).
//! - `ResetAfter(n)` forwards the first `n` client→server bytes of the first
//!   connection to carry that many, then aborts both sides with a RST (`SO_LINGER` 0, then close).
//! - `Truncate(n)` forwards the first `n` client→server bytes of the first
//!   connection to carry that many, then closes both sides cleanly (FIN both ways).
//! - `StallUnacked(n)` is `StallAfter(n)` behind a small receive window: the
//!   rest of a request that fits the client's socket buffers waits there
//!   unacknowledged (a dead link as the client's kernel sees it, which
//!   `TCP_USER_TIMEOUT` cuts), instead of vanishing into the proxy's buffers.
//! - `Swallow(n)` forwards the first `n` client→server bytes of the first
//!   connection to carry that many, then drops the server's side and reads
//!   (acknowledges) and discards the rest, never answering: a receiver that
//!   took the whole body and is still verifying it, as the client sees it.
//! - `Throttle(r)` caps every connection's client→server direction at about
//!   `r` bytes per second.
//! - `ResetEvery(n)` resets (RST) every connection after its first `n`
//!   client→server bytes: a flaky link that cuts an upload every `n` bytes,
//!   however often it is resumed.
//!
//! With the first three the cut is made once, so a retry succeeds; a short
//! request on its own connection (a ping) passes untouched.
//!
//! Every proxy counts the client→server bytes it forwards ([`Proxy::up_bytes`])
//! and samples them every [`SAMPLE_EVERY`] ([`Proxy::series`]: the total so
//! far and how many connections moved bytes in each sample), to measure a
//! rate on the wire ([`rate`]).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often [`Proxy::series`] is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One sample of the client→server direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Since [`Proxy::started`].
    pub at: Duration,
    /// Bytes forwarded so far, all connections.
    pub up_bytes: u64,
    /// Connections that forwarded bytes since the previous sample.
    pub busy: usize,
}

/// Bytes per second forwarded over `[from, to]` (since [`Proxy::started`]),
/// from the samples nearest those times.
pub fn rate(series: &[Sample], from: Duration, to: Duration) -> f64 {
    let at = |t: Duration| {
        series
            .iter()
            .min_by_key(|s| s.at.abs_diff(t))
            .copied()
            .expect("samples")
    };
    let (a, b) = (at(from), at(to));
    (b.up_bytes - a.up_bytes) as f64 / (b.at - a.at).as_secs_f64()
}

/// The per-connection counters and the samples.
#[derive(Debug, Default)]
struct Meter {
    conns: Mutex<Vec<Arc<AtomicU64>>>,
    series: Mutex<Vec<Sample>>,
}

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    PassThrough,
    /// Stall the upload after this many bytes (once; see the module doc).
    StallAfter(usize),
    /// As `StallAfter`, behind a small receive window (see the module doc).
    StallUnacked(usize),
    /// Upload at about this many bytes per second, on every connection.
    Throttle(usize),
    /// Reset (RST) both sides after this many client→server bytes (once).
    ResetAfter(usize),
    /// Reset (RST) both sides of every connection after this many of its
    /// client→server bytes (every time).
    ResetEvery(usize),
    /// Close both sides cleanly (FIN) after this many client→server bytes
    /// (once).
    Truncate(usize),
    /// Acknowledge and discard every client→server byte after this many,
    /// and never answer (once; see the module doc).
    Swallow(usize),
}

/// What the client→server pump does once its byte budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Stall,
    Reset,
    Close,
    Swallow,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Connections the fault was applied to (cut, reset or closed) so far.
    pub faulted: Arc<AtomicUsize>,
    /// When the proxy started: the origin of [`Sample::at`].
    pub started: Instant,
    meter: Arc<Meter>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

impl Proxy {
    /// Client→server bytes forwarded so far, all connections.
    pub fn up_bytes(&self) -> u64 {
        let conns = self.meter.conns.lock().expect("meter");
        conns.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The samples so far, oldest first.
    pub fn series(&self) -> Vec<Sample> {
        self.meter.series.lock().expect("meter").clone()
    }

    pub fn start(target: SocketAddr, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        if matches!(fault, Fault::Throttle(_) | Fault::StallUnacked(_)) {
            // A small receive window (inherited by accepted sockets), as at a
            // slow link's bottleneck: the sender's progress then tracks the
            // wire instead of megabytes vanishing into loopback buffers.
            rustix::net::sockopt::set_socket_recv_buffer_size(&listener, 32 * 1024)
                .expect("SO_RCVBUF");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let faulted = Arc::new(AtomicUsize::new(0));
        let (stop2, count, faulted2) = (stop.clone(), connections.clone(), faulted.clone());
        // The cut hits the first connection whose upload reaches its byte
        // budget, once: not simply the first connection, which may be a ping
        // hyper did not pool back in time for the PUT.
        let armed = Arc::new(AtomicBool::new(true));
        let (meter, started) = (Arc::new(Meter::default()), Instant::now());
        let (m2, stop3) = (meter.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last: Vec<u64> = Vec::new();
            while !stop3.load(Ordering::SeqCst) {
                let now: Vec<u64> = m2
                    .conns
                    .lock()
                    .expect("meter")
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .collect();
                let busy = now
                    .iter()
                    .enumerate()
                    .filter(|(i, n)| last.get(*i).is_none_or(|l| l != *n))
                    .count();
                m2.series.lock().expect("meter").push(Sample {
                    at: started.elapsed(),
                    up_bytes: now.iter().sum(),
                    busy,
                });
                last = now;
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let m3 = meter.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let cut = match fault {
                    Fault::StallAfter(n) | Fault::StallUnacked(n) => Some((n, Cut::Stall)),
                    Fault::ResetAfter(n) | Fault::ResetEvery(n) => Some((n, Cut::Reset)),
                    Fault::Truncate(n) => Some((n, Cut::Close)),
                    Fault::Swallow(n) => Some((n, Cut::Swallow)),
                    _ => None,
                };
                let rate = match fault {
                    Fault::Throttle(r) => Some(r.max(10)),
                    _ => None,
                };
                let moved = Arc::new(AtomicU64::new(0));
                m3.conns.lock().expect("meter").push(moved.clone());
                let conn = Arc::new(Conn {
                    moved,
                    client,
                    upstream,
                    aborted: AtomicBool::new(false),
                    stop: stop2.clone(),
                    faulted: faulted2.clone(),
                    // Every connection's own cut, or the one shared cut.
                    armed: if matches!(fault, Fault::ResetEvery(_)) {
                        Arc::new(AtomicBool::new(true))
                    } else {
                        armed.clone()
                    },
                });
                let c2 = conn.clone();
                std::thread::spawn(move || c2.up(cut, rate));
                std::thread::spawn(move || conn.down());
            }
        });
        Self {
            addr,
            stop,
            connections,
            faulted,
            started,
            meter,
        }
    }
}

/// One proxied connection. Both pumps share the two sockets (no dup'd file
/// descriptors), so the sockets close when the last pump lets go, and a
/// `SO_LINGER` 0 set on them turns that close into a RST.
#[derive(Debug)]
struct Conn {
    /// Client→server bytes forwarded on this connection.
    moved: Arc<AtomicU64>,
    client: TcpStream,
    upstream: TcpStream,
    /// Set before the cut wakes the other pump: it then leaves without
    /// shutting anything down itself.
    aborted: AtomicBool,
    stop: Arc<AtomicBool>,
    faulted: Arc<AtomicUsize>,
    /// Whether the one cut is still to be made.
    armed: Arc<AtomicBool>,
}

impl Conn {
    /// client → server, with the fault.
    fn up(&self, mut cut: Option<(usize, Cut)>, rate: Option<usize>) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut moved = 0usize;
        loop {
            let limit = cut.map_or(buf.len(), |(n, _)| buf.len().min(n.saturating_sub(moved)));
            if limit == 0 && !self.armed.swap(false, Ordering::SeqCst) {
                cut = None; // another connection took the cut
                continue;
            }
            if limit == 0 {
                self.faulted.fetch_add(1, Ordering::SeqCst);
                match cut.map(|(_, c)| c) {
                    Some(Cut::Reset) => {
                        for s in [&self.client, &self.upstream] {
                            let _ =
                                rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO));
                        }
                        self.aborted.store(true, Ordering::SeqCst);
                        // Wakes the other pump's read without sending anything
                        // (SHUT_RD); the last reference closes with a RST.
                        let _ = self.upstream.shutdown(Shutdown::Read);
                        let _ = self.client.shutdown(Shutdown::Read);
                    }
                    Some(Cut::Close) => {
                        self.aborted.store(true, Ordering::SeqCst);
                        let _ = self.upstream.shutdown(Shutdown::Both);
                        let _ = self.client.shutdown(Shutdown::Both);
                    }
                    Some(Cut::Swallow) => {
                        // Nothing reaches the client any more, not even the
                        // server's close.
                        self.aborted.store(true, Ordering::SeqCst);
                        let _ = self.upstream.shutdown(Shutdown::Both);
                        let _ = self
                            .client
                            .set_read_timeout(Some(Duration::from_millis(100)));
                        while !self.stop.load(Ordering::SeqCst) {
                            match (&self.client).read(&mut buf) {
                                Ok(0) => break,
                                Ok(_) => {}
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = self.client.shutdown(Shutdown::Both);
                    }
                    _ => {
                        // Black hole: hold the connection open, move nothing.
                        while !self.stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        // The proxy is gone: so is the link (FIN both ways).
                        self.aborted.store(true, Ordering::SeqCst);
                        let _ = self.upstream.shutdown(Shutdown::Both);
                        let _ = self.client.shutdown(Shutdown::Both);
                    }
                }
                return;
            }
            match (&self.client).read(&mut buf[..limit]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    moved += n;
                    if (&self.upstream).write_all(&buf[..n]).is_err() {
                        break;
                    }
                    self.moved.fetch_add(n as u64, Ordering::Relaxed);
                    if let Some(rate) = rate {
                        // Paced: n bytes take n / rate seconds.
                        std::thread::sleep(Duration::from_nanos(
                            n as u64 * 1_000_000_000 / rate as u64,
                        ));
                    }
                }
            }
        }
        if !self.aborted.load(Ordering::SeqCst) {
            let _ = self.upstream.shutdown(Shutdown::Write);
        }
    }

    /// server → client, untouched.
    fn down(&self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match (&self.upstream).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if self.aborted.load(Ordering::SeqCst)
                        || (&self.client).write_all(&buf[..n]).is_err()
                    {
                        break;
                    }
                }
            }
        }
        if !self.aborted.load(Ordering::SeqCst) {
            let _ = self.client.shutdown(Shutdown::Write);
        }
    }
}
