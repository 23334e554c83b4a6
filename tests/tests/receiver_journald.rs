//! Issue 19: the receiver logs to the journal with native fields and
//! priorities, as the shipper does.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::fleet::*;
use labship_tests::process::{Receiver, ReceiverOpts};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv};
use std::path::Path;
use std::time::{Duration, Instant};

/// Kills the test's own journald (by the pid it wrote) when dropped.
struct Journald(std::path::PathBuf);

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            labship_tests::process::unsafe_free_kill(pid, 9);
        }
    }
}

/// With the journal as its log (as under systemd), the receiver writes
/// native fields and priorities: a stored PUT at info (5) with HOST,
/// EPISODE, STATUS; a refused one at warning (4) with its ERROR_CODE.
#[tokio::test]
async fn the_journal_gets_native_fields_and_priorities() {
    if !labship_tests::is_root() || !Path::new("/lib/systemd/systemd-journald").exists() {
        labship_tests::skip(
            "the_journal_gets_native_fields_and_priorities",
            "needs root and systemd-journald",
        );
        return;
    }
    let env = TestEnv::new();
    let pidfile = env.path().join("journald.pid");
    let _journald = Journald(pidfile.clone());
    // A real journald in the receiver's private mount namespace (RECIPES.md).
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal /run/log; \
         /lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 & echo $! > {pidfile:?}; \
         sleep 1; exec \"$0\" \"$@\""
    );
    let r = Receiver::start_with(
        &env,
        ReceiverOpts {
            env: vec![("LABSHIP_JOURNAL".into(), "1".into())],
            ..ReceiverOpts::in_mount_namespace(script)
        },
    );
    let c = env.client(Some(&env.pki.client(HOST)));
    let ok = archive("jr-ok", 100);
    assert_eq!(put(&c, &r, HOST, "jr-ok", GOOD_COMMIT, &ok, "x").await, 201);
    let old = archive("jr-old", 100);
    assert_eq!(
        put(&c, &r, HOST, "jr-old", OLD_COMMIT, &old, "x").await,
        412
    );
    let pid = r.child.id().to_string();
    let mut entries = Vec::new();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-m", "journalctl", "--no-pager", "-o", "json"])
            .arg(format!("_PID={pid}"))
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        entries = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect();
    }
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        entries
            .iter()
            .find(|e| pred(e))
            .cloned()
            .unwrap_or_else(|| panic!("no such entry in:\n{text}\nstderr log:\n{}", r.log_text()))
    };
    let ready = find(&|e| e["MESSAGE"] == "receiver ready");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "receiver");
    let stored = find(&|e| e["MESSAGE"] == "put" && e["EPISODE"] == "jr-ok");
    assert_eq!(stored["HOST"], HOST);
    assert_eq!(stored["STATUS"], "201");
    assert_eq!(stored["PRIORITY"], "5", "info is notice (5)");
    let refused = find(&|e| e["EPISODE"] == "jr-old");
    assert_eq!(refused["ERROR_CODE"], "commit_out_of_window");
    assert_eq!(refused["STATUS"], "412");
    assert_eq!(refused["PRIORITY"], "4", "a refusal is a warning");
    assert!(
        !r.log_text().contains("receiver ready"),
        "stderr got the lines the journal should have:\n{}",
        r.log_text()
    );
}
