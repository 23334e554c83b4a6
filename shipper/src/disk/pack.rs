//! Packing an episode into its archive: in memory up to [`INLINE_MAX`],
//! else spilled to a temp file in `outbox/` and renamed into place unsealed.

use super::*;

/// A pack's destination: memory up to [`INLINE_MAX`], then a temp file in
/// `outbox/` holding everything written so far and the rest.
struct Spill<'a> {
    outbox: &'a Path,
    memory: Vec<u8>,
    file: Option<io::BufWriter<tempfile::NamedTempFile>>,
}

impl io::Write for Spill<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.memory.len() + buf.len() > INLINE_MAX {
            let tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(self.outbox)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.outbox.display())))?;
            let mut file = io::BufWriter::with_capacity(1 << 20, tmp);
            file.write_all(&std::mem::take(&mut self.memory))?;
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write(buf),
            None => {
                self.memory.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Layout {
    /// Packs episode `id`. An archive of at most [`INLINE_MAX`] stays in
    /// memory and touches no disk. A larger one is renamed into the outbox
    /// and returned at once, ready to upload, with the [`Unsealed`] rest of
    /// its commit: the caller [`seal`](Self::seal)s it (fsync, then the
    /// sidecar) while the upload runs, and before anything else touches the
    /// episode's outbox files.
    pub fn pack(
        &self,
        id: &Id,
        commit: &Commit,
        level: i32,
        workers: u32,
        written: &std::sync::atomic::AtomicU64,
    ) -> Result<(Archive, Option<Unsealed>), ArchiveError> {
        let io_at = |path: &Path| {
            let path = path.to_owned();
            move |source: io::Error| ArchiveError::Io { path, source }
        };
        let dir = self.episodes.join(id.as_str());
        let origin = Origin::of(&dir).map_err(io_at(&dir))?;
        let mut sink = Spill {
            outbox: &self.outbox,
            memory: Vec::new(),
            file: None,
        };
        let packed = archive::pack(&dir, id, &mut sink, level, workers, written)?;
        let tmp = match sink.file {
            None => {
                sink.memory.shrink_to_fit();
                let archive = Archive {
                    digest: packed.digest,
                    bytes: packed.bytes,
                    commit: commit.clone(),
                    inline: Some(sink.memory.into()),
                    origin,
                };
                return Ok((archive, None));
            }
            Some(file) => file
                .into_inner()
                .map_err(|e| io_at(&self.outbox)(e.into_error()))?,
        };
        let archive = Archive {
            digest: packed.digest,
            bytes: packed.bytes,
            commit: commit.clone(),
            inline: None,
            origin,
        };
        let unsealed = self
            .place(id, tmp, &archive)
            .map_err(|(path, source)| ArchiveError::Io { path, source })?;
        Ok((archive, Some(unsealed)))
    }
}
