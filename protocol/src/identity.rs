//! Which host a client certificate names (CONTRACT §4): its subject CN, or
//! without one its first DNS subjectAltName. The receiver authenticates by
//! it; the shipper's `--check-config` checks `host_id` against it.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The host id `cert` names; `Err` says why none can be read.
pub fn host_id(cert: &X509Certificate<'_>) -> Result<String, String> {
    if let Some(cn) = cert.subject().iter_common_name().next() {
        return cn
            .as_str()
            .map(str::to_owned)
            .map_err(|e| format!("client certificate CN is not a string: {e}"));
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return Ok((*dns).to_owned());
            }
        }
    }
    Err("client certificate has neither a subject CN nor a DNS subjectAltName".into())
}
