//! `shipper --check-config` (CONTRACT §11), run as a binary: a valid config
//! exits 0; each kind of broken one exits 2 naming the key; a certificate
//! expiring within 14 days is a warning (exit 0); `--json` carries the
//! resolved paths; `--print data_dir` answers from the real TOML parser
//! (literal strings, inline tables, dotted keys), also for a config that is
//! otherwise invalid (the installer's case), and prints nothing for one that
//! is not TOML. Nothing is created: not even data_dir.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use labship_tests::pki::{Issued, Variant};
use labship_tests::process::run;
use labship_tests::{TestEnv, shipper_toml};
use serde_json::Value;
use std::path::Path;

const URL: &str = "https://receiver.example.org:8443";

/// `shipper --check-config --config <cfg> <extra…>`: (exit code, stdout, stderr).
fn check(cfg: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--check-config", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    run("shipper", &args)
}

fn json(cfg: &Path) -> (i32, Value) {
    let (code, out, err) = check(cfg, &["--json"]);
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(doc["exit_code"], code, "{doc}");
    (code, doc)
}

/// A config for `id` over a data_dir that does not exist.
fn write_config(env: &TestEnv, name: &str, host: &str, id: &Issued) -> std::path::PathBuf {
    let cfg = env.file(&format!("{name}/shipper.toml"));
    let data = env.path().join(name).join("data");
    std::fs::write(&cfg, shipper_toml(env, host, URL, &data, id, "")).unwrap();
    cfg
}

#[test]
fn a_valid_config_exits_0_and_creates_nothing() {
    let env = TestEnv::new();
    let cfg = write_config(&env, "ok", "lab-01", &env.pki.client("lab-01"));
    let (code, out, err) = check(&cfg, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("ok: ") && out.contains("host lab-01"),
        "{out}"
    );
    let (code, doc) = json(&cfg);
    assert_eq!(code, 0);
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["host_id"], "lab-01");
    let data = env.path().join("ok/data");
    assert_eq!(doc["paths"]["data_dir"], data.to_str().unwrap(), "{doc}");
    assert_eq!(
        doc["paths"]["cert_file"],
        env.pki.client("lab-01").cert_file.to_str().unwrap()
    );
    assert_eq!(doc["paths"]["token_file"], Value::Null);
    let certs = doc["certificates"].as_array().unwrap();
    assert!(
        certs
            .iter()
            .any(|c| c["key"] == "receiver.cert_file" && c["identity"] == "lab-01"),
        "{doc}"
    );
    assert!(
        certs.iter().any(|c| c["key"] == "receiver.ca_file"),
        "{doc}"
    );
    assert_eq!(doc["errors"], serde_json::json!([]));
    assert!(!data.exists(), "--check-config created data_dir");
    // A SAN-only certificate names its host by its first DNS SAN.
    let cfg = write_config(
        &env,
        "san",
        "lab-02",
        &env.pki.client_variant("lab-02", Variant::SanOnly),
    );
    let (code, out, err) = check(&cfg, &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn each_broken_config_exits_2_naming_the_key() {
    let env = TestEnv::new();
    let good = env.pki.client("lab-01");
    let other = env.pki.client("lab-99");
    // The certificate of lab-01 with the key of lab-99.
    let mismatched = Issued {
        key_file: other.key_file.clone(),
        key_pem: other.key_pem.clone(),
        ..env.pki.client("lab-01")
    };
    let cases: Vec<(&str, std::path::PathBuf, &str, &str)> = vec![
        (
            "host_id is not the certificate's CN",
            write_config(&env, "mismatch", "lab-02", &good),
            "host_id",
            "names host \"lab-01\"",
        ),
        (
            "key of another certificate",
            write_config(&env, "key", "lab-01", &mismatched),
            "receiver.key_file",
            "does not belong to the certificate",
        ),
        (
            "expired certificate",
            write_config(
                &env,
                "expired",
                "lab-01",
                &env.pki.client_variant("lab-01", Variant::Expired),
            ),
            "receiver.cert_file",
            "expired at 2021-01-01",
        ),
    ];
    for (what, cfg, key, needle) in cases {
        let (code, out, err) = check(&cfg, &[]);
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert!(
            out.contains(&format!("invalid: {}: {key}: ", cfg.display())) && out.contains(needle),
            "{what}: {out}"
        );
        let (_, doc) = json(&cfg);
        assert_eq!(doc["valid"], false, "{what}");
        assert_eq!(doc["errors"][0]["key"], key, "{what}: {doc}");
    }
    // A missing key file: the loader's own error, with the key.
    let cfg = write_config(&env, "missing", "lab-01", &good);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(good.key_file.to_str().unwrap(), "/nonexistent/client.key");
    std::fs::write(&cfg, text).unwrap();
    let (code, doc) = json(&cfg);
    assert_eq!(code, 2);
    assert_eq!(doc["errors"][0]["key"], "receiver.key_file", "{doc}");
    // Invalid, yet its paths are known (the installer needs data_dir).
    assert_eq!(doc["paths"]["key_file"], "/nonexistent/client.key", "{doc}");
    assert!(doc["paths"]["data_dir"].is_string(), "{doc}");
}

#[test]
fn a_certificate_expiring_within_14_days_is_a_warning() {
    let env = TestEnv::new();
    let soon = env.pki.client_variant("lab-01", Variant::ExpiresSoon);
    let cfg = write_config(&env, "soon", "lab-01", &soon);
    let (code, out, err) = check(&cfg, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: ")
            && out.contains("receiver.cert_file: ")
            && out.contains("expires in"),
        "{out}"
    );
    let (_, doc) = json(&cfg);
    assert_eq!(doc["warnings"][0]["key"], "receiver.cert_file", "{doc}");
}

#[test]
fn print_data_dir_reads_real_toml_even_from_an_invalid_config() {
    let env = TestEnv::new();
    let dir = env.path().join("cfg");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("shipper.toml");
    let print = |key: &str| check(&cfg, &["--print", key]);
    // What the installer's old line regex misread: a literal string, an
    // inline table for [receiver], a dotted key; certificates absent, so
    // the config is invalid (exit 2) but its paths are known.
    std::fs::write(
        &cfg,
        "host_id = 'lab-01'\ndata_dir = '/srv/lab\"ship'   # literal string\n\
         receiver = { url = \"https://r.example.org\", cert_file = 'client.pem', key_file = \"keys/client.key\" }\n",
    )
    .unwrap();
    let (code, out, err) = print("data_dir");
    assert_eq!((code, out.as_str()), (2, "/srv/lab\"ship\n"), "{err}");
    let (_, out, _) = print("key_file");
    assert_eq!(out, format!("{}\n", dir.join("keys/client.key").display()));
    let (_, out, _) = print("token_file");
    assert_eq!(out, "\n", "unset: an empty line");
    std::fs::write(
        &cfg,
        "host_id = \"lab-01\"\nreceiver.url = \"https://r.example.org\"\nreceiver.ca_file = \"ca.pem\"\n",
    )
    .unwrap();
    let (code, out, _) = print("data_dir");
    assert_eq!(
        (code, out.as_str()),
        (2, "/var/lib/labship\n"),
        "the default"
    );
    let (_, out, _) = print("ca_file");
    assert_eq!(out, format!("{}\n", dir.join("ca.pem").display()));
    // Relative data_dir: against the config's directory, as the daemon does.
    std::fs::write(&cfg, "data_dir = \"data\"\n").unwrap();
    let (_, out, _) = print("data_dir");
    assert_eq!(out, format!("{}\n", dir.join("data").display()));
    // Not TOML: nothing on stdout, why on stderr, exit 2.
    std::fs::write(&cfg, "data_dir = \"/x\"\n[receiver\n").unwrap();
    let (code, out, err) = print("data_dir");
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("invalid: "), "{err}");
    // A valid config: exit 0 with the value.
    let cfg2 = write_config(&env, "valid", "lab-01", &env.pki.client("lab-01"));
    let (code, out, err) = check(&cfg2, &["--print", "data_dir"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!("{}\n", env.path().join("valid/data").display())
    );
    // The shipped example parses as well (its certificates are absent here).
    let example = labship_tests::nspawn::repo_root().join("etc/shipper.toml.example");
    let (code, out, _) = check(&example, &["--print", "data_dir"]);
    assert_eq!((code, out.as_str()), (2, "/var/lib/labship\n"));
}

#[test]
fn check_config_flags_are_refused_without_it_and_together() {
    let (code, _, err) = run("shipper", &["--json"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run("shipper", &["--check-config", "--ping"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(
        "shipper",
        &["--check-config", "--json", "--print", "data_dir"],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run("shipper", &["--check-config", "--print", "nope"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn the_ops_listener_beyond_loopback_is_a_warning_and_a_bad_address_invalid() {
    let env = TestEnv::new();
    let cfg = write_config(&env, "ops", "lab-01", &env.pki.client("lab-01"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with = |listen: &str| {
        std::fs::write(
            &cfg,
            text.replace(
                "[ops]\nlisten = \"\"\n",
                &format!("[ops]\nlisten = {listen:?}\n"),
            ),
        )
        .unwrap();
    };
    with("127.0.0.1:9465");
    let (code, doc) = json(&cfg);
    assert_eq!(
        (code, doc["warnings"].clone()),
        (0, serde_json::json!([])),
        "{doc}"
    );
    with("0.0.0.0:9465");
    let (code, out, err) = check(&cfg, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "warning: {}: ops.listen: 0.0.0.0:9465 is not a loopback address",
            cfg.display()
        )),
        "{out}"
    );
    let (_, doc) = json(&cfg);
    assert_eq!(doc["warnings"][0]["key"], "ops.listen", "{doc}");
    with("localhost");
    let (code, out, err) = check(&cfg, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("invalid: ") && out.contains("ops.listen: \"localhost\""),
        "{out}"
    );
}

/// Under a watchdog (`WATCHDOG_USEC`, as systemd sets it from
/// `WatchdogSec=180`), a `stall_timeout_s` whose quiet stretch (the stall
/// window plus the 60 s an answer may take) reaches it is said loudly at
/// start, naming the key and the largest value that fits: systemd would
/// kill an upload awaiting its answer that long as a hung shipper.
#[test]
fn a_stall_timeout_the_watchdog_would_outlast_is_said_at_start() {
    let env = TestEnv::new();
    let id = env.pki.client("lab-01");
    let cfg = env.path().join("shipper.toml");
    let text = shipper_toml(
        &env,
        "lab-01",
        "https://127.0.0.1:9",
        &env.path().join("data"),
        &id,
        "",
    )
    .replace("stall_timeout_s = 5", "stall_timeout_s = 150");
    std::fs::write(&cfg, text).unwrap();
    let log = env.path().join("shipper.log");
    let _daemon = labship_tests::process::Daemon(
        std::process::Command::new(labship_tests::bin("shipper"))
            .args(["--config", cfg.to_str().unwrap()])
            .env("WATCHDOG_USEC", "180000000")
            .env_remove("WATCHDOG_PID")
            .env_remove("NOTIFY_SOCKET")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("WatchdogSec")) {
            break l.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing said:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        line.contains("ERROR")
            && line.contains("receiver.stall_timeout_s = 150")
            && line.contains("WatchdogSec (180 s)")
            && line.contains("set at most 119 s"),
        "{line}"
    );
}
