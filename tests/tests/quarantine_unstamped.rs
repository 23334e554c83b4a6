//! The real `quarantine-unstamped` binary on real data directories: what it
//! moves and what it leaves, its reason files, `--dry-run`, idempotence, name
//! collisions, and a run beside the real shipper daemon shipping to the real
//! receiver.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use labship_tests::episode::{noise, write_episode};
use labship_tests::process::Daemon;
use labship_tests::process::{Receiver, run, unsafe_free_kill};
use labship_tests::{GOOD_COMMIT, OLD_COMMIT, TestEnv};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

const HOST: &str = "lab-01";
const TOOL: &str = "quarantine-unstamped";

/// A shipper config (settle 0 unless `settle` says otherwise) and its data
/// dir with the directories the shipper creates at start-up.
fn config(env: &TestEnv, url: &str, extra: &str) -> (PathBuf, PathBuf) {
    let data = env.path().join("lab");
    for d in ["episodes", "outbox", "shipped", "quarantine", "state"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    let id = env.pki.client(HOST);
    let cfg = env.path().join("shipper.toml");
    std::fs::write(
        &cfg,
        labship_tests::shipper_toml(env, HOST, url, &data, &id, extra),
    )
    .unwrap();
    (cfg, data)
}

fn tool(args: &[&str]) -> (i32, String, String) {
    run(TOOL, args)
}

fn with_config(cfg: &Path, more: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(more);
    tool(&args)
}

/// Every entry under `root`: relative path → (bytes, or None for a
/// directory; mtime). Two equal snapshots mean nothing was changed.
type Snapshot = BTreeMap<PathBuf, (Option<Vec<u8>>, SystemTime)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            out.insert(rel, (None, meta.modified().unwrap()));
        } else {
            let bytes = if meta.is_symlink() {
                std::fs::read_link(&p).unwrap().into_os_string().into_vec()
            } else {
                std::fs::read(&p).unwrap()
            };
            out.insert(rel, (Some(bytes), meta.modified().unwrap()));
        }
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn reason(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("quarantine_reason.json")).unwrap()).unwrap()
}

/// Writes an episode whose `meta.json` has exactly `meta`.
fn raw_episode(episodes: &Path, id: &str, meta: &str) -> PathBuf {
    let dir = write_episode(episodes, id, None, &[("data.bin", &noise(4096, 7))]);
    std::fs::write(dir.join("meta.json"), meta).unwrap();
    dir
}

/// Sets every mtime in the tree an hour back (a long-settled episode).
fn backdate(root: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    for p in snapshot(root).keys() {
        std::fs::File::open(root.join(p))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

/// Asserts a reason file has every CONTRACT §2 field, local (no HTTP status).
fn assert_local_reason(r: &Value, id: &str, host: &str, code: &str) {
    let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "episode_id",
            "host_id",
            "reason",
            "http_status",
            "message",
            "remediation",
            "commit",
            "quarantined_at"
        ]),
        "{r}"
    );
    assert_eq!(r["episode_id"], id, "{r}");
    assert_eq!(r["host_id"], host, "{r}");
    assert_eq!(r["reason"], code, "{r}");
    assert!(r["http_status"].is_null(), "{r}");
    assert!(r["remediation"].is_null(), "{r}");
    assert!(r["commit"].is_null(), "{r}");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("code_version.commit")),
        "{r}"
    );
    let at = r["quarantined_at"].as_str().unwrap();
    let b = at.as_bytes();
    assert!(
        at.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[13] == b':' && at.ends_with('Z'),
        "quarantined_at is RFC 3339: {at}"
    );
}

#[test]
fn help_version_and_bad_arguments() {
    let (code, out, _) = tool(&["--help"]);
    assert_eq!(code, 0);
    for flag in ["--config", "--data-dir", "--dry-run"] {
        assert!(out.contains(flag), "{out}");
    }
    let (code, out, _) = tool(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("quarantine-unstamped "), "{out}");
    let (code, _, err) = tool(&["--config", "a", "--data-dir", "b"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = tool(&["--bogus"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_bad_config_names_the_file_the_key_and_why() {
    let env = TestEnv::new();
    let (cfg, data) = config(&env, "https://127.0.0.1:1", "settle_s = 0");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"lab-01\"", "\"lab 01\"")).unwrap();
    write_episode(&data.join("episodes"), "u", None, &[]);
    let before = snapshot(&data);
    let (code, out, err) = with_config(&cfg, &[]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains(cfg.to_str().unwrap()) && err.contains("host_id") && err.contains("lab 01"),
        "{err}"
    );
    assert_eq!(before, snapshot(&data), "nothing moved");

    let (code, _, err) = with_config(&env.path().join("missing.toml"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.toml"), "{err}");

    // A data_dir without a queue is named, with the key that set it.
    std::fs::write(&cfg, text.replace("/lab\"", "/nowhere\"")).unwrap();
    let (code, _, err) = with_config(&cfg, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("data_dir") && err.contains("nowhere/episodes"),
        "{err}"
    );
    let (code, _, err) = tool(&["--data-dir", env.path().join("nowhere").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--data-dir"), "{err}");
}

#[test]
fn quarantines_unstamped_keeps_the_rest_dry_run_and_second_run_change_nothing() {
    let env = TestEnv::new();
    let (cfg, data) = config(&env, "https://127.0.0.1:1", "settle_s = 0");
    let eps = data.join("episodes");
    write_episode(
        &eps,
        "good",
        Some(GOOD_COMMIT),
        &[("d/x.bin", &noise(10_000, 1))],
    );
    write_episode(&eps, "old", Some(OLD_COMMIT), &[]);
    write_episode(&eps, "missing", None, &[]);
    raw_episode(&eps, "malformed", r#"{"code_version":{"commit":"ABC123"}}"#);
    raw_episode(&eps, "not-json", "{ nope");
    raw_episode(&eps, "not-object", "[1, 2, 3]");
    // Unfinished: no meta.json yet.
    std::fs::create_dir_all(eps.join("writing/frames")).unwrap();
    std::fs::write(eps.join("writing/frames/0.bin"), b"x").unwrap();
    // The shipper's own: an archive in outbox/ means it is handling it.
    write_episode(&eps, "in-outbox", None, &[]);
    std::fs::write(data.join("outbox/in-outbox.tar.zst"), b"not ours").unwrap();
    // Invalid names, a plain file and a symlink: never touched.
    for bad in ["bad name", ".hidden", "-dash"] {
        write_episode(&eps, bad, None, &[]);
    }
    std::fs::create_dir(eps.join(std::ffi::OsStr::from_bytes(b"bin\xff"))).unwrap();
    std::fs::write(eps.join("stray.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink(eps.join("missing"), eps.join("link")).unwrap();

    let untouched = |s: &Snapshot| -> Snapshot {
        let keep = [
            "good",
            "old",
            "writing",
            "in-outbox",
            "bad name",
            ".hidden",
            "-dash",
            "stray.txt",
            "link",
        ];
        s.iter()
            .filter(|(p, _)| {
                p.components().nth(1).is_some_and(|c| {
                    let c = c.as_os_str();
                    keep.iter().any(|k| c == *k) || c.as_bytes() == b"bin\xff"
                })
            })
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect()
    };
    let before = snapshot(&data);

    // --dry-run: says everything, changes nothing.
    let (code, out, err) = with_config(&cfg, &["--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(before, snapshot(&data), "--dry-run changed something");
    for (id, c) in [
        ("missing", "stamp_missing"),
        ("malformed", "stamp_malformed"),
        ("not-json", "meta_invalid"),
        ("not-object", "meta_invalid"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("would quarantine {id} -> ")) && l.contains(c)),
            "{id}: {out}"
        );
    }
    assert!(
        out.contains("summary (dry run, nothing changed): would quarantine 4,"),
        "{out}"
    );

    let (code, out, err) = with_config(&cfg, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let q = data.join("quarantine");
    for (id, c) in [
        ("missing", "stamp_missing"),
        ("malformed", "stamp_malformed"),
        ("not-json", "meta_invalid"),
        ("not-object", "meta_invalid"),
    ] {
        let line = format!("quarantined {id} -> {} ({c}: ", q.join(id).display());
        assert!(out.lines().any(|l| l.starts_with(&line)), "{line}\n{out}");
        assert_local_reason(&reason(&q.join(id)), id, HOST, c);
        assert!(!eps.join(id).exists());
    }
    assert_eq!(
        names(&q),
        ["malformed", "missing", "not-json", "not-object"]
    );
    // The producer's files went along unchanged.
    assert_eq!(
        std::fs::read(q.join("not-json/meta.json")).unwrap(),
        b"{ nope"
    );
    assert_eq!(
        std::fs::read(q.join("not-json/data.bin")).unwrap(),
        noise(4096, 7)
    );
    for l in [
        format!("kept good (stamped {GOOD_COMMIT})"),
        format!("kept old (stamped {OLD_COMMIT})"),
        "kept writing (no meta.json: not finished, left alone)".into(),
        format!(
            "kept in-outbox (the shipper is handling it: {} exists)",
            data.join("outbox/in-outbox.tar.zst").display()
        ),
        "skipped \"bad name\" (not a valid episode id".into(),
        "skipped \".hidden\" (not a valid episode id".into(),
        "skipped \"stray.txt\" (not a directory".into(),
        "skipped \"link\" (not a directory".into(),
    ] {
        assert!(out.lines().any(|o| o.starts_with(&l)), "{l}\n{out}");
    }
    assert!(
        out.lines().last().unwrap().starts_with(
            "summary: quarantined 4, already quarantined meanwhile 0, kept 4 (2 stamped, 1 without meta.json, 1 handled by the shipper), skipped 6, failed 0"
        ),
        "{out}"
    );
    let after = snapshot(&data);
    assert_eq!(
        untouched(&before),
        untouched(&after),
        "stamped, unfinished, handled and invalid entries are untouched"
    );
    assert!(names(&data.join("state")).is_empty(), "no temp file left");

    // A second run changes nothing.
    let (code, out, _) = with_config(&cfg, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("summary: quarantined 0,"), "{out}");
    assert_eq!(after, snapshot(&data), "the second run changed something");
}

#[test]
fn a_taken_name_in_quarantine_gets_a_suffix_and_the_old_entry_is_untouched() {
    let env = TestEnv::new();
    let (cfg, data) = config(&env, "https://127.0.0.1:1", "settle_s = 0");
    let q = data.join("quarantine");
    // An earlier episode of the same name, and its `.1`, already quarantined.
    for name in ["dup", "dup.1"] {
        std::fs::create_dir_all(q.join(name)).unwrap();
        std::fs::write(q.join(name).join("quarantine_reason.json"), name).unwrap();
        std::fs::write(q.join(name).join("meta.json"), "earlier").unwrap();
    }
    let before = snapshot(&q);
    write_episode(&data.join("episodes"), "dup", None, &[]);
    let (code, out, err) = with_config(&cfg, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "quarantined dup -> {} (",
            q.join("dup.2").display()
        )),
        "{out}"
    );
    assert_local_reason(&reason(&q.join("dup.2")), "dup", HOST, "stamp_missing");
    let after = snapshot(&q);
    for (p, v) in &before {
        if !p.as_os_str().is_empty() {
            assert_eq!(after.get(p), Some(v), "{} changed", p.display());
        }
    }
    assert_eq!(names(&q), ["dup", "dup.1", "dup.2"]);
}

#[test]
fn data_dir_mode_uses_the_hostname_and_the_default_settle() {
    let env = TestEnv::new();
    let data = env.path().join("lab");
    let eps = data.join("episodes");
    for d in ["outbox", "quarantine", "state"] {
        std::fs::create_dir_all(data.join(d)).unwrap();
    }
    write_episode(&eps, "settled", None, &[("x", b"1")]);
    backdate(&eps.join("settled"));
    write_episode(&eps, "fresh", None, &[("x", b"1")]);
    let (code, out, err) = tool(&["--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(
            "kept fresh (still being written: changed 0s ago, settle 30s; stamp_missing so far)"
        ) || out.contains(
            "kept fresh (still being written: changed 1s ago, settle 30s; stamp_missing so far)"
        ),
        "{out}"
    );
    assert!(eps.join("fresh").is_dir());
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let hostname = hostname.trim();
    let host = if labship_protocol::Id::parse(hostname).is_ok() {
        hostname
    } else {
        "unknown"
    };
    assert_local_reason(
        &reason(&data.join("quarantine/settled")),
        "settled",
        host,
        "stamp_missing",
    );
}

#[test]
fn an_interrupted_quarantine_is_finished_with_its_recorded_reason() {
    let env = TestEnv::new();
    let (cfg, data) = config(&env, "https://127.0.0.1:1", "settle_s = 3600");
    let eps = data.join("episodes");
    // The shipper (or this tool) wrote the reason file, then died before the move.
    let dir = write_episode(&eps, "half", None, &[]);
    let recorded = r#"{"episode_id":"half","host_id":"lab-01","reason":"stamp_missing","http_status":null,"message":"recorded earlier","remediation":null,"commit":null,"quarantined_at":"2024-01-01T00:00:00Z"}"#;
    std::fs::write(dir.join("quarantine_reason.json"), recorded).unwrap();
    // A stamped one with a reason file is the shipper's decision to finish.
    let dir = write_episode(&eps, "late", Some(OLD_COMMIT), &[]);
    std::fs::write(dir.join("quarantine_reason.json"), "{}").unwrap();
    let (code, out, err) = with_config(&cfg, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("(finished an interrupted quarantine; stamp_missing: recorded earlier)"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("quarantine/half/quarantine_reason.json")).unwrap(),
        recorded
    );
    assert!(
        out.contains("kept late (a quarantine decided by the shipper is pending"),
        "{out}"
    );
    assert!(eps.join("late").is_dir());
}

#[test]
fn a_failed_move_exits_1_and_names_the_path() {
    let env = TestEnv::new();
    let (cfg, data) = config(&env, "https://127.0.0.1:1", "settle_s = 0");
    std::fs::remove_dir(data.join("quarantine")).unwrap();
    std::fs::write(data.join("quarantine"), b"not a directory").unwrap();
    write_episode(&data.join("episodes"), "u", None, &[]);
    write_episode(&data.join("episodes"), "s", Some(GOOD_COMMIT), &[]);
    let (code, out, err) = with_config(&cfg, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("failed u: cannot move")
            && err.contains(data.join("episodes/u").to_str().unwrap())
            && err.contains(data.join("quarantine").to_str().unwrap()),
        "{err}"
    );
    assert!(out.contains("kept s (stamped"), "{out}");
    assert!(out.contains("failed 1"), "{out}");
    assert!(data.join("episodes/u/meta.json").is_file(), "still queued");
}

#[test]
fn beside_a_running_shipper_every_episode_ends_in_exactly_one_place() {
    const N: usize = 40;
    let env = TestEnv::new();
    let r = Receiver::start(&env);
    let (cfg, data) = config(&env, &r.url, "settle_s = 0\nscan_interval_s = 1");
    let eps = data.join("episodes");
    let log = env.path().join("shipper.log");
    let mut daemon = Daemon(
        std::process::Command::new(labship_tests::bin("shipper"))
            .args(["--config", cfg.to_str().unwrap()])
            .env_remove("NOTIFY_SOCKET")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let (stop, paused) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    // Three loops run the tool over and over while episodes arrive and
    // ship, with irregular gaps, so that they collide with each other and
    // with the shipper's scans (every second) on the same episodes.
    let background: Vec<_> = (1..=3u64)
        .map(|mut seed| {
            let (stop, paused, cfg) = (stop.clone(), paused.clone(), cfg.clone());
            std::thread::spawn(move || {
                let mut runs = Vec::new();
                while !stop.load(Relaxed) {
                    if !paused.load(Relaxed) {
                        runs.push(with_config(&cfg, &[]));
                    }
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    std::thread::sleep(Duration::from_millis(seed >> 56));
                }
                runs
            })
        })
        .collect();
    // A producer that writes elsewhere and renames each finished episode in
    // (with settle_s = 0 nothing else would be safe), in four batches; during
    // the second and fourth the tool pauses, so the shipper quarantines some
    // unstamped episodes itself and the tool meets its work half done.
    let staging = env.path().join("staging");
    let (mut stamped, mut unstamped) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..N {
        if i % 10 == 0 {
            paused.store(i % 20 == 10, Relaxed);
        }
        for (id, commit) in [
            (format!("s{i:02}"), Some(GOOD_COMMIT)),
            (format!("u{i:02}"), None),
        ] {
            write_episode(
                &staging,
                &id,
                commit,
                &[("d.bin", &noise(100_000, i as u64))],
            );
            std::fs::rename(staging.join(&id), eps.join(&id)).unwrap();
            if commit.is_some() {
                stamped.insert(id);
            } else {
                unstamped.insert(id);
            }
        }
        std::thread::sleep(Duration::from_millis(if paused.load(Relaxed) {
            250
        } else {
            50
        }));
    }
    paused.store(false, Relaxed);
    let mut runs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !names(&eps).is_empty() {
        assert!(
            Instant::now() < deadline,
            "queue not drained: {:?}\n{}",
            names(&eps),
            std::fs::read_to_string(&log).unwrap()
        );
        runs.push(with_config(&cfg, &[]));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Relaxed);
    for b in background {
        runs.extend(b.join().unwrap());
    }
    assert!(unsafe_free_kill(daemon.0.id(), 15));
    assert!(daemon.0.wait().unwrap().success());

    for (code, out, err) in &runs {
        assert_eq!(
            *code, 0,
            "the tool failed beside the shipper:\n{out}\n{err}"
        );
    }
    assert!(runs.len() >= 6, "only {} runs", runs.len());
    // Each unstamped episode was moved once: by the tool or by the shipper.
    let by_tool: Vec<&str> = runs
        .iter()
        .flat_map(|(_, out, _)| out.lines())
        .filter_map(|l| l.strip_prefix("quarantined "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let by_tool_set: BTreeSet<&str> = by_tool.iter().copied().collect();
    assert_eq!(by_tool.len(), by_tool_set.len(), "moved twice: {by_tool:?}");
    assert!(
        by_tool_set.iter().all(|id| unstamped.contains(*id)),
        "{by_tool:?}"
    );
    assert!(
        !by_tool_set.is_empty() && by_tool_set.len() < N,
        "both the tool and the shipper quarantined some: {by_tool:?}"
    );
    assert_eq!(
        names(&data.join("shipped")),
        stamped.iter().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        names(&data.join("quarantine")),
        unstamped.iter().cloned().collect::<Vec<_>>(),
        "every unstamped episode quarantined exactly once (no .1 duplicates)"
    );
    for id in &unstamped {
        assert_local_reason(
            &reason(&data.join("quarantine").join(id)),
            id,
            HOST,
            "stamp_missing",
        );
    }
    assert!(names(&eps).is_empty());
    assert!(names(&data.join("outbox")).is_empty());
    let stored: BTreeSet<String> = r.stored(HOST).into_iter().collect();
    for id in &stamped {
        assert!(stored.contains(&format!("{id}.tar.zst")), "{id} not stored");
    }
    assert_eq!(stored.len(), 2 * N, "only the stamped ones: {stored:?}");
    let audit = r.audit_records();
    assert_eq!(
        audit.iter().filter(|a| a["status"] == 201).count(),
        N,
        "each stamped episode stored once"
    );
    assert!(
        audit
            .iter()
            .all(|a| a["episode_id"].as_str().is_some_and(|e| e.starts_with('s'))),
        "an unstamped episode reached the receiver"
    );
    let lost = runs
        .iter()
        .flat_map(|(_, out, _)| out.lines())
        .filter(|l| l.starts_with("already quarantined "))
        .count();
    eprintln!(
        "{} tool runs; {} of {N} unstamped episodes quarantined by the tool, the rest by the shipper; {lost} moves found the episode already gone",
        runs.len(),
        by_tool_set.len()
    );
}

/// A data dir where the shipper never ran holds only `episodes/`: the tool
/// creates `quarantine/` and `state/` for its first move, mode 0750 and
/// owned like the data dir (the installer's owner and mode), says so, and
/// creates nothing in a dry run or when there is nothing to move.
#[test]
fn a_fresh_data_dir_gets_quarantine_and_state_owned_like_it() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let env = TestEnv::new();
    let data = env.path().join("fresh");
    let eps = data.join("episodes");
    write_episode(&eps, "stamped", Some(GOOD_COMMIT), &[("x", b"1")]);
    backdate(&data);
    let data_arg = data.to_str().unwrap();

    // Nothing to move: nothing created.
    let (code, out, err) = tool(&["--data-dir", data_arg]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(names(&data), ["episodes"], "{out}");

    write_episode(&eps, "unstamped", None, &[("x", b"1")]);
    backdate(&eps.join("unstamped"));
    // The owner the shipper's user would have (the installer's data dir).
    let (uid, gid) = if labship_tests::is_root() {
        std::os::unix::fs::chown(&data, Some(4242), Some(4243)).unwrap();
        (4242, 4243)
    } else {
        let m = std::fs::metadata(&data).unwrap();
        (m.uid(), m.gid())
    };
    let before = snapshot(&data);
    let (code, out, err) = tool(&["--data-dir", data_arg, "--dry-run"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let q = data.join("quarantine");
    let state = data.join("state");
    assert!(
        out.contains(&format!(
            "would create {} and {}",
            q.display(),
            state.display()
        )),
        "{out}"
    );
    assert_eq!(snapshot(&data), before, "a dry run changes nothing");

    let (code, out, err) = tool(&["--data-dir", data_arg]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("quarantined unstamped -> ")
            && out.contains(&format!("created {} and {}", q.display(), state.display())),
        "{out}"
    );
    for dir in [&q, &state] {
        let m = std::fs::metadata(dir).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750, "{}", dir.display());
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{}", dir.display());
    }
    assert_eq!(names(&q), ["unstamped"]);
    assert_eq!(reason(&q.join("unstamped"))["reason"], "stamp_missing");
    assert_eq!(names(&eps), ["stamped"]);

    // A second run finds them and says nothing about creating.
    let (code, out, _) = tool(&["--data-dir", data_arg]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("create"), "{out}");
}
