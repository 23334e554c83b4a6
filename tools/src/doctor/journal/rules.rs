//! The journal's rules, as data: which entries each row counts, its level
//! and [`Rank`], how it reads and what fixes it. [`super::classify`] counts
//! the entries per rule; [`super::findings`] writes one row per rule that
//! counted any. docs/doctor.md, "Journal rules", is this table for people.

use super::classify::Tally;
use crate::doctor::{Fix, Level, Rank, UNIT};
use labship_shipper::disk::Layout;
use std::path::Path;

/// Which journal entries a rule counts.
#[derive(Debug)]
pub(super) enum Match {
    /// The shipper's `EVENT` is one of these.
    Events(&'static [&'static str]),
    /// `EVENT=quarantined` with one of these `ERROR_CODE`s; an empty list:
    /// any code no other rule names.
    Quarantined(&'static [&'static str]),
    /// `EVENT=retry` with one of these `ERROR_CODE`s or `HTTP_STATUS`es;
    /// both empty: any retry no other rule names.
    Retry {
        codes: &'static [&'static str],
        statuses: &'static [u16],
    },
    /// systemd's own message about the unit (`UNIT=`, not the service's
    /// own line) containing this text.
    Systemd(&'static str),
    /// The shipper's start-up error (`shipper: …` on stderr, printed before
    /// logging exists, so without `EVENT`).
    StartupError,
}

/// What a row and its fix may name.
#[derive(Debug)]
pub(super) struct Context<'a> {
    /// The config file, full path.
    pub(super) config: String,
    /// The journal's window, for humans (`10min`).
    pub(super) window: String,
    pub(super) data_dir: &'a Path,
}

/// One kind of trouble in the journal.
#[derive(Debug)]
pub(super) struct Rule {
    pub(super) matches: &'static [Match],
    /// Events after which what was counted so far no longer holds.
    pub(super) settled_by: &'static [&'static str],
    pub(super) level: Level,
    pub(super) rank: Rank,
    pub(super) row: fn(&Tally, &Context<'_>) -> String,
    pub(super) fix: fn(&Tally, &Context<'_>) -> Option<Fix>,
}

/// The local codes the shipper quarantines an unstamped episode with, and
/// the receiver's for a bad stamp.
const UNSTAMPED: &[&str] = &[
    "stamp_missing",
    "stamp_malformed",
    "stamp_mismatch",
    "meta_invalid",
    "meta_missing",
];

/// The shipper's own failures on `data_dir`.
const LOCAL_IO: &[&str] = &[
    "io_error",
    "scan_failed",
    "status_write_failed",
    "meta_unreadable",
];

/// In [`Rank`] order, which is also the order of matching: the first rule
/// naming an entry's event, code or status counts it, then a catch-all.
pub(super) const RULES: &[Rule] = &[
    Rule {
        matches: &[
            Match::Systemd("Start request repeated too quickly"),
            Match::StartupError,
        ],
        // A later start that got as far as serving: the failure is fixed.
        settled_by: &["ready"],
        level: Level::Fail,
        rank: Rank::StartFailed,
        row: |t, _| {
            format!(
                "the shipper failed to start {} time(s): {}",
                t.count,
                t.last()
            )
        },
        fix: |_, c| {
            Some(Fix::restart(format!(
                "sudoedit {} && sudo systemctl restart {UNIT}",
                c.config
            )))
        },
    },
    Rule {
        matches: &[Match::Quarantined(&["commit_out_of_window"])],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::OutOfWindow,
        row: |t, _| {
            format!(
                "{} ship(s) rejected as out-of-window (412): {}",
                t.count,
                t.ids()
            )
        },
        fix: |t, _| t.remediation.clone().map(Fix::foreign),
    },
    Rule {
        matches: &[Match::Systemd("Watchdog timeout")],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::Watchdog,
        row: |t, _| {
            format!(
                "systemd killed the shipper {} time(s) for missing its watchdog (it hung)",
                t.count
            )
        },
        fix: |_, c| {
            Some(Fix::safe(format!(
                "journalctl -u {UNIT} --since -{} --no-pager | tail -50",
                c.window
            )))
        },
    },
    Rule {
        matches: &[Match::Retry {
            codes: &["unauthenticated", "host_mismatch"],
            statuses: &[401, 403],
        }],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::AuthRefused,
        row: |t, _| {
            format!(
                "{} upload(s) refused: the receiver does not accept this host's identity ({}): {}",
                t.count,
                t.codes(),
                t.last()
            )
        },
        fix: |_, c| Some(ping(c)),
    },
    Rule {
        matches: &[Match::Events(LOCAL_IO)],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::LocalIo,
        row: |t, _| {
            format!(
                "{} local I/O error(s) on the data directory: {}",
                t.count,
                t.last()
            )
        },
        fix: local_io_fix,
    },
    Rule {
        matches: &[Match::Quarantined(UNSTAMPED)],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::Unstamped,
        row: |t, _| {
            format!(
                "{} episode(s) quarantined as unstamped (400; {}): {}",
                t.count,
                t.codes(),
                t.ids()
            )
        },
        fix: |t, _| {
            Some(t.remediation.clone().map_or_else(
                || Fix::safe("make the producer write code_version.commit (40 lowercase hex) into each episode's meta.json"),
                Fix::foreign,
            ))
        },
    },
    Rule {
        matches: &[Match::Quarantined(&[])],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::Rejected,
        row: |t, _| {
            format!(
                "{} episode(s) rejected by the receiver ({}): {}",
                t.count,
                t.codes(),
                t.ids()
            )
        },
        fix: |t, _| t.remediation.clone().map(Fix::foreign),
    },
    Rule {
        matches: &[Match::Quarantined(&["conflict"])],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::Conflict,
        row: |t, _| {
            format!(
                "{} episode(s) conflict with a different archive already stored under the same id (409): {}",
                t.count,
                t.ids()
            )
        },
        fix: |_, _| None,
    },
    Rule {
        matches: &[Match::Quarantined(&["too_large"])],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::TooLarge,
        row: |t, _| {
            format!(
                "{} episode(s) over the receiver's size limit (413): {}",
                t.count,
                t.ids()
            )
        },
        fix: |_, _| None,
    },
    Rule {
        matches: &[Match::Quarantined(&["archive_failed"])],
        settled_by: &[],
        level: Level::Fail,
        rank: Rank::ArchiveFailed,
        row: |t, _| {
            format!(
                "{} episode(s) could not be packed (symlink or special file): {}",
                t.count,
                t.ids()
            )
        },
        fix: |_, _| None,
    },
    Rule {
        matches: &[Match::Retry {
            codes: &[],
            statuses: &[],
        }],
        settled_by: &[],
        level: Level::Warn,
        rank: Rank::Unreachable,
        row: |t, _| {
            format!(
                "{} transient failure(s) reaching the receiver (will retry): {}",
                t.count,
                t.last()
            )
        },
        fix: |_, c| Some(ping(c)),
    },
    Rule {
        matches: &[Match::Retry {
            codes: &["insufficient_storage"],
            statuses: &[507],
        }],
        settled_by: &[],
        level: Level::Warn,
        rank: Rank::StoreFull,
        row: |t, _| {
            format!(
                "the receiver's store is full (507) — {} retry(ies); the central operator must free space",
                t.count
            )
        },
        fix: |_, _| None,
    },
    Rule {
        matches: &[Match::Events(&["reload_failed"])],
        // A later reload that loaded the file settles the failed ones.
        settled_by: &["reloaded", "bwlimit_changed", "reload_needs_restart"],
        level: Level::Warn,
        rank: Rank::ReloadFailed,
        row: |t, _| {
            format!(
                "the last reload (SIGHUP, systemctl reload) failed, the shipper runs on the config it had: {}",
                t.last()
            )
        },
        // A reload applies the cap alone: nothing in flight is cut.
        fix: |_, c| {
            Some(Fix::safe(format!(
                "sudoedit {0} && sudo -u labship /opt/labship/bin/shipper --check-config --config {0} && sudo systemctl reload {UNIT}",
                c.config
            )))
        },
    },
    Rule {
        matches: &[Match::Events(&["upload_task_failed"])],
        settled_by: &[],
        level: Level::Warn,
        rank: Rank::UploadTaskFailed,
        // shipper/src/driver/in_flight.rs: a task that ends without an answer (a panic
        // in a debug build, a cancellation) loses nothing: its episode is
        // still in episodes/ and the next pass takes it again. Repeated, it
        // is a shipper bug, and a restart would not fix it.
        row: |t, _| {
            format!(
                "{} upload task(s) ended without the receiver's answer ({}); nothing is lost, the next pass uploads the episode again; if it repeats, it is a shipper bug: report it with these journal lines",
                t.count,
                t.last_error.as_deref().unwrap_or("no detail")
            )
        },
        fix: |_, c| {
            Some(Fix::safe(format!(
                "journalctl _SYSTEMD_UNIT={UNIT} EVENT=upload_task_failed --since -{} --no-pager -o verbose",
                c.window
            )))
        },
    },
    Rule {
        matches: &[Match::Systemd("Scheduled restart job")],
        settled_by: &[],
        level: Level::Warn,
        rank: Rank::Restarts,
        row: |t, _| format!("the shipper was restarted {} time(s)", t.count),
        fix: |_, _| None,
    },
];

/// Checks what the shipper checks: config, TLS, identity, reachability.
fn ping(c: &Context<'_>) -> Fix {
    Fix::safe(format!(
        "sudo -u labship /opt/labship/bin/shipper --ping --config {}",
        c.config
    ))
}

/// The usual cause of a local I/O error: a producer wrote with umask 022,
/// so the shipper (in the group, not the owner) may not move the episode's
/// directory. Other causes have no fix doctor can name.
fn local_io_fix(t: &Tally, c: &Context<'_>) -> Option<Fix> {
    let denied = t
        .last_message
        .as_deref()
        .is_some_and(|m| m.contains("Permission denied"));
    denied.then(|| {
        let episodes = Layout::new(c.data_dir).episodes;
        Fix::safe(format!(
            "sudo chmod -R g+rwX {}   # and make producers write with umask 002",
            t.ids
                .iter()
                .map(|id| episodes.join(id).display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Matching goes in table order: the table must be in rank order, one
    /// rule per rank.
    #[test]
    fn rules_are_in_rank_order_one_per_rank() {
        for pair in RULES.windows(2) {
            assert!(
                pair[0].rank < pair[1].rank,
                "{:?} before {:?}",
                pair[0].rank,
                pair[1].rank
            );
        }
    }

    /// The shipper's events that are no row of their own, and why
    /// (docs/doctor.md, "Journal rules").
    const NOT_ROWS: &[(&str, &str)] = &[
        ("shipped", "the activity row counts it"),
        ("upload_progress", "healthy news"),
        ("left_queue", "healthy news"),
        ("quarantine_removed", "healthy news"),
        ("client_tls_reloaded", "healthy news"),
        ("episode_unreadable", "the unsettled check finds it on disk"),
        (
            "episode_mtime_future",
            "the unsettled check finds it on disk",
        ),
        (
            "client_tls_reload_failed",
            "the certificate row reads the files",
        ),
        ("ops_listen_failed", "not classified yet"),
        ("ops_listener_failed", "not classified yet"),
        ("quarantine_cleanup_failed", "not classified yet"),
        (
            "upload_resumed",
            "healthy news: a cut append goes on from the receiver's offset",
        ),
        (
            "upload_cut",
            "a cut append; the retry row counts the failed attempt",
        ),
        (
            "upload_offset_mismatch",
            "healthy news: the shipper follows the receiver's offset",
        ),
        (
            "upload_restarted",
            "at most two per attempt, once per lost upload; a receiver that keeps losing uploads shows in the retry row",
        ),
        (
            "upload_api_missing",
            "once per process, and archives still ship (by PUT); --ping shows the receiver",
        ),
        (
            "packing_held",
            "the retry row names the failures that keep the archives waiting",
        ),
        (
            "upload_location_dropped",
            "once per stale outbox/<id>.upload (other bytes, not our path); the upload starts over once",
        ),
    ];

    /// Every `event = "…"` the shipper logs is a rule's, or deliberately
    /// not a row: a new event fails here until doctor knows what it means.
    #[test]
    fn every_event_the_shipper_logs_is_classified_or_listed() {
        // The whole tree: the shipper's modules live in subdirectories too.
        let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../shipper/src")];
        let (mut logged, mut files) = (std::collections::BTreeSet::new(), 0);
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (i, _) in text.match_indices("event = \"") {
                    if let Some((name, _)) = text[i + 9..].split_once('"') {
                        logged.insert(name.to_owned());
                    }
                }
            }
        }
        // A walk that reads too little would pass without checking anything.
        assert!(files >= 20, "{files} files read under shipper/src");
        assert!(logged.len() >= 25, "{logged:?}");
        assert!(logged.contains("quarantined"), "{logged:?}");
        let ruled = |name: &str| {
            RULES.iter().any(|r| {
                r.settled_by.contains(&name)
                    || r.matches.iter().any(|m| match m {
                        Match::Events(events) => events.contains(&name),
                        Match::Quarantined(_) => name == "quarantined",
                        Match::Retry { .. } => name == "retry",
                        Match::Systemd(_) | Match::StartupError => false,
                    })
            })
        };
        for name in &logged {
            assert!(
                ruled(name) || NOT_ROWS.iter().any(|(n, _)| n == name),
                "the shipper logs event {name:?}: add a rule to RULES or list it in NOT_ROWS (and docs/doctor.md)"
            );
        }
    }
}
