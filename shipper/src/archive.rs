//! Packing an episode as the contract's archive (CONTRACT §3).
//!
//! A tar stream of `<id>/…` in sorted path order (a depth-first walk with
//! siblings sorted by name, the order the receiver enforces), holding only
//! directories and regular files, with file modes and mtimes kept, owner ids 0
//! and no owner names, compressed with zstd at the configured level on several
//! threads. SHA-256 is computed over the compressed bytes as they are written,
//! so the digest costs no second read. Two packs of the same tree give the same
//! bytes: no atime/ctime, no names, and zstd's multithreaded output does not
//! depend on the worker count.

use labship_protocol::archive::{EntryKind, check_entry};
use labship_protocol::digest::Hasher;
use labship_protocol::{Id, Sha256Digest};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// zstd's multithreaded job size. Its default at level 3 (8 MiB, four times
/// the window) keeps about 70 MiB of job buffers in flight on two workers;
/// 4 MiB jobs halve that at the same speed and within 0.1% of the size
/// (docs/performance.md). The output depends on the job size, never on the
/// worker count, so it is fixed here rather than derived from anything.
const JOB_SIZE: u32 = 4 << 20;

/// What a pack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub digest: Sha256Digest,
    /// Compressed bytes written.
    pub bytes: u64,
    /// Regular files packed.
    pub files: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A symlink, device, fifo or socket: the episode cannot be shipped as is
    /// (local fatal reason `archive_failed`).
    #[error(
        "{path}: a {kind} cannot be shipped; an episode may hold only directories and regular files"
    )]
    Special { path: PathBuf, kind: &'static str },
    /// A file grew or shrank while being packed: not settled after all; retry later.
    #[error(
        "{path}: changed while being packed (expected {expected} bytes); will retry once it settles"
    )]
    Changed { path: PathBuf, expected: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ArchiveError {
    /// True when packing again cannot help (quarantine as `archive_failed`).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Special { .. })
    }
}

/// Hashes and counts what passes through to `inner`.
struct HashingWriter<'a, W> {
    inner: W,
    hasher: Hasher,
    bytes: u64,
    written: &'a std::sync::atomic::AtomicU64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.written
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn special_kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Packs the episode directory `dir` (named `id`) into `out`, compressing on
/// `workers` threads. `written` counts compressed bytes as they go (progress
/// for the watchdog during long packs).
pub fn pack<W: Write>(
    dir: &Path,
    id: &Id,
    out: W,
    level: i32,
    workers: u32,
    written: &std::sync::atomic::AtomicU64,
) -> Result<Packed, ArchiveError> {
    let io_at = |path: &Path| {
        let path = path.to_owned();
        move |source: io::Error| ArchiveError::Io { path, source }
    };
    let base = dir.parent().unwrap_or(Path::new("/"));
    let hashing = HashingWriter {
        inner: out,
        hasher: Hasher::new(),
        bytes: 0,
        written,
    };
    let mut encoder = zstd::stream::write::Encoder::new(hashing, level).map_err(io_at(dir))?;
    // Always the multithreaded encoder (even with one worker): its output does
    // not depend on the worker count, while single-threaded zstd's differs.
    encoder.multithread(workers.max(1)).map_err(io_at(dir))?;
    encoder
        .set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_SIZE))
        .map_err(io_at(dir))?;
    let mut tar = tar::Builder::new(encoder);
    let mut files = 0u64;
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_owned();
            ArchiveError::Io {
                path,
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("filesystem loop")),
            }
        })?;
        let path = entry.path();
        let meta = entry.metadata().map_err(|e| ArchiveError::Io {
            path: path.to_owned(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("metadata")),
        })?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Directory
        } else if ft.is_file() {
            EntryKind::Regular
        } else {
            return Err(ArchiveError::Special {
                path: path.to_owned(),
                kind: special_kind(&ft),
            });
        };
        // `base` is dir's parent, so every walked path is under it.
        let rel = path.strip_prefix(base).unwrap_or(path);
        let rel_bytes = rel.as_os_str().as_encoded_bytes();
        // The same rule the receiver applies; a name it would refuse is ours to report.
        check_entry(id.as_str(), rel_bytes, kind).map_err(|e| ArchiveError::Io {
            path: path.to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(if ft.is_dir() {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_mode(meta.mode() & 0o7777);
        header.set_mtime(meta.mtime().max(0) as u64);
        header.set_uid(0);
        header.set_gid(0);
        if ft.is_dir() {
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty())
                .map_err(io_at(path))?;
        } else {
            let size = meta.len();
            header.set_size(size);
            let file = std::fs::File::open(path).map_err(io_at(path))?;
            let mut exact = Exact {
                inner: file.take(size),
                read: 0,
            };
            tar.append_data(&mut header, rel, &mut exact)
                .map_err(io_at(path))?;
            let now = exact
                .inner
                .into_inner()
                .metadata()
                .map_err(io_at(path))?
                .len();
            if exact.read != size || now != size {
                return Err(ArchiveError::Changed {
                    path: path.to_owned(),
                    expected: size,
                });
            }
            files += 1;
        }
    }
    let encoder = tar.into_inner().map_err(io_at(dir))?;
    let mut hashing = encoder.finish().map_err(io_at(dir))?;
    hashing.flush().map_err(io_at(dir))?;
    Ok(Packed {
        digest: hashing.hasher.finish(),
        bytes: hashing.bytes,
        files,
    })
}

/// Counts bytes read, so a file that shrank under us is noticed (tar would
/// otherwise write a header whose size does not match its data); growth is
/// caught by re-reading the length afterwards.
struct Exact<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ep-1");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(
            dir.join("meta.json"),
            br#"{"code_version":{"commit":"1111111111111111111111111111111111111111"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("a/b/data.bin"), vec![7u8; 300_000]).unwrap();
        std::fs::write(dir.join("a.txt"), b"hello").unwrap();
        let long = "l".repeat(140);
        std::fs::write(dir.join("a").join(&long), b"long name").unwrap();
        std::fs::set_permissions(dir.join("a.txt"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        std::fs::File::options()
            .write(true)
            .open(dir.join("a.txt"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        (root, dir)
    }

    fn id() -> Id {
        Id::parse("ep-1").unwrap()
    }

    #[test]
    fn packs_deterministically_whatever_the_worker_count() {
        let (_root, dir) = tree();
        let c = Default::default();
        let mut one = Vec::new();
        let p1 = pack(&dir, &id(), &mut one, 3, 1, &c).unwrap();
        let mut four = Vec::new();
        let p4 = pack(&dir, &id(), &mut four, 3, 4, &c).unwrap();
        let mut again = Vec::new();
        pack(&dir, &id(), &mut again, 3, 4, &c).unwrap();
        assert_eq!(four, again, "two packs of one tree differ");
        assert_eq!(
            one, four,
            "the output must not depend on the host's core count"
        );
        assert_eq!(p4.digest, Sha256Digest::of(&four));
        assert_eq!(p4.bytes, four.len() as u64);
        assert_eq!(p1.files, 4);
        assert_eq!(p1.digest, Sha256Digest::of(&one));
    }

    #[test]
    fn keeps_modes_mtimes_order_and_drops_owners() {
        let (_root, dir) = tree();
        let mut out = Vec::new();
        pack(&dir, &id(), &mut out, 3, 2, &Default::default()).unwrap();
        let tar = zstd::decode_all(out.as_slice()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut paths = Vec::new();
        let mut order = labship_protocol::archive::PathOrder::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let is_dir = h.entry_type() == tar::EntryType::Directory;
            order.admit(&e.path_bytes(), is_dir).unwrap();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert!(h.username().unwrap().unwrap_or("").is_empty());
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if p == "ep-1/a.txt" {
                assert_eq!(h.mode().unwrap(), 0o750);
                assert_eq!(h.mtime().unwrap(), 1_600_000_000);
            }
            paths.push(p);
        }
        assert_eq!(paths[0].trim_end_matches('/'), "ep-1");
        assert!(
            paths.iter().any(|p| p.len() > 100),
            "long name kept: {paths:?}"
        );
    }

    #[test]
    fn symlinks_and_fifos_are_fatal_and_named() {
        let (_root, dir) = tree();
        std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
        let e = pack(&dir, &id(), io::sink(), 3, 1, &Default::default()).unwrap_err();
        assert!(
            e.is_fatal() && e.to_string().contains("link") && e.to_string().contains("symlink"),
            "{e}"
        );
        std::fs::remove_file(dir.join("link")).unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(dir.join("pipe"))
            .status()
            .unwrap();
        assert!(ok.success());
        let e = pack(&dir, &id(), io::sink(), 3, 1, &Default::default()).unwrap_err();
        assert!(e.is_fatal() && e.to_string().contains("fifo"), "{e}");
    }
}
