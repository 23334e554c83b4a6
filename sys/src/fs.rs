//! The one durability helper both daemons need beside tempfile's
//! write-then-rename: making a rename or unlink itself durable.

use std::fs::File;
use std::io;
use std::path::Path;

/// fsyncs a directory, so the renames, creations and removals in it survive
/// a power cut (docs/transport.md, receiver/src/store: "fsync the
/// directory").
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}
