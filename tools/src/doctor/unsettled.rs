//! Episodes that can never settle: finished (their `meta.json` is there) but
//! the shipper waits for their tree to be quiet (`shipper/src/scan.rs`), and
//! it never will be:
//!
//! - a subtree the shipper's user may not read: its mtimes are unknown, so
//!   the shipper counts it as just changed, on every pass;
//! - an mtime further ahead of the clock than
//!   [`labship_shipper::scan::FUTURE_SKEW`]: the episode waits until then.
//!
//! One finding per episode, by name, with its cause and a fix that changes
//! only mtimes or permissions (never data); at most [`LISTED`], then one row
//! saying how many more. Healthy queues add no row.
//!
//! Read permission is judged for the shipper's user (`labship`, with its
//! groups and the unit's `SupplementaryGroups=labship-producers`) from the
//! mode bits, since doctor usually runs as root, who may read everything;
//! ACLs are not consulted. Without a `labship` user, for doctor's own user.

use super::{Finding, Fix, Level, Rank, age};
use labship_protocol::Id;
use labship_protocol::stamp::META_FILE;
use labship_shipper::disk::Layout;
use labship_shipper::scan::FUTURE_SKEW;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Episodes named one per row; the rest are counted.
pub const LISTED: usize = 10;
/// The unit's `User=` and `SupplementaryGroups=` (etc/labship-shipper.service).
const SHIPPER_USER: &str = "labship";
const PRODUCERS: &str = "labship-producers";

/// Who must read the episodes.
#[derive(Debug, Clone)]
pub struct Reader {
    pub name: String,
    pub uid: u32,
    pub gids: Vec<u32>,
    /// The producers' group is among `gids` (the fix names it).
    pub producers: bool,
}

impl Reader {
    /// The shipper's user, or this process's when there is none.
    pub fn shipper() -> Self {
        use nix::unistd::{Gid, Group, User, getgrouplist};
        let producers = Group::from_name(PRODUCERS).ok().flatten().map(|g| g.gid);
        if let Ok(Some(u)) = User::from_name(SHIPPER_USER) {
            let mut gids: Vec<Gid> = std::ffi::CString::new(u.name.clone())
                .ok()
                .and_then(|n| getgrouplist(&n, u.gid).ok())
                .unwrap_or_else(|| vec![u.gid]);
            gids.extend(producers);
            return Self {
                name: u.name,
                uid: u.uid.as_raw(),
                producers: producers.is_some(),
                gids: gids.into_iter().map(Gid::as_raw).collect(),
            };
        }
        let uid = rustix::process::geteuid().as_raw();
        let mut gids = vec![rustix::process::getegid().as_raw()];
        gids.extend(
            rustix::process::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw()),
        );
        let name = User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        Self {
            name,
            uid,
            producers: producers.is_some_and(|p| gids.contains(&p.as_raw())),
            gids,
        }
    }

    /// What the mode bits let this user do: read a file, list and enter a
    /// directory.
    fn may_read(&self, m: &std::fs::Metadata) -> bool {
        let need = if m.is_dir() { 0o5 } else { 0o4 };
        self.may(m, need)
    }

    /// Whether the mode bits grant this user `need` (r 4, w 2, x 1).
    fn may(&self, m: &std::fs::Metadata, need: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = m.mode();
        let bits = if m.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&m.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & need == need
    }

    /// Where the mode bits stop this user from reading the file at `path`:
    /// a directory on the way it may not enter, or the file itself, with
    /// its metadata. `None` when it may, or when something on the way
    /// cannot be stat'ed (other checks name a missing file).
    pub fn blocked_at(&self, path: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
        let path = std::fs::canonicalize(path).ok()?;
        let mut at = PathBuf::new();
        let parts: Vec<_> = path.components().collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let m = std::fs::metadata(&at).ok()?;
            let need = if i + 1 == parts.len() { 0o4 } else { 0o1 };
            if !self.may(&m, need) {
                return Some((at, m));
            }
        }
        None
    }
}

/// Why one episode cannot settle.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    Unreadable {
        path: PathBuf,
        mode: u32,
        owner: (u32, u32),
    },
    Future {
        path: PathBuf,
        ahead: Duration,
        count: usize,
    },
}

/// The findings for every finished episode under `data_dir/episodes`.
pub fn check(data_dir: &Path, now: SystemTime) -> Vec<Finding> {
    check_as(data_dir, now, &Reader::shipper())
}

pub fn check_as(data_dir: &Path, now: SystemTime, reader: &Reader) -> Vec<Finding> {
    let episodes = Layout::new(data_dir).episodes;
    let mut names: Vec<String> = std::fs::read_dir(&episodes)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| Id::parse(n).is_ok())
        .collect();
    names.sort();
    let stuck: Vec<(String, Cause)> = names
        .into_iter()
        .filter_map(|n| {
            let dir = episodes.join(&n);
            // Unfinished ones are the `unfinished` check's.
            std::fs::symlink_metadata(dir.join(META_FILE)).ok()?;
            Some((n, examine(&dir, now, reader)?))
        })
        .collect();
    let mut out: Vec<Finding> = stuck
        .iter()
        .take(LISTED)
        .map(|(name, cause)| finding(&episodes.join(name), name, cause, reader))
        .collect();
    if stuck.len() > LISTED {
        let more: Vec<&str> = stuck[LISTED..].iter().map(|(n, _)| n.as_str()).collect();
        out.push(Finding::new(
            Level::Warn,
            "unsettled",
            format!(
                "{} more episode(s) cannot settle for the same kinds of cause: {}{}",
                more.len(),
                more.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                if more.len() > 5 { ", …" } else { "" }
            ),
            Some(Fix::safe("sudo /opt/labship/bin/doctor --json   # details of each, after fixing the ones above")),
            Rank::Unsettled,
        ).with_details(serde_json::json!({"more": more})));
    }
    out
}

/// The first unreadable entry in the tree, else the entry furthest in the
/// future; `None` when the episode can settle. Entries doctor itself may
/// not see are skipped: it cannot tell.
fn examine(dir: &Path, now: SystemTime, reader: &Reader) -> Option<Cause> {
    let mut future: Option<(PathBuf, Duration)> = None;
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.file_type().is_symlink() && !reader.may_read(&m) {
            return Some(Cause::Unreadable {
                path,
                mode: m.mode() & 0o7777,
                owner: (m.uid(), m.gid()),
            });
        }
        if let Ok(ahead) = m
            .modified()
            .map(|t| t.duration_since(now).unwrap_or_default())
            && ahead > FUTURE_SKEW
        {
            count += 1;
            if future.as_ref().is_none_or(|(_, a)| ahead > *a) {
                future = Some((path.clone(), ahead));
            }
        }
        if m.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    future.map(|(path, ahead)| Cause::Future { path, ahead, count })
}

fn finding(dir: &Path, name: &str, cause: &Cause, reader: &Reader) -> Finding {
    let (text, fix, details) = match cause {
        Cause::Unreadable { path, mode, owner } => {
            let p = sh_quote(path);
            let fix = if reader.producers {
                format!("sudo chgrp -R {PRODUCERS} {p} && sudo chmod -R g+rX {p}")
            } else {
                format!(
                    "sudo chown -R {} {p} && sudo chmod -R u+rX {p}",
                    reader.name
                )
            };
            (
                format!(
                    "episode {name} cannot ship: {} is not readable by user {} (owner {}:{}, mode {mode:04o}); the shipper waits for it forever",
                    path.display(),
                    reader.name,
                    owner.0,
                    owner.1
                ),
                fix,
                serde_json::json!({"episode": name, "cause": "unreadable", "path": path,
                    "mode": format!("{mode:04o}"), "uid": owner.0, "gid": owner.1, "user": reader.name}),
            )
        }
        Cause::Future { path, ahead, count } => (
            format!(
                "episode {name} cannot settle: {} has an mtime {} in the future ({count} entr{} ahead of this host's clock); the shipper waits until then",
                path.display(),
                age(*ahead),
                if *count == 1 { "y" } else { "ies" }
            ),
            format!(
                "sudo find {} -newermt now -exec touch -m -h {{}} +",
                sh_quote(dir)
            ),
            serde_json::json!({"episode": name, "cause": "mtime_future", "path": path,
                "ahead_s": ahead.as_secs(), "entries": count}),
        ),
    };
    // Permissions and mtimes change; nothing is restarted or deleted.
    Finding::new(
        Level::Warn,
        "unsettled",
        text,
        Some(Fix::safe(fix)),
        Rank::Unsettled,
    )
    .with_details(details)
}

/// A path as one shell word.
pub(crate) fn sh_quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_bits_decide_for_the_shippers_user() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let m = |mode: u32| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(&f).unwrap()
        };
        let owner = std::fs::metadata(&f).unwrap();
        let other = Reader {
            name: "other".into(),
            uid: owner.uid() + 1,
            gids: vec![owner.gid() + 1],
            producers: false,
        };
        let member = Reader {
            gids: vec![owner.gid()],
            ..other.clone()
        };
        assert!(!other.may_read(&m(0o640)));
        assert!(other.may_read(&m(0o644)));
        assert!(member.may_read(&m(0o640)));
        assert!(!member.may_read(&m(0o600)));
        assert_eq!(sh_quote(Path::new("/var/lib/x")), "/var/lib/x");
        assert_eq!(sh_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
