//! The `.deb` packages (CONTRACT §12) under a real systemd with a real dpkg:
//! the machine's root under an overlay ([`OverlayRoot`]) booted with
//! systemd-nspawn, the packages from `target/debian/` (scripts/build-debs.sh;
//! scripts/test.sh builds them first). Install, configure, enable and ship an
//! episode; an upgrade restarts the enabled unit and keeps an edited config;
//! remove keeps configs and data; purge removes the configs and the
//! shipper's state but keeps every episode. The receiver's package installs
//! and starts with a valid config. lintian finds no error but the justified
//! ones, and two builds of one commit are byte-identical.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::lab_host::{HOST, ShipperConfig};
use labship_tests::nspawn::{
    Container, Options, OverlayRoot, SHIPPER_UNIT, repo_root, skip_unless_root_and_nspawn, text,
};
use labship_tests::process::{Receiver, run};
use labship_tests::{GOOD_COMMIT, TestEnv};
use std::path::PathBuf;
use std::time::Duration;

const RECEIVER_UNIT: &str = "labship-receiver.service";

/// `target/debian/<package>_*.deb`, with the command that builds it when absent.
fn deb(package: &str) -> PathBuf {
    let dir = repo_root().join("target/debian");
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {package}_*.deb in {}, found {found:?}: run scripts/build-debs.sh (scripts/test.sh does)",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

fn boot(overlay: &OverlayRoot) -> Container {
    Container::boot(
        Options::bare()
            .overlay(overlay)
            .bind_ro(&repo_root().join("target/debian"), "/debs"),
    )
}

fn exists(c: &Container, path: &str) -> bool {
    c.exec(&["test", "-e", path]).status.success()
}

/// What a query such as `systemctl is-enabled` prints; its exit code only
/// repeats the answer.
fn answer(c: &Container, args: &[&str]) -> String {
    String::from_utf8_lossy(&c.exec(args).stdout)
        .trim()
        .to_owned()
}

fn main_pid(c: &Container, unit: &str) -> String {
    c.run(&["systemctl", "show", "-p", "MainPID", "--value", unit])
        .trim()
        .to_owned()
}

#[test]
fn shipper_package_installs_ships_upgrades_removes_and_purges() {
    let test = "shipper_package_installs_ships_upgrades_removes_and_purges";
    if !skip_unless_root_and_nspawn(test) {
        return;
    }
    let pkg = deb("labship-shipper");
    let file = format!("/debs/{}", pkg.file_name().unwrap().to_str().unwrap());
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let overlay = OverlayRoot::mount();
    let c = boot(&overlay);

    // Install: what the installer does, from the package's postinst.
    let out = c.expect_ok(SHIPPER_UNIT, "dpkg -i", &c.exec(&["dpkg", "-i", &file]));
    for want in [
        "created    user labship",
        "installed  /etc/labship/shipper.toml",
        "Next steps:",
        "systemctl enable --now labship-shipper.service",
    ] {
        assert!(out.contains(want), "dpkg -i: no {want:?} in:\n{out}");
    }
    for (path, want) in [
        ("/opt/labship/bin/shipper", "755 root root"),
        ("/opt/labship/bin/doctor", "755 root root"),
        ("/opt/labship/bin/quarantine-unstamped", "755 root root"),
        (
            "/lib/systemd/system/labship-shipper.service",
            "644 root root",
        ),
        ("/etc/labship", "750 root labship"),
        ("/etc/labship/shipper.toml", "640 root labship"),
        ("/var/lib/labship", "751 labship labship"),
        (
            "/var/lib/labship/episodes",
            "2770 labship labship-producers",
        ),
        ("/var/lib/labship/outbox", "750 labship labship"),
        ("/var/lib/labship/state", "750 labship labship"),
        ("/usr/share/man/man1/shipper.1.gz", "644 root root"),
        ("/usr/share/man/man1/doctor.1.gz", "644 root root"),
        (
            "/usr/share/bash-completion/completions/shipper",
            "644 root root",
        ),
        ("/usr/share/zsh/vendor-completions/_doctor", "644 root root"),
        ("/usr/share/doc/labship-shipper/copyright", "644 root root"),
    ] {
        assert_eq!(c.stat(path), want, "{path}\n{out}");
    }
    // The shipper reads what producers write through their group (CONTRACT §13).
    assert!(
        c.run(&["id", "-nG", "labship"])
            .split_whitespace()
            .any(|g| g == "labship-producers"),
        "labship is in labship-producers"
    );
    let man = c.run(&["sh", "-c", "zcat /usr/share/man/man1/shipper.1.gz"]);
    assert!(
        man.contains(".TH shipper 1") && man.contains("\\-\\-once"),
        "{man}"
    );
    let version = c.run(&["dpkg-query", "-W", "-f", "${Version}", "labship-shipper"]);
    let commit = String::from_utf8_lossy(
        &std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo_root())
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    assert!(
        version.ends_with(&format!(".g{commit}")),
        "the version carries the commit {commit}: {version}"
    );
    assert_eq!(
        answer(&c, &["systemctl", "is-enabled", SHIPPER_UNIT]),
        "disabled",
        "the package enables nothing"
    );

    // The operator's part, then an episode shipped by the packaged daemon.
    let client = env.pki.client(HOST);
    c.put_private("/etc/labship/ca.pem", &env.pki.ca_pem);
    c.put_private("/etc/labship/client.pem", &client.cert_pem);
    c.put_private("/etc/labship/client.key", &client.key_pem);
    let config = format!(
        "# edited by the operator\n{}",
        ShipperConfig::new(&r.url).to_toml()
    );
    c.put_private("/etc/labship/shipper.toml", &config);
    c.expect_ok(
        SHIPPER_UNIT,
        "enable --now",
        &c.exec(&["systemctl", "enable", "--now", SHIPPER_UNIT]),
    );
    produce(&c, "ep-1");
    c.wait_for(
        SHIPPER_UNIT,
        "ep-1 shipped",
        Duration::from_secs(60),
        || exists(&c, "/var/lib/labship/shipped/ep-1"),
    );
    assert_eq!(r.stored(HOST), ["ep-1.json", "ep-1.tar.zst"]);

    // An upgrade to a later version (the same package repacked with a
    // higher version: dpkg runs the old prerm `upgrade`, then the new
    // postinst `configure <old>`): the enabled unit is restarted on the new
    // files, the edited config kept.
    let next = bumped(&pkg, &env.path().join("next"));
    std::fs::copy(&next, c.root().join("root/next.deb")).unwrap();
    let before = main_pid(&c, SHIPPER_UNIT);
    let out = c.expect_ok(
        SHIPPER_UNIT,
        "dpkg -i (upgrade)",
        &c.exec(&["dpkg", "-i", "/root/next.deb"]),
    );
    assert!(out.contains("restarted  labship-shipper.service"), "{out}");
    assert_eq!(
        c.run(&["dpkg-query", "-W", "-f", "${Version}", "labship-shipper"]),
        format!("{version}.1"),
        "upgraded"
    );
    c.wait_for(
        SHIPPER_UNIT,
        "a new main process",
        Duration::from_secs(60),
        || {
            let now = main_pid(&c, SHIPPER_UNIT);
            now != before && now != "0"
        },
    );
    assert_eq!(c.run(&["cat", "/etc/labship/shipper.toml"]), config);
    produce(&c, "ep-2");
    c.wait_for(
        SHIPPER_UNIT,
        "ep-2 shipped after the upgrade",
        Duration::from_secs(60),
        || exists(&c, "/var/lib/labship/shipped/ep-2"),
    );

    // remove: stopped, binaries gone, configs and data kept.
    produce_unstamped(&c, "ep-3");
    c.wait_for(
        SHIPPER_UNIT,
        "ep-3 quarantined",
        Duration::from_secs(60),
        || exists(&c, "/var/lib/labship/quarantine/ep-3"),
    );
    c.expect_ok(
        SHIPPER_UNIT,
        "dpkg -r",
        &c.exec(&["dpkg", "-r", "labship-shipper"]),
    );
    assert_eq!(
        answer(&c, &["systemctl", "is-active", SHIPPER_UNIT]),
        "inactive"
    );
    assert!(!exists(&c, "/opt/labship/bin/shipper"));
    for kept in [
        "/etc/labship/shipper.toml",
        "/etc/labship/client.key",
        "/var/lib/labship/episodes",
        "/var/lib/labship/shipped/ep-1",
        "/var/lib/labship/quarantine/ep-3",
        "/var/lib/labship/state/status.json",
    ] {
        assert!(exists(&c, kept), "remove took {kept}");
    }

    // purge: the config and the shipper's state go; every episode stays.
    c.expect_ok(
        SHIPPER_UNIT,
        "dpkg -P",
        &c.exec(&["dpkg", "-P", "labship-shipper"]),
    );
    for gone in ["/etc/labship/shipper.toml", "/var/lib/labship/state"] {
        assert!(!exists(&c, gone), "purge kept {gone}");
    }
    for kept in [
        "/etc/labship/client.key",
        "/var/lib/labship/episodes",
        "/var/lib/labship/shipped/ep-1",
        "/var/lib/labship/shipped/ep-2",
        "/var/lib/labship/quarantine/ep-3",
    ] {
        assert!(exists(&c, kept), "purge took {kept}");
    }
    drop(c);
    drop(overlay);
}

/// `deb` repacked into `dir` with its version plus `.1` (a later version to
/// dpkg), as the next build of main would be.
fn bumped(deb: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(dir).unwrap();
    let ok = |what: &str, out: std::process::Output| {
        assert!(out.status.success(), "{what}: {}", text(&out));
    };
    ok(
        "dpkg-deb -R",
        std::process::Command::new("dpkg-deb")
            .arg("-R")
            .arg(deb)
            .arg(&tree)
            .output()
            .unwrap(),
    );
    let control = tree.join("DEBIAN/control");
    let fields = std::fs::read_to_string(&control).unwrap();
    let bumped: String = fields
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}.1\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&control, bumped).unwrap();
    let out = dir.join("next.deb");
    ok(
        "dpkg-deb -b",
        std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out)
            .output()
            .unwrap(),
    );
    out
}

/// An episode as a producer leaves it: written aside, owned by the service
/// user, renamed into `episodes/` whole.
fn produce(c: &Container, id: &str) {
    let meta = format!(r#"{{"code_version":{{"commit":"{GOOD_COMMIT}"}}}}"#);
    write_episode(c, id, &meta);
}

fn produce_unstamped(c: &Container, id: &str) {
    write_episode(c, id, r#"{"note":"no stamp"}"#);
}

fn write_episode(c: &Container, id: &str, meta: &str) {
    let staging = format!("/var/lib/labship/.staging-{id}");
    c.write_file(&format!("{staging}/meta.json"), meta);
    c.write_file(&format!("{staging}/data.csv"), "t,x\n0,1\n");
    c.run(&["chown", "-R", "labship:labship", &staging]);
    c.run(&["mv", &staging, &format!("/var/lib/labship/episodes/{id}")]);
}

#[test]
fn receiver_package_installs_and_starts_with_a_valid_config() {
    let test = "receiver_package_installs_and_starts_with_a_valid_config";
    if !skip_unless_root_and_nspawn(test) {
        return;
    }
    let pkg = deb("labship-receiver");
    let file = format!("/debs/{}", pkg.file_name().unwrap().to_str().unwrap());
    let env = TestEnv::new();
    let overlay = OverlayRoot::mount();
    let c = boot(&overlay);
    let out = c.expect_ok(RECEIVER_UNIT, "dpkg -i", &c.exec(&["dpkg", "-i", &file]));
    for want in [
        "installed  /etc/labship/receiver.toml",
        "installed  /etc/labship/allowed-commits",
        "Next steps:",
    ] {
        assert!(out.contains(want), "dpkg -i: no {want:?} in:\n{out}");
    }
    for (path, want) in [
        ("/opt/labship/bin/receiver", "755 root root"),
        (
            "/lib/systemd/system/labship-receiver.service",
            "644 root root",
        ),
        ("/etc/labship/receiver.toml", "640 root labship"),
        ("/etc/labship/allowed-commits", "640 root labship"),
        ("/var/lib/labship-receiver", "750 labship labship"),
        ("/usr/share/man/man1/receiver.1.gz", "644 root root"),
    ] {
        assert_eq!(c.stat(path), want, "{path}\n{out}");
    }

    // A valid config: TLS with the test's CA, a free port on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = &env.pki.server;
    c.put_private("/etc/labship/receiver.pem", &server.cert_pem);
    c.put_private("/etc/labship/receiver.key", &server.key_pem);
    c.put_private("/etc/labship/ca.pem", &env.pki.ca_pem);
    c.put_private("/etc/labship/allowed-commits", format!("{GOOD_COMMIT}\n"));
    let config = std::fs::read_to_string(repo_root().join("etc/receiver.toml.example"))
        .unwrap()
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{ops_port}"));
    assert!(config.contains(&format!("127.0.0.1:{port}")), "{config}");
    c.put_private("/etc/labship/receiver.toml", &config);
    c.expect_ok(
        RECEIVER_UNIT,
        "enable --now",
        &c.exec(&["systemctl", "enable", "--now", RECEIVER_UNIT]),
    );
    assert_eq!(
        answer(&c, &["systemctl", "is-active", RECEIVER_UNIT]),
        "active",
        "{}",
        c.diagnostics(RECEIVER_UNIT)
    );
    // A lab host on the machine pings it (the container shares the network).
    let data = env.path().join("lab");
    std::fs::create_dir_all(data.join("episodes")).unwrap();
    let cfg = env.path().join("shipper.toml");
    std::fs::write(
        &cfg,
        labship_tests::shipper_toml(
            &env,
            HOST,
            &format!("https://localhost:{port}"),
            &data,
            &env.pki.client(HOST),
            "settle_s = 0",
        ),
    )
    .unwrap();
    let (code, out, err) = run("shipper", &["--config", cfg.to_str().unwrap(), "--ping"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", c.diagnostics(RECEIVER_UNIT));
    drop(c);
    drop(overlay);
}

/// lintian on both packages: no error but the justified ones
/// (docs/install.md, "Packages"): binaries under /opt/labship (CONTRACT §1
/// fixes the path, which Debian's policy reserves for add-on software).
#[test]
fn lintian_finds_no_unjustified_error() {
    let justified = ["dir-or-file-in-opt"];
    for package in ["labship-shipper", "labship-receiver"] {
        let deb = deb(package);
        let out = std::process::Command::new("lintian")
            .args(["--no-tag-display-limit"])
            .arg(&deb)
            .output()
            .unwrap_or_else(|e| {
                panic!("lintian: {e} (apt-get install lintian; scripts/test.sh does)")
            });
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let errors: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with("E: "))
            .filter(|l| !justified.iter().any(|t| l.contains(&format!(": {t}"))))
            .collect();
        assert!(
            errors.is_empty(),
            "{package}: lintian errors:\n{}\n(full report:\n{report}{})",
            errors.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("lintian {package}:\n{report}");
    }
}

/// Two builds of one commit give byte-identical packages (file times from
/// the commit, no build path in the binaries, compressed deterministically):
/// the packages scripts/test.sh built against a second packing now. cargo-deb
/// moves its output out of `target/debian/`, so the first build is set aside
/// and put back (the package tests run one at a time: .config/nextest.toml).
#[test]
fn two_builds_of_one_commit_are_byte_identical() {
    let packages = ["labship-shipper", "labship-receiver"];
    let first = tempfile::tempdir().unwrap();
    let firsts: Vec<PathBuf> = packages
        .iter()
        .map(|p| {
            let deb = deb(p);
            let kept = first.path().join(deb.file_name().unwrap());
            std::fs::copy(&deb, &kept).unwrap();
            kept
        })
        .collect();
    let second = tempfile::tempdir().unwrap();
    let build = std::process::Command::new(repo_root().join("scripts/build-debs.sh"))
        .arg("--out")
        .arg(second.path())
        // As scripts/test.sh: a developer's tree may have changes.
        .arg("--allow-dirty")
        .output()
        .unwrap();
    for kept in &firsts {
        std::fs::copy(
            kept,
            repo_root()
                .join("target/debian")
                .join(kept.file_name().unwrap()),
        )
        .unwrap();
    }
    assert!(build.status.success(), "{}", text(&build));
    for kept in &firsts {
        let again = second.path().join(kept.file_name().unwrap());
        assert!(
            again.exists(),
            "{} is not what this commit builds ({:?}): target/debian/ holds packages of another commit; run scripts/build-debs.sh",
            kept.display(),
            labship_tests::names(second.path())
        );
        assert!(
            std::fs::read(kept).unwrap() == std::fs::read(&again).unwrap(),
            "{} and {} differ (diffoscope says how)",
            kept.display(),
            again.display()
        );
    }
}

/// A tree with uncommitted changes is refused before anything is built (the
/// packages would name HEAD's commit but hold other code); a clean one and
/// `--allow-dirty` get past the check (the allowed one with a warning). In
/// a clone (this checkout's own state is not the test's business), with a
/// `cargo` that exits 97 first on PATH: a run past the check stops there.
#[test]
fn a_dirty_tree_is_refused_unless_allowed() {
    use std::os::unix::fs::PermissionsExt as _;
    let t = tempfile::tempdir().unwrap();
    let clone = t.path().join("labship");
    let out = std::process::Command::new("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(repo_root())
        .arg(&clone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The script under test is this checkout's, committed in the clone.
    std::fs::copy(
        repo_root().join("scripts/build-debs.sh"),
        clone.join("scripts/build-debs.sh"),
    )
    .unwrap();
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args([
            "commit",
            "-q",
            "--allow-empty",
            "--no-verify",
            "-am",
            "this checkout's script",
        ])
        .current_dir(&clone)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("cargo"), "#!/bin/sh\nexit 97\n").unwrap();
    std::fs::set_permissions(bin.join("cargo"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        std::process::Command::new(clone.join("scripts/build-debs.sh"))
            .args(args)
            .env("PATH", &path)
            .current_dir(&clone)
            .output()
            .unwrap()
    };
    let clean = run(&[]);
    assert_eq!(clean.status.code(), Some(97), "{}", text(&clean));
    assert!(!text(&clean).contains("uncommitted"), "{}", text(&clean));
    std::fs::write(clone.join("README.md"), "changed\n").unwrap();
    let dirty = run(&[]);
    assert_eq!(dirty.status.code(), Some(2), "{}", text(&dirty));
    assert!(
        text(&dirty).contains("uncommitted changes") && text(&dirty).contains("--allow-dirty"),
        "{}",
        text(&dirty)
    );
    let allowed = run(&["--allow-dirty"]);
    assert_eq!(allowed.status.code(), Some(97), "{}", text(&allowed));
    assert!(
        text(&allowed).contains("warning: the tree has uncommitted changes"),
        "{}",
        text(&allowed)
    );
}
