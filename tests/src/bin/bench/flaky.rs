//! The `flaky` scenario: one big episode through a link that resets every
//! connection after a fixed number of bytes (`Fault::ResetEvery`), labship
//! (resumable uploads, CONTRACT §9) against the operator's script (one curl
//! PUT, which restarts from byte 0 on every run); and the guard that the
//! upload API costs no throughput against PUT on a healthy link, both in the
//! same run (docs/performance.md, "Flaky link").

use crate::batch::{best, mb_per_s};
use crate::measure::{self, Run};
use crate::report::{Report, Row};
use crate::{Bench, assert_stored, data, tail};
use labship_tests::bin;
use labship_tests::process::Receiver;
use labship_tests::proxy::{Fault, Proxy};
use std::path::Path;
use std::process::Command;

/// How many times the operator's script is run (a cron job, a person
/// pressing up-arrow) before the bench gives up on it.
const SCRIPT_RUNS: usize = 3;

pub(crate) fn flaky(b: &mut Bench, rep: &mut Report) {
    let s = b.scale;
    let gen_dir = b.env.path().join("gen-flaky");
    let ids = vec![
        data::episode(&gen_dir, "flaky-0", s.big_bytes, 17)
            .file_name()
            .expect("episode dir")
            .to_string_lossy()
            .into_owned(),
    ];
    let r = b.receiver("flaky");
    // 128 MiB for the 1 GiB episode; 8 MiB at the tiny size (a cut loses
    // the megabytes in socket buffers: smaller cuts measure those).
    let cut = ((s.big_bytes / 8) as usize).max(8 << 20);
    eprintln!("bench: flaky (a reset every {} MiB)", cut >> 20);

    // The happy path first: the upload API against PUT, same episode,
    // same receiver, no fault; interleaved over the rounds, the best of
    // each (one run each lets one burst of other load land on one side).
    let (mut put, mut api) = (vec![], vec![]);
    for _ in 0..s.rounds {
        put.push(shipper(b, &r, &r.url, &gen_dir, &ids, u64::MAX).0);
        api.push(shipper(b, &r, &r.url, &gen_dir, &ids, 0));
    }
    let archive = api[0].1;
    let api: Vec<Run> = api.into_iter().map(|(run, _)| run).collect();
    let (pv, av) = (
        mb_per_s(archive, best(&put).wall),
        mb_per_s(archive, best(&api).wall),
    );
    rep.row(Row::higher(
        format!(
            "happy path {} MiB: upload API vs PUT (archive MB/s)",
            s.big_bytes >> 20
        ),
        av,
        Some(pv),
        0.9,
    ));

    let proxy = Proxy::start(r.addr, Fault::ResetEvery(cut));
    let url = format!("https://127.0.0.1:{}", proxy.addr.port());
    let lab = shipper(b, &r, &url, &gen_dir, &ids, 0);
    let lab_wire = proxy.up_bytes();
    rep.row(Row::lower(
        format!(
            "flaky link {} MiB, reset every {} MiB: labship bytes on the wire / archive",
            s.big_bytes >> 20,
            cut >> 20
        ),
        lab_wire as f64 / archive as f64,
        1.3,
    ));
    rep.raw("flaky", &[("labship", std::slice::from_ref(&lab.0))], 0);

    let proxy = Proxy::start(r.addr, Fault::ResetEvery(cut));
    let url = format!("https://127.0.0.1:{}", proxy.addr.port());
    let (stored, runs) = script_runs(b, &r, &url, &gen_dir, &ids);
    let script_wire = proxy.up_bytes();
    rep.note(format!(
        "flaky link: labship stored the {archive}-byte archive with {lab_wire} bytes on the wire ({:.2}x); the script (curl PUT, from byte 0 each run) {} after {runs} run(s) and {script_wire} bytes on the wire ({:.2}x)",
        lab_wire as f64 / archive as f64,
        if stored { "stored it" } else { "had stored nothing" },
        script_wire as f64 / archive as f64,
    ));
}

/// `shipper --once` over `ids` to `url` (the receiver `r`, perhaps through
/// a proxy) with `resumable_min_bytes = min`; returns the run and the
/// stored archive's size (checked: shipped, stored).
fn shipper(
    b: &mut Bench,
    r: &Receiver,
    url: &str,
    gen_dir: &Path,
    ids: &[String],
    min: u64,
) -> (Run, u64) {
    let (host, id) = b.host("flaky");
    let (cfg, data) = b.shipper_config(&host, &id, url, "settle_s = 0");
    let min = min.min(i64::MAX as u64);
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        format!("{text}[limits]\nresumable_min_bytes = {min}\n"),
    )
    .expect("config");
    data::link_episodes(gen_dir, &data.join("episodes"), ids);
    let mut cmd = Command::new(bin("shipper"));
    cmd.arg("--config").arg(&cfg).arg("--once");
    let run = measure::run(&mut cmd, &b.log(&format!("shipper-{host}")));
    assert!(
        run.status.success() && run.log.contains("shipped 1,"),
        "shipper --once did not ship the flaky episode ({}):\n{}",
        run.status,
        tail(&run.log)
    );
    assert_stored(r, &host, 1);
    let stored = r.store.join(&host).join(format!("{}.tar.zst", ids[0]));
    let size = std::fs::metadata(&stored).expect("stored archive").len();
    (run, size)
}

/// The operator's script through the flaky link, run again after each
/// failure up to [`SCRIPT_RUNS`] times; whether it stored the episode, and
/// after how many runs.
fn script_runs(
    b: &mut Bench,
    r: &Receiver,
    url: &str,
    gen_dir: &Path,
    ids: &[String],
) -> (bool, usize) {
    let (host, id) = b.host("flaky-script");
    let script = b.env.path().join("bench-baseline.sh");
    std::fs::write(
        &script,
        include_str!("../../../../scripts/bench-baseline.sh"),
    )
    .expect("script");
    let scratch = b.env.path().join(format!("scratch-{host}"));
    for run in 1..=SCRIPT_RUNS {
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(url)
            .arg(&host)
            .arg(&b.env.pki.ca_file)
            .arg(&id.cert_file)
            .arg(&id.key_file)
            .arg(gen_dir)
            .arg(&scratch)
            .args(ids);
        let done = measure::run(&mut cmd, &b.log(&format!("script-{host}-{run}")));
        if done.status.success() {
            assert_stored(r, &host, ids.len());
            return (true, run);
        }
    }
    assert_stored(r, &host, 0);
    (false, SCRIPT_RUNS)
}
