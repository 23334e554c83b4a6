//! Something that is not the receiver, answering at the shipper's
//! `receiver.url`: a real HTTPS server (the test PKI's server certificate,
//! so TLS succeeds) that gives every request the answer a function makes of
//! it, as a misrouted URL, a proxy answering for itself or a redirecting
//! load balancer would. It is not a mock of the receiver: the shipper is
//! under test, and this is what it must not believe.

use crate::pki::Pki;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request as the impostor saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Body bytes read (and thrown away).
    pub body_bytes: usize,
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// No answer at all: the connection closes once the request (and its
    /// body) has been read, as a cut link or a crashed proxy leaves it.
    pub fn hang_up() -> Self {
        Self {
            status: 0,
            headers: vec![],
            body: String::new(),
        }
    }

    /// A redirect to `location`.
    pub fn redirect(status: u16, location: &str) -> Self {
        Self {
            status,
            headers: vec![("Location".into(), location.into())],
            body: String::new(),
        }
    }
}

type Answering = dyn Fn(&Request) -> Answer + Send + Sync;

#[derive(Debug)]
pub struct Impostor {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// Every request answered, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

impl Impostor {
    /// Listens on a free loopback port; `answer` makes each answer.
    pub fn start(pki: &Pki, answer: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Self {
        let certs = CertificateDer::pem_slice_iter(pki.server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(pki.server.key_pem.as_bytes()).expect("key PEM");
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("impostor bind");
        let addr = listener.local_addr().expect("impostor addr");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answering> = Arc::new(answer);
        let (stop2, seen) = (stop.clone(), requests.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let (config, answer, seen) = (config.clone(), answer.clone(), seen.clone());
                std::thread::spawn(move || serve(tcp, config, &*answer, &seen));
            }
        });
        Self {
            addr,
            url: format!("https://127.0.0.1:{}", addr.port()),
            requests,
            stop,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests lock").clone()
    }
}

/// One connection: requests one after another (keep-alive) until the
/// client closes it or sends something that is not HTTP/1.1.
fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    answer: &Answering,
    seen: &Mutex<Vec<Request>>,
) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let mut line = String::new();
        match tls.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            match tls.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; 64 * 1024];
        let mut left = length;
        while left > 0 {
            let want = left.min(body.len());
            match tls.read(&mut body[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
        let request = Request {
            method,
            path,
            body_bytes: length,
        };
        let a = answer(&request);
        let head_only = request.method == "HEAD";
        seen.lock().expect("requests lock").push(request);
        if a.status == 0 {
            return;
        }
        let mut out = format!("HTTP/1.1 {} Impostor\r\n", a.status);
        for (name, value) in &a.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", a.body.len()));
        if !head_only {
            out.push_str(&a.body);
        }
        let stream = tls.get_mut();
        if stream.write_all(out.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}
