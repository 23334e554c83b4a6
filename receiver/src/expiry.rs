//! Certificate expiry: a certificate's notAfter (for the expiry metrics),
//! and the check that makes an expired server certificate or client CA a
//! configuration error and one expiring within 14 days a warning (at start,
//! on a SIGHUP reload and by `receiver --check-config`).

use crate::config::ConfigError;
use labship_protocol::identity::{self, Verdict};
use rustls_pki_types::CertificateDer;
use std::path::Path;

/// A certificate's notAfter, Unix seconds.
pub fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// An expired certificate is an error naming the file, the date and the
/// subject; one that expires within
/// [`labship_protocol::identity::EXPIRY_WARNING`] a warning.
pub(crate) fn check_expiry(
    config: &Path,
    key: &str,
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<Option<ConfigError>, ConfigError> {
    let Ok(expiry) = identity::expiry_of_der(der, std::time::SystemTime::now()) else {
        return Ok(None);
    };
    let (date, subject) = (expiry.until(), &expiry.subject);
    let renew = "install a renewed one, then reload (systemctl reload labship-receiver.service)";
    match expiry.verdict {
        Verdict::Expired => Err(ConfigError::new(
            config,
            key,
            format!(
                "{}: the certificate expired on {date} ({subject}); {renew}",
                path.display()
            ),
        )),
        Verdict::ExpiresSoon { left } => Ok(Some(ConfigError::new(
            config,
            key,
            format!(
                "{}: the certificate expires on {date} (in {} days; {subject}); {renew}",
                path.display(),
                left.as_secs() / 86_400
            ),
        ))),
        Verdict::Valid => Ok(None),
    }
}
