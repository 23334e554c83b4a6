//! The completion of a resumable upload: the validator's verdict over the
//! whole archive, the digest, and the PUT's commit (`accept::commit_archive`);
//! and how an error settles the upload (kept for a transient one, discarded
//! for one the client cannot fix by continuing).

use super::table::{Slot, SlotState};
use super::{Answer, length_mismatch};
use crate::accept::{PutPlan, check_digest, commit_archive};
use crate::auth::ConnInfo;
use crate::error::ApiError;
use crate::error::{ingest_error, storage_io_error};
use crate::routes::AppState;
use std::sync::atomic::Ordering;
use tokio::sync::OwnedMutexGuard;

/// The last append arrived: the verdict over the whole archive, the digest,
/// the commit.
pub(super) async fn complete(
    state: &AppState,
    conn: Option<&ConnInfo>,
    slot: &Slot,
    mut held: OwnedMutexGuard<SlotState>,
    plan: &PutPlan,
) -> Result<Answer, ApiError> {
    if held.record.offset != slot.length {
        let e = length_mismatch(slot, held.record.offset, true);
        return discard(state, slot, &mut held, e).await;
    }
    let Some(session) = held.session.take() else {
        return Err(ApiError::internal("completion without a validator session"));
    };
    let verdict = match session.finish().await {
        Ok(v) => v,
        Err(e) => {
            let e = ingest_error(&state.metrics, e);
            return settle(state, slot, &mut held, e).await;
        }
    };
    if let Err(e) = check_digest(&verdict.digest, &plan.digest) {
        return discard(state, slot, &mut held, e).await;
    }
    let scratch = link_scratch(state, slot).await?;
    match commit_archive(state, conn, plan, scratch, verdict.bytes).await {
        Ok((status, body)) => {
            crate::crash_point("upload:committed");
            state.resumable.remove(slot, &mut held).await;
            Ok(Answer::Stored(status, body))
        }
        Err(e) => settle(state, slot, &mut held, e).await,
    }
}

/// A second name for the spooled archive in the store's scratch directory,
/// handed to the store's commit (which renames or uploads it and removes it
/// on failure): the spool keeps its own name until the commit succeeded, so
/// a failed commit (503, 507) can be retried by completing again.
async fn link_scratch(state: &AppState, slot: &Slot) -> Result<tempfile::NamedTempFile, ApiError> {
    let data = state.resumable.spool.data_path(&slot.host_id, &slot.token);
    let scratch = state
        .store
        .scratch_dir()
        .join(format!("upload-{}.part", slot.token));
    // Blocking filesystem calls: off the async workers.
    let linked = tokio::task::spawn_blocking(move || {
        let linked = match std::fs::hard_link(&data, &scratch) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&scratch).and_then(|()| std::fs::hard_link(&data, &scratch))
            }
            other => other,
        };
        linked.and_then(|()| {
            let path = tempfile::TempPath::try_from_path(&scratch)?;
            Ok(tempfile::NamedTempFile::from_parts(
                std::fs::File::open(&scratch)?,
                path,
            ))
        })
    })
    .await;
    linked
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| storage_io_error(&state.metrics, "link a completed upload into scratch", e))
}

/// An error ends the upload when the client cannot fix it by continuing
/// (the archive or its length is wrong, another digest is stored); a
/// transient one (503, 507, 500) keeps it.
pub(super) async fn settle(
    state: &AppState,
    slot: &Slot,
    held: &mut SlotState,
    e: ApiError,
) -> Result<Answer, ApiError> {
    let fatal = matches!(e.status().as_u16(), 400 | 409 | 412 | 413);
    if fatal {
        return discard(state, slot, held, e).await;
    }
    if let Some(session) = held.session.take() {
        session.close().await;
    }
    Err(e.with_upload_offset(held.record.offset))
}

pub(super) async fn discard(
    state: &AppState,
    slot: &Slot,
    held: &mut SlotState,
    e: ApiError,
) -> Result<Answer, ApiError> {
    tracing::info!(
        host = slot.host_id,
        episode = slot.episode_id,
        error_code = e.code.as_str(),
        "partial upload discarded"
    );
    state.resumable.remove(slot, held).await;
    Err(e)
}

/// Removes an idle upload whose archive is stored (with its digest).
pub(super) async fn drop_stored_upload(state: &AppState, slot: &Slot) {
    let Ok(mut held) = slot.state.clone().try_lock_owned() else {
        return;
    };
    if slot.gone.load(Ordering::Relaxed) {
        return;
    }
    tracing::info!(
        host = slot.host_id,
        episode = slot.episode_id,
        "removed a partial upload whose archive is stored (committed just before a restart)"
    );
    state.resumable.remove(slot, &mut held).await;
}

/// Start-up: a crash after the commit and before the spool entry went
/// leaves a complete upload behind (with S3, nothing on the local disk
/// says it was committed); one whose episode the store holds with its
/// digest is removed (`HEAD` 404; the shipper's `POST` answers 200).
pub(super) async fn drop_committed(state: &AppState) {
    for slot in state.resumable.all() {
        if slot.offset.load(Ordering::Relaxed) != slot.length {
            continue;
        }
        let stored = state.store.head(&slot.host_id, &slot.episode_id).await;
        let same = matches!(&stored, Ok(Some(m))
            if m.digest().is_some_and(|d| d.header_value() == slot.digest));
        if same {
            drop_stored_upload(state, &slot).await;
        }
    }
}
