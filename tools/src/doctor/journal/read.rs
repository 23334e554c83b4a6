//! Reading the journal: `journalctl -u labship-shipper.service -o json`
//! over `--since` (or a captured file), one [`Entry`] per line, and whether
//! this user may see the system journal at all.

use super::super::{Options, UNIT};
use serde_json::{Map, Value};
use std::time::SystemTime;

/// One journal entry (`journalctl -o json`: one object per line).
pub(super) type Entry = Map<String, Value>;

/// A field as text: journald gives strings, byte arrays for non-UTF-8 and
/// arrays for repeated fields (the last value wins).
pub(super) fn field(e: &Entry, name: &str) -> Option<String> {
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
pub(super) enum Unreadable {
    /// No `journalctl` on this machine.
    NoJournalctl,
    /// Not allowed to see the system journal.
    Denied { user: String, detail: String },
    /// Anything else (the message says what).
    Failed(String),
}

/// Parses `journalctl -o json` output; lines that are not objects are skipped.
pub(super) fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Reads the entries for the unit since `opts.since` ago.
pub(super) fn read(opts: &Options) -> Result<Vec<Entry>, Unreadable> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let e: Entry =
            serde_json::from_str(r#"{"A": "x", "B": [104, 105], "C": ["one", "two"]}"#).unwrap();
        assert_eq!(field(&e, "A").as_deref(), Some("x"));
        assert_eq!(field(&e, "B").as_deref(), Some("hi"));
        assert_eq!(field(&e, "C").as_deref(), Some("two"));
        assert_eq!(field(&e, "D"), None);
    }
}
