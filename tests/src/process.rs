//! The real binaries as child processes. [`Receiver`] writes a config into the
//! test dir, starts `receiver` on free loopback ports, waits for `/healthz`, and
//! kills the process when dropped. Its log is kept in a file for failure messages.

use crate::{GOOD_COMMIT, REMEDIATION, TestEnv, bin};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; the kernel does not hand it out
/// again right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How to start a receiver.
#[derive(Debug, Clone)]
pub struct ReceiverOpts {
    /// Serve TLS with client-certificate verification (the default).
    pub tls: bool,
    /// Extra TOML appended to the config (whole tables, e.g. `[limits]`).
    pub extra: String,
    /// The allowed-commits file's contents.
    pub allowed: String,
    /// Storage directory; defaults to `<test>/store`.
    pub store: Option<PathBuf>,
    /// Prefix the command (e.g. `unshare -m sh -c '…'`); see [`Receiver::start`].
    pub wrapper: Option<Vec<String>>,
    /// `auth.tokens_file`, when set.
    pub tokens_file: Option<PathBuf>,
    /// Extra environment for the process (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// The directory under the test dir holding config, gate, audit log and
    /// log (`receiver` unless set): several receivers in one test need their own.
    pub name: Option<String>,
    /// Replaces the `[storage]` table (e.g. an S3 store, see `crate::s3`).
    pub storage: Option<String>,
    /// `tls.crl_file`, when set.
    pub crl_file: Option<PathBuf>,
}

impl ReceiverOpts {
    /// The receiver in its own private mount namespace (`unshare -m`, needs
    /// root), started by `sh -c script`, which ends with
    /// `exec "$0" "$@"` (the receiver's command line).
    pub fn in_mount_namespace(script: String) -> Self {
        Self {
            wrapper: Some(
                ["unshare", "-m", "--propagation", "private", "sh", "-c"]
                    .map(String::from)
                    .into_iter()
                    .chain([script])
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// [`ReceiverOpts::in_mount_namespace`] with a tmpfs of `size` (e.g.
    /// `"4m"`) mounted as its store at `store`.
    pub fn on_tmpfs_store(store: &Path, size: &str) -> Self {
        Self {
            store: Some(store.to_path_buf()),
            ..Self::in_mount_namespace(format!(
                "mount -t tmpfs -o size={size} tmpfs {store:?} && exec \"$0\" \"$@\""
            ))
        }
    }
}

impl Default for ReceiverOpts {
    fn default() -> Self {
        Self {
            tls: true,
            extra: String::new(),
            allowed: format!("# test gate\n{GOOD_COMMIT}\n"),
            store: None,
            wrapper: None,
            tokens_file: None,
            env: Vec::new(),
            name: None,
            storage: None,
            crl_file: None,
        }
    }
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    pub child: Child,
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub url: String,
    pub config: PathBuf,
    pub store: PathBuf,
    pub audit: PathBuf,
    pub allowed: PathBuf,
    pub log: PathBuf,
    /// What it was started with, for [`Receiver::restart`].
    opts: ReceiverOpts,
}

impl Receiver {
    pub fn start(env: &TestEnv) -> Self {
        Self::start_with(env, ReceiverOpts::default())
    }

    /// A receiver whose store is a tmpfs of `size` (e.g. `"4m"`) in its own
    /// mount namespace ([`ReceiverOpts::on_tmpfs_store`]; needs root), and
    /// that store as the test sees it: through `/proc/<pid>/root`, since the
    /// tmpfs exists only in the receiver's namespace.
    pub fn on_tmpfs(env: &TestEnv, size: &str) -> (Self, PathBuf) {
        let store = env.path().join("store");
        std::fs::create_dir_all(&store).expect("store dir");
        let r = Self::start_with(env, ReceiverOpts::on_tmpfs_store(&store, size));
        let view = PathBuf::from(format!("/proc/{}/root", r.child.id()))
            .join(store.strip_prefix("/").expect("an absolute store path"));
        (r, view)
    }

    /// Writes the config and starts the receiver; panics with its log if it
    /// does not become healthy.
    pub fn start_with(env: &TestEnv, opts: ReceiverOpts) -> Self {
        let root = env.path().join(opts.name.as_deref().unwrap_or("receiver"));
        std::fs::create_dir_all(&root).expect("receiver dir");
        let store = opts
            .store
            .clone()
            .unwrap_or_else(|| env.path().join("store"));
        let allowed = root.join("allowed-commits");
        if !allowed.exists() {
            std::fs::write(&allowed, &opts.allowed).expect("allowed commits");
        }
        let (port, ops_port) = (free_port(), free_port());
        let tls = if opts.tls {
            let crl = opts
                .crl_file
                .as_ref()
                .map(|p| format!("crl_file = {p:?}\n"))
                .unwrap_or_default();
            format!(
                "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n{crl}",
                env.pki.server.cert_file, env.pki.server.key_file, env.pki.ca_file
            )
        } else {
            String::new()
        };
        let auth = opts
            .tokens_file
            .as_ref()
            .map(|p| format!("[auth]\ntokens_file = {p:?}\n"))
            .unwrap_or_default();
        let audit = root.join("audit.jsonl");
        let storage = opts
            .storage
            .clone()
            .unwrap_or_else(|| format!("[storage]\ndir = {store:?}\n"));
        let config_text = format!(
            "listen = \"127.0.0.1:{port}\"\n{tls}{auth}{storage}[gate]\nallowed_commits_file = {allowed:?}\nremediation = {REMEDIATION:?}\n[ops]\nlisten = \"127.0.0.1:{ops_port}\"\naudit_log = {audit:?}\n{}",
            opts.extra
        );
        let config = root.join("receiver.toml");
        std::fs::write(&config, config_text).expect("write config");
        let log = root.join(format!("receiver-{port}.log"));
        let child = spawn(&opts, &config, &log);
        let scheme = if opts.tls { "https" } else { "http" };
        let mut r = Self {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            ops_addr: ([127, 0, 0, 1], ops_port).into(),
            url: format!("{scheme}://127.0.0.1:{port}"),
            config,
            store,
            audit,
            allowed,
            log,
            opts: opts.clone(),
        };
        r.wait_healthy(Duration::from_secs(20));
        r
    }

    /// Restarts on the same config and ports after [`Receiver::kill9`] or a stop,
    /// with the default options (no wrapper, no extra environment: a crash
    /// point set for the first run is not set again).
    pub fn restart(&mut self) {
        self.restart_with(ReceiverOpts::default());
    }

    /// As [`Receiver::restart`], keeping the options it was started with
    /// (e.g. the object store's credentials) except `env`, which is replaced.
    pub fn restart_with_env(&mut self, env: Vec<(String, String)>) {
        let opts = ReceiverOpts {
            env,
            ..self.opts.clone()
        };
        self.restart_with(opts);
    }

    fn restart_with(&mut self, opts: ReceiverOpts) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&opts, &self.config, &self.log);
        self.wait_healthy(Duration::from_secs(20));
    }

    fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "receiver exited with {status} before becoming healthy:\n{}",
                    self.log_text()
                );
            }
            if http_get(self.ops_addr, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "receiver not healthy within {within:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        // A test helper sending a real signal to its own child; the pid is ours.
        let rc = unsafe_free_kill(self.child.id(), sig);
        assert!(rc, "kill({}, {sig}) failed", self.child.id());
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `GET` on the ops listener; the whole response as text.
    pub fn ops_get(&self, path: &str) -> String {
        http_get(self.ops_addr, path).unwrap_or_default()
    }

    /// Files stored for `host` (names only), sorted.
    pub fn stored(&self, host: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.store.join(host))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Files in the scratch directory.
    pub fn scratch(&self) -> Vec<String> {
        std::fs::read_dir(self.store.join(".scratch"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Audit records so far.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(opts: &ReceiverOpts, config: &Path, log: &Path) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let receiver = bin("receiver");
    let mut cmd = match &opts.wrapper {
        Some(w) => {
            let mut c = Command::new(&w[0]);
            c.args(&w[1..]);
            c.arg(&receiver);
            c
        }
        None => Command::new(&receiver),
    };
    cmd.arg("--config")
        .arg(config)
        .env("LABSHIP_LOG", "info,labship_receiver=debug")
        .env_remove("NOTIFY_SOCKET")
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn receiver")
}

/// Sends `sig` to `pid` using the `kill` command (the workspace forbids unsafe).
pub fn unsafe_free_kill(pid: u32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// A minimal HTTP/1.1 GET over plain TCP (for the ops listener).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `shipper --config cfg --once` with `LABSHIP_CRASH_AT=point` (a debug
/// build's crash hook): it must die there, by SIGKILL.
pub fn shipper_crash_at(cfg: &Path, point: &str) {
    use std::os::unix::process::ExitStatusExt as _;
    let out = Command::new(bin("shipper"))
        .args(["--config", cfg.to_str().expect("a UTF-8 path"), "--once"])
        .env("LABSHIP_CRASH_AT", point)
        .output()
        .expect("spawn the shipper");
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: the crash point was never reached\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a binary to completion with arguments; returns (exit code, stdout, stderr).
pub fn run(bin_name: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin(bin_name))
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process killed (SIGKILL) and reaped when the guard drops, however
/// the test ends: no daemon outlives a failed assertion.
#[derive(Debug)]
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PUT `body` as episode `host/id` with the contract's headers
/// (`X-Labship-Commit`, `Content-Digest` of the body); the whole response.
pub async fn put_episode(
    c: &reqwest::Client,
    url: &str,
    host: &str,
    id: &str,
    commit: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    c.put(format!("{url}/v1/episodes/{host}/{id}"))
        .header("X-Labship-Commit", commit)
        .header("Content-Digest", crate::episode::digest_header(&body))
        .body(body)
        .send()
        .await
        .expect("send")
}
