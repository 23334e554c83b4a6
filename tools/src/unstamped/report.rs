//! How each entry and the closing summary read: one line per directory,
//! saying what became of it and why.

use super::{Entry, Kept, Outcome, Report};
use labship_protocol::stamp::META_FILE;
use std::fmt;

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.name;
        match &self.outcome {
            Outcome::Quarantined {
                dest,
                code,
                message,
                finished,
            } => {
                let note = if *finished {
                    "finished an interrupted quarantine; "
                } else {
                    ""
                };
                write!(
                    f,
                    "quarantined {n} -> {} ({note}{code}: {message})",
                    dest.display()
                )
            }
            Outcome::WouldQuarantine {
                into,
                code,
                message,
            } => write!(
                f,
                "would quarantine {n} -> {}/ ({code}: {message})",
                into.display()
            ),
            Outcome::AlreadyQuarantined => write!(
                f,
                "already quarantined {n} (by the shipper, or another run, meanwhile)"
            ),
            Outcome::Gone => write!(f, "gone {n} (left episodes/ while this ran)"),
            Outcome::Kept(k) => write!(f, "kept {n} ({k})"),
            Outcome::InvalidName(e) => write!(
                f,
                "skipped {n:?} (not a valid episode id: {e}; never shipped, never touched)"
            ),
            Outcome::NotADirectory => {
                write!(f, "skipped {n:?} (not a directory; never touched)")
            }
            Outcome::Failed(e) => write!(f, "failed {n}: {e}"),
        }
    }
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stamped(c) => write!(f, "stamped {c}"),
            Self::Unfinished => write!(f, "no {META_FILE}: not finished, left alone"),
            Self::StillWritten { code, age, settle } => write!(
                f,
                "still being written: changed {}s ago, settle {}s; {code} so far",
                age.as_secs(),
                settle.as_secs()
            ),
            Self::ShipperHandling(p) => {
                write!(f, "the shipper is handling it: {} exists", p.display())
            }
            Self::Unreadable { path, error } => write!(
                f,
                "cannot read {}: {error}; not the episode's fault, left in the queue (check owner and mode)",
                path.display()
            ),
            Self::PendingByShipper(p) => write!(
                f,
                "a quarantine decided by the shipper is pending ({} present); the shipper finishes it",
                p.display()
            ),
        }
    }
}

impl Report {
    fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.entries.iter().filter(|e| pred(&e.outcome)).count()
    }

    /// Moves that failed (exit 1).
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// The closing line: counts of every kind.
    pub fn summary(&self) -> String {
        let kept =
            |pred: fn(&Kept) -> bool| self.count(|o| matches!(o, Outcome::Kept(k) if pred(k)));
        let (moved, verb) = if self.dry_run {
            (
                self.count(|o| matches!(o, Outcome::WouldQuarantine { .. })),
                "summary (dry run, nothing changed): would quarantine",
            )
        } else {
            (
                self.count(|o| matches!(o, Outcome::Quarantined { .. })),
                "summary: quarantined",
            )
        };
        let details: Vec<String> = [
            (kept(|k| matches!(k, Kept::Stamped(_))), "stamped"),
            (
                kept(|k| matches!(k, Kept::StillWritten { .. })),
                "still being written",
            ),
            (kept(|k| matches!(k, Kept::Unfinished)), "without meta.json"),
            (
                kept(|k| matches!(k, Kept::ShipperHandling(_) | Kept::PendingByShipper(_))),
                "handled by the shipper",
            ),
            (
                kept(|k| matches!(k, Kept::Unreadable { .. })),
                "unreadable meta.json",
            ),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let kept_total = self.count(|o| matches!(o, Outcome::Kept(_)));
        let kept = if details.is_empty() {
            kept_total.to_string()
        } else {
            format!("{kept_total} ({})", details.join(", "))
        };
        let gone = match self.count(|o| matches!(o, Outcome::Gone)) {
            0 => String::new(),
            n => format!(", gone meanwhile {n}"),
        };
        let created = match (self.created.is_empty(), self.dry_run) {
            (true, _) => String::new(),
            (false, dry) => format!(
                "; {} {} (mode 0750, owned like the data dir: the shipper never ran here)",
                if dry { "would create" } else { "created" },
                self.created
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        format!(
            "{verb} {moved}, already quarantined meanwhile {}{gone}, kept {kept}, skipped {}, failed {}{created}",
            self.count(|o| matches!(o, Outcome::AlreadyQuarantined)),
            self.count(|o| matches!(o, Outcome::InvalidName(_) | Outcome::NotADirectory)),
            self.failed()
        )
    }
}
