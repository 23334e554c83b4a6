//! `bench`: labship side by side with its baselines, in one run
//! (docs/performance.md). Absolute times on a shared 2-core machine are
//! noise; ratios measured in the same run, on the same page cache, against
//! the same receiver, are not.
//!
//! ```text
//! bench [--tiny] [--json PATH] [--rounds N] [--only batch,small,memory,idle,fleet,fleet-s3,flaky] [--check]
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
//! flaky.rs), `fleet` (24 daemons at once vs one host, one receiver:
//! fleet.rs) and `fleet-s3` (the same fleet over two receivers on one
//! SeaweedFS: fleet_s3.rs). Every run
//! checks its result: each upload answered 201 and the store holds it.
//! Prints a table; writes JSON (default `target/bench.json`). Exits 1 on a
//! broken run, and with `--check` also when a target is missed.

mod batch;
mod data;
mod flaky;
mod fleet;
mod fleet_s3;
mod idle;
mod measure;
mod memory;
mod report;

use labship_tests::process::{Daemon, Receiver, ReceiverOpts};
use labship_tests::{TestEnv, bin, pki::Issued, shipper_toml};
use measure::Run;
use report::Report;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
                    "bench [--tiny] [--json PATH] [--rounds N] [--only batch,small,memory,idle,fleet,fleet-s3,flaky] [--check] [--wrap 'perf record -g -o F'] [--before DIR]"
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

    /// The `shipper` daemon on `cfg`, its output in `log`; killed on drop.
    fn shipper_daemon(&self, cfg: &Path, log: &Path) -> Daemon {
        let out = std::fs::File::create(log).expect("log");
        let child = Command::new(bin("shipper"))
            .arg("--config")
            .arg(cfg)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("spawn the shipper daemon");
        Daemon(child)
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
        run.host = Some(host.clone());
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

fn main() {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == measure::FLOOR_STORE) {
        let out = PathBuf::from(argv.next().expect("--floor-store OUT FILE..."));
        let files: Vec<PathBuf> = argv.map(PathBuf::from).collect();
        if let Err(e) = measure::store_files(&out, &files) {
            eprintln!("bench {}: {}: {e}", measure::FLOOR_STORE, out.display());
            std::process::exit(1);
        }
        return;
    }
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
        batch::batch(&mut b, &mut rep);
    }
    if want("small") {
        batch::small(&mut b, &mut rep);
    }
    if want("memory") {
        memory::shipper(&mut b, &mut rep);
        let r = b.receiver("memory");
        memory::receiver(&mut b, &r, &mut rep);
    }
    if want("idle") {
        idle::idle(&mut b, &mut rep);
    }
    if want("fleet") {
        fleet::fleet(&mut b, &mut rep);
    }
    if want("fleet-s3") {
        fleet_s3::fleet_s3(&mut b, &mut rep, !a.only.is_empty());
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
