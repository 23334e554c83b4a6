//! The location of an open resumable upload (CONTRACT §9), kept beside its
//! archive as `outbox/<id>.upload`, so a shipper restarted after `kill -9`
//! resumes where the receiver is instead of from byte 0.
//!
//! Written like every durable step (temp name, fsync, rename, fsync the
//! directory: [`crate::disk::write_atomic`]); it records the digest and size
//! of the archive it belongs to, and a location whose record does not match
//! the archive now in `outbox/` (or is not this receiver's upload path for
//! this host and episode) is ignored and removed. It goes with its archive:
//! [`Layout::drop_outbox`] (retire, quarantine, a stale archive) removes it
//! first, and [`Layout::prepare`] keeps it only beside a complete pair.
//! docs/transport.md has the crash windows. [`load`] runs in its episode's
//! span (the driver's), which gives its events their `episode_id`.

use crate::disk::Layout;
use crate::state::Archive;
use labship_protocol::Id;
use labship_protocol::upload::parse_location;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;

/// The file name's suffix after the episode id.
pub const SUFFIX: &str = ".upload";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    location: String,
    digest: String,
    bytes: u64,
}

/// `outbox/<id>.upload`.
pub fn path(layout: &Layout, id: &Id) -> PathBuf {
    layout.outbox.join(format!("{id}{SUFFIX}"))
}

/// Whether `location` is this receiver's upload path for `host` and `id`:
/// the only kind the shipper persists, asks or appends to.
pub fn ours(location: &str, host: &Id, id: &Id) -> bool {
    parse_location(location).is_some_and(|(h, e, _)| h == host.as_str() && e == id.as_str())
}

/// The saved location of `archive`'s upload, if one is saved for it. A
/// record for other bytes (another digest or size: the episode was packed
/// again), an unreadable one, or one that is not an upload path for `host`
/// and `id` is removed and ignored.
pub fn load(layout: &Layout, host: &Id, id: &Id, archive: &Archive) -> Option<String> {
    let file = path(layout, id);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %file.display(), error = %e, "cannot read the saved upload location; starting a new upload");
            return None;
        }
    };
    let why = match serde_json::from_slice::<Record>(&bytes) {
        Err(e) => format!("unreadable ({e})"),
        Ok(r) if r.digest != archive.digest.header_value() || r.bytes != archive.bytes => format!(
            "it was saved for other bytes ({} bytes, {}) than the archive now in outbox/ ({} bytes, {})",
            r.bytes,
            r.digest,
            archive.bytes,
            archive.digest.header_value()
        ),
        Ok(r) if !ours(&r.location, host, id) => format!(
            "{:?} is not this receiver's upload path for host {host}, episode {id}",
            r.location
        ),
        Ok(r) => return Some(r.location),
    };
    crate::journal::location_dropped(&file, &why);
    if let Err(e) = remove(layout, id) {
        tracing::warn!(path = %file.display(), error = %e, "cannot remove the saved upload location");
    }
    None
}

/// Saves `location` for `archive` (durably: it survives a crash).
pub fn save(layout: &Layout, id: &Id, archive: &Archive, location: &str) -> io::Result<()> {
    let record = Record {
        location: location.to_owned(),
        digest: archive.digest.header_value(),
        bytes: archive.bytes,
    };
    let json = serde_json::to_vec(&record).map_err(io::Error::other)?;
    crate::disk::write_atomic(&path(layout, id), &json)?;
    crate::crash_point("resume:location-saved");
    Ok(())
}

/// Removes the saved location, if any (durably).
pub fn remove(layout: &Layout, id: &Id) -> io::Result<()> {
    match std::fs::remove_file(path(layout, id)) {
        Ok(()) => {
            crate::disk::fsync_dir(&layout.outbox)?;
            crate::crash_point("resume:location-removed");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labship_protocol::upload::{Token, location};

    fn archive(data: &[u8]) -> Archive {
        crate::state::test_archive(data)
    }

    #[test]
    fn a_location_is_kept_only_for_its_own_bytes_host_and_episode() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        std::fs::create_dir_all(&layout.outbox).unwrap();
        let (host, id, other) = (
            Id::parse("rig-01").unwrap(),
            Id::parse("ep-1").unwrap(),
            Id::parse("ep-2").unwrap(),
        );
        let loc = location("rig-01", "ep-1", &Token::from_random([3; 16]));
        let a = archive(b"first");
        save(&layout, &id, &a, &loc).unwrap();
        assert_eq!(load(&layout, &host, &id, &a), Some(loc.clone()));
        // Packed again to other bytes: ignored and removed.
        assert_eq!(load(&layout, &host, &id, &archive(b"second")), None);
        assert!(!path(&layout, &id).exists());
        // Another episode's location saved under this id: never followed.
        save(&layout, &other, &a, &loc).unwrap();
        assert_eq!(load(&layout, &host, &other, &a), None);
        assert!(!path(&layout, &other).exists());
        // Not an upload path at all, or garbage.
        save(
            &layout,
            &id,
            &a,
            "https://elsewhere.example/v1/uploads/rig-01/ep-1/x",
        )
        .unwrap();
        assert_eq!(load(&layout, &host, &id, &a), None);
        std::fs::write(path(&layout, &id), b"{not json").unwrap();
        assert_eq!(load(&layout, &host, &id, &a), None);
        assert!(!path(&layout, &id).exists());
        remove(&layout, &id).unwrap();
    }
}
