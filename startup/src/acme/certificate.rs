//! An issued certificate as the cache keeps it (the private key, then the chain, in one PEM):
//! its new key and signing request before the order, and after it the rustls key, validity and
//! names, checked against the names configured.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::AcmeError;
use super::schedule::Validity;
use crate::tls::CertificateFacts;

/// A certificate ready to serve.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) validity: Validity,
}

/// A fresh private key (PEM) and a certificate signing request (DER) for `domains`.
pub(crate) fn key_and_request(domains: &[String]) -> Result<(String, Vec<u8>), AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let request = rcgen::CertificateParams::new(domains.to_vec())?.serialize_request(&key)?;
    Ok((key.serialize_pem(), request.der().to_vec()))
}

/// Reads a key and chain (PEM, in any order) and checks that the leaf names every one of
/// `domains`.
pub(crate) fn parse(pem: &str, domains: &[String]) -> Result<Issued, AcmeError> {
    let invalid = |message: String| AcmeError::Certificate(message);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid("no CERTIFICATE block".into()))?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let facts = CertificateFacts::of(leaf).map_err(invalid)?;
    let validity = Validity {
        not_before: facts.not_before,
        not_after: facts.not_after,
    };
    let names = facts.names;
    if let Some(missing) = domains
        .iter()
        .find(|d| !names.contains(&d.to_ascii_lowercase()))
    {
        return Err(invalid(format!("does not name {missing}")));
    }
    let provider = rustls::crypto::ring::default_provider();
    let certified = Arc::new(CertifiedKey::from_der(chain, key, &provider)?);
    Ok(Issued {
        certified,
        validity,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use x509_parser::prelude::FromDer as _;

    use super::*;

    /// A self-signed certificate for `names` with the key first, as the cache stores it.
    fn cached_pem(names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        format!(
            "{}{}",
            generated.signing_key.serialize_pem(),
            generated.cert.pem()
        )
    }

    #[test]
    fn reads_key_chain_validity_and_names() {
        let pem = cached_pem(&["a.example", "b.example"]);
        let domains = ["B.example".to_owned(), "a.example".to_owned()];
        let issued = parse(&pem, &domains).unwrap();
        assert_eq!(issued.certified.cert.len(), 1);
        // rcgen's defaults: 1975 to 4096.
        assert!(issued.validity.not_before < SystemTime::now());
        assert!(issued.validity.not_after > SystemTime::now());
    }

    #[test]
    fn refuses_a_certificate_that_lacks_a_name_or_a_key() {
        let pem = cached_pem(&["a.example"]);
        let both = ["a.example".to_owned(), "b.example".to_owned()];
        assert!(matches!(
            parse(&pem, &both),
            Err(AcmeError::Certificate(m)) if m.contains("b.example")
        ));
        let without_key = pem.split("-----END PRIVATE KEY-----").nth(1).unwrap();
        assert!(parse(without_key, &both[..1]).is_err());
        assert!(parse("", &both[..1]).is_err());
    }

    #[test]
    fn a_request_names_every_domain() {
        let domains = ["a.example".to_owned(), "b.example".to_owned()];
        let (key, request) = key_and_request(&domains).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&request)
                .unwrap();
        let text = format!(
            "{:?}",
            csr.requested_extensions().map(|e| e.collect::<Vec<_>>())
        );
        for domain in &domains {
            assert!(text.contains(domain.as_str()), "{text}");
        }
    }
}
