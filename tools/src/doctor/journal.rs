//! The journal check: `journalctl -u labship-shipper.service -o json` over
//! `--since` (or a captured file), classified by the shipper's own structured
//! fields (`EVENT`, `ERROR_CODE`, `HTTP_STATUS`, `EPISODE_ID`, `REMEDIATION`),
//! falling back to systemd's messages about the unit (`UNIT=`: watchdog
//! kills, restarts, failed starts) and to the shipper's plain start-up
//! errors. Never a regex over free text where a field exists.

use super::{Finding, Fix, Level, Options, UNIT};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

/// One journal entry (`journalctl -o json`: one object per line).
pub type Entry = Map<String, Value>;

/// A field as text: journald gives strings, byte arrays for non-UTF-8 and
/// arrays for repeated fields (the last value wins).
pub fn field(e: &Entry, name: &str) -> Option<String> {
    match e.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(Value::as_u64)
                .map(|b| b as u8)
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Array(items) => items.iter().rev().find_map(|v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Why the journal could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// No `journalctl` on this machine.
    NoJournalctl,
    /// Not allowed to see the system journal.
    Denied { user: String, detail: String },
    /// Anything else (the message says what).
    Failed(String),
}

/// Parses `journalctl -o json` output; lines that are not objects are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Reads the entries for the unit since `opts.since` ago.
pub fn read(opts: &Options) -> Result<Vec<Entry>, Unreadable> {
    if let Some(file) = &opts.journal_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Unreadable::Failed(format!("cannot read {}: {e}", file.display())))?;
        return Ok(parse(&text));
    }
    let since = opts
        .now
        .checked_sub(opts.since)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = std::process::Command::new("journalctl")
        .args(["-u", UNIT, "-o", "json", "--no-pager", "--since"])
        .arg(format!("@{since}"))
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Unreadable::NoJournalctl,
            _ => Unreadable::Failed(format!("cannot run journalctl: {e}")),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let user = user_name();
    if !out.status.success() {
        let detail = stderr.lines().next().unwrap_or("").trim().to_owned();
        return Err(if denied_text(&stderr) {
            Unreadable::Denied { user, detail }
        } else {
            Unreadable::Failed(format!("journalctl failed ({}): {detail}", out.status))
        });
    }
    // journalctl exits 0 when it may only show the user's own journal: the
    // unit's lines are silently missing. Its hint, or group membership, says so.
    if denied_text(&stderr) || !may_read_system_journal() {
        return Err(Unreadable::Denied {
            user,
            detail: stderr.lines().next().unwrap_or("").trim().to_owned(),
        });
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

fn denied_text(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("insufficient permissions")
        || s.contains("not seeing messages from other users")
        || s.contains("permission denied")
}

/// Groups whose members may read the whole system journal.
const JOURNAL_READERS: [&str; 3] = ["systemd-journal", "adm", "wheel"];

/// Root, or a member of a group that may read the whole journal. The groups
/// come from the system's name service (NSS: files, LDAP, SSSD, …), as
/// journald and `id` see them.
fn may_read_system_journal() -> bool {
    if rustix::process::getuid().is_root() {
        return true;
    }
    let readers: Vec<u32> = JOURNAL_READERS
        .iter()
        .filter_map(|name| group_id(name))
        .collect();
    let mine = rustix::process::getgroups().unwrap_or_default();
    std::iter::once(rustix::process::getgid())
        .chain(mine)
        .any(|g| readers.contains(&g.as_raw()))
}

/// A group's id by name, through NSS (`getgrnam_r`); `None` when there is
/// no such group or the lookup failed.
fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// A user's name by uid, through NSS (`getpwuid_r`).
fn user_by_uid(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// This process's user name, from the name service (the environment can
/// lie under sudo or setpriv), else `$USER`, else the uid.
fn user_name() -> String {
    let uid = rustix::process::getuid().as_raw();
    user_by_uid(uid)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| uid.to_string())
}

/// The shipper's event lines read "<what happened>: <detail>"; a row
/// already says what happened, so it quotes the detail only.
fn detail(message: &str) -> &str {
    const PREFIXES: [&str; 3] = [
        "transient failure, will retry: ",
        "transient failure that needs an operator: ",
        "quarantined ",
    ];
    for p in PREFIXES {
        if let Some(rest) = message.strip_prefix(p) {
            // "quarantined <id>: <detail>"
            return if p == "quarantined " {
                rest.split_once(": ").map_or(rest, |(_, d)| d)
            } else {
                rest
            };
        }
    }
    message
}

/// Episodes of one kind of trouble.
#[derive(Debug, Default, Clone)]
struct Tally {
    count: usize,
    ids: BTreeSet<String>,
    codes: BTreeMap<String, usize>,
    /// The most recent remediation the receiver gave.
    remediation: Option<String>,
    last_message: Option<String>,
}

impl Tally {
    fn add(&mut self, e: &Entry) {
        self.count += 1;
        if let Some(id) = field(e, "EPISODE_ID") {
            self.ids.insert(id);
        }
        if let Some(code) = field(e, "ERROR_CODE") {
            *self.codes.entry(code).or_default() += 1;
        }
        if let Some(r) = field(e, "REMEDIATION").filter(|r| !r.is_empty()) {
            self.remediation = Some(r);
        }
        if let Some(m) = field(e, "MESSAGE") {
            self.last_message = Some(detail(&m).to_owned());
        }
    }

    /// "ep-1, ep-2, ep-3 and 9 more".
    fn ids(&self) -> String {
        let shown: Vec<&str> = self.ids.iter().take(5).map(String::as_str).collect();
        let more = self.ids.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }

    fn codes(&self) -> String {
        self.codes
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn details(&self) -> Value {
        serde_json::json!({
            "count": self.count,
            "episodes": self.ids,
            "error_codes": self.codes,
            "remediation": self.remediation,
            "last_message": self.last_message,
        })
    }
}

/// What the entries say, by kind.
#[derive(Debug, Default)]
pub struct Classified {
    out_of_window: Tally,
    unstamped: Tally,
    rejected: Tally,
    conflict: Tally,
    too_large: Tally,
    archive_failed: Tally,
    auth: Tally,
    unreachable: Tally,
    store_full: Tally,
    local_io: Tally,
    watchdog: Tally,
    restarts: Tally,
    start_failures: Tally,
    /// SIGHUPs whose config did not load, since the last one that did.
    reload_failed: Tally,
    shipped: usize,
    entries: usize,
}

/// Sorts every entry into its kind.
pub fn classify(entries: &[Entry]) -> Classified {
    let mut c = Classified {
        entries: entries.len(),
        ..Classified::default()
    };
    for e in entries {
        let event = field(e, "EVENT");
        let code = field(e, "ERROR_CODE").unwrap_or_default();
        let status: Option<u16> = field(e, "HTTP_STATUS").and_then(|s| s.parse().ok());
        match event.as_deref() {
            Some("quarantined") => match code.as_str() {
                "commit_out_of_window" => c.out_of_window.add(e),
                "stamp_missing" | "stamp_malformed" | "stamp_mismatch" | "meta_invalid"
                | "meta_missing" => c.unstamped.add(e),
                "conflict" => c.conflict.add(e),
                "too_large" => c.too_large.add(e),
                "archive_failed" => c.archive_failed.add(e),
                _ => c.rejected.add(e),
            },
            Some("retry") => {
                if code == "unauthenticated"
                    || code == "host_mismatch"
                    || matches!(status, Some(401 | 403))
                {
                    c.auth.add(e);
                } else if status == Some(507) || code == "insufficient_storage" {
                    c.store_full.add(e);
                } else {
                    c.unreachable.add(e);
                }
            }
            Some("io_error" | "scan_failed" | "status_write_failed" | "meta_unreadable") => {
                c.local_io.add(e);
            }
            Some("shipped") => c.shipped += 1,
            Some("reload_failed") => c.reload_failed.add(e),
            // A later reload that loaded the file settles the failed ones.
            Some("reloaded" | "bwlimit_changed" | "reload_needs_restart") => {
                c.reload_failed = Tally::default();
            }
            Some(_) => {}
            None => classify_plain(&mut c, e),
        }
    }
    c
}

/// Lines without `EVENT`: systemd's own messages about the unit, and the
/// shipper's start-up errors (printed before logging exists).
fn classify_plain(c: &mut Classified, e: &Entry) {
    let message = field(e, "MESSAGE").unwrap_or_default();
    let from_systemd = field(e, "UNIT").as_deref() == Some(UNIT)
        && field(e, "_SYSTEMD_UNIT").as_deref() != Some(UNIT);
    if from_systemd {
        if message.contains("Watchdog timeout") {
            c.watchdog.add(e);
        } else if message.contains("Scheduled restart job") {
            c.restarts.add(e);
        } else if message.contains("Start request repeated too quickly") {
            c.start_failures.add(e);
        }
    } else if message.starts_with("shipper: ") {
        // `shipper: invalid configuration: …` and friends, from main().
        c.start_failures.add(e);
    }
}

/// The journal's findings. `running`: what the service manager says, when
/// there is one; `data_dir` (from a valid config) makes fixes concrete.
pub fn check(opts: &Options, running: Option<bool>, data_dir: Option<&Path>) -> Vec<Finding> {
    match read(opts) {
        Ok(entries) => findings(&classify(&entries), opts, running, data_dir),
        Err(Unreadable::NoJournalctl) => vec![Finding::new(
            Level::Warn,
            "journal",
            "journalctl is not installed here: the shipper's log could not be checked",
            None,
            90,
        )],
        Err(Unreadable::Denied { user, detail }) => vec![Finding::new(
            Level::Warn,
            "journal",
            format!(
                "user {user} may not read the system journal, so the shipper's log was not checked{}; run doctor with sudo, or join the journal readers",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
            Some(Fix::safe(format!(
                "sudo usermod -aG systemd-journal {user}   # then log in again"
            ))),
            45,
        )],
        Err(Unreadable::Failed(m)) => vec![Finding::new(
            Level::Warn,
            "journal",
            format!("the journal could not be read: {m}"),
            None,
            46,
        )],
    }
}

fn findings(
    c: &Classified,
    opts: &Options,
    running: Option<bool>,
    data_dir: Option<&Path>,
) -> Vec<Finding> {
    let window = super::age(opts.since);
    let cfg = opts.config.display();
    let mut out = Vec::new();
    let mut push = |level, tally: &Tally, finding: String, fix: Option<Fix>, rank| {
        if tally.count > 0 {
            out.push(
                Finding::new(level, "journal", finding, fix, rank).with_details(tally.details()),
            );
        }
    };
    let t = &c.start_failures;
    push(
        Level::Fail,
        t,
        format!(
            "the shipper failed to start {} time(s): {}",
            t.count,
            t.last_message.as_deref().unwrap_or("")
        ),
        Some(Fix::restart(format!(
            "sudoedit {cfg} && sudo systemctl restart {UNIT}"
        ))),
        5,
    );
    let t = &c.out_of_window;
    push(
        Level::Fail,
        t,
        format!(
            "{} ship(s) rejected as out-of-window (412): {}",
            t.count,
            t.ids()
        ),
        t.remediation.clone().map(Fix::foreign),
        10,
    );
    let t = &c.watchdog;
    push(
        Level::Fail,
        t,
        format!(
            "systemd killed the shipper {} time(s) for missing its watchdog (it hung)",
            t.count
        ),
        Some(Fix::safe(format!(
            "journalctl -u {UNIT} --since -{window} --no-pager | tail -50"
        ))),
        12,
    );
    let t = &c.auth;
    push(
        Level::Fail,
        t,
        format!(
            "{} upload(s) refused: the receiver does not accept this host's identity ({}): {}",
            t.count,
            t.codes(),
            t.last_message.as_deref().unwrap_or("")
        ),
        Some(Fix::safe(format!(
            "sudo -u labship /opt/labship/bin/shipper --ping --config {cfg}"
        ))),
        15,
    );
    let t = &c.local_io;
    // The usual cause: a producer wrote with umask 022, so the shipper (in
    // the group, not the owner) may not move the episode's directory.
    let denied = t
        .last_message
        .as_deref()
        .is_some_and(|m| m.contains("Permission denied"));
    let data_dir = data_dir.unwrap_or(Path::new("/var/lib/labship"));
    push(
        Level::Fail,
        t,
        format!(
            "{} local I/O error(s) on the data directory: {}",
            t.count,
            t.last_message.as_deref().unwrap_or("")
        ),
        denied.then(|| {
            Fix::safe(format!(
                "sudo chmod -R g+rwX {}   # and make producers write with umask 002",
                t.ids
                    .iter()
                    .map(|id| data_dir.join("episodes").join(id).display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        }),
        18,
    );
    let t = &c.unstamped;
    push(
        Level::Fail,
        t,
        format!(
            "{} episode(s) quarantined as unstamped (400; {}): {}",
            t.count,
            t.codes(),
            t.ids()
        ),
        Some(t.remediation.clone().map_or_else(
            || Fix::safe("make the producer write code_version.commit (40 lowercase hex) into each episode's meta.json"),
            Fix::foreign,
        )),
        20,
    );
    let t = &c.rejected;
    push(
        Level::Fail,
        t,
        format!(
            "{} episode(s) rejected by the receiver ({}): {}",
            t.count,
            t.codes(),
            t.ids()
        ),
        t.remediation.clone().map(Fix::foreign),
        25,
    );
    let t = &c.conflict;
    push(
        Level::Fail,
        t,
        format!(
            "{} episode(s) conflict with a different archive already stored under the same id (409): {}",
            t.count,
            t.ids()
        ),
        None,
        30,
    );
    let t = &c.too_large;
    push(
        Level::Fail,
        t,
        format!(
            "{} episode(s) over the receiver's size limit (413): {}",
            t.count,
            t.ids()
        ),
        None,
        35,
    );
    let t = &c.archive_failed;
    push(
        Level::Fail,
        t,
        format!(
            "{} episode(s) could not be packed (symlink or special file): {}",
            t.count,
            t.ids()
        ),
        None,
        38,
    );
    let t = &c.unreachable;
    push(
        Level::Warn,
        t,
        format!(
            "{} transient failure(s) reaching the receiver (will retry): {}",
            t.count,
            t.last_message.as_deref().unwrap_or("")
        ),
        Some(Fix::safe(format!(
            "sudo -u labship /opt/labship/bin/shipper --ping --config {cfg}"
        ))),
        40,
    );
    let t = &c.store_full;
    push(
        Level::Warn,
        t,
        format!(
            "the receiver's store is full (507) — {} retry(ies); the central operator must free space",
            t.count
        ),
        None,
        41,
    );
    let t = &c.reload_failed;
    push(
        Level::Warn,
        t,
        format!(
            "the last reload (SIGHUP, systemctl reload) failed, the shipper runs on the config it had: {}",
            t.last_message.as_deref().unwrap_or("")
        ),
        // A reload applies the cap alone: nothing in flight is cut.
        Some(Fix::safe(format!(
            "sudoedit {cfg} && sudo -u labship /opt/labship/bin/shipper --check-config --config {cfg} && sudo systemctl reload {UNIT}"
        ))),
        42,
    );
    let t = &c.restarts;
    push(
        Level::Warn,
        t,
        format!("the shipper was restarted {} time(s)", t.count),
        None,
        60,
    );
    if c.entries == 0 {
        match running {
            Some(true) | None if opts.journal_file.is_some() => {}
            Some(true) => out.push(Finding::ok(
                "journal",
                format!("no log lines in the last {window} (the shipper is quiet when healthy)"),
            )),
            // The service check reports a stopped unit.
            Some(false) => {}
            None => out.push(Finding::new(
                Level::Warn,
                "journal",
                format!(
                    "no log lines from {UNIT} in the last {window}: the shipper is probably not running"
                ),
                Some(Fix::safe(format!("sudo systemctl enable --now {UNIT}"))),
                50,
            )),
        }
    } else if out.is_empty() {
        out.push(Finding::ok(
            "journal",
            format!("{} line(s) in the last {window}, no trouble", c.entries),
        ));
    }
    out.push(Finding::ok(
        "activity",
        format!("{} episode(s) shipped in the last {window}", c.shipped),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: &[(&str, Value)]) -> Entry {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    /// Through NSS (glibc's `getpwuid_r`/`getgrnam_r`, so also LDAP or
    /// SSSD where nsswitch.conf names them; only `files` can be tested here).
    #[test]
    fn users_and_groups_come_from_the_name_service() {
        assert_eq!(user_by_uid(0).as_deref(), Some("root"));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-labship-test"), None);
        assert_eq!(user_by_uid(4_000_000_000), None);
        // The same answer `id` gives (through the same NSS).
        let id = |flag: &str, arg: &str| {
            let out = std::process::Command::new("id")
                .args([flag, arg])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(user_name(), id("-un", &uid.to_string()));
        for g in JOURNAL_READERS {
            let getent = std::process::Command::new("getent")
                .args(["group", g])
                .output()
                .unwrap();
            let want = String::from_utf8_lossy(&getent.stdout)
                .split(':')
                .nth(2)
                .and_then(|gid| gid.parse().ok());
            assert_eq!(group_id(g), want, "{g}");
        }
    }

    #[test]
    fn fields_as_journald_writes_them() {
        let e = entry(&[
            ("A", "x".into()),
            ("B", serde_json::json!([104, 105])),
            ("C", serde_json::json!(["one", "two"])),
        ]);
        assert_eq!(field(&e, "A").as_deref(), Some("x"));
        assert_eq!(field(&e, "B").as_deref(), Some("hi"));
        assert_eq!(field(&e, "C").as_deref(), Some("two"));
        assert_eq!(field(&e, "D"), None);
    }

    #[test]
    fn events_by_field_and_systemd_by_unit() {
        let q = |code: &str, id: &str| {
            entry(&[
                ("EVENT", "quarantined".into()),
                ("ERROR_CODE", code.into()),
                ("EPISODE_ID", id.into()),
                ("REMEDIATION", "fix-it".into()),
                ("_SYSTEMD_UNIT", UNIT.into()),
            ])
        };
        let entries = vec![
            q("commit_out_of_window", "a"),
            q("commit_out_of_window", "b"),
            q("stamp_missing", "c"),
            entry(&[
                ("EVENT", "retry".into()),
                ("HTTP_STATUS", "403".into()),
                ("ERROR_CODE", "host_mismatch".into()),
            ]),
            entry(&[
                (
                    "MESSAGE",
                    "labship-shipper.service: Watchdog timeout (limit 2s)!".into(),
                ),
                ("UNIT", UNIT.into()),
                ("_SYSTEMD_UNIT", "init.scope".into()),
            ]),
            // The service's own line that merely mentions a watchdog is not systemd's.
            entry(&[
                ("MESSAGE", "Watchdog timeout".into()),
                ("UNIT", UNIT.into()),
                ("_SYSTEMD_UNIT", UNIT.into()),
            ]),
        ];
        let c = classify(&entries);
        assert_eq!(c.out_of_window.count, 2);
        assert_eq!(c.out_of_window.remediation.as_deref(), Some("fix-it"));
        assert_eq!(c.unstamped.count, 1);
        assert_eq!(c.auth.count, 1);
        assert_eq!(c.watchdog.count, 1);
    }

    /// A failed reload is reported until a later one loads the file.
    #[test]
    fn a_failed_reload_is_reported_until_one_succeeds() {
        let ev = |event: &str, message: &str| {
            entry(&[
                ("EVENT", event.into()),
                ("MESSAGE", message.into()),
                ("_SYSTEMD_UNIT", UNIT.into()),
            ])
        };
        let failed = ev(
            "reload_failed",
            "SIGHUP: the config does not load; the running config stays: /etc/labship/shipper.toml: limits.bwlimit: bad",
        );
        let opts = Options {
            config: "/etc/labship/shipper.toml".into(),
            since: std::time::Duration::from_secs(3600),
            journal_file: Some("x".into()),
            no_ping: true,
            now: SystemTime::now(),
        };
        let rows = findings(&classify(std::slice::from_ref(&failed)), &opts, None, None);
        let row = rows
            .iter()
            .find(|f| f.finding.contains("reload"))
            .expect("a reload row");
        assert_eq!(row.level, Level::Warn);
        assert!(row.finding.contains("limits.bwlimit"), "{}", row.finding);
        assert!(
            row.fix
                .as_deref()
                .is_some_and(|f| f.contains("systemctl reload")),
            "{row:?}"
        );
        assert!(!row.disruptive);
        let settled = [
            failed,
            ev("bwlimit_changed", "SIGHUP: upload cap now 1 MiB/s"),
        ];
        let rows = findings(&classify(&settled), &opts, None, None);
        assert!(
            !rows.iter().any(|f| f.finding.contains("reload")),
            "{rows:?}"
        );
    }
}
