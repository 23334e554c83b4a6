//! The receiver under operational stress, against the real binary: gate hot
//! reload, kill -9 mid-upload, a full store, overload, graceful stop, idle and
//! slow clients, `Expect: 100-continue` with curl, metrics, config errors.

use labship_tests::episode::{RawTar, digest_header, noise};
use labship_tests::process::{Receiver, ReceiverOpts, put_episode, run};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv};
use serde_json::Value;
use std::io::Read as _;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const HOST: &str = "lab-01";

fn archive(id: &str, commit: &str, random: usize) -> Vec<u8> {
    RawTar::new()
        .dir(&format!("{id}/"))
        .file(&format!("{id}/data"), &noise(random, id.len() as u64))
        .meta(id, commit)
        .finish_zst()
}

/// Starts a PUT whose body arrives only as the test feeds the returned sender.
fn slow_put(
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

fn with_limits(env: &TestEnv, limits: &str) -> Receiver {
    Receiver::start_with(
        env,
        ReceiverOpts {
            extra: format!("[limits]\n{limits}\n"),
            ..Default::default()
        },
    )
}

/// Starts a slow upload of `len` random bytes as episode `id`, sends `first`
/// bytes, and returns once the receiver is writing it to scratch.
async fn upload_in_flight(
    r: &Receiver,
    c: &reqwest::Client,
    id: &str,
    len: usize,
    first: usize,
) -> (
    Vec<u8>,
    mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<Result<u16, String>>,
) {
    let full = archive(id, GOOD_COMMIT, len);
    let (tx, task) = slow_put(c, &r.url, id, &full);
    tx.send(full[..first].to_vec())
        .await
        .expect("upload stream open");
    wait_until("upload in flight", Duration::from_secs(10), || {
        !r.scratch().is_empty()
    })
    .await;
    (full, tx, task)
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn gate_reloads_on_change_and_sighup_and_keeps_last_good_set() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    assert_eq!(
        put_episode(
            &c,
            &r.url,
            HOST,
            "e1",
            OLD_COMMIT,
            archive("e1", OLD_COMMIT, 10)
        )
        .await
        .status(),
        412
    );

    // Moving the window: picked up within a few seconds, no signal needed.
    std::fs::write(&r.allowed, format!("{GOOD_COMMIT}\n{OLD_COMMIT}\n")).unwrap();
    let started = Instant::now();
    loop {
        let s = put_episode(
            &c,
            &r.url,
            HOST,
            "e1",
            OLD_COMMIT,
            archive("e1", OLD_COMMIT, 10),
        )
        .await
        .status();
        if s == 201 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "gate not reloaded; last status {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Garbage at run time: the last good set stays, and the error is logged.
    std::fs::write(&r.allowed, "this is not a commit\n").unwrap();
    r.signal(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        put_episode(
            &c,
            &r.url,
            HOST,
            "e2",
            OLD_COMMIT,
            archive("e2", OLD_COMMIT, 10)
        )
        .await
        .status(),
        201
    );
    assert!(
        r.log_text().contains("keeping the last good set"),
        "{}",
        r.log_text()
    );

    // SIGHUP applies a good file at once. (Fresh ids: a probe stored before
    // the reload would answer 200 forever.)
    std::fs::write(&r.allowed, format!("{GOOD_COMMIT}\n")).unwrap();
    r.signal(1);
    let started = Instant::now();
    for n in 0.. {
        let id = format!("e3-{n}");
        if put_episode(
            &c,
            &r.url,
            HOST,
            &id,
            OLD_COMMIT,
            archive(&id, OLD_COMMIT, 10),
        )
        .await
        .status()
            == 412
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP reload not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v: Value = c
        .post(format!("{}/v1/ping", r.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["gate"]["commits"], 1);
}

/// The gate file emptied, then deleted, while the receiver runs, with no
/// signal: each is seen by the poll, logged, and the last good set stays in
/// force (no fail-open, no fail-closed); a good file written afterwards is
/// picked up again.
#[tokio::test]
async fn gate_file_emptied_or_deleted_at_run_time_keeps_the_last_good_set() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let rejected = |r: &Receiver| r.log_text().matches("keeping the last good set").count();
    let wait_rejected = |r: &Receiver, n: usize, what: &str| {
        let started = Instant::now();
        while rejected(r) < n {
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{what}: not seen by the poll:\n{}",
                r.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let status = |id: String, commit: &'static str| {
        let c = c.clone();
        let url = r.url.clone();
        async move {
            put_episode(&c, &url, HOST, &id, commit, archive(&id, commit, 10))
                .await
                .status()
        }
    };

    std::fs::write(&r.allowed, "").unwrap();
    wait_rejected(&r, 1, "emptied");
    assert_eq!(
        status("e1".into(), GOOD_COMMIT).await,
        201,
        "the last good set holds"
    );
    assert_eq!(status("e2".into(), OLD_COMMIT).await, 412, "and only it");

    std::fs::remove_file(&r.allowed).unwrap();
    wait_rejected(&r, 2, "deleted");
    assert_eq!(
        status("e3".into(), GOOD_COMMIT).await,
        201,
        "the last good set holds"
    );
    assert_eq!(status("e4".into(), OLD_COMMIT).await, 412, "and only it");

    // A good file again: the window moves without a signal.
    std::fs::write(&r.allowed, format!("{OLD_COMMIT}\n")).unwrap();
    let started = Instant::now();
    for n in 0.. {
        if status(format!("e5-{n}"), OLD_COMMIT).await == 201 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the restored gate file was not picked up:\n{}",
            r.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn kill_9_mid_upload_leaves_nothing_visible() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let (full, _tx, task) = upload_in_flight(&r, &c, "ep", 2_000_000, 1_000_000).await;
    r.kill9();
    assert!(
        task.await.unwrap().is_err(),
        "the interrupted upload cannot succeed"
    );
    assert!(r.stored(HOST).is_empty(), "a half upload became visible");
    r.restart();
    assert!(
        r.scratch().is_empty(),
        "scratch not cleaned at start-up: {:?}",
        r.scratch()
    );
    assert!(r.log_text().contains("removed scratch"));
    let head = c
        .head(format!("{}/v1/episodes/{HOST}/ep", r.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
    // The retry after the crash stores it once.
    assert_eq!(
        put_episode(&c, &r.url, HOST, "ep", GOOD_COMMIT, full)
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn full_store_answers_507_and_keeps_what_it_had() {
    if !labship_tests::is_root() {
        labship_tests::skip(
            "full_store_answers_507_and_keeps_what_it_had",
            "needs root for a tmpfs mount",
        );
        return;
    }
    let env = TestEnv::new();
    let store = env.file("store/.keep");
    let store = store.parent().unwrap().to_path_buf();
    // The receiver runs in its own mount namespace with a 2 MiB tmpfs as store.
    let r = Receiver::start_with(&env, ReceiverOpts::on_tmpfs_store(&store, "2m"));
    let c = env.client(Some(&env.pki.client(HOST)));
    let small = archive("small", GOOD_COMMIT, 100_000);
    assert_eq!(
        put_episode(&c, &r.url, HOST, "small", GOOD_COMMIT, small.clone())
            .await
            .status(),
        201
    );
    let big = archive("big", GOOD_COMMIT, 3_000_000);
    // With its Content-Length, the PUT is refused before its body.
    let resp = put_episode(&c, &r.url, HOST, "big", GOOD_COMMIT, big.clone()).await;
    assert_eq!(resp.status(), 507);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "insufficient_storage");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("needs {}", big.len())),
        "{message}"
    );
    // Chunked (no size declared), the disk fills mid-body.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = c
        .put(format!("{}/v1/episodes/{HOST}/big", r.url))
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(&big))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 507);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "insufficient_storage");
    assert_eq!(v["message"], "the receiver's store is full; retry later");
    let head = |id: &'static str| c.head(format!("{}/v1/episodes/{HOST}/{id}", r.url)).send();
    assert_eq!(
        head("big").await.unwrap().status(),
        404,
        "nothing partial is visible"
    );
    let h = head("small").await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(
        h.headers()["content-digest"],
        digest_header(&small).as_str()
    );
    // Space freed by the failed upload is usable again.
    assert_eq!(
        put_episode(
            &c,
            &r.url,
            HOST,
            "small2",
            GOOD_COMMIT,
            archive("small2", GOOD_COMMIT, 100_000)
        )
        .await
        .status(),
        201
    );
}

#[tokio::test]
async fn over_the_upload_limit_is_busy_with_retry_after() {
    let env = TestEnv::new();
    let r = with_limits(&env, "max_concurrent_uploads = 1");
    let c = env.client(Some(&env.pki.client(HOST)));
    let (full, tx, task) = upload_in_flight(&r, &c, "slow", 500_000, 100_000).await;
    // No slot frees: the PUT waits the receiver's bounded admission wait
    // (2 s), then is told to come back in a second.
    let asked = std::time::Instant::now();
    let resp = put_episode(
        &c,
        &r.url,
        HOST,
        "other",
        GOOD_COMMIT,
        archive("other", GOOD_COMMIT, 10),
    )
    .await;
    assert_eq!(resp.status(), 503);
    let waited = asked.elapsed();
    assert!(
        (Duration::from_millis(1_900)..Duration::from_secs(10)).contains(&waited),
        "answered after {waited:?}"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "busy");
    tx.send(full[100_000..].to_vec()).await.unwrap();
    drop(tx);
    assert_eq!(task.await.unwrap(), Ok(201));
    assert_eq!(
        put_episode(
            &c,
            &r.url,
            HOST,
            "other",
            GOOD_COMMIT,
            archive("other", GOOD_COMMIT, 10)
        )
        .await
        .status(),
        201
    );
}

/// Issue 19: `receiver --check-config` beside the running daemon, on the
/// same config, is side-effect free: the upload in flight (its scratch file)
/// survives the check and completes, and the check itself exits 0.
#[tokio::test]
async fn a_check_config_beside_the_running_receiver_leaves_its_upload_alone() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let (full, tx, task) = upload_in_flight(&r, &c, "ep", 1_000_000, 500_000).await;
    let scratch = r.scratch();
    let (code, out, err) = run(
        "receiver",
        &["--config", r.config.to_str().unwrap(), "--check-config"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(r.scratch(), scratch, "the check touched the scratch");
    tx.send(full[500_000..].to_vec()).await.unwrap();
    drop(tx);
    assert_eq!(task.await.unwrap(), Ok(201));
    assert_eq!(r.stored(HOST), ["ep.json", "ep.tar.zst"]);
}

#[tokio::test]
async fn sigterm_lets_the_upload_in_flight_finish_then_exits_0() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let (full, tx, task) = upload_in_flight(&r, &c, "ep", 1_000_000, 500_000).await;
    r.signal(15);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "exited before the drain"
    );
    tx.send(full[500_000..].to_vec()).await.unwrap();
    drop(tx);
    assert_eq!(task.await.unwrap(), Ok(201));
    let status = r
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "{status}");
    assert_eq!(r.stored(HOST), ["ep.json", "ep.tar.zst"]);
}

#[tokio::test]
async fn idle_and_slow_connections_do_not_starve_others() {
    let env = TestEnv::new();
    let r = with_limits(&env, "handshake_timeout_s = 1\nheader_timeout_s = 1");
    let idle: Vec<_> = (0..60)
        .map(|_| std::net::TcpStream::connect(r.addr).unwrap())
        .collect();
    let c = env.client(Some(&env.pki.client(HOST)));
    let t = Instant::now();
    let resp = c.post(format!("{}/v1/ping", r.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ping took {:?} beside 60 idle sockets",
        t.elapsed()
    );
    // A socket that never completes its handshake is closed by the timeout.
    let mut s = idle.into_iter().next().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    // End of stream or a reset; a read timeout means it was left open.
    match s.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the socket: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn curl_expect_100_continue_sends_no_doomed_body_and_raw_dotdot_is_refused() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let id = env.pki.client(HOST);
    let body = archive("ep", OLD_COMMIT, 3_000_000);
    let file = env.file("ep.tar.zst");
    std::fs::write(&file, &body).unwrap();
    let curl = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code} %{size_upload}",
        ])
        .arg("--cacert")
        .arg(&env.pki.ca_file)
        .arg("--cert")
        .arg(&id.cert_file)
        .arg("--key")
        .arg(&id.key_file)
        .args(extra);
        let out = cmd.output().expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let digest = format!("Content-Digest: {}", digest_header(&body));
    let commit = format!("X-Labship-Commit: {OLD_COMMIT}");
    let url = format!("{}/v1/episodes/{HOST}/ep", r.url);
    let (out, err) = curl(&[
        "-H",
        "Expect: 100-continue",
        "-H",
        &digest,
        "-H",
        &commit,
        "-T",
        file.to_str().unwrap(),
        &url,
    ]);
    assert_eq!(out, "412 0", "curl stderr: {err}");
    assert!(err.contains("commit_out_of_window"), "{err}");

    // A declared-oversize body gets its 413 without being sent.
    let (out, err) = curl(&[
        "-H",
        "Expect: 100-continue",
        "-H",
        &digest,
        "-H",
        &format!("X-Labship-Commit: {GOOD_COMMIT}"),
        "-H",
        "Content-Length: 99999999999999",
        "-T",
        file.to_str().unwrap(),
        &format!("{}/v1/episodes/{HOST}/big", r.url),
    ]);
    assert!(out.starts_with("413 "), "{out} {err}");

    // Another archive under an id already stored: the 409 comes from the
    // headers (the digest against the manifest), no body byte sent.
    let c = env.client(Some(&id));
    let first = archive("dup", GOOD_COMMIT, 10);
    assert_eq!(
        put_episode(&c, &r.url, HOST, "dup", GOOD_COMMIT, first)
            .await
            .status(),
        201
    );
    let other = archive("dup", GOOD_COMMIT, 3_000_000);
    let other_file = env.file("dup.tar.zst");
    std::fs::write(&other_file, &other).unwrap();
    let (out, err) = curl(&[
        "-H",
        "Expect: 100-continue",
        "-H",
        &format!("Content-Digest: {}", digest_header(&other)),
        "-H",
        &format!("X-Labship-Commit: {GOOD_COMMIT}"),
        "-T",
        other_file.to_str().unwrap(),
        &format!("{}/v1/episodes/{HOST}/dup", r.url),
    ]);
    assert_eq!(out, "409 0", "curl stderr: {err}");
    assert!(err.contains("conflict"), "{err}");

    let url = format!("{}/v1/episodes/{HOST}/..", r.url);
    let (out, err) = curl(&[
        "--path-as-is",
        "-X",
        "PUT",
        "-H",
        &digest,
        "-H",
        &commit,
        "--data-binary",
        "x",
        &url,
    ]);
    assert!(
        out.starts_with("400") || out.starts_with("404"),
        "{out} {err}"
    );
    // Only the first "dup" was stored; the refused ones left nothing.
    assert_eq!(r.stored(HOST), ["dup.json", "dup.tar.zst"]);
    assert!(r.scratch().is_empty(), "{:?}", r.scratch());
}

#[tokio::test]
async fn metrics_and_healthz() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    assert_eq!(
        put_episode(
            &c,
            &r.url,
            HOST,
            "ep",
            GOOD_COMMIT,
            archive("ep", GOOD_COMMIT, 1000)
        )
        .await
        .status(),
        201
    );
    assert!(r.ops_get("/healthz").ends_with("ok\n"));
    let m = r.ops_get("/metrics");
    for needle in [
        "labship_requests_total{route=\"PUT /v1/episodes/{host_id}/{episode_id}\",status=\"201\"} 1",
        "labship_gate_commits 1",
        "labship_received_bytes_total",
        "labship_upload_duration_seconds_bucket",
        "labship_uploads_in_flight 0",
        "labship_storage_errors_total 0",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
}

#[test]
fn bad_configurations_exit_2_naming_file_and_key() {
    let env = TestEnv::new();
    let (code, out, _) = run("receiver", &["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("receiver "), "{out}");
    assert_eq!(run("receiver", &["--help"]).0, 0);

    let allowed = env.file("allowed");
    std::fs::write(&allowed, format!("{GOOD_COMMIT}\n")).unwrap();
    let store = env.path().join("store");
    let tls = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        env.pki.server.cert_file, env.pki.server.key_file, env.pki.ca_file
    );
    let base = format!(
        "listen = \"127.0.0.1:0\"\n[storage]\ndir = {store:?}\n[ops]\nlisten = \"127.0.0.1:0\"\naudit_log = \"audit.jsonl\"\n"
    );
    let cases = [
        (
            "unknown key",
            format!("{base}[gate]\nallowed_commits_file = {allowed:?}\nalowed = 1\n"),
            "alowed",
        ),
        (
            "missing gate file",
            format!("{base}[gate]\nallowed_commits_file = \"/nonexistent/allowed\"\n"),
            "gate.allowed_commits_file",
        ),
        (
            "empty gate file",
            format!("{base}[gate]\nallowed_commits_file = \"/dev/null\"\n"),
            "gate.allowed_commits_file",
        ),
        (
            "unreadable certificate",
            format!(
                "{base}[gate]\nallowed_commits_file = {allowed:?}\n[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"k\"\nclient_ca_file = \"c\"\n"
            ),
            "tls.cert_file",
        ),
        (
            "plain HTTP off loopback",
            format!("listen = \"0.0.0.0:0\"\n[gate]\nallowed_commits_file = {allowed:?}\n"),
            "listen",
        ),
    ];
    for (name, text, key) in cases {
        let path = env.file(&format!("cfg/{}.toml", name.replace(' ', "-")));
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run("receiver", &["--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(key),
            "{name}: {err}"
        );
    }
    let _ = tls;
}

#[tokio::test]
async fn systemd_notify_ready_watchdog_stopping() {
    let env = TestEnv::new();
    let sock_path = env.file("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = Receiver::start_with(
        &env,
        ReceiverOpts {
            env: vec![
                (
                    "NOTIFY_SOCKET".into(),
                    sock_path.to_string_lossy().into_owned(),
                ),
                ("WATCHDOG_USEC".into(), "1000000".into()),
            ],
            ..Default::default()
        },
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv = |seen: &mut Vec<String>| {
        let n = sock.recv(&mut buf).expect("notify message");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    while seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 2 {
        recv(&mut seen);
    }
    assert!(seen[0].contains("READY=1"), "READY first: {seen:?}");
    r.signal(15);
    while !seen.iter().any(|m| m.contains("STOPPING=1")) {
        recv(&mut seen);
    }
    assert!(
        r.wait_exit(Duration::from_secs(10))
            .expect("exits")
            .success()
    );
}

#[tokio::test]
async fn a_body_that_stops_moving_is_cut_and_its_scratch_removed() {
    let env = TestEnv::new();
    let r = with_limits(&env, "body_idle_timeout_s = 1");
    let c = env.client(Some(&env.pki.client(HOST)));
    let (_full, tx, task) = upload_in_flight(&r, &c, "ep", 400_000, 100_000).await;
    // Stall: keep the sender open but send nothing more.
    let t = Instant::now();
    wait_until("scratch removed", Duration::from_secs(5), || {
        r.scratch().is_empty()
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(4));
    let answer = task.await.unwrap();
    assert!(matches!(answer, Ok(503) | Err(_)), "{answer:?}");
    drop(tx);
    assert!(r.stored(HOST).is_empty());
    let audit = r.audit_records();
    assert_eq!(audit.last().unwrap()["status"], 503, "{audit:?}");
}

#[tokio::test]
async fn the_connection_cap_closes_extra_sockets_and_frees_slots() {
    let env = TestEnv::new();
    let r = with_limits(&env, "max_connections = 4\nhandshake_timeout_s = 2");
    let held: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(r.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = std::net::TcpStream::connect(r.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(
        extra.read(&mut [0u8; 8]).unwrap_or(1),
        0,
        "the fifth socket is closed at once"
    );
    assert!(
        r.ops_get("/metrics")
            .contains("labship_connections_refused_total 1")
    );
    // When the held sockets time out, their slots come back.
    drop(held);
    let c = env.client(Some(&env.pki.client(HOST)));
    let started = Instant::now();
    loop {
        if let Ok(resp) = c.post(format!("{}/v1/ping", r.url)).send().await {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slots never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_retry_after_the_gate_moved_still_gets_200_not_412() {
    // Regression: a shipper whose 201 was lost retries; if the window moved in
    // between, a 412 would make it quarantine an episode the receiver holds.
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let body = archive("ep", GOOD_COMMIT, 1000);
    assert_eq!(
        put_episode(&c, &r.url, HOST, "ep", GOOD_COMMIT, body.clone())
            .await
            .status(),
        201
    );
    std::fs::write(&r.allowed, format!("{OLD_COMMIT}\n")).unwrap();
    r.signal(1);
    // Probe with a fresh id each time: a probe that lands before the reload is
    // stored, and a stored id answers 200 whatever the gate says.
    let started = Instant::now();
    for n in 0.. {
        let id = format!("probe-{n}");
        if put_episode(
            &c,
            &r.url,
            HOST,
            &id,
            GOOD_COMMIT,
            archive(&id, GOOD_COMMIT, 10),
        )
        .await
        .status()
            == 412
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "gate did not move"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        put_episode(&c, &r.url, HOST, "ep", GOOD_COMMIT, body)
            .await
            .status(),
        200
    );
}
