//! Small documents written whole (reason files, sidecars, status.json, the
//! upload location): staged under a temp name that tells whose it is, then
//! renamed into place, with or without the fsyncs that make it durable.

use super::fsync_dir;
use std::io::{self, Write as _};
use std::path::Path;

/// Mode of the small files labship writes (reason files, sidecars,
/// status.json): readable by the group, so `doctor` run by an operator in the
/// `labship` group sees them; tempfile's default is 0600.
static READABLE: std::sync::LazyLock<std::fs::Permissions> =
    std::sync::LazyLock::new(|| std::os::unix::fs::PermissionsExt::from_mode(0o640));

/// The prefix of the temp files this process stages (`.tmp-p<pid>-`), so a
/// start can tell a dead writer's leftovers in `state/` (removed at once)
/// from a live one's (quarantine-unstamped staging a reason file right now).
pub(super) fn tmp_prefix() -> String {
    format!(".tmp-p{}-", std::process::id())
}

/// Whether the temp file `name` was staged by a process that no longer
/// exists (another process under a reused pid reads as alive: its file
/// waits for the minute rule).
pub(super) fn left_by_the_dead(name: &str) -> bool {
    use rustix::process::{Pid, getpid, test_kill_process};
    let Some(pid) = name
        .strip_prefix(".tmp-p")
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<i32>().ok())
        .and_then(Pid::from_raw)
    else {
        return false;
    };
    pid != getpid() && test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

/// `bytes` in a group-readable temp file in `dir`, fsynced when `durable`.
fn staged(dir: &Path, bytes: &[u8], durable: bool) -> io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&tmp_prefix())
        .permissions(READABLE.clone())
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    Ok(tmp)
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically and durably: temp name, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent(path);
    staged(dir, bytes, true)?
        .persist(path)
        .map_err(|e| e.error)?;
    fsync_dir(dir)
}

/// As [`write_atomic`] without the fsyncs: readers see the old document or
/// the new one, never a torn one, but a crash may lose the latest. For
/// documents rewritten every few seconds (status.json's progress), where
/// durability buys nothing and an fsync each time costs the disk.
pub fn write_atomic_nosync(path: &Path, bytes: &[u8]) -> io::Result<()> {
    staged(parent(path), bytes, false)?
        .persist(path)
        .map_err(|e| e.error)?;
    Ok(())
}

/// As [`write_atomic`], but the temp file lives in `scratch` (same
/// filesystem), so a crash never leaves a stray file next to `path`: used for
/// the reason file, which goes inside an episode that may yet be packed.
pub fn write_atomic_via(scratch: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    match staged(scratch, bytes, true)?.persist(path) {
        Ok(_) => fsync_dir(parent(path)),
        // EXDEV: `episodes/` on another filesystem than `state/`.
        Err(e) if e.error.raw_os_error() == Some(18) => write_atomic(path, bytes),
        Err(e) => Err(e.error),
    }
}

/// Renames `from` to `to`, failing with `AlreadyExists` rather than replacing.
pub(super) fn rename_noclobber(from: &Path, to: &Path) -> io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(io::Error::from)
}
