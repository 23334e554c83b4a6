//! The receiver's front door (issue 16: item 4 and four items of 6), against
//! the real binary on loopback: one address flooding the accept slots, the
//! wait for a TLS ClientHello, uploads dripping below the rate floor,
//! revoked client certificates (`tls.crl_file`, re-read on SIGHUP), and
//! `receiver --check-config` with its warning about a public ops listener.
//! (The gate's reload race is a unit test in `receiver/src/gate.rs`.)

use labship_tests::episode::{RawTar, digest_header, noise};
use labship_tests::pki::Issued;
use labship_tests::process::{Daemon, Receiver, ReceiverOpts, free_port, run};
use labship_tests::{GOOD_COMMIT, TestEnv, shipper_toml};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const HOST: &str = "lab-01";

fn with_limits(env: &TestEnv, limits: &str) -> Receiver {
    Receiver::start_with(
        env,
        ReceiverOpts {
            extra: format!("[limits]\n{limits}\n"),
            ..Default::default()
        },
    )
}

/// `shipper --ping` as host `host` with identity `id`: (exit code, output).
fn shipper_ping(env: &TestEnv, r: &Receiver, host: &str, id: &Issued) -> (i32, String) {
    let cfg = env.file(&format!("shipper-{host}.toml"));
    let data = env.path().join(format!("lab-{host}"));
    std::fs::write(&cfg, shipper_toml(env, host, &r.url, &data, id, "")).expect("shipper.toml");
    let cfg = cfg.to_str().expect("a UTF-8 path");
    let (code, out, err) = run("shipper", &["--config", cfg, "--ping"]);
    (code, format!("{out}{err}"))
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// One address flooding the accept slots.

/// Raises this process's soft limit on open files to at least `want` (up to
/// the hard limit); returns the soft limit now in force.
fn raise_open_files(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    if soft >= want {
        return soft;
    }
    let raised = want.min(now.maximum.unwrap_or(u64::MAX));
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: now.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A TCP connection to `to` from the loopback address `from`, that sends nothing.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback source address");
    let stream = socket.connect(to).await.expect("connect");
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(true).expect("nonblocking");
    stream
}

/// Whether the receiver has closed `s` (EOF or reset), without blocking.
fn closed_by_peer(mut s: &std::net::TcpStream) -> bool {
    match s.read(&mut [0u8; 16]) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Regression (issue 16, item 4): 1,100 TCP connections from one address
/// that never start TLS used to fill all 1,024 accept slots for the whole
/// handshake timeout, locking every host out. Now that address gets
/// `limits.max_connections_per_address` (default 256) slots and the rest are
/// closed at once, so a host on another address still pings, while the flood
/// holds its sockets.
#[tokio::test]
async fn a_flood_from_one_address_never_locks_out_another() {
    const FLOOD: usize = 1_100;
    const PER_ADDRESS: usize = 256; // the default
    let limit = raise_open_files(FLOOD as u64 + 512);
    assert!(
        limit >= FLOOD as u64 + 256,
        "need {} open files for the flood, the hard limit allows {limit}",
        FLOOD + 256
    );
    let env = TestEnv::new();
    // The global cap and the per-address cap are the defaults; the
    // ClientHello wait is the old handshake timeout, so the flood holds its
    // slots for as long as it ever could.
    let r = with_limits(
        &env,
        "client_hello_timeout_s = 10\nhandshake_timeout_s = 10",
    );
    let id = env.pki.client(HOST);

    let t = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(connect_from([127, 0, 0, 2], r.addr).await);
    }
    eprintln!("{FLOOD} connections from 127.0.0.2 in {:?}", t.elapsed());

    // A real shipper on 127.0.0.1, and a request over mutual TLS.
    let t = Instant::now();
    let (code, out) = shipper_ping(&env, &r, HOST, &id);
    assert_eq!(
        code,
        0,
        "shipper --ping beside the flood: {out}\n{}",
        r.log_text()
    );
    eprintln!("shipper --ping beside the flood: {:?}", t.elapsed());
    let resp = env
        .client(Some(&id))
        .post(format!("{}/v1/ping", r.url))
        .send()
        .await
        .expect("ping beside the flood");
    assert_eq!(resp.status(), 200);

    // The flood: exactly PER_ADDRESS sockets held, every other one accepted
    // and closed at once.
    let mut dropped = 0;
    wait_until(
        "the refused flood sockets to close",
        Duration::from_secs(10),
        || {
            dropped = flood.iter().filter(|s| closed_by_peer(s)).count();
            dropped == FLOOD - PER_ADDRESS
        },
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "the flood's hold expired before the checks: {:?}",
        t.elapsed()
    );
    eprintln!(
        "flood: {dropped} accepted then closed, {} held",
        FLOOD - dropped
    );
    let metrics = r.ops_get("/metrics");
    assert!(
        metrics.contains(&format!(
            "labship_connections_refused_total {}",
            FLOOD - PER_ADDRESS
        )),
        "{metrics}"
    );
    // Refusals are logged, but not one line each.
    let log = r.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("limits.max_connections_per_address reached"))
        .collect::<Vec<_>>();
    assert!(!lines.is_empty() && lines.len() <= 3, "{lines:#?}");
    assert!(lines[0].contains("source=127.0.0.2"), "{}", lines[0]);
    drop(flood);
}

/// Regression (issue 16, item 4): a connection that sends no ClientHello,
/// or only part of one, is closed after `limits.client_hello_timeout_s`
/// (default 5 s), not the whole `limits.handshake_timeout_s` (10 s).
#[tokio::test]
async fn silent_sockets_are_cut_at_the_client_hello_timeout() {
    use std::io::Write as _;
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let silent = connect_from([127, 0, 0, 1], r.addr).await;
    let mut partial = connect_from([127, 0, 0, 1], r.addr).await;
    // A TLS record header announcing a 512-byte handshake message, then nothing.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let t = Instant::now();
    let (mut silent_at, mut partial_at) = (None, None);
    wait_until("both sockets closed", Duration::from_secs(9), || {
        if silent_at.is_none() && closed_by_peer(&silent) {
            silent_at = Some(t.elapsed());
        }
        if partial_at.is_none() && closed_by_peer(&partial) {
            partial_at = Some(t.elapsed());
        }
        silent_at.is_some() && partial_at.is_some()
    })
    .await;
    eprintln!("closed after: silent {silent_at:?}, partial ClientHello {partial_at:?}");
    for at in [silent_at, partial_at].into_iter().flatten() {
        assert!(at > Duration::from_millis(4_500), "{at:?}");
        assert!(at < Duration::from_secs(8), "{at:?}");
    }
    // And a real client, meanwhile, is unaffected.
    let resp = env
        .client(Some(&env.pki.client(HOST)))
        .post(format!("{}/v1/ping", r.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

// ---------------------------------------------------------------------------
// The upload rate floor.

fn archive(id: &str, random: usize) -> Vec<u8> {
    RawTar::new()
        .dir(&format!("{id}/"))
        .file(&format!("{id}/data"), &noise(random, 7))
        .meta(id, GOOD_COMMIT)
        .finish_zst()
}

/// Starts a PUT whose body arrives only as the test feeds the returned sender.
fn fed_put(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    full: &[u8],
) -> (
    mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<Result<u16, String>>,
) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let req = c
        .put(format!("{url}/v1/episodes/{HOST}/{id}"))
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(full))
        .body(reqwest::Body::wrap_stream(stream));
    let task = tokio::spawn(async move {
        req.send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    });
    (tx, task)
}

/// Regression (issue 16, item 6): an authenticated client sending a byte
/// every 200 ms (under `body_idle_timeout_s`, so the idle timeout never
/// fires) used to hold an upload permit for ever. Below the floor
/// (`min_upload_rate_bytes_per_s` over `min_upload_rate_window_s`) it is
/// cut at the end of its first window, as a stalled body is: 503 `busy`,
/// an audit line, scratch removed; the permit goes to the next upload.
#[tokio::test]
async fn an_upload_dripping_below_the_floor_is_cut_and_frees_its_permit() {
    let env = TestEnv::new();
    let r = with_limits(
        &env,
        "max_concurrent_uploads = 1\nmin_upload_rate_bytes_per_s = 1000\nmin_upload_rate_window_s = 2\nbody_idle_timeout_s = 2",
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let full = archive("drip", 200_000);
    let (tx, task) = fed_put(&c, &r.url, "drip", &full);
    tx.send(full[..100].to_vec()).await.unwrap();
    wait_until("the drip upload in flight", Duration::from_secs(10), || {
        !r.scratch().is_empty()
    })
    .await;
    let t = Instant::now();
    let drip = tokio::spawn(async move {
        for b in &full[100..] {
            if tx.send(vec![*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the drip is cut")
        .unwrap();
    eprintln!("drip answered {answer:?} after {:?}", t.elapsed());
    assert!(matches!(answer, Ok(503) | Err(_)), "{answer:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        t.elapsed()
    );
    drip.abort();
    wait_until("scratch removed", Duration::from_secs(5), || {
        r.scratch().is_empty()
    })
    .await;
    let audit = r.audit_records();
    let last = audit.last().expect("an audit line");
    assert_eq!(
        (last["status"].as_u64(), last["error"].as_str()),
        (Some(503), Some("busy")),
        "{audit:?}"
    );
    assert!(
        r.log_text()
            .contains("body slower than limits.min_upload_rate_bytes_per_s (1000 B/s)"),
        "{}",
        r.log_text()
    );
    // The single upload permit is free again.
    let good = archive("next", 1_000);
    let resp =
        labship_tests::process::put_episode(&c, &r.url, HOST, "next", GOOD_COMMIT, good).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(r.stored(HOST), ["next.json", "next.tar.zst"]);
}

/// The floor never cuts a real slow link: about 10 kB/s for 4 s against a
/// floor of 500 B/s over 1 s windows (the defaults keep the same 20x
/// margin: 512 B/s against a bad lab link's 10 kB/s) is stored.
#[tokio::test]
async fn an_upload_on_a_slow_link_above_the_floor_is_stored() {
    let env = TestEnv::new();
    let r = with_limits(
        &env,
        "min_upload_rate_bytes_per_s = 500\nmin_upload_rate_window_s = 1\nbody_idle_timeout_s = 1",
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let full = archive("slow", 40_000);
    let (tx, task) = fed_put(&c, &r.url, "slow", &full);
    let t = Instant::now();
    for chunk in full.chunks(1_000) {
        tx.send(chunk.to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(tx);
    let answer = task.await.unwrap();
    eprintln!(
        "{} bytes at ~10 kB/s: {answer:?} after {:?}",
        full.len(),
        t.elapsed()
    );
    assert_eq!(answer, Ok(201), "{}", r.log_text());
}

// ---------------------------------------------------------------------------
// Certificate revocation.

/// Writes `text` to `path` atomically (as an operator's `mv` would).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Sends SIGHUP and waits for the receiver to log `needle` once more.
async fn sighup(r: &Receiver, needle: &str) {
    let before = r.log_text().matches(needle).count();
    r.signal(1);
    wait_until(needle, Duration::from_secs(10), || {
        r.log_text().matches(needle).count() > before
    })
    .await;
}

/// Issue 16, item 6: `tls.crl_file` (PEM CRLs) refuses revoked client
/// certificates at the handshake, logged with the reason, the peer address,
/// the host and the serial; SIGHUP re-reads it; a bad new CRL keeps the old
/// material and logs why, naming the key and the file.
#[tokio::test]
async fn revoked_certificates_are_refused_and_sighup_rereads_the_crl() {
    let env = TestEnv::new();
    let a = env.pki.client("lab-01");
    let b = env.pki.client("lab-02");
    let c = env.pki.client("lab-03");
    let crl = env.file("pki/crl.pem");
    std::fs::write(&crl, env.pki.crl(&[&a])).unwrap();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            crl_file: Some(crl.clone()),
            ..Default::default()
        },
    );
    let (code, out) = shipper_ping(&env, &r, "lab-01", &a);
    assert_eq!(code, 3, "revoked lab-01: {out}");
    let (code, out) = shipper_ping(&env, &r, "lab-02", &b);
    assert_eq!(code, 0, "lab-02: {out}\n{}", r.log_text());
    // As openssl prints it: hex bytes joined by colons, no leading zero bytes.
    let serial = a
        .serial
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let serial = format!("serial=\"{serial}\"");
    let log = r.log_text();
    let refused = log
        .lines()
        .find(|l| l.contains("tls handshake refused a client certificate"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    for needle in [
        "reason=\"revoked\"",
        "peer=127.0.0.1:",
        "host=\"lab-01\"",
        &serial,
    ] {
        assert!(refused.contains(needle), "{needle:?} not in {refused}");
    }

    // A new CRL revoking lab-02 too, picked up on SIGHUP.
    replace(&crl, &env.pki.crl(&[&a, &b]));
    sighup(&r, "tls material reloaded").await;
    let (code, out) = shipper_ping(&env, &r, "lab-02", &b);
    assert_eq!(code, 3, "lab-02 after the new CRL: {out}");
    let (code, out) = shipper_ping(&env, &r, "lab-03", &c);
    assert_eq!(code, 0, "lab-03: {out}");

    // A bad new CRL: the old material stays (lab-03 in, lab-01 and lab-02 out).
    replace(
        &crl,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    );
    sighup(&r, "tls material rejected").await;
    let log = r.log_text();
    let rejected = log
        .lines()
        .rfind(|l| l.contains("tls material rejected"))
        .unwrap();
    assert!(
        rejected.contains("tls.crl_file") && rejected.contains(crl.to_str().unwrap()),
        "{rejected}"
    );
    assert_eq!(shipper_ping(&env, &r, "lab-03", &c).0, 0);
    assert_eq!(shipper_ping(&env, &r, "lab-01", &a).0, 3);
    assert_eq!(shipper_ping(&env, &r, "lab-02", &b).0, 3);
}

/// The revocation runbook as an operator follows it on a running receiver:
/// `crl_file` added to receiver.toml's [tls], then a reload (SIGHUP): the
/// revoked host is refused from then on. A receiver.toml that no longer
/// loads on a later reload keeps the material in force.
#[tokio::test]
async fn a_crl_file_added_to_the_config_applies_on_reload() {
    let env = TestEnv::new();
    let a = env.pki.client("lab-01");
    let b = env.pki.client("lab-02");
    let r = Receiver::start(&env);
    assert_eq!(shipper_ping(&env, &r, "lab-01", &a).0, 0, "before any CRL");
    let crl = env.file("pki/crl.pem");
    std::fs::write(&crl, env.pki.crl(&[&a])).unwrap();
    let text = std::fs::read_to_string(&r.config).unwrap();
    assert!(text.contains("[tls]\n"), "{text}");
    replace(
        &r.config,
        &text.replacen("[tls]\n", &format!("[tls]\ncrl_file = {crl:?}\n"), 1),
    );
    sighup(&r, "tls material reloaded").await;
    let (code, out) = shipper_ping(&env, &r, "lab-01", &a);
    assert_eq!(code, 3, "revoked lab-01 after the reload: {out}");
    assert_eq!(shipper_ping(&env, &r, "lab-02", &b).0, 0);

    // A broken receiver.toml: nothing changes, and the log says why.
    replace(&r.config, "listen = [broken\n");
    sighup(&r, "tls material rejected").await;
    assert_eq!(shipper_ping(&env, &r, "lab-01", &a).0, 3);
    assert_eq!(shipper_ping(&env, &r, "lab-02", &b).0, 0);
}

/// A `crl_file` without the CRL of one of the client CAs would lock out
/// every host that CA issued (rustls refuses an unknown revocation status):
/// a config error naming the CA, at `--check-config` as at start.
#[test]
fn a_crl_file_missing_a_client_cas_crl_is_a_config_error() {
    let env = TestEnv::new();
    let crl = env.file("pki/crl.pem");
    std::fs::write(&crl, env.pki.crl(&[])).unwrap();
    // Two client CAs (a CA migration), the CRL of the first only.
    let bundle = env.file("pki/client-cas.pem");
    let second = labship_tests::pki::Pki::other_ca_pem("labship second CA");
    std::fs::write(&bundle, format!("{}{second}", env.pki.ca_pem)).unwrap();
    let cfg = config_file(
        &env,
        "two-cas",
        &format!("crl_file = {crl:?}"),
        "127.0.0.1:9464",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("client_ca_file = {:?}", env.pki.ca_file),
        &format!("client_ca_file = {bundle:?}"),
    );
    assert!(text.contains("client-cas.pem"), "{text}");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run(
        "receiver",
        &["--config", cfg.to_str().unwrap(), "--check-config"],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("tls.crl_file")
            && err.contains("holds no CRL from")
            && err.contains("labship second CA"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Checking a configuration; the public ops listener.

/// A complete receiver.toml under the test dir, with `extra_tls` in the
/// [tls] table and `ops` as the ops listener; returns its path.
fn config_file(env: &TestEnv, name: &str, extra_tls: &str, ops: &str) -> std::path::PathBuf {
    let dir = env.path().join(name);
    std::fs::create_dir_all(&dir).expect("config dir");
    let allowed = dir.join("allowed");
    std::fs::write(&allowed, format!("{GOOD_COMMIT}\n")).expect("gate file");
    let text = format!(
        "listen = \"127.0.0.1:{}\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n{extra_tls}\n[storage]\ndir = {:?}\n[gate]\nallowed_commits_file = {allowed:?}\n[ops]\nlisten = \"{ops}\"\naudit_log = {:?}\n",
        free_port(),
        env.pki.server.cert_file,
        env.pki.server.key_file,
        env.pki.ca_file,
        dir.join("store"),
        dir.join("audit.jsonl"),
    );
    let path = dir.join("receiver.toml");
    std::fs::write(&path, text).expect("receiver.toml");
    path
}

/// Issue 16, item 6: `receiver --check-config` validates what the daemon
/// would read at start (including the CRLs), prints warnings (an ops
/// listener off loopback, a stale CRL), exits 0 or 2, and creates nothing.
#[test]
fn check_config_validates_warns_and_touches_nothing() {
    let env = TestEnv::new();
    let check = |path: &Path| {
        run(
            "receiver",
            &["--config", path.to_str().unwrap(), "--check-config"],
        )
    };

    let quiet = config_file(&env, "quiet", "", "127.0.0.1:9464");
    let (code, out, err) = check(&quiet);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("configuration OK") && out.contains("0 warning(s)"),
        "{out}"
    );
    assert!(err.is_empty(), "{err}");

    let crl = env.file("pki/stale-crl.pem");
    std::fs::write(&crl, env.pki.crl_until(&[], (2021, 1, 1))).unwrap();
    let public = config_file(
        &env,
        "public",
        &format!("crl_file = {crl:?}"),
        "0.0.0.0:9464",
    );
    let (code, out, err) = check(&public);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 warning(s)"), "{out}");
    let file = public.to_str().unwrap();
    assert!(
        err.contains(&format!(
            "receiver: warning: {file}: ops.listen: 0.0.0.0:9464 is not a loopback address"
        )),
        "{err}"
    );
    assert!(
        err.contains("tls.crl_file") && err.contains("passed its nextUpdate"),
        "{err}"
    );
    // Nothing was created: no store, no audit log.
    assert_eq!(
        labship_tests::names(&env.path().join("public")),
        ["allowed", "receiver.toml"]
    );

    let bad_crl = env.file("pki/garbage-crl.pem");
    std::fs::write(&bad_crl, "not a CRL\n").unwrap();
    let bad = config_file(
        &env,
        "bad",
        &format!("crl_file = {bad_crl:?}"),
        "127.0.0.1:9464",
    );
    let (code, _, err) = check(&bad);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(bad.to_str().unwrap())
            && err.contains("tls.crl_file")
            && err.contains(bad_crl.to_str().unwrap()),
        "{err}"
    );
    let (code, _, err) = run(
        "receiver",
        &["--config", "/nonexistent/receiver.toml", "--check-config"],
    );
    assert_eq!(code, 2, "{err}");
}

/// Issue 16, item 6: the daemon warns at start about an ops listener off
/// loopback, naming the key, the address and why.
#[tokio::test]
async fn a_public_ops_listener_is_a_warning_at_start() {
    let env = TestEnv::new();
    // free_port() checks 127.0.0.1 only and another test may take a port
    // before the receiver binds it: a start that fails on a taken address
    // is tried again with fresh ports.
    for attempt in 0..3 {
        let name = format!("public-{attempt}");
        let port = free_port();
        let path = config_file(&env, &name, "", &format!("0.0.0.0:{port}"));
        let log = env.path().join(&name).join("receiver.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut daemon = Daemon(
            std::process::Command::new(labship_tests::bin("receiver"))
                .arg("--config")
                .arg(&path)
                .env_remove("NOTIFY_SOCKET")
                .stderr(log_file)
                .spawn()
                .unwrap(),
        );
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        let mut exited = false;
        wait_until("receiver ready or exited", Duration::from_secs(20), || {
            exited = daemon.0.try_wait().unwrap().is_some();
            exited || text().contains("receiver ready")
        })
        .await;
        let text = text();
        if exited {
            assert!(
                attempt < 2 && text.contains("in use"),
                "the receiver exited:\n{text}"
            );
            continue;
        }
        let warning = text
            .lines()
            .find(|l| l.contains("WARN") && l.contains("ops.listen"))
            .unwrap_or_else(|| panic!("no warning:\n{text}"));
        assert!(
            warning.contains(&format!("0.0.0.0:{port} is not a loopback address"))
                && warning.contains("without authentication"),
            "{warning}"
        );
        return;
    }
}
