//! Signaling behind HAProxy with `send-proxy-v2` (`--proxy-protocol`): the client HAProxy
//! accepted is the client signaling counts. Two clients from different loopback addresses get
//! in under `--max-connections-per-ip 1` (without the header both would be HAProxy's 127.0.0.1
//! and the second refused); a second connection from one of them is refused with 429.

use std::net::SocketAddr;

use e2e::haproxy::Haproxy;
use tokio::net::TcpSocket;

use crate::peer_e2e::start_signaling_with;

/// A joined WebSocket (kept open: the limit counts open connections).
type Joined = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket through `proxy` from the local address `source` and joins `room`.
async fn upgrade_from(
    source: [u8; 4],
    proxy: SocketAddr,
    room: &str,
) -> Result<Joined, tokio_tungstenite::tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let tcp = socket.connect(proxy).await.unwrap();
    let url = format!("ws://{proxy}/ws/{room}");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    use futures_util::SinkExt as _;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        serde_json::json!({"type": "join", "versions": [1]}).to_string(),
    ))
    .await?;
    use futures_util::StreamExt as _;
    let welcome = ws.next().await.expect("a frame")?;
    assert!(welcome.to_text()?.contains("\"welcome\""), "{welcome}");
    Ok(ws)
}

#[tokio::test]
async fn behind_haproxy_send_proxy_v2_the_real_client_address_is_counted() {
    let signaling = start_signaling_with(
        None,
        "127.0.0.1:0",
        &["--proxy-protocol", "--max-connections-per-ip", "1"],
    );
    let proxy = Haproxy::start_sending_proxy_v2(&[signaling.addr]);
    let _a = upgrade_from([127, 0, 0, 2], proxy.addr, "edge")
        .await
        .expect("the client at 127.0.0.2");
    let _b = upgrade_from([127, 0, 0, 3], proxy.addr, "edge")
        .await
        .expect("another client, at 127.0.0.3: its own count");
    match upgrade_from([127, 0, 0, 2], proxy.addr, "edge").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!(
            "expected 429 for 127.0.0.2's second connection, got {:?}",
            other.map(|_| ())
        ),
    }
}
