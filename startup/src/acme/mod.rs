//! Certificates obtained and renewed from an ACME CA (`--acme-domain`, in both binaries): the
//! tls-alpn-01 challenge (RFC 8737) answered on our own TLS listener, the account and the
//! certificate kept in `--acme-cache`, renewal two thirds into the lifetime with backoff on
//! failure, the certificate in force never dropped. Feature `acme`.
//!
//! [`start`] reads the cache and returns the TLS configuration to serve with (its resolver
//! answers validation handshakes and serves the issued certificate) and the [`Manager`] to run
//! on the runtime: it orders, caches, swaps certificates in, and reports each outcome.
//! Until the first certificate is in force, ordinary handshakes fail (no certificate is
//! offered; clients see a TLS alert) while validation handshakes succeed.
//!
//! # Layout
//! `schedule` (when to order; pure, time passed in), `cache` (the files), `certificate` (key,
//! signing request, parsing what was issued), `order` (the ACME conversation), `resolver`
//! (the certificate each handshake gets).

mod cache;
mod certificate;
mod order;
mod resolver;
pub mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;

pub use resolver::{ACME_TLS_ALPN, AcmeResolver};
pub use schedule::{Backoff, Schedule, Validity};

/// Let's Encrypt's production directory: the default `--acme-directory`.
pub const LETS_ENCRYPT_DIRECTORY: &str = instant_acme::LetsEncrypt::Production.url();

/// Why ACME could not start, or one order failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The ACME server refused a request, or could not be reached.
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// A validation could not be set up or did not succeed.
    #[error("ACME challenge: {0}")]
    Challenge(String),
    /// The certificate (issued or cached) cannot be served.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The cache directory could not be read or written.
    #[error("--acme-cache: {0}")]
    CacheIo(#[from] std::io::Error),
    /// A cache file does not parse.
    #[error("--acme-cache: {0}")]
    Cache(String),
    /// rustls refused a key or certificate.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A key or certificate could not be generated.
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// `--acme-directory-ca` cannot be read, or holds no certificate.
    #[error("--acme-directory-ca: {0}")]
    DirectoryCa(crate::tls::TlsError),
}

/// What `--acme-*` asks for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The names of the certificate (`--acme-domain`, at least one); each must resolve to this
    /// listener, reachable on port 443, for tls-alpn-01.
    pub domains: Vec<String>,
    /// The ACME directory URL (`--acme-directory`).
    pub directory: String,
    /// Where the account and the certificate are kept (`--acme-cache`).
    pub cache: PathBuf,
    /// The account's contact (`--acme-email`), for the CA's expiry and policy mail.
    pub email: Option<String>,
    /// A PEM CA certificate to trust for the directory's HTTPS instead of the system's roots
    /// (`--acme-directory-ca`: a private or test CA).
    pub directory_ca: Option<PathBuf>,
    /// The waits after failed orders.
    pub backoff: Backoff,
}

/// The outcome of a step, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A valid certificate was read from the cache at start-up.
    Cached,
    /// The first certificate was issued.
    Issued,
    /// A certificate was issued to replace the one in force.
    Renewed,
    /// An order failed; the certificate in force (if any) stays.
    Failed,
}

impl Outcome {
    /// The metric label: `cached`, `issued`, `renewed`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Issued => "issued",
            Self::Renewed => "renewed",
            Self::Failed => "failed",
        }
    }
}

/// What [`Report`] is told after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// What happened.
    pub outcome: Outcome,
    /// The `notAfter` of the certificate in force, if any.
    pub not_after: Option<SystemTime>,
    /// When the next order is planned.
    pub next_order: SystemTime,
}

/// Called after each step (for metrics).
pub type Report = Arc<dyn Fn(Status) + Send + Sync>;

/// Reads the cache and returns the TLS configuration to serve with and the manager to run.
/// `alpn`: the protocols the listener speaks, offered next to `acme-tls/1` (a client that
/// offers ALPN must offer one of them). A cached certificate that is valid for every name is
/// in force at once; one that is not (unreadable, other names) is ignored and replaced.
pub fn start(
    settings: Settings,
    alpn: Vec<Vec<u8>>,
    report: Report,
) -> Result<(Arc<ServerConfig>, Manager), AcmeError> {
    crate::tls::install_crypto_provider();
    if settings.domains.is_empty() {
        return Err(AcmeError::Challenge("no --acme-domain".into()));
    }
    if let Some(ca) = &settings.directory_ca {
        check_directory_ca(ca)?;
    }
    let cache = cache::Cache::open(&settings.cache, &settings.directory, &settings.domains)?;
    let resolver = Arc::new(AcmeResolver::default());
    let mut current = None;
    if let Some(pem) = cache.certificate()? {
        match certificate::parse(&pem, &settings.domains) {
            Ok(issued) => {
                tracing::info!(
                    file = %cache.certificate_path().display(),
                    not_after = %unix(issued.validity.not_after),
                    "ACME certificate read from the cache"
                );
                resolver.set_current(issued.certified);
                current = Some(issued.validity);
            }
            Err(e) => tracing::warn!(
                file = %cache.certificate_path().display(),
                error = %e,
                "ignoring the cached ACME certificate: ordering a new one"
            ),
        }
    }
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = std::iter::once(ACME_TLS_ALPN.to_vec())
        .chain(alpn)
        .collect();
    let schedule = Schedule::new(current, settings.backoff);
    if let Some(validity) = current {
        report(Status {
            outcome: Outcome::Cached,
            not_after: Some(validity.not_after),
            next_order: schedule.next_order(SystemTime::now()),
        });
    }
    let manager = Manager {
        schedule,
        client: order::Client::new(settings.clone(), cache.clone()),
        settings,
        cache,
        resolver,
        report,
    };
    Ok((Arc::new(config), manager))
}

/// Orders and renews the certificate, for as long as [`Manager::run`] runs.
pub struct Manager {
    settings: Settings,
    schedule: Schedule,
    client: order::Client,
    cache: cache::Cache,
    resolver: Arc<AcmeResolver>,
    report: Report,
}

impl Manager {
    /// The resolver the TLS configuration uses.
    pub fn resolver(&self) -> Arc<AcmeResolver> {
        Arc::clone(&self.resolver)
    }

    /// Orders whenever the schedule says so, forever (spawn it; drop the task to stop).
    pub async fn run(mut self) {
        loop {
            let wait = self.schedule.wait(SystemTime::now());
            if !wait.is_zero() {
                tracing::info!(in_seconds = wait.as_secs(), "next ACME order");
                tokio::time::sleep(wait).await;
            }
            self.order_once().await;
        }
    }

    /// One order: on success the new certificate is cached and in force; on failure the old
    /// one stays and the next try backs off.
    async fn order_once(&mut self) {
        let renewing = self.schedule.current().is_some();
        tracing::info!(domains = ?self.settings.domains, directory = %self.settings.directory, renewing, "ACME order");
        match self.try_order().await {
            Ok(issued) => {
                self.schedule.succeeded(issued.validity);
                let outcome = if renewing {
                    Outcome::Renewed
                } else {
                    Outcome::Issued
                };
                tracing::info!(
                    outcome = outcome.as_str(),
                    not_after = %unix(issued.validity.not_after),
                    renew_at = %unix(issued.validity.renew_at()),
                    "ACME certificate in force"
                );
                // Counted before it is served: whoever sees the new certificate sees it counted.
                (self.report)(Status {
                    outcome,
                    not_after: Some(issued.validity.not_after),
                    next_order: issued.validity.renew_at(),
                });
                self.resolver.set_current(issued.certified);
            }
            Err(e) => {
                let now = SystemTime::now();
                let retry_in = self.schedule.failed(now);
                tracing::warn!(
                    error = %e,
                    failures = self.schedule.failures(),
                    retry_in_seconds = retry_in.as_secs(),
                    "ACME order failed: the certificate in force (if any) stays"
                );
                (self.report)(Status {
                    outcome: Outcome::Failed,
                    not_after: self.schedule.current().map(|v| v.not_after),
                    next_order: self.schedule.next_order(now),
                });
            }
        }
    }

    async fn try_order(&mut self) -> Result<certificate::Issued, AcmeError> {
        let pem = self.client.order(&self.resolver).await?;
        let issued = certificate::parse(&pem, &self.settings.domains)?;
        self.cache.store_certificate(&pem)?;
        Ok(issued)
    }
}

/// Seconds since the Unix epoch, for logs.
fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks that `--acme-directory-ca` names a readable PEM file with at least one certificate, so
/// a wrong path stops the start instead of failing every order.
fn check_directory_ca(path: &std::path::Path) -> Result<(), AcmeError> {
    crate::tls::read_certificates(path).map_err(AcmeError::DirectoryCa)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_ca_must_be_a_readable_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = check_directory_ca(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
        let key_only = dir.path().join("key.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_only, key.serialize_pem()).unwrap();
        let err = check_directory_ca(&key_only).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        check_directory_ca(&ca).unwrap();
    }
}
