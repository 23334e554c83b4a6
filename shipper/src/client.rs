//! The shipper's HTTPS client, and its renewal from disk (CONTRACT §11).
//!
//! [`TlsClient::new`] checks each file the config names on its own (so an
//! error names the right key: reqwest's own errors say "builder error", and
//! an empty CA bundle would silently trust nothing) and builds one reqwest
//! client (rustls, connection reuse). Before every request,
//! [`TlsClient::current`] reads the CA bundle, client certificate and key
//! again (a few kilobytes): when they changed and the new set is usable
//! (PEM, the key belongs to the certificate, and, as `--check-config`
//! requires, the certificate names this `host_id` and is valid now), a new
//! client is built and the next connection presents the renewed
//! certificate, without a restart.
//! A broken new set keeps the previous client and is logged once, naming the
//! files (a half-finished rotation, key not yet written, heals at the next
//! request that finds both).

use crate::config::Config;
use crate::upload::SetupError;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

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
    /// The last set that could not be used (logged once, not retried until
    /// it changes again).
    rejected: Option<Material>,
    /// The files could not be read at the last look (logged once).
    unreadable: bool,
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
        let used = spec.read()?;
        let client = spec.build(&used)?;
        crate::metrics::get().client_certificate(not_after(&used));
        Ok(Self {
            spec,
            state: Mutex::new(State {
                client,
                used,
                rejected: None,
                unreadable: false,
            }),
        })
    }

    /// The client for the next request: rebuilt first when the TLS files
    /// changed and the new ones are usable.
    pub fn current(&self) -> reqwest::Client {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match self.spec.read() {
            Ok(m) => m,
            Err(e) => {
                // Mid-rotation (a file renamed away) or a permission
                // mistake: keep going with what works; said once.
                if !state.unreadable {
                    tracing::error!(event = "client_tls_reload_failed", error = %e, "cannot read the renewed TLS files; keeping the previous certificate");
                    crate::metrics::get().client_tls_reload_failed();
                    state.unreadable = true;
                }
                return state.client.clone();
            }
        };
        state.unreadable = false;
        if fresh == state.used || state.rejected.as_ref() == Some(&fresh) {
            return state.client.clone();
        }
        let now = std::time::SystemTime::now();
        match self
            .spec
            .renewable(&fresh, now)
            .and_then(|()| self.spec.build(&fresh))
        {
            Ok(client) => {
                tracing::info!(event = "client_tls_reloaded", cert_file = %self.spec.names(), "renewed TLS files in use from the next connection on");
                crate::metrics::get().client_certificate(not_after(&fresh));
                state.client = client;
                state.used = fresh;
                state.rejected = None;
            }
            Err(e) => {
                tracing::error!(event = "client_tls_reload_failed", error = %e, "the renewed TLS files are not usable; keeping the previous certificate until they are fixed");
                crate::metrics::get().client_tls_reload_failed();
                state.rejected = Some(fresh);
            }
        }
        state.client.clone()
    }

    /// The client certificate's notAfter (seconds since the epoch) as in use.
    pub fn not_after(&self) -> Option<i64> {
        not_after(&self.state.lock().unwrap_or_else(|p| p.into_inner()).used)
    }
}

impl Spec {
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
