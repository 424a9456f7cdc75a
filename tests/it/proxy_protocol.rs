//! Both binaries behind HAProxy with `send-proxy-v2` (`--proxy-protocol`). Signaling: the
//! client HAProxy accepted is the client signaling counts. Two clients from different loopback addresses get
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

/// The relay behind HAProxy in TCP mode with `send-proxy-v2` (`--proxy-protocol`): a STUN
/// Binding over TCP from 127.0.0.2 is answered with 127.0.0.2 and the client's own port, not
/// HAProxy's address.
#[test]
fn the_relay_behind_haproxy_send_proxy_v2_maps_the_real_client() {
    use std::io::{Read as _, Write as _};

    use relay_proto::attributes::{XOR_MAPPED_ADDRESS, decode_xor_address};
    use relay_proto::message::{Class, MessageBuilder, StunMessage, TransactionId};
    use relay_proto::{Method, framing};

    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "none",
        "--proxy-protocol",
        "--user",
        "u:p",
    ];
    let mut relay = crate::peer_e2e::spawn("relay", &args, false);
    let line = relay.wait_line(std::time::Duration::from_secs(20), |l| {
        l.starts_with("listening tcp ")
    });
    let tcp_addr: SocketAddr = line["listening tcp ".len()..].parse().unwrap();
    relay.wait_line(std::time::Duration::from_secs(20), |l| l == "ready");
    let proxy = Haproxy::start_tcp_sending_proxy_v2(&[tcp_addr]);

    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    socket.connect(&proxy.addr.into()).unwrap();
    let mut tcp: std::net::TcpStream = socket.into();
    let local = tcp.local_addr().unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let tid = TransactionId([9; 12]);
    let request = MessageBuilder::new(Method::Binding, Class::Request, tid).finish();
    tcp.write_all(&request).unwrap();
    let mut response = vec![0u8; 4];
    tcp.read_exact(&mut response)
        .expect("a STUN answer through HAProxy");
    let len = framing::stream_frame_len(&response).unwrap().unwrap();
    response.resize(len, 0);
    tcp.read_exact(&mut response[4..]).unwrap();
    let message = StunMessage::parse(&response).unwrap();
    let mapped = decode_xor_address(message.get(XOR_MAPPED_ADDRESS).unwrap(), &tid).unwrap();
    assert_eq!(
        mapped, local,
        "the mapped address is the client's, not HAProxy's"
    );
}
