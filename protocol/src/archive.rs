//! What an episode archive may contain.
//!
//! An archive is a tar stream whose entries all sit under `<id>/`, in sorted path
//! order (component by component, as a depth-first walk with sorted siblings
//! yields and as GNU `tar --sort=name` writes), holding only directories and
//! regular files. The receiver applies [`check_entry`] and [`PathOrder`] to every
//! entry as it streams by; the shipper applies the same rules before it packs, so
//! a local `archive_failed` and a remote `archive_invalid` can never disagree.
//! The receiver also holds every header to [`header`]'s byte rules, so that
//! what it checks is what every tar reader unpacks, and every entry to
//! [`check_member`]: no setuid, setgid or sticky bits, owner 0 and no names.

pub mod header;

pub use header::{
    BLOCK, Format, Header, HeaderRuleError, PAX_KEYS, Pax, PaxRuleError, parse_header, parse_pax,
};
use std::cmp::Ordering;

/// The permission bits a packed entry keeps (CONTRACT §13): setuid, setgid
/// and sticky are masked off by the shipper and refused by the receiver
/// ([`SPECIAL_MODE_BITS`]). An episode directory under the setgid
/// `episodes/` inherits setgid, so without the mask every archive would
/// carry it.
pub const MODE_MASK: u32 = 0o777;

/// setuid, setgid and sticky: an entry carrying any is refused. Bits above
/// `0o7777` (the file-type bits some writers copy from `st_mode`) are ignored
/// by every reader and allowed.
pub const SPECIAL_MODE_BITS: u64 = 0o7000;

/// The kind of a tar entry, reduced to what the rules care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Regular,
    Directory,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// Anything else (sparse files, vendor extensions, sockets on the host side).
    Other,
}

/// What an accepted entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryRole {
    /// The `<id>/` directory itself.
    Root,
    Directory,
    File,
    /// `<id>/meta.json`, a regular file.
    Meta,
}

/// Why an entry is refused. The messages name the offending path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRuleError {
    #[error("entry {path:?} is an absolute path")]
    Absolute { path: String },
    #[error("entry {path:?} contains an empty, '.' or '..' component")]
    BadComponent { path: String },
    #[error("entry {path:?} is outside the episode directory {id:?}")]
    Outside { path: String, id: String },
    #[error("entry {path:?} is a {kind}; only directories and regular files are allowed")]
    Kind { path: String, kind: &'static str },
    #[error("entry {path:?} is not a regular file")]
    MetaNotFile { path: String },
    #[error("entry {path:?} is out of sorted order or repeated (after {previous:?})")]
    Order { path: String, previous: String },
    #[error("entry {path:?} sits under {parent:?}, which is not a directory")]
    UnderFile { path: String, parent: String },
    #[error(
        "entry {path:?} is a regular file whose name ends in '/': GNU tar and bsdtar unpack it as a directory"
    )]
    FileWithSlash { path: String },
    #[error("entry {path:?} has mode {mode:#o}: setuid, setgid and sticky bits are refused")]
    SpecialBits { path: String, mode: u64 },
    #[error("entry {path:?} has owner {uid}:{gid}: archives carry owner ids 0")]
    Owner { path: String, uid: u64, gid: u64 },
    #[error("entry {path:?} has an owner or group name: archives carry none")]
    OwnerName { path: String },
    #[error("entry {path:?} has a link target, which only links have")]
    LinkName { path: String },
    #[error(
        "directory {path:?} declares {size} bytes of data: tar readers would read that data as entries"
    )]
    DirectoryData { path: String, size: u64 },
}

fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).chars().take(300).collect()
}

/// Splits a tar path into components, refusing absolute paths and empty, `.` or
/// `..` components. One trailing slash (how tar spells directories) is allowed.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, EntryRuleError> {
    if path.first() == Some(&b'/') {
        return Err(EntryRuleError::Absolute {
            path: display(path),
        });
    }
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let parts: Vec<&[u8]> = trimmed.split(|&b| b == b'/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == b"." || *c == b".." || c.contains(&0))
    {
        return Err(EntryRuleError::BadComponent {
            path: display(path),
        });
    }
    Ok(parts)
}

/// Checks one entry of the archive of episode `id`.
pub fn check_entry(id: &str, path: &[u8], kind: EntryKind) -> Result<EntryRole, EntryRuleError> {
    let parts = components(path)?;
    if parts[0] != id.as_bytes() {
        return Err(EntryRuleError::Outside {
            path: display(path),
            id: id.to_owned(),
        });
    }
    let refuse = |kind: &'static str| EntryRuleError::Kind {
        path: display(path),
        kind,
    };
    let is_meta = parts.len() == 2 && parts[1] == crate::stamp::META_FILE.as_bytes();
    match kind {
        EntryKind::Directory if is_meta => Err(EntryRuleError::MetaNotFile {
            path: display(path),
        }),
        EntryKind::Directory if parts.len() == 1 => Ok(EntryRole::Root),
        EntryKind::Directory => Ok(EntryRole::Directory),
        EntryKind::Regular if parts.len() == 1 => Err(EntryRuleError::Outside {
            path: display(path),
            id: id.to_owned(),
        }),
        EntryKind::Regular if path.ends_with(b"/") => Err(EntryRuleError::FileWithSlash {
            path: display(path),
        }),
        EntryKind::Regular if is_meta => Ok(EntryRole::Meta),
        EntryKind::Regular => Ok(EntryRole::File),
        EntryKind::Symlink => Err(refuse("symlink")),
        EntryKind::HardLink => Err(refuse("hard link")),
        EntryKind::CharDevice => Err(refuse("character device")),
        EntryKind::BlockDevice => Err(refuse("block device")),
        EntryKind::Fifo => Err(refuse("fifo")),
        EntryKind::Other => Err(refuse("special entry")),
    }
}

/// Checks what an entry's header says beyond its path and type (`path` and
/// `kind` as [`check_entry`] accepted them): no setuid, setgid or sticky bit,
/// owner ids 0 and no owner names (CONTRACT §3: unpacked as root, anything
/// else hands the file to some local user), no link target, no data behind a
/// directory (Python, GNU tar and bsdtar all read it as further headers; the
/// tar crate skips it).
pub fn check_member(path: &[u8], kind: EntryKind, header: &Header) -> Result<(), EntryRuleError> {
    let path = || display(path);
    if header.mode & SPECIAL_MODE_BITS != 0 {
        return Err(EntryRuleError::SpecialBits {
            path: path(),
            mode: header.mode,
        });
    }
    if header.uid != 0 || header.gid != 0 {
        return Err(EntryRuleError::Owner {
            path: path(),
            uid: header.uid,
            gid: header.gid,
        });
    }
    if header.owner_names {
        return Err(EntryRuleError::OwnerName { path: path() });
    }
    if header.link_name {
        return Err(EntryRuleError::LinkName { path: path() });
    }
    if kind == EntryKind::Directory && header.size != 0 {
        return Err(EntryRuleError::DirectoryData {
            path: path(),
            size: header.size,
        });
    }
    Ok(())
}

/// Compares two archive paths component by component (the order of a depth-first
/// walk with siblings sorted by name).
pub fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    let a = a.strip_suffix(b"/").unwrap_or(a);
    let b = b.strip_suffix(b"/").unwrap_or(b);
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Enforces strictly increasing path order across a stream of entries, which
/// also rules out duplicate entries without remembering every path, and refuses
/// an entry under a path that was a file (in sorted order a file's would-be
/// children follow it directly).
#[derive(Debug, Default)]
pub struct PathOrder {
    previous: Option<Vec<u8>>,
    previous_is_dir: bool,
}

impl PathOrder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn admit(&mut self, path: &[u8], is_dir: bool) -> Result<(), EntryRuleError> {
        if let Some(prev) = &self.previous {
            if path_order(prev, path) != Ordering::Less {
                return Err(EntryRuleError::Order {
                    path: display(path),
                    previous: display(prev),
                });
            }
            let prev_trimmed = prev.strip_suffix(b"/").unwrap_or(prev);
            if !self.previous_is_dir
                && path.starts_with(prev_trimmed)
                && path.get(prev_trimmed.len()) == Some(&b'/')
            {
                return Err(EntryRuleError::UnderFile {
                    path: display(path),
                    parent: display(prev),
                });
            }
        }
        self.previous = Some(path.to_vec());
        self.previous_is_dir = is_dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_a_normal_tree() {
        assert_eq!(
            check_entry("ep", b"ep/", EntryKind::Directory),
            Ok(EntryRole::Root)
        );
        assert_eq!(
            check_entry("ep", b"ep/meta.json", EntryKind::Regular),
            Ok(EntryRole::Meta)
        );
        assert_eq!(
            check_entry("ep", b"ep/a/meta.json", EntryKind::Regular),
            Ok(EntryRole::File)
        );
        assert_eq!(
            check_entry("ep", b"ep/data/", EntryKind::Directory),
            Ok(EntryRole::Directory)
        );
    }

    #[test]
    fn refuses_escapes_links_and_specials() {
        let bad: &[(&[u8], EntryKind)] = &[
            (b"/ep/x", EntryKind::Regular),
            (b"ep/../x", EntryKind::Regular),
            (b"ep/./x", EntryKind::Regular),
            (b"ep//x", EntryKind::Regular),
            (b"other/x", EntryKind::Regular),
            (b"ep", EntryKind::Regular),
            (b"..", EntryKind::Directory),
            (b"ep/l", EntryKind::Symlink),
            (b"ep/h", EntryKind::HardLink),
            (b"ep/c", EntryKind::CharDevice),
            (b"ep/b", EntryKind::BlockDevice),
            (b"ep/f", EntryKind::Fifo),
            (b"ep/meta.json/", EntryKind::Directory),
            (b"ep/x/", EntryKind::Regular),
        ];
        for (path, kind) in bad {
            assert!(
                check_entry("ep", path, *kind).is_err(),
                "{:?}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn member_rules() {
        let h = |mode, uid, size| Header {
            format: Format::Gnu,
            type_flag: b'0',
            mode,
            uid,
            gid: 0,
            size,
            link_name: false,
            owner_names: false,
        };
        let f = EntryKind::Regular;
        let d = EntryKind::Directory;
        assert_eq!(check_member(b"ep/x", f, &h(0o755, 0, 9)), Ok(()));
        assert_eq!(check_member(b"ep/x", f, &h(0o100644, 0, 9)), Ok(()));
        assert_eq!(check_member(b"ep/", d, &h(0o40755, 0, 0)), Ok(()));
        for mode in [0o4755, 0o2755, 0o1777, 0o104755] {
            assert!(matches!(
                check_member(b"ep/x", f, &h(mode, 0, 9)),
                Err(EntryRuleError::SpecialBits { .. })
            ));
        }
        let e = check_member(b"ep/s", f, &h(0o4755, 0, 9)).unwrap_err();
        assert!(
            e.to_string().contains("ep/s") && e.to_string().contains("0o4755"),
            "{e}"
        );
        assert!(check_member(b"ep/x", f, &h(0o644, 1000, 9)).is_err());
        let named = Header {
            owner_names: true,
            ..h(0o644, 0, 9)
        };
        assert!(check_member(b"ep/x", f, &named).is_err());
        let linked = Header {
            link_name: true,
            ..h(0o644, 0, 9)
        };
        assert!(check_member(b"ep/x", f, &linked).is_err());
        assert!(check_member(b"ep/d/", d, &h(0o755, 0, 1024)).is_err());
    }

    #[test]
    fn order_is_depth_first_by_component() {
        let mut o = PathOrder::new();
        for p in ["ep/", "ep/a/", "ep/a/x", "ep/a.txt", "ep/meta.json"] {
            o.admit(p.as_bytes(), p.ends_with('/')).unwrap();
        }
        assert!(o.admit(b"ep/meta.json", false).is_err(), "duplicate");
        assert!(o.admit(b"ep/b", false).is_err(), "backwards");
        let mut o = PathOrder::new();
        o.admit(b"ep/f", false).unwrap();
        assert!(matches!(
            o.admit(b"ep/f/x", false),
            Err(EntryRuleError::UnderFile { .. })
        ));
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_inside(path in proptest::collection::vec(any::<u8>(), 0..64)) {
            if check_entry("ep", &path, EntryKind::Regular).is_ok() {
                let parts = components(&path).unwrap();
                prop_assert_eq!(parts[0], b"ep".as_slice());
                prop_assert!(parts.len() >= 2);
                prop_assert!(parts.iter().all(|c| *c != b".." && *c != b"." && !c.is_empty()));
                prop_assert!(path[0] != b'/');
            }
        }

        #[test]
        fn dotdot_anywhere_is_refused(prefix in "[a-z]{0,3}(/[a-z]{1,3}){0,3}", suffix in "(/[a-z]{1,3}){0,3}") {
            let path = format!("ep/{prefix}/..{suffix}");
            prop_assert!(check_entry("ep", path.as_bytes(), EntryKind::Regular).is_err());
        }

        #[test]
        fn sorted_walk_is_admitted(mut names in proptest::collection::btree_set("[a-z.]{1,4}(/[a-z]{1,3})?", 1..20)) {
            let mut paths: Vec<String> = std::mem::take(&mut names).into_iter()
                .filter(|n| components(n.as_bytes()).is_ok())
                .map(|n| format!("ep/{n}")).collect();
            paths.sort_by(|a, b| path_order(a.as_bytes(), b.as_bytes()));
            paths.dedup();
            let mut o = PathOrder::new();
            for (i, p) in paths.iter().enumerate() {
                // An entry is a directory when the next one sits under it.
                let is_dir = paths.get(i + 1).is_some_and(|n| n.starts_with(&format!("{p}/")));
                prop_assert!(o.admit(p.as_bytes(), is_dir).is_ok());
            }
        }
    }
}
