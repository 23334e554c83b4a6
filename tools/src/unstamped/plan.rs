//! The decision about one directory in `episodes/` ([`judge`]: looks,
//! changes nothing) and carrying it out ([`act`]: the shipper's own
//! never-overwriting quarantine move, or nothing in a dry run).

use super::{Kept, Outcome, Target};
use labship_protocol::Id;
use labship_protocol::stamp::META_FILE;
use labship_shipper::disk::{REASON_FILE, ReasonFile};
use labship_shipper::scan::{newest_mtime, read_stamp};
use labship_shipper::state::{Reason, unstamped_reason};
use std::io;
use std::path::Path;
use std::time::SystemTime;

pub(super) fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The code and message of a reason file already in the episode, if readable.
fn existing_reason(path: &Path) -> Option<(String, String)> {
    let bytes = std::fs::read(path).ok()?;
    let r: ReasonFile = serde_json::from_slice(&bytes).ok()?;
    Some((r.reason, r.message))
}

/// A decision about one directory, before anything is changed.
#[derive(Debug)]
pub(super) enum Plan {
    Leave(Outcome),
    Quarantine(Quarantine),
}

/// An episode to move into `quarantine/`, and the reason its file gives.
#[derive(Debug)]
pub(super) struct Quarantine {
    id: Id,
    reason: Reason,
    /// The reason file is already in the episode (an interrupted
    /// quarantine): finish the move with it.
    pending: bool,
    code: String,
    message: String,
}

/// Looks at one directory in `episodes/`; changes nothing.
pub(super) fn judge(t: &Target, name: &str, is_dir: bool) -> Plan {
    let leave = Plan::Leave;
    if !is_dir {
        return leave(Outcome::NotADirectory);
    }
    let id = match Id::parse(name) {
        Ok(id) => id,
        Err(e) => return leave(Outcome::InvalidName(e)),
    };
    let layout = &t.layout;
    let dir = layout.episodes.join(name);
    let archive = layout.archive_path(&id);
    if archive.exists() {
        return leave(Outcome::Kept(Kept::ShipperHandling(archive)));
    }
    let reason_path = dir.join(REASON_FILE);
    let pending = reason_path.is_file();
    let meta = dir.join(META_FILE);
    let unfinished = || {
        leave(if !exists(&dir) {
            Outcome::Gone
        } else if pending {
            Outcome::Kept(Kept::PendingByShipper(reason_path.clone()))
        } else {
            Outcome::Kept(Kept::Unfinished)
        })
    };
    if !meta.is_file() {
        return unfinished();
    }
    let why = match read_stamp(&meta) {
        Ok(Ok(_)) if pending => return leave(Outcome::Kept(Kept::PendingByShipper(reason_path))),
        Ok(Ok(commit)) => return leave(Outcome::Kept(Kept::Stamped(commit))),
        Ok(Err(why)) => why,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return unfinished(),
        Err(e) => {
            return leave(Outcome::Kept(Kept::Unreadable {
                path: meta,
                error: e.to_string(),
            }));
        }
    };
    let reason = unstamped_reason(&why);
    let code = reason.code.as_str();
    // An interrupted quarantine is finished with the decision already made
    // (its reason file); its write bumped the tree's mtime, so no settle.
    let (code, message) = if pending {
        existing_reason(&reason_path).unwrap_or_else(|| (code.to_owned(), reason.message.clone()))
    } else {
        let newest = newest_mtime(&dir);
        let now = SystemTime::now();
        if now < newest + t.settle {
            return leave(Outcome::Kept(Kept::StillWritten {
                code,
                age: now.duration_since(newest).unwrap_or_default(),
                settle: t.settle,
            }));
        }
        (code.to_owned(), reason.message.clone())
    };
    Plan::Quarantine(Quarantine {
        id,
        reason,
        pending,
        code,
        message,
    })
}

/// Carries out a plan (unless `dry_run`).
pub(super) fn act(t: &Target, plan: Plan, dry_run: bool) -> Outcome {
    let q = match plan {
        Plan::Leave(outcome) => return outcome,
        Plan::Quarantine(q) => q,
    };
    let layout = &t.layout;
    if dry_run {
        return Outcome::WouldQuarantine {
            into: layout.quarantine.clone(),
            code: q.code,
            message: q.message,
        };
    }
    let moved = if q.pending {
        layout.finish_quarantine(&q.id)
    } else {
        layout.quarantine(&q.id, &t.host_id, &q.reason)
    };
    let dir = layout.episodes.join(q.id.as_str());
    match moved {
        Ok(dest) => Outcome::Quarantined {
            dest,
            code: q.code,
            message: q.message,
            finished: q.pending,
        },
        // Source gone: the shipper moved it between our look and our move.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !exists(&dir) => {
            Outcome::AlreadyQuarantined
        }
        Err(e) => Outcome::Failed(format!(
            "cannot move {} into {}: {e}",
            dir.display(),
            layout.quarantine.display(),
        )),
    }
}
