//! The hostile input corpus (issue 6): one table of every hostile request the
//! receiver must survive, run against the real binary over real TLS.
//!
//! Each case is data: a name, who connects (which certificate, if any), the
//! raw request (method, path as sent on the wire, headers, body), and the
//! expected outcome (status and `error` code per CONTRACT §4 and
//! docs/protocol.md, or a refused handshake). Requests are written by hand on
//! a rustls stream, so paths like `..` or `a%2Fb`, duplicated headers and
//! huge header blocks reach the receiver exactly as written. After every case
//! the store holds nothing, no scratch is left, and the receiver still
//! answers a ping and `/healthz`. docs/reliability.md lists every case.

use labship_tests::episode::{RawTar, digest_header, noise};
use labship_tests::pki::{Issued, Variant};
use labship_tests::process::{Receiver, ReceiverOpts};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST: &str = "lab-01";

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client over rustls (or plain TCP).

/// One request exactly as it goes on the wire.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    /// The request target, sent verbatim (no normalisation, no encoding).
    path: Vec<u8>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` in 16 KiB chunks.
    chunked: bool,
    /// Add `Content-Length: <body length>` (unless chunked).
    content_length: bool,
}

impl Req {
    /// A PUT of `body` to `/v1/episodes/<path>` with the contract's headers.
    fn put(path: &str, body: Vec<u8>) -> Self {
        Self::put_raw(format!("/v1/episodes/{path}").as_bytes(), body)
    }

    fn put_raw(target: &[u8], body: Vec<u8>) -> Self {
        Self {
            method: "PUT",
            path: target.to_vec(),
            headers: vec![
                ("X-Labship-Commit".into(), GOOD_COMMIT.into()),
                ("Content-Digest".into(), digest_header(&body)),
            ],
            body,
            chunked: false,
            content_length: true,
        }
    }

    fn ping() -> Self {
        Self {
            method: "POST",
            path: b"/v1/ping".to_vec(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
            content_length: true,
        }
    }

    /// Removes every header called `name`.
    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Adds a header line (a second one if it already exists).
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces every header called `name` by one line.
    fn set(self, name: &str, value: &str) -> Self {
        self.without(name).header(name, value)
    }

    fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    fn no_length(mut self) -> Self {
        self.content_length = false;
        self
    }

    fn head_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.path);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if self.content_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn body_bytes(&self) -> Vec<u8> {
        if !self.chunked {
            return self.body.clone();
        }
        let mut out = Vec::new();
        for chunk in self.body.chunks(16 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }
}

/// What came back.
#[derive(Debug, Clone)]
enum Outcome {
    /// A response: status and body (JSON when it parses, else `Null`).
    Answer(u16, Value),
    /// No response at all (handshake refused, connection closed or reset),
    /// and why (shown in failure messages).
    Closed(#[allow(dead_code)] String),
}

impl Outcome {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Answer(s, _) => Some(*s),
            Self::Closed(_) => None,
        }
    }
}

/// What a case must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// This status with this JSON `error` code.
    Error(u16, &'static str),
    /// This status from the HTTP layer (hyper), which writes no JSON body.
    Bare(u16),
    /// The connection is refused: no response (a rejected client certificate
    /// fails the handshake; under TLS 1.3 the client sees it on its first read).
    Refused,
}

/// rustls client config trusting the test CA, presenting `id` if given.
fn tls_config(env: &TestEnv, id: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(env.pki.ca_pem.as_bytes()) {
        roots.add(cert.expect("CA pem")).expect("add CA");
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match id {
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key pem");
            b.with_client_auth_cert(chain, key).expect("client auth")
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A connected stream, TLS or plain.
enum Stream {
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Plain(TcpStream),
}

impl Stream {
    fn open(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(15)))?;
        Ok(match tls {
            Some(config) => {
                let name = ServerName::try_from("localhost").expect("server name");
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(std::io::Error::other)?;
                Self::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
            None => Self::Plain(tcp),
        })
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Tls(s) => s.get_ref(),
            Self::Plain(s) => s,
        }
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Tls(s) => s.write_all(b).and_then(|()| s.flush()),
            Self::Plain(s) => s.write_all(b),
        }
    }

    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tls(s) => s.read(b),
            Self::Plain(s) => s.read(b),
        }
    }

    /// Reads until the peer closes; an unclean close after some bytes counts as the end.
    fn read_to_close(&mut self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if !out.is_empty() => {
                    let _ = e;
                    return Ok(out);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Sends `req` on a fresh connection and reads the answer.
fn send(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>, req: &Req) -> Outcome {
    let mut s = match Stream::open(addr, tls) {
        Ok(s) => s,
        Err(e) => return Outcome::Closed(format!("connect: {e}")),
    };
    // The receiver may answer (and stop reading) before the body is all sent;
    // a write error is not the verdict, the answer is.
    let mut wire = req.head_bytes();
    wire.extend_from_slice(&req.body_bytes());
    let write_err = s.write_all(&wire).err();
    match s.read_to_close() {
        Ok(bytes) if !bytes.is_empty() => parse_response(&bytes),
        Ok(_) => Outcome::Closed(format!("closed without an answer (write: {write_err:?})")),
        Err(e) => Outcome::Closed(format!("{e} (write: {write_err:?})")),
    }
}

fn parse_response(bytes: &[u8]) -> Outcome {
    let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Outcome::Closed(format!(
            "unparseable response: {:?}",
            String::from_utf8_lossy(bytes)
        ));
    };
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = bytes[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Outcome::Answer(status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if len == 0 || b.len() < eol + 2 + len {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[(eol + 4 + len).min(b.len())..];
    }
    out
}

// ---------------------------------------------------------------------------
// The table runner.

/// One row of the corpus.
struct Case {
    name: &'static str,
    /// The client certificate presented; `None` for none.
    id: Option<Issued>,
    req: Req,
    expect: Expect,
}

fn case(name: &'static str, req: Req, expect: Expect) -> Case {
    Case {
        name,
        id: None,
        req,
        expect,
    }
}

/// The receiver and the good client every group checks health with.
struct Bench {
    r: Receiver,
    good: Arc<rustls::ClientConfig>,
}

impl Bench {
    fn start(env: &TestEnv, opts: ReceiverOpts) -> Self {
        let r = Receiver::start_with(env, opts);
        let good = tls_config(env, Some(&env.pki.client(HOST)));
        Self { r, good }
    }

    /// Runs every case; returns the failures (empty when all pass).
    fn run(&self, env: &TestEnv, cases: Vec<Case>, default_id: bool) -> Vec<String> {
        let mut failures = Vec::new();
        for c in cases {
            let tls = match (&c.id, default_id) {
                (Some(id), _) => tls_config(env, Some(id)),
                (None, true) => self.good.clone(),
                (None, false) => tls_config(env, None),
            };
            let started = Instant::now();
            let got = send(self.r.addr, Some(&tls), &c.req);
            let took = started.elapsed();
            if let Err(why) = check(&got, c.expect) {
                failures.push(format!("{}: {why}", c.name));
            }
            if let Err(why) = self.assert_clean_and_healthy() {
                failures.push(format!("{}: afterwards {why}", c.name));
            }
            eprintln!("case {:?}: {got:?} in {took:?}", c.name);
        }
        failures
    }

    /// Nothing stored for any host, no scratch, ping and `/healthz` answer.
    fn assert_clean_and_healthy(&self) -> Result<(), String> {
        let stored = store_contents(&self.r.store);
        if !stored.is_empty() {
            return Err(format!("the store holds {stored:?}"));
        }
        // Scratch removal may trail the answer by a moment.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.r.scratch().is_empty() {
            if Instant::now() > deadline {
                return Err(format!("scratch left: {:?}", self.r.scratch()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.healthy()
    }

    fn healthy(&self) -> Result<(), String> {
        match send(self.r.addr, Some(&self.good), &Req::ping()) {
            Outcome::Answer(200, v) if v["host_id"] == HOST => {}
            other => return Err(format!("ping failed: {other:?}")),
        }
        let h = self.r.ops_get("/healthz");
        if !(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n")) {
            return Err(format!("/healthz: {h:?}"));
        }
        Ok(())
    }

    /// A good upload still succeeds (and is the only thing stored).
    fn good_put_succeeds(&self, id: &str) {
        let body = good_archive(id);
        let got = send(
            self.r.addr,
            Some(&self.good),
            &Req::put(&format!("{HOST}/{id}"), body),
        );
        assert_eq!(
            got.status(),
            Some(201),
            "good PUT after the corpus: {got:?}"
        );
        assert_eq!(
            self.r.stored(HOST),
            [format!("{id}.json"), format!("{id}.tar.zst")]
        );
    }
}

fn check(got: &Outcome, expect: Expect) -> Result<(), String> {
    match (expect, got) {
        (Expect::Error(s, code), Outcome::Answer(gs, v)) => {
            if *gs != s || v["error"] != code {
                return Err(format!("expected {s} {code}, got {gs} {v}"));
            }
            if v["message"].as_str().is_none_or(str::is_empty) {
                return Err(format!("error body without a message: {v}"));
            }
            Ok(())
        }
        (Expect::Bare(s), Outcome::Answer(gs, _)) if *gs == s => Ok(()),
        (Expect::Refused, Outcome::Closed(_)) => Ok(()),
        _ => Err(format!("expected {expect:?}, got {got:?}")),
    }
}

/// Everything under the store except the (separately checked) scratch dir.
fn store_contents(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(hosts) = std::fs::read_dir(store) else {
        return out;
    };
    for h in hosts.filter_map(Result::ok) {
        let name = h.file_name().to_string_lossy().into_owned();
        // The receiver's own: its scratch, and the lock it holds on the store.
        if name == ".scratch" || name == labship_receiver::STORAGE_LOCK {
            continue;
        }
        match std::fs::read_dir(h.path()) {
            Ok(files) => out.extend(
                files
                    .filter_map(Result::ok)
                    .map(|f| format!("{name}/{}", f.file_name().to_string_lossy())),
            ),
            Err(_) => out.push(name),
        }
    }
    out
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn good_archive(id: &str) -> Vec<u8> {
    RawTar::new()
        .dir(&format!("{id}/"))
        .meta(id, GOOD_COMMIT)
        .file(&format!("{id}/x"), b"1")
        .finish_zst()
}

fn limits(extra: &str) -> ReceiverOpts {
    ReceiverOpts {
        extra: format!("[limits]\n{extra}\n"),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Episode ids.

#[test]
fn hostile_episode_ids() {
    use Expect::*;
    let env = TestEnv::new();
    let b = Bench::start(&env, ReceiverOpts::default());
    let body = good_archive("ep");
    let p = |target: &str| Req::put_raw(target.as_bytes(), body.clone());
    let long = format!("/v1/episodes/{HOST}/{}", "x".repeat(129));
    let cases = vec![
        case(
            "id empty",
            p("/v1/episodes/lab-01/"),
            Error(404, "not_found"),
        ),
        case(
            "id .",
            p("/v1/episodes/lab-01/."),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id ..",
            p("/v1/episodes/lab-01/.."),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id %2E%2E",
            p("/v1/episodes/lab-01/%2E%2E"),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id a/b (slash)",
            p("/v1/episodes/lab-01/a/b"),
            Error(404, "not_found"),
        ),
        case(
            "id ../../x (slashes up)",
            p("/v1/episodes/lab-01/../../x"),
            Error(404, "not_found"),
        ),
        case(
            "id a%2Fb (encoded slash)",
            p("/v1/episodes/lab-01/a%2Fb"),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id ..%2F..%2Fetc (encoded traversal)",
            p("/v1/episodes/lab-01/..%2F..%2Fetc"),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "host ..%2Flab-01 (encoded traversal in host)",
            p("/v1/episodes/..%2Flab-01/ep"),
            Error(403, "host_mismatch"),
        ),
        case("id 129 chars", p(&long), Error(400, "invalid_episode_id")),
        case(
            "id unicode (percent-encoded)",
            p("/v1/episodes/lab-01/%C3%A9t%C3%A9"),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id unicode (raw UTF-8 bytes)",
            Req::put_raw("/v1/episodes/lab-01/été".as_bytes(), body.clone()),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id NUL (%00)",
            p("/v1/episodes/lab-01/ep%00"),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id newline (%0A)",
            p("/v1/episodes/lab-01/ep%0A"),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id .hidden",
            p("/v1/episodes/lab-01/.hidden"),
            Error(400, "invalid_episode_id"),
        ),
        case(
            "id -leading-dash",
            p("/v1/episodes/lab-01/-ep"),
            Error(400, "invalid_episode_id"),
        ),
    ];
    assert_no_failures(b.run(&env, cases, true));
    b.good_put_succeeds("ep");
}

// ---------------------------------------------------------------------------
// Headers.

#[test]
fn hostile_headers() {
    use Expect::*;
    let env = TestEnv::new();
    let b = Bench::start(&env, ReceiverOpts::default());
    let body = good_archive("ep");
    let p = || Req::put(&format!("{HOST}/ep"), body.clone());
    let wrong = digest_header(b"other bytes");
    let sha512 = format!(
        "sha-512=:{}:",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 64])
    );
    let many: Vec<(String, String)> = (0..2_000)
        .map(|i| (format!("X-Filler-{i}"), "f".repeat(200)))
        .collect();
    let mut huge_block = p();
    huge_block.headers.extend(many);
    let cases = vec![
        case(
            "Content-Digest missing",
            p().without("Content-Digest"),
            Error(400, "digest_missing"),
        ),
        case(
            "X-Labship-Commit missing",
            p().without("X-Labship-Commit"),
            Error(400, "stamp_missing"),
        ),
        case(
            "X-Labship-Commit malformed",
            p().set("X-Labship-Commit", "ABCDEF"),
            Error(400, "stamp_malformed"),
        ),
        case(
            "X-Labship-Commit duplicated, both malformed",
            p().set("X-Labship-Commit", "x")
                .header("X-Labship-Commit", "x"),
            Error(400, "stamp_malformed"),
        ),
        case(
            "Content-Digest duplicated, both malformed",
            p().set("Content-Digest", "sha-256=abc")
                .header("Content-Digest", "sha-256=abc"),
            Error(400, "digest_missing"),
        ),
        case(
            "Content-Digest malformed (not base64)",
            p().set("Content-Digest", "sha-256=:nope!:"),
            Error(400, "digest_missing"),
        ),
        case(
            "Content-Digest malformed (no colons)",
            p().set("Content-Digest", "sha-256=abc"),
            Error(400, "digest_missing"),
        ),
        case(
            "Content-Digest malformed (16 bytes)",
            p().set("Content-Digest", "sha-256=:AAAAAAAAAAAAAAAAAAAAAA==:"),
            Error(400, "digest_missing"),
        ),
        case(
            "Content-Digest wrong algorithm (sha-512)",
            p().set("Content-Digest", &sha512),
            Error(400, "digest_missing"),
        ),
        case(
            "Content-Digest of other bytes",
            p().set("Content-Digest", &wrong),
            Error(400, "digest_mismatch"),
        ),
        case(
            "Content-Length duplicated, values differ",
            p().header("Content-Length", "1"),
            Bare(400),
        ),
        case(
            "Content-Length not a number",
            p().no_length().header("Content-Length", "12x"),
            Bare(400),
        ),
        case("huge header block (2,000 x 200 B)", huge_block, Bare(431)),
        case(
            "one 1 MB header",
            p().header("X-Big", &"b".repeat(1 << 20)),
            Bare(431),
        ),
    ];
    assert_no_failures(b.run(&env, cases, true));
    b.good_put_succeeds("ep");
}

/// Two `X-Labship-Commit` or two `Content-Digest` lines that disagree make the
/// request ambiguous (RFC 9530 combines field lines into one dictionary, in
/// which the *last* `sha-256` member wins; the receiver used to read only the
/// first line and store). Fail closed: refuse it with 400, store nothing.
#[test]
fn conflicting_duplicated_contract_headers_are_refused() {
    use Expect::*;
    let env = TestEnv::new();
    let b = Bench::start(&env, ReceiverOpts::default());
    let p = |id: &str| Req::put(&format!("{HOST}/{id}"), good_archive(id));
    let cases = vec![
        case(
            "X-Labship-Commit duplicated, values differ",
            p("ep-a").header("X-Labship-Commit", OLD_COMMIT),
            Error(400, "stamp_malformed"),
        ),
        case(
            "Content-Digest duplicated, values differ",
            p("ep-b").header("Content-Digest", &digest_header(b"other bytes")),
            Error(400, "digest_missing"),
        ),
    ];
    assert_no_failures(b.run(&env, cases, true));
    b.good_put_succeeds("ep");
}

// ---------------------------------------------------------------------------
// Archives.

/// A zstd archive whose tar holds `before`'s entries, then one regular entry
/// `path` of `size` bytes of `fill`, then `after`'s, compressed as it is
/// written (nothing of `size` is ever held in memory).
fn streamed_archive(before: RawTar, path: &str, size: u64, fill: u8, after: RawTar) -> Vec<u8> {
    let strip = |t: RawTar| {
        let mut b = t.finish();
        b.truncate(b.len() - 1024);
        b
    };
    let mut enc = zstd::Encoder::new(Vec::new(), 1).expect("zstd");
    enc.write_all(&strip(before)).expect("zstd");
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_cksum();
    enc.write_all(h.as_bytes()).expect("zstd");
    let block = vec![fill; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        enc.write_all(&block[..n]).expect("zstd");
        left -= n as u64;
    }
    enc.write_all(&vec![0u8; ((512 - size % 512) % 512) as usize])
        .expect("zstd");
    let mut tail = after.finish();
    let end = tail.len();
    enc.write_all(&tail[..end]).expect("zstd");
    tail.clear();
    enc.finish().expect("zstd")
}

#[test]
fn hostile_archives() {
    use Expect::*;
    use tar::EntryType as T;
    let env = TestEnv::new();
    // 1 MB compressed, 10 MB unpacked: the bomb and the chunked body cross them.
    let b = Bench::start(
        &env,
        limits("max_episode_bytes = 1000000\nmax_unpacked_bytes = 10000000"),
    );
    let good = || RawTar::new().dir("ep/").meta("ep", GOOD_COMMIT);
    let p = |body: Vec<u8>| Req::put(&format!("{HOST}/ep"), body);
    let inv = Error(400, "archive_invalid");
    let pax = |records: &str| {
        let data = pax_records(records);
        good()
            .entry(b"ep/PaxHeaders/x", T::XHeader, &data)
            .file("ep/x", b"1")
            .finish_zst()
    };
    let meta_100mb = streamed_archive(
        RawTar::new().dir("ep/"),
        "ep/meta.json",
        100 << 20,
        b' ',
        RawTar::new(),
    );
    let bomb = streamed_archive(good(), "ep/zeros", 50 << 20, 0, RawTar::new());
    assert!(meta_100mb.len() < 100_000 && bomb.len() < 100_000);
    let cases = vec![
        case("zero-length body", p(Vec::new()), inv),
        case("not zstd", p(b"hello, this is not zstd".to_vec()), inv),
        case(
            "truncated zstd",
            p({
                let z = good().file("ep/a", &noise(50_000, 3)).finish_zst();
                z[..z.len() / 2].to_vec()
            }),
            inv,
        ),
        case(
            "trailing garbage after the zstd frame",
            p({
                let mut z = good().finish_zst();
                z.extend_from_slice(b"garbage!");
                z
            }),
            inv,
        ),
        case(
            "a zstd frame declaring 63,232 bytes that holds none (a fuzzing find)",
            p({
                // Frame header: single segment, 2-byte content size; then one
                // empty raw last block. libzstd's streaming decoder lets it
                // pass; the `zstd` tool calls it corrupt.
                let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0xf6, 0x01, 0x00, 0x00];
                z.extend_from_slice(&good().finish_zst());
                z
            }),
            inv,
        ),
        case(
            "non-zero data after the tar end",
            p({
                let mut t = good().finish();
                t.extend_from_slice(&[1u8; 512]);
                labship_tests::episode::zst(&t)
            }),
            inv,
        ),
        case(
            "not tar",
            p(labship_tests::episode::zst(&noise(4096, 9))),
            inv,
        ),
        case(
            "entry outside <id>/",
            p(good().file("other/x", b"1").finish_zst()),
            inv,
        ),
        case(
            "entry in a sibling with the id as prefix (ep2/)",
            p(good().file("ep2/x", b"1").finish_zst()),
            inv,
        ),
        case(
            "absolute path",
            p(RawTar::new()
                .file("/ep/x", b"1")
                .meta("ep", GOOD_COMMIT)
                .finish_zst()),
            inv,
        ),
        case(
            "dotdot component",
            p(good().file("ep/../../etc/x", b"1").finish_zst()),
            inv,
        ),
        case(
            "dot and empty components",
            p(good().file("ep/.//x", b"1").finish_zst()),
            inv,
        ),
        case(
            "pax path record pointing outside",
            p(pax("path=../../etc/passwd")),
            inv,
        ),
        case(
            "GNU long name with ..",
            p(good()
                .entry(
                    b"././@LongLink",
                    T::GNULongName,
                    format!("ep/../{}\0", "d".repeat(120)).as_bytes(),
                )
                .file("ep/x", b"1")
                .finish_zst()),
            inv,
        ),
        case(
            "GNU long name with no entry after it (a fuzzing find)",
            p(good()
                .entry(
                    b"././@LongLink",
                    T::GNULongName,
                    format!("ep/{}\0", "d".repeat(120)).as_bytes(),
                )
                .finish_zst()),
            inv,
        ),
        case(
            "pax header with no entry after it",
            p(good()
                .entry(b"ep/PaxHeaders/x", T::XHeader, &pax_records("path=ep/y"))
                .finish_zst()),
            inv,
        ),
        case(
            "symlink",
            p(good().entry(b"ep/s", T::Symlink, b"").finish_zst()),
            inv,
        ),
        case(
            "hardlink",
            p(good().entry(b"ep/h", T::Link, b"").finish_zst()),
            inv,
        ),
        case(
            "char device",
            p(good().entry(b"ep/c", T::Char, b"").finish_zst()),
            inv,
        ),
        case(
            "block device",
            p(good().entry(b"ep/d", T::Block, b"").finish_zst()),
            inv,
        ),
        case(
            "fifo",
            p(good().entry(b"ep/f", T::Fifo, b"").finish_zst()),
            inv,
        ),
        case(
            "duplicate entries",
            p(good().file("ep/x", b"1").file("ep/x", b"2").finish_zst()),
            inv,
        ),
        case(
            "duplicate meta.json (second one unstamped)",
            p(good().file("ep/meta.json", b"{}").finish_zst()),
            inv,
        ),
        case(
            "entries out of order",
            p(good().file("ep/z", b"1").file("ep/a", b"2").finish_zst()),
            inv,
        ),
        case(
            "a file used as a parent",
            p(good().file("ep/f", b"1").file("ep/f/x", b"2").finish_zst()),
            inv,
        ),
        case(
            "meta.json missing",
            p(RawTar::new().dir("ep/").file("ep/x", b"1").finish_zst()),
            inv,
        ),
        case(
            "meta.json is a directory",
            p(RawTar::new().dir("ep/").dir("ep/meta.json/").finish_zst()),
            inv,
        ),
        case(
            "meta.json not an object",
            p(RawTar::new()
                .dir("ep/")
                .file("ep/meta.json", b"[1,2]")
                .finish_zst()),
            inv,
        ),
        case(
            "meta.json not JSON",
            p(RawTar::new()
                .dir("ep/")
                .file("ep/meta.json", b"{nope")
                .finish_zst()),
            inv,
        ),
        case("meta.json 100 MB", p(meta_100mb), inv),
        case(
            "meta.json stamp differs from the header",
            p(RawTar::new().dir("ep/").meta("ep", OLD_COMMIT).finish_zst()),
            Error(400, "stamp_mismatch"),
        ),
        case(
            "decompression bomb (50 MB of zeros, limit 10 MB)",
            p(bomb),
            Error(413, "too_large"),
        ),
        case(
            "declared Content-Length over the limit",
            p(good().file("ep/r", &noise(1_100_000, 5)).finish_zst()),
            Error(413, "too_large"),
        ),
        case(
            "chunked body past the size limit",
            p(good().file("ep/r", &noise(1_500_000, 6)).finish_zst()).chunked(),
            Error(413, "too_large"),
        ),
        case(
            "extension header over 64 KiB",
            p(good()
                .entry(b"././@LongLink", T::GNULongName, &vec![b'a'; 100_000])
                .file("ep/x", b"1")
                .finish_zst()),
            inv,
        ),
    ];
    // Archives tar readers unpack otherwise than the receiver reads them, and
    // setuid/setgid/sticky bits (issue 16; tests/tests/tar_readers.rs runs
    // them through Python's tarfile, GNU tar and bsdtar).
    let readers = labship_tests::tar_cases::cases()
        .into_iter()
        .filter(|c| c.verdict == labship_tests::tar_cases::Verdict::Refuse)
        .map(|c| {
            case(
                c.name,
                p(labship_tests::episode::zst(&(c.build)("ep"))),
                inv,
            )
        });
    let cases: Vec<Case> = cases.into_iter().chain(readers).collect();
    assert_no_failures(b.run(&env, cases, true));
    b.good_put_succeeds("ep");
}

/// pax extended-header records (`"<len> key=value\n"`), one per line of `records`.
fn pax_records(records: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in records.lines() {
        // The length counts itself: find the fixed point.
        let mut len = kv.len() + 3;
        while format!("{len} {kv}\n").len() != len {
            len = format!("{len} {kv}\n").len();
        }
        out.extend_from_slice(format!("{len} {kv}\n").as_bytes());
    }
    out
}

// ---------------------------------------------------------------------------
// Identities: certificates and bearer tokens.

#[test]
fn hostile_identities() {
    use Expect::*;
    let env = TestEnv::new();
    let b = Bench::start(&env, ReceiverOpts::default());
    let put = || Req::put(&format!("{HOST}/ep"), good_archive("ep"));
    let with = |name, id: Issued, req, expect| Case {
        name,
        id: Some(id),
        req,
        expect,
    };
    let pki = &env.pki;
    let cases = vec![
        case("no client certificate", put(), Refused),
        with("rogue CA", pki.rogue_client(HOST), put(), Refused),
        with(
            "expired certificate",
            pki.client_variant(HOST, Variant::Expired),
            put(),
            Refused,
        ),
        with(
            "not-yet-valid certificate",
            pki.client_variant(HOST, Variant::NotYetValid),
            put(),
            Refused,
        ),
        with(
            "serverAuth-only EKU",
            pki.client_variant(HOST, Variant::ServerAuthOnly),
            put(),
            Refused,
        ),
        with(
            "the server's own certificate as a client",
            pki.server.clone(),
            put(),
            Refused,
        ),
        with(
            "another host's certificate (PUT)",
            pki.client("lab-02"),
            put(),
            Error(403, "host_mismatch"),
        ),
        with(
            "another host's certificate (HEAD)",
            pki.client("lab-02"),
            Req {
                method: "HEAD",
                ..put()
            },
            Bare(403),
        ),
        with(
            "another host's SAN-only certificate",
            pki.client_variant("lab-02", Variant::SanOnly),
            put(),
            Error(403, "host_mismatch"),
        ),
        with(
            "a certificate plus a bearer header for this host (cert wins)",
            pki.client("lab-02"),
            put().header("Authorization", "Bearer tok-lab-01"),
            Error(403, "host_mismatch"),
        ),
    ];
    let mut failures = b.run(&env, cases, false);
    drop(b);

    // Bearer tokens: a second receiver with `auth.tokens_file` (client
    // certificates become optional at the handshake).
    let env2 = TestEnv::new();
    let tokens = env2.file("receiver/tokens");
    std::fs::write(
        &tokens,
        format!(
            "lab-01 {}\nlab-02 {}\n",
            sha256_hex(b"tok-lab-01"),
            sha256_hex(b"tok-lab-02")
        ),
    )
    .unwrap();
    let b2 = Bench::start(
        &env2,
        ReceiverOpts {
            tokens_file: Some(tokens),
            ..Default::default()
        },
    );
    let cases = vec![
        case("token: none", put(), Error(401, "unauthenticated")),
        case(
            "token: wrong",
            put().header("Authorization", "Bearer wrong"),
            Error(401, "unauthenticated"),
        ),
        case(
            "token: another host's",
            put().header("Authorization", "Bearer tok-lab-02"),
            Error(403, "host_mismatch"),
        ),
        case(
            "token: the hash itself",
            put().header(
                "Authorization",
                &format!("Bearer {}", sha256_hex(b"tok-lab-01")),
            ),
            Error(401, "unauthenticated"),
        ),
        case(
            "token: empty bearer",
            put().header("Authorization", "Bearer "),
            Error(401, "unauthenticated"),
        ),
        case(
            "token: Basic scheme",
            put().header("Authorization", "Basic bGFiLTAxOnRvay1sYWItMDE="),
            Error(401, "unauthenticated"),
        ),
        Case {
            name: "token: right token but a rogue certificate",
            id: Some(env2.pki.rogue_client(HOST)),
            req: put().header("Authorization", "Bearer tok-lab-01"),
            expect: Refused,
        },
    ];
    failures.extend(b2.run(&env2, cases, false));
    assert_no_failures(failures);
    b2.good_put_succeeds("ep");
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Connections.

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A read on a socket the receiver cut: end of stream, or a reset or an
/// abrupt TLS end. A read timeout (`WouldBlock`/`TimedOut`) or data means the
/// receiver kept the connection open: that fails.
fn assert_closed(read: std::io::Result<usize>, what: &str) {
    use std::io::ErrorKind::*;
    match read {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe
            ) => {}
        other => panic!("{what} not closed by the receiver: read gave {other:?}"),
    }
}

#[test]
fn hostile_connections() {
    let env = TestEnv::new();
    let b = Bench::start(
        &env,
        limits("handshake_timeout_s = 1\nheader_timeout_s = 1\nbody_idle_timeout_s = 1"),
    );
    let r = &b.r;
    b.healthy().unwrap();
    let baseline = open_fds(r.child.id());

    // 60 idle sockets (30 silent TCP, 30 finished TLS handshakes that never
    // send a request): a ping still answers at once.
    let idle_tcp: Vec<_> = (0..30)
        .map(|_| TcpStream::connect(r.addr).unwrap())
        .collect();
    let mut idle_tls: Vec<Stream> = (0..30)
        .map(|_| {
            let mut s = Stream::open(r.addr, Some(&b.good)).unwrap();
            if let Stream::Tls(t) = &mut s {
                while t.conn.is_handshaking() {
                    t.conn.complete_io(&mut t.sock).unwrap();
                }
            }
            s
        })
        .collect();
    let t = Instant::now();
    b.healthy().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "ping took {:?} beside 60 idle sockets",
        t.elapsed()
    );
    // All 60 are cut by the handshake/header timeouts.
    for mut s in idle_tcp {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_closed(s.read(&mut [0u8; 8]), "idle TCP");
    }
    for s in &mut idle_tls {
        let mut buf = [0u8; 8];
        assert_closed(s.read(&mut buf), "idle TLS");
    }
    drop(idle_tls);

    eprintln!("60 idle sockets cut after {:?}", t.elapsed());

    // Slowloris: request headers one byte every 100 ms are cut by the header timeout.
    let mut s = Stream::open(r.addr, Some(&b.good)).unwrap();
    let head = Req::put(&format!("{HOST}/ep"), good_archive("ep")).head_bytes();
    let t = Instant::now();
    let mut cut = false;
    for byte in head.iter().cycle().take(200) {
        if s.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if t.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    if !cut {
        // The write side may still be open; the read side must show the close.
        s.tcp()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        cut = matches!(s.read(&mut [0u8; 64]), Ok(0) | Err(_));
    }
    assert!(cut, "slowloris headers not cut within {:?}", t.elapsed());
    eprintln!("slowloris cut after {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "slowloris cut after {:?}",
        t.elapsed()
    );
    drop(s);

    // A body that stops after the headers: 503 busy after body_idle_timeout_s, scratch removed.
    let full = good_archive("slow");
    let mut s = Stream::open(r.addr, Some(&b.good)).unwrap();
    let req = Req::put(&format!("{HOST}/slow"), full.clone());
    s.write_all(&req.head_bytes()).unwrap();
    s.write_all(&full[..full.len() / 2]).unwrap();
    let t = Instant::now();
    let got = s
        .read_to_close()
        .map(|b| parse_response(&b))
        .unwrap_or_else(Outcome::Closed);
    assert!(
        matches!(&got, Outcome::Answer(503, v) if v["error"] == "busy"),
        "stalled body: {got:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    b.assert_clean_and_healthy().unwrap();
    eprintln!("stalled body answered after {:?}", t.elapsed());

    // 1,000 connections opened and dropped (five waves of 200; every other one
    // sends a partial TLS ClientHello first), then healthy and no fd leak.
    // All from 127.0.0.1, so limits.max_connections_per_address (256) is in
    // play: while the receiver still holds a wave's dropped sockets, the next
    // wave's are refused at accept. The checks below wait for the drain.
    let pid = r.child.id();
    let t = Instant::now();
    for wave in 0..5 {
        if wave == 4 {
            wait_for(
                "the first 800 connections to close",
                Duration::from_secs(5),
                || open_fds(pid) <= baseline,
            );
        }
        let socks: Vec<_> = (0..200)
            .map(|i| {
                let mut s = TcpStream::connect(r.addr).unwrap();
                if i % 2 == 0 {
                    let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
                }
                s
            })
            .collect();
        if wave == 4 {
            // The count is real: held sockets show up as receiver fds (not
            // all 200: the first may already be cut by the 1 s handshake
            // timeout when the machine is busy).
            // On a busy machine the accept loop may lag the connects: sample
            // for up to 3 s and keep the highest count.
            let mut peak = open_fds(pid);
            let until = Instant::now() + Duration::from_secs(3);
            while peak <= baseline + 20 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
                peak = peak.max(open_fds(pid));
            }
            eprintln!("fds while 200 sockets are held: {peak}");
            assert!(peak > baseline + 20, "fd count blind: {peak} vs {baseline}");
        }
        drop(socks);
    }
    eprintln!("1,000 connections opened and dropped in {:?}", t.elapsed());
    wait_for(
        "the receiver's fds to return to baseline",
        Duration::from_secs(5),
        || open_fds(pid) <= baseline,
    );
    b.healthy().unwrap();
    eprintln!(
        "fds before {baseline}, after 1,000 dropped connections {} ({:?})",
        open_fds(pid),
        t.elapsed()
    );
    wait_for("labship_connections_open 0", Duration::from_secs(5), || {
        r.ops_get("/metrics").contains("labship_connections_open 0")
    });
    b.assert_clean_and_healthy().unwrap();
    b.good_put_succeeds("ep");
}
