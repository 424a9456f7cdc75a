//! The certificates a peer trusts for TLS: the system CA bundle plus the CA files the user
//! passes ([`PeerOptions::ca`](crate::PeerOptions::ca), `turn_ca`), in one rustls client
//! configuration on the ring provider. Used by `signaling_client` (`wss://` URLs) and
//! `turn_tcp_bridge` (`turns:` relays).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, crypto};

/// System CA bundles, first one found wins (Debian/Ubuntu, Fedora/RHEL, Alpine/OpenSSL).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Why no TLS client configuration could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsRootsError {
    /// A CA file (the system bundle or one passed by the user) could not be read, is not PEM,
    /// or holds no certificate.
    #[error("CA file: {0}")]
    Read(#[from] startup::tls::TlsError),
    /// A CA file passed by the user holds no certificate rustls can use: trusting nothing
    /// from it would only show later, as a certificate that is not trusted.
    #[error("{path}: no usable PEM certificate in this CA file")]
    NoCertificate { path: PathBuf },
    /// Nothing to trust: no system CA bundle was found and no CA file was given.
    #[error("no CA certificates to trust: no system CA bundle found and no CA file given")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// A TLS client configuration (ring, safe default protocol versions, no client certificate)
/// trusting the system CA bundle, when there is one, and every certificate of the `extra` PEM
/// files.
pub(crate) fn client_config<'a>(
    extra: impl IntoIterator<Item = &'a Path>,
) -> Result<Arc<ClientConfig>, TlsRootsError> {
    let mut roots = RootCertStore::empty();
    if let Some(system) = system_bundle() {
        add_pem_file(&mut roots, system)?;
    }
    for path in extra {
        if add_pem_file(&mut roots, path)? == 0 {
            return Err(TlsRootsError::NoCertificate {
                path: path.to_owned(),
            });
        }
    }
    if roots.is_empty() {
        return Err(TlsRootsError::NoRoots);
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsRootsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The first system CA bundle that exists.
fn system_bundle() -> Option<&'static Path> {
    SYSTEM_CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|path| path.is_file())
}

/// Adds the certificates of a PEM file to `roots`; returns how many were added.
fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsRootsError> {
    let certs = startup::tls::read_certificates(path)?;
    let (added, ignored) = roots.add_parsable_certificates(certs);
    tracing::debug!(path = %path.display(), added, ignored, "TLS roots");
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_cannot_be_used_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("peer-tls-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = client_config([missing.as_path()]).unwrap_err();
        assert!(matches!(err, TlsRootsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config([empty.as_path()]).unwrap_err();
        assert!(matches!(err, TlsRootsError::Read(_)), "{err}");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_extra_files_the_system_bundle_is_enough() {
        match system_bundle() {
            Some(_) => assert!(client_config([]).is_ok()),
            None => assert!(matches!(client_config([]), Err(TlsRootsError::NoRoots))),
        }
    }
}
