//! The idle scenario: the CPU of one scan pass over unsettled episodes
//! beside a large `shipped/` (a running daemon's steady state), and of the
//! first pass after a start (`shipper --once`).

use crate::report::{Report, Row};
use crate::{Bench, data, measure};
use labship_tests::bin;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// CPU time of one scan pass over unsettled episodes beside a large shipped/.
pub(crate) fn idle(b: &mut Bench, rep: &mut Report) {
    let s = b.scale;
    let (host, id) = b.host("idle");
    // Never contacted: nothing is ready to ship.
    let url = "https://127.0.0.1:9";
    let top = "settle_s = 3600\nscan_interval_s = 1";
    let (cfg, data) = b.shipper_config(&host, &id, url, top);
    let (empty_cfg, _) = b.shipper_config(&format!("{host}-empty"), &id, url, top);
    eprintln!(
        "bench: idle: {} episodes, {} in shipped/",
        s.idle_episodes, s.idle_shipped
    );
    for i in 0..s.idle_episodes {
        let d = data.join("episodes").join(format!("run-{i:05}"));
        std::fs::create_dir_all(d.join("data")).expect("episode");
        std::fs::write(d.join("meta.json"), data::meta(&format!("run-{i:05}"))).expect("meta");
        std::fs::write(d.join("data/part-0000.csv"), b"t,v\n1,2\n").expect("data");
    }
    let shipped = data.join("shipped");
    std::fs::create_dir_all(&shipped).expect("shipped");
    for i in 0..s.idle_shipped {
        std::fs::create_dir(shipped.join(format!("old-{i:06}"))).expect("shipped entry");
    }
    let once = |cfg: &Path, name: &str| {
        (0..3)
            .map(|k| {
                let run = measure::run(
                    Command::new(bin("shipper"))
                        .arg("--config")
                        .arg(cfg)
                        .arg("--once"),
                    &b.log(&format!("{name}-{k}")),
                );
                assert!(run.status.success(), "shipper --once failed:\n{}", run.log);
                run.cpu
            })
            .sum::<Duration>()
            / 3
    };
    let start_up = once(&empty_cfg, "idle-empty");
    let first = once(&cfg, "idle-first");
    // The daemon's steady state: passes after the first, which learned each
    // episode's settle deadline. status.json is replaced (a new inode) at the
    // end of every pass; CPU is read between passes, while it sleeps.
    let daemon = b.shipper_daemon(&cfg, &b.log("idle-daemon"));
    let pid = daemon.0.id();
    let status = data.join("state/status.json");
    let inode = || {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&status).map(|m| m.ino()).ok()
    };
    let wait_pass = |after: Option<u64>| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let now = inode();
            if now.is_some() && now != after {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the shipper daemon wrote no status.json"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut seen = wait_pass(None);
    // Let the first pass's own tail (status write, log) finish.
    std::thread::sleep(Duration::from_millis(100));
    let cpu0 = measure::cpu_time(pid, false).expect("daemon cpu");
    for _ in 0..s.idle_passes {
        seen = wait_pass(seen);
    }
    std::thread::sleep(Duration::from_millis(100));
    let cpu1 = measure::cpu_time(pid, false).expect("daemon cpu");
    drop(daemon);
    let steady = (cpu1 - cpu0) / s.idle_passes;
    rep.row(Row::lower(
        format!(
            "idle pass CPU, daemon steady state, {} unsettled + {} shipped/ (ms)",
            s.idle_episodes, s.idle_shipped
        ),
        steady.as_secs_f64() * 1e3,
        50.0,
    ));
    rep.row(Row::lower(
        "first pass CPU (--once minus --once on an empty data_dir) (ms)".into(),
        first.saturating_sub(start_up).as_secs_f64() * 1e3,
        50.0,
    ));
    rep.note(format!(
        "idle: shipper --once CPU {} ms with the queue, {} ms on an empty data_dir (start-up), mean of 3 runs each; steady state over {} daemon passes",
        first.as_millis(),
        start_up.as_millis(),
        s.idle_passes
    ));
}
