//! The journal check: what the shipper and systemd said about the unit over
//! `--since` (or in a captured file), as rows. Reading is `read`; each
//! kind of trouble is a rule in `rules::RULES` (which entries, level,
//! rank, row, fix), counted by `classify`; `findings` writes one row per
//! rule that counted anything, then the quiet and activity rows. Entries
//! are told apart by the shipper's structured fields, never by a regex over
//! free text where a field exists.

mod classify;
mod read;
mod rules;

use super::{Finding, Fix, Level, Options, Rank, UNIT};
use classify::{Classified, classify};
use read::{Unreadable, read};
use rules::{Context, RULES};
use std::path::Path;

/// The journal's findings. `running`: what the service manager says, when
/// there is one; `data_dir` (from a valid config) makes fixes concrete.
pub fn check(opts: &Options, running: Option<bool>, data_dir: Option<&Path>) -> Vec<Finding> {
    match read(opts) {
        Ok(entries) => findings(&classify(&entries), opts, running, data_dir),
        Err(Unreadable::NoJournalctl) => vec![Finding::new(
            Level::Warn,
            "journal",
            "journalctl is not installed here: the shipper's log could not be checked",
            None,
            Rank::NoJournalctl,
        )],
        Err(Unreadable::Denied { user, detail }) => vec![Finding::new(
            Level::Warn,
            "journal",
            format!(
                "user {user} may not read the system journal, so the shipper's log was not checked{}; run doctor with sudo, or join the journal readers",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
            Some(Fix::safe(format!(
                "sudo usermod -aG systemd-journal {user}   # then log in again"
            ))),
            Rank::JournalDenied,
        )],
        Err(Unreadable::Failed(m)) => vec![Finding::new(
            Level::Warn,
            "journal",
            format!("the journal could not be read: {m}"),
            None,
            Rank::JournalUnreadable,
        )],
    }
}

fn findings(
    c: &Classified,
    opts: &Options,
    running: Option<bool>,
    data_dir: Option<&Path>,
) -> Vec<Finding> {
    let window = super::age(opts.since);
    let ctx = Context {
        config: opts.config.display().to_string(),
        window: window.clone(),
        data_dir: data_dir.unwrap_or(Path::new("/var/lib/labship")),
    };
    let mut out: Vec<Finding> = RULES
        .iter()
        .zip(&c.tallies)
        .filter(|(_, t)| t.count > 0)
        .map(|(rule, t)| {
            let fix = (rule.fix)(t, &ctx);
            Finding::new(rule.level, "journal", (rule.row)(t, &ctx), fix, rule.rank)
                .with_details(t.details())
        })
        .collect();
    if c.entries == 0 {
        match running {
            Some(true) | None if opts.journal_file.is_some() => {}
            Some(true) => out.push(Finding::ok(
                "journal",
                format!("no log lines in the last {window} (the shipper is quiet when healthy)"),
            )),
            // The service check reports a stopped unit.
            Some(false) => {}
            None => out.push(Finding::new(
                Level::Warn,
                "journal",
                format!(
                    "no log lines from {UNIT} in the last {window}: the shipper is probably not running"
                ),
                Some(Fix::safe(format!("sudo systemctl enable --now {UNIT}"))),
                Rank::JournalSilent,
            )),
        }
    } else if out.is_empty() {
        out.push(Finding::ok(
            "journal",
            format!("{} line(s) in the last {window}, no trouble", c.entries),
        ));
    }
    out.push(Finding::ok(
        "activity",
        format!("{} episode(s) shipped in the last {window}", c.shipped),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::read::Entry;
    use super::*;
    use serde_json::Value;
    use std::time::SystemTime;

    fn entry(pairs: &[(&str, Value)]) -> Entry {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn events_by_field_and_systemd_by_unit() {
        let q = |code: &str, id: &str| {
            entry(&[
                ("EVENT", "quarantined".into()),
                ("ERROR_CODE", code.into()),
                ("EPISODE_ID", id.into()),
                ("REMEDIATION", "fix-it".into()),
                ("_SYSTEMD_UNIT", UNIT.into()),
            ])
        };
        let entries = vec![
            q("commit_out_of_window", "a"),
            q("commit_out_of_window", "b"),
            q("stamp_missing", "c"),
            entry(&[
                ("EVENT", "retry".into()),
                ("HTTP_STATUS", "403".into()),
                ("ERROR_CODE", "host_mismatch".into()),
            ]),
            entry(&[
                (
                    "MESSAGE",
                    "labship-shipper.service: Watchdog timeout (limit 2s)!".into(),
                ),
                ("UNIT", UNIT.into()),
                ("_SYSTEMD_UNIT", "init.scope".into()),
            ]),
            // The service's own line that merely mentions a watchdog is not systemd's.
            entry(&[
                ("MESSAGE", "Watchdog timeout".into()),
                ("UNIT", UNIT.into()),
                ("_SYSTEMD_UNIT", UNIT.into()),
            ]),
        ];
        let c = classify(&entries);
        assert_eq!(c.tally(Rank::OutOfWindow).count, 2);
        assert_eq!(
            c.tally(Rank::OutOfWindow).remediation.as_deref(),
            Some("fix-it")
        );
        assert_eq!(c.tally(Rank::Unstamped).count, 1);
        assert_eq!(c.tally(Rank::AuthRefused).count, 1);
        assert_eq!(c.tally(Rank::Watchdog).count, 1);
    }

    /// A failed start is the headline until a later start gets as far as
    /// `EVENT=ready`: the fix was made, and an agent reading the first line
    /// must not edit and restart again.
    #[test]
    fn a_failed_start_is_reported_until_a_start_succeeds() {
        let failed = entry(&[
            (
                "MESSAGE",
                "shipper: invalid configuration: /etc/labship/shipper.toml: receiver.url: missing"
                    .into(),
            ),
            ("_SYSTEMD_UNIT", UNIT.into()),
        ]);
        let repeated = entry(&[
            (
                "MESSAGE",
                "labship-shipper.service: Start request repeated too quickly.".into(),
            ),
            ("UNIT", UNIT.into()),
            ("_SYSTEMD_UNIT", "init.scope".into()),
        ]);
        let ready = entry(&[
            ("EVENT", "ready".into()),
            ("MESSAGE", "shipper ready".into()),
            ("_SYSTEMD_UNIT", UNIT.into()),
        ]);
        let c = classify(&[failed.clone(), repeated.clone()]);
        assert_eq!(c.tally(Rank::StartFailed).count, 2);
        let c = classify(&[failed.clone(), repeated, ready.clone()]);
        assert_eq!(c.tally(Rank::StartFailed).count, 0);
        // Failing again after that counts again.
        let c = classify(&[ready, failed]);
        assert_eq!(c.tally(Rank::StartFailed).count, 1);
    }

    /// A failed reload is reported until a later one loads the file.
    #[test]
    fn a_failed_reload_is_reported_until_one_succeeds() {
        let ev = |event: &str, message: &str| {
            entry(&[
                ("EVENT", event.into()),
                ("MESSAGE", message.into()),
                ("_SYSTEMD_UNIT", UNIT.into()),
            ])
        };
        let failed = ev(
            "reload_failed",
            "SIGHUP: the config does not load; the running config stays: /etc/labship/shipper.toml: limits.bwlimit: bad",
        );
        let opts = Options {
            config: "/etc/labship/shipper.toml".into(),
            since: std::time::Duration::from_secs(3600),
            journal_file: Some("x".into()),
            no_ping: true,
            now: SystemTime::now(),
        };
        let rows = findings(&classify(std::slice::from_ref(&failed)), &opts, None, None);
        let row = rows
            .iter()
            .find(|f| f.finding.contains("reload"))
            .expect("a reload row");
        assert_eq!(row.level, Level::Warn);
        assert!(row.finding.contains("limits.bwlimit"), "{}", row.finding);
        assert!(
            row.fix
                .as_deref()
                .is_some_and(|f| f.contains("systemctl reload")),
            "{row:?}"
        );
        assert!(!row.disruptive);
        let settled = [
            failed,
            ev("bwlimit_changed", "SIGHUP: upload cap now 1 MiB/s"),
        ];
        let rows = findings(&classify(&settled), &opts, None, None);
        assert!(
            !rows.iter().any(|f| f.finding.contains("reload")),
            "{rows:?}"
        );
    }
}
