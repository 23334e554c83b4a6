//! The real `shipper` binary against the real receiver over mutual TLS.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use labship_tests::episode::{assert_same_meta, assert_same_tree, noise, unpack, write_episode};
use labship_tests::pki::Issued;
use labship_tests::process::{Receiver, run};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, REMEDIATION, TestEnv};
use serde_json::Value;
use std::path::{Path, PathBuf};

const HOST: &str = "lab-01";

/// Writes a shipper config for `url` with `id` as client identity; settle 0.
fn shipper_config(env: &TestEnv, url: &str, id: &Issued) -> (PathBuf, PathBuf) {
    let data = env.path().join("lab");
    std::fs::create_dir_all(data.join("episodes")).unwrap();
    let cfg = env.path().join("shipper.toml");
    std::fs::write(
        &cfg,
        labship_tests::shipper_toml(env, HOST, url, &data, id, "settle_s = 0"),
    )
    .unwrap();
    (cfg, data)
}

/// Replaces `from` with `to` in the config file `cfg`.
fn edit(cfg: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", cfg.display());
    std::fs::write(cfg, text.replace(from, to)).unwrap();
}

fn shipper(cfg: &Path, flag: &str) -> (i32, String, String) {
    run("shipper", &["--config", cfg.to_str().unwrap(), flag])
}

fn reason(data: &Path, id: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(
            data.join("quarantine")
                .join(id)
                .join("quarantine_reason.json"),
        )
        .unwrap(),
    )
    .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn once_ships_quarantines_and_is_idempotent() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    let eps = data.join("episodes");
    let a = write_episode(
        &eps,
        "ep-a",
        Some(GOOD_COMMIT),
        &[
            ("frames/0.bin", &noise(1_000_000, 1)),
            ("log.csv", b"t,v\n"),
        ],
    );
    write_episode(&eps, "ep-b", Some(GOOD_COMMIT), &[]);
    write_episode(&eps, "old", Some(OLD_COMMIT), &[("x", b"1")]);
    write_episode(&eps, "unstamped", None, &[("x", b"1")]);
    let sym = write_episode(&eps, "sym", Some(GOOD_COMMIT), &[]);
    std::os::unix::fs::symlink("/etc/passwd", sym.join("link")).unwrap();
    std::fs::create_dir_all(eps.join("bad name")).unwrap();
    std::fs::create_dir_all(eps.join("writing")).unwrap(); // no meta.json yet
    let source_a = env.file("copy/.keep").parent().unwrap().join("ep-a");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&source_a)
        .status()
        .unwrap();

    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("shipped 2, already present 0, quarantined 3, left pending 1"),
        "{out}"
    );
    assert_eq!(names(&data.join("shipped")), ["ep-a", "ep-b"]);
    assert_eq!(names(&data.join("quarantine")), ["old", "sym", "unstamped"]);
    assert_eq!(
        names(&eps),
        ["bad name", "writing"],
        "invalid names and unfinished episodes are left alone"
    );
    assert!(names(&data.join("outbox")).is_empty());

    let old = reason(&data, "old");
    assert_eq!(
        (old["reason"].as_str(), old["http_status"].as_u64()),
        (Some("commit_out_of_window"), Some(412))
    );
    assert_eq!(old["remediation"], REMEDIATION);
    assert_eq!(old["commit"], OLD_COMMIT);
    assert_eq!(old["host_id"], HOST);
    assert!(old["quarantined_at"].as_str().unwrap().ends_with('Z'));
    let uns = reason(&data, "unstamped");
    assert_eq!(
        (uns["reason"].as_str(), uns["http_status"].as_u64()),
        (Some("stamp_missing"), None)
    );
    assert!(
        uns["remediation"].is_null(),
        "remediation is null or a shell command; none fixes a missing stamp"
    );
    assert_eq!(reason(&data, "sym")["reason"], "archive_failed");

    // The receiver holds exactly what was in the episode.
    let stored = std::fs::read(r.store.join(HOST).join("ep-a.tar.zst")).unwrap();
    let out_dir = env.file("unpacked/.keep");
    unpack(&stored, out_dir.parent().unwrap());
    assert_same_tree(&source_a, &out_dir.parent().unwrap().join("ep-a"));
    assert_same_meta(&source_a, &out_dir.parent().unwrap().join("ep-a"));
    // Every field of status.json, as the real shipper wrote it after this
    // pass (doctor and operators read them; docs/operations.md lists them).
    let status: Value =
        serde_json::from_slice(&std::fs::read(data.join("state/status.json")).unwrap()).unwrap();
    let mut keys: Vec<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "bwlimit",
            "hold_s",
            "host_id",
            "last_error",
            "last_success",
            "outbox",
            "pending",
            "quarantined",
            "quarantined_this_pass",
            "shipped_this_pass",
            "time",
            "transient_this_pass",
            "updated_at",
            "uploading"
        ],
        "{status}"
    );
    let recent = |field: &str| {
        let at = humantime::parse_rfc3339(status[field].as_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        assert!(
            age < std::time::Duration::from_secs(60),
            "{field}: {status}"
        );
    };
    recent("time");
    recent("last_success");
    assert_eq!(status["host_id"], HOST);
    assert_eq!(
        status["pending"], 1,
        "'writing' has no meta.json yet: {status}"
    );
    assert_eq!(status["outbox"], 0);
    assert_eq!(status["shipped_this_pass"], 2);
    assert_eq!(status["quarantined_this_pass"], 3);
    assert_eq!(status["quarantined"], 3);
    assert_eq!(status["transient_this_pass"], 0);
    // The last answer the receiver refused, with what doctor shows of it.
    let e = &status["last_error"];
    assert_eq!(
        (&e["code"], &e["episode"], &e["status"]),
        (
            &Value::from("commit_out_of_window"),
            &Value::from("old"),
            &Value::from(412)
        ),
        "{status}"
    );
    assert!(
        e["message"].as_str().unwrap().contains(OLD_COMMIT),
        "{status}"
    );
    assert!(e["at"].as_str().unwrap().ends_with('Z'), "{status}");
    assert!(status["hold_s"].is_null(), "{status}");

    // A second pass changes nothing.
    let (code, out, _) = shipper(&cfg, "--once");
    assert_eq!(code, 0);
    assert!(
        out.contains("shipped 0, already present 0, quarantined 0, left pending 1"),
        "{out}"
    );
    assert_eq!(
        r.audit_records()
            .iter()
            .filter(|a| a["status"] == 201)
            .count(),
        2
    );
}

#[test]
fn receiver_down_then_back_and_recovery_by_head() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    // Over INLINE_MAX once packed, so the archive waits in outbox/.
    write_episode(
        &data.join("episodes"),
        "ep",
        Some(GOOD_COMMIT),
        &[("d", &noise(1_200_000, 3))],
    );
    r.kill9();
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 1, "transient failure leaves work: {out}\n{err}");
    assert!(
        out.contains("left pending 1 (1 by a transient failure)"),
        "{out}"
    );
    assert_eq!(names(&data.join("outbox")), ["ep.json", "ep.tar.zst"]);
    assert_eq!(names(&data.join("episodes")), ["ep"]);

    // Simulate "uploaded, then crashed before retiring": the receiver gets the
    // outbox archive by another route; the shipper must HEAD and retire it
    // without a second upload.
    r.restart();
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(data.join("outbox/ep.json")).unwrap()).unwrap();
    let body = std::fs::read(data.join("outbox/ep.tar.zst")).unwrap();
    let c = env.client(Some(&env.pki.client(HOST)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        c.put(format!("{}/v1/episodes/{HOST}/ep", r.url))
            .header("X-Labship-Commit", GOOD_COMMIT)
            .header("Content-Digest", sidecar["digest"].as_str().unwrap())
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 201);
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("shipped 0, already present 1"), "{out}");
    assert_eq!(names(&data.join("shipped")), ["ep"]);
    assert!(names(&data.join("outbox")).is_empty());
    assert_eq!(
        r.audit_records().len(),
        1,
        "no second PUT: {:?}",
        r.audit_records()
    );
}

#[test]
fn ping_exit_codes() {
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let (cfg, _) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    let (code, out, _) = shipper(&cfg, "--ping");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok:") && out.contains(HOST), "{out}");

    let rogue_cfg = env.path().join("rogue.toml");
    let rogue = env.pki.rogue_client(HOST);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let own = env.pki.client(HOST);
    std::fs::write(
        &rogue_cfg,
        text.replace(
            own.cert_file.to_str().unwrap(),
            rogue.cert_file.to_str().unwrap(),
        )
        .replace(
            own.key_file.to_str().unwrap(),
            rogue.key_file.to_str().unwrap(),
        ),
    )
    .unwrap();
    let (code, out, _) = shipper(&rogue_cfg, "--ping");
    assert_eq!(code, 3, "rejected certificate: {out}");

    r.kill9();
    let (code, out, _) = shipper(&cfg, "--ping");
    assert_eq!(code, 4, "receiver down: {out}");

    let bad = env.path().join("bad.toml");
    std::fs::write(&bad, "host_id = \"x\"\n").unwrap();
    let (code, _, err) = shipper(&bad, "--ping");
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.toml") && err.contains("receiver"),
        "{err}"
    );
}

#[test]
fn daemon_notifies_ships_and_stops_cleanly_on_sigterm() {
    use std::time::{Duration, Instant};
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    edit(&cfg, "settle_s = 0", "settle_s = 0\nscan_interval_s = 1");
    let sock_path = env.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = std::process::Command::new(labship_tests::bin("shipper"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(std::fs::File::create(env.path().join("shipper.log")).unwrap())
        .spawn()
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut recv = |seen: &mut Vec<String>| {
        let n = sock.recv(&mut buf).expect("a notify message");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    recv(&mut seen);
    assert!(seen[0].contains("READY=1"), "{seen:?}");
    // An episode written while the daemon runs is shipped by a later pass.
    write_episode(
        &data.join("episodes"),
        "live",
        Some(GOOD_COMMIT),
        &[("d", b"1")],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !data.join("shipped/live").exists() {
        assert!(
            Instant::now() < deadline,
            "not shipped: {}",
            std::fs::read_to_string(env.path().join("shipper.log")).unwrap()
        );
        recv(&mut seen);
    }
    while seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() < 2 {
        recv(&mut seen);
    }
    // One shipper per data_dir: `--once` beside the daemon refuses, naming
    // the lock, and touches nothing.
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("another shipper is already running") && err.contains("shipper.lock"),
        "{err}"
    );
    assert!(
        seen.iter().any(|m| m.contains("STATUS=pending")),
        "{seen:?}"
    );
    assert!(labship_tests::process::unsafe_free_kill(child.id(), 15));
    while !seen.iter().any(|m| m.contains("STOPPING=1")) {
        recv(&mut seen);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn the_journal_gets_native_fields_doctor_can_classify() {
    if !labship_tests::is_root() || !Path::new("/lib/systemd/systemd-journald").exists() {
        labship_tests::skip(
            "the_journal_gets_native_fields_doctor_can_classify",
            "needs root and systemd-journald",
        );
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    write_episode(&data.join("episodes"), "good", Some(GOOD_COMMIT), &[]);
    write_episode(&data.join("episodes"), "old", Some(OLD_COMMIT), &[]);
    // A real journald in a private mount namespace (RECIPES.md), then the real
    // shipper logging to it, then the real `journalctl -o json`.
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal /run/log; \
         /lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 & J=$!; trap 'kill $J' EXIT; sleep 1; \
         LABSHIP_JOURNAL=1 {shipper:?} --config {cfg:?} --once >/dev/null; sleep 0.5; \
         journalctl --no-pager -o json -t shipper",
        shipper = labship_tests::bin("shipper"),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let entries: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |event: &str, ep: &str| {
        entries
            .iter()
            .find(|e| e["EVENT"] == event && e["EPISODE_ID"] == ep)
            .unwrap_or_else(|| {
                panic!(
                    "no {event} entry for {ep} in:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .clone()
    };
    let q = find("quarantined", "old");
    assert_eq!(q["HTTP_STATUS"], "412");
    assert_eq!(q["ERROR_CODE"], "commit_out_of_window");
    assert_eq!(q["REMEDIATION"], REMEDIATION);
    assert_eq!(q["PRIORITY"], "3", "quarantine is logged as an error");
    find("shipped", "good");
}

/// The shipper's random kill campaign (`LABSHIP_CRASH_TRIALS`, default 30;
/// `LABSHIP_CRASH_SEED`). Each trial: three new episodes of varied size, a
/// daemon started, SIGKILL at a varied moment once its work is under way,
/// then one `--once` pass to recover, and every invariant checked over all
/// episodes so far: each in `shipped/` exactly once, nothing left in
/// `episodes/`, `outbox/`, `quarantine/` or the receiver's scratch, exactly
/// one archive and one 201 per episode in the store, and this trial's trees
/// byte-identical in the store and in `shipped/`.
#[test]
fn kill_9_at_varied_moments_loses_nothing_and_stores_nothing_twice() {
    use std::time::{Duration, Instant};
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    edit(&cfg, "settle_s = 0", "settle_s = 0\nscan_interval_s = 1");
    // Every archive in outbox/ (over 1 MiB) by resumable upload: kills land
    // in partial uploads too (CONTRACT §9), the small ones in PUTs.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}[limits]\nresumable_min_bytes = 0\n")).unwrap();
    let copies = env.path().join("copies");
    let seed: u64 = std::env::var("LABSHIP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let trials: usize = std::env::var("LABSHIP_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let delays = noise(trials, seed);
    let log = env.path().join("shipper.log");
    let count = |d: &str| std::fs::read_dir(data.join(d)).map_or(0, Iterator::count);
    let started = Instant::now();
    let mut ids: Vec<String> = Vec::new();
    // How many kills left work undone (episodes not yet shipped), and how
    // many of those caught an archive in outbox/ (mid-pack or mid-upload).
    let (mut mid_work, mut mid_archive) = (0, 0);
    for (t, d) in delays.iter().enumerate() {
        let d = u64::from(*d);
        let new: Vec<String> = (0..3).map(|k| format!("ep-{t:03}-{k}")).collect();
        for (k, id) in new.iter().enumerate() {
            // 40 KB to 2.4 MB: about half are packed in memory (up to
            // INLINE_MAX), half through outbox/.
            let data_bin = noise(
                40_000 + (d as usize * 9_973 * (k + 1)) % 2_400_000,
                d + k as u64,
            );
            let files: &[(&str, &[u8])] = &[("d.bin", &data_bin), ("t.csv", b"1\n")];
            write_episode(&data.join("episodes"), id, Some(GOOD_COMMIT), files);
            write_episode(&copies, id, Some(GOOD_COMMIT), files);
        }
        ids.extend(new.iter().cloned());
        let mut child = std::process::Command::new(labship_tests::bin("shipper"))
            .args(["--config", cfg.to_str().unwrap()])
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        // Wait for work to be under way (an archive being built or waiting in
        // outbox/, or a new ship), whatever the machine's load, then kill at
        // a varied moment inside it.
        let before = count("shipped");
        let deadline = Instant::now() + Duration::from_secs(20);
        while count("outbox") == 0 && count("shipped") == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(d % 64));
        let archive_in_outbox = names(&data.join("outbox"))
            .iter()
            .any(|f| f.contains(".tar.zst"));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if count("shipped") < ids.len() {
            mid_work += 1;
            mid_archive += usize::from(archive_in_outbox);
        }

        let ctx = format!("trial {t} (seed {seed}, kill {} ms in)", d % 64);
        let (code, out, err) = shipper(&cfg, "--once");
        assert_eq!(code, 0, "{ctx}: the recovery pass\n{out}\n{err}");
        assert_eq!(names(&data.join("shipped")), ids, "{ctx}: shipped/");
        for dir in ["episodes", "outbox", "quarantine"] {
            assert!(
                names(&data.join(dir)).is_empty(),
                "{ctx}: {dir}/ holds {:?}\n{}",
                names(&data.join(dir)),
                std::fs::read_to_string(&log).unwrap()
            );
        }
        let mut want: Vec<String> = ids
            .iter()
            .flat_map(|id| [format!("{id}.json"), format!("{id}.tar.zst")])
            .collect();
        want.sort();
        assert_eq!(r.stored(HOST), want, "{ctx}: one archive and manifest each");
        // A resumable upload's creation (201) stores nothing.
        let created = r
            .audit_records()
            .iter()
            .filter(|a| a["status"] == 201 && a["op"] != "upload_create")
            .count();
        assert_eq!(created, ids.len(), "{ctx}: stored once each");
        assert!(r.scratch().is_empty(), "{ctx}: scratch {:?}", r.scratch());
        for id in &new {
            let out = env.path().join("unpacked").join(id);
            std::fs::create_dir_all(&out).unwrap();
            unpack(
                &std::fs::read(r.store.join(HOST).join(format!("{id}.tar.zst"))).unwrap(),
                &out,
            );
            assert_same_tree(&copies.join(id), &out.join(id));
            assert_same_tree(&copies.join(id), &data.join("shipped").join(id));
            assert_same_meta(&data.join("shipped").join(id), &out.join(id));
        }
    }
    // The campaign only proves something if most kills landed with work half
    // done.
    assert!(
        mid_work * 2 >= trials,
        "only {mid_work} of {trials} kills interrupted work in progress"
    );
    let partial = r
        .audit_records()
        .iter()
        .filter(|a| a["op"] == "upload_create" && a["status"] == 201)
        .count();
    assert!(partial > 0, "no archive went by resumable upload");
    eprintln!(
        "MEASURED shipper kill campaign: {trials} trials (seed {seed}), {} episodes, {mid_work} kills mid-work ({mid_archive} with an archive in outbox/), {partial} resumable uploads created, all invariants held, {:.1?}",
        ids.len(),
        started.elapsed()
    );
}

#[test]
fn a_stalled_upload_is_cut_by_stall_timeout_and_the_retry_ships_it() {
    use labship_tests::proxy::{Fault, Proxy};
    use std::time::{Duration, Instant};
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let proxy = Proxy::start(r.addr, Fault::StallAfter(200_000));
    let url = format!("https://127.0.0.1:{}", proxy.addr.port());
    let (cfg, data) = shipper_config(&env, &url, &env.pki.client(HOST));
    edit(&cfg, "stall_timeout_s = 5", "stall_timeout_s = 2");
    write_episode(
        &data.join("episodes"),
        "big",
        Some(GOOD_COMMIT),
        &[("d.bin", &noise(3_000_000, 11))],
    );

    let t = Instant::now();
    let (code, out, err) = shipper(&cfg, "--once");
    let took = t.elapsed();
    assert_eq!(code, 1, "a stall is transient: {out}\n{err}");
    assert!(err.contains("stalled"), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "cut after {took:?}"
    );
    assert!(
        names(&data.join("quarantine")).is_empty(),
        "never quarantined for a wire fault"
    );

    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("shipped 1"), "{out}");
    assert!(proxy.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn retry_after_from_a_busy_receiver_is_honoured() {
    use labship_tests::process::ReceiverOpts;
    let env = TestEnv::new();
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_concurrent_uploads = 1\n".into(),
            ..Default::default()
        },
    );
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    for name in ["ep-a", "ep-b", "ep-c"] {
        write_episode(
            &data.join("episodes"),
            name,
            Some(GOOD_COMMIT),
            &[("d", name.as_bytes())],
        );
    }
    // Hold the receiver's only upload slot with a body that never finishes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = env.client(Some(&env.pki.client("lab-02")));
    let url = format!("{}/v1/episodes/lab-02/hold", r.url);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let hold = rt.spawn(async move {
        let body =
            reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (b, rx))
            }));
        c.put(url)
            .header("X-Labship-Commit", GOOD_COMMIT)
            .header(
                "Content-Digest",
                "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:",
            )
            .body(body)
            .send()
            .await
    });
    rt.block_on(tx.send(Ok(vec![0x28, 0xb5, 0x2f, 0xfd])))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while r.scratch().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "hold upload never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = std::process::Command::new(labship_tests::bin("shipper"))
        .args(["--config", cfg.to_str().unwrap(), "--once"])
        .env("LABSHIP_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // A busy receiver is busy for every episode: one 503 puts the whole host
    // on hold and ends the pass, instead of one doomed PUT per episode.
    let retries: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("event=\"retry\"") || l.contains("event=retry"))
        .collect();
    assert_eq!(retries.len(), 1, "{err}");
    let line = retries[0];
    assert!(
        line.contains("http_status=503")
            && line.contains("error_code=\"busy\"")
            && line.contains("scope=\"host\""),
        "{line}"
    );
    assert!(
        summary.contains("left pending 3 (1 by a transient failure)"),
        "{summary}"
    );
    // ep-a was sent and met the 503: its in-memory archive is kept in
    // outbox/ for the retry to confirm with HEAD; the look-ahead is dropped.
    assert_eq!(names(&data.join("outbox")), ["ep-a.json", "ep-a.tar.zst"]);
    let ms: u64 = line
        .split("retry_in_ms=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    // The receiver waited 2 s for a slot first, then said `Retry-After: 1`
    // (docs/protocol.md): a backoff of initial_backoff_s = 1 with full
    // jitter would be under 950 ms 95% of the time without that floor.
    assert!(
        ms >= 950,
        "Retry-After: 1 must floor the backoff (initial_backoff_s = 1, full jitter); got {ms} ms"
    );
    drop(tx);
    let _ = rt.block_on(hold);
    // Slot free again: a fresh process ships all three (the archive
    // kept in the outbox is checked with HEAD, then uploaded).
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("shipped 3"), "{out}\n{err}");
    assert_eq!(names(&data.join("outbox")), Vec::<String>::new());
}

/// Every durable step of the shipper, with a SIGKILL right after it (the
/// debug-build `LABSHIP_CRASH_AT` hook), then a clean restart: each episode
/// ends in exactly one place, stored once, nothing half-written left behind.
#[test]
fn kill_9_at_every_named_crash_point_then_restart_converges() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let points = [
        "pack:archive-renamed",
        "pack:archive-synced",
        "pack:sidecar-written",
        "retire:before-move",
        "retire:moved",
        "quarantine:reason-written",
        "quarantine:moved",
    ];
    for (t, point) in points.iter().enumerate() {
        let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
        // A fresh data_dir per point, beside the shared receiver.
        let fresh = env.path().join(format!("lab-{t}"));
        std::fs::rename(&data, &fresh).unwrap();
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&format!("{data:?}"), &format!("{fresh:?}"));
        let cfg_t = env.path().join(format!("shipper-{t}.toml"));
        std::fs::write(&cfg_t, text).unwrap();
        let data = fresh;
        let (good, late, bare) = (
            format!("t{t}-a-good"),
            format!("t{t}-b-late"),
            format!("t{t}-c-bare"),
        );
        // Over INLINE_MAX (1 MiB) once packed: the pack:* points are on the outbox path.
        let files: &[(&str, &[u8])] = &[("d.bin", &noise(1_200_000, t as u64)), ("t.csv", b"1\n")];
        let eps = data.join("episodes");
        write_episode(&eps, &good, Some(GOOD_COMMIT), files);
        write_episode(&eps, &late, Some(OLD_COMMIT), files);
        write_episode(&eps, &bare, None, files);
        let copy = env.path().join(format!("copy-{t}"));
        write_episode(&copy, &good, Some(GOOD_COMMIT), files);

        labship_tests::process::shipper_crash_at(&cfg_t, point);
        let (code, stdout, err) = shipper(&cfg_t, "--once");
        assert_eq!(code, 0, "{point}: restart\n{stdout}\n{err}");

        assert_eq!(names(&data.join("shipped")), vec![good.clone()], "{point}");
        assert_eq!(
            names(&data.join("quarantine")),
            vec![late.clone(), bare.clone()],
            "{point}"
        );
        assert_eq!(
            reason(&data, &late)["reason"],
            "commit_out_of_window",
            "{point}"
        );
        assert_eq!(reason(&data, &bare)["reason"], "stamp_missing", "{point}");
        for dir in ["episodes", "outbox"] {
            assert_eq!(
                names(&data.join(dir)),
                Vec::<String>::new(),
                "{point}: {dir}/"
            );
        }
        assert!(
            names(&data.join("state"))
                .iter()
                .all(|f| !f.starts_with(".tmp-")),
            "{point}: temp file left in state/"
        );
        // Nothing but the producer's files and our reason file in quarantine.
        for q in [&late, &bare] {
            assert_eq!(
                names(&data.join("quarantine").join(q)),
                vec!["d.bin", "meta.json", "quarantine_reason.json", "t.csv"],
                "{point}: {q}"
            );
        }
        let stored = r.store.join(HOST).join(format!("{good}.tar.zst"));
        let out_dir = env.path().join(format!("unpacked-{t}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        unpack(&std::fs::read(&stored).unwrap(), &out_dir);
        assert_same_tree(&copy.join(&good), &out_dir.join(&good));
        assert!(
            !r.store.join(HOST).join(format!("{late}.tar.zst")).exists(),
            "{point}"
        );
        let puts: Vec<_> = r
            .audit_records()
            .into_iter()
            .filter(|a| a["episode_id"] == good.as_str())
            .collect();
        assert_eq!(
            puts.iter().filter(|a| a["status"] == 201).count(),
            1,
            "{point}: stored once: {puts:?}"
        );
        // Every PUT counts, not only the 201s: once the receiver has answered
        // (retire:*, quarantine:*, where the good episode went first) or
        // before any upload began (pack:archive-renamed), the restart sends no
        // second PUT; an archive in outbox/ with its sidecar is confirmed by
        // HEAD. Only a crash while the first upload may be under way (the
        // seal runs beside it) allows a second PUT: answered 200 when the
        // first was stored, or 201 when the kill cut the first one's body
        // (the receiver's 503 `busy`, "upload interrupted", stores nothing).
        let may_resend = matches!(*point, "pack:archive-synced" | "pack:sidecar-written");
        let resent = may_resend
            && puts.len() == 2
            && match (&puts[0]["status"], &puts[1]["status"]) {
                (a, b) if *a == 201 && *b == 200 => true,
                (a, b) if *a == 503 && *b == 201 => puts[0]["error"] == "busy",
                _ => false,
            };
        assert!(
            puts.len() == 1 || resent,
            "{point}: PUTs of {good}: {puts:?}"
        );
    }
}

/// An upload longer than the watchdog interval keeps the watchdog fed by its
/// own progress (the pass-level ping comes only at the end of the pass).
#[test]
fn a_slow_upload_longer_than_the_watchdog_keeps_pinging() {
    use labship_tests::proxy::{Fault, Proxy};
    use std::time::{Duration, Instant};
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let proxy = Proxy::start(r.addr, Fault::Throttle(2_000_000));
    let url = format!("https://localhost:{}", proxy.addr.port());
    let (cfg, data) = shipper_config(&env, &url, &env.pki.client(HOST));
    edit(&cfg, "settle_s = 0", "settle_s = 0\nscan_interval_s = 600");
    // Incompressible: 16 MB at 2 MB/s is about 8 s on the wire. Socket
    // buffers swallow the last few MB at once (progress the shipper cannot
    // see), so the episode is made much larger than they are.
    write_episode(
        &data.join("episodes"),
        "slow",
        Some(GOOD_COMMIT),
        &[("d.bin", &noise(16_000_000, 3))],
    );
    let sock_path = env.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let watchdog = Duration::from_secs(4);
    let mut child = std::process::Command::new(labship_tests::bin("shipper"))
        .args(["--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .stderr(std::fs::File::create(env.path().join("shipper.log")).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut pings = Vec::new();
    let mut started = None;
    loop {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notify message ({e}); log:\n{}",
                std::fs::read_to_string(env.path().join("shipper.log")).unwrap()
            )
        });
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("READY=1") {
            started = Some(Instant::now());
        }
        if msg.contains("WATCHDOG=1") {
            pings.push(Instant::now());
        }
        // The STATUS after the first pass: the upload is over.
        if msg.contains("STATUS=pending") {
            break;
        }
    }
    let started = started.unwrap();
    let took = started.elapsed();
    assert!(
        data.join("shipped/slow").exists(),
        "not shipped:\n{}",
        std::fs::read_to_string(env.path().join("shipper.log")).unwrap()
    );
    assert!(
        took > watchdog * 2,
        "the upload took {took:?}: too fast to prove anything"
    );
    let mut last = started;
    for p in &pings {
        assert!(
            *p - last < watchdog,
            "a {:?} gap without WATCHDOG=1 (interval {watchdog:?}); pings at {:?}",
            *p - last,
            pings.iter().map(|p| *p - started).collect::<Vec<_>>()
        );
        last = *p;
    }
    eprintln!(
        "pass took {took:?}; watchdog pings at {:?}",
        pings.iter().map(|p| *p - started).collect::<Vec<_>>()
    );
    assert!(labship_tests::process::unsafe_free_kill(child.id(), 15));
    assert!(child.wait().unwrap().success());
}

/// PUT `body` as `host`'s episode `id` directly (what another shipper run, or
/// another machine, might have stored before).
fn put_direct(env: &TestEnv, url: &str, host: &str, id: &str, body: Vec<u8>) -> u16 {
    let c = env.client(Some(&env.pki.client(host)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        c.put(format!("{url}/v1/episodes/{host}/{id}"))
            .header("X-Labship-Commit", GOOD_COMMIT)
            .header(
                "Content-Digest",
                labship_tests::episode::digest_header(&body),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// The rows of the CONTRACT §4 table not covered above, end to end: 400
/// (a damaged outbox archive: digest_mismatch), 409, too large (refused
/// locally from the receiver's advertised limit), 200 already present, 403
/// (and what `--ping` says of it), and `--ping` exit 5.
#[test]
fn the_rest_of_the_answer_table_end_to_end() {
    use labship_tests::process::ReceiverOpts;
    use std::sync::atomic::AtomicU64;
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    let eps = data.join("episodes");

    // 400: packed while the receiver was down, then the outbox copy rots.
    write_episode(
        &eps,
        "rotten",
        Some(GOOD_COMMIT),
        &[("d", &noise(1_200_000, 5))],
    );
    r.kill9();
    assert_eq!(shipper(&cfg, "--once").0, 1);
    let archive = data.join("outbox/rotten.tar.zst");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    r.restart();

    // 200: the same bytes are already stored (the shipper's own pack).
    let shipper_pack = |dir: &Path| {
        let mut out = Vec::new();
        let id = dir.file_name().unwrap().to_str().unwrap();
        labship_shipper::archive::pack(
            dir,
            &labship_protocol::Id::parse(id).unwrap(),
            &mut out,
            3,
            2,
            &AtomicU64::new(0),
        )
        .unwrap();
        out
    };
    let present = write_episode(&eps, "present", Some(GOOD_COMMIT), &[("d", b"same")]);
    assert_eq!(
        put_direct(&env, &r.url, HOST, "present", shipper_pack(&present)),
        201
    );
    // 409: another archive is stored under the same id.
    write_episode(&eps, "conflict", Some(GOOD_COMMIT), &[("d", b"mine")]);
    let theirs = write_episode(
        &env.path().join("theirs"),
        "conflict",
        Some(GOOD_COMMIT),
        &[("d", b"theirs")],
    );
    assert_eq!(
        put_direct(&env, &r.url, HOST, "conflict", shipper_pack(&theirs)),
        201
    );

    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("shipped 0, already present 1, quarantined 2, left pending 0"),
        "{out}\n{err}"
    );
    assert_eq!(names(&data.join("shipped")), ["present"]);
    let rot = reason(&data, "rotten");
    assert_eq!(
        (rot["reason"].as_str(), rot["http_status"].as_u64()),
        (Some("digest_mismatch"), Some(400))
    );
    let con = reason(&data, "conflict");
    assert_eq!(
        (con["reason"].as_str(), con["http_status"].as_u64()),
        (Some("conflict"), Some(409))
    );
    assert_eq!(
        names(&data.join("quarantine/conflict")),
        ["d", "meta.json", "quarantine_reason.json"],
        "the local episode is kept whole"
    );

    // 413: a receiver with a small limit.
    let small = Receiver::start_with(
        &env,
        ReceiverOpts {
            extra: "[limits]\nmax_episode_bytes = 10000\n".into(),
            store: Some(env.path().join("small-store")),
            ..Default::default()
        },
    );
    edit(&cfg, &r.url, &small.url);
    write_episode(
        &eps,
        "huge",
        Some(GOOD_COMMIT),
        &[("d", &noise(100_000, 6))],
    );
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    // Refused before upload, from the limit the receiver's ping advertises:
    // an HTTP/1 client still writing a body never reads the early 413.
    let huge = reason(&data, "huge");
    assert_eq!(
        (huge["reason"].as_str(), huge["http_status"].as_u64()),
        (Some("too_large"), None)
    );
    assert!(
        huge["message"]
            .as_str()
            .unwrap()
            .contains("max_episode_bytes = 10000"),
        "{huge}"
    );
    assert!(
        !small
            .audit_records()
            .iter()
            .any(|a| a["episode_id"] == "huge"),
        "not uploaded: {:?}",
        small.audit_records()
    );

    // 403: this host's config names lab-01 but holds lab-02's certificate.
    let other = env.pki.client("lab-02");
    let own = env.pki.client(HOST);
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&small.url, &r.url)
            .replace(
                own.cert_file.to_str().unwrap(),
                other.cert_file.to_str().unwrap(),
            )
            .replace(
                own.key_file.to_str().unwrap(),
                other.key_file.to_str().unwrap(),
            ),
    )
    .unwrap();
    write_episode(&eps, "mine", Some(GOOD_COMMIT), &[("d", b"1")]);
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 1, "403 is transient and loud: {out}\n{err}");
    assert!(
        err.contains("ERROR") && err.contains("http_status=403") && err.contains("host_mismatch"),
        "{err}"
    );
    assert_eq!(names(&eps), ["mine"], "kept for when the identity is fixed");
    let (code, out, _) = shipper(&cfg, "--ping");
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("knows this certificate as host \"lab-02\"") && out.contains("shipper.toml"),
        "{out}"
    );

    // --ping exit 5: something answers, but not the receiver's API.
    edit(
        &cfg,
        &format!("url = \"{}\"", r.url),
        &format!("url = \"{}/nope\"", r.url),
    );
    let (code, out, _) = shipper(&cfg, "--ping");
    assert_eq!(code, 5, "{out}");
    assert!(
        out.starts_with("unexpected:") && out.contains("404"),
        "{out}"
    );
}

/// The daemon's quarantine sweep: with `keep_days = 1` an entry quarantined
/// three days ago is removed (and logged with its age) while one from today
/// stays; with `keep_days = 0` both stay.
#[test]
fn the_daemon_sweeps_expired_quarantine_and_keep_days_0_keeps_all() {
    use std::time::{Duration, Instant, SystemTime};
    for keep_days in [1, 0] {
        let env = TestEnv::new();
        let r = Receiver::start(&env);
        let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text.push_str(&format!(
            "[quarantine]\nkeep_days = {keep_days}\ncleanup_interval_s = 1\n"
        ));
        std::fs::write(&cfg, text).unwrap();
        let quarantine = data.join("quarantine");
        for (name, ago_days) in [("old", 3), ("new", 0)] {
            let dir = write_episode(&quarantine, name, Some(OLD_COMMIT), &[("x", b"1")]);
            let at = SystemTime::now() - Duration::from_secs(ago_days * 86_400);
            let reason = serde_json::json!({
                "episode_id": name,
                "host_id": HOST,
                "reason": "commit_out_of_window",
                "http_status": 412,
                "message": "the stamp is not in the accepted window",
                "remediation": REMEDIATION,
                "commit": OLD_COMMIT,
                "quarantined_at": humantime::format_rfc3339_seconds(at).to_string(),
            });
            std::fs::write(
                dir.join("quarantine_reason.json"),
                serde_json::to_vec(&reason).unwrap(),
            )
            .unwrap();
        }
        let log = env.path().join("shipper.log");
        let _daemon = labship_tests::process::Daemon(
            std::process::Command::new(labship_tests::bin("shipper"))
                .args(["--config", cfg.to_str().unwrap()])
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        // Two passes at least (scan_interval_s is 5 by default, the sweep is
        // due at the first): status.json gets its `time` after each.
        let deadline = Instant::now() + Duration::from_secs(15);
        let passed = || {
            std::fs::read(data.join("state/status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["time"].is_string())
        };
        while !passed() || (keep_days == 1 && quarantine.join("old").exists()) {
            assert!(
                Instant::now() < deadline,
                "keep_days = {keep_days}: no sweep within 15 s: {:?}\n{}",
                labship_tests::names(&quarantine),
                log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let left = labship_tests::names(&quarantine);
        if keep_days == 1 {
            assert_eq!(left, ["new"], "{}", log_text());
            let line = log_text()
                .lines()
                .find(|l| l.contains("quarantine_removed"))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no removal logged:\n{}", log_text()));
            assert!(
                line.contains("old") && line.contains("age_days=3"),
                "{line}"
            );
        } else {
            assert_eq!(
                left,
                ["new", "old"],
                "keep_days = 0 keeps all:\n{}",
                log_text()
            );
            assert!(!log_text().contains("quarantine_removed"), "{}", log_text());
        }
    }
}

/// `--once` with `LABSHIP_LOG=info`: (exit code, stdout, stderr).
fn once_logged(cfg: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(labship_tests::bin("shipper"))
        .args(["--config", cfg.to_str().unwrap(), "--once"])
        .env("LABSHIP_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one `event="retry"` line in a `--once` log.
fn retry_line(err: &str) -> &str {
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("event=\"retry\""))
        .collect();
    assert_eq!(lines.len(), 1, "one retry line:\n{err}");
    lines[0]
}

fn status_json(data: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(data.join("state/status.json")).unwrap()).unwrap()
}

/// Something other than the receiver answers the PUT `200 {"ok":true}` (a
/// misrouted URL, a proxy answering for itself), or a 201 naming another
/// digest: nothing is retired, the failure is loud (an ERROR naming the URL
/// and the status, a host-wide hold, status.json's last_error), and once
/// `receiver.url` names the receiver everything ships.
#[test]
fn a_success_that_is_not_the_receivers_confirmation_retires_nothing() {
    use labship_tests::impostor::{Answer, Impostor};
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let ok = Impostor::start(&env.pki, |_| Answer::json(200, r#"{"ok":true}"#));
    let (cfg, data) = shipper_config(&env, &ok.url, &env.pki.client(HOST));
    let eps = data.join("episodes");
    // One held in memory, one in outbox/.
    write_episode(
        &eps,
        "large",
        Some(GOOD_COMMIT),
        &[("d", &noise(1_200_000, 7))],
    );
    write_episode(&eps, "small", Some(GOOD_COMMIT), &[("d", b"small")]);

    let (code, out, err) = once_logged(&cfg);
    assert_eq!(code, 1, "transient: {out}\n{err}");
    assert!(
        out.contains(
            "shipped 0, already present 0, quarantined 0, left pending 2 (1 by a transient failure)"
        ),
        "{out}\n{err}"
    );
    let line = retry_line(&err);
    assert!(
        line.contains("ERROR")
            && line.contains(&format!("PUT {}/v1/episodes/{HOST}/", ok.url))
            && line.contains("answered 200, but not as the receiver")
            && line.contains("not the receiver's answer")
            && line.contains("http_status=200")
            && line.contains("scope=\"host\""),
        "{line}"
    );
    assert!(!err.contains("event=\"shipped\""), "{err}");
    assert_eq!(names(&eps), ["large", "small"]);
    assert!(names(&data.join("shipped")).is_empty());
    assert!(names(&data.join("quarantine")).is_empty());
    let status = status_json(&data);
    assert_eq!(status["last_error"]["status"], 200, "{status}");
    assert!(
        status["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains(&ok.url)
    );
    assert!(status["last_success"].is_null(), "{status}");
    assert_eq!(status["transient_this_pass"], 1);
    assert!(
        ok.requests()
            .iter()
            .any(|q| q.method == "PUT" && q.body_bytes > 0),
        "{:?}",
        ok.requests()
    );
    // Its ping answer is no receiver's either.
    let (code, out, _) = shipper(&cfg, "--ping");
    assert_eq!(code, 5, "{out}");

    // A well-formed answer for this host and episode, but not for these
    // bytes (and 404 to the HEAD that asks about the archive kept in
    // outbox/).
    let other = Impostor::start(&env.pki, |q| {
        if q.method == "HEAD" {
            return Answer::json(404, "");
        }
        let episode = q.path.rsplit('/').next().unwrap_or_default().to_owned();
        Answer::json(
            201,
            &serde_json::json!({
                "host_id": HOST,
                "episode_id": episode,
                "digest": labship_tests::episode::digest_header(b"something else"),
                "bytes": q.body_bytes,
            })
            .to_string(),
        )
    });
    edit(&cfg, &ok.url, &other.url);
    let (code, out, err) = once_logged(&cfg);
    assert_eq!(code, 1, "{out}\n{err}");
    let line = retry_line(&err);
    assert!(
        line.contains("answered 201, but not as the receiver")
            && line.contains("not the sha-256=:")
            && line.contains("http_status=201"),
        "{line}"
    );
    assert_eq!(names(&eps), ["large", "small"]);
    assert!(names(&data.join("shipped")).is_empty());

    // The receiver itself: both ship, stored once each.
    edit(&cfg, &other.url, &r.url);
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("shipped 2, already present 0"), "{out}\n{err}");
    assert_eq!(names(&data.join("shipped")), ["large", "small"]);
    assert!(names(&data.join("outbox")).is_empty());
    assert_eq!(
        r.audit_records()
            .iter()
            .filter(|a| a["status"] == 201)
            .count(),
        2
    );
}

/// A redirect, even to the real receiver, is not followed: a HEAD sent on
/// would take the receiver's 200 as the answer at `receiver.url`, a PUT
/// would be re-sent somewhere nobody configured. Loud, transient, nothing
/// retired; the receiver itself then confirms as usual.
#[test]
fn a_redirect_even_to_the_receiver_is_not_followed() {
    use labship_tests::impostor::{Answer, Impostor};
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    let eps = data.join("episodes");
    write_episode(
        &eps,
        "ep",
        Some(GOOD_COMMIT),
        &[("d", &noise(1_200_000, 8))],
    );
    // Packed while the receiver is down; then the receiver gets that
    // archive by another route, so a HEAD there shows its digest.
    r.kill9();
    assert_eq!(shipper(&cfg, "--once").0, 1);
    assert_eq!(names(&data.join("outbox")), ["ep.json", "ep.tar.zst"]);
    r.restart();
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(data.join("outbox/ep.json")).unwrap()).unwrap();
    let body = std::fs::read(data.join("outbox/ep.tar.zst")).unwrap();
    let c = env.client(Some(&env.pki.client(HOST)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = rt.block_on(async {
        c.put(format!("{}/v1/episodes/{HOST}/ep", r.url))
            .header("X-Labship-Commit", GOOD_COMMIT)
            .header("Content-Digest", sidecar["digest"].as_str().unwrap())
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(stored, 201);

    let receiver = r.url.clone();
    let moved = Impostor::start(&env.pki, move |q| {
        Answer::redirect(301, &format!("{receiver}{}", q.path))
    });
    edit(&cfg, &r.url, &moved.url);
    let (code, out, err) = once_logged(&cfg);
    assert_eq!(code, 1, "{out}\n{err}");
    let line = retry_line(&err);
    assert!(
        line.contains("ERROR")
            && line.contains(&format!(
                "HEAD {}/v1/episodes/{HOST}/ep answered 301",
                moved.url
            ))
            && line.contains(&format!(
                "a redirect to {}/v1/episodes/{HOST}/ep, which the shipper does not follow",
                r.url
            ))
            && line.contains("http_status=301"),
        "{line}"
    );
    assert_eq!(names(&eps), ["ep"], "not retired on a redirect");
    assert!(names(&data.join("shipped")).is_empty());
    assert_eq!(names(&data.join("outbox")), ["ep.json", "ep.tar.zst"]);

    // A PUT meets a redirect: not followed either.
    let (code, out, _) = shipper(&cfg, "--ping");
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("301") && out.contains("does not follow"),
        "{out}"
    );
    edit(&cfg, &moved.url, &r.url);
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("already present 1"), "{out}");
    write_episode(&eps, "fresh", Some(GOOD_COMMIT), &[("d", b"fresh")]);
    edit(&cfg, &r.url, &moved.url);
    let (code, out, err) = once_logged(&cfg);
    assert_eq!(code, 1, "{out}\n{err}");
    let line = retry_line(&err);
    assert!(
        line.contains(&format!(
            "PUT {}/v1/episodes/{HOST}/fresh answered 301",
            moved.url
        )) && line.contains("does not follow"),
        "{line}"
    );
    assert_eq!(names(&eps), ["fresh"]);
    assert!(
        !r.audit_records().iter().any(|a| a["episode_id"] == "fresh"),
        "the receiver never saw it: {:?}",
        r.audit_records()
    );
    edit(&cfg, &moved.url, &r.url);
    let (code, out, err) = shipper(&cfg, "--once");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("shipped 1"), "{out}");
}

/// `Retry-After` as an HTTP-date (what a proxy or load balancer in front
/// of the receiver may send) floors the backoff like seconds do, and a date
/// far off is capped at an hour.
#[test]
fn retry_after_as_an_http_date_is_honoured_and_capped() {
    use labship_tests::impostor::{Answer, Impostor};
    use std::time::{Duration, SystemTime};
    let env = TestEnv::new();
    let ahead = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(8));
    let a = ahead.clone();
    let lb = Impostor::start(&env.pki, move |_| {
        let secs = a.load(std::sync::atomic::Ordering::SeqCst);
        let when = SystemTime::now() + Duration::from_secs(secs);
        Answer {
            status: 503,
            headers: vec![("Retry-After".into(), httpdate_fmt(when))],
            body: "<html>Service Unavailable</html>".into(),
        }
    });
    let (cfg, data) = shipper_config(&env, &lb.url, &env.pki.client(HOST));
    write_episode(
        &data.join("episodes"),
        "ep",
        Some(GOOD_COMMIT),
        &[("d", b"1")],
    );
    let retry_ms = |err: &str| -> u64 {
        let line = retry_line(err);
        assert!(
            line.contains("http_status=503") && line.contains("scope=\"host\""),
            "{line}"
        );
        line.split("retry_in_ms=")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap()
    };
    let (code, out, err) = once_logged(&cfg);
    assert_eq!(code, 1, "{out}\n{err}");
    // A date has whole seconds: 8 s ahead is a wait of 7 to 8 s
    // (initial_backoff_s = 1, max_backoff_s = 2 without it).
    let ms = retry_ms(&err);
    assert!((6_000..=8_000).contains(&ms), "{ms} ms:\n{err}");

    ahead.store(30 * 86_400, std::sync::atomic::Ordering::SeqCst);
    let (code, out, err) = once_logged(&cfg);
    assert_eq!(code, 1, "{out}\n{err}");
    let ms = retry_ms(&err);
    assert!(
        (3_590_000..=3_600_000).contains(&ms),
        "{ms} ms: capped at an hour"
    );
    assert_eq!(names(&data.join("episodes")), ["ep"]);
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), as proxies write it
/// (by `date`, in the C locale).
fn httpdate_fmt(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let out = std::process::Command::new("date")
        .env("LC_ALL", "C")
        .args([
            "-u",
            "-d",
            &format!("@{secs}"),
            "+%a, %d %b %Y %H:%M:%S GMT",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "date: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A crash right after an episode's move to `shipped/` leaves its archive
/// in `outbox/`; a new episode then written under the same id must not be
/// taken for it (HEAD shows the first one's digest): it is packed and sent
/// on its own, the receiver answers 409, and it is quarantined with that
/// reason, the first one staying shipped and stored as it was.
#[test]
fn a_new_episode_reusing_the_id_after_a_crash_at_retire_is_never_retired_unsent() {
    use std::os::unix::process::ExitStatusExt as _;
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (cfg, data) = shipper_config(&env, &r.url, &env.pki.client(HOST));
    let eps = data.join("episodes");
    // Over INLINE_MAX: the archive goes through outbox/.
    write_episode(
        &eps,
        "ep",
        Some(GOOD_COMMIT),
        &[("d", &noise(1_200_000, 21))],
    );
    let first = write_episode(
        &env.path().join("first"),
        "ep",
        Some(GOOD_COMMIT),
        &[("d", &noise(1_200_000, 21))],
    );
    let out = std::process::Command::new(labship_tests::bin("shipper"))
        .args(["--config", cfg.to_str().unwrap(), "--once"])
        .env("LABSHIP_CRASH_AT", "retire:moved")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names(&data.join("shipped")), ["ep"]);
    assert_eq!(names(&data.join("outbox")), ["ep.json", "ep.tar.zst"]);

    // The producer reuses the id for new data.
    write_episode(
        &eps,
        "ep",
        Some(GOOD_COMMIT),
        &[("d", &noise(1_300_000, 22))],
    );
    let (code, out, err) = once_logged(&cfg);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("shipped 0, already present 0, quarantined 1, left pending 0"),
        "{out}\n{err}"
    );
    assert!(
        err.contains("packed from another directory under this id"),
        "the stale archive is named:\n{err}"
    );
    assert_eq!(names(&data.join("shipped")), ["ep"], "the first one only");
    assert_same_tree(&first, &data.join("shipped/ep"));
    assert_eq!(names(&data.join("quarantine")), ["ep"]);
    let why = reason(&data, "ep");
    assert_eq!(
        (why["reason"].as_str(), why["http_status"].as_u64()),
        (Some("conflict"), Some(409)),
        "{why}"
    );
    assert!(
        why["message"].as_str().unwrap().contains("already stored"),
        "{why}"
    );
    assert!(names(&eps).is_empty());
    assert!(names(&data.join("outbox")).is_empty());
    // Stored once, the first episode's bytes; the new one was sent and refused.
    let audit = r.audit_records();
    let statuses: Vec<u64> = audit.iter().filter_map(|a| a["status"].as_u64()).collect();
    assert_eq!(statuses, [201, 409], "{audit:?}");
    let unpacked = env.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    unpack(
        &std::fs::read(r.store.join(HOST).join("ep.tar.zst")).unwrap(),
        &unpacked,
    );
    assert_same_tree(&first, &unpacked.join("ep"));
}
