//! Tar archives on which tar readers disagree, and ones on which they agree
//! (issue 16), as one table of [`Case`]s built for any episode id.
//!
//! Each hostile case is the smallest archive showing one way in which the
//! tar crate (the receiver's reader) and Python's `tarfile`, GNU tar or
//! bsdtar read the same bytes as different trees; the receiver must refuse
//! them all (`archive_invalid`). Each benign case is a shape real writers
//! produce, which every reader unpacks to what the receiver checked; the
//! receiver must accept them. `tests/tests/tar_readers.rs` holds both to
//! that with the real readers, `tests/tests/hostile.rs` runs the hostile ones
//! through the receiver's hostile-input harness, and the fuzz corpora start
//! from all of them (`fuzz/corpus/archive*/tar-readers-*`).
//!
//! Headers are made by the tar crate where it can make them, then poked
//! byte by byte where a hostile writer would ([`poke`]).

use crate::GOOD_COMMIT;
use tar::EntryType as T;

/// What the receiver must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 201: every reader unpacks what the receiver checked.
    Accept,
    /// 400 `archive_invalid`.
    Refuse,
}

/// One row: a name (for messages and docs/reliability.md), a file-name slug
/// (for the fuzz corpus), the verdict, why, and the archive (uncompressed
/// tar) for an episode id.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub slug: &'static str,
    pub verdict: Verdict,
    pub why: &'static str,
    pub build: fn(&str) -> Vec<u8>,
}

/// A header as the tar crate writes it for an entry of `kind` named `name`
/// (raw bytes, up to 100), `size` bytes: mode 0644 (0755 for directories),
/// an mtime, owner 0, no names. `gnu` picks the GNU format, else ustar.
pub fn header(name: &[u8], kind: T, size: u64, gnu: bool) -> tar::Header {
    let mut h = if gnu {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    h.as_mut_bytes()[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(if kind == T::Directory { 0o755 } else { 0o644 });
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_cksum();
    h
}

/// `h` with `bytes` written at offset `at`, checksum recomputed: what a
/// hostile writer makes that the tar crate's setters would not.
pub fn poke(mut h: tar::Header, at: usize, bytes: &[u8]) -> tar::Header {
    h.as_mut_bytes()[at..at + bytes.len()].copy_from_slice(bytes);
    h.set_cksum();
    h
}

/// pax records (`"<len> key=value\n"`), the length counting itself.
pub fn pax(records: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in records {
        let mut len = kv.len() + 3;
        while len.to_string().len() + 1 + kv.len() + 1 != len {
            len = len.to_string().len() + 1 + kv.len() + 1;
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(kv);
        out.push(b'\n');
    }
    out
}

/// A tar stream under construction.
#[derive(Debug, Default)]
pub struct Tar(Vec<u8>);

impl Tar {
    /// `<id>/` and a `meta.json` stamped with [`GOOD_COMMIT`], GNU headers.
    pub fn episode(id: &str) -> Self {
        let meta = serde_json::json!({"code_version": {"commit": GOOD_COMMIT}}).to_string();
        Self::default()
            .dir(&format!("{id}/"))
            .file(&format!("{id}/meta.json"), meta.as_bytes())
    }

    /// A header and its data, padded to the block.
    pub fn push(mut self, h: &tar::Header, data: &[u8]) -> Self {
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    /// Raw bytes (a header written by hand).
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn dir(self, name: &str) -> Self {
        self.push(&header(name.as_bytes(), T::Directory, 0, true), b"")
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        let h = header(name.as_bytes(), T::Regular, data.len() as u64, true);
        self.push(&h, data)
    }

    /// A pax extended header (`x`, ustar) holding `records`.
    pub fn pax(self, records: &[&[u8]]) -> Self {
        let data = pax(records);
        let h = header(b"PaxHeaders/x", T::XHeader, data.len() as u64, false);
        self.push(&h, &data)
    }

    /// With the end-of-archive marker (two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.0.resize(self.0.len() + 1024, 0);
        self.0
    }

    /// Without it.
    pub fn unfinished(self) -> Vec<u8> {
        self.0
    }
}

const TIME: &[u8] = b"mtime=1796539073.447380366";

/// Every case, benign first.
pub fn cases() -> Vec<Case> {
    use Verdict::{Accept, Refuse};
    vec![
        Case {
            name: "GNU headers with a GNU long name (the tar crate's Builder, as the shipper packs)",
            slug: "gnu-long-name",
            verdict: Accept,
            why: "the shipper's own format",
            build: |id| {
                let mut b = tar::Builder::new(Vec::new());
                let long = format!("{id}/{}", "d".repeat(120));
                for (path, kind, data) in [
                    (format!("{id}/"), T::Directory, &b""[..]),
                    (format!("{long}/"), T::Directory, b""),
                    (
                        format!("{long}/{}.csv", "f".repeat(40)),
                        T::Regular,
                        b"t,x\n",
                    ),
                ] {
                    let mut h = header(b"", kind, data.len() as u64, true);
                    b.append_data(&mut h, &path, data).expect("append");
                }
                let meta = Tar::episode(id).unfinished();
                let mut out = b.into_inner().expect("tar");
                out.truncate(out.len() - 1024); // the Builder's end marker
                out.extend_from_slice(&meta[512..]);
                Tar(out).file(&format!("{id}/z.txt"), b"z").finish()
            },
        },
        Case {
            name: "ustar headers with a long path split into prefix and name (the tar crate)",
            slug: "ustar-prefix",
            verdict: Accept,
            why: "POSIX ustar: every reader joins prefix and name",
            build: |id| {
                let long = format!("{id}/{}", "p".repeat(90));
                let mut h = header(b"", T::Directory, 0, false);
                h.set_path(format!("{long}/")).expect("fits a ustar prefix");
                h.set_cksum();
                let mut f = header(b"", T::Regular, 2, false);
                f.set_path(format!("{long}/{}.bin", "n".repeat(60)))
                    .expect("fits a ustar prefix");
                f.set_cksum();
                assert!(f.as_bytes()[345] != 0, "the path went to the prefix field");
                Tar::episode(id).push(&h, b"").push(&f, b"ok").finish()
            },
        },
        Case {
            name: "pax path, mtime, atime and ctime records (as GNU tar --format=posix writes), a non-ASCII name",
            slug: "pax-allowed",
            verdict: Accept,
            why: "the allow-list: the path is the one checked, the times change nothing else",
            build: |id| {
                let long = format!("path={id}/{}.csv", "q".repeat(120));
                let utf8 = format!("path={id}/r\u{e9}sum\u{e9} de l'\u{e9}t\u{e9}.bin");
                let atime = b"atime=1796539073.443380366";
                Tar::episode(id)
                    .pax(&[long.as_bytes(), TIME, atime, b"ctime=1796539073"])
                    .file(&format!("{id}/qqq.csv"), b"q")
                    .pax(&[utf8.as_bytes(), TIME])
                    .file(&format!("{id}/r.bin"), b"r")
                    .finish()
            },
        },
        Case {
            name: "file-type bits in the mode field (0o100644, as some writers copy st_mode)",
            slug: "mode-type-bits",
            verdict: Accept,
            why: "every reader keeps only the permission bits",
            build: |id| {
                let mut h = header(format!("{id}/x").as_bytes(), T::Regular, 1, true);
                h.set_mode(0o100644);
                h.set_cksum();
                Tar::episode(id).push(&h, b"x").finish()
            },
        },
        Case {
            name: "a base-256 size field (the GNU form for files over 8 GiB), here 3 bytes",
            slug: "size-base-256",
            verdict: Accept,
            why: "every reader decodes a positive base-256 number alike",
            build: |id| {
                let h = header(format!("{id}/x.big").as_bytes(), T::Regular, 3, true);
                let mut size = [0u8; 12];
                size[0] = 0x80;
                size[11] = 3;
                Tar::episode(id).push(&poke(h, 124, &size), b"abc").finish()
            },
        },
        Case {
            name: "no end-of-archive marker, then a lone zero block",
            slug: "no-end-marker",
            verdict: Accept,
            why: "every reader stops at the end of the data or at the first zero block",
            build: |id| {
                let mut t = Tar::episode(id).file(&format!("{id}/x"), b"1").unfinished();
                t.resize(t.len() + 512, 0);
                t
            },
        },
        // ---- refused: the issue's three ----
        Case {
            name: "pax GNU.sparse.name=../../evil on a regular entry",
            slug: "pax-gnu-sparse-name",
            verdict: Refuse,
            why: "Python and GNU tar use it as the path; the tar crate ignores it",
            build: |id| {
                Tar::episode(id)
                    .pax(&[b"GNU.sparse.name=../../evil"])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "a pax global header (g) with path=<id>/meta.json before the entries",
            slug: "pax-global-path",
            verdict: Refuse,
            why: "GNU tar and Python apply it to every entry after it: an unchecked file lands on meta.json",
            build: |id| {
                let data = pax(&[format!("path={id}/meta.json").as_bytes()]);
                let g = header(
                    b"pax_global_header",
                    T::XGlobalHeader,
                    data.len() as u64,
                    false,
                );
                let t = Tar::default()
                    .push(&g, &data)
                    .raw(&Tar::episode(id).unfinished());
                t.file(&format!("{id}/x"), b"not the stamp").finish()
            },
        },
        Case {
            name: "a GNU header named <id>/p.bin with ../.. in the ustar prefix field (offset 345)",
            slug: "gnu-prefix",
            verdict: Refuse,
            why: "Python prepends it (../../<id>/p.bin); the tar crate, GNU tar and bsdtar do not",
            build: |id| {
                let h = header(format!("{id}/p.bin").as_bytes(), T::Regular, 1, true);
                let h = poke(h, 345, b"../..");
                Tar::episode(id).push(&h, b"1").finish()
            },
        },
        Case {
            name: "a v7 header (no magic) named <id>/p.bin with ../.. in the prefix field",
            slug: "v7-prefix",
            verdict: Refuse,
            why: "Python prepends the prefix; the tar crate, GNU tar and bsdtar do not",
            build: |id| {
                let h = header(format!("{id}/p.bin").as_bytes(), T::Regular, 1, true);
                let h = poke(poke(h, 257, &[0; 8]), 345, b"../..");
                Tar::episode(id).push(&h, b"1").finish()
            },
        },
        // ---- refused: other header formats and fields ----
        Case {
            name: "a v7 header (no magic), no prefix",
            slug: "v7",
            verdict: Refuse,
            why: "only ustar and GNU headers are accepted: one less format to agree on",
            build: |id| {
                let h = poke(
                    header(format!("{id}/x").as_bytes(), T::Regular, 1, true),
                    257,
                    &[0; 8],
                );
                Tar::episode(id).push(&h, b"1").finish()
            },
        },
        Case {
            name: "ustar magic with version xx, named <id>/p.bin with ../.. in the prefix field",
            slug: "ustar-bad-version",
            verdict: Refuse,
            why: "the tar crate reads it as v7 (no prefix); Python and GNU tar join the prefix",
            build: |id| {
                let h = header(format!("{id}/p.bin").as_bytes(), T::Regular, 1, false);
                let h = poke(poke(h, 263, b"xx"), 345, b"../..");
                Tar::episode(id).push(&h, b"1").finish()
            },
        },
        Case {
            name: "a GNU header with a real size at offset 483",
            slug: "gnu-realsize",
            verdict: Refuse,
            why: "bsdtar makes the file that size (32 KiB of zeros); the others 1 byte",
            build: |id| {
                let h = header(format!("{id}/r").as_bytes(), T::Regular, 1, true);
                Tar::episode(id)
                    .push(&poke(h, 483, b"00000100000\0"), b"1")
                    .finish()
            },
        },
        Case {
            name: "size field +0000000001",
            slug: "size-plus",
            verdict: Refuse,
            why: "GNU tar decodes it as base-64 (a huge size) and reads on out of step; the others read 1",
            build: |id| {
                let h = header(format!("{id}/y").as_bytes(), T::Regular, 1, true);
                Tar::episode(id)
                    .push(&poke(h, 124, b"+0000000001\0"), b"y")
                    .finish()
            },
        },
        Case {
            name: "a base-256 size with a byte the tar crate skips",
            slug: "size-base-256-skipped",
            verdict: Refuse,
            why: "the tar crate reads the last 8 bytes (1); Python and GNU tar all 11 (2^64+1): out of step",
            build: |id| {
                let h = header(format!("{id}/y").as_bytes(), T::Regular, 1, true);
                let mut size = [0u8; 12];
                size[0] = 0x80;
                size[3] = 1;
                size[11] = 1;
                Tar::episode(id).push(&poke(h, 124, &size), b"y").finish()
            },
        },
        Case {
            name: "mode field: a NUL, then 4755",
            slug: "mode-leading-nul",
            verdict: Refuse,
            why: "GNU tar skips the NUL and makes a setuid file; Python and bsdtar read mode 0",
            build: |id| {
                let h = header(format!("{id}/s").as_bytes(), T::Regular, 1, true);
                Tar::episode(id)
                    .push(&poke(h, 100, b"\x004755\0\0\0"), b"s")
                    .finish()
            },
        },
        Case {
            name: "uid field: a NUL, then 1750",
            slug: "uid-leading-nul",
            verdict: Refuse,
            why: "GNU tar gives the file to uid 1000 when run as root; Python and bsdtar to root",
            build: |id| {
                let h = header(format!("{id}/u").as_bytes(), T::Regular, 1, true);
                Tar::episode(id)
                    .push(&poke(h, 108, b"\x001750\0\0\0"), b"u")
                    .finish()
            },
        },
        Case {
            name: "a directory entry with 1,024 bytes of data holding a header for ../../smuggled",
            slug: "directory-data",
            verdict: Refuse,
            why: "Python, GNU tar and bsdtar read a directory's data as entries; the tar crate skips it",
            build: |id| {
                let inner = Tar::default().file("../../smuggled", b"S").unfinished();
                let d = header(
                    format!("{id}/w/").as_bytes(),
                    T::Directory,
                    inner.len() as u64,
                    true,
                );
                Tar::episode(id).push(&d, &inner).finish()
            },
        },
        Case {
            name: "a regular file whose name ends in '/'",
            slug: "file-with-slash",
            verdict: Refuse,
            why: "GNU tar and bsdtar make a directory, Python and the tar crate a file",
            build: |id| Tar::episode(id).file(&format!("{id}/z/"), b"").finish(),
        },
        Case {
            name: "a contiguous file (type 7)",
            slug: "contiguous",
            verdict: Refuse,
            why: "only types 0 and 5 are accepted; nothing writes 7 and GNU tar warns on it",
            build: |id| {
                let h = header(format!("{id}/v").as_bytes(), T::Continuous, 1, true);
                Tar::episode(id).push(&h, b"v").finish()
            },
        },
        Case {
            name: "a GNU long-link header (K) before a regular file",
            slug: "gnu-long-link",
            verdict: Refuse,
            why: "no entry an archive may hold has a link target",
            build: |id| {
                let target = format!("{}\0", "t".repeat(120));
                let k = header(b"././@LongLink", T::GNULongLink, target.len() as u64, true);
                Tar::episode(id)
                    .push(&k, target.as_bytes())
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "a regular file with a link target",
            slug: "file-with-link-name",
            verdict: Refuse,
            why: "no entry an archive may hold has a link target",
            build: |id| {
                let h = header(format!("{id}/x.link").as_bytes(), T::Regular, 1, true);
                Tar::episode(id)
                    .push(&poke(h, 157, b"meta.json"), b"x")
                    .finish()
            },
        },
        // ---- refused: modes and owners ----
        Case {
            name: "a setuid file (mode 04755)",
            slug: "setuid",
            verdict: Refuse,
            why: "unpacked as root it is a setuid-root program (CONTRACT §13)",
            build: |id| {
                let mut h = header(format!("{id}/run").as_bytes(), T::Regular, 2, true);
                h.set_mode(0o4755);
                h.set_cksum();
                Tar::episode(id).push(&h, b"#!").finish()
            },
        },
        Case {
            name: "a setgid directory (mode 02755)",
            slug: "setgid",
            verdict: Refuse,
            why: "CONTRACT §13: no setuid, setgid or sticky bits",
            build: |id| {
                let mut h = header(format!("{id}/sg/").as_bytes(), T::Directory, 0, true);
                h.set_mode(0o2755);
                h.set_cksum();
                Tar::episode(id).push(&h, b"").finish()
            },
        },
        Case {
            name: "a sticky directory (mode 01777)",
            slug: "sticky",
            verdict: Refuse,
            why: "CONTRACT §13: no setuid, setgid or sticky bits",
            build: |id| {
                let mut h = header(format!("{id}/t/").as_bytes(), T::Directory, 0, true);
                h.set_mode(0o1777);
                h.set_cksum();
                Tar::episode(id).push(&h, b"").finish()
            },
        },
        Case {
            name: "owner uid 1000",
            slug: "owner-uid",
            verdict: Refuse,
            why: "CONTRACT §3: owner ids 0; unpacked as root the file would belong to uid 1000",
            build: |id| {
                let mut h = header(format!("{id}/o").as_bytes(), T::Regular, 1, true);
                h.set_uid(1000);
                h.set_cksum();
                Tar::episode(id).push(&h, b"o").finish()
            },
        },
        Case {
            name: "owner name lab",
            slug: "owner-name",
            verdict: Refuse,
            why: "CONTRACT §3: no owner names; GNU tar and bsdtar as root prefer the name to the id",
            build: |id| {
                let h = header(format!("{id}/o").as_bytes(), T::Regular, 1, true);
                Tar::episode(id).push(&poke(h, 265, b"lab"), b"o").finish()
            },
        },
        // ---- refused: pax records ----
        Case {
            name: "pax GNU.sparse.realsize=1048576",
            slug: "pax-gnu-sparse-realsize",
            verdict: Refuse,
            why: "Python takes it as the size and reads on out of step",
            build: |id| {
                Tar::episode(id)
                    .pax(&[b"GNU.sparse.realsize=1048576"])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "pax SCHILY.xattr.security.capability",
            slug: "pax-xattr-capability",
            verdict: Refuse,
            why: "bsdtar restores extended attributes as root: a file capability grants privileges",
            build: |id| {
                Tar::episode(id)
                    .pax(&[b"SCHILY.xattr.security.capability=\x01\x00\x00\x02"])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "pax LIBARCHIVE.xattr.user.note",
            slug: "pax-libarchive-xattr",
            verdict: Refuse,
            why: "vendor keys carry attributes, ACLs and flags some readers apply",
            build: |id| {
                Tar::episode(id)
                    .pax(&[b"LIBARCHIVE.xattr.user.note=aGk"])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "pax linkpath on a regular file",
            slug: "pax-linkpath",
            verdict: Refuse,
            why: "not on the allow-list: no entry an archive may hold has a link target",
            build: |id| {
                Tar::episode(id)
                    .pax(&[b"linkpath=../../etc/passwd"])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "pax uid=1000 and uname=lab",
            slug: "pax-owner",
            verdict: Refuse,
            why: "not on the allow-list: owners are 0 with no names",
            build: |id| {
                Tar::episode(id)
                    .pax(&[b"uid=1000", b"uname=lab"])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "pax hdrcharset=BINARY",
            slug: "pax-hdrcharset",
            verdict: Refuse,
            why: "Python then decodes the path with the locale's encoding",
            build: |id| {
                let path = format!("path={id}/x");
                Tar::episode(id)
                    .pax(&[b"hdrcharset=BINARY", path.as_bytes()])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "pax size=1",
            slug: "pax-size",
            verdict: Refuse,
            why: "a reader that ignores it reads on out of step",
            build: |id| {
                Tar::episode(id)
                    .pax(&[b"size=1"])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "pax path whose length has a + sign, over a header named ../../evil",
            slug: "pax-length-plus",
            verdict: Refuse,
            why: "the tar crate honours the record (<id>/okay); Python, GNU tar and bsdtar skip it and unpack ../../evil",
            build: |id| {
                let record = format!("path={id}/okay");
                let mut len = record.len() + 4;
                while format!("+{len} {record}\n").len() != len {
                    len = format!("+{len} {record}\n").len();
                }
                let data = format!("+{len} {record}\n");
                let x = header(b"PaxHeaders/x", T::XHeader, data.len() as u64, false);
                Tar::episode(id)
                    .push(&x, data.as_bytes())
                    .file("../../evil", b"1")
                    .finish()
            },
        },
        Case {
            name: "a pax record one byte longer than its data",
            slug: "pax-length-wrong",
            verdict: Refuse,
            why: "readers recover from a malformed record differently",
            build: |id| {
                let mut data = pax(&[format!("path={id}/x").as_bytes()]);
                data.push(b'\n');
                data[1] += 1;
                let x = header(b"PaxHeaders/x", T::XHeader, data.len() as u64, false);
                Tar::episode(id)
                    .push(&x, &data)
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
        Case {
            name: "a pax path that is not UTF-8",
            slug: "pax-path-not-utf8",
            verdict: Refuse,
            why: "Python falls back to the locale's encoding, bsdtar converts to the locale",
            build: |id| {
                let mut path = format!("path={id}/").into_bytes();
                path.extend_from_slice(b"\xff\xfe.bin");
                Tar::episode(id)
                    .pax(&[&path])
                    .file(&format!("{id}/x"), b"1")
                    .finish()
            },
        },
    ]
}
