//! A real systemd as PID 1 in a throwaway container, for tests of the units
//! (`Type=notify`, the watchdog, restarts, hardening) and of everything that
//! reads the real journal (doctor).
//!
//! [`Container::boot`] runs the RECIPES.md command line:
//! `systemd-nspawn --volatile=yes -D / --register=no --keep-unit -M <name> …
//! -b --console=read-only -- systemd.unit=multi-user.target systemd.firstboot=off`.
//! `--volatile=yes -D /` gives a tmpfs root over the host's read-only `/usr`,
//! so `/etc`, `/var` and the journal inside are fresh and die with the
//! container; `--register=no --keep-unit` need no host D-Bus or systemd; there
//! is no `--private-network`, so a receiver on the host's 127.0.0.1 is reachable
//! from inside. The built binaries are bound read-only at `/opt/labship/bin`
//! and `etc/labship-shipper.service` at `/etc/systemd/system/` (the installed
//! layout, CONTRACT §1); tests add their own binds.
//!
//! Two things the recipe alone does not give, both needed here: a preset that
//! keeps first boot from enabling (and starting) the labship units, and a
//! cgroup of its own per container, so containers booted side by side (tests
//! run in parallel) do not share their units' cgroups.
//!
//! Commands run inside with `nsenter -t <leader> -a` (the leader is the
//! container's PID 1: the child of `systemd-nspawn` that is PID 1 in its own
//! PID namespace). Dropping a [`Container`] shuts it down cleanly (SIGTERM to
//! nspawn, which halts the container), and kills it when that does not finish
//! in time, so no container outlives its test, even one that panicked. nspawn
//! is started with a parent-death signal (SIGTERM), so even a test process that
//! is killed outright takes its container down.

mod host;

use host::{drain, find_leader, own_cgroups, parent_of, remove_cgroup, wait_exit};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Where the installed layout puts the binaries (CONTRACT §1).
pub const BIN_DIR: &str = "/opt/labship/bin";
/// The shipper's unit name.
pub const SHIPPER_UNIT: &str = "labship-shipper.service";

/// `PATH` inside the container (nsenter runs with a cleared environment).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The repository's root (where `etc/` and `scripts/` live).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// True when this machine can boot a container: root, with `systemd-nspawn`,
/// `nsenter` and `setpriv`. Otherwise prints `SKIP <test>: …` and returns false.
pub fn skip_unless_root_and_nspawn(test: &str) -> bool {
    let missing: Vec<&str> = ["systemd-nspawn", "nsenter", "setpriv", "timeout"]
        .into_iter()
        .filter(|tool| which(tool).is_none())
        .collect();
    if !crate::is_root() {
        crate::skip(test, "needs root (systemd-nspawn boots a container)");
        return false;
    }
    if !missing.is_empty() {
        crate::skip(
            test,
            &format!(
                "{} not installed (apt-get install systemd-container util-linux coreutils)",
                missing.join(", ")
            ),
        );
        return false;
    }
    true
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| PATH.into());
    std::env::split_paths(&path)
        .chain(std::env::split_paths(PATH))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// How to boot a container.
#[derive(Debug, Clone)]
pub struct Options {
    /// The container's hostname (`_HOSTNAME` in its journal).
    pub hostname: String,
    /// `(host path, container path, read-only)`.
    pub binds: Vec<(PathBuf, String, bool)>,
    /// How long the boot may take before the test fails.
    pub boot_timeout: Duration,
    /// Boot this directory (an [`OverlayRoot`]) instead of a volatile copy
    /// of `/`: a writable `/usr` and `/var` with the host's dpkg database,
    /// for the package tests.
    pub root: Option<PathBuf>,
}

impl Default for Options {
    /// The binaries at `/opt/labship/bin` and the shipper's unit installed,
    /// both read-only; hostname `lab-01`.
    fn default() -> Self {
        Self {
            hostname: "lab-01".to_owned(),
            binds: vec![
                (crate::bin_dir(), BIN_DIR.to_owned(), true),
                (
                    repo_root().join("etc").join(SHIPPER_UNIT),
                    format!("/etc/systemd/system/{SHIPPER_UNIT}"),
                    true,
                ),
            ],
            boot_timeout: Duration::from_secs(60),
            root: None,
        }
    }
}

impl Options {
    /// Nothing of labship bound in (no binaries, no unit): a host before
    /// the installer ran, for the installers' tests; hostname `lab-01`.
    pub fn bare() -> Self {
        Self {
            binds: Vec::new(),
            ..Self::default()
        }
    }

    /// Binds `host` at `inside`, writable.
    pub fn bind(mut self, host: &Path, inside: &str) -> Self {
        self.binds.push((host.to_owned(), inside.to_owned(), false));
        self
    }

    /// Binds `host` at `inside`, read-only.
    pub fn bind_ro(mut self, host: &Path, inside: &str) -> Self {
        self.binds.push((host.to_owned(), inside.to_owned(), true));
        self
    }

    pub fn hostname(mut self, name: &str) -> Self {
        name.clone_into(&mut self.hostname);
        self
    }

    /// Boots `overlay`'s merged root instead of a volatile `/`.
    pub fn overlay(mut self, overlay: &OverlayRoot) -> Self {
        self.root = Some(overlay.root.clone());
        self
    }
}

/// The machine's own root under a writable overlay (RECIPES.md, "dpkg under
/// a real systemd"): `--volatile=yes` gives an empty `/var` (no dpkg
/// database) and a read-only `/usr`, so a package cannot be installed there.
/// Every write of the container (dpkg's database, users, `/etc`, `/opt`)
/// lands in the overlay's upper directory; the host is untouched. Unmounted
/// on drop, which must come after the container's (declare it first).
#[derive(Debug)]
pub struct OverlayRoot {
    /// The merged tree to boot.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl OverlayRoot {
    pub fn mount() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("labship-overlay-")
            .tempdir()
            .expect("overlay scratch dir");
        let (upper, work, root) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("root"),
        );
        for d in [&upper, &work, &root] {
            std::fs::create_dir(d).expect("overlay dir");
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir=/,upperdir={},workdir={}",
                upper.display(),
                work.display()
            ))
            .arg(&root)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t overlay over / at {}: {}",
            root.display(),
            text(&out)
        );
        let overlay = Self { root, _dir: dir };
        // The machine's own /etc comes along, with every unit it enables
        // (a database, apt's daily timers running apt beside the test's
        // dpkg): none of them is this test's business, and they would share
        // the machine's network. Their links go, in the overlay only.
        let system = overlay.root.join("etc/systemd/system");
        for entry in std::fs::read_dir(&system).expect("the overlay's /etc/systemd/system") {
            let path = entry.expect("a directory entry").path();
            if path
                .extension()
                .is_some_and(|e| e == "wants" || e == "requires")
            {
                std::fs::remove_dir_all(&path)
                    .unwrap_or_else(|e| panic!("clearing {} in the overlay: {e}", path.display()));
            }
        }
        overlay
    }
}

impl Drop for OverlayRoot {
    fn drop(&mut self) {
        // Then the TempDir field removes the scratch.
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
    }
}

/// A booted container with systemd as PID 1.
#[derive(Debug)]
pub struct Container {
    /// Unique per process and boot (`-M`), so parallel tests never collide.
    pub name: String,
    nspawn: Child,
    /// Host pid of the container's PID 1; 0 until found.
    leader: u32,
    /// nspawn's stdout and stderr (the container's console), for failure messages.
    console: Arc<Mutex<Vec<u8>>>,
    /// How long the boot took.
    pub boot_time: Duration,
    /// Host files bound into the container (the preset); lives as long as it.
    _scratch: tempfile::TempDir,
    /// The container's own cgroups (one per hierarchy), removed after it.
    cgroups: Vec<PathBuf>,
}

static BOOTS: AtomicUsize = AtomicUsize::new(0);

impl Container {
    /// Boots, and returns once `systemctl is-system-running` says `running`
    /// or `degraded`. Panics with nspawn's output when that does not happen
    /// within `opts.boot_timeout`.
    pub fn boot(opts: Options) -> Self {
        let name = format!(
            "labship-t{}-{}",
            std::process::id(),
            BOOTS.fetch_add(1, Ordering::SeqCst)
        );
        // nspawn --keep-unit puts the container in `payload/` under its own
        // cgroup; two containers started from one cgroup would share it, and
        // with it every unit's cgroup (each systemd then meets the other's
        // processes in "its" labship-shipper.service and logs `Failed to kill
        // control group …: Input/output error`). So nspawn first moves into
        // a cgroup of its own (the shell), then execs.
        let cgroups = own_cgroups(&name);
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done; shift; exec "$@""#,
            "sh",
        ])
        .args(&cgroups)
        .args(["--", "setpriv"]);
        // Parent-death signal: if the test process dies without running Drop
        // (SIGKILL, a nextest timeout), nspawn still gets SIGTERM and halts
        // the container. It fires when the *thread* that booted exits, so a
        // Container must be dropped on the thread that booted it (the test's).
        cmd.args(["--pdeathsig", "TERM", "--", "systemd-nspawn"]);
        match &opts.root {
            Some(root) => cmd.arg("-D").arg(root),
            None => cmd.args(["--volatile=yes", "-D", "/"]),
        };
        cmd.args(["--register=no", "--keep-unit"]).args([
            "-M",
            &name,
            &format!("--hostname={}", opts.hostname),
        ]);
        // First boot (the volatile /etc has no machine-id) runs `systemctl
        // preset-all`, and Debian's policy enables every unit with an
        // [Install] section: the shipper would start at boot, before its user
        // exists. Installed but not enabled, as on a host before the
        // installer enables it: tests start it themselves.
        let scratch = tempfile::Builder::new()
            .prefix("labship-nspawn-")
            .tempdir()
            .expect("nspawn scratch dir");
        let preset = scratch.path().join("00-labship-tests.preset");
        std::fs::write(&preset, "disable labship-*\n").expect("write preset");
        cmd.arg(format!(
            "--bind-ro={}:/etc/systemd/system-preset/00-labship-tests.preset",
            preset.display()
        ));
        for (host, inside, ro) in &opts.binds {
            assert!(
                host.exists(),
                "bind source {} does not exist",
                host.display()
            );
            let flag = if *ro { "--bind-ro" } else { "--bind" };
            cmd.arg(format!("{flag}={}:{inside}", host.display()));
        }
        cmd.args(["-b", "--console=read-only", "--"])
            .args(["systemd.unit=multi-user.target", "systemd.firstboot=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut nspawn = cmd.spawn().expect("spawn sh setpriv systemd-nspawn");
        let console = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            nspawn
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            nspawn
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = console.clone();
            std::thread::spawn(move || drain(pipe, &sink));
        }
        // Built before waiting, so a boot that panics is still torn down by Drop.
        let mut c = Self {
            name,
            nspawn,
            leader: 0,
            console,
            boot_time: Duration::ZERO,
            _scratch: scratch,
            cgroups,
        };
        c.wait_booted(started, opts.boot_timeout);
        c.boot_time = started.elapsed();
        c
    }

    fn wait_booted(&mut self, started: Instant, within: Duration) {
        let deadline = started + within;
        let mut last = String::new();
        loop {
            if let Some(status) = self.nspawn.try_wait().expect("try_wait nspawn") {
                panic!(
                    "systemd-nspawn exited with {status} while booting {}:\n{}",
                    self.name,
                    self.console()
                );
            }
            if self.leader == 0 {
                self.leader = find_leader(self.nspawn.id()).unwrap_or(0);
            }
            if self.leader != 0 {
                let out = self.exec_timeout(&["systemctl", "is-system-running"], 10);
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                if matches!(last.as_str(), "running" | "degraded") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "container {} not booted within {within:?} (leader pid {}, last `systemctl is-system-running`: {last:?}):\n{}\n{}",
                self.name,
                self.leader,
                if self.leader == 0 {
                    String::new()
                } else {
                    text(&self.exec_timeout(&["systemctl", "list-jobs", "--no-pager"], 10))
                },
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Host pid of the container's PID 1 (systemd).
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// The container's root as seen from the host (`/proc/<leader>/root`):
    /// files under it can be read and written directly, e.g. drop-ins in the
    /// container's tmpfs `/etc`.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader))
    }

    /// Writes `contents` to `path` inside the container, creating parents.
    pub fn write_file(&self, path: &str, contents: &str) {
        let p = self.root().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("a file has a parent"))
            .and_then(|()| std::fs::write(&p, contents))
            .unwrap_or_else(|e| panic!("write {path} in container {}: {e}", self.name));
    }

    /// `stat -c '%a %U %G'` of `path` inside ("2770 labship labship-producers").
    pub fn stat(&self, path: &str) -> String {
        self.run(&["stat", "-c", "%a %U %G", path])
            .trim()
            .to_owned()
    }

    /// Writes `path` inside as root:labship 0640, as an operator installs
    /// configs and keys.
    pub fn put_private(&self, path: &str, contents: impl AsRef<[u8]>) {
        self.write_file(path, &String::from_utf8_lossy(contents.as_ref()));
        self.run(&["chown", "root:labship", path]);
        self.run(&["chmod", "0640", path]);
    }

    /// Asserts `out` (of `what`) succeeded, with `unit`'s diagnostics
    /// otherwise; returns its stdout.
    pub fn expect_ok(&self, unit: &str, what: &str, out: &Output) -> String {
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            text(out),
            self.diagnostics(unit)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `cond` every 100 ms; panics with `unit`'s diagnostics after
    /// `within`.
    pub fn wait_for(
        &self,
        unit: &str,
        what: &str,
        within: Duration,
        mut cond: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\n{}",
                self.diagnostics(unit)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `args` inside the container as root (all its namespaces, its root
    /// directory, a clean environment); at most 120 s.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_timeout(args, 120)
    }

    /// Runs `args` inside the container as `user`, with the user's groups
    /// (from the container's `/etc/group`) and a login-like environment.
    pub fn exec_as(&self, user: &str, args: &[&str]) -> Output {
        let mut full = vec![
            "setpriv",
            "--reuid",
            user,
            "--regid",
            user,
            "--init-groups",
            "--reset-env",
            "--",
        ];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// [`Container::exec`] that must succeed; returns stdout. Panics with the
    /// command's output otherwise.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in container {}: `{}` failed ({}):\n{}",
            self.name,
            args.join(" "),
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sh -c script` inside, as root.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    fn exec_timeout(&self, args: &[&str], secs: u32) -> Output {
        assert!(
            self.leader != 0,
            "container {} has no leader yet",
            self.name
        );
        // `timeout` bounds a command that hangs inside (a start job waiting
        // for READY=1, say), so a broken unit fails the test instead of
        // hanging it.
        Command::new("timeout")
            .args(["-k", "5", &secs.to_string(), "nsenter", "-t"])
            .arg(self.leader.to_string())
            .args(["-a", "--"])
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// `journalctl -u <unit> -o json --no-pager` inside: one JSON object a line.
    pub fn journal_json(&self, unit: &str) -> String {
        self.run(&["journalctl", "-u", unit, "-o", "json", "--no-pager"])
    }

    /// The same, from `since` on (whole seconds).
    pub fn journal_json_since(&self, unit: &str, since: SystemTime) -> String {
        let secs = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        self.run(&[
            "journalctl",
            "-u",
            unit,
            "-o",
            "json",
            "--no-pager",
            &format!("--since=@{secs}"),
        ])
    }

    /// Everything worth seeing when a test fails around `unit`: its status,
    /// its journal (short form), and the container's console.
    pub fn diagnostics(&self, unit: &str) -> String {
        let status = self.exec(&["systemctl", "status", "--no-pager", "-l", unit]);
        let journal = self.exec(&[
            "journalctl",
            "-u",
            unit,
            "--no-pager",
            "-o",
            "short-precise",
        ]);
        format!(
            "--- systemctl status {unit}\n{}\n--- journalctl -u {unit}\n{}\n--- console of {}\n{}",
            text(&status),
            text(&journal),
            self.name,
            self.console()
        )
    }

    /// nspawn's output so far (the container's console), without colours.
    pub fn console(&self) -> String {
        let bytes = self.console.lock().unwrap_or_else(|p| p.into_inner());
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// Halts the container and waits for nspawn to exit; returns how long it took.
    pub fn shutdown(mut self) -> Duration {
        self.stop()
    }

    fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.halt();
        for dir in &self.cgroups {
            remove_cgroup(dir);
        }
        t.elapsed()
    }

    fn halt(&mut self) {
        if self.nspawn.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = rustix::process::Pid::from_raw(self.nspawn.id() as i32);
        // SIGTERM makes nspawn ask the container's systemd to halt (clean
        // shutdown, units stopped); then nspawn exits.
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if wait_exit(&mut self.nspawn, Duration::from_secs(20)) {
            return;
        }
        eprintln!(
            "container {}: no clean shutdown within 20 s; killing it",
            self.name
        );
        // Killing nspawn alone would leave the container running (its PID 1
        // is reparented, not killed); killing PID 1 of a PID namespace kills
        // every process in it, then nspawn exits.
        if self.leader != 0 && parent_of(self.leader) == Some(self.nspawn.id()) {
            if let Some(leader) = rustix::process::Pid::from_raw(self.leader as i32) {
                let _ = rustix::process::kill_process(leader, rustix::process::Signal::KILL);
            }
        }
        if !wait_exit(&mut self.nspawn, Duration::from_secs(5)) {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}

/// stdout and stderr of a finished command, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Removes ANSI escape sequences (the console is a terminal to systemd).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
