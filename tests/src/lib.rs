//! Helpers every labship suite reuses: a temp dir and PKI per test ([`TestEnv`]),
//! the real binaries as child processes ([`process`]), episode trees and
//! archives, well-formed or hostile ([`episode`]), something that is not the
//! receiver answering at its URL ([`impostor`]), and HTTP clients with the
//! right identities ([`TestEnv::client`]), and a real systemd in a container
//! for the units and the journal ([`nspawn`], [`lab_host`]), and a real
//! S3-compatible store (SeaweedFS, [`s3`]), and tar archives real tar readers
//! agree or disagree on ([`tar_cases`]).
//!
//! The binaries are the ones `cargo build --workspace --bins` leaves next to the
//! test executable; `scripts/test.sh` builds them first.

pub mod episode;
pub mod fleet;
pub mod fuzz;
pub mod impostor;
pub mod lab_host;
pub mod nspawn;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod tar_cases;

use std::path::{Path, PathBuf};

/// A commit the test gate accepts.
pub const GOOD_COMMIT: &str = "1111111111111111111111111111111111111111";
/// A well-formed commit the test gate does not accept.
pub const OLD_COMMIT: &str = "2222222222222222222222222222222222222222";
/// The remediation the test receivers put in 412 bodies.
pub const REMEDIATION: &str = "cd /opt/labship && git pull && sudo ./scripts/install-lab-host.sh";

/// The commit the binaries must name (`--version`, `User-Agent`,
/// `labship_build_info`): `git rev-parse --short=12 HEAD` of this checkout,
/// or `unknown` outside git.
pub fn expected_commit() -> String {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(nspawn::repo_root())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// One test's world: a temp dir, a CA with server and client certificates.
#[derive(Debug)]
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub pki: pki::Pki,
}

impl TestEnv {
    pub fn new() -> Self {
        // Both rustls users in a test process must agree on one provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("labship-test-")
            .tempdir()
            .expect("create temp dir");
        let pki = pki::Pki::new(&dir.path().join("pki"));
        Self { dir, pki }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path under the test dir, with its parent created.
    pub fn file(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        p
    }

    /// An HTTPS client that trusts the test CA and presents `identity`
    /// (a host's client certificate), or none.
    pub fn client(&self, identity: Option<&pki::Issued>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.pki.ca_pem.as_bytes()).expect("CA pem");
        let mut b = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(std::time::Duration::from_secs(60));
        if let Some(id) = identity {
            let pem = format!("{}{}", id.cert_pem, id.key_pem);
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity pem"));
        }
        b.build().expect("client")
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// True when the tests run as root (tmpfs mounts, nspawn, dropping to
/// another user).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Says why `test` cannot run on this machine and returns; under
/// `LABSHIP_NO_SKIP=1` (set by CI, which runs as root with every tool the
/// suite needs) it fails instead, so a root-gated check (the watchdog, the
/// 507, the journal) cannot silently stop running.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("LABSHIP_NO_SKIP").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!(
            "{test} would be skipped ({why}), but LABSHIP_NO_SKIP is set: this machine must run it"
        );
    }
    eprintln!("SKIP {test}: {why}");
}

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LABSHIP_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    // A binary of this crate (the bench) sits beside the others in
    // target/<profile>/; a test sits one level down, in target/<profile>/deps/.
    if dir.join("receiver").exists() {
        return dir.to_path_buf();
    }
    dir.parent().expect("target dir").to_path_buf()
}

/// Path to a workspace binary, with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The sorted file names in `dir`; none when it does not exist (yet).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                e.expect("read dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The text of a `shipper.toml` for host `host` over `data` and `url`, with
/// `id` as client identity, short timeouts and backoff for tests, and no
/// ops listener (many shippers run at once: a test that wants `/metrics`
/// replaces `listen = ""`); `top` is extra top-level keys (e.g.
/// `settle_s = 0`).
pub fn shipper_toml(
    env: &TestEnv,
    host: &str,
    url: &str,
    data: &Path,
    id: &pki::Issued,
    top: &str,
) -> String {
    format!(
        "host_id = \"{host}\"\ndata_dir = {data:?}\n{top}\n[ops]\nlisten = \"\"\n[receiver]\nurl = \"{url}\"\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nconnect_timeout_s = 2\nstall_timeout_s = 5\n[retry]\ninitial_backoff_s = 1\nmax_backoff_s = 2\n",
        env.pki.ca_file, id.cert_file, id.key_file
    )
}
