//! Issue 19: certificate rotation on SIGHUP seen by a real TLS client (and a
//! broken file keeping the certificate in force, counted); a broken gate or
//! tokens file keeping the set in force; `--check-config`'s expiry warning
//! and error.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::fleet::*;
use labship_tests::pki::Issued;
use labship_tests::process::{Receiver, ReceiverOpts, free_port, run};
use labship_tests::{GOOD_COMMIT, TestEnv};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// The PEM of a self-signed CA that expired on 2021-01-01.
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
