//! The upload cap, progress and doctor on a shared link (issue 18, CONTRACT
//! §10), against the real `shipper`, `receiver` and `doctor` binaries over
//! mutual TLS, measured on the wire by the proxy (tests/src/proxy.rs):
//! the cap holds within 10 % over 10 s windows while several uploads share
//! it; a timetable switches at its boundary (the shipper's clock shifted by
//! the debug-build hook `LABSHIP_TEST_CLOCK_OFFSET_S`, in `TZ=UTC`); SIGHUP
//! raises the cap mid-upload and a broken file keeps the running one;
//! `status.json` shows a capped upload's progress; doctor calls a moving
//! upload moving (with its ETA, no restart offered) past its pass window
//! (`LABSHIP_DOCTOR_STALE_S`), and a frozen one (SIGSTOP) a failure; under
//! a real systemd (nspawn), `systemctl reload` (the unit's `ExecReload=`)
//! applies a new cap to the same process.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use labship_tests::episode::{noise, write_episode};
use labship_tests::process::{Daemon, Receiver};
use labship_tests::proxy::{Fault, Proxy, Sample, rate};
use labship_tests::{GOOD_COMMIT, TestEnv, names};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

const HOST: &str = "lab-01";
const MIB: f64 = 1_048_576.0;

/// A receiver, the proxy in front of it, and a shipper config over
/// `<test>/lab` with `[limits] bwlimit = <bwlimit>`.
struct Lab {
    env: TestEnv,
    receiver: Receiver,
    proxy: Proxy,
    cfg: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

impl Lab {
    fn new(bwlimit: &str) -> Self {
        Self::with_fault(bwlimit, Fault::PassThrough)
    }

    fn with_fault(bwlimit: &str, fault: Fault) -> Self {
        let env = TestEnv::new();
        let receiver = Receiver::start(&env);
        let proxy = Proxy::start(receiver.addr, fault);
        let data = env.path().join("lab");
        std::fs::create_dir_all(data.join("episodes")).unwrap();
        let cfg = env.path().join("shipper.toml");
        let lab = Self {
            log: env.path().join("shipper.log"),
            env,
            receiver,
            proxy,
            cfg,
            data,
        };
        lab.configure(bwlimit, "");
        lab
    }

    /// Rewrites the config with this cap and extra top-level keys.
    fn configure(&self, bwlimit: &str, top: &str) {
        let url = format!("https://127.0.0.1:{}", self.proxy.addr.port());
        let text = labship_tests::shipper_toml(
            &self.env,
            HOST,
            &url,
            &self.data,
            &self.env.pki.client(HOST),
            &format!("settle_s = 0\nscan_interval_s = 1\n{top}"),
        );
        std::fs::write(
            &self.cfg,
            format!("{text}[limits]\nbwlimit = {bwlimit:?}\n"),
        )
        .unwrap();
    }

    /// An episode with `len` incompressible bytes.
    fn produce(&self, id: &str, len: usize) {
        write_episode(
            &self.data.join("episodes"),
            id,
            Some(GOOD_COMMIT),
            &[("d.bin", &noise(len, len as u64 + id.len() as u64))],
        );
    }

    fn start(&self, env: &[(&str, String)]) -> Daemon {
        let mut cmd = std::process::Command::new(labship_tests::bin("shipper"));
        cmd.args(["--config", self.cfg.to_str().unwrap()])
            .stderr(std::fs::File::create(&self.log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon(cmd.spawn().unwrap())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait(&self, what: &str, within: Duration, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what} not within {within:?}; shipper log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn shipped(&self) -> usize {
        names(&self.data.join("shipped")).len()
    }

    fn status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.data.join("state/status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Now, on the proxy's sample clock.
    fn now(&self) -> Duration {
        self.proxy.started.elapsed()
    }
}

/// `got` is within 10 % of `want`.
fn near(got: f64, want: f64) -> bool {
    (got - want).abs() <= want * 0.10
}

/// The first and last sample times at which the total was `lo` and still
/// under `hi` bytes.
fn span(series: &[Sample], lo: u64, hi: u64) -> (Duration, Duration) {
    let first = series.iter().find(|s| s.up_bytes >= lo).unwrap().at;
    let last = series.iter().rev().find(|s| s.up_bytes <= hi).unwrap().at;
    (first, last)
}

#[test]
fn the_cap_holds_on_the_wire_across_concurrent_uploads() {
    let lab = Lab::new("2M");
    // 34 archives just under 1 MiB: small ones go up to four at once.
    let n = 34;
    for i in 0..n {
        lab.produce(&format!("ep-{i:02}"), 900_000);
    }
    let _shipper = lab.start(&[]);
    lab.wait("every episode shipped", Duration::from_secs(90), || {
        lab.shipped() == n
    });
    let series = lab.proxy.series();
    let total = lab.proxy.up_bytes();
    // Steady state: after the first 2 MiB (the first upload goes alone until
    // the receiver's first verdict) and before the last 2 MiB (the tail).
    let (from, to) = span(&series, 2 << 20, total - (2 << 20));
    assert!(
        to - from >= Duration::from_secs(8),
        "steady span {from:?}..{to:?} too short"
    );
    let window = Duration::from_secs(10).min(to - from);
    let mut start = from;
    let mut rates = Vec::new();
    while start + window <= to {
        rates.push(rate(&series, start, start + window) / MIB);
        start += Duration::from_millis(500);
    }
    println!("MEASURED bwlimit 2M over {window:?} windows: {rates:.3?} MiB/s");
    assert!(!rates.is_empty());
    for r in &rates {
        assert!(
            near(*r, 2.0),
            "a window at {r:.3} MiB/s, cap 2: {rates:.3?}"
        );
    }
    let busy = series
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .map(|s| s.busy)
        .max()
        .unwrap();
    assert!(busy >= 2, "never more than {busy} upload(s) moving at once");
    // The overall mean also holds, and nothing stalled or was retried.
    let log = lab.log_text();
    assert!(
        !log.contains("stalled") && !log.contains("will retry"),
        "{log}"
    );
    assert_eq!(lab.receiver.stored(HOST).len(), 2 * n, "stored");
}

#[test]
fn a_timetable_switches_at_its_boundary() {
    timetable_switch("11:00,1M 12:00,3M 13:00,off", 40 << 20, 1.0, 3.0);
}

/// To a far lower rate: what was reserved at 3 MiB/s drains at once, and the
/// new rate holds from a second after the boundary.
#[test]
fn a_timetable_switches_down_at_its_boundary() {
    timetable_switch("11:00,3M 12:00,512K 13:00,off", 64 << 20, 3.0, 0.5);
}

/// Uploads `len` bytes under `table` across its 12:00 boundary; the rate
/// before and after it, in MiB/s, within 10 %.
fn timetable_switch(table: &str, len: usize, want_before: f64, want_after: f64) {
    // The shipper's clock (UTC) reads 11:59:45 at `t0`: the 12:00 entry
    // takes over 15 s later.
    let lab = Lab::new(table);
    let utc = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 86_400.0;
    let t0 = lab.now();
    // The shipper's clock is whole seconds: it reaches 12:00:00 when the
    // real clock has gone 15 s less the fraction of a second it had at t0.
    let offset = 12 * 3600 - 15 - utc.floor() as i64;
    let switch = t0 + Duration::from_secs_f64(15.0 - utc.fract());
    lab.produce("ep-big", len);
    let _shipper = lab.start(&[
        ("TZ", "UTC".into()),
        ("LABSHIP_TEST_CLOCK_OFFSET_S", offset.to_string()),
    ]);
    lab.wait("the upload under way", Duration::from_secs(12), || {
        lab.proxy.up_bytes() > 512 << 10
    });
    let began = lab.now();
    lab.wait(
        "five seconds past the boundary",
        Duration::from_secs(40),
        || lab.now() > switch + Duration::from_secs(5),
    );
    let series = lab.proxy.series();
    let before = rate(&series, began + Duration::from_millis(500), switch);
    let after = rate(
        &series,
        switch + Duration::from_secs(1),
        switch + Duration::from_secs(5),
    );
    println!(
        "MEASURED timetable: {:.3} MiB/s before the boundary ({:?}), {:.3} MiB/s from 1 s after it",
        before / MIB,
        switch - began,
        after / MIB
    );
    assert!(
        switch - began >= Duration::from_secs(3),
        "the upload began late"
    );
    assert!(
        near(before / MIB, want_before),
        "before: {:.3} MiB/s",
        before / MIB
    );
    assert!(
        near(after / MIB, want_after),
        "after: {:.3} MiB/s",
        after / MIB
    );
    assert!(!lab.log_text().contains("stalled"), "{}", lab.log_text());
}

#[test]
fn sighup_raises_the_cap_mid_upload_and_a_broken_file_changes_nothing() {
    let lab = Lab::new("1M");
    lab.produce("ep-big", 24 << 20);
    let shipper = lab.start(&[]);
    let hup = || {
        assert!(labship_tests::process::unsafe_free_kill(shipper.0.id(), 1));
    };
    lab.wait("the upload under way", Duration::from_secs(30), || {
        lab.proxy.up_bytes() > 1 << 20
    });
    // A broken file: logged, the running cap stays.
    lab.configure("fast", "");
    hup();
    lab.wait("the reload error logged", Duration::from_secs(5), || {
        lab.log_text().contains("the running config stays")
    });
    assert!(
        lab.log_text().contains("limits.bwlimit"),
        "{}",
        lab.log_text()
    );
    let a = lab.now();
    std::thread::sleep(Duration::from_secs(4));
    let b = lab.now();
    // A raised cap (and a key that needs a restart, named).
    lab.configure("4M", "zstd_level = 5\n");
    hup();
    lab.wait("the new cap logged", Duration::from_secs(5), || {
        lab.log_text().contains("upload cap now 4 MiB/s")
    });
    std::thread::sleep(Duration::from_secs(1));
    let c = lab.now();
    std::thread::sleep(Duration::from_secs(3));
    let d = lab.now();
    let series = lab.proxy.series();
    let (before, after) = (rate(&series, a, b) / MIB, rate(&series, c, d) / MIB);
    println!("MEASURED sighup: {before:.3} MiB/s before, {after:.3} MiB/s after");
    assert!(near(before, 1.0), "before: {before:.3} MiB/s");
    assert!(near(after, 4.0), "after: {after:.3} MiB/s");
    let log = lab.log_text();
    assert!(
        log.contains("after a restart") && log.contains("zstd_level"),
        "{log}"
    );
    lab.wait("shipped", Duration::from_secs(30), || lab.shipped() == 1);
}

/// A far lower cap by SIGHUP (4 MiB/s to 64 KiB/s) slows the upload at
/// once: what was reserved at the old rate is not re-priced at the new one,
/// so bytes keep moving (no gap over a second) and nothing stalls.
#[test]
fn sighup_lowering_the_cap_keeps_bytes_moving() {
    let lab = Lab::new("4M");
    lab.produce("ep-big", 48 << 20);
    let shipper = lab.start(&[]);
    lab.wait("the upload under way", Duration::from_secs(30), || {
        lab.proxy.up_bytes() > 4 << 20
    });
    lab.configure("64K", "");
    assert!(labship_tests::process::unsafe_free_kill(shipper.0.id(), 1));
    lab.wait("the new cap logged", Duration::from_secs(5), || {
        lab.log_text().contains("upload cap now 64 KiB/s")
    });
    let (mut last, mut moved_at) = (lab.proxy.up_bytes(), Instant::now());
    let (start, mut longest) = (Instant::now(), Duration::ZERO);
    while start.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(50));
        let now = lab.proxy.up_bytes();
        longest = longest.max(moved_at.elapsed());
        if now > last {
            (last, moved_at) = (now, Instant::now());
        }
    }
    println!("MEASURED lowered cap: longest gap without a byte {longest:?}");
    assert!(
        longest <= Duration::from_secs(1),
        "no byte for {longest:?} after lowering the cap"
    );
    let a = lab.now();
    std::thread::sleep(Duration::from_secs(3));
    let b = lab.now();
    let low = rate(&lab.proxy.series(), a, b) / 1024.0;
    assert!(
        low < 64.0 * 1.5,
        "{low:.1} KiB/s after lowering to 64 KiB/s"
    );
    let log = lab.log_text();
    assert!(!log.contains("stalled"), "{log}");
}

/// A reload tells systemd it begins (`RELOADING=1` with `MONOTONIC_USEC=`)
/// and ends (`READY=1`), also when the file does not load.
#[test]
fn a_reload_is_announced_to_systemd_even_when_it_fails() {
    let lab = Lab::new("1M");
    let notify = lab.env.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let shipper = lab.start(&[("NOTIFY_SOCKET", notify.display().to_string())]);
    let mut said = Vec::<String>::new();
    let mut hear = |until: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !until(&said) {
            assert!(Instant::now() < deadline, "systemd heard only {said:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    hear(&|s| s.iter().any(|m| m.contains("READY=1")));
    let ready = 1;
    lab.configure("fast", "");
    assert!(labship_tests::process::unsafe_free_kill(shipper.0.id(), 1));
    hear(&|s| s.iter().filter(|m| m.contains("READY=1")).count() > ready);
    let reloading = said
        .iter()
        .position(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no RELOADING=1: {said:?}"));
    assert!(
        said[reloading..].iter().any(|m| m.contains("READY=1")),
        "{said:?}"
    );
    lab.wait("the failure logged", Duration::from_secs(5), || {
        lab.log_text().contains("reload_failed")
    });
}

/// `doctor --json --no-ping` over an empty captured journal (so only the
/// host checks speak), with its pass window `stale_s`.
fn doctor(lab: &Lab, stale_s: &str) -> Value {
    let journal = lab.env.path().join("journal.json");
    std::fs::write(&journal, "").unwrap();
    let out = std::process::Command::new(labship_tests::bin("doctor"))
        .args(["--config", lab.cfg.to_str().unwrap(), "--json", "--no-ping"])
        .args(["--journal-file", journal.to_str().unwrap()])
        .env("LABSHIP_DOCTOR_STALE_S", stale_s)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn status_row(report: &Value) -> Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "status")
        .unwrap()
        .clone()
}

#[test]
fn a_capped_upload_shows_its_progress_and_doctor_calls_it_moving() {
    let lab = Lab::new("1M");
    // systemd's notify socket, ours: what the shipper says in `STATUS=`.
    let notify = lab.env.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let said = std::cell::RefCell::new(Vec::<String>::new());
    let pings = std::cell::RefCell::new(Vec::<Instant>::new());
    let hear = || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains("WATCHDOG=1") {
                pings.borrow_mut().push(Instant::now());
            }
            said.borrow_mut().push(msg);
        }
    };
    let watchdog = Duration::from_secs(4);
    // A first pass completes (its `time` then ages past doctor's window).
    lab.produce("ep-first", 1000);
    let _shipper = lab.start(&[
        ("NOTIFY_SOCKET", notify.display().to_string()),
        ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
    ]);
    lab.wait("the first episode shipped", Duration::from_secs(30), || {
        lab.shipped() == 1
    });
    lab.produce("ep-slow", 16 << 20);
    lab.wait("the upload listed", Duration::from_secs(30), || {
        lab.status()
            .is_some_and(|s| s["uploading"].as_array().is_some_and(|u| !u.is_empty()))
    });
    let mut seen: Vec<(String, u64)> = Vec::new();
    let (mut changed, mut longest) = (Instant::now(), Duration::ZERO);
    let (mut report, mut rate_seen) = (None, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(13) {
        let s = lab.status().unwrap();
        let Some(u) = s["uploading"].as_array().and_then(|u| u.first()).cloned() else {
            break;
        };
        for k in [
            "episode_id",
            "bytes_sent",
            "bytes_total",
            "started_at",
            "bytes_per_s",
        ] {
            assert!(!u[k].is_null(), "{k} missing: {s}");
        }
        assert_eq!(u["episode_id"], "ep-slow");
        assert_eq!(s["bwlimit"], 1 << 20);
        let updated = s["updated_at"].as_str().unwrap().to_owned();
        let age = SystemTime::now()
            .duration_since(humantime::parse_rfc3339(&updated).unwrap())
            .unwrap_or_default();
        assert!(
            age <= Duration::from_secs(10),
            "updated_at {updated} is {age:?} old"
        );
        if seen.last().is_none_or(|(t, _)| *t != updated) {
            longest = longest.max(changed.elapsed());
            changed = Instant::now();
            seen.push((updated, u["bytes_sent"].as_u64().unwrap()));
            rate_seen = u["bytes_per_s"].as_u64().unwrap();
        }
        if report.is_none() && started.elapsed() > Duration::from_secs(7) {
            report = Some(doctor(&lab, "1"));
        }
        hear();
        std::thread::sleep(Duration::from_millis(150));
    }
    println!("MEASURED progress: rewrites {seen:?}, longest gap {longest:?}");
    assert!(
        longest <= Duration::from_secs(10),
        "status.json unchanged for {longest:?}"
    );
    assert!(
        seen.len() >= 3,
        "rewritten only {} times: {seen:?}",
        seen.len()
    );
    assert!(
        seen.windows(2).all(|w| w[1].1 > w[0].1),
        "bytes_sent does not grow: {seen:?}"
    );
    // The rate over the last 10 s, once 10 s have passed.
    assert!(
        near(rate_seen as f64 / MIB, 1.0),
        "bytes_per_s {rate_seen} at a 1 MiB/s cap"
    );

    // The capped upload keeps the watchdog fed.
    let pings = pings.into_inner();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        pings.len() >= 5,
        "{} WATCHDOG=1 during the upload",
        pings.len()
    );
    assert!(
        gaps.iter().all(|g| *g < watchdog),
        "a gap without WATCHDOG=1 over {watchdog:?}: {gaps:?}"
    );
    let said = said.into_inner();
    assert!(
        said.iter().any(|m| m.contains("STATUS=uploading ep-slow ")
            && m.contains("% (")
            && m.contains("cap 1 MiB/s")),
        "STATUS= never named the upload: {said:?}"
    );
    let report = report.expect("doctor ran during the upload");
    let row = status_row(&report);
    assert_eq!(row["level"], "ok", "{report:#}");
    let finding = row["finding"].as_str().unwrap();
    assert!(
        finding.contains("uploading ep-slow")
            && finding.contains("ETA")
            && finding.contains("cap 1 MiB/s"),
        "{finding}"
    );
    assert!(row["details"]["eta_s"].as_u64().is_some(), "{row:#}");
    assert_eq!(row["details"]["moving"], true);
    // The pass window was exceeded: the old check would have said stalled.
    assert!(
        row["details"]["last_pass_s"].as_u64().unwrap() > 1,
        "{row:#}"
    );
    for f in report["findings"].as_array().unwrap() {
        assert!(f["disruptive"].is_boolean(), "no disruptive flag: {f}");
        assert_eq!(f["disruptive"], false, "{f}");
        let fix = f["fix"].as_str().unwrap_or("");
        assert!(!fix.contains("restart") && !fix.contains("rm "), "{f}");
    }
    assert_ne!(report["status"], "fail", "{report:#}");
    lab.wait("shipped", Duration::from_secs(30), || lab.shipped() == 2);
    // Idle, the cap still shows.
    lab.wait("a pass after the upload", Duration::from_secs(10), || {
        lab.status()
            .is_some_and(|s| s["uploading"].as_array().is_some_and(Vec::is_empty))
    });
    let idle = status_row(&doctor(&lab, "300"));
    assert_eq!(idle["level"], "ok", "{idle:#}");
    assert!(
        idle["finding"]
            .as_str()
            .unwrap()
            .ends_with("; upload cap 1 MiB/s"),
        "{idle:#}"
    );
}

/// The whole body sent (the proxy acknowledges it and never answers), the shipper waits up
/// to stall_timeout_s + ANSWER_GRACE for the answer, as designed: the
/// upload stays listed as `awaiting_answer` and doctor, past the sending
/// window (stall 5 s + 3 s + 5 s), does not call it hung or offer a restart.
#[test]
fn doctor_waits_with_the_shipper_for_the_receivers_answer() {
    let lab = Lab::with_fault("", Fault::Swallow(100_000));
    lab.produce("ep-answer", 400 << 10);
    let _shipper = lab.start(&[]);
    lab.wait("the answer awaited", Duration::from_secs(30), || {
        lab.status().is_some_and(|s| {
            s["uploading"]
                .as_array()
                .and_then(|u| u.first())
                .is_some_and(|u| u["phase"] == "awaiting_answer")
        })
    });
    std::thread::sleep(Duration::from_secs(16));
    let report = doctor(&lab, "1");
    let row = status_row(&report);
    assert_eq!(row["level"], "ok", "{report:#}");
    assert!(
        row["finding"]
            .as_str()
            .unwrap()
            .contains("awaiting the receiver's answer"),
        "{row:#}"
    );
    assert_eq!(row["details"]["moving"], true, "{row:#}");
    let s = lab.status().unwrap();
    assert_eq!(s["uploading"][0]["phase"], "awaiting_answer", "{s}");
    assert!(!lab.log_text().contains("stalled"), "{}", lab.log_text());
}

#[test]
fn doctor_calls_a_frozen_upload_hung_and_its_restart_disruptive() {
    let lab = Lab::new("512K");
    lab.produce("ep-frozen", 24 << 20);
    let shipper = lab.start(&[]);
    lab.wait("the upload listed", Duration::from_secs(30), || {
        lab.status()
            .is_some_and(|s| s["uploading"].as_array().is_some_and(|u| !u.is_empty()))
    });
    let pid = shipper.0.id();
    assert!(labship_tests::process::unsafe_free_kill(pid, 19)); // SIGSTOP
    // stall_timeout_s 5 + the 3 s rewrite interval + 5 s slack.
    std::thread::sleep(Duration::from_secs(15));
    let report = doctor(&lab, "1");
    assert!(labship_tests::process::unsafe_free_kill(pid, 18)); // SIGCONT
    let row = status_row(&report);
    assert_eq!(row["level"], "fail", "{report:#}");
    assert!(
        row["finding"].as_str().unwrap().contains("no byte moved"),
        "{row:#}"
    );
    assert!(row["fix"].as_str().unwrap().contains("systemctl restart"));
    assert_eq!(row["disruptive"], true);
    assert_eq!(report["exit_code"], 2);
}

#[test]
fn systemctl_reload_applies_a_new_cap_under_systemd() {
    use labship_tests::lab_host::{HOST as LAB, LabHost, ShipperConfig, events, messages};
    use labship_tests::nspawn::{SHIPPER_UNIT, skip_unless_root_and_nspawn};
    if !skip_unless_root_and_nspawn("systemctl_reload_applies_a_new_cap_under_systemd") {
        return;
    }
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let host = LabHost::boot(&env);
    host.install_identity(&env, &env.pki.client(LAB));
    let base = ShipperConfig::new(&r.url).to_toml();
    let with_cap = |cap: &str| format!("{base}\n[limits]\nbwlimit = {cap:?}\n");
    host.write_config_text(&with_cap("1M"));
    host.expect_ok("systemctl start", &host.systemctl(&["start", SHIPPER_UNIT]));
    let status = || host.show(&["StatusText", "MainPID"]);
    host.wait_for("STATUS= with the cap", Duration::from_secs(30), || {
        status()["StatusText"].contains("; cap 1 MiB/s")
    });
    let pid = status()["MainPID"].clone();
    host.write_config_text(&with_cap("08:00,2M 20:00,2M"));
    host.expect_ok(
        "systemctl reload",
        &host.systemctl(&["reload", SHIPPER_UNIT]),
    );
    let entries = host.wait_journal("the new cap", Duration::from_secs(15), |e| {
        !events(e, "bwlimit_changed").is_empty()
    });
    assert_eq!(
        messages(&entries, "upload cap now 08:00,2 MiB/s 20:00,2 MiB/s").len(),
        1,
        "{}",
        host.diagnostics()
    );
    host.wait_for("STATUS= with the new cap", Duration::from_secs(15), || {
        status()["StatusText"].contains("; cap 2 MiB/s")
    });
    assert_eq!(status()["MainPID"], pid, "the reload restarted the shipper");
}
