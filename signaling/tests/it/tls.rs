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
pub(crate) fn trusting(text: &str) -> Arc<ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
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

/// GET `path` over TLS: the whole response, or `None` if the handshake fails (a certificate
/// `tls` does not trust).
async fn https_get(server: &Server, tls: Arc<ClientConfig>, path: &str) -> Option<String> {
    https_get_at(server.addr, tls, path).await
}

/// [`https_get`] from the server at `addr` (as `localhost`).
pub(crate) async fn https_get_at(
    addr: std::net::SocketAddr,
    tls: Arc<ClientConfig>,
    path: &str,
) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = "localhost".try_into().unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    Some(response)
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
    let mut a = join_tls(&url("secure"), &tls, "secure").await;
    let _b = join_tls(&url("secure"), &tls, "secure").await;
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

    let metrics = https_get(&server, Arc::clone(&tls), "/metrics")
        .await
        .expect("HTTPS");
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

/// Sends SIGHUP to the first node.
fn hangup(server: &Server) {
    // SAFETY: kill(2) on the PID of a child this test spawned.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0);
}

/// Waits (up to 5 s) until the server, reached over HTTPS with a certificate `tls` trusts,
/// reports `series` at `at_least` or more.
async fn wait_for_metric(
    server: &Server,
    tls: &Arc<ClientConfig>,
    series: &str,
    at_least: f64,
) -> bool {
    for _ in 0..50 {
        let value = https_get(server, Arc::clone(tls), "/metrics")
            .await
            .and_then(|text| testkit::metric_value(&text, series));
        if value.is_some_and(|v| v >= at_least) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Sends SIGHUP and waits (up to 5 s, over HTTPS trusting `tls`) until a certificate reload
/// with this `result` (`ok`, `refused`) is counted.
async fn reload_counted(server: &Server, tls: &Arc<ClientConfig>, result: &str) -> bool {
    hangup(server);
    let series = format!("signaling_tls_reloads_total{{result=\"{result}\"}}");
    wait_for_metric(server, tls, &series, 1.0).await
}

/// Connects over WSS trusting `tls` and joins `room`.
async fn join_tls(url: &str, tls: &Arc<ClientConfig>, room: &str) -> Client {
    let mut client = Client::connect_tls(url, Arc::clone(tls))
        .await
        .expect("wss");
    client.send(&crate::support::join_message(room)).await;
    client.expect_welcome().await;
    client
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_pair_is_refused() {
    let dir = std::env::temp_dir().join(format!("signaling-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each check below builds a fresh client configuration: one that was used before would
    // resume its TLS session (no certificate in a resumption), which proves nothing here.
    let first_pem = testkit::write_self_signed(&dir);
    let first = trusting(&first_pem);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut server = Server::start_process(&["--tls-cert", cert, "--tls-key", key]);
    let _ = server.startup_output();
    let url = format!("wss://localhost:{}/ws/reload", server.addr.port());
    let mut a = join_tls(&url, &first, "reload").await;

    // A new certificate on disk, then SIGHUP: new handshakes get it, and its expiry is a gauge.
    let now = std::time::SystemTime::now();
    let not_after = now + Duration::from_secs(30 * 24 * 3600);
    let second_pem = testkit::write_certificate(&dir, Some((now, not_after)));
    let second = trusting(&second_pem);
    assert!(
        reload_counted(&server, &second, "ok").await,
        "the new certificate is served and the reload counted"
    );
    let not_after = not_after.duration_since(std::time::UNIX_EPOCH).unwrap();
    let metrics = https_get(&server, Arc::clone(&second), "/metrics").await;
    assert_eq!(
        metrics.and_then(|m| {
            testkit::metric_value(&m, "signaling_tls_certificate_not_after_seconds")
        }),
        Some(not_after.as_secs() as f64)
    );
    assert!(
        Client::connect_tls(&url, trusting(&first_pem))
            .await
            .is_err(),
        "new handshakes no longer get the old certificate"
    );
    let _b = join_tls(&url, &second, "reload").await;
    // The connection made before the reload goes on.
    assert!(matches!(
        a.recv_message().await,
        signaling::protocol::ServerMessage::PeerJoined { .. }
    ));

    // A pair that does not load is refused; the certificate in force stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    assert!(
        reload_counted(&server, &second, "refused").await,
        "the refused reload was counted, over the certificate still in force"
    );
    assert!(
        Client::connect_tls(&url, trusting(&second_pem))
            .await
            .is_ok()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The listener speaks HTTP/1.1 only and says so in ALPN: a browser offering `h2` and
/// `http/1.1` gets `http/1.1`, a client offering only `h2` is refused in the handshake (not
/// left to fail on its first HTTP/2 frame).
#[tokio::test]
async fn alpn_offers_http_1_1_and_refuses_an_h2_only_client() {
    let mut server = Server::start_process(&["--tls-self-signed"]);
    let tls = trusting(&server.startup_output());
    let handshake = |protocols: &[&[u8]]| {
        let mut config = (*tls).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let addr = server.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = "localhost".try_into().unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map(|stream| stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        }
    };
    let browser = handshake(&[b"h2", b"http/1.1"]).await.expect("handshake");
    assert_eq!(browser.as_deref(), Some(&b"http/1.1"[..]));
    assert!(handshake(&[b"h2"]).await.is_err(), "an h2-only client");
    let none = handshake(&[]).await.expect("a client without ALPN");
    assert_eq!(none, None);
}
