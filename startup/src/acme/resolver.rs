//! The certificate each TLS handshake gets: a tls-alpn-01 challenge certificate (RFC 8737) to
//! a handshake that offers ALPN `acme-tls/1` for a name being validated, the issued
//! certificate to every other one, and none (the handshake fails) before the first is issued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use super::AcmeError;

/// The ALPN protocol of tls-alpn-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificates of one ACME-managed listener.
#[derive(Debug, Default)]
pub struct AcmeResolver {
    /// The issued certificate in force; `None` until the first arrives.
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Challenge certificates by (lower-case) name, while an order validates them.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeResolver {
    /// Puts `certificate` in force for new handshakes.
    pub(crate) fn set_current(&self, certificate: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(certificate);
    }

    /// Whether a certificate is in force.
    pub fn has_certificate(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Answers validation handshakes for `domain` with a certificate carrying `digest` (the
    /// SHA-256 of the key authorization) until [`Self::clear_challenges`].
    pub(crate) fn add_challenge(&self, domain: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let certificate = challenge_certificate(domain, digest)?;
        self.challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_ascii_lowercase(), certificate);
        Ok(())
    }

    pub(crate) fn clear_challenges(&self) {
        self.challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validation {
            // A validation handshake gets the challenge certificate of its name, or nothing.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
        }
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A self-signed certificate for `domain` with the critical acmeIdentifier extension holding
/// `digest` (RFC 8737 §3).
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    if digest.len() != 32 {
        return Err(AcmeError::Challenge(format!(
            "key authorization digest of {} bytes, not 32",
            digest.len()
        )));
    }
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| AcmeError::Challenge(e.to_owned()))?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension (the validator expects it critical).
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}
