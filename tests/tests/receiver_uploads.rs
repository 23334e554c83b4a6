//! The resumable upload API (CONTRACT §9) against the real receiver over real
//! mutual TLS: creation and its header decisions, appends, completion, the
//! hostile cases (each with its documented answer and nothing visible in the
//! store), expiry, and a receiver `kill -9` mid-upload.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::episode::{digest_header, noise, pack, write_episode};
use labship_tests::process::{Receiver, ReceiverOpts};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv};
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HOST: &str = "lab-01";

/// One answer: status, JSON body (Null when none), headers.
type Got = (u16, Value, HeaderMap);

async fn answer(resp: reqwest::Response) -> Got {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    path: &str,
    archive: &[u8],
    commit: &str,
    length: Option<u64>,
) -> Got {
    let mut req = c
        .post(format!("{url}/v1/uploads/{path}"))
        .header("Content-Digest", digest_header(archive))
        .header("X-Labship-Commit", commit);
    if let Some(n) = length {
        req = req.header("Upload-Length", n.to_string());
    }
    answer(req.send().await.unwrap()).await
}

/// Creates an upload of `archive` for `episode`; its location.
async fn create(c: &reqwest::Client, url: &str, episode: &str, archive: &[u8]) -> String {
    let got = post(
        c,
        url,
        &format!("{HOST}/{episode}"),
        archive,
        GOOD_COMMIT,
        Some(archive.len() as u64),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    got.2["location"].to_str().unwrap().to_owned()
}

async fn head(c: &reqwest::Client, url: &str, location: &str) -> Got {
    answer(c.head(format!("{url}{location}")).send().await.unwrap()).await
}

async fn patch(
    c: &reqwest::Client,
    url: &str,
    location: &str,
    offset: u64,
    complete: bool,
    body: Vec<u8>,
) -> Got {
    let req = c
        .patch(format!("{url}{location}"))
        .header("Content-Type", "application/partial-upload")
        .header("Upload-Offset", offset.to_string())
        .header("Upload-Complete", if complete { "?1" } else { "?0" })
        .body(body);
    answer(req.send().await.unwrap()).await
}

fn offset_of(got: &Got) -> u64 {
    got.2["upload-offset"].to_str().unwrap().parse().unwrap()
}

fn assert_error(got: &Got, status: u16, code: &str) {
    assert_eq!(got.0, status, "{got:?}");
    assert_eq!(got.1["error"], code, "{got:?}");
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{got:?}"
    );
}

/// The partial uploads in the spool, as `host/token`.
fn spool(r: &Receiver) -> Vec<String> {
    let root = r.store.join(".uploads");
    let mut out = Vec::new();
    for host in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for up in std::fs::read_dir(host.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(format!(
                "{}/{}",
                host.file_name().to_string_lossy(),
                up.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

/// An episode's archive with `size` bytes of incompressible data.
fn archive(env: &TestEnv, id: &str, size: usize, seed: u64) -> Vec<u8> {
    let src = write_episode(
        &env.path().join(format!("src-{id}-{seed}")),
        id,
        Some(GOOD_COMMIT),
        &[("data/a.bin", &noise(size, seed)), ("b.csv", b"x,y\n1,2\n")],
    );
    pack(&src)
}

#[tokio::test]
async fn create_append_complete_and_the_same_answers_as_put() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep-1", 1_500_000, 1);
    let n = bytes.len() as u64;

    let got = post(
        &c,
        &r.url,
        &format!("{HOST}/ep-1"),
        &bytes,
        GOOD_COMMIT,
        Some(n),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    let location = got.2["location"].to_str().unwrap().to_owned();
    let (h, e, token) = labship_protocol::upload::parse_location(&location).unwrap();
    assert_eq!((h.as_str(), e.as_str()), (HOST, "ep-1"));
    assert_eq!(offset_of(&got), 0);
    assert_eq!(
        got.2["upload-limit"],
        format!("max-size={}, expires=86400", 64u64 << 30).as_str()
    );
    assert_eq!(spool(&r), [format!("{HOST}/{token}")]);
    assert!(r.ops_get("/metrics").contains("labship_partial_uploads 1"));

    let got = head(&c, &r.url, &location).await;
    assert_eq!(got.0, 204);
    assert_eq!(offset_of(&got), 0);
    assert_eq!(got.2["upload-length"], n.to_string().as_str());
    assert_eq!(got.2["upload-complete"], "?0");
    assert_eq!(got.2["cache-control"], "no-store");

    // Three appends: the first two leave it partial.
    let (a, b) = (n as usize / 3, 2 * n as usize / 3);
    let got = patch(&c, &r.url, &location, 0, false, bytes[..a].to_vec()).await;
    assert_eq!((got.0, offset_of(&got)), (204, a as u64), "{got:?}");
    let got = patch(&c, &r.url, &location, a as u64, false, bytes[a..b].to_vec()).await;
    assert_eq!((got.0, offset_of(&got)), (204, b as u64), "{got:?}");
    assert_eq!(offset_of(&head(&c, &r.url, &location).await), b as u64);
    assert!(r.stored(HOST).is_empty(), "visible before completion");
    let got = patch(&c, &r.url, &location, b as u64, true, bytes[b..].to_vec()).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(got.1["digest"], digest_header(&bytes).as_str());
    assert_eq!(got.1["bytes"], n);
    assert_eq!(r.stored(HOST), ["ep-1.json", "ep-1.tar.zst"]);
    assert_eq!(
        std::fs::read(r.store.join(HOST).join("ep-1.tar.zst")).unwrap(),
        bytes
    );
    assert!(spool(&r).is_empty(), "spool left: {:?}", spool(&r));
    assert!(r.scratch().is_empty(), "scratch left: {:?}", r.scratch());
    let metrics = r.ops_get("/metrics");
    assert!(metrics.contains("labship_partial_uploads 0"));
    // The stored archive's size, not the last append's.
    assert!(
        metrics.contains(&format!("labship_upload_bytes_total {n}")),
        "{metrics}"
    );

    // Completed: the location is gone; a new POST is the PUT's 200.
    assert_eq!(head(&c, &r.url, &location).await.0, 404);
    let again = post(
        &c,
        &r.url,
        &format!("{HOST}/ep-1"),
        &bytes,
        GOOD_COMMIT,
        Some(n),
    )
    .await;
    assert_eq!(again.0, 200, "{again:?}");
    assert_eq!(again.1["digest"], digest_header(&bytes).as_str());
    // Another digest under a stored id: 409 before any byte.
    let other = archive(&env, "ep-1", 1000, 2);
    let got = post(
        &c,
        &r.url,
        &format!("{HOST}/ep-1"),
        &other,
        GOOD_COMMIT,
        Some(10),
    )
    .await;
    assert_error(&got, 409, "conflict");

    let ops: Vec<_> = r
        .audit_records()
        .iter()
        .map(|a| format!("{} {}", a["op"].as_str().unwrap(), a["status"]))
        .collect();
    assert_eq!(
        ops,
        [
            "upload_create 201",
            "upload_append 204",
            "upload_append 204",
            "upload_append 201",
            "upload_create 200",
            "upload_create 409"
        ]
    );
}

#[tokio::test]
async fn creation_makes_every_header_decision_before_any_byte() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_episode_bytes = 1000000\nmax_partial_uploads = 2\n".into(),
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 1000, 3);
    let n = Some(bytes.len() as u64);
    let p = format!("{HOST}/ep");
    assert_error(
        &post(&c, &r.url, &p, &bytes, OLD_COMMIT, n).await,
        412,
        "commit_out_of_window",
    );
    assert_error(
        &post(&c, &r.url, &p, &bytes, "nope", n).await,
        400,
        "stamp_malformed",
    );
    assert_error(
        &post(&c, &r.url, &p, &bytes, GOOD_COMMIT, None).await,
        400,
        "header_invalid",
    );
    assert_error(
        &post(&c, &r.url, &p, &bytes, GOOD_COMMIT, Some(1_000_001)).await,
        413,
        "too_large",
    );
    assert_error(
        &post(&c, &r.url, &format!("{HOST}/.bad"), &bytes, GOOD_COMMIT, n).await,
        400,
        "invalid_episode_id",
    );
    assert_error(
        &post(&c, &r.url, "lab-02/ep", &bytes, GOOD_COMMIT, n).await,
        403,
        "host_mismatch",
    );
    assert!(spool(&r).is_empty(), "a refusal left {:?}", spool(&r));

    // limits.max_partial_uploads = 2: a third is 503 busy.
    let first = create(&c, &r.url, "ep-a", &bytes).await;
    create(&c, &r.url, "ep-b", &bytes).await;
    let got = post(&c, &r.url, &format!("{HOST}/ep-c"), &bytes, GOOD_COMMIT, n).await;
    assert_error(&got, 503, "busy");
    assert!(got.2.contains_key("retry-after"));
    // A new POST of the same archive resumes its upload (the client lost
    // the location); one of another archive replaces the idle upload:
    // still two.
    assert_eq!(create(&c, &r.url, "ep-a", &bytes).await, first);
    let mut other = bytes.clone();
    other.push(0);
    let again = create(&c, &r.url, "ep-a", &other).await;
    assert_ne!(again, first);
    assert_eq!(head(&c, &r.url, &first).await.0, 404);
    assert_eq!(spool(&r).len(), 2, "{:?}", spool(&r));
    assert!(
        spool(&r)
            .iter()
            .any(|s| again.ends_with(s.split('/').nth(1).unwrap()))
    );
    assert!(r.stored(HOST).is_empty());
}

#[tokio::test]
async fn hostile_appends_get_their_answers_and_leave_nothing_visible() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 200_000, 4);
    let n = bytes.len() as u64;

    // Wrong offset: 409 with the right one; nothing written.
    let loc = create(&c, &r.url, "ep", &bytes).await;
    let got = patch(&c, &r.url, &loc, 0, false, bytes[..1000].to_vec()).await;
    assert_eq!(got.0, 204);
    let got = patch(&c, &r.url, &loc, 500, false, bytes[500..2000].to_vec()).await;
    assert_error(&got, 409, "offset_mismatch");
    assert_eq!(offset_of(&got), 1000);
    assert_eq!(offset_of(&head(&c, &r.url, &loc).await), 1000);

    // Another host: 403 on lab-01's path; its own path with lab-01's token: 404.
    let other = env.client(Some(&env.pki.client("lab-02")));
    let got = patch(&other, &r.url, &loc, 1000, false, bytes[1000..].to_vec()).await;
    assert_error(&got, 403, "host_mismatch");
    let stolen = loc.replacen(HOST, "lab-02", 1);
    assert_eq!(head(&other, &r.url, &stolen).await.0, 404);
    assert_error(
        &patch(&other, &r.url, &stolen, 1000, false, vec![1; 10]).await,
        404,
        "not_found",
    );
    // A guessed token, and a token under another episode: 404.
    let (_, _, token) = labship_protocol::upload::parse_location(&loc).unwrap();
    let guessed = loc.replace(token.as_str(), &"0".repeat(32));
    assert_eq!(head(&c, &r.url, &guessed).await.0, 404);
    assert_error(
        &patch(&c, &r.url, &guessed, 1000, true, bytes[1000..].to_vec()).await,
        404,
        "not_found",
    );
    let moved = loc.replace("/ep/", "/ep-x/");
    assert_eq!(head(&c, &r.url, &moved).await.0, 404);
    assert_eq!(offset_of(&head(&c, &r.url, &loc).await), 1000, "untouched");

    // Malformed or missing upload headers: 400 header_invalid, naming the
    // header; the upload is kept.
    let bad = |offset: Option<&str>, complete: &str| {
        let mut req = c
            .patch(format!("{}{loc}", r.url))
            .header("Content-Type", "application/partial-upload")
            .header("Upload-Complete", complete)
            .body(b"x".to_vec());
        if let Some(o) = offset {
            req = req.header("Upload-Offset", o);
        }
        req.send()
    };
    let got = answer(bad(Some("1000"), "yes").await.unwrap()).await;
    assert_error(&got, 400, "header_invalid");
    assert!(
        got.1["message"]
            .as_str()
            .unwrap()
            .contains("Upload-Complete"),
        "{got:?}"
    );
    let got = answer(bad(None, "?0").await.unwrap()).await;
    assert_error(&got, 400, "header_invalid");
    assert!(
        got.1["message"].as_str().unwrap().contains("Upload-Offset"),
        "{got:?}"
    );
    assert_eq!(offset_of(&head(&c, &r.url, &loc).await), 1000, "kept");

    // Past Upload-Length: 400 upload_length_mismatch, the upload discarded.
    let mut long = bytes[1000..].to_vec();
    long.extend_from_slice(b"extra");
    let got = patch(&c, &r.url, &loc, 1000, true, long).await;
    assert_error(&got, 400, "upload_length_mismatch");
    assert_eq!(head(&c, &r.url, &loc).await.0, 404);
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));

    // Completed short of Upload-Length: the same.
    let loc = create(&c, &r.url, "ep", &bytes).await;
    let got = patch(&c, &r.url, &loc, 0, true, bytes[..1000].to_vec()).await;
    assert_error(&got, 400, "upload_length_mismatch");
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));

    // A digest that is not the archive's: found at completion.
    let got = post(
        &c,
        &r.url,
        &format!("{HOST}/ep"),
        b"other bytes",
        GOOD_COMMIT,
        Some(n),
    )
    .await;
    let loc = got.2["location"].to_str().unwrap().to_owned();
    let got = patch(&c, &r.url, &loc, 0, true, bytes.clone()).await;
    assert_error(&got, 400, "digest_mismatch");
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));

    // Bytes that are not an archive: refused as they arrive, not at the end.
    let junk = noise(100_000, 9);
    let got = post(
        &c,
        &r.url,
        &format!("{HOST}/ep"),
        &junk,
        GOOD_COMMIT,
        Some(200_000),
    )
    .await;
    let loc = got.2["location"].to_str().unwrap().to_owned();
    let got = patch(&c, &r.url, &loc, 0, false, junk).await;
    assert_error(&got, 400, "archive_invalid");
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));

    // DELETE discards; the location is gone.
    let loc = create(&c, &r.url, "ep", &bytes).await;
    assert_eq!(
        patch(&c, &r.url, &loc, 0, false, bytes[..5000].to_vec())
            .await
            .0,
        204
    );
    let got = answer(c.delete(format!("{}{loc}", r.url)).send().await.unwrap()).await;
    assert_eq!(got.0, 204, "{got:?}");
    assert_eq!(head(&c, &r.url, &loc).await.0, 404);
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));

    // Append after completion: the upload is gone (404); the archive stays.
    let loc = create(&c, &r.url, "ep", &bytes).await;
    assert_eq!(patch(&c, &r.url, &loc, 0, true, bytes.clone()).await.0, 201);
    let got = patch(&c, &r.url, &loc, n, true, vec![]).await;
    assert_error(&got, 404, "not_found");
    assert_eq!(
        std::fs::read(r.store.join(HOST).join("ep.tar.zst")).unwrap(),
        bytes
    );
    assert!(r.scratch().is_empty(), "scratch left: {:?}", r.scratch());
}

#[tokio::test]
async fn idle_uploads_expire_and_their_files_go() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nupload_expiry_s = 2\n".into(),
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 50_000, 5);
    let loc = create(&c, &r.url, "ep", &bytes).await;
    assert_eq!(
        patch(&c, &r.url, &loc, 0, false, bytes[..100].to_vec())
            .await
            .0,
        204
    );
    assert_eq!(spool(&r).len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spool(&r).is_empty() {
        assert!(Instant::now() < deadline, "not removed: {:?}", spool(&r));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(head(&c, &r.url, &loc).await.0, 404);
    assert_error(
        &patch(&c, &r.url, &loc, 100, true, bytes[100..].to_vec()).await,
        404,
        "not_found",
    );
    assert!(r.stored(HOST).is_empty());
    assert!(r.ops_get("/metrics").contains("labship_partial_uploads 0"));
    assert!(r.log_text().contains("partial upload expired"));
}

/// A request body the test feeds chunk by chunk; it ends when the sender drops.
fn streamed() -> (tokio::sync::mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// Starts an append whose body the test feeds.
fn patch_streamed(
    c: &reqwest::Client,
    url: &str,
    location: &str,
    offset: u64,
    complete: bool,
) -> (
    tokio::sync::mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let (tx, body) = streamed();
    let req = c
        .patch(format!("{url}{location}"))
        .header("Content-Type", "application/partial-upload")
        .header("Upload-Offset", offset.to_string())
        .header("Upload-Complete", if complete { "?1" } else { "?0" })
        .body(body);
    (tx, tokio::spawn(req.send()))
}

fn data_file(r: &Receiver, location: &str) -> std::path::PathBuf {
    let (host, _, token) = labship_protocol::upload::parse_location(location).unwrap();
    r.store
        .join(".uploads")
        .join(host)
        .join(token.as_str())
        .join("data")
}

#[tokio::test]
async fn receiver_kill_9_mid_upload_resumes_from_an_offset_really_on_disk() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "big", 40 << 20, 6);
    let n = bytes.len() as u64;
    let loc = create(&c, &r.url, "big", &bytes).await;

    // 24 MiB sent, then the client goes quiet with the request still open.
    let sent = 24usize << 20;
    let (tx, _request) = patch_streamed(&c, &r.url, &loc, 0, true);
    for chunk in bytes[..sent].chunks(1 << 20) {
        tx.send(chunk.to_vec()).await.unwrap();
    }
    // Checkpoints pass (every 16 MiB, and 2 s after the client goes quiet:
    // then all it sent is durable); slow on a loaded machine, as the debug
    // receiver hashes and decompresses every byte.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let at = offset_of(&head(&c, &r.url, &loc).await);
        if at == sent as u64 {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint passed: offset {at}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    r.kill9();
    // What the dead receiver left on disk (start-up cuts `data` back to the
    // recorded offset, so it is read before the restart).
    let on_disk = std::fs::read(data_file(&r, &loc)).unwrap();
    r.restart();
    // A new client: the old one's pooled connections died with the receiver.
    let c = env.client(Some(&env.pki.client(HOST)));

    let got = head(&c, &r.url, &loc).await;
    assert_eq!(got.0, 204, "{got:?}");
    let at = offset_of(&got);
    assert!(
        at >= before && at <= sent as u64,
        "HEAD says {at}: the last checkpoint seen was {before}, {sent} were sent"
    );
    assert_eq!(at, sent as u64, "a quiet client's bytes are all durable");
    assert!(
        on_disk.len() as u64 >= at,
        "the data file held {} bytes, HEAD says {at}",
        on_disk.len()
    );
    assert!(
        on_disk[..at as usize] == bytes[..at as usize],
        "the bytes on disk are the sent ones"
    );
    let after = std::fs::read(data_file(&r, &loc)).unwrap();
    assert!(
        after == bytes[..at as usize],
        "start-up kept the durable prefix"
    );
    assert!(r.stored(HOST).is_empty(), "visible before completion");

    // An empty append at the held offset (how a client probes for it) is
    // answered without waiting for the prefix to be re-validated.
    let probed = Instant::now();
    let got = patch(&c, &r.url, &loc, at, false, vec![]).await;
    let probed = probed.elapsed();
    assert_eq!((got.0, offset_of(&got)), (204, at), "{got:?}");
    // The rest from there: the validator is rebuilt from the spooled prefix.
    let resumed = Instant::now();
    let got = patch(&c, &r.url, &loc, at, true, bytes[at as usize..].to_vec()).await;
    let resumed = resumed.elapsed();
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(got.1["bytes"], n);
    let stored = std::fs::read(r.store.join(HOST).join("big.tar.zst")).unwrap();
    assert!(
        stored == bytes,
        "the stored archive differs from the original"
    );
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));
    eprintln!(
        "MEASURED receiver kill -9 mid-upload: {n} bytes, {sent} sent, HEAD after restart {at} (last seen before the kill {before}); an empty probe answered in {probed:.1?}, the rest (prefix re-validated, debug build) 201 in {resumed:.1?}; stored byte-identical"
    );
}

#[tokio::test]
async fn a_newer_append_takes_over_from_a_silent_one() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 3 << 20, 7);
    let loc = create(&c, &r.url, "ep", &bytes).await;
    // An append that sends 1 MiB and then nothing (a shipper killed -9
    // whose connection still looks alive to the receiver).
    let (tx, old) = patch_streamed(&c, &r.url, &loc, 0, true);
    tx.send(bytes[..1 << 20].to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A new upload of another archive of the episode while an append to
    // one is in progress: this episode is busy (the shipper defers it alone).
    let mut other = bytes.clone();
    other.push(0);
    let got = post(
        &c,
        &r.url,
        &format!("{HOST}/ep"),
        &other,
        GOOD_COMMIT,
        Some(other.len() as u64),
    )
    .await;
    assert_error(&got, 503, "episode_busy");
    assert!(got.2.contains_key("retry-after"), "{got:?}");
    // The same archive again: its upload's location, to take over.
    assert_eq!(create(&c, &r.url, "ep", &bytes).await, loc);
    // The restarted shipper asks HEAD (0 unless the quiet client's
    // checkpoint, 2 s in, has passed) and appends from there.
    let started = Instant::now();
    let at = offset_of(&head(&c, &r.url, &loc).await);
    let got = patch(&c, &r.url, &loc, at, true, bytes[at as usize..].to_vec()).await;
    let got = if got.0 == 409 {
        // The older append stopped and kept what it had: continue there.
        assert_error(&got, 409, "offset_mismatch");
        let at = offset_of(&got);
        // All of the MiB unless the receiver had not read it all off the socket.
        assert!(
            at > 0 && at <= 1 << 20,
            "the older append's bytes are kept: {at}"
        );
        patch(&c, &r.url, &loc, at, true, bytes[at as usize..].to_vec()).await
    } else {
        got
    };
    assert_eq!(got.0, 201, "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?}: the takeover must not wait for limits.body_idle_timeout_s",
        started.elapsed()
    );
    assert_eq!(
        std::fs::read(r.store.join(HOST).join("ep.tar.zst")).unwrap(),
        bytes
    );
    drop(tx);
    let _ = old.await;
}

/// A client that follows the protocol through receiver crashes: POST, then
/// HEAD and PATCH from the receiver's offset, in `chunk`-sized appends; on
/// a dead receiver it checks that nothing incomplete is visible and
/// restarts it. Returns how many times the receiver died.
async fn upload_through_crashes(
    r: &mut Receiver,
    env: &TestEnv,
    episode: &str,
    bytes: &[u8],
    chunk: usize,
) -> usize {
    let (n, mut deaths, mut location) = (bytes.len() as u64, 0, None::<String>);
    let archive = r.store.join(HOST).join(format!("{episode}.tar.zst"));
    let mut c = env.client(Some(&env.pki.client(HOST)));
    let sent = AtomicU64::new(0);
    for _ in 0..50 {
        let step = upload_step(&r.url, &c, episode, bytes, chunk, &mut location, &sent).await;
        match step {
            Ok(true) => return deaths,
            Ok(false) => continue,
            Err(e) => {
                let status = r.wait_exit(Duration::from_secs(10));
                use std::os::unix::process::ExitStatusExt as _;
                assert_eq!(
                    status.and_then(|s| s.signal()),
                    Some(9),
                    "request failed ({e}) but the receiver did not die:\n{}",
                    r.log_text()
                );
                deaths += 1;
                let stored = std::fs::read(&archive).ok();
                if let Some(stored) = &stored {
                    assert!(stored == bytes, "a visible archive is incomplete or wrong");
                }
                r.restart();
                c = env.client(Some(&env.pki.client(HOST)));
                // Committed before the crash: start-up removed the upload.
                if let (Some(_), Some(loc)) = (&stored, &location) {
                    let got = answer(c.head(format!("{}{loc}", r.url)).send().await.unwrap()).await;
                    assert_eq!(got.0, 404, "the committed upload is still live: {got:?}");
                    assert!(spool(r).is_empty(), "spool left {:?}", spool(r));
                }
            }
        }
    }
    panic!("not stored after 50 steps ({n} bytes)");
}

/// One request of [`upload_through_crashes`]: Ok(true) when stored. `sent`
/// keeps the most bytes ever handed to a request; every `HEAD` must report
/// no more than that.
async fn upload_step(
    url: &str,
    c: &reqwest::Client,
    episode: &str,
    bytes: &[u8],
    chunk: usize,
    location: &mut Option<String>,
    sent: &AtomicU64,
) -> reqwest::Result<bool> {
    let n = bytes.len() as u64;
    let Some(loc) = location.clone() else {
        let resp = c
            .post(format!("{url}/v1/uploads/{HOST}/{episode}"))
            .header("Content-Digest", digest_header(bytes))
            .header("X-Labship-Commit", GOOD_COMMIT)
            .header("Upload-Length", n.to_string())
            .send()
            .await?;
        let got = answer(resp).await;
        match got.0 {
            200 => return Ok(true),
            201 => *location = Some(got.2["location"].to_str().unwrap().to_owned()),
            _ => panic!("POST: {got:?}"),
        }
        return Ok(false);
    };
    let got = answer(c.head(format!("{url}{loc}")).send().await?).await;
    if got.0 == 404 {
        *location = None;
        return Ok(false);
    }
    let at = offset_of(&got);
    let most = sent.load(Ordering::SeqCst);
    assert!(
        at <= most,
        "HEAD reports {at} bytes; at most {most} were sent"
    );
    let end = (at as usize + chunk).min(bytes.len());
    sent.fetch_max(end as u64, Ordering::SeqCst);
    let resp = c
        .patch(format!("{url}{loc}"))
        .header("Content-Type", "application/partial-upload")
        .header("Upload-Offset", at.to_string())
        .header(
            "Upload-Complete",
            if end == bytes.len() { "?1" } else { "?0" },
        )
        .body(bytes[at as usize..end].to_vec())
        .send()
        .await?;
    let got = answer(resp).await;
    match got.0 {
        200 | 201 => Ok(true),
        204 => Ok(false),
        _ => panic!("PATCH at {at}: {got:?}"),
    }
}

#[tokio::test]
async fn receiver_killed_at_each_upload_crash_point_stores_once_never_incomplete() {
    for point in [
        "upload:created",
        "upload:data-synced",
        "upload:offset-recorded",
        "store:scratch-synced",
        "store:manifest-renamed",
        "store:archive-renamed",
        "upload:committed",
    ] {
        let env = TestEnv::new();
        let mut r = Receiver::start_with(
            &env,
            ReceiverOpts {
                env: vec![("LABSHIP_CRASH_AT".into(), point.into())],
                ..Default::default()
            },
        );
        let bytes = archive(&env, "ep", 6 << 20, 8);
        let deaths = upload_through_crashes(&mut r, &env, "ep", &bytes, 4 << 20).await;
        assert_eq!(deaths, 1, "{point}: the receiver died {deaths} times");
        assert_eq!(r.stored(HOST), ["ep.json", "ep.tar.zst"], "{point}");
        assert!(
            std::fs::read(r.store.join(HOST).join("ep.tar.zst")).unwrap() == bytes,
            "{point}: stored bytes differ"
        );
        assert!(spool(&r).is_empty(), "{point}: spool left {:?}", spool(&r));
        assert!(
            r.scratch().is_empty(),
            "{point}: scratch left {:?}",
            r.scratch()
        );
        let created = r
            .audit_records()
            .iter()
            .filter(|a| a["op"] == "upload_append" && a["status"] == 201)
            .count();
        assert!(created <= 1, "{point}: {created} completions answered 201");
    }
}

#[tokio::test]
async fn shutdown_stops_an_append_at_once_and_keeps_every_byte_that_arrived() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 4 << 20, 9);
    let loc = create(&c, &r.url, "ep", &bytes).await;
    let sent = 3usize << 20;
    let (tx, request) = patch_streamed(&c, &r.url, &loc, 0, true);
    for chunk in bytes[..sent].chunks(256 << 10) {
        tx.send(chunk.to_vec()).await.unwrap();
    }
    // Let the bytes land (the stop keeps them, checkpoint or not).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let stopping = Instant::now();
    r.signal(15);
    let got = answer(request.await.unwrap().unwrap()).await;
    assert_error(&got, 503, "shutting_down");
    assert_eq!(offset_of(&got), sent as u64, "{got:?}");
    let status = r.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the append held the drain for {:?}",
        stopping.elapsed()
    );
    drop(tx);
    r.restart();
    let c = env.client(Some(&env.pki.client(HOST)));
    assert_eq!(offset_of(&head(&c, &r.url, &loc).await), sent as u64);
    let got = patch(&c, &r.url, &loc, sent as u64, true, bytes[sent..].to_vec()).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(
        std::fs::read(r.store.join(HOST).join("ep.tar.zst")).unwrap(),
        bytes
    );
}

/// The resumable side of the receiver kill campaign
/// (`LABSHIP_UPLOAD_TRIALS`, default 5; `LABSHIP_CRASH_SEED`): a client
/// uploads a 16 MiB archive in 2 MiB appends, following the protocol through
/// dead receivers (retrying, HEAD, PATCH from the offset); the receiver is
/// SIGKILLed once a random share (10-90 %) of the archive has been sent, then
/// restarted. Every HEAD reports no more than was sent; after each kill a
/// visible archive is complete; in the end it is stored once,
/// byte-identical, with spool and scratch empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_at_random_moments_of_resumable_uploads() {
    let trials: u64 = std::env::var("LABSHIP_UPLOAD_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("LABSHIP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(17);
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let id = env.pki.client(HOST);
    let (ca, pem) = (
        env.pki.ca_pem.clone(),
        format!("{}{}", id.cert_pem, id.key_pem),
    );
    let client = move || {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
            .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let mut mid_upload = 0;
    for (t, d) in noise(trials as usize, seed).iter().enumerate() {
        let episode = format!("ep-{t}");
        let bytes = Arc::new(archive(&env, &episode, 16 << 20, seed + t as u64));
        let share = 10 + u64::from(*d) % 81;
        let threshold = bytes.len() as u64 * share / 100;
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (url, bytes, sent, episode, client) = (
                r.url.clone(),
                bytes.clone(),
                sent.clone(),
                episode.clone(),
                client.clone(),
            );
            async move {
                let (mut c, mut location) = (client(), None);
                for _ in 0..200 {
                    match upload_step(&url, &c, &episode, &bytes, 2 << 20, &mut location, &sent)
                        .await
                    {
                        Ok(true) => return,
                        Ok(false) => {}
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            c = client();
                        }
                    }
                }
                panic!("{episode}: not stored after 200 requests");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.load(Ordering::SeqCst) < threshold && !task.is_finished() {
            assert!(
                Instant::now() < deadline,
                "trial {t}: the upload does not move"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        mid_upload += usize::from(!task.is_finished());
        r.kill9();
        let archive_path = r.store.join(HOST).join(format!("{episode}.tar.zst"));
        if let Ok(stored) = std::fs::read(&archive_path) {
            assert!(
                stored == *bytes,
                "trial {t}: a visible archive is incomplete"
            );
        }
        r.restart();
        tokio::time::timeout(Duration::from_secs(90), task)
            .await
            .expect("upload finished")
            .expect("upload task");
        let ctx = format!("trial {t} (seed {seed}, kill at {share} %)");
        assert!(
            std::fs::read(&archive_path).unwrap() == *bytes,
            "{ctx}: stored bytes differ"
        );
        assert!(spool(&r).is_empty(), "{ctx}: spool left {:?}", spool(&r));
        assert!(
            r.scratch().is_empty(),
            "{ctx}: scratch left {:?}",
            r.scratch()
        );
    }
    let created = r
        .audit_records()
        .iter()
        .filter(|a| a["op"] == "upload_append" && a["status"] == 201)
        .count();
    assert!(
        created as u64 <= trials,
        "{created} completions answered 201"
    );
    assert!(
        mid_upload * 2 >= trials as usize,
        "only {mid_upload} of {trials} kills landed mid-upload"
    );
    eprintln!(
        "MEASURED resumable kill campaign: {trials} trials (seed {seed}), {mid_upload} kills mid-upload, every HEAD within the bytes sent, all stored once and byte-identical"
    );
}

/// A full disk mid-append: 507, the upload kept at its last durable offset;
/// once there is room the client continues from there and the archive is
/// stored intact. Needs root (a tmpfs store in a private mount namespace).
#[tokio::test]
async fn a_full_spool_is_507_and_the_upload_continues_when_space_returns() {
    if !labship_tests::is_root() {
        labship_tests::skip(
            "a_full_spool_is_507_and_the_upload_continues_when_space_returns",
            "needs root for a tmpfs mount",
        );
        return;
    }
    let env = TestEnv::new();
    let (r, view) = Receiver::on_tmpfs(&env, "4m");
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 3 << 20, 10);
    let loc = create(&c, &r.url, "ep", &bytes).await;
    let filler = view.join("filler");
    labship_tests::episode::write_file(&filler, &vec![0u8; 2_500_000]);
    let got = patch(&c, &r.url, &loc, 0, true, bytes.clone()).await;
    assert_error(&got, 507, "insufficient_storage");
    assert!(
        !view.join(HOST).join("ep.tar.zst").exists(),
        "nothing visible"
    );
    let got = head(&c, &r.url, &loc).await;
    assert_eq!(got.0, 204, "the upload is kept: {got:?}");
    let at = offset_of(&got);
    assert!(at < bytes.len() as u64, "{at}");

    std::fs::remove_file(&filler).unwrap();
    let got = patch(&c, &r.url, &loc, at, true, bytes[at as usize..].to_vec()).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert!(std::fs::read(view.join(HOST).join("ep.tar.zst")).unwrap() == bytes);
    assert!(
        std::fs::read_dir(view.join(".uploads").join(HOST))
            .unwrap()
            .next()
            .is_none()
    );
}

/// An archive the receiver's disk cannot hold beside what the uploads in
/// progress still need is refused 507 at its POST (or its PUT's headers),
/// before any byte is sent, and creates nothing; a POST of the same archive
/// as an upload in progress still resumes it (its own bytes are not counted
/// twice). Needs root (a tmpfs store in a private mount namespace).
#[tokio::test]
async fn an_archive_the_disk_cannot_hold_is_507_before_any_byte() {
    if !labship_tests::is_root() {
        labship_tests::skip(
            "an_archive_the_disk_cannot_hold_is_507_before_any_byte",
            "needs root for a tmpfs mount",
        );
        return;
    }
    let env = TestEnv::new();
    let (r, view) = Receiver::on_tmpfs(&env, "4m");
    let uploads = || -> usize {
        std::fs::read_dir(view.join(".uploads").join(HOST))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let c = env.client(Some(&env.pki.client(HOST)));
    let post_of = |id: &'static str, bytes: &[u8]| {
        let bytes = bytes.to_vec();
        let (c, url) = (c.clone(), r.url.clone());
        async move {
            let n = Some(bytes.len() as u64);
            post(&c, &url, &format!("{HOST}/{id}"), &bytes, GOOD_COMMIT, n).await
        }
    };

    // Larger than the whole disk.
    let huge = archive(&env, "ep-huge", 5 << 20, 31);
    let got = post_of("ep-huge", &huge).await;
    assert_error(&got, 507, "insufficient_storage");
    assert!(got.2.contains_key("retry-after"), "{got:?}");
    let message = got.1["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("needs {}", huge.len())),
        "{message}"
    );
    assert_eq!(uploads(), 0, "a refused POST creates nothing");

    // Fits alone, but not beside the bytes an upload in progress still needs.
    let a = archive(&env, "ep-a", 3_000_000, 32);
    let b = archive(&env, "ep-b", 2_000_000, 33);
    let loc_a = create(&c, &r.url, "ep-a", &a).await;
    let got = post_of("ep-b", &b).await;
    assert_error(&got, 507, "insufficient_storage");
    let message = got.1["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("beside {}", a.len())),
        "{message}"
    );
    let got =
        labship_tests::process::put_episode(&c, &r.url, HOST, "ep-b", GOOD_COMMIT, b.clone()).await;
    assert_eq!(
        got.status(),
        507,
        "a PUT's Content-Length is judged the same way"
    );
    assert_eq!(uploads(), 1);

    // The same archive again resumes its upload: with 2 MB of its 3 spooled,
    // about 2 MB are free, enough for the 1 MB it lacks (not for all 3).
    let sent = 2_000_000;
    let got = patch(&c, &r.url, &loc_a, 0, false, a[..sent].to_vec()).await;
    assert_eq!((got.0, offset_of(&got)), (204, sent as u64), "{got:?}");
    let got = post_of("ep-a", &a).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(got.2["location"].to_str().unwrap(), loc_a);
    assert_eq!(offset_of(&got), sent as u64);
    let got = patch(&c, &r.url, &loc_a, sent as u64, true, a[sent..].to_vec()).await;
    assert_eq!(got.0, 201, "{got:?}");

    // With A's archive moved off this disk, B fits.
    std::fs::remove_file(view.join(HOST).join("ep-a.tar.zst")).unwrap();
    let loc_b = create(&c, &r.url, "ep-b", &b).await;
    let got = patch(&c, &r.url, &loc_b, 0, true, b.clone()).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert!(std::fs::read(view.join(HOST).join("ep-b.tar.zst")).unwrap() == b);
}

/// Idle validator sessions are bounded by `limits.max_concurrent_uploads`:
/// an append to a second upload drops the first one's idle session (least
/// recently used), so the first upload's completion rebuilds it from the
/// spooled prefix; a byte flipped in that prefix on disk is then caught
/// (had the session stayed in memory, the flip would go unseen and the
/// completion would answer 201).
#[tokio::test]
async fn idle_sessions_beyond_the_upload_limit_are_dropped_and_rebuilt_from_the_spool() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_concurrent_uploads = 1\n".into(),
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let a = archive(&env, "ep-a", 200_000, 11);
    let b = archive(&env, "ep-b", 200_000, 12);
    let half = a.len() / 2;
    let loc_a = create(&c, &r.url, "ep-a", &a).await;
    let got = patch(&c, &r.url, &loc_a, 0, false, a[..half].to_vec()).await;
    assert_eq!((got.0, offset_of(&got)), (204, half as u64), "{got:?}");
    let data = data_file(&r, &loc_a);
    let mut on_disk = std::fs::read(&data).unwrap();
    assert_eq!(on_disk, a[..half]);
    on_disk[half / 2] ^= 0x55;
    std::fs::write(&data, &on_disk).unwrap();
    // Another upload's append: only one idle session is kept, and A's is older.
    let loc_b = create(&c, &r.url, "ep-b", &b).await;
    assert_eq!(
        patch(&c, &r.url, &loc_b, 0, false, b[..100].to_vec())
            .await
            .0,
        204
    );
    let got = patch(&c, &r.url, &loc_a, half as u64, true, a[half..].to_vec()).await;
    assert_eq!(got.0, 400, "{got:?}");
    let code = got.1["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        code == "archive_invalid" || code == "digest_mismatch",
        "{got:?}"
    );
    assert!(
        r.stored(HOST).iter().all(|e| !e.contains("ep-a")),
        "{:?}",
        r.stored(HOST)
    );
    assert_eq!(head(&c, &r.url, &loc_a).await.0, 404);
    // B, whose session is the one kept, completes.
    let got = patch(&c, &r.url, &loc_b, 100, true, b[100..].to_vec()).await;
    assert_eq!(got.0, 201, "{got:?}");
}

/// A shipper that lost its saved location POSTs the same archive again: it
/// gets the existing upload and the offset the receiver holds durably, not
/// a new upload from byte 0.
#[tokio::test]
async fn a_post_of_the_same_archive_resumes_its_upload() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 300_000, 21);
    let half = bytes.len() / 2;
    let loc = create(&c, &r.url, "ep", &bytes).await;
    assert_eq!(
        patch(&c, &r.url, &loc, 0, false, bytes[..half].to_vec())
            .await
            .0,
        204
    );
    let n = Some(bytes.len() as u64);
    let got = post(&c, &r.url, &format!("{HOST}/ep"), &bytes, GOOD_COMMIT, n).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(got.2["location"].to_str().unwrap(), loc);
    assert_eq!(offset_of(&got), half as u64);
    assert_eq!(spool(&r).len(), 1, "{:?}", spool(&r));
    let got = patch(&c, &r.url, &loc, half as u64, true, bytes[half..].to_vec()).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(
        std::fs::read(r.store.join(HOST).join("ep.tar.zst")).unwrap(),
        bytes
    );
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));
}

/// Concurrent POSTs for one episode never both create an upload, and
/// concurrent POSTs never hold more than `limits.max_partial_uploads`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_create_one_upload_per_episode_within_the_limit() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_partial_uploads = 3\n".into(),
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 1_000, 22);
    for round in 0..5u8 {
        // Eight archives of one episode (distinct digests), all at once.
        let posts = (0..8u8).map(|i| {
            let (c, url) = (c.clone(), r.url.clone());
            let mut body = bytes.clone();
            body.extend([round, i]);
            tokio::spawn(async move {
                let n = Some(body.len() as u64);
                post(
                    &c,
                    &url,
                    &format!("{HOST}/ep-{round}"),
                    &body,
                    GOOD_COMMIT,
                    n,
                )
                .await
            })
        });
        let got: Vec<Got> = futures_util::future::join_all(posts)
            .await
            .into_iter()
            .map(|j| j.unwrap())
            .collect();
        for g in &got {
            assert!(
                g.0 == 201
                    || (g.0 == 503
                        && ["episode_busy", "busy"]
                            .contains(&g.1["error"].as_str().unwrap_or_default())),
                "{g:?}"
            );
        }
        let held: Vec<String> = spool(&r);
        assert!(held.len() <= 3, "round {round}: {held:?}");
        // One upload of this episode at most, and it is the last one created.
        let live = futures_util::future::join_all(
            got.iter()
                .filter(|g| g.0 == 201)
                .map(|g| head(&c, &r.url, g.2["location"].to_str().unwrap())),
        )
        .await;
        assert!(
            live.iter().filter(|h| h.0 == 204).count() <= 1,
            "round {round}: {got:?}"
        );
    }
    assert!(spool(&r).len() <= 3, "{:?}", spool(&r));
}

/// A DELETE while an append is streaming: the append stops (taken over),
/// the upload goes, and neither the append nor a later one stores anything.
#[tokio::test]
async fn delete_racing_an_append_removes_the_upload_and_stores_nothing() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 3 << 20, 31);
    let loc = create(&c, &r.url, "ep", &bytes).await;
    let (tx, request) = patch_streamed(&c, &r.url, &loc, 0, true);
    tx.send(bytes[..1 << 20].to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deleted = c.delete(format!("{}{loc}", r.url)).send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    // The rest of the body: whatever the append answers, it is not stored.
    let _ = tx.send(bytes[1 << 20..].to_vec()).await;
    drop(tx);
    if let Ok(Ok(resp)) = request.await {
        let got = answer(resp).await;
        assert!(got.0 != 200 && got.0 != 201, "{got:?}");
    }
    assert_eq!(head(&c, &r.url, &loc).await.0, 404);
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));
    assert!(r.stored(HOST).is_empty(), "{:?}", r.stored(HOST));
    assert!(r.scratch().is_empty(), "{:?}", r.scratch());
}

/// A verdict found while an append streams (here: the archive unpacks past
/// `limits.max_unpacked_bytes` after its first megabyte, with tens of
/// megabytes still to come) reaches the client as the receiver's answer,
/// not as a reset: a fatal answer read as a cut would send the archive
/// again and again instead of quarantining it.
#[tokio::test]
async fn a_verdict_found_mid_append_is_answered_not_reset() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_unpacked_bytes = 1000000\n".into(),
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 48 << 20, 31);
    for round in 0..3 {
        let loc = create(&c, &r.url, "ep", &bytes).await;
        let sent = c
            .patch(format!("{}{loc}", r.url))
            .header("Content-Type", "application/partial-upload")
            .header("Upload-Offset", "0")
            .header("Upload-Complete", "?1")
            .body(bytes.clone())
            .send()
            .await;
        let got = match sent {
            Ok(resp) => answer(resp).await,
            Err(e) => panic!("round {round}: no answer, the append was cut: {e:?}"),
        };
        assert_error(&got, 413, "too_large");
        assert_eq!(head(&c, &r.url, &loc).await.0, 404, "round {round}");
    }
    assert!(spool(&r).is_empty(), "{:?}", spool(&r));
    assert!(!r.store.join(HOST).join("ep.tar.zst").exists());
    // What the receiver logs while it serves a request names the request.
    let log = r.log_text();
    let refused = log
        .lines()
        .find(|l| l.contains("upload request refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        refused.contains("request{op=\"upload_append\" episode=\"ep\" host=\"lab-01\"}"),
        "{refused}"
    );
}

/// A second receiver started on the same `storage.dir` (by hand, beside the
/// unit) is refused before it touches anything there: it would otherwise
/// remove the first one's scratch and cut its partial uploads back to their
/// last checkpoint while they are written, and a completed upload would be
/// stored with bytes missing from its middle.
#[tokio::test]
async fn a_second_receiver_on_the_same_storage_dir_is_refused_and_touches_nothing() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep", 300_000, 41);
    let half = bytes.len() / 2;
    let loc = create(&c, &r.url, "ep", &bytes).await;
    let got = patch(&c, &r.url, &loc, 0, false, bytes[..half].to_vec()).await;
    assert_eq!(got.0, 204, "{got:?}");

    // The same config on other ports: only storage.dir is shared.
    let (port, ops) = (r.addr.port(), r.ops_addr.port());
    let text = std::fs::read_to_string(&r.config)
        .unwrap()
        .replace(
            &format!(":{port}\""),
            &format!(":{}\"", labship_tests::process::free_port()),
        )
        .replace(
            &format!(":{ops}\""),
            &format!(":{}\"", labship_tests::process::free_port()),
        );
    let second = env.path().join("second.toml");
    std::fs::write(&second, text).unwrap();
    let mut child = labship_tests::process::Daemon(
        std::process::Command::new(labship_tests::bin("receiver"))
            .arg("--config")
            .arg(&second)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a second receiver on the same storage.dir is still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("in use by another receiver") && err.contains(".receiver.lock"),
        "{err}"
    );

    // The first one's upload is whole and completes.
    assert_eq!(offset_of(&head(&c, &r.url, &loc).await), half as u64);
    let got = patch(&c, &r.url, &loc, half as u64, true, bytes[half..].to_vec()).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(
        std::fs::read(r.store.join(HOST).join("ep.tar.zst")).unwrap(),
        bytes
    );
}
