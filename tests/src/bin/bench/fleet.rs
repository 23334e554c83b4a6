//! A fleet at once: many lab hosts (each its own certificate, data dir and
//! real `shipper` daemon) ship the same moment, against one host shipping
//! the same episodes alone, to the same receiver.
//!
//! Both runs are daemons started with their episodes already in place
//! (`settle_s = 0`), timed from the spawn until each host's `shipped/` holds
//! all its episodes. Checked: every episode stored exactly once (one `201`
//! per host and episode in the receiver's audit log, one archive in its
//! store, every `episodes/` empty), no 5xx but `503`. Reported: aggregate
//! throughput against the single host, the slowest host against the
//! median, the receiver's peak RSS, the `503`s and the waits the shippers
//! took after them, and the receiver's CPU per archive byte against the
//! floor of its work (`zstd -dc` and `openssl dgst -sha256` over the same
//! archives).
//!
//! `LABSHIP_BENCH_FLEET_TOML` is appended to every host's shipper config in
//! this scenario (after its top-level keys), for experiments such as
//! `[limits]` / `zstd_workers = 1` (docs/performance.md).

use crate::report::{Report, Row};
use crate::{Bench, data, measure};
use labship_tests::process::{Daemon, Receiver};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One fleet (or single-host) run.
pub(crate) struct Shipped {
    wall: Duration,
    /// Per host: the time from the spawn until its `shipped/` was full.
    per_host: Vec<Duration>,
    /// CPU of all the daemons together.
    shipper_cpu: Duration,
    receiver_cpu: Duration,
    /// `retry_in_ms` of every `http_status=503` retry the shippers logged.
    waits_ms: Vec<u64>,
    hosts: Vec<String>,
}

struct Host {
    name: String,
    data: PathBuf,
    n: usize,
    daemon: Daemon,
    log: PathBuf,
    done: Option<Duration>,
}

/// Where the hosts ship: one receiver, or several on one bucket (host `i`
/// to receiver `i % n`), and how many archives the store holds for a host.
pub(crate) struct Target<'a> {
    pub(crate) receivers: Vec<&'a Receiver>,
    pub(crate) stored: Box<dyn Fn(&str) -> usize + 'a>,
}

impl<'a> Target<'a> {
    /// One receiver with its own store directory.
    fn local(r: &'a Receiver) -> Self {
        Self {
            receivers: vec![r],
            stored: Box::new(move |host| {
                r.stored(host)
                    .iter()
                    .filter(|n| n.ends_with(".tar.zst"))
                    .count()
            }),
        }
    }

    fn cpu(&self) -> Duration {
        self.receivers
            .iter()
            .map(|r| measure::cpu_time(r.child.id(), false).unwrap_or_default())
            .sum()
    }
}

/// Starts one daemon per group of `ids` at once; waits until each shipped all.
pub(crate) fn ship(
    b: &mut Bench,
    t: &Target,
    gen_dir: &Path,
    groups: &[&[String]],
    what: &str,
) -> Shipped {
    let mut staged = vec![];
    for (i, ids) in groups.iter().enumerate() {
        let r = t.receivers[i % t.receivers.len()];
        let (host, id) = b.host(what);
        // An experiment's shipper settings (e.g. `[limits]\nzstd_workers = 1`).
        let extra = std::env::var("LABSHIP_BENCH_FLEET_TOML").unwrap_or_default();
        let top = format!("settle_s = 0\n{extra}");
        let (cfg, data) = b.shipper_config(&host, &id, &r.url, &top);
        data::link_episodes(gen_dir, &data.join("episodes"), ids);
        staged.push((host, cfg, data, ids.len()));
    }
    let cpu0 = t.cpu();
    let started = Instant::now();
    let mut hosts: Vec<Host> = staged
        .into_iter()
        .map(|(name, cfg, data, n)| {
            let log = b.log(&format!("shipper-{name}"));
            Host {
                daemon: b.shipper_daemon(&cfg, &log),
                name,
                data,
                n,
                log,
                done: None,
            }
        })
        .collect();
    let deadline = started + Duration::from_secs(600);
    while hosts.iter().any(|h| h.done.is_none()) {
        for h in hosts.iter_mut().filter(|h| h.done.is_none()) {
            let shipped = std::fs::read_dir(h.data.join("shipped")).map_or(0, |d| d.count());
            if shipped >= h.n {
                h.done = Some(started.elapsed());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: hosts still shipping after 600 s: {:?}",
            hosts
                .iter()
                .filter(|h| h.done.is_none())
                .map(|h| &h.name)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = started.elapsed();
    let receiver_cpu = t.cpu().saturating_sub(cpu0);
    let shipper_cpu = hosts
        .iter()
        .map(|h| measure::cpu_time(h.daemon.0.id(), false).unwrap_or_default())
        .sum();
    let per_host = hosts.iter().filter_map(|h| h.done).collect();
    let names = hosts.iter().map(|h| h.name.clone()).collect();
    let mut waits_ms = vec![];
    for h in hosts {
        drop(h.daemon);
        let left = std::fs::read_dir(h.data.join("episodes")).map_or(0, |d| d.count());
        assert_eq!(left, 0, "{}: {left} episodes left in episodes/", h.name);
        let stored = (t.stored)(&h.name);
        assert_eq!(
            stored, h.n,
            "the store holds {stored} archives for {}, not {}",
            h.name, h.n
        );
        let log = std::fs::read_to_string(&h.log).unwrap_or_default();
        waits_ms.extend(
            log.lines()
                .filter(|l| l.contains("503"))
                .filter_map(retry_in_ms),
        );
    }
    Shipped {
        wall,
        per_host,
        shipper_cpu,
        receiver_cpu,
        waits_ms,
        hosts: names,
    }
}

/// The `retry_in_ms` field of a shipper log line (text or JSON).
fn retry_in_ms(line: &str) -> Option<u64> {
    let at = line.find("retry_in_ms")? + "retry_in_ms".len();
    let digits: String = line[at..]
        .trim_start_matches(['"', ':', '='])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Statuses the receivers' audit logs hold per (host, episode).
fn audit(receivers: &[&Receiver]) -> HashMap<(String, String), Vec<u16>> {
    let mut out: HashMap<(String, String), Vec<u16>> = HashMap::new();
    let texts = receivers
        .iter()
        .map(|r| std::fs::read_to_string(&r.audit).expect("audit log"));
    for line in texts.collect::<Vec<_>>().iter().flat_map(|t| t.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("audit line");
        let host = v["host_id"].as_str().unwrap_or_default().to_owned();
        let episode = v["episode_id"].as_str().unwrap_or_default().to_owned();
        let status = v["status"].as_u64().expect("audit status") as u16;
        out.entry((host, episode)).or_default().push(status);
    }
    out
}

/// Exactly once: one 201 per (host, episode) of `hosts`, no 5xx but 503; the 503s.
pub(crate) fn exactly_once(receivers: &[&Receiver], hosts: &[String]) -> usize {
    let mut busy = 0;
    for ((host, episode), statuses) in audit(receivers) {
        if !hosts.contains(&host) {
            continue;
        }
        let created = statuses.iter().filter(|s| **s == 201).count();
        assert_eq!(
            created, 1,
            "{host}/{episode} answered 201 {created} times: {statuses:?}"
        );
        let bad: Vec<_> = statuses
            .iter()
            .filter(|s| **s >= 500 && **s != 503)
            .collect();
        assert!(bad.is_empty(), "{host}/{episode} got {bad:?}");
        busy += statuses.iter().filter(|s| **s == 503).count();
    }
    busy
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// The fleet's episodes: `hosts x per` generated, the page cache warmed.
pub(crate) fn episodes(b: &mut Bench, name: &str) -> (PathBuf, Vec<String>) {
    let s = b.scale;
    let gen_dir = b.env.path().join(format!("gen-{name}"));
    let ids = data::episodes(
        &gen_dir,
        name,
        s.fleet_hosts * s.fleet_per_host,
        s.fleet_bytes,
    );
    crate::batch::limit(b, &gen_dir, &ids);
    (gen_dir, ids)
}

/// `rounds` of the fleet (`per` episodes a host) then the single host, against `t`.
pub(crate) fn rounds(
    b: &mut Bench,
    t: &Target,
    gen_dir: &Path,
    ids: &[String],
    label: &str,
) -> (Vec<Shipped>, Vec<Shipped>) {
    let s = b.scale;
    let groups: Vec<&[String]> = ids.chunks(s.fleet_per_host).collect();
    let (mut many, mut one) = (vec![], vec![]);
    for round in 0..s.rounds {
        eprintln!(
            "bench: {label} round {}/{}: {} hosts x {} over {} receiver(s), then 1 x {}",
            round + 1,
            s.rounds,
            groups.len(),
            s.fleet_per_host,
            t.receivers.len(),
            ids.len()
        );
        many.push(ship(b, t, gen_dir, &groups, "fleet"));
        one.push(ship(b, t, gen_dir, &[ids], "single"));
    }
    (many, one)
}

/// The rows every fleet scenario reports: aggregate throughput against the
/// single host, the slowest host against the median, the receivers' peak
/// RSS, and (checked) every episode stored once with no 5xx but 503.
pub(crate) fn report(
    rep: &mut Report,
    label: &str,
    t: &Target,
    bytes: u64,
    many: &[Shipped],
    one: &[Shipped],
) {
    let fastest = |runs: &[Shipped]| {
        runs.iter()
            .min_by_key(|x| x.wall)
            .map(|x| x.wall)
            .expect("a run")
    };
    let (m, o) = (fastest(many), fastest(one));
    rep.row(Row::higher(
        format!("{label}: aggregate (MB/s)"),
        crate::batch::mb_per_s(bytes, m),
        Some(crate::batch::mb_per_s(bytes, o)),
        0.8,
    ));
    let spread = many
        .iter()
        .map(|x| {
            let slowest = x.per_host.iter().max().copied().unwrap_or_default();
            slowest.as_secs_f64() / median(&x.per_host).as_secs_f64()
        })
        .fold(0.0, f64::max);
    rep.row(Row::lower(
        format!("{label}: slowest host / median host (worst run)"),
        spread,
        2.0,
    ));
    let peak = t
        .receivers
        .iter()
        .map(|r| measure::vm_hwm(r.child.id()).unwrap_or_default())
        .max()
        .unwrap_or_default();
    rep.row(Row::lower(
        format!("{label}: receiver peak RSS over every run (MiB)"),
        peak as f64 / (1 << 20) as f64,
        160.0,
    ));
    let all: Vec<String> = many
        .iter()
        .chain(one)
        .flat_map(|x| x.hosts.clone())
        .collect();
    let busy = exactly_once(&t.receivers, &all);
    let waits: Vec<u64> = many
        .iter()
        .chain(one)
        .flat_map(|x| x.waits_ms.clone())
        .collect();
    rep.note(format!(
        "{label}: every episode stored once (one 201 each in the audit logs), no 5xx but 503; 503s: {busy} over {} runs; the shippers' waits after them (ms): {waits:?}",
        many.len() + one.len()
    ));
    for (what, runs) in [("fleet", many), ("single", one)] {
        for x in runs.iter() {
            rep.note(format!(
                "{label}: {what}: wall {:.2} s, hosts done median {:.2} s / slowest {:.2} s, CPU s: shippers {:.2}, receivers {:.2}",
                x.wall.as_secs_f64(),
                median(&x.per_host).as_secs_f64(),
                x.per_host.iter().max().copied().unwrap_or_default().as_secs_f64(),
                x.shipper_cpu.as_secs_f64(),
                x.receiver_cpu.as_secs_f64(),
            ));
        }
    }
}

pub(crate) fn fleet(b: &mut Bench, rep: &mut Report) {
    let s = b.scale;
    let (gen_dir, ids) = episodes(b, "fleet");
    let r = b.receiver("fleet");
    let t = Target::local(&r);
    let (many, one) = rounds(b, &t, &gen_dir, &ids, "fleet");
    let bytes: u64 = ids.iter().map(|i| data::tree_bytes(&gen_dir.join(i))).sum();
    let label = format!(
        "fleet {} hosts x {} vs 1 x {}",
        s.fleet_hosts,
        s.fleet_per_host,
        ids.len()
    );
    report(rep, &label, &t, bytes, &many, &one);
    let single = one.iter().min_by_key(|x| x.wall).expect("a run");
    let floor = measure::floor(b, &r, &single.hosts[0]);
    // The guard row is the batch's (large archives, per-byte work); here
    // each small upload's fixed cost (TLS records, a request, a scratch
    // file, the commit's fsyncs) weighs more, so the ratio is a figure.
    rep.row(Row::info(
        "fleet single host: receiver CPU vs decode + hash + store + AES-GCM (s)".into(),
        single.receiver_cpu.as_secs_f64(),
        floor.all().as_secs_f64().max(0.01),
    ));
    rep.note(format!(
        "receiver floor, single run: {} archive bytes; the receiver's CPU {:.2} s against zstd -dc + openssl dgst {:.2} s ({:.2}x), + writing them to one file and fsync {:.2} s, + AES-256-GCM {:.2} s",
        floor.bytes,
        single.receiver_cpu.as_secs_f64(),
        floor.decode.as_secs_f64(),
        single.receiver_cpu.as_secs_f64() / floor.decode.as_secs_f64().max(0.01),
        floor.store.as_secs_f64(),
        floor.tls.as_secs_f64(),
    ));
}
