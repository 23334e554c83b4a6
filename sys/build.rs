//! Embeds the git commit the binaries are built from as `LABSHIP_COMMIT`
//! (12 hex digits, or `unknown` outside git), for `--version`, the
//! shipper's `User-Agent` and `labship_build_info` (CONTRACT §11).
//!
//! An environment variable `LABSHIP_COMMIT` wins (a packager building from
//! an export without `.git`). Cargo reruns this script when HEAD moves: the
//! HEAD file of this checkout's git dir (a worktree has its own, named by its
//! `.git` file), the ref HEAD points to and `packed-refs` (both in the common
//! git dir).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LABSHIP_COMMIT");
    let commit = match std::env::var("LABSHIP_COMMIT") {
        Ok(c) if !c.trim().is_empty() => normalize(c.trim()),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=LABSHIP_COMMIT={commit}");
}

/// 12 lowercase hex digits of a hex commit; anything else is `unknown`.
fn normalize(c: &str) -> String {
    if c.len() >= 12 && c.bytes().all(|b| b.is_ascii_hexdigit()) {
        c[..12].to_ascii_lowercase()
    } else {
        "unknown".to_owned()
    }
}

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(s.trim().to_owned())
}

fn from_git() -> Option<String> {
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    let common = git(&["rev-parse", "--git-common-dir"]).map_or_else(
        || git_dir.clone(),
        |c| {
            let c = PathBuf::from(c);
            if c.is_absolute() {
                c
            } else {
                Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default()).join(c)
            }
        },
    );
    watch(&git_dir.join("HEAD"));
    watch(&common.join("packed-refs"));
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&common.join(&head_ref));
        watch(&git_dir.join(&head_ref));
    }
    let commit = git(&["rev-parse", "--verify", "HEAD"])?;
    Some(normalize(&commit))
}

/// Reruns when `path` changes; only existing files (cargo reruns on every
/// build for a missing one).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
