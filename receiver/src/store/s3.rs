//! The S3 store (`storage.kind = "s3"`): several receivers share one bucket.
//!
//! Objects: `<prefix><host_id>/<episode_id>.json` (the manifest) and
//! `<prefix><host_id>/<episode_id>.tar.zst` (the archive). Uploads are spooled
//! and validated in a local scratch file exactly as with `fs` (nothing reaches
//! the bucket before the archive passed every check), then committed here.
//!
//! Commit protocol (docs/transport.md, "The S3 store"), per episode:
//! 1. **claim**: the manifest is created with `PutMode::Create`
//!    (`If-None-Match: *`). Exactly one receiver wins; the manifest is never
//!    replaced nor deleted by a receiver afterwards, so it fixes the digest the
//!    archive key may ever hold.
//! 2. the loser reads the manifest: another digest → conflict (409); the same
//!    digest and the archive there → 200; no archive yet and the claim fresh
//!    (see [`CLAIM_UPLOAD_RATE`]) → 503 `busy` (the winner is still
//!    uploading); no archive and an older claim (its receiver crashed) → it
//!    uploads its own, identical, validated copy and answers 200.
//! 3. the winner uploads the archive (one PUT up to [`SINGLE_PUT_MAX`], a
//!    multipart upload above, aborted on error and when the receiver stops
//!    with it still running) and answers 201.
//!
//! An episode is stored when both objects exist; that is what HEAD checks.
//! Why the manifest and not the archive is the conditional write: object_store
//! cannot complete a multipart upload conditionally, and archives may be far
//! larger than one PUT (5 GiB on AWS) or than memory.

use super::{CommitOutcome, FsStore, Lookup, Manifest, StoreError};
use crate::config::S3Config;
use crate::metrics::{Metrics, StoreErrorLabels, StoreOpLabels};
use errors::error_kind;

mod errors;
mod upload;

use bytes::Bytes;
pub use errors::is_transient;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt as _, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;

/// Archives up to this size go up in one PUT (read into memory); larger ones
/// in a multipart upload streamed from the scratch file.
pub const SINGLE_PUT_MAX: u64 = 8 << 20;

/// Smallest multipart part (S3 wants at least 5 MiB for all but the last).
const PART_MIN: u64 = 8 << 20;

/// S3 allows 10 000 parts; keep a margin.
const PARTS_MAX: u64 = 9_000;

/// Parts uploaded concurrently per archive.
const PART_CONCURRENCY: usize = 2;

/// Per-request timeout of archive uploads (the single PUT, each multipart
/// part, create and complete): one part of up to a few hundred MiB must fit.
const BULK_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Per-request timeout of everything else (manifest get and claim, HEAD of
/// the archive): small requests, so a hung store is noticed within seconds
/// (with the retries below, a request is given up after ~20 s) rather than
/// holding HEADs and claims for minutes.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The key (after `storage.prefix`) the `/readyz` probe writes and deletes.
pub const READYZ_KEY: &str = ".labship-readyz/probe";

/// The only `AWS_*` environment variables the receiver reads: credentials
/// and where to get them (instance, task or web-identity roles). Endpoint,
/// region, bucket, HTTP and conditional-put settings come from
/// `receiver.toml` alone, never silently from the environment.
const CREDENTIAL_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
];

/// The slowest upload rate to the store a live claim is assumed to sustain,
/// in bytes per second. A same-digest upload that finds a claim (manifest)
/// without its archive treats the claim as an upload still in progress while
/// `now - received_at < claim grace + bytes / CLAIM_UPLOAD_RATE` and answers
/// 503 `busy` instead of uploading a second copy to the same key: the shipper
/// gives up on an answer 120 s after its last byte, long before a receiver
/// has uploaded a >10 GB archive, and its retry must not start another full
/// upload. 20 MB/s is well under what a receiver next to its store does (a
/// slower store only means a claim is waited for longer, never a duplicate);
/// a claim older than the bound is taken for one left by a crashed receiver
/// and finished with the retry's identical bytes.
pub const CLAIM_UPLOAD_RATE: u64 = 20_000_000;

/// The fixed part of that bound: time for the claiming receiver to open the
/// upload, whatever the size.
const CLAIM_GRACE: Duration = Duration::from_secs(60);

/// Test-only: overrides [`CLAIM_GRACE`] (whole seconds), read once at
/// startup, so that the suite need not wait a minute for a crash-left claim
/// to count as orphaned. Not a configuration key; do not set it in production.
const CLAIM_GRACE_ENV: &str = "LABSHIP_S3_CLAIM_GRACE_S";

/// The longest `Retry-After` given for a claim in progress (the time left
/// to the bound, capped at this). The shipper's retry re-sends the whole
/// body (it asks HEAD first only after a restart), so for a big archive a
/// long wait costs less than frequent re-sends; a small one is never busy
/// for long (its bound is about [`CLAIM_GRACE`]).
const CLAIM_RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// Several receivers on one bucket; see the module doc.
#[derive(Debug, Clone)]
pub struct S3Store {
    /// Manifest reads and claims, archive HEADs ([`SMALL_REQUEST_TIMEOUT`]).
    store: Arc<AmazonS3>,
    /// Archive uploads ([`BULK_REQUEST_TIMEOUT`]).
    bulk: Arc<AmazonS3>,
    /// Only for the local spool (`<storage.dir>/.scratch`): every upload is
    /// validated there before anything is sent to the bucket.
    local: FsStore,
    bucket: String,
    prefix: String,
    metrics: Arc<Metrics>,
    /// [`CLAIM_GRACE`], or the test-only [`CLAIM_GRACE_ENV`].
    claim_grace: Duration,
    /// Turns true at shutdown: running multipart uploads abort.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Held (read) by each multipart upload until it is completed or aborted.
    uploading: Arc<tokio::sync::RwLock<()>>,
}

impl S3Store {
    /// Builds the client (credentials from the standard `AWS_*` environment)
    /// and opens the local scratch dir under `scratch_root`. Does not contact
    /// the store: a receiver started while the store is down answers 503.
    pub fn open(
        config: &S3Config,
        scratch_root: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            // Fail over to the client (a 503 the shipper retries) within
            // seconds rather than holding the request for minutes.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(15),
            });
        for name in CREDENTIAL_ENV {
            if let Ok(value) = std::env::var(name)
                && let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                builder = builder.with_config(key, value);
            }
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let build = |timeout: Duration| {
            builder
                .clone()
                // Before `with_allow_http`, which is itself a client option.
                .with_client_options(
                    ClientOptions::new()
                        .with_timeout(timeout)
                        .with_connect_timeout(CONNECT_TIMEOUT),
                )
                .with_allow_http(config.allow_http)
                .build()
                .map_err(|source| StoreError::S3 {
                    op: "configure",
                    key: config.bucket.clone(),
                    source,
                })
        };
        let store = build(SMALL_REQUEST_TIMEOUT)?;
        let bulk = build(BULK_REQUEST_TIMEOUT)?;
        Ok(Self {
            store: Arc::new(store),
            bulk: Arc::new(bulk),
            local: FsStore::open(scratch_root)?,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            metrics,
            claim_grace: std::env::var(CLAIM_GRACE_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map_or(CLAIM_GRACE, Duration::from_secs),
            stop: Arc::new(tokio::sync::watch::channel(false).0),
            uploading: Arc::new(tokio::sync::RwLock::new(())),
        })
    }

    pub fn local(&self) -> &FsStore {
        &self.local
    }

    /// `s3://bucket/prefix`, for logs.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn key(&self, host: &str, episode: &str, ext: &str) -> ObjectPath {
        // Host and episode ids are validated ([A-Za-z0-9._-], no leading dot),
        // so the key needs no escaping.
        ObjectPath::from(format!("{}{host}/{episode}.{ext}", self.prefix))
    }

    /// Times `op` and counts its failures, by operation.
    async fn timed<T>(
        &self,
        op: &'static str,
        key: &ObjectPath,
        work: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = work.await;
        self.metrics
            .store_seconds
            .get_or_create(&StoreOpLabels { op })
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|source| {
            let kind = error_kind(&source);
            // "absent" is an answer for the reads that ask, "exists" for the
            // claim; anywhere else they are failures, counted and logged.
            let answer = match kind {
                "not_found" => matches!(op, "get_manifest" | "head_archive"),
                "already_exists" => op == "create_manifest",
                _ => false,
            };
            if !answer {
                self.metrics
                    .store_errors
                    .get_or_create(&StoreErrorLabels { op, kind })
                    .inc();
                tracing::warn!(op, key = %key, kind, error = %source, "store operation failed");
            }
            StoreError::S3 {
                op,
                key: key.to_string(),
                source,
            }
        })
    }

    async fn manifest(&self, host: &str, episode: &str) -> Result<Option<Manifest>, StoreError> {
        let key = self.key(host, episode, "json");
        let got = self
            .timed("get_manifest", &key, async {
                self.store.get(&key).await?.bytes().await
            })
            .await;
        let bytes = match got {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Manifest {
                path: key.to_string().into(),
                why: e.to_string(),
            })
    }

    /// Size of the archive object, or `None` when it does not exist.
    async fn archive_size(&self, host: &str, episode: &str) -> Result<Option<u64>, StoreError> {
        let key = self.key(host, episode, "tar.zst");
        match self
            .timed("head_archive", &key, self.store.head(&key))
            .await
        {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The manifest of a stored episode (manifest and archive both present),
    /// or `None`.
    pub async fn head(&self, host: &str, episode: &str) -> Result<Option<Manifest>, StoreError> {
        Ok(match self.lookup(host, episode).await? {
            Lookup::Stored(manifest) => Some(*manifest),
            Lookup::Uploading { .. } | Lookup::Absent => None,
        })
    }

    /// Whether the episode is stored, claimed by an upload that may still be
    /// in progress (fresh claim, no archive yet), or neither.
    pub async fn lookup(&self, host: &str, episode: &str) -> Result<Lookup, StoreError> {
        let Some(manifest) = self.manifest(host, episode).await? else {
            return Ok(Lookup::Absent);
        };
        match self.archive_size(host, episode).await? {
            // Claimed but not uploaded yet (or the uploader died): not stored.
            None => Ok(match self.claim_in_progress(&manifest) {
                Some(left) => Lookup::Uploading {
                    claim: Box::new(manifest),
                    retry_after_s: retry_after_s(left),
                },
                None => Lookup::Absent,
            }),
            Some(size) if size == manifest.bytes => Ok(Lookup::Stored(Box::new(manifest))),
            Some(size) => Err(StoreError::Manifest {
                path: self.key(host, episode, "json").to_string().into(),
                why: format!(
                    "says {} bytes but the archive object holds {size}",
                    manifest.bytes
                ),
            }),
        }
    }

    /// Stores the validated `scratch` as the archive of `manifest`; see the
    /// module doc for the protocol.
    pub async fn commit(
        &self,
        scratch: tempfile::NamedTempFile,
        manifest: Manifest,
    ) -> Result<CommitOutcome, StoreError> {
        let (host, episode) = (manifest.host_id.clone(), manifest.episode_id.clone());
        let key = self.key(&host, &episode, "json");
        let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Manifest {
            path: key.to_string().into(),
            why: e.to_string(),
        })?;
        json.push(b'\n');
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        let claim = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..Default::default()
        };
        let claimed = self
            .timed(
                "create_manifest",
                &key,
                self.store.put_opts(&key, PutPayload::from(json), claim),
            )
            .await;
        match claimed {
            Ok(_) => {
                crate::crash_point("s3:manifest-created");
                tracing::debug!(host, episode, "claimed the episode (manifest created)");
                self.upload_archive(scratch, &host, &episode).await?;
                crate::crash_point("s3:archive-uploaded");
                Ok(CommitOutcome::Stored)
            }
            Err(e) if e.is_already_exists() => {
                let Some(stored) = self.manifest(&host, &episode).await? else {
                    // Manifests are never deleted by a receiver: someone did by hand.
                    return Err(StoreError::Manifest {
                        path: key.to_string().into(),
                        why: "vanished right after a conditional create said it exists".into(),
                    });
                };
                let archived = self.archive_size(&host, &episode).await?.is_some();
                if stored.digest != manifest.digest {
                    return Ok(if archived {
                        CommitOutcome::Conflict(Box::new(stored))
                    } else {
                        CommitOutcome::ClaimedByOther(Box::new(stored))
                    });
                }
                if !archived {
                    if let Some(left) = self.claim_in_progress(&stored) {
                        // Most likely the winner is still uploading (a big
                        // archive whose shipper gave up waiting): a second
                        // upload to the same key would only double the work.
                        let retry_after_s = retry_after_s(left);
                        tracing::info!(
                            host,
                            episode,
                            retry_after_s,
                            "manifest present without its archive, claimed recently; answering busy"
                        );
                        return Ok(CommitOutcome::BeingUploaded {
                            claim: Box::new(stored),
                            retry_after_s,
                        });
                    }
                    // The winner died before it uploaded (its claim is older
                    // than any live upload would take): these are the same
                    // bytes, so finishing its work is safe.
                    tracing::info!(
                        host,
                        episode,
                        received_at = stored.received_at,
                        "manifest present without its archive, claim older than an upload takes; uploading the same bytes"
                    );
                    self.upload_archive(scratch, &host, &episode).await?;
                }
                Ok(CommitOutcome::AlreadyStored)
            }
            Err(e) => Err(e),
        }
    }

    /// The `/readyz` probe: a tiny object written, then deleted, under a
    /// reserved key no episode uses ([`READYZ_KEY`] after the prefix; host
    /// ids cannot start with a dot), so a bucket that reads but refuses
    /// writes (a read-only key, a full or frozen store) is not ready. Not
    /// timed into the store operation metrics: polls every few seconds would
    /// swamp the uploads' histograms and count their failures as the uploads'.
    pub async fn probe_writable(&self) -> Result<(), String> {
        let key = ObjectPath::from(format!("{}{READYZ_KEY}", self.prefix));
        self.store
            .put(&key, PutPayload::from_static(b"ready\n"))
            .await
            .map_err(|e| format!("object store not writable: PUT {key}: {e}"))?;
        self.store
            .delete(&key)
            .await
            .map_err(|e| format!("object store not writable: DELETE {key}: {e}"))?;
        Ok(())
    }

    /// Aborts the multipart uploads still running (their parts would
    /// otherwise stay in the bucket until a lifecycle rule removes them) and
    /// waits up to `wait` for them to finish aborting.
    pub async fn stop_uploads(&self, wait: Duration) {
        self.stop.send_replace(true);
        if tokio::time::timeout(wait, self.uploading.write())
            .await
            .is_err()
        {
            tracing::warn!(
                "multipart uploads not aborted in time; a lifecycle rule removes them (docs/scale-out.md)"
            );
        }
    }

    /// How long the claim `stored` still counts as an upload in progress
    /// ([`CLAIM_UPLOAD_RATE`]), or `None` when it is older than that bound.
    /// Compares the claiming receiver's clock with this one's: receivers
    /// should run NTP (docs/scale-out.md).
    fn claim_in_progress(&self, stored: &Manifest) -> Option<Duration> {
        let Ok(claimed) = humantime::parse_rfc3339_weak(&stored.received_at) else {
            tracing::warn!(
                received_at = stored.received_at,
                "manifest's received_at unreadable; taking the claim for orphaned"
            );
            return None;
        };
        let bound = self.claim_grace + Duration::from_secs(stored.bytes / CLAIM_UPLOAD_RATE);
        // A claim stamped in the future (clock skew) counts as just made.
        let age = std::time::SystemTime::now()
            .duration_since(claimed)
            .unwrap_or_default();
        bound.checked_sub(age).filter(|left| !left.is_zero())
    }
}

/// `Retry-After` for a claim with `left` to go before it counts as orphaned.
fn retry_after_s(left: Duration) -> u32 {
    left.min(CLAIM_RETRY_AFTER_MAX).as_secs().max(1) as u32
}
