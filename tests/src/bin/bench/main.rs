//! `bench`: labship side by side with its baselines, in one run
//! (docs/performance.md). Absolute times on a shared 2-core machine are
//! noise; ratios measured in the same run, on the same page cache, against
//! the same receiver, are not.
//!
//! ```text
//! bench [--tiny] [--json PATH] [--rounds N] [--only batch,small,memory,idle,fleet,flaky] [--check]
//!       [--wrap 'strace -f -tt -o /tmp/shipper.strace'] [--before DIR]
//! ```
//!
//! `--before DIR` also runs the `shipper` found in DIR (an older build) in the
//! batch and small scenarios, interleaved with the current one: the
//! before/after ratio of a change, measured in one run.
//!
//! Scenarios (sizes in [`Scale`]): `batch` (labship's `shipper --once` vs the
//! operator's script `scripts/bench-baseline.sh` vs the machine's limit
//! `tar | zstd -3 -T0` into a pipe), `small` (many tiny episodes, episodes per
//! second vs the script), `memory` (shipper peak RSS on one big episode;
//! receiver peak RSS under 16 concurrent uploads), `idle` (CPU time of one
//! scan pass over unsettled episodes beside a large `shipped/`), `flaky` (one
//! big episode through a link reset every 1/8 of its size: labship's bytes on
//! the wire vs the script's; and the upload API vs PUT on a healthy link:
//! flaky.rs). Every run
//! checks its result: each upload answered 201 and the store holds it.
//! Prints a table; writes JSON (default `target/bench.json`). Exits 1 on a
//! broken run, and with `--check` also when a target is missed.

mod data;
mod flaky;
mod fleet;
mod measure;
mod memory;
mod report;

use labship_tests::process::{Daemon, Receiver, ReceiverOpts};
use labship_tests::{TestEnv, bin, pki::Issued, shipper_toml};
use measure::Run;
use report::{Report, Row};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Sizes of one bench run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    pub(crate) name: &'static str,
    batch_count: usize,
    batch_bytes: u64,
    small_count: usize,
    small_bytes: u64,
    big_bytes: u64,
    pub(crate) uploads: usize,
    pub(crate) upload_bytes: u64,
    idle_episodes: usize,
    idle_shipped: usize,
    idle_passes: u32,
    fleet_hosts: usize,
    fleet_per_host: usize,
    fleet_bytes: u64,
    rounds: usize,
}

const FULL: Scale = Scale {
    name: "full",
    batch_count: 24,
    batch_bytes: 16_000_000,
    small_count: 600,
    small_bytes: 8_000,
    big_bytes: 1 << 30,
    uploads: 16,
    upload_bytes: 256 << 20,
    idle_episodes: 10_000,
    idle_shipped: 100_000,
    idle_passes: 10,
    fleet_hosts: 24,
    fleet_per_host: 8,
    fleet_bytes: 1_500_000,
    rounds: 2,
};

/// CI's size: proves every scenario still works, in seconds.
const TINY: Scale = Scale {
    name: "tiny",
    batch_count: 3,
    batch_bytes: 1_000_000,
    small_count: 20,
    small_bytes: 8_000,
    big_bytes: 16 << 20,
    uploads: 16,
    upload_bytes: 1 << 20,
    idle_episodes: 200,
    idle_shipped: 1_000,
    idle_passes: 2,
    fleet_hosts: 3,
    fleet_per_host: 2,
    fleet_bytes: 200_000,
    rounds: 1,
};

#[derive(Debug)]
struct Args {
    scale: Scale,
    json: PathBuf,
    only: Vec<String>,
    check: bool,
    wrap: Vec<String>,
    before: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        scale: FULL,
        json: PathBuf::from("target/bench.json"),
        only: vec![],
        check: false,
        wrap: vec![],
        before: None,
    };
    let mut rounds = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--tiny" => a.scale = TINY,
            "--json" => a.json = it.next().expect("--json PATH").into(),
            "--rounds" => {
                rounds = Some(it.next().and_then(|n| n.parse().ok()).expect("--rounds N"))
            }
            "--only" => {
                a.only = it
                    .next()
                    .expect("--only LIST")
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            "--check" => a.check = true,
            "--before" => a.before = Some(it.next().expect("--before DIR").into()),
            "--wrap" => {
                a.wrap = it
                    .next()
                    .expect("--wrap COMMAND")
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            }
            "-h" | "--help" => {
                println!(
                    "bench [--tiny] [--json PATH] [--rounds N] [--only batch,small,memory,idle,fleet,flaky] [--check] [--wrap 'perf record -g -o F'] [--before DIR]"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("bench: unknown argument {other:?} (try --help)");
                std::process::exit(2);
            }
        }
    }
    if let Some(n) = rounds {
        a.scale.rounds = n;
    }
    a
}

/// The world every scenario shares: one temp dir and PKI, the generated data.
struct Bench {
    env: TestEnv,
    scale: Scale,
    hosts: usize,
    /// A profiler to run `shipper --once` under (`--wrap`), e.g. `perf record -g`.
    wrap: Vec<String>,
    /// An older `shipper` to compare with (`--before`).
    before: Option<PathBuf>,
}

impl Bench {
    /// A fresh host id with its client certificate: each measured run ships
    /// under its own host, so nothing it sends is already stored (no no-op 200).
    fn host(&mut self, what: &str) -> (String, Issued) {
        self.hosts += 1;
        let host = format!("{what}-{}", self.hosts);
        let id = self.env.pki.client(&host);
        (host, id)
    }

    fn receiver(&self, name: &str) -> Receiver {
        Receiver::start_with(
            &self.env,
            ReceiverOpts {
                store: Some(self.env.path().join(format!("store-{name}"))),
                ..Default::default()
            },
        )
    }

    /// A shipper config for `host` over a fresh data_dir; returns (config, data_dir).
    fn shipper_config(&self, host: &str, id: &Issued, url: &str, top: &str) -> (PathBuf, PathBuf) {
        let data = self.env.path().join(format!("lab-{host}"));
        std::fs::create_dir_all(data.join("episodes")).expect("data dir");
        let cfg = self.env.path().join(format!("shipper-{host}.toml"));
        std::fs::write(&cfg, shipper_toml(&self.env, host, url, &data, id, top)).expect("config");
        (cfg, data)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.env.path().join(format!("{name}.log"))
    }

    /// `shipper --once` over `ids` (hard-linked from `gen`); checks every
    /// episode was shipped and stored.
    fn labship(&mut self, r: &Receiver, gen_dir: &Path, ids: &[String], extra: &str) -> Run {
        self.labship_with(&bin("shipper"), r, gen_dir, ids, extra)
    }

    fn labship_with(
        &mut self,
        shipper: &Path,
        r: &Receiver,
        gen_dir: &Path,
        ids: &[String],
        extra: &str,
    ) -> Run {
        let (host, id) = self.host("labship");
        let (cfg, data) =
            self.shipper_config(&host, &id, &r.url, &format!("settle_s = 0\n{extra}"));
        data::link_episodes(gen_dir, &data.join("episodes"), ids);
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(shipper);
                c
            }
            None => Command::new(shipper),
        };
        cmd.arg("--config").arg(&cfg).arg("--once");
        let receiver_cpu = || measure::cpu_time(r.child.id(), false).unwrap_or_default();
        let cpu0 = receiver_cpu();
        let mut run = measure::run(&mut cmd, &self.log(&format!("shipper-{host}")));
        run.receiver_cpu = Some(receiver_cpu().saturating_sub(cpu0));
        let want = format!("shipped {}, already present 0, quarantined 0", ids.len());
        assert!(
            run.status.success() && run.log.contains(&want),
            "shipper --once did not ship all {} episodes ({}):\n{}",
            ids.len(),
            run.status,
            tail(&run.log)
        );
        assert_stored(r, &host, ids.len());
        run
    }

    /// The operator's script over `ids` in `gen`; checks every PUT answered
    /// 201 (the script stops otherwise) and the store holds them.
    fn script(&mut self, r: &Receiver, gen_dir: &Path, ids: &[String]) -> Run {
        let (host, id) = self.host("script");
        let script = self.env.path().join("bench-baseline.sh");
        std::fs::write(
            &script,
            include_str!("../../../../scripts/bench-baseline.sh"),
        )
        .expect("script");
        // The script's temp archives go to tmpfs when there is one. On ext4
        // without a journal (this machine's /), every file creation scans
        // the inodes freed in the last minutes (`recently_deleted`), so the
        // script's two deletes per episode would slow the receiver's creates
        // in the runs after it. On tmpfs they cost the script less and no one
        // else anything: it can only make the baseline faster.
        let shm = tempfile::Builder::new()
            .prefix("labship-bench-")
            .tempdir_in("/dev/shm")
            .ok();
        let scratch = match &shm {
            Some(dir) => dir.path().to_owned(),
            None => self.env.path().join(format!("scratch-{host}")),
        };
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(&r.url)
            .arg(&host)
            .arg(&self.env.pki.ca_file)
            .arg(&id.cert_file)
            .arg(&id.key_file)
            .arg(gen_dir)
            .arg(&scratch)
            .args(ids);
        let run = measure::run(&mut cmd, &self.log(&format!("script-{host}")));
        assert!(
            run.status.success(),
            "the baseline script failed ({}):\n{}",
            run.status,
            tail(&run.log)
        );
        assert_stored(r, &host, ids.len());
        run
    }
}

fn assert_stored(r: &Receiver, host: &str, n: usize) {
    let stored = r
        .stored(host)
        .iter()
        .filter(|n| n.ends_with(".tar.zst"))
        .count();
    assert_eq!(
        stored, n,
        "the receiver stores {stored} archives for {host}, not {n}"
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The machine's limit for this work: tar | zstd -3 -T0 into a pipe, no network.
fn limit(b: &Bench, gen_dir: &Path, ids: &[String]) -> Run {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("set -o pipefail; tar -C \"$0\" -cf - \"$@\" | zstd -q -3 -T0 -c | cat >/dev/null")
        .arg(gen_dir)
        .args(ids);
    let run = measure::run(&mut cmd, &b.log("limit"));
    assert!(run.status.success(), "tar | zstd failed:\n{}", run.log);
    run
}

fn best(runs: &[Run]) -> &Run {
    runs.iter()
        .min_by_key(|r| r.wall)
        .expect("at least one run")
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn batch(b: &mut Bench, rep: &mut Report) {
    let s = b.scale;
    let gen_dir = b.env.path().join("gen-batch");
    let ids = data::episodes(&gen_dir, "batch", s.batch_count, s.batch_bytes);
    let bytes: u64 = ids.iter().map(|i| data::tree_bytes(&gen_dir.join(i))).sum();
    let r = b.receiver("batch");
    // Warm the page cache once, unmeasured: every run then reads from memory.
    limit(b, &gen_dir, &ids);
    let (mut lab, mut scr, mut lim, mut old) = (vec![], vec![], vec![], vec![]);
    for round in 0..s.rounds {
        eprintln!("bench: batch round {}/{}", round + 1, s.rounds);
        lim.push(limit(b, &gen_dir, &ids));
        scr.push(b.script(&r, &gen_dir, &ids));
        if let Some(before) = b.before.clone() {
            old.push(b.labship_with(&before, &r, &gen_dir, &ids, ""));
        }
        lab.push(b.labship(&r, &gen_dir, &ids, ""));
    }
    let (l, c, m) = (best(&lab), best(&scr), best(&lim));
    let (lv, cv, mv) = (
        mb_per_s(bytes, l.wall),
        mb_per_s(bytes, c.wall),
        mb_per_s(bytes, m.wall),
    );
    let what = format!("{} x {} MB", s.batch_count, s.batch_bytes / 1_000_000);
    rep.raw(
        "batch",
        &[("labship", &lab), ("script", &scr), ("limit", &lim)],
        bytes,
    );
    rep.row(Row::higher(
        format!("batch {what}: labship vs script (MB/s)"),
        lv,
        Some(cv),
        1.3,
    ));
    rep.row(Row::higher(
        format!("batch {what}: labship vs tar|zstd limit (MB/s)"),
        lv,
        Some(mv),
        0.75,
    ));
    if !old.is_empty() {
        let ov = mb_per_s(bytes, best(&old).wall);
        rep.row(Row::info(
            format!("batch {what}: labship vs --before (MB/s)"),
            lv,
            ov,
        ));
        rep.raw("batch_before", &[("labship_before", &old)], bytes);
    }
    rep.note(format!(
        "batch CPU s per GB of input: labship {:.2} (shipper) + {:.2} (receiver, same cores), script {:.2} (tar, zstd, sha256sum, curl; receiver not counted), limit {:.2}",
        l.cpu.as_secs_f64() / (bytes as f64 / 1e9),
        l.receiver_cpu.unwrap_or_default().as_secs_f64() / (bytes as f64 / 1e9),
        c.cpu.as_secs_f64() / (bytes as f64 / 1e9),
        m.cpu.as_secs_f64() / (bytes as f64 / 1e9),
    ));
    // However well labship overlaps its work, its wall time on N cores is
    // at least its CPU time (shipper + receiver, which share the cores
    // here) over N: the best ratio to the limit this machine allows.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let labship_cpu = l.cpu + l.receiver_cpu.unwrap_or_default();
    rep.note(format!(
        "batch vs the limit, bound by CPU: {:.2}x at best (labship's CPU, shipper + receiver, spread perfectly over {cores} cores against the limit's wall time); measured {:.2}x",
        m.wall.as_secs_f64() * cores / labship_cpu.as_secs_f64(),
        lv / mv,
    ));
}

fn small(b: &mut Bench, rep: &mut Report) {
    let s = b.scale;
    let gen_dir = b.env.path().join("gen-small");
    let ids = data::episodes(&gen_dir, "small", s.small_count, s.small_bytes);
    let r = b.receiver("small");
    limit(b, &gen_dir, &ids);
    eprintln!("bench: small");
    let scr = b.script(&r, &gen_dir, &ids);
    let old = b
        .before
        .clone()
        .map(|before| b.labship_with(&before, &r, &gen_dir, &ids, ""));
    let lab = b.labship(&r, &gen_dir, &ids, "");
    let eps = |run: &Run| ids.len() as f64 / run.wall.as_secs_f64();
    if let Some(old) = &old {
        rep.row(Row::info(
            format!(
                "small {} x {} KB: labship vs --before (episodes/s)",
                s.small_count,
                s.small_bytes / 1000
            ),
            eps(&lab),
            eps(old),
        ));
    }
    rep.raw(
        "small",
        &[
            ("labship", std::slice::from_ref(&lab)),
            ("script", std::slice::from_ref(&scr)),
        ],
        0,
    );
    rep.row(Row::higher(
        format!(
            "small {} x {} KB: labship vs script (episodes/s)",
            s.small_count,
            s.small_bytes / 1000
        ),
        eps(&lab),
        Some(eps(&scr)),
        10.0,
    ));
}

/// The shipper's peak RSS on one big episode.
fn shipper_memory(b: &mut Bench, rep: &mut Report) {
    let s = b.scale;
    let gen_dir = b.env.path().join("gen-big");
    let ids = data::episodes(&gen_dir, "big", 1, s.big_bytes);
    let r = b.receiver("big");
    eprintln!("bench: shipper memory");
    let run = b.labship(&r, &gen_dir, &ids, "");
    rep.raw(
        "shipper_memory",
        &[("labship", std::slice::from_ref(&run))],
        s.big_bytes,
    );
    rep.row(Row::lower(
        format!(
            "shipper peak RSS, one {} MiB episode (MiB)",
            s.big_bytes >> 20
        ),
        run.peak_rss as f64 / (1 << 20) as f64,
        64.0,
    ));
}

/// CPU time of one scan pass over unsettled episodes beside a large shipped/.
fn idle(b: &mut Bench, rep: &mut Report) {
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
    let log = std::fs::File::create(b.log("idle-daemon")).expect("log");
    let child = Command::new(bin("shipper"))
        .arg("--config")
        .arg(&cfg)
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn daemon");
    let pid = child.id();
    let daemon = Daemon(child);
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

fn main() {
    let a = args();
    let started = Instant::now();
    let env = TestEnv::new();
    let mut b = Bench {
        env,
        scale: a.scale,
        hosts: 0,
        wrap: a.wrap.clone(),
        before: a.before.as_ref().map(|d| d.join("shipper")),
    };
    let mut rep = Report::new(a.scale.name);
    let want = |s: &str| a.only.is_empty() || a.only.iter().any(|o| o == s);
    eprintln!(
        "bench: {} size, in {}",
        a.scale.name,
        b.env.path().display()
    );
    if want("batch") {
        batch(&mut b, &mut rep);
    }
    if want("small") {
        small(&mut b, &mut rep);
    }
    if want("memory") {
        shipper_memory(&mut b, &mut rep);
        let r = b.receiver("memory");
        memory::receiver(&mut b, &r, &mut rep);
    }
    if want("idle") {
        idle(&mut b, &mut rep);
    }
    if want("fleet") {
        fleet::fleet(&mut b, &mut rep);
    }
    if want("flaky") {
        flaky::flaky(&mut b, &mut rep);
    }
    rep.elapsed(started.elapsed());
    rep.print();
    rep.write_json(&a.json);
    if a.check && !rep.all_met() {
        std::process::exit(1);
    }
}
