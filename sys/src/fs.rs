//! The file helpers both daemons need beside tempfile's write-then-rename:
//! making a rename or unlink itself durable, and one process per directory.

use std::fs::File;
use std::io;
use std::path::Path;

/// fsyncs a directory, so the renames, creations and removals in it survive
/// a power cut (docs/transport.md, receiver/src/store: "fsync the
/// directory").
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Opens (creating) the lock file `path` and takes an exclusive `flock` on
/// it without waiting: `Ok(None)` when another process holds it. The lock
/// lasts while the returned file is open (the process's life), and the
/// kernel drops it with the process, however that ends (`kill -9`).
/// Opened read-only where that is enough: a file held open for writing
/// would keep its filesystem from being remounted read-only beside the
/// daemon. On NFS, where `flock` is a byte-range lock that an exclusive
/// holder must have open for writing (read-only: `EBADF`), it is opened
/// for writing.
pub fn try_lock(path: &Path) -> io::Result<Option<File>> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o640),
    )?;
    let mut file = File::from(fd);
    let mut locked = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive);
    if locked == Err(rustix::io::Errno::BADF) {
        file = File::options().write(true).open(path)?;
        locked = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive);
    }
    match locked {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
