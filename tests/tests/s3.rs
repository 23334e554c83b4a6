//! Scale-out (`storage.kind = "s3"`): two real receiver processes, real mutual
//! TLS, one bucket on a real SeaweedFS (`labship_tests::s3`). Proves that two
//! receivers on one bucket never store an episode twice or half: races with the
//! same and with different bytes, a `kill -9` mid-upload and between the two
//! writes of a commit, the store going away (503, the shipper retries).

use labship_tests::episode::{assert_same_tree, digest_header, noise, pack, unpack, write_episode};
use labship_tests::process::{Receiver, ReceiverOpts, put_episode, run};
use labship_tests::s3::Weed;
use labship_tests::{GOOD_COMMIT, TestEnv, shipper_toml};
use serde_json::Value;
use std::time::Duration;

const HOST: &str = "lab-01";

/// A receiver named `name` on `weed`'s bucket under `prefix`, with `env` extra.
fn receiver(
    env: &TestEnv,
    weed: &Weed,
    name: &str,
    prefix: &str,
    extra_env: &[(&str, &str)],
) -> Receiver {
    let scratch = env.path().join(name).join("spool");
    let mut vars = weed.env();
    vars.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Receiver::start_with(
        env,
        ReceiverOpts {
            name: Some(name.into()),
            storage: Some(weed.storage_toml(&scratch, prefix)),
            env: vars,
            ..Default::default()
        },
    )
}

/// A packed episode `id` whose payload is `len` bytes of noise from `seed`.
fn archive(env: &TestEnv, id: &str, len: usize, seed: u64) -> Vec<u8> {
    let root = env.path().join(format!("src-{seed}"));
    let dir = write_episode(
        &root,
        id,
        Some(GOOD_COMMIT),
        &[("data.bin", &noise(len, seed))],
    );
    pack(&dir)
}

async fn put(c: &reqwest::Client, url: &str, id: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = put_episode(c, url, HOST, id, GOOD_COMMIT, body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// HEAD: status, `Content-Digest`, `Content-Length`.
async fn head(c: &reqwest::Client, url: &str, id: &str) -> (u16, String, String) {
    let resp = c
        .head(format!("{url}/v1/episodes/{HOST}/{id}"))
        .send()
        .await
        .expect("head");
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("header is text").to_owned())
            .unwrap_or_default()
    };
    (
        resp.status().as_u16(),
        h("content-digest"),
        h("content-length"),
    )
}

/// The object at `key` holds exactly `expected` (compared by digest, so a
/// failure prints two digests, not two archives).
async fn assert_stored(weed: &Weed, key: &str, expected: &[u8]) {
    let stored = weed.get(key).await.map(|b| digest_header(&b));
    assert_eq!(stored, Some(digest_header(expected)), "{key}");
}

/// Writes `<test>/lab/shipper.toml` for `HOST` over `data`, shipping to
/// `url` (settle 0), and returns its path.
fn shipper_config(env: &TestEnv, url: &str, data: &std::path::Path) -> std::path::PathBuf {
    let cfg = env.file("lab/shipper.toml");
    let id = env.pki.client(HOST);
    std::fs::write(
        &cfg,
        shipper_toml(env, HOST, url, data, &id, "settle_s = 0"),
    )
    .expect("write shipper.toml");
    cfg
}

fn keys_of(prefix: &str, id: &str) -> [String; 2] {
    [
        format!("{prefix}{HOST}/{id}.json"),
        format!("{prefix}{HOST}/{id}.tar.zst"),
    ]
}

#[tokio::test]
async fn put_via_one_receiver_head_via_the_other() {
    let env = TestEnv::new();
    let weed = Weed::start().await;
    let prefix = "lab/";
    // Only credentials come from the `AWS_*` environment: settings that would
    // break the store if honoured are ignored (receiver.toml decides).
    let a = receiver(
        &env,
        &weed,
        "ra",
        prefix,
        &[
            ("AWS_CONDITIONAL_PUT", "disabled"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true"),
            ("AWS_ENDPOINT", "http://127.0.0.1:9"),
        ],
    );
    let b = receiver(&env, &weed, "rb", prefix, &[]);
    let c = env.client(Some(&env.pki.client(HOST)));

    assert_eq!(head(&c, &b.url, "ep-1").await.0, 404);
    let small = archive(&env, "ep-1", 100_000, 1);
    let got = put(&c, &a.url, "ep-1", small.clone()).await;
    assert_eq!(got.0, 201, "{}", got.1);
    let (status, digest, len) = head(&c, &b.url, "ep-1").await;
    assert_eq!(
        (status, digest.as_str(), len.as_str()),
        (
            200,
            digest_header(&small).as_str(),
            small.len().to_string().as_str()
        )
    );
    assert_eq!(weed.keys(prefix).await, keys_of(prefix, "ep-1").to_vec());
    assert_stored(&weed, &format!("{prefix}{HOST}/ep-1.tar.zst"), &small).await;
    let manifest: Value = serde_json::from_slice(
        &weed
            .get(&format!("{prefix}{HOST}/ep-1.json"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["digest"], digest_header(&small));
    assert_eq!(manifest["bytes"], small.len());
    assert_eq!(manifest["commit"], GOOD_COMMIT);
    assert_eq!(manifest["client"]["host_id"], HOST);

    // The other receiver: same bytes 200, other bytes 409 (decided from the
    // headers, before the body).
    let again = put(&c, &b.url, "ep-1", small.clone()).await;
    assert_eq!(again.0, 200, "{}", again.1);
    let other = put(&c, &b.url, "ep-1", archive(&env, "ep-1", 1000, 2)).await;
    assert_eq!(
        (other.0, other.1["error"].as_str()),
        (409, Some("conflict"))
    );

    // Larger than one PUT: a multipart upload, completed after validation.
    let big = archive(&env, "ep-big", 12 << 20, 3);
    assert!(big.len() as u64 > 8 << 20);
    let got = put(&c, &b.url, "ep-big", big.clone()).await;
    assert_eq!(got.0, 201, "{}", got.1);
    assert_eq!(head(&c, &a.url, "ep-big").await.0, 200);
    assert_stored(&weed, &format!("{prefix}{HOST}/ep-big.tar.zst"), &big).await;

    // Audit lines on the receiver that decided; store metrics on both.
    let statuses = |r: &Receiver| -> Vec<u64> {
        r.audit_records()
            .iter()
            .map(|l| l["status"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(statuses(&a), [201]);
    assert_eq!(statuses(&b), [200, 409, 201]);
    let metrics = b.ops_get("/metrics");
    for needle in [
        "labship_store_operation_duration_seconds_count{op=\"create_manifest\"}",
        "labship_store_operation_duration_seconds_count{op=\"complete_multipart\"}",
        "labship_store_operation_duration_seconds_count{op=\"get_manifest\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
    assert!(
        a.log_text().contains("s3://episodes/lab/"),
        "{}",
        a.log_text()
    );
}

#[tokio::test]
async fn racing_receivers_store_exactly_one_archive() {
    let env = TestEnv::new();
    let weed = Weed::start().await;
    let a = receiver(&env, &weed, "ra", "", &[]);
    let b = receiver(&env, &weed, "rb", "", &[]);
    let c = env.client(Some(&env.pki.client(HOST)));
    let mut busy = 0;
    for round in 0..5u64 {
        // The same bytes through both, twice each: one 201, the others 200,
        // or 503 `episode_busy` when they found the winner's claim before its archive
        // (another receiver is uploading it); retried, those are 200.
        let id = format!("same-{round}");
        let bytes = archive(&env, &id, 300_000, 10 + round);
        let answers = futures_util::future::join_all((0..4).map(|i| {
            let url = if i % 2 == 0 { &a.url } else { &b.url };
            put(&c, url, &id, bytes.clone())
        }))
        .await;
        let created = answers.iter().filter(|x| x.0 == 201).count();
        assert_eq!(created, 1, "round {round}: {answers:?}");
        for (i, answer) in answers.iter().enumerate() {
            match answer.0 {
                200 | 201 => {}
                503 => {
                    assert_eq!(
                        answer.1["error"], "episode_busy",
                        "round {round}: {answer:?}"
                    );
                    busy += 1;
                    let url = if i % 2 == 0 { &a.url } else { &b.url };
                    let again = put(&c, url, &id, bytes.clone()).await;
                    assert_eq!(again.0, 200, "round {round}: {again:?}");
                }
                _ => panic!("round {round}: {answers:?}"),
            }
        }
        assert_stored(&weed, &format!("{HOST}/{id}.tar.zst"), &bytes).await;

        // Different bytes: one 201, one 409, and the stored archive is the
        // winner's, described by the winner's manifest.
        let id = format!("diff-{round}");
        let x = archive(&env, &id, 300_000, 100 + round);
        let y = archive(&env, &id, 300_000, 200 + round);
        let (ax, by) = tokio::join!(
            put(&c, &a.url, &id, x.clone()),
            put(&c, &b.url, &id, y.clone())
        );
        let winner = match (ax.0, by.0) {
            (201, 409) => x,
            (409, 201) => y,
            other => panic!("round {round}: {other:?} {ax:?} {by:?}"),
        };
        let loser = if ax.0 == 409 { &ax } else { &by };
        assert_eq!(loser.1["error"], "conflict", "{loser:?}");
        assert_stored(&weed, &format!("{HOST}/{id}.tar.zst"), &winner).await;
        let manifest: Value =
            serde_json::from_slice(&weed.get(&format!("{HOST}/{id}.json")).await.unwrap()).unwrap();
        assert_eq!(manifest["digest"], digest_header(&winner));
        for r in [&a, &b] {
            let (status, digest, _) = head(&c, &r.url, &id).await;
            assert_eq!((status, digest), (200, digest_header(&winner)));
        }
    }
    assert_eq!(weed.keys(HOST).await.len(), 5 * 2 * 2);
    // How often the races reached `If-None-Match: *` itself (rather than the
    // early existence check) depends on timing: reported, not asserted. The
    // invariants above hold either way.
    let creates: u64 = [&a, &b]
        .iter()
        .map(|r| {
            metric(
                &r.ops_get("/metrics"),
                "labship_store_operation_duration_seconds_count{op=\"create_manifest\"}",
            )
        })
        .sum();
    eprintln!(
        "{creates} conditional creates for 10 episodes; {busy} same-digest PUTs answered busy"
    );
}

/// The value of the sample `name` (with its labels) in a Prometheus text page.
fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_shipper_ships_through_one_receiver() {
    let env = TestEnv::new();
    let weed = Weed::start().await;
    let a = receiver(&env, &weed, "ra", "", &[]);
    let b = receiver(&env, &weed, "rb", "", &[]);
    let data = env.path().join("lab");
    let tree = write_episode(
        &data.join("episodes"),
        "run-7",
        Some(GOOD_COMMIT),
        &[("frames/0.bin", &noise(500_000, 7)), ("log.csv", b"t,v\n")],
    );
    let source = env.path().join("source-copy");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(&source)
            .status()
            .unwrap()
            .success()
    );
    let cfg = shipper_config(&env, &a.url, &data);
    let (code, out, err) = run("shipper", &["--config", cfg.to_str().unwrap(), "--once"]);
    assert_eq!(code, 0, "{out}{err}\n{}", a.log_text());
    assert!(data.join("shipped/run-7").is_dir(), "{out}");
    let stored = weed
        .get(&format!("{HOST}/run-7.tar.zst"))
        .await
        .expect("archive in the bucket");
    let c = env.client(Some(&env.pki.client(HOST)));
    let (status, digest, _) = head(&c, &b.url, "run-7").await;
    assert_eq!((status, digest), (200, digest_header(&stored)));
    let unpacked = env.path().join("unpacked");
    unpack(&stored, &unpacked);
    assert_same_tree(&source, &unpacked.join("run-7"));
}

/// Starts a PUT of `full` whose body stops after `first` bytes until the
/// returned sender is dropped.
fn stalled_put(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    full: &[u8],
    first: usize,
) -> tokio::task::JoinHandle<Result<u16, String>> {
    let head = full[..first].to_vec();
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(
        futures_util::stream::once(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Err(std::io::Error::other("test stops here"))
        }),
    );
    let req = c
        .put(format!("{url}/v1/episodes/{HOST}/{id}"))
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(full))
        .body(reqwest::Body::wrap_stream(stream));
    tokio::spawn(async move {
        req.send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    })
}

use futures_util::StreamExt as _;

/// The claim grace (`LABSHIP_S3_CLAIM_GRACE_S`, test-only) of the receiver
/// that finds a crash-left claim: long enough that its immediate retry sees
/// the claim fresh on a loaded machine, short enough to wait out.
const CLAIM_GRACE_S: u64 = 6;

/// Restarts `a` set to die right after its claim (`s3:manifest-created`)
/// and PUTs `bytes` as `id` through it: the manifest is in the bucket, the
/// archive is not, and `a` is dead.
async fn die_at_the_claim(
    a: &mut Receiver,
    weed: &Weed,
    c: &reqwest::Client,
    id: &str,
    bytes: &[u8],
) {
    die_at("s3:manifest-created", a, weed, c, id, bytes).await;
}

/// Restarts `a` set to die at crash point `point` and PUTs `bytes` as `id`
/// through it: the client sees the connection cut, and `a` is dead.
async fn die_at(
    point: &str,
    a: &mut Receiver,
    weed: &Weed,
    c: &reqwest::Client,
    id: &str,
    bytes: &[u8],
) {
    a.restart_with_env([weed.env(), vec![("LABSHIP_CRASH_AT".into(), point.into())]].concat());
    let cut = c
        .put(format!("{}/v1/episodes/{HOST}/{id}", a.url))
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(bytes))
        .body(bytes.to_vec())
        .send()
        .await;
    assert!(cut.is_err(), "{cut:?}");
    assert!(a.wait_exit(Duration::from_secs(5)).is_some(), "crashed");
}

#[tokio::test]
async fn kill_9_mid_upload_leaves_nothing_and_the_other_receiver_accepts() {
    let env = TestEnv::new();
    let weed = Weed::start().await;
    let mut a = receiver(&env, &weed, "ra", "", &[]);
    let grace = CLAIM_GRACE_S.to_string();
    let b = receiver(
        &env,
        &weed,
        "rb",
        "",
        &[("LABSHIP_S3_CLAIM_GRACE_S", grace.as_str())],
    );
    let c = env.client(Some(&env.pki.client(HOST)));

    // Killed while the body streams in: nothing reaches the bucket.
    let bytes = archive(&env, "ep-k", 2 << 20, 5);
    let upload = stalled_put(&c, &a.url, "ep-k", &bytes, bytes.len() / 2);
    let spool = env.path().join("ra/spool/.scratch");
    wait_for("a's spool to hold the half body", || {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
            })
            .unwrap_or(false)
    })
    .await;
    a.kill9();
    assert!(upload.await.unwrap().is_err(), "the client saw the cut");
    assert!(weed.keys(HOST).await.is_empty());
    assert_eq!(head(&c, &b.url, "ep-k").await.0, 404);
    let got = put(&c, &b.url, "ep-k", bytes.clone()).await;
    assert_eq!(got.0, 201, "{}", got.1);
    assert_eq!(weed.keys(HOST).await, keys_of("", "ep-k").to_vec());

    // Killed between the two writes of a commit (the manifest is the claim,
    // the archive not yet uploaded): not stored, for either receiver; the
    // retry through the other receiver finishes it with the same bytes.
    let bytes = archive(&env, "ep-c", 200_000, 6);
    die_at_the_claim(&mut a, &weed, &c, "ep-c", &bytes).await;
    let claim: Vec<String> = weed
        .keys(HOST)
        .await
        .into_iter()
        .filter(|k| k.starts_with(&format!("{HOST}/ep-c")))
        .collect();
    assert_eq!(claim, [format!("{HOST}/ep-c.json")]);
    assert_eq!(head(&c, &b.url, "ep-c").await.0, 404, "claimed, not stored");
    // A fresh claim is an upload in progress as far as b can tell: the same
    // bytes through b get 503 `episode_busy`, not a second upload to the same key.
    let resp = put_episode(&c, &b.url, HOST, "ep-c", GOOD_COMMIT, bytes.clone()).await;
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("Retry-After");
    assert_eq!(resp.status().as_u16(), 503);
    let busy: Value = resp.json().await.unwrap();
    assert_eq!(busy["error"], "episode_busy", "{busy}");
    assert!(
        busy["message"]
            .as_str()
            .is_some_and(|m| m.contains("being uploaded")),
        "{busy}"
    );
    assert!((1..=CLAIM_GRACE_S).contains(&retry_after), "{retry_after}");
    assert!(weed.get(&format!("{HOST}/ep-c.tar.zst")).await.is_none());
    // Once the claim is older than any live upload would take, it is taken
    // for orphaned (its receiver died) and the retry finishes it.
    tokio::time::sleep(Duration::from_secs(CLAIM_GRACE_S + 1)).await;
    let got = put(&c, &b.url, "ep-c", bytes.clone()).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_stored(&weed, &format!("{HOST}/ep-c.tar.zst"), &bytes).await;
    assert_eq!(head(&c, &b.url, "ep-c").await.0, 200);
    // Other bytes under that id are a conflict, never an overwrite.
    let other = put(&c, &b.url, "ep-c", archive(&env, "ep-c", 1000, 7)).await;
    assert_eq!(other.0, 409, "{}", other.1);
    assert!(
        other.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("already stored")),
        "{}",
        other.1
    );

    // A claim left by a crash, retried with other bytes: 409 as well (the
    // claim is final; docs/scale-out.md says how an operator clears it),
    // saying that the claimed archive is not in the store.
    die_at_the_claim(&mut a, &weed, &c, "ep-o", &archive(&env, "ep-o", 1000, 8)).await;
    let other = put(&c, &b.url, "ep-o", archive(&env, "ep-o", 1000, 9)).await;
    assert_eq!(
        (other.0, other.1["error"].as_str()),
        (409, Some("conflict"))
    );
    assert!(
        other.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not in the store yet")),
        "{}",
        other.1
    );

    // Killed after both writes (`s3:archive-uploaded`), before it could
    // answer: the episode is stored for good. The client saw no answer; its
    // retry through the other receiver finds the same digest (200), and the
    // bucket holds those bytes once.
    let bytes = archive(&env, "ep-u", 200_000, 10);
    die_at("s3:archive-uploaded", &mut a, &weed, &c, "ep-u", &bytes).await;
    assert_stored(&weed, &format!("{HOST}/ep-u.tar.zst"), &bytes).await;
    assert_eq!(head(&c, &b.url, "ep-u").await.0, 200);
    let got = put(&c, &b.url, "ep-u", bytes.clone()).await;
    assert_eq!(got.0, 200, "{}", got.1);
    assert_eq!(
        weed.keys(HOST)
            .await
            .into_iter()
            .filter(|k| k.starts_with(&format!("{HOST}/ep-u")))
            .collect::<Vec<_>>(),
        keys_of("", "ep-u").to_vec()
    );

    // The restarted receiver cleared its spool and serves the bucket.
    a.restart_with_env(weed.env());
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    assert_eq!(head(&c, &a.url, "ep-k").await.0, 200);
}

/// A receiver stopped (SIGTERM) while a multipart upload is under way, with
/// the request outliving the drain: the upload is aborted, not left in the
/// bucket, and the episode stays claimed but not stored.
#[tokio::test]
async fn a_stop_mid_multipart_upload_aborts_it() {
    let env = TestEnv::new();
    let weed = Weed::start().await;
    let mut a = receiver(
        &env,
        &weed,
        "ra",
        "",
        &[("LABSHIP_PAUSE_AT", "s3:first-part-sent")],
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    // Noise does not compress: well over one 8 MiB part.
    let bytes = archive(&env, "ep-m", 12 << 20, 12);
    let url = a.url.clone();
    let upload = tokio::spawn(async move { put(&c, &url, "ep-m", bytes).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !a
        .log_text()
        .contains("paused at test pause point s3:first-part-sent")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no pause: {}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.signal(15);
    // The drain (25 s) waits for the paused request, then the upload aborts.
    assert!(a.wait_exit(Duration::from_secs(60)).is_some(), "stopped");
    let log = a.log_text();
    assert!(
        log.contains("receiver stopping: aborting the multipart upload"),
        "{log}"
    );
    assert!(!log.contains("not aborted"), "{log}");
    assert_eq!(weed.keys(HOST).await, [format!("{HOST}/ep-m.json")]);
    upload.abort();
}

#[tokio::test]
async fn store_unreachable_answers_503_and_the_shipper_retries() {
    let env = TestEnv::new();
    let mut weed = Weed::start().await;
    let a = receiver(&env, &weed, "ra", "", &[]);
    let c = env.client(Some(&env.pki.client(HOST)));
    weed.stop();

    let bytes = archive(&env, "ep-u", 10_000, 8);
    let resp = put_episode(&c, &a.url, HOST, "ep-u", GOOD_COMMIT, bytes).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "busy", "{body}");
    assert_eq!(head(&c, &a.url, "ep-u").await.0, 503);
    let metrics = a.ops_get("/metrics");
    assert!(
        metrics.contains(
            "labship_store_operation_errors_total{op=\"get_manifest\",kind=\"unavailable\"}"
        ),
        "{metrics}"
    );

    // The shipper keeps the episode pending while the store is away, and
    // ships it once the store is back.
    let data = env.path().join("lab");
    write_episode(
        &data.join("episodes"),
        "run-u",
        Some(GOOD_COMMIT),
        &[("x", b"1")],
    );
    let cfg = shipper_config(&env, &a.url, &data);
    let once = || run("shipper", &["--config", cfg.to_str().unwrap(), "--once"]);
    let (code, out, err) = once();
    assert_eq!(code, 1, "left pending: {out}{err}");
    assert!(data.join("episodes/run-u").is_dir());
    weed.restart().await;
    let (code, out, err) = once();
    assert_eq!(code, 0, "{out}{err}\n{}", a.log_text());
    assert!(data.join("shipped/run-u").is_dir());
    assert_eq!(weed.keys(HOST).await, keys_of("", "run-u").to_vec());
}

#[test]
fn invalid_s3_config_exits_2_naming_the_key() {
    let env = TestEnv::new();
    let cfg = env.file("receiver.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\n[storage]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"episodes\"\n",
    )
    .unwrap();
    let (code, _, err) = run("receiver", &["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{}: storage.endpoint", cfg.display())) && err.contains("allow_http"),
        "{err}"
    );
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CONTRACT §9 with several receivers: a partial upload lives in the local
/// spool of the receiver that created it. Another answers 404 to its
/// location and the client starts over there; the first one, completed
/// later, answers 200 (the same digest is stored) and keeps nothing.
#[tokio::test]
async fn a_partial_upload_belongs_to_its_receiver_another_answers_404() {
    let env = TestEnv::new();
    let weed = Weed::start().await;
    let a = receiver(&env, &weed, "ra", "", &[]);
    let b = receiver(&env, &weed, "rb", "", &[]);
    let c = env.client(Some(&env.pki.client(HOST)));
    let bytes = archive(&env, "ep-r", 2_000_000, 21);
    let half = bytes.len() / 2;
    let create = |url: String| {
        c.post(format!("{url}/v1/uploads/{HOST}/ep-r"))
            .header("Content-Digest", digest_header(&bytes))
            .header("X-Labship-Commit", GOOD_COMMIT)
            .header("Upload-Length", bytes.len().to_string())
            .send()
    };
    let append = |url: String, offset: usize, end: usize| {
        c.patch(url)
            .header("Content-Type", "application/partial-upload")
            .header("Upload-Offset", offset.to_string())
            .header(
                "Upload-Complete",
                if end == bytes.len() { "?1" } else { "?0" },
            )
            .body(bytes[offset..end].to_vec())
            .send()
    };
    let resp = create(a.url.clone()).await.unwrap();
    assert_eq!(resp.status(), 201);
    let loc_a = resp.headers()["location"].to_str().unwrap().to_owned();
    let resp = append(format!("{}{loc_a}", a.url), 0, half).await.unwrap();
    assert_eq!(resp.status(), 204);

    // Through the other receiver the upload does not exist.
    let resp = c.head(format!("{}{loc_a}", b.url)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = append(format!("{}{loc_a}", b.url), half, bytes.len())
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(weed.get(&format!("{HOST}/ep-r.json")).await.is_none());

    // Started over through b: stored.
    let resp = create(b.url.clone()).await.unwrap();
    assert_eq!(resp.status(), 201);
    let loc_b = resp.headers()["location"].to_str().unwrap().to_owned();
    let resp = append(format!("{}{loc_b}", b.url), 0, bytes.len())
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        weed.get(&format!("{HOST}/ep-r.tar.zst")).await.as_deref(),
        Some(&bytes[..])
    );

    // a's upload, completed later: the same digest is stored, 200.
    let resp = append(format!("{}{loc_a}", a.url), half, bytes.len())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["digest"], digest_header(&bytes).as_str());
    for name in ["ra", "rb"] {
        let spool = env
            .path()
            .join(name)
            .join("spool")
            .join(".uploads")
            .join(HOST);
        let left: Vec<_> = std::fs::read_dir(&spool).unwrap().collect();
        assert!(left.is_empty(), "{name}: {left:?}");
    }
}
