//! The receiver's TLS: a rustls server config that verifies client certificates
//! against `tls.client_ca_file` (and the CRLs of `tls.crl_file`), the live
//! config that SIGHUP swaps, and the host id read from a verified peer
//! certificate (subject CN, or without one the first DNS SAN).
//!
//! rustls does the verification (chain, validity period, clientAuth EKU,
//! revocation); this module loads files, with errors that name the config key,
//! reads names, and notes which certificate a refused handshake presented so
//! that `server` can log it beside the peer address.

use crate::config::{ConfigError, TlsFiles};
use crate::expiry::{check_expiry, not_after};
use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

fn load_certs(
    config: &Path,
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::new(
                config,
                key,
                format!("cannot read certificates from {}: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            config,
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|e| {
            ConfigError::new(
                config,
                key,
                format!("{}: unparsable certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(certs)
}

fn load_crls(
    config: &Path,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let err = |why: String| ConfigError::new(config, "tls.crl_file", why);
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(format!("cannot read CRLs from {}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(err(format!(
            "{} holds no PEM CRL (-----BEGIN X509 CRL-----)",
            path.display()
        )));
    }
    for crl in &crls {
        x509_parser::parse_x509_crl(crl)
            .map_err(|e| err(format!("{}: unparsable CRL: {e}", path.display())))?;
    }
    Ok(crls)
}

/// What is valid but worth an operator's attention in the CRLs: a CRL past
/// its nextUpdate (still enforced: its revocations stay true).
fn crl_warnings(
    config: &Path,
    path: &Path,
    crls: &[CertificateRevocationListDer<'static>],
) -> Vec<ConfigError> {
    let warn = |why: String| ConfigError::new(config, "tls.crl_file", why);
    let parsed: Vec<_> = crls
        .iter()
        .filter_map(|c| x509_parser::parse_x509_crl(c).ok().map(|(_, c)| c))
        .collect();
    let now = x509_parser::time::ASN1Time::now();
    let mut out = Vec::new();
    for crl in &parsed {
        if let Some(next) = crl.next_update()
            && next < now
        {
            out.push(warn(format!(
                "{}: the CRL of {} passed its nextUpdate ({next}); its revocations still apply, but publish a fresh CRL",
                path.display(),
                crl.issuer()
            )));
        }
    }
    out
}

/// Every client CA needs its CRL: rustls refuses a certificate whose
/// revocation status is unknown, so a CA left out of `crl_file` (a `cat` of
/// CRLs forgotten during a CA change) would lock out every host it issued.
/// That is refused here, at start, by `--check-config` and on a reload
/// (which then keeps the material in force), instead of at every handshake.
fn check_crl_coverage(
    config: &Path,
    path: &Path,
    crls: &[CertificateRevocationListDer<'static>],
    cas: &[CertificateDer<'static>],
) -> Result<(), ConfigError> {
    let parsed: Vec<_> = crls
        .iter()
        .filter_map(|c| x509_parser::parse_x509_crl(c).ok().map(|(_, c)| c))
        .collect();
    for ca in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(ca) else {
            continue;
        };
        if !parsed
            .iter()
            .any(|crl| crl.issuer().as_raw() == ca.subject().as_raw())
        {
            return Err(ConfigError::new(
                config,
                "tls.crl_file",
                format!(
                    "{} holds no CRL from {}, a CA in tls.client_ca_file: every client certificate it issued would be refused (unknown revocation status); add that CA's CRL to the file (cat ca1-crl.pem ca2-crl.pem > {})",
                    path.display(),
                    ca.subject(),
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A server config built from the files, with what is worth a warning.
#[derive(Debug)]
pub struct Loaded {
    pub config: Arc<rustls::ServerConfig>,
    pub warnings: Vec<ConfigError>,
    /// The server certificate's notAfter, Unix seconds.
    pub server_not_after: Option<i64>,
}

/// Builds the rustls server config from the configured files.
///
/// Client certificates are mandatory unless bearer tokens are configured, in
/// which case a client may connect without one and present a token instead.
/// With `tls.crl_file`, every certificate of a client's chain (but the CA
/// itself) is checked against the CRLs; one whose issuer has no CRL there is
/// refused (fail closed).
pub fn server_config(
    config: &Path,
    files: &TlsFiles,
    tokens_enabled: bool,
) -> Result<Loaded, ConfigError> {
    let chain = load_certs(config, "tls.cert_file", &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| {
        ConfigError::new(
            config,
            "tls.key_file",
            format!(
                "cannot read a PEM private key from {}: {e}",
                files.key_file.display()
            ),
        )
    })?;
    let mut warnings = Vec::new();
    warnings.extend(check_expiry(
        config,
        "tls.cert_file",
        &files.cert_file,
        &chain[0],
    )?);
    let server_not_after = not_after(&chain[0]);
    let builder = rustls::ServerConfig::builder();
    let builder = match &files.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = load_certs(config, "tls.client_ca_file", ca)?;
            // Every CA expired: no host can be verified (an error). One
            // expired beside valid ones (a CA change under way): a warning.
            let (mut expired, mut soon) = (Vec::new(), Vec::new());
            for cert in &cas {
                match check_expiry(config, "tls.client_ca_file", ca, cert) {
                    Ok(w) => soon.extend(w),
                    Err(e) => expired.push(e),
                }
            }
            if expired.len() == cas.len() {
                return Err(expired.remove(0));
            }
            warnings.extend(expired.into_iter().chain(soon));
            for cert in &cas {
                roots.add(cert.clone()).map_err(|e| {
                    ConfigError::new(
                        config,
                        "tls.client_ca_file",
                        format!("{}: {e}", ca.display()),
                    )
                })?;
            }
            let mut verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            if let Some(path) = &files.crl_file {
                let crls = load_crls(config, path)?;
                check_crl_coverage(config, path, &crls, &cas)?;
                warnings.extend(crl_warnings(config, path, &crls));
                verifier = verifier.with_crls(crls);
            }
            if tokens_enabled {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| {
                let key = match e {
                    rustls::server::VerifierBuilderError::InvalidCrl(_) => "tls.crl_file",
                    _ => "tls.client_ca_file",
                };
                ConfigError::new(config, key, e.to_string())
            })?;
            builder.with_client_cert_verifier(Arc::new(Noting(verifier)))
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|e| {
        ConfigError::new(
            config,
            "tls.key_file",
            format!("does not match tls.cert_file or is unusable: {e}"),
        )
    })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(server),
        warnings,
        server_not_after,
    })
}

/// The server config new handshakes use. SIGHUP rebuilds it from the files
/// ([`LiveTls::reload`]), taking the `[tls]` paths afresh from receiver.toml
/// (an operator adds `crl_file` and reloads); a bad new file keeps the old
/// material. Connections already up keep the config they started with.
#[derive(Debug)]
pub struct LiveTls {
    config_file: PathBuf,
    tokens_enabled: bool,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The notAfter of the server certificate in force (0: unreadable).
    server_not_after: AtomicI64,
}

impl LiveTls {
    /// Loads the files; returns the live config and its warnings.
    pub fn load(
        config_file: &Path,
        files: &TlsFiles,
        tokens_enabled: bool,
    ) -> Result<(Self, Vec<ConfigError>), ConfigError> {
        let loaded = server_config(config_file, files, tokens_enabled)?;
        Ok((
            Self {
                config_file: config_file.to_owned(),
                tokens_enabled,
                current: RwLock::new(loaded.config),
                server_not_after: AtomicI64::new(loaded.server_not_after.unwrap_or(0)),
            },
            loaded.warnings,
        ))
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        // A poisoned lock only means a reader panicked; the Arc is intact.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads receiver.toml's `[tls]` paths, then the certificate, key,
    /// client CA and CRLs they name; swaps them in only when all load.
    /// Returns the new material's warnings. A receiver.toml that no longer
    /// loads is an error (nothing changes); so is one that drops `[tls]` or
    /// changes how hosts authenticate, which only a restart may do.
    pub fn reload(&self) -> Result<Vec<ConfigError>, ConfigError> {
        let fresh = crate::config::Config::load(&self.config_file)?;
        let restart = |why: &str| {
            ConfigError::new(
                &self.config_file,
                "tls",
                format!(
                    "{why}: restart the receiver to apply it (systemctl restart labship-receiver.service); the material in force is kept"
                ),
            )
        };
        let Some(files) = fresh.tls else {
            return Err(restart("[tls] was removed"));
        };
        if fresh.tokens_file.is_some() != self.tokens_enabled {
            return Err(restart("auth.tokens_file was set or cleared"));
        }
        let loaded = server_config(&self.config_file, &files, self.tokens_enabled)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded.config;
        self.server_not_after
            .store(loaded.server_not_after.unwrap_or(0), Ordering::Relaxed);
        Ok(loaded.warnings)
    }

    /// The notAfter of the server certificate in force, Unix seconds.
    pub fn server_not_after(&self) -> i64 {
        self.server_not_after.load(Ordering::Relaxed)
    }
}

/// The client certificate a refused handshake presented.
#[derive(Debug, Clone)]
pub struct RefusedCert {
    /// The host id it names, or why none could be read.
    pub host: String,
    /// Serial number, hex.
    pub serial: String,
}

tokio::task_local! {
    static REFUSED: Arc<OnceLock<RefusedCert>>;
}

/// Runs a handshake so that a client certificate refused during it can be
/// read afterwards from the returned cell (the verifier runs synchronously
/// inside the handshake's polls, in this task).
pub async fn noting_refusals<F: Future>(handshake: F) -> (F::Output, Option<RefusedCert>) {
    let cell = Arc::new(OnceLock::new());
    let out = REFUSED.scope(cell.clone(), handshake).await;
    (out, cell.get().cloned())
}

/// The webpki verifier, noting the certificate it refuses.
#[derive(Debug)]
struct Noting(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Noting {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|_| {
                let serial = x509_parser::parse_x509_certificate(end_entity)
                    .map(|(_, c)| c.raw_serial_as_string())
                    .unwrap_or_default();
                let host = host_from_certificate(end_entity).unwrap_or_else(|e| e);
                let _ = REFUSED.try_with(|cell| cell.set(RefusedCert { host, serial }));
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

/// Why a handshake failed, from one table ([`classify`]): the bounded
/// `reason` of `labship_tls_handshake_failures_total{reason}` (one of
/// [`crate::fleet::HANDSHAKE_FAILURE_REASONS`]) and, when the receiver
/// refused a client certificate, the finer name logged with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    /// `revoked`, `unknown_issuer`, `crl_unusable`, … for a refused client
    /// certificate; `None` for anything else.
    pub refusal: Option<&'static str>,
}

/// Classifies a failed handshake. A client's certificate alert
/// (`unknown_ca`, `bad_certificate`, `certificate_expired`, …) is
/// `server_cert_rejected`: the fleet refuses the server certificate, as
/// after a rotation to a certificate its CA file does not cover. The
/// receiver's own CRLs failing (unusable, expired, no status for the
/// issuer) is `crl`, not the client's `bad_certificate`.
pub fn classify(e: &std::io::Error) -> Failure {
    use rustls::AlertDescription as A;
    use rustls::CertificateError as C;
    let failure = |reason, refusal| Failure { reason, refusal };
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::InvalidData => failure("protocol", None),
            _ => failure("other", None),
        };
    };
    let refused = |reason, name| failure(reason, Some(name));
    match tls {
        rustls::Error::NoCertificatesPresented => refused("no_client_cert", "no_certificate"),
        rustls::Error::InvalidCertRevocationList(_) => refused("crl", "crl_unusable"),
        rustls::Error::InvalidCertificate(c) => match c {
            C::Revoked => refused("revoked", "revoked"),
            C::Expired | C::ExpiredContext { .. } => refused("expired", "expired"),
            C::UnknownRevocationStatus => refused("crl", "unknown_revocation_status"),
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                refused("crl", "expired_revocation_list")
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                refused("bad_certificate", "not_yet_valid")
            }
            C::UnknownIssuer => refused("bad_certificate", "unknown_issuer"),
            C::BadSignature => refused("bad_certificate", "bad_signature"),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                refused("bad_certificate", "wrong_purpose")
            }
            C::BadEncoding => refused("bad_certificate", "bad_encoding"),
            _ => refused("bad_certificate", "invalid_certificate"),
        },
        rustls::Error::AlertReceived(
            A::UnknownCA
            | A::BadCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnsupportedCertificate,
        ) => failure("server_cert_rejected", None),
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::NoApplicationProtocol
        | rustls::Error::AlertReceived(_) => failure("protocol", None),
        _ => failure("other", None),
    }
}

/// The host id a verified client certificate names
/// ([`labship_protocol::identity::host_id`]). `Err` carries why none could be
/// read.
pub fn host_from_certificate(der: &CertificateDer<'_>) -> Result<String, String> {
    peer_identity(der).0
}

/// What a verified client certificate tells about its connection, parsed
/// once: the host id it names (`Err`: why none) and its notAfter (Unix
/// seconds).
pub fn peer_identity(der: &CertificateDer<'_>) -> (Result<String, String>, Option<i64>) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => (
            labship_protocol::identity::host_id(&cert),
            Some(cert.validity().not_after.timestamp()),
        ),
        Err(e) => (Err(format!("unparsable client certificate: {e}")), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_gives_the_metric_reason_and_the_logged_refusal() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let of = |e: E| {
            let f = classify(&std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            (f.reason, f.refusal)
        };
        assert_eq!(
            of(E::AlertReceived(A::UnknownCA)),
            ("server_cert_rejected", None)
        );
        assert_eq!(
            of(E::AlertReceived(A::CertificateExpired)),
            ("server_cert_rejected", None)
        );
        assert_eq!(
            of(E::AlertReceived(A::BadCertificate)),
            ("server_cert_rejected", None)
        );
        assert_eq!(
            of(E::AlertReceived(A::HandshakeFailure)),
            ("protocol", None)
        );
        assert_eq!(
            of(E::InvalidCertificate(C::ExpiredRevocationList)),
            ("crl", Some("expired_revocation_list"))
        );
        assert_eq!(
            of(E::InvalidCertificate(C::UnknownRevocationStatus)),
            ("crl", Some("unknown_revocation_status"))
        );
        assert_eq!(
            of(E::InvalidCertRevocationList(
                rustls::CertRevocationListError::BadSignature
            )),
            ("crl", Some("crl_unusable"))
        );
        assert_eq!(
            of(E::InvalidCertificate(C::UnknownIssuer)),
            ("bad_certificate", Some("unknown_issuer"))
        );
        assert_eq!(
            of(E::NoCertificatesPresented),
            ("no_client_cert", Some("no_certificate"))
        );
        assert_eq!(
            of(E::InvalidCertificate(C::Revoked)),
            ("revoked", Some("revoked"))
        );
        assert_eq!(
            classify(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)).reason,
            "other"
        );
    }
}
