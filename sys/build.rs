//! Embeds the git commit the binaries are built from as `LABSHIP_COMMIT`
//! (12 hex digits, or `unknown` outside git), for `--version`, the
//! shipper's `User-Agent` and `labship_build_info` (CONTRACT §11). The
//! logic, and what is watched for a rerun, is `build/commit.rs`.
//!
//! An environment variable `LABSHIP_COMMIT` wins (a packager building from
//! an export without `.git`); a malformed one stops the build.

#[path = "build/commit.rs"]
mod commit;

fn main() {
    println!("cargo:rerun-if-env-changed=LABSHIP_COMMIT");
    let manifest =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // The workspace root: sys/ is one of its members.
    let root = manifest.parent().unwrap_or(&manifest);
    let env = std::env::var("LABSHIP_COMMIT").ok();
    let found = match commit::resolve(root, env.as_deref()) {
        Ok(f) => f,
        Err(why) => panic!("{why}"),
    };
    for w in &found.warnings {
        println!("cargo:warning={w}");
    }
    for p in &found.watch {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    // Without a watched file cargo would rerun at every build: watch the
    // script itself instead (outside git the commit cannot move).
    if found.watch.is_empty() {
        println!("cargo:rerun-if-changed=build.rs");
    }
    println!("cargo:rustc-env=LABSHIP_COMMIT={}", found.commit);
}
