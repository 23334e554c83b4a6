//! The receiver's TLS: a rustls server config that verifies client certificates
//! against `tls.client_ca_file`, and the host id read from a verified peer
//! certificate (subject CN, or without one the first DNS SAN).
//!
//! rustls does the verification (chain, validity period, clientAuth EKU); this
//! module only loads files, with errors that name the config key, and reads names.

use crate::config::{ConfigError, TlsFiles};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

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
    Ok(certs)
}

/// Builds the rustls server config from the configured files.
///
/// Client certificates are mandatory unless bearer tokens are configured, in
/// which case a client may connect without one and present a token instead.
pub fn server_config(
    config: &Path,
    files: &TlsFiles,
    tokens_enabled: bool,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
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
    let builder = rustls::ServerConfig::builder();
    let builder = match &files.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(config, "tls.client_ca_file", ca)? {
                roots.add(cert).map_err(|e| {
                    ConfigError::new(
                        config,
                        "tls.client_ca_file",
                        format!("{}: {e}", ca.display()),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if tokens_enabled {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| ConfigError::new(config, "tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
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
    Ok(Arc::new(server))
}

/// The host id a verified client certificate names: its subject CN, or without
/// one its first DNS subjectAltName. `Err` carries why none could be read.
pub fn host_from_certificate(der: &CertificateDer<'_>) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable client certificate: {e}"))?;
    if let Some(cn) = cert.subject().iter_common_name().next() {
        return cn
            .as_str()
            .map(str::to_owned)
            .map_err(|e| format!("client certificate CN is not a string: {e}"));
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                return Ok((*dns).to_owned());
            }
        }
    }
    Err("client certificate has neither a subject CN nor a DNS subjectAltName".into())
}
