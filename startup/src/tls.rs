//! A TLS server configuration (`--tls-cert`/`--tls-key`, or `--tls-self-signed`, in both
//! binaries): a certificate chain and key from PEM files, which SIGHUP reads again
//! ([`CertificateFiles`]), or one generated at start-up for development. rustls on the ring
//! provider. Feature `tls`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

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
    let files = Arc::new(CertificateFiles {
        current: RwLock::new(read_certified_key(cert, key)?),
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
/// refused and the certificate in force stays.
#[derive(Debug)]
pub struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateFiles {
    /// Reads the files again, without putting the pair in force: a reload checks everything
    /// first and [`Self::install`]s it only when the whole new configuration is valid.
    pub fn read_again(&self) -> Result<FreshCertificate, TlsError> {
        read_certified_key(&self.cert, &self.key).map(FreshCertificate)
    }

    /// Puts a pair [`Self::read_again`] read in force: new handshakes use it.
    pub fn install(&self, fresh: FreshCertificate) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh.0;
        tracing::info!(cert = %self.cert.display(), "certificate reloaded");
    }

    /// Reads the files again; on success, new handshakes use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.install(self.read_again()?);
        Ok(())
    }
}

/// A certificate chain and key read again from their files, not yet in force.
#[derive(Debug)]
pub struct FreshCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
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

fn read_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(certs, key, &provider)?))
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
