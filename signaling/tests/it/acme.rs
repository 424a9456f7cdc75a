//! `--acme-domain` against a real ACME CA: pebble on loopback validates tls-alpn-01 for real on
//! the server's own listener (its DNS answers 127.0.0.1 for the test name). The real binary
//! obtains a certificate, serves HTTPS and WSS with it (a client trusting only pebble's
//! issuance root verifies the chain for the name), keeps it in `--acme-cache` (a restart serves
//! the cached certificate and plans no order), and renews it in the background before it
//! expires while open connections go on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::pebble::{Pebble, PebbleOptions};
use crate::support::{Client, Server, join_message};
use crate::tls::trusting;

/// The name the certificate is for (pebble's DNS resolves every name to 127.0.0.1).
const DOMAIN: &str = "signaling.acme.test";

/// How long issuance may take (pebble validates within milliseconds; the client polls).
const ISSUANCE: Duration = Duration::from_secs(60);

/// The chain the server presents to a client trusting `root`, or `None` if the handshake
/// fails. A fresh client configuration each time: a resumed session shows no certificate.
async fn presented_chain(addr: SocketAddr, root: &str) -> Option<Vec<CertificateDer<'static>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from(DOMAIN).ok()?;
    let stream = tokio_rustls::TlsConnector::from(trusting(root))
        .connect(name, tcp)
        .await
        .ok()?;
    stream.get_ref().1.peer_certificates().map(<[_]>::to_vec)
}

/// Waits (bounded) until a handshake verifies against `root`; the chain presented.
async fn wait_for_certificate(addr: SocketAddr, root: &str) -> Vec<CertificateDer<'static>> {
    let deadline = tokio::time::Instant::now() + ISSUANCE;
    loop {
        if let Some(chain) = presented_chain(addr, root).await {
            return chain;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate issued within {ISSUANCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET `path` over HTTPS with the test name: the whole response.
async fn https_get(addr: SocketAddr, tls: Arc<ClientConfig>, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(DOMAIN).unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A server on `addr` asking pebble for a certificate for [`DOMAIN`], cached in `cache`.
fn start_server(addr: SocketAddr, pebble: &Pebble, cache: &Path) -> Server {
    let directory = pebble.directory_url();
    let ca = pebble.ca_pem_path();
    let ca = ca.to_str().unwrap();
    let cache = cache.to_str().unwrap();
    let mut server = Server::spawn_on(
        addr,
        &[
            "--acme-domain",
            DOMAIN,
            "--acme-directory",
            &directory,
            "--acme-directory-ca",
            ca,
            "--acme-cache",
            cache,
            "--acme-email",
            "ops@acme.test",
        ],
    );
    let printed = server.startup_output();
    assert!(
        printed.contains(&format!("listening on https://{addr}")),
        "{printed}"
    );
    // The certificate names the domain, not the address: the suggested URLs name it too.
    let suggested = format!("wss://{DOMAIN}:{}/ws/demo`", addr.port());
    assert!(printed.contains(&suggested), "{printed}");
    server
}

/// Two peers meet over WSS on the certificate `root` verifies.
async fn wss_peers_meet(addr: SocketAddr, root: &str, room: &str) -> (Client, Client) {
    let url = format!("wss://{DOMAIN}:{}/ws/{room}", addr.port());
    let mut a = Client::connect_tls_via(addr, &url, trusting(root))
        .await
        .expect("WSS with the ACME certificate");
    a.send(&join_message(room)).await;
    a.expect_welcome().await;
    let mut b = Client::connect_tls_via(addr, &url, trusting(root))
        .await
        .expect("WSS with the ACME certificate");
    b.send(&join_message(room)).await;
    b.expect_welcome().await;
    assert!(matches!(
        a.recv_message().await,
        signaling::protocol::ServerMessage::PeerJoined { .. }
    ));
    (a, b)
}

/// A scratch directory, the address the server will listen on, pebble validating there and
/// issuing certificates for `validity` (its default when `None`), and its issuance root.
fn pebble_for_a_server(validity: Option<Duration>) -> (TempDir, SocketAddr, Pebble, String) {
    let scratch = tempfile::tempdir().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let options = PebbleOptions {
        tls_port: addr.port(),
        validity,
    };
    let pebble = Pebble::start(scratch.path(), options);
    let root = pebble.issuance_root();
    (scratch, addr, pebble, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_over_tls_alpn_serves_wss_and_restarts_from_the_cache() {
    let (scratch, addr, pebble, root) = pebble_for_a_server(None);
    let cache = scratch.path().join("acme-cache");
    let server = start_server(addr, &pebble, &cache);

    // Issued through a real validation of our own listener; the chain (leaf and pebble's
    // intermediate) verifies for the name against the issuance root alone.
    let chain = wait_for_certificate(addr, &root).await;
    assert!(chain.len() >= 2, "leaf and intermediate: {}", chain.len());
    let metrics = https_get(addr, trusting(&root), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let value = |text: &str, series: &str| testkit::metric_value(text, series);
    assert_eq!(
        value(
            &metrics,
            "signaling_acme_certificates_total{result=\"issued\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let not_after = value(&metrics, "signaling_acme_certificate_not_after_seconds").unwrap();
    assert!(not_after > unix_now() + 86_400.0, "{not_after}");
    let _peers = wss_peers_meet(addr, &root, "acme").await;

    // The cache: private directory and files, the account and the certificate.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    let mut files: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            path.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("account-") && files[0].ends_with(".json"));
    assert!(files[1].starts_with("certificate-") && files[1].ends_with(".pem"));

    // A restart with the same cache serves the same certificate from its first handshake and
    // plans its next order for the renewal time, not now.
    drop(_peers);
    drop(server);
    let _server = start_server(addr, &pebble, &cache);
    let again = presented_chain(addr, &root)
        .await
        .expect("the cached certificate, served at once");
    assert_eq!(again[0], chain[0], "the same leaf as before the restart");
    let metrics = https_get(addr, trusting(&root), "/metrics").await;
    assert_eq!(
        value(
            &metrics,
            "signaling_acme_certificates_total{result=\"cached\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    for result in ["issued", "renewed", "failed"] {
        let series = format!("signaling_acme_certificates_total{{result=\"{result}\"}}");
        assert_eq!(value(&metrics, &series), None, "{result}: {metrics}");
    }
    let next_order = value(&metrics, "signaling_acme_next_order_seconds").unwrap();
    assert!(
        next_order > unix_now() + 86_400.0,
        "no order planned before the renewal time: {next_order}"
    );
    let _peers = wss_peers_meet(addr, &root, "acme-again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_before_expiry_while_connections_go_on() {
    // 30-second certificates: renewal is due 20 s after each is issued.
    let (scratch, addr, pebble, root) = pebble_for_a_server(Some(Duration::from_secs(30)));
    let _server = start_server(addr, &pebble, &scratch.path().join("acme-cache"));
    let first = wait_for_certificate(addr, &root).await;
    let (mut a, mut b) = wss_peers_meet(addr, &root, "renewal").await;

    // A new leaf within the first one's lifetime (bounded wait: renewal at 20 s + issuance).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30) + ISSUANCE;
    let renewed = loop {
        if let Some(chain) = presented_chain(addr, &root).await
            && chain[0] != first[0]
        {
            break chain;
        }
        if tokio::time::Instant::now() >= deadline {
            let metrics = https_get(addr, trusting(&root), "/metrics").await;
            panic!("not renewed in time; the server's ACME figures:\n{metrics}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(renewed.len() >= 2);
    let metrics = https_get(addr, trusting(&root), "/metrics").await;
    let renewals = testkit::metric_value(
        &metrics,
        "signaling_acme_certificates_total{result=\"renewed\"}",
    );
    assert!(renewals.is_some_and(|n| n >= 1.0), "{metrics}");

    // The connections made on the first certificate go on.
    b.send(&signaling::protocol::ClientMessage::Leave { id: Some(2) })
        .await;
    let left = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let signaling::protocol::ServerMessage::PeerLeft { .. } = a.recv_message().await {
                break;
            }
        }
    })
    .await;
    assert!(left.is_ok(), "the old connection still carries messages");
}
