//! A lab host under a real systemd: a [`Container`] with the installed layout
//! of CONTRACT §1, the `labship` user, `/etc/labship` (config, CA, client
//! certificate) and `/var/lib/labship` (data_dir) bound from the test's temp
//! dir, and the real `labship-shipper.service` ready to start.
//!
//! The receiver runs on the host (the container shares its network), so the
//! shipper inside reaches it at 127.0.0.1. Episodes are produced on the host
//! side of the data_dir bind (written aside, owned by `labship`, then renamed
//! into `episodes/` as a producer would), and results are read there too.
//!
//! [`LabHost::boot`] does the installer's part (`useradd`, the
//! `labship-producers` group with `labship` in it, ownership and modes);
//! the installer itself is tested in `tests/tests/install_systemd.rs`.

use crate::TestEnv;
use crate::episode::write_episode;
use crate::nspawn::{Container, Options, SHIPPER_UNIT, text};
use crate::pki::Issued;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// The host id the lab host's certificate is issued for and its hostname.
pub const HOST: &str = "lab-01";
/// The producers' group (CONTRACT §13); the unit names it in `SupplementaryGroups=`.
pub const PRODUCERS: &str = "labship-producers";

/// The shipper's config, as the tests vary it. Paths are the installed ones.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    pub host_id: String,
    pub url: String,
    pub scan_interval_s: u32,
    pub connect_timeout_s: u32,
    pub stall_timeout_s: u32,
    pub initial_backoff_s: u32,
    pub max_backoff_s: u32,
    /// `[ops] listen`; `""` (off) unless a test asks for a port: the lab
    /// hosts share the host's network, and many run at once.
    pub ops_listen: String,
}

impl ShipperConfig {
    /// Fast passes (1 s), no settling, short backoff (1..4 s).
    pub fn new(url: &str) -> Self {
        Self {
            host_id: HOST.to_owned(),
            url: url.to_owned(),
            scan_interval_s: 1,
            connect_timeout_s: 5,
            stall_timeout_s: 60,
            initial_backoff_s: 1,
            max_backoff_s: 4,
            ops_listen: String::new(),
        }
    }

    pub fn to_toml(&self) -> String {
        format!(
            "host_id = {:?}\ndata_dir = \"/var/lib/labship\"\nscan_interval_s = {}\nsettle_s = 0\n\n\
             [ops]\nlisten = {:?}\n\n\
             [receiver]\nurl = {:?}\nca_file = \"/etc/labship/ca.pem\"\ncert_file = \"/etc/labship/client.pem\"\n\
             key_file = \"/etc/labship/client.key\"\nconnect_timeout_s = {}\nstall_timeout_s = {}\n\n\
             [retry]\ninitial_backoff_s = {}\nmax_backoff_s = {}\n",
            self.host_id,
            self.scan_interval_s,
            self.ops_listen,
            self.url,
            self.connect_timeout_s,
            self.stall_timeout_s,
            self.initial_backoff_s,
            self.max_backoff_s
        )
    }
}

/// A booted lab host.
#[derive(Debug)]
pub struct LabHost {
    pub container: Container,
    /// Host side of `/etc/labship` (bound read-only).
    pub etc: PathBuf,
    /// Host side of `/var/lib/labship` (bound writable).
    pub data: PathBuf,
    /// Where episodes are written before they are renamed into `episodes/`.
    staging: PathBuf,
    /// The `labship` user and group ids (the container shares the host's ids).
    pub uid: u32,
    pub gid: u32,
    /// The `labship-producers` group id (CONTRACT §13).
    pub producers_gid: u32,
}

impl LabHost {
    /// Boots the container and creates the service user, the producers'
    /// group (with `labship` in it), `/etc/labship` (root:labship 0750) and
    /// the data_dir (labship, `episodes/` labship:labship-producers setgid 2770).
    pub fn boot(env: &TestEnv) -> Self {
        let root = env.path().join("lab-host");
        let (etc, data, staging) = (root.join("etc"), root.join("data"), root.join("staging"));
        for d in [&etc, &data.join("episodes"), &staging] {
            std::fs::create_dir_all(d).expect("lab host dirs");
        }
        let container = Container::boot(
            Options::default()
                .bind_ro(&etc, "/etc/labship")
                .bind(&data, "/var/lib/labship"),
        );
        // The container's /etc is a fresh tmpfs without login.defs, so
        // `useradd --system` alone would put the user in group `users` (100):
        // ask for its own group.
        container.run(&[
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/labship",
            "--shell",
            "/usr/sbin/nologin",
            "labship",
        ]);
        container.run(&["groupadd", "--system", PRODUCERS]);
        container.run(&["usermod", "-aG", PRODUCERS, "labship"]);
        let id = |flag: &str| -> u32 {
            let out = container.run(&["id", flag, "labship"]);
            out.trim().parse().expect("numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let producers_gid = container
            .run(&["getent", "group", PRODUCERS])
            .split(':')
            .nth(2)
            .and_then(|g| g.parse().ok())
            .expect("labship-producers gid");
        let host = Self {
            container,
            etc,
            data,
            staging,
            uid,
            gid,
            producers_gid,
        };
        host.own(&host.etc, 0, 0o750);
        host.own_tree(&host.data, gid);
        host.own(&host.data, uid, 0o751);
        host.own_as(&host.data.join("episodes"), uid, producers_gid, 0o2770);
        host
    }

    fn own(&self, path: &Path, uid: u32, mode: u32) {
        self.own_as(path, uid, self.gid, mode);
    }

    fn own_as(&self, path: &Path, uid: u32, gid: u32, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn own_tree(&self, path: &Path, gid: u32) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(gid)).expect("chown");
        if path.is_dir() && !path.is_symlink() {
            for e in std::fs::read_dir(path).expect("read dir") {
                self.own_tree(&e.expect("entry").path(), gid);
            }
        }
    }

    /// Installs the CA and `client` as `/etc/labship/{ca.pem,client.pem,client.key}`,
    /// root:labship 0640 (readable by the service, not by everyone).
    pub fn install_identity(&self, env: &TestEnv, client: &Issued) {
        for (src, name) in [
            (&env.pki.ca_file, "ca.pem"),
            (&client.cert_file, "client.pem"),
            (&client.key_file, "client.key"),
        ] {
            let dest = self.etc.join(name);
            std::fs::copy(src, &dest).expect("install certificate");
            self.own(&dest, 0, 0o640);
        }
    }

    /// Writes `/etc/labship/shipper.toml`.
    pub fn write_config(&self, cfg: &ShipperConfig) {
        self.write_config_text(&cfg.to_toml());
    }

    pub fn write_config_text(&self, toml: &str) {
        let dest = self.etc.join("shipper.toml");
        std::fs::write(&dest, toml).expect("write shipper.toml");
        self.own(&dest, 0, 0o640);
    }

    /// A finished episode, as a producer makes one: written aside, owned by
    /// `labship:labship-producers` (the group setgid `episodes/` gives),
    /// renamed into `episodes/`. `commit: None` writes no stamp.
    pub fn produce(&self, id: &str, commit: Option<&str>, files: &[(&str, &[u8])]) {
        let dir = write_episode(&self.staging, id, commit, files);
        self.own_tree(&dir, self.producers_gid);
        std::fs::rename(&dir, self.data.join("episodes").join(id)).expect("move into episodes/");
    }

    /// Entry names under the data_dir's `sub` (`shipped`, `quarantine`, …), sorted.
    pub fn names(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data.join(sub))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `systemctl <args>` inside (no check of the exit status).
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut full = vec!["systemctl"];
        full.extend_from_slice(args);
        self.container.exec(&full)
    }

    /// `systemctl show -p <props> labship-shipper.service` as a map.
    pub fn show(&self, props: &[&str]) -> BTreeMap<String, String> {
        let out = self
            .container
            .run(&["systemctl", "show", "-p", &props.join(","), SHIPPER_UNIT]);
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Writes the drop-in `/etc/systemd/system/labship-shipper.service.d/<name>.conf`
    /// and reloads systemd.
    pub fn drop_in(&self, name: &str, body: &str) {
        self.container.write_file(
            &format!("/etc/systemd/system/{SHIPPER_UNIT}.d/{name}.conf"),
            body,
        );
        self.container.run(&["systemctl", "daemon-reload"]);
    }

    /// The unit's journal entries (the shipper's own and systemd's about it).
    pub fn journal(&self) -> Vec<Value> {
        parse_journal(&self.container.journal_json(SHIPPER_UNIT))
    }

    /// Polls the journal until `pred` holds; panics with the diagnostics after `within`.
    pub fn wait_journal(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let entries = self.journal();
            if pred(&entries) {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "journal never showed {what} within {within:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `cond` until it holds; panics with the diagnostics after `within`.
    pub fn wait_for(&self, what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The unit's status, journal and the container's console.
    pub fn diagnostics(&self) -> String {
        self.container.diagnostics(SHIPPER_UNIT)
    }

    /// Asserts a command succeeded, with the diagnostics when it did not.
    pub fn expect_ok(&self, what: &str, out: &Output) {
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            text(out),
            self.diagnostics()
        );
    }
}

/// `journalctl -o json` output as objects (lines that are not objects are skipped).
pub fn parse_journal(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// A journal field as text (journald gives strings; byte arrays for non-UTF-8).
pub fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or("")
}

/// Entries the shipper logged with `EVENT=<event>`.
pub fn events<'a>(entries: &'a [Value], event: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| field(e, "EVENT") == event)
        .collect()
}

/// Entries whose `MESSAGE` contains `needle` (systemd's own messages about the unit).
pub fn messages<'a>(entries: &'a [Value], needle: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| field(e, "MESSAGE").contains(needle))
        .collect()
}
