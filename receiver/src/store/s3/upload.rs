//! Sending a validated archive to the bucket: one PUT up to
//! [`SINGLE_PUT_MAX`](super::SINGLE_PUT_MAX), a multipart upload above, aborted on error and
//! when the receiver stops with it still running.

use super::*;

impl S3Store {
    pub(super) async fn upload_archive(
        &self,
        scratch: tempfile::NamedTempFile,
        host: &str,
        episode: &str,
    ) -> Result<(), StoreError> {
        let key = self.key(host, episode, "tar.zst");
        let io = |op: &'static str| {
            let path = scratch.path().to_owned();
            move |source| StoreError::Io { op, path, source }
        };
        let mut file = tokio::fs::File::from_std(scratch.reopen().map_err(io("reopen"))?);
        let size = file.metadata().await.map_err(io("stat"))?.len();
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/zstd".into());
        if size <= SINGLE_PUT_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).await.map_err(io("read"))?;
            let opts = PutOptions {
                attributes,
                ..Default::default()
            };
            self.timed(
                "put_archive",
                &key,
                self.bulk
                    .put_opts(&key, PutPayload::from(Bytes::from(buf)), opts),
            )
            .await?;
            return Ok(());
        }
        let part = PART_MIN.max(size.div_ceil(PARTS_MAX)) as usize;
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = self
            .timed(
                "create_multipart",
                &key,
                self.bulk.put_multipart_opts(&key, opts),
            )
            .await?;
        // Held until the upload is completed or aborted: shutdown waits for it.
        let _uploading = self.uploading.clone().read_owned().await;
        let mut stopping = self.stop.subscribe();
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        let sent: Result<(), StoreError> = tokio::select! {
            sent = async {
                loop {
                    let n = file.read(&mut buf).await.map_err(io("read"))?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.timed("put_part", &key, writer.wait_for_capacity(PART_CONCURRENCY))
                        .await?;
                    writer.write(&buf[..n]);
                    let before = written;
                    written += n as u64;
                    if before < part as u64 && written >= part as u64 {
                        // The first part has just been handed to the store.
                        crate::pause_point("s3:first-part-sent").await;
                    }
                }
            } => sent,
            _ = stopping.wait_for(|stop| *stop) => {
                tracing::warn!(key = %key, "receiver stopping: aborting the multipart upload");
                Err(StoreError::Stopping)
            }
        };
        match sent {
            // `finish` aborts the upload itself when completing fails.
            Ok(()) => {
                self.timed("complete_multipart", &key, writer.finish())
                    .await?;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key = %key, error = %abort, "multipart upload not aborted; a lifecycle rule removes it (docs/scale-out.md)");
                }
                Err(e)
            }
        }
    }
}
