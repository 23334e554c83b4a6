//! The receiver's HTTP API against the real binary over real mutual TLS:
//! every row of the CONTRACT §4 status table, the archive rules, identities.

use labship_tests::episode::{
    RawTar, assert_same_tree, digest_header, noise, pack, unpack, write_episode, zst,
};
use labship_tests::pki::Variant;
use labship_tests::process::{Receiver, ReceiverOpts};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, REMEDIATION, TestEnv};
use serde_json::Value;

const HOST: &str = "lab-01";

/// One PUT with the contract headers (each overridable).
async fn put_raw(
    client: &reqwest::Client,
    url: &str,
    path: &str,
    body: Vec<u8>,
    commit: Option<&str>,
    digest: Option<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client.put(format!("{url}/v1/episodes/{path}")).body(body);
    if let Some(c) = commit {
        req = req.header("X-Labship-Commit", c);
    }
    if let Some(d) = digest {
        req = req.header("Content-Digest", d);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

async fn put(client: &reqwest::Client, url: &str, episode: &str, body: Vec<u8>) -> (u16, Value) {
    let d = digest_header(&body);
    let (s, b, _) = put_raw(
        client,
        url,
        &format!("{HOST}/{episode}"),
        body,
        Some(GOOD_COMMIT),
        Some(d),
    )
    .await;
    (s, b)
}

fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "body: {}", got.1);
    assert_eq!(got.1["error"], code, "body: {}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {}",
        got.1
    );
}

#[tokio::test]
async fn ping_names_host_and_gate_and_writes_nothing() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let resp = c.post(format!("{}/v1/ping", r.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["host_id"], HOST);
    assert_eq!(v["gate"]["commits"], 1);
    assert!(v["receiver_version"].as_str().is_some());
    assert!(v["gate"]["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(r.stored(HOST).is_empty(), "ping wrote to the store");
    assert!(r.audit_records().is_empty(), "ping is not a PUT decision");
}

#[tokio::test]
async fn store_head_idempotent_retry_and_conflict() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let src = write_episode(
        &env.file("src"),
        "ep-1",
        Some(GOOD_COMMIT),
        &[("data/a.bin", &noise(300_000, 1)), ("b.csv", b"x,y\n1,2\n")],
    );
    let archive = pack(&src);

    let head = |ep: &'static str| c.head(format!("{}/v1/episodes/{HOST}/{ep}", r.url)).send();
    assert_eq!(head("ep-1").await.unwrap().status(), 404);

    let first = put(&c, &r.url, "ep-1", archive.clone()).await;
    assert_eq!(first.0, 201, "{}", first.1);
    assert_eq!(r.stored(HOST), ["ep-1.json", "ep-1.tar.zst"]);
    assert!(r.scratch().is_empty(), "scratch left: {:?}", r.scratch());

    let h = head("ep-1").await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(
        h.headers()["content-digest"],
        digest_header(&archive).as_str()
    );
    assert_eq!(
        h.headers()["content-length"],
        archive.len().to_string().as_str()
    );

    // The stored bytes are the uploaded bytes, and unpack to the source tree.
    let stored = std::fs::read(r.store.join(HOST).join("ep-1.tar.zst")).unwrap();
    assert_eq!(stored, archive);
    let out = env.file("out/x");
    unpack(&stored, out.parent().unwrap());
    assert_same_tree(&src, &out.parent().unwrap().join("ep-1"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(r.store.join(HOST).join("ep-1.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["digest"], digest_header(&archive));
    assert_eq!(manifest["commit"], GOOD_COMMIT);
    assert_eq!(manifest["bytes"], archive.len());
    assert_eq!(manifest["client"]["auth"], "certificate");

    // A retry of the same bytes is a success that stores nothing new.
    assert_eq!(put(&c, &r.url, "ep-1", archive.clone()).await.0, 200);
    // Different bytes under the same id: conflict, stored archive untouched.
    std::fs::write(src.join("b.csv"), b"changed").unwrap();
    let other = pack(&src);
    assert_error(&put(&c, &r.url, "ep-1", other).await, 409, "conflict");
    assert_eq!(
        std::fs::read(r.store.join(HOST).join("ep-1.tar.zst")).unwrap(),
        archive
    );

    let audit = r.audit_records();
    let statuses: Vec<_> = audit
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 200, 409]);
    for key in [
        "time",
        "host_id",
        "episode_id",
        "status",
        "error",
        "bytes",
        "digest",
        "duration_ms",
        "peer",
    ] {
        assert!(
            audit[0].get(key).is_some(),
            "audit lacks {key}: {}",
            audit[0]
        );
    }
    assert_eq!(audit[2]["error"], "conflict");
}

#[tokio::test]
async fn header_decisions() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let src = write_episode(&env.file("src"), "ep", Some(GOOD_COMMIT), &[]);
    let a = pack(&src);
    let d = || Some(digest_header(&a));
    let p = |ep: &str| format!("{HOST}/{ep}");

    let got = put_raw(&c, &r.url, &p("ep"), a.clone(), Some(OLD_COMMIT), d()).await;
    assert_error(&(got.0, got.1.clone()), 412, "commit_out_of_window");
    assert_eq!(got.1["remediation"], REMEDIATION);
    let got = put_raw(&c, &r.url, &p("ep"), a.clone(), None, d()).await;
    assert_error(&(got.0, got.1), 400, "stamp_missing");
    let got = put_raw(&c, &r.url, &p("ep"), a.clone(), Some("ABC"), d()).await;
    assert_error(&(got.0, got.1), 400, "stamp_malformed");
    let got = put_raw(&c, &r.url, &p("ep"), a.clone(), Some(GOOD_COMMIT), None).await;
    assert_error(&(got.0, got.1), 400, "digest_missing");
    for bad in ["md5=:AAAA:", "sha-256=:nope:", "sha-256=abc"] {
        let got = put_raw(
            &c,
            &r.url,
            &p("ep"),
            a.clone(),
            Some(GOOD_COMMIT),
            Some(bad.into()),
        )
        .await;
        assert_error(&(got.0, got.1), 400, "digest_missing");
    }
    let got = put_raw(
        &c,
        &r.url,
        &p("ep"),
        a.clone(),
        Some(GOOD_COMMIT),
        Some(digest_header(b"other")),
    )
    .await;
    assert_error(&(got.0, got.1), 400, "digest_mismatch");
    let long = "x".repeat(129);
    // ("..", "%2E%2E" are normalised away by URL-aware clients; see the raw test.)
    for bad in [".hidden", "a%2Fb", "a%20b", "%C3%A9t%C3%A9", long.as_str()] {
        let got = put_raw(&c, &r.url, &p(bad), a.clone(), Some(GOOD_COMMIT), d()).await;
        assert_error(&(got.0, got.1), 400, "invalid_episode_id");
    }
    let got = put_raw(&c, &r.url, "lab-02/ep", a.clone(), Some(GOOD_COMMIT), d()).await;
    assert_error(&(got.0, got.1), 403, "host_mismatch");
    let h = c
        .head(format!("{}/v1/episodes/lab-02/ep", r.url))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 403);
    assert!(r.stored(HOST).is_empty() && r.scratch().is_empty());
    let audit = r.audit_records();
    assert!(audit.iter().all(|a| a["status"] != 201));
    assert!(audit.iter().any(|a| a["error"] == "commit_out_of_window"));
    // A rejection found in the body records how many bytes arrived.
    let mismatch = audit
        .iter()
        .find(|a| a["error"] == "digest_mismatch")
        .unwrap();
    assert_eq!(mismatch["bytes"], a.len());
}

#[tokio::test]
async fn hostile_archives_are_refused_and_nothing_is_stored() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_unpacked_bytes = 10000000\n".into(),
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    use tar::EntryType as T;
    let good = || RawTar::new().dir("ep/").meta("ep", GOOD_COMMIT);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty body", vec![], 400, "archive_invalid"),
        (
            "not zstd",
            b"hello, this is not zstd".to_vec(),
            400,
            "archive_invalid",
        ),
        (
            "truncated zstd",
            {
                let z = good().file("ep/a", &noise(50_000, 3)).finish_zst();
                z[..z.len() / 2].to_vec()
            },
            400,
            "archive_invalid",
        ),
        (
            "trailing garbage",
            {
                let mut z = good().finish_zst();
                z.extend_from_slice(b"garbage!");
                z
            },
            400,
            "archive_invalid",
        ),
        ("not tar", zst(&noise(4096, 9)), 400, "archive_invalid"),
        (
            "outside id",
            good().file("other/x", b"1").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "absolute",
            RawTar::new()
                .file("/ep/x", b"1")
                .meta("ep", GOOD_COMMIT)
                .finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "dotdot",
            good().file("ep/../../etc/x", b"1").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "symlink",
            good().entry(b"ep/s", T::Symlink, b"").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "hardlink",
            good().entry(b"ep/h", T::Link, b"").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "char device",
            good().entry(b"ep/c", T::Char, b"").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "block device",
            good().entry(b"ep/d", T::Block, b"").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "fifo",
            good().entry(b"ep/f", T::Fifo, b"").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "duplicate entry",
            good().file("ep/x", b"1").file("ep/x", b"2").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "meta missing",
            RawTar::new().dir("ep/").file("ep/x", b"1").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "meta is a dir",
            RawTar::new().dir("ep/").dir("ep/meta.json/").finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "meta not object",
            RawTar::new()
                .dir("ep/")
                .file("ep/meta.json", b"[1,2]")
                .finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "meta not json",
            RawTar::new()
                .dir("ep/")
                .file("ep/meta.json", b"{nope")
                .finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "meta 2 MB",
            RawTar::new()
                .dir("ep/")
                .file("ep/meta.json", &vec![b' '; 2 << 20])
                .finish_zst(),
            400,
            "archive_invalid",
        ),
        (
            "stamp differs",
            RawTar::new().dir("ep/").meta("ep", OLD_COMMIT).finish_zst(),
            400,
            "stamp_mismatch",
        ),
        (
            "meta unstamped",
            RawTar::new()
                .dir("ep/")
                .file("ep/meta.json", b"{}")
                .finish_zst(),
            400,
            "stamp_mismatch",
        ),
        (
            "bomb",
            good().file("ep/zeros", &vec![0u8; 12_000_000]).finish_zst(),
            413,
            "too_large",
        ),
    ];
    for (name, body, status, code) in cases {
        let got = put(&c, &r.url, "ep", body).await;
        assert_eq!(
            (got.0, got.1["error"].as_str().unwrap_or("")),
            (status, code),
            "case {name:?}: {}",
            got.1
        );
        assert!(r.stored(HOST).is_empty(), "case {name:?} stored something");
        assert!(
            r.scratch().is_empty(),
            "case {name:?} left scratch {:?}",
            r.scratch()
        );
    }
    // A legitimate GNU long name (path over 100 bytes) is honoured.
    let long = format!("ln/{}", "d".repeat(150));
    let body = RawTar::new()
        .dir("ln/")
        .entry(
            b"././@LongLink",
            T::GNULongName,
            format!("{long}\0").as_bytes(),
        )
        .file(&long[..99], b"payload")
        .meta("ln", GOOD_COMMIT)
        .finish_zst();
    assert_eq!(put(&c, &r.url, "ln", body).await.0, 201);
    // Still healthy, and a good archive is accepted afterwards.
    assert_eq!(
        put(&c, &r.url, "ep", good().file("ep/x", b"1").finish_zst())
            .await
            .0,
        201
    );
}

#[tokio::test]
async fn too_large_compressed_is_refused_from_headers_or_while_streaming() {
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_episode_bytes = 100000\n".into(),
            ..Default::default()
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let big = RawTar::new()
        .dir("ep/")
        .meta("ep", GOOD_COMMIT)
        .file("ep/r", &noise(300_000, 5))
        .finish_zst();
    assert_error(&put(&c, &r.url, "ep", big.clone()).await, 413, "too_large");
    // Chunked (no Content-Length): counted as it arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = c
        .put(format!("{}/v1/episodes/{HOST}/ep", r.url))
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(&big))
        .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
        .send()
        .await;
    // The receiver may answer and close before the client finished sending,
    // and the client then sees a broken connection instead of the answer;
    // the audit line holds the decision either way.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    let too_large = |r: &Receiver| {
        r.audit_records()
            .iter()
            .filter(|a| a["episode_id"] == "ep" && a["status"] == 413 && a["error"] == "too_large")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while too_large(&r) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the chunked upload was not refused with 413 too_large: {:?}",
            r.audit_records()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(r.stored(HOST).is_empty() && r.scratch().is_empty());
}

fn futures_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + Sync + 'static {
    futures_util::stream::iter(items)
}

#[tokio::test]
async fn certificates_that_must_not_get_in() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    for (name, id) in [
        ("rogue CA", Some(env.pki.rogue_client(HOST))),
        (
            "expired",
            Some(env.pki.client_variant(HOST, Variant::Expired)),
        ),
        (
            "not yet valid",
            Some(env.pki.client_variant(HOST, Variant::NotYetValid)),
        ),
        (
            "serverAuth only",
            Some(env.pki.client_variant(HOST, Variant::ServerAuthOnly)),
        ),
        ("no certificate", None),
    ] {
        let c = env.client(id.as_ref());
        let resp = c.post(format!("{}/v1/ping", r.url)).send().await;
        assert!(resp.is_err(), "{name}: got {:?}", resp.map(|r| r.status()));
    }
    // A SAN-only certificate names its host by DNS SAN.
    let c = env.client(Some(&env.pki.client_variant("lab-san", Variant::SanOnly)));
    let v: Value = c
        .post(format!("{}/v1/ping", r.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["host_id"], "lab-san");
    assert!(
        r.log_text()
            .contains("tls handshake refused a client certificate"),
        "refusals are logged"
    );
}

#[tokio::test]
async fn bearer_tokens_identify_hosts() {
    use sha2::Digest as _;
    let env = TestEnv::new();
    let hash: String = sha2::Sha256::digest(b"tok-lab-01")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tokens = env.file("receiver/tokens");
    std::fs::write(&tokens, format!("lab-01 {hash}\n")).unwrap();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            tokens_file: Some(tokens),
            ..Default::default()
        },
    );
    let c = env.client(None);
    let ping = |tok: &'static str| c.post(format!("{}/v1/ping", r.url)).bearer_auth(tok).send();
    let ok = ping("tok-lab-01").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["host_id"], HOST);
    let bad = ping("wrong").await.unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        "unauthenticated"
    );
    let none = c.post(format!("{}/v1/ping", r.url)).send().await.unwrap();
    assert_eq!(none.status(), 401);
    // The token's host may not write under another host's path.
    let body = RawTar::new()
        .dir("ep/")
        .meta("ep", GOOD_COMMIT)
        .finish_zst();
    let resp = c
        .put(format!("{}/v1/episodes/lab-02/ep", r.url))
        .bearer_auth("tok-lab-01")
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = c
        .put(format!("{}/v1/episodes/{HOST}/ep", r.url))
        .bearer_auth("tok-lab-01")
        .header("X-Labship-Commit", GOOD_COMMIT)
        .header("Content-Digest", digest_header(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Certificates still work beside tokens.
    let c = env.client(Some(&env.pki.client("lab-03")));
    assert_eq!(
        c.post(format!("{}/v1/ping", r.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn concurrent_uploads_and_racing_twins() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let body = RawTar::new()
            .dir(&format!("ep-{i}/"))
            .meta(&format!("ep-{i}"), GOOD_COMMIT)
            .file(&format!("ep-{i}/r"), &noise(200_000, i))
            .finish_zst();
        let (c, url) = (c.clone(), r.url.clone());
        tasks.push(tokio::spawn(async move {
            put(&c, &url, &format!("ep-{i}"), body).await.0
        }));
    }
    // Eight copies of the same episode at once: exactly one 201, the rest 200.
    let twin = RawTar::new()
        .dir("twin/")
        .meta("twin", GOOD_COMMIT)
        .file("twin/r", &noise(500_000, 99))
        .finish_zst();
    let mut twins = Vec::new();
    for _ in 0..8 {
        let (c, url, body) = (c.clone(), r.url.clone(), twin.clone());
        twins.push(tokio::spawn(
            async move { put(&c, &url, "twin", body).await.0 },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let mut codes: Vec<u16> = Vec::new();
    for t in twins {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes.iter().filter(|&&s| s == 201).count(), 1, "{codes:?}");
    assert!(
        codes.iter().all(|&s| s == 201 || s == 200 || s == 503),
        "{codes:?}"
    );
    assert_eq!(r.stored(HOST).len(), 18);
    assert!(r.scratch().is_empty());
}

#[tokio::test]
async fn stored_files_are_group_readable_not_world_readable() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = env.client(Some(&env.pki.client(HOST)));
    let body = RawTar::new()
        .dir("ep/")
        .meta("ep", GOOD_COMMIT)
        .finish_zst();
    assert_eq!(put(&c, &r.url, "ep", body).await.0, 201);
    for name in ["ep.tar.zst", "ep.json"] {
        let mode = std::fs::metadata(r.store.join(HOST).join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "{name}");
    }
}
