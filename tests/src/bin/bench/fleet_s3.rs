//! The fleet against two receivers on one SeaweedFS (`--only fleet-s3`):
//! the same 24 hosts (each its own certificate, data dir and daemon), split
//! between two receivers with `storage.kind = "s3"` on one bucket
//! (docs/scale-out.md), against one host shipping the same episodes to the
//! first of them. Checked as in fleet.rs: every episode one `201` over both
//! receivers' audit logs and one archive in the bucket (listed), no 5xx but
//! `503`; reported: the same rows, and the `503`s with the waits the
//! shippers took after them.
//!
//! SeaweedFS is `weed` from `LABSHIP_WEED` or `<repo>/.venv-s3/bin/weed`
//! (`scripts/test.sh` installs it); without one, a plain run (no `--only`)
//! notes the scenario as skipped, and `--only fleet-s3` fails saying how to
//! install it.

use crate::fleet::{self, Target};
use crate::report::Report;
use crate::{Bench, data};
use labship_tests::process::{Receiver, ReceiverOpts};
use labship_tests::s3::{Weed, weed_bin};
use std::path::Path;

/// Whether a `weed` binary is where [`weed_bin`] looks (it panics otherwise).
fn have_weed() -> bool {
    match std::env::var_os("LABSHIP_WEED") {
        Some(p) => Path::new(&p).exists(),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.venv-s3/bin/weed")
            .exists(),
    }
}

pub(crate) fn fleet_s3(b: &mut Bench, rep: &mut Report, asked: bool) {
    if !asked && !have_weed() {
        rep.note("fleet-s3: skipped: no SeaweedFS `weed` (LABSHIP_WEED or .venv-s3/bin/weed; scripts/test.sh installs it)".into());
        return;
    }
    weed_bin(); // fails saying how to install it
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let weed = rt.block_on(Weed::start());
    let receivers: Vec<Receiver> = (0..2)
        .map(|k| {
            let name = format!("fleet-s3-{k}");
            let spool = b.env.path().join(&name).join("spool");
            Receiver::start_with(
                &b.env,
                ReceiverOpts {
                    name: Some(name),
                    storage: Some(weed.storage_toml(&spool, "")),
                    env: weed.env(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let t = Target {
        receivers: receivers.iter().collect(),
        stored: Box::new(|host| {
            rt.block_on(weed.keys(host))
                .iter()
                .filter(|k| k.ends_with(".tar.zst"))
                .count()
        }),
    };
    let (gen_dir, ids) = fleet::episodes(b, "fleet-s3");
    // SeaweedFS grows its first volumes at the first writes (about a second
    // at the tiny size, where it was the whole fleet run): one unmeasured
    // episode through each receiver first, so the run measured first does
    // not pay it for the other.
    fleet::ship(b, &t, &gen_dir, &[&ids[..1], &ids[1..2]], "warm");
    let (many, one) = fleet::rounds(b, &t, &gen_dir, &ids, "fleet-s3");
    let bytes: u64 = ids.iter().map(|i| data::tree_bytes(&gen_dir.join(i))).sum();
    let s = b.scale;
    let label = format!(
        "fleet-s3 {} hosts x {} over 2 receivers, one SeaweedFS, vs 1 x {}",
        s.fleet_hosts,
        s.fleet_per_host,
        ids.len()
    );
    fleet::report(rep, &label, &t, bytes, &many, &one);
}
