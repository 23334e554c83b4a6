//! A throwaway PKI per test: a CA, a server certificate for 127.0.0.1 and
//! localhost, and client certificates per host (also expired, not-yet-valid,
//! serverAuth-only and rogue-CA variants for the security tests), and CRLs
//! from the CA revoking any of them.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A certificate and key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate's serial number (what a CRL names).
    pub serial: Vec<u8>,
}

/// What a client certificate should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Good,
    Expired,
    /// Valid now, expiring in five days.
    ExpiresSoon,
    NotYetValid,
    ServerAuthOnly,
    /// No CN; the host id is carried as the first DNS SAN.
    SanOnly,
}

pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub server: Issued,
    /// The next serial number this CA gives out.
    next_serial: AtomicU64,
    /// The next CRL number.
    next_crl: AtomicU64,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA cert");
    (Issuer::new(params, key), cert.pem())
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let (issuer, ca_pem) = ca("labship test CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write CA");
        let mut pki = Self {
            dir: dir.to_owned(),
            issuer,
            ca_pem,
            ca_file,
            server: Issued {
                cert_pem: String::new(),
                key_pem: String::new(),
                cert_file: PathBuf::new(),
                key_file: PathBuf::new(),
                serial: Vec::new(),
            },
            next_serial: AtomicU64::new(0x1000),
            next_crl: AtomicU64::new(1),
        };
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "labship-receiver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        pki.server = pki.sign("receiver", params);
        pki
    }

    /// Another server certificate for 127.0.0.1 and localhost from this CA
    /// (a renewal), written as `<name>.pem`/`<name>.key`, valid until the
    /// date `(year, month, day)` (from 2020-01-01).
    pub fn server_until(&self, name: &str, not_after: (i32, u8, u8)) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "labship-receiver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        let (y, m, d) = not_after;
        params.not_after = rcgen::date_time_ymd(y, m, d);
        self.sign(name, params)
    }

    fn sign(&self, name: &str, mut params: CertificateParams) -> Issued {
        let serial = self
            .next_serial
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let mut issued = write(&self.dir, name, cert.pem(), key.serialize_pem());
        issued.serial = serial.to_vec();
        issued
    }

    /// A PEM CRL from this CA revoking `revoked`, current (issued 2020, next
    /// update 2090).
    pub fn crl(&self, revoked: &[&Issued]) -> String {
        self.crl_until(revoked, (2090, 1, 1))
    }

    /// A PEM CRL from this CA revoking `revoked`, whose nextUpdate is the
    /// date `(year, month, day)`.
    pub fn crl_until(&self, revoked: &[&Issued], next_update: (i32, u8, u8)) -> String {
        let (y, m, d) = next_update;
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(y, m, d),
            crl_number: SerialNumber::from(self.next_crl.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|i| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&i.serial),
                    revocation_time: rcgen::date_time_ymd(2020, 1, 2),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .expect("sign CRL")
    }

    /// A client certificate for `host` signed by this CA.
    pub fn client(&self, host: &str) -> Issued {
        self.client_variant(host, Variant::Good)
    }

    pub fn client_variant(&self, host: &str, variant: Variant) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        match variant {
            Variant::SanOnly => {
                // rcgen's default DN has a CN; a SAN-only certificate needs none.
                params.distinguished_name = rcgen::DistinguishedName::new();
                params
                    .subject_alt_names
                    .push(SanType::DnsName(host.try_into().expect("dns name")));
            }
            _ => params.distinguished_name.push(DnType::CommonName, host),
        }
        params.extended_key_usages = vec![if variant == Variant::ServerAuthOnly {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        match variant {
            Variant::Expired => {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            Variant::ExpiresSoon => {
                // rcgen takes calendar dates: today's plus five days.
                let soon =
                    std::time::SystemTime::now() + std::time::Duration::from_secs(5 * 86_400);
                let day = humantime::format_rfc3339_seconds(soon).to_string();
                let n = |r: std::ops::Range<usize>| day[r].parse().expect("date digits");
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(n(0..4), n(5..7) as u8, n(8..10) as u8);
            }
            Variant::NotYetValid => {
                params.not_before = rcgen::date_time_ymd(2090, 1, 1);
                params.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }
            _ => {}
        }
        self.sign(&format!("client-{host}-{variant:?}"), params)
    }

    /// The PEM certificate of another, unrelated CA named `name` (for a
    /// client CA bundle with more than one CA).
    pub fn other_ca_pem(name: &str) -> String {
        ca(name).1
    }

    /// A client certificate for `host` from a CA nobody trusts.
    pub fn rogue_client(&self, host: &str) -> Issued {
        let (issuer, _) = ca("rogue CA");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        params.serial_number = Some(SerialNumber::from(1u64));
        let cert = params.signed_by(&key, &issuer).expect("sign");
        write(
            &self.dir,
            &format!("rogue-{host}"),
            cert.pem(),
            key.serialize_pem(),
        )
    }
}

fn write(dir: &Path, name: &str, cert_pem: String, key_pem: String) -> Issued {
    let cert_file = dir.join(format!("{name}.pem"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, &cert_pem).expect("write cert");
    std::fs::write(&key_file, &key_pem).expect("write key");
    Issued {
        cert_pem,
        key_pem,
        cert_file,
        key_file,
        serial: Vec::new(),
    }
}
