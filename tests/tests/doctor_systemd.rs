//! doctor where it runs for real: inside a lab host with a real systemd as
//! PID 1 (`labship_tests::lab_host`), the real shipper unit, the real
//! journal, the real receiver on the host's 127.0.0.1. Each scenario is
//! produced by the shipper itself, then doctor (as root, and as the service
//! user who may not read the journal) must put the problem and its fix in its
//! first line, with the right exit code and the same answer in `--json`.
//!
//! Needs root and systemd-nspawn; prints SKIP otherwise.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::lab_host::{HOST, LabHost, PRODUCERS, ShipperConfig, events, field};
use labship_tests::nspawn::{SHIPPER_UNIT, skip_unless_root_and_nspawn};
use labship_tests::process::Receiver;
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, REMEDIATION, TestEnv};
use serde_json::Value;
use std::time::Duration;

const DOCTOR: &str = "/opt/labship/bin/doctor";
const CONFIG: &str = "/etc/labship/shipper.toml";
const LONG: Duration = Duration::from_secs(40);

/// doctor inside the container: (exit code, human report, `--json` report).
fn doctor(host: &LabHost, user: Option<&str>) -> (i32, String, Value) {
    let run = |extra: &[&str]| {
        let mut args = vec![DOCTOR, "--config", CONFIG];
        args.extend_from_slice(extra);
        let out = match user {
            Some(u) => host.container.exec_as(u, &args),
            None => host.container.exec(&args),
        };
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, human, err) = run(&[]);
    assert!(err.is_empty(), "doctor wrote to stderr: {err}\n{human}");
    let (jcode, json, _) = run(&["--json"]);
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(jcode, code, "--json exits as the rows do");
    assert_eq!(
        v["headline"].as_str(),
        human.lines().next(),
        "--json and the rows agree"
    );
    eprintln!(
        "doctor{}:\n{human}",
        user.map(|u| format!(" as {u}")).unwrap_or_default()
    );
    (code, human, v)
}

fn boot(env: &TestEnv, url: &str, client: &labship_tests::pki::Issued) -> LabHost {
    let host = LabHost::boot(env);
    host.install_identity(env, client);
    host.write_config(&ShipperConfig::new(url));
    host
}

/// Enabled and started, as the installer leaves it.
fn start(host: &LabHost) {
    host.expect_ok(
        "systemctl enable --now",
        &host.systemctl(&["enable", "--now", SHIPPER_UNIT]),
    );
}

fn row<'a>(human: &'a str, check: &str) -> Vec<&'a str> {
    human
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1) == Some(check))
        .collect()
}

#[test]
fn healthy_host_and_a_user_who_may_not_read_the_journal() {
    if !skip_unless_root_and_nspawn("healthy_host_and_a_user_who_may_not_read_the_journal") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let host = boot(&env, &r.url, &env.pki.client(HOST));
    host.produce("run-0001", Some(GOOD_COMMIT), &[("d", b"1")]);
    host.produce("run-0002", Some(GOOD_COMMIT), &[("d", b"2")]);
    start(&host);
    host.wait_journal("two shipped", LONG, |e| events(e, "shipped").len() == 2);
    // status.json is written at start (`time` null) and after the pass
    // that shipped them.
    host.wait_for("a pass in status.json", LONG, || {
        std::fs::read(host.data.join("state/status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["time"].is_string())
    });

    let (code, human, json) = doctor(&host, None);
    assert_eq!(code, 0, "{human}");
    assert!(
        human.starts_with("OK labship shipper healthy: 2 episode(s) shipped"),
        "{human}"
    );
    assert!(
        row(&human, "service")[0].contains("active (running)"),
        "{human}"
    );
    assert!(
        row(&human, "receiver")[0].contains("knows this host as lab-01"),
        "{human}"
    );
    assert_eq!(json["status"], "ok");

    // The service user is not in systemd-journal: the journal row says so and
    // how to fix it, instead of pretending the log is clean.
    let (code, human, _) = doctor(&host, Some("labship"));
    assert_eq!(code, 1, "{human}");
    let journal = row(&human, "journal");
    assert!(
        journal[0].starts_with("WARN")
            && journal[0].contains("user labship may not read the system journal")
            && journal[0].contains("fix: sudo usermod -aG systemd-journal labship"),
        "{human}"
    );
}

#[test]
fn out_of_window_outranks_unstamped_on_a_real_host() {
    if !skip_unless_root_and_nspawn("out_of_window_outranks_unstamped_on_a_real_host") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env); // the gate holds GOOD_COMMIT only
    let host = boot(&env, &r.url, &env.pki.client(HOST));
    host.produce("bare-1", None, &[("d", b"1")]);
    host.produce("old-1", Some(OLD_COMMIT), &[("d", b"2")]);
    host.produce("old-2", Some(OLD_COMMIT), &[("d", b"3")]);
    start(&host);
    host.wait_journal("three quarantines", LONG, |e| {
        events(e, "quarantined").len() == 3
    });
    let (code, human, json) = doctor(&host, None);
    assert_eq!(code, 2, "{human}");
    assert_eq!(
        human.lines().next().unwrap(),
        format!(
            "FAIL 2 ship(s) rejected as out-of-window (412): old-1, old-2 — fix: {REMEDIATION}"
        ),
        "{human}"
    );
    assert!(
        row(&human, "journal")
            .iter()
            .any(|l| l.starts_with("FAIL") && l.contains("unstamped") && l.contains("bare-1")),
        "{human}"
    );
    assert!(
        row(&human, "quarantine")[0].contains("commit_out_of_window 2, stamp_missing 1"),
        "{human}"
    );
    assert_eq!(json["findings"][0]["fix"], REMEDIATION);
    assert_eq!(
        json["findings"][0]["details"]["episodes"],
        serde_json::json!(["old-1", "old-2"])
    );
}

#[test]
fn receiver_down_then_a_rejected_certificate() {
    if !skip_unless_root_and_nspawn("receiver_down_then_a_rejected_certificate") {
        return;
    }
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let url = r.url.clone();
    let host = boot(&env, &url, &env.pki.client(HOST));
    host.produce("run-0001", Some(GOOD_COMMIT), &[("d", b"1")]);
    r.kill9();
    start(&host);
    host.wait_journal("a retry", LONG, |e| !events(e, "retry").is_empty());
    let (code, human, _) = doctor(&host, None);
    assert_eq!(code, 2, "{human}");
    let first = human.lines().next().unwrap();
    assert!(
        first.starts_with("FAIL unreachable: receiver") && first.contains("--ping"),
        "{human}"
    );
    assert!(
        row(&human, "journal")[0].contains("transient failure(s) reaching the receiver"),
        "{human}"
    );

    // The receiver is back, but this host now presents a certificate from
    // another CA: TLS 1.3 refuses it on the first request.
    r.restart();
    host.install_identity(&env, &env.pki.rogue_client(HOST));
    host.expect_ok(
        "systemctl restart",
        &host.systemctl(&["restart", SHIPPER_UNIT]),
    );
    host.wait_journal("an authentication retry", LONG, |e| {
        events(e, "retry")
            .iter()
            .any(|x| field(x, "ERROR_CODE") == "unauthenticated")
    });
    let (code, human, _) = doctor(&host, None);
    assert_eq!(code, 2, "{human}");
    let first = human.lines().next().unwrap();
    assert!(
        first.contains("refused: the receiver does not accept this host's identity")
            || first.starts_with("FAIL refused: TLS with receiver"),
        "{human}"
    );
    assert!(
        row(&human, "receiver")[0].starts_with("FAIL  receiver     refused: TLS"),
        "{human}"
    );
}

/// A typo in the config: exit 2, no restart loop (RestartPreventExitStatus=2),
/// and doctor names the file, the key and the fix.
#[test]
fn an_invalid_config_fails_once_and_doctor_names_the_key() {
    if !skip_unless_root_and_nspawn("an_invalid_config_fails_once_and_doctor_names_the_key") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let host = boot(&env, &r.url, &env.pki.client(HOST));
    host.write_config_text(
        &ShipperConfig::new(&r.url)
            .to_toml()
            .replace("scan_interval_s", "scan_intervall_s"),
    );
    // RestartSec=1 only to keep the test short: a restart would come quickly.
    host.drop_in("test", "[Service]\nRestartSec=1\n");
    let out = host.systemctl(&["enable", "--now", SHIPPER_UNIT]);
    assert!(!out.status.success(), "started with a broken config");
    std::thread::sleep(Duration::from_secs(3));
    let s = host.show(&["ActiveState", "NRestarts", "ExecMainStatus"]);
    assert_eq!(
        (
            s["ActiveState"].as_str(),
            s["NRestarts"].as_str(),
            s["ExecMainStatus"].as_str()
        ),
        ("failed", "0", "2"),
        "exit 2 must not restart-loop:\n{}",
        host.diagnostics()
    );
    let (code, human, _) = doctor(&host, None);
    assert_eq!(code, 2, "{human}");
    let first = human.lines().next().unwrap();
    assert!(
        first.contains("invalid configuration")
            && first.contains("scan_intervall_s")
            && first.contains("fix: sudoedit /etc/labship/shipper.toml"),
        "{human}"
    );
    assert!(
        row(&human, "service")[0].starts_with("FAIL")
            && row(&human, "service")[0].contains("failed"),
        "{human}"
    );
}

/// A producer in labship-producers writes with umask 022: its episode
/// directory is not group-writable, so the shipper may upload it but not move
/// it into shipped/. Nothing is lost or uploaded twice (retries ask HEAD),
/// and doctor names the directory and the chmod that frees it.
#[test]
fn a_producer_umask_022_episode_is_diagnosed_with_its_chmod() {
    if !skip_unless_root_and_nspawn("a_producer_umask_022_episode_is_diagnosed_with_its_chmod") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let host = boot(&env, &r.url, &env.pki.client(HOST));
    host.container
        .run(&["useradd", "--user-group", "--groups", PRODUCERS, "producer"]);
    let out = host.container.exec_as(
        "producer",
        &[
            "sh",
            "-c",
            &format!(
                "umask 022 && mkdir /var/lib/labship/episodes/p1 && printf '%s' '{{\"code_version\":{{\"commit\":\"{GOOD_COMMIT}\"}}}}' > /var/lib/labship/episodes/p1/meta.json"
            ),
        ],
    );
    host.expect_ok("produce as producer with umask 022", &out);
    start(&host);
    host.wait_journal("the move refused", LONG, |e| {
        events(e, "io_error")
            .iter()
            .any(|x| field(x, "EPISODE_ID") == "p1")
    });
    let (code, human, _) = doctor(&host, None);
    assert_eq!(code, 2, "{human}");
    let first = human.lines().next().unwrap();
    assert!(
        first.contains("local I/O error")
            && first.contains("Permission denied")
            && first.contains("fix: sudo chmod -R g+rwX /var/lib/labship/episodes/p1"),
        "{human}"
    );
    assert_eq!(host.names("episodes"), ["p1"], "still queued, not lost");
    assert_eq!(
        r.audit_records()
            .iter()
            .filter(|a| a["episode_id"] == "p1")
            .count(),
        1,
        "uploaded once: {:?}",
        r.audit_records()
    );
    // The fix doctor gave frees it.
    host.container
        .run(&["chmod", "-R", "g+rwX", "/var/lib/labship/episodes/p1"]);
    host.wait_for("p1 shipped after the chmod", LONG, || {
        host.names("shipped") == ["p1"]
    });
}
