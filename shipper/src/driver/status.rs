//! What a pass reports: `state/status.json` (written atomically after every
//! pass, through [`crate::progress::Progress`]), the backlog gauges, the
//! last error; and the quarantine's cleanup, when its time has come.

use super::{Shipper, Summary};
use crate::metrics::{Backlog, FailureReason};
pub(super) use crate::status_file::LastError;
use crate::status_file::Status;
use labship_protocol::{ErrorCode, Id};
use std::collections::HashMap;
use std::time::{Instant, SystemTime};

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Shipper {
    /// `episodes/` could not be scanned: the pass ends here, one transient
    /// failure. The backlog gauges keep the last pass's values: an
    /// unreadable episodes/ is not an empty one.
    pub(super) fn scan_failed(&mut self, e: &std::io::Error) -> Summary {
        let dir = self.layout.episodes.display();
        crate::journal::scan_failed(e, &self.layout.episodes);
        crate::metrics::get().upload_failure(FailureReason::Scan);
        self.last_error = Some(LastError {
            code: None,
            status: None,
            episode: String::new(),
            message: format!("cannot scan {dir}: {e}"),
            at: rfc3339(SystemTime::now()),
        });
        let summary = Summary {
            transient: 1,
            ..Summary::default()
        };
        self.write_status(&summary);
        summary
    }

    pub(super) fn record_error(
        &mut self,
        id: &Id,
        code: Option<ErrorCode>,
        status: Option<u16>,
        message: &str,
    ) {
        self.last_error = Some(LastError {
            code: code.map(|c| c.as_str().to_owned()),
            status,
            episode: id.to_string(),
            message: message.chars().take(500).collect(),
            at: rfc3339(SystemTime::now()),
        });
    }

    /// Publishes the backlog: the settled episodes of this pass that are
    /// still queued (no disk access but the one readdir of `quarantine/`).
    pub(super) fn publish(&self, settled: &HashMap<Id, crate::scan::Settled>, settling: usize) {
        let mut b = Backlog {
            settling: settling as u64,
            ..Backlog::default()
        };
        for (_, s) in settled.iter().filter(|(id, _)| !self.left.contains(*id)) {
            b.episodes += 1;
            b.bytes += s.bytes;
            b.oldest = Some(b.oldest.map_or(s.newest, |o| o.min(s.newest)));
        }
        let metrics = crate::metrics::get();
        metrics.backlog(b);
        metrics.observe_quarantine(&self.layout.quarantine);
    }

    pub(super) fn write_status(&self, s: &Summary) {
        let outbox = std::fs::read_dir(&self.layout.outbox)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "zst"))
                    .count()
            })
            .unwrap_or(0);
        let quarantined_total = std::fs::read_dir(&self.layout.quarantine)
            .map(|d| d.count())
            .unwrap_or(0);
        // Every field of a pass is written, `null` where there is none.
        let status = Status {
            time: Some(rfc3339(SystemTime::now())),
            host_id: self.config.host_id.as_str().to_owned(),
            pending: Some(s.pending as u64),
            outbox: Some(outbox as u64),
            shipped_this_pass: Some((s.shipped + s.already_present) as u64),
            quarantined_this_pass: Some(s.quarantined as u64),
            quarantined: Some(quarantined_total as u64),
            transient_this_pass: Some(s.transient as u64),
            last_success: Some(self.last_success.map(rfc3339)),
            last_error: Some(self.last_error.clone()),
            hold_s: Some(
                self.hold
                    .as_ref()
                    .filter(|h| h.waiting())
                    .map(|h| h.next.saturating_duration_since(Instant::now()).as_secs()),
            ),
            ..Status::default()
        };
        self.progress.write_status(status);
    }

    /// Removes quarantine entries older than `quarantine.keep_days`, when the
    /// schedule says it is time (on a blocking thread).
    pub(super) async fn sweep_quarantine(&mut self) {
        let Some(older_than) = self.cleanup.due(Instant::now()) else {
            return;
        };
        let dir = self.layout.quarantine.clone();
        match tokio::task::spawn_blocking(move || {
            crate::cleanup::sweep(&dir, older_than, SystemTime::now())
        })
        .await
        {
            Ok(Ok(removed)) => {
                for (path, age) in removed {
                    crate::journal::quarantine_removed(&path, age);
                }
            }
            Ok(Err(e)) => crate::journal::quarantine_cleanup_failed(&e, false),
            Err(e) => crate::journal::quarantine_cleanup_failed(&e, true),
        }
    }
}
