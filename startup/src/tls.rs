//! A TLS server configuration (`--tls-cert`/`--tls-key`, or `--tls-self-signed`, in both
//! binaries): a certificate chain and key from PEM files, which SIGHUP reads again
//! ([`CertificateFiles`]), or one generated at start-up for development. rustls on the ring
//! provider. What a certificate says about itself ([`CertificateFacts`]: validity, names) is
//! logged when it is loaded, with a warning when it is not valid now or soon. Feature `tls`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("certificate {path}: {message}")]
    Certificate {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("private key {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Installs the ring crypto provider as the process default (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS server configuration from PEM files, and the handle that reads them again
/// ([`CertificateFiles::read_again`] and [`CertificateFiles::install`], on SIGHUP).
pub fn from_pem_files(
    cert: &Path,
    key: &Path,
    alpn: Vec<Vec<u8>>,
) -> Result<(Arc<ServerConfig>, Arc<CertificateFiles>), TlsError> {
    install_crypto_provider();
    let loaded = read_certified_key(cert, key)?;
    loaded.log(cert, "certificate loaded", SystemTime::now());
    let files = Arc::new(CertificateFiles {
        current: RwLock::new(loaded),
        cert: cert.to_owned(),
        key: key.to_owned(),
    });
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&files) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = alpn;
    Ok((Arc::new(config), files))
}

/// A certificate chain and key read from PEM files, which can be read again: new handshakes get
/// the certificate in force, connections already open keep the one they started with. A pair
/// that does not load (unreadable, not PEM, a key that does not match the certificate) is
/// refused and the certificate in force stays. One that loads is put in force whatever its
/// dates and names say (an expired certificate is no worse than the one it replaces, which
/// is often as old): those are logged, with a warning when it is not valid now or expires
/// within [`EXPIRY_WARNING`].
#[derive(Debug)]
pub struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

impl CertificateFiles {
    /// Reads the files again, without putting the pair in force: a reload checks everything
    /// first and [`Self::install`]s it only when the whole new configuration is valid.
    pub fn read_again(&self) -> Result<FreshCertificate, TlsError> {
        read_certified_key(&self.cert, &self.key).map(FreshCertificate)
    }

    /// Puts a pair [`Self::read_again`] read in force: new handshakes use it.
    pub fn install(&self, fresh: FreshCertificate) {
        fresh
            .0
            .log(&self.cert, "certificate reloaded", SystemTime::now());
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh.0;
    }

    /// The notAfter of the certificate in force (`None` when its leaf could not be parsed as
    /// X.509, which rustls does not require).
    pub fn not_after(&self) -> Option<SystemTime> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.facts.as_ref().map(|facts| facts.not_after)
    }

    /// Reads the files again; on success, new handshakes use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.install(self.read_again()?);
        Ok(())
    }
}

/// A certificate chain and key read again from their files, not yet in force.
#[derive(Debug)]
pub struct FreshCertificate(Loaded);

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key,
        ))
    }
}

/// How long before its notAfter a certificate that is loaded draws a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A pair read from the files, and what its leaf says about itself.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    facts: Option<CertificateFacts>,
}

impl Loaded {
    /// Logs `what` (info) with the leaf's names and dates, or a warning when it is not valid at
    /// `now` or expires within [`EXPIRY_WARNING`] of it.
    fn log(&self, cert: &Path, what: &str, now: SystemTime) {
        let cert = cert.display();
        let Some(facts) = &self.facts else {
            tracing::warn!(%cert, "{what}; its leaf is not X.509 this server can read: dates and names unknown");
            return;
        };
        let names = facts.names.join(",");
        let not_after = unix_seconds(facts.not_after);
        match facts.fitness(now) {
            Fitness::Valid => tracing::info!(%cert, %names, not_after, "{what}"),
            unfit => {
                tracing::warn!(%cert, %names, not_after, "{what}, but it {}", unfit.describe())
            }
        }
    }
}

/// What a leaf certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
    /// Its subject alternative names: DNS names as written, lowercased; IP addresses.
    pub names: Vec<String>,
}

/// Whether a certificate can serve now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fitness {
    /// Valid now, and for longer than [`EXPIRY_WARNING`].
    Valid,
    /// Valid now, but not for [`EXPIRY_WARNING`] more.
    ExpiresSoon,
    /// Past its notAfter: clients refuse it.
    Expired,
    /// Before its notBefore: clients refuse it.
    NotYetValid,
}

impl Fitness {
    fn describe(self) -> &'static str {
        match self {
            Self::Valid => "is valid",
            Self::ExpiresSoon => "expires within 14 days: renew it",
            Self::Expired => "has EXPIRED: clients refuse it",
            Self::NotYetValid => "is NOT YET VALID: clients refuse it",
        }
    }
}

impl CertificateFacts {
    /// The facts of `leaf` (DER); an error for what is not X.509.
    pub fn of(leaf: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
        let time = |t: x509_parser::time::ASN1Time| {
            let seconds = u64::try_from(t.timestamp()).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
        };
        let names = match parsed.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    GeneralName::IPAddress(ip) => ip_name(ip),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        Ok(Self {
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
            names,
        })
    }

    /// Whether it can serve at `now`.
    pub fn fitness(&self, now: SystemTime) -> Fitness {
        if now < self.not_before {
            Fitness::NotYetValid
        } else if now > self.not_after {
            Fitness::Expired
        } else if now + EXPIRY_WARNING > self.not_after {
            Fitness::ExpiresSoon
        } else {
            Fitness::Valid
        }
    }
}

/// An IP subject alternative name as text.
fn ip_name(octets: &[u8]) -> Option<String> {
    match octets.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(octets).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(octets).ok()?).to_string()),
        _ => None,
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The certificates of a PEM file (a chain, or CAs to trust): refused when the file cannot be
/// read, is not PEM, or holds no `CERTIFICATE` block.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let refused = |message: String| TlsError::Certificate {
        path: path.display().to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| refused(e.to_string()))?;
    if certs.is_empty() {
        return Err(refused("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn read_certified_key(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let certs = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let facts = CertificateFacts::of(&certs[0]).ok();
    let provider = rustls::crypto::ring::default_provider();
    Ok(Loaded {
        key: Arc::new(CertifiedKey::from_der(certs, key, &provider)?),
        facts,
    })
}

/// A certificate for `names` generated now, and its TLS configuration. Returns the
/// certificate PEM too, so it can be printed or handed to a test client.
pub fn self_signed(
    names: Vec<String>,
    alpn: Vec<Vec<u8>>,
) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names)?;
    let pem = generated.cert.pem();
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).map_err(|e| {
        TlsError::Key {
            path: "<generated>".into(),
            message: e.to_owned(),
        }
    })?;
    Ok((build(vec![generated.cert.der().clone()], key, alpn)?, pem))
}

fn build(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed leaf for `names`, valid from `not_before` to `not_after` (Unix seconds).
    fn leaf(names: &[&str], not_before: u64, not_after: u64) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_before);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn reads_dates_and_names_dns_and_ip() {
        let facts = CertificateFacts::of(&leaf(
            &["Rtc.Example", "127.0.0.1", "::1"],
            1_000,
            2_000_000,
        ))
        .unwrap();
        assert_eq!(facts.not_before, at(1_000));
        assert_eq!(facts.not_after, at(2_000_000));
        assert_eq!(facts.names, ["rtc.example", "127.0.0.1", "::1"]);
        assert!(CertificateFacts::of(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }

    #[test]
    fn fitness_warns_before_expiry_and_outside_validity() {
        let day = 24 * 3600;
        let facts = CertificateFacts::of(&leaf(&["a.example"], 100 * day, 200 * day)).unwrap();
        assert_eq!(facts.fitness(at(99 * day)), Fitness::NotYetValid);
        assert_eq!(facts.fitness(at(100 * day)), Fitness::Valid);
        assert_eq!(facts.fitness(at(186 * day - 1)), Fitness::Valid);
        assert_eq!(facts.fitness(at(187 * day)), Fitness::ExpiresSoon);
        assert_eq!(facts.fitness(at(200 * day)), Fitness::ExpiresSoon);
        assert_eq!(facts.fitness(at(200 * day + 1)), Fitness::Expired);
    }
}
