//! What the host sees of a container: the pipes of nspawn, its PID 1 in
//! `/proc`, and the cgroups it is given and that are removed after it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(super) fn drain(mut pipe: Box<dyn Read + Send>, sink: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(&buf[..n]);
    }
}

pub(super) fn wait_exit(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The container's PID 1: a child of nspawn that is PID 1 in its own PID
/// namespace (`NSpid: <host pid> 1`). nspawn's other transient children (the
/// outer child that sets up mounts) are not.
pub(super) fn find_leader(nspawn: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .map(str::to_owned)
            };
            let nspid = field("NSpid:").unwrap_or_default();
            let ids: Vec<&str> = nspid.split_whitespace().collect();
            field("PPid:").as_deref() == Some(nspawn.to_string().as_str())
                && ids.len() >= 2
                && ids.last() == Some(&"1")
        })
}

/// Creates `<name>` beside the cgroup this process is in, in each hierarchy
/// systemd tracks units with: cgroup2 (`0::` in /proc/self/cgroup) and, on a
/// hybrid or legacy host, the v1 `name=systemd` one. A hierarchy where that
/// fails is left out (with a note): the container then shares our cgroup.
pub(super) fn own_cgroups(name: &str) -> Vec<PathBuf> {
    let (Ok(mounts), Ok(mine)) = (
        std::fs::read_to_string("/proc/self/mountinfo"),
        std::fs::read_to_string("/proc/self/cgroup"),
    ) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for line in mounts.lines() {
        // `id parent dev root mountpoint opts… - fstype source superopts`
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(root), Some(mount)) = (pre.get(3), pre.get(4)) else {
            continue;
        };
        let own = match (post.first().copied(), post.get(2)) {
            (Some("cgroup2"), _) => mine.lines().find_map(|l| l.strip_prefix("0::")),
            (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == "name=systemd") => mine
                .lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p)),
            _ => None,
        };
        let Some(own) = own else { continue };
        let rel = own
            .strip_prefix(root.trim_end_matches('/'))
            .unwrap_or(own)
            .trim_start_matches('/');
        let dir = Path::new(mount).join(rel).join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => dirs.push(dir),
            Err(e) => eprintln!(
                "note: no cgroup of its own for container {name} ({}: {e}); containers started from this cgroup share one",
                dir.display()
            ),
        }
    }
    dirs
}

/// Removes a cgroup and its children, deepest first (their files are
/// virtual and go with the directory); one still in use stays.
pub(super) fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

pub(super) fn parent_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}
