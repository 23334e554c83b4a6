//! Issue 19, the receiver's metrics (CONTRACT §11), against the real binary
//! with real TLS: every contract metric after real traffic, with its value
//! (counts, bytes, a host's last-stored time, its client certificate's
//! expiry, its shipper's version from the User-Agent), the exposition
//! accepted by `promtool check metrics` and served with the Content-Type of
//! its format; handshake failures by bounded reason. (`/readyz` is in
//! receiver_readyz, rotation in receiver_rotation, the journal in
//! receiver_journald; the shared helpers in `labship_tests::fleet`.)
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::fleet::*;
use labship_tests::pki::Variant;
use labship_tests::process::{Receiver, ReceiverOpts};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv};
use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

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
