//! `doctor` against journals captured from the real shipper under a real
//! systemd (`tests/fixtures/journal/`, made by
//! `scripts/capture-journal-fixtures.sh`, never written by hand), and
//! snapshots of its human output (`tests/fixtures/doctor/`; regenerate with
//! `LABSHIP_UPDATE_SNAPSHOTS=1` after a deliberate change, and read the diff).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use labship_tests::TestEnv;
use labship_tests::process::run;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A valid shipper config (token auth: no certificate dates in snapshots)
/// over an empty data_dir whose status.json says a pass just ran.
fn host(env: &TestEnv) -> PathBuf {
    let data = env.path().join("lab");
    for d in ["episodes", "outbox", "shipped", "quarantine", "state"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    std::fs::write(
        data.join("state/status.json"),
        format!(r#"{{"time":"{now}","last_success":"{now}","pending":0,"last_error":null}}"#),
    )
    .unwrap();
    std::fs::write(env.path().join("token"), "secret\n").unwrap();
    let cfg = env.path().join("shipper.toml");
    std::fs::write(
        &cfg,
        format!(
            "host_id = \"lab-01\"\ndata_dir = {data:?}\n[receiver]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"token\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// Replaces what differs from run to run: the temp dir, free space, ages.
fn sanitize(out: &str, tmp: &Path) -> String {
    let tmp = std::fs::canonicalize(tmp).unwrap();
    out.replace(tmp.to_str().unwrap(), "<tmp>")
        .lines()
        .map(|l| {
            if l.contains("% free on") || l.contains(" ago") {
                let mut s = String::new();
                let mut in_num = false;
                for c in l.chars() {
                    if c.is_ascii_digit() || (in_num && c == '.') {
                        if !in_num {
                            s.push('N');
                        }
                        in_num = true;
                    } else {
                        in_num = false;
                        s.push(c);
                    }
                }
                s
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn doctor(cfg: &Path, journal: &Path, json: bool) -> (i32, String) {
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--journal-file",
        journal.to_str().unwrap(),
        "--no-ping",
    ];
    if json {
        args.push("--json");
    }
    let (code, out, err) = run("doctor", &args);
    assert!(err.is_empty(), "doctor wrote to stderr: {err}");
    (code, out)
}

/// Compares with the stored snapshot, or writes it under
/// `LABSHIP_UPDATE_SNAPSHOTS=1`.
fn snapshot(name: &str, got: &str) {
    let path = fixtures().join("doctor").join(format!("{name}.txt"));
    if std::env::var_os("LABSHIP_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with LABSHIP_UPDATE_SNAPSHOTS=1 to create it. Got:\n{got}",
            path.display()
        )
    });
    assert_eq!(got, want, "snapshot {} differs", path.display());
}

/// Each captured scenario: the headline names the problem (and the fix),
/// the exit code matches, `--json` agrees with the rows, and the whole human
/// report matches its snapshot.
#[test]
fn each_captured_scenario_gets_its_headline_and_fix() {
    let cases: &[(&str, i32, &[&str])] = &[
        ("healthy", 0, &["OK labship shipper healthy", "shipped"]),
        (
            "out_of_window",
            2,
            &["FAIL", "rejected as out-of-window (412)", "— fix: "],
        ),
        (
            "unstamped",
            2,
            &["FAIL", "quarantined as unstamped", "stamp_missing"],
        ),
        (
            "receiver_down",
            1,
            &[
                "WARN",
                "transient failure(s) reaching the receiver",
                "--ping",
            ],
        ),
        (
            "rejected_certificate",
            2,
            &[
                "FAIL",
                "refused: the receiver does not accept this host's identity",
            ],
        ),
        ("host_mismatch", 2, &["FAIL", "refused", "host_mismatch"]),
        ("watchdog", 2, &["FAIL", "missing its watchdog"]),
        (
            "config_invalid",
            2,
            &[
                "FAIL",
                "failed to start",
                "invalid configuration",
                "fix: sudoedit",
            ],
        ),
    ];
    let env = TestEnv::new();
    let cfg = host(&env);
    for (name, want_code, needles) in cases {
        let journal = fixtures().join("journal").join(format!("{name}.jsonl"));
        let (code, out) = doctor(&cfg, &journal, false);
        let headline = out.lines().next().unwrap_or("");
        assert_eq!(code, *want_code, "{name}:\n{out}");
        for n in *needles {
            assert!(headline.contains(n), "{name}: headline lacks {n:?}:\n{out}");
        }
        let (jcode, json) = doctor(&cfg, &journal, true);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (jcode, v["exit_code"].as_i64()),
            (code, Some(i64::from(code)))
        );
        assert_eq!(v["headline"], headline, "{name}");
        assert_eq!(
            v["findings"].as_array().unwrap().len(),
            out.lines().count() - 1,
            "{name}: one JSON finding per row"
        );
        for f in v["findings"].as_array().unwrap() {
            if let Some(fix) = f["fix"].as_str() {
                assert!(
                    !looks_disruptive(fix) || f["disruptive"] == true,
                    "{name}: a fix that restarts or deletes is not marked disruptive: {f}"
                );
            }
        }
        snapshot(name, &sanitize(&out, env.path()));
    }
}

/// A sanity check over what doctor rendered (doctor itself never guesses
/// from words: each check states what its fix does).
fn looks_disruptive(fix: &str) -> bool {
    let words: Vec<&str> = fix
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')'))
        .collect();
    words.iter().any(|w| {
        let base = w.rsplit('/').next().unwrap_or(w);
        matches!(
            base,
            "rm" | "-delete"
                | "kill"
                | "pkill"
                | "shred"
                | "mv"
                | "truncate"
                | "reboot"
                | "restart"
                | "stop"
                | "mask"
                | "disable"
                | "dpkg"
                | "apt-get"
                | "apt"
                | "install-lab-host.sh"
        )
    })
}

/// The receiver's remediation is its operator's text: doctor cannot know
/// what it does, so it is disruptive whatever its words.
#[test]
fn the_receivers_remediation_is_disruptive_whatever_it_says() {
    let env = TestEnv::new();
    let cfg = host(&env);
    let theirs = "sudo apt-get install -y labship-lab && sudo reboot";
    let captured =
        std::fs::read_to_string(fixtures().join("journal").join("out_of_window.jsonl")).unwrap();
    let mut replaced = 0;
    let lines: Vec<String> = captured
        .lines()
        .map(|l| {
            let mut e: Value = serde_json::from_str(l).unwrap();
            if e.get("REMEDIATION").is_some() {
                e["REMEDIATION"] = theirs.into();
                replaced += 1;
            }
            e.to_string()
        })
        .collect();
    assert!(replaced > 0, "the capture holds no REMEDIATION field");
    let journal = env.path().join("theirs.jsonl");
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let (code, json) = doctor(&cfg, &journal, true);
    assert_eq!(code, 2, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    let row = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fix"] == theirs)
        .unwrap_or_else(|| panic!("no finding offers the receiver's remediation: {json}"));
    assert_eq!(row["disruptive"], true, "{row}");
}

/// `EVENT=upload_task_failed` (shipper/src/driver/in_flight.rs: an upload task ended
/// without an answer; its episode stays queued and the next pass uploads
/// it again). No scenario makes the real shipper log it on demand, so the
/// entry is a captured shipper line of `healthy.jsonl` (same journald
/// fields, same transport) with the fields that event carries.
#[test]
fn an_upload_task_that_failed_is_named_with_what_to_do() {
    let env = TestEnv::new();
    let cfg = host(&env);
    let captured =
        std::fs::read_to_string(fixtures().join("journal").join("healthy.jsonl")).unwrap();
    let shipped: Value = captured
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["EVENT"] == "shipped")
        .expect("healthy.jsonl has a shipped entry");
    let failed = |error: &str| {
        let mut e = shipped.clone();
        let m = e.as_object_mut().unwrap();
        m.retain(|k, _| k.starts_with('_') || k == "SYSLOG_IDENTIFIER");
        for (k, v) in [
            ("EVENT", "upload_task_failed"),
            ("ERROR", error),
            ("MESSAGE", "an upload task failed"),
            ("PRIORITY", "3"),
            ("CODE_FILE", "shipper/src/journal.rs"),
            ("TARGET", "labship_shipper::journal"),
        ] {
            m.insert(k.into(), v.into());
        }
        e.to_string()
    };
    let journal = env.path().join("task_failed.jsonl");
    std::fs::write(
        &journal,
        format!(
            "{captured}{}\n{}\n",
            failed("task 7 was cancelled"),
            failed("task 9 panicked with message \"attempt to subtract with overflow\"")
        ),
    )
    .unwrap();
    let (code, json) = doctor(&cfg, &journal, true);
    assert_eq!(code, 1, "a warning: nothing is lost\n{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    let headline = v["headline"].as_str().unwrap();
    assert!(
        headline.starts_with(
            "WARN 2 upload task(s) ended without the receiver's answer (task 9 panicked"
        ),
        "{headline}"
    );
    assert!(
        headline.contains("the next pass uploads the episode again"),
        "{headline}"
    );
    let row = &v["findings"][0];
    assert_eq!(
        (row["check"].as_str(), row["disruptive"].as_bool()),
        (Some("journal"), Some(false)),
        "{row}"
    );
    let fix = row["fix"].as_str().unwrap();
    assert!(
        fix.starts_with(
            "journalctl _SYSTEMD_UNIT=labship-shipper.service EVENT=upload_task_failed --since -10min"
        ),
        "{fix}"
    );
    assert!(!looks_disruptive(fix), "{fix}");
    assert_eq!(row["details"]["count"], 2, "{row}");
    // The ships around it still count.
    let shipped_rows = captured
        .lines()
        .filter(|l| l.contains(r#""EVENT":"shipped""#))
        .count();
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "activity"
                && f["finding"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{shipped_rows} episode(s) shipped"))),
        "{json}"
    );
}

/// 412 outranks 400 when both occur.
#[test]
fn out_of_window_outranks_unstamped() {
    let env = TestEnv::new();
    let cfg = host(&env);
    let both = env.path().join("both.jsonl");
    let read = |n: &str| std::fs::read_to_string(fixtures().join("journal").join(n)).unwrap();
    std::fs::write(
        &both,
        read("unstamped.jsonl") + &read("out_of_window.jsonl"),
    )
    .unwrap();
    let (code, out) = doctor(&cfg, &both, false);
    assert_eq!(code, 2);
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap().contains("out-of-window (412)"),
        "{out}"
    );
    assert!(
        lines.any(|l| l.contains("quarantined as unstamped")),
        "the 400s are still listed:\n{out}"
    );
}

/// The host checks speak up even when the journal is quiet: a nearly full
/// disk is not simulated here, but the queue's own trouble is.
#[test]
fn host_findings_backlog_unfinished_and_stale_status() {
    let env = TestEnv::new();
    let cfg = host(&env);
    let data = env.path().join("lab");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400);
    let set = |p: &Path| {
        std::fs::File::open(p).unwrap().set_modified(old).unwrap();
    };
    let ep = labship_tests::episode::write_episode(
        &data.join("episodes"),
        "waiting",
        Some(labship_tests::GOOD_COMMIT),
        &[("d", b"1")],
    );
    set(&ep.join("meta.json"));
    let unfinished = data.join("episodes/half-written");
    std::fs::create_dir_all(&unfinished).unwrap();
    set(&unfinished);
    std::fs::write(
        data.join("state/status.json"),
        r#"{"time":"2026-01-01T00:00:00Z","last_success":null,"pending":1}"#,
    )
    .unwrap();
    let empty = env.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (code, out) = doctor(&cfg, &empty, false);
    assert_eq!(code, 2, "{out}");
    let first = out.lines().next().unwrap();
    assert!(
        first.contains("last completed pass was") && first.contains("fix: sudo systemctl restart"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN") && l.contains("backlog") && l.contains("oldest for 3d")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN") && l.contains("half-written")),
        "{out}"
    );
}

/// Run as a user who may not read the system journal, doctor says so and
/// names the fix instead of reporting a quiet, healthy journal.
#[test]
fn journal_denied_is_a_finding_with_its_fix() {
    let test = "journal_denied_is_a_finding_with_its_fix";
    if !rustix::process::getuid().is_root() {
        labship_tests::skip(test, "needs root to drop to nobody");
        return;
    }
    if std::process::Command::new("journalctl")
        .arg("--version")
        .output()
        .is_err()
    {
        labship_tests::skip(test, "no journalctl");
        return;
    }
    let env = TestEnv::new();
    let cfg = host(&env);
    // nobody must be able to read the config and walk the data dir.
    let ok = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(env.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(labship_tests::bin("doctor"))
        .args(["--config", cfg.to_str().unwrap(), "--no-ping"])
        // The name comes from the name service, not from the environment.
        .env("USER", "someone-else")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.contains("journal"))
        .unwrap_or_else(|| {
            panic!(
                "no journal row:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        row.starts_with("WARN") && row.contains("may not read the system journal"),
        "{text}"
    );
    assert!(
        row.contains("fix: sudo usermod -aG systemd-journal nobody"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
}

/// Run without sudo by a user who may not read the config (/etc/labship is
/// root:labship 0750): not "missing, run the installer", but run doctor
/// with sudo (the installer would change nothing).
#[test]
fn a_config_this_user_may_not_read_says_run_doctor_with_sudo() {
    let test = "a_config_this_user_may_not_read_says_run_doctor_with_sudo";
    if !rustix::process::getuid().is_root() {
        labship_tests::skip(test, "needs root to drop to nobody");
        return;
    }
    let env = TestEnv::new();
    let cfg = host(&env);
    // Like /etc/labship: the directory closed to others.
    let etc = env.path().join("etc-labship");
    std::fs::create_dir(&etc).unwrap();
    let closed = etc.join("shipper.toml");
    std::fs::rename(&cfg, &closed).unwrap();
    let ok = std::process::Command::new("chmod")
        .args(["a+rX"])
        .arg(env.path())
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::set_permissions(&etc, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(labship_tests::bin("doctor"))
        .args(["--config", closed.to_str().unwrap(), "--no-ping"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let headline = text.lines().next().unwrap_or_default();
    assert!(
        headline.starts_with("FAIL")
            && headline.contains("Permission denied")
            && headline.contains(&format!(
                "fix: sudo {} --config {}",
                labship_tests::bin("doctor").display(),
                closed.display()
            )),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("install-lab-host.sh"), "{text}");
}

/// The client certificate's expiry: FAIL once expired, WARN within 14 days,
/// each with the renewal as its fix.
#[test]
fn certificate_expiry() {
    use labship_tests::pki::Variant;
    let env = TestEnv::new();
    let cfg = host(&env);
    let empty = env.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    for (variant, level, needle) in [
        (Variant::Expired, "FAIL", "expired at 2021-01-01"),
        (Variant::ExpiresSoon, "WARN", "expires in"),
    ] {
        let id = env.pki.client_variant("lab-01", variant);
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.split("token_file").next().unwrap().to_owned()
            + &format!(
                "cert_file = {:?}\nkey_file = {:?}\n",
                id.cert_file, id.key_file
            );
        let cfg2 = env.path().join(format!("{variant:?}.toml"));
        std::fs::write(&cfg2, text).unwrap();
        let (code, out) = doctor(&cfg2, &empty, false);
        let row = out
            .lines()
            .find(|l| l.contains("certificate"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            row.starts_with(level)
                && row.contains(needle)
                && row.contains("fix: install a renewed certificate"),
            "{variant:?}:\n{out}"
        );
        // The worst finding sets the exit code: 2 for a FAIL, 1 for a WARN.
        let want = if level == "FAIL" { 2 } else { 1 };
        assert_eq!(code, want, "{variant:?}:\n{out}");
    }
}

/// Each binary's help says what that binary does: not the crate's
/// description of both tools (issue 23).
#[test]
fn each_binary_help_describes_itself() {
    for (bin, first, not) in [
        (
            "doctor",
            "Diagnose the labship shipper on this host",
            "quarantine",
        ),
        (
            "quarantine-unstamped",
            "Quarantine the finished episodes that have no valid code stamp",
            "doctor",
        ),
        ("shipper", "Lab-host shipper of labship", "doctor"),
    ] {
        for flag in ["-h", "--help"] {
            let (code, out, err) = run(bin, &[flag]);
            assert_eq!(code, 0, "{bin} {flag}: {err}");
            let about = out.split("Usage:").next().unwrap();
            assert!(about.starts_with(first), "{bin} {flag}:\n{out}");
            assert!(
                !about.to_lowercase().contains(not),
                "{bin} {flag} describes {not}:\n{out}"
            );
        }
    }
}

/// `touch ARGS` (the real one: `-d '+2 hours'` as a producer with a wrong
/// clock would leave it).
fn touch(args: &[&str], path: &Path) {
    let ok = std::process::Command::new("touch")
        .args(args)
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "touch {args:?} {}", path.display());
}

/// Runs a fix doctor printed, as root (the tests' user), without `sudo`.
fn apply(fix: &str) {
    let cmd = fix.replace("sudo ", "");
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `unsettled` rows of a `--json` report.
fn unsettled(report: &Value) -> Vec<Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "unsettled")
        .cloned()
        .collect()
}

/// A finished episode with a file dated two hours ahead never settles: doctor
/// names it, the file and how far ahead, and its fix (touch -m) makes the
/// row go away without touching the data. 30 s ahead is clock skew, not a
/// finding. The list is bounded: ten rows, then one saying how many more.
#[test]
fn an_episode_dated_in_the_future_is_named_with_its_fix() {
    let env = TestEnv::new();
    let cfg = host(&env);
    let eps = env.path().join("lab/episodes");
    let empty = env.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let ep = labship_tests::episode::write_episode(
        &eps,
        "ahead",
        Some(labship_tests::GOOD_COMMIT),
        &[("data.bin", b"payload")],
    );
    touch(&["-m", "-d", "+2 hours"], &ep.join("data.bin"));
    let skew = labship_tests::episode::write_episode(
        &eps,
        "skewed",
        Some(labship_tests::GOOD_COMMIT),
        &[("data.bin", b"1")],
    );
    touch(&["-m", "-d", "+30 seconds"], &skew.join("data.bin"));
    let (code, out) = doctor(&cfg, &empty, true);
    let report: Value = serde_json::from_str(&out).unwrap();
    let rows = unsettled(&report);
    assert_eq!(rows.len(), 1, "only the two-hour one: {out}");
    let row = &rows[0];
    let file = ep.join("data.bin");
    assert_eq!(row["level"], "warn", "{row}");
    let text = row["finding"].as_str().unwrap();
    assert!(
        text.starts_with("episode ahead cannot settle:")
            && text.contains(&format!(
                "{} has an mtime",
                std::fs::canonicalize(&file).unwrap().display()
            ))
            && text.contains("in the future"),
        "{row}"
    );
    assert_eq!(row["details"]["cause"], "mtime_future", "{row}");
    let ahead = row["details"]["ahead_s"].as_u64().unwrap();
    assert!((7000..=7200).contains(&ahead), "{row}");
    assert_eq!(code, 1, "a warning: {out}");
    let fix = row["fix"].as_str().unwrap();
    assert!(
        fix.contains("touch -m") && !fix.contains("rm "),
        "never a fix that deletes: {fix}"
    );
    apply(fix);
    assert_eq!(std::fs::read(&file).unwrap(), b"payload");
    let (_, out) = doctor(&cfg, &empty, true);
    assert!(
        unsettled(&serde_json::from_str(&out).unwrap()).is_empty(),
        "fixed: {out}"
    );

    // Twelve of them: ten named, then one row for the other two.
    for i in 0..12 {
        let ep = labship_tests::episode::write_episode(
            &eps,
            &format!("late-{i:02}"),
            Some(labship_tests::GOOD_COMMIT),
            &[("x", b"1")],
        );
        touch(&["-m", "-d", "+1 day"], &ep.join("x"));
    }
    let (_, out) = doctor(&cfg, &empty, false);
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("unsettled")).collect();
    assert_eq!(rows.len(), 11, "{out}");
    assert!(
        rows.iter()
            .any(|l| l.contains("episode late-09 cannot settle")),
        "{out}"
    );
    assert!(
        rows.iter().any(
            |l| l.contains("2 more episode(s) cannot settle") && l.contains("late-10, late-11")
        ),
        "{out}"
    );
}

/// A subtree the shipper's user may not read (here doctor runs as nobody,
/// the user the episode is checked for when there is no `labship` user) is
/// named with the owner and mode and a fix that changes permissions only;
/// after the fix the row is gone.
#[test]
fn an_unreadable_subtree_is_named_with_its_fix() {
    let test = "an_unreadable_subtree_is_named_with_its_fix";
    if !labship_tests::is_root() {
        labship_tests::skip(test, "needs root to drop to nobody");
        return;
    }
    let env = TestEnv::new();
    let cfg = host(&env);
    let eps = env.path().join("lab/episodes");
    let empty = env.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let ep = labship_tests::episode::write_episode(
        &eps,
        "locked",
        Some(labship_tests::GOOD_COMMIT),
        &[("raw/frames.bin", b"frames"), ("notes.txt", b"n")],
    );
    labship_tests::episode::write_episode(
        &eps,
        "open",
        Some(labship_tests::GOOD_COMMIT),
        &[("raw/frames.bin", b"frames")],
    );
    let ok = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(env.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let raw = ep.join("raw");
    std::fs::set_permissions(&raw, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let as_nobody = || {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(labship_tests::bin("doctor"))
            .args(["--config", cfg.to_str().unwrap(), "--no-ping", "--json"])
            .args(["--journal-file", empty.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let report: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, report) = as_nobody();
    let rows = unsettled(&report);
    assert_eq!(rows.len(), 1, "only the locked one: {report:#}");
    let row = &rows[0];
    let text = row["finding"].as_str().unwrap();
    let raw_full = std::fs::canonicalize(&raw).unwrap();
    assert!(
        text.starts_with("episode locked cannot ship:")
            && text.contains(&format!("{} is not readable by user", raw_full.display()))
            && text.contains("(owner 0:0, mode 0700)"),
        "{row}"
    );
    assert_eq!(row["details"]["cause"], "unreadable", "{row}");
    assert_eq!(code, Some(1), "{report:#}");
    let fix = row["fix"].as_str().unwrap();
    assert!(
        fix.contains("chmod -R") && !fix.contains("rm "),
        "never a fix that deletes: {fix}"
    );
    apply(fix);
    assert_eq!(std::fs::read(raw.join("frames.bin")).unwrap(), b"frames");
    let (_, report) = as_nobody();
    assert!(unsettled(&report).is_empty(), "fixed: {report:#}");
}

/// A config whose shipper passes every second with a one-second settle
/// (the receiver is not there: nothing ships).
fn fast_shipper(env: &TestEnv) -> PathBuf {
    let cfg = host(env);
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[receiver]",
        "scan_interval_s = 1\nsettle_s = 1\n[receiver]",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The real shipper daemon's log (stderr) over five seconds of passes;
/// `setpriv` arguments run it as another user.
fn shipper_log(env: &TestEnv, cfg: &Path, setpriv: &[&str]) -> String {
    let log = env.path().join("shipper.log");
    let mut cmd = if setpriv.is_empty() {
        std::process::Command::new(labship_tests::bin("shipper"))
    } else {
        let mut c = std::process::Command::new("setpriv");
        c.args(setpriv).arg("--").arg(labship_tests::bin("shipper"));
        c
    };
    let child = cmd
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = labship_tests::process::Daemon(child);
    // The first pass sees a fresh top directory and skips the walk; later
    // ones walk it and must say what they find once.
    std::thread::sleep(std::time::Duration::from_secs(5));
    drop(daemon);
    std::fs::read_to_string(&log).unwrap()
}

/// The shipper itself says why such an episode waits, once, not on every
/// pass: the real daemon, a pass a second, its log read after.
#[test]
fn the_shipper_logs_an_episode_dated_in_the_future_once() {
    let env = TestEnv::new();
    let cfg = fast_shipper(&env);
    let ep = labship_tests::episode::write_episode(
        &env.path().join("lab/episodes"),
        "ahead",
        Some(labship_tests::GOOD_COMMIT),
        &[("data.bin", b"payload")],
    );
    touch(&["-m", "-d", "+2 hours"], &ep.join("data.bin"));
    let text = shipper_log(&env, &cfg, &[]);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("episode_mtime_future"))
        .collect();
    assert_eq!(lines.len(), 1, "once:\n{text}");
    assert!(
        lines[0].contains("episode_id=ahead") && lines[0].contains("data.bin"),
        "{text}"
    );
}

/// The same for a subtree the shipper's user may not read: the daemon runs
/// as nobody, owner of its data dir but not of one episode's `raw/`.
#[test]
fn the_shipper_logs_an_unreadable_subtree_once() {
    let test = "the_shipper_logs_an_unreadable_subtree_once";
    if !labship_tests::is_root() {
        labship_tests::skip(test, "needs root to drop to nobody");
        return;
    }
    let env = TestEnv::new();
    let cfg = fast_shipper(&env);
    let ep = labship_tests::episode::write_episode(
        &env.path().join("lab/episodes"),
        "locked",
        Some(labship_tests::GOOD_COMMIT),
        &[("raw/frames.bin", b"frames")],
    );
    // nobody reads the config and owns the data dir, as labship would.
    for (cmd, arg, path) in [
        ("chmod", "a+rX", env.path().to_path_buf()),
        ("chown", "65534:65534", env.path().join("lab")),
    ] {
        let ok = std::process::Command::new(cmd)
            .args(["-R", arg])
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success(), "{cmd} -R {arg}");
    }
    let raw = ep.join("raw");
    std::os::unix::fs::chown(&raw, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&raw, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let text = shipper_log(
        &env,
        &cfg,
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("episode_unreadable"))
        .collect();
    assert_eq!(lines.len(), 1, "once:\n{text}");
    assert!(
        lines[0].contains("episode_id=locked")
            && lines[0].contains("raw")
            && lines[0].contains("Permission denied"),
        "{text}"
    );
}

/// A doctor run over a status.json the test writes, with ages in seconds
/// before now; returns the exit code and the `status` finding.
fn status_row(status: Value) -> (i32, Value) {
    let env = TestEnv::new();
    let cfg = host(&env);
    std::fs::write(env.path().join("lab/state/status.json"), status.to_string()).unwrap();
    let empty = env.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (code, json) = doctor(&cfg, &empty, true);
    let v: Value = serde_json::from_str(&json).unwrap();
    let row = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "status")
        .unwrap()
        .clone();
    (code, row)
}

fn ago(s: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - std::time::Duration::from_secs(s),
    )
    .to_string()
}

/// After the last body byte the shipper waits up to stall_timeout_s +
/// ANSWER_GRACE (120 s by default) for the receiver's answer: doctor does
/// not call that hung at 90 s, but does once the shipper would have given
/// up, and always while a body that moves no byte is past the stall timeout.
#[test]
fn an_upload_awaiting_its_answer_is_not_hung() {
    let doc = |phase: &str, quiet: u64| {
        serde_json::json!({"time": ago(600), "last_success": ago(600), "pending": 1,
            "updated_at": ago(quiet), "alive_at": ago(quiet), "bwlimit": null,
            "uploading": [{"episode_id": "ep-1", "bytes_sent": 1000, "bytes_total": 1000,
                "started_at": ago(700), "bytes_per_s": 0, "phase": phase}]})
    };
    let (code, row) = status_row(doc("awaiting_answer", 90));
    assert_eq!((code, &row["level"]), (0, &Value::from("ok")), "{row}");
    assert!(
        row["finding"]
            .as_str()
            .unwrap()
            .contains("awaiting the receiver's answer"),
        "{row}"
    );
    assert_eq!(row["details"]["moving"], true, "{row}");
    let (code, row) = status_row(doc("awaiting_answer", 200));
    assert_eq!((code, &row["level"]), (2, &Value::from("fail")), "{row}");
    let (code, row) = status_row(doc("sending", 90));
    assert_eq!((code, &row["level"]), (2, &Value::from("fail")), "{row}");
    assert_eq!(row["disruptive"], true, "{row}");
}

/// A pass that packs or asks HEAD for minutes moves no upload byte, but its
/// loop says it is alive (`alive_at`): not stalled. Once the loop is silent
/// past what the shipper allows itself, it is.
#[test]
fn a_long_pass_whose_loop_is_alive_is_not_stalled() {
    let doc = |alive: u64| {
        // No byte moved since the last pass: `updated_at` may be as old.
        serde_json::json!({"time": ago(900), "last_success": ago(900), "pending": 40,
            "updated_at": ago(900), "alive_at": ago(alive), "uploading": []})
    };
    let (code, row) = status_row(doc(5));
    assert_eq!((code, &row["level"]), (0, &Value::from("ok")), "{row}");
    assert!(
        row["finding"]
            .as_str()
            .unwrap()
            .contains("a long pass is under way"),
        "{row}"
    );
    let (code, row) = status_row(doc(600));
    assert_eq!((code, &row["level"]), (2, &Value::from("fail")), "{row}");
    assert!(
        row["finding"]
            .as_str()
            .unwrap()
            .contains("stalled or stopped"),
        "{row}"
    );
}

/// A status.json that is JSON but not the shipper's status (a field of the
/// wrong type, say, after a hand edit) is named as such, not reported as
/// missing; a phase from a newer shipper costs nothing but the phase.
#[test]
fn a_status_that_does_not_read_is_named_and_an_unknown_phase_reads() {
    let (code, row) = status_row(serde_json::json!({"time": 5, "uploading": []}));
    assert_eq!((code, &row["level"]), (1, &Value::from("warn")), "{row}");
    let finding = row["finding"].as_str().unwrap();
    assert!(
        finding.contains("does not read as the shipper's status") && finding.contains("line 1"),
        "{row}"
    );
    assert!(row["fix"].is_null(), "{row}");
    let (code, row) = status_row(serde_json::json!({"time": ago(600),
        "last_success": ago(600), "pending": 1, "updated_at": ago(5), "alive_at": ago(5),
        "bwlimit": null, "uploading": [{"episode_id": "ep-1", "bytes_sent": 10,
            "bytes_total": 1000, "started_at": ago(60), "bytes_per_s": 1, "phase": "new_phase"}]}));
    assert_eq!((code, &row["level"]), (0, &Value::from("ok")), "{row}");
    assert!(row["finding"].as_str().unwrap().contains("ep-1"), "{row}");
}
