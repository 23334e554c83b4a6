//! The bytes a tar header and a pax extended header may hold.
//!
//! The receiver checks paths with the `tar` crate's reading of a header, but
//! the archive is unpacked later by other readers: Python's `tarfile`, GNU
//! tar, bsdtar (libarchive). Wherever they read the same bytes differently
//! (a prefix field a GNU header does not have, a size field GNU tar decodes
//! as base-64, a pax record one parser skips and another honours) an archive
//! could be checked as one tree and unpacked as another. These rules allow
//! only the subset on which all of them agree, byte for byte, and refuse the
//! rest; `tests/tests/tar_readers.rs` holds them to that with the real
//! readers. Every accepted header is one of two formats, every number a plain
//! octal numeral, and every pax record one of [`PAX_KEYS`].

/// A tar block; every header is one.
pub const BLOCK: usize = 512;

/// The pax keys an archive may carry, and why each is safe: `path` is the
/// path the receiver checks (it wins over the header's name in every
/// reader); the three times change no path, type, size or permission. This is
/// exactly what GNU tar (`--format=posix`), bsdtar and Python's `tarfile`
/// write for a long or non-ASCII name. Everything else is refused: `size`
/// (readers that ignore it would read data as headers), `linkpath`, owners
/// (`uid`, `uname`…), `hdrcharset` (changes how Python decodes the path),
/// `GNU.sparse.*` (its `name` is the path to Python and GNU tar), and the
/// vendor keys `SCHILY.*`/`LIBARCHIVE.*` (extended attributes, ACLs and file
/// flags, which bsdtar restores when run as root: `security.capability`
/// would grant privileges).
pub const PAX_KEYS: &[&str] = &["path", "mtime", "atime", "ctime"];

/// The two header formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// POSIX ustar (`ustar\0` `00`): a 155-byte prefix joins the name.
    Ustar,
    /// GNU (`ustar ` ` \0`): no prefix; long names in `L` headers.
    Gnu,
}

/// The fields of a header the archive rules need, read the way every reader
/// reads them (see [`parse_header`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub format: Format,
    /// The type flag byte (`b'0'`, `b'5'`, `b'x'`…).
    pub type_flag: u8,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// The link-name field is not empty.
    pub link_name: bool,
    /// The owner-name or group-name field is not empty.
    pub owner_names: bool,
}

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderRuleError {
    #[error(
        "a tar header that is neither ustar nor GNU (a v7 or unknown format: readers disagree on its prefix field)"
    )]
    Format,
    #[error(
        "a GNU tar header with data in bytes 345-499 (atime, ctime, sparse map, real size): Python reads them as a path prefix and bsdtar as the file size"
    )]
    GnuTail,
    #[error(
        "the tar header's {field} field is not a plain octal number ({raw:?}): readers parse it differently"
    )]
    Number { field: &'static str, raw: String },
    #[error("tar header checksum mismatch")]
    Checksum,
}

/// Why a pax extended header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaxRuleError {
    #[error(
        "a malformed pax record at byte {at}: readers disagree on where its records start and end"
    )]
    Malformed { at: usize },
    #[error(
        "pax key {key:?} is not allowed (allowed: path, mtime, atime, ctime): readers act on it beyond the path the receiver checks"
    )]
    Key { key: String },
    #[error("pax key {key:?} appears twice")]
    Repeated { key: String },
    #[error("pax {key:?} value {value:?} is not a plain non-negative decimal time")]
    Time { key: String, value: String },
    #[error(
        "pax path {path:?} is not UTF-8, holds a newline or the text `hdrcharset=`: readers decode it differently"
    )]
    Path { path: String },
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(100).collect()
}

/// A numeric header field, as every reader reads it alike: an octal numeral,
/// optionally surrounded by spaces and ended by a NUL (whatever follows the
/// NUL is ignored by all). An empty field reads as 0 (Python, GNU tar) unless
/// `required` (the tar crate refuses it), and must then be only NULs and
/// spaces (GNU tar skips one leading NUL and reads on). With `base256`, the
/// GNU binary form is accepted too, positive and with what the tar crate
/// skips (bytes 1-3 of a 12-byte field) zero.
fn number(
    field: &'static str,
    bytes: &[u8],
    required: bool,
    base256: bool,
) -> Result<u64, HeaderRuleError> {
    let refuse = || HeaderRuleError::Number {
        field,
        raw: lossy(bytes),
    };
    if base256 && bytes.len() == 12 && bytes[0] == 0x80 {
        let (skipped, value) = bytes[1..].split_at(bytes.len() - 9);
        if skipped.iter().any(|&b| b != 0) || value[0] & 0x80 != 0 {
            return Err(refuse());
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(value);
        return Ok(u64::from_be_bytes(n));
    }
    let text = match bytes.iter().position(|&b| b == 0) {
        Some(nul) => &bytes[..nul],
        None => bytes,
    };
    let start = text.iter().position(|&b| b != b' ').unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    let digits = &text[start..end];
    if digits.is_empty() {
        if required || bytes.iter().any(|&b| b != 0 && b != b' ') {
            return Err(refuse());
        }
        return Ok(0);
    }
    if !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(refuse());
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(8)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or_else(refuse)
    })
}

/// Checks one 512-byte header block (any type, extension headers included)
/// and returns its fields: the ustar or GNU magic; for GNU, nothing in bytes
/// 345-499 (where ustar keeps its prefix); every numeric field a plain octal
/// numeral ([`number`]); the checksum the unsigned sum of the block.
pub fn parse_header(block: &[u8; BLOCK]) -> Result<Header, HeaderRuleError> {
    let format = match (&block[257..263], &block[263..265]) {
        (b"ustar\0", b"00") => Format::Ustar,
        (b"ustar ", b" \0") => Format::Gnu,
        _ => return Err(HeaderRuleError::Format),
    };
    if format == Format::Gnu && block[345..500].iter().any(|&b| b != 0) {
        return Err(HeaderRuleError::GnuTail);
    }
    let checksum = number("checksum", &block[148..156], true, false)?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    if checksum != sum {
        return Err(HeaderRuleError::Checksum);
    }
    number("devmajor", &block[329..337], false, false)?;
    number("devminor", &block[337..345], false, false)?;
    number("mtime", &block[136..148], false, false)?;
    Ok(Header {
        format,
        type_flag: block[156],
        mode: number("mode", &block[100..108], true, false)?,
        uid: number("uid", &block[108..116], false, false)?,
        gid: number("gid", &block[116..124], false, false)?,
        size: number("size", &block[124..136], true, true)?,
        link_name: block[157] != 0,
        owner_names: block[265] != 0 || block[297] != 0,
    })
}

/// What a pax extended header says about its entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pax {
    /// The `path` record, which replaces the header's name.
    pub path: Option<Vec<u8>>,
}

/// Parses a pax extended header (`x`) strictly: records `"<len> <key>=<value>\n"`
/// with `len` a decimal without sign or leading zero counting the whole
/// record, values without newlines, the records covering the data exactly
/// (GNU tar, libarchive and Python each recover differently from anything
/// else), keys from [`PAX_KEYS`] only and each once.
pub fn parse_pax(data: &[u8]) -> Result<Pax, PaxRuleError> {
    let mut pax = Pax::default();
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let malformed = PaxRuleError::Malformed { at };
        let rest = &data[at..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || rest[0] == b'0' || rest.get(digits) != Some(&b' ') {
            return Err(malformed);
        }
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(malformed.clone())?;
        if len > rest.len() || len < digits + 3 || rest[len - 1] != b'\n' {
            return Err(malformed);
        }
        let record = &rest[digits + 1..len - 1];
        let Some(eq) = record.iter().position(|&b| b == b'=') else {
            return Err(malformed);
        };
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        if key.is_empty() || value.contains(&b'\n') {
            return Err(malformed);
        }
        if !PAX_KEYS.iter().any(|k| k.as_bytes() == key) {
            return Err(PaxRuleError::Key { key: lossy(key) });
        }
        if seen.contains(&key) {
            return Err(PaxRuleError::Repeated { key: lossy(key) });
        }
        seen.push(key);
        if key == b"path" {
            // Python searches the whole header for `\d+ hdrcharset=…\n`,
            // values included, and then decodes the path another way.
            if std::str::from_utf8(value).is_err() || value.windows(11).any(|w| w == b"hdrcharset=")
            {
                return Err(PaxRuleError::Path { path: lossy(value) });
            }
            pax.path = Some(value.to_vec());
        } else if !is_decimal_time(value) {
            return Err(PaxRuleError::Time {
                key: lossy(key),
                value: lossy(value),
            });
        }
        at += len;
    }
    Ok(pax)
}

/// `123` or `123.456`: what GNU tar, bsdtar and Python write, and every
/// reader parses alike. At most 12 integer digits (beyond year 30000, still
/// inside every reader's time type) and 9 fraction digits (nanoseconds).
fn is_decimal_time(v: &[u8]) -> bool {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], Some(&v[dot + 1..])),
        None => (v, None),
    };
    let digits =
        |s: &[u8], max| !s.is_empty() && s.len() <= max && s.iter().all(u8::is_ascii_digit);
    digits(int, 12) && frac.is_none_or(|f| digits(f, 9))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A GNU header like the tar crate writes, checksummed.
    fn block(edit: impl FnOnce(&mut [u8; BLOCK])) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..4].copy_from_slice(b"ep/x");
        b[100..108].copy_from_slice(b"0000644\0");
        b[108..116].copy_from_slice(b"0000000\0");
        b[116..124].copy_from_slice(b"0000000\0");
        b[124..136].copy_from_slice(b"00000000012\0");
        b[136..148].copy_from_slice(b"14524770400\0");
        b[156] = b'0';
        b[257..265].copy_from_slice(b"ustar  \0");
        edit(&mut b);
        seal(&mut b);
        b
    }

    fn seal(b: &mut [u8; BLOCK]) {
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn reads_a_plain_gnu_header() {
        let h = parse_header(&block(|_| {})).unwrap();
        assert_eq!(
            (h.format, h.mode, h.size, h.uid),
            (Format::Gnu, 0o644, 10, 0)
        );
        assert!(!h.link_name && !h.owner_names);
    }

    #[test]
    fn refuses_what_readers_read_differently() {
        let bad: Vec<(&str, [u8; BLOCK])> = vec![
            ("v7", block(|b| b[257..265].fill(0))),
            (
                "ustar magic, other version",
                block(|b| b[257..265].copy_from_slice(b"ustar\0xx")),
            ),
            (
                "GNU prefix",
                block(|b| b[345..353].copy_from_slice(b"../../ep")),
            ),
            ("GNU real size", block(|b| b[483] = b'1')),
            (
                "size +",
                block(|b| b[124..136].copy_from_slice(b"+0000000001\0")),
            ),
            ("size empty", block(|b| b[124..136].fill(0))),
            (
                "size with a hole",
                block(|b| b[124..136].copy_from_slice(b"0000 000012\0")),
            ),
            (
                "mode after a NUL",
                block(|b| b[100..108].copy_from_slice(b"\x004755\0\0\0")),
            ),
            (
                "uid after a NUL",
                block(|b| b[108..116].copy_from_slice(b"\x001750\0\0\0")),
            ),
            ("size base-256 negative", block(|b| b[124] = 0xff)),
            (
                "size base-256, tar crate skips",
                block(|b| {
                    b[124..136].fill(0);
                    b[124] = 0x80;
                    b[125] = 1;
                    b[135] = 10;
                }),
            ),
            (
                "mode base-256",
                block(|b| {
                    b[100..108].fill(0);
                    b[100] = 0x80;
                    b[106..108].copy_from_slice(&0o644u16.to_be_bytes());
                }),
            ),
            (
                "mode 9",
                block(|b| b[100..108].copy_from_slice(b"0000649\0")),
            ),
        ];
        for (name, b) in bad {
            assert!(parse_header(&b).is_err(), "{name}");
        }
        let mut b = block(|_| {});
        b[0] = b'f';
        assert_eq!(parse_header(&b), Err(HeaderRuleError::Checksum));
    }

    #[test]
    fn accepts_the_numerals_real_writers_use() {
        for (field, value) in [
            ((100, 108), &b"000644 \0"[..]),
            ((100, 108), b"  644 \0\0"),
            ((124, 136), b"00000000012 "),
            ((124, 136), b"777777777777"),
        ] {
            let b = block(|b| b[field.0..field.1].copy_from_slice(value));
            assert!(parse_header(&b).is_ok(), "{value:?}");
        }
        let b = block(|b| {
            b[124..136].fill(0);
            b[124] = 0x80;
            b[128..136].copy_from_slice(&(9u64 << 30).to_be_bytes());
        });
        assert_eq!(parse_header(&b).unwrap().size, 9 << 30);
        let b = block(|b| b[257..265].copy_from_slice(b"ustar\x0000"));
        assert_eq!(parse_header(&b).unwrap().format, Format::Ustar);
    }

    fn records(kvs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for kv in kvs {
            let mut len = kv.len() + 3;
            while format!("{len} ").len() + kv.len() + 1 != len {
                len = format!("{len} ").len() + kv.len() + 1;
            }
            out.extend_from_slice(format!("{len} ").as_bytes());
            out.extend_from_slice(kv);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn pax_allows_paths_and_times_only() {
        let ok = records(&[
            b"path=ep/a b=c/\xc3\xa9",
            b"mtime=1796539073.447380366",
            b"atime=1",
            b"ctime=2",
        ]);
        assert_eq!(
            parse_pax(&ok).unwrap().path.as_deref(),
            Some("ep/a b=c/é".as_bytes())
        );
        assert_eq!(parse_pax(b"").unwrap(), Pax::default());
        for bad in [
            &b"GNU.sparse.name=../../evil"[..],
            b"GNU.sparse.major=1",
            b"SCHILY.xattr.security.capability=x",
            b"LIBARCHIVE.xattr.user.x=eA",
            b"linkpath=ep/meta.json",
            b"size=5",
            b"uid=1000",
            b"uname=lab",
            b"hdrcharset=BINARY",
            b"comment=hi",
            b"mtime=1e9",
            b"mtime=-1",
            b"mtime=1.",
            b"mtime=9999999999999",
            b"mtime=1.1234567891",
            b"path=ep/\xff",
            b"path=ep/x 1 hdrcharset=BINARY",
        ] {
            assert!(parse_pax(&records(&[bad])).is_err(), "{}", lossy(bad));
        }
        assert!(parse_pax(&records(&[b"path=ep/a", b"path=ep/b"])).is_err());
        for malformed in [
            &b"+16 path=ep/okay\n"[..],
            b"016 path=ep/okay\n",
            b"15 path=ep/okay\n",
            b"17 path=ep/okay\n",
            b"16 path=ep/okay\n\n",
            b"17 path=ep/okay\n\n",
            b"16 path=ep/okay\n16 path",
            b"9 path=ep\n",
            b"10 pathep/\n",
            b"6 =ep\n",
            b"21 path=ep/a\nb/c/d\n",
            b"x",
        ] {
            assert!(parse_pax(malformed).is_err(), "{}", lossy(malformed));
        }
        assert!(parse_pax(b"16 path=ep/okay\n").is_ok());
    }

    proptest! {
        #[test]
        fn octal_fields_read_as_the_tar_crate_reads_them(n in 0u64..0o77777777777, pad in 0usize..3) {
            let text = format!("{}{n:o}", " ".repeat(pad));
            let mut field = [0u8; 12];
            if text.len() <= 11 {
                field[..text.len()].copy_from_slice(text.as_bytes());
                prop_assert_eq!(number("size", &field, true, true), Ok(n));
            }
        }

        #[test]
        fn arbitrary_blocks_never_panic(bytes in proptest::collection::vec(any::<u8>(), BLOCK)) {
            let mut b = [0u8; BLOCK];
            b.copy_from_slice(&bytes);
            let _ = parse_header(&b);
            let _ = parse_pax(&bytes);
        }
    }
}
