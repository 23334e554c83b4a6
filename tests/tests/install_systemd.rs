//! The installers (`scripts/install-lab-host.sh`, `scripts/install-receiver.sh`)
//! on a host before anything of labship is there: a real systemd as PID 1 in
//! systemd-nspawn (`labship_tests::nspawn`, with nothing bound but the source
//! tree and the built binaries, both read-only), the real units they install,
//! the real shipper and receiver.
//!
//! - lab host: install; the user, the `labship-producers` group, directories
//!   (modes, owners), unit; a config and certificates; `enable --now`; a
//!   producer in `labship-producers` only cannot read the host's key but
//!   writes an episode that ships to a receiver on the host's 127.0.0.1; a
//!   `WatchdogSec=3` drop-in and `kill -STOP` get the shipper killed and
//!   restarted; a re-run from inside /opt/labship exits 0, changes nothing,
//!   keeps the running unit (same MainPID) and the config byte for byte;
//!   a changed drop-in, unit or binary restarts it, naming the file; a
//!   disabled running unit is try-restarted, an enabled stopped one started.
//! - lab host, migration: an install laid out the old way (`episodes/` and
//!   its producers in group `labship`) running and shipping; the installer
//!   moves the producers and the episodes' group, the producers lose the
//!   key and keep shipping (an episode begun before finishes after), and a
//!   second run changes nothing.
//! - receiver: the same with its unit, reached from the host by
//!   `shipper --ping` and `--once`.
//! - `--root DIR`: two installs into two trees give identical trees, a second
//!   run changes nothing, and nothing outside DIR is touched (runs on the host);
//!   data_dir as the installed shipper reads it (a literal string, an inline
//!   table), an old episodes/ regrouped, a config that is not TOML skipped.
//!
//! The container tests need root and systemd-nspawn and print SKIP otherwise.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::episode::{noise, write_episode};
use labship_tests::lab_host::HOST;
use labship_tests::nspawn::{
    Container, Options, SHIPPER_UNIT, repo_root, skip_unless_root_and_nspawn, text,
};
use labship_tests::process::{Receiver, free_port, http_get, run};
use labship_tests::{GOOD_COMMIT, TestEnv, bin_dir, shipper_toml};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

const RECEIVER_UNIT: &str = "labship-receiver.service";
/// Where the source tree and the built binaries are bound (read-only).
const SRC: &str = "/src/labship";
const BINS: &str = "/src/bin";

/// A host with nothing of labship on it but a source checkout and binaries.
fn boot(hostname: &str) -> Container {
    Container::boot(
        Options::bare()
            .hostname(hostname)
            .bind_ro(&repo_root(), SRC)
            .bind_ro(&bin_dir(), BINS),
    )
}

/// Runs `cd <dir> && ./scripts/<script> --bin-dir /src/bin` as root inside;
/// asserts exit 0 (with the unit's diagnostics otherwise) and returns stdout.
fn install(c: &Container, dir: &str, script: &str, unit: &str) -> String {
    let t = Instant::now();
    let out = c.exec(&[
        "sh",
        "-c",
        &format!("cd {dir} && ./scripts/{script} --bin-dir {BINS}"),
    ]);
    assert!(
        out.status.success(),
        "{script} (from {dir}) failed ({}):\n{}\n{}",
        out.status,
        text(&out),
        c.diagnostics(unit)
    );
    eprintln!("{script} from {dir}: {:?}", t.elapsed());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show(c: &Container, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
    c.run(&["systemctl", "show", "-p", &props.join(","), unit])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A file inside as bytes (through the container's root).
fn read(c: &Container, path: &str) -> Vec<u8> {
    std::fs::read(c.root().join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("read {path} in {}: {e}", c.name))
}

/// `systemd-analyze security <unit>`'s overall exposure.
fn exposure(c: &Container, unit: &str) -> f64 {
    let out = c.run(&["systemd-analyze", "security", "--no-pager", unit]);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line:\n{out}"));
    line.split(": ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

/// `systemd-analyze verify` prints nothing for a clean unit.
fn verify(c: &Container, unit: &str) {
    let out = c.exec(&["systemd-analyze", "verify", unit]);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify {unit}:\n{}",
        text(&out)
    );
}

/// A `WatchdogSec=3` drop-in (and a quick restart), the unit restarted so it
/// is in force, then `kill -STOP` on the main PID: systemd must log the
/// watchdog timeout, kill it and start a new process.
fn watchdog_kills_and_restarts(c: &Container, unit: &str) {
    c.write_file(
        &format!("/etc/systemd/system/{unit}.d/test-watchdog.conf"),
        "[Service]\nWatchdogSec=3\nRestartSec=1\n",
    );
    c.run(&["systemctl", "daemon-reload"]);
    c.expect_ok(
        unit,
        "systemctl restart",
        &c.exec(&["systemctl", "restart", unit]),
    );
    let s = show(c, unit, &["MainPID", "WatchdogUSec", "NRestarts"]);
    assert_eq!(s["WatchdogUSec"], "3s", "{s:?}\n{}", c.diagnostics(unit));
    let (stopped, before) = (s["MainPID"].clone(), s["NRestarts"].parse::<u32>().unwrap());
    let t = Instant::now();
    c.run(&["kill", "-STOP", &stopped]);
    c.wait_for(
        unit,
        "a watchdog kill and restart",
        Duration::from_secs(20),
        || {
            let s = show(c, unit, &["MainPID", "ActiveState", "NRestarts"]);
            s["ActiveState"] == "active"
                && s["MainPID"] != stopped
                && s["MainPID"] != "0"
                && s["NRestarts"].parse::<u32>().unwrap_or(0) > before
        },
    );
    let journal = c.run(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
    assert!(
        journal.contains("Watchdog timeout"),
        "restarted, but not by the watchdog:\n{}",
        c.diagnostics(unit)
    );
    eprintln!(
        "{unit}: watchdog kill and restart after SIGSTOP in {:?}",
        t.elapsed()
    );
    c.run(&[
        "rm",
        &format!("/etc/systemd/system/{unit}.d/test-watchdog.conf"),
    ]);
    c.run(&["systemctl", "daemon-reload"]);
}

/// Re-runs `script` from inside /opt/labship: exit 0, nothing changed, the
/// running `unit` left alone (the same MainPID, and the run says so),
/// `keep` byte for byte.
fn rerun_from_install_dir(c: &Container, script: &str, unit: &str, keep: &[&str]) -> String {
    let before: Vec<Vec<u8>> = keep.iter().map(|p| read(c, p)).collect();
    let out = rerun_unchanged(c, script, unit);
    assert!(
        out.contains("the source is the install directory itself"),
        "{out}"
    );
    for (path, bytes) in keep.iter().zip(before) {
        assert!(
            read(c, path) == bytes,
            "{path} changed by the re-run:\n{out}"
        );
    }
    out
}

/// Runs `script` from /opt/labship on a running `unit` whose files are all
/// as it started with: nothing changed, the same MainPID, and the run says
/// it did not restart.
fn rerun_unchanged(c: &Container, script: &str, unit: &str) -> String {
    let pid = main_pid(c, unit);
    let out = install(c, "/opt/labship", script, unit);
    assert!(
        out.contains(": done: 0 changed,"),
        "the re-run changed something:\n{out}"
    );
    assert!(
        out.contains(&format!("unchanged  {unit} not restarted (MainPID {pid}")),
        "{out}"
    );
    let s = show(c, unit, &["MainPID", "ActiveState", "SubState"]);
    assert_eq!(
        (s["ActiveState"].as_str(), s["SubState"].as_str()),
        ("active", "running"),
        "{out}\n{}",
        c.diagnostics(unit)
    );
    assert_eq!(
        s["MainPID"],
        pid,
        "restarted:\n{out}\n{}",
        c.diagnostics(unit)
    );
    out
}

/// Runs `script` from /opt/labship after `file` changed under the
/// running `unit`: a new MainPID, and the run names the old and new one and
/// `file` (`said`: "changed" or "removed"). Returns the output.
fn rerun_restarts(c: &Container, script: &str, unit: &str, file: &str, said: &str) -> String {
    let pid = main_pid(c, unit);
    let out = install(c, "/opt/labship", script, unit);
    let new = main_pid(c, unit);
    assert!(
        new != pid && new != "0",
        "not restarted:\n{out}\n{}",
        c.diagnostics(unit)
    );
    let want = format!("restarted  {unit}: {file} {said} (MainPID {pid} → {new})");
    assert!(out.contains(&want), "no {want:?} in:\n{out}");
    out
}

fn main_pid(c: &Container, unit: &str) -> String {
    show(c, unit, &["MainPID"])["MainPID"].clone()
}

/// CONTRACT §10: an installer run restarts the running unit only for a
/// changed file it runs from, and says which. In turn: a drop-in written
/// without daemon-reload, an unchanged run (now judged by the stamp of the
/// same process), an edited unit (rewritten by the run), a binary that
/// differs from the running one; a running but disabled unit is
/// try-restarted (a drop-in removed); an enabled stopped one is started.
fn restarts_only_on_change(c: &Container) {
    let (script, unit) = ("install-lab-host.sh", SHIPPER_UNIT);
    let dropin = format!("/etc/systemd/system/{unit}.d/local.conf");
    c.write_file(&dropin, "[Service]\nEnvironment=LABSHIP_LOCAL=1\n");
    let out = rerun_restarts(c, script, unit, &dropin, "changed");
    assert!(out.contains("reloaded   systemd ("), "{out}");

    rerun_unchanged(c, script, unit);

    // A new unit in the source (as a `git pull` brings one): installed, and
    // the running process started with the old one.
    let unit_file = format!("/etc/systemd/system/{unit}");
    c.sh(&format!("echo '# a new line' >> /opt/labship/etc/{unit}"));
    let out = rerun_restarts(c, script, unit, &unit_file, "changed");
    assert!(out.contains(&format!("updated    {unit_file}")), "{out}");

    // The running binary differs from the one installed (the run puts the
    // right one back): restarted, though the installed file ends as it was.
    let bin = "/opt/labship/bin/shipper";
    c.expect_ok(
        unit,
        "another shipper binary",
        &c.sh(&format!(
            "cp {bin} {bin}.x && printf x >> {bin}.x && mv {bin}.x {bin} && systemctl restart {unit}"
        )),
    );
    let out = rerun_restarts(c, script, unit, bin, "changed");
    assert!(out.contains(&format!("updated    {bin}")), "{out}");

    c.expect_ok(
        unit,
        "systemctl disable",
        &c.exec(&["systemctl", "disable", unit]),
    );
    c.run(&["rm", &dropin]);
    let out = rerun_restarts(c, script, unit, &dropin, "removed");
    assert!(out.contains("running, not enabled: try-restart"), "{out}");

    c.expect_ok(
        unit,
        "systemctl enable",
        &c.exec(&["systemctl", "enable", unit]),
    );
    c.expect_ok(
        unit,
        "systemctl stop",
        &c.exec(&["systemctl", "stop", unit]),
    );
    let out = install(c, "/opt/labship", script, unit);
    assert!(
        out.contains(&format!(
            "started    {unit} (enabled, was not running; MainPID"
        )),
        "{out}"
    );
    assert_eq!(
        show(c, unit, &["ActiveState"])["ActiveState"],
        "active",
        "{out}"
    );
    rerun_unchanged(c, script, unit);
}

/// As `user` (setpriv --init-groups: the user's groups from the database),
/// writes episode `id` into episodes/ with umask 002: its data, then, when
/// `finish`, meta.json last by rename.
fn produce(c: &Container, user: &str, id: &str, finish: bool) {
    produce_in(c, DATA_DIR, user, id, finish);
}

/// [`produce`] into the data_dir `data_dir`.
fn produce_in(c: &Container, data_dir: &str, user: &str, id: &str, finish: bool) {
    let mut script = format!(
        "set -e; umask 002; e='{data_dir}/episodes/{id}'; mkdir -p \"$e/data\"; \
         head -c 100000 /dev/urandom > \"$e/data/run-$$.bin\"; "
    );
    if finish {
        script += &format!(
            "printf '{{\"code_version\":{{\"commit\":\"{GOOD_COMMIT}\"}}}}' > \"$e/.meta.tmp\"; \
             mv \"$e/.meta.tmp\" \"$e/meta.json\""
        );
    }
    let out = c.exec_as(user, &["sh", "-c", &script]);
    c.expect_ok(SHIPPER_UNIT, &format!("{user} writes episode {id}"), &out);
}

/// Episode `id` is in the receiver's store and in the host's shipped/.
fn shipped(c: &Container, r: &Receiver, id: &str) -> bool {
    shipped_in(c, DATA_DIR, r, id)
}

/// [`shipped`] from the data_dir `data_dir`.
fn shipped_in(c: &Container, data_dir: &str, r: &Receiver, id: &str) -> bool {
    r.stored(HOST).contains(&format!("{id}.tar.zst"))
        && c.exec(&["test", "-d", &format!("{data_dir}/shipped/{id}")])
            .status
            .success()
}

/// The default data_dir.
const DATA_DIR: &str = "/var/lib/labship";

/// A data_dir outside /var/lib/labship (a space in its name): a re-run
/// creates it and the unit's drop-in `ReadWritePaths="/srv/lab data"`,
/// restarts the shipper (its config changed), which ships from there, and
/// the unit still starts with /var/lib/labship gone (its `-`). Back at the
/// default, the drop-in goes and the shipper ships from there again.
fn data_dir_elsewhere(c: &Container, r: &Receiver, config: &str) {
    let (elsewhere, script) = ("/srv/lab data", "install-lab-host.sh");
    let dropin = "/etc/systemd/system/labship-shipper.service.d/labship-rw-path.conf";
    let default = format!("data_dir = \"{DATA_DIR}\"");
    assert!(config.contains(&default), "{config}");
    c.put_private(
        "/etc/labship/shipper.toml",
        config.replace(&default, &format!("data_dir = '{elsewhere}'")),
    );
    let out = install(c, "/opt/labship", script, SHIPPER_UNIT);
    for want in [
        format!("installed  {dropin}"),
        format!("created    {elsewhere}/episodes/"),
        format!("restarted  {SHIPPER_UNIT}"),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    let written = String::from_utf8_lossy(&read(c, dropin)).into_owned();
    assert!(
        written.ends_with(&format!("[Service]\nReadWritePaths=\"{elsewhere}\"\n")),
        "{written}"
    );
    let ships = |id: &str| {
        produce_in(c, elsewhere, "producer", id, true);
        c.wait_for(
            SHIPPER_UNIT,
            &format!("{id} shipped from {elsewhere}"),
            Duration::from_secs(20),
            || shipped_in(c, elsewhere, r, id),
        );
    };
    ships("ep-elsewhere-1");
    c.run(&["rm", "-rf", DATA_DIR]);
    c.expect_ok(
        SHIPPER_UNIT,
        "systemctl restart without /var/lib/labship",
        &c.exec(&["systemctl", "restart", SHIPPER_UNIT]),
    );
    ships("ep-elsewhere-2");

    c.put_private("/etc/labship/shipper.toml", config);
    let out = install(c, "/opt/labship", script, SHIPPER_UNIT);
    for want in [
        format!("removed    {dropin}"),
        format!("restarted  {SHIPPER_UNIT}"),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    assert!(!c.exec(&["test", "-e", dropin]).status.success(), "{out}");
    produce(c, "producer", "ep-back", true);
    c.wait_for(
        SHIPPER_UNIT,
        "ep-back shipped from /var/lib/labship",
        Duration::from_secs(20),
        || shipped(c, r, "ep-back"),
    );
}

/// CONTRACT §13: a producer can neither read the host's key nor list
/// /etc/labship (permission denied, not a missing file).
fn producer_cannot_read_the_key(c: &Container, user: &str) {
    for args in [
        &["cat", "/etc/labship/client.key"][..],
        &["ls", "/etc/labship"][..],
    ] {
        let out = c.exec_as(user, args);
        assert!(
            !out.status.success() && text(&out).contains("Permission denied"),
            "{user} ran {args:?}: {}\n{}",
            out.status,
            text(&out)
        );
    }
}

#[test]
fn lab_host_installer_under_systemd() {
    if !skip_unless_root_and_nspawn("lab_host_installer_under_systemd") {
        return;
    }
    let t0 = Instant::now();
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = boot(HOST);
    let boot_time = c.boot_time;

    // First install, from the source checkout.
    let out = install(&c, SRC, "install-lab-host.sh", SHIPPER_UNIT);
    for want in [
        "created    user labship",
        "installed  /etc/labship/shipper.toml",
        "created    group labship-producers",
        "user labship: added to group labship-producers",
        "Next steps:",
        "usermod -aG labship-producers <user>",
        "systemctl enable --now labship-shipper.service",
        "/opt/labship/bin/doctor",
        "disabled   labship-shipper.service",
    ] {
        assert!(out.contains(want), "first install: no {want:?} in:\n{out}");
    }
    let passwd = c.run(&["getent", "passwd", "labship"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(
        (fields[5], fields[6]),
        ("/var/lib/labship", "/usr/sbin/nologin"),
        "{passwd}"
    );
    assert!(
        fields[2].parse::<u32>().unwrap() < 1000,
        "not a system user: {passwd}"
    );
    assert_eq!(c.run(&["id", "-gn", "labship"]).trim(), "labship");
    assert_eq!(
        c.run(&["id", "-Gn", "labship"]).trim(),
        "labship labship-producers"
    );
    for (path, want) in [
        ("/etc/labship", "750 root labship"),
        ("/etc/labship/shipper.toml", "640 root labship"),
        ("/var/lib/labship", "751 labship labship"),
        (
            "/var/lib/labship/episodes",
            "2770 labship labship-producers",
        ),
        ("/var/lib/labship/outbox", "750 labship labship"),
        ("/var/lib/labship/shipped", "750 labship labship"),
        ("/var/lib/labship/quarantine", "750 labship labship"),
        ("/var/lib/labship/state", "750 labship labship"),
        ("/opt/labship/bin", "755 root root"),
        ("/opt/labship/bin/shipper", "755 root root"),
        ("/opt/labship/bin/doctor", "755 root root"),
        ("/opt/labship/bin/quarantine-unstamped", "755 root root"),
        ("/opt/labship/scripts/install-lab-host.sh", "755 root root"),
        (
            "/etc/systemd/system/labship-shipper.service",
            "644 root root",
        ),
    ] {
        assert_eq!(c.stat(path), want, "{path}\n{out}");
    }
    let repo = repo_root();
    assert!(
        read(&c, "/etc/labship/shipper.toml")
            == std::fs::read(repo.join("etc/shipper.toml.example")).unwrap()
    );
    assert!(
        read(&c, "/etc/systemd/system/labship-shipper.service")
            == std::fs::read(repo.join("etc").join(SHIPPER_UNIT)).unwrap()
    );
    for absent in [
        "/opt/labship/target",
        "/opt/labship/.git",
        "/opt/labship/.dev",
    ] {
        assert!(
            !c.exec(&["test", "-e", absent]).status.success(),
            "{absent} was synced:\n{out}"
        );
    }
    let enabled = c.exec(&["systemctl", "is-enabled", SHIPPER_UNIT]);
    assert_eq!(
        text(&enabled).trim(),
        "disabled",
        "the installer enabled the unit"
    );
    verify(&c, SHIPPER_UNIT);
    let score = exposure(&c, SHIPPER_UNIT);
    assert!(score <= 5.0, "exposure {score}");

    // The operator's part: certificates, config, enable --now.
    let client = env.pki.client(HOST);
    c.put_private("/etc/labship/ca.pem", env.pki.ca_pem.as_bytes());
    c.put_private("/etc/labship/client.pem", client.cert_pem.as_bytes());
    c.put_private("/etc/labship/client.key", client.key_pem.as_bytes());
    let config = labship_tests::lab_host::ShipperConfig::new(&r.url).to_toml();
    c.put_private("/etc/labship/shipper.toml", config.as_bytes());
    c.expect_ok(
        SHIPPER_UNIT,
        "systemctl enable --now",
        &c.exec(&["systemctl", "enable", "--now", SHIPPER_UNIT]),
    );

    // A producer in labship-producers (only) writes an episode (umask 002,
    // meta.json last, by rename); it ships. It cannot read the host's key.
    c.run(&["useradd", "--user-group", "--no-create-home", "producer"]);
    c.run(&["usermod", "-aG", "labship-producers", "producer"]);
    assert_eq!(
        c.run(&["id", "-Gn", "producer"]).trim(),
        "producer labship-producers"
    );
    producer_cannot_read_the_key(&c, "producer");
    let produce = |id: &str| produce(&c, "producer", id, true);
    let shipped = |id: &str| shipped(&c, &r, id);
    produce("ep-1");
    c.wait_for(
        SHIPPER_UNIT,
        "ep-1 shipped",
        Duration::from_secs(20),
        || shipped("ep-1"),
    );
    // setgid: the producer's episode belongs to labship-producers.
    assert_eq!(
        c.stat("/var/lib/labship/shipped/ep-1"),
        "2775 producer labship-producers"
    );

    // The watchdog: a stopped shipper is killed and restarted, and ships.
    watchdog_kills_and_restarts(&c, SHIPPER_UNIT);
    produce("ep-2");
    c.wait_for(
        SHIPPER_UNIT,
        "ep-2 shipped after the restart",
        Duration::from_secs(20),
        || shipped("ep-2"),
    );

    // The upgrade path: cd /opt/labship && ./scripts/install-lab-host.sh.
    let out = rerun_from_install_dir(
        &c,
        "install-lab-host.sh",
        SHIPPER_UNIT,
        &["/etc/labship/shipper.toml", "/etc/labship/client.key"],
    );
    // With a valid config, quarantine-unstamped ran (as labship) this time.
    assert!(
        out.contains(
            "ran        quarantine-unstamped --config /etc/labship/shipper.toml (as labship)"
        ),
        "{out}"
    );
    assert!(!out.contains("Next steps"), "not a first install:\n{out}");
    restarts_only_on_change(&c);
    produce("ep-3");
    c.wait_for(
        SHIPPER_UNIT,
        "ep-3 shipped after the re-run",
        Duration::from_secs(20),
        || shipped("ep-3"),
    );
    data_dir_elsewhere(&c, &r, &config);
    let shutdown = c.shutdown();
    eprintln!(
        "lab host: boot {boot_time:?}, shutdown {shutdown:?}, exposure {score}, whole test {:?}",
        t0.elapsed()
    );
}

/// An install from before labship-producers (CONTRACT §13): `episodes/` in
/// group labship, the producers in group labship (so they could read the
/// key), a unit without `SupplementaryGroups=`; running and shipping. The
/// installer creates the group, regroups episodes/ and what is in it, moves
/// each producer (printing each change); the producers lose the key, keep
/// writing, and an episode begun before the migration finishes after it. A
/// second run changes nothing.
#[test]
fn lab_host_installer_migrates_an_old_install() {
    if !skip_unless_root_and_nspawn("lab_host_installer_migrates_an_old_install") {
        return;
    }
    let t0 = Instant::now();
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let c = boot(HOST);
    install(&c, SRC, "install-lab-host.sh", SHIPPER_UNIT);
    let client = env.pki.client(HOST);
    c.put_private("/etc/labship/ca.pem", env.pki.ca_pem.as_bytes());
    c.put_private("/etc/labship/client.pem", client.cert_pem.as_bytes());
    c.put_private("/etc/labship/client.key", client.key_pem.as_bytes());
    let config = labship_tests::lab_host::ShipperConfig::new(&r.url).to_toml();
    c.put_private("/etc/labship/shipper.toml", config.as_bytes());

    // Back to the old layout.
    let unit = format!("/etc/systemd/system/{SHIPPER_UNIT}");
    c.run(&["sed", "-i", "/^SupplementaryGroups=/d", &unit]);
    c.run(&["groupdel", "labship-producers"]);
    c.run(&["chmod", "0750", "/var/lib/labship"]);
    c.run(&["chgrp", "labship", "/var/lib/labship/episodes"]);
    c.run(&["chmod", "2770", "/var/lib/labship/episodes"]);
    for user in ["producer", "alice"] {
        c.run(&["useradd", "--user-group", "--no-create-home", user]);
        c.run(&["usermod", "-aG", "labship", user]);
    }
    // A user whose primary group is labship: named, not changed.
    c.run(&["useradd", "--gid", "labship", "--no-create-home", "bob"]);
    assert_eq!(c.stat("/var/lib/labship/episodes"), "2770 labship labship");
    c.expect_ok(
        SHIPPER_UNIT,
        "enable --now (old layout)",
        &c.exec(&["systemctl", "enable", "--now", SHIPPER_UNIT]),
    );
    produce(&c, "producer", "old-1", true);
    c.wait_for(
        SHIPPER_UNIT,
        "old-1 shipped",
        Duration::from_secs(20),
        || shipped(&c, &r, "old-1"),
    );
    // The hole being closed: a producer in labship reads the key.
    assert!(
        c.exec_as("producer", &["cat", "/etc/labship/client.key"])
            .status
            .success()
    );
    // Begun before the migration, finished after it.
    produce(&c, "alice", "wip", false);
    assert_eq!(
        c.stat("/var/lib/labship/episodes/wip"),
        "2775 alice labship"
    );

    let out = c.exec(&[
        "sh",
        "-c",
        &format!("cd {SRC} && ./scripts/install-lab-host.sh --bin-dir {BINS}"),
    ]);
    c.expect_ok(SHIPPER_UNIT, "the migrating run", &out);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("the migrating run:\n{stdout}{stderr}");
    for want in [
        "created    group labship-producers",
        "user labship: added to group labship-producers",
        "migrating  /var/lib/labship/episodes: from group labship to labship-producers",
        "entries from group labship to labship-producers",
        "user producer: added to group labship-producers",
        "user producer: removed from group labship",
        "user alice: added to group labship-producers",
        "user alice: removed from group labship",
        "updated    /var/lib/labship/ (mode 0750→0751)",
        "updated    /var/lib/labship/episodes/ (owner",
        "updated    /etc/systemd/system/labship-shipper.service",
        "restarted  labship-shipper.service",
        "must log in again",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}{stderr}");
    }
    assert!(
        stderr.contains("WARNING    user bob has labship as its primary group"),
        "{stdout}{stderr}"
    );
    for user in ["producer", "alice"] {
        assert_eq!(
            c.run(&["id", "-Gn", user]).trim(),
            format!("{user} labship-producers")
        );
        producer_cannot_read_the_key(&c, user);
    }
    assert_eq!(
        c.run(&["getent", "group", "labship"]).trim(),
        format!("labship:x:{}:", c.run(&["id", "-g", "labship"]).trim()),
        "labship has no member left"
    );
    for (path, want) in [
        (
            "/var/lib/labship/episodes",
            "2770 labship labship-producers",
        ),
        (
            "/var/lib/labship/episodes/wip",
            "2775 alice labship-producers",
        ),
        (
            "/var/lib/labship/episodes/wip/data",
            "2775 alice labship-producers",
        ),
        // The shipper's own directories keep their group.
        ("/var/lib/labship/shipped/old-1", "2775 producer labship"),
    ] {
        assert_eq!(c.stat(path), want, "{path}\n{stdout}");
    }
    // The producers keep shipping through the new group.
    produce(&c, "alice", "wip", true);
    produce(&c, "producer", "new-1", true);
    c.wait_for(
        SHIPPER_UNIT,
        "wip and new-1 shipped after the migration",
        Duration::from_secs(20),
        || shipped(&c, &r, "wip") && shipped(&c, &r, "new-1"),
    );

    let again = install(&c, SRC, "install-lab-host.sh", SHIPPER_UNIT);
    assert!(
        again.contains(": done: 0 changed,") && !again.contains("migrating"),
        "the second run changed something:\n{again}"
    );
    eprintln!("migration: whole test {:?}", t0.elapsed());
}

#[test]
fn receiver_installer_under_systemd() {
    if !skip_unless_root_and_nspawn("receiver_installer_under_systemd") {
        return;
    }
    let t0 = Instant::now();
    let env = TestEnv::new();
    let c = boot("receiver-01");
    let boot_time = c.boot_time;

    let out = install(&c, SRC, "install-receiver.sh", RECEIVER_UNIT);
    for want in [
        "created    user labship",
        "installed  /etc/labship/receiver.toml",
        "installed  /etc/labship/allowed-commits",
        "Next steps:",
        "systemctl enable --now labship-receiver.service",
        "disabled   labship-receiver.service",
    ] {
        assert!(out.contains(want), "first install: no {want:?} in:\n{out}");
    }
    for (path, want) in [
        ("/etc/labship", "750 root labship"),
        ("/etc/labship/receiver.toml", "640 root labship"),
        ("/etc/labship/allowed-commits", "640 root labship"),
        ("/var/lib/labship-receiver", "750 labship labship"),
        ("/var/lib/labship-receiver/episodes", "750 labship labship"),
        ("/opt/labship/bin/receiver", "755 root root"),
        (
            "/etc/systemd/system/labship-receiver.service",
            "644 root root",
        ),
    ] {
        assert_eq!(c.stat(path), want, "{path}\n{out}");
    }
    let repo = repo_root();
    for (inside, example) in [
        ("/etc/labship/receiver.toml", "etc/receiver.toml.example"),
        (
            "/etc/labship/allowed-commits",
            "etc/allowed-commits.example",
        ),
        (
            "/etc/systemd/system/labship-receiver.service",
            "etc/labship-receiver.service",
        ),
    ] {
        assert!(
            read(&c, inside) == std::fs::read(repo.join(example)).unwrap(),
            "{inside}"
        );
    }
    verify(&c, RECEIVER_UNIT);
    let score = exposure(&c, RECEIVER_UNIT);
    assert!(score <= 5.0, "exposure {score}");

    // The operator's part. The container shares the host's network, so the
    // receiver listens on the host's 127.0.0.1.
    let (port, ops_port) = (free_port(), free_port());
    c.put_private("/etc/labship/ca.pem", env.pki.ca_pem.as_bytes());
    c.put_private(
        "/etc/labship/receiver.pem",
        env.pki.server.cert_pem.as_bytes(),
    );
    c.put_private(
        "/etc/labship/receiver.key",
        env.pki.server.key_pem.as_bytes(),
    );
    c.put_private(
        "/etc/labship/allowed-commits",
        format!("# accepted\n{GOOD_COMMIT}\n").as_bytes(),
    );
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\n[tls]\ncert_file = \"/etc/labship/receiver.pem\"\n\
         key_file = \"/etc/labship/receiver.key\"\nclient_ca_file = \"/etc/labship/ca.pem\"\n\n\
         [storage]\ndir = \"/var/lib/labship-receiver/episodes\"\n\n\
         [ops]\nlisten = \"127.0.0.1:{ops_port}\"\n"
    );
    c.put_private("/etc/labship/receiver.toml", config.as_bytes());
    c.expect_ok(
        RECEIVER_UNIT,
        "systemctl enable --now",
        &c.exec(&["systemctl", "enable", "--now", RECEIVER_UNIT]),
    );
    // Type=notify: active when `systemctl start` returned, so it answers now.
    let health = http_get(([127, 0, 0, 1], ops_port).into(), "/healthz").unwrap_or_default();
    assert!(
        health.starts_with("HTTP/1.1 200"),
        "{health}\n{}",
        c.diagnostics(RECEIVER_UNIT)
    );
    let s = show(&c, RECEIVER_UNIT, &["User", "StatusText", "WatchdogUSec"]);
    assert_eq!(s["User"], "labship");
    assert_eq!(s["WatchdogUSec"], "1min");
    assert!(s["StatusText"].starts_with("serving on"), "{s:?}");

    // A lab host on the host side pings it and ships one episode into the
    // hardened store.
    let url = format!("https://127.0.0.1:{port}");
    let client = env.pki.client(HOST);
    let data = env.path().join("lab");
    write_episode(
        &data.join("episodes"),
        "ep-1",
        Some(GOOD_COMMIT),
        &[("d.bin", &noise(50_000, 7))],
    );
    let cfg = env.file("shipper.toml");
    std::fs::write(
        &cfg,
        shipper_toml(&env, HOST, &url, &data, &client, "settle_s = 0\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let ping = |what: &str| {
        let (code, stdout, stderr) = run("shipper", &["--config", cfg, "--ping"]);
        assert_eq!(
            code,
            0,
            "{what}: shipper --ping: {stdout}{stderr}\n{}",
            c.diagnostics(RECEIVER_UNIT)
        );
    };
    ping("after enable --now");
    let (code, stdout, stderr) = run("shipper", &["--config", cfg, "--once"]);
    assert_eq!(
        code,
        0,
        "shipper --once: {stdout}{stderr}\n{}",
        c.diagnostics(RECEIVER_UNIT)
    );
    let archive = format!("/var/lib/labship-receiver/episodes/{HOST}/ep-1.tar.zst");
    assert_eq!(
        c.stat(&archive),
        "640 labship labship",
        "UMask=0027 for archives"
    );
    assert_eq!(
        c.stat("/var/lib/labship-receiver/audit.jsonl"),
        "640 labship labship"
    );

    watchdog_kills_and_restarts(&c, RECEIVER_UNIT);
    ping("after the watchdog restart");

    let out = rerun_from_install_dir(
        &c,
        "install-receiver.sh",
        RECEIVER_UNIT,
        &[
            "/etc/labship/receiver.toml",
            "/etc/labship/allowed-commits",
            "/etc/labship/receiver.key",
        ],
    );
    assert!(!out.contains("Next steps"), "not a first install:\n{out}");
    ping("after the re-run");
    let shutdown = c.shutdown();
    eprintln!(
        "receiver: boot {boot_time:?}, shutdown {shutdown:?}, exposure {score}, whole test {:?}",
        t0.elapsed()
    );
}

/// Every entry under `root`: path, type, mode, owner, size, SHA-256 (files),
/// target (symlinks); one line each, sorted.
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let head = format!("{rel} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{head} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{head} dir"));
                walk(root, &p, out);
            } else {
                let hash = Sha256::digest(std::fs::read(&p).unwrap());
                out.push(format!("{head} {} {hash:x}", m.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Copies the source tree `from` to `to`, without `target/`, `.git` and `.dev/`.
fn copy_source(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        // Build output at any depth (fuzz/target holds gigabytes after a
        // fuzzing run) and the local SeaweedFS venv are not source.
        if name == "target"
            || (from == repo_root() && (name == ".git" || name == ".dev" || name == ".venv-s3"))
        {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_source(&src, &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Small stand-ins for the binaries in `<src>/bins`: the tests of `--root`
/// are about the tree, and the real ones may be rebuilt meanwhile (and take
/// long to hash). The shipper's execs the real one: the installer asks it
/// for data_dir (`--check-config --print data_dir`).
fn stand_in_binaries(src: &Path) {
    for name in ["shipper", "doctor", "quarantine-unstamped", "receiver"] {
        let p = src.join("bins").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let body = if name == "shipper" {
            format!("#!/bin/sh\nexec {:?} \"$@\"\n", bin_dir().join("shipper"))
        } else {
            format!("#!/bin/sh\necho {name}\n")
        };
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

/// Runs `<src>/scripts/<script> --root <root> --bin-dir <src>/bins` on the
/// host; asserts exit 0.
fn install_root(src: &Path, script: &str, root: &Path) -> String {
    let out = std::process::Command::new(src.join("scripts").join(script))
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(src.join("bins"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} --root {}:\n{}",
        root.display(),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The upgrade command `cd /opt/labship && git pull && sudo
/// ./scripts/install-lab-host.sh` on a checkout the operator owns: the run
/// from inside it leaves the checkout's owner and mode alone (made root's,
/// the next `git pull` would be refused for "dubious ownership").
#[test]
fn a_checkout_that_is_the_install_dir_keeps_its_owner() {
    if !rustix::process::geteuid().is_root() {
        labship_tests::skip(
            "a_checkout_that_is_the_install_dir_keeps_its_owner",
            "needs root (a checkout owned by another user)",
        );
        return;
    }
    let env = TestEnv::new();
    let root = env.path().join("root");
    let checkout = root.join("opt/labship");
    copy_source(&repo_root(), &checkout);
    stand_in_binaries(&checkout);
    std::os::unix::fs::chown(&checkout, Some(4321), Some(4321)).unwrap();
    std::fs::set_permissions(
        &checkout,
        std::os::unix::fs::PermissionsExt::from_mode(0o775),
    )
    .unwrap();
    let out = install_root(&checkout, "install-lab-host.sh", &root);
    assert!(
        out.contains("the source is the install directory itself"),
        "{out}"
    );
    let meta = std::fs::metadata(&checkout).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (4321, 4321, 0o775),
        "{out}"
    );
    assert!(checkout.join("bin/shipper").is_file(), "{out}");
}

/// Without `--bin-dir` the installer builds in the synced copy, which has no
/// `.git`: it hands the build the source checkout's commit as
/// `LABSHIP_COMMIT`, so `--version` and `labship_build_info` do not say
/// `unknown`. `cargo` here is a stand-in on PATH that records what it was
/// given and leaves the binaries a build would (the installer is the thing
/// under test, not the compiler).
#[test]
fn a_build_from_a_checkout_is_given_its_commit() {
    let env = TestEnv::new();
    let src = env.path().join("src");
    copy_source(&repo_root(), &src);
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org", "-C"])
            .arg(&src)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "a checkout"]);
    let head = git(&["rev-parse", "HEAD"]);
    let fake = env.path().join("fake-bin");
    std::fs::create_dir_all(&fake).unwrap();
    let said = env.path().join("cargo-was-given");
    let shipper = bin_dir().join("shipper");
    std::fs::write(
        fake.join("cargo"),
        format!(
            "#!/bin/sh\nprintf '%s %s\\n' \"$LABSHIP_COMMIT\" \"$*\" > {said:?}\n\
             mkdir -p target/release\n\
             printf '#!/bin/sh\\nexec %s \"$@\"\\n' {shipper:?} > target/release/shipper\n\
             for n in doctor quarantine-unstamped; do echo '#!/bin/sh' > target/release/$n; done\n\
             chmod 755 target/release/*\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        fake.join("cargo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = env.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let out = std::process::Command::new(src.join("scripts/install-lab-host.sh"))
        .arg("--root")
        .arg(&root)
        .env("PATH", path)
        .env_remove("LABSHIP_COMMIT")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let given = std::fs::read_to_string(&said).unwrap();
    assert_eq!(
        given.trim(),
        format!(
            "{head} build --release --locked --bin shipper --bin doctor --bin quarantine-unstamped"
        ),
        "{}",
        text(&out)
    );
    assert!(root.join("opt/labship/bin/shipper").is_file());
}

#[test]
fn root_runs_give_identical_trees_and_touch_nothing_outside() {
    let t0 = Instant::now();
    let env = TestEnv::new();
    // A still copy of the source (the worktree may change meanwhile), with
    // build output, VCS data and dev scratch that must not be installed.
    let src = env.path().join("src");
    copy_source(&repo_root(), &src);
    for junk in [
        "target/release/shipper",
        ".git/HEAD",
        ".dev/quickstart/ca.key",
    ] {
        std::fs::create_dir_all(src.join(junk).parent().unwrap()).unwrap();
        std::fs::write(src.join(junk), "not to be installed").unwrap();
    }
    stand_in_binaries(&src);
    let sandbox = env.path().join("sandbox");
    let (a, b) = (sandbox.join("a"), sandbox.join("b"));
    // An image that already has the service user: as root, the installer
    // takes its ids from DIR/etc/{passwd,group} (never from the host's).
    for root in [&a, &b] {
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nlabship:x:4242:4242::/var/lib/labship:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nlabship:x:4242:\nlabship-producers:x:4243:labship\n",
        )
        .unwrap();
    }
    let host_files = [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        "/etc/labship",
        "/opt/labship",
        "/var/lib/labship",
        "/var/lib/labship-receiver",
        "/etc/systemd/system/labship-shipper.service",
        "/etc/systemd/system/labship-receiver.service",
    ];
    let snapshot = || -> Vec<String> {
        host_files
            .iter()
            .map(|p| match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_file() => format!(
                    "{p} {:x} {:o}",
                    Sha256::digest(std::fs::read(p).unwrap_or_default()),
                    m.mode()
                ),
                Ok(m) => format!("{p} {:o} mtime {}", m.mode(), m.mtime()),
                Err(_) => format!("{p} absent"),
            })
            .collect()
    };
    let host_before = snapshot();

    let scripts = ["install-lab-host.sh", "install-receiver.sh"];
    let mut first = Vec::new();
    for script in scripts {
        first.push(install_root(&src, script, &a));
    }
    for script in scripts {
        install_root(&src, script, &b);
    }
    let tree_a = listing(&a);
    assert_eq!(tree_a, listing(&b), "two --root installs differ");
    // Both roots and nothing else in the sandbox.
    let mut names: Vec<_> = std::fs::read_dir(&sandbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);

    // Second runs: no changes reported, none made.
    for script in scripts {
        let out = install_root(&src, script, &a);
        assert!(
            out.contains(": done: 0 changed,"),
            "second --root run changed something:\n{out}"
        );
        assert!(!out.contains("Next steps"), "{out}");
    }
    assert_eq!(
        listing(&a),
        tree_a,
        "the second --root run changed the tree"
    );
    assert_eq!(snapshot(), host_before, "a --root install touched the host");

    let lab = &first[0];
    for want in [
        "skipped    user and group labship (--root",
        "skipped    group labship-producers (--root",
        "skipped    systemctl daemon-reload",
        "skipped    quarantine-unstamped (--root",
        "skipped    restart of labship-shipper.service",
    ] {
        assert!(lab.contains(want), "no {want:?} in:\n{lab}");
    }
    let line = |rel: &str| -> String {
        tree_a
            .iter()
            .find(|l| l.split(' ').next() == Some(rel))
            .unwrap_or_else(|| panic!("{rel} not installed:\n{}", tree_a.join("\n")))
            .clone()
    };
    if rustix::process::geteuid().is_root() {
        for (rel, want) in [
            ("etc/labship", "750 0:4242 dir"),
            ("var/lib/labship", "751 4242:4242 dir"),
            ("var/lib/labship/episodes", "2770 4242:4243 dir"),
            ("var/lib/labship/state", "750 4242:4242 dir"),
            ("var/lib/labship-receiver/episodes", "750 4242:4242 dir"),
            ("opt/labship/bin", "755 0:0 dir"),
        ] {
            assert_eq!(line(rel), format!("{rel} {want}"));
        }
        assert!(
            line("etc/labship/shipper.toml").starts_with("etc/labship/shipper.toml 640 0:4242 ")
        );
    }
    assert!(line("opt/labship/bin/shipper").starts_with("opt/labship/bin/shipper 755 "));
    assert!(line("etc/systemd/system/labship-receiver.service").contains(" 644 "));
    let synced_junk: Vec<&String> = tree_a
        .iter()
        .filter(|l| {
            let path = l.split(' ').next().unwrap_or("");
            ["target", ".git", ".dev"].iter().any(|junk| {
                let top = format!("opt/labship/{junk}");
                path == top || path.starts_with(&format!("{top}/"))
            })
        })
        .collect();
    assert!(synced_junk.is_empty(), "synced: {synced_junk:?}");
    eprintln!(
        "--root: {} entries, whole test {:?}",
        tree_a.len(),
        t0.elapsed()
    );
}

/// `--root`: data_dir comes from the installed shipper's reading of the
/// config (`--check-config --print data_dir`), not from a line regex: a
/// literal string and `[receiver]` as an inline table (the certificates
/// absent, so the config is invalid but readable); an old `episodes/` in
/// group labship is regrouped with what is in it (as root); a config that is
/// not TOML skips the data_dir step, says why, and the run still exits 0.
#[test]
fn root_install_reads_data_dir_through_the_shipper() {
    let env = TestEnv::new();
    let src = env.path().join("src");
    copy_source(&repo_root(), &src);
    stand_in_binaries(&src);
    let root = env.path().join("root");
    std::fs::create_dir_all(root.join("etc/labship")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nlabship:x:4242:4242::/var/lib/labship:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nlabship:x:4242:\nlabship-producers:x:4243:labship\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/labship/shipper.toml"),
        "host_id = 'lab-01'\ndata_dir = '/srv/lab data'   # a literal string\n\
         receiver = { url = \"https://r.example.org:8443\", cert_file = 'client.pem', key_file = 'client.key' }\n",
    )
    .unwrap();
    let as_root = rustix::process::geteuid().is_root();
    // An episodes/ from before labship-producers (group labship), with an
    // episode in it.
    let old = root.join("srv/lab data/episodes/ep-1/data");
    std::fs::create_dir_all(&old).unwrap();
    if as_root {
        for p in [
            &old,
            old.parent().unwrap(),
            &root.join("srv/lab data/episodes"),
        ] {
            std::os::unix::fs::lchown(p, Some(4242), Some(4242)).unwrap();
        }
    }
    let out = install_root(&src, "install-lab-host.sh", &root);
    let dropin = root.join("etc/systemd/system/labship-shipper.service.d/labship-rw-path.conf");
    for want in [
        "kept       ",
        "/srv/lab data/episodes/ (",
        &format!("installed  {}", dropin.display()),
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    for sub in ["episodes", "outbox", "shipped", "quarantine", "state"] {
        assert!(
            root.join("srv/lab data").join(sub).is_dir(),
            "{sub}:\n{out}"
        );
    }
    assert!(!root.join("var/lib/labship").exists(), "{out}");
    if as_root {
        assert!(out.contains("migrating  "), "{out}");
        assert!(
            out.contains("skipped    members of group labship (--root"),
            "{out}"
        );
        let tree = listing(&root);
        for want in [
            "srv/lab data/episodes 2770 4242:4243 dir",
            "srv/lab data/episodes/ep-1 755 4242:4243 dir",
            "srv/lab data/episodes/ep-1/data 755 4242:4243 dir",
        ] {
            assert!(
                tree.iter().any(|l| l == want),
                "no {want:?} in:\n{}\n{out}",
                tree.join("\n")
            );
        }
    }
    let again = install_root(&src, "install-lab-host.sh", &root);
    assert!(again.contains(": done: 0 changed,"), "{again}");
    assert!(!again.contains("migrating"), "{again}");
    assert!(
        std::fs::read_to_string(&dropin)
            .unwrap()
            .ends_with("[Service]\nReadWritePaths=\"/srv/lab data\"\n"),
        "{again}"
    );
    // Back at the default: the drop-in goes.
    std::fs::write(
        root.join("etc/labship/shipper.toml"),
        "host_id = 'lab-01'\ndata_dir = '/var/lib/labship'\n",
    )
    .unwrap();
    let back = install_root(&src, "install-lab-host.sh", &root);
    assert!(
        back.contains(&format!("removed    {}", dropin.display())) && !dropin.exists(),
        "{back}"
    );

    // Not TOML: the data_dir step is skipped with the parser's message.
    std::fs::write(
        root.join("etc/labship/shipper.toml"),
        "data_dir = '/srv/elsewhere'\n[receiver\n",
    )
    .unwrap();
    let out = std::process::Command::new(src.join("scripts/install-lab-host.sh"))
        .arg("--root")
        .arg(&root)
        .arg("--bin-dir")
        .arg(src.join("bins"))
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(
            "skipped    data_dir and its directories: /etc/labship/shipper.toml is not TOML"
        ) && all.contains("invalid: ")
            && all.contains("Fix /etc/labship/shipper.toml"),
        "{all}"
    );
    assert!(!root.join("srv/elsewhere").exists(), "{all}");
}
