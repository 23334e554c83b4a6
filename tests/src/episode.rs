//! Episode trees on disk and their archives: [`write_episode`] builds a tree
//! like a producer would, [`pack`] packs it as the contract says (sorted,
//! owner 0, modes and mtimes kept, zstd), and [`RawTar`] writes arbitrary,
//! possibly hostile, entries that a well-behaved packer would refuse to make.

use labship_protocol::Sha256Digest;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes `<root>/<id>/` with a `meta.json` (stamped with `commit`, or with no
/// `code_version` when `None`) and `files` (relative path, contents).
pub fn write_episode(
    root: &Path,
    id: &str,
    commit: Option<&str>,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).expect("episode dir");
    let meta = match commit {
        Some(c) => {
            serde_json::json!({"episode": id, "code_version": {"commit": c, "dirty": false}})
        }
        None => serde_json::json!({"episode": id}),
    };
    std::fs::write(
        dir.join("meta.json"),
        serde_json::to_vec_pretty(&meta).expect("json"),
    )
    .expect("meta");
    for (rel, data) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, data).expect("file");
    }
    dir
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    names
}

fn append_tree(b: &mut tar::Builder<Vec<u8>>, base: &Path, dir: &Path) {
    for path in sorted_entries(dir) {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let rel = path.strip_prefix(base).expect("under base");
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        h.set_uid(0);
        h.set_gid(0);
        if meta.is_dir() {
            b.append_data(&mut h, rel, std::io::empty())
                .expect("append dir");
            append_tree(b, base, &path);
        } else {
            let f = std::fs::File::open(&path).expect("open");
            b.append_data(&mut h, rel, f).expect("append file");
        }
    }
}

/// Packs the episode directory `dir` (whose name is the id) as the contract's
/// archive: a tar of `<id>/…` in sorted order, zstd level 3.
pub fn pack(dir: &Path) -> Vec<u8> {
    let base = dir.parent().expect("episode has a parent");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(
        &std::fs::metadata(dir).expect("stat"),
        tar::HeaderMode::Complete,
    );
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(
        &mut h,
        dir.strip_prefix(base).expect("rel"),
        std::io::empty(),
    )
    .expect("root dir");
    append_tree(&mut b, base, dir);
    zst(&b.into_inner().expect("finish tar"))
}

/// zstd level 3.
pub fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}

/// The `Content-Digest` header value of `bytes`.
pub fn digest_header(bytes: &[u8]) -> String {
    Sha256Digest::of(bytes).header_value()
}

/// A tar stream built entry by entry, with no sanitising of paths or types.
#[derive(Debug, Default)]
pub struct RawTar {
    out: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry with a raw path (up to 100 bytes) of any type.
    pub fn entry(mut self, path: &[u8], kind: tar::EntryType, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("gnu header").name[..path.len()].copy_from_slice(path);
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        if kind == tar::EntryType::Symlink || kind == tar::EntryType::Link {
            h.set_link_name("meta.json").expect("link name");
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn dir(self, path: &str) -> Self {
        self.entry(path.as_bytes(), tar::EntryType::Directory, b"")
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(path.as_bytes(), tar::EntryType::Regular, data)
    }

    /// A `meta.json` stamped with `commit` at `<id>/meta.json`.
    pub fn meta(self, id: &str, commit: &str) -> Self {
        let meta = serde_json::json!({"code_version": {"commit": commit}});
        self.file(&format!("{id}/meta.json"), meta.to_string().as_bytes())
    }

    /// The tar bytes with the end-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }

    /// The tar bytes, zstd-compressed.
    pub fn finish_zst(self) -> Vec<u8> {
        zst(&self.finish())
    }
}

/// Unpacks an archive into `dest` with the tar crate (for byte-for-byte checks).
pub fn unpack(archive: &[u8], dest: &Path) {
    let tar = zstd::decode_all(archive).expect("zstd");
    tar::Archive::new(tar.as_slice())
        .unpack(dest)
        .expect("unpack");
}

/// Asserts two trees hold the same files with the same bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for p in sorted_entries(&dir) {
                let rel = p.strip_prefix(root).expect("rel").to_path_buf();
                if p.is_dir() {
                    out.push((rel, None));
                    stack.push(p);
                } else {
                    out.push((rel, Some(std::fs::read(&p).expect("read"))));
                }
            }
        }
        out.sort();
        out
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(
        la.len(),
        lb.len(),
        "{} and {} differ in entry count",
        a.display(),
        b.display()
    );
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x.0, y.0, "entry names differ");
        assert!(x.1 == y.1, "contents of {} differ", x.0.display());
    }
}

/// Asserts that `unpacked` (an archive unpacked with [`unpack`]) carries the
/// metadata of `original`, the tree that was packed: the same entries and
/// types, the same permission bits, and for files the same mtime to the
/// second (what tar keeps). Directory mtimes are not compared: unpacking
/// writes into them.
pub fn assert_same_meta(original: &Path, unpacked: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let list = |root: &Path| -> Vec<(PathBuf, bool, u32, Option<i64>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for p in sorted_entries(&dir) {
                let rel = p.strip_prefix(root).expect("rel").to_path_buf();
                let m = std::fs::symlink_metadata(&p).expect("lstat");
                let is_dir = m.is_dir();
                if is_dir {
                    stack.push(p);
                }
                out.push((rel, is_dir, m.mode() & 0o777, (!is_dir).then(|| m.mtime())));
            }
        }
        out.sort();
        out
    };
    let (a, b) = (list(original), list(unpacked));
    assert_eq!(
        a,
        b,
        "(path, is_dir, mode, mtime) of {} (packed) and {} (unpacked) differ",
        original.display(),
        unpacked.display()
    );
}

/// Writes `bytes` to `path` (used for decompression bombs and large bodies).
pub fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(bytes).expect("write");
}
