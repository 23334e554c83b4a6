//! Packing an episode as the contract's archive (CONTRACT §3).
//!
//! A tar stream of `<id>/…` in sorted path order (a depth-first walk with
//! siblings sorted by name, the order the receiver enforces), holding only
//! directories and regular files, with mtimes kept, permission bits kept and
//! setuid/setgid/sticky masked off (CONTRACT §13), owner ids 0 and no owner
//! names, compressed with zstd at the configured level on the threads
//! shipper.toml's `limits.zstd_workers` names (0: one per core).
//! SHA-256 is computed over the compressed bytes as they are written, so the
//! digest costs no second read. Two packs of the same tree give the same
//! bytes: no atime/ctime, no names, and zstd's multithreaded output does not
//! depend on the worker count.
//!
//! Producers write the episode while the shipper (which may read the host's
//! private key) reads it, so the walk never follows a symlink: it goes from
//! directory descriptor to directory descriptor (`openat` with `O_NOFOLLOW`),
//! and every entry is opened as the `lstat` of the walk saw it, or not at all
//! (`open_walked`). A symlink swapped in anywhere on the way is an error,
//! not a read of whatever it points to.

use labship_protocol::archive::{EntryKind, MODE_MASK, check_entry};
use labship_protocol::digest::Hasher;
use labship_protocol::{Id, Sha256Digest};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt as _;
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
    /// (local fatal reason `archive_failed`). Also when one is swapped in for
    /// a walked entry before it is opened: the episode now holds it.
    #[error(
        "{path}: a {kind} cannot be shipped; an episode may hold only directories and regular files"
    )]
    Special { path: PathBuf, kind: &'static str },
    /// A file grew or shrank while being packed: not settled after all; retry later.
    #[error(
        "{path}: changed while being packed (expected {expected} bytes); will retry once it settles"
    )]
    Changed { path: PathBuf, expected: u64 },
    /// Another file or directory was renamed over the walked one before it
    /// was opened: a producer still writing (atomic saves do this); retry later.
    #[error("{path}: replaced while being packed; will retry once it settles")]
    Replaced { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ArchiveError {
    /// True when packing again cannot help (quarantine as `archive_failed`).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Special { .. })
    }
}

fn io_at(path: &Path) -> impl FnOnce(rustix::io::Errno) -> ArchiveError + use<> {
    let path = path.to_owned();
    move |e| ArchiveError::Io {
        path,
        source: e.into(),
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

/// What an entry of type `mode` is, if it is not a directory or a regular file.
fn special_kind(mode: u32) -> Option<&'static str> {
    match FileType::from_raw_mode(mode) {
        FileType::Directory | FileType::RegularFile => None,
        FileType::Symlink => Some("symlink"),
        FileType::Fifo => Some("fifo"),
        FileType::Socket => Some("socket"),
        FileType::BlockDevice => Some("block device"),
        FileType::CharacterDevice => Some("character device"),
        FileType::Unknown => Some("special file"),
    }
}

/// Opens `name` in `dir` as the walk's `lstat` (`walked`) saw it, or fails:
/// `O_NOFOLLOW`, so a symlink swapped in since is not followed (the
/// episode now holds a symlink: fatal, CONTRACT §3); `O_NONBLOCK`, so a fifo
/// swapped in cannot hang the open; then `fstat`, so another file renamed
/// over it (same type, other inode: [`ArchiveError::Replaced`], retried) is
/// not packed under the walked one's size and mode.
fn open_walked(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    walked: &Stat,
) -> Result<OwnedFd, ArchiveError> {
    let is_dir = FileType::from_raw_mode(walked.st_mode) == FileType::Directory;
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if is_dir {
        flags |= OFlags::DIRECTORY;
    }
    let special = |kind| ArchiveError::Special {
        path: path.to_owned(),
        kind,
    };
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // ELOOP (a symlink), ENOTDIR, ENXIO (a socket): what is there now says which.
            let now = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW);
            return Err(match now.ok().and_then(|st| special_kind(st.st_mode)) {
                Some(kind) => special(kind),
                None => io_at(path)(e),
            });
        }
    };
    let now = rustix::fs::fstat(&fd).map_err(io_at(path))?;
    if let Some(kind) = special_kind(now.st_mode) {
        return Err(special(kind));
    }
    if now.st_dev != walked.st_dev
        || now.st_ino != walked.st_ino
        || FileType::from_raw_mode(now.st_mode) != FileType::from_raw_mode(walked.st_mode)
    {
        return Err(ArchiveError::Replaced {
            path: path.to_owned(),
        });
    }
    Ok(fd)
}

/// The header every entry gets: permission bits masked to [`MODE_MASK`],
/// the mtime, owner 0 and no names.
fn header_for(st: &Stat, is_dir: bool) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(if is_dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    header.set_mode(st.st_mode & MODE_MASK);
    header.set_mtime(st.st_mtime.max(0) as u64);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// One pack in progress.
struct Packer<'a, W: Write> {
    tar: tar::Builder<zstd::stream::write::Encoder<'static, HashingWriter<'a, W>>>,
    id: &'a Id,
    files: u64,
    /// Called with each entry's path between its `lstat` and its open (tests
    /// swap files there).
    before_open: &'a mut dyn FnMut(&Path),
}

impl<W: Write> Packer<'_, W> {
    fn append_dir(&mut self, path: &Path, rel: &Path, st: &Stat) -> Result<(), ArchiveError> {
        let mut header = header_for(st, true);
        header.set_size(0);
        self.tar
            .append_data(&mut header, rel, io::empty())
            .map_err(|source| ArchiveError::Io {
                path: path.to_owned(),
                source,
            })
    }

    fn append_file(
        &mut self,
        fd: OwnedFd,
        path: &Path,
        rel: &Path,
        st: &Stat,
    ) -> Result<(), ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: path.to_owned(),
            source,
        };
        let size = st.st_size.max(0) as u64;
        let mut header = header_for(st, false);
        header.set_size(size);
        let mut exact = Exact {
            inner: std::fs::File::from(fd).take(size),
            read: 0,
        };
        self.tar
            .append_data(&mut header, rel, &mut exact)
            .map_err(io)?;
        let now = exact.inner.into_inner().metadata().map_err(io)?.len();
        if exact.read != size || now != size {
            return Err(ArchiveError::Changed {
                path: path.to_owned(),
                expected: size,
            });
        }
        self.files += 1;
        Ok(())
    }

    /// Packs what the directory `dir` (at `path`, `rel` in the archive)
    /// holds, depth first, siblings sorted by name (byte order, as GNU
    /// `tar --sort=name`).
    fn walk(&mut self, dir: &OwnedFd, path: &Path, rel: &Path) -> Result<(), ArchiveError> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir).map_err(io_at(path))? {
            let name = entry.map_err(io_at(path))?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }
        names.sort();
        for name in names {
            let (path, rel) = (path.join(&name), rel.join(&name));
            let st = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_at(&path))?;
            let kind = match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => EntryKind::Directory,
                FileType::RegularFile => EntryKind::Regular,
                _ => {
                    return Err(ArchiveError::Special {
                        path,
                        kind: special_kind(st.st_mode).unwrap_or("special file"),
                    });
                }
            };
            // The same rule the receiver applies; a name it would refuse is ours to report.
            check_entry(self.id.as_str(), rel.as_os_str().as_encoded_bytes(), kind).map_err(
                |e| ArchiveError::Io {
                    path: path.clone(),
                    source: io::Error::other(e.to_string()),
                },
            )?;
            (self.before_open)(&path);
            let fd = open_walked(dir, &name, &path, &st)?;
            if kind == EntryKind::Directory {
                self.append_dir(&path, &rel, &st)?;
                self.walk(&fd, &path, &rel)?;
            } else {
                self.append_file(fd, &path, &rel, &st)?;
            }
        }
        Ok(())
    }
}

/// Packs the episode directory `dir` (named `id`) into `out`, compressing on
/// `workers` threads (zstd's `NbWorkers`; the calling thread reads the tree
/// and hashes the output beside them). `written` counts compressed bytes as they go (progress
/// for the watchdog during long packs).
pub fn pack<W: Write>(
    dir: &Path,
    id: &Id,
    out: W,
    level: i32,
    workers: u32,
    written: &std::sync::atomic::AtomicU64,
) -> Result<Packed, ArchiveError> {
    pack_with(dir, id, out, level, workers, written, &mut |_| {})
}

fn pack_with<W: Write>(
    dir: &Path,
    id: &Id,
    out: W,
    level: i32,
    workers: u32,
    written: &std::sync::atomic::AtomicU64,
    before_open: &mut dyn FnMut(&Path),
) -> Result<Packed, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: dir.to_owned(),
        source,
    };
    let hashing = HashingWriter {
        inner: out,
        hasher: Hasher::new(),
        bytes: 0,
        written,
    };
    let mut encoder = zstd::stream::write::Encoder::new(hashing, level).map_err(io)?;
    // Always the multithreaded encoder (even with one worker): its output does
    // not depend on the worker count, while single-threaded zstd's differs.
    encoder.multithread(workers.max(1)).map_err(io)?;
    encoder
        .set_parameter(zstd::zstd_safe::CParameter::JobSize(JOB_SIZE))
        .map_err(io)?;
    // The episode directory itself is not followed either: a symlink renamed
    // over `episodes/<id>` since the scan is refused here.
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        match rustix::fs::lstat(dir)
            .ok()
            .and_then(|st| special_kind(st.st_mode))
        {
            Some(kind) => ArchiveError::Special {
                path: dir.to_owned(),
                kind,
            },
            None => io_at(dir)(e),
        }
    })?;
    let st = rustix::fs::fstat(&root).map_err(io_at(dir))?;
    let mut packer = Packer {
        tar: tar::Builder::new(encoder),
        id,
        files: 0,
        before_open,
    };
    let top = Path::new(id.as_str());
    packer.append_dir(dir, top, &st)?;
    packer.walk(&root, dir, top)?;
    let files = packer.files;
    let encoder = packer.tar.into_inner().map_err(io)?;
    let mut hashing = encoder.finish().map_err(io)?;
    hashing.flush().map_err(io)?;
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
    fn setuid_setgid_and_sticky_bits_are_masked() {
        let (_root, dir) = tree();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        // An episode directory under the setgid `episodes/` inherits setgid.
        mode(&dir, 0o2770).unwrap();
        mode(&dir.join("a"), 0o3755).unwrap();
        mode(&dir.join("a/b"), 0o1777).unwrap();
        mode(&dir.join("a.txt"), 0o4755).unwrap();
        mode(&dir.join("meta.json"), 0o6644).unwrap();
        let mut out = Vec::new();
        pack(&dir, &id(), &mut out, 3, 1, &Default::default()).unwrap();
        let tar = zstd::decode_all(out.as_slice()).unwrap();
        let mut modes = std::collections::BTreeMap::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            modes.insert(
                p.trim_end_matches('/').to_owned(),
                e.header().mode().unwrap(),
            );
        }
        assert_eq!(modes["ep-1"], 0o770);
        assert_eq!(modes["ep-1/a"], 0o755);
        assert_eq!(modes["ep-1/a/b"], 0o777);
        assert_eq!(modes["ep-1/a.txt"], 0o755);
        assert_eq!(modes["ep-1/meta.json"], 0o644);
        assert!(modes.values().all(|m| m & 0o7000 == 0), "{modes:?}");
    }

    /// Packs `dir`, running `swap` once just before the entry at `at` is
    /// opened (after the walk's `lstat` of it).
    fn pack_swapping(dir: &Path, at: &Path, swap: impl FnOnce()) -> Result<Vec<u8>, ArchiveError> {
        let mut swap = Some(swap);
        let mut out = Vec::new();
        let written = Default::default();
        pack_with(dir, &id(), &mut out, 3, 1, &written, &mut |p| {
            if p == at {
                if let Some(swap) = swap.take() {
                    swap();
                }
            }
        })?;
        assert!(swap.is_none(), "{} was never opened", at.display());
        Ok(out)
    }

    #[test]
    fn a_symlink_swapped_in_for_a_walked_file_is_not_followed() {
        let (root, dir) = tree();
        // As long as a.txt, so following it would pass every size check.
        let secret = root.path().join("host.key");
        std::fs::write(&secret, b"12345").unwrap();
        let file = dir.join("a.txt");
        let e = pack_swapping(&dir, &file, || {
            std::fs::remove_file(&file).unwrap();
            std::os::unix::fs::symlink(&secret, &file).unwrap();
        })
        .unwrap_err();
        assert!(e.is_fatal(), "{e}");
        assert!(
            e.to_string().contains("a.txt") && e.to_string().contains("symlink"),
            "{e}"
        );
    }

    #[test]
    fn a_symlink_swapped_in_for_a_walked_directory_is_not_followed() {
        let (root, dir) = tree();
        // A look-alike of a/ elsewhere, file for file and size for size.
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(elsewhere.join("b")).unwrap();
        std::fs::write(elsewhere.join("b/data.bin"), vec![9u8; 300_000]).unwrap();
        std::fs::write(elsewhere.join("l".repeat(140)), b"LONG NAME").unwrap();
        let sub = dir.join("a");
        let e = pack_swapping(&dir, &sub, || {
            std::fs::rename(&sub, root.path().join("moved")).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &sub).unwrap();
        })
        .unwrap_err();
        assert!(e.is_fatal(), "{e}");
        assert!(
            e.to_string().contains("/a:") && e.to_string().contains("symlink"),
            "{e}"
        );

        // The episode directory itself, renamed over by a symlink after the scan.
        let (root, dir) = tree();
        let link_dir = root.path().join("links");
        std::fs::create_dir(&link_dir).unwrap();
        std::os::unix::fs::symlink(&dir, link_dir.join("ep-1")).unwrap();
        let e = pack(
            &link_dir.join("ep-1"),
            &id(),
            io::sink(),
            3,
            1,
            &Default::default(),
        )
        .unwrap_err();
        assert!(e.is_fatal() && e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn a_file_replaced_after_the_walk_is_retried_not_packed() {
        let (_root, dir) = tree();
        let file = dir.join("a.txt");
        let e = pack_swapping(&dir, &file, || {
            // An atomic save: same size, other inode.
            std::fs::write(dir.join(".a.txt.new"), b"HELLO").unwrap();
            std::fs::rename(dir.join(".a.txt.new"), &file).unwrap();
        })
        .unwrap_err();
        assert!(
            matches!(e, ArchiveError::Replaced { .. }) && !e.is_fatal(),
            "{e}"
        );
        assert!(e.to_string().contains("a.txt"), "{e}");
    }

    #[test]
    fn a_fifo_swapped_in_neither_hangs_nor_ships() {
        let (_root, dir) = tree();
        let file = dir.join("a.txt");
        let e = pack_swapping(&dir, &file, || {
            std::fs::remove_file(&file).unwrap();
            let ok = std::process::Command::new("mkfifo")
                .arg(&file)
                .status()
                .unwrap();
            assert!(ok.success());
        })
        .unwrap_err();
        assert!(e.is_fatal() && e.to_string().contains("fifo"), "{e}");
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
