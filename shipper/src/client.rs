//! The shipper's HTTPS client, and its renewal from disk (CONTRACT §11).
//!
//! [`TlsClient::new`] checks each file the config names on its own (so an
//! error names the right key: reqwest's own errors say "builder error", and
//! an empty CA bundle would silently trust nothing) and builds one reqwest
//! client (rustls, connection reuse). Before a request,
//! [`TlsClient::current`] looks at the CA bundle, client certificate and key
//! (a `stat` each, at most every [`LOOK_EVERY`]; nothing is read while they
//! stay as they were). A changed set is judged only once it has been seen
//! unchanged twice at least [`STEADY`] apart, so a rotation written file by
//! file (key first, then certificate) is judged when it is complete: when
//! the new set is usable
//! (PEM, the key belongs to the certificate, and, as `--check-config`
//! requires, the certificate names this `host_id` and is valid now), a new
//! client is built and the next connection presents the renewed
//! certificate, without a restart.
//! A broken new set keeps the previous client; it is logged (once, naming
//! the files) and counted only when it lasts longer than [`MISMATCH_GRACE`]:
//! a rotation in progress is not an error.

use crate::config::Config;
use crate::upload::SetupError;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the TLS files are looked at (a `stat` each).
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// A changed set is judged once seen unchanged this far apart.
pub const STEADY: Duration = Duration::from_secs(1);

/// An unusable new set is logged and counted once it has been on disk this
/// long (`LABSHIP_TEST_TLS_GRACE_S` shortens it for tests).
pub const MISMATCH_GRACE: Duration = Duration::from_secs(60);

fn mismatch_grace() -> Duration {
    std::env::var("LABSHIP_TEST_TLS_GRACE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(MISMATCH_GRACE, Duration::from_secs)
}

/// What `stat` says of each TLS file (`None`: cannot be statted): a file
/// replaced or rewritten changes it.
type Fingerprint = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

/// The bytes of the TLS files, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Material {
    ca: Option<Vec<u8>>,
    cert_and_key: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
struct State {
    client: reqwest::Client,
    used: Material,
    /// The files as they were when `used` was read.
    used_at: Fingerprint,
    /// When the files were last looked at.
    looked: Instant,
    /// A changed set not judged yet, and when it was first seen so.
    candidate: Option<(Fingerprint, Instant)>,
    /// A steady set that could not be used: not read again until it
    /// changes; since when it is on disk, and whether it was said.
    rejected: Option<Rejected>,
}

#[derive(Debug)]
struct Rejected {
    at: Fingerprint,
    since: Instant,
    why: SetupError,
    said: bool,
}

/// A reqwest client that follows the TLS files on disk.
#[derive(Debug)]
pub struct TlsClient {
    spec: Spec,
    state: Mutex<State>,
}

/// What the client is built from: the files and the timeouts.
#[derive(Debug)]
struct Spec {
    file: String,
    /// A renewed certificate must name this host (`host_id`).
    host_id: String,
    ca_file: Option<PathBuf>,
    cert_and_key: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    stall_timeout: Duration,
}

impl TlsClient {
    /// Reads and checks every TLS file the config names and builds the client.
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let spec = Spec {
            file: config.file.display().to_string(),
            host_id: config.host_id.to_string(),
            ca_file: config.ca_file.clone(),
            cert_and_key: config.auth.cert_and_key.clone(),
            connect_timeout: config.connect_timeout,
            stall_timeout: config.stall_timeout,
        };
        let used_at = spec.fingerprint();
        let used = spec.read()?;
        let client = spec.build(&used)?;
        crate::metrics::get().client_certificate(not_after(&used));
        Ok(Self {
            spec,
            state: Mutex::new(State {
                client,
                used,
                used_at,
                looked: Instant::now(),
                candidate: None,
                rejected: None,
            }),
        })
    }

    /// The client for the next request: rebuilt first when the TLS files
    /// changed, stayed so for [`STEADY`], and the new ones are usable.
    pub fn current(&self) -> reqwest::Client {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(state.looked) < LOOK_EVERY {
            return state.client.clone();
        }
        state.looked = now;
        let at = self.spec.fingerprint();
        if at == state.used_at {
            state.candidate = None;
            state.rejected = None;
            return state.client.clone();
        }
        if let Some(r) = state.rejected.as_mut().filter(|r| r.at == at) {
            say_rejected(r, now);
            return state.client.clone();
        }
        let steady_since = match &state.candidate {
            Some((c, first)) if *c == at && now.duration_since(*first) >= STEADY => *first,
            Some((c, _)) if *c == at => return state.client.clone(),
            _ => {
                // Changed since the last look: perhaps mid-rotation.
                state.candidate = Some((at, now));
                return state.client.clone();
            }
        };
        state.candidate = None;
        let judged = self.spec.read().and_then(|fresh| {
            if fresh == state.used {
                return Ok(None);
            }
            self.spec
                .renewable(&fresh, std::time::SystemTime::now())
                .and_then(|()| self.spec.build(&fresh))
                .map(|client| Some((client, fresh)))
        });
        match judged {
            Ok(None) => state.used_at = at,
            Ok(Some((client, fresh))) => {
                tracing::info!(event = "client_tls_reloaded", cert_file = %self.spec.names(), "renewed TLS files in use from the next connection on");
                crate::metrics::get().client_certificate(not_after(&fresh));
                state.client = client;
                state.used = fresh;
                state.used_at = at;
                state.rejected = None;
            }
            Err(why) => {
                let mut r = Rejected {
                    at,
                    since: steady_since,
                    why,
                    said: false,
                };
                say_rejected(&mut r, now);
                state.rejected = Some(r);
            }
        }
        state.client.clone()
    }

    /// The client certificate's notAfter (seconds since the epoch) as in use.
    pub fn not_after(&self) -> Option<i64> {
        not_after(&self.state.lock().unwrap_or_else(|p| p.into_inner()).used)
    }
}

/// Logs and counts an unusable set once it has lasted [`MISMATCH_GRACE`].
fn say_rejected(r: &mut Rejected, now: Instant) {
    if r.said || now.duration_since(r.since) < mismatch_grace() {
        return;
    }
    r.said = true;
    let e = &r.why;
    tracing::error!(event = "client_tls_reload_failed", error = %e, "the renewed TLS files are not usable; keeping the previous certificate until they are fixed");
    crate::metrics::get().client_tls_reload_failed();
}

impl Spec {
    /// `stat` of each TLS file, in a fixed order.
    fn fingerprint(&self) -> Fingerprint {
        use std::os::unix::fs::MetadataExt as _;
        let (cert, key) = match &self.cert_and_key {
            Some((c, k)) => (Some(c), Some(k)),
            None => (None, None),
        };
        [self.ca_file.as_ref(), cert, key]
            .into_iter()
            .flatten()
            .map(|p| {
                std::fs::metadata(p).ok().map(|m| {
                    (
                        m.dev(),
                        m.ino(),
                        m.size(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                    )
                })
            })
            .collect()
    }

    fn names(&self) -> String {
        match &self.cert_and_key {
            Some((c, k)) => format!("{} and {}", c.display(), k.display()),
            None => self
                .ca_file
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
        }
    }

    fn setup(&self, key: &'static str, why: String) -> SetupError {
        SetupError {
            file: self.file.clone(),
            key,
            why,
        }
    }

    fn read(&self) -> Result<Material, SetupError> {
        let read = |key: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| self.setup(key, format!("{}: {e}", p.display())))
        };
        let ca = match &self.ca_file {
            Some(p) => Some(read("receiver.ca_file", p)?),
            None => None,
        };
        let cert_and_key = match &self.cert_and_key {
            Some((c, k)) => Some((
                read("receiver.cert_file", c)?,
                read("receiver.key_file", k)?,
            )),
            None => None,
        };
        Ok(Material { ca, cert_and_key })
    }

    /// What a renewal must pass beyond [`Spec::build`]'s checks, as
    /// `--check-config` requires of the pair: the certificate's identity is
    /// `host_id`, and it is valid `now` (notBefore <= now < notAfter). A
    /// renewal for another host or not yet (no longer) valid keeps the pair
    /// in use instead of cutting the host off.
    fn renewable(&self, m: &Material, now: std::time::SystemTime) -> Result<(), SetupError> {
        let (Some((cert, _)), Some((pem, _))) = (&self.cert_and_key, &m.cert_and_key) else {
            return Ok(());
        };
        let bad =
            |why: String| self.setup("receiver.cert_file", format!("{}: {why}", cert.display()));
        let der = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or_else(|| bad("contains no PEM certificate".into()))?
            .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        let (_, c) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("unparsable certificate: {e}")))?;
        let identity = labship_protocol::identity::host_id(&c).map_err(bad)?;
        if identity != self.host_id {
            return Err(bad(format!(
                "the renewed certificate is for {identity:?}, not this host_id {:?}",
                self.host_id
            )));
        }
        let now_s = now
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let (from, until) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        if now_s < from {
            return Err(bad(format!(
                "the renewed certificate is not valid before {} (notBefore)",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(from.max(0) as u64)
                )
            )));
        }
        if now_s >= until {
            return Err(bad(format!(
                "the renewed certificate expired at {} (notAfter)",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(until.max(0) as u64)
                )
            )));
        }
        Ok(())
    }

    /// Checks `m` file by file and builds a client from it.
    fn build(&self, m: &Material) -> Result<reqwest::Client, SetupError> {
        let mut b = reqwest::Client::builder()
            .user_agent(labship_sys::SHIPPER_USER_AGENT)
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_user_timeout(self.stall_timeout)
            .tcp_nodelay(true)
            // A redirect is not the receiver's answer: it is reported, never
            // followed (a HEAD or PUT sent on to wherever it points could
            // take someone else's 200 for a stored archive).
            .redirect(reqwest::redirect::Policy::none());
        if let (Some(ca), Some(pem)) = (&self.ca_file, &m.ca) {
            self.certs_in("receiver.ca_file", ca, pem)?;
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| self.setup("receiver.ca_file", format!("{}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        }
        if let (Some((cert, key)), Some((cert_pem, key_pem))) =
            (&self.cert_and_key, &m.cert_and_key)
        {
            let chain = self.certs_in("receiver.cert_file", cert, cert_pem)?;
            let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
                self.setup(
                    "receiver.key_file",
                    format!("{}: not a PEM private key: {e}", key.display()),
                )
            })?;
            keys_match(chain, der).map_err(|why| {
                self.setup(
                    "receiver.key_file",
                    format!("{} with {}: {why}", key.display(), cert.display()),
                )
            })?;
            let mut pem = cert_pem.clone();
            pem.extend_from_slice(key_pem);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                self.setup(
                    "receiver.cert_file",
                    format!("{} with {}: {e}", cert.display(), key.display()),
                )
            })?;
            b = b.identity(identity);
        }
        b.build().map_err(|e| self.setup("receiver", e.to_string()))
    }

    fn certs_in(
        &self,
        key: &'static str,
        path: &Path,
        pem: &[u8],
    ) -> Result<Vec<CertificateDer<'static>>, SetupError> {
        match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
            Ok(c) if !c.is_empty() => Ok(c),
            Ok(_) => Err(self.setup(
                key,
                format!("{}: contains no PEM certificate", path.display()),
            )),
            Err(e) => Err(self.setup(
                key,
                format!("{}: not PEM certificates: {e}", path.display()),
            )),
        }
    }
}

/// The notAfter of the client certificate in `m`.
fn not_after(m: &Material) -> Option<i64> {
    let (cert, _) = m.cert_and_key.as_ref()?;
    let der = CertificateDer::pem_slice_iter(cert).next()?.ok()?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(c.validity().not_after.timestamp())
}

/// Whether the private key is the certificate's (rustls compares the
/// SubjectPublicKeyInfo). A key it cannot judge passes.
fn keys_match(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(), String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(e) => Err(format!("the key does not belong to the certificate: {e}")),
    }
}
