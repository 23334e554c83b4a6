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
    assert!(r.ops_get("/metrics").contains("labship_partial_uploads 0"));

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
        "upload_length_mismatch",
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
    create(&c, &r.url, "ep-a", &bytes).await;
    create(&c, &r.url, "ep-b", &bytes).await;
    let got = post(&c, &r.url, &format!("{HOST}/ep-c"), &bytes, GOOD_COMMIT, n).await;
    assert_error(&got, 503, "busy");
    assert!(got.2.contains_key("retry-after"));
    // A new POST for an episode replaces its idle upload (the client lost
    // the location): still two.
    let again = create(&c, &r.url, "ep-a", &bytes).await;
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
