//! Issue 19: the receiver's `/readyz` on a read-only store, while draining,
//! on S3 (a real write, the store down and back) and on a hung store; a
//! stuck ops client does not hold up the exit.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::episode::digest_header;
use labship_tests::fleet::*;
use labship_tests::process::{Receiver, ReceiverOpts};
use labship_tests::{GOOD_COMMIT, TestEnv};
use std::io::Write as _;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
            store: Some(store.clone()),
            ..ReceiverOpts::in_mount_namespace(script)
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
