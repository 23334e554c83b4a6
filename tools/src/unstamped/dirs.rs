//! The directories a quarantine needs (`quarantine/`, and `state/` for the
//! reason file's atomic write), created when the shipper never ran on this
//! data dir: owned like the data dir (the installer makes it the service
//! user's, `labship`) and mode 0750, as the installer makes them
//! (`scripts/install-lab-host.sh`, `data_dir_tree`), so the shipper, started
//! later as that user, can use them. Nothing that exists is touched: a path
//! in the way (a file named `quarantine`) makes the move fail with its own
//! message.

use labship_shipper::disk::{Layout, fsync_dir};
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The installer's mode for `outbox/`, `shipped/`, `quarantine/`, `state/`.
const MODE: u32 = 0o750;

/// Creates whichever of `quarantine/` and `state/` is missing; returns the
/// ones it created. The error names the directory.
pub(super) fn ensure(layout: &Layout) -> Result<Vec<PathBuf>, String> {
    let Some(data_dir) = layout.episodes.parent() else {
        return Ok(Vec::new());
    };
    let mut created = Vec::new();
    for dir in [&layout.quarantine, &layout.state] {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => continue,
        }
        create(data_dir, dir).map_err(|e| {
            format!(
                "cannot create {}: {e} (run as root, or as the owner of {})",
                dir.display(),
                data_dir.display()
            )
        })?;
        created.push(dir.clone());
    }
    if !created.is_empty() {
        // The new entries must survive a crash with the episodes moved into them.
        fsync_dir(data_dir).map_err(|e| format!("cannot sync {}: {e}", data_dir.display()))?;
    }
    Ok(created)
}

fn create(data_dir: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir(dir)?;
    let owner = std::fs::metadata(data_dir)?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()))?;
    }
    // Explicit: the umask must not decide who may read quarantined data.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(MODE))
}
