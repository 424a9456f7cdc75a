//! `--proxy-protocol`: the client a PROXY header names is the client (per-address limits count
//! it, not the balancer); a connection without a well-formed header is closed and counted; a
//! `LOCAL` or `UNKNOWN` header (a health check) is served as the balancer itself.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::Server;

/// A v2 PROXY header for a TCP/IPv4 client `source`:40000 (to 10.0.0.1:443).
fn v2_header(source: [u8; 4]) -> Vec<u8> {
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.extend_from_slice(&[0x21, 0x11, 0, 12]);
    bytes.extend_from_slice(&source);
    bytes.extend_from_slice(&[10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    bytes
}

/// Opens a WebSocket to `room` as the client `header` names.
async fn upgrade_as(
    server: &Server,
    header: &[u8],
    room: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let url = format!("ws://{}/ws/{room}", server.addr);
    tokio_tungstenite::client_async(url, tcp)
        .await
        .map(|(ws, _)| ws)
}

/// GET `path` behind a `PROXY UNKNOWN` header (what a balancer's health check sends).
async fn get_as_balancer(server: &Server, path: &str) -> String {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request =
        format!("PROXY UNKNOWN\r\nGET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tcp.read_to_string(&mut response).await;
    response
}

#[tokio::test]
async fn the_proxied_client_is_the_one_limits_count() {
    let server = Server::start(&["--proxy-protocol", "--max-connections-per-ip", "1"]);
    let _first = upgrade_as(&server, &v2_header([203, 0, 113, 7]), "proxied")
        .await
        .expect("the first connection of 203.0.113.7");
    // The same client again: over its one connection, although the balancer's socket differs.
    match upgrade_as(&server, &v2_header([203, 0, 113, 7]), "proxied").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // Another client through the same balancer address: its own count.
    let text_header = b"PROXY TCP4 203.0.113.8 10.0.0.1 40001 443\r\n";
    let _second = upgrade_as(&server, text_header, "proxied")
        .await
        .expect("another client (v1 header) gets in");

    // No header, or a broken one: closed without an answer, and counted.
    for bytes in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 nonsense\r\n",
    ] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(
            answer.is_empty(),
            "answered: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let metrics = get_as_balancer(&server, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let refused = testkit::metric_value(&metrics, "signaling_proxy_headers_refused_total");
    assert!(refused.is_some_and(|n| n >= 2.0), "{refused:?}");
}
