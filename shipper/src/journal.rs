//! The journal events of the driver and the upload (`EVENT=…`): one
//! function per event, with its level, fields and message. These are what
//! doctor classifies (tools/src/doctor/journal/rules.rs, whose test reads
//! the `event` names in the files of `shipper/src/`), so they are one list
//! here rather than scattered through `driver/` and `upload/`.
//!
//! Each runs in its episode's span (the driver's), which gives the event
//! its `episode_id`; only [`location_not_saved`], logged from a blocking
//! thread, names the episode itself.

use crate::state::Reason;
use labship_protocol::{ErrorCode, Id};
use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

/// `episodes/` could not be scanned.
pub(crate) fn scan_failed(e: &std::io::Error, dir: &Path) {
    let dir = dir.display();
    tracing::error!(error = %e, dir = %dir, event = "scan_failed", "cannot scan the queue");
}

pub(crate) fn quarantine_removed(path: &Path, age: Duration) {
    tracing::info!(path = %path.display(), age_days = age.as_secs() / 86_400, event = "quarantine_removed", "removed an expired quarantine entry");
}

/// The cleanup failed (`task`: its blocking task did).
pub(crate) fn quarantine_cleanup_failed(e: &dyn Display, task: bool) {
    if task {
        tracing::error!(error = %e, event = "quarantine_cleanup_failed", "quarantine cleanup task failed");
    } else {
        tracing::error!(error = %e, event = "quarantine_cleanup_failed", "quarantine cleanup failed");
    }
}

pub(crate) fn upload_task_failed(e: &dyn Display) {
    tracing::error!(error = %e, event = "upload_task_failed", "an upload task failed");
}

pub(crate) fn shipped(dest: &Path, already_present: bool) {
    tracing::info!(dest = %dest.display(), already_present, event = "shipped", "shipped");
}

/// A quarantine decided before a crash, finished.
pub(crate) fn quarantine_finished(dest: &Path) {
    tracing::warn!(dest = %dest.display(), event = "quarantined", "finished a quarantine interrupted by a crash");
}

pub(crate) fn quarantined(id: &Id, reason: &Reason, dest: &Path) {
    tracing::error!(
        error_code = reason.code.as_str(), http_status = reason.http_status,
        remediation = reason.remediation.as_deref(), dest = %dest.display(),
        event = "quarantined", "quarantined {id}: {}", reason.message
    );
}

/// A transient failure; `loud` for one an operator must fix. `receiver`
/// (the configured URL) names where it failed: a failure with no answer
/// ("dns error", "connection refused") says nothing of it itself.
pub(crate) fn retry(
    loud: bool,
    (code, status): (Option<ErrorCode>, Option<u16>),
    wait: Duration,
    (scope, receiver): (&str, &dyn Display),
    message: &str,
) {
    let (retry_in_ms, error_code) = (wait.as_millis() as u64, code.map(|c| c.as_str()));
    if loud {
        tracing::error!(
            error_code,
            http_status = status,
            retry_in_ms,
            scope,
            %receiver,
            event = "retry",
            "transient failure that needs an operator: {message}"
        );
    } else {
        tracing::warn!(
            error_code,
            http_status = status,
            retry_in_ms,
            scope,
            %receiver,
            event = "retry",
            "transient failure, will retry: {message}"
        );
    }
}

/// `waiting` archives wait in `outbox/` for a retry: no new episode is
/// packed until one of them goes (driver/packing.rs, `RETRIES_PACKED_MAX`).
pub(crate) fn packing_held(waiting: usize) {
    tracing::warn!(
        waiting,
        event = "packing_held",
        "{waiting} archives wait in outbox/ for a retry after failures of their own, and no upload has succeeded since: no more new episodes are packed until one does (one per pass still goes; the retry lines say why they failed)"
    );
}

/// The episode left `episodes/` by other hands while `what`.
pub(crate) fn left_queue(what: &str) {
    let message = format!("the episode left episodes/ by other hands while {what}; nothing to do");
    tracing::info!(event = "left_queue", "{message}");
}

/// A disk step (`what`) failed; retried after `wait`.
pub(crate) fn io_failed(what: &str, e: &std::io::Error, wait: Duration) {
    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, event = "io_error", "{what} failed, will retry: {e}");
}

pub(crate) fn seal_failed(failed: &str) {
    tracing::error!(error = %failed, event = "io_error", "cannot make the archive durable in outbox/ (fsync or sidecar); the upload's answer stands, a retry packs the episode again: {failed}");
}

pub(crate) fn upload_api_missing(status: u16, url: &dyn Display) {
    tracing::warn!(http_status = status, url = %url, event = "upload_api_missing", "the receiver answered {status} to POST /v1/uploads/…: it has no resumable-upload API (older than CONTRACT §9); every archive goes by PUT until the shipper restarts (a cut then costs the whole archive)");
}

/// From a blocking thread: names the episode itself.
pub(crate) fn location_not_saved(id: &Id, e: &std::io::Error) {
    tracing::warn!(episode_id = %id, error = %e, event = "io_error", "cannot save the upload location in outbox/; a shipper restart would upload from byte 0");
}

pub(crate) fn location_not_removed(e: &std::io::Error) {
    tracing::warn!(error = %e, event = "io_error", "cannot remove the old upload location from outbox/");
}

pub(crate) fn location_dropped(file: &Path, why: &str) {
    tracing::warn!(path = %file.display(), event = "upload_location_dropped", "ignoring the saved upload location: {why}; starting a new upload");
}

/// `id`'s upload goes on at `offset`: a new upload found those bytes at
/// the receiver, or the receiver kept them of a `cut` append.
pub(crate) fn upload_resumed(id: &Id, offset: u64, bytes_total: u64, cut: bool) {
    let message = if cut {
        format!("the append of {id} was cut; resuming at byte {offset}")
    } else {
        format!("the receiver already holds {offset} bytes of {id}'s upload; resuming there")
    };
    tracing::info!(offset, bytes_total, event = "upload_resumed", "{message}");
}

pub(crate) fn upload_offset_mismatch(id: &Id, held: u64, sent_at: u64) {
    tracing::info!(
        offset = held,
        sent_at,
        event = "upload_offset_mismatch",
        "the receiver holds {held} bytes of {id}, not {sent_at}: going on from there"
    );
}

/// The receiver no longer knows `id`'s upload: a new one starts.
pub(crate) fn upload_restarted(id: &Id) {
    let message = format!(
        "the receiver does not know {id}'s upload (expired, restarted without it, or another receiver); starting a new upload"
    );
    tracing::info!(event = "upload_restarted", "{message}");
}

/// A cut append of `id` after which the receiver holds no more (`Ok`: its
/// offset) or could not say (`Err`: what asking met).
pub(crate) fn upload_cut(id: &Id, held: Result<u64, &crate::state::Event>) {
    use crate::state::Event;
    let offset = held.as_ref().ok().copied();
    let how = match held {
        Ok(o) => format!(" and the receiver holds no more than before ({o} bytes)"),
        Err(Event::Answer {
            status,
            error,
            message,
            ..
        }) => {
            let code = error.map_or("", |c| c.as_str());
            format!(
                ", and the receiver answered the question of its offset with {status} {code}: {message}"
            )
        }
        Err(Event::NoAnswer { message, .. } | Event::NotReceiver { message, .. }) => {
            format!(", and asking the receiver's offset failed too: {message}")
        }
        Err(other) => format!(", and asking the receiver's offset failed too: {other:?}"),
    };
    tracing::info!(
        offset,
        event = "upload_cut",
        "the append of {id} was cut{how}"
    );
}
