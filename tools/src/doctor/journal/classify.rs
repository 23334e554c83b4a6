//! Counting journal entries per rule ([`super::rules::RULES`]), by the
//! shipper's structured fields (`EVENT`, `ERROR_CODE`, `HTTP_STATUS`,
//! `EPISODE_ID`, `REMEDIATION`) and, for lines without `EVENT`, by who wrote
//! them: systemd about the unit, or the shipper's start-up error.

use super::read::{Entry, field};
use super::rules::{Match, RULES, Rule};
use crate::doctor::UNIT;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The entries one rule counted.
#[derive(Debug, Default, Clone)]
pub(super) struct Tally {
    pub(super) count: usize,
    pub(super) ids: BTreeSet<String>,
    pub(super) codes: BTreeMap<String, usize>,
    /// The most recent remediation the receiver gave.
    pub(super) remediation: Option<String>,
    pub(super) last_message: Option<String>,
    /// The most recent `ERROR` field (the shipper's `error = %e`).
    pub(super) last_error: Option<String>,
}

impl Tally {
    fn add(&mut self, e: &Entry) {
        self.count += 1;
        if let Some(id) = field(e, "EPISODE_ID") {
            self.ids.insert(id);
        }
        if let Some(code) = field(e, "ERROR_CODE") {
            *self.codes.entry(code).or_default() += 1;
        }
        if let Some(r) = field(e, "REMEDIATION").filter(|r| !r.is_empty()) {
            self.remediation = Some(r);
        }
        if let Some(m) = field(e, "MESSAGE") {
            self.last_message = Some(detail(&m).to_owned());
        }
        if let Some(error) = field(e, "ERROR") {
            self.last_error = Some(error);
        }
    }

    /// The last message's detail, or nothing.
    pub(super) fn last(&self) -> &str {
        self.last_message.as_deref().unwrap_or("")
    }

    /// "ep-1, ep-2, ep-3 and 9 more".
    pub(super) fn ids(&self) -> String {
        let shown: Vec<&str> = self.ids.iter().take(5).map(String::as_str).collect();
        let more = self.ids.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }

    /// "stamp_missing 2, meta_invalid 1".
    pub(super) fn codes(&self) -> String {
        self.codes
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(super) fn details(&self) -> Value {
        serde_json::json!({
            "count": self.count,
            "episodes": self.ids,
            "error_codes": self.codes,
            "remediation": self.remediation,
            "last_message": self.last_message,
        })
    }
}

/// The shipper's event lines read "<what happened>: <detail>"; a row
/// already says what happened, so it quotes the detail only.
fn detail(message: &str) -> &str {
    const PREFIXES: [&str; 3] = [
        "transient failure, will retry: ",
        "transient failure that needs an operator: ",
        "quarantined ",
    ];
    for p in PREFIXES {
        if let Some(rest) = message.strip_prefix(p) {
            // "quarantined <id>: <detail>"
            return if p == "quarantined " {
                rest.split_once(": ").map_or(rest, |(_, d)| d)
            } else {
                rest
            };
        }
    }
    message
}

/// What the entries say: one [`Tally`] per rule, in [`RULES`] order.
#[derive(Debug)]
pub(super) struct Classified {
    pub(super) tallies: Vec<Tally>,
    pub(super) shipped: usize,
    pub(super) entries: usize,
}

impl Classified {
    /// The tally of the rule of this rank.
    #[cfg(test)]
    pub(super) fn tally(&self, rank: crate::doctor::Rank) -> &Tally {
        let i = RULES
            .iter()
            .position(|r| r.rank == rank)
            .unwrap_or_else(|| panic!("no journal rule of rank {rank:?}"));
        &self.tallies[i]
    }
}

/// The fields a rule is matched against.
struct Probe {
    event: Option<String>,
    code: String,
    status: Option<u16>,
    message: String,
    /// systemd's own line about the unit, not the service's.
    from_systemd: bool,
}

impl Probe {
    fn of(e: &Entry) -> Self {
        Self {
            event: field(e, "EVENT"),
            code: field(e, "ERROR_CODE").unwrap_or_default(),
            status: field(e, "HTTP_STATUS").and_then(|s| s.parse().ok()),
            message: field(e, "MESSAGE").unwrap_or_default(),
            from_systemd: field(e, "UNIT").as_deref() == Some(UNIT)
                && field(e, "_SYSTEMD_UNIT").as_deref() != Some(UNIT),
        }
    }

    /// Whether `m` names this entry; `catch_all`: whether an empty list
    /// (any code or status) counts, tried after every rule that names one.
    fn fits(&self, m: &Match, catch_all: bool) -> bool {
        let event = self.event.as_deref();
        match m {
            Match::Events(events) => event.is_some_and(|e| events.contains(&e)),
            Match::Quarantined(codes) => {
                event == Some("quarantined")
                    && (codes.contains(&self.code.as_str()) || catch_all && codes.is_empty())
            }
            Match::Retry { codes, statuses } => {
                event == Some("retry")
                    && (codes.contains(&self.code.as_str())
                        || self.status.is_some_and(|s| statuses.contains(&s))
                        || catch_all && codes.is_empty() && statuses.is_empty())
            }
            Match::Systemd(text) => {
                event.is_none() && self.from_systemd && self.message.contains(text)
            }
            Match::StartupError => {
                event.is_none() && !self.from_systemd && self.message.starts_with("shipper: ")
            }
        }
    }
}

/// The rule that counts an entry: the first that names it, else the first
/// catch-all that takes it.
fn rule_for(p: &Probe) -> Option<usize> {
    let fits = |catch_all| move |r: &Rule| r.matches.iter().any(|m| p.fits(m, catch_all));
    RULES
        .iter()
        .position(fits(false))
        .or_else(|| RULES.iter().position(fits(true)))
}

/// Counts every entry under its rule.
pub(super) fn classify(entries: &[Entry]) -> Classified {
    let mut c = Classified {
        tallies: vec![Tally::default(); RULES.len()],
        shipped: 0,
        entries: entries.len(),
    };
    for e in entries {
        let p = Probe::of(e);
        if p.event.as_deref() == Some("shipped") {
            c.shipped += 1;
        }
        for (rule, tally) in RULES.iter().zip(&mut c.tallies) {
            if p.event
                .as_deref()
                .is_some_and(|ev| rule.settled_by.contains(&ev))
            {
                *tally = Tally::default();
            }
        }
        if let Some(i) = rule_for(&p) {
            c.tallies[i].add(e);
        }
    }
    c
}
