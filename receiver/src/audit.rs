//! The audit log: one JSON line per PUT decision, and per decision of the
//! resumable upload API (each with its `op`), appended to `ops.audit_log`.
//!
//! Each line is written with a single `write` on an `O_APPEND` file, so lines
//! from concurrent requests never interleave. The log is evidence, not state:
//! a failed write is logged loudly and the request still gets its answer.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One PUT decision.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub host_id: Option<&'a str>,
    pub episode_id: &'a str,
    pub status: u16,
    pub error: Option<&'a str>,
    pub bytes: u64,
    pub digest: Option<String>,
    pub duration_ms: u64,
    pub peer: String,
    pub auth: Option<&'a str>,
    /// Absent for a PUT; for the resumable upload API (CONTRACT §9):
    /// `upload_create` (POST), `upload_append` (PATCH: an append, or the
    /// completion's answer), `upload_delete`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'a str>,
}

#[derive(Debug)]
pub struct Audit {
    path: PathBuf,
    file: Mutex<File>,
}

impl Audit {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn record(&self, record: &AuditRecord<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "audit record not serializable");
                return;
            }
        };
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&line) {
            tracing::error!(error = %e, path = %self.path.display(), "audit log write failed");
        }
    }
}
