//! Which git commit the workspace is built from, and which files say when
//! it moves: the logic of `build.rs`, in a file of its own so that
//! `labship-sys`'s tests run it in a temporary repository.
//!
//! The commit is the workspace's own: `git rev-parse --show-toplevel` must
//! be the workspace root (the parent of `sys/`), else a source tree
//! unpacked inside some unrelated repository would report that one's HEAD.
//! Cargo reruns the script when one of [`Found::watch`] changes: the git
//! dir's `HEAD` and `logs/HEAD` (every commit, checkout and reset appends
//! to it), `packed-refs`, the directory holding HEAD's loose ref (a watched
//! directory is scanned recursively, so a ref that `git pack-refs` removed
//! and a commit writes again is seen) and `reftable/` when present.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the build embeds and watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// 12 lowercase hex digits, or `unknown`.
    pub(crate) commit: String,
    /// Paths whose change reruns the script (all exist).
    pub(crate) watch: Vec<PathBuf>,
    /// Said as `cargo:warning` (git present but failing).
    pub(crate) warnings: Vec<String>,
}

/// The commit for the workspace whose root is `root`; `env` is the
/// `LABSHIP_COMMIT` variable, which wins when set (a packager building an
/// export without `.git`). A malformed one is an error: a package must not
/// silently claim `unknown`.
pub(crate) fn resolve(root: &Path, env: Option<&str>) -> Result<Found, String> {
    let mut found = Found {
        commit: "unknown".to_owned(),
        watch: Vec::new(),
        warnings: Vec::new(),
    };
    if let Some(c) = env.map(str::trim).filter(|c| !c.is_empty()) {
        found.commit = normalize(c).ok_or_else(|| {
            format!(
                "LABSHIP_COMMIT={c:?} is not a git commit: give at least 12 hex digits (git rev-parse HEAD), or \"unknown\""
            )
        })?;
        return Ok(found);
    }
    let dot_git = root.join(".git");
    let has_git = dot_git.exists();
    if has_git {
        found.watch.push(dot_git);
    }
    let toplevel = match git(root, &["rev-parse", "--show-toplevel"]) {
        Ok(t) => PathBuf::from(t),
        Err(e) => {
            if has_git {
                found.warnings.push(format!(
                    "{} exists but git fails ({e}); the commit is unknown",
                    root.join(".git").display()
                ));
            }
            return Ok(found);
        }
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(&toplevel, root) {
        // Another repository around an unpacked source tree.
        return Ok(found);
    }
    let (git_dir, common) = match (
        git(root, &["rev-parse", "--absolute-git-dir"]),
        git(root, &["rev-parse", "--git-common-dir"]),
    ) {
        (Ok(g), Ok(c)) => {
            let c = PathBuf::from(c);
            let c = if c.is_absolute() { c } else { root.join(c) };
            (PathBuf::from(g), c)
        }
        (Err(e), _) | (_, Err(e)) => {
            found
                .warnings
                .push(format!("git rev-parse fails ({e}); the commit is unknown"));
            return Ok(found);
        }
    };
    let mut watch = vec![
        git_dir.join("HEAD"),
        git_dir.join("logs/HEAD"),
        common.join("packed-refs"),
        common.join("reftable"),
    ];
    if let Ok(head_ref) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        for base in [&common, &git_dir] {
            if let Some(dir) = base.join(&head_ref).parent() {
                watch.push(dir.to_path_buf());
            }
        }
    }
    watch.retain(|p| p.exists());
    watch.dedup();
    found.watch.extend(watch);
    match git(root, &["rev-parse", "--verify", "HEAD"]) {
        Ok(c) => found.commit = normalize(&c).unwrap_or_else(|| "unknown".to_owned()),
        // A repository without a commit yet.
        Err(e) => found.warnings.push(format!(
            "git rev-parse HEAD fails ({e}); the commit is unknown"
        )),
    }
    Ok(found)
}

/// 12 lowercase hex digits of a hex commit, or `unknown` as given.
fn normalize(c: &str) -> Option<String> {
    if c == "unknown" {
        return Some(c.to_owned());
    }
    (c.len() >= 12 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| c[..12].to_ascii_lowercase())
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout)
        .map(|s| s.trim().to_owned())
        .map_err(|e| e.to_string())
}
