//! The real `etc/labship-shipper.service` under a real systemd (PID 1 in a
//! systemd-nspawn container: `labship_tests::nspawn`, `labship_tests::lab_host`),
//! the real shipper inside, the real receiver on the host's 127.0.0.1:
//! `Type=notify` readiness, the service user and hardening as applied (nice
//! level, I/O priority, `systemd-analyze security` at most 5.0), a clean
//! stop, and a watchdog kill followed by a restart.
//!
//! The ignored `capture_*` tests record the journal of one scenario each into
//! `tests/fixtures/journal/<scenario>.jsonl` for doctor's tests
//! (`scripts/capture-journal-fixtures.sh`; see the README there). Each checks
//! that its journal really shows what the scenario is about before writing.
//!
//! Needs root and systemd-nspawn (`apt-get install systemd-container`);
//! prints SKIP otherwise.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::episode::noise;
use labship_tests::lab_host::{HOST, LabHost, ShipperConfig, events, field, messages};
use labship_tests::nspawn::{SHIPPER_UNIT, skip_unless_root_and_nspawn, text};
use labship_tests::process::{Receiver, free_port};
use labship_tests::proxy::{Fault, Proxy};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, REMEDIATION, TestEnv};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

const SHIPPER: &str = "/opt/labship/bin/shipper";

/// Systemd's own messages about the unit: `UNIT=` set, logged by PID 1.
fn from_systemd<'a>(entries: &[&'a Value]) -> Vec<&'a Value> {
    entries
        .iter()
        .copied()
        .filter(|e| field(e, "UNIT") == SHIPPER_UNIT && field(e, "_PID") == "1")
        .collect()
}

/// The shipper's own lines: logged from inside the unit, by the shipper.
fn from_shipper(entries: &[Value]) -> Vec<&Value> {
    entries
        .iter()
        .filter(|e| {
            field(e, "_SYSTEMD_UNIT") == SHIPPER_UNIT && field(e, "SYSLOG_IDENTIFIER") == "shipper"
        })
        .collect()
}

#[test]
fn type_notify_start_ships_then_stops_cleanly() {
    if !skip_unless_root_and_nspawn("type_notify_start_ships_then_stops_cleanly") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let t = Instant::now();
    let host = LabHost::boot(&env);
    let (boot, with_user) = (host.container.boot_time, t.elapsed());
    host.install_identity(&env, &env.pki.client(HOST));
    host.write_config(&ShipperConfig::new(&r.url));

    // The installed unit parses cleanly: systemd only warns about a misspelt
    // or unsupported directive, so any output at all is a failure here.
    let verify = host
        .container
        .exec(&["systemd-analyze", "verify", SHIPPER_UNIT]);
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "systemd-analyze verify {SHIPPER_UNIT}:\n{}",
        text(&verify)
    );
    // The service user can read its config and certificates: as `labship`,
    // the same files, the same receiver.
    let ping = host.container.exec_as(
        "labship",
        &[SHIPPER, "--config", "/etc/labship/shipper.toml", "--ping"],
    );
    host.expect_ok("`shipper --ping` as labship", &ping);
    host.produce(
        "before-start",
        Some(GOOD_COMMIT),
        &[("d.bin", &noise(200_000, 1))],
    );

    // Enabled, as the installer will leave it (and see the stop below).
    host.expect_ok(
        "systemctl enable",
        &host.systemctl(&["enable", SHIPPER_UNIT]),
    );
    let t = Instant::now();
    let out = host.systemctl(&["start", SHIPPER_UNIT]);
    let start = t.elapsed();
    host.expect_ok("systemctl start", &out);
    // Type=notify: the start job finishes only at READY=1. READY=1 and the
    // first STATUS= travel in one message, so a status text right after
    // `systemctl start` returned proves systemd waited for it.
    let s = host.show(&[
        "Type",
        "NotifyAccess",
        "ActiveState",
        "SubState",
        "StatusText",
        "MainPID",
        "WatchdogUSec",
        "NRestarts",
    ]);
    let diag = || format!("{s:?}\n{}", host.diagnostics());
    assert_eq!(s["Type"], "notify", "{}", diag());
    assert_eq!(s["NotifyAccess"], "main", "{}", diag());
    assert_eq!(
        (s["ActiveState"].as_str(), s["SubState"].as_str()),
        ("active", "running"),
        "{}",
        diag()
    );
    assert!(
        s["StatusText"].starts_with("shipping to ") || s["StatusText"].starts_with("pending "),
        "no READY status when `systemctl start` returned: {}",
        diag()
    );
    assert_eq!(s["WatchdogUSec"], "3min", "{}", diag());

    // It runs as labship, and the hardening is in force in its own mount
    // namespace: everything read-only but the data_dir.
    let pid = s["MainPID"].as_str();
    // CONTRACT §10: it yields CPU and disk to the producers, and the
    // hardening still scores at most 5.0.
    let (nice, ioprio) = scheduling(&host, pid);
    assert_eq!(nice, 10, "Nice= not in force on PID {pid}\n{}", diag());
    assert_eq!(ioprio, "best-effort: prio 7", "PID {pid}\n{}", diag());
    let score = exposure(&host);
    assert!(score <= 5.0, "systemd-analyze security: {score} > 5.0");
    // /proc/<pid> belongs to the process's effective user.
    let user = host
        .container
        .run(&["stat", "-c", "%U", &format!("/proc/{pid}")]);
    assert_eq!(user.trim(), "labship", "{}", diag());
    // SupplementaryGroups=labship-producers: it reads and moves what the
    // producers write through that group (CONTRACT §13).
    let status = host.container.run(&["cat", &format!("/proc/{pid}/status")]);
    let groups = status
        .lines()
        .find(|l| l.starts_with("Groups:"))
        .unwrap_or("");
    assert!(
        groups
            .split_whitespace()
            .any(|g| g == host.producers_gid.to_string()),
        "not in labship-producers: {groups:?}\n{}",
        diag()
    );
    let mount_opts = |path: &str| {
        host.container.run(&[
            "nsenter", "-t", pid, "-m", "--", "findmnt", "-n", "-o", "OPTIONS", "-T", path,
        ])
    };
    for ro in ["/", "/etc/labship", "/opt/labship/bin", "/usr"] {
        let o = mount_opts(ro);
        assert!(
            o.starts_with("ro,"),
            "{ro} is not read-only for the service: {o}"
        );
    }
    let o = mount_opts("/var/lib/labship");
    assert!(
        o.starts_with("rw,"),
        "data_dir is not writable for the service: {o}"
    );

    // Episodes present at start and written while it runs are shipped.
    host.produce("while-running", Some(GOOD_COMMIT), &[("d.bin", b"x")]);
    host.wait_for("both episodes in shipped/", Duration::from_secs(20), || {
        host.names("shipped") == ["before-start", "while-running"]
    });
    assert_eq!(
        r.stored(HOST),
        [
            "before-start.json",
            "before-start.tar.zst",
            "while-running.json",
            "while-running.tar.zst"
        ]
    );
    // Under systemd, stderr is the journal: native fields, no setup.
    let entries = host.wait_journal("two shipped events", Duration::from_secs(10), |e| {
        events(e, "shipped").len() == 2
    });
    for e in events(&entries, "shipped") {
        assert_eq!(field(e, "_SYSTEMD_UNIT"), SHIPPER_UNIT, "{e}");
        assert_eq!(field(e, "SYSLOG_IDENTIFIER"), "shipper", "{e}");
        // tracing-journald maps `info` to notice (5).
        assert_eq!(field(e, "PRIORITY"), "5", "{e}");
    }

    let t = Instant::now();
    let out = host.systemctl(&["stop", SHIPPER_UNIT]);
    let stop = t.elapsed();
    host.expect_ok("systemctl stop", &out);
    // The unit is enabled (so multi-user.target holds a reference to it):
    // otherwise systemd unloads an inactive unit at once and `show` reports
    // a freshly loaded one, whose ExecMain* say nothing.
    let s = host.show(&[
        "ActiveState",
        "Result",
        "ExecMainCode",
        "ExecMainStatus",
        "NRestarts",
    ]);
    let diag = || format!("{s:?}\n{}", host.diagnostics());
    assert_eq!(s["ActiveState"], "inactive", "{}", diag());
    assert_eq!(s["Result"], "success", "{}", diag());
    // CLD_EXITED (1) with status 0: it exited by itself on SIGTERM.
    assert_eq!(
        (s["ExecMainCode"].as_str(), s["ExecMainStatus"].as_str()),
        ("1", "0"),
        "{}",
        diag()
    );
    assert_eq!(s["NRestarts"], "0", "{}", diag());
    let entries = host.wait_journal("a clean stop", Duration::from_secs(5), |e| {
        !messages(e, "shipper stopped").is_empty()
            && !from_systemd(&messages(e, "Deactivated successfully")).is_empty()
    });
    // Exit 0 on SIGTERM by itself: no "Main process exited, code=…, status=…"
    // (logged only for a non-zero status or a signal) and no failure.
    for bad in [
        "Main process exited",
        "Failed with result",
        "Killing process",
    ] {
        assert!(
            from_systemd(&messages(&entries, bad)).is_empty(),
            "{bad}:\n{}",
            diag()
        );
    }
    assert!(
        !from_shipper(&entries)
            .iter()
            .any(|e| field(e, "PRIORITY").parse::<u8>().unwrap_or(7) <= 4),
        "a clean run logs no warning or error:\n{}",
        host.diagnostics()
    );
    assert!(stop < Duration::from_secs(5), "stop took {stop:?}");
    let halt = host.container.shutdown();
    eprintln!(
        "timings: boot {boot:?}, boot+useradd {with_user:?}, systemctl start {start:?}, systemctl stop {stop:?}, container halt {halt:?}"
    );
}

#[test]
fn a_wedged_shipper_is_killed_by_the_watchdog_and_restarted() {
    if !skip_unless_root_and_nspawn("a_wedged_shipper_is_killed_by_the_watchdog_and_restarted") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    // The first connection is accepted and then moves nothing: the shipper
    // waits in the TLS handshake of its first request. Every timeout of its
    // own is far longer than the watchdog, so only the watchdog can end it.
    let proxy = Proxy::start(r.addr, Fault::StallAfter(0));
    let host = LabHost::boot(&env);
    host.install_identity(&env, &env.pki.client(HOST));
    let mut cfg = ShipperConfig::new(&format!("https://127.0.0.1:{}", proxy.addr.port()));
    cfg.connect_timeout_s = 60;
    cfg.stall_timeout_s = 60;
    host.write_config(&cfg);
    // RestartSec=1 only to keep the test short (the unit says 10 s).
    host.drop_in("test", "[Service]\nWatchdogSec=2\nRestartSec=1\n");
    host.produce("wedged", Some(GOOD_COMMIT), &[("d.bin", b"x")]);

    let t = Instant::now();
    host.expect_ok("systemctl start", &host.systemctl(&["start", SHIPPER_UNIT]));
    // WatchdogUSec is the running service's value (`infinity` before the
    // first start): the drop-in is in force.
    let s = host.show(&["WatchdogUSec", "DropInPaths"]);
    assert_eq!(s["WatchdogUSec"], "2s", "{s:?}\n{}", host.diagnostics());
    let entries = host.wait_journal("systemd's watchdog timeout", Duration::from_secs(20), |e| {
        !from_systemd(&messages(e, "Watchdog timeout")).is_empty()
    });
    let fired = t.elapsed();
    let timeout = from_systemd(&messages(&entries, "Watchdog timeout"))[0].clone();
    assert!(field(&timeout, "MESSAGE").contains("limit 2s"), "{timeout}");
    // The restarted shipper gets a working connection and ships.
    host.wait_for(
        "the episode shipped after the restart",
        Duration::from_secs(20),
        || host.names("shipped") == ["wedged"],
    );
    let shipped = t.elapsed();
    let s = host.show(&["ActiveState", "SubState", "NRestarts"]);
    assert!(
        s["NRestarts"].parse::<u32>().unwrap() >= 1,
        "{s:?}\n{}",
        host.diagnostics()
    );
    assert_eq!(s["ActiveState"], "active", "{s:?}\n{}", host.diagnostics());
    let entries = host.journal();
    let said = |needle: &str| !from_systemd(&messages(&entries, needle)).is_empty();
    assert!(
        said("status=6/ABRT")
            && said("Failed with result 'watchdog'")
            && said("Scheduled restart job"),
        "systemd's kill and restart are not all in the journal:\n{}",
        host.diagnostics()
    );
    assert!(proxy.connections.load(Ordering::SeqCst) >= 2);
    assert!(
        host.names("quarantine").is_empty(),
        "a wedge is never the episode's fault"
    );
    eprintln!("timings: watchdog fired {fired:?} after start, shipped {shipped:?} after start");

    // doctor, run on the host afterwards, leads with the kill even though the
    // restarted shipper is healthy now.
    let out = host.container.exec(&[
        "/opt/labship/bin/doctor",
        "--config",
        "/etc/labship/shipper.toml",
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{report}");
    assert!(
        report.starts_with(
            "FAIL systemd killed the shipper 1 time(s) for missing its watchdog (it hung)"
        ),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("WARN") && l.contains("restarted 1 time(s)")),
        "{report}"
    );
}

// ---- journal fixtures for doctor ------------------------------------------

/// Writes the scenario's journal (from `since`) to
/// `$LABSHIP_CAPTURE_FIXTURES/<scenario>.jsonl` when that is set.
/// The nice level of process `pid` (field 19 of /proc/PID/stat, counted
/// after the command name, which may hold spaces) and its I/O priority as
/// util-linux's `ionice -p` prints it.
fn scheduling(host: &LabHost, pid: &str) -> (i32, String) {
    let stat = host.container.run(&["cat", &format!("/proc/{pid}/stat")]);
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields 3.. follow the name: field 19 is the 17th of them.
    let nice = after_comm.split_whitespace().nth(16).unwrap();
    let ioprio = host.container.run(&["ionice", "-p", pid]);
    (nice.parse().unwrap(), ioprio.trim().to_owned())
}

/// `systemd-analyze security`'s overall exposure of the shipper unit, as
/// the running systemd judges it.
fn exposure(host: &LabHost) -> f64 {
    let out = host
        .container
        .run(&["systemd-analyze", "security", "--no-pager", SHIPPER_UNIT]);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line:\n{out}"));
    line.split(": ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

fn capture(host: &LabHost, scenario: &str, since: SystemTime) {
    let journal = host.container.journal_json_since(SHIPPER_UNIT, since);
    let Some(dir) = std::env::var_os("LABSHIP_CAPTURE_FIXTURES") else {
        eprintln!("LABSHIP_CAPTURE_FIXTURES not set: {scenario} checked, not written");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    assert!(
        dir.is_absolute(),
        "LABSHIP_CAPTURE_FIXTURES must be absolute"
    );
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{scenario}.jsonl"));
    std::fs::write(&path, &journal).unwrap();
    eprintln!(
        "captured {} entries into {}",
        journal.lines().count(),
        path.display()
    );
}

/// A booted lab host with `client` as its identity and the default test
/// config (returned for scenarios that vary it).
fn lab(env: &TestEnv, url: &str, client: &labship_tests::pki::Issued) -> (LabHost, ShipperConfig) {
    let host = LabHost::boot(env);
    host.install_identity(env, client);
    let cfg = ShipperConfig::new(url);
    host.write_config(&cfg);
    (host, cfg)
}

/// Starts the shipper; returns the time just before (the capture's `--since`).
fn start(host: &LabHost) -> SystemTime {
    let since = SystemTime::now();
    host.expect_ok("systemctl start", &host.systemctl(&["start", SHIPPER_UNIT]));
    since
}

fn n_events(entries: &[Value], event: &str, key: &str, value: &str) -> usize {
    events(entries, event)
        .iter()
        .filter(|e| field(e, key) == value)
        .count()
}

const LONG: Duration = Duration::from_secs(40);

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_healthy() {
    if !skip_unless_root_and_nspawn("capture_healthy") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (host, _) = lab(&env, &r.url, &env.pki.client(HOST));
    for (i, id) in ["run-0001", "run-0002", "run-0003"].iter().enumerate() {
        host.produce(
            id,
            Some(GOOD_COMMIT),
            &[("obs.bin", &noise(50_000, i as u64))],
        );
    }
    let since = start(&host);
    host.wait_journal("three shipped", LONG, |e| events(e, "shipped").len() == 3);
    capture(&host, "healthy", since);
}

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_out_of_window() {
    if !skip_unless_root_and_nspawn("capture_out_of_window") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env); // the gate holds GOOD_COMMIT only
    let (host, _) = lab(&env, &r.url, &env.pki.client(HOST));
    host.produce("run-0001", Some(OLD_COMMIT), &[("obs.bin", b"1")]);
    host.produce("run-0002", Some(OLD_COMMIT), &[("obs.bin", b"2")]);
    host.produce("run-0003", Some(GOOD_COMMIT), &[("obs.bin", b"3")]);
    let since = start(&host);
    let entries = host.wait_journal("two 412 quarantines and one ship", LONG, |e| {
        n_events(e, "quarantined", "ERROR_CODE", "commit_out_of_window") == 2
            && events(e, "shipped").len() == 1
    });
    for q in events(&entries, "quarantined") {
        assert_eq!(field(q, "HTTP_STATUS"), "412", "{q}");
        assert_eq!(field(q, "REMEDIATION"), REMEDIATION, "{q}");
    }
    capture(&host, "out_of_window", since);
}

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_unstamped() {
    if !skip_unless_root_and_nspawn("capture_unstamped") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (host, _) = lab(&env, &r.url, &env.pki.client(HOST));
    host.produce("run-0001", None, &[("obs.bin", b"1")]);
    host.produce("run-0002", None, &[("obs.bin", b"2")]);
    host.produce("run-0003", Some(GOOD_COMMIT), &[("obs.bin", b"3")]);
    let since = start(&host);
    let entries = host.wait_journal("two local stamp_missing quarantines", LONG, |e| {
        n_events(e, "quarantined", "ERROR_CODE", "stamp_missing") == 2
            && events(e, "shipped").len() == 1
    });
    for q in events(&entries, "quarantined") {
        assert_eq!(field(q, "HTTP_STATUS"), "", "local: no HTTP status: {q}");
    }
    capture(&host, "unstamped", since);
}

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_receiver_down() {
    if !skip_unless_root_and_nspawn("capture_receiver_down") {
        return;
    }
    let env = TestEnv::new();
    // Nothing listens on this port: connection refused.
    let url = format!("https://127.0.0.1:{}", free_port());
    let (host, _) = lab(&env, &url, &env.pki.client(HOST));
    host.produce("run-0001", Some(GOOD_COMMIT), &[("obs.bin", b"1")]);
    host.produce("run-0002", Some(GOOD_COMMIT), &[("obs.bin", b"2")]);
    let since = start(&host);
    host.wait_journal("three retries", LONG, |e| events(e, "retry").len() >= 3);
    assert!(host.names("quarantine").is_empty());
    capture(&host, "receiver_down", since);
}

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_rejected_certificate() {
    if !skip_unless_root_and_nspawn("capture_rejected_certificate") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (host, _) = lab(&env, &r.url, &env.pki.rogue_client(HOST));
    host.produce("run-0001", Some(GOOD_COMMIT), &[("obs.bin", b"1")]);
    let since = start(&host);
    let entries = host.wait_journal("two retries", LONG, |e| events(e, "retry").len() >= 2);
    assert!(
        events(&entries, "retry")
            .iter()
            .all(|e| field(e, "PRIORITY") == "3"),
        "a refused certificate is loud:\n{}",
        host.diagnostics()
    );
    assert!(host.names("quarantine").is_empty());
    capture(&host, "rejected_certificate", since);
}

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_host_mismatch() {
    if !skip_unless_root_and_nspawn("capture_host_mismatch") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    // A valid certificate, but for another host id than host_id = "lab-01".
    let (host, _) = lab(&env, &r.url, &env.pki.client("lab-02"));
    host.produce("run-0001", Some(GOOD_COMMIT), &[("obs.bin", b"1")]);
    let since = start(&host);
    host.wait_journal("two 403 host_mismatch retries", LONG, |e| {
        n_events(e, "retry", "ERROR_CODE", "host_mismatch") >= 2
    });
    capture(&host, "host_mismatch", since);
}

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_watchdog() {
    if !skip_unless_root_and_nspawn("capture_watchdog") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let proxy = Proxy::start(r.addr, Fault::StallAfter(0));
    let url = format!("https://127.0.0.1:{}", proxy.addr.port());
    let (host, mut cfg) = lab(&env, &url, &env.pki.client(HOST));
    cfg.connect_timeout_s = 60;
    host.write_config(&cfg);
    host.drop_in("test", "[Service]\nWatchdogSec=2\nRestartSec=1\n");
    host.produce("run-0001", Some(GOOD_COMMIT), &[("obs.bin", b"1")]);
    let since = start(&host);
    host.wait_journal("watchdog kill, restart, then a ship", LONG, |e| {
        !from_systemd(&messages(e, "Watchdog timeout")).is_empty()
            && events(e, "shipped").len() == 1
    });
    capture(&host, "watchdog", since);
}

#[test]
#[ignore = "captures a journal fixture: scripts/capture-journal-fixtures.sh"]
fn capture_config_invalid() {
    if !skip_unless_root_and_nspawn("capture_config_invalid") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (host, cfg) = lab(&env, &r.url, &env.pki.client(HOST));
    // A typo: unknown keys are errors, exit 2.
    host.write_config_text(&cfg.to_toml().replace("scan_interval_s", "scan_intervall_s"));
    let since = SystemTime::now();
    let out = host.systemctl(&["start", SHIPPER_UNIT]);
    assert!(
        !out.status.success(),
        "started with a broken config: {}",
        text(&out)
    );
    // RestartPreventExitStatus=2: one failed start, no restart loop.
    let entries = host.wait_journal("a failed start", LONG, |e| {
        !from_systemd(&messages(e, "Failed with result 'exit-code'")).is_empty()
    });
    assert!(
        !from_systemd(&messages(&entries, "status=2/INVALIDARGUMENT")).is_empty(),
        "{}",
        host.diagnostics()
    );
    std::thread::sleep(Duration::from_secs(11)); // longer than RestartSec
    let s = host.show(&["ActiveState", "NRestarts"]);
    assert_eq!(
        (s["ActiveState"].as_str(), s["NRestarts"].as_str()),
        ("failed", "0"),
        "exit 2 must not restart-loop:\n{}",
        host.diagnostics()
    );
    assert!(
        !messages(&entries, "scan_intervall_s").is_empty(),
        "the shipper names the key:\n{}",
        host.diagnostics()
    );
    capture(&host, "config_invalid", since);
}
