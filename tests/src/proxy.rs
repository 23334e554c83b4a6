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
//! - `Throttle(r)` caps every connection's client→server direction at about
//!   `r` bytes per second.
//!
//! With the first three the cut is made once, so a retry succeeds; a short
//! request on its own connection (a ping) passes untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

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
    /// Close both sides cleanly (FIN) after this many client→server bytes
    /// (once).
    Truncate(usize),
}

/// What the client→server pump does once its byte budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Stall,
    Reset,
    Close,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Connections the fault was applied to (cut, reset or closed) so far.
    pub faulted: Arc<AtomicUsize>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

impl Proxy {
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
                    Fault::ResetAfter(n) => Some((n, Cut::Reset)),
                    Fault::Truncate(n) => Some((n, Cut::Close)),
                    _ => None,
                };
                let rate = match fault {
                    Fault::Throttle(r) => Some(r.max(10)),
                    _ => None,
                };
                let conn = Arc::new(Conn {
                    client,
                    upstream,
                    aborted: AtomicBool::new(false),
                    stop: stop2.clone(),
                    faulted: faulted2.clone(),
                    armed: armed.clone(),
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
        }
    }
}

/// One proxied connection. Both pumps share the two sockets (no dup'd file
/// descriptors), so the sockets close when the last pump lets go, and a
/// `SO_LINGER` 0 set on them turns that close into a RST.
#[derive(Debug)]
struct Conn {
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
