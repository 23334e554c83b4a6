//! The batch and small scenarios: `shipper --once` against the operator's
//! script (`scripts/bench-baseline.sh`) and the machine's limit
//! (`tar | zstd -3 -T0` into a pipe), over the same generated episodes and
//! the same receiver, in one run.

use crate::measure::{self, Run};
use crate::report::{Report, Row};
use crate::{Bench, data};
use labship_tests::process::Receiver;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The machine's limit for this work: tar | zstd -3 -T0 into a pipe, no network.
pub(crate) fn limit(b: &Bench, gen_dir: &Path, ids: &[String]) -> Run {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("set -o pipefail; tar -C \"$0\" -cf - \"$@\" | zstd -q -3 -T0 -c | cat >/dev/null")
        .arg(gen_dir)
        .args(ids);
    let run = measure::run(&mut cmd, &b.log("limit"));
    assert!(run.status.success(), "tar | zstd failed:\n{}", run.log);
    run
}

pub(crate) fn best(runs: &[Run]) -> &Run {
    runs.iter()
        .min_by_key(|r| r.wall)
        .expect("at least one run")
}

pub(crate) fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

pub(crate) fn batch(b: &mut Bench, rep: &mut Report) {
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
    receiver_floor(b, &r, l, rep);
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
    // Measured over bound is how busy labship keeps the cores (its CPU over
    // its wall time on all of them); the limit's own share, beside it, is
    // what a perfect spread falls short of even for `tar | zstd -T0`.
    let busy = |cpu: Duration, wall: Duration| cpu.as_secs_f64() / (wall.as_secs_f64() * cores);
    rep.row(Row::higher(
        "batch: measured / CPU bound (the share of the cores labship keeps busy)".into(),
        busy(labship_cpu, l.wall),
        None,
        0.9,
    ));
    rep.row(Row::info(
        "batch: the share of the cores busy, labship vs the limit's own".into(),
        busy(labship_cpu, l.wall),
        busy(m.cpu, m.wall),
    ));
}

/// The guard on the receiver's cost: its CPU during the best labship run
/// against the floor of its work on the archives that run stored (`zstd -dc`
/// and `openssl dgst -sha256` over them), on the batch's large archives,
/// where per-byte work dominates (the fleet scenario reports the same ratio
/// on small archives, where each upload's fixed cost weighs more).
fn receiver_floor(b: &Bench, r: &Receiver, l: &Run, rep: &mut Report) {
    let (Some(host), Some(receiver)) = (&l.host, l.receiver_cpu) else {
        return;
    };
    let floor = measure::floor(b, r, host);
    let secs = |d: Duration| d.as_secs_f64().max(0.01);
    rep.row(Row::lower(
        "batch: receiver CPU per archive byte / (zstd -dc + openssl dgst -sha256) (x)".into(),
        secs(receiver) / secs(floor.decode),
        1.2,
    ));
    rep.row(Row::info(
        "batch: receiver CPU vs decode + hash + store + AES-GCM (s)".into(),
        secs(receiver),
        secs(floor.all()),
    ));
    rep.note(format!(
        "batch receiver floor: {} archive bytes; the receiver's CPU {:.2} s against zstd -dc + openssl dgst {:.2} s, + writing them to one file and fsync {:.2} s, + AES-256-GCM at openssl speed's rate {:.2} s",
        floor.bytes,
        receiver.as_secs_f64(),
        floor.decode.as_secs_f64(),
        floor.store.as_secs_f64(),
        floor.tls.as_secs_f64(),
    ));
}

pub(crate) fn small(b: &mut Bench, rep: &mut Report) {
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
