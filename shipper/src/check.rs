//! `shipper --check-config` (CONTRACT §11): the daemon's own loader
//! ([`Config`]), every file the config names read and judged (the
//! certificate and key match, `host_id` equals the certificate's identity,
//! no certificate has expired (an error) or expires within 14 days (a
//! warning), an ops listener (`[ops] listen`) beyond loopback (a
//! warning)), then the daemon's own client setup ([`Uploader::new`]). Nothing
//! is written, no directory created, no connection made.
//!
//! The [`Report`] also carries the resolved [`Paths`] whenever the file is
//! TOML, valid or not: the installer asks for `data_dir` this way
//! (`--print data_dir`) instead of reading the TOML itself.

use crate::config::{Config, Paths};
use crate::upload::Uploader;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use labship_protocol::identity::{self, Verdict};

/// One finding, named by the config key it is about (`""`: the file itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// A certificate the config names, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// `receiver.ca_file` or `receiver.cert_file`.
    pub key: &'static str,
    pub path: PathBuf,
    /// The host id the receiver would take from it (client certificate only).
    pub identity: Option<String>,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// What `--check-config` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub file: PathBuf,
    /// `None` when the file could not be read or is not TOML.
    pub paths: Option<Paths>,
    /// From the valid config only.
    pub host_id: Option<String>,
    pub url: Option<String>,
    /// `limits.zstd_workers` as written and the packing threads it means
    /// here (0 resolved to this machine's cores), from the valid config.
    pub packing: Option<(u32, u32)>,
    /// `limits.resumable_min_bytes`, from the valid config.
    pub resumable_min_bytes: Option<u64>,
    pub certificates: Vec<Certificate>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub fn valid(&self) -> bool {
        self.errors.is_empty()
    }

    /// 0 valid (warnings allowed), 2 invalid.
    pub fn exit_code(&self) -> u8 {
        if self.valid() { 0 } else { 2 }
    }

    /// The `--json` document.
    pub fn json(&self, now: SystemTime) -> Value {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let problems = |v: &[Problem]| {
            v.iter()
                .map(|p| json!({"key": p.key, "message": p.message}))
                .collect::<Vec<_>>()
        };
        json!({
            "config": self.file.display().to_string(),
            "valid": self.valid(),
            "exit_code": self.exit_code(),
            "host_id": self.host_id,
            "receiver_url": self.url,
            "zstd_workers": self.packing.map(|(w, _)| w),
            "packing_threads": self.packing.map(|(_, n)| n),
            "resumable_min_bytes": self.resumable_min_bytes,
            "paths": self.paths.as_ref().map(|p| json!({
                "data_dir": p.data_dir.display().to_string(),
                "ca_file": path(&p.ca_file),
                "cert_file": path(&p.cert_file),
                "key_file": path(&p.key_file),
                "token_file": path(&p.token_file),
            })),
            "certificates": self.certificates.iter().map(|c| json!({
                "key": c.key,
                "path": c.path.display().to_string(),
                "identity": c.identity,
                "not_after": rfc3339(c.not_after),
                "expires_in_s": c.not_after - epoch_s(now),
            })).collect::<Vec<_>>(),
            "errors": problems(&self.errors),
            "warnings": problems(&self.warnings),
        })
    }

    /// The human form: `ok: …` or `invalid: …` lines, then the warnings.
    pub fn human(&self) -> String {
        let file = self.file.display();
        let mut out = String::new();
        let line = |p: &Problem| {
            if p.key.is_empty() {
                format!("{file}: {}", p.message)
            } else {
                format!("{file}: {}: {}", p.key, p.message)
            }
        };
        if self.valid() {
            out.push_str(&format!(
                "ok: {file} is valid (host {}, receiver {}, data_dir {})\n",
                self.host_id.as_deref().unwrap_or("?"),
                self.url.as_deref().unwrap_or("?"),
                self.paths
                    .as_ref()
                    .map_or("?".into(), |p| p.data_dir.display().to_string()),
            ));
            if let Some((workers, threads)) = self.packing {
                let per_core = if workers == 0 {
                    " (0 = one per core)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "packing: limits.zstd_workers = {workers}{per_core}: {threads} compression thread(s)\n"
                ));
            }
            if let Some(min) = self.resumable_min_bytes {
                out.push_str(&format!(
                    "uploads: limits.resumable_min_bytes = {min}: archives of {min} bytes and more resume after a cut (CONTRACT §9), smaller ones go by one PUT\n"
                ));
            }
        }
        for e in &self.errors {
            out.push_str(&format!("invalid: {}\n", line(e)));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {}\n", line(w)));
        }
        out
    }
}

use identity::{rfc3339, unix_seconds as epoch_s};

/// Checks the config at `path` as the daemon would load it, at time `now`.
pub fn check(path: &Path, now: SystemTime) -> Report {
    let mut r = Report {
        file: path.to_owned(),
        paths: None,
        host_id: None,
        url: None,
        packing: None,
        resumable_min_bytes: None,
        certificates: Vec::new(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            r.error("", format!("cannot read config: {e}"));
            return r;
        }
    };
    r.paths = Paths::parse(path, &text).ok();
    let config = match Config::parse(path, &text) {
        Ok(c) => c,
        Err(e) => {
            r.error(&e.key, e.why);
            return r;
        }
    };
    r.host_id = Some(config.host_id.to_string());
    r.url = Some(config.url.to_string());
    if let Some(listen) = config.ops_listen
        && !listen.ip().is_loopback()
    {
        r.warning(
            "ops.listen",
            format!(
                "{listen} is not a loopback address: /metrics (host id, backlog, certificate expiry) is served without authentication to whoever can reach it; prefer \"127.0.0.1:{}\" and let a local agent or an SSH tunnel reach it, or firewall the port",
                listen.port()
            ),
        );
    }
    r.packing = Some((config.zstd_workers, config.packing_threads()));
    r.resumable_min_bytes = Some(config.resumable_min_bytes);
    if let Some(ca) = &config.ca_file {
        for der in pem_certificates(ca) {
            r.certificate("receiver.ca_file", ca, &der, now, false);
        }
    }
    if let Some((cert, key)) = &config.auth.cert_and_key {
        let chain = pem_certificates(cert);
        if let Some(leaf) = chain.first() {
            if let Some(identity) = r.certificate("receiver.cert_file", cert, leaf, now, true)
                && identity != config.host_id.as_str()
            {
                r.error(
                    "host_id",
                    format!(
                        "{:?}, but the certificate {} names host {identity:?}: the receiver would know this host as {identity:?} and refuse every upload (403); fix host_id, or install this host's own certificate",
                        config.host_id.as_str(),
                        cert.display()
                    ),
                );
            }
            r.key_matches(cert, key, chain);
        }
    }
    if let Some(token) = &config.auth.token_file
        && std::fs::read_to_string(token).is_ok_and(|t| t.trim().is_empty())
    {
        r.error(
            "receiver.token_file",
            format!("{} is empty", token.display()),
        );
    }
    // Last, the daemon's own client setup: whatever the checks above could
    // not parse, it names with its key (they skip what they cannot read).
    if r.errors.is_empty()
        && let Err(e) = Uploader::new(&config)
    {
        r.error(e.key, e.why);
    }
    r
}

/// The certificates in a PEM file (none when it is not PEM: [`Uploader::new`]
/// names that).
fn pem_certificates(path: &Path) -> Vec<CertificateDer<'static>> {
    std::fs::read(path)
        .map(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect()
        })
        .unwrap_or_default()
}

impl Report {
    fn error(&mut self, key: &str, message: String) {
        self.errors.push(Problem {
            key: key.to_owned(),
            message,
        });
    }

    fn warning(&mut self, key: &str, message: String) {
        self.warnings.push(Problem {
            key: key.to_owned(),
            message,
        });
    }

    /// Records one certificate and judges its expiry; returns its identity
    /// when `client`.
    fn certificate(
        &mut self,
        key: &'static str,
        path: &Path,
        der: &CertificateDer<'_>,
        now: SystemTime,
        client: bool,
    ) -> Option<String> {
        let cert = match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => c,
            Err(e) => {
                self.error(
                    key,
                    format!("{}: unparsable certificate: {e}", path.display()),
                );
                return None;
            }
        };
        let identity = if client {
            match labship_protocol::identity::host_id(&cert) {
                Ok(id) => Some(id),
                Err(why) => {
                    self.error(key, format!("{}: {why}", path.display()));
                    None
                }
            }
        } else {
            None
        };
        let expiry = identity::expiry(&cert, now);
        let (subject, until, not_after) = (&expiry.subject, expiry.until(), expiry.not_after);
        match expiry.verdict {
            Verdict::Expired => self.error(
                key,
                format!("{} ({subject}) expired at {until}", path.display()),
            ),
            Verdict::ExpiresSoon { left } => self.warning(
                key,
                format!(
                    "{} ({subject}) expires in {} ({until})",
                    path.display(),
                    humantime::format_duration(left)
                ),
            ),
            Verdict::Valid => {}
        }
        self.certificates.push(Certificate {
            key,
            path: path.to_owned(),
            identity: identity.clone(),
            not_after,
        });
        identity
    }

    /// The key's public half is the certificate's (rustls compares the
    /// SubjectPublicKeyInfo); a mismatch fails every TLS handshake.
    fn key_matches(&mut self, cert: &Path, key: &Path, chain: Vec<CertificateDer<'static>>) {
        let Some(der) = std::fs::read(key)
            .ok()
            .and_then(|pem| PrivateKeyDer::from_pem_slice(&pem).ok())
        else {
            return; // not PEM: Uploader::new names it
        };
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = match provider.key_provider.load_private_key(der) {
            Ok(k) => k,
            Err(e) => {
                self.error(
                    "receiver.key_file",
                    format!("{}: unusable private key: {e}", key.display()),
                );
                return;
            }
        };
        match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => self
                .warning(
                    "receiver.key_file",
                    format!(
                        "{}: cannot tell whether it matches {}",
                        key.display(),
                        cert.display()
                    ),
                ),
            Err(e) => self.error(
                "receiver.key_file",
                format!(
                    "{} does not belong to the certificate {}: {e}",
                    key.display(),
                    cert.display()
                ),
            ),
        }
    }
}
