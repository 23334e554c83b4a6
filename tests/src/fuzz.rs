//! The fuzz harnesses: one function per target in `fuzz/fuzz_targets/`, shared
//! with `tests/tests/fuzz_corpus.rs`, which replays the saved corpora on every
//! test run. Each calls the product's own parser on arbitrary bytes and panics
//! when an invariant breaks; returning means the input was handled.

use labship_protocol::archive::{EntryKind, EntryRole, SPECIAL_MODE_BITS, check_entry};
use labship_protocol::stamp::parse_meta;
use labship_protocol::{Commit, Id, Sha256Digest};
use labship_receiver::ingest::{CheckedEntry, IngestError, check_archive, list_archive};

/// The episode the archive targets claim to carry.
pub const EPISODE: &str = "ep-1";
/// The unpacked-size limit the archive targets run under: small, so a
/// decompression bomb is stopped quickly and an input never costs much memory.
pub const MAX_UNPACKED: u64 = 8 << 20;

fn commit() -> Commit {
    Commit::parse(crate::GOOD_COMMIT).expect("GOOD_COMMIT is a commit")
}

/// `data` as a zstd-compressed tar stream through the receiver's validator.
/// Invariants: it returns (no panic, no hang), the count of unpacked bytes
/// never passes the limit by more than one read, and an accepted archive
/// reads back, with the tar crate's own reader, as exactly the entries the
/// validator checked, with a `meta.json` whose stamp is the claimed commit.
pub fn archive(data: &[u8]) {
    let mut unpacked = 0;
    let verdict = check_archive(data, EPISODE, &commit(), MAX_UNPACKED, &mut unpacked);
    assert!(
        unpacked <= MAX_UNPACKED + (1 << 20),
        "unpacked {unpacked} bytes, far past the {MAX_UNPACKED}-byte limit"
    );
    match verdict {
        Ok(()) => {
            let checked = list_archive(data, EPISODE, &commit(), MAX_UNPACKED)
                .expect("accepted once, so accepted again");
            assert_accepted_tar(
                &zstd::decode_all(data).expect("accepted, so it decodes"),
                &checked,
            );
        }
        Err(IngestError::TooLargeUnpacked { .. }) => assert!(unpacked > MAX_UNPACKED),
        Err(IngestError::Invalid(m) | IngestError::StampMismatch(m)) => {
            assert!(!m.is_empty(), "a refusal with no reason")
        }
        Err(e) => panic!("validation of bytes in memory failed as {e:?}"),
    }
}

/// `data` as an uncompressed tar stream: compressed here (level 1) and then
/// validated as [`archive`] does, so the fuzzer's mutations reach the tar
/// parser and the entry rules instead of dying in zstd's frame checks.
pub fn archive_tar(data: &[u8]) {
    let compressed = zstd::encode_all(data, 1).expect("zstd compresses any bytes");
    archive(&compressed);
}

/// What an accepted archive must look like when read back with the `tar`
/// crate on its own (which resolves GNU long names and pax records itself):
/// the entries the validator `checked`, in order, with their sizes, every
/// one a plain file or directory under `<episode>/` without setuid, setgid
/// or sticky bits, and a `meta.json` stamped with the commit.
fn assert_accepted_tar(tar_bytes: &[u8], checked: &[CheckedEntry]) {
    let mut found_meta = false;
    let mut ar = tar::Archive::new(tar_bytes);
    let mut read = Vec::new();
    for entry in ar.entries().expect("accepted, so it lists") {
        let mut entry = entry.expect("accepted, so every entry reads");
        let kind = entry.header().entry_type();
        assert!(
            kind.is_file() || kind.is_dir(),
            "accepted an entry of type {kind:?}"
        );
        let path = entry.path_bytes().into_owned();
        let kind = if kind.is_dir() {
            EntryKind::Directory
        } else {
            EntryKind::Regular
        };
        assert!(
            check_entry(EPISODE, &path, kind).is_ok(),
            "accepted {:?}, which the entry rules refuse",
            String::from_utf8_lossy(&path)
        );
        let mode = u64::from(entry.header().mode().expect("accepted, so the mode reads"));
        assert_eq!(mode & SPECIAL_MODE_BITS, 0, "accepted mode {mode:o}");
        read.push((path.clone(), kind, entry.size()));
        if path == format!("{EPISODE}/meta.json").as_bytes() {
            let mut meta = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut meta).expect("meta.json reads");
            // The last meta.json wins if the validator let two through.
            found_meta = parse_meta(&meta).is_ok_and(|s| s.commit == commit());
        }
    }
    let checked: Vec<_> = checked
        .iter()
        .map(|c| (c.path.clone(), c.kind, c.size))
        .collect();
    assert_eq!(
        read, checked,
        "the tar crate reads other entries than were checked"
    );
    assert!(found_meta, "accepted without a meta.json stamped {EPISODE}");
}

/// `data` as `meta.json`. Invariant: a stamp it finds is a canonical commit
/// that parses again to itself.
pub fn meta_stamp(data: &[u8]) {
    if let Ok(stamp) = parse_meta(data) {
        let again = Commit::parse(stamp.commit.as_str()).expect("a found commit parses again");
        assert_eq!(again, stamp.commit);
        assert_eq!(stamp.commit.as_str().len(), 40);
    }
}

/// `data` (as UTF-8, lossily) as an episode id. Invariants: an accepted id is
/// one path component that is not `.` or `..` and not hidden, and an archive
/// entry `<id>/meta.json` is that episode's metadata.
pub fn episode_id(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(id) = Id::parse(&s) {
        let id = id.as_str();
        assert!(!id.is_empty() && id.len() <= 128);
        assert!(!id.contains('/') && !id.contains('\\') && !id.contains('\0'));
        assert!(!id.starts_with('.') && id != "." && id != "..");
        assert!(id.is_ascii());
        let role = check_entry(id, format!("{id}/meta.json").as_bytes(), EntryKind::Regular);
        assert_eq!(role, Ok(EntryRole::Meta), "{id}/meta.json");
    }
}

/// `data` (as UTF-8, lossily) as a `Content-Digest` value. Invariant: a digest
/// it finds survives the round trip through the header we send.
pub fn content_digest(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(d) = Sha256Digest::parse_header(&s) {
        assert_eq!(Sha256Digest::parse_header(&d.header_value()), Ok(d));
    }
}

/// A harness: handles one input, panics on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: &[(&str, Harness)] = &[
    ("archive", archive),
    ("archive_tar", archive_tar),
    ("meta_stamp", meta_stamp),
    ("episode_id", episode_id),
    ("content_digest", content_digest),
];

/// The archives of [`crate::tar_cases`] for [`EPISODE`], by slug: the
/// shapes real tar readers disagree on, and some they agree on.
pub fn tar_reader_cases() -> Vec<(&'static str, Vec<u8>)> {
    crate::tar_cases::cases()
        .iter()
        .map(|c| (c.slug, (c.build)(EPISODE)))
        .collect()
}

/// Starting inputs for each target: well-formed cases and each way the
/// hostile suite breaks them. `fuzz_corpus::write_seeds` (ignored) writes them
/// into `fuzz/corpus/<target>/`; the fuzzer grows the corpus from there.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::episode::{RawTar, zst};
    use tar::EntryType as T;
    let c = crate::GOOD_COMMIT;
    let good = || RawTar::new().dir("ep-1/").meta(EPISODE, c);
    let tars = || -> Vec<Vec<u8>> {
        let long = format!("ep-1/{}", "d/".repeat(60));
        vec![
            good().finish(),
            good().file("ep-1/a.csv", b"t,v\n0,1\n1,2\n").finish(),
            good()
                .dir("ep-1/sub/")
                .file("ep-1/sub/b.bin", &[0, 1, 2, 3, 255])
                .finish(),
            RawTar::new().meta(EPISODE, c).finish(),
            good().file("ep-1/meta.json", b"{}").finish(),
            RawTar::new().dir("ep-1/").finish(),
            RawTar::new()
                .dir("ep-1/")
                .file("ep-1/meta.json", b"[1,2]")
                .finish(),
            good().file("../x", b"1").finish(),
            good().file("/etc/x", b"1").finish(),
            good().file("other/x", b"1").finish(),
            good().entry(b"ep-1/l", T::Symlink, b"").finish(),
            good().entry(b"ep-1/h", T::Link, b"").finish(),
            good().entry(b"ep-1/c", T::Char, b"").finish(),
            good().entry(b"ep-1/f", T::Fifo, b"").finish(),
            good().file("ep-1/a", b"1").file("ep-1/a", b"2").finish(),
            good()
                .entry(b"././@LongLink", T::GNULongName, long.as_bytes())
                .file("ep-1/x", b"1")
                .finish(),
            good()
                .entry(b"ep-1/PaxHeaders/x", T::XHeader, b"20 path=ep-1/long\n")
                .file("ep-1/x", b"1")
                .finish(),
            good()
                .entry(b"ep-1/PaxHeaders/x", T::XHeader, b"12 size=99\n")
                .file("ep-1/x", b"1")
                .finish(),
            {
                let mut t = good().finish();
                t.extend_from_slice(&[1u8; 512]);
                t
            },
            good().file("ep-1/zeros", &[0u8; 65536]).finish(),
        ]
        .into_iter()
        .chain(tar_reader_cases().into_iter().map(|(_, tar)| tar))
        .collect()
    };
    match target {
        "archive_tar" => tars(),
        "archive" => {
            let mut v: Vec<Vec<u8>> = tars().iter().map(|t| zst(t)).collect();
            let z = good().file("ep-1/a", &[7u8; 4000]).finish_zst();
            v.push(z[..z.len() / 2].to_vec());
            let mut trailing = good().finish_zst();
            trailing.extend_from_slice(b"garbage!");
            v.push(trailing);
            v.push(b"not zstd at all".to_vec());
            v.push(Vec::new());
            v
        }
        "meta_stamp" => [
            format!(r#"{{"code_version":{{"commit":"{c}"}}}}"#),
            format!(r#"{{"code_version":{{"commit":"{c}","dirty":true}},"x":[1,2]}}"#),
            r#"{"code_version":{"commit":null}}"#.into(),
            r#"{"code_version":{"commit":42}}"#.into(),
            r#"{"code_version":{"commit":"ABCDEF0123456789ABCDEF0123456789ABCDEF01"}}"#.into(),
            r#"{"code_version":"1111"}"#.into(),
            r#"{"other":1}"#.into(),
            "[]".into(),
            "{".into(),
            "\u{feff}{}".into(),
            format!(r#"{{"code_version":{{"commit":"{c}"}},"code_version":{{}}}}"#),
        ]
        .map(String::into_bytes)
        .to_vec(),
        "episode_id" => [
            "ep-1", "", ".", "..", "a/b", "a%2Fb", ".hidden", "-x", "é", "a\0b", "A.b_c-9",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain([vec![b'a'; 128], vec![b'a'; 129]])
        .collect(),
        "content_digest" => {
            let d = Sha256Digest::of(b"x").header_value();
            [
                d.clone(),
                format!("sha-512=:AAAA:, {d}"),
                format!("{d};param=1"),
                "sha-256=:AAAA:".into(),
                "sha-256=AAAA".into(),
                "sha-256=::".into(),
                "md5=:AAAA:".into(),
                "".into(),
                ",,,".into(),
                d.to_uppercase(),
                format!("  {d}  "),
            ]
            .map(String::into_bytes)
            .to_vec()
        }
        other => panic!("no fuzz target {other}"),
    }
}
