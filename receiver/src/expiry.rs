//! Certificate expiry: a certificate's notAfter (for the expiry metrics),
//! and the check that makes an expired server certificate or client CA a
//! configuration error and one expiring within 14 days a warning (at start,
//! on a SIGHUP reload and by `receiver --check-config`).

use crate::config::ConfigError;
use rustls_pki_types::CertificateDer;
use std::path::Path;

/// How close to its notAfter a certificate is worth a warning.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// A certificate's notAfter, Unix seconds.
pub fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// An expired certificate is an error naming the file and the date; one
/// that expires within [`EXPIRY_WARNING`] a warning.
pub(crate) fn check_expiry(
    config: &Path,
    key: &str,
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<Option<ConfigError>, ConfigError> {
    let Some(at) = not_after(der) else {
        return Ok(None);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let date = u64::try_from(at).map_or_else(
        |_| at.to_string(),
        |s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        },
    );
    if at <= now {
        return Err(ConfigError::new(
            config,
            key,
            format!(
                "{}: the certificate expired on {date}; install a renewed one, then reload (systemctl reload labship-receiver.service)",
                path.display()
            ),
        ));
    }
    let left = at - now;
    Ok((left < EXPIRY_WARNING.as_secs() as i64).then(|| {
        ConfigError::new(
            config,
            key,
            format!(
                "{}: the certificate expires on {date} (in {} days); install a renewed one, then reload (systemctl reload labship-receiver.service)",
                path.display(),
                left / 86_400
            ),
        )
    }))
}
