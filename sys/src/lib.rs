//! What labship's binaries share at their edge, below the protocol and above
//! nothing: today the packagers' `--generate KIND` (a man page or a shell
//! completion, rendered from the binary's own clap definition, as ripgrep's
//! `rg --generate` does; [`run_cli`] adds the flag to a binary's `main`), so the `.deb`s ship documentation that cannot drift
//! from the flags (scripts/build-debs.sh); and what a binary says about its
//! own build (`--version`, the shipper's `User-Agent`, `labship_build_info`):
//! the version and the git commit embedded by `build.rs`; and the
//! `/metrics` exposition in the format a scraper asks for ([`metrics`]);
//! where the log goes, the journal or stderr ([`logging`]); and the few
//! I/O helpers both daemons would otherwise write twice: systemd
//! notifications ([`systemd`]), the config error and loader opening
//! ([`config`]), `fsync_dir` ([`fs`]) and the test hooks ([`hooks`]).

pub mod config;
pub mod fs;
pub mod hooks;
pub mod logging;
pub mod metrics;
pub mod systemd;

pub use logging::init_logging;

use std::io::{self, Write};

/// The workspace version (every crate shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The 12-hex git commit the binaries were built from, or `unknown` when
/// built outside git (`build.rs`; the environment variable `LABSHIP_COMMIT`
/// at build time overrides it). Use this, not `option_env!` in another
/// crate: only this crate's build script sets it.
pub const COMMIT: &str = env!("LABSHIP_COMMIT");

/// `VERSION (COMMIT)`: clap's `#[command(version = labship_sys::LONG_VERSION)]`
/// makes `--version` print `NAME VERSION (COMMIT)` (CONTRACT §11).
pub const LONG_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("LABSHIP_COMMIT"), ")");

/// The shipper's `User-Agent`: `labship-shipper/VERSION (COMMIT)`.
pub const SHIPPER_USER_AGENT: &str = concat!(
    "labship-shipper/",
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("LABSHIP_COMMIT"),
    ")"
);

/// What a binary reports about its build: the labels of
/// `labship_build_info{version,commit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
}

/// This build's [`BuildInfo`].
pub const fn build_info() -> BuildInfo {
    BuildInfo {
        version: VERSION,
        commit: COMMIT,
    }
}

/// What `--generate` renders on standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// A roff man page (section 1).
    Man,
    /// A bash completion script.
    CompleteBash,
    /// A zsh completion function.
    CompleteZsh,
}

/// Renders `kind` for `cmd` (the binary's `clap::Command`) into `out`.
pub fn generate(kind: Generate, mut cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    use clap_complete::{Generator as _, Shell};
    let shell = match kind {
        Generate::Man => return clap_mangen::Man::new(cmd).render(out),
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
    };
    // What clap_complete::generate does, with the write error returned
    // instead of a panic (a closed pipe is the caller's business).
    let name = cmd.get_name().to_owned();
    cmd.set_bin_name(name);
    cmd.build();
    shell.try_generate(&cmd, out)
}

/// `--generate KIND` for a binary's `main`: renders to standard output and
/// returns the exit code (1 when standard output cannot be written).
pub fn generate_to_stdout(kind: Generate, cmd: clap::Command) -> std::process::ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match generate(kind, cmd, &mut out).and_then(|()| out.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("--generate: cannot write to standard output: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// The hidden `--generate KIND` flag that `run_cli` adds to a binary's own
// arguments. A plain comment: clap would make a doc comment here the
// binary's own description (its `about`).
#[derive(Debug, clap::Args)]
struct GenerateFlag {
    /// Print a man page or a shell completion for this binary and exit
    /// (for packagers: scripts/build-debs.sh).
    #[arg(long, value_name = "KIND", hide = true)]
    generate: Option<Generate>,
}

/// A binary's `main`: parses its arguments `A` plus `--generate KIND`
/// (a usage error exits 2 with clap's message, as `clap::Parser::parse`
/// does), answers `--generate`, and otherwise hands the arguments to `run`.
pub fn run_cli<A: clap::Parser>(
    run: impl FnOnce(A) -> std::process::ExitCode,
) -> std::process::ExitCode {
    use clap::Args as _;
    let command = || GenerateFlag::augment_args(A::command());
    let matches = command().get_matches();
    if let Some(kind) = matches.get_one::<Generate>("generate") {
        return generate_to_stdout(*kind, command());
    }
    match A::from_arg_matches(&matches) {
        Ok(args) => run(args),
        Err(e) => e.format(&mut command()).exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(kind: Generate) -> String {
        let cmd = clap::Command::new("demo").about("a demo tool").arg(
            clap::Arg::new("config")
                .long("config")
                .help("Configuration file."),
        );
        let mut out = Vec::new();
        generate(kind, cmd, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_commit_is_twelve_hex_or_unknown() {
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() == 12 && COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
            "{COMMIT}"
        );
        assert_eq!(LONG_VERSION, format!("{VERSION} ({COMMIT})"));
        assert_eq!(
            SHIPPER_USER_AGENT,
            format!("labship-shipper/{VERSION} ({COMMIT})")
        );
    }

    #[test]
    fn each_kind_names_the_binary_and_its_flags() {
        let man = render(Generate::Man);
        assert!(
            man.starts_with(".ie") || man.contains(".TH demo 1"),
            "{man}"
        );
        assert!(man.contains("\\-\\-config") && man.contains("Configuration file."));
        let bash = render(Generate::CompleteBash);
        assert!(
            bash.contains("complete -F") && bash.contains("--config"),
            "{bash}"
        );
        let zsh = render(Generate::CompleteZsh);
        assert!(
            zsh.starts_with("#compdef demo") && zsh.contains("--config"),
            "{zsh}"
        );
    }
}

/// `build.rs`'s logic (build/commit.rs) run in temporary repositories.
#[cfg(test)]
#[path = "../build/commit.rs"]
mod commit;

#[cfg(test)]
mod build_tests {
    use super::commit::resolve;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::SystemTime;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A workspace root with a `sys/` member, in a fresh repository.
    fn workspace() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ws");
        std::fs::create_dir_all(root.join("sys")).unwrap();
        git(&root, &["init", "-q"]);
        (t, root)
    }

    fn commit(root: &Path, n: u32) {
        std::fs::write(root.join("f"), n.to_string()).unwrap();
        git(root, &["add", "f"]);
        git(root, &["commit", "-q", "-m", &n.to_string()]);
    }

    /// Every watched path with its newest mtime (a directory: its tree's).
    fn stamps(paths: &[PathBuf]) -> Vec<(PathBuf, SystemTime, u64)> {
        fn newest(p: &Path) -> (SystemTime, u64) {
            let m = std::fs::metadata(p).unwrap();
            let (mut t, mut len) = (m.modified().unwrap(), m.len());
            if m.is_dir() {
                for e in std::fs::read_dir(p).unwrap() {
                    let (et, el) = newest(&e.unwrap().path());
                    t = t.max(et);
                    len += el;
                }
            }
            (t, len)
        }
        paths
            .iter()
            .map(|p| {
                let (t, len) = newest(p);
                (p.clone(), t, len)
            })
            .collect()
    }

    /// After `git pack-refs` HEAD's loose ref is gone; a commit writes it
    /// again. Something cargo watches must change, or the next build keeps
    /// the old commit.
    #[test]
    fn a_commit_after_pack_refs_changes_a_watched_path() {
        let (_t, root) = workspace();
        commit(&root, 1);
        git(&root, &["pack-refs", "--all", "--prune"]);
        let found = resolve(&root, None).unwrap();
        assert_eq!(
            found.commit,
            git(&root, &["rev-parse", "--short=12", "HEAD"])
        );
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        let git_dir = root.join(".git");
        for must in [git_dir.join("logs/HEAD"), git_dir.join("refs/heads")] {
            assert!(
                found.watch.contains(&must),
                "{must:?} not in {:?}",
                found.watch
            );
        }
        let before = stamps(&found.watch);
        std::thread::sleep(std::time::Duration::from_millis(20));
        commit(&root, 2);
        let after = stamps(&found.watch);
        assert_ne!(before, after, "no watched path changed with the commit");
        let again = resolve(&root, None).unwrap();
        assert_eq!(
            again.commit,
            git(&root, &["rev-parse", "--short=12", "HEAD"])
        );
        assert_ne!(again.commit, found.commit);
    }

    /// A source tree unpacked inside an unrelated repository is not that
    /// repository's HEAD.
    #[test]
    fn a_tree_inside_another_repository_is_unknown() {
        let t = tempfile::tempdir().unwrap();
        git(t.path(), &["init", "-q"]);
        std::fs::write(t.path().join("x"), "x").unwrap();
        git(t.path(), &["add", "x"]);
        git(t.path(), &["commit", "-q", "-m", "outer"]);
        let root = t.path().join("unpacked/labship");
        std::fs::create_dir_all(root.join("sys")).unwrap();
        let found = resolve(&root, None).unwrap();
        assert_eq!(found.commit, "unknown");
        assert!(found.warnings.is_empty());
    }

    #[test]
    fn the_environment_wins_and_a_malformed_one_is_an_error() {
        let (_t, root) = workspace();
        let c = "ABCDEF0123456789abcdef0123456789abcdef01";
        assert_eq!(resolve(&root, Some(c)).unwrap().commit, "abcdef012345");
        assert_eq!(resolve(&root, Some("unknown")).unwrap().commit, "unknown");
        let e = resolve(&root, Some("v1.2-dirty")).unwrap_err();
        assert!(
            e.contains("LABSHIP_COMMIT") && e.contains("v1.2-dirty"),
            "{e}"
        );
    }

    /// `.git` present but git failing is said, not silent.
    #[test]
    fn a_broken_git_is_a_warning() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ws");
        std::fs::create_dir_all(root.join("sys")).unwrap();
        std::fs::write(root.join(".git"), "gitdir: /nonexistent\n").unwrap();
        let found = resolve(&root, None).unwrap();
        assert_eq!(found.commit, "unknown");
        assert_eq!(found.warnings.len(), 1, "{:?}", found.warnings);
    }
}
