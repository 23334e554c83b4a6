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

use labship_tests::episode::{assert_same_meta, assert_same_tree, noise, unpack, write_episode};
use labship_tests::process::{Daemon, Receiver, ReceiverOpts, run};
use labship_tests::{GOOD_COMMIT, TestEnv, names, shipper_toml};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

impl Lab {
    /// Adds episode `id` while a daemon may be scanning: written beside the
    /// data dir, then renamed into `episodes/` whole (settle_s is 0 here).
    fn add(&mut self, id: &str, size: usize, seed: u64) {
        let files: &[(&str, &[u8])] = &[("d.bin", &noise(size, seed)), ("t.csv", b"1\n")];
        let staging = self.data.with_file_name("staging");
        let dir = write_episode(&staging, id, Some(GOOD_COMMIT), files);
        write_episode(&self.copies, id, Some(GOOD_COMMIT), files);
        std::fs::rename(dir, self.data.join("episodes").join(id)).unwrap();
        self.ids.push(id.to_owned());
    }
}

/// Every invariant for one lab host against the store; trees are compared
/// for the episodes `fresh` picks.
fn assert_delivered_once(
    env: &TestEnv,
    r: &Receiver,
    lab: &Lab,
    ctx: &str,
    fresh: impl Fn(&str) -> bool,
) {
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
    for id in lab.ids.iter().filter(|id| fresh(id)) {
        let out = env.path().join("unpacked").join(ctx).join(id);
        std::fs::create_dir_all(&out).unwrap();
        let archive = std::fs::read(r.store.join(&lab.host).join(format!("{id}.tar.zst"))).unwrap();
        unpack(&archive, &out);
        assert_same_tree(&lab.copies.join(id), &out.join(id));
        assert_same_tree(&lab.copies.join(id), &lab.data.join("shipped").join(id));
        assert_same_meta(&lab.data.join("shipped").join(id), &out.join(id));
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
        assert_delivered_once(&env, &r, &lab, point, |_| true);
        // The first episode's PUT got no answer, so the shipper kept its
        // archive in outbox/ and asks with HEAD before sending again. Once
        // the archive was renamed into place the commit had happened (a
        // kill -9 is not a power loss): HEAD finds it, nothing is re-sent and
        // it counts as already present. Before that, start-up cleared the
        // scratch, HEAD finds nothing and the one PUT the receiver saw to its
        // end stores it (the killed one left no audit line).
        let stored_before = matches!(point, "store:archive-renamed" | "store:committed");
        let first = &lab.ids[0];
        let answers: Vec<_> = r
            .audit_records()
            .into_iter()
            .filter(|a| a["episode_id"] == first.as_str())
            .map(|a| a["status"].clone())
            .collect();
        let want = if stored_before {
            vec![]
        } else {
            vec![serde_json::json!(201)]
        };
        assert_eq!(
            answers, want,
            "{point}: the PUTs of {first} the receiver answered"
        );
        assert!(
            out.contains(&format!("already present {}", u8::from(stored_before))),
            "{point}: {out}"
        );
    }
}

/// The receiver's random kill campaign (`LABSHIP_RECEIVER_TRIALS`, default
/// 30; `LABSHIP_CRASH_SEED`): three shipper daemons (three hosts) upload
/// concurrently throughout. Each trial: two new episodes per host, SIGKILL of
/// the receiver at a varied moment once deliveries are under way, a restart,
/// and once every episode so far is delivered, every invariant checked for
/// every host (trees compared for the trial's new episodes).
#[test]
fn three_hosts_ship_while_the_receiver_is_killed_and_restarted() {
    let trials: usize = std::env::var("LABSHIP_RECEIVER_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("LABSHIP_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let env = TestEnv::new();
    let mut r = Receiver::start(&env);
    let mut labs: Vec<Lab> = ["lab-01", "lab-02", "lab-03"]
        .iter()
        .map(|h| lab(&env, &r.url, h, 0, 0))
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
    let shipped = |labs: &[Lab]| -> usize {
        labs.iter()
            .map(|l| names(&l.data.join("shipped")).len())
            .sum()
    };
    let started = Instant::now();
    let mut mid_work = 0;
    for (t, d) in noise(trials, seed).iter().enumerate() {
        let d = u64::from(*d);
        let before = shipped(&labs);
        for (h, l) in labs.iter_mut().enumerate() {
            for k in 0..2 {
                let size = 100_000 + (d as usize * 1499 * (h + k + 1)) % 400_000;
                l.add(&format!("{}-ep-{t:03}-{k}", l.host), size, d + h as u64);
            }
        }
        let total: usize = labs.iter().map(|l| l.ids.len()).sum();
        // Kill at a varied moment once deliveries are under way.
        let resume = Instant::now() + Duration::from_secs(20);
        while shipped(&labs) == before && Instant::now() < resume {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(d % 64));
        r.kill9();
        let at_kill = shipped(&labs);
        mid_work += usize::from(at_kill < total);
        r.restart();
        let ctx = format!("trial {t} (seed {seed}, kill {} ms in)", d % 64);
        let deadline = Instant::now() + Duration::from_secs(60);
        while shipped(&labs) < total {
            assert!(
                Instant::now() < deadline,
                "{ctx}: not all delivered: {at_kill} at the kill, now {} of {total}",
                shipped(&labs)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let fresh = format!("-ep-{t:03}-");
        for l in &labs {
            // The daemon retires the last episode just after it appears in
            // shipped/; the outbox empties a moment later.
            let settle = Instant::now() + Duration::from_secs(5);
            while !names(&l.data.join("outbox")).is_empty() && Instant::now() < settle {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_delivered_once(&env, &r, l, &format!("{ctx} {}", l.host), |id| {
                id.contains(&fresh)
            });
        }
    }
    drop(daemons);
    assert!(
        mid_work * 2 >= trials,
        "only {mid_work} of {trials} receiver kills landed with deliveries in progress"
    );
    eprintln!(
        "MEASURED receiver kill campaign: {trials} trials (seed {seed}), 3 hosts, {} episodes, {mid_work} kills mid-delivery, all invariants held, {:.1?}",
        shipped(&labs),
        started.elapsed()
    );
}
