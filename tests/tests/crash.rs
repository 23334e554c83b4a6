//! The receiver's side of the crash campaign (the shipper's is in
//! shipper_e2e.rs): SIGKILL at each named point of the store's commit path
//! (debug builds honour `LABSHIP_CRASH_AT`), and at random moments while
//! three shipper daemons (three hosts) upload concurrently. After each, the
//! receiver restarts and the shippers finish: every episode in `shipped/`
//! exactly once, exactly one archive per episode in the store, trees
//! byte-identical, no scratch left.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::episode::{assert_same_tree, noise, unpack, write_episode};
use labship_tests::process::{Daemon, Receiver, ReceiverOpts, run};
use labship_tests::{GOOD_COMMIT, TestEnv, shipper_toml};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A lab host: config, data dir and a pristine copy of each episode.
struct Lab {
    cfg: PathBuf,
    data: PathBuf,
    copies: PathBuf,
    host: String,
    ids: Vec<String>,
}

fn lab(env: &TestEnv, url: &str, host: &str, n: usize, size: usize) -> Lab {
    let root = env.path().join(host);
    let (data, copies) = (root.join("data"), root.join("copies"));
    let id = env.pki.client(host);
    let cfg = root.join("shipper.toml");
    std::fs::create_dir_all(data.join("episodes")).unwrap();
    std::fs::write(
        &cfg,
        shipper_toml(
            env,
            host,
            url,
            &data,
            &id,
            "settle_s = 0\nscan_interval_s = 1",
        ),
    )
    .unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("{host}-ep-{i:02}")).collect();
    for (i, ep) in ids.iter().enumerate() {
        let files: &[(&str, &[u8])] = &[("d.bin", &noise(size, i as u64 + 7)), ("t.csv", b"1\n")];
        write_episode(&data.join("episodes"), ep, Some(GOOD_COMMIT), files);
        write_episode(&copies, ep, Some(GOOD_COMMIT), files);
    }
    Lab {
        cfg,
        data,
        copies,
        host: host.to_owned(),
        ids,
    }
}

/// Every invariant for one lab host against the store.
fn assert_delivered_once(env: &TestEnv, r: &Receiver, lab: &Lab, ctx: &str) {
    assert_eq!(names(&lab.data.join("shipped")), lab.ids, "{ctx}: shipped/");
    assert!(names(&lab.data.join("episodes")).is_empty(), "{ctx}");
    assert!(
        names(&lab.data.join("quarantine")).is_empty(),
        "{ctx}: never quarantined"
    );
    assert!(names(&lab.data.join("outbox")).is_empty(), "{ctx}: outbox/");
    let mut want: Vec<String> = lab
        .ids
        .iter()
        .flat_map(|id| [format!("{id}.json"), format!("{id}.tar.zst")])
        .collect();
    want.sort();
    assert_eq!(
        r.stored(&lab.host),
        want,
        "{ctx}: one archive and manifest each"
    );
    for id in &lab.ids {
        let out = env.path().join("unpacked").join(ctx).join(id);
        std::fs::create_dir_all(&out).unwrap();
        let archive = std::fs::read(r.store.join(&lab.host).join(format!("{id}.tar.zst"))).unwrap();
        unpack(&archive, &out);
        assert_same_tree(&lab.copies.join(id), &out.join(id));
        assert_same_tree(&lab.copies.join(id), &lab.data.join("shipped").join(id));
    }
    let created = r
        .audit_records()
        .iter()
        .filter(|a| a["status"] == 201 && a["host_id"] == lab.host.as_str())
        .count();
    assert!(
        created <= lab.ids.len(),
        "{ctx}: at most one 201 per episode"
    );
    assert!(
        r.scratch().is_empty(),
        "{ctx}: scratch left: {:?}",
        r.scratch()
    );
}

#[test]
fn receiver_killed_at_each_commit_point_then_everything_converges() {
    for point in [
        "store:scratch-synced",
        "store:manifest-renamed",
        "store:archive-renamed",
        "store:committed",
    ] {
        let env = TestEnv::new();
        let mut r = Receiver::start_with(
            &env,
            ReceiverOpts {
                env: vec![("LABSHIP_CRASH_AT".into(), point.into())],
                ..Default::default()
            },
        );
        let lab = lab(&env, &r.url, "lab-01", 2, 100_000);
        let (code, out, err) = run(
            "shipper",
            &["--config", lab.cfg.to_str().unwrap(), "--once"],
        );
        assert_eq!(
            code, 1,
            "{point}: the receiver died mid-commit\n{out}\n{err}"
        );
        let status = r.wait_exit(Duration::from_secs(5)).unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "{point}: never reached:\n{}",
            r.log_text()
        );
        r.restart();
        let (code, out, err) = run(
            "shipper",
            &["--config", lab.cfg.to_str().unwrap(), "--once"],
        );
        assert_eq!(code, 0, "{point}: after restart\n{out}\n{err}");
        assert_delivered_once(&env, &r, &lab, point);
    }
}

#[test]
fn three_hosts_ship_while_the_receiver_is_killed_and_restarted() {
    let trials: usize = std::env::var("LABSHIP_RECEIVER_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("LABSHIP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let labs: Vec<Lab> = ["lab-01", "lab-02", "lab-03"]
        .iter()
        .map(|h| lab(&env, &r.url, h, 12, 300_000))
        .collect();
    let daemons: Vec<Daemon> = labs
        .iter()
        .map(|l| {
            Daemon(
                std::process::Command::new(labship_tests::bin("shipper"))
                    .args(["--config", l.cfg.to_str().unwrap()])
                    .stderr(std::fs::File::create(l.data.with_file_name("shipper.log")).unwrap())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let total: usize = labs.iter().map(|l| l.ids.len()).sum();
    let delays = noise(trials, seed);
    let shipped = || -> usize {
        labs.iter()
            .map(|l| names(&l.data.join("shipped")).len())
            .sum()
    };
    let mut at_kill = Vec::new();
    for d in &delays {
        // Let deliveries resume after the last restart (the shippers hold
        // off a failing receiver for up to max_backoff_s), then kill at a
        // varied moment while they are at it.
        let before = shipped();
        let resume = Instant::now() + Duration::from_secs(20);
        while shipped() == before && before < total && Instant::now() < resume {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(u64::from(*d) / 4));
        r.kill9();
        at_kill.push(shipped());
        r.restart();
    }
    eprintln!("shipped (of {total}) at each receiver kill: {at_kill:?}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while shipped() < total {
        assert!(
            Instant::now() < deadline,
            "not all delivered: {at_kill:?}, now {}",
            shipped()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemons);
    assert!(
        at_kill.iter().any(|&k| k > 0 && k < total),
        "no kill landed while work was in progress: {at_kill:?}"
    );
    for l in &labs {
        assert_delivered_once(&env, &r, l, &l.host);
    }
}
