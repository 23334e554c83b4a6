//! Seeing the fleet from the lab host's side (CONTRACT §11, issue 19): every
//! binary's `--version` names the git commit it was built from; the shipper
//! sends it as its `User-Agent`; `--ping --json` and `--once --json` print
//! one document with the exit codes of the human forms; the ops listener
//! serves `/metrics` whose values match what really happened (episodes,
//! bytes, backlog, quarantine after a 412) and that `promtool check metrics`
//! accepts; a busy ops port does not stop shipping; a renewed client
//! certificate on disk is used from the next connection on, without a
//! restart, and a broken renewal keeps the previous one.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::episode::{noise, write_episode};
use labship_tests::pki::Issued;
use labship_tests::process::{Daemon, Receiver, ReceiverOpts, free_port, http_get, run};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv, expected_commit, shipper_toml};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOST: &str = "lab-01";

#[test]
fn every_binary_names_the_commit_it_was_built_from() {
    let commit = expected_commit();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    let version = env!("CARGO_PKG_VERSION");
    for bin in ["shipper", "receiver", "doctor", "quarantine-unstamped"] {
        let (code, out, err) = run(bin, &["--version"]);
        assert_eq!(code, 0, "{bin}: {err}");
        assert_eq!(out, format!("{bin} {version} ({commit})\n"), "{bin}");
    }
}

/// A config for `HOST` over `<test>/<name>/data` with settle 0 and 1 s passes.
fn config(env: &TestEnv, name: &str, url: &str, id: &Issued, listen: &str) -> (PathBuf, PathBuf) {
    let data = env.path().join(name).join("data");
    std::fs::create_dir_all(data.join("episodes")).unwrap();
    let cfg = env.path().join(name).join("shipper.toml");
    let text = shipper_toml(
        env,
        HOST,
        url,
        &data,
        id,
        "settle_s = 0\nscan_interval_s = 1",
    )
    .replace(
        "[ops]\nlisten = \"\"\n",
        &format!("[ops]\nlisten = {listen:?}\n"),
    );
    assert!(text.contains("[ops]\nlisten"), "{text}");
    std::fs::write(&cfg, text).unwrap();
    (cfg, data)
}

/// The shipper daemon on `cfg`, its log in `log`; killed when dropped.
fn daemon(cfg: &Path, log: &Path) -> Daemon {
    let file = std::fs::File::create(log).unwrap();
    Daemon(
        Command::new(labship_tests::bin("shipper"))
            .args(["--config", cfg.to_str().unwrap()])
            .env("LABSHIP_LOG", "info")
            // An unusable renewal is said after 5 s, not 60 s.
            .env("LABSHIP_TEST_TLS_GRACE_S", "5")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    )
}

fn wait_for(what: &str, within: Duration, log: &Path, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; shipper log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn shipped(data: &Path, id: &str) -> bool {
    data.join("shipped").join(id).exists()
}

/// A loopback proxy that forwards to `target` and keeps every byte the
/// client sent (plain HTTP: the request headers are readable).
fn capturing_proxy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut upstream) = TcpStream::connect(target) else {
                return;
            };
            let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 || upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = upstream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

#[test]
fn the_receiver_sees_the_shipper_version_as_its_user_agent() {
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
            tls: false,
            tokens_file: Some(tokens),
            ..Default::default()
        },
    );
    let (proxy, seen) = capturing_proxy(r.addr);
    let token = env.file("lab/token");
    std::fs::write(&token, "tok-lab-01\n").unwrap();
    let cfg = env.file("lab/shipper.toml");
    std::fs::write(
        &cfg,
        format!(
            "host_id = \"{HOST}\"\ndata_dir = {:?}\n[ops]\nlisten = \"\"\n[receiver]\nurl = \"http://{proxy}\"\ntoken_file = {token:?}\n",
            env.path().join("lab/data")
        ),
    )
    .unwrap();
    let (code, out, err) = run("shipper", &["--config", cfg.to_str().unwrap(), "--ping"]);
    assert_eq!(code, 0, "the receiver answered the ping: {out}{err}");
    let sent = String::from_utf8_lossy(&seen.lock().unwrap()).to_lowercase();
    let want = format!(
        "user-agent: labship-shipper/{} ({})\r\n",
        env!("CARGO_PKG_VERSION"),
        expected_commit()
    );
    assert!(
        sent.contains(&want),
        "{want:?} not in what reached the receiver:\n{sent}"
    );
}

fn json_of(out: &str, code: i32) -> Value {
    let doc: Value = serde_json::from_str(out.trim_end())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {out:?}"));
    assert_eq!(doc["exit_code"], code, "{doc}");
    doc
}

#[test]
fn ping_and_once_print_one_json_document_with_the_same_exit_codes() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (cfg, data) = config(&env, "lab", &r.url, &env.pki.client(HOST), "");
    let cfg_s = cfg.to_str().unwrap();
    let (code, out, err) = run("shipper", &["--config", cfg_s, "--ping", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let doc = json_of(&out, 0);
    assert_eq!(doc["result"], "ok", "{doc}");
    assert_eq!(doc["known_as"], HOST, "{doc}");
    assert_eq!(doc["host_id"], HOST, "{doc}");
    assert!(doc["receiver_version"].is_string(), "{doc}");

    write_episode(
        &data.join("episodes"),
        "ep-1",
        Some(GOOD_COMMIT),
        &[("x", b"1")],
    );
    let (code, out, err) = run("shipper", &["--config", cfg_s, "--once", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let doc = json_of(&out, 0);
    assert_eq!(
        (doc["result"].as_str(), doc["shipped"].as_u64()),
        (Some("ok"), Some(1)),
        "{doc}"
    );
    assert_eq!(doc["transient"], 0, "{doc}");

    // Failures: the receiver gone (ping 4, once 1 with the episode left).
    let dead = format!("https://127.0.0.1:{}", free_port());
    let (cfg2, data2) = config(&env, "dead", &dead, &env.pki.client(HOST), "");
    let cfg2_s = cfg2.to_str().unwrap();
    let (code, out, _) = run("shipper", &["--config", cfg2_s, "--ping", "--json"]);
    assert_eq!(code, 4, "{out}");
    let doc = json_of(&out, 4);
    assert_eq!(doc["result"], "unreachable", "{doc}");
    assert!(doc["message"].as_str().unwrap().contains(&dead), "{doc}");
    write_episode(&data2.join("episodes"), "ep-2", Some(GOOD_COMMIT), &[]);
    let (code, out, _) = run("shipper", &["--config", cfg2_s, "--once", "--json"]);
    assert_eq!(code, 1, "{out}");
    let doc = json_of(&out, 1);
    assert_eq!(
        (doc["result"].as_str(), doc["shipped"].as_u64()),
        (Some("transient"), Some(0)),
        "{doc}"
    );
    assert!(doc["transient"].as_u64().unwrap() >= 1, "{doc}");
    // An invalid config: exit 2, still one document.
    std::fs::write(&cfg2, "host_id = \"lab 01\"\n").unwrap();
    let (code, out, _) = run("shipper", &["--config", cfg2_s, "--once", "--json"]);
    assert_eq!(code, 2);
    let doc = json_of(&out, 2);
    assert_eq!(doc["result"], "invalid_config", "{doc}");
    // --json alone is refused.
    assert_eq!(run("shipper", &["--config", cfg_s, "--json"]).0, 2);
}

/// The samples of `name` (with labels, if any) in an exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `/metrics` of the shipper: (Content-Type, body).
fn scrape(addr: SocketAddr) -> (String, String) {
    let resp = http_get(addr, "/metrics").expect("the ops listener answers");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap();
    (ct, body.to_owned())
}

fn promtool_accepts(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/lib/test-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_count_what_really_happened_and_promtool_accepts_them() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let ops: SocketAddr = listen.parse().unwrap();
    let (cfg, data) = config(&env, "lab", &r.url, &env.pki.client(HOST), &listen);
    let log = env.path().join("lab/shipper.log");
    let eps = data.join("episodes");
    write_episode(
        &eps,
        "ep-a",
        Some(GOOD_COMMIT),
        &[("a.bin", &noise(300_000, 1))],
    );
    write_episode(
        &eps,
        "ep-b",
        Some(GOOD_COMMIT),
        &[("b.bin", &noise(70_000, 2))],
    );
    let _shipper = daemon(&cfg, &log);
    wait_for("both shipped", Duration::from_secs(30), &log, || {
        shipped(&data, "ep-a") && shipped(&data, "ep-b")
    });
    // The rename into shipped/ is the commit; the counter follows it, and a
    // retire runs beside the next upload: wait for the count, then read all.
    let stored = "labship_shipper_episodes_total{result=\"stored\"}";
    wait_for("the stored count", Duration::from_secs(10), &log, || {
        sample(&scrape(ops).1, stored) >= 2.0
    });
    let (ct, text) = scrape(ops);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    promtool_accepts(&text);
    let commit = expected_commit();
    assert_eq!(
        sample(
            &text,
            &format!(
                "labship_build_info{{version=\"{}\",commit=\"{commit}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "labship_shipper_episodes_total{result=\"stored\"}"),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "labship_shipper_episodes_total{result=\"quarantined\"}"
        ),
        0.0
    );
    let stored: u64 = ["ep-a", "ep-b"]
        .iter()
        .map(|id| {
            std::fs::metadata(r.store.join(HOST).join(format!("{id}.tar.zst")))
                .unwrap()
                .len()
        })
        .sum();
    assert!(stored > 300_000, "{stored}");
    assert_eq!(
        sample(&text, "labship_shipper_upload_bytes_total"),
        stored as f64
    );
    assert_eq!(
        sample(&text, "labship_shipper_archive_size_bytes_count"),
        2.0
    );
    assert_eq!(
        sample(&text, "labship_shipper_archive_size_bytes_sum"),
        stored as f64
    );
    assert_eq!(
        sample(&text, "labship_shipper_upload_duration_seconds_count"),
        2.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = sample(&text, "labship_shipper_last_success_timestamp_seconds");
    assert!(now - 60.0 < last && last <= now + 1.0, "{last} vs {now}");
    assert_eq!(sample(&text, "labship_shipper_backlog_episodes"), 0.0);
    assert_eq!(sample(&text, "labship_shipper_backlog_bytes"), 0.0);
    let expiry = sample(
        &text,
        "labship_shipper_client_cert_expiry_timestamp_seconds",
    );
    assert!(expiry > now, "{expiry}");

    // The receiver held it already: a second delivery of the same episode
    // is `already_present`, not `stored`.
    std::fs::rename(data.join("shipped/ep-b"), eps.join("ep-b")).unwrap();
    wait_for("ep-b shipped again", Duration::from_secs(30), &log, || {
        shipped(&data, "ep-b")
    });
    std::thread::sleep(Duration::from_millis(300));
    let (_, text) = scrape(ops);
    assert_eq!(
        sample(
            &text,
            "labship_shipper_episodes_total{result=\"already_present\"}"
        ),
        1.0
    );

    // Not shippable yet: two episodes without meta.json are settling, not
    // backlog; names the scanner rejects are neither.
    for (id, len) in [("wip-1", 1000usize), ("wip-2", 2345)] {
        let dir = eps.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("part.bin"), noise(len, 3)).unwrap();
    }
    for bad in ["lost+found", "bad name"] {
        std::fs::create_dir_all(eps.join(bad)).unwrap();
        std::fs::write(eps.join(bad).join("meta.json"), "{}").unwrap();
    }
    // And one stamped with a commit outside the receiver's window: 412.
    write_episode(&eps, "old", Some(OLD_COMMIT), &[("x", b"1")]);
    wait_for("the 412 quarantined", Duration::from_secs(30), &log, || {
        data.join("quarantine/old/quarantine_reason.json").exists()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (_, text) = scrape(ops);
    promtool_accepts(&text);
    assert_eq!(sample(&text, "labship_shipper_backlog_episodes"), 0.0);
    assert_eq!(sample(&text, "labship_shipper_backlog_bytes"), 0.0);
    assert_eq!(sample(&text, "labship_shipper_settling_episodes"), 2.0);
    assert_eq!(
        sample(&text, "labship_shipper_oldest_pending_age_seconds"),
        0.0
    );
    assert_eq!(sample(&text, "labship_shipper_quarantined_episodes"), 1.0);
    assert_eq!(
        sample(
            &text,
            "labship_shipper_episodes_total{result=\"quarantined\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "labship_shipper_episodes_total{result=\"stored\"}"),
        2.0
    );

    // A scraper asking for OpenMetrics gets it, with its own Content-Type.
    let mut s = TcpStream::connect(ops).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.to_lowercase().contains(
            "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ) && resp.ends_with("# EOF\n"),
        "{resp}"
    );
}

/// The bytes of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            tree_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

/// The backlog is the shippable one: a settled episode waiting for a
/// receiver that does not answer counts, with its bytes and age; episodes
/// still being written and names the scanner rejects (lost+found, an
/// invalid id) do not. Each failed attempt is counted by its reason.
#[test]
fn the_backlog_counts_settled_episodes_and_failures_by_reason() {
    let env = TestEnv::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let ops: SocketAddr = listen.parse().unwrap();
    // Nothing listens there: every attempt gets no answer.
    let url = format!("https://127.0.0.1:{}", free_port());
    let (cfg, data) = config(&env, "lab", &url, &env.pki.client(HOST), &listen);
    let eps = data.join("episodes");
    write_episode(
        &eps,
        "waiting",
        Some(GOOD_COMMIT),
        &[("d.bin", &noise(12_345, 4))],
    );
    std::fs::create_dir_all(eps.join("wip")).unwrap();
    std::fs::write(eps.join("wip/part.bin"), b"12345").unwrap();
    for bad in ["lost+found", "bad name"] {
        std::fs::create_dir_all(eps.join(bad)).unwrap();
        std::fs::write(eps.join(bad).join("meta.json"), "{}").unwrap();
    }
    let log = env.path().join("lab/shipper.log");
    let _shipper = daemon(&cfg, &log);
    wait_for("two failed attempts", Duration::from_secs(30), &log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("will retry")
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let (_, text) = scrape(ops);
    promtool_accepts(&text);
    assert_eq!(sample(&text, "labship_shipper_backlog_episodes"), 1.0);
    assert_eq!(
        sample(&text, "labship_shipper_backlog_bytes"),
        tree_bytes(&eps.join("waiting")) as f64
    );
    assert_eq!(sample(&text, "labship_shipper_settling_episodes"), 1.0);
    assert!(
        sample(&text, "labship_shipper_oldest_pending_age_seconds") >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "labship_shipper_upload_failures_total{reason=\"no_answer\"}"
        ) >= 2.0,
        "{text}"
    );
    for result in ["stored", "already_present", "quarantined"] {
        assert_eq!(
            sample(
                &text,
                &format!("labship_shipper_episodes_total{{result=\"{result}\"}}")
            ),
            0.0,
            "failures are not episode outcomes"
        );
    }
    assert_eq!(
        sample(&text, "labship_shipper_last_success_timestamp_seconds"),
        0.0
    );
}

/// An upload cut by the stall timeout is still timed and its bytes
/// counted; the archive is observed once although it was sent twice.
#[test]
fn a_stalled_upload_is_in_the_upload_metrics() {
    use labship_tests::proxy::{Fault, Proxy};
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let proxy = Proxy::start(r.addr, Fault::StallAfter(200_000));
    let url = format!("https://127.0.0.1:{}", proxy.addr.port());
    let listen = format!("127.0.0.1:{}", free_port());
    let ops: SocketAddr = listen.parse().unwrap();
    let (cfg, data) = config(&env, "lab", &url, &env.pki.client(HOST), &listen);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("stall_timeout_s = 5", "stall_timeout_s = 2"),
    )
    .unwrap();
    write_episode(
        &data.join("episodes"),
        "big",
        Some(GOOD_COMMIT),
        &[("d.bin", &noise(3_000_000, 11))],
    );
    let log = env.path().join("lab/shipper.log");
    let _shipper = daemon(&cfg, &log);
    wait_for(
        "shipped after a stall",
        Duration::from_secs(60),
        &log,
        || shipped(&data, "big"),
    );
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("stalled"),
        "the first attempt stalled"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, text) = scrape(ops);
    let stored = std::fs::metadata(r.store.join(HOST).join("big.tar.zst"))
        .unwrap()
        .len() as f64;
    assert_eq!(
        sample(&text, "labship_shipper_upload_duration_seconds_count"),
        2.0,
        "{text}"
    );
    assert!(
        sample(&text, "labship_shipper_upload_bytes_total") >= stored + 100_000.0,
        "the stalled attempt's bytes count too: {text}"
    );
    assert_eq!(
        sample(&text, "labship_shipper_archive_size_bytes_count"),
        1.0
    );
    assert_eq!(
        sample(&text, "labship_shipper_archive_size_bytes_sum"),
        stored
    );
    assert_eq!(
        sample(
            &text,
            "labship_shipper_upload_failures_total{reason=\"no_answer\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "labship_shipper_episodes_total{result=\"stored\"}"),
        1.0
    );
}

/// After a restart the last success is the newest delivery on disk, not 0
/// (which an alert on "no success for an hour" would take for never).
#[test]
fn the_last_success_survives_a_restart() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let listen = format!("127.0.0.1:{}", free_port());
    let (cfg, data) = config(&env, "lab", &r.url, &env.pki.client(HOST), &listen);
    write_episode(&data.join("episodes"), "ep-a", Some(GOOD_COMMIT), &[]);
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let before = epoch();
    let (code, out, err) = run("shipper", &["--config", cfg.to_str().unwrap(), "--once"]);
    assert_eq!(code, 0, "{out}{err}");
    let after = epoch();
    std::thread::sleep(Duration::from_millis(1100));
    let log = env.path().join("lab/shipper.log");
    let _shipper = daemon(&cfg, &log);
    let ops: SocketAddr = listen.parse().unwrap();
    wait_for("the ops listener", Duration::from_secs(10), &log, || {
        http_get(ops, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    let (_, text) = scrape(ops);
    let last = sample(&text, "labship_shipper_last_success_timestamp_seconds");
    assert!(
        before - 0.01 <= last && last <= after + 0.01,
        "{before} <= {last} <= {after}"
    );
    assert_eq!(
        sample(&text, "labship_shipper_episodes_total{result=\"stored\"}"),
        0.0
    );
}

#[test]
fn a_busy_ops_port_is_logged_and_shipping_goes_on() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = busy.local_addr().unwrap().to_string();
    let (cfg, data) = config(&env, "lab", &r.url, &env.pki.client(HOST), &listen);
    let log = env.path().join("lab/shipper.log");
    write_episode(&data.join("episodes"), "ep-a", Some(GOOD_COMMIT), &[]);
    let _shipper = daemon(&cfg, &log);
    wait_for("shipped", Duration::from_secs(30), &log, || {
        shipped(&data, "ep-a")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("cannot serve /metrics"))
        .unwrap_or_else(|| panic!("no error logged:\n{text}"));
    assert!(
        line.contains(&listen) && line.contains("[ops] listen") && line.contains("ERROR"),
        "{line}"
    );
}

/// Writes `text` to `path` as a renewal tool would: aside, then renamed.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A renewal written file by file (key first, then the certificate, 1.5 s
/// apart) while episodes upload: the half-written pair is never judged, so
/// nothing is logged as an error nor counted; the renewed pair is in use
/// from then on and every episode ships.
#[test]
fn a_rotation_during_uploads_is_not_an_error() {
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let old = env.pki.client(HOST);
    let (cert, key) = (
        env.file("lab/etc/client.pem"),
        env.file("lab/etc/client.key"),
    );
    std::fs::write(&cert, &old.cert_pem).unwrap();
    std::fs::write(&key, &old.key_pem).unwrap();
    let own = Issued {
        cert_file: cert.clone(),
        key_file: key.clone(),
        ..old.clone()
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let (cfg, data) = config(&env, "lab", &r.url, &own, &listen);
    let log = env.path().join("lab/shipper.log");
    let eps = data.join("episodes");
    let _shipper = daemon(&cfg, &log);
    let writer = {
        let eps = eps.clone();
        std::thread::spawn(move || {
            for i in 0..50u64 {
                write_episode(
                    &eps,
                    &format!("ep-{i:03}"),
                    Some(GOOD_COMMIT),
                    &[("d.bin", &noise(20_000, i))],
                );
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let new = env.pki.client(HOST);
    replace(&key, &new.key_pem);
    std::thread::sleep(Duration::from_millis(1500));
    replace(&cert, &new.cert_pem);
    writer.join().unwrap();
    wait_for("all shipped", Duration::from_secs(120), &log, || {
        (0..50).all(|i| shipped(&data, &format!("ep-{i:03}")))
    });
    wait_for("the renewal in use", Duration::from_secs(10), &log, || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("renewed TLS files in use")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("client_tls_reload_failed"), "{text}");
    assert!(!text.contains("not usable"), "{text}");
    // The counter follows the rename into shipped/: wait for it.
    let ops: SocketAddr = listen.parse().unwrap();
    let stored = "labship_shipper_episodes_total{result=\"stored\"}";
    wait_for("the stored count", Duration::from_secs(10), &log, || {
        sample(&scrape(ops).1, stored) >= 50.0
    });
    let (_, metrics) = scrape(ops);
    assert_eq!(
        sample(&metrics, "labship_shipper_client_tls_reload_failures_total"),
        0.0
    );
}

#[test]
fn a_renewed_client_certificate_is_used_without_a_restart() {
    let env = TestEnv::new();
    let old = env.pki.client(HOST);
    let crl = env.file("pki/crl.pem");
    std::fs::write(&crl, env.pki.crl(&[])).unwrap();
    let mut r = Receiver::start_with(
        &env,
        ReceiverOpts {
            crl_file: Some(crl.clone()),
            ..Default::default()
        },
    );
    // The shipper's own copies of its certificate and key, renewed in place.
    let (cert, key) = (
        env.file("lab/etc/client.pem"),
        env.file("lab/etc/client.key"),
    );
    std::fs::write(&cert, &old.cert_pem).unwrap();
    std::fs::write(&key, &old.key_pem).unwrap();
    let own = Issued {
        cert_file: cert.clone(),
        key_file: key.clone(),
        ..old.clone()
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cfg, data) = config(&env, "lab", &r.url, &own, &listen);
    let log = env.path().join("lab/shipper.log");
    let eps = data.join("episodes");
    write_episode(&eps, "ep-1", Some(GOOD_COMMIT), &[]);
    let _shipper = daemon(&cfg, &log);
    wait_for("ep-1 shipped", Duration::from_secs(30), &log, || {
        shipped(&data, "ep-1")
    });

    // Renewal: a new certificate (new serial) and key; the old one revoked,
    // and the receiver restarted so that no connection made with the old
    // certificate survives: only the renewed certificate can ship now.
    let new = env.pki.client(HOST);
    assert_ne!(new.serial, old.serial);
    replace(&key, &new.key_pem);
    replace(&cert, &new.cert_pem);
    std::fs::write(&crl, env.pki.crl(&[&old])).unwrap();
    r.kill9();
    r.restart();
    write_episode(&eps, "ep-2", Some(GOOD_COMMIT), &[]);
    wait_for(
        "ep-2 shipped with the renewed certificate",
        Duration::from_secs(30),
        &log,
        || shipped(&data, "ep-2"),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("renewed TLS files in use"), "{text}");
    // The old certificate is really refused now (the proof that ep-2 did
    // not travel on it).
    // (Its own copy: the PKI's files for lab-01 now hold the new pair.)
    let old_copy = Issued {
        cert_file: env.file("old/client.pem"),
        key_file: env.file("old/client.key"),
        ..old.clone()
    };
    std::fs::write(&old_copy.cert_file, &old.cert_pem).unwrap();
    std::fs::write(&old_copy.key_file, &old.key_pem).unwrap();
    let (cfg_old, _) = config(&env, "old", &r.url, &old_copy, "");
    let (code, out, _) = run(
        "shipper",
        &["--config", cfg_old.to_str().unwrap(), "--ping"],
    );
    assert_eq!(code, 3, "the revoked certificate: {out}");

    // A broken renewal (a key that is not the certificate's) keeps the
    // working pair, logged naming the files.
    let stranger = env.pki.client("lab-99");
    replace(&key, &stranger.key_pem);
    write_episode(&eps, "ep-3", Some(GOOD_COMMIT), &[]);
    wait_for(
        "ep-3 shipped with the kept certificate",
        Duration::from_secs(30),
        &log,
        || shipped(&data, "ep-3"),
    );
    let said = |what: &str| std::fs::read_to_string(&log).unwrap().contains(what);
    wait_for(
        "the broken renewal said",
        Duration::from_secs(30),
        &log,
        || said("not usable; keeping the previous certificate"),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("not usable; keeping the previous certificate"))
        .unwrap_or_else(|| panic!("no error logged:\n{text}"));
    assert!(
        line.contains(key.to_str().unwrap()) && line.contains(cert.to_str().unwrap()),
        "{line}"
    );
    let (_, metrics) = scrape(format!("127.0.0.1:{port}").parse().unwrap());
    assert_eq!(
        sample(&metrics, "labship_shipper_client_tls_reload_failures_total"),
        1.0
    );

    // A consistent pair that --check-config refuses is refused as a
    // renewal too, and the working pair stays: one for another host, then
    // an expired one.
    for (what, pair, refusal) in [
        (
            "another host's pair",
            env.pki.client("lab-99"),
            "is for \"lab-99\", not this host_id",
        ),
        (
            "an expired pair",
            env.pki
                .client_variant(HOST, labship_tests::pki::Variant::Expired),
            "the renewed certificate expired at",
        ),
    ] {
        replace(&key, &pair.key_pem);
        replace(&cert, &pair.cert_pem);
        let id = format!("ep-{}", what.len());
        write_episode(&eps, &id, Some(GOOD_COMMIT), &[]);
        wait_for(
            &format!("{id} shipped with the kept certificate after {what}"),
            Duration::from_secs(30),
            &log,
            || shipped(&data, &id),
        );
        // Said once it has lasted (LABSHIP_TEST_TLS_GRACE_S).
        wait_for(refusal, Duration::from_secs(30), &log, || said(refusal));
    }
    assert_eq!(
        sample(
            &metrics,
            "labship_shipper_episodes_total{result=\"stored\"}"
        ),
        3.0
    );
}

/// Under the real unit (its sandbox: address families, system calls,
/// read-only /etc): the ops listener serves `/metrics` to the host, and a
/// certificate renewed in /etc/labship is picked up without a restart.
#[test]
fn under_systemd_the_ops_listener_serves_and_a_renewal_is_picked_up() {
    use labship_tests::lab_host::{LabHost, ShipperConfig, events};
    use labship_tests::nspawn::{SHIPPER_UNIT, skip_unless_root_and_nspawn};
    if !skip_unless_root_and_nspawn(
        "under_systemd_the_ops_listener_serves_and_a_renewal_is_picked_up",
    ) {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let host = LabHost::boot(&env);
    host.install_identity(&env, &env.pki.client(HOST));
    let port = free_port();
    let mut cfg = ShipperConfig::new(&r.url);
    cfg.ops_listen = format!("127.0.0.1:{port}");
    host.write_config(&cfg);
    host.produce("ep-1", Some(GOOD_COMMIT), &[("x", b"1")]);
    host.expect_ok("systemctl start", &host.systemctl(&["start", SHIPPER_UNIT]));
    let long = Duration::from_secs(40);
    host.wait_for("ep-1 shipped", long, || host.names("shipped") == ["ep-1"]);
    let (ct, text) = scrape(format!("127.0.0.1:{port}").parse().unwrap());
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert_eq!(
        sample(&text, "labship_shipper_episodes_total{result=\"stored\"}"),
        1.0
    );
    promtool_accepts(&text);

    host.install_identity(&env, &env.pki.client(HOST));
    host.produce("ep-2", Some(GOOD_COMMIT), &[("x", b"2")]);
    host.wait_for("ep-2 shipped", long, || host.names("shipped").len() == 2);
    host.wait_journal("the renewal taken up", long, |e| {
        !events(e, "client_tls_reloaded").is_empty()
    });
    let (_, text) = scrape(format!("127.0.0.1:{port}").parse().unwrap());
    assert_eq!(
        sample(&text, "labship_shipper_episodes_total{result=\"stored\"}"),
        2.0
    );
}
