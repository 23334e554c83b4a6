//! The archive checks of an upload, on any byte stream: zstd (one frame
//! sequence, a bounded window), every tar header and entry against the
//! protocol's archive rules, `meta.json`'s stamp against the declared commit,
//! and the unpacked size. The PUT path reaches them through `ingest`, the
//! resumable path through its validator session, the fuzz targets directly.

use super::IngestError;
use labship_protocol::archive::{
    EntryKind, EntryRole, PathOrder, Pax, check_entry, check_member, parse_header, parse_pax,
};
use labship_protocol::stamp::{META_FILE, META_MAX_BYTES, parse_meta};
use labship_protocol::{Commit, StampError};
use std::io::{self, Read};

/// Largest zstd window accepted (2^24 = 16 MiB): covers every level up to 19,
/// and stops a hostile frame from making each upload allocate 128 MiB or more.
const WINDOW_LOG_MAX: u32 = 24;

/// Counts decompressed bytes and stops at the limit.
struct Unpacked<R> {
    inner: R,
    count: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> Read for Unpacked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("unpacked size limit reached"));
        }
        Ok(n)
    }
}

fn kind_of(t: tar::EntryType) -> EntryKind {
    match t {
        // Not `Continuous` (7): nothing writes it and GNU tar warns on it.
        tar::EntryType::Regular => EntryKind::Regular,
        tar::EntryType::Directory => EntryKind::Directory,
        tar::EntryType::Symlink => EntryKind::Symlink,
        tar::EntryType::Link => EntryKind::HardLink,
        tar::EntryType::Char => EntryKind::CharDevice,
        tar::EntryType::Block => EntryKind::BlockDevice,
        tar::EntryType::Fifo => EntryKind::Fifo,
        _ => EntryKind::Other,
    }
}

/// Checks a whole archive stream (zstd-compressed tar) read from `reader`:
/// every entry against the protocol's archive rules, `meta.json`'s stamp
/// against `commit`, the unpacked size against `max_unpacked` (the count is
/// left in `unpacked_out` either way). Public for the fuzz targets in `fuzz/`
/// and their corpus regression test; uploads reach it through [`ingest`].
pub fn check_archive<R: Read>(
    reader: R,
    episode: &str,
    commit: &Commit,
    max_unpacked: u64,
    unpacked_out: &mut u64,
) -> Result<(), IngestError> {
    check_archive_with(
        reader,
        episode,
        commit,
        max_unpacked,
        unpacked_out,
        &mut |_| {},
    )
}

fn check_archive_with<R: Read>(
    reader: R,
    episode: &str,
    commit: &Commit,
    max_unpacked: u64,
    unpacked_out: &mut u64,
    on_entry: &mut dyn FnMut(CheckedEntry),
) -> Result<(), IngestError> {
    let invalid =
        |what: &str, e: &dyn std::fmt::Display| IngestError::Invalid(format!("{what}: {e}"));
    let decoder = StrictZstd::new(reader).map_err(|e| IngestError::Internal(e.to_string()))?;
    let mut counter = Unpacked {
        inner: decoder,
        count: 0,
        limit: max_unpacked,
        exceeded: false,
    };
    let result = check_entries(&mut counter, episode, commit, on_entry);
    let result = result.and_then(|()| {
        // After tar's end marker only zero padding may follow, up to the end of
        // the zstd stream (which must be intact: trailing garbage fails here).
        let mut rest = [0u8; 64 * 1024];
        loop {
            let n = counter
                .read(&mut rest)
                .map_err(|e| invalid("not a complete zstd stream", &e))?;
            if n == 0 {
                return Ok(());
            }
            if rest[..n].iter().any(|&b| b != 0) {
                return Err(IngestError::Invalid(
                    "data after the end of the tar archive".into(),
                ));
            }
        }
    });
    *unpacked_out = counter.count;
    if counter.exceeded {
        return Err(IngestError::TooLargeUnpacked {
            limit: max_unpacked,
        });
    }
    result
}

/// A zstd stream decoder that also holds every frame to the content size its
/// header declares. libzstd's streaming decoder (1.5.7) skips that check when
/// a frame ends with an empty last block, while its one-pass path (the `zstd`
/// tool, `zstd::decode_all`) refuses such a stream as corrupt: found by the
/// `archive` fuzz target, the receiver stored an archive readers could not
/// open. Frames follow each other until the input ends between two frames;
/// the input ending inside one is an error.
struct StrictZstd<R> {
    inner: R,
    decoder: zstd::stream::raw::Decoder<'static>,
    /// Compressed input, `buf[pos..len]` not yet decoded.
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    /// Inside a frame; its declared content size (if any), its output so far.
    in_frame: bool,
    declared: Option<u64>,
    so_far: u64,
}

/// Longest zstd frame header (magic, descriptor, window, dictionary id, size).
const FRAME_HEADER_MAX: usize = 18;

impl<R: Read> StrictZstd<R> {
    fn new(inner: R) -> io::Result<Self> {
        use zstd::stream::raw::DParameter;
        let mut decoder = zstd::stream::raw::Decoder::new()?;
        decoder.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
        Ok(Self {
            inner,
            decoder,
            buf: vec![0; 128 * 1024].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            in_frame: false,
            declared: None,
            so_far: 0,
        })
    }

    /// Reads more input after what is buffered; notes the end of the input.
    fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len < self.buf.len() && !self.eof {
            match self.inner.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for StrictZstd<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use zstd::stream::raw::{InBuffer, Operation as _, OutBuffer};
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                while self.len - self.pos < FRAME_HEADER_MAX && !self.eof {
                    self.fill()?;
                }
                if self.pos == self.len {
                    return Ok(0); // the input ended between two frames
                }
                // A header it cannot read is left to the decoder to report.
                self.declared =
                    zstd::zstd_safe::get_frame_content_size(&self.buf[self.pos..self.len])
                        .unwrap_or(None);
                self.so_far = 0;
                self.in_frame = true;
            }
            if self.pos == self.len && !self.eof {
                self.fill()?;
            }
            let mut input = InBuffer::around(&self.buf[self.pos..self.len]);
            let mut output = OutBuffer::around(&mut *out);
            let hint = self.decoder.run(&mut input, &mut output)?;
            let (consumed, produced) = (input.pos(), output.pos());
            self.pos += consumed;
            self.so_far += produced as u64;
            if hint == 0 {
                // The frame is complete and flushed.
                if let Some(declared) = self.declared
                    && declared != self.so_far
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "a zstd frame declares {declared} bytes of content but holds {}",
                            self.so_far
                        ),
                    ));
                }
                self.in_frame = false;
                self.decoder.reinit()?;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if hint != 0 && consumed == 0 && self.pos == self.len && self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the zstd stream ends inside a frame",
                ));
            }
        }
    }
}

/// Largest GNU long-name / pax extension entry accepted. The tar crate reads
/// these whole into memory, so they are iterated raw and capped here.
const MAX_EXTENSION_BYTES: u64 = 64 * 1024;

/// An entry as the receiver checked it: the path every tar reader unpacks it
/// to (the rules make them agree), its kind, mode and size. Listed by
/// [`list_archive`] for the tests that hold real readers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedEntry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u64,
    pub size: u64,
}

/// [`check_archive`], also returning every entry it checked, in order (for
/// tests and fuzz targets; uploads never keep the list).
pub fn list_archive<R: Read>(
    reader: R,
    episode: &str,
    commit: &Commit,
    max_unpacked: u64,
) -> Result<Vec<CheckedEntry>, IngestError> {
    let mut entries = Vec::new();
    let mut unpacked = 0;
    check_archive_with(
        reader,
        episode,
        commit,
        max_unpacked,
        &mut unpacked,
        &mut |e| entries.push(e),
    )?;
    Ok(entries)
}

/// The raw name field of a header, for messages.
fn raw_name(block: &[u8; labship_protocol::archive::BLOCK]) -> String {
    let name = &block[..100];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end])
        .chars()
        .take(100)
        .collect()
}

fn not_tar(e: io::Error) -> IngestError {
    IngestError::Invalid(format!("not a valid zstd-compressed tar stream: {e}"))
}

fn refuse<T>(why: String) -> Result<T, IngestError> {
    Err(IngestError::Invalid(why))
}

fn check_entries<R: Read>(
    reader: R,
    episode: &str,
    commit: &Commit,
    on_entry: &mut dyn FnMut(CheckedEntry),
) -> Result<(), IngestError> {
    let mut archive = tar::Archive::new(reader);
    let mut order = PathOrder::new();
    let mut pending = Extensions::default();
    let mut meta_seen = false;
    for (index, entry) in archive.entries().map_err(not_tar)?.raw(true).enumerate() {
        let mut entry = entry.map_err(not_tar)?;
        let header = parse_header(entry.header().as_bytes()).map_err(|e| {
            IngestError::Invalid(format!(
                "tar header {index} ({:?}): {e}",
                raw_name(entry.header().as_bytes())
            ))
        })?;
        let entry_type = entry.header().entry_type();
        if pending.read(index, entry_type, header.size, &mut entry)? {
            continue;
        }
        let kind = kind_of(entry_type);
        let path = pending.path_of(&entry)?;
        let rule = |e: labship_protocol::EntryRuleError| IngestError::Invalid(e.to_string());
        let role = check_entry(episode, &path, kind).map_err(rule)?;
        check_member(&path, kind, &header).map_err(rule)?;
        order
            .admit(&path, kind == EntryKind::Directory)
            .map_err(rule)?;
        on_entry(CheckedEntry {
            path,
            kind,
            mode: header.mode,
            size: header.size,
        });
        if role == EntryRole::Meta {
            meta_seen = true;
            check_meta(&mut entry, header.size, episode, commit)?;
        }
    }
    pending.finish()?;
    if !meta_seen {
        return Err(IngestError::Invalid(format!(
            "archive has no {episode}/{META_FILE}"
        )));
    }
    Ok(())
}

/// The extension headers that describe the entry after them: a GNU long
/// name (`L`) and a pax header (`x`), at most one of each, and not both
/// naming the entry (readers disagree on which wins). Every header, these
/// included, must first pass the byte rules of `parse_header` (ustar or
/// GNU, plain octal numbers, no GNU prefix area), and pax records
/// `parse_pax`'s allow-list: so the paths checked here are the paths
/// Python's tarfile, GNU tar and bsdtar unpack (tests/tests/tar_readers.rs).
/// An extension with no entry after it is a truncated or forged archive.
#[derive(Default)]
struct Extensions {
    gnu_name: Option<Vec<u8>>,
    pax: Option<Pax>,
}

impl Extensions {
    /// Keeps `entry` when it is an extension header (`true`: it is no entry
    /// of its own); refuses the extensions no archive may hold.
    fn read(
        &mut self,
        index: usize,
        entry_type: tar::EntryType,
        size: u64,
        entry: &mut impl Read,
    ) -> Result<bool, IngestError> {
        match entry_type {
            tar::EntryType::GNULongName | tar::EntryType::XHeader => {}
            tar::EntryType::GNULongLink => {
                return refuse(
                    "a GNU long-link header (K): no entry an archive may hold has a link target"
                        .into(),
                );
            }
            tar::EntryType::XGlobalHeader => {
                return refuse(
                    "a pax global header (g): readers apply its records to every entry after it"
                        .into(),
                );
            }
            _ => return Ok(false),
        }
        if size > MAX_EXTENSION_BYTES {
            return refuse(format!(
                "a tar extension header is {size} bytes; the limit is {MAX_EXTENSION_BYTES}"
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut data).map_err(not_tar)?;
        if entry_type == tar::EntryType::XHeader {
            if self.pax.is_some() {
                return refuse("two pax headers for one tar entry".into());
            }
            let pax = parse_pax(&data)
                .map_err(|e| IngestError::Invalid(format!("pax header {index}: {e}")))?;
            self.pax = Some(pax);
        } else {
            if self.gnu_name.is_some() {
                return refuse("two GNU long-name headers for one tar entry".into());
            }
            // One NUL terminator, as the tar crate strips it; a NUL
            // left inside is refused with the path.
            if data.last() == Some(&0) {
                data.pop();
            }
            self.gnu_name = Some(data);
        }
        Ok(true)
    }

    /// The path of `entry`: from the extension before it, or its own header.
    fn path_of<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<Vec<u8>, IngestError> {
        match (self.gnu_name.take(), self.pax.take().and_then(|p| p.path)) {
            (Some(_), Some(_)) => {
                refuse("a tar entry with both a GNU long name and a pax path".into())
            }
            (Some(p), None) | (None, Some(p)) => Ok(p),
            (None, None) => Ok(entry.path_bytes().into_owned()),
        }
    }

    fn finish(&self) -> Result<(), IngestError> {
        if self.gnu_name.is_some() || self.pax.is_some() {
            return refuse(
                "the archive ends with a tar extension header and no entry for it".into(),
            );
        }
        Ok(())
    }
}

/// `meta.json`: bounded in size, JSON, and stamped with the declared commit.
fn check_meta(
    entry: &mut impl Read,
    size: u64,
    episode: &str,
    commit: &Commit,
) -> Result<(), IngestError> {
    if size > META_MAX_BYTES {
        return Err(IngestError::Invalid(format!(
            "{episode}/{META_FILE} is {size} bytes; the limit is {META_MAX_BYTES}"
        )));
    }
    let mut meta = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut meta).map_err(not_tar)?;
    match parse_meta(&meta) {
        Ok(stamp) if stamp.commit == *commit => Ok(()),
        Ok(stamp) => Err(IngestError::StampMismatch(format!(
            "{META_FILE} says commit {} but X-Labship-Commit says {commit}",
            stamp.commit
        ))),
        Err(e @ (StampError::NotJson { .. } | StampError::NotObject)) => {
            Err(IngestError::Invalid(format!("{episode}/{e}")))
        }
        Err(e) => Err(IngestError::StampMismatch(format!(
            "X-Labship-Commit is {commit} but {e}"
        ))),
    }
}
