//! Issue 19, the receiver side (CONTRACT §11), against the real binary with
//! real TLS: every contract metric after real traffic, with its value
//! (counts, bytes, a host's last-stored time, its client certificate's
//! expiry, its shipper's version from the User-Agent), the exposition
//! accepted by `promtool check metrics` and served with the Content-Type of
//! its format; `/readyz` on a read-only store and while draining;
//! certificate rotation on SIGHUP seen by a real TLS client (and a broken
//! file keeping the certificate in force, counted); `--check-config`'s
//! expiry warning and error.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::episode::{RawTar, digest_header, noise};
use labship_tests::pki::{Issued, Variant};
use labship_tests::process::{Receiver, ReceiverOpts, free_port, run};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

const HOST: &str = "lab-01";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

fn archive(id: &str, random: usize) -> Vec<u8> {
    RawTar::new()
        .dir(&format!("{id}/"))
        .file(&format!("{id}/data"), &noise(random, id.len() as u64))
        .meta(id, GOOD_COMMIT)
        .finish_zst()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Unix seconds of an RFC 3339 time.
fn unix(rfc3339: &str) -> f64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The calendar day `days` from now, `YYYY-MM-DD` (what [`Variant::ExpiresSoon`]
/// and [`labship_tests::pki::Pki::server_until`] put at 00:00 UTC).
fn day_in(days: u64) -> String {
    let t = SystemTime::now() + Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// PUT `body` as `host/id` stamped `commit` with `user_agent`; the status.
async fn put(
    c: &reqwest::Client,
    r: &Receiver,
    host: &str,
    id: &str,
    commit: &str,
    body: &[u8],
    user_agent: &str,
) -> u16 {
    c.put(format!("{}/v1/episodes/{host}/{id}", r.url))
        .header("X-Labship-Commit", commit)
        .header("Content-Digest", digest_header(body))
        .header("User-Agent", user_agent)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A GET on the ops listener with an optional `Accept`: (status,
/// Content-Type, body).
fn ops_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    })
}

fn value(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// The classic text exposition (no Accept), checking its Content-Type.
fn scrape(r: &Receiver) -> String {
    let (status, content_type, body) = ops_get(r.ops_addr, "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(content_type, CLASSIC);
    body
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `promtool check metrics` on `text`: (success, its output).
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/lib/test-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn every_contract_metric_is_exposed_with_its_value_after_real_traffic() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let soon = env.pki.client_variant(HOST, Variant::ExpiresSoon);
    let c = env.client(Some(&soon));
    let (a, b) = (archive("ep-a", 3000), archive("ep-b", 70_000));
    let ua = "labship-shipper/9.8.7 (0123456789ab)";
    let before = unix_now().floor();
    assert_eq!(put(&c, &r, HOST, "ep-a", GOOD_COMMIT, &a, ua).await, 201);
    assert_eq!(put(&c, &r, HOST, "ep-b", GOOD_COMMIT, &b, ua).await, 201);
    assert_eq!(put(&c, &r, HOST, "ep-a", GOOD_COMMIT, &a, ua).await, 200);
    let old = archive("ep-old", 10);
    assert_eq!(put(&c, &r, HOST, "ep-old", OLD_COMMIT, &old, ua).await, 412);
    let after = unix_now().ceil();
    // Refused handshakes: no client certificate, one from a rogue CA.
    let ping = format!("{}/v1/ping", r.url);
    assert!(env.client(None).post(&ping).send().await.is_err());
    let rogue = env.client(Some(&env.pki.rogue_client("lab-09")));
    assert!(rogue.post(&ping).send().await.is_err());
    // Another host, whose client is not a labship shipper.
    let other = env.client(Some(&env.pki.client("lab-02")));
    let pong = other
        .post(&ping)
        .header("User-Agent", "curl/8.0")
        .send()
        .await
        .unwrap();
    assert_eq!(pong.status(), 200);

    let m = scrape(&r);
    let uploads = |status: &str, error: &str| {
        value(
            &m,
            &format!("labship_uploads_total{{status=\"{status}\",error=\"{error}\"}}"),
        )
    };
    assert_eq!(uploads("201", ""), 2.0);
    assert_eq!(uploads("200", ""), 1.0);
    assert_eq!(uploads("412", "commit_out_of_window"), 1.0);
    let stored = (a.len() + b.len()) as f64;
    assert_eq!(value(&m, "labship_upload_bytes_total"), stored);
    assert_eq!(value(&m, "labship_archive_size_bytes_count"), 2.0);
    assert_eq!(value(&m, "labship_archive_size_bytes_sum"), stored);
    assert!(sample(&m, "labship_upload_duration_seconds_count").unwrap() >= 2.0);
    let last = value(
        &m,
        "labship_host_last_stored_timestamp_seconds{host_id=\"lab-01\"}",
    );
    assert!(
        (before..=after).contains(&last),
        "{before} <= {last} <= {after}"
    );
    assert_eq!(
        sample(
            &m,
            "labship_host_last_stored_timestamp_seconds{host_id=\"lab-02\"}"
        ),
        None,
        "lab-02 stored nothing"
    );
    // The client certificate's notAfter: 00:00 UTC five days from now.
    assert_eq!(
        value(
            &m,
            "labship_host_client_cert_expiry_timestamp_seconds{host_id=\"lab-01\"}"
        ),
        unix(&format!("{}T00:00:00Z", day_in(5)))
    );
    assert_eq!(
        value(
            &m,
            "labship_host_shipper_info{host_id=\"lab-01\",version=\"9.8.7\",commit=\"0123456789ab\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "labship_host_shipper_info{host_id=\"lab-02\",version=\"unknown\",commit=\"unknown\"}"
        ),
        1.0
    );
    let build = m
        .lines()
        .find(|l| l.starts_with("labship_build_info{"))
        .unwrap_or_else(|| panic!("no build_info:\n{m}"));
    let prefix = format!(
        "labship_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    );
    let commit = build
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix("\"} 1"))
        .unwrap_or_else(|| panic!("{build}"));
    assert_eq!(commit, labship_tests::expected_commit(), "{build}");
    for reason in [
        "no_client_cert",
        "bad_certificate",
        "expired",
        "revoked",
        "crl",
        "server_cert_rejected",
        "protocol",
        "timeout",
        "other",
    ] {
        sample(
            &m,
            &format!("labship_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or_else(|| panic!("no handshake failure series for {reason}:\n{m}"));
    }
    let refused = |reason: &str| {
        value(
            &m,
            &format!("labship_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("no_client_cert"), 1.0, "{m}");
    assert_eq!(refused("bad_certificate"), 1.0, "{m}");
    assert_eq!(refused("revoked"), 0.0);
    assert_eq!(value(&m, "labship_gate_commits"), 1.0);
    assert_eq!(value(&m, "labship_gate_reload_failures_total"), 0.0);
    assert_eq!(value(&m, "labship_tls_reload_failures_total"), 0.0);
    // The test PKI's server certificate: rcgen's default notAfter.
    assert_eq!(
        value(&m, "labship_server_cert_expiry_timestamp_seconds"),
        unix("4096-01-01T00:00:00Z")
    );
    assert_eq!(value(&m, "labship_partial_uploads"), 0.0);
    // The metrics other suites read still exist.
    assert_eq!(value(&m, "labship_uploads_in_flight"), 0.0);
    assert!(m.contains("labship_requests_total{route=\"PUT /v1/episodes/{host_id}/{episode_id}\",status=\"201\"} 2"), "{m}");

    let (ok, out) = promtool_check(&m);
    assert!(
        ok,
        "promtool check metrics refused the exposition: {out}\n{m}"
    );

    // A new shipper version on lab-01 replaces its info series; a curl
    // does not.
    let newer = "labship-shipper/9.8.8 (unknown)";
    let c_ep = archive("ep-c", 10);
    assert_eq!(
        put(&c, &r, HOST, "ep-c", GOOD_COMMIT, &c_ep, newer).await,
        201
    );
    // An operator's curl with lab-01's certificate hides nothing.
    let pong = c
        .post(&ping)
        .header("User-Agent", "curl/8.0")
        .send()
        .await
        .unwrap();
    assert_eq!(pong.status(), 200);
    let m = scrape(&r);
    let infos: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("labship_host_shipper_info{host_id=\"lab-01\""))
        .collect();
    assert_eq!(
        infos,
        ["labship_host_shipper_info{host_id=\"lab-01\",version=\"9.8.8\",commit=\"unknown\"} 1"]
    );
    assert_eq!(
        value(&m, "labship_upload_bytes_total"),
        stored + c_ep.len() as f64
    );

    // OpenMetrics for a scraper that asks for it.
    let (status, content_type, om) = ops_get(
        r.ops_addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(status, 200);
    assert_eq!(content_type, OPENMETRICS);
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE labship_uploads counter\n"), "{om}");
    assert!(
        om.contains("labship_uploads_total{status=\"201\",error=\"\"} 3\n"),
        "{om}"
    );
}

/// A receiver serving plain HTTP (loopback, behind a proxy) has no server
/// certificate: it exports no expiry for one (a 0 would make the expiry
/// alert fire forever).
#[tokio::test]
async fn a_receiver_without_tls_exports_no_server_certificate_expiry() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            tls: false,
            ..Default::default()
        },
    );
    let m = scrape(&r);
    assert!(
        !m.contains("labship_server_cert_expiry_timestamp_seconds"),
        "{m}"
    );
    assert_eq!(value(&m, "labship_gate_commits"), 1.0);
}

/// A store the receiver cannot write (a read-only bind mount in its own
/// mount namespace: root is refused too) makes `/readyz` 503 naming why;
/// writable again, 200. `/healthz` stays ok.
#[tokio::test]
async fn readyz_is_503_while_the_store_is_read_only() {
    if !labship_tests::is_root() {
        labship_tests::skip(
            "readyz_is_503_while_the_store_is_read_only",
            "needs root (a read-only bind mount)",
        );
        return;
    }
    let env = TestEnv::new();
    let store = env.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let script = format!("mount --bind {store:?} {store:?} && exec \"$0\" \"$@\"");
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            wrapper: Some(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &script,
                ]
                .map(String::from)
                .to_vec(),
            ),
            store: Some(store.clone()),
            ..Default::default()
        },
    );
    assert_eq!(
        ops_get(r.ops_addr, "/readyz", None),
        (200, "text/plain; charset=utf-8".into(), "ready\n".into())
    );
    let remount = |mode: &str| {
        let ok = std::process::Command::new("nsenter")
            .args(["-t", &r.child.id().to_string(), "-m", "mount", "-o"])
            .arg(format!("remount,bind,{mode}"))
            .arg(&store)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {mode}");
    };
    remount("ro");
    let mut last = String::new();
    wait_until("readyz 503", Duration::from_secs(10), || {
        let (status, _, body) = ops_get(r.ops_addr, "/readyz", None);
        last = body;
        status == 503
    })
    .await;
    let scratch = store.join(".scratch");
    assert!(
        last.starts_with("not ready: store not writable: ")
            && last.contains(scratch.to_str().unwrap())
            && last.contains("Read-only file system"),
        "{last}"
    );
    let (status, _, body) = ops_get(r.ops_addr, "/healthz", None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    remount("rw");
    wait_until("readyz 200 again", Duration::from_secs(10), || {
        ops_get(r.ops_addr, "/readyz", None).0 == 200
    })
    .await;
    assert!(r.log_text().contains("not ready"), "{}", r.log_text());
}

/// SIGTERM with an upload in flight: `/readyz` says draining (503) while the
/// upload finishes, then the receiver exits 0.
#[tokio::test]
async fn readyz_is_503_while_draining() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let (status, _, body) = ops_get(r.ops_addr, "/readyz", None);
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let c = env.client(Some(&env.pki.client(HOST)));
    let full = archive("ep", 1_000_000);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let req = c
        .put(format!("{}/v1/episodes/{HOST}/ep", r.url))
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(&full))
        .body(reqwest::Body::wrap_stream(stream));
    let task = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    tx.send(full[..500_000].to_vec()).await.unwrap();
    wait_until("upload in flight", Duration::from_secs(10), || {
        !r.scratch().is_empty()
    })
    .await;
    r.signal(15);
    wait_until("readyz 503 draining", Duration::from_secs(5), || {
        ops_get(r.ops_addr, "/readyz", None)
            == (
                503,
                "text/plain; charset=utf-8".into(),
                "not ready: draining\n".into(),
            )
    })
    .await;
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "exited before the drain"
    );
    tx.send(full[500_000..].to_vec()).await.unwrap();
    drop(tx);
    assert_eq!(task.await.unwrap().unwrap(), 201);
    let status = r
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "{status}");
}

/// A local client holding a half-sent request on the ops listener does not
/// hold up the exit: the ops listener gets a short grace after the drain,
/// then is closed (not the drain timeout again, which would run into
/// systemd's TimeoutStopSec).
#[tokio::test]
async fn a_stuck_ops_client_does_not_hold_up_the_exit() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let mut stuck = TcpStream::connect(r.ops_addr).unwrap();
    stuck
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    // The request has reached the listener before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    r.signal(15);
    let status = r
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the ops grace");
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        r.log_text().contains("ops listener did not stop in time"),
        "{}",
        r.log_text()
    );
    drop(stuck);
}

/// The DER of the certificate the receiver at `addr` serves, as a real TLS
/// client (presenting `id`) sees it.
fn served_certificate(env: &TestEnv, addr: SocketAddr, id: &Issued) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(env.pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let certs = vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    conn.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes `text` to `path` atomically (as an operator's `mv` would).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
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

/// Certificate rotation without a restart: a renewed server certificate and
/// key put in place, then SIGHUP, and a real TLS client is served the new
/// one by the same process; a broken certificate file, or an expired one,
/// is refused on the next SIGHUP, counted, and the renewed one stays.
#[tokio::test]
async fn sighup_serves_a_renewed_server_certificate_and_keeps_it_over_a_broken_file() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let id = env.pki.client(HOST);
    assert_eq!(
        served_certificate(&env, r.addr, &id),
        der(&env.pki.server.cert_pem)
    );
    let renewed = env.pki.server_until("renewed", (2031, 6, 1));
    replace(&env.pki.server.cert_file, &renewed.cert_pem);
    replace(&env.pki.server.key_file, &renewed.key_pem);
    sighup(&r, "tls material reloaded").await;
    assert_eq!(
        served_certificate(&env, r.addr, &id),
        der(&renewed.cert_pem)
    );
    assert!(r.child.try_wait().unwrap().is_none(), "no restart");
    let m = scrape(&r);
    assert_eq!(
        value(&m, "labship_server_cert_expiry_timestamp_seconds"),
        unix("2031-06-01T00:00:00Z")
    );
    let c = env.client(Some(&id));
    let pong = c.post(format!("{}/v1/ping", r.url)).send().await.unwrap();
    assert_eq!(pong.status(), 200);

    // A truncated certificate file: refused, counted, the renewed one stays.
    replace(
        &env.pki.server.cert_file,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    sighup(&r, "tls material rejected").await;
    let log = r.log_text();
    let rejected = log
        .lines()
        .rfind(|l| l.contains("tls material rejected"))
        .unwrap();
    assert!(
        rejected.contains("tls.cert_file")
            && rejected.contains(env.pki.server.cert_file.to_str().unwrap()),
        "{rejected}"
    );
    assert_eq!(
        served_certificate(&env, r.addr, &id),
        der(&renewed.cert_pem)
    );
    assert_eq!(value(&scrape(&r), "labship_tls_reload_failures_total"), 1.0);

    // An expired certificate is refused the same way, naming its date.
    let expired = env.pki.server_until("expired", (2021, 1, 1));
    replace(&env.pki.server.cert_file, &expired.cert_pem);
    replace(&env.pki.server.key_file, &expired.key_pem);
    sighup(&r, "tls material rejected").await;
    let log = r.log_text();
    let rejected = log
        .lines()
        .rfind(|l| l.contains("tls material rejected"))
        .unwrap();
    assert!(
        rejected.contains("expired on 2021-01-01T00:00:00Z"),
        "{rejected}"
    );
    assert_eq!(
        served_certificate(&env, r.addr, &id),
        der(&renewed.cert_pem)
    );
    let m = scrape(&r);
    assert_eq!(value(&m, "labship_tls_reload_failures_total"), 2.0);
    assert_eq!(
        value(&m, "labship_server_cert_expiry_timestamp_seconds"),
        unix("2031-06-01T00:00:00Z")
    );
    r.signal(15);
    assert!(r.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// SIGHUP with a broken gate file, then with a broken tokens file: each is
/// refused, counted in its own reload-failure counter, and the set in force
/// stays (a PUT the old gate accepts is stored, the old token still logs
/// in). A host that logs in with its token loses its client-cert expiry
/// series.
#[tokio::test]
async fn sighup_keeps_the_gate_and_the_tokens_over_broken_files() {
    use sha2::Digest as _;
    let env = TestEnv::new();
    let hash: String = sha2::Sha256::digest(b"tok-lab-01")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tokens = env.file("receiver/tokens");
    std::fs::write(&tokens, format!("{HOST} {hash}\n")).unwrap();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            tokens_file: Some(tokens.clone()),
            ..Default::default()
        },
    );
    let by_cert = env.client(Some(&env.pki.client(HOST)));
    let by_token = env.client(None);
    let ping = format!("{}/v1/ping", r.url);
    assert_eq!(by_cert.post(&ping).send().await.unwrap().status(), 200);
    let expiry = format!("labship_host_client_cert_expiry_timestamp_seconds{{host_id=\"{HOST}\"}}");
    assert!(sample(&scrape(&r), &expiry).is_some());

    // Rejected once, by this SIGHUP or the poll (every 2 s) if it came
    // first: a bad version is reported once.
    replace(&r.allowed, "this is not a commit\n");
    r.signal(1);
    wait_until("gate file rejected", Duration::from_secs(10), || {
        r.log_text().contains("gate file rejected")
    })
    .await;
    let m = scrape(&r);
    assert_eq!(value(&m, "labship_gate_reload_failures_total"), 1.0);
    assert_eq!(value(&m, "labship_gate_commits"), 1.0);
    let ep = archive("ep-gate", 10);
    assert_eq!(
        put(
            &by_cert,
            &r,
            HOST,
            "ep-gate",
            GOOD_COMMIT,
            &ep,
            "labship-shipper/1.0.0"
        )
        .await,
        201
    );

    replace(&tokens, "only-one-field\n");
    sighup(&r, "tokens file rejected").await;
    let m = scrape(&r);
    assert_eq!(value(&m, "labship_tokens_reload_failures_total"), 1.0);
    assert_eq!(value(&m, "labship_gate_reload_failures_total"), 1.0);
    assert_eq!(value(&m, "labship_gate_commits"), 1.0);
    let pong = by_token
        .post(&ping)
        .bearer_auth("tok-lab-01")
        .send()
        .await
        .unwrap();
    assert_eq!(pong.status(), 200);
    assert_eq!(
        sample(&scrape(&r), &expiry),
        None,
        "a token login has no certificate"
    );
}

/// A receiver.toml over `cert` (server certificate and key) and the test CA.
fn config_with_server_cert(env: &TestEnv, name: &str, cert: &Issued) -> std::path::PathBuf {
    config_with(env, name, cert, &env.pki.ca_file)
}

/// A receiver.toml over `cert` and the client CA bundle `ca`.
fn config_with(env: &TestEnv, name: &str, cert: &Issued, ca: &Path) -> std::path::PathBuf {
    let dir = env.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let allowed = dir.join("allowed");
    std::fs::write(&allowed, format!("{GOOD_COMMIT}\n")).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:{}\"\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n[storage]\ndir = {:?}\n[gate]\nallowed_commits_file = {allowed:?}\n[ops]\nlisten = \"127.0.0.1:{}\"\naudit_log = {:?}\n",
        free_port(),
        cert.cert_file,
        cert.key_file,
        ca,
        dir.join("store"),
        free_port(),
        dir.join("audit.jsonl"),
    );
    let path = dir.join("receiver.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `receiver --check-config`: a server certificate expiring within 14 days
/// is a warning naming the file, the key and the date (exit 0); an expired
/// one an error (exit 2).
#[test]
fn check_config_warns_of_a_certificate_expiring_within_14_days_and_refuses_an_expired_one() {
    let env = TestEnv::new();
    let day = day_in(5);
    let ymd = |i: std::ops::Range<usize>| day[i].parse::<u32>().unwrap();
    let soon = env.pki.server_until(
        "soon",
        (ymd(0..4) as i32, ymd(5..7) as u8, ymd(8..10) as u8),
    );
    let cfg = config_with_server_cert(&env, "soon", &soon);
    let (code, out, err) = run(
        "receiver",
        &["--config", cfg.to_str().unwrap(), "--check-config"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 warning(s)"), "{out}");
    let warning = format!(
        "receiver: warning: {}: tls.cert_file: {}: the certificate expires on {day}T00:00:00Z",
        cfg.display(),
        soon.cert_file.display()
    );
    assert!(err.contains(&warning), "{warning:?} not in:\n{err}");

    let expired = env.pki.server_until("old", (2021, 1, 1));
    let cfg = config_with_server_cert(&env, "old", &expired);
    let (code, out, err) = run(
        "receiver",
        &["--config", cfg.to_str().unwrap(), "--check-config"],
    );
    assert_eq!(code, 2, "{out}{err}");
    let error = format!(
        "receiver: invalid configuration: {}: tls.cert_file: {}: the certificate expired on 2021-01-01T00:00:00Z",
        cfg.display(),
        expired.cert_file.display()
    );
    assert!(err.contains(&error), "{error:?} not in:\n{err}");
    // A client CA bundle holding an expired CA beside the valid one (a CA
    // change under way): a warning; holding only expired CAs: an error.
    let old_ca = expired_ca_pem();
    let bundle = env.file("pki/bundle.pem");
    std::fs::write(&bundle, format!("{old_ca}{}", env.pki.ca_pem)).unwrap();
    let cfg = config_with(&env, "bundle", &env.pki.server, &bundle);
    let (code, out, err) = run(
        "receiver",
        &["--config", cfg.to_str().unwrap(), "--check-config"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("tls.client_ca_file")
            && err.contains(bundle.to_str().unwrap())
            && err.contains("expired on 2021-01-01T00:00:00Z"),
        "{err}"
    );
    let only_old = env.file("pki/old-ca.pem");
    std::fs::write(&only_old, &old_ca).unwrap();
    let cfg = config_with(&env, "old-ca", &env.pki.server, &only_old);
    let (code, out, err) = run(
        "receiver",
        &["--config", cfg.to_str().unwrap(), "--check-config"],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("tls.client_ca_file") && err.contains("expired on 2021-01-01T00:00:00Z"),
        "{err}"
    );

    // A certificate good for longer: no warning.
    let cfg = config_with_server_cert(&env, "good", &env.pki.server);
    let (code, out, err) = run(
        "receiver",
        &["--config", cfg.to_str().unwrap(), "--check-config"],
    );
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
}

/// Kills the test's own journald (by the pid it wrote) when dropped.
struct Journald(std::path::PathBuf);

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            labship_tests::process::unsafe_free_kill(pid, 9);
        }
    }
}

/// With the journal as its log (as under systemd), the receiver writes
/// native fields and priorities: a stored PUT at info (5) with HOST,
/// EPISODE, STATUS; a refused one at warning (4) with its ERROR_CODE.
#[tokio::test]
async fn the_journal_gets_native_fields_and_priorities() {
    if !labship_tests::is_root() || !Path::new("/lib/systemd/systemd-journald").exists() {
        labship_tests::skip(
            "the_journal_gets_native_fields_and_priorities",
            "needs root and systemd-journald",
        );
        return;
    }
    let env = TestEnv::new();
    let pidfile = env.path().join("journald.pid");
    let _journald = Journald(pidfile.clone());
    // A real journald in the receiver's private mount namespace (RECIPES.md).
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal /run/log; \
         /lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 & echo $! > {pidfile:?}; \
         sleep 1; exec \"$0\" \"$@\""
    );
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            wrapper: Some(
                [
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &script,
                ]
                .map(String::from)
                .to_vec(),
            ),
            env: vec![("LABSHIP_JOURNAL".into(), "1".into())],
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let ok = archive("jr-ok", 100);
    assert_eq!(put(&c, &r, HOST, "jr-ok", GOOD_COMMIT, &ok, "x").await, 201);
    let old = archive("jr-old", 100);
    assert_eq!(
        put(&c, &r, HOST, "jr-old", OLD_COMMIT, &old, "x").await,
        412
    );
    let pid = r.child.id().to_string();
    let mut entries = Vec::new();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "journalctl", "--no-pager", "-o", "json"])
            .arg(format!("_PID={pid}"))
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        entries = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect();
    }
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        entries
            .iter()
            .find(|e| pred(e))
            .cloned()
            .unwrap_or_else(|| panic!("no such entry in:\n{text}\nstderr log:\n{}", r.log_text()))
    };
    let ready = find(&|e| e["MESSAGE"] == "receiver ready");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "receiver");
    let stored = find(&|e| e["MESSAGE"] == "put" && e["EPISODE"] == "jr-ok");
    assert_eq!(stored["HOST"], HOST);
    assert_eq!(stored["STATUS"], "201");
    assert_eq!(stored["PRIORITY"], "5", "info is notice (5)");
    let refused = find(&|e| e["EPISODE"] == "jr-old");
    assert_eq!(refused["ERROR_CODE"], "commit_out_of_window");
    assert_eq!(refused["STATUS"], "412");
    assert_eq!(refused["PRIORITY"], "4", "a refusal is a warning");
    assert!(
        !r.log_text().contains("receiver ready"),
        "stderr got the lines the journal should have:\n{}",
        r.log_text()
    );
}

/// `storage.kind = "s3"`: `/readyz` probes the bucket too (a real
/// SeaweedFS): 503 naming the object store while it is down, 200 once it is
/// back.
#[tokio::test]
async fn readyz_on_s3_follows_the_object_store() {
    let env = TestEnv::new();
    let mut weed = labship_tests::s3::Weed::start().await;
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            storage: Some(weed.storage_toml(&env.path().join("spool"), "fleet")),
            env: weed.env(),
            ..Default::default()
        },
    );
    wait_until("readyz 200 on s3", Duration::from_secs(20), || {
        ops_get(r.ops_addr, "/readyz", None).0 == 200
    })
    .await;
    // The probe wrote and deleted its object, under the prefix, and fed
    // none of the store operation metrics (those are the uploads').
    use object_store::ObjectStoreExt as _;
    let probe_key = object_store::path::Path::from("fleet.labship-readyz/probe");
    assert!(matches!(
        weed.client().head(&probe_key).await,
        Err(object_store::Error::NotFound { .. })
    ));
    let m = scrape(&r);
    assert!(
        !m.contains("labship_store_operation_duration_seconds_count{"),
        "{m}"
    );
    assert!(!m.contains("labship_store_operation_errors_total{"), "{m}");
    weed.stop();
    let mut last = String::new();
    wait_until(
        "readyz 503 with the store down",
        Duration::from_secs(30),
        || {
            let (status, _, body) = ops_get(r.ops_addr, "/readyz", None);
            last = body;
            status == 503
        },
    )
    .await;
    assert!(
        last.starts_with("not ready: object store not writable: PUT fleet.labship-readyz/probe: ")
            || last.starts_with("not ready: store probe hung"),
        "{last}"
    );
    weed.restart().await;
    wait_until(
        "readyz 200 with the store back",
        Duration::from_secs(60),
        || ops_get(r.ops_addr, "/readyz", None).0 == 200,
    )
    .await;
}

/// The PEM of a self-signed CA that expired on 2021-01-01.
/// An object store that accepts connections and never answers (a hung
/// store): `/readyz` says so after the probe timeout, and while that probe
/// hangs further polls answer at once, naming how long, without starting
/// another probe (one connection, not one per poll).
#[tokio::test]
async fn readyz_on_a_hung_store_answers_without_piling_up_probes() {
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in black_hole.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(conn);
        }
    });
    let env = TestEnv::new();
    let spool = env.path().join("spool");
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            storage: Some(format!(
                "[storage]\nkind = \"s3\"\ndir = {spool:?}\nbucket = \"hung\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nallow_http = true\n"
            )),
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), "labship".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "labship-secret".into()),
            ],
            ..Default::default()
        },
    );
    let started = Instant::now();
    let (status, _, body) = ops_get(r.ops_addr, "/readyz", None);
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: store probe hung for 5 s\n")
    );
    assert!(started.elapsed() >= Duration::from_millis(4900));
    // Later: the probe still hangs, so no new one starts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let asked = Instant::now();
    let (status, _, body) = ops_get(r.ops_addr, "/readyz", None);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status, 503);
    assert!(
        body == "not ready: store probe hung for 7 s\n"
            || body == "not ready: store probe hung for 8 s\n",
        "{body}"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    let log = r.log_text();
    assert_eq!(log.matches("store probe hung").count(), 1, "{log}");
}

fn expired_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "labship old CA");
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    params.self_signed(&key).unwrap().pem()
}

/// The handshake failure reasons other than certificates: a socket silent
/// past `limits.client_hello_timeout_s` is `timeout`, plain HTTP on the TLS
/// port is `protocol`, an expired client certificate `expired`; a bare
/// connect-and-close (a port probe) is no handshake and not counted.
#[tokio::test]
async fn handshake_failures_are_counted_by_bounded_reason() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nclient_hello_timeout_s = 1\n".into(),
            ..Default::default()
        },
    );
    drop(TcpStream::connect(r.addr).unwrap());
    let mut plain = TcpStream::connect(r.addr).unwrap();
    plain
        .write_all(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let silent = TcpStream::connect(r.addr).unwrap();
    let expired = env.pki.client_variant(HOST, Variant::Expired);
    let ping = format!("{}/v1/ping", r.url);
    assert!(env.client(Some(&expired)).post(&ping).send().await.is_err());
    // A client whose trust anchor is not the receiver's CA (a server
    // certificate rotated to a CA the fleet does not know): it sends an
    // unknown_ca alert, the receiver's view of a failed rotation.
    let id = env.pki.client(HOST);
    let elsewhere = env.pki.rogue_client("lab-09");
    let distrustful = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(elsewhere.cert_pem.as_bytes()).unwrap()])
        .identity(
            reqwest::Identity::from_pem(format!("{}{}", id.cert_pem, id.key_pem).as_bytes())
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(distrustful.post(&ping).send().await.is_err());
    let reason = |m: &str, reason: &str| {
        value(
            m,
            &format!("labship_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    let mut m = String::new();
    wait_until(
        "the silent socket timed out",
        Duration::from_secs(10),
        || {
            m = scrape(&r);
            reason(&m, "timeout") >= 1.0
        },
    )
    .await;
    drop((plain, silent));
    assert_eq!(reason(&m, "timeout"), 1.0, "{m}");
    assert_eq!(reason(&m, "protocol"), 1.0, "{m}");
    assert_eq!(reason(&m, "expired"), 1.0, "{m}");
    assert_eq!(reason(&m, "server_cert_rejected"), 1.0, "{m}");
    assert_eq!(reason(&m, "bad_certificate"), 0.0, "{m}");
    assert!(
        r.log_text()
            .contains("a client refused the server certificate"),
        "{}",
        r.log_text()
    );
    assert_eq!(
        reason(&m, "other"),
        0.0,
        "the port probe is not counted: {m}"
    );
    assert_eq!(reason(&m, "no_client_cert"), 0.0, "{m}");
}
