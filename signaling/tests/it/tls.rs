//! HTTPS and WSS on `--listen` (`--tls-self-signed` here; `--tls-cert`/`--tls-key` load the same
//! way): a client that trusts the printed certificate joins over `wss://`, a plain-HTTP or
//! silent client gets nothing and is counted, and the header-read timeout covers the handshake.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::support::{Client, Server};

/// A client configuration that trusts the PEM certificates in `text`.
fn trusting(text: &str) -> Arc<ClientConfig> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
        roots
            .add(cert.expect("PEM certificate"))
            .expect("a CA root");
    }
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// GET `path` over TLS; the whole response.
async fn https_get(server: &Server, tls: Arc<ClientConfig>, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = "localhost".try_into().unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

#[tokio::test]
async fn wss_joins_and_plain_or_silent_clients_are_refused_and_counted() {
    let mut server = Server::start_process(&["--tls-self-signed", "--header-read-timeout", "1s"]);
    let printed = server.startup_output();
    assert!(
        printed.contains(&format!("listening on https://{}", server.addr)),
        "{printed}"
    );
    let tls = trusting(&printed);
    let url = |room: &str| format!("wss://localhost:{}/ws/{room}", server.addr.port());

    // Two peers meet and signal over WSS.
    let mut a = Client::connect_tls(&url("secure"), Arc::clone(&tls))
        .await
        .expect("wss");
    a.send(&crate::support::join_message("secure")).await;
    a.expect_welcome().await;
    let mut b = Client::connect_tls(&url("secure"), Arc::clone(&tls))
        .await
        .expect("wss");
    b.send(&crate::support::join_message("secure")).await;
    b.expect_welcome().await;
    assert!(matches!(
        a.recv_message().await,
        signaling::protocol::ServerMessage::PeerJoined { .. }
    ));

    // Plain HTTP on the TLS port: no answer, the connection closes.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        !matches!(read, Ok(n) if n > 0 && buf[..n].starts_with(b"HTTP")),
        "plain HTTP got an HTTP answer"
    );
    // A client that never says hello is closed after the header-read timeout.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("a silent TLS client is closed within the header-read timeout");
    assert!(matches!(read, Ok(0) | Err(_)));

    let metrics = https_get(&server, Arc::clone(&tls), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let failures = testkit::metric_value(&metrics, "signaling_tls_handshake_failures_total")
        .expect("the failures counter");
    assert!(
        failures >= 2.0,
        "plain and silent clients counted: {failures}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_cannot_connect() {
    let mut server = Server::start_process(&["--tls-self-signed"]);
    let _ = server.startup_output();
    let other = Server::start_process(&["--tls-self-signed"]).startup_output();
    let url = format!("wss://localhost:{}/ws/x", server.addr.port());
    assert!(
        Client::connect_tls(&url, trusting(&other)).await.is_err(),
        "a certificate from another server must not verify"
    );
}
