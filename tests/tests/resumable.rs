//! Resumable uploads (CONTRACT §9), shipper side, end to end: the real
//! shipper and receiver over mutual TLS, a fault proxy between them counting
//! the bytes on the wire, real `kill -9` of either side. Each upload of a
//! ~100 MiB incompressible archive must complete with at most 1.3x its size
//! on the wire, and the stored archive must be the one packed (its SHA-256 is
//! the digest the outbox sidecar recorded, and it unpacks to the episode).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use labship_tests::episode::{assert_same_tree, digest_header, noise, unpack, write_episode};
use labship_tests::process::{Daemon, Receiver, run};
use labship_tests::proxy::{Fault, Proxy};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv, names};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const HOST: &str = "lab-01";
const MIB: usize = 1 << 20;
/// The archive of a [`BIG`] MiB episode of noise is about that size.
const BIG: usize = 100;

/// A receiver behind a fault proxy, and a shipper config pointing at the
/// proxy (settle 0, scan every second, `[limits]` as given).
struct Lab {
    r: Receiver,
    proxy: Proxy,
    cfg: PathBuf,
    data: PathBuf,
    copies: PathBuf,
    log: PathBuf,
    /// Last: the processes go before their directory does.
    env: TestEnv,
}

impl Lab {
    fn new(fault: Fault, limits: &str) -> Self {
        let env = TestEnv::new();
        let r = Receiver::start(&env);
        let proxy = Proxy::start(r.addr, fault);
        let url = format!("https://127.0.0.1:{}", proxy.addr.port());
        let data = env.path().join("lab");
        std::fs::create_dir_all(data.join("episodes")).unwrap();
        let cfg = env.path().join("shipper.toml");
        let text = labship_tests::shipper_toml(
            &env,
            HOST,
            &url,
            &data,
            &env.pki.client(HOST),
            "settle_s = 0\nscan_interval_s = 1",
        );
        std::fs::write(&cfg, format!("{text}[limits]\n{limits}\n")).unwrap();
        let (copies, log) = (env.path().join("copies"), env.path().join("shipper.log"));
        Self {
            env,
            r,
            proxy,
            cfg,
            data,
            copies,
            log,
        }
    }

    /// An episode of `mib` MiB of noise (incompressible: the archive is as
    /// big), in `episodes/` and as a copy to compare with.
    fn episode(&self, id: &str, mib: usize, commit: &str) {
        let files: &[(&str, &[u8])] = &[("frames.bin", &noise(mib * MIB, mib as u64))];
        write_episode(&self.data.join("episodes"), id, Some(commit), files);
        write_episode(&self.copies, id, Some(commit), files);
    }

    /// The shipper with `args` (`--once`, or none for the daemon), logging
    /// to [`Lab::log`].
    fn shipper(&self, args: &[&str]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Daemon(
            Command::new(labship_tests::bin("shipper"))
                .arg("--config")
                .arg(&self.cfg)
                .args(args)
                .env("LABSHIP_LOG", "info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `cond`, failing with the logs after `within`.
    fn wait(&self, what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\nshipper:\n{}\nreceiver:\n{}",
                self.log_text(),
                self.r.log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The outbox sidecar's digest and size and the saved upload location
    /// of `id`, once all three are there (the archive sealed, the upload
    /// created).
    fn outbox_record(&self, id: &str) -> (String, u64, String) {
        let outbox = self.data.join("outbox");
        let mut found = None;
        self.wait(
            "the sidecar and the upload location in outbox/",
            Duration::from_secs(120),
            || {
                let side = std::fs::read(outbox.join(format!("{id}.json")));
                let up = std::fs::read(outbox.join(format!("{id}.upload")));
                if let (Ok(side), Ok(up)) = (side, up) {
                    let (side, up): (Value, Value) = (
                        serde_json::from_slice(&side).unwrap(),
                        serde_json::from_slice(&up).unwrap(),
                    );
                    found = Some((
                        side["digest"].as_str().unwrap().to_owned(),
                        side["bytes"].as_u64().unwrap(),
                        up["location"].as_str().unwrap().to_owned(),
                    ));
                }
                found.is_some()
            },
        );
        let (digest, bytes, location) = found.unwrap();
        assert!(
            location.starts_with(&format!("/v1/uploads/{HOST}/{id}/")),
            "{location}"
        );
        (digest, bytes, location)
    }

    /// `id` is shipped, stored once, byte for byte the archive whose
    /// digest the sidecar recorded, and unpacks to the episode's tree; the
    /// wire carried at most 1.3x its size.
    fn assert_shipped(&self, id: &str, digest: &str, bytes: u64) -> f64 {
        assert_eq!(names(&self.data.join("shipped")), [id]);
        assert!(
            names(&self.data.join("outbox")).is_empty(),
            "outbox/ emptied"
        );
        let stored = std::fs::read(self.r.store.join(HOST).join(format!("{id}.tar.zst"))).unwrap();
        assert_eq!(stored.len() as u64, bytes);
        assert_eq!(
            digest_header(&stored),
            digest,
            "the archive that was packed"
        );
        let out = self.env.path().join("unpacked");
        std::fs::create_dir_all(&out).unwrap();
        unpack(&stored, &out);
        assert_same_tree(&self.copies.join(id), &out.join(id));
        let created = self
            .r
            .audit_records()
            .iter()
            // A creation's 201 stores nothing; an append's or a PUT's does.
            .filter(|a| a["status"] == 201 && a["op"] != "upload_create")
            .count();
        assert_eq!(created, 1, "stored once");
        let ratio = self.proxy.up_bytes() as f64 / bytes as f64;
        assert!(
            ratio <= 1.3,
            "{} bytes on the wire for a {bytes}-byte archive ({ratio:.2}x)\n{}",
            self.proxy.up_bytes(),
            self.log_text()
        );
        ratio
    }
}

fn exit_code(d: &mut Daemon, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = d.0.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_link_cut_every_25_mib_resumes_each_time_and_ships_in_one_pass() {
    let lab = Lab::new(Fault::ResetEvery(25 * MIB), "");
    lab.episode("big", BIG, GOOD_COMMIT);
    let t = Instant::now();
    let mut once = lab.shipper(&["--once"]);
    let (digest, bytes, _) = lab.outbox_record("big");
    let code = exit_code(&mut once, Duration::from_secs(300));
    assert_eq!(code, Some(0), "one pass ships it\n{}", lab.log_text());
    let cuts = lab.proxy.faulted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(cuts >= 4, "the link was cut {cuts} times");
    let ratio = lab.assert_shipped("big", &digest, bytes);
    assert!(
        lab.log_text().contains("upload_resumed"),
        "{}",
        lab.log_text()
    );
    eprintln!(
        "MEASURED cut every 25 MiB: {bytes}-byte archive, {cuts} cuts, {} bytes on the wire ({ratio:.3}x), {:.1?}",
        lab.proxy.up_bytes(),
        t.elapsed()
    );
}

#[test]
fn a_shipper_killed_mid_upload_resumes_after_restart() {
    let lab = Lab::new(Fault::PassThrough, "");
    lab.episode("big", BIG, GOOD_COMMIT);
    let mut first = lab.shipper(&[]);
    let (digest, bytes, location) = lab.outbox_record("big");
    lab.wait("40% on the wire", Duration::from_secs(120), || {
        lab.proxy.up_bytes() > bytes * 2 / 5
    });
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let at_kill = lab.proxy.up_bytes();
    assert!(at_kill < bytes, "killed mid-upload ({at_kill} of {bytes})");
    // The location survived the crash beside its archive.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(lab.data.join("outbox").join("big.upload")).unwrap())
            .unwrap();
    assert_eq!(saved["location"], location);

    let mut once = lab.shipper(&["--once"]);
    let code = exit_code(&mut once, Duration::from_secs(300));
    assert_eq!(code, Some(0), "{}", lab.log_text());
    let ratio = lab.assert_shipped("big", &digest, bytes);
    eprintln!(
        "MEASURED shipper kill -9 at {at_kill} of {bytes} bytes: {} bytes on the wire in all ({ratio:.3}x)",
        lab.proxy.up_bytes()
    );
}

/// The saved location lost with the shipper (`outbox/<id>.upload` gone):
/// the restart's POST of the same archive is answered with the receiver's
/// upload and the bytes it durably holds, and the shipper goes on from
/// there, not from byte 0.
#[test]
fn a_lost_upload_location_costs_nothing_the_post_resumes() {
    let lab = Lab::new(Fault::PassThrough, "");
    lab.episode("big", BIG, GOOD_COMMIT);
    let mut first = lab.shipper(&[]);
    let (digest, bytes, location) = lab.outbox_record("big");
    lab.wait("60% on the wire", Duration::from_secs(120), || {
        lab.proxy.up_bytes() > bytes * 3 / 5
    });
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let at_kill = lab.proxy.up_bytes();
    assert!(at_kill < bytes, "killed mid-upload ({at_kill} of {bytes})");
    std::fs::remove_file(lab.data.join("outbox").join("big.upload")).unwrap();

    let mut once = lab.shipper(&["--once"]);
    let code = exit_code(&mut once, Duration::from_secs(300));
    assert_eq!(code, Some(0), "{}", lab.log_text());
    let log = lab.log_text();
    assert!(log.contains("already holds"), "{log}");
    // The same upload, created once and found again by the second POST.
    let saved = lab
        .r
        .audit_records()
        .iter()
        .filter(|a| a["op"] == "upload_create" && a["status"] == 201)
        .count();
    assert_eq!(saved, 2, "two POSTs, one upload: {location}");
    let ratio = lab.assert_shipped("big", &digest, bytes);
    eprintln!(
        "MEASURED lost location after a kill -9 at {at_kill} of {bytes} bytes: {} bytes on the wire ({ratio:.3}x)",
        lab.proxy.up_bytes()
    );
}

#[test]
fn a_receiver_killed_mid_upload_is_resumed_after_its_restart() {
    let mut lab = Lab::new(Fault::PassThrough, "");
    lab.episode("big", BIG, GOOD_COMMIT);
    let _daemon = lab.shipper(&[]);
    let (digest, bytes, _) = lab.outbox_record("big");
    lab.wait("half on the wire", Duration::from_secs(120), || {
        lab.proxy.up_bytes() > bytes / 2
    });
    lab.r.kill9();
    let at_kill = lab.proxy.up_bytes();
    assert!(at_kill < bytes, "killed mid-upload ({at_kill} of {bytes})");
    std::thread::sleep(Duration::from_secs(1));
    lab.r.restart();
    let shipped = lab.data.join("shipped");
    lab.wait(
        "shipped after the restart",
        Duration::from_secs(240),
        || shipped.join("big").is_dir() && names(&lab.data.join("outbox")).is_empty(),
    );
    let ratio = lab.assert_shipped("big", &digest, bytes);
    eprintln!(
        "MEASURED receiver kill -9 at {at_kill} of {bytes} bytes: {} bytes on the wire in all ({ratio:.3}x)",
        lab.proxy.up_bytes()
    );
}

#[test]
fn an_out_of_window_episode_is_refused_before_its_archive_is_sent() {
    let lab = Lab::new(Fault::PassThrough, "");
    lab.episode("old", 40, OLD_COMMIT);
    let (code, out, err) = run(
        "shipper",
        &["--config", lab.cfg.to_str().unwrap(), "--once"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(names(&lab.data.join("quarantine")), ["old"]);
    let reason: Value = serde_json::from_slice(
        &std::fs::read(lab.data.join("quarantine/old/quarantine_reason.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(reason["reason"], "commit_out_of_window");
    assert_eq!(reason["http_status"], 412);
    let wire = lab.proxy.up_bytes();
    assert!(
        wire < MIB as u64,
        "{wire} bytes on the wire for a refused 40 MiB episode"
    );
    assert!(names(&lab.data.join("outbox")).is_empty());
    eprintln!("MEASURED refused 40 MiB episode: {wire} bytes on the wire");
}

/// Holds an append to an upload of `id` open (a first chunk sent, the rest
/// never), as another upload of that episode in progress; returns the task
/// and the sender whose drop ends it.
async fn hold_an_append(
    lab: &Lab,
    id: &str,
    archive: Vec<u8>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Sender<bytes::Bytes>,
) {
    let c = lab.env.client(Some(&lab.env.pki.client(HOST)));
    let created = c
        .post(format!("{}/v1/uploads/{HOST}/{id}", lab.r.url))
        .header("content-digest", digest_header(&archive))
        .header("x-labship-commit", GOOD_COMMIT)
        .header("upload-length", archive.len())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    tx.send(bytes::Bytes::copy_from_slice(&archive[..64 * 1024]))
        .await
        .unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    let url = format!("{}{location}", lab.r.url);
    let task = tokio::spawn(async move {
        let _ = c
            .patch(url)
            .header("content-type", "application/partial-upload")
            .header("upload-offset", 0)
            .header("upload-complete", "?1")
            .header("content-length", archive.len())
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
    });
    (task, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episode_busy_defers_that_episode_only() {
    // Every archive in outbox/ goes by the upload API.
    let lab = Lab::new(Fault::PassThrough, "resumable_min_bytes = 0");
    lab.episode("a-held", 2, GOOD_COMMIT);
    lab.episode("b-free", 2, GOOD_COMMIT);
    let archive = labship_tests::episode::pack(&lab.copies.join("a-held"));
    let (task, tx) = hold_an_append(&lab, "a-held", archive).await;
    // The receiver is taking the held append now.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let cfg = lab.cfg.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run("shipper", &["--config", cfg.to_str().unwrap(), "--once"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "a-held waits: {out}\n{err}");
    assert_eq!(names(&lab.data.join("shipped")), ["b-free"], "{err}");
    assert!(lab.data.join("episodes/a-held").is_dir());
    let busy = err
        .lines()
        .find(|l| l.contains("episode_busy"))
        .unwrap_or_else(|| panic!("no episode_busy in\n{err}"));
    assert!(
        busy.contains("a-held") && busy.contains("scope=\"episode\""),
        "{busy}"
    );
    let status: Value =
        serde_json::from_slice(&std::fs::read(lab.data.join("state/status.json")).unwrap())
            .unwrap();
    assert!(
        status["hold_s"].is_null(),
        "the host is not on hold: {status}"
    );

    // The other upload ends: the episode ships on a later pass.
    drop(tx);
    task.abort();
    let cfg = lab.cfg.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cfg = cfg.clone();
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            run("shipper", &["--config", cfg.to_str().unwrap(), "--once"])
        })
        .await
        .unwrap();
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a-held never shipped:\n{err}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(names(&lab.data.join("shipped")), ["a-held", "b-free"]);
}

/// An append cut without an answer, and the receiver's answer to the empty
/// append that settles its offset is `503 episode_busy` (its earlier
/// append to the upload is still stopping): the receiver is there and says
/// this episode waits, so the episode waits alone (CONTRACT §9), not the
/// host as for the cut by itself.
#[test]
fn episode_busy_after_a_cut_defers_that_episode_only() {
    use labship_tests::impostor::{Answer, Impostor};
    let env = TestEnv::new();
    let receiver = Impostor::start(&env.pki, |q| match (q.method.as_str(), q.body_bytes) {
        ("POST", _) if q.path.starts_with("/v1/uploads/") => Answer {
            status: 201,
            headers: vec![
                ("Location".into(), format!("{}/{}", q.path, "ab".repeat(16))),
                ("Upload-Offset".into(), "0".into()),
            ],
            body: String::new(),
        },
        ("PATCH", n) if n > 0 => Answer::hang_up(),
        ("PATCH", _) => Answer::json(
            503,
            r#"{"error":"episode_busy","message":"an earlier append to this upload does not stop"}"#,
        ),
        _ => Answer::json(200, r#"{"ok":true,"host_id":"lab-01"}"#),
    });
    let (data, cfg) = upload_api_host(&env, &receiver.url, &[("ep", 7)]);
    let (code, out, err) = run("shipper", &["--config", cfg.to_str().unwrap(), "--once"]);
    assert_eq!(code, 1, "transient\n{out}\n{err}");
    let settled = receiver
        .requests()
        .iter()
        .any(|q| q.method == "PATCH" && q.body_bytes == 0);
    assert!(
        settled,
        "no settling append: {:?}\n{err}",
        receiver.requests()
    );
    let retry = err
        .lines()
        .find(|l| l.contains("event=\"retry\"") || l.contains("transient failure"))
        .unwrap_or_else(|| panic!("no retry line in\n{err}"));
    assert!(
        retry.contains("episode_busy") && retry.contains("scope=\"episode\""),
        "{retry}\n{err}"
    );
    let status: Value =
        serde_json::from_slice(&std::fs::read(data.join("state/status.json")).unwrap()).unwrap();
    assert!(
        status["hold_s"].is_null(),
        "the host is not on hold: {status}"
    );
}

/// A lab host whose every archive goes by the upload API
/// (`resumable_min_bytes = 0`), shipping to `url`: episodes of 2 MiB of
/// noise (id, seed) in its data_dir. Returns the data_dir and the config.
fn upload_api_host(env: &TestEnv, url: &str, episodes: &[(&str, u64)]) -> (PathBuf, PathBuf) {
    let data = env.path().join("lab");
    let eps = data.join("episodes");
    std::fs::create_dir_all(&eps).unwrap();
    for (id, seed) in episodes {
        let files: &[(&str, &[u8])] = &[("frames.bin", &noise(2 * MIB, *seed))];
        write_episode(&eps, id, Some(GOOD_COMMIT), files);
    }
    let cfg = env.path().join("shipper.toml");
    let client = env.pki.client(HOST);
    let top = "settle_s = 0\nscan_interval_s = 1";
    let text = labship_tests::shipper_toml(env, HOST, url, &data, &client, top);
    std::fs::write(&cfg, format!("{text}[limits]\nresumable_min_bytes = 0\n")).unwrap();
    (data, cfg)
}

/// `shipper --once` with `LABSHIP_CRASH_AT=point`: it must die there.
fn crash_at(lab: &Lab, point: &str) {
    labship_tests::process::shipper_crash_at(&lab.cfg, point);
}

/// Every upload crash point (docs/transport.md), then a plain restart:
/// the good episode shipped and stored once, byte for byte; the late one
/// quarantined; nothing left in `episodes/` or `outbox/`. The location
/// saved before the crash is resumed (one creation); one lost or dropped
/// is replaced by a new upload (two).
#[test]
fn kill_9_at_each_upload_crash_point_then_restart_converges() {
    for (point, creations) in [
        ("resume:created", 2),
        ("resume:location-saved", 1),
        ("resume:location-removed", 2),
    ] {
        // The location is saved beside the first append: a slow link keeps
        // that append from completing before the crash point is reached.
        let lab = Lab::new(Fault::Throttle(1 << 20), "resumable_min_bytes = 0");
        lab.episode("good", 2, GOOD_COMMIT);
        lab.episode("late", 2, OLD_COMMIT);
        if point == "resume:location-removed" {
            // The receiver forgets the saved upload (DELETE, as the
            // contract allows): the restart's HEAD meets 404.
            crash_at(&lab, "resume:location-saved");
            let saved: Value = serde_json::from_slice(
                &std::fs::read(lab.data.join("outbox/good.upload")).unwrap(),
            )
            .unwrap();
            let url = format!("{}{}", lab.r.url, saved["location"].as_str().unwrap());
            let c = lab.env.client(Some(&lab.env.pki.client(HOST)));
            let status = tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async { c.delete(url).send().await.unwrap().status() });
            assert_eq!(status, 204);
        }
        crash_at(&lab, point);
        let upload = lab.data.join("outbox/good.upload");
        assert_eq!(
            upload.exists(),
            point == "resume:location-saved",
            "{point}: the saved location"
        );
        let (code, out, err) = run(
            "shipper",
            &["--config", lab.cfg.to_str().unwrap(), "--once"],
        );
        assert_eq!(code, 0, "{point}: restart\n{out}\n{err}");
        assert_eq!(names(&lab.data.join("shipped")), ["good"], "{point}");
        assert_eq!(names(&lab.data.join("quarantine")), ["late"], "{point}");
        for dir in ["episodes", "outbox"] {
            assert!(names(&lab.data.join(dir)).is_empty(), "{point}: {dir}/");
        }
        let audit = lab.r.audit_records();
        let count = |op: &str, status: u64| {
            audit
                .iter()
                .filter(|a| a["episode_id"] == "good" && a["op"] == op && a["status"] == status)
                .count()
        };
        assert_eq!(count("upload_create", 201), creations, "{point}: {audit:?}");
        assert_eq!(count("upload_append", 201), 1, "{point}: stored once");
        let stored = std::fs::read(lab.r.store.join(HOST).join("good.tar.zst")).unwrap();
        let out_dir = lab.env.path().join("unpacked");
        std::fs::create_dir_all(&out_dir).unwrap();
        unpack(&stored, &out_dir);
        assert_same_tree(&lab.copies.join("good"), &out_dir.join("good"));
    }
}

/// A receiver older than CONTRACT §9 (no upload route: `404 not_found` to
/// the `POST`): the shipper says so once and sends by `PUT`, the first
/// archive at once and the next without asking again.
#[test]
fn a_receiver_without_the_upload_api_gets_put() {
    use labship_tests::impostor::{Answer, Impostor};
    let env = TestEnv::new();
    let old = Impostor::start(&env.pki, |q| match q.method.as_str() {
        "POST" => Answer::json(
            404,
            r#"{"error":"not_found","message":"no such route; see docs/protocol.md"}"#,
        ),
        // That episode busy (transient, not a host hold): what a PUT meets
        // is not under test here.
        _ => Answer::json(503, r#"{"error":"episode_busy","message":"busy"}"#),
    });
    let (data, cfg) = upload_api_host(&env, &old.url, &[("a", 1), ("b", 2)]);
    let eps = data.join("episodes");
    let (code, out, err) = run("shipper", &["--config", cfg.to_str().unwrap(), "--once"]);
    assert_eq!(code, 1, "transient\n{out}\n{err}");
    let requests = old.requests();
    let count = |m: &str| {
        requests
            .iter()
            .filter(|q| q.method == m && q.path != "/v1/ping")
            .count()
    };
    assert_eq!(count("POST"), 1, "asked once: {requests:?}");
    assert_eq!(
        requests
            .iter()
            .filter(|q| q.method == "PUT" && q.body_bytes > MIB)
            .count(),
        2,
        "both archives sent by PUT: {requests:?}"
    );
    assert_eq!(count("PATCH"), 0, "{requests:?}");
    assert_eq!(
        err.matches("upload_api_missing").count(),
        1,
        "said once, loudly\n{err}"
    );
    assert_eq!(names(&eps), ["a", "b"], "nothing retired");
}
