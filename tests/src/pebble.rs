//! A real ACME CA on loopback: Debian's `pebble`, validating for real through
//! `pebble-challtestsrv` as its DNS server (every name resolves to 127.0.0.1, no AAAA), with
//! tls-alpn-01 validations sent to a port the test chooses (the server under test listens
//! there). Pebble's own HTTPS certificate comes from a CA made here (Debian ships none):
//! clients trust [`Pebble::ca_pem_path`]. The issuance root, new at every start, is
//! [`Pebble::issuance_root`]. Both processes are killed on drop.
//!
//! Shared by the e2e crate and the signaling crate's integration tests (which include this
//! file by path); needs `rcgen`, `rustls` and `testkit`.

#![allow(dead_code, unreachable_pub)] // Shared by two test crates; neither uses every tool.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use testkit::ChildGuard;

/// A running pebble and its DNS server.
pub struct Pebble {
    _dns: ChildGuard,
    _pebble: ChildGuard,
    /// The ACME listener.
    pub acme: SocketAddr,
    /// The management listener (`/roots/0`).
    pub management: SocketAddr,
    dir: PathBuf,
}

/// What pebble is started with.
#[derive(Debug, Clone, Copy)]
pub struct PebbleOptions {
    /// Where pebble sends tls-alpn-01 validations (on 127.0.0.1).
    pub tls_port: u16,
    /// The lifetime of the certificates it issues (pebble's default when `None`).
    pub validity: Option<Duration>,
}

impl Pebble {
    /// Starts pebble-challtestsrv and pebble in `dir` (which must exist); panics with the
    /// install hint when the package is missing.
    pub fn start(dir: &Path, options: PebbleOptions) -> Self {
        for program in ["pebble", "pebble-challtestsrv"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{program} is missing: apt-get install pebble (scripts/install-test-deps.sh does)"
            );
        }
        write_https_certificate(dir);
        let [acme, management, dns, dns_management] = free_ports(options.tls_port);
        let localhost = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let dns_server = ChildGuard {
            child: Command::new("pebble-challtestsrv")
                .args(["-dns01", &localhost(dns).to_string()])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &localhost(dns_management).to_string()])
                .args(["-defaultIPv6", "", "-defaultIPv4", "127.0.0.1"])
                .stdout(log_file(dir, "challtestsrv.log"))
                .stderr(log_file(dir, "challtestsrv.log"))
                .spawn()
                .expect("spawn pebble-challtestsrv"),
            name: "pebble-challtestsrv".into(),
        };
        let validity = options
            .validity
            .map(|v| format!(", \"certificateValidityPeriod\": {}", v.as_secs()))
            .unwrap_or_default();
        let config = format!(
            "{{\"pebble\": {{\"listenAddress\": \"{}\", \"managementListenAddress\": \"{}\", \
             \"certificate\": \"{}\", \"privateKey\": \"{}\", \"httpPort\": {}, \"tlsPort\": {}, \
             \"ocspResponderURL\": \"\", \"externalAccountBindingRequired\": false{validity}}}}}",
            localhost(acme),
            localhost(management),
            dir.join("pebble-cert.pem").display(),
            dir.join("pebble-key.pem").display(),
            // http-01 is not used: a port nobody listens on.
            dns_management,
            options.tls_port,
        );
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config).expect("write pebble.json");
        let pebble = ChildGuard {
            child: Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &localhost(dns).to_string()])
                // Deterministic: no random sleeps before validating, no rejected nonces, every
                // order validated afresh.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(log_file(dir, "pebble.log"))
                .stderr(log_file(dir, "pebble.log"))
                .spawn()
                .expect("spawn pebble"),
            name: "pebble".into(),
        };
        let up = testkit::wait_until(Duration::from_secs(20), || {
            [acme, management]
                .iter()
                .all(|&p| TcpStream::connect(localhost(p)).is_ok())
                .then_some(())
        });
        assert!(
            up.is_some(),
            "pebble did not start: see {}",
            dir.join("pebble.log").display()
        );
        Self {
            _dns: dns_server,
            _pebble: pebble,
            acme: localhost(acme),
            management: localhost(management),
            dir: dir.to_owned(),
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// The CA of pebble's own HTTPS certificate (what an ACME client must trust).
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The root that issued certificates chain to (PEM), from the management API: asked again
    /// for up to 10 s while pebble's management listener, which accepts before it serves,
    /// resets the connection or answers nothing yet.
    pub fn issuance_root(&self) -> String {
        let mut last = String::new();
        let root = testkit::wait_until(Duration::from_secs(10), || {
            self.fetch_issuance_root()
                .map_err(|error| last = error)
                .ok()
        });
        root.unwrap_or_else(|| panic!("pebble /roots/0: {last}"))
    }

    /// One `GET /roots/0`: the PEM body, or what went wrong.
    fn fetch_issuance_root(&self) -> Result<String, String> {
        let ca = std::fs::read_to_string(self.ca_pem_path()).expect("read ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.expect("PEM")).expect("CA certificate");
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
        let tcp = TcpStream::connect(self.management).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        stream
            .write_all(b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("request: {e}"))?;
        let mut response = String::new();
        // Go closes without close_notify sometimes: what arrived is enough.
        let _ = stream.read_to_string(&mut response);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or_default();
        if body.contains("BEGIN CERTIFICATE") {
            Ok(body.to_owned())
        } else {
            Err(format!("answered {response:?}"))
        }
    }
}

/// Writes a CA (`ca.pem`) and pebble's HTTPS certificate for `localhost` and 127.0.0.1 signed
/// by it (`pebble-cert.pem`, `pebble-key.pem`).
fn write_https_certificate(dir: &Path) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca).expect("leaf certificate");
    let ca_pem = ca.pem();
    for (name, text) in [
        ("ca.pem", ca_pem.as_str()),
        ("pebble-cert.pem", cert.pem().as_str()),
        ("pebble-key.pem", key.serialize_pem().as_str()),
    ] {
        std::fs::write(dir.join(name), text).expect("write PEM");
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// Four distinct ports free for TCP and UDP, all held open while they are picked, none of
/// them `taken` (the port the server under test is about to listen on).
fn free_ports(taken: u16) -> [u16; 4] {
    let held: Vec<(std::net::TcpListener, std::net::UdpSocket)> = (0..4)
        .map(|_| {
            (0..100)
                .find_map(|_| {
                    let tcp = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
                    let port = tcp.local_addr().ok()?.port();
                    if port == taken {
                        return None;
                    }
                    let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).ok()?;
                    Some((tcp, udp))
                })
                .expect("a port free for TCP and UDP")
        })
        .collect();
    let port = |i: usize| held[i].0.local_addr().expect("local address").port();
    [port(0), port(1), port(2), port(3)]
}
