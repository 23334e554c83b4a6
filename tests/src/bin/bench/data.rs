//! The bench's generated data: episodes that are half random bytes (already
//! compressed sensor dumps, images) and half CSV-like text (logs, tables),
//! deterministic per seed, written in chunks so a 1 GiB episode never sits in
//! memory; and hard-linked copies of them, so every run reads the same inodes
//! (the same page cache) while the shipper is free to move its copy away.

use labship_tests::GOOD_COMMIT;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// xorshift64*: fast, deterministic, no RNG crate.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }
}

/// `len` bytes of CSV-like text: a timestamp, a channel, two decimals and a
/// flag per line (zstd -3 takes it to about a third).
pub(crate) fn csv(len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"t_ms,channel,value,error,flag\n");
    let mut t = 1_700_000_000_000u64 + rng.next() % 1000;
    while out.len() < len {
        let r = rng.next();
        t += 1 + r % 7;
        let v = (r >> 8) % 10_000_000;
        let e = (r >> 32) % 100_000;
        let flag = if r >> 59 == 0 { "WARN" } else { "OK" };
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            out,
            "{t},ch{:02},{}.{:04},0.{e:05},{flag}",
            (r >> 40) % 48,
            v / 10_000,
            v % 10_000
        );
    }
    out.truncate(len);
    out
}

/// Writes `len` bytes, half random and half CSV, into `dir` as
/// `data/random-NN.bin` and `data/table-NN.csv` files of at most 8 MiB each.
fn write_payload(dir: &Path, len: u64, seed: u64) {
    const FILE: u64 = 8 << 20;
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut rng = Rng::new(seed);
    let half = len / 2;
    for (kind, total) in [("random", half), ("table", len - half)] {
        let mut left = total;
        let mut n = 0;
        while left > 0 || n == 0 {
            let size = left.min(FILE) as usize;
            let bytes = if kind == "random" {
                let mut b = vec![0u8; size];
                rng.fill(&mut b);
                b
            } else {
                csv(size, &mut rng)
            };
            let ext = if kind == "random" { "bin" } else { "csv" };
            std::fs::write(data.join(format!("{kind}-{n:02}.{ext}")), bytes).expect("write data");
            left -= size as u64;
            n += 1;
        }
    }
}

/// A stamped `meta.json` for `id`.
pub(crate) fn meta(id: &str) -> Vec<u8> {
    format!(
        "{{\"episode\":\"{id}\",\"code_version\":{{\"commit\":\"{GOOD_COMMIT}\",\"dirty\":false}},\"rig\":\"bench\"}}\n"
    )
    .into_bytes()
}

/// Writes episode `<root>/<id>/` with `meta.json` and `len` bytes of data.
pub(crate) fn episode(root: &Path, id: &str, len: u64, seed: u64) -> PathBuf {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).expect("episode dir");
    std::fs::write(dir.join("meta.json"), meta(id)).expect("meta");
    write_payload(&dir, len, seed);
    dir
}

/// `count` episodes `<prefix>-NNNNN` of `len` bytes each under `root`; their ids.
pub(crate) fn episodes(root: &Path, prefix: &str, count: usize, len: u64) -> Vec<String> {
    std::fs::create_dir_all(root).expect("gen root");
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i:05}");
            episode(root, &id, len, (i as u64 + 1) * 7919 + len);
            id
        })
        .collect()
}

/// Copies the trees `ids` from `src` into `dst` as hard links (new
/// directories, the same file inodes).
pub(crate) fn link_episodes(src: &Path, dst: &Path, ids: &[String]) {
    fn link_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            let target = to.join(e.file_name());
            if e.file_type().expect("file type").is_dir() {
                link_tree(&e.path(), &target);
            } else {
                std::fs::hard_link(e.path(), &target).expect("hard link");
            }
        }
    }
    for id in ids {
        link_tree(&src.join(id), &dst.join(id));
    }
}

/// Total bytes of the regular files under `dir`.
pub(crate) fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = e.metadata().expect("metadata");
        total += if m.is_dir() {
            tree_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}
