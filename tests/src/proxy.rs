//! A TCP fault proxy between a client and a real server, for wire-fault tests.
//! `StallAfter(n)` black-holes the first connection's client→server direction
//! after `n` bytes (the connection stays open, nothing moves); later
//! connections pass through. `Throttle(r)` caps every connection's
//! client→server direction at about `r` bytes per second. Issue 6 extends it
//! (reset, truncate).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    PassThrough,
    /// Stall the first connection's upload after this many bytes.
    StallAfter(usize),
    /// Upload at about this many bytes per second, on every connection.
    Throttle(usize),
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
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
        if matches!(fault, Fault::Throttle(_)) {
            // A small receive window (inherited by accepted sockets), as at a
            // slow link's bottleneck: the sender's progress then tracks the
            // wire instead of megabytes vanishing into loopback buffers.
            rustix::net::sockopt::set_socket_recv_buffer_size(&listener, 32 * 1024)
                .expect("SO_RCVBUF");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop2, count) = (stop.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                let index = count.fetch_add(1, Ordering::SeqCst);
                let stall = match fault {
                    Fault::StallAfter(n) if index == 0 => Some(n),
                    _ => None,
                };
                let rate = match fault {
                    Fault::Throttle(r) => Some(r.max(10)),
                    _ => None,
                };
                pump(
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                    stall,
                    rate,
                    stop2.clone(),
                );
                pump(upstream, client, None, None, stop2.clone());
            }
        });
        Self {
            addr,
            stop,
            connections,
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stall_after: Option<usize>,
    rate: Option<usize>,
    stop: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut moved = 0usize;
        loop {
            let limit = stall_after.map_or(buf.len(), |n| buf.len().min(n.saturating_sub(moved)));
            if limit == 0 {
                // Black hole: hold the connection open, move nothing.
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            match from.read(&mut buf[..limit]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    moved += n;
                    if to.write_all(&buf[..n]).is_err() {
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
        let _ = to.shutdown(Shutdown::Write);
    });
}
